"""Clients' outbound queues bounded in bytes, each and all together (issue 17, finding 5).

The count limit alone let four clients that never read hold 1,024 messages
of 60 KB each (a reply may be 4 MiB). These tests drive :class:`Client`
and :class:`QueueBudget` without sockets; tests/e2e/test_client_queue_bytes.py
does it through ``pmlb serve``.
"""

from __future__ import annotations

import pytest
import trio

from pmlb.downstream.client import Client, QueueBudget


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
