"""The nursery tree: the one place that starts everything pmlb runs."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import attrs
import trio
import trio_asyncio

from pmlb.config import (
    Config,
    ConfigError,
    ListenerConfig,
    UpstreamConfig,
    check_admin_exposure,
    load_config,
)
from pmlb.downstream.tcp import (
    ListenError,
    open_listeners,
    serve_tcp_listener,
    server_ssl_context,
)
from pmlb.downstream.websocket import serve_websocket_listener
from pmlb.registry import Registry
from pmlb.reload import Plan, ReloadUnavailable, plan
from pmlb.sdnotify import Notifier
from pmlb.upstream.discovery import (
    Discovery,
    nameserver_resolver,
    run_dns_discovery,
    system_resolve,
)
from pmlb.upstream.grpc_health import GrpcHealthTransport
from pmlb.upstream.grpclib_transport import GrpclibTransport
from pmlb.upstream.h2_guard import FrameGuard
from pmlb.upstream.h2_transport import H2Transport
from pmlb.upstream.state import Upstream
from pmlb.upstream.supervisor import supervise
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

    async def reload(self) -> Plan:
        """Load the configuration again and apply what changed (see :mod:`pmlb.reload`).

        Raises :class:`pmlb.ConfigError` with every problem if the new
        configuration is unusable (nothing changes then), and
        :class:`ReloadUnavailable` when there is nothing to reload from or
        pmlb is draining.
        """
        if self.registry.reloader is None:
            raise ReloadUnavailable("this pmlb has no configuration to reload")
        return await self.registry.reloader()

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


def upstream_guard(upstream: UpstreamConfig) -> Callable[[], FrameGuard]:
    """Makes the frame guard of each connection to ``upstream``, with its configured limits."""
    return partial(
        FrameGuard,
        max_header_block=upstream.max_header_block,
        control_burst=upstream.control_frame_burst,
        control_rate=upstream.control_frame_rate,
    )


async def serve(
    config: Config,
    *,
    sockets: Mapping[str, Sequence[socket.socket]] | None = None,
    admin_bind: str | None = None,
    load: Callable[[], Config] | None = None,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run pmlb with ``config`` until cancelled, or stopped and drained.

    Use it as ``server = await nursery.start(pmlb.serve, config)``: it returns
    once every listener is accepting, with a :class:`Server` that gives the
    bound addresses, the registry, and :meth:`Server.stop`. Raises
    :class:`pmlb.ListenError` if a listener or the admin cannot bind, and
    :class:`pmlb.ConfigError` if the admin would listen beyond loopback
    without a token.

    ``sockets`` (listening sockets by listener name, bound already) and
    ``admin_bind`` (the admin's address in hypercorn's form, such as
    ``unix:/PATH``, instead of ``[management_server]``'s) are how a worker
    of ``pmlb serve --workers`` runs on what its parent bound.

    ``load`` gives the configuration a reload (:meth:`Server.reload`, the
    admin API's ``POST /api/v1/runtime/reload``) applies; by default the
    file ``config`` came from, if any. ``notifier`` is told when a reload
    starts and ends (systemd's ``RELOADING=1`` and ``READY=1``).
    """
    check_admin_exposure(config)
    _check_admin_tls(config)
    registry = Registry(config)
    # A config parsed from data is named "<config>" (or whatever the caller
    # chose in angle brackets): there is no file to read again.
    if load is None and config.source is not None and not config.source.startswith("<"):
        source = config.source

        def load() -> Config:
            return load_config(source)

    # Bind every listener before starting anything, so that a taken port
    # fails at once with a plain ListenError.
    bound: list[tuple[ListenerConfig, list[trio.SocketListener]]] = []
    try:
        for listener in config.listeners:
            if sockets is None:
                bound.append((listener, await open_listeners(listener)))
                continue
            if listener.uses_tls:
                server_ssl_context(listener)  # fail before anything starts
            given = [
                trio.SocketListener(trio.socket.from_stdlib_socket(s))
                for s in sockets[listener.name]
            ]
            bound.append((listener, given))
        async with (
            trio_asyncio.open_loop() as loop,
            trio.open_nursery() as admin,
            trio.open_nursery() as upstreams,
        ):

            def stream_transport(
                upstream: UpstreamConfig,
                ssl_context: Callable[[], ssl.SSLContext] | None,
                server_name: str | None,
            ) -> Transport:
                guard = upstream_guard(upstream)
                if upstream.transport == "grpclib":
                    return GrpclibTransport(
                        upstream.host,
                        upstream.port,
                        loop,
                        ssl_context=ssl_context,
                        server_name=server_name,
                        guard=guard,
                        max_message_size=upstream.max_reply_size,
                    )
                return H2Transport(
                    upstream.host,
                    upstream.port,
                    ssl_context=ssl_context,
                    server_name=server_name,
                    guard=guard,
                    max_message_size=upstream.max_reply_size,
                )

            def transport_factory(upstream: UpstreamConfig) -> Transport:
                # One TLS context factory for the stream and its health checks.
                ssl_context = partial(upstream_ssl_context, upstream) if upstream.tls else None
                server_name = upstream.tls_server_name or None
                transport = stream_transport(upstream, ssl_context, server_name)
                if upstream.health != "grpc":
                    return transport
                return GrpcHealthTransport(
                    transport,
                    upstream.host,
                    upstream.port,
                    loop,
                    service=upstream.health_service,
                    ssl_context=ssl_context,
                    server_name=server_name,
                    guard=upstream_guard(upstream),
                )

            if config.cluster.enabled:
                # Imported here: coredis is loaded only by a pmlb in a cluster.
                from pmlb.cluster import Bus

                # In the admin nursery: it outlives the clients' drain (their
                # removals reach Redis) and is cancelled with the admin.
                registry.cluster = await admin.start(Bus(config.cluster, registry).run)

            registry.attach_supervisor(
                lambda upstream: upstreams.start_soon(
                    supervise, upstream, registry.upstream_table, transport_factory
                )
            )

            registry.attach_discovery(
                lambda entry: upstreams.start_soon(_run_discovery, entry, registry)
            )
            runtime = _Runtime(registry, upstreams, load, notifier or Notifier({}))
            for upstream_config in config.upstreams:
                runtime.start_upstream(upstream_config)
            # Connections live in `downstream`, accept loops in `accepting`:
            # a drain ends the accept loops (closing the listeners) and keeps
            # the clients until it closes them.
            async with trio.open_nursery() as downstream:
                async with trio.open_nursery() as accepting:
                    runtime.accepting, runtime.downstream = accepting, downstream
                    for listener, socks in bound:
                        await runtime.start_listener(listener, socks)
                    bound.clear()  # the listener tasks own (and close) them now
                    addresses = runtime.addresses
                    admin_url = None
                    if config.management.enabled:
                        admin_url = await _start_admin(
                            admin, config, registry, addresses, admin_bind
                        )
                        if registry.cluster is not None:
                            registry.cluster.admin_url = admin_url
                    registry.reloader = runtime.reload if load is not None else None
                    task_status.started(Server(registry, addresses, admin_url))
                    await registry.stop_requested.wait()
                    log.info("stopping: closing listeners and clients")
                    async with runtime.lock:  # a reload under way finishes first
                        accepting.cancel_scope.cancel()
                # A reload may have changed the drain timings: read them now.
                config = registry.config
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
        for _, socks in bound:
            for socket_listener in socks:
                await trio.aclose_forcefully(socket_listener)
    log.info("stopped")


