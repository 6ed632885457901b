"""The client table: who is connected, in connection order, and what came and went.

Owns the connected clients (by UUID, and by connection number for stable
cursor paging), the budget of bytes queued for all of them, the connection
counters the listeners keep (:class:`ConnectionCounters`), and the totals of
clients that came and went (by listener, by kind of close reason, their
bytes). Adding and removing a client sends its lifecycle event to the
upstreams (through the dispatcher) and tells the cluster bus.
"""

from __future__ import annotations

import time
from collections import Counter

import trio
from sortedcontainers import SortedDict

from pmlb._proto import upstream_pb2 as pb
from pmlb._time import rfc3339_now
from pmlb.codecs import request
from pmlb.config import Config
from pmlb.downstream.client import Client, QueueBudget
from pmlb.downstream.limits import ConnectionCounters
from pmlb.downstream.reasons import STOPPING, Reason
from pmlb.events import EventBus
from pmlb.hub.dispatch import Dispatcher
from pmlb.hub.nodes import Nodes


class ClientTable:
    """The connected clients: add, remove, page through, kick."""

    def __init__(self, config: Config, dispatcher: Dispatcher, events: EventBus) -> None:
        self.config = config
        self._dispatcher = dispatcher
        self._events = events
        #: the cluster bus, when this pmlb is a node of a cluster (see pmlb.cluster)
        self.cluster: Nodes | None = None
        self.clients: dict[str, Client] = {}
        # The same clients by connection number, for stable cursor paging.
        self._by_seq: SortedDict = SortedDict()
        self._next_seq = 0
        self._client_removed = trio.lowlevel.ParkingLot()
        #: connection limits: what was accepted, refused and closed (the listeners count)
        self.connections = ConnectionCounters()
        #: the bytes held for all clients, against client_queue_bytes_total
        self.client_queues = QueueBudget(
            config.client_queue_bytes_total, lambda: self.clients.values()
        )
        self.clients_total = 0
        self.closed_bytes_in = 0
        self.closed_bytes_out = 0
        self.by_listener: Counter[str] = Counter()
        self.total_by_listener: Counter[str] = Counter()
        self.disconnects: Counter[str] = Counter()

    def add_client(self, client: Client) -> None:
        client.seq = self._next_seq
        self._next_seq += 1
        self.clients[client.uuid] = client
        self._by_seq[client.seq] = client
        self.clients_total += 1
        # Built only if some upstream takes it: most take no events.
        if self._dispatcher.takes_events():
            self._dispatcher.send_event(
                request.event(
                    rfc3339_now(),
                    client.uuid,
                    pb.InputStreamRequest.EVENT_CONNECTED,
                    remote_address=client.remote,
                    listener=client.listener,
                    transport=client.transport,
                )
            )
        self.by_listener[client.listener] += 1
        self.total_by_listener[client.listener] += 1
        if self.cluster is not None:
            self.cluster.client_added(client.uuid)
        self._events.publish(
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
        if self._dispatcher.takes_events():
            self._dispatcher.send_event(
                request.event(
                    rfc3339_now(),
                    client.uuid,
                    pb.InputStreamRequest.EVENT_DISCONNECTED,
                    disconnect_reason=_close_kind(client).kind.value,
                    disconnect_detail=client.close_reason or STOPPING,
                )
            )
        self._dispatcher.forget(client.uuid)
        del self._by_seq[client.seq]
        self.by_listener[client.listener] -= 1
        self.closed_bytes_in += client.bytes_in
        self.closed_bytes_out += client.bytes_out
        reason = client.close_reason
        self.disconnects[_close_kind(client).kind.name.lower()] += 1
        self._events.publish(
            "client.disconnected",
            client=client.uuid,
            listener=client.listener,
            reason=reason or STOPPING,
        )
        if self._client_removed:
            self._client_removed.unpark_all()

    async def wait_removed(self) -> None:
        """Return once a client is removed."""
        await self._client_removed.park()

    def clients_lost_elsewhere(self, uuids: list[str], node: str) -> None:
        """Tell upstreams with events that another node's clients are gone with it."""
        detail = f"their pmlb node {node} stopped"
        for uuid in uuids:
            self._dispatcher.send_event(
                request.event(
                    rfc3339_now(),
                    uuid,
                    pb.InputStreamRequest.EVENT_DISCONNECTED,
                    disconnect_reason=pb.InputStreamRequest.DISCONNECT_ERROR,
                    disconnect_detail=detail,
                )
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


def _close_kind(client: Client) -> Reason:
    """Why ``client`` went: a client cancelled from outside (pmlb stopping) is a drain."""
    return client.close_kind or Reason.DRAIN
