"""``/``: the dashboard page, static: it asks for the token and reads everything through the API."""

from __future__ import annotations

from importlib import resources

from quart import Response
from quart_trio import QuartTrio

from pmlb.admin.context import Context


def register(app: QuartTrio, ctx: Context) -> None:
    @app.get("/")
    async def dashboard() -> Response:
        """The dashboard page (static; it reads everything through the API)."""
        page = resources.files("pmlb.admin").joinpath("dashboard.html").read_text()
        return Response(page, content_type="text/html; charset=utf-8")
