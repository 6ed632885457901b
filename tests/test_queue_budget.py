"""Clients' outbound queues bounded in bytes, each and all together (issue 17, finding 5).

The count limit alone let four clients that never read hold 1,024 messages
of 60 KB each (a reply may be 4 MiB). These tests drive :class:`Client`
and :class:`QueueBudget` without sockets; tests/e2e/test_client_queue_bytes.py
does it through ``pmlb serve``.
"""

from __future__ import annotations

import math
import time
import types

import pytest
import trio
import trio.testing

from pmlb.downstream import client as client_module
from pmlb.downstream.client import Client, QueueBudget
from pmlb.downstream.reasons import Reason


def make(
    budget: QueueBudget,
    name: str = "c",
    *,
    queue_bytes: int = 0,
    queue_limit: int = 1024,
    policy: str = "disconnect",
    timeout: float = 0.0,
) -> Client:
    return Client(
        name,
        listener="tcp",
        remote="peer",
        transport="tcp",
        queue_limit=queue_limit,
        scope=trio.CancelScope(),
        slow_policy=policy,
        slow_timeout=timeout,
        queue_bytes=queue_bytes,
        budget=budget,
    )


def test_bytes_limit_comes_before_the_message_count() -> None:
    budget = QueueBudget()
    client = make(budget, queue_bytes=1000)
    for _ in range(10):
        assert client.send(b"x" * 100)
    assert budget.held == client.held_bytes() == 1000
    assert not client.send(b"x" * 100)
    assert client.close_reason == "slow client: outbound queue full (1000 bytes)"
    assert client.closed_slow
    assert budget.held == 0, "a closed client's bytes leave the budget"


def test_the_count_still_applies_and_says_so() -> None:
    client = make(QueueBudget(), queue_bytes=1 << 20, queue_limit=3)
    for _ in range(3):
        assert client.send(b"m")
    assert not client.send(b"m")
    assert client.close_reason == "slow client: outbound queue full (3 messages)"


def test_a_message_over_the_limit_goes_to_an_empty_queue() -> None:
    """A client that reads gets a reply bigger than client_queue_bytes (up to 4 MiB)."""
    client = make(QueueBudget(), queue_bytes=1000)
    assert client.send(b"y" * 5000)
    assert client.close_reason is None


def test_with_a_timeout_the_queue_may_grow_to_twice_its_bytes() -> None:
    client = make(QueueBudget(), queue_bytes=1000, timeout=60)
    sent = 0
    while client.send(b"z" * 100):
        sent += 1
    assert sent == 20
    assert client.close_reason == "slow client: outbound queue full (1000 bytes) for 60s"


def test_drop_oldest_by_bytes_keeps_the_newest_and_the_budget_exact() -> None:
    budget = QueueBudget()
    client = make(budget, queue_bytes=1000, policy="drop_oldest")
    for n in range(50):
        assert client.send(b"%03d" % n + b"." * 97)
    assert client.close_reason is None
    assert client.queued == 10
    assert client.dropped == 40
    assert budget.held == client.held_bytes() == 1000


def test_past_the_total_the_biggest_holder_pays_not_the_sender() -> None:
    clients: list[Client] = []
    budget = QueueBudget(1000, lambda: clients)
    big, small, reader = make(budget, "big"), make(budget, "small"), make(budget, "reader")
    clients += [big, small, reader]
    assert big.send(b"b" * 600)
    assert small.send(b"s" * 300)
    assert budget.held == 900
    assert reader.send(b"r" * 100)  # 1000: the limit is reached, not passed
    assert reader.send(b"r" * 10)
    assert big.close_reason == (
        "slow client: the clients' outbound queues hold over client_queue_bytes_total"
        " (1000 bytes), this one 600 bytes"
    )
    assert big.closed_slow
    assert small.close_reason is None
    assert reader.close_reason is None
    assert budget.held == 300 + 100 + 10


