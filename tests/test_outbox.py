from __future__ import annotations

import pytest
import trio
import trio.testing

from pmlb.codecs.request import Request
from pmlb.codecs.request import message as make_request
from pmlb.upstream.acks import Unacked
from pmlb.upstream.outbox import Outbox


async def test_put_waits_while_full_and_resumes_when_taken() -> None:
    box: Outbox[int] = Outbox(capacity=2)
    box.open()
    assert await box.put([1, 2])
    done = []

    async def putter() -> None:
        done.append(await box.put([3]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(putter)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # backpressure: full
        assert box.take_nowait() == [1, 2]
    assert done == [True]
    assert box.take_nowait() == [3]


async def test_every_waiting_putter_gets_in_with_the_next_take() -> None:
    # Fairness: a reader that waited for room is not sent back to wait
    # behind newer ones because the first woken filled the outbox again.
    box: Outbox[int] = Outbox(capacity=1)
    box.open()
    assert await box.put([0])
    done: list[bool] = []

    async def putter(value: int) -> None:
        done.append(await box.put([value]))

    async with trio.open_nursery() as nursery:
        for value in range(1, 6):
            nursery.start_soon(putter, value)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        assert box.take_nowait() == [0]
        await trio.testing.wait_all_tasks_blocked()
        assert done == [True] * 5
    assert sorted(box.take_nowait()) == [1, 2, 3, 4, 5]
    # full again: a new put waits once more (backpressure holds)
    assert await box.put([6, 7])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(putter, 8)
        await trio.testing.wait_all_tasks_blocked()
        assert len(done) == 5
        nursery.cancel_scope.cancel()


async def test_closing_refuses_blocked_putters() -> None:
    box: Outbox[int] = Outbox(capacity=1)
    box.open()
    await box.put([1])
    done = []

    async def putter() -> None:
        done.append(await box.put([2]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(putter)
        await trio.testing.wait_all_tasks_blocked()
        box.close()
    assert done == [False]
    assert box.take_nowait() == [1]
    assert not await box.put([3])


async def test_requeue_puts_back_in_front_in_order() -> None:
    box: Outbox[int] = Outbox(capacity=10)
    box.put_nowait([3, 4])
    box.requeue([1, 2])
    assert box.take_nowait() == [1, 2, 3, 4]


async def test_wait_nonempty_wakes_on_put() -> None:
    box: Outbox[int] = Outbox(capacity=10)
    woke = trio.Event()

    async def waiter() -> None:
        await box.wait_nonempty()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        box.put_nowait([1])
    assert woke.is_set()


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Outbox(0)


async def test_taken_counts_what_the_writer_keeps_not_failover() -> None:
    box: Outbox[int] = Outbox(capacity=10)
    box.open()
    box.put_nowait([1, 2, 3])
    assert box.take_nowait() == [1, 2, 3]
    box.requeue([3])  # 3 was not written
    assert box.taken == 2
    box.put_nowait([4])
    assert box.take_back() == [3, 4]  # failover: not written here
    assert box.taken == 2


# -- found by mutation testing (docs/mutation.md) ------------------------------


async def test_every_turn_away_sends_the_putters_then_waiting_elsewhere() -> None:
    # A second turn_away must work as the first did: a putter parked after
    # the first one still returns False at the second.
    box: Outbox[int] = Outbox(capacity=1)
    box.open()
    assert await box.put([0])
    for round_ in range(2):
        done: list[bool] = []

        async def putter() -> None:
            done.append(await box.put([1]))  # noqa: B023 (awaited in this round)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(putter)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [], f"round {round_}: full, the putter waits"
            box.turn_away()
        assert done == [False], f"round {round_}"
    assert box.accepting, "turned away, not closed"
    assert box.take_nowait() == [0]


async def test_requeue_with_acks_gives_the_table_its_room_back() -> None:
    table = Unacked(2)
    box: Outbox[Request] = Outbox(10, unacked=table)
    box.put_nowait([make_request(payload=b"a"), make_request(payload=b"b")])
    taken = box.take_nowait()
    assert [r.seq for r in taken] == [1, 2]
    assert box.unacked_count == 2
    box.requeue(taken)  # the stream broke before writing them
    assert box.unacked_count == 0
    assert box.taken == 0
    assert [(r.seq, r.message_id, r.delivery_attempt) for r in taken] == [(0, "", 0)] * 2
    again = box.take_nowait()  # a first delivery again, not a redelivery
    assert [(r.payload, r.delivery_attempt) for r in again] == [(b"a", 1), (b"b", 1)]
    assert box.unacked_count == 2


async def test_an_ack_that_frees_room_wakes_the_waiting_writer() -> None:
    box: Outbox[Request] = Outbox(10, unacked=Unacked(2))
    box.put_nowait([make_request(payload=b"%d" % i) for i in range(3)])
    assert [r.seq for r in box.take_nowait()] == [1, 2]
    woke = trio.Event()

    async def writer() -> None:
        await box.wait_nonempty()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set(), "something is queued, but the table is full"
        box.ack([1])  # room for one
        await trio.testing.wait_all_tasks_blocked()
        assert woke.is_set()
    assert [r.seq for r in box.take_nowait()] == [3]


async def test_a_new_outbox_refuses_puts_and_has_no_work_until_opened() -> None:
    box: Outbox[int] = Outbox(capacity=10)
    assert not box.accepting
    assert not box.in_flight
    assert box.busy_since() is None
    assert not await box.put([1]), "the upstream does not serve yet"
    assert len(box) == 0
    with trio.move_on_after(0) as cancel:  # drained already: returns at once
        await box.wait_drained()
    assert not cancel.cancelled_caught
    box.open()
    assert await box.put([1])


async def test_busy_since_is_the_first_put_to_an_idle_writer_then_its_last_progress(
    mock_clock: trio.testing.MockClock,
) -> None:
    box: Outbox[int] = Outbox(capacity=10)
    box.open()
    mock_clock.jump(100)
    box.put_nowait([1])  # idle until now: busy from now, not from long ago
    assert box.busy_since() == 100
    mock_clock.jump(5)
    box.put_nowait([2])  # the writer already had work: no progress since 100
    assert box.busy_since() == 100
    assert box.take_nowait() == [1, 2]
    assert box.busy_since() == 105, "a take is progress"
    mock_clock.jump(5)
    box.put_nowait([3])  # taken, not yet written: busy since the take still
    assert box.busy_since() == 105
    box.progressed()
    assert box.busy_since() == 110


async def test_busy_since_does_not_count_a_full_acks_table(
    mock_clock: trio.testing.MockClock,
) -> None:
    box: Outbox[Request] = Outbox(10, unacked=Unacked(2))
    box.put_nowait([make_request(payload=b"%d" % i) for i in range(4)])
    assert [r.seq for r in box.take_nowait()] == [1, 2]
    assert box.busy_since() is None, "the table is full: waiting for acks, not stalled"
    box.ack([1])  # room for one
    assert box.busy_since() == 0
    assert [r.seq for r in box.take_nowait()] == [3]
    box.ack([2, 3])
    assert box.busy_since() == 0, "room for two, one queued: the writer has work"


async def test_closing_ends_what_was_in_flight() -> None:
    box: Outbox[int] = Outbox(capacity=10)
    box.open()
    box.put_nowait([1])
    assert box.take_nowait() == [1]
    assert box.in_flight
    box.close()
    assert not box.in_flight
    assert box.busy_since() is None
    with trio.move_on_after(0) as cancel:
        await box.wait_drained()
    assert not cancel.cancelled_caught


async def test_taken_adds_up_over_takes() -> None:
    box: Outbox[int] = Outbox(capacity=10)
    box.put_nowait([1, 2, 3])
    assert box.take_nowait() == [1, 2, 3]
    box.put_nowait([4, 5])
    assert box.take_nowait() == [4, 5]
    assert box.taken == 5


async def test_takes_that_find_the_acks_table_full_let_no_more_putters_in() -> None:
    # The empty take that ends a write lets the waiting putters in (as any
    # take does); while the table stays full, later empty takes do not.
    box: Outbox[Request] = Outbox(1, unacked=Unacked(1))
    box.open()
    assert await box.put([make_request(payload=b"a")])
    assert [r.payload for r in box.take_nowait()] == [b"a"]  # the table is full
    box.put_nowait([make_request(payload=b"b")])  # the outbox too
    done: list[bool] = []

    async def putter(payload: bytes) -> None:
        done.append(await box.put([make_request(payload=payload)]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(putter, b"c")
        await trio.testing.wait_all_tasks_blocked()
        assert box.take_nowait() == []  # "a" is written: the waiting putter gets in
        await trio.testing.wait_all_tasks_blocked()
        assert done == [True]
        nursery.start_soon(putter, b"d")
        await trio.testing.wait_all_tasks_blocked()
        assert box.take_nowait() == []  # nothing taken: no room made
        await trio.testing.wait_all_tasks_blocked()
        assert done == [True], "backpressure holds while the table is full"
        box.ack([1])
        assert [r.payload for r in box.take_nowait()] == [b"b"]
    assert done == [True, True]
    assert [r.payload for r in box.take_back()] == [b"c", b"d"]
