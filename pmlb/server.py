"""The nursery tree: the one place that starts everything pmlb runs."""

from __future__ import annotations

import logging
import ssl
from functools import partial

import attrs
import trio
import trio_asyncio

from pmlb.config import Config, ListenerConfig, UpstreamConfig, check_admin_exposure
from pmlb.downstream.tcp import ListenError, open_listeners, serve_tcp_listener
from pmlb.downstream.websocket import serve_websocket_listener
from pmlb.registry import Registry
from pmlb.upstream.discovery import (
    Discovery,
    nameserver_resolver,
    run_dns_discovery,
    system_resolve,
)
from pmlb.upstream.grpc_health import GrpcHealthTransport
from pmlb.upstream.grpclib_transport import GrpclibTransport
from pmlb.upstream.h2_transport import H2Transport
from pmlb.upstream.supervisor import Upstream, supervise
from pmlb.upstream.tls import upstream_ssl_context
from pmlb.upstream.transport import Transport

log = logging.getLogger("pmlb.server")


@attrs.define(eq=False)
class Server:
    """A running pmlb, as :func:`serve` reports it through ``task_status``."""

    registry: Registry
    #: bound addresses (``host:port``) by listener name
    listeners: dict[str, list[str]]
    #: the admin API's URL (``None`` when it is disabled)
    admin_url: str | None = None

    def add_upstream(self, config: UpstreamConfig) -> Upstream:
        """Start supervising a new upstream; ``ValueError`` if its address is taken."""
        return self.registry.start_upstream(config)

    async def remove_upstream(self, address: str) -> None:
        """Stop and remove the upstream at ``address``; its queued messages fail over.

        ``KeyError`` if there is no such upstream.
        """
        await self.registry.remove_upstream(address)

    def stop(self) -> None:
        """Start a graceful drain; :func:`serve` returns once it is done.

        The drain stops accepting (the listeners close, ``/readyz`` answers
        503), closes the clients spread evenly over ``drain_period`` seconds
        (each stops being read, gets what is queued for it written, and is
        closed: WebSocket clients with code 1001), waits until the messages
        accepted from clients are written to upstream streams, then closes
        the upstream streams. Whatever is left after ``drain_timeout``
        seconds is stopped at once. To stop at once instead, cancel the
        nursery :func:`serve` runs in. Calling it again changes nothing.
        """
        self.registry.request_stop()

    @property
    def stopping(self) -> bool:
        return self.registry.stop_requested.is_set()

    def port(self, listener: str = "default") -> int:
        """The bound port of ``listener`` (handy when the config asked for port 0)."""
        return int(self.listeners[listener][0].rsplit(":", 1)[1])


