"""Client -> upstream: the serving set, the balancing policy, backpressure, failover.

Owns the serving upstreams (in the order they started serving: the policy's
indexes point into that list) and how many upstreams are stalled; the policy
in force; the batches readers are handing on (accepted, in no outbox yet);
the accepted messages and lifecycle events kept for the next upstream to
serve; and the counts of what was dispatched (messages from clients, dispatch
latency, lifecycle events dropped). The upstream table changes the serving
set through :meth:`Dispatcher.join` and :meth:`Dispatcher.leave`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

import trio

from pmlb._log import RateLimited
from pmlb.balancer import Policy, make_policy
from pmlb.codecs.request import Request
from pmlb.config import Config
from pmlb.downstream.client import Client
from pmlb.events import EventBus
from pmlb.histogram import LatencyHistogram
from pmlb.hub.nodes import Nodes
from pmlb.upstream.acks import strip
from pmlb.upstream.state import Upstream

log = logging.getLogger("pmlb.registry")


def _run_nowait(coroutine: Coroutine[Any, Any, bool]) -> bool:
    """The result of ``coroutine``, which must finish without suspending."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return bool(done.value)
    coroutine.close()
    raise RuntimeError("a dispatch that must not wait suspended")


def _part(requests: list[Request], part: slice | list[int]) -> list[Request]:
    if isinstance(part, slice):
        return requests[part]
    return [requests[i] for i in part]


