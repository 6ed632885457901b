"""The admin API: a QuartTrio app that sees and steers pmlb through the registry.

Routes live under ``/api/v1``; ``/healthz``, ``/readyz``, ``/metrics``,
``/openapi.json``, the event WebSocket and the dashboard at ``/`` complete it.
Every route but ``/healthz`` and the dashboard's static page (which carries no
data: it asks for the token and then calls the API) requires the bearer token
when one is configured. :mod:`pmlb.admin.guard`, in front of the app, checks
the token, ``Host``, the origin of state changes and the content type before
a request's body is read.

This module makes the app: the guard, the token check, the audit callback,
the error answers (:mod:`pmlb.admin.errors`), reading each body first, and
the :class:`~pmlb.admin.context.Context` it hands to the modules of
:mod:`pmlb.admin.routes`, one per resource, which own the routes.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from quart import Response, request
from quart_schema import QuartSchema, RequestSchemaValidationError
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException

from pmlb.admin import audit
from pmlb.admin.context import Context
from pmlb.admin.errors import (
    Conflict,
    Invalid,
    InvalidFields,
    NotFound,
    Unavailable,
    error_response,
)
from pmlb.admin.guard import Guard, HostCheck
from pmlb.admin.routes import (
    broadcast,
    clients,
    cluster,
    dashboard,
    events,
    health,
    metrics,
    runtime,
    upstreams,
)
from pmlb.metrics import metrics_registry
from pmlb.registry import Registry

log = logging.getLogger("pmlb.admin")

#: Seconds a route waits for another node of the cluster to answer
ASK_TIMEOUT = 5.0

#: Paths anyone may read: what a load balancer, a kubelet or a browser asks for
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})


class _Request(TrioRequest):
    def on_json_loading_failed(self, error: Exception) -> Any:
        # A JSON body that does not parse names the body, as a wrong one does.
        raise Invalid(f"invalid request: the body is not valid JSON: {error}", "body")


def create_app(
    registry: Registry,
    *,
    listeners: dict[str, list[str]],
    token: str = "",
    bind_host: str = "127.0.0.1",
    allowed_hosts: tuple[str, ...] = (),
    allowed_origins: tuple[str, ...] = (),
    set_log_level: Callable[[str], None] | None = None,
    log_level: Callable[[], str] | None = None,
    public_metrics: bool = False,
    ready_requires_upstream: bool = False,
    trusted_proxies: tuple[str, ...] = (),
) -> QuartTrio:
    """The admin app for ``registry``.

    ``listeners`` are the bound client addresses by listener name. ``token``
    (empty: none) protects every route but :data:`PUBLIC_PATHS`, and
    ``/metrics`` too unless ``public_metrics``. ``/readyz`` is ready while
    pmlb accepts clients, and with ``ready_requires_upstream`` only while an
    upstream serves too. A
    request's ``Host`` must be an address of ``bind_host`` (the admin's
    configured host) or one of ``allowed_hosts``; a state change or event
    WebSocket from a web page must come from the admin's own origin or one of
    ``allowed_origins`` (see :mod:`pmlb.admin.guard`). Audit lines name
    the caller, and the client a proxy in ``trusted_proxies`` forwarded for
    (see :mod:`pmlb.admin.audit`).
    """
    app = QuartTrio(__name__)
    app.request_class = _Request
    app.config["MAX_CONTENT_LENGTH"] = 32 * 1024 * 1024
    QuartSchema(
        app,
        info={"title": "pmlb admin API", "version": "1"},
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        security=[{"bearer": []}],
    )
    started_at, started = time.time(), time.monotonic()
    expected = token.encode()
    public = PUBLIC_PATHS | {"/metrics"} if public_metrics else PUBLIC_PATHS

    def set_level(level: str) -> None:
        logging.getLogger("pmlb").setLevel(level.upper())

    def get_level() -> str:
        return logging.getLevelName(logging.getLogger("pmlb").getEffectiveLevel()).lower()

    set_log_level = set_log_level or set_level
    log_level = log_level or get_level

    def authorized(header: str | None) -> bool:
        if not expected:
            return True
        scheme, _, given = (header or "").partition(" ")
        # compare_digest on bytes: constant time whatever the given length
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), expected)

    trusted = audit.networks(trusted_proxies)

    def action(what: str, **fields: Any) -> None:
        # The audit line names who asked (see pmlb.admin.audit).
        fields.update(
            audit.caller_fields(
                request.scope.get("client"), audit.scope_headers(request.scope), trusted
            )
        )
        registry.events.publish(f"admin.{what}", **fields)
        log.info(f"admin: {what}", extra=fields)

    # The token (like Host, origin and content type) is checked by the guard,
    # before any body is read.
    app.asgi_app = Guard(  # type: ignore[method-assign]
        app.asgi_app,
        hosts=HostCheck(bind_host, allowed_hosts),
        origins=allowed_origins,
        authorized=authorized,
        public=lambda path: path in public,
    )

    @app.before_request
    async def read_body() -> None:
        # Read the body before any answer: hypercorn stalls a keep-alive
        # connection answered (404, 405) before its request body came in.
        await request.get_data()

    @app.errorhandler(RequestSchemaValidationError)
    async def bad_body(error: RequestSchemaValidationError) -> tuple[Response, int]:
        problem = error.validation_error
        if hasattr(problem, "errors"):
            details = problem.errors()
            fields = [".".join(str(p) for p in d["loc"]) or "body" for d in details]
            text = "; ".join(
                f"{'.'.join(str(p) for p in d['loc']) or 'body'}: {d['msg']}" for d in details
            )
            return error_response(400, f"invalid request: {text}", fields)
        return error_response(400, f"invalid request: {problem}", ["body"])

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> tuple[Response, int]:
        status = error.code or 500
        return error_response(status, error.description or error.name)

    @app.errorhandler(UnicodeDecodeError)
    async def not_utf8(error: UnicodeDecodeError) -> tuple[Response, int]:
        return error_response(400, "invalid request: the body is not UTF-8 JSON", ["body"])

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> tuple[Response, int]:
        # A bug in a route: the proxy carries on, the operator gets a 500 and
        # the log gets the traceback.
        log.exception("internal error in the admin API", extra={"path": request.path})
        return error_response(500, f"internal error: {type(error).__name__}")

    @app.errorhandler(Invalid)
    async def invalid(error: Invalid) -> tuple[Response, int]:
        return error_response(400, str(error), [error.field])

    @app.errorhandler(InvalidFields)
    async def invalid_fields(error: InvalidFields) -> tuple[Response, int]:
        return error_response(400, str(error), error.fields)

    @app.errorhandler(NotFound)
    async def not_found(error: NotFound) -> tuple[Response, int]:
        return error_response(404, str(error))

    @app.errorhandler(Unavailable)
    async def unavailable(error: Unavailable) -> tuple[Response, int]:
        return error_response(error.status, str(error))

    @app.errorhandler(Conflict)
    async def conflict(error: Conflict) -> tuple[Response, int]:
        return error_response(409, str(error))

    ctx = Context(
        registry=registry,
        listeners=listeners,
        action=action,
        authorized=authorized,
        # read at each request, so that a test can shorten it
        ask_timeout=lambda: ASK_TIMEOUT,
        metrics=metrics_registry(registry, started_at),
        started_at=started_at,
        started=started,
        log_level=log_level,
        set_log_level=set_log_level,
        ready_requires_upstream=ready_requires_upstream,
    )
    health.register(app, ctx)
    metrics.register(app, ctx)
    upstreams.register(app, ctx)
    clients.register(app, ctx)
    broadcast.register(app, ctx)
    cluster.register(app, ctx)
    runtime.register(app, ctx)
    events.register(app, ctx)
    dashboard.register(app, ctx)
    return app
