"""WebSocket listeners end to end: `pmlb serve` with a TCP and a WebSocket listener.

The WebSocket clients are the `websockets` package (tests/ws_client.py), an
implementation pmlb does not use itself.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from tests.helpers import LineClient, Proc, Processes, wait_serving
from tests.ws_client import HandshakeRefused, WsClient

pytestmark = pytest.mark.e2e


@attrs.define
class Setup:
    procs: Processes
    pmlb: Proc
    tcp_port: int
    ws_port: int
    clients: list[WsClient] = attrs.Factory(list)

    async def ws(self, path: str = "/ws") -> WsClient:
        client = await WsClient.connect(self.ws_port, path)
        self.clients.append(client)
        return client

    async def tcp(self) -> LineClient:
        return await self.procs.client(self.tcp_port)


async def start(procs: Processes, tmp_path: Path, **ws: object) -> Setup:
    _, up_port = await procs.upstream("A")
    options = "\n".join(f"{key} = {value!r}" for key, value in ws.items())
    config = tmp_path / "pmlb.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
framing = "line"

[[listener]]
name = "ws"
host = "127.0.0.1"
port = 0
transport = "websocket"
path = "/ws"
max_message_size = 1000
{options}

[[upstream]]
host = "127.0.0.1"
port = {up_port}
"""
    )
    pmlb, tcp_port = await procs.pmlb("--config", str(config))
    match = await pmlb.wait_for(r"listening listener=ws address=127\.0\.0\.1:(\d+)")
    await wait_serving(pmlb, up_port)
    return Setup(procs, pmlb, tcp_port, int(match.group(1)))


@pytest.fixture
async def setup(procs: Processes, tmp_path: Path) -> AsyncIterator[Setup]:
    result = await start(procs, tmp_path)
    try:
        yield result
    finally:
        for client in result.clients:
            await client.aclose()


async def test_websocket_clients_get_uuids_and_replies(setup: Setup) -> None:
    a, b = await setup.ws(), await setup.ws()
    first = [await a.whoami(), await b.whoami()]
    assert first == [await a.whoami(), await b.whoami()]
    assert len(set(first)) == 2
    messages = [f"message {i} \u00e9" for i in range(50)]
    for message in messages:
        await a.send(message)
    assert [await a.recv() for _ in messages] == [f"A:{m}" for m in messages]


async def test_reply_is_text_after_text_and_binary_after_binary(setup: Setup) -> None:
    client = await setup.ws()
    await client.send("hello")
    assert await client.recv() == "A:hello"
    await client.send(b"hello")
    assert await client.recv() == b"A:hello"
    # Not valid UTF-8: binary even after a text message.
    await client.send("x")
    assert await client.recv() == "A:x"
    await client.send(b"\xff\xfe")
    assert await client.recv() == b"A:\xff\xfe"


async def test_reply_mode_binary(procs: Processes, tmp_path: Path) -> None:
    setup = await start(procs, tmp_path, websocket_reply="binary")
    client = await setup.ws()
    await client.send("hello")
    assert await client.recv() == b"A:hello"
    await client.aclose()


async def test_routing_and_broadcast_between_tcp_and_websocket(setup: Setup) -> None:
    ws, tcp = await setup.ws(), await setup.tcp()
    ws_uuid, tcp_uuid = await ws.whoami(), await tcp.whoami()
    await tcp.send(f"to {ws_uuid} from tcp")
    assert await ws.recv() == "from tcp"  # text: its last message was text
    await ws.send(f"to {tcp_uuid} from ws")
    assert await tcp.recv() == "from ws"
    await ws.send("bcast all everyone")
    assert await ws.recv() == "everyone"
    assert await tcp.recv() == "everyone"
    await tcp.send("whoami")  # nothing else was queued for the TCP client
    assert await tcp.recv() == tcp_uuid


async def test_too_big_closes_with_1009_and_others_carry_on(setup: Setup) -> None:
    big, other = await setup.ws(), await setup.ws()
    await other.whoami()
    await big.send("x" * 1001)
    close = await big.expect_close()
    assert close.code == 1009
    await setup.pmlb.wait_for(r"client disconnected .*reason=.*message too big")
    await other.send("still here")
    assert await other.recv() == "A:still here"


async def test_a_message_at_the_limit_passes(setup: Setup) -> None:
    client = await setup.ws()
    await client.send(b"y" * 1000)
    assert await client.recv() == b"A:" + b"y" * 1000


async def test_other_paths_are_refused(setup: Setup) -> None:
    with pytest.raises(HandshakeRefused) as refused:
        await setup.ws("/other")
    assert refused.value.status == 404


async def test_stop_closes_websocket_clients_with_1001(setup: Setup) -> None:
    client = await setup.ws()
    await client.whoami()
    setup.pmlb.signal(signal.SIGTERM)
    close = await client.expect_close()
    assert close.code == 1001
    assert await setup.pmlb.wait() == 0


async def test_handshake_timeout(procs: Processes, tmp_path: Path) -> None:
    setup = await start(procs, tmp_path, handshake_timeout=0.5)
    stream = await trio.open_tcp_stream("127.0.0.1", setup.ws_port)
    with trio.fail_after(30):
        # pmlb closes a connection that never completes its handshake.
        assert await stream.receive_some(1024) == b""
    await stream.aclose()


async def test_a_client_that_does_not_answer_pings_is_disconnected(
    procs: Processes, tmp_path: Path, nursery: trio.Nursery
) -> None:
    # Generous ping_timeout: the lively client must never miss it on a loaded machine.
    setup = await start(procs, tmp_path, ping_interval=0.2, ping_timeout=2.0)
    quiet = await setup.ws()  # it never reads again, so it never answers a ping
    lively = await setup.ws()
    lively_uuid = await lively.whoami()
    nursery.start_soon(lively.pump)  # answers every ping as it comes
    match = await setup.pmlb.wait_for(
        r"client disconnected client=(\S+) .*reason=\"no pong within ping_timeout"
    )
    assert match.group(1) != lively_uuid
    await lively.send("ping-pong")
    assert await lively.recv() == "A:ping-pong"
    assert lively.pings > 0
    await quiet.aclose()
    await lively.aclose()