@attrs.define(eq=False)
class _Listening:
    """One listener's accept loop: cancelling ``scope`` closes it; ``done`` once closed."""

    config: ListenerConfig
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)


class _Runtime:
    """What a reload changes while pmlb runs: its listeners, upstreams and settings."""

    def __init__(
        self,
        registry: Registry,
        upstreams: trio.Nursery,
        load: Callable[[], Config] | None,
        notifier: Notifier,
    ) -> None:
        self.registry = registry
        self.upstreams = upstreams
        self.load = load
        self.notifier = notifier
        #: set once the listeners' nurseries are open
        self.accepting: trio.Nursery | None = None
        self.downstream: trio.Nursery | None = None
        #: bound addresses by listener name (the admin and Server read this one dict)
        self.addresses: dict[str, list[str]] = {}
        self.listening: dict[str, _Listening] = {}
        self.lock = trio.Lock()

    # -- listeners --

    async def start_listener(
        self, listener: ListenerConfig, sockets: list[trio.SocketListener]
    ) -> None:
        assert self.accepting is not None
        running = _Listening(listener)
        self.addresses[listener.name] = await self.accepting.start(
            self._serve_listener, running, sockets
        )
        self.listening[listener.name] = running

    async def _serve_listener(
        self,
        running: _Listening,
        sockets: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[str]],
    ) -> None:
        listener = running.config
        serve_listener = (
            serve_websocket_listener if listener.transport == "websocket" else serve_tcp_listener
        )
        try:
            with running.scope:
                async with trio.open_nursery() as nursery:
                    addresses = await nursery.start(
                        partial(serve_listener, connections=self.downstream),
                        listener,
                        sockets,
                        self.registry,
                    )
                    task_status.started(addresses)
        finally:
            running.done.set()

    async def stop_listener(self, name: str) -> None:
        """Stop accepting on ``name``; its clients stay connected."""
        running = self.listening.pop(name)
        self.addresses.pop(name, None)
        running.scope.cancel()
        await running.done.wait()
        log.info("listener closed", extra={"listener": name})

    # -- upstreams --

    def start_upstream(self, config: UpstreamConfig) -> None:
        if config.discovery == "dns":
            self.registry.start_discovery(config)
        else:
            self.registry.start_upstream(config)

    async def retire_upstream(self, config: UpstreamConfig) -> None:
        """Drain and remove the upstream(s) ``config`` started (an entry gone from the file)."""
        if config.discovery != "dns":
            await self._drain_upstream(config.address)
            return
        entry = self.registry.discoveries.get(config.address)
        if entry is None:
            return  # removed meanwhile (through the admin API)
        entry.cancel_scope.cancel()  # no more lookups: it finds nothing new meanwhile
        async with trio.open_nursery() as nursery:
            for address in sorted(entry.addresses):
                nursery.start_soon(self._drain_upstream, address)
        with contextlib.suppress(KeyError):
            await self.registry.stop_discovery(config.address)

    async def _drain_upstream(self, address: str) -> None:
        if address not in self.registry.upstreams:
            return  # removed meanwhile (through the admin API)
        with contextlib.suppress(KeyError):
            await self.registry.drain_upstream(address, grace=self.registry.config.drain_timeout)

    async def replace_upstream(self, old: UpstreamConfig, new: UpstreamConfig) -> None:
        await self.retire_upstream(old)
        try:
            self.start_upstream(new)
        except ValueError as exc:  # taken meanwhile (through the admin API)
            log.warning("reload: upstream not started", extra={"reason": str(exc)})

    # -- reload --

    async def reload(self) -> Plan:
        """Load the configuration and apply what changed; see :meth:`Server.reload`."""
        if self.load is None:
            raise ReloadUnavailable("this pmlb has no configuration to reload")
        async with self.lock:
            if self.registry.stop_requested.is_set():
                raise ReloadUnavailable("pmlb is draining: nothing is reloaded")
            self.notifier.reloading("reloading the configuration")
            try:
                new = await trio.to_thread.run_sync(self.load)
                check_admin_exposure(new)
                change = plan(self.registry.config, new)
                bound = await self._bind(change)
            except ConfigError as error:
                log.error(
                    "reload refused: the configuration is unusable; nothing changed",
                    extra={"problems": "; ".join(error.problems)},
                )
                self.notifier.ready("reload refused: " + "; ".join(error.problems))
                self.registry.count_reload(applied=False)
                raise
            await self._apply(change, bound)
            self.registry.count_reload(applied=True)
            self.notifier.ready(_summary(change))
            return change

    async def _bind(self, change: Plan) -> dict[str, list[trio.SocketListener]]:
        """Bind what the plan adds before changing anything: a failure changes nothing."""
        bound: dict[str, list[trio.SocketListener]] = {}
        source = change.config.source or "configuration"
        same_address = {
            old.name
            for old, new in change.listeners_changed
            if (old.host.lower(), old.port) == (new.host.lower(), new.port) and new.port != 0
        }
        try:
            for listener in change.listeners_added + tuple(n for _, n in change.listeners_changed):
                if listener.name in same_address:
                    # Bound once the old one has closed; its TLS files are checked now.
                    if listener.uses_tls:
                        server_ssl_context(listener)
                    continue
                bound[listener.name] = await open_listeners(listener)
        except ListenError as error:
            for sockets in bound.values():
                for socket_listener in sockets:
                    await trio.aclose_forcefully(socket_listener)
            raise ConfigError(f"{source}: {error}") from None
        return bound

    async def _apply(self, change: Plan, bound: dict[str, list[trio.SocketListener]]) -> None:
        registry = self.registry
        old = registry.config
        registry.config = change.config
        if "server.balancing" in change.settings:
            registry.set_policy(change.config.balancing)
        if "log.level" in change.settings:
            logging.getLogger("pmlb").setLevel(change.config.log.level.upper())

        for listener in change.listeners_removed:
            await self.stop_listener(listener.name)
        for previous, listener in change.listeners_changed:
            await self.stop_listener(previous.name)
            sockets = bound.get(listener.name)
            try:
                if sockets is None:
                    sockets = await open_listeners(listener)
                await self.start_listener(listener, sockets)
            except ListenError as error:
                log.error("reload: listener not restarted", extra={"reason": str(error)})
        for listener in change.listeners_added:
            await self.start_listener(listener, bound[listener.name])

        for upstream in change.upstreams_removed:
            self.upstreams.start_soon(self.retire_upstream, upstream)
        for old_upstream, upstream in change.upstreams_changed:
            self.upstreams.start_soon(self.replace_upstream, old_upstream, upstream)
        for upstream in change.upstreams_added:
            try:
                self.start_upstream(upstream)
            except ValueError as exc:  # added through the admin API already
                log.warning("reload: upstream not started", extra={"reason": str(exc)})

        summary = change.summary()
        registry.events.publish("runtime.reload", **summary)
        log.info(
            "configuration reloaded",
            extra={
                "source": change.config.source,
                "changes": _summary(change),
                "previous_source": old.source,
            },
        )
        if change.restart_required:
            log.warning(
                "reload: these keys changed but need a restart; they keep their old values",
                extra={"keys": ", ".join(change.restart_required)},
            )


