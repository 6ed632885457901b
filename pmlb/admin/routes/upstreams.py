"""The upstreams: ``/api/v1/upstreams`` and each one's ``/drain`` and ``/state``, and the
original project's ``/upstream/add``.

Adding one takes what a file's ``[[upstream]]`` takes (or starts DNS discovery);
removing and draining wait a bounded time for its connection to close.
"""

from __future__ import annotations

import logging

import trio
from quart import request
from quart_schema import document_request, validate_request, validate_response
from quart_trio import QuartTrio

from pmlb._time import rfc3339_from
from pmlb.admin import schemas as s
from pmlb.admin.context import Context
from pmlb.admin.errors import Conflict, Invalid, InvalidFields, NotFound
from pmlb.config import UpstreamError, parse_upstream
from pmlb.upstream.discovery import Discovery
from pmlb.upstream.state import AdminState, Upstream

log = logging.getLogger("pmlb.admin")

#: Seconds a DELETE of an upstream waits for its connection to close.
REMOVE_WAIT = 10.0


def _upstream_view(upstream: Upstream) -> s.Upstream:
    config = upstream.config
    unacked = upstream.outbox.unacked
    return s.Upstream(
        address=upstream.address,
        host=config.host,
        port=config.port,
        state=str(upstream.state),
        admin_state=str(upstream.admin_state),  # type: ignore[arg-type]
        draining=upstream.draining,
        stalled=upstream.stalled,
        stalls=upstream.stalls,
        failures=upstream.failures,
        ready_failures=upstream.ready_failures,
        last_error=upstream.last_error,
        ready_at=rfc3339_from(upstream.ready_at),
        alive_at=rfc3339_from(upstream.alive_at),
        ping_seconds=upstream.last_ping,
        ready_timeout=config.ready_timeout,
        alive_timeout=config.alive_timeout,
        live_interval=config.live_interval,
        stall_timeout=config.stall_timeout,
        transport=config.transport,
        tls=config.tls,
        events=config.events,
        health=config.health,
        messages_to_upstream=upstream.messages_dispatched,
        messages_from_upstream=upstream.messages_received,
        messages_written=upstream.messages_written,
        queued=len(upstream.outbox),
        acks=config.acks,
        unacked=upstream.unacked,
        acks_received=unacked.acks_received if unacked is not None else 0,
        acks_unknown=unacked.acks_unknown if unacked is not None else 0,
        redelivered=upstream.redelivered,
        undeliverable=upstream.undeliverable,
    )


def _discovery_view(entry: Discovery) -> s.Discovery:
    config = entry.config
    return s.Discovery(
        address=entry.address,
        host=config.host,
        port=config.port,
        resolve_interval=config.resolve_interval,
        upstreams=sorted(entry.addresses),
    )


