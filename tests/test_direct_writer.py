"""The plain-TCP client writer (``Client.write_directly``), on a real socket pair.

What the listener's default writer does, tested without the listener: one
non-blocking write per flush, a writer task only for what the kernel did not
take, every counter, the drain close and a lost connection.
"""

from __future__ import annotations

import os
import socket
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing

from pmlb.codecs import frame
from pmlb.downstream import client as client_module
from pmlb.downstream.client import Client
from pmlb.downstream.reasons import DRAINING


class Pair:
    """A client written directly to one end of a socket pair; the test reads the other."""

    def __init__(self, nursery: trio.Nursery, *, framing: str = "line", sndbuf: int = 0) -> None:
        ours, theirs = socket.socketpair()
        if sndbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        ours.setblocking(False)
        self.ours = ours
        self.theirs = trio.socket.from_stdlib_socket(theirs)
        self.scope = trio.CancelScope()
        self.flush_list: list[Client] = []
        self.client = Client(
            "u-1",
            listener="tcp",
            remote="peer",
            transport="tcp",
            queue_limit=1024,
            scope=self.scope,
        )
        self.client.write_directly(ours.fileno(), framing, self.flush_list, nursery.start_soon)

    def flush(self) -> None:
        for client in self.flush_list:
            client.flush()
        self.flush_list.clear()

    async def receive(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = await self.theirs.recv(65536)
            assert chunk, f"peer closed after {len(data)} of {size} bytes"
            data += chunk
        return data

    def close(self) -> None:
        self.client.detach()
        self.ours.close()
        self.theirs.close()  # closing twice is harmless


MakePair = Callable[..., Pair]


@pytest.fixture
def make_pair(nursery: trio.Nursery) -> Iterator[MakePair]:
    made: list[Pair] = []

    def make(**options: Any) -> Pair:
        made.append(Pair(nursery, **options))
        return made[-1]

    yield make
    for pair in made:
        pair.close()


@pytest.fixture
def pair(make_pair: MakePair) -> Pair:
    return make_pair()


async def test_flush_writes_everything_queued_in_one_write(pair: Pair) -> None:
    client = pair.client
    assert client.send(b"one")
    assert client.send(b"two")
    assert pair.flush_list == [client], "a send puts the client on the flush list once"
    assert client.queued == 2
    pair.flush()
    expected = frame("line", [b"one", b"two"])
    assert await pair.receive(len(expected)) == expected
    assert client.messages_out == 2
    assert client.bytes_out == len(expected)
    assert client.queued == 0
    # The next send schedules a flush again.
    assert client.send(b"three")
    assert pair.flush_list == [client]
    pair.flush()
    assert await pair.receive(6) == b"three\n"
    assert client.messages_out == 3
    assert client.bytes_out == len(expected) + 6


async def test_length_framing_is_written_as_configured(make_pair: MakePair) -> None:
    pair = make_pair(framing="length")
    pair.client.send(b"abc")
    pair.flush()
    assert await pair.receive(7) == b"\x00\x00\x00\x03abc"
    assert pair.client.bytes_out == 7


async def test_partial_write_finishes_in_a_writer_task_in_order(make_pair: MakePair) -> None:
    pair = make_pair(sndbuf=4096)
    client = pair.client
    big = b"x" * 1_000_000
    client.send(big)
    pair.flush()
    # The kernel took only part of it: the rest waits for the writer task.
    assert 0 < client.bytes_out < len(big) + 1
    assert client.messages_out == 0, "a message counts once it is written whole"
    # Queued meanwhile: written after the rest of the first, never before.
    client.send(b"after")
    pair.flush()
    assert pair.flush_list == []
    client.flush()  # even called directly, a flush never writes past the writer
    expected = big + b"\n" + b"after\n"
    assert await pair.receive(len(expected)) == expected
    await trio.testing.wait_all_tasks_blocked()
    assert client.messages_out == 2
    assert client.bytes_out == len(expected)
    # Idle again: the next send goes through a plain flush.
    client.send(b"z")
    assert pair.flush_list == [client]
    pair.flush()
    assert await pair.receive(2) == b"z\n"
    assert client.bytes_out == len(expected) + 2


async def test_bytes_out_adds_a_partial_write_to_what_was_written_before(
    make_pair: MakePair,
) -> None:
    # Found by mutmut: "bytes_out = written" on the partial-write path survived.
    pair = make_pair(sndbuf=4096)
    client = pair.client
    client.send(b"first")
    pair.flush()
    assert await pair.receive(6) == b"first\n"
    assert client.bytes_out == 6
    big = b"x" * 1_000_000
    client.send(big)
    pair.flush()
    assert 6 < client.bytes_out < 6 + len(big) + 1, "the partial write adds to the count"
    assert await pair.receive(len(big) + 1) == big + b"\n"
    await trio.testing.wait_all_tasks_blocked()
    assert client.bytes_out == 6 + len(big) + 1
    assert client.messages_out == 2


async def test_drain_closes_once_the_queue_is_written(pair: Pair) -> None:
    client = pair.client
    client.send(b"last")
    client.drain()
    assert client.close_reason is None, "something is queued: it is written first"
    pair.flush()
    assert await pair.receive(5) == b"last\n"
    assert client.close_reason == DRAINING
    assert pair.scope.cancel_called
    assert client.messages_out == 1


async def test_drain_with_nothing_queued_closes_at_once(pair: Pair) -> None:
    pair.client.drain()
    assert pair.client.close_reason == DRAINING
    assert pair.scope.cancel_called


async def test_drain_waits_for_a_dispatch_in_progress(pair: Pair) -> None:
    client = pair.client
    client.dispatching = True
    client.drain()
    assert client.close_reason is None, "the reader's last batch is still being handed on"
    client.dispatching = False
    client.drain()  # what the registry does once the dispatch ends
    assert client.close_reason == DRAINING


async def test_drain_after_a_partial_write_closes_when_the_writer_ends(make_pair: MakePair) -> None:
    pair = make_pair(sndbuf=4096)
    client = pair.client
    big = b"y" * 500_000
    client.send(big)
    pair.flush()
    client.drain()
    assert client.close_reason is None, "the writer task still has bytes to write"
    assert await pair.receive(len(big) + 1) == big + b"\n"
    await trio.testing.wait_all_tasks_blocked()
    assert client.close_reason == DRAINING
    assert client.messages_out == 1


async def test_a_lost_connection_closes_the_client(pair: Pair) -> None:
    pair.theirs.close()
    client = pair.client
    client.send(b"nobody")
    pair.flush()
    assert client.close_reason is not None
    assert client.close_reason.startswith("connection lost:")
    assert pair.scope.cancel_called
    assert client.messages_out == 0
    assert client.send(b"more") is False, "a closed client takes nothing more"


async def test_a_detached_client_is_never_written(pair: Pair) -> None:
    client = pair.client
    client.send(b"queued")
    client.detach()
    pair.flush()
    assert client.messages_out == 0
    assert client.bytes_out == 0


async def test_a_shared_send_writes_an_idle_client_at_once(make_pair: MakePair) -> None:
    line, length = make_pair(), make_pair(framing="length")
    framed: dict[object, bytes] = {}
    for pair in (line, length):
        assert pair.client.send_shared(b"all", framed)
        assert pair.flush_list == [], "written at once: nothing to flush"
        assert pair.client.queued == 0
    assert await line.receive(4) == b"all\n"
    assert await length.receive(7) == b"\x00\x00\x00\x03all"
    assert sorted(framed.values()) == [b"\x00\x00\x00\x03all", b"all\n"], "framed once each"
    assert line.client.messages_out == length.client.messages_out == 1
    assert (line.client.bytes_out, length.client.bytes_out) == (4, 7)
    assert line.client.held_bytes() == 0


async def test_a_shared_send_queues_behind_what_is_queued(pair: Pair) -> None:
    client = pair.client
    client.send(b"first")
    assert client.send_shared(b"all", {})
    assert client.queued == 2, "queued after the first, not written before it"
    pair.flush()
    assert await pair.receive(10) == b"first\nall\n"
    assert client.messages_out == 2


async def test_a_shared_send_after_a_partial_write_waits_for_the_writer(
    make_pair: MakePair,
) -> None:
    pair = make_pair(sndbuf=4096)
    client = pair.client
    big = b"x" * 1_000_000
    assert client.send_shared(big, {})
    assert 0 < client.bytes_out < len(big) + 1, "the kernel took part: a writer has the rest"
    assert client.held_bytes() == len(big), "held until written"
    assert client.send_shared(b"all", {})
    assert client.queued == 1
    expected = big + b"\n" + b"all\n"
    assert await pair.receive(len(expected)) == expected
    await trio.testing.wait_all_tasks_blocked()
    assert client.messages_out == 2
    assert client.held_bytes() == 0


async def test_a_shared_send_to_a_lost_connection_closes_the_client(pair: Pair) -> None:
    pair.theirs.close()
    client = pair.client
    assert client.send_shared(b"nobody", {}), "taken, as send() takes it before its flush"
    assert client.close_reason is not None
    assert client.close_reason.startswith("connection lost:")
    assert client.send_shared(b"more", {}) is False
    assert client.held_bytes() == 0


async def test_a_shared_send_to_a_draining_client_closes_it_once_written(pair: Pair) -> None:
    client = pair.client
    client.dispatching = True
    client.drain()
    client.dispatching = False
    assert client.send_shared(b"last", {})
    assert await pair.receive(5) == b"last\n"
    assert client.close_reason == DRAINING


async def test_a_shared_send_over_the_budget_goes_through_send(pair: Pair) -> None:
    client = pair.client
    # All clients together hold the budget's limit: what send() deals with.
    client._budget.limit = client._budget.held = 1
    assert client.send_shared(b"all", {})
    assert client.queued == 1, "queued by send(), which applies the budget's policy"
    assert pair.flush_list == [client]


# -- found by mutation testing (docs/mutation.md) ------------------------------


def fill(sock: socket.socket) -> int:
    """Write to ``sock`` until the kernel takes no more; how many bytes it took."""
    total = 0
    while True:
        try:
            total += sock.send(b"f" * 65536)
        except BlockingIOError:
            return total


async def test_a_flush_into_a_full_socket_leaves_it_all_to_the_writer(
    make_pair: MakePair,
) -> None:
    pair = make_pair(sndbuf=4096)
    filler = fill(pair.ours)
    client = pair.client
    client.send(b"msg")
    pair.flush()
    assert client.bytes_out == 0, "the kernel took nothing"
    assert await pair.receive(filler + 4) == b"f" * filler + b"msg\n"
    await trio.testing.wait_all_tasks_blocked()
    assert client.bytes_out == 4
    assert client.messages_out == 1


async def test_a_client_closed_before_its_writer_starts_is_written_no_more(
    make_pair: MakePair,
) -> None:
    pair = make_pair(sndbuf=4096)
    client = pair.client
    client.send(b"x" * 1_000_000)
    pair.flush()  # partial: the writer task is started, not yet run
    written = client.bytes_out
    client.close("kicked")
    assert await pair.receive(written) == b"x" * written
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(BlockingIOError):  # nothing more came (a non-blocking socket)
        os.read(pair.theirs.fileno(), 1)
    assert client.bytes_out == written


async def test_a_spurious_wakeup_of_the_writer_loses_nothing(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writable, then EAGAIN (it happens): the writer waits again.
    pair = make_pair(sndbuf=4096)
    calls = 0

    def write(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:  # the writer task's first write
            raise BlockingIOError
        return os.write(fd, data)

    monkeypatch.setattr(client_module, "os", types.SimpleNamespace(write=write))
    client = pair.client
    big = b"s" * 500_000
    client.send(big)
    pair.flush()
    assert await pair.receive(len(big) + 1) == big + b"\n"
    await trio.testing.wait_all_tasks_blocked()
    assert calls > 2
    assert client.messages_out == 1
    assert client.bytes_out == len(big) + 1


async def test_a_connection_lost_in_the_writer_task_closes_the_client(
    make_pair: MakePair,
) -> None:
    pair = make_pair(sndbuf=4096)
    client = pair.client
    client.send(b"z" * 1_000_000)
    pair.flush()
    pair.theirs.close()
    await trio.testing.wait_all_tasks_blocked()
    assert client.close_reason is not None
    assert client.close_reason.startswith("connection lost:")
    assert pair.scope.cancel_called
    assert client.messages_out == 0