def _summary(change: Plan) -> str:
    parts = []
    for what, items in (
        ("upstreams added", change.upstreams_added),
        ("upstreams removed", change.upstreams_removed),
        ("upstreams changed", change.upstreams_changed),
        ("listeners added", change.listeners_added),
        ("listeners removed", change.listeners_removed),
        ("listeners changed", change.listeners_changed),
        ("settings changed", change.settings),
    ):
        if items:
            parts.append(f"{len(items)} {what}")
    text = "reloaded: " + (", ".join(parts) if parts else "nothing changed")
    if change.restart_required:
        text += "; needs a restart: " + ", ".join(change.restart_required)
    return text


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
    nursery: trio.Nursery,
    config: Config,
    registry: Registry,
    listeners: dict[str, list[str]],
    bind: str | None = None,
) -> str:
    # Imported here: the admin app pulls in Quart, which a pmlb embedded
    # without an admin does not need to load.
    from pmlb.admin import serve_admin

    try:
        url: str = await nursery.start(
            partial(serve_admin, bind=bind), config.management, registry, listeners
        )
    except (OSError, BaseExceptionGroup) as exc:
        # hypercorn binds inside its own nurseries, so the error may come in a group.
        error = _first_os_error(exc)
        if error is None:
            raise
        raise ListenError(
            f"admin (management_server): cannot listen on {bind or config.management.address}: "
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
