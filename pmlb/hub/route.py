"""Upstream -> client: replies by UUID, multicast, broadcast, and upstream actions.

Owns the list of directly written clients with something queued (whoever
sends to clients writes them out before it next waits) and the counts of what
was routed back: messages sent to clients, broadcasts and their recipients,
replies for unknown clients and replies without a valid target. Reads the
client table's clients; never adds or removes one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from pmlb._log import RateLimited
from pmlb._proto import upstream_pb2 as pb
from pmlb.config import Config
from pmlb.downstream.client import Client
from pmlb.downstream.reasons import UPSTREAM_ACTION, Reason
from pmlb.hub.nodes import Nodes

_BROADCAST_NAMES = {
    pb.OutputStreamRequest.BROADCAST_ALL: "all",
    pb.OutputStreamRequest.BROADCAST_ACTIVE: "active",
    pb.OutputStreamRequest.BROADCAST_NOT_ACTIVE: "inactive",
}


class Router:
    """Routes what upstreams send back to the clients it is for."""

    def __init__(
        self, config: Config, clients: Mapping[str, Client], dropped_log: RateLimited
    ) -> None:
        self.config = config
        # The client table's clients (it adds and removes them; read here).
        self._clients = clients
        self._dropped_log = dropped_log
        #: the cluster bus, when this pmlb is a node of a cluster (see pmlb.cluster)
        self.cluster: Nodes | None = None
        #: directly written clients with something queued: whoever sends to
        #: clients writes them out with flush_clients() before it next waits
        self.unflushed: list[Client] = []
        self.messages_to_clients = 0
        self.broadcasts = 0
        self.broadcast_recipients = 0
        self.unknown_client = 0
        self.invalid_target = 0

    def send_to(self, uuid: str, payload: bytes) -> bool:
        """Queue ``payload`` for one client, as an upstream would; ``KeyError`` if unknown."""
        sent = self._clients[uuid].send(payload)
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
        self._dropped_log.warning(
            "message for an unknown client dropped", reason=why, unknown_total=self.unknown_client
        )

    def _deliver(
        self,
        replies: list[pb.OutputStreamRequest],
        forward: Nodes | None,
        *,
        from_node: bool = False,
    ) -> None:
        for reply in replies:
            target = reply.WhichOneof("target")
            if reply.action:
                self._act(reply, target, forward, from_node)
            elif target == "client_uuid":
                client = self._clients.get(reply.client_uuid)
                if client is None:
                    if forward is not None:
                        forward.forward(reply, [reply.client_uuid])
                        continue
                    self.unknown_client += 1
                    self._dropped_log.warning(
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
        forward: Nodes | None = None,
        from_node: bool = False,
    ) -> list[Client]:
        """The clients with these UUIDs, each once; unknown ones are counted and logged.

        With ``forward``, ``reply`` is sent on to the nodes holding the
        UUIDs not held here; ``from_node``: those are skipped.
        """
        found = []
        missing: list[str] = []
        for uuid in dict.fromkeys(uuids):
            client = self._clients.get(uuid)
            if client is None:
                if forward is not None:
                    missing.append(uuid)
                    continue
                if from_node:
                    continue
                self.unknown_client += 1
                self._dropped_log.warning(
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
        forward: Nodes | None = None,
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
        self._dropped_log.warning("message from an upstream dropped", problem=problem)

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

    def select_clients(self, kind: str) -> Iterable[Client]:
        if kind not in ("all", "active", "inactive"):
            raise ValueError(f"broadcast kind must be all, active or inactive, got {kind!r}")
        clients = list(self._clients.values())
        if kind == "all":
            return clients
        now, window = time.monotonic(), self.config.activity_window
        want_active = kind == "active"
        return [c for c in clients if c.is_active(now, window) is want_active]
