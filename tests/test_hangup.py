"""The hang-up watcher: a peer's close seen without reading its socket."""

from __future__ import annotations

import socket

import trio
import trio.testing

from pmlb.downstream.hangup import wait_hangup


async def test_wait_hangup_sees_a_close_without_reading_what_was_sent() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        a.setblocking(False)
        c.setblocking(False)
        hung_up = [trio.Event(), trio.Event()]

        async def watch(sock: socket.socket, event: trio.Event) -> None:
            await wait_hangup(sock.fileno())
            event.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, a, hung_up[0])
            nursery.start_soon(watch, c, hung_up[1])
            b.sendall(b"data, never read")
            await trio.testing.wait_all_tasks_blocked()
            assert not hung_up[0].is_set()  # data alone is no hang-up
            b.shutdown(socket.SHUT_WR)
            with trio.fail_after(2):
                await hung_up[0].wait()
            await trio.testing.wait_all_tasks_blocked()
            assert not hung_up[1].is_set()  # the other one still waits (and now polls)
            d.close()
            with trio.fail_after(2):
                await hung_up[1].wait()
        assert a.recv(100) == b"data, never read"


async def test_a_cancelled_waiter_hands_the_polling_on() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        hung_up = trio.Event()
        polling = trio.CancelScope()

        async def first() -> None:
            with polling:
                await wait_hangup(a.fileno())

        async def second() -> None:
            await wait_hangup(c.fileno())
            hung_up.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()  # first polls for both
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            polling.cancel()
            await trio.testing.wait_all_tasks_blocked()
            d.close()
            with trio.fail_after(2):
                await hung_up.wait()
