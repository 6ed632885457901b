"""``pmlb serve --workers N``: real worker processes under the parent, on shared listeners.

The clients connect to the one port; the admin answers on the one address
(the parent's front) and says which worker holds each client.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.helpers import TIMEOUT, LineClient, Proc, Processes, admin_url
from tests.redis_server import RedisServer, needs_redis

pytestmark = pytest.mark.e2e


def write_config(tmp_path: Path, upstream_port: int, extra: str = "") -> Path:
    path = tmp_path / "pmlb.toml"
    path.write_text(
        '[server]\nframing = "line"\n'
        f'[[upstream]]\nhost = "127.0.0.1"\nport = {upstream_port}\n{extra}'
    )
    return path


async def start_workers(
    procs: Processes, config: Path, workers: int, *args: str
) -> tuple[Proc, int, httpx.AsyncClient]:
    proc, port = await procs.pmlb("--config", str(config), "--workers", str(workers), *args)
    http = httpx.AsyncClient(base_url=await admin_url(proc), timeout=TIMEOUT)
    procs.on_close(http)
    await wait_ready(http, workers)
    return proc, port, http


async def wait_ready(http: httpx.AsyncClient, workers: int) -> None:
    """Until /readyz says every worker is ready (polled: the workers are other processes)."""
    with trio.fail_after(TIMEOUT):
        while True:
            answer = await http.get("/readyz")
            if answer.status_code == 200:
                assert answer.json()["workers_ready"] == workers
                return
            await trio.sleep(0.1)


async def worker_of(http: httpx.AsyncClient) -> dict[str, int]:
    """Each connected client's worker, by UUID, read through every page of the list."""
    found: dict[str, int] = {}
    cursor = -1
    while cursor is not None:
        page = (await http.get("/api/v1/clients", params={"cursor": cursor, "limit": 7})).json()
        for client in page["clients"]:
            assert client["uuid"] not in found
            found[client["uuid"]] = client["worker"]
        cursor = page["next_cursor"]
    return found


async def connect(procs: Processes, port: int, n: int) -> list[LineClient]:
    clients = [await procs.client(port) for _ in range(n)]
    for client in clients:
        await client.whoami()
    return clients


async def test_three_workers_share_the_port_and_one_admin_sees_them_all(
    procs: Processes, tmp_path: Path
) -> None:
    _, up_port = await procs.upstream("U", kind="grpcio")
    proc, port, http = await start_workers(procs, write_config(tmp_path, up_port), 3)
    clients = await connect(procs, port, 30)

    workers = await worker_of(http)
    assert sorted(workers) == sorted(c.uuid for c in clients)
    assert set(workers.values()) == {0, 1, 2}  # 30 clients, 3 sockets: all get some
    first, second = clients[0], clients[1]
    assert first.uuid is not None
    assert second.uuid is not None
    one = (await http.get(f"/api/v1/clients/{first.uuid}")).json()
    assert one["worker"] == workers[first.uuid]
    answer = await http.post(f"/api/v1/clients/{first.uuid}/messages", json={"payload": "hi\n"})
    assert answer.status_code == 202, answer.text
    assert await first.recv() == "hi"
    missing = await http.get("/api/v1/clients/11111111-2222-4333-8444-555555555555")
    assert missing.status_code == 404

    assert (await http.delete(f"/api/v1/clients/{second.uuid}")).status_code == 200
    await second.expect_closed()
    broadcast = await http.post("/api/v1/broadcast", json={"kind": "all", "payload": "all\n"})
    assert broadcast.json()["recipients"] == 29
    for client in clients[2:]:
        assert await client.recv() == "all"

    upstreams = (await http.get("/api/v1/upstreams")).json()["upstreams"]
    assert len(upstreams) == 1
    assert [w["worker"] for w in upstreams[0]["workers"]] == [0, 1, 2]
    assert upstreams[0]["messages_to_upstream"] == 30  # the whoamis, over the workers
    runtime = (await http.get("/api/v1/runtime")).json()
    assert runtime["stats"]["clients"] == 29
    assert [w["running"] for w in runtime["workers"]] == [True, True, True]
    metrics = (await http.get("/metrics")).text
    for index in range(3):
        assert re.search(rf'^pmlb_clients\{{.*worker="{index}".*\}} \d', metrics, re.M), metrics
    assert "pmlb_workers 3.0" in metrics

    # One event stream for the machine: every worker's events, marked.
    ws_url = str(http.base_url).rstrip("/").replace("http://", "ws://") + "/api/v1/events"
    async with open_websocket_url(ws_url) as ws:
        hellos = [json.loads(await ws.get_message()) for _ in range(3)]
        assert sorted((h["type"], h["worker"]) for h in hellos) == [
            ("hello", 0),
            ("hello", 1),
            ("hello", 2),
        ]
        newcomer = (await connect(procs, port, 1))[0]
        event = json.loads(await ws.get_message())
        assert event["type"] == "client.connected"
        assert event["client"] == newcomer.uuid
        assert event["worker"] == (await worker_of(http))[str(newcomer.uuid)]

    proc.signal(signal.SIGTERM)
    for client in [*clients[2:], newcomer]:
        await client.expect_closed()
    assert await proc.wait() == 0
    assert proc.count(r"worker stopped .*exit=\"code 0\"") == 3


