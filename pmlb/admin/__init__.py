"""The admin server: the QuartTrio app of :mod:`pmlb.admin.app` on hypercorn, in pmlb's tree."""

from __future__ import annotations

import logging
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from pmlb.admin import _h2
from pmlb.admin.app import create_app
from pmlb.admin.audit import make_logger_class, networks
from pmlb.config import ManagementConfig
from pmlb.registry import Registry

log = logging.getLogger("pmlb.admin")


async def serve_admin(
    management: ManagementConfig,
    registry: Registry,
    listeners: dict[str, list[str]],
    *,
    bind: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin API until cancelled; ``task_status`` gets its URL once it accepts.

    ``bind`` (hypercorn's form: ``HOST:PORT``, ``unix:/PATH``) replaces
    ``management``'s address. Raises ``OSError`` if its address cannot be bound.
    """
    _h2.install()
    app = create_app(
        registry,
        listeners=listeners,
        token=management.token,
        public_metrics=management.public_metrics,
        ready_requires_upstream=management.ready_requires_upstream,
        bind_host=management.host,
        allowed_hosts=management.allowed_hosts,
        allowed_origins=management.allowed_origins,
        trusted_proxies=management.trusted_proxies,
    )
    config = HypercornConfig()
    config.bind = [bind or management.address]
    # hypercorn's lines through pmlb's logging: its errors, and one line
    # with fields per request (pmlb.admin.audit)
    config.accesslog = None
    config.logger_class = make_logger_class(networks(management.trusted_proxies))
    config.errorlog = logging.getLogger("pmlb.admin.http")
    config.graceful_timeout = 1.0
    if management.tls is not None and management.tls.cert_path:
        config.certfile = management.tls.cert_path
        config.keyfile = management.tls.key_path
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(hypercorn_serve, app, config))
        url = binds[0]
        if bind is None:
            log.info("admin listening", extra={"url": url, "token": bool(management.token)})
        else:  # a worker's, behind the parent's front (pmlb.workers.front)
            log.info("worker admin listening", extra={"url": url})
        task_status.started(url)