def register(app: QuartTrio, ctx: Context) -> None:
    registry, action = ctx.registry, ctx.action

    def find_upstream(address: str) -> Upstream:
        upstream = registry.upstreams.get(address)
        if upstream is None:
            raise NotFound(f"no upstream {address}")
        return upstream

    def add_upstream(body: object) -> tuple[s.Upstream | s.Discovery, int]:
        # Checked by the file's own checks, so that the API takes exactly
        # what a file's [[upstream]] takes, with the same messages.
        if not isinstance(body, dict):
            raise Invalid("invalid request: the body must be a JSON object", "body")
        try:
            config = parse_upstream(body)
        except UpstreamError as exc:
            raise InvalidFields(
                "invalid request: " + "; ".join(f"{k}: {p}" for k, p in exc.problems),
                [key for key, _ in exc.problems],
            ) from None
        if config.address in registry.upstreams or config.address in registry.discoveries:
            raise Conflict(f"upstream {config.address} already exists")
        if config.discovery == "dns":
            entry = registry.start_discovery(config)
            action("discovery_added", upstream=config.address)
            return _discovery_view(entry), 202
        upstream = registry.start_upstream(config)
        action("upstream_added", upstream=config.address)
        return _upstream_view(upstream), 201

    @app.get("/api/v1/upstreams")
    @validate_response(s.UpstreamList)
    async def list_upstreams() -> s.UpstreamList:
        """Every upstream with its state, timings and traffic."""
        return s.UpstreamList(
            upstreams=[_upstream_view(u) for u in registry.upstreams.values()],
            discoveries=[_discovery_view(d) for d in registry.discoveries.values()],
        )

    @app.post("/api/v1/upstreams")
    @document_request(s.UpstreamIn)
    @validate_response(s.Upstream, 201)
    @validate_response(s.Discovery, 202)
    async def create_upstream() -> tuple[s.Upstream | s.Discovery, int]:
        """Add an upstream and start supervising it (409 if its address is taken).

        Takes every key of a file's ``[[upstream]]``, checked the same way.
        With ``discovery = "dns"`` it starts resolving the name instead (202):
        each address found becomes an upstream.
        """
        return add_upstream(await request.get_json())

    @app.post("/upstream/add")
    @validate_request(s.LegacyUpstreamIn)
    @validate_response(s.Upstream, 201)
    async def legacy_add_upstream(data: s.LegacyUpstreamIn) -> tuple[s.Upstream | s.Discovery, int]:
        """The original project's route, kept for its callers."""
        return add_upstream(data.model_dump())

    @app.get("/api/v1/upstreams/<address>")
    @validate_response(s.Upstream)
    async def get_upstream(address: str) -> s.Upstream:
        return _upstream_view(find_upstream(address))

    @app.delete("/api/v1/upstreams/<address>")
    @validate_response(s.Removed, 200)
    @validate_response(s.Removed, 202)
    async def delete_upstream(address: str) -> tuple[s.Removed, int]:
        """Remove an upstream at once; messages queued for it fail over.

        202 with ``pending`` if its connection takes long to close: it is
        removed from the list once closed.
        """
        if address in registry.discoveries:
            action("discovery_removed", upstream=address)
            with trio.move_on_after(REMOVE_WAIT):
                await registry.stop_discovery(address)
                return s.Removed(removed=address), 200
            return s.Removed(removed=address, pending=True), 202
        find_upstream(address)
        action("upstream_removed", upstream=address)
        with trio.move_on_after(REMOVE_WAIT):
            await registry.remove_upstream(address)
            return s.Removed(removed=address), 200
        log.warning("upstream removal still pending", extra={"upstream": address})
        return s.Removed(removed=address, pending=True), 202

    @app.post("/api/v1/upstreams/<address>/drain")
    @validate_request(s.DrainIn)
    @validate_response(s.Drained, 200)
    @validate_response(s.Drained, 202)
    async def drain_upstream(address: str, data: s.DrainIn) -> tuple[s.Drained, int]:
        """No new messages; answers it owes still arrive (up to ``timeout``); then removed.

        202 with ``pending`` if its connection takes long to close.
        """
        find_upstream(address)
        action("upstream_drain", upstream=address)
        with trio.move_on_after(data.timeout + REMOVE_WAIT):
            left = await registry.drain_upstream(address, grace=data.timeout)
            return s.Drained(upstream=address, failed_over=left), 200
        return s.Drained(upstream=address, failed_over=0, pending=True), 202

    async def set_state(address: str, data: s.UpstreamStateIn) -> s.Upstream:
        upstream = find_upstream(address)
        moved = registry.set_upstream_admin_state(upstream, AdminState(data.state))
        action("upstream_state", upstream=address, admin_state=data.state, moved=moved)
        return _upstream_view(upstream)

    @app.put("/api/v1/upstreams/<address>/state")
    @validate_request(s.UpstreamStateIn)
    @validate_response(s.Upstream)
    async def put_upstream_state(address: str, data: s.UpstreamStateIn) -> s.Upstream:
        """Set an upstream's state as an operator: ``ready``, ``drain`` or ``maint``.

        Reversible, unlike ``/drain`` (which removes it): ``drain`` sends it
        no new messages while its queue is written and its replies and
        acknowledgements still flow; ``maint`` moves its queue to the other
        upstreams at once; ``ready`` puts it back in rotation.
        """
        return await set_state(address, data)

    @app.post("/api/v1/upstreams/<address>/state")
    @validate_request(s.UpstreamStateIn)
    @validate_response(s.Upstream)
    async def post_upstream_state(address: str, data: s.UpstreamStateIn) -> s.Upstream:
        """The same as ``PUT``, for clients that only POST."""
        return await set_state(address, data)
