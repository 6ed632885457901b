"""``/healthz`` and ``/readyz``: whether pmlb is alive, and whether it takes clients."""

from __future__ import annotations

import json

from quart import Response
from quart_schema import document_response, validate_response
from quart_trio import QuartTrio

from pmlb.admin import schemas as s
from pmlb.admin.context import Context, degraded


def register(app: QuartTrio, ctx: Context) -> None:
    registry = ctx.registry

    @app.get("/healthz")
    @validate_response(s.Health)
    async def healthz() -> s.Health:
        """The process is alive (no token needed)."""
        return s.Health(status="ok")

    @app.get("/readyz")
    @document_response(s.Ready, 200)
    @document_response(s.Ready, 503)
    async def readyz() -> Response:
        """Whether pmlb accepts clients (no token needed); the upstream counts in the body.

        An upstream outage leaves pmlb ready by default: it holds clients
        and their messages meanwhile, so taking it out of rotation would
        only move them. ``ready_requires_upstream`` changes that.
        """
        stats = registry.statistics()
        reason = None
        if registry.stop_requested.is_set():
            reason = "stopping"
        elif not stats.accepting:
            reason = "not accepting clients"
        elif ctx.ready_requires_upstream and stats.upstreams_serving == 0:
            reason = "no upstream is serving"
        bus = registry.cluster
        answer = s.Ready(
            ready=reason is None,
            reason=reason,
            upstreams=stats.upstreams,
            upstreams_serving=stats.upstreams_serving,
            # Degraded is not unready: local traffic goes on without Redis.
            cluster=None if bus is None else "ok" if bus.connected else "degraded",
            cluster_reason=None if bus is None or bus.connected else degraded(bus),
        )
        # Outside a cluster the body stays as it was (no cluster fields).
        body = answer.model_dump(exclude={"cluster", "cluster_reason"} if bus is None else None)
        status = 200 if reason is None else 503
        return Response(json.dumps(body), status, content_type="application/json")
