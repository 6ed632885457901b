"""The bounded queue of messages waiting to be written to one upstream."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Outbox(Generic[T]):
    """Messages for one upstream, bounded, moved in batches.

    Client readers :meth:`put` batches and wait while the outbox is full: that
    wait is pmlb's backpressure, which stops them reading their sockets. The
    stream writer takes everything at once with :meth:`take_nowait`.

    An outbox accepts puts only while its upstream serves. When it stops
    serving, blocked putters get ``False`` back and choose another upstream,
    and whatever is left is taken out for failover.

    The capacity is a soft bound: a put that finds room adds its whole batch,
    so the outbox can hold up to ``capacity`` plus one batch per putter. A
    put that waited adds its batch as soon as the writer takes, without
    looking at the fill again: every waiting putter gets in with each take,
    so no client's reader can lose the race for room again and again.

    :attr:`taken` counts what the writer took and did not put back: the
    messages written (or being written when the stream broke) to the
    upstream's stream. Only those can be lost when the upstream dies.

    :meth:`busy_since` tells how long the writer has been on its last take
    with more to do: an upstream whose writes do not progress (a flow-control
    window held at 0) shows there. :meth:`turn_away` sends the putters waiting
    for room elsewhere.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._accepting = False
        # The writer took a batch and has not come back for more yet.
        self._in_flight = False
        self._space = trio.lowlevel.ParkingLot()
        self._data = trio.lowlevel.ParkingLot()
        #: items taken by the writer (take_nowait) minus those it put back (requeue)
        self.taken = 0
        # trio.current_time() of the writer's last take, or of the put that
        # gave an idle writer something to do
        self._busy_from = 0.0
        # bumped by turn_away(): a putter that sees it change returns False
        self._turned_away = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def in_flight(self) -> bool:
        """Whether the writer may still be writing what it took last.

        Writers take until they find nothing: an empty take means that
        everything taken before was written (or put back).
        """
        return self._in_flight

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def busy_since(self) -> float | None:
        """Since when the writer has had work without taking again; None if it has none."""
        if self._items or self._in_flight:
            return self._busy_from
        return None

    def open(self) -> None:
        """Start accepting puts (the upstream serves)."""
        self._accepting = True

    def turn_away(self) -> None:
        """Make the putters waiting for room return ``False`` (go elsewhere), now."""
        self._turned_away += 1
        self._space.unpark_all()

    def close(self) -> None:
        """Stop accepting puts; blocked putters return ``False``."""
        self._accepting = False
        # The writer took a batch and has not come back for more yet.
        self._in_flight = False
        self._space.unpark_all()

    async def put(self, items: list[T]) -> bool:
        """Add ``items`` once there is room; ``False`` if closed or turned away first."""
        if self._accepting and len(self._items) >= self.capacity:
            turned_away = self._turned_away
            await self._space.park()
            if self._turned_away != turned_away:
                return False
        if not self._accepting:
            return False
        self.put_nowait(items)
        return True

    def put_nowait(self, items: Iterable[T]) -> None:
        """Add ``items`` whatever the fill (failover of already accepted messages)."""
        if not self._items and not self._in_flight:
            self._busy_from = trio.current_time()
        self._items.extend(items)
        if self._data:
            self._data.unpark_all()

    def requeue(self, items: list[T]) -> None:
        """Put back, in front and in order, items taken but not written."""
        self.taken -= len(items)
        if not self._items and not self._in_flight:
            self._busy_from = trio.current_time()
        self._items.extendleft(reversed(items))
        if self._data:
            self._data.unpark_all()

    def take_nowait(self) -> list[T]:
        """Everything queued, oldest first (maybe nothing), for the stream writer.

        An empty take tells that what the writer took before is written.
        """
        items = self._take()
        self._busy_from = trio.current_time()
        if items:
            self._in_flight = True
            self.taken += len(items)
        elif self._in_flight:
            self._in_flight = False
            if self._space:
                self._space.unpark_all()
        return items

    def take_back(self) -> list[T]:
        """Everything queued, oldest first, not to be written here (failover)."""
        return self._take()

    def _take(self) -> list[T]:
        if not self._items:
            return []
        items = list(self._items)
        self._items.clear()
        if self._space:
            self._space.unpark_all()
        return items

    async def wait_empty(self) -> None:
        """Return once everything queued has been taken."""
        while self._items:
            await self._space.park()

    async def wait_written(self) -> None:
        """Return once everything queued is taken and written, or the outbox closed."""
        while self._accepting and (self._items or self._in_flight):
            await self._space.park()

    async def wait_taken(self) -> None:
        """Return at the writer's next take (or when the outbox closes or turns putters away)."""
        await self._space.park()

    async def wait_nonempty(self) -> None:
        """Return once something is queued."""
        while not self._items:
            await self._data.park()
