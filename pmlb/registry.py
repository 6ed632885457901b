"""The shared state of a running pmlb, and the only way to change it.

The downstream side registers clients and dispatches their messages; the
upstream supervisors report state changes and deliver replies; the admin API
reads snapshots and acts through the same methods. Everything worth telling an
operator is published on :attr:`Registry.events`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, cast

import attrs
import trio
from sortedcontainers import SortedDict

from pmlb._log import RateLimited
from pmlb._proto import upstream_pb2 as pb
from pmlb._time import rfc3339_now
from pmlb.balancer import Policy, make_policy
from pmlb.config import Config, UpstreamConfig
from pmlb.downstream.client import Client, QueueBudget
from pmlb.downstream.limits import ConnectionCounters
from pmlb.downstream.reasons import STOPPING, UPSTREAM_ACTION, Reason
from pmlb.events import EventBus
from pmlb.histogram import LatencyHistogram
from pmlb.upstream.acks import Unacked, strip
from pmlb.upstream.discovery import Discovery
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.supervisor import AdminState, Upstream, UpstreamState

if TYPE_CHECKING:
    from pmlb.cluster import Bus
    from pmlb.reload import Plan

log = logging.getLogger("pmlb.registry")

_BROADCAST_NAMES = {
    pb.OutputStreamRequest.BROADCAST_ALL: "all",
    pb.OutputStreamRequest.BROADCAST_ACTIVE: "active",
    pb.OutputStreamRequest.BROADCAST_NOT_ACTIVE: "inactive",
}


def _part(
    requests: list[pb.InputStreamRequest], part: slice | list[int]
) -> list[pb.InputStreamRequest]:
    if isinstance(part, slice):
        return requests[part]
    return [requests[i] for i in part]


@attrs.frozen
class Statistics:
    """A snapshot of the registry's counters."""

    clients: int
    clients_total: int
    upstreams: int
    upstreams_serving: int
    messages_from_clients: int
    messages_to_clients: int
    broadcasts: int
    unknown_client: int
    invalid_target: int
    awaiting_upstream: int
    #: connection limits: what was accepted, refused and closed (a copy)
    connections: ConnectionCounters = attrs.field(factory=ConnectionCounters)
    broadcast_recipients: int = 0
    #: connections closed at once because new clients were not accepted
    refused: int = 0
    #: bytes of every client that has come and gone, plus the connected ones
    bytes_from_clients: int = 0
    bytes_to_clients: int = 0
    #: clients connected now / ever, by listener name
    clients_by_listener: dict[str, int] = attrs.Factory(dict)
    clients_total_by_listener: dict[str, int] = attrs.Factory(dict)
    #: closed connections by kind of reason (see :class:`pmlb.downstream.reasons.Reason`)
    disconnects: dict[str, int] = attrs.Factory(dict)
    #: messages queued for clients, all clients together
    queued_to_clients: int = 0
    #: bytes queued for or being written to clients (client_queue_bytes_total)
    queued_bytes_to_clients: int = 0
    accepting: bool = True
    policy: str = "round_robin"
    #: with acks: requests written and not acknowledged, all upstreams together;
    #: acks received (matched) and unknown (no such seq, or acked already);
    #: requests redelivered after their upstream failed, and dropped after
    #: max_deliveries deliveries
    unacked: int = 0
    acks_received: int = 0
    acks_unknown: int = 0
    redelivered: int = 0
    undeliverable: int = 0


