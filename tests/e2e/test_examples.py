"""The example upstreams and the embedding example, run as their README says."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers import ROOT, Processes, admin_url, free_low_port, upstream_arg, wait_serving
from tests.redis_server import RedisServer, needs_redis

pytestmark = pytest.mark.e2e

EXAMPLES = ROOT / "examples"


async def example_upstream(procs: Processes, name: str, *extra: str) -> int:
    port = free_low_port()
    proc = await procs.start(
        name, [sys.executable, str(EXAMPLES / name), "--port", str(port), *extra]
    )
    await proc.wait_for(rf"listening on 127\.0\.0\.1:{port}")
    return port


async def test_echo_upstream_example(procs: Processes) -> None:
    up_port = await example_upstream(procs, "echo_upstream.py")
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(up_port))
    await wait_serving(pmlb, up_port)
    client = await procs.client(port)
    await client.send("hello", "again")
    assert await client.recv_many(2) == ["hello", "again"]


async def test_echo_upstream_example_with_acks(procs: Processes, tmp_path: Path) -> None:
    up_port = await example_upstream(procs, "echo_upstream.py", "--acks")
    config = tmp_path / "pmlb.toml"
    config.write_text(f'[[upstream]]\nhost = "127.0.0.1"\nport = {up_port}\nacks = true\n')
    pmlb, port = await procs.pmlb("--framing", "line", "--config", str(config))
    await wait_serving(pmlb, up_port)
    client = await procs.client(port)
    await client.send("hello", "again")
    assert await client.recv_many(2) == ["hello", "again"]
    async with httpx.AsyncClient() as http:
        view = await http.get(f"{await admin_url(pmlb)}/api/v1/upstreams/127.0.0.1:{up_port}")
    body = view.json()
    assert (body["acks"], body["unacked"], body["acks_unknown"]) == (True, 0, 0)
    assert body["acks_received"] >= 2  # the messages, and the connected event if any


async def test_chat_upstream_example_broadcasts_to_everyone(procs: Processes) -> None:
    up_port = await example_upstream(procs, "chat_upstream.py")
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(up_port))
    await wait_serving(pmlb, up_port)
    alice, bob = await procs.client(port), await procs.client(port)
    await alice.send("/nick alice")
    assert (await alice.recv()).endswith("is now alice")
    assert (await bob.recv()).endswith("is now alice")
    await alice.send("hi bob")
    assert await alice.recv() == "alice: hi bob"
    assert await bob.recv() == "alice: hi bob"


async def test_chat_example_with_events_announces_arrivals_departures_and_kicks(
    procs: Processes, tmp_path: Path
) -> None:
    up_port = await example_upstream(procs, "chat_upstream.py")
    shipped = (EXAMPLES / "chat_pmlb.toml").read_text()
    assert "port = 45888" in shipped
    config = tmp_path / "chat.toml"
    config.write_text(shipped.replace("port = 45888", f"port = {up_port}"))
    pmlb, port = await procs.pmlb("--config", str(config))
    await wait_serving(pmlb, up_port)
    alice = await procs.client(port)
    assert (await alice.recv()).endswith("joined (tcp)")
    await alice.send("/nick alice")
    assert (await alice.recv()).endswith("is now alice")
    bob = await procs.client(port)
    assert (await alice.recv()).endswith("joined (tcp)")
    assert (await bob.recv()).endswith("joined (tcp)")
    await bob.send("/nick bob")
    assert (await alice.recv()).endswith("is now bob")
    await alice.send("/kick bob")
    await bob.expect_closed()
    assert await alice.recv() == "* bob left (kicked)"
    carol = await procs.client(port)
    assert (await alice.recv()).endswith("joined (tcp)")
    # Read before closing: closing a socket with unread data resets it, and
    # pmlb would report "connection lost".
    assert (await carol.recv()).endswith("joined (tcp)")
    await carol.stream.aclose()
    assert (await alice.recv()).endswith("left (quit)")


async def test_embedding_example_broadcasts_ticks(procs: Processes) -> None:
    up_port = await example_upstream(procs, "echo_upstream.py")
    port = free_low_port()
    embed = await procs.start(
        "embed",
        [
            sys.executable,
            str(EXAMPLES / "embed.py"),
            "--port",
            str(port),
            "--upstream",
            f"127.0.0.1:{up_port}",
            "--ticks",
            "3",
        ],
    )
    await embed.wait_for(rf"clients connect to 127\.0\.0\.1:{port}")
    client = await procs.client(port)
    await client.send("ping")
    # The echo and the ticks come in whatever order the clock makes them.
    lines = [await client.recv()]
    while "ping" not in lines or len(lines) < 2:
        lines.append(await client.recv())
    assert lines.count("ping") == 1
    assert all(line.startswith("tick ") for line in lines if line != "ping")
    assert await embed.wait() == 0


@needs_redis
async def test_two_node_cluster_example_chats_across_nodes(
    procs: Processes, redis: RedisServer, tmp_path: Path
) -> None:
    up_port = await example_upstream(procs, "chat_upstream.py")
    nodes = []
    for name in ("a", "b"):
        shipped = (EXAMPLES / f"cluster_node_{name}.toml").read_text()
        assert 'reply_scope = "cluster"' in shipped
        assert "port = 45888" in shipped
        config = tmp_path / f"{name}.toml"
        config.write_text(shipped.replace("port = 45888", f"port = {up_port}"))
        # The test's own Redis (--cluster-redis overrides the file's) and free ports.
        pmlb, port = await procs.pmlb("--config", str(config), "--cluster-redis", redis.url)
        await pmlb.wait_for(rf"cluster joined node={name}\b")
        await wait_serving(pmlb, up_port)
        nodes.append((pmlb, port))
    (a, a_port), (b, b_port) = nodes

    alice = await procs.client(a_port)
    assert (await alice.recv()).endswith("joined (tcp)")
    # A broadcast reaches the other node a little later than this one's
    # clients: bob connects once node b has had alice's "joined" (polled).
    async with httpx.AsyncClient(base_url=await admin_url(b)) as http:
        for _ in range(200):
            metrics = (await http.get("/metrics")).text
            if 'pmlb_cluster_messages_total{direction="from_nodes"} 1.0' in metrics:
                break
            await trio.sleep(0.05)
        else:
            pytest.fail("node b never received alice's joined broadcast")
    bob = await procs.client(b_port)  # on the other node
    for client in (alice, bob):
        assert (await client.recv()).endswith("joined (tcp)")
    await bob.send("/nick bob")
    for client in (alice, bob):
        assert (await client.recv()).endswith("is now bob")
    await alice.send("/nick alice")
    for client in (alice, bob):
        assert (await client.recv()).endswith("is now alice")
    await bob.send("hi alice")
    for client in (alice, bob):
        assert await client.recv() == "bob: hi alice"
    await alice.send("/kick bob")  # bob's node disconnects him
    await bob.expect_closed()
    assert await alice.recv() == "* bob left (kicked)"

    # a's admin lists both nodes once a's heartbeat (every 2 s here) saw b's
    async with httpx.AsyncClient(base_url=await admin_url(a)) as http:
        for _ in range(200):
            cluster = (await http.get("/api/v1/cluster")).json()
            if len(cluster["nodes"]) == 2:
                break
            await trio.sleep(0.05)
    assert [node["name"] for node in cluster["nodes"]] == ["a", "b"]
