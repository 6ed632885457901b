"""The shared state of a running pmlb, and the only way to change it.

The downstream side registers clients and dispatches their messages; the
upstream supervisors report state changes and deliver replies; the admin API
(later) reads snapshots and acts through the same methods.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import cast

import attrs
import trio

from pmlb._log import RateLimited
from pmlb._proto import upstream_pb2 as pb
from pmlb._time import rfc3339_now
from pmlb.balancer import Policy, make_policy
from pmlb.config import Config, UpstreamConfig
from pmlb.downstream.client import Client
from pmlb.downstream.limits import ConnectionCounters
from pmlb.downstream.reasons import STOPPING, UPSTREAM_ACTION, classify
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.supervisor import Upstream, UpstreamState

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


class Registry:
    """Clients, upstreams, and the message flow between them."""

    def __init__(self, config: Config, policy: Policy | None = None) -> None:
        self.config = config
        self.policy: Policy = policy or make_policy(config.balancing)
        self.clients: dict[str, Client] = {}
        self.upstreams: dict[str, Upstream] = {}
        # The serving upstreams, in the order they started serving: the
        # policy's indexes point into this list.
        self._serving: list[Upstream] = []
        self._serving_changed = trio.lowlevel.ParkingLot()
        self._state_changed = trio.lowlevel.ParkingLot()
        # Accepted messages whose upstream failed while no other one served:
        # they go first to the next upstream that serves.
        self._orphans: deque[pb.InputStreamRequest] = deque()
        # Lifecycle events waiting for an upstream with events = true to
        # serve; bounded, the oldest dropped (and counted) first.
        self._event_orphans: deque[pb.InputStreamRequest] = deque()
        # Places events when only some serving upstreams take them (when all
        # do, events follow self.policy, so they go where the messages go).
        self._event_policy: Policy = make_policy(config.balancing)
        self.events_dropped = 0
        self._unknown_log = RateLimited(log)
        self.clients_total = 0
        self.messages_from_clients = 0
        self.messages_to_clients = 0
        self.broadcasts = 0
        self.unknown_client = 0
        self.invalid_target = 0
        self.connections = ConnectionCounters()

    # -- clients --------------------------------------------------------

    def add_client(self, client: Client) -> None:
        self.clients[client.uuid] = client
        self.clients_total += 1
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

    def remove_client(self, client: Client) -> None:
        if self.clients.pop(client.uuid, None) is None:
            return
        self._send_event(
            pb.InputStreamRequest(
                time=rfc3339_now(),
                client_uuid=client.uuid,
                event=pb.InputStreamRequest.EVENT_DISCONNECTED,
                disconnect_reason=cast(
                    "pb.InputStreamRequest.DisconnectReason", classify(client.close_reason).value
                ),
                disconnect_detail=client.close_reason or STOPPING,
            )
        )
        self.policy.forget(client.uuid)
        self._event_policy.forget(client.uuid)

    def _send_event(self, event: pb.InputStreamRequest) -> None:
        """Queue a lifecycle event for one upstream that takes events, by the policy."""
        serving = self._serving
        targets = [u for u in serving if u.config.events]
        if not targets:
            if any(u.config.events for u in self.upstreams.values()):
                self._hold_events([event])
            return
        policy = self.policy if len(targets) == len(serving) else self._event_policy
        for index, _ in policy.assign([event], targets):
            targets[index].outbox.put_nowait([event])

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

    def set_policy(self, name: str) -> None:
        """Balance with the policy called ``name`` from now on; ``ValueError`` if unknown.

        A new policy starts with no memory: under ``sticky``, clients are
        placed afresh.
        """
        self.policy = make_policy(name)
        log.info("balancing policy set", extra={"policy": name})

    async def dispatch(self, requests: list[pb.InputStreamRequest]) -> None:
        """Hand a batch of client messages to serving upstreams, by the policy.

        Waits while there is no serving upstream or the chosen outboxes are
        full: the caller stops reading its socket meanwhile (backpressure).
        """
        self.messages_from_clients += len(requests)
        while requests:
            serving = self._serving
            if not serving:
                await self._serving_changed.park()
                continue
            if len(serving) == 1:
                if await serving[0].outbox.put(requests):
                    serving[0].messages_dispatched += len(requests)
                    return
                continue
            refused: list[pb.InputStreamRequest] = []
            for index, part in self.policy.assign(requests, serving):
                batch, upstream = _part(requests, part), serving[index]
                if await upstream.outbox.put(batch):
                    upstream.messages_dispatched += len(batch)
                else:
                    refused += batch
            requests = refused

    # -- upstreams ------------------------------------------------------

    def add_upstream(self, config: UpstreamConfig) -> Upstream:
        if config.address in self.upstreams:
            raise ValueError(f"upstream {config.address} already exists")
        upstream = Upstream(config=config, outbox=Outbox(self.config.upstream_queue_size))
        self.upstreams[config.address] = upstream
        return upstream

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
        if state is UpstreamState.SERVING:
            if upstream.config.events:
                upstream.outbox.put_nowait(self._event_orphans)
                self._event_orphans.clear()
                upstream.outbox.put_nowait(self._orphans)
            else:
                # An upstream on the original contract never sees an event.
                upstream.outbox.put_nowait(r for r in self._orphans if not r.event)
                self._hold_events(r for r in self._orphans if r.event)
            self._orphans.clear()
            upstream.outbox.open()
            self._serving = [*self._serving, upstream]
            self._serving_changed.unpark_all()
            log.info("upstream serving", extra=fields)
            return
        if previous is UpstreamState.SERVING:
            self._serving = [u for u in self._serving if u is not upstream]
            upstream.outbox.close()
            moved = upstream.outbox.take_nowait()
            self._redispatch(moved)
            fields["requeued"] = len(moved)
        if state is UpstreamState.REMOVED:
            self.upstreams.pop(upstream.address, None)
            log.info("upstream removed", extra=fields)
        elif previous is UpstreamState.SERVING:
            log.warning("upstream stopped serving", extra=fields)
        else:
            log.debug("upstream state", extra=fields)

    async def wait_upstream_state(self, address: str, state: UpstreamState) -> None:
        """Return once the upstream at ``address`` is in ``state`` (``removed``: gone)."""
        while True:
            upstream = self.upstreams.get(address)
            if upstream is None and state is UpstreamState.REMOVED:
                return
            if upstream is not None and upstream.state is state:
                return
            await self._state_changed.park()

    def _redispatch(self, requests: list[pb.InputStreamRequest]) -> None:
        # Failover: these were accepted already, so they bypass the outboxes'
        # bound (which they counted against before) rather than wait.
        if not requests:
            return
        serving = self._serving
        if not serving:
            self._orphans.extend(requests)
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
            serving[index].outbox.put_nowait(_part(requests, part))

    # -- routing back ---------------------------------------------------

    def deliver(self, replies: list[pb.OutputStreamRequest]) -> None:
        """Route messages from an upstream to their clients. Never raises."""
        for reply in replies:
            target = reply.WhichOneof("target")
            if reply.action:
                self._act(reply, target)
            elif target == "client_uuid":
                client = self.clients.get(reply.client_uuid)
                if client is None:
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
            elif target == "multicast":
                payload = reply.payload
                for client in self._targets(reply.multicast.client_uuids):
                    if client.send(payload):
                        self.messages_to_clients += 1
            else:
                self._invalid(
                    "message without a target (neither client_uuid, broadcast nor multicast)"
                )

    def _targets(self, uuids: Iterable[str]) -> list[Client]:
        """The clients with these UUIDs, each once; unknown ones are counted and logged."""
        found = []
        for uuid in dict.fromkeys(uuids):
            client = self.clients.get(uuid)
            if client is None:
                self.unknown_client += 1
                self._unknown_log.warning(
                    "message for an unknown client dropped",
                    client=uuid,
                    unknown_total=self.unknown_client,
                )
            else:
                found.append(client)
        return found

    def _act(self, reply: pb.OutputStreamRequest, target: str | None) -> None:
        if reply.action != pb.OutputStreamRequest.ACTION_DISCONNECT:
            self._invalid(f"unknown action value {reply.action}")
        elif target == "client_uuid":
            for client in self._targets([reply.client_uuid]):
                client.close(UPSTREAM_ACTION)
        elif target == "multicast":
            for client in self._targets(reply.multicast.client_uuids):
                client.close(UPSTREAM_ACTION)
        else:
            self._invalid("disconnect needs a client_uuid or multicast target")

    def _invalid(self, problem: str) -> None:
        self.invalid_target += 1
        self._unknown_log.warning("message from an upstream dropped", problem=problem)

    def broadcast(self, kind: str, payload: bytes) -> int:
        """Send ``payload`` to ``all``, ``active`` or ``inactive`` clients; return how many."""
        self.broadcasts += 1
        recipients = self.select_clients(kind)
        sent = sum(1 for client in recipients if client.send(payload))
        self.messages_to_clients += sent
        return sent

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
            awaiting_upstream=len(self._orphans)
            + sum(len(u.outbox) for u in self.upstreams.values()),
            connections=attrs.evolve(self.connections),
        )