async def test_a_killed_worker_is_restarted_on_the_same_port(
    procs: Processes, tmp_path: Path
) -> None:
    _, up_port = await procs.upstream("U", kind="grpcio")
    proc, port, http = await start_workers(procs, write_config(tmp_path, up_port), 2)
    pid = (await http.get("/api/v1/workers")).json()["workers"][0]["pid"]
    mark = proc.mark()
    os.kill(pid, signal.SIGKILL)
    await proc.wait_for(r"worker exited unexpectedly: restarting it worker=0 ", after=mark)
    await proc.wait_for(r"worker started worker=0 ", after=mark)
    await wait_ready(http, 2)

    # New clients land on both workers again; the restarted one serves them.
    clients = await connect(procs, port, 20)
    assert set((await worker_of(http)).values()) == {0, 1}
    for client in clients:
        await client.send("ping")
        assert await client.recv() == "U:ping"
    listed = (await http.get("/api/v1/workers")).json()
    assert listed["restarts"] == 1
    assert listed["workers"][0]["pid"] != pid
    assert "pmlb_worker_restarts_total 1.0" in (await http.get("/metrics")).text


@needs_redis
async def test_workers_with_a_cluster_reach_each_others_clients(
    procs: Processes, redis: RedisServer, tmp_path: Path
) -> None:
    _, up_port = await procs.upstream("U", kind="grpcio")
    config = write_config(
        tmp_path,
        up_port,
        'reply_scope = "cluster"\n[cluster]\nnode = "m"\nheartbeat_interval = 0.2\n'
        "node_timeout = 1\n",
    )
    proc, port, http = await start_workers(procs, config, 3, "--cluster-redis", redis.url)
    for index in range(3):
        await proc.wait_for(rf"cluster joined node=m-w{index}\b")
    # A node lists the clients of the nodes its last heartbeat saw: wait (polled)
    # until the worker answering the admin has seen all three.
    for _ in range(int(TIMEOUT / 0.05)):
        if len((await http.get("/api/v1/cluster")).json()["nodes"]) == 3:
            break
        await trio.sleep(0.05)
    clients = await connect(procs, port, 30)
    workers = await worker_of(http)
    by_uuid = {c.uuid: c for c in clients}
    sender = clients[0]
    assert set(workers.values()) == {0, 1, 2}  # the clients of the nodes m-w0, m-w1, m-w2
    target = next(u for u, w in workers.items() if w != workers[str(sender.uuid)])
    await sender.send(f"to {target} across workers")
    assert await by_uuid[target].recv() == "across workers"
    await sender.send("bcast all everyone")
    for client in clients:
        assert await client.recv() == "everyone"
    for client in clients:  # exactly once: the next line is this one
        await sender.send(f"to {client.uuid} end")
        assert await client.recv() == "end"


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pmlb", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_listener_that_cannot_bind_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--workers", "2", "--port", str(port), "--no-admin")
    assert result.returncode == 1, result.stderr
    assert f"listener 'default' cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "worker started" not in result.stderr


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--workers", "-1"], "--workers: must be an integer from 0 to 256, got -1"),
        (["--workers", "300"], "--workers: must be an integer from 0 to 256, got 300"),
    ],
)
def test_bad_workers_exit_2_before_any_worker_starts(args: list[str], problem: str) -> None:
    result = serve(*args)
    assert result.returncode == 2
    assert problem in result.stderr
    assert "worker started" not in result.stderr


