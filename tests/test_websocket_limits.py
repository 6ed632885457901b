"""WebSocket listeners under the same limits, TLS and PROXY protocol as TCP ones.

Each test runs pmlb in-process (as tests/test_security.py does) with a real
scripted upstream, and speaks WebSocket with the `websockets` package
(tests/ws_client.py). Certificates come from trustme.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

import pmlb
from pmlb.codecs.proxy_protocol import encode_v1, encode_v2
from pmlb.downstream import websocket
from pmlb.downstream.limits import ConnectionCounters
from pmlb.downstream.websocket import _Corked
from tests.helpers import TIMEOUT, Processes
from tests.ws_client import WsClient


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("ws-certs")
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    return {"tls_cert": str(cert), "tls_key": str(key)}


def make_config(upstream_port: int, **listener: Any) -> pmlb.Config:
    globals_ = {k: listener.pop(k) for k in ("max_clients_total",) if k in listener}
    return pmlb.parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "framing": "line", **globals_},
            "management_server": {"enabled": False},
            "listener": [
                {
                    "name": "ws",
                    "host": "127.0.0.1",
                    "port": 0,
                    "transport": "websocket",
                    "path": "/ws",
                    **listener,
                }
            ],
            "upstream": [{"host": "127.0.0.1", "port": upstream_port}],
        }
    )


def counters(server: pmlb.Server) -> ConnectionCounters:
    return server.registry.statistics().connections


class Clients:
    """WebSocket clients a test opens, all closed at its end."""

    def __init__(self) -> None:
        self.open: list[WsClient] = []

    async def connect(self, port: int, **options: Any) -> WsClient:
        client = await WsClient.connect(port, "/ws", **options)
        self.open.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.open:
            await client.aclose()


@pytest.fixture
async def clients() -> Any:
    opened = Clients()
    try:
        yield opened
    finally:
        await opened.aclose()


async def expect_eof(stream: trio.abc.Stream) -> None:
    """The connection is closed by pmlb before (or without) a WebSocket handshake."""
    with trio.fail_after(TIMEOUT), contextlib.suppress(trio.BrokenResourceError):
        assert await stream.receive_some(1024) == b""  # (a reset is a close too)


async def settle() -> None:
    """Let the in-process pmlb finish what it is doing (a client's cleanup)."""
    await trio.testing.wait_all_tasks_blocked()


async def test_wss_carries_traffic_and_counts_failed_tls(
    procs: Processes, clients: Clients, ca: trustme.CA, server_files: dict[str, str]
) -> None:
    _, up = await procs.upstream("A")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, **server_files))
        port = server.port("ws")
        client = await clients.connect(port, ssl_context=context)
        uuid = await client.whoami()
        seen = server.registry.clients[uuid]
        assert (seen.transport, seen.listener) == ("websocket", "ws")
        await client.send("over wss")
        assert await client.recv() == "A:over wss"
        # Plain ws:// on a wss listener is a failed TLS handshake, counted.
        with pytest.raises((EOFError, trio.BrokenResourceError)):
            await clients.connect(port)
        assert counters(server).tls_handshake_failures == 1
        await client.send("still")
        assert await client.recv() == "A:still"
        server.stop()


async def test_wss_with_client_certificates(
    procs: Processes,
    clients: Clients,
    ca: trustme.CA,
    server_files: dict[str, str],
    tmp_path: Path,
) -> None:
    _, up = await procs.upstream("A")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    config = make_config(up, tls_client_ca=str(ca_file), **server_files)
    with_cert = ssl.create_default_context()
    ca.configure_trust(with_cert)
    ca.issue_cert("client.example").configure_cert(with_cert)
    without = ssl.create_default_context()
    ca.configure_trust(without)
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        client = await clients.connect(server.port("ws"), ssl_context=with_cert)
        await client.whoami()
        # TLS 1.3: the client's handshake ends before pmlb checks for a
        # certificate, so the refusal shows during the upgrade.
        with pytest.raises((EOFError, trio.BrokenResourceError)):
            await clients.connect(server.port("ws"), ssl_context=without)
        assert counters(server).tls_handshake_failures == 1
        server.stop()


async def test_proxy_protocol_gives_the_real_address_over_wss(
    procs: Processes, clients: Clients, ca: trustme.CA, server_files: dict[str, str]
) -> None:
    _, up = await procs.upstream("A")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    config = make_config(up, proxy_protocol=True, **server_files)
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        header = encode_v2(("198.51.100.9", 5555), ("192.0.2.1", 443))
        client = await clients.connect(server.port("ws"), ssl_context=context, prefix=header)
        uuid = await client.whoami()
        assert server.registry.clients[uuid].remote == "198.51.100.9:5555"
        server.stop()


async def test_proxy_protocol_header_and_upgrade_in_one_segment(
    procs: Processes, clients: Clients
) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, proxy_protocol=True))
        header = encode_v1(("203.0.113.7", 4242), ("192.0.2.1", 80))
        # ws_client sends the header, then the upgrade request right after it:
        # pmlb may read both at once, and must not lose the request.
        client = await clients.connect(server.port("ws"), prefix=header)
        uuid = await client.whoami()
        assert server.registry.clients[uuid].remote == "203.0.113.7:4242"
        # Without a header, the connection is refused and counted.
        with pytest.raises((EOFError, trio.BrokenResourceError)):
            await clients.connect(server.port("ws"))
        assert counters(server).proxy_header_errors == 1
        server.stop()