def test_past_the_total_drop_oldest_drops_from_the_biggest() -> None:
    clients: list[Client] = []
    budget = QueueBudget(1000, lambda: clients)
    big = make(budget, "big", policy="drop_oldest")
    other = make(budget, "other", policy="drop_oldest")
    clients += [big, other]
    for _ in range(8):
        assert big.send(b"b" * 100)
    assert other.send(b"o" * 200)
    assert other.send(b"o")  # 1000 held: big drops its oldest down to 7/8 (875)
    assert big.close_reason is None
    assert big.dropped == 2
    assert big.held_bytes() == 600
    assert budget.held == 600 + 201
    assert budget.held == big.held_bytes() + other.held_bytes()


def test_no_limit_when_zero() -> None:
    budget = QueueBudget(0)
    client = make(budget, queue_bytes=0)
    for _ in range(1000):
        assert client.send(b"x" * 10_000)
    assert budget.held == 10_000_000


async def test_a_batch_being_written_counts_until_written() -> None:
    budget = QueueBudget()
    client = make(budget, queue_bytes=1000)
    client.send(b"a" * 700)
    client.send(b"b" * 200)
    batch = await client.next_batch()
    assert batch == [b"a" * 700, b"b" * 200]
    assert budget.held == 900, "taken by the writer, not yet written"
    # What the writer holds is not the queue: the client may queue again.
    assert client.send(b"c" * 900)
    with client.writing() as scope:
        pass
    assert not client.written(scope)
    assert budget.held == 900, "the batch written, the new message queued"
    client.close("bye")
    assert budget.held == 0


@pytest.mark.parametrize("policy", ["disconnect", "drop_oldest"])
def test_a_client_holding_only_its_write_is_closed_past_the_total(policy: str) -> None:
    clients: list[Client] = []
    budget = QueueBudget(1000, lambda: clients)
    writing = make(budget, "writing", policy=policy)
    clients.append(writing)
    writing.send(b"w" * 1000)
    writing._take()  # as next_batch does: being written, nothing queued
    other = make(budget, "other", policy=policy)
    clients.append(other)
    assert other.send(b"o")
    assert writing.close_reason is not None
    assert writing.close_reason.startswith("slow client: the clients' outbound queues")
    assert budget.held == 1


# -- found by mutation testing (docs/mutation.md) ------------------------------


def test_under_disconnect_with_a_timeout_the_count_may_reach_twice_its_limit() -> None:
    client = make(QueueBudget(), queue_limit=3, timeout=60)
    sent = 0
    while client.send(b"m"):
        sent += 1
    assert sent == 6
    assert client.close_reason == "slow client: outbound queue full (3 messages) for 60s"
    assert client.close_kind is Reason.SLOW
    assert client.closed_slow


def test_drop_oldest_by_count_keeps_exactly_the_newest() -> None:
    budget = QueueBudget()
    client = make(budget, queue_limit=3, policy="drop_oldest")
    for n in range(10):
        assert client.send(b"%d" % n)
    assert client.queued == 3
    assert client.dropped == 7
    assert budget.held == client.held_bytes() == 3
    assert client.close_reason is None


def test_past_the_total_the_biggest_drop_down_to_seven_eighths_exactly() -> None:
    # 10-byte messages: the drops stop at the first held <= 875 (7/8 of 1000).
    clients: list[Client] = []
    budget = QueueBudget(1000, lambda: clients)
    big = make(budget, "big", policy="drop_oldest")
    other = make(budget, "other", policy="drop_oldest")
    clients += [big, other]
    for _ in range(80):
        assert big.send(b"b" * 10)
    assert other.send(b"o" * 200)
    assert other.send(b"o")
    assert big.dropped == 13, "1000 - 13 * 10 = 870 <= 875 < 880"
    assert budget.held == 870 + 1


