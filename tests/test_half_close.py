"""Clients that close or half-close, in process over real sockets.

A client that closes while no upstream serves (pmlb is not reading it then)
is noticed all the same, and what it sent reaches the upstream that serves
later, followed by its disconnected event. A client that half-closes still
gets the replies to what it sent, for ``client_fin_timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

import pmlb
from pmlb.registry import Registry
from pmlb.upstream.state import UpstreamState
from tests.helpers import Processes, free_low_port


def config(upstream_port: int, **server: object) -> pmlb.Config:
    return pmlb.parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "framing": "line", **server},
            "upstream": [{"host": "127.0.0.1", "port": upstream_port, "events": True}],
            "management_server": {"enabled": False},
        }
    )


async def wait_for(registry: Registry, condition: Callable[[], bool], timeout: float) -> None:
    """Wait until ``condition()`` holds, checking after each registry event."""
    with registry.events.subscribe() as events, trio.fail_after(timeout):
        while not condition():
            await events.next_batch()


async def test_clients_closing_while_no_upstream_serves_are_noticed_and_delivered(
    procs: Processes, tmp_path: Path
) -> None:
    up_port = free_low_port()  # nothing listens there yet
    n = 20
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(
            pmlb.serve, config(up_port, client_fin_timeout=0.2)
        )
        registry = server.registry
        streams = []
        for i in range(n):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port())
            await stream.send_all(f"hello {i}\n".encode())
            streams.append(stream)
            procs.on_close(stream)
        await trio.testing.wait_all_tasks_blocked()  # every message read
        assert registry.statistics().awaiting_upstream == n
        assert len(registry.clients) == n
        for stream in streams:
            await stream.aclose()
        # Noticed without reading, within a second of the close (and the fin timeout).
        await wait_for(registry, lambda: not registry.clients, 1.5)
        await trio.testing.wait_all_tasks_blocked()
        assert not registry.connections.open
        assert registry.statistics().awaiting_upstream == n  # each client's message, kept

        record = tmp_path / "record"
        upstream, _ = await procs.upstream("A", port=up_port, extra=["--record", str(record)])
        for _ in range(n):
            await upstream.wait_for(r"EVENT disconnected \S+ DISCONNECT_CLIENT_CLOSED")
        await trio.testing.wait_all_tasks_blocked()
        assert registry.statistics().awaiting_upstream == 0
        assert sorted(record.read_text().split("\n")[:-1]) == sorted(f"hello {i}" for i in range(n))
        server.stop()


async def test_a_half_closed_client_gets_its_reply_then_is_closed(
    procs: Processes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pmlb.downstream")
    _, up_port = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(
            pmlb.serve, config(up_port, client_fin_timeout=0.5)
        )
        await server.registry.wait_upstream_state(f"127.0.0.1:{up_port}", UpstreamState.SERVING)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port())
        await stream.send_all(b"hi\n")
        await stream.send_eof()  # shutdown(SHUT_WR), as `nc -N` does
        received = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(100):
                received += data
        assert received == b"A:hi\n"
        await stream.aclose()
        await wait_for(server.registry, lambda: not server.registry.clients, 2)
        assert server.registry.statistics().disconnects == {"client_closed": 1}
        # The session summary, as numbers (JSON logs keep them numbers).
        [record] = [r for r in caplog.records if r.getMessage() == "client disconnected"]
        fields = record.__dict__
        assert (fields["messages_in"], fields["messages_out"]) == (1, 1)
        assert (fields["bytes_in"], fields["bytes_out"]) == (3, 5)
        assert fields["reason"] == "client closed the connection"
        assert isinstance(fields["duration"], float)
        assert 0.5 <= fields["duration"] < 10  # it stayed client_fin_timeout after its EOF
        server.stop()


async def test_a_client_closed_while_reading_replies_is_a_client_close(procs: Processes) -> None:
    upstream, up_port = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config(up_port))
        await server.registry.wait_upstream_state(f"127.0.0.1:{up_port}", UpstreamState.SERVING)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port())
        await stream.send_all(b"whoami\n")
        uuid = (await stream.receive_some(100)).decode().strip()
        await stream.aclose()
        # Within client_fin_timeout (5 s by default): a reply to a client gone
        # both ways gets a reset, and pmlb closes it then, as a client close.
        for _ in range(10):  # the first write is taken, the reset fails a next one
            if uuid not in server.registry.clients:
                break
            server.registry.send_to(uuid, b"anyone there?")
            await trio.testing.wait_all_tasks_blocked()
        line = await upstream.wait_for(rf"EVENT disconnected {uuid} (\S+) (.*)$")
        assert line.groups() == ("DISCONNECT_CLIENT_CLOSED", "client closed the connection")
        server.stop()
