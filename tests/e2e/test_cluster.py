"""``pmlb serve`` processes joined through a real redis-server, with a grpcio upstream.

The upstream answers each message on the stream it came from (the
scripted commands of tests/upstreams/script.py); with ``reply_scope =
"cluster"`` pmlb carries what is for another node's client there.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import TIMEOUT, LineClient, Proc, Processes, admin_url
from tests.redis_server import RedisServer, needs_redis

pytestmark = [pytest.mark.e2e, needs_redis]

UNKNOWN = "11111111-2222-4333-8444-555555555555"


async def start_node(
    procs: Processes,
    tmp_path: Path,
    redis: RedisServer,
    name: str,
    upstream_port: int,
    events: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[Proc, int]:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        '[server]\nframing = "line"\n'
        f'[[upstream]]\nhost = "127.0.0.1"\nport = {upstream_port}\nreply_scope = "cluster"\n'
        f"events = {'true' if events else 'false'}\n"
        f'[cluster]\nnode = "{name}"\nheartbeat_interval = 0.2\nnode_timeout = 1\n'
    )
    proc, port = await procs.pmlb("--config", str(path), "--cluster-redis", redis.url, env=env)
    await proc.wait_for(rf"cluster joined node={name}\b")
    return proc, port


def unknown_drops(metrics: str) -> int:
    match = re.search(r"^pmlb_unknown_client_drops_total (\S+)$", metrics, re.MULTILINE)
    assert match is not None, metrics
    return int(float(match.group(1)))


async def test_three_serve_processes_are_one_cluster(
    procs: Processes, redis: RedisServer, tmp_path: Path
) -> None:
    _, up_port = await procs.upstream("U", kind="grpcio")
    nodes = [await start_node(procs, tmp_path, redis, n, up_port) for n in ("a", "b", "c")]
    clients: list[LineClient] = [await procs.client(port) for _, port in nodes]
    on_a, on_b, on_c = clients
    ua, ub, uc = [await client.whoami() for client in clients]

    await on_a.send(f"to {ub} from a")
    assert await on_b.recv() == "from a"
    await on_c.send(f"multi {ua},{ub},{UNKNOWN} to a and b")
    assert await on_a.recv() == "to a and b"
    assert await on_b.recv() == "to a and b"
    await on_b.send("bcast all everyone")
    for client in clients:
        assert await client.recv() == "everyone"
    await on_a.send("bcast active busy")
    for client in clients:
        assert await client.recv() == "busy"
    await on_a.send("bcast inactive nobody")  # every client here sent something
    for client, uuid in zip(clients, (ua, ub, uc), strict=True):
        await on_b.send(f"to {uuid} end")  # the next line: no duplicate came before
        assert await client.recv() == "end"
    async with httpx.AsyncClient(base_url=await admin_url(nodes[2][0])) as http:
        assert unknown_drops((await http.get("/metrics")).text) == 1

    await on_a.send(f"kick {uc}")
    await on_c.expect_closed()


async def test_redis_killed_and_restarted_mid_traffic(
    procs: Processes, redis: RedisServer, tmp_path: Path
) -> None:
    _, up_port = await procs.upstream("U", kind="grpcio")
    (a, a_port), (b, b_port) = [
        await start_node(procs, tmp_path, redis, n, up_port) for n in ("a", "b")
    ]
    on_a, on_b = await procs.client(a_port), await procs.client(b_port)
    await on_a.whoami()
    ub = await on_b.whoami()
    await on_a.send(f"to {ub} before")
    assert await on_b.recv() == "before"

    marks = a.mark(), b.mark()
    await redis.kill()
    await a.wait_for("cluster degraded", after=marks[0])
    for i in range(50):  # local traffic never stops
        await on_a.send(f"m{i}")
        await on_b.send(f"m{i}")
        assert await on_a.recv() == f"U:m{i}"
        assert await on_b.recv() == f"U:m{i}"
    await on_a.send(f"to {ub} lost while Redis is down")

    marks = a.mark(), b.mark()
    await redis.start()
    await a.wait_for("cluster connected again", after=marks[0], timeout=TIMEOUT)
    await b.wait_for("cluster: clients registered clients=1", after=marks[1])
    await on_a.send(f"to {ub} after")
    assert await on_b.recv() == "after"  # and not the lost one
    async with httpx.AsyncClient(base_url=await admin_url(a)) as http:
        metrics = (await http.get("/metrics")).text
    dropped = re.search(
        r'^pmlb_cluster_messages_total\{direction="dropped"\} (\S+)$', metrics, re.M
    )
    assert dropped is not None
    assert float(dropped.group(1)) == 1


def test_a_bad_redis_url_exits_2_with_the_reason() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "pmlb", "serve", "--cluster-redis", "redis//127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--cluster-redis: must start with redis://, rediss:// or unix://" in result.stderr


def test_check_config_shows_the_cluster_without_its_password(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "c.toml"
    path.write_text('[cluster]\nredis_url = "redis://:hunter2@127.0.0.1:6380/1"\nnode = "n1"\n')
    result = subprocess.run(
        [sys.executable, "-m", "pmlb", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "[cluster]" in result.stdout
    assert 'redis_url = "redis://:***@127.0.0.1:6380/1"' in result.stdout
    assert "hunter2" not in result.stdout


async def test_a_killed_node_is_reaped_once_and_its_clients_reported_gone(
    procs: Processes, redis: RedisServer, tmp_path: Path
) -> None:
    upstream, up_port = await procs.upstream("U", kind="grpcio")
    nodes = [await start_node(procs, tmp_path, redis, n, up_port, True) for n in "abc"]
    (_, a_port), (b, b_port) = nodes[0], nodes[1]
    on_a, on_b = await procs.client(a_port), await procs.client(b_port)
    await on_a.whoami()
    ub = await on_b.whoami()
    mark = upstream.mark()
    b.signal(signal.SIGKILL)
    await b.wait()
    await upstream.wait_for(rf"EVENT disconnected {ub} DISCONNECT_ERROR", after=mark)
    # reaped by exactly one survivor
    reapers = [p for p, _ in (nodes[0], nodes[2]) if p.count(r"node gone .*node=b\b")]
    assert len(reapers) == 1
    await on_a.send(f"to {ub} too late")
    await on_a.whoami()
    assert upstream.count(rf"EVENT disconnected {ub}") == 1


async def test_pmlb_ctl_on_one_node_sees_and_steers_the_others(
    procs: Processes, redis: RedisServer, tmp_path: Path
) -> None:
    import json
    import os

    import trio

    _, up_port = await procs.upstream("U", kind="grpcio")
    (a, _), (_b, b_port) = [await start_node(procs, tmp_path, redis, n, up_port) for n in "ab"]
    on_b = await procs.client(b_port)
    ub = await on_b.whoami()
    url = await admin_url(a)

    async def ctl(*args: str) -> tuple[int, str, str]:
        with trio.fail_after(TIMEOUT):
            done = await trio.run_process(
                [sys.executable, "-m", "pmlb", "ctl", "--url", url, *args],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={**os.environ, "PMLB_ADMIN_TOKEN": ""},
            )
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    async with httpx.AsyncClient(base_url=url) as http:
        # polled (another process): b's heartbeat counts its client, then a's sees it
        for _ in range(int(TIMEOUT / 0.05)):
            cluster = (await http.get("/api/v1/cluster")).json()
            if [n["clients"] for n in cluster["nodes"]] == [0, 1] and cluster["clients"] == 1:
                break
            await trio.sleep(0.05)
    code, out, err = await ctl("cluster")
    assert code == 0, err
    header, row_a, row_b, summary = out.splitlines()
    assert header.split() == ["NODE", "ADMIN", "CLIENTS", "SERVING", "HEARTBEAT", "VERSION"]
    assert row_a.split()[:2] == ["a", "*"]
    assert row_b.split()[0] == "b"
    assert row_b.split()[2:4] == ["1", "1/1"]
    assert summary == "2 nodes, 1 clients (* this one)"
    code, out, err = await ctl("clients", "get", ub, "--json")
    assert code == 0, err
    assert json.loads(out)["node"] == "b"
    code, out, _ = await ctl("clients", "send", ub, "through a")
    assert out.strip() == "queued"
    assert await on_b.recv() == "through a"
    code, out, _ = await ctl("broadcast", "everyone")
    assert out.strip() == "sent to 1 client on 2 of 2 nodes"
    assert await on_b.recv() == "everyone"
    code, out, _ = await ctl("clients", "kick", ub)
    assert code == 0
    assert out.strip() == f"disconnected {ub}"
    await on_b.expect_closed()


@pytest.mark.timeout(300)
def test_the_cluster_cost_tool_runs_and_reports_its_figures() -> None:
    import subprocess

    from tests.helpers import ROOT

    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "cluster_cost.py"),
            *("--pairs", "2", "--messages", "20", "--rounds", "1", "--latency-messages", "5"),
            *("--broadcast-clients", "20", "--broadcasts", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^cross/local pmlb CPU per reply: (\d+\.\d\dx|n/a .*)$", result.stdout, re.M)
    assert re.search(r"^local +40 ", result.stdout, re.M)
    assert re.search(r"^cross +40 ", result.stdout, re.M)
    assert re.search(r"^  two nodes +\d+\.\d ms$", result.stdout, re.M)
