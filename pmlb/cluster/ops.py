"""What the admin API of one node asks another, and how a node answers it.

A request is one JSON object: ``id`` (the asking node's counter), ``op``
and its arguments. The answer carries the same ``id``, ``node`` (who
answers) and ``status``, as HTTP would say it: 200, or 404 for a client this
node does not hold (any more). Payloads travel base64-encoded. No I/O here:
the bus carries requests and answers (:class:`pmlb.cluster.bus.Bus`), the
admin API makes them (:mod:`pmlb.admin.routes.clients`,
:mod:`pmlb.admin.routes.broadcast`).

Ops: ``client`` (``uuid``: its view), ``kick`` (``uuid``), ``send``
(``uuid``, ``payload``: ``queued``), ``broadcast`` (``kind``, ``payload``:
``recipients``) and ``clients`` (``after``, ``limit``, ``state``,
``listener``, ``q``: a page of this node's clients, ``next_cursor``,
``connected``).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from pmlb.config import Config
from pmlb.downstream.client import Client
from pmlb.events import EventBus

log = logging.getLogger("pmlb.admin")


class Core(Protocol):
    """What answering another node needs from the core (:class:`pmlb.registry.Registry`).

    A port, so that the cluster layer never imports the registry above it.
    """

    @property
    def clients(self) -> Mapping[str, Client]: ...

    @property
    def config(self) -> Config: ...

    @property
    def events(self) -> EventBus: ...

    def broadcast(self, kind: str, payload: bytes) -> int: ...

    def kick(self, uuid: str, reason: str = ...) -> Client: ...

    def send_to(self, uuid: str, payload: bytes) -> bool: ...

    def client_page(
        self,
        *,
        after: int = -1,
        limit: int = 100,
        state: str | None = None,
        listener: str | None = None,
        search: str | None = None,
    ) -> tuple[list[Client], int | None]: ...


OPS = frozenset({"client", "kick", "send", "broadcast", "clients"})


class BusDown(Exception):
    """Redis cannot be used now; the bus reconnects."""


class NoAnswer(Exception):
    """A node was asked something and did not answer in time."""


class BadRequest(ValueError):
    """A request no pmlb would send (another version, or not pmlb at all)."""


def encode_payload(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


def answer(registry: Core, request: dict[str, Any], origin: str) -> dict[str, Any]:
    """Do ``request`` (from node ``origin``) on this node's clients; the answer's fields.

    Raises :class:`BadRequest` for an unknown op or missing arguments.
    """
    op = request.get("op")
    if op not in OPS:
        raise BadRequest(f"unknown op {op!r}")
    try:
        if op == "clients":
            return _page(registry, request)
        if op == "broadcast":
            payload = base64.b64decode(request["payload"], validate=True)
            recipients = registry.broadcast(str(request["kind"]), payload)
            _audit(registry, "broadcast", origin, kind=request["kind"], recipients=recipients)
            return {"status": 200, "recipients": recipients}
        uuid = str(request["uuid"])
        client = registry.clients.get(uuid)
        if client is None:
            return {"status": 404}
        if op == "client":
            window = registry.config.activity_window
            return {"status": 200, "client": client.view(time.monotonic(), time.time(), window)}
        if op == "kick":
            registry.kick(uuid)
            _audit(registry, "client_kicked", origin, client=uuid)
            return {"status": 200}
        queued = registry.send_to(uuid, base64.b64decode(request["payload"], validate=True))
        _audit(registry, "client_message", origin, client=uuid, queued=queued)
        return {"status": 200, "queued": queued}
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"bad {op} request: {type(exc).__name__}: {exc}") from None


def _page(registry: Core, request: dict[str, Any]) -> dict[str, Any]:
    after, limit = int(request["after"]), int(request["limit"])
    if limit < 1 or limit > 1000:
        raise ValueError(f"limit must be 1 to 1000, got {limit}")
    page, cursor = registry.client_page(
        after=after,
        limit=limit,
        state=request.get("state"),
        listener=request.get("listener"),
        search=str(request.get("q") or "") or None,
    )
    now, wall, window = time.monotonic(), time.time(), registry.config.activity_window
    return {
        "status": 200,
        "clients": [client.view(now, wall, window) for client in page],
        "next_cursor": cursor,
        "connected": len(registry.clients),
    }


def _audit(registry: Core, what: str, origin: str, **fields: Any) -> None:
    # What another node's admin did here shows in this node's events and log too.
    registry.events.publish(f"admin.{what}", via_node=origin, **fields)
    log.info(f"admin (through node {origin}): {what}", extra={"via_node": origin, **fields})
