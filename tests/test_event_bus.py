"""The operator event bus: fan-out, history, and dropping a consumer that falls behind."""

from __future__ import annotations

import trio
import trio.testing

from pmlb.events import EventBus


async def test_subscribers_get_every_event_in_order_and_history_is_bounded() -> None:
    bus = EventBus(history=3)
    with bus.subscribe() as first, bus.subscribe() as second:
        for n in range(5):
            bus.publish("tick", n=n)
        assert [e["n"] for e in await first.next_batch()] == [0, 1, 2, 3, 4]
        assert [e["n"] for e in await second.next_batch()] == [0, 1, 2, 3, 4]
        assert all(e["type"] == "tick" and e["time"].endswith("Z") for e in bus.recent)
    assert [e["n"] for e in bus.recent] == [2, 3, 4]
    assert bus.subscribers == 0


async def test_a_consumer_that_falls_behind_is_dropped_and_never_blocks_publishing() -> None:
    bus = EventBus(subscriber_queue=2)
    with bus.subscribe() as slow, bus.subscribe(limit=100) as fast:
        for n in range(10):
            bus.publish("tick", n=n)  # never waits, whatever the consumers do
        assert slow.dropped
        assert await slow.next_batch() == []
        assert len(await fast.next_batch()) == 10
        assert bus.dropped_subscribers == 1
        assert bus.subscribers == 1


async def test_a_waiting_consumer_wakes_on_publish() -> None:
    bus = EventBus()
    got: list[object] = []

    async def consume() -> None:
        with bus.subscribe() as subscription:
            got.extend(await subscription.next_batch())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        bus.publish("hello", who="you")
    assert [(e["type"], e["who"]) for e in got] == [("hello", "you")]  # type: ignore[index]
