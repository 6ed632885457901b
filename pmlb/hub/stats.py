"""Statistics: frozen snapshots of every part of the hub, for the admin API and metrics.

Owns no state: :func:`snapshot` reads the counters and tables of the parts
that own them (client table, dispatcher, router, upstream table, drain) into
one :class:`Statistics`.
"""

from __future__ import annotations

import attrs

from pmlb.downstream.limits import ConnectionCounters
from pmlb.hub.clients import ClientTable
from pmlb.hub.dispatch import Dispatcher
from pmlb.hub.drain import Drain
from pmlb.hub.route import Router
from pmlb.hub.upstreams import UpstreamTable


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


def snapshot(
    table: ClientTable,
    dispatcher: Dispatcher,
    router: Router,
    upstream_table: UpstreamTable,
    drain: Drain,
) -> Statistics:
    """The counters of all parts, as they are now."""
    clients = table.clients
    upstreams = upstream_table.upstreams
    return Statistics(
        clients=len(clients),
        clients_total=table.clients_total,
        upstreams=len(upstreams),
        upstreams_serving=len(dispatcher.serving),
        messages_from_clients=dispatcher.messages_from_clients,
        messages_to_clients=router.messages_to_clients,
        broadcasts=router.broadcasts,
        unknown_client=router.unknown_client,
        invalid_target=router.invalid_target,
        awaiting_upstream=dispatcher.awaiting_upstream(),
        connections=attrs.evolve(table.connections),
        broadcast_recipients=router.broadcast_recipients,
        refused=drain.refused,
        bytes_from_clients=table.closed_bytes_in + sum(c.bytes_in for c in clients.values()),
        bytes_to_clients=table.closed_bytes_out + sum(c.bytes_out for c in clients.values()),
        clients_by_listener={k: v for k, v in table.by_listener.items() if v},
        clients_total_by_listener=dict(table.total_by_listener),
        disconnects=dict(table.disconnects),
        queued_to_clients=sum(c.queued for c in clients.values()),
        queued_bytes_to_clients=table.client_queues.held,
        accepting=drain.accepting,
        policy=dispatcher.policy.name,
        unacked=sum(u.unacked for u in upstreams.values()),
        acks_received=sum(
            u.outbox.unacked.acks_received
            for u in upstreams.values()
            if u.outbox.unacked is not None
        ),
        acks_unknown=sum(
            u.outbox.unacked.acks_unknown
            for u in upstreams.values()
            if u.outbox.unacked is not None
        ),
        redelivered=upstream_table.redelivered,
        undeliverable=upstream_table.undeliverable,
    )