async def serve(
    config: Config,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run pmlb with ``config`` until cancelled, or stopped and drained.

    Use it as ``server = await nursery.start(pmlb.serve, config)``: it returns
    once every listener is accepting, with a :class:`Server` that gives the
    bound addresses, the registry, and :meth:`Server.stop`. Raises
    :class:`pmlb.ListenError` if a listener or the admin cannot bind, and
    :class:`pmlb.ConfigError` if the admin would listen beyond loopback
    without a token.
    """
    check_admin_exposure(config)
    _check_admin_tls(config)
    registry = Registry(config)
    # Bind every listener before starting anything, so that a taken port
    # fails at once with a plain ListenError.
    bound: list[tuple[ListenerConfig, list[trio.SocketListener]]] = []
    try:
        for listener in config.listeners:
            bound.append((listener, await open_listeners(listener)))
        async with (
            trio_asyncio.open_loop() as loop,
            trio.open_nursery() as admin,
            trio.open_nursery() as upstreams,
        ):

            def stream_transport(upstream: UpstreamConfig) -> Transport:
                ssl_context = partial(upstream_ssl_context, upstream) if upstream.tls else None
                server_name = upstream.tls_server_name or None
                if upstream.transport == "grpclib":
                    return GrpclibTransport(
                        upstream.host,
                        upstream.port,
                        loop,
                        ssl_context=ssl_context,
                        server_name=server_name,
                    )
                return H2Transport(
                    upstream.host,
                    upstream.port,
                    ssl_context=ssl_context,
                    server_name=server_name,
                )

            def transport_factory(upstream: UpstreamConfig) -> Transport:
                transport = stream_transport(upstream)
                if upstream.health != "grpc":
                    return transport
                return GrpcHealthTransport(
                    transport,
                    upstream.host,
                    upstream.port,
                    loop,
                    service=upstream.health_service,
                    ssl_context=partial(upstream_ssl_context, upstream) if upstream.tls else None,
                    server_name=upstream.tls_server_name or None,
                )

            if config.cluster.enabled:
                # Imported here: coredis is loaded only by a pmlb in a cluster.
                from pmlb.cluster import Bus

                # In the admin nursery: it outlives the clients' drain (their
                # removals reach Redis) and is cancelled with the admin.
                registry.cluster = await admin.start(Bus(config.cluster, registry).run)

            registry.attach_supervisor(
                lambda upstream: upstreams.start_soon(
                    supervise, upstream, registry, transport_factory
                )
            )

            registry.attach_discovery(
                lambda entry: upstreams.start_soon(_run_discovery, entry, registry)
            )
            for upstream_config in config.upstreams:
                if upstream_config.discovery == "dns":
                    registry.start_discovery(upstream_config)
                else:
                    registry.start_upstream(upstream_config)
            # Connections live in `downstream`, accept loops in `accepting`:
            # a drain ends the accept loops (closing the listeners) and keeps
            # the clients until it closes them.
            async with trio.open_nursery() as downstream:
                async with trio.open_nursery() as accepting:
                    addresses = {}
                    for listener, sockets in bound:
                        serve_listener = (
                            serve_websocket_listener
                            if listener.transport == "websocket"
                            else serve_tcp_listener
                        )
                        addresses[listener.name] = await accepting.start(
                            partial(serve_listener, connections=downstream),
                            listener,
                            sockets,
                            registry,
                        )
                    admin_url = None
                    if config.management.enabled:
                        admin_url = await _start_admin(admin, config, registry, addresses)
                        if registry.cluster is not None:
                            registry.cluster.admin_url = admin_url
                    task_status.started(Server(registry, addresses, admin_url))
                    await registry.stop_requested.wait()
                    log.info("stopping: closing listeners and clients")
                    accepting.cancel_scope.cancel()
                deadline = trio.current_time() + config.drain_timeout
                with trio.move_on_at(deadline):
                    await registry.drain_clients(config.drain_period)
                downstream.cancel_scope.cancel()
            with trio.move_on_at(deadline) as flushing:
                await registry.flush_upstreams(config.drain_upstream_wait)
            if flushing.cancelled_caught or trio.current_time() >= deadline:
                log.warning(
                    "drain_timeout reached: stopping at once",
                    extra={"drain_timeout": config.drain_timeout},
                )
            if left := registry.awaiting_upstream():
                log.warning(
                    "stopping with accepted messages no upstream took",
                    extra={
                        "messages": left,
                        "upstreams_serving": registry.statistics().upstreams_serving,
                    },
                )
            log.info("stopping: closing upstream streams")
            upstreams.cancel_scope.cancel()
            admin.cancel_scope.cancel()
    finally:
        # serve_listeners closes its listeners; these are for the paths
        # where it never ran.
        for _, sockets in bound:
            for socket_listener in sockets:
                await trio.aclose_forcefully(socket_listener)
    log.info("stopped")


async def _run_discovery(entry: Discovery, registry: Registry) -> None:
    config = entry.config
    resolve = nameserver_resolver(config.nameserver) if config.nameserver else system_resolve

    def add(upstream: UpstreamConfig) -> None:
        registry.start_upstream(upstream)
        entry.addresses.add(upstream.address)

    async def remove(address: str) -> None:
        entry.addresses.discard(address)
        await registry.remove_upstream(address)

    with entry.cancel_scope:
        await run_dns_discovery(config, add, remove, resolve)


async def _start_admin(
    nursery: trio.Nursery, config: Config, registry: Registry, listeners: dict[str, list[str]]
) -> str:
    # Imported here: the admin app pulls in Quart, which a pmlb embedded
    # without an admin does not need to load.
    from pmlb.admin import serve_admin

    try:
        url: str = await nursery.start(serve_admin, config.management, registry, listeners)
    except (OSError, BaseExceptionGroup) as exc:
        # hypercorn binds inside its own nurseries, so the error may come in a group.
        error = _first_os_error(exc)
        if error is None:
            raise
        raise ListenError(
            f"admin (management_server): cannot listen on {config.management.address}: "
            f"{error.strerror or error}"
        ) from exc
    return url


def _check_admin_tls(config: Config) -> None:
    """Load the admin's certificate once up front, so a bad file is a plain error at start."""
    tls = config.management.tls
    if not config.management.enabled or tls is None or not tls.cert_path:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            tls.cert_path, tls.key_path
        )
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc)
        raise ListenError(
            "admin (management_server) cannot load its TLS files"
            f" (cert_path {tls.cert_path!r}, key_path {tls.key_path!r}): {reason}"
        ) from exc


def _first_os_error(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _first_os_error(inner)) is not None:
                return found
    return None
