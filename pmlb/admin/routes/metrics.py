"""``/metrics``: the Prometheus exposition of :mod:`pmlb.metrics`, text or OpenMetrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from quart import Response, request
from quart_trio import QuartTrio

from pmlb.admin.context import Context


def _wants_openmetrics(accept: str) -> bool:
    """Whether an ``Accept`` header prefers OpenMetrics (as Prometheus sends it) to text."""
    best_open = best_text = 0.0
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if kind.lower() == "application/openmetrics-text":
            best_open = max(best_open, quality)
        elif kind.lower() in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, quality)
    return best_open > 0 and best_open >= best_text


def register(app: QuartTrio, ctx: Context) -> None:
    metrics = ctx.metrics

    @app.get("/metrics")
    async def metrics_text() -> Response:
        """Prometheus text format, or OpenMetrics when the ``Accept`` header asks for it."""
        if _wants_openmetrics(request.headers.get("Accept", "")):
            return Response(
                openmetrics.generate_latest(metrics),  # type: ignore[no-untyped-call]
                content_type=openmetrics.CONTENT_TYPE_LATEST,
            )
        return Response(generate_latest(metrics), content_type=CONTENT_TYPE_LATEST)
