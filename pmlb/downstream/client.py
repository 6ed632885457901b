"""One client connection as the rest of pmlb sees it.

A :class:`Client`'s fields are written here only: the rest of pmlb reads
them and calls its methods. The connection's reader reports what it read
(:meth:`Client.received`), its writer what it wrote (:meth:`Client.sent`,
besides :meth:`Client.next_batch`, :meth:`Client.writing` and
:meth:`Client.written`); the dispatcher marks a batch being handed on
(:meth:`Client.set_dispatching`, :meth:`Client.set_dispatch_scope`); the
client table numbers it (:meth:`Client.set_seq`). ``tests/test_owners.py``
keeps it so.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any

import trio

from pmlb._time import rfc3339_from
from pmlb.codecs import Framer, Framing, framer
from pmlb.downstream.reasons import CLIENT_CLOSED, DRAINING, Reason, classify_text

#: how a direct client starts its writer task (its nursery's ``start_soon``)
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class QueueBudget:
    """The bytes held for all clients together (queued, or being written), and their limit.

    Every :class:`Client` adds what it queues and takes off what it wrote,
    dropped or lost, so ``held`` is always the sum over the clients. Past
    ``limit``, :meth:`relieve` applies the slow-client policy to the clients
    holding the most (as Envoy's overload manager resets the streams using
    the most buffer memory): a burst towards one client that reads is not
    paid for by the others.
    """

    __slots__ = ("_clients", "held", "limit")

    def __init__(self, limit: int = 0, clients: Callable[[], Iterable[Client]] = tuple) -> None:
        #: bytes at most; 0: no limit
        self.limit = limit or sys.maxsize
        self.held = 0
        self._clients = clients

    def relieve(self) -> None:
        """Bring ``held`` under 7/8 of ``limit``: the biggest holders drop or are closed.

        Under ``"drop_oldest"`` a client drops its oldest queued messages
        first; one that holds only what it is being written is closed, as
        under ``"disconnect"``. The margin keeps this (a sort of the
        clients) from running again at the next message.
        """
        target = self.limit - self.limit // 8
        by_size = sorted(self._clients(), key=Client.held_bytes, reverse=True)
        for client in by_size:
            if self.held <= target or not client.held_bytes():
                return
            client.over_total(self, target)


class Client:
    """A downstream: its identity, counters, and its bounded outbound queue.

    Routing code calls :meth:`send` synchronously (it runs inside the upstream
    stream's task and must never wait on one client). A client is written in
    one of two ways:

    - **through a stream** (TLS, WebSocket): the connection's writer task
      takes everything queued at once with :meth:`next_batch`;
    - **directly** (plain TCP, see :meth:`write_directly`): :meth:`send` only
      queues, and puts the client on a flush list that the router empties with
      :meth:`flush` before it next waits. A flush writes everything queued in
      one non-blocking ``write`` on the socket. Only what the kernel does not
      take at once starts a writer task, which ends once all is written. An
      idle client has no writer task, and a reply costs no task switch.
    """

    __slots__ = (
        "_budget",
        "_fd",
        "_flush_list",
        "_frame",
        "_full_since",
        "_full_what",
        "_pending",
        "_queued_bytes",
        "_scheduled",
        "_scope",
        "_slow_policy",
        "_slow_timeout",
        "_spawn",
        "_unsent",
        "_wakeup",
        "_write_scope",
        "_writing_bytes",
        "bytes_in",
        "bytes_out",
        "close_kind",
        "close_reason",
        "closed_slow",
        "connected_at",
        "dispatch_scope",
        "dispatching",
        "draining",
        "dropped",
        "input_ended",
        "last_active",
        "listener",
        "messages_in",
        "messages_out",
        "queue_bytes",
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
        queue_bytes: int = 0,
        budget: QueueBudget | None = None,
    ) -> None:
        self.uuid = uuid
        self.listener = listener
        self.remote = remote
        self.transport = transport
        self.queue_limit = queue_limit
        #: bytes queued at most before the client counts as slow (0 given: no limit)
        self.queue_bytes = queue_bytes or sys.maxsize
        self._budget = budget if budget is not None else QueueBudget()
        # Bytes of the payloads queued, and of those taken by the write in
        # progress: both count in the budget until written (or dropped).
        self._queued_bytes = 0
        self._writing_bytes = 0
        # Which limit the queue is full by ("1024 messages"), for the reason.
        self._full_what = ""
        self.connected_at = time.time()
        #: time.monotonic() of the last message received; None before the first
        self.last_active: float | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: the first close's detail, for the log and the admin API
        self.close_reason: str | None = None
        #: the first close's reason (see pmlb.downstream.reasons); None while open
        self.close_kind: Reason | None = None
        #: closed by the slow-client policy
        self.closed_slow = False
        #: messages dropped by the "drop_oldest" policy
        self.dropped = 0
        #: set by a graceful drain: the writer closes once the queue is empty
        self.draining = False
        #: the reader is handing a batch on (waiting for room upstream); a
        #: drain waits for it, so that no message read is lost
        self.dispatching = False
        #: the scope of the reader's dispatch in progress: a drain or a
        #: hang-up interrupts a dispatch that waits (see Dispatcher.dispatch_from)
        self.dispatch_scope: trio.CancelScope | None = None
        #: the client sent its end of input (EOF, FIN): it is read no more,
        #: but replies are still written to it until it is closed
        self.input_ended = False
        self._slow_policy = slow_policy
        self._slow_timeout = slow_timeout
        # time.monotonic() since when the queue has been full, if it is
        self._full_since: float | None = None
        self._pending: list[bytes] = []
        # Direct writing (see write_directly): the socket's descriptor, or None.
        self._fd: int | None = None
        self._frame: Framer = framer(Framing.RAW)
        self._flush_list: list[Client] = []
        self._spawn: Spawn | None = None
        # On the flush list, or a writer task runs: a send needs do nothing more.
        self._scheduled = False
        # Framed bytes a direct writer has yet to write.
        self._unsent = b""
        #: connection number, set by the registry (orders clients for paging)
        self.seq = -1
        self._wakeup: trio.Event | None = None
        self._scope = scope
        # The scope of the write in progress, if any (see writing()).
        self._write_scope: trio.CancelScope | None = None

    def summary(self) -> dict[str, object]:
        """The session's figures for its disconnect log line (as HAProxy logs a session)."""
        return {
            "duration": round(time.time() - self.connected_at, 3),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }

    def received(self, nbytes: int, nmessages: int) -> None:
        """The reader read ``nbytes`` bytes that completed ``nmessages`` messages (maybe 0)."""
        self.bytes_in += nbytes
        if nmessages:
            self.messages_in += nmessages
            self.last_active = time.monotonic()

    def sent(self, nbytes: int, nmessages: int) -> None:
        """The connection's writer wrote ``nmessages`` messages, of ``nbytes`` bytes."""
        self.messages_out += nmessages
        self.bytes_out += nbytes

    def set_seq(self, seq: int) -> None:
        """The client's connection number (the client table's, for paging)."""
        self.seq = seq

    def set_dispatching(self, dispatching: bool) -> None:
        """Whether a batch read from the client is being handed on (the dispatcher's).

        A drain waits for it (see :attr:`dispatching`).
        """
        self.dispatching = dispatching

    def set_dispatch_scope(self, scope: trio.CancelScope | None) -> None:
        """The reader's dispatch that waits runs in ``scope`` (``None``: it ended).

        A drain or a hang-up cancels it; one that came first, at once.
        """
        self.dispatch_scope = scope
        if scope is not None and (self.draining or self.input_ended):
            scope.cancel()

    def view(self, now: float, wall: float, window: float) -> dict[str, Any]:
        """What the admin API shows of this client (JSON-ready), at ``now`` (monotonic) and
        ``wall`` (``time.time()``), with activity ``window`` seconds."""
        last = self.last_active
        return {
            "uuid": self.uuid,
            "remote": self.remote,
            "listener": self.listener,
            "transport": self.transport,
            "connected_at": rfc3339_from(self.connected_at) or "",
            "last_active_at": None if last is None else rfc3339_from(wall - (now - last)),
            "active": self.is_active(now, window),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "queued": self.queued,
            "dropped": self.dropped,
        }

    def is_active(self, now: float, window: float) -> bool:
        """Whether the client sent a message within ``window`` seconds of ``now`` (monotonic)."""
        return self.last_active is not None and now - self.last_active <= window

    @property
    def queued(self) -> int:
        return len(self._pending)

    def write_directly(
        self, fd: int, framing: Framing | str, flush_list: list[Client], spawn: Spawn
    ) -> None:
        """Write to the socket ``fd`` directly from now on (see the class docstring).

        ``flush_list`` is the router's: whoever calls :meth:`send` must call
        :meth:`flush` on every client on it before it next waits (the
        :class:`~pmlb.hub.route.Router` does). ``spawn`` starts a writer task
        in the connection's nursery. Call :meth:`detach` before ``fd`` closes.
        ``framing``'s encoder is looked up here, once.
        """
        self._fd = fd
        self._frame = framer(framing)
        self._flush_list = flush_list
        self._spawn = spawn

    def detach(self) -> None:
        """The socket is about to close: never write to its descriptor again."""
        self._fd = None

    def held_bytes(self) -> int:
        """Bytes of the payloads queued for the client or being written to it."""
        return self._queued_bytes + self._writing_bytes

    def send(self, payload: bytes) -> bool:
        """Queue ``payload`` for the client, applying the slow-client policy when it is full.

        Full is ``queue_limit`` messages or ``queue_bytes`` bytes queued,
        whichever comes first, or the budget of all clients spent (see
        :class:`QueueBudget`). Never waits. ``"drop_oldest"`` drops the oldest
        queued messages to make room. ``"disconnect"`` closes the client once
        its queue has been full for ``slow_timeout`` seconds (at once if 0);
        meanwhile the queue may grow to twice its limits, and reaching that
        closes it too.
        """
        if self.close_reason is not None:
            return False
        pending, budget = self._pending, self._budget
        if (
            len(pending) >= self.queue_limit
            or self._queued_bytes >= self.queue_bytes
            or budget.held >= budget.limit
        ) and not self._make_room():
            return False
        size = len(payload)
        self._queued_bytes += size
        budget.held += size
        pending.append(payload)
        if self._fd is not None:
            if not self._scheduled:
                self._scheduled = True
                self._flush_list.append(self)
        elif self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        return True

    def _make_room(self) -> bool:
        # send()'s slow path: a limit is reached. Whether to queue the message.
        budget = self._budget
        if budget.held >= budget.limit:
            budget.relieve()
            if self.close_reason is not None:
                return False
        pending = self._pending
        if len(pending) >= self.queue_limit:
            self._full_what = f"{self.queue_limit} messages"
        elif self._queued_bytes >= self.queue_bytes:
            self._full_what = f"{self.queue_bytes} bytes"
        else:
            return True
        if self._slow_policy == "drop_oldest":
            while pending and (
                len(pending) >= self.queue_limit or self._queued_bytes >= self.queue_bytes
            ):
                self._drop_oldest()
            return True
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
            self._arm_write_deadline()
        if (
            now - self._full_since >= self._slow_timeout
            or len(pending) >= 2 * self.queue_limit
            or self._queued_bytes >= 2 * self.queue_bytes
        ):
            self.closed_slow = True
            self.close(self._slow_reason(), Reason.SLOW)
            return False
        return True

    def _drop_oldest(self) -> None:
        size = len(self._pending.pop(0))
        self._queued_bytes -= size
        self._budget.held -= size
        self.dropped += 1

    def over_total(self, budget: QueueBudget, target: int) -> None:
        """All clients hold more than ``budget.limit`` and this one is among the biggest.

        Drops its oldest queued messages until ``budget.held`` is down to
        ``target`` (``"drop_oldest"``), or closes it.
        """
        if self._slow_policy == "drop_oldest":
            while self._pending and budget.held > target:
                self._drop_oldest()
            if budget.held <= target:
                return
        self.closed_slow = True
        self.close(
            f"slow client: the clients' outbound queues hold over"
            f" client_queue_bytes_total ({budget.limit} bytes), this one"
            f" {self.held_bytes()} bytes",
            Reason.SLOW,
        )

    def _release_writing(self) -> None:
        # What was being written is written: it leaves the budget.
        self._budget.held -= self._writing_bytes
        self._writing_bytes = 0

    def _take(self) -> None:
        # Everything queued is taken for one write.
        self._writing_bytes += self._queued_bytes
        self._queued_bytes = 0
        self._pending.clear()
        self._full_since = None

    def flush(self) -> None:
        """Write what is queued for a direct client without waiting; see the class docstring."""
        fd, pending = self._fd, self._pending
        if self._unsent or fd is None or self.close_reason is not None:
            return  # a writer task runs, or the client is gone
        self._scheduled = False
        if not pending:
            self._close_if_drained()
            return
        data = self._frame(pending)
        count = len(pending)
        self._take()
        self._write_now(fd, data, count)

    def send_shared(self, payload: bytes, framed: dict[object, bytes]) -> bool:
        """:meth:`send` for a ``payload`` many clients get (a broadcast, a multicast).

        ``framed`` is ``payload`` framed, by framer, shared by those clients
        and filled as they need it: the payload is framed once per framing.
        A direct client with nothing queued or being written is written at
        once (one ``write``, as its :meth:`flush` would), never queued.
        """
        fd, budget = self._fd, self._budget
        # A direct client with something queued or being written is
        # _scheduled: that goes first, so this is queued behind it.
        if (
            fd is None
            or self._scheduled
            or self.close_reason is not None
            or budget.held >= budget.limit
        ):
            return self.send(payload)
        encode = self._frame
        data = framed.get(encode)
        if data is None:
            data = framed[encode] = encode([payload])
        # Held while written, as if queued then taken (see _take).
        size = len(payload)
        self._writing_bytes += size
        budget.held += size
        self._write_now(fd, data, 1)
        return True

    def _write_now(self, fd: int, data: bytes, count: int) -> None:
        # One non-blocking write of ``count`` framed messages taken for it;
        # a writer task for what the kernel does not take.
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self.close(f"connection lost: {exc}", Reason.ERROR)
            return
        if written == len(data):
            self._release_writing()
            self.messages_out += count
            self.bytes_out += written
            self._close_if_drained()
            return
        self._unsent = data[written:]
        self._scheduled = True
        self.bytes_out += written
        assert self._spawn is not None
        self._spawn(partial(self._write_rest, count))

    async def _write_rest(self, count: int) -> None:
        # The writer task of a direct client: what the kernel did not take,
        # then whatever was queued meanwhile, until nothing is left.
        fd = self._fd
        wait_writable = trio.lowlevel.wait_writable
        try:
            while fd is not None and self.close_reason is None:
                data = self._unsent
                with self.writing() as scope:
                    while data:
                        await wait_writable(fd)
                        try:
                            written = os.write(fd, data)
                        except BlockingIOError:
                            continue
                        self.bytes_out += written
                        data = data[written:]
                if self.written(scope):
                    return
                self.messages_out += count
                pending = self._pending
                if not pending:
                    break
                self._unsent = self._frame(pending)
                count = len(pending)
                self._take()
        except OSError as exc:
            self.close(f"connection lost: {exc}", Reason.ERROR)
            return
        finally:
            self._unsent = b""
        self._scheduled = False
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.draining and not self.dispatching and not self._pending:
            self.close(DRAINING, Reason.DRAIN)

    def _slow_reason(self) -> str:
        what = self._full_what or f"{self.queue_limit} messages"
        return f"slow client: outbound queue full ({what})" + (
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
        """After a write in ``scope``: whether it timed out (the client is then closed).

        What the write took from the queue no longer counts as held.
        """
        self._write_scope = None
        if not scope.cancelled_caught:
            self._release_writing()
            return False
        self.closed_slow = True
        self.close(self._slow_reason(), Reason.SLOW)
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
        self._take()
        return batch

    def drain(self) -> None:
        """Stop reading, and close once everything queued is written (a graceful drain).

        Also wakes the writer when a dispatch it waited for has ended.
        """
        self.draining = True
        if self.dispatch_scope is not None:
            self.dispatch_scope.cancel()
        if self._fd is not None:
            if not self._scheduled:
                self._close_if_drained()
        elif self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def end_input(self) -> None:
        """The client sent its end of input: it may still read (a half-close)."""
        self.input_ended = True

    def hang_up(self) -> None:
        """The client hung up while its read batch waited for room: that wait ends.

        Its input ended (:meth:`end_input`), and the dispatch that waits is
        cancelled, so its batch is handed on as a drain's is.
        """
        self.input_ended = True
        if self.dispatch_scope is not None:
            self.dispatch_scope.cancel()

    def close(self, reason: str, kind: Reason | None = None) -> None:
        """Disconnect the client (the first reason given is the one kept).

        ``reason`` is the detail for the log, ``kind`` why (its wire kind and
        WebSocket close code); without ``kind`` it is sorted from the text
        (:func:`~pmlb.downstream.reasons.classify_text`).

        After the client's end of input, a broken connection is the client's
        close too: a peer that closed both ways resets the next write.
        """
        if self.close_reason is None:
            if self.input_ended and reason.startswith("connection lost"):
                reason, kind = CLIENT_CLOSED, Reason.CLIENT_CLOSED
            self.close_reason = reason
            self.close_kind = kind if kind is not None else classify_text(reason)
            # Nothing more is written to it: what it held leaves the budget.
            self._budget.held -= self._queued_bytes + self._writing_bytes
            self._queued_bytes = self._writing_bytes = 0
            self._pending.clear()
            # Once: cancel() is idempotent, but trio builds its reason each time.
            self._scope.cancel()
