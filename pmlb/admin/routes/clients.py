"""The clients: ``/api/v1/clients`` (paged, searched), one client, its ``/messages``,
and disconnecting it.

In a cluster a client may be on any node: a page goes over the nodes in name
order, and a route for a client this node does not hold asks the node that
does (through :mod:`pmlb.cluster.ops`).
"""

from __future__ import annotations

import time
from typing import Any

from quart_schema import validate_querystring, validate_request, validate_response
from quart_trio import QuartTrio

from pmlb.admin import schemas as s
from pmlb.admin.context import Context, degraded, message_payload
from pmlb.admin.errors import Invalid, NotFound, Unavailable
from pmlb.cluster.ops import BusDown, NoAnswer, encode_payload
from pmlb.downstream.client import Client


def _client_view(
    client: Client, now: float, wall: float, window: float, node: str | None = None
) -> s.Client:
    return s.Client(**client.view(now, wall, window), node=node)


def register(app: QuartTrio, ctx: Context) -> None:
    registry, action = ctx.registry, ctx.action

    @app.get("/api/v1/clients")
    @validate_querystring(s.ClientQuery)
    @validate_response(s.ClientPage)
    async def list_clients(query_args: s.ClientQuery) -> s.ClientPage:
        """Connected clients, oldest first, ``limit`` at a time from ``cursor``."""
        if query_args.listener is not None and query_args.listener not in ctx.listeners:
            raise NotFound(f"no listener {query_args.listener!r}")
        node, _, after = query_args.cursor.rpartition("/")
        if registry.cluster is not None:
            return await cluster_page(query_args, node, int(after))
        if node:
            raise Invalid("cursor: NODE/NUMBER is for a cluster; this pmlb is alone", "cursor")
        page, cursor = registry.client_page(
            after=int(after),
            limit=query_args.limit,
            state=query_args.state,
            listener=query_args.listener,
            search=query_args.q,
        )
        now, wall, window = time.monotonic(), time.time(), registry.config.activity_window
        return s.ClientPage(
            clients=[_client_view(c, now, wall, window) for c in page],
            next_cursor=cursor,
            connected=len(registry.clients),
        )

    async def cluster_page(query: s.ClientQuery, start: str, after: int) -> s.ClientPage:
        # Pages go over the nodes in name order, each node's clients oldest
        # first; a cursor NODE/N goes on after client N of NODE (or at the
        # next name, if NODE is gone).
        bus = registry.cluster
        assert bus is not None
        names = sorted({bus.node, *bus.nodes}) if bus.connected else [bus.node]
        clients: list[s.Client] = []
        missing: list[str] = []
        for name in (n for n in names if n >= start):
            here = after if name == start else -1
            want = query.limit - len(clients)
            if name == bus.node:
                page, cursor = registry.client_page(
                    after=here,
                    limit=want,
                    state=query.state,
                    listener=query.listener,
                    search=query.q,
                )
                now, wall, window = time.monotonic(), time.time(), registry.config.activity_window
                clients += [_client_view(c, now, wall, window, bus.node) for c in page]
            else:
                request = {
                    "op": "clients",
                    "after": here,
                    "limit": want,
                    "state": query.state,
                    "listener": query.listener,
                    "q": query.q,
                }
                try:
                    answer = await bus.ask_node(name, request, ctx.ask_timeout())
                except (BusDown, NoAnswer) as exc:
                    missing.append(f"{name}: {exc}")
                    continue
                if answer is None:  # it left since the last heartbeat
                    continue
                clients += [s.Client(**c, node=name) for c in answer["clients"]]
                cursor = answer["next_cursor"]
            if cursor is not None:
                next_cursor: str | None = f"{name}/{cursor}"
                break
            later = [n for n in names if n > name]
            if len(clients) >= query.limit and later:
                next_cursor = f"{later[0]}/-1"
                break
        else:
            next_cursor = None
        if not bus.connected:
            missing.insert(0, f"the other nodes: {degraded(bus)}")
        return s.ClientPage(
            clients=clients,
            next_cursor=next_cursor,
            connected=bus.cluster_clients if bus.connected else len(registry.clients),
            partial="; ".join(missing) or None,
        )

    async def remote(uuid: str, request: dict[str, Any]) -> dict[str, Any]:
        """The answer of the node holding ``uuid`` (not this one); 404, 503, 504 else."""
        bus = registry.cluster
        if bus is None:
            raise NotFound(f"no client {uuid}")
        try:
            answer = await bus.ask_owner(uuid, {**request, "uuid": uuid}, ctx.ask_timeout())
        except BusDown as exc:
            raise Unavailable(
                f"no client {uuid} on this node, and the other nodes cannot be asked: {exc}"
            ) from None
        except NoAnswer as exc:
            raise Unavailable(f"client {uuid}: {exc}", 504) from None
        if answer is None or answer.get("status") != 200:
            raise NotFound(f"no client {uuid} in the cluster")
        return answer

    @app.get("/api/v1/clients/<uuid>")
    @validate_response(s.Client)
    async def get_client(uuid: str) -> s.Client:
        """One client, on this node or (in a cluster) any other."""
        client = registry.clients.get(uuid)
        if client is None:
            answer = await remote(uuid, {"op": "client"})
            return s.Client(**answer["client"], node=answer["node"])
        window = registry.config.activity_window
        return _client_view(client, time.monotonic(), time.time(), window, ctx.this_node())

    @app.delete("/api/v1/clients/<uuid>")
    @validate_response(s.Disconnected)
    async def kick_client(uuid: str) -> s.Disconnected:
        """Disconnect a client, on this node or (in a cluster) any other."""
        if uuid not in registry.clients:
            answer = await remote(uuid, {"op": "kick"})
            action("client_kicked", client=uuid, node=answer["node"])
            return s.Disconnected(disconnected=uuid, node=answer["node"])
        registry.kick(uuid)
        action("client_kicked", client=uuid)
        return s.Disconnected(disconnected=uuid, node=ctx.this_node())

    @app.post("/api/v1/clients/<uuid>/messages")
    @validate_request(s.Message)
    @validate_response(s.Queued, 202)
    async def send_to_client(uuid: str, data: s.Message) -> tuple[s.Queued, int]:
        """Queue a message for one client, as an upstream would; any node's in a cluster."""
        payload = message_payload(data)
        if uuid not in registry.clients:
            answer = await remote(uuid, {"op": "send", "payload": encode_payload(payload)})
            queued = bool(answer["queued"])
            action("client_message", client=uuid, queued=queued, node=answer["node"])
            return s.Queued(client=uuid, queued=queued, node=answer["node"]), 202
        queued = registry.send_to(uuid, payload)
        action("client_message", client=uuid, queued=queued)
        return s.Queued(client=uuid, queued=queued, node=ctx.this_node()), 202
