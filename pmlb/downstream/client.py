"""One client connection as the rest of pmlb sees it."""

from __future__ import annotations

import time

import trio


class Client:
    """A downstream: its identity, counters, and its bounded outbound queue.

    Routing code calls :meth:`send` synchronously (it runs inside the upstream
    stream's task and must never wait on one client); the connection's writer
    task takes everything queued at once with :meth:`next_batch`.
    """

    __slots__ = (
        "_pending",
        "_scope",
        "_wakeup",
        "bytes_in",
        "bytes_out",
        "close_reason",
        "connected_at",
        "last_active",
        "listener",
        "messages_in",
        "messages_out",
        "queue_limit",
        "remote",
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
        self._pending: list[bytes] = []
        self._wakeup: trio.Event | None = None
        self._scope = scope

    def is_active(self, now: float, window: float) -> bool:
        """Whether the client sent a message within ``window`` seconds of ``now`` (monotonic)."""
        return self.last_active is not None and now - self.last_active <= window

    @property
    def queued(self) -> int:
        return len(self._pending)

    def send(self, payload: bytes) -> bool:
        """Queue ``payload`` for the client; a client whose queue is full is disconnected."""
        if self.close_reason is not None:
            return False
        if len(self._pending) >= self.queue_limit:
            self.close(f"slow client: outbound queue full ({self.queue_limit} messages)")
            return False
        self._pending.append(payload)
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        return True

    async def next_batch(self) -> list[bytes]:
        """Wait for queued messages and take them all."""
        while not self._pending:
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        batch, self._pending = self._pending, []
        return batch

    def close(self, reason: str) -> None:
        """Disconnect the client (the first reason given is the one kept)."""
        if self.close_reason is None:
            self.close_reason = reason
        self._scope.cancel()
