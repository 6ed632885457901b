"""One client connection as the rest of pmlb sees it."""

from __future__ import annotations

import time
from collections import deque

import trio


class Client:
    """A downstream: its identity, counters, and its bounded outbound queue.

    Routing code calls :meth:`send` synchronously (it runs inside the upstream
    stream's task and must never wait on one client); the connection's writer
    task takes everything queued at once with :meth:`next_batch`.
    """

    __slots__ = (
        "_full_since",
        "_pending",
        "_scope",
        "_slow_policy",
        "_slow_timeout",
        "_wakeup",
        "_write_scope",
        "bytes_in",
        "bytes_out",
        "close_reason",
        "closed_slow",
        "connected_at",
        "dispatching",
        "draining",
        "dropped",
        "last_active",
        "listener",
        "messages_in",
        "messages_out",
        "queue_limit",
        "remote",
        "seq",
        "transport",
        "uuid",
    )

    def __init__(
        self,
        uuid: str,
        *,
        listener: str,
        remote: str,
        transport: str,
        queue_limit: int,
        scope: trio.CancelScope,
        slow_policy: str = "disconnect",
        slow_timeout: float = 0.0,
    ) -> None:
        self.uuid = uuid
        self.listener = listener
        self.remote = remote
        self.transport = transport
        self.queue_limit = queue_limit
        self.connected_at = time.time()
        #: time.monotonic() of the last message received; None before the first
        self.last_active: float | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.close_reason: str | None = None
        #: closed by the slow-client policy
        self.closed_slow = False
        #: messages dropped by the "drop_oldest" policy
        self.dropped = 0
        #: set by a graceful drain: the writer closes once the queue is empty
        self.draining = False
        #: the reader is handing a batch on (waiting for room upstream); a
        #: drain waits for it, so that no message read is lost
        self.dispatching = False
        self._slow_policy = slow_policy
        self._slow_timeout = slow_timeout
        # time.monotonic() since when the queue has been full, if it is
        self._full_since: float | None = None
        self._pending: deque[bytes] = deque()
        #: connection number, set by the registry (orders clients for paging)
        self.seq = -1
        self._wakeup: trio.Event | None = None
        self._scope = scope
        # The scope of the write in progress, if any (see writing()).
        self._write_scope: trio.CancelScope | None = None

    def is_active(self, now: float, window: float) -> bool:
        """Whether the client sent a message within ``window`` seconds of ``now`` (monotonic)."""
        return self.last_active is not None and now - self.last_active <= window

    @property
    def queued(self) -> int:
        return len(self._pending)

    def send(self, payload: bytes) -> bool:
        """Queue ``payload`` for the client, applying the slow-client policy when it is full.

        Never waits. ``"drop_oldest"`` drops the oldest queued message to make
        room. ``"disconnect"`` closes the client once its queue has been full
        for ``slow_timeout`` seconds (at once if 0); meanwhile the queue may
        grow to twice ``queue_limit``, and reaching that closes it too.
        """
        if self.close_reason is not None:
            return False
        pending = self._pending
        if len(pending) >= self.queue_limit:
            if self._slow_policy == "drop_oldest":
                pending.popleft()
                self.dropped += 1
            else:
                now = time.monotonic()
                if self._full_since is None:
                    self._full_since = now
                    self._arm_write_deadline()
                if (
                    now - self._full_since >= self._slow_timeout
                    or len(pending) >= 2 * self.queue_limit
                ):
                    self.closed_slow = True
                    self.close(self._slow_reason())
                    return False
        pending.append(payload)
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        return True

    def _slow_reason(self) -> str:
        return f"slow client: outbound queue full ({self.queue_limit} messages)" + (
            f" for {self._slow_timeout:g}s" if self._slow_timeout else ""
        )

    def writing(self) -> trio.CancelScope:
        """The cancel scope for one write of the connection's writer.

        Under ``"disconnect"``, its deadline is when the queue will have been
        full for ``slow_timeout``: a client that stops reading is closed then
        even if nothing more is queued for it. Pass it to :meth:`written`.
        """
        self._write_scope = trio.CancelScope()
        self._arm_write_deadline()
        return self._write_scope

    def written(self, scope: trio.CancelScope) -> bool:
        """After a write in ``scope``: whether it timed out (the client is then closed)."""
        self._write_scope = None
        if not scope.cancelled_caught:
            return False
        self.closed_slow = True
        self.close(self._slow_reason())
        return True

    def _arm_write_deadline(self) -> None:
        scope, since = self._write_scope, self._full_since
        if scope is None or since is None or self._slow_policy != "disconnect":
            return
        left = self._slow_timeout - (time.monotonic() - since)
        scope.deadline = trio.current_time() + max(0.0, left)

    async def next_batch(self) -> list[bytes]:
        """Wait for queued messages and take them all.

        ``[]`` once draining, with nothing queued and nothing being dispatched:
        the writer then closes the connection.
        """
        while not self._pending:
            if self.draining and not self.dispatching:
                return []
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        batch = list(self._pending)
        self._pending.clear()
        self._full_since = None
        return batch

    def drain(self) -> None:
        """Stop reading, and close once everything queued is written (a graceful drain).

        Also wakes the writer when a dispatch it waited for has ended.
        """
        self.draining = True
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def close(self, reason: str) -> None:
        """Disconnect the client (the first reason given is the one kept)."""
        if self.close_reason is None:
            self.close_reason = reason
        self._scope.cancel()
