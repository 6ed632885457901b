"""The bounded queue of messages waiting to be written to one upstream."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

import trio

from pmlb.upstream.acks import Unacked

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
    upstream's stream. Without acknowledgements, only those can be lost
    when the upstream dies.

    With :attr:`unacked` (an upstream with ``acks = true``), what the writer
    takes is stamped and kept there until acknowledged (:meth:`ack`), and
    the writer takes only as much as it has room for: a full table stops
    the writing, the outbox fills up, and putters wait as for a slow
    upstream. An outbox of :class:`~pmlb.codecs.request.Request` only, then.

    :meth:`busy_since` tells since when the writer has had work and made no
    progress (no take, no bytes written: the transport reports writes with
    :meth:`progressed`): an upstream that holds its flow-control window at 0
    shows there. :meth:`turn_away` sends the putters waiting for room
    elsewhere.
    """

    def __init__(self, capacity: int, unacked: Unacked | None = None) -> None:
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
        #: with acknowledgements: what was written and not acknowledged yet
        self.unacked = unacked
        self._acked = trio.lowlevel.ParkingLot()
        # trio.current_time() of the writer's last progress (a take, bytes
        # written), or of the put that gave an idle writer something to do
        self._busy_from = 0.0
        self._progress = trio.lowlevel.ParkingLot()
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

    def open(self) -> None:
        """Start accepting puts (the upstream serves)."""
        self._accepting = True

    def busy_since(self) -> float | None:
        """Since when the writer has had work without progress; None if it has none.

        Waiting for acknowledgements (a full table) is not counted: that
        wait has its own limits (see :mod:`pmlb.upstream.acks`).
        """
        if not self._items and not self._in_flight:
            return None
        if self.unacked is not None and self.unacked.room <= 0:
            return None
        return self._busy_from

    def progressed(self) -> None:
        """The writer wrote some bytes of what it took (the transport calls this)."""
        self._busy_from = trio.current_time()
        if self._progress:
            self._progress.unpark_all()

    def turn_away(self) -> None:
        """Make the putters waiting for room return ``False`` (to go elsewhere), now."""
        self._turned_away += 1
        self._space.unpark_all()

    def _busy(self) -> None:
        # Called before adding items: an idle writer has work from now on.
        if not self._items and not self._in_flight:
            self._busy_from = trio.current_time()

    def close(self) -> None:
        """Stop accepting puts; blocked putters return ``False``."""
        self._accepting = False
        # The writer took a batch and has not come back for more yet.
        self._in_flight = False
        self._space.unpark_all()

    def refuse(self) -> None:
        """Stop accepting puts while the writer goes on (an operator's drain or maint).

        Blocked putters return ``False``; what is queued is still written.
        """
        self._accepting = False
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
        self._busy()
        self._items.extend(items)
        if self._data:
            self._data.unpark_all()

    def put_front(self, items: list[T]) -> None:
        """Add ``items`` ahead of everything queued (redelivery), whatever the fill."""
        self._busy()
        self._items.extendleft(reversed(items))
        if self._data:
            self._data.unpark_all()

    def requeue(self, items: list[T]) -> None:
        """Put back, in front and in order, items taken but not written."""
        self.taken -= len(items)
        if self.unacked is not None:
            self.unacked.unstamp(items)  # type: ignore[arg-type]
        self._busy()
        self._items.extendleft(reversed(items))
        if self._data:
            self._data.unpark_all()

    def take_nowait(self) -> list[T]:
        """Everything queued, oldest first (maybe nothing), for the stream writer.

        An empty take tells that what the writer took before is written.
        With acknowledgements, at most what the unacknowledged table has
        room for, stamped (see :class:`pmlb.upstream.acks.Unacked`).
        """
        unacked = self.unacked
        if unacked is None:
            items = self._take()
        else:
            items = self._take(unacked.room)
            if items:
                unacked.stamp(items, trio.current_time())  # type: ignore[arg-type]
        self.progressed()
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

    def _take(self, limit: int | None = None) -> list[T]:
        queued = self._items
        if not queued or (limit is not None and limit <= 0):
            return []
        if limit is None or limit >= len(queued):
            items = list(queued)
            queued.clear()
        else:
            items = [queued.popleft() for _ in range(limit)]
        if self._space:
            self._space.unpark_all()
        return items

    # -- acknowledgements ---------------------------------------------------

    @property
    def unacked_count(self) -> int:
        """Requests written and not acknowledged (0 without acknowledgements)."""
        return 0 if self.unacked is None else len(self.unacked)

    def ack(self, seqs: Sequence[int]) -> None:
        """The upstream acknowledged these seqs (see :meth:`Unacked.ack`)."""
        unacked = self.unacked
        if unacked is None:
            return
        was_full = unacked.room <= 0
        unacked.ack(seqs, trio.current_time())
        if was_full and unacked.room > 0 and self._data:
            self._data.unpark_all()  # the writer waits for room
        if not len(unacked) and self._acked:
            self._acked.unpark_all()

    def take_unacked(self) -> list[T]:
        """Every request written and not acknowledged, oldest first, for redelivery."""
        if self.unacked is None:
            return []
        requests = self.unacked.take_all()
        self._acked.unpark_all()
        return requests  # type: ignore[return-value]

    async def wait_acked(self) -> None:
        """Return once everything written is acknowledged or taken for redelivery."""
        while self.unacked_count:
            await self._acked.park()

    async def wait_empty(self) -> None:
        """Return once everything queued has been taken."""
        while self._items:
            await self._space.park()

    async def wait_written(self) -> None:
        """Return once everything queued is taken and written, or the outbox closed."""
        while self._accepting and (self._items or self._in_flight):
            await self._space.park()

    async def wait_drained(self) -> None:
        """Return once everything queued is taken and written, accepting puts or not."""
        while self._items or self._in_flight:
            await self._space.park()

    async def wait_progress(self) -> None:
        """Return at the writer's next progress (see :meth:`progressed`)."""
        await self._progress.park()

    async def wait_nonempty(self) -> None:
        """Return once something is queued (and, with acknowledgements, there is room)."""
        unacked = self.unacked
        while not self._items or (unacked is not None and unacked.room <= 0):
            await self._data.park()
