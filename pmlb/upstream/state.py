"""The ``Upstream`` record: one upstream as the core and the admin see it.

This module owns the record and its states (:class:`UpstreamState`, health as
the supervisor finds it; :class:`AdminState`, what an operator set), kept apart
from the supervision loop so that the core, the admin API and metrics name the
record without importing :mod:`pmlb.upstream.supervisor`.

It holds no behaviour beyond derived properties. Who writes which fields: the
supervisor its health findings (``failures``, ``ready_failures``,
``last_error``, ``ready_at``, ``alive_at``, ``last_ping``,
``messages_received``, the latency histograms); the core's upstream table
(:mod:`pmlb.hub.upstreams`), through the ``Hub`` port the supervisor reports
to, its place in rotation (``state``, ``draining``, ``admin_state``,
``stalled``, ``stalls``, ``redelivered``, ``undeliverable``); the dispatcher
``messages_dispatched``.
"""

from __future__ import annotations

import enum

import attrs
import trio

from pmlb.codecs.request import Request
from pmlb.config import UpstreamConfig
from pmlb.histogram import LatencyHistogram
from pmlb.upstream.outbox import Outbox


class UpstreamState(enum.StrEnum):
    CONNECTING = "connecting"
    CHECKING = "checking readiness"
    SERVING = "serving"
    UNHEALTHY = "unhealthy"
    REMOVED = "removed"


class AdminState(enum.StrEnum):
    """What an operator set, apart from health (HAProxy's ``set server state``).

    ``ready``: in rotation while it serves. ``drain``: no new messages; what
    is queued is still written, replies and acknowledgements still flow.
    ``maint``: out of rotation; what is queued moves to other upstreams at
    once, while its connection stays (replies and acknowledgements to what
    it was written still flow). Either is undone by setting ``ready``.
    """

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


@attrs.define(eq=False)
class Upstream:
    """One upstream as the registry and the admin see it."""

    config: UpstreamConfig
    outbox: Outbox[Request]
    state: UpstreamState = UpstreamState.CONNECTING
    last_error: str | None = None
    #: messages handed to its outbox / received from it
    messages_dispatched: int = 0
    messages_received: int = 0
    #: times it stopped serving (its stream or liveness failed); readiness
    #: checks that failed (no answer in time, ready = false, an error)
    failures: int = 0
    ready_failures: int = 0
    #: time.time() of the last readiness and liveness answers
    ready_at: float | None = None
    alive_at: float | None = None
    #: with acks: requests written to it and not acknowledged that were
    #: redelivered elsewhere, and those dropped instead (max_deliveries)
    redelivered: int = 0
    undeliverable: int = 0
    #: being drained: gets no new messages, removed once it has finished
    draining: bool = False
    #: set by an operator (see :class:`AdminState`); changed by the upstream table only
    admin_state: AdminState = AdminState.READY
    #: its writes are not progressing (see ``STALL_AFTER`` in the supervisor): no new messages
    stalled: bool = False
    #: times it stalled
    stalls: int = 0
    #: seconds from each liveness ping to its answer, and the last one
    ping_latency: LatencyHistogram = attrs.Factory(LatencyHistogram)
    last_ping: float | None = None
    #: seconds each readiness check took to answer (ready or not; not the
    #: checks that got no answer within ready_timeout)
    ready_latency: LatencyHistogram = attrs.Factory(LatencyHistogram)
    #: cancelling it removes the upstream (its supervisor ends)
    cancel_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    #: set once the supervisor has ended and the upstream is removed
    removed: trio.Event = attrs.Factory(trio.Event)

    @property
    def address(self) -> str:
        return self.config.address

    @property
    def messages_written(self) -> int:
        """Messages written to its stream (over all its connections); see :attr:`Outbox.taken`."""
        return self.outbox.taken

    @property
    def unacked(self) -> int:
        """Requests written to its stream and not acknowledged (0 without acks)."""
        return self.outbox.unacked_count

    @property
    def in_rotation(self) -> bool:
        """Whether it gets new messages when it serves (not drained, nor in maintenance)."""
        return self.admin_state is AdminState.READY and not self.draining

    @property
    def queued(self) -> int:
        """Messages waiting in its outbox (what ``least_loaded`` balances on)."""
        return len(self.outbox)
