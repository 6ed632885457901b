"""Plain-TCP clients read by the shared reader (pmlb.downstream.reader), in process.

Real sockets on 127.0.0.1, a real listener and registry, and an upstream
that is only an outbox (nothing takes from it unless the test does). The
tests that hold for either reader run against both: the shared one and a
reader task per client.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from pmlb.config import Config, ListenerConfig, UpstreamConfig
from pmlb.downstream import tcp
from pmlb.downstream.client import Client
from pmlb.downstream.reasons import Reason
from pmlb.registry import Registry
from pmlb.upstream.supervisor import Upstream, UpstreamState


@pytest.fixture(params=["shared", "task"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(tcp, "SHARED_READER", request.param == "shared")
    return str(request.param)


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "SHARED_READER", True)


class Proxy:
    """A listener and a registry with one serving upstream (an outbox)."""

    def __init__(self, registry: Registry, upstream: Upstream, port: int) -> None:
        self.registry = registry
        self.upstream = upstream
        self.port = port
        self.sockets: list[socket.socket] = []

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        self.sockets.append(sock)
        return sock

    async def clients(self, count: int) -> list[Client]:
        """Connect ``count`` clients; their records, in the order of their sockets."""
        socks = [self.connect() for _ in range(count)]
        await trio.testing.wait_all_tasks_blocked()
        by_remote = {c.remote: c for c in self.registry.clients.values()}
        return [by_remote["{}:{}".format(*sock.getsockname()[:2])] for sock in socks]

    def taken(self) -> list[bytes]:
        """The payloads dispatched so far, in order (taken from the outbox)."""
        return [r.payload for r in self.upstream.outbox.take_nowait()]


@asynccontextmanager
async def open_proxy(
    listener: dict[str, Any] | None = None, server: dict[str, Any] | None = None
) -> AsyncIterator[Proxy]:
    config = ListenerConfig(port=0, framing="line", **(listener or {}))
    registry = Registry(Config(**(server or {})))
    upstream = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000))
    registry.set_upstream_state(upstream, UpstreamState.SERVING)
    async with trio.open_nursery() as nursery:
        listeners = await tcp.open_listeners(config)
        [address] = await nursery.start(tcp.serve_tcp_listener, config, listeners, registry)
        p = Proxy(registry, upstream, int(address.rsplit(":", 1)[1]))
        try:
            yield p
        finally:
            for sock in p.sockets:
                sock.close()
            nursery.cancel_scope.cancel()


async def test_one_task_waits_for_every_idle_client(shared: None) -> None:
    async with open_proxy() as proxy:
        clients = await proxy.clients(20)
        io = trio.lowlevel.current_statistics().io_statistics
        # Trio's own wake-up task, the accept loop, and the one connection
        # task that leads for all (with a reader task per client: 22).
        assert io.tasks_waiting_read == 3  # type: ignore[attr-defined]
        for i, sock in enumerate(proxy.sockets):
            sock.sendall(f"{i}-a\n{i}-b\n".encode())
        await trio.testing.wait_all_tasks_blocked()
        taken = proxy.taken()
        assert sorted(taken) == sorted(f"{i}-{x}".encode() for i in range(20) for x in "ab")
        for i in range(20):  # each client's messages in the order it sent them
            assert taken.index(f"{i}-a".encode()) < taken.index(f"{i}-b".encode())
        assert [c.messages_in for c in clients] == [2] * 20


async def test_a_client_that_always_has_data_does_not_hold_up_the_others(reader: str) -> None:
    async with open_proxy() as proxy:
        busy, quiet = await proxy.clients(2)
        line = b"x" * 999 + b"\n"
        a, b = proxy.sockets
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        a.sendall(line * 192)  # three reads' worth (64 KiB each)
        b.sendall(b"quiet\n")
        await trio.testing.wait_all_tasks_blocked()
        taken = proxy.taken()
        assert len(taken) == 193
        # Read in turn: the quiet client's message is not behind all of the busy one's.
        assert taken.index(b"quiet") < 150
        assert busy.messages_in == 192
        assert quiet.messages_in == 1


async def test_a_client_whose_batch_waits_for_room_is_not_read_meanwhile(reader: str) -> None:
    async with open_proxy(server=dict(upstream_queue_size=1)) as proxy:
        [held, other] = await proxy.clients(2)
        a, b = proxy.sockets
        await proxy.registry.dispatch([])  # nothing: the outbox has room for one batch
        a.sendall(b"a1\n")
        await trio.testing.wait_all_tasks_blocked()  # a1 fills the outbox
        a.sendall(b"a2\n")
        await trio.testing.wait_all_tasks_blocked()  # a2 waits for room
        a.sendall(b"a3\n")
        b.sendall(b"b1\n")
        await trio.testing.wait_all_tasks_blocked()
        assert held.dispatching
        assert held.bytes_in == 6  # a3 stays in the kernel: backpressure
        assert proxy.registry.statistics().awaiting_upstream == 3  # a1 queued; a2, b1 wait
        outbox = proxy.upstream.outbox
        got = proxy.taken()
        while len(got) < 4:
            outbox.take_nowait()  # written: room again
            await trio.testing.wait_all_tasks_blocked()
            got += proxy.taken()
        assert got.index(b"a1") < got.index(b"a2") < got.index(b"a3")
        assert sorted(got) == [b"a1", b"a2", b"a3", b"b1"]
        assert not held.dispatching
        assert held.bytes_in == 9
        assert other.bytes_in == 3


def task_count() -> int:
    """Every task of this Trio run."""
    count, nurseries = 0, list(trio.lowlevel.current_root_task().child_nurseries)
    while nurseries:
        tasks = nurseries.pop().child_tasks
        count += len(tasks)
        for task in tasks:
            nurseries += task.child_nurseries
    return count


async def test_a_client_that_hangs_up_while_its_batch_waits_is_noticed(reader: str) -> None:
    async with open_proxy(server=dict(upstream_queue_size=1, client_fin_timeout=0)) as proxy:
        clients = await proxy.clients(5)
        before = task_count()
        for i, sock in enumerate(proxy.sockets):
            sock.sendall(f"{i}\n".encode())
            await trio.testing.wait_all_tasks_blocked()
        # The first fills the outbox; the others wait for room, not read.
        assert [c.dispatching for c in clients] == [False, True, True, True, True]
        if reader == "shared":
            # Their hang-ups are watched by the shared reader: no task each.
            assert task_count() == before
        proxy.sockets[2].close()
        await trio.testing.wait_all_tasks_blocked()
        hung_up = clients[2]
        assert hung_up.input_ended
        assert hung_up.close_kind is Reason.CLIENT_CLOSED
        assert hung_up.uuid not in proxy.registry.clients
        # Its batch was handed on all the same, over the bound.
        assert proxy.taken() == [b"0", b"2"]
        assert [c.dispatching for c in clients] == [False, True, False, True, True]


async def test_when_every_batch_waits_one_task_polls_for_all_hang_ups(reader: str) -> None:
    async with open_proxy(server=dict(upstream_queue_size=1, client_fin_timeout=0)) as proxy:
        clients = await proxy.clients(4)
        before = task_count()
        proxy.sockets[0].sendall(b"fills the outbox\n")
        await trio.testing.wait_all_tasks_blocked()
        for sock in proxy.sockets:
            sock.sendall(b"waits\n")
            await trio.testing.wait_all_tasks_blocked()
        assert all(c.dispatching for c in clients)
        if reader == "shared":
            assert task_count() == before + 1  # one poller, not one watcher each
        # Whichever client's task polls, closing them one by one (pmlb's
        # side) leaves the last one's hang-up noticed.
        for client in clients[:3]:
            proxy.registry.kick(client.uuid)
            await trio.testing.wait_all_tasks_blocked()
        last = clients[3]
        assert last.close_reason is None
        proxy.sockets[3].close()
        await trio.testing.wait_all_tasks_blocked()
        assert last.input_ended
        assert last.close_kind is Reason.CLIENT_CLOSED
        assert not proxy.registry.clients


async def test_each_client_has_its_own_idle_deadline(
    reader: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_proxy(listener=dict(idle_timeout=10.0)) as proxy:
        start = trio.current_time()
        quiet, talking = await proxy.clients(2)
        await trio.sleep(6)
        proxy.sockets[1].sendall(b"still here\n")
        await trio.sleep(4.5)
        assert quiet.close_kind is Reason.IDLE
        assert quiet.close_reason == "idle for idle_timeout (10s)"
        assert talking.close_reason is None
        assert quiet.uuid not in proxy.registry.clients
        await trio.sleep(6)
        assert talking.close_kind is Reason.IDLE
        assert proxy.registry.connections.idle_timeouts == 2
        assert trio.current_time() - start == pytest.approx(16.5)
        assert proxy.taken() == [b"still here"]


async def test_a_kicked_client_leaves_and_the_others_are_still_read(reader: str) -> None:
    async with open_proxy() as proxy:
        clients = await proxy.clients(3)
        # The first client leads the shared reader: it is the one kicked.
        proxy.registry.kick(clients[0].uuid)
        await trio.testing.wait_all_tasks_blocked()
        assert clients[0].uuid not in proxy.registry.clients
        assert proxy.sockets[0].recv(10) == b""  # closed
        proxy.sockets[0].close()
        proxy.sockets[1].sendall(b"one\n")
        proxy.sockets[2].sendall(b"two\n")
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(proxy.taken()) == [b"one", b"two"]
        more = await proxy.clients(1)
        proxy.sockets[3].sendall(b"three\n")
        await trio.testing.wait_all_tasks_blocked()
        assert proxy.taken() == [b"three"]
        assert more[0].messages_in == 1


async def test_bad_input_closes_only_that_client(
    reader: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_proxy(listener=dict(max_message_size=8)) as proxy:
        bad, good = await proxy.clients(2)
        proxy.sockets[0].sendall(b"far too long for the limit\n")
        proxy.sockets[1].sendall(b"fine\n")
        await trio.testing.wait_all_tasks_blocked()
        assert bad.close_kind is Reason.TOO_BIG
        assert bad.close_reason is not None
        assert bad.close_reason.startswith("bad input: ")
        assert proxy.registry.connections.bad_input == 1
        assert "client sent bad input" in caplog.text
        assert good.close_reason is None
        assert proxy.taken() == [b"fine"]
        proxy.sockets[1].sendall(b"again\n")
        await trio.testing.wait_all_tasks_blocked()
        assert proxy.taken() == [b"again"]


async def test_end_of_input_closes_after_the_fin_timeout(
    reader: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_proxy(server=dict(client_fin_timeout=5.0)) as proxy:
        ending, staying = await proxy.clients(2)
        proxy.sockets[0].sendall(b"last\n")
        proxy.sockets[0].shutdown(socket.SHUT_WR)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        assert ending.input_ended
        assert ending.close_reason is None
        assert proxy.taken() == [b"last"]
        await trio.sleep(5.5)
        assert ending.close_kind is Reason.CLIENT_CLOSED
        assert trio.current_time() - start == pytest.approx(5.5)
        assert staying.close_reason is None
        proxy.sockets[1].sendall(b"on\n")
        await trio.testing.wait_all_tasks_blocked()
        assert proxy.taken() == [b"on"]


async def test_an_idle_client_keeps_no_exception_alive(reader: str) -> None:
    # A reader that waits for its socket inside ``except BlockingIOError``
    # keeps the exception and its traceback for as long as the client is idle.
    async with open_proxy() as proxy:
        await proxy.clients(10)
        for sock in proxy.sockets:
            sock.sendall(b"hello\n")  # read, then the next read finds nothing
        await trio.testing.wait_all_tasks_blocked()
        assert len(proxy.taken()) == 10
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, BlockingIOError)]
        assert alive == []
