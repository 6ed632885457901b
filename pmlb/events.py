"""Operator events: what happened, for the admin's live stream and the dashboard.

Publishing never waits and never fails: each subscriber has a bounded queue,
and a subscriber that falls behind is dropped (its stream ends) rather than
slowing the proxy down. The last few events are kept for newcomers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from pmlb._time import rfc3339_now

Event = dict[str, Any]

#: How many events a subscriber may have waiting before it is dropped.
SUBSCRIBER_QUEUE = 1000
#: How many recent events are kept for :attr:`EventBus.recent`.
HISTORY = 100


class Subscription:
    """One consumer of the event stream."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pending: list[Event] = []
        self._wakeup = trio.Event()
        #: set once the subscriber fell behind and was dropped
        self.dropped = False

    def _offer(self, event: Event) -> bool:
        if len(self._pending) >= self._limit:
            self.dropped = True
            self._wakeup.set()
            return False
        self._pending.append(event)
        self._wakeup.set()
        return True

    async def next_batch(self) -> list[Event]:
        """Wait for events and take them all; ``[]`` once the subscriber is dropped."""
        while not self._pending and not self.dropped:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        if self.dropped:
            return []
        batch, self._pending = self._pending, []
        return batch


class EventBus:
    """Fans events out to subscribers without ever blocking the publisher."""

    def __init__(self, *, history: int = HISTORY, subscriber_queue: int = SUBSCRIBER_QUEUE) -> None:
        self.recent: deque[Event] = deque(maxlen=history)
        self._subscriber_queue = subscriber_queue
        self._subscribers: set[Subscription] = set()
        #: subscribers dropped for falling behind
        self.dropped_subscribers = 0

    def publish(self, type_: str, **fields: Any) -> None:
        event: Event = {"type": type_, "time": rfc3339_now(), **fields}
        self.recent.append(event)
        for subscription in list(self._subscribers):
            if not subscription._offer(event):
                self._subscribers.discard(subscription)
                self.dropped_subscribers += 1

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @contextmanager
    def subscribe(self, limit: int | None = None) -> Iterator[Subscription]:
        subscription = Subscription(limit or self._subscriber_queue)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)
