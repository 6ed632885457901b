"""What an acknowledging upstream has been sent and has not acknowledged yet.

With ``acks = true`` on an upstream, every request written to its stream is
stamped first: ``seq`` (1, 2, 3... on this stream), ``message_id`` (given once,
on the first delivery, and kept on every redelivery) and ``delivery_attempt``
(1, then one more on each redelivery). The request is kept here, by ``seq``,
until the upstream lists that ``seq`` in ``OutputStreamRequest.acks``. When the
stream fails, whatever is still here is redelivered (see
:meth:`pmlb.hub.upstreams.UpstreamTable.set_upstream_state`).

Pure bookkeeping: no I/O, no clock of its own (the caller passes the time).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

from pmlb.codecs.request import Request
from pmlb.histogram import LatencyHistogram

#: Upper bounds in seconds of the time from writing a request to its ack.
ACK_LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class MessageIds:
    """Message ids unique to this process: a random prefix and a counter.

    A random 64-bit prefix per process keeps ids apart across pmlb workers
    and restarts without coordination; the counter makes each one cheap.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = (prefix if prefix is not None else secrets.token_hex(8)) + "-"
        #: the number of the last id given
        self.last = 0

    def __call__(self) -> str:
        self.last += 1
        return f"{self.prefix}{self.last:x}"


#: The ids of every acknowledged stream of this process.
_IDS = MessageIds()


def strip(request: Request) -> None:
    """Clear the acknowledgement fields: ``request`` goes to an upstream without acks."""
    request.seq = 0
    request.message_id = ""
    request.delivery_attempt = 0


class Unacked:
    """Requests written to one upstream's stream and not acknowledged yet, by ``seq``.

    At most ``limit`` (the writer takes no more while it is full: see
    :meth:`pmlb.upstream.outbox.Outbox.take_nowait`). The ``seq`` numbering
    starts again at 1 after :meth:`take_all`, for the next stream.
    """

    __slots__ = (
        "_ids",
        "_next_seq",
        "_pending",
        "acks_received",
        "acks_unknown",
        "latency",
        "limit",
    )

    def __init__(self, limit: int, ids: MessageIds = _IDS) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._ids = ids
        # seq -> (request, when it was written); insertion order is seq order
        self._pending: dict[int, tuple[Request, float]] = {}
        self._next_seq = 1
        #: acks that matched a pending request / that did not (unknown or repeated)
        self.acks_received = 0
        self.acks_unknown = 0
        #: seconds from writing a request to its ack
        self.latency = LatencyHistogram(ACK_LATENCY_BUCKETS)

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def room(self) -> int:
        """How many more requests may be written before this is full."""
        return self.limit - len(self._pending)

    def stamp(self, requests: Iterable[Request], now: float) -> None:
        """Number ``requests`` (about to be written, in this order) and keep them."""
        # The data path: MessageIds() inlined, fields set once.
        pending = self._pending
        seq = self._next_seq
        ids = self._ids
        prefix, last = ids.prefix, ids.last
        for request in requests:
            request.seq = seq
            attempt = request.delivery_attempt  # an int: cheaper to read than the id
            if attempt:
                request.delivery_attempt = attempt + 1
            else:
                last += 1
                request.message_id = f"{prefix}{last:x}"
                request.delivery_attempt = 1
            pending[seq] = (request, now)
            seq += 1
        self._next_seq = seq
        ids.last = last

    def unstamp(self, requests: Iterable[Request]) -> None:
        """Forget ``requests``, stamped but never written: they are as before :meth:`stamp`."""
        pending = self._pending
        for request in requests:
            pending.pop(request.seq, None)
            request.seq = 0
            request.delivery_attempt -= 1
            if not request.delivery_attempt:
                request.message_id = ""

    def ack(self, seqs: Sequence[int], now: float) -> None:
        """The upstream is done with these; unknown or repeated seqs are counted, no more."""
        pending = self._pending
        pop = pending.pop
        before = len(pending)
        # Requests written in one batch share their time: one histogram
        # update per run of them, not one per ack.
        run_written, run = 0.0, 0
        for seq in seqs:
            entry = pop(seq, None)
            if entry is not None:
                written = entry[1]
                if written != run_written:
                    if run:
                        self.latency.observe(now - run_written, run)
                    run_written, run = written, 0
                run += 1
        if run:
            self.latency.observe(now - run_written, run)
        matched = before - len(pending)
        self.acks_received += matched
        self.acks_unknown += len(seqs) - matched

    def oldest(self) -> float | None:
        """When the oldest request still unacknowledged was written (``None``: none is)."""
        for _, written in self._pending.values():
            return written
        return None

    def take_all(self) -> list[Request]:
        """Every unacknowledged request, oldest first; numbering starts again at 1."""
        requests = [request for request, _ in self._pending.values()]
        self._pending.clear()
        self._next_seq = 1
        return requests