class Registry:
    """Clients, upstreams, and the message flow between them."""

    def __init__(self, config: Config, policy: Policy | None = None) -> None:
        self.config = config
        self.policy: Policy = policy or make_policy(config.balancing)
        self.clients: dict[str, Client] = {}
        # The same clients by connection number, for stable cursor paging.
        self._by_seq: SortedDict = SortedDict()
        self._next_seq = 0
        #: whether listeners hand new connections on (an operator may pause it)
        self.accepting = True
        #: set when someone asked the whole process to drain and stop
        self.stop_requested = trio.Event()
        self.events = EventBus()
        #: how long client batches wait in dispatch for an upstream to take them
        self.dispatch_latency = LatencyHistogram()
        self._start_supervisor: Callable[[Upstream], None] | None = None
        self._start_discovery: Callable[[Discovery], None] | None = None
        #: running ``discovery = "dns"`` entries by their name's address
        self.discoveries: dict[str, Discovery] = {}
        self.upstreams: dict[str, Upstream] = {}
        # The serving upstreams, in the order they started serving: the
        # policy's indexes point into this list.
        self._serving: list[Upstream] = []
        # how many upstreams are stalled (see set_upstream_stalled)
        self._stalled = 0
        self._serving_changed = trio.lowlevel.ParkingLot()
        self._state_changed = trio.lowlevel.ParkingLot()
        self._client_removed = trio.lowlevel.ParkingLot()
        #: directly written clients with something queued: whoever sends to
        #: clients writes them out with flush_clients() before it next waits
        self.unflushed: list[Client] = []
        # Accepted messages whose upstream failed while no other one served:
        # they go first to the next upstream that serves.
        self._orphans: deque[pb.InputStreamRequest] = deque()
        self._orphans_events = 0  # how many of them are lifecycle events
        # Batches readers are handing on (waiting for an upstream, or for
        # room in its outbox), by id: accepted, not yet in any outbox.
        self._held: dict[int, list[pb.InputStreamRequest]] = {}
        # Lifecycle events waiting for an upstream with events = true to
        # serve; bounded, the oldest dropped (and counted) first.
        self._event_orphans: deque[pb.InputStreamRequest] = deque()
        # Places events when only some serving upstreams take them (when all
        # do, events follow self.policy, so they go where the messages go).
        self._event_policy: Policy = make_policy(config.balancing)
        self.events_dropped = 0
        #: with acks: requests redelivered, and dropped after max_deliveries
        #: (upstreams removed since included, unlike their own counters)
        self.redelivered = 0
        self.undeliverable = 0
        self._unknown_log = RateLimited(log)
        self.clients_total = 0
        self.messages_from_clients = 0
        self.messages_to_clients = 0
        self.broadcasts = 0
        self.unknown_client = 0
        self.invalid_target = 0
        self.connections = ConnectionCounters()
        #: the bytes held for all clients, against client_queue_bytes_total
        self.client_queues = QueueBudget(
            config.client_queue_bytes_total, lambda: self.clients.values()
        )
        self.broadcast_recipients = 0
        self.refused = 0
        self._closed_bytes_in = 0
        self._closed_bytes_out = 0
        self._by_listener: Counter[str] = Counter()
        self._total_by_listener: Counter[str] = Counter()
        self._disconnects: Counter[str] = Counter()
        #: the cluster bus, when this pmlb is a node of a cluster (see pmlb.cluster)
        self.cluster: Bus | None = None
        #: reloads the configuration (set by the server when it has one to
        #: reload from; see pmlb.reload): returns the plan it applied
        self.reloader: Callable[[], Awaitable[Plan]] | None = None
        #: reloads applied and refused, and whether the last one was applied
        self.reloads: Counter[str] = Counter()
        self.last_reload_ok = True

    # -- clients --------------------------------------------------------

    def admit(self) -> bool:
        """Whether a new connection may become a client; counts the refused ones."""
        if not self.accepting:
            self.refused += 1
        return self.accepting

    def add_client(self, client: Client) -> None:
        client.seq = self._next_seq
        self._next_seq += 1
        self.clients[client.uuid] = client
        self._by_seq[client.seq] = client
        self.clients_total += 1
        if self._events_taken():
            self._send_event(
                pb.InputStreamRequest(
                    time=rfc3339_now(),
                    client_uuid=client.uuid,
                    event=pb.InputStreamRequest.EVENT_CONNECTED,
                    remote_address=client.remote,
                    listener=client.listener,
                    transport=client.transport,
                )
            )
        self._by_listener[client.listener] += 1
        self._total_by_listener[client.listener] += 1
        if self.cluster is not None:
            self.cluster.client_added(client.uuid)
        self.events.publish(
            "client.connected",
            client=client.uuid,
            listener=client.listener,
            remote=client.remote,
            transport=client.transport,
        )

    def remove_client(self, client: Client) -> None:
        if self.clients.pop(client.uuid, None) is None:
            return
        if self.cluster is not None:
            self.cluster.client_removed(client.uuid)
        if self._events_taken():
            self._send_event(
                pb.InputStreamRequest(
                    time=rfc3339_now(),
                    client_uuid=client.uuid,
                    event=pb.InputStreamRequest.EVENT_DISCONNECTED,
                    disconnect_reason=cast(
                        "pb.InputStreamRequest.DisconnectReason", _close_kind(client).kind.value
                    ),
                    disconnect_detail=client.close_reason or STOPPING,
                )
            )
        self.policy.forget(client.uuid)
        self._event_policy.forget(client.uuid)
        del self._by_seq[client.seq]
        self._by_listener[client.listener] -= 1
        self._closed_bytes_in += client.bytes_in
        self._closed_bytes_out += client.bytes_out
        reason = client.close_reason
        self._disconnects[_close_kind(client).kind.name.lower()] += 1
        self.events.publish(
            "client.disconnected",
            client=client.uuid,
            listener=client.listener,
            reason=reason or STOPPING,
        )
        if self._client_removed:
            self._client_removed.unpark_all()

    def _events_taken(self) -> bool:
        # Whether any upstream takes lifecycle events: if none does,
        # _send_event drops them, and they need not be built.
        return any(u.config.events for u in self.upstreams.values())

    def _send_event(self, event: pb.InputStreamRequest) -> None:
        """Queue a lifecycle event for one upstream that takes events, by the policy."""
        serving = self._serving
        targets = [u for u in serving if u.config.events]
        if not targets:
            if any(u.config.events for u in self.upstreams.values()):
                if serving:
                    self._hold_events([event])
                else:
                    # With the messages waiting for an upstream, in order: a
                    # client's disconnected event comes after what it sent.
                    self._orphan([event])
            return
        policy = self.policy if len(targets) == len(serving) else self._event_policy
        for index, _ in policy.assign([event], targets):
            self._place(targets[index], [event])

    def _hold_events(self, events: Iterable[pb.InputStreamRequest]) -> None:
        held = self._event_orphans
        held.extend(events)
        excess = len(held) - self.config.upstream_queue_size
        if excess > 0:
            for _ in range(excess):
                held.popleft()
            self.events_dropped += excess
            self._unknown_log.warning(
                "lifecycle events dropped: no upstream with events = true serves",
                dropped_total=self.events_dropped,
            )

    def _orphan(self, requests: Iterable[pb.InputStreamRequest], *, front: bool = False) -> None:
        """Keep accepted requests, in order, for the next upstream to serve.

        ``front``: ahead of those kept already (redeliveries). Lifecycle
        events among them are bounded as :meth:`_hold_events` does.
        """
        requests = list(requests)
        orphans = self._orphans
        if front:
            orphans.extendleft(reversed(requests))
        else:
            orphans.extend(requests)
        self._orphans_events += sum(1 for r in requests if r.event)
        excess = self._orphans_events - self.config.upstream_queue_size
        if excess <= 0:
            return
        # Rare (more held events than an outbox holds): drop the oldest events.
        kept: deque[pb.InputStreamRequest] = deque()
        for request in orphans:
            if request.event and excess > 0:
                excess -= 1
                continue
            kept.append(request)
        dropped = len(orphans) - len(kept)
        self._orphans = kept
        self._orphans_events -= dropped
        self.events_dropped += dropped
        self._unknown_log.warning(
            "lifecycle events dropped: no upstream with events = true serves",
            dropped_total=self.events_dropped,
        )

    def client_page(
        self,
        *,
        after: int = -1,
        limit: int = 100,
        state: str | None = None,
        listener: str | None = None,
        search: str | None = None,
    ) -> tuple[list[Client], int | None]:
        """Clients connected after cursor ``after``, oldest first, filtered.

        ``state`` is ``active`` or ``inactive`` (``None``: both). Returns the
        page and the cursor of the next page (``None`` on the last page). The
        cost is one seek plus the clients looked at, whatever the total.
        ``search`` keeps the clients whose UUID, remote address or listener
        contains it (case-insensitive).
        """
        if state not in (None, "active", "inactive"):
            raise ValueError(f"state must be active or inactive, got {state!r}")
        now, window = time.monotonic(), self.config.activity_window
        want_active = state == "active"
        needle = (search or "").lower()
        page: list[Client] = []
        for seq in self._by_seq.irange(minimum=after, inclusive=(False, True)):
            client = self._by_seq[seq]
            if listener is not None and client.listener != listener:
                continue
            if needle and not (
                needle in client.uuid
                or needle in client.remote.lower()
                or needle in client.listener.lower()
            ):
                continue
            if state is not None and client.is_active(now, window) is not want_active:
                continue
            if len(page) == limit:
                return page, page[-1].seq
            page.append(client)
        return page, None

    def kick(self, uuid: str, reason: str = "kicked by an operator") -> Client:
        """Disconnect one client; ``KeyError`` if there is no such client."""
        client = self.clients[uuid]
        client.close(reason, Reason.KICKED)
        return client

    def send_to(self, uuid: str, payload: bytes) -> bool:
        """Queue ``payload`` for one client, as an upstream would; ``KeyError`` if unknown."""
        sent = self.clients[uuid].send(payload)
        self.messages_to_clients += sent
        self.flush_clients()
        return sent

    def flush_clients(self) -> None:
        """Write out what was sent to directly written clients (see :class:`Client`)."""
        unflushed = self.unflushed
        if unflushed:
            for client in unflushed:
                client.flush()
            unflushed.clear()

    async def dispatch(self, requests: list[pb.InputStreamRequest]) -> None:
        """Hand a batch of client messages to serving upstreams, by the policy.

        Waits while there is no serving upstream or the chosen outboxes are
        full: the caller stops reading its socket meanwhile (backpressure).
        """
        self.messages_from_clients += len(requests)
        pending = list(requests)
        started = time.perf_counter()
        self._held[id(pending)] = pending
        try:
            await self._dispatch(pending)
        finally:
            del self._held[id(pending)]
            self.dispatch_latency.observe(time.perf_counter() - started, len(requests))

    async def dispatch_from(
        self,
        client: Client,
        requests: list[pb.InputStreamRequest],
        hangup: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """:meth:`dispatch` a batch read from ``client``; ``False``: read no more.

        A draining client's last read is handed on at once, over the outboxes'
        bound (it was read already: dropping it would lose it). A dispatch
        that waits is interrupted by a drain, and by ``hangup`` returning
        (the client hung up while it was not read): its batch is then handed
        on the same way, to be written once an upstream serves, before the
        client's disconnected event. After a hang-up the client's input has
        ended (:attr:`Client.input_ended`); the reader closes it in time.
        """
        if client.draining:
            self.messages_from_clients += len(requests)
            self._redispatch(requests)
            return False
        count = len(requests)  # _dispatch takes from the list it is given
        self.messages_from_clients += count
        cluster = self.cluster
        started = time.perf_counter()
        if cluster is None or not cluster.unregistered:
            # The common case, an outbox with room: placed without waiting,
            # so without the cancel scope a drain would need (no await below
            # suspends: Outbox.put only parks when it is full).
            pending = requests
            if await self._dispatch(pending, wait=False):
                self.dispatch_latency.observe(time.perf_counter() - started, count)
                return not client.input_ended
            pending = list(pending)
        else:
            pending = list(requests)
        self._held[id(pending)] = pending
        client.dispatching = True
        try:
            with trio.CancelScope() as client.dispatch_scope:
                if cluster is not None and cluster.unregistered:
                    # A reply through another node must find this new client.
                    await cluster.wait_registered(client.uuid)
                if hangup is None:
                    await self._dispatch(pending)
                elif not await self._dispatch(pending, wait=False):
                    # It has to wait: watch for the client hanging up meanwhile
                    # (a nursery only on this slow path).
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch_hangup, client, hangup, nursery.cancel_scope)
                        await self._dispatch(pending)
                        nursery.cancel_scope.cancel()
        finally:
            client.dispatch_scope = None
            del self._held[id(pending)]
            self.dispatch_latency.observe(time.perf_counter() - started, count)
        client.dispatching = False
        if pending:  # interrupted: accepted, so it goes on as failover does
            self._redispatch(pending)
        if client.draining:
            client.drain()  # wakes the writer, which waited for this dispatch
            return False
        return not client.input_ended

    @staticmethod
    async def _watch_hangup(
        client: Client, hangup: Callable[[], Awaitable[None]], scope: trio.CancelScope
    ) -> None:
        await hangup()
        client.end_input()
        scope.cancel()

    def _balanced(self) -> list[Upstream]:
        """The serving upstreams that get new messages: the stalled ones only if all are."""
        serving = self._serving
        if self._stalled and len(serving) > 1:
            flowing = [u for u in serving if not u.stalled]
            if flowing:
                return flowing
        return serving

    async def _dispatch(self, pending: list[pb.InputStreamRequest], *, wait: bool = True) -> bool:
        """Place ``pending`` in serving upstreams' outboxes, removing what is placed.

        Returns ``True`` once all is placed. With ``wait=False``, returns
        ``False`` instead of waiting (what is left stays in ``pending``, as
        it does when a wait is cancelled).
        """
        while pending:
            serving = self._balanced()
            if not serving:
                if not wait:
                    return False
                await self._serving_changed.park()
                continue
            if len(serving) == 1:
                outbox = serving[0].outbox
                if not wait and outbox.accepting and len(outbox) >= outbox.capacity:
                    return False
                if await outbox.put(pending):
                    serving[0].messages_dispatched += len(pending)
                    pending.clear()
                    return True
                continue
            parts = [
                (_part(pending, part), serving[index])
                for index, part in self.policy.assign(pending, serving)
            ]
            refused: list[pb.InputStreamRequest] = []
            placed = 0
            try:
                for batch, upstream in parts:
                    outbox = upstream.outbox
                    if not wait and outbox.accepting and len(outbox) >= outbox.capacity:
                        break
                    if await outbox.put(batch):
                        upstream.messages_dispatched += len(batch)
                    else:
                        refused += batch
                    placed += 1
            finally:
                # What is not placed yet (also when a wait was cancelled).
                pending[:] = refused + [r for batch, _ in parts[placed:] for r in batch]
            if placed < len(parts):
                return False
        return True

    # -- upstreams ------------------------------------------------------

    def add_upstream(self, config: UpstreamConfig) -> Upstream:
        """Register an upstream (not yet supervised); ``ValueError`` if its address is taken."""
        if config.address in self.upstreams:
            raise ValueError(f"upstream {config.address} already exists")
        unacked = Unacked(config.max_unacked) if config.acks else None
        upstream = Upstream(
            config=config, outbox=Outbox(self.config.upstream_queue_size, unacked=unacked)
        )
        self.upstreams[config.address] = upstream
        self.events.publish("upstream.added", upstream=config.address)
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
        self.events.publish("discovery.added", upstream=config.address)
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
        self.events.publish("discovery.removed", upstream=address)

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
            self._serving = [u for u in self._serving if u is not upstream]
            upstream.outbox.close()
            self.events.publish("upstream.draining", upstream=address)
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
        self.events.publish("upstream.state", **fields)
        if state is UpstreamState.SERVING:
            if upstream.draining:
                log.info("upstream serving again while draining", extra=fields)
                return
            if not upstream.in_rotation:
                fields["admin_state"] = str(upstream.admin_state)
                log.info("upstream serving, out of rotation", extra=fields)
                return
            self._join_rotation(upstream)
            log.info("upstream serving", extra=fields)
            return
        if previous is UpstreamState.SERVING:
            self._serving = [u for u in self._serving if u is not upstream]
            upstream.outbox.close()
            moved = upstream.outbox.take_back()
            unacked = upstream.outbox.take_unacked()
            if unacked:
                fields["redelivered"] = self._redeliver(upstream, unacked)
            self._redispatch(moved)
            fields["requeued"] = len(moved)
        if state is UpstreamState.REMOVED:
            self.upstreams.pop(upstream.address, None)
            log.info("upstream removed", extra=fields)
        elif previous is UpstreamState.SERVING:
            log.warning("upstream stopped serving", extra=fields)
        else:
            log.debug("upstream state", extra=fields)

    def _join_rotation(self, upstream: Upstream) -> None:
        """Give a serving upstream new messages, those kept for the next one first."""
        if upstream.config.events:
            self._place(upstream, list(self._event_orphans))
            self._event_orphans.clear()
            self._place(upstream, list(self._orphans))
        else:
            # An upstream on the original contract never sees an event.
            self._place(upstream, [r for r in self._orphans if not r.event])
            self._hold_events(r for r in self._orphans if r.event)
        self._orphans.clear()
        self._orphans_events = 0
        upstream.outbox.open()
        self._serving = [*self._serving, upstream]
        self._serving_changed.unpark_all()

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
        if upstream in self._serving:
            self._serving = [u for u in self._serving if u is not upstream]
            upstream.outbox.refuse()
        if state is AdminState.MAINT:
            queued = upstream.outbox.take_back()
            moved = len(queued)
            self._redispatch(queued)
        if upstream.in_rotation and upstream.state is UpstreamState.SERVING:
            self._join_rotation(upstream)
        fields: dict[str, object] = {
            "upstream": upstream.address,
            "admin_state": str(state),
            "previous": str(previous),
        }
        if moved:
            fields["moved"] = moved
        log.info("upstream admin state set", extra=fields)
        self.events.publish("upstream.admin_state", **fields)
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
        self._stalled += 1 if stalled else -1
        fields: dict[str, object] = {"upstream": upstream.address, "stalled": stalled}
        if stalled:
            upstream.stalls += 1
            fields["waited"] = round(waited or 0.0, 3)  # seconds, a number in JSON logs
            fields["queued"] = len(upstream.outbox)
            log.warning("upstream stalled: its writes make no progress", extra=fields)
            upstream.outbox.turn_away()
        else:
            log.info("upstream writes progress again", extra=fields)
        self.events.publish("upstream.stalled", upstream=upstream.address, stalled=stalled)

    def others_flowing(self, upstream: Upstream) -> bool:
        """Whether another serving upstream is not stalled (could take this one's messages)."""
        return any(u is not upstream and not u.stalled for u in self._serving)

    async def wait_upstream_state(self, address: str, state: UpstreamState) -> None:
        """Return once the upstream at ``address`` is in ``state`` (``removed``: gone)."""
        while True:
            upstream = self.upstreams.get(address)
            if upstream is None and state is UpstreamState.REMOVED:
                return
            if upstream is not None and upstream.state is state:
                return
            await self._state_changed.park()

    def _redeliver(self, upstream: Upstream, requests: list[pb.InputStreamRequest]) -> int:
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
        self._redispatch(again, front=True)
        return len(again)

    @staticmethod
    def _place(
        upstream: Upstream, requests: list[pb.InputStreamRequest], *, front: bool = False
    ) -> None:
        """Queue already accepted requests for ``upstream``, whatever its outbox's fill."""
        if not upstream.config.acks:
            # Only requests failed over from an upstream with acks carry a
            # message_id; an upstream on the original contract never sees one.
            for request in requests:
                if request.message_id:
                    strip(request)
        if front:
            upstream.outbox.put_front(requests)
        else:
            upstream.outbox.put_nowait(requests)

    def _redispatch(self, requests: list[pb.InputStreamRequest], *, front: bool = False) -> None:
        # Failover: these were accepted already, so they bypass the outboxes'
        # bound (which they counted against before) rather than wait.
        # Redeliveries (front) go ahead of newer messages.
        if not requests:
            return
        serving = self._balanced()
        if not serving:
            self._orphan(requests, front=front)
            return
        if not all(u.config.events for u in serving):
            events = [r for r in requests if r.event]
            if events:
                requests = [r for r in requests if not r.event]
                for event in events:
                    self._send_event(event)
                if not requests:
                    return
        for index, part in self.policy.assign(requests, serving):
            self._place(serving[index], _part(requests, part), front=front)

    # -- routing back ---------------------------------------------------

    def deliver(self, replies: list[pb.OutputStreamRequest], *, cluster: bool = False) -> None:
        """Route messages from an upstream to their clients. Never raises.

        Each client is written once for the whole batch. With ``cluster``
        (the upstream's ``reply_scope = "cluster"``) and a cluster bus, what
        is for clients of other nodes goes to them, and a broadcast to every
        node; it never waits for that.
        """
        try:
            self._deliver(replies, self.cluster if cluster else None)
        finally:
            self.flush_clients()

    def deliver_from_node(self, replies: list[pb.OutputStreamRequest]) -> None:
        """Deliver replies another node sent here, to this node's clients only.

        A multicast comes whole to each node holding one of its clients:
        the UUIDs held elsewhere are not unknown, and are skipped.
        """
        try:
            self._deliver(replies, None, from_node=True)
        finally:
            self.flush_clients()

    def count_unknown(self, count: int, why: str) -> None:
        """Count ``count`` replies for UUIDs nobody holds (the cluster bus found them so)."""
        self.unknown_client += count
        self._unknown_log.warning(
            "message for an unknown client dropped", reason=why, unknown_total=self.unknown_client
        )

    def clients_lost_elsewhere(self, uuids: list[str], node: str) -> None:
        """Tell upstreams with events that another node's clients are gone with it."""
        detail = f"their pmlb node {node} stopped"
        for uuid in uuids:
            self._send_event(
                pb.InputStreamRequest(
                    time=rfc3339_now(),
                    client_uuid=uuid,
                    event=pb.InputStreamRequest.EVENT_DISCONNECTED,
                    disconnect_reason=pb.InputStreamRequest.DISCONNECT_ERROR,
                    disconnect_detail=detail,
                )
            )

    def _deliver(
        self,
        replies: list[pb.OutputStreamRequest],
        forward: Bus | None,
        *,
        from_node: bool = False,
    ) -> None:
        for reply in replies:
            target = reply.WhichOneof("target")
            if reply.action:
                self._act(reply, target, forward, from_node)
            elif target == "client_uuid":
                client = self.clients.get(reply.client_uuid)
                if client is None:
                    if forward is not None:
                        forward.forward(reply, [reply.client_uuid])
                        continue
                    self.unknown_client += 1
                    self._unknown_log.warning(
                        "message for an unknown client dropped",
                        client=reply.client_uuid,
                        unknown_total=self.unknown_client,
                    )
                elif client.send(reply.payload):
                    self.messages_to_clients += 1
            elif target == "broadcast":
                kind = _BROADCAST_NAMES.get(reply.broadcast)
                if kind is None:
                    self._invalid(f"unknown broadcast value {reply.broadcast}")
                else:
                    self.broadcast(kind, reply.payload)
                    if forward is not None:
                        forward.broadcast(reply)
            elif target == "multicast":
                payload = reply.payload
                framed: dict[object, bytes] = {}
                for client in self._targets(
                    reply.multicast.client_uuids, reply, forward, from_node
                ):
                    if client.send_shared(payload, framed):
                        self.messages_to_clients += 1
            elif not reply.acks:
                self._invalid(
                    "message without a target (neither client_uuid, broadcast nor multicast)"
                )
            # else: an acknowledgement alone, read (with acks = true) by the
            # upstream's supervisor before this

    def _targets(
        self,
        uuids: Iterable[str],
        reply: pb.OutputStreamRequest | None = None,
        forward: Bus | None = None,
        from_node: bool = False,
    ) -> list[Client]:
        """The clients with these UUIDs, each once; unknown ones are counted and logged.

        With ``forward``, ``reply`` is sent on to the nodes holding the
        UUIDs not held here; ``from_node``: those are skipped.
        """
        found = []
        missing: list[str] = []
        for uuid in dict.fromkeys(uuids):
            client = self.clients.get(uuid)
            if client is None:
                if forward is not None:
                    missing.append(uuid)
                    continue
                if from_node:
                    continue
                self.unknown_client += 1
                self._unknown_log.warning(
                    "message for an unknown client dropped",
                    client=uuid,
                    unknown_total=self.unknown_client,
                )
            else:
                found.append(client)
        if missing and forward is not None and reply is not None:
            forward.forward(reply, missing)
        return found

    def _act(
        self,
        reply: pb.OutputStreamRequest,
        target: str | None,
        forward: Bus | None = None,
        from_node: bool = False,
    ) -> None:
        if reply.action != pb.OutputStreamRequest.ACTION_DISCONNECT:
            self._invalid(f"unknown action value {reply.action}")
        elif target == "client_uuid":
            for client in self._targets([reply.client_uuid], reply, forward, from_node):
                client.close(UPSTREAM_ACTION, Reason.UPSTREAM_ACTION)
        elif target == "multicast":
            for client in self._targets(reply.multicast.client_uuids, reply, forward, from_node):
                client.close(UPSTREAM_ACTION, Reason.UPSTREAM_ACTION)
        else:
            self._invalid("disconnect needs a client_uuid or multicast target")

    def _invalid(self, problem: str) -> None:
        self.invalid_target += 1
        self._unknown_log.warning("message from an upstream dropped", problem=problem)

    def broadcast(self, kind: str, payload: bytes) -> int:
        """Send ``payload`` to ``all``, ``active`` or ``inactive`` clients; return how many."""
        recipients = self.select_clients(kind)
        self.broadcasts += 1
        framed: dict[object, bytes] = {}
        sent = 0
        for client in recipients:
            if client.send_shared(payload, framed):
                sent += 1
        self.messages_to_clients += sent
        self.broadcast_recipients += sent
        self.flush_clients()
        return sent

    # -- runtime --------------------------------------------------------

    def set_policy(self, name: str) -> None:
        """Balance with the policy called ``name`` from now on; ``ValueError`` if unknown.

        A new policy starts with no memory: under ``sticky``, clients are
        placed afresh. Setting the policy in force changes nothing.
        """
        if name == self.policy.name:
            return
        self.policy = make_policy(name)
        log.info("balancing policy set", extra={"policy": name})
        self.events.publish("runtime.policy", policy=name)

    def count_reload(self, applied: bool) -> None:
        """Count a configuration reload, applied or refused (for /metrics)."""
        self.reloads["applied" if applied else "refused"] += 1
        self.last_reload_ok = applied

    def set_accepting(self, accepting: bool) -> None:
        """Let listeners take new clients, or close new connections at once."""
        if accepting != self.accepting:
            self.accepting = accepting
            self.events.publish("runtime.accepting", accepting=accepting)

    def request_stop(self) -> None:
        """Ask the server to drain and stop (what SIGTERM does).

        From now on new connections are refused (the server also closes its
        listeners) and ``/readyz`` answers not ready.
        """
        if not self.stop_requested.is_set():
            self.accepting = False
            self.events.publish("runtime.stop")
            self.stop_requested.set()

    async def drain_clients(self, period: float) -> None:
        """Close every client, spread evenly over ``period`` seconds; return once all are gone.

        The clients connected now are closed oldest first, the first at once
        and the last ``period`` seconds later, so that they do not all
        reconnect elsewhere at the same moment. Each stops being read, gets
        what is queued for it written, then is closed with reason "drain".
        Clients that arrive meanwhile (accepted just before the listeners
        closed) are closed at the end.
        """
        clients = list(self.clients.values())
        log.info("draining clients", extra={"clients": len(clients), "drain_period": period})
        start = trio.current_time()
        step = period / (len(clients) - 1) if len(clients) > 1 else 0.0
        for index, client in enumerate(clients):
            if step:
                await trio.sleep_until(start + index * step)
            client.drain()
        while self.clients:
            for client in list(self.clients.values()):
                client.drain()
            await self._client_removed.park()

    async def flush_upstreams(self, upstream_wait: float = math.inf) -> None:
        """Return once every accepted message is written to a serving upstream's stream,
        and, on upstreams with acks, acknowledged.

        Messages kept for the next upstream to serve wait for one at most
        ``upstream_wait`` seconds from when none is found serving; then this
        returns with them still kept (see :meth:`awaiting_upstream`). The
        caller bounds the whole with a deadline.
        """
        deadline: float | None = None
        while True:
            busy = [u for u in self._serving if len(u.outbox) or u.outbox.in_flight]
            # Drained by an operator: out of rotation, still writing its queue.
            out = [
                u
                for u in self.upstreams.values()
                if u.state is UpstreamState.SERVING
                and not u.in_rotation
                and (len(u.outbox) or u.outbox.in_flight)
            ]
            if busy:
                await busy[0].outbox.wait_written()
            elif out:
                await out[0].outbox.wait_drained()
            elif self._orphans:
                if deadline is None:
                    deadline = trio.current_time() + upstream_wait
                with trio.move_on_at(deadline) as scope:
                    await self._serving_changed.park()
                if scope.cancelled_caught:
                    return
            elif waiting := [
                u for u in self.upstreams.values() if u.state is UpstreamState.SERVING and u.unacked
            ]:
                # An upstream that fails meanwhile has its requests taken
                # for redelivery: the wait ends and the loop starts over.
                await waiting[0].outbox.wait_acked()
            else:
                return

    def select_clients(self, kind: str) -> Iterable[Client]:
        if kind not in ("all", "active", "inactive"):
            raise ValueError(f"broadcast kind must be all, active or inactive, got {kind!r}")
        clients = list(self.clients.values())
        if kind == "all":
            return clients
        now, window = time.monotonic(), self.config.activity_window
        want_active = kind == "active"
        return [c for c in clients if c.is_active(now, window) is want_active]

    # -- snapshots ------------------------------------------------------

    def awaiting_upstream(self) -> int:
        """Accepted client messages not yet written to an upstream's stream.

        Those readers are handing on, those kept for the next upstream to
        serve, and those queued in outboxes.
        """
        return (
            sum(len(batch) for batch in self._held.values())
            + len(self._orphans)
            - self._orphans_events
            + sum(len(u.outbox) for u in self.upstreams.values())
        )

    def statistics(self) -> Statistics:
        return Statistics(
            clients=len(self.clients),
            clients_total=self.clients_total,
            upstreams=len(self.upstreams),
            upstreams_serving=len(self._serving),
            messages_from_clients=self.messages_from_clients,
            messages_to_clients=self.messages_to_clients,
            broadcasts=self.broadcasts,
            unknown_client=self.unknown_client,
            invalid_target=self.invalid_target,
            awaiting_upstream=self.awaiting_upstream(),
            connections=attrs.evolve(self.connections),
            broadcast_recipients=self.broadcast_recipients,
            refused=self.refused,
            bytes_from_clients=self._closed_bytes_in
            + sum(c.bytes_in for c in self.clients.values()),
            bytes_to_clients=self._closed_bytes_out
            + sum(c.bytes_out for c in self.clients.values()),
            clients_by_listener={k: v for k, v in self._by_listener.items() if v},
            clients_total_by_listener=dict(self._total_by_listener),
            disconnects=dict(self._disconnects),
            queued_to_clients=sum(c.queued for c in self.clients.values()),
            queued_bytes_to_clients=self.client_queues.held,
            accepting=self.accepting,
            policy=self.policy.name,
            unacked=sum(u.unacked for u in self.upstreams.values()),
            acks_received=sum(
                u.outbox.unacked.acks_received
                for u in self.upstreams.values()
                if u.outbox.unacked is not None
            ),
            acks_unknown=sum(
                u.outbox.unacked.acks_unknown
                for u in self.upstreams.values()
                if u.outbox.unacked is not None
            ),
            redelivered=self.redelivered,
            undeliverable=self.undeliverable,
        )


def _close_kind(client: Client) -> Reason:
    """Why ``client`` went: a client cancelled from outside (pmlb stopping) is a drain."""
    return client.close_kind or Reason.DRAIN