def test_a_drop_that_reaches_seven_eighths_exactly_is_enough() -> None:
    clients: list[Client] = []
    budget = QueueBudget(800, lambda: clients)  # 7/8: 700
    big = make(budget, "big", policy="drop_oldest")
    other = make(budget, "other", policy="drop_oldest")
    clients += [big, other]
    for _ in range(5):
        assert big.send(b"b" * 100)
    assert other.send(b"o" * 300)
    assert other.send(b"o")  # 800 held: big drops one, to 700 exactly
    assert big.dropped == 1
    assert big.close_reason is None, "down to the target: not closed"
    assert budget.held == 701


def test_closing_the_biggest_down_to_seven_eighths_exactly_spares_the_others() -> None:
    clients: list[Client] = []
    budget = QueueBudget(800, lambda: clients)  # 7/8: 700
    clients += [make(budget, f"c{n}") for n in range(8)]
    for client in clients:
        assert client.send(b"x" * 100)
    assert clients[-1].send(b"y")  # 800 held: one client closed, 700 left
    closed = [client for client in clients if client.close_reason is not None]
    assert closed == [clients[0]], "the first of the biggest (a stable sort)"
    assert clients[0].closed_slow
    assert budget.held == 701


async def test_what_was_written_leaves_the_budget_not_what_is_queued_since() -> None:
    clients: list[Client] = []
    budget = QueueBudget(0, lambda: clients)
    client, other = make(budget, "c"), make(budget, "other")
    clients += [client, other]
    assert other.send(b"o" * 50)
    client.send(b"a" * 700)
    assert await client.next_batch() == [b"a" * 700]
    assert client.send(b"c" * 300)  # queued while the batch is written
    assert budget.held == 50 + 700 + 300
    with client.writing() as scope:
        pass
    assert not client.written(scope)
    assert client.held_bytes() == 300
    assert budget.held == 50 + 300


class Monotonic:
    """``time.monotonic`` as the client reads it, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> Monotonic:
    # Only the client module's clock: Trio's own must go on.
    clock = Monotonic(1000.0)
    fake_time = types.SimpleNamespace(monotonic=clock, time=time.time)
    monkeypatch.setattr(client_module, "time", fake_time)
    return clock


def full(client: Client) -> None:
    """Fill ``client``'s queue (limit 1) and one more: full since now."""
    assert client.send(b"1")
    assert client.send(b"2")


async def test_a_write_deadline_is_when_the_queue_will_have_been_full_for_the_timeout(
    mock_clock: trio.testing.MockClock, monotonic: Monotonic
) -> None:
    client = make(QueueBudget(), queue_limit=1, timeout=10)
    full(client)
    monotonic.now += 4
    scope = client.writing()
    assert scope.deadline == trio.current_time() + 6
    monotonic.now += 20  # past it already: at once, never in the past
    scope = client.writing()
    assert scope.deadline == trio.current_time()


async def test_a_queue_filling_during_a_write_arms_its_deadline(
    mock_clock: trio.testing.MockClock, monotonic: Monotonic
) -> None:
    client = make(QueueBudget(), queue_limit=1, timeout=10)
    scope = client.writing()
    assert scope.deadline == math.inf, "not full: no deadline"
    full(client)
    assert scope.deadline == trio.current_time() + 10


@pytest.mark.parametrize("policy", ["drop_oldest", "disconnect"])
async def test_no_write_deadline_unless_full_under_disconnect(
    policy: str, mock_clock: trio.testing.MockClock, monotonic: Monotonic
) -> None:
    client = make(QueueBudget(), queue_limit=1, timeout=10, policy=policy)
    assert client.send(b"1")
    if policy == "drop_oldest":
        assert client.send(b"2")  # full, but dropping is the policy
    assert client.writing().deadline == math.inf


