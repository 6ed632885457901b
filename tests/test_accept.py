"""The listeners' accept loop: the whole backlog is taken in one scheduler round."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio
import trio.lowlevel

from pmlb.downstream.accept import serve_listeners

BACKLOG = 200


async def test_accepts_the_backlog_without_a_round_per_connection() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    # connected by the kernel, waiting in the listen backlog
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(BACKLOG)]
    accepted: list[trio.SocketStream] = []

    async def handler(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(serve_listeners, handler, listeners))
            # A task that is always runnable runs once per scheduler round,
            # like a busy client's reader: count the rounds until all are in.
            rounds = 0
            while len(accepted) < BACKLOG and rounds < 10 * BACKLOG:
                rounds += 1
                await trio.lowlevel.checkpoint()
            assert len(accepted) == BACKLOG
            # trio.serve_listeners needs one round per connection
            assert rounds < BACKLOG // 10
            # each handler got its own connection
            peers = {stream.socket.getpeername() for stream in accepted}
            assert peers == {client.getsockname() for client in clients}
            nursery.cancel_scope.cancel()
    finally:
        for client in clients:
            client.close()
    # the listener is closed once its loop is cancelled, and only once
    assert listeners[0].socket.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port)).close()


async def test_handler_streams_are_closed_when_handlers_return() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    streams: list[trio.SocketStream] = []

    async def handler(stream: trio.SocketStream) -> None:
        streams.append(stream)
        await stream.send_all(b"hi")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_listeners, handler, listeners))
        client = await trio.open_tcp_stream("127.0.0.1", port)
        assert await client.receive_some() == b"hi"
        assert await client.receive_some() == b""  # closed by the server after the handler
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert streams[0].socket.fileno() == -1
