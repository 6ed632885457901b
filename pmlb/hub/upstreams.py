"""The upstream table, and what each change of an upstream's state does.

Owns the upstreams by address, the running DNS discovery entries, how
supervisors and discoveries are started (set by the server), and the counts of
requests redelivered and dropped after ``max_deliveries`` (upstreams removed
since included). It is the :class:`pmlb.upstream.supervisor.Hub` the
supervisors report to: a state change joins or leaves the dispatcher's serving
set, and what a failed upstream held fails over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from pmlb.codecs.request import Request
from pmlb.config import Config, UpstreamConfig
from pmlb.events import EventBus
from pmlb.hub.dispatch import Dispatcher
from pmlb.hub.route import Router
from pmlb.upstream.acks import Unacked
from pmlb.upstream.discovery import Discovery
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.state import AdminState, Upstream, UpstreamState

log = logging.getLogger("pmlb.registry")


class UpstreamTable:
    """The upstreams: add, remove, drain; their state, admin state and stalls."""

    def __init__(
        self,
        config: Config,
        upstreams: dict[str, Upstream],
        dispatcher: Dispatcher,
        router: Router,
        events: EventBus,
    ) -> None:
        self.config = config
        #: the upstreams by address (the dispatcher reads this same dict)
        self.upstreams = upstreams
        self._dispatcher = dispatcher
        self._events = events
        #: the supervisors deliver what upstreams send back through the router
        self.deliver = router.deliver
        self._start_supervisor: Callable[[Upstream], None] | None = None
        self._start_discovery: Callable[[Discovery], None] | None = None
        #: running ``discovery = "dns"`` entries by their name's address
        self.discoveries: dict[str, Discovery] = {}
        self._state_changed = trio.lowlevel.ParkingLot()
        #: with acks: requests redelivered, and dropped after max_deliveries
        #: (upstreams removed since included, unlike their own counters)
        self.redelivered = 0
        self.undeliverable = 0

    def add_upstream(self, config: UpstreamConfig) -> Upstream:
        """Register an upstream (not yet supervised); ``ValueError`` if its address is taken."""
        if config.address in self.upstreams:
            raise ValueError(f"upstream {config.address} already exists")
        unacked = Unacked(config.max_unacked) if config.acks else None
        upstream = Upstream(
            config=config, outbox=Outbox(self.config.upstream_queue_size, unacked=unacked)
        )
        self.upstreams[config.address] = upstream
        self._events.publish("upstream.added", upstream=config.address)
        return upstream

    def attach_supervisor(self, start: Callable[[Upstream], None]) -> None:
        """Set how :meth:`start_upstream` starts a supervisor (the server does this)."""
        self._start_supervisor = start

    def start_upstream(self, config: UpstreamConfig) -> Upstream:
        """Add an upstream and start supervising it; ``ValueError`` if its address is taken."""
        if self._start_supervisor is None:
            raise RuntimeError("this registry is not attached to a running server")
        upstream = self.add_upstream(config)
        self._start_supervisor(upstream)
        return upstream

    def attach_discovery(self, start: Callable[[Discovery], None]) -> None:
        """Set how :meth:`start_discovery` runs a DNS discovery entry (the server does this)."""
        self._start_discovery = start

    def start_discovery(self, config: UpstreamConfig) -> Discovery:
        """Start a ``discovery = "dns"`` entry; ``ValueError`` if its address is taken."""
        if self._start_discovery is None:
            raise RuntimeError("this registry is not attached to a running server")
        if config.address in self.discoveries or config.address in self.upstreams:
            raise ValueError(f"upstream {config.address} already exists")
        entry = Discovery(config)
        self.discoveries[config.address] = entry
        self._events.publish("discovery.added", upstream=config.address)
        self._start_discovery(entry)
        return entry

    async def stop_discovery(self, address: str) -> None:
        """Stop a DNS discovery entry and remove the upstreams it found; ``KeyError`` if none."""
        entry = self.discoveries.pop(address)
        entry.cancel_scope.cancel()
        for upstream in sorted(entry.addresses):
            if upstream in self.upstreams:
                await self.remove_upstream(upstream)
        entry.addresses.clear()
        self._events.publish("discovery.removed", upstream=address)

    async def remove_upstream(self, address: str) -> None:
        """Stop and remove an upstream; its queued messages fail over.

        ``KeyError`` if there is no such upstream.
        """
        upstream = self.upstreams[address]
        upstream.cancel_scope.cancel()
        await upstream.removed.wait()

    async def drain_upstream(self, address: str, *, grace: float = 30.0, quiet: float = 0.5) -> int:
        """Send an upstream no new messages, let it finish, then remove it.

        It waits until the upstream's queue is written out (with acks: and
        acknowledged) and its stream has been silent for ``quiet`` seconds
        (answers still on their way), at most ``grace`` seconds; whatever is
        still queued (or unacknowledged) then fails over. Returns how many
        messages failed over. ``KeyError`` if there is no such upstream.
        """
        upstream = self.upstreams[address]
        if not upstream.draining:
            upstream.draining = True
            self._dispatcher.leave(upstream)
            upstream.outbox.close()
            self._events.publish("upstream.draining", upstream=address)
            log.info("upstream draining", extra={"upstream": address})
        with trio.move_on_after(grace):
            await upstream.outbox.wait_empty()
            await upstream.outbox.wait_acked()
            received = -1
            while received != upstream.messages_received:
                received = upstream.messages_received
                await trio.sleep(quiet)
        left = len(upstream.outbox) + upstream.unacked
        await self.remove_upstream(address)
        return left

    def set_upstream_state(
        self, upstream: Upstream, state: UpstreamState, *, reason: str | None = None
    ) -> None:
        previous, upstream.state = upstream.state, state
        if state is previous:
            return
        self._state_changed.unpark_all()
        fields: dict[str, object] = {"upstream": upstream.address, "state": str(state)}
        if reason:
            fields["reason"] = reason
        self._events.publish("upstream.state", **fields)
        if state is UpstreamState.SERVING:
            if upstream.draining:
                log.info("upstream serving again while draining", extra=fields)
                return
            if not upstream.in_rotation:
                fields["admin_state"] = str(upstream.admin_state)
                log.info("upstream serving, out of rotation", extra=fields)
                return
            self._dispatcher.join(upstream)
            log.info("upstream serving", extra=fields)
            return
        if previous is UpstreamState.SERVING:
            self._dispatcher.leave(upstream)
            upstream.outbox.close()
            moved = upstream.outbox.take_back()
            unacked = upstream.outbox.take_unacked()
            if unacked:
                fields["redelivered"] = self._redeliver(upstream, unacked)
            self._dispatcher.redispatch(moved)
            fields["requeued"] = len(moved)
        if state is UpstreamState.REMOVED:
            self.upstreams.pop(upstream.address, None)
            log.info("upstream removed", extra=fields)
        elif previous is UpstreamState.SERVING:
            log.warning("upstream stopped serving", extra=fields)
        else:
            log.debug("upstream state", extra=fields)

    def set_upstream_admin_state(self, upstream: Upstream, state: AdminState) -> int:
        """Set what an operator wants of ``upstream`` (see :class:`AdminState`).

        ``drain`` and ``maint`` take it out of rotation at once: readers
        waiting for room in its queue go elsewhere. ``maint`` also moves what
        is queued for it to the other upstreams (or keeps it for the next one
        to serve); returns how many messages moved. ``ready`` puts a serving
        upstream back in rotation. Its connection stays in every state.
        """
        previous = upstream.admin_state
        if state is previous:
            return 0
        upstream.admin_state = state
        moved = 0
        if self._dispatcher.leave(upstream):
            upstream.outbox.refuse()
        if state is AdminState.MAINT:
            queued = upstream.outbox.take_back()
            moved = len(queued)
            self._dispatcher.redispatch(queued)
        if upstream.in_rotation and upstream.state is UpstreamState.SERVING:
            self._dispatcher.join(upstream)
        fields: dict[str, object] = {
            "upstream": upstream.address,
            "admin_state": str(state),
            "previous": str(previous),
        }
        if moved:
            fields["moved"] = moved
        log.info("upstream admin state set", extra=fields)
        self._events.publish("upstream.admin_state", **fields)
        self._state_changed.unpark_all()
        return moved

    def set_upstream_stalled(
        self, upstream: Upstream, stalled: bool, *, waited: float | None = None
    ) -> None:
        """Mark an upstream whose writes make no progress (or do again); its supervisor does.

        A stalled upstream gets no new messages while another serving one is
        not stalled: the clients waiting for room in its queue go elsewhere.
        What it has queued stays (it may recover) until its stall_timeout.
        """
        if stalled is upstream.stalled:
            return
        upstream.stalled = stalled
        self._dispatcher.count_stalled(stalled)
        fields: dict[str, object] = {"upstream": upstream.address, "stalled": stalled}
        if stalled:
            upstream.stalls += 1
            fields["waited"] = round(waited or 0.0, 3)  # seconds, a number in JSON logs
            fields["queued"] = len(upstream.outbox)
            log.warning("upstream stalled: its writes make no progress", extra=fields)
            upstream.outbox.turn_away()
        else:
            log.info("upstream writes progress again", extra=fields)
        self._events.publish("upstream.stalled", upstream=upstream.address, stalled=stalled)

    def others_flowing(self, upstream: Upstream) -> bool:
        """Whether another serving upstream is not stalled (could take this one's messages)."""
        return self._dispatcher.others_flowing(upstream)

    async def wait_upstream_state(self, address: str, state: UpstreamState) -> None:
        """Return once the upstream at ``address`` is in ``state`` (``removed``: gone)."""
        while True:
            upstream = self.upstreams.get(address)
            if upstream is None and state is UpstreamState.REMOVED:
                return
            if upstream is not None and upstream.state is state:
                return
            await self._state_changed.park()

    def _redeliver(self, upstream: Upstream, requests: list[Request]) -> int:
        """Dispatch again, first, what ``upstream`` did not acknowledge; return how many.

        Those delivered ``max_deliveries`` times already are dropped instead.
        """
        limit = upstream.config.max_deliveries
        again = [r for r in requests if r.delivery_attempt < limit]
        dropped = len(requests) - len(again)
        if dropped:
            upstream.undeliverable += dropped
            self.undeliverable += dropped
            log.error(
                "requests dropped: delivered max_deliveries times without an acknowledgement",
                extra={
                    "upstream": upstream.address,
                    "dropped": dropped,
                    "max_deliveries": limit,
                    "undeliverable_total": self.undeliverable,
                },
            )
        upstream.redelivered += len(again)
        self.redelivered += len(again)
        self._dispatcher.redispatch(again, front=True)
        return len(again)