class Dispatcher:
    """Hands client messages and lifecycle events to serving upstreams."""

    def __init__(
        self,
        config: Config,
        policy: Policy | None,
        upstreams: Mapping[str, Upstream],
        events: EventBus,
        dropped_log: RateLimited,
    ) -> None:
        self.config = config
        self.policy: Policy = policy or make_policy(config.balancing)
        # The upstream table's upstreams (it adds and removes them; read here).
        self._upstreams = upstreams
        self._events = events
        self._dropped_log = dropped_log
        #: the cluster bus, when this pmlb is a node of a cluster (see pmlb.cluster)
        self.cluster: Nodes | None = None
        #: how long client batches wait in dispatch for an upstream to take them
        self.dispatch_latency = LatencyHistogram()
        self.messages_from_clients = 0
        # The serving upstreams, in the order they started serving: the
        # policy's indexes point into this list.
        self.serving: list[Upstream] = []
        # how many upstreams are stalled (see UpstreamTable.set_upstream_stalled)
        self._stalled = 0
        self._serving_changed = trio.lowlevel.ParkingLot()
        # Accepted messages whose upstream failed while no other one served:
        # they go first to the next upstream that serves.
        self._orphans: deque[Request] = deque()
        self._orphans_events = 0  # how many of them are lifecycle events
        # Batches readers are handing on (waiting for an upstream, or for
        # room in its outbox), by id: accepted, not yet in any outbox.
        self._held: dict[int, list[Request]] = {}
        # Lifecycle events waiting for an upstream with events = true to
        # serve; bounded, the oldest dropped (and counted) first.
        self._event_orphans: deque[Request] = deque()
        # Places events when only some serving upstreams take them (when all
        # do, events follow self.policy, so they go where the messages go).
        self._event_policy: Policy = make_policy(config.balancing)
        self.events_dropped = 0

    # -- the serving set -------------------------------------------------

    def join(self, upstream: Upstream) -> None:
        """Give a serving upstream new messages, those kept for the next one first."""
        if upstream.config.events:
            self.place(upstream, list(self._event_orphans))
            self._event_orphans.clear()
            self.place(upstream, list(self._orphans))
        else:
            # An upstream on the original contract never sees an event.
            self.place(upstream, [r for r in self._orphans if not r.event])
            self.hold_events(r for r in self._orphans if r.event)
        self._orphans.clear()
        self._orphans_events = 0
        upstream.outbox.open()
        self.serving = [*self.serving, upstream]
        self._serving_changed.unpark_all()

    def leave(self, upstream: Upstream) -> bool:
        """Take ``upstream`` out of the serving set; whether it was in it."""
        serving = self.serving
        if upstream not in serving:
            return False
        self.serving = [u for u in serving if u is not upstream]
        return True

    def count_stalled(self, stalled: bool) -> None:
        """One more upstream is stalled (``stalled``), or one fewer."""
        self._stalled += 1 if stalled else -1

    def others_flowing(self, upstream: Upstream) -> bool:
        """Whether another serving upstream is not stalled (could take this one's messages)."""
        return any(u is not upstream and not u.stalled for u in self.serving)

    async def wait_serving_changed(self) -> None:
        """Return once an upstream joins the serving set."""
        await self._serving_changed.park()

    @property
    def orphans(self) -> int:
        """How many accepted messages and events are kept for the next upstream to serve."""
        return len(self._orphans)

    def set_policy(self, name: str) -> None:
        """Balance with the policy called ``name`` from now on; ``ValueError`` if unknown.

        A new policy starts with no memory: under ``sticky``, clients are
        placed afresh. Setting the policy in force changes nothing.
        """
        if name == self.policy.name:
            return
        self.policy = make_policy(name)
        log.info("balancing policy set", extra={"policy": name})
        self._events.publish("runtime.policy", policy=name)

    def forget(self, uuid: str) -> None:
        """A client is gone: the policies drop what they remember of it."""
        self.policy.forget(uuid)
        self._event_policy.forget(uuid)

    # -- dispatching -----------------------------------------------------

    async def dispatch(self, requests: list[Request]) -> None:
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
        requests: list[Request],
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
        started = time.perf_counter()
        count = len(requests)  # _dispatch takes from the list it is given
        placed = self.dispatch_from_nowait(client, requests)
        if placed is not None:
            return placed
        return await self.dispatch_held(client, requests, count, started, hangup)

    def dispatch_from_nowait(self, client: Client, requests: list[Request]) -> bool | None:
        """:meth:`dispatch_from` as far as it goes without waiting.

        Returns what :meth:`dispatch_from` would, or ``None`` when the batch
        has to wait: what is left of it stays in ``requests``, held (a drain
        waits for the client's dispatch), and the caller must hand it to
        :meth:`dispatch_held` next, in the client's own task (the shared
        plain-TCP reader, :mod:`pmlb.downstream.reader`, reads many clients
        in one task and cannot wait for one).
        """
        if client.draining:
            self.messages_from_clients += len(requests)
            self.redispatch(requests)
            return False
        count = len(requests)
        self.messages_from_clients += count
        cluster = self.cluster
        if cluster is None or not cluster.unregistered:
            # The common case, an outbox with room: placed without waiting,
            # so without the cancel scope a drain would need (with
            # wait=False, _dispatch never suspends: Outbox.put only parks
            # when it is full).
            started = time.perf_counter()
            if _run_nowait(self._dispatch(requests, wait=False)):
                self.dispatch_latency.observe(time.perf_counter() - started, count)
                return not client.input_ended
        self._held[id(requests)] = requests
        client.set_dispatching(True)
        return None

    async def dispatch_held(
        self,
        client: Client,
        pending: list[Request],
        count: int,
        started: float,
        hangup: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """The rest of :meth:`dispatch_from` for a batch :meth:`dispatch_from_nowait` held.

        ``count`` messages were read at ``started`` (``time.perf_counter()``).
        Without ``hangup``, noticing the client hang up meanwhile is the
        caller's (the shared reader's: :meth:`Client.hang_up` ends the wait).
        """
        cluster = self.cluster
        try:
            with trio.CancelScope() as scope:
                # Cancelled at once if a drain came before this task ran.
                client.set_dispatch_scope(scope)
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
            client.set_dispatch_scope(None)
            del self._held[id(pending)]
            self.dispatch_latency.observe(time.perf_counter() - started, count)
        client.set_dispatching(False)
        if pending:  # interrupted: accepted, so it goes on as failover does
            self.redispatch(pending)
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
        serving = self.serving
        if self._stalled and len(serving) > 1:
            flowing = [u for u in serving if not u.stalled]
            if flowing:
                return flowing
        return serving

    async def _dispatch(self, pending: list[Request], *, wait: bool = True) -> bool:
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
                if await outbox.put(pending):  # counted there (Upstream.messages_dispatched)
                    pending.clear()
                    return True
                continue
            parts = [
                (_part(pending, part), serving[index])
                for index, part in self.policy.assign(pending, serving)
            ]
            refused: list[Request] = []
            placed = 0
            try:
                for batch, upstream in parts:
                    outbox = upstream.outbox
                    if not wait and outbox.accepting and len(outbox) >= outbox.capacity:
                        break
                    if not await outbox.put(batch):
                        refused += batch
                    placed += 1
            finally:
                # What is not placed yet (also when a wait was cancelled).
                pending[:] = refused + [r for batch, _ in parts[placed:] for r in batch]
            if placed < len(parts):
                return False
        return True

    # -- lifecycle events and failover -----------------------------------

    def takes_events(self) -> bool:
        """Whether any upstream takes lifecycle events (else :meth:`send_event` drops them)."""
        return any(u.config.events for u in self._upstreams.values())

    def send_event(self, event: Request) -> None:
        """Queue a lifecycle event for one upstream that takes events, by the policy."""
        serving = self.serving
        targets = [u for u in serving if u.config.events]
        if not targets:
            if any(u.config.events for u in self._upstreams.values()):
                if serving:
                    self.hold_events([event])
                else:
                    # With the messages waiting for an upstream, in order: a
                    # client's disconnected event comes after what it sent.
                    self._orphan([event])
            return
        policy = self.policy if len(targets) == len(serving) else self._event_policy
        for index, _ in policy.assign([event], targets):
            self.place(targets[index], [event])

    def hold_events(self, events: Iterable[Request]) -> None:
        """Keep lifecycle events for the next upstream with events = true to serve (bounded)."""
        held = self._event_orphans
        held.extend(events)
        excess = len(held) - self.config.upstream_queue_size
        if excess > 0:
            for _ in range(excess):
                held.popleft()
            self.events_dropped += excess
            self._dropped_log.warning(
                "lifecycle events dropped: no upstream with events = true serves",
                dropped_total=self.events_dropped,
            )

    def _orphan(self, requests: Iterable[Request], *, front: bool = False) -> None:
        """Keep accepted requests, in order, for the next upstream to serve.

        ``front``: ahead of those kept already (redeliveries). Lifecycle
        events among them are bounded as :meth:`hold_events` does.
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
        kept: deque[Request] = deque()
        for request in orphans:
            if request.event and excess > 0:
                excess -= 1
                continue
            kept.append(request)
        dropped = len(orphans) - len(kept)
        self._orphans = kept
        self._orphans_events -= dropped
        self.events_dropped += dropped
        self._dropped_log.warning(
            "lifecycle events dropped: no upstream with events = true serves",
            dropped_total=self.events_dropped,
        )

    @staticmethod
    def place(upstream: Upstream, requests: list[Request], *, front: bool = False) -> None:
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

    def redispatch(self, requests: list[Request], *, front: bool = False) -> None:
        """Hand on again requests accepted already (failover), at once.

        They bypass the outboxes' bound (which they counted against before)
        rather than wait. Redeliveries (``front``) go ahead of newer messages.
        """
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
                    self.send_event(event)
                if not requests:
                    return
        for index, part in self.policy.assign(requests, serving):
            self.place(serving[index], _part(requests, part), front=front)

    # -- snapshots -------------------------------------------------------

    def awaiting_upstream(self) -> int:
        """Accepted client messages not yet written to an upstream's stream.

        Those readers are handing on, those kept for the next upstream to
        serve, and those queued in outboxes.
        """
        return (
            sum(len(batch) for batch in self._held.values())
            + len(self._orphans)
            - self._orphans_events
            + sum(len(u.outbox) for u in self._upstreams.values())
        )