def test_a_bad_file_exits_2_in_the_parent(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nworkers = 2\nframing = "lines"\n')
    result = serve("--config", str(path))
    assert result.returncode == 2
    assert "server.framing: must be one of" in result.stderr
    assert "worker started" not in result.stderr


async def test_sighup_reloads_every_worker_and_the_ones_started_later(
    procs: Processes, tmp_path: Path
) -> None:
    _, first = await procs.upstream("A", kind="grpcio")
    _, second = await procs.upstream("B", kind="grpcio")
    config = write_config(tmp_path, first)
    proc, _, http = await start_workers(procs, config, 2)
    config.write_text(config.read_text() + f'[[upstream]]\nhost = "127.0.0.1"\nport = {second}\n')
    proc.signal(signal.SIGHUP)
    await proc.wait_for(r"configuration reloaded .*worker=0")
    await proc.wait_for(r"configuration reloaded .*worker=1")
    upstreams = (await http.get("/api/v1/upstreams")).json()["upstreams"]
    assert sorted(u["port"] for u in upstreams) == sorted([first, second])
    assert all(len(u["workers"]) == 2 for u in upstreams)

    # A worker started after the reload runs the new file too.
    pid = (await http.get("/api/v1/workers")).json()["workers"][1]["pid"]
    mark = proc.mark()
    os.kill(pid, signal.SIGKILL)
    await proc.wait_for(r"worker started worker=1 ", after=mark)
    await wait_ready(http, 2)
    upstreams = (await http.get("/api/v1/upstreams")).json()["upstreams"]
    assert all(len(u["workers"]) == 2 for u in upstreams), upstreams


def test_a_bad_workers_value_in_the_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nworkers = "two"\n')
    result = serve("--config", str(path))
    assert result.returncode == 2
    assert "server.workers: must be an integer from 0 to 256, got string 'two'" in result.stderr


def test_check_config_shows_the_workers(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text("[server]\nworkers = 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "pmlb", "check-config", str(path), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "\nworkers = 0\n" in result.stdout  # the flag wins over the file


async def test_a_second_signal_stops_every_worker_at_once(procs: Processes, tmp_path: Path) -> None:
    _, up_port = await procs.upstream("U", kind="grpcio")
    config = tmp_path / "slow-drain.toml"
    config.write_text(
        '[server]\nframing = "line"\ndrain_period = 120\ndrain_timeout = 180\n'
        f'[[upstream]]\nhost = "127.0.0.1"\nport = {up_port}\n'
    )
    proc, port, _ = await start_workers(procs, config, 2)
    clients = await connect(procs, port, 10)
    mark = proc.mark()
    proc.signal(signal.SIGINT)
    await proc.wait_for(r"signal received: draining workers", after=mark)
    for index in range(2):  # each worker started its (two-minute) drain
        await proc.wait_for(rf"parent: stopping worker={index}", after=mark)
    proc.signal(signal.SIGINT)
    for client in clients:  # long before drain_period
        await client.expect_closed(timeout=TIMEOUT)
    assert await proc.wait(timeout=TIMEOUT) == 0
    assert proc.count(r"parent: stopping now") == 2
