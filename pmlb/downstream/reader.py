"""Reading plain-TCP clients: their bytes become requests, many sockets in one pass.

:class:`ClientInput` is what a client's bytes go through, whoever reads
them: counted, decoded, and each message made a request
(:class:`~pmlb.codecs.request.Request`, an ``InputStreamRequest`` to send).

:class:`SharedReader` reads many plain-TCP sockets without a reader task
each: a private level-triggered epoll holds every socket being read, and
one task waits on its descriptor. When it wakes, it reads each ready socket
once (at most ``read_size`` bytes: a client that always has data gets one
read per pass, like every other) and hands what was read to dispatch, all
in one pass, without a task switch or an ``epoll_ctl`` per read.

That task is not the reader's own: it is one of the connection tasks, the
*leader*; the others sleep, each in its own connection's scope. When the
leader leaves (its client closes, or needs its task), it hands the lead on
to a sleeping one, as :mod:`pmlb.downstream.hangup` does. So a connection
is still closed and cancelled on its own, and its close runs where it
always did; and a socket that has to wait (no room upstream: backpressure;
its end of input; a drain) is handed to its own task, which does what the
per-client reader did and then gives the socket back. While a batch waits
for room, its socket stays in the epoll for its hang-up only
(``EPOLLRDHUP``: nothing is read meanwhile), so a client that closes then
is noticed here, with no task or epoll of its own to watch for it.

Level-triggered, because a pass reads each socket once: what is left in
the kernel is reported again by the next poll, with no re-arming and no
list of sockets still to read, and sockets are taken in turn.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections import OrderedDict
from collections.abc import Callable

import trio

from pmlb._time import rfc3339_now
from pmlb.codecs import FramingError, MessageTooLarge, make_decoder
from pmlb.codecs.request import Request, head, uuid_field
from pmlb.downstream.client import Client
from pmlb.downstream.limits import ConnectionCounters
from pmlb.downstream.reasons import Reason

log = logging.getLogger("pmlb.downstream")

#: what a socket whose batch waits for room is polled for: its peer's FIN
#: or a reset (EPOLLHUP and EPOLLERR are always reported), not its data
_HANGUP = select.EPOLLRDHUP | select.EPOLLHUP

#: what dispatch does with a batch without waiting: go on reading (True),
#: read no more (False), or None: the batch waits, in the client's task
#: (see Registry.dispatch_from_nowait)
DispatchNowait = Callable[[Client, list[Request]], bool | None]


class ClientInput:
    """The bytes one client sends, made into the requests to dispatch."""

    __slots__ = ("client", "counters", "decoder", "read_size", "uuid_field")

    def __init__(
        self, client: Client, framing: str, max_size: int, counters: ConnectionCounters
    ) -> None:
        self.client = client
        self.decoder = make_decoder(framing, max_size)
        self.read_size = self.decoder.read_size
        self.counters = counters
        self.uuid_field = uuid_field(client.uuid)  # encoded once per client

    def requests(self, data: bytes) -> list[Request]:
        """The requests of the messages ``data`` completes (maybe none); counts them.

        Raises :class:`~pmlb.codecs.FramingError` on bad input (see :meth:`bad_input`).
        """
        client = self.client
        try:
            messages = self.decoder.feed(data)
        except FramingError:
            client.received(len(data), 0)  # counted, as a read that decodes is
            raise
        client.received(len(data), len(messages))
        if not messages:
            return []
        # One timestamp per read: every message in it arrived together.
        shared = head(rfc3339_now(), self.uuid_field)
        uuid_ = client.uuid
        return [Request(shared, m, uuid_) for m in messages]

    def bad_input(self, exc: FramingError) -> None:
        """The client sent bad input: count it, close it, log it."""
        self.counters.bad_input += 1
        kind = Reason.TOO_BIG if isinstance(exc, MessageTooLarge) else Reason.ERROR
        self.client.close(f"bad input: {exc}", kind)
        log.warning(
            "client sent bad input", extra={"client": self.client.uuid, "problem": str(exc)}
        )

    def idle(self, idle_timeout: float) -> None:
        """The client sent nothing for ``idle_timeout`` seconds: count it, close it."""
        self.counters.idle_timeouts += 1
        self.client.close(f"idle for idle_timeout ({idle_timeout:g}s)", Reason.IDLE)


#: what a member's task is handed (besides a batch that has to wait)
END_OF_INPUT = "end of input"
READ_NO_MORE = "read no more"

#: a batch the reader could not place, for its client's task: the requests
#: (what is left of them), how many were read, and when (time.perf_counter())
HeldBatch = tuple[list[Request], int, float]
Work = str | HeldBatch


class Member(ClientInput):
    """A client read by a :class:`SharedReader`, and its connection's task."""

    __slots__ = ("dispatch", "fd", "last", "parked", "task", "work")

    def __init__(
        self,
        fd: int,
        client: Client,
        framing: str,
        max_size: int,
        counters: ConnectionCounters,
        dispatch: DispatchNowait,
    ) -> None:
        super().__init__(client, framing, max_size, counters)
        self.fd = fd
        self.dispatch = dispatch
        self.task = trio.lowlevel.current_task()
        #: what the task has to do, handed by the reader; None: nothing
        self.work: Work | None = None
        #: the task sleeps in SharedReader.next_work
        self.parked = False
        #: trio.current_time() of the last read with data (for idle_timeout)
        self.last = 0.0


