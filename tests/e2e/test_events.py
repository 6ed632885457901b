"""Lifecycle events and upstream actions end to end (the contract's extensions).

pmlb serves a line-framed TCP listener and a WebSocket listener; upstream E
has ``events = true``, upstream O is on the original contract. The scripted
upstreams print a line for every event they receive (tests/upstreams/script.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from tests.helpers import LineClient, Proc, Processes, wait_serving
from tests.ws_client import WsClient

pytestmark = pytest.mark.e2e


@attrs.define
class Setup:
    procs: Processes
    pmlb: Proc
    port: int
    ws_port: int
    upstreams: dict[str, Proc]

    async def tcp(self) -> LineClient:
        client = await self.procs.client(self.port)
        await client.whoami()
        return client


async def start(
    procs: Processes,
    tmp_path: Path,
    upstreams: dict[str, bool],
    *,
    kind: str = "grpclib",
    transport: str = "native",
    balancing: str = "round_robin",
) -> Setup:
    """pmlb over upstreams named by ``upstreams`` (name -> events)."""
    started = {name: await procs.upstream(name, kind=kind) for name in upstreams}
    tables = "".join(
        f"""
[[upstream]]
host = "127.0.0.1"
port = {port}
transport = "{transport}"
events = {"true" if upstreams[name] else "false"}
"""
        for name, (_, port) in started.items()
    )
    config = tmp_path / "pmlb.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
framing = "line"
max_message_size = 200
balancing = "{balancing}"

[[listener]]
name = "ws"
host = "127.0.0.1"
port = 0
transport = "websocket"
{tables}"""
    )
    pmlb, port = await procs.pmlb("--config", str(config))
    match = await pmlb.wait_for(r"listening listener=ws address=127\.0\.0\.1:(\d+)")
    for _, up_port in started.values():
        await wait_serving(pmlb, up_port)
    return Setup(
        procs, pmlb, port, int(match.group(1)), {name: proc for name, (proc, _) in started.items()}
    )


def connected(uuid: str) -> str:
    return rf"^EVENT connected {uuid} (\S+) (\S+) (\S+)$"


def disconnected(uuid: str) -> str:
    return rf"^EVENT disconnected {uuid} (\S+) (.*)$"


@pytest.mark.parametrize(
    ("kind", "transport"), [("grpclib", "native"), ("grpcio", "native"), ("grpcio", "grpclib")]
)
async def test_an_opted_in_upstream_sees_connected_then_disconnected_and_the_other_neither(
    procs: Processes, tmp_path: Path, kind: str, transport: str
) -> None:
    setup = await start(procs, tmp_path, {"E": True, "O": False}, kind=kind, transport=transport)
    e, o = setup.upstreams["E"], setup.upstreams["O"]
    client = await setup.tcp()
    assert client.uuid is not None
    local = client.stream.socket.getsockname()
    match = await e.wait_for(connected(client.uuid))
    assert match.groups() == (f"127.0.0.1:{local[1]}", "default", "tcp")
    # Messages still reach both upstreams, round robin.
    await client.send("m1", "m2")
    assert sorted(r.split(":")[0] for r in await client.recv_many(2)) == ["E", "O"]
    await client.stream.aclose()
    match = await e.wait_for(disconnected(client.uuid))
    assert match.groups() == ("DISCONNECT_CLIENT_CLOSED", "client closed the connection")
    # O has served messages after the events were sent, and saw no event.
    other = await setup.tcp()
    await other.send("n1", "n2")
    assert sorted(r.split(":")[0] for r in await other.recv_many(2)) == ["E", "O"]
    assert o.count("EVENT") == 0
    assert e.count(rf"EVENT connected {other.uuid} ") == 1


async def test_websocket_client_events_and_the_disconnect_action(
    procs: Processes, tmp_path: Path
) -> None:
    setup = await start(procs, tmp_path, {"E": True})
    e = setup.upstreams["E"]
    ws = await WsClient.connect(setup.ws_port, "/")
    try:
        ws_uuid = await ws.whoami()
        match = await e.wait_for(connected(ws_uuid))
        assert match.group(2, 3) == ("ws", "websocket")
        tcp = await setup.tcp()
        await tcp.send(f"kick {ws_uuid}")
        close = await ws.expect_close()
        assert close.code == 1008
        match = await e.wait_for(disconnected(ws_uuid))
        assert match.groups() == ("DISCONNECT_UPSTREAM_ACTION", "disconnected by an upstream")
        # The sender is untouched.
        await tcp.send("still")
        assert await tcp.recv() == "E:still"
    finally:
        await ws.aclose()


async def test_disconnect_by_multicast_closes_exactly_its_targets(
    procs: Processes, tmp_path: Path
) -> None:
    setup = await start(procs, tmp_path, {"E": True})
    a, b, c = [await setup.tcp() for _ in range(3)]
    await a.send(f"kick {b.uuid},{c.uuid}")
    assert await b.expect_closed() == b""
    assert await c.expect_closed() == b""
    await a.send("alive")
    assert await a.recv() == "E:alive"
    e = setup.upstreams["E"]
    for client in (b, c):
        assert client.uuid is not None
        match = await e.wait_for(disconnected(client.uuid))
        assert match.group(1) == "DISCONNECT_UPSTREAM_ACTION"
    assert e.count(rf"EVENT disconnected {a.uuid} ") == 0


async def test_multicast_reaches_exactly_its_targets(procs: Processes, tmp_path: Path) -> None:
    setup = await start(procs, tmp_path, {"E": False})
    a, b, c = [await setup.tcp() for _ in range(3)]
    unknown = "00000000-0000-4000-8000-000000000000"
    await a.send(f"multi {a.uuid},{c.uuid},{unknown},{a.uuid} hello")
    assert await a.recv() == "hello"
    assert await c.recv() == "hello"
    await setup.pmlb.wait_for(rf"unknown client dropped .*client={unknown}")
    # b got nothing (its next line is its own answer), a got it once.
    for client in (a, b, c):
        await client.send("whoami")
        assert await client.recv() == client.uuid


async def test_too_big_is_reported_as_such(procs: Processes, tmp_path: Path) -> None:
    setup = await start(procs, tmp_path, {"E": True})
    client = await setup.tcp()
    assert client.uuid is not None
    await client.send("x" * 300)
    await client.expect_closed()
    match = await setup.upstreams["E"].wait_for(disconnected(client.uuid))
    assert match.group(1) == "DISCONNECT_TOO_BIG"


@pytest.mark.parametrize("balancing", ["sticky", "hash"])
async def test_events_follow_the_policy_to_the_clients_upstream(
    procs: Processes, tmp_path: Path, balancing: str
) -> None:
    setup = await start(procs, tmp_path, {"A": True, "B": True, "C": True}, balancing=balancing)
    clients = [await setup.tcp() for _ in range(6)]
    for client in clients:
        assert client.uuid is not None
        await client.send("which")
        (home,) = re.findall(r"^(\w):which$", await client.recv())
        await client.stream.aclose()
        for name, upstream in setup.upstreams.items():
            if name == home:
                await upstream.wait_for(disconnected(client.uuid))
                assert upstream.count(rf"EVENT connected {client.uuid} ") == 1
    for client in clients:
        seen = [n for n, u in setup.upstreams.items() if u.count(rf" {client.uuid} ")]
        assert len(seen) == 1, f"{client.uuid}'s events went to {seen}"
