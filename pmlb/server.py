"""The nursery tree: the one place that starts everything pmlb runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import attrs
import trio
import trio_asyncio

from pmlb.config import Config, ListenerConfig, UpstreamConfig
from pmlb.downstream.tcp import open_listeners, serve_tcp_listener
from pmlb.downstream.websocket import serve_websocket_listener
from pmlb.registry import Registry
from pmlb.upstream.discovery import nameserver_resolver, run_dns_discovery, system_resolve
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
    _stop: trio.Event = attrs.field(alias="stop")
    _upstream_nursery: trio.Nursery = attrs.field(alias="upstream_nursery")
    _transport_factory: Callable[[UpstreamConfig], Transport] = attrs.field(
        alias="transport_factory"
    )

    def add_upstream(self, config: UpstreamConfig) -> Upstream:
        """Start supervising a new upstream; ``ValueError`` if its address is taken."""
        upstream = self.registry.add_upstream(config)
        self._upstream_nursery.start_soon(
            supervise, upstream, self.registry, self._transport_factory
        )
        return upstream

    async def remove_upstream(self, address: str) -> None:
        """Stop and remove the upstream at ``address``; its queued messages fail over.

        ``KeyError`` if there is no such upstream.
        """
        upstream = self.registry.upstreams[address]
        upstream.cancel_scope.cancel()
        await upstream.removed.wait()

    def stop(self) -> None:
        """Stop gracefully: stop accepting, close clients, then close upstream streams."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def port(self, listener: str = "default") -> int:
        """The bound port of ``listener`` (handy when the config asked for port 0)."""
        return int(self.listeners[listener][0].rsplit(":", 1)[1])


async def serve(
    config: Config,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run pmlb with ``config`` until cancelled or stopped.

    Use it as ``server = await nursery.start(pmlb.serve, config)``: it returns
    once every listener is accepting, with a :class:`Server` that gives the
    bound addresses, the registry, and :meth:`Server.stop`. Raises
    :class:`pmlb.ListenError` if a listener cannot bind.
    """
    registry = Registry(config)
    stop = trio.Event()
    # Bind every listener before starting anything, so that a taken port
    # fails at once with a plain ListenError.
    bound: list[tuple[ListenerConfig, list[trio.SocketListener]]] = []
    try:
        for listener in config.listeners:
            bound.append((listener, await open_listeners(listener)))
        async with trio_asyncio.open_loop() as loop, trio.open_nursery() as upstreams:

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

            def start_upstream(upstream_config: UpstreamConfig) -> Upstream:
                upstream = registry.add_upstream(upstream_config)
                upstreams.start_soon(supervise, upstream, registry, transport_factory)
                return upstream

            async def stop_upstream(address: str) -> None:
                upstream = registry.upstreams[address]
                upstream.cancel_scope.cancel()
                await upstream.removed.wait()

            for upstream_config in config.upstreams:
                if upstream_config.discovery == "dns":
                    resolve = (
                        nameserver_resolver(upstream_config.nameserver)
                        if upstream_config.nameserver
                        else system_resolve
                    )
                    upstreams.start_soon(
                        run_dns_discovery, upstream_config, start_upstream, stop_upstream, resolve
                    )
                else:
                    start_upstream(upstream_config)
            async with trio.open_nursery() as downstream:
                addresses = {}
                for listener, sockets in bound:
                    serve_listener = (
                        serve_websocket_listener
                        if listener.transport == "websocket"
                        else serve_tcp_listener
                    )
                    addresses[listener.name] = await downstream.start(
                        serve_listener, listener, sockets, registry
                    )
                task_status.started(
                    Server(
                        registry,
                        addresses,
                        stop=stop,
                        upstream_nursery=upstreams,
                        transport_factory=transport_factory,
                    )
                )
                await stop.wait()
                log.info("stopping: closing listeners and clients")
                downstream.cancel_scope.cancel()
            log.info("stopping: closing upstream streams")
            upstreams.cancel_scope.cancel()
    finally:
        # serve_listeners closes its listeners; these are for the paths
        # where it never ran.
        for _, sockets in bound:
            for socket_listener in sockets:
                await trio.aclose_forcefully(socket_listener)
    log.info("stopped")