class SharedReader:
    """Reads the plain-TCP clients of one Trio run with one ``idle_timeout``."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._epoll = select.epoll()
        #: every member, by descriptor
        self._members: dict[int, Member] = {}
        #: the members in the epoll, least recently read first
        self._reading: OrderedDict[int, Member] = OrderedDict()
        #: the members whose batch waits for room, in the epoll for their hang-up
        self._waiting: dict[int, Member] = {}
        #: the members whose task sleeps in next_work
        self._parked: dict[int, Member] = {}
        #: the member whose task leads (or was woken to), or whose poller does
        self._leader: Member | None = None

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: Member) -> None:
        """Start reading ``member``'s socket (call from its task)."""
        self._members[member.fd] = member
        self.resume(member)

    def resume(self, member: Member) -> None:
        """Read ``member``'s socket again, after its task did what it was handed."""
        member.last = trio.current_time()
        self._reading[member.fd] = member
        if self._waiting.pop(member.fd, None) is None:
            self._epoll.register(member.fd, select.EPOLLIN)
        else:
            self._epoll.modify(member.fd, select.EPOLLIN)

    def remove(self, member: Member) -> None:
        """Forget ``member`` (its task leaves; before its socket closes)."""
        self._members.pop(member.fd, None)
        self._parked.pop(member.fd, None)
        member.parked = False
        if (
            self._reading.pop(member.fd, None) is not None
            or self._waiting.pop(member.fd, None) is not None
        ):
            self._epoll.unregister(member.fd)
        if not self._members:
            self._epoll.close()
        else:
            self._ensure_polled()

    @property
    def closed(self) -> bool:
        return self._epoll.closed

    async def next_work(self, member: Member) -> Work:
        """Sleep (or lead) until the reader hands ``member``'s task something to do."""
        while True:
            work = member.work
            if work is not None:
                member.work = None
                return work
            if self._leader is None or self._leader is member:
                await self._lead(member)
                continue
            await self._park(member)

    @property
    def polled(self) -> bool:
        """Whether a task polls the epoll, or a sleeping one will when the lead is handed on."""
        return self._leader is not None or bool(self._parked)

    async def poll(self, member: Member) -> None:
        """Lead while ``member``'s task waits for room (a task of its own; cancel it after).

        For a member whose batch waits when no task is :attr:`polled`: the
        waiting sockets' hang-ups must still be noticed. If another task
        leads by the time this one runs, it sleeps until cancelled.
        """
        if self._leader is None:
            await self._lead(member)  # never returns: member gets no work while it waits
        await trio.sleep_forever()

    def release(self, member: Member) -> None:
        """``member``'s task reads no more (its end of input, or read no more): it leads no more.

        Its socket leaves the epoll. If then no task is :attr:`polled`
        while batches wait for room, one of those waits is interrupted (its
        batch is handed on over the bound, as a drain's is), so that its
        task comes back and leads; a member whose task has yet to start its
        wait needs none: it polls (:meth:`poll`) then.
        """
        if self._waiting.pop(member.fd, None) is not None:
            self._epoll.unregister(member.fd)
        self._ensure_polled()

    def _ensure_polled(self) -> None:
        if self.polled:
            return
        scopes = []
        for other in self._waiting.values():
            scope = other.client.dispatch_scope
            if scope is None:
                return  # its wait is yet to start: it will poll
            scopes.append(scope)
        if scopes:
            scopes[0].cancel()

    async def _park(self, member: Member) -> None:
        def abort(_: object) -> trio.lowlevel.Abort:
            member.parked = False
            self._parked.pop(member.fd, None)
            return trio.lowlevel.Abort.SUCCEEDED

        member.parked = True
        self._parked[member.fd] = member
        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake(self, member: Member) -> None:
        if member.parked:
            member.parked = False
            del self._parked[member.fd]
            trio.lowlevel.reschedule(member.task)

    async def _lead(self, member: Member) -> None:
        # Wait for the epoll for everyone until this member has work.
        self._leader = member
        wait_readable = trio.lowlevel.wait_readable
        fd = self._epoll.fileno()
        idle = self.idle_timeout
        try:
            while member.work is None:
                if idle and self._reading:
                    oldest = next(iter(self._reading.values()))
                    with trio.move_on_at(oldest.last + idle):
                        await wait_readable(fd)
                else:
                    await wait_readable(fd)
                self._pass()
        finally:
            self._leader = None
            # Hand the lead on: one sleeping member leads from now on.
            for other in self._parked.values():
                self._leader = other
                self._wake(other)
                break

    def _pass(self) -> None:
        now = trio.current_time()
        members = self._reading
        for fd, _ in self._epoll.poll(0):
            member = members.get(fd)
            if member is not None:
                self._read(member, now)
            elif fd in self._waiting:
                self._hung_up(fd)
        idle = self.idle_timeout
        if idle:
            expired = []
            for member in members.values():
                if member.last + idle > now:
                    break
                expired.append(member)
            for member in expired:
                self._stop(member)
                member.idle(idle)

    def _read(self, member: Member, now: float) -> None:
        client = member.client
        if client.close_reason is not None:  # closing: its task is cancelled
            self._stop(member)
            return
        try:
            data = os.read(member.fd, member.read_size)
        except BlockingIOError:
            return
        except OSError as exc:
            self._stop(member)
            client.close(f"connection lost: {exc}", Reason.ERROR)
            return
        if not data:
            self._hand(member, END_OF_INPUT)
            return
        if self.idle_timeout:
            member.last = now
            self._reading.move_to_end(member.fd)
        try:
            requests = member.requests(data)
        except FramingError as exc:
            self._stop(member)
            member.bad_input(exc)
            return
        if not requests:
            return
        count, started = len(requests), time.perf_counter()
        placed = member.dispatch(client, requests)
        if placed is None:
            self._wait(member, (requests, count, started))
        elif not placed:
            self._hand(member, READ_NO_MORE)

    def _stop(self, member: Member) -> None:
        # Read the socket no more (until resume).
        del self._reading[member.fd]
        self._epoll.unregister(member.fd)

    def _hand(self, member: Member, work: Work) -> None:
        self._stop(member)
        member.work = work
        self._wake(member)

    def _wait(self, member: Member, batch: HeldBatch) -> None:
        # The batch waits for room, in the member's task; its socket is
        # watched for a hang-up meanwhile, and read again on resume.
        fd = member.fd
        del self._reading[fd]
        self._waiting[fd] = member
        self._epoll.modify(fd, _HANGUP)
        member.work = batch
        self._wake(member)

    def _hung_up(self, fd: int) -> None:
        # Level-triggered: a hung-up socket stays ready, so it leaves the epoll.
        member = self._waiting.pop(fd)
        self._epoll.unregister(fd)
        member.client.hang_up()


_readers: trio.lowlevel.RunVar[dict[float, SharedReader] | None] = trio.lowlevel.RunVar(
    "pmlb_tcp_readers", default=None
)


def shared_reader(idle_timeout: float) -> SharedReader:
    """The reader of this Trio run's plain-TCP clients with ``idle_timeout``."""
    readers = _readers.get()
    if readers is None:
        readers = {}
        _readers.set(readers)
    reader = readers.get(idle_timeout)
    if reader is None or reader.closed:
        reader = readers[idle_timeout] = SharedReader(idle_timeout)
    return reader