async def test_a_write_past_its_deadline_closes_the_client_as_slow(
    autojump_clock: trio.testing.MockClock, monotonic: Monotonic
) -> None:
    budget = QueueBudget()
    client = make(budget, queue_limit=1, timeout=10)
    assert client.send(b"0")
    assert await client.next_batch() == [b"0"]
    full(client)  # while the batch is being written
    start = trio.current_time()
    with trio.fail_after(60), client.writing() as scope:
        await trio.sleep_forever()  # the client does not read
    assert trio.current_time() == start + 10
    assert client.written(scope)
    assert client.closed_slow
    assert client.close_kind is Reason.SLOW
    assert client.close_reason == "slow client: outbound queue full (1 messages) for 10s"
    assert budget.held == 0


def test_seven_eighths_of_a_limit_not_divisible_by_eight_is_rounded_up() -> None:
    clients: list[Client] = []
    budget = QueueBudget(1001, lambda: clients)  # 1001 - 1001 // 8 = 876
    big = make(budget, "big", policy="drop_oldest")
    other = make(budget, "other", policy="drop_oldest")
    clients += [big, other]
    for _ in range(900):
        assert big.send(b"b")
    assert other.send(b"o" * 101)
    assert other.send(b"o")
    assert big.dropped == 125
    assert budget.held == 876 + 1


def test_a_sender_closed_as_the_biggest_holder_queues_nothing() -> None:
    clients: list[Client] = []
    budget = QueueBudget(1000, lambda: clients)
    big, small = make(budget, "big"), make(budget, "small")
    clients += [big, small]
    assert big.send(b"b" * 900)
    assert small.send(b"s" * 100)
    assert not big.send(b"b" * 50), "over the total: the sender is the biggest"
    assert big.close_reason is not None
    assert big.held_bytes() == 0
    assert budget.held == 100, "nothing of the refused message stays in the budget"


def test_a_closed_client_holds_nothing_and_is_not_slow_unless_so() -> None:
    clients: list[Client] = []
    budget = QueueBudget(1000, lambda: clients)
    gone, other = make(budget, "gone"), make(budget, "other")
    clients += [gone, other]
    assert gone.send(b"g" * 500)
    gone.close("connection lost: reset")
    assert not gone.closed_slow
    assert gone.held_bytes() == 0
    for _ in range(10):  # the closed one still listed: the others pay
        assert other.send(b"o" * 100)
    assert not other.send(b"o")
    assert other.closed_slow
    assert budget.held == 0


async def test_the_default_policy_is_disconnect(
    mock_clock: trio.testing.MockClock, monotonic: Monotonic
) -> None:
    client = Client(
        "c",
        listener="tcp",
        remote="peer",
        transport="tcp",
        queue_limit=1,
        scope=trio.CancelScope(),
        slow_timeout=10,
    )
    full(client)
    assert client.writing().deadline == trio.current_time() + 10


async def test_sends_while_the_writer_wakes_are_all_in_its_next_batch() -> None:
    client = make(QueueBudget())
    got: list[list[bytes]] = []

    async def writer() -> None:
        got.append(await client.next_batch())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert client.send(b"1")
        assert client.send(b"2")  # the writer has not run yet
    assert got == [[b"1", b"2"]]


async def test_a_queue_filling_after_a_write_leaves_the_next_write_its_deadline(
    mock_clock: trio.testing.MockClock, monotonic: Monotonic
) -> None:
    client = make(QueueBudget(), queue_limit=1, timeout=10)
    assert client.send(b"0")
    assert await client.next_batch() == [b"0"]
    with client.writing() as scope:
        pass
    assert not client.written(scope)
    full(client)
    assert scope.deadline == math.inf, "that write is over"
    assert client.writing().deadline == trio.current_time() + 10


def test_active_within_the_window_bounds_included() -> None:
    client = make(QueueBudget())
    assert not client.is_active(100.0, 10.0), "never sent anything"
    client.last_active = 90.0
    assert client.is_active(100.0, 10.0)
    assert not client.is_active(100.5, 10.0)
