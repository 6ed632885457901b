from __future__ import annotations

import pytest
import trio
import trio.testing

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