async def test_handshake_timeout_covers_the_http_upgrade(
    procs: Processes, clients: Clients
) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(
            pmlb.serve, make_config(up, handshake_timeout=0.5)
        )
        port = server.port("ws")
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        procs.on_close(silent)
        # Half an upgrade request: still not a handshake.
        half = await trio.open_tcp_stream("127.0.0.1", port)
        procs.on_close(half)
        await half.send_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for stream in (silent, half):
            await expect_eof(stream)
        assert counters(server).handshake_timeouts == 2
        assert counters(server).open == 0
        # A client that completes its handshake in time stays.
        client = await clients.connect(port)
        await client.whoami()
        server.stop()


async def test_over_max_clients_closes_with_1008(procs: Processes, clients: Clients) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, max_clients=1))
        port = server.port("ws")
        first = await clients.connect(port)
        await first.whoami()
        extra = await clients.connect(port)
        close = await extra.expect_close()
        assert close.code == 1008
        assert close.reason == "listener at max_clients (1)"
        assert counters(server).refused_max_clients == 1
        assert len(server.registry.clients) == 1
        await first.send("x")
        assert await first.recv() == "A:x"
        # The refused connection did not take the place: once the first
        # client leaves, another one gets in.
        await first.aclose()
        await settle()
        assert not server.registry.clients
        again = await clients.connect(port)
        await again.whoami()
        server.stop()


async def test_over_max_clients_closed_at_once_past_the_courtesy_bound(
    procs: Processes, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(websocket, "MAX_COURTESY_CLOSES", 1)
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, max_clients=1))
        port = server.port("ws")
        first = await clients.connect(port)
        await first.whoami()
        # This one holds the one courtesy place: it never sends its upgrade.
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        procs.on_close(slow)
        await settle()
        # So the next one is closed without a handshake.
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        procs.on_close(extra)
        await expect_eof(extra)
        assert counters(server).refused_max_clients == 2
        assert counters(server).handshake_timeouts == 0  # closed, not timed out
        server.stop()


async def test_max_clients_total_counts_tcp_and_websocket(
    procs: Processes, clients: Clients
) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, max_clients_total=1))
        tcp = await procs.client(server.port())
        await tcp.whoami()
        extra = await clients.connect(server.port("ws"))
        close = await extra.expect_close()
        assert close.code == 1008
        assert close.reason == "server at max_clients_total (1)"
        assert counters(server).refused_max_clients == 1
        server.stop()


async def test_accept_rate_closes_before_the_handshake(procs: Processes, clients: Clients) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        # One connection per 100 s, bursts of one: the second one is over.
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, accept_rate=0.01))
        first = await clients.connect(server.port("ws"))
        await first.whoami()
        second = await trio.open_tcp_stream("127.0.0.1", server.port("ws"))
        procs.on_close(second)
        await expect_eof(second)
        assert counters(server).refused_accept_rate == 1
        await first.send("x")
        assert await first.recv() == "A:x"
        server.stop()


async def test_idle_timeout_closes_with_1008(procs: Processes, clients: Clients) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, idle_timeout=0.3))
        client = await clients.connect(server.port("ws"))
        await client.whoami()
        close = await client.expect_close()
        assert close.code == 1008
        assert close.reason == "idle for idle_timeout (0.3s)"
        await settle()
        assert counters(server).idle_timeouts == 1
        assert counters(server).open == 0
        server.stop()


async def test_too_big_is_counted_as_bad_input(procs: Processes, clients: Clients) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up, max_message_size=100))
        client = await clients.connect(server.port("ws"))
        await client.send(b"z" * 101)
        close = await client.expect_close()
        assert close.code == 1009
        await settle()
        assert counters(server).bad_input == 1
        server.stop()


class Recorder(trio.abc.Stream):
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_corked_stream_writes_a_batch_at_once_and_keeps_order() -> None:
    inner = Recorder()
    corked = _Corked(inner)
    await corked.send_all(b"pong")  # not corked: at once
    corked.corked = True
    for part in (b"a", b"b", b"c"):
        await corked.send_all(part)
    assert inner.writes == [b"pong"]
    await corked.flush()
    assert inner.writes == [b"pong", b"abc"]
    # Held data left by an interrupted batch goes out before the next write.
    corked.corked = True
    await corked.send_all(b"d")
    corked.corked = False
    await corked.send_all(b"close")
    assert inner.writes == [b"pong", b"abc", b"dclose"]


def test_wss_config_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(pmlb.ConfigError, match=r"tls_key: must be set when tls_cert is set"):
        pmlb.parse_config(
            {"server": {"transport": "websocket", "tls_cert": str(tmp_path / "c.pem")}}
        )


async def test_messages_read_together_are_dispatched_as_one_batch(
    procs: Processes, clients: Clients
) -> None:
    _, up = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, make_config(up))
        registry = server.registry
        batches: list[int] = []
        dispatch_from = registry.dispatch_from

        async def recording(client: Any, requests: list[Any], *args: Any) -> bool:
            batches.append(len(requests))
            return await dispatch_from(client, requests, *args)

        registry.dispatch_from = recording  # type: ignore[method-assign]
        client = await clients.connect(server.port("ws"))
        await client.whoami()
        # Ten frames in one write: pmlb reads them at once, and hands them on
        # in batches (bounded by its message queue), in order.
        for i in range(10):
            client.protocol.send_text(f"m{i}".encode())
        await client.stream.send_all(b"".join(client.protocol.data_to_send()))
        assert [await client.recv() for _ in range(10)] == [f"A:m{i}" for i in range(10)]
        assert batches[0] == 1  # whoami
        assert sum(batches[1:]) == 10
        assert max(batches) > 1
        server.stop()
