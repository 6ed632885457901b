"""The command line: ``pmlb serve``, ``pmlb check-config``, ``pmlb demo``, ``pmlb ctl``."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import attrs
import trio

from pmlb import _log, ctl, sdnotify
from pmlb._version import DISTRIBUTION, pmlb_version
from pmlb.codecs import Framing
from pmlb.config import (
    Config,
    ConfigError,
    ListenerConfig,
    ManagementConfig,
    UpstreamConfig,
    apply_overrides,
    check_admin_exposure,
    load_with_environment,
    read_environment,
    render_config,
)
from pmlb.downstream.tcp import ListenError
from pmlb.reload import ReloadUnavailable
from pmlb.server import Server, serve

log = logging.getLogger("pmlb.server")

DEMO_UPSTREAM_STOP_TIMEOUT = 30.0
_FRAMINGS = [framing.value for framing in Framing]


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("overrides (take precedence over the file)")
    group.add_argument("--host", help="address of the first listener")
    group.add_argument("--port", type=int, help="port of the first listener (0: any free port)")
    group.add_argument("--framing", choices=_FRAMINGS, help="framing of the first listener")
    group.add_argument(
        "--max-message-size", type=int, metavar="BYTES", help="of the first listener"
    )
    group.add_argument("--activity-window", type=float, metavar="SECONDS")
    group.add_argument(
        "--upstream",
        action="append",
        metavar="HOST:PORT",
        help="an upstream (repeat for several); replaces the file's upstreams",
    )
    group.add_argument(
        "--upstream-transport",
        choices=["native", "grpclib"],
        help="the gRPC transport of every upstream",
    )
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    group.add_argument("--log-format", choices=["text", "json"])
    group.add_argument(
        "--balancing",
        choices=["round_robin", "sticky", "hash", "least_loaded"],
        help="the balancing policy (default round_robin)",
    )
    group.add_argument(
        "--cluster-redis",
        metavar="URL",
        help="join a cluster through this Redis (redis://HOST:PORT/DB or unix:///PATH)",
    )
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes sharing the listeners (0: one per core; default 1)",
    )
    _add_admin_flags(group)


def _add_admin_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--admin-host", metavar="HOST", help="admin API address")
    group.add_argument("--admin-port", type=int, metavar="PORT", help="admin API port (0: any)")
    group.add_argument(
        "--admin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the admin API (token: the PMLB_ADMIN_TOKEN environment variable)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pmlb", description="Long-lived client sockets in front of gRPC upstreams."
    )
    parser.add_argument(
        "--version", action="version", version=f"pmlb {pmlb_version()} ({DISTRIBUTION})"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_cmd = commands.add_parser("serve", help="run the proxy")
    serve_cmd.add_argument(
        "--config", "-c", metavar="FILE", help="TOML configuration (default: safe defaults)"
    )
    _add_overrides(serve_cmd)

    check = commands.add_parser(
        "check-config", help="validate a configuration and print the effective one"
    )
    check.add_argument("config", metavar="FILE")
    _add_overrides(check)

    ctl.add_parser(commands)

    demo = commands.add_parser(
        "demo", help="run pmlb with the demo echo upstream: then `nc 127.0.0.1 7999`"
    )
    demo.add_argument(
        "--host", default="127.0.0.1", help="client listener address (default 127.0.0.1)"
    )
    demo.add_argument("--port", type=int, default=7999, help="client listener port (default 7999)")
    demo.add_argument("--framing", choices=_FRAMINGS, default="raw")
    demo.add_argument(
        "--admin-port",
        type=int,
        default=8000,
        help="admin API and dashboard port on 127.0.0.1 (default 8000; 0: any; -1: none)",
    )
    demo.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    return parser


def _config(args: argparse.Namespace, path: str | None) -> Config:
    # The file, then the environment (PMLB_SERVER_PORT, ...), then the flags.
    config = load_with_environment(path)
    return apply_overrides(
        config,
        host=args.host,
        port=args.port,
        framing=args.framing,
        max_message_size=args.max_message_size,
        activity_window=args.activity_window,
        upstreams=args.upstream,
        log_level=args.log_level,
        log_format=args.log_format,
        upstream_transport=args.upstream_transport,
        balancing=args.balancing,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        admin=args.admin,
        cluster_redis=args.cluster_redis,
        workers=getattr(args, "workers", None),
    )


async def _serve_then_cancel(
    config: Config,
    cancel_scope: trio.CancelScope,
    load: Callable[[], Config] | None,
    notifier: sdnotify.Notifier,
    options: dict[str, Any],
    *,
    task_status: trio.TaskStatus[Server],
) -> None:
    await serve(config, load=load, notifier=notifier, task_status=task_status, **options)
    cancel_scope.cancel()


async def _reload(server: Server) -> None:
    # The reloader logs what it did, or why it refused: nothing more to say here.
    with contextlib.suppress(ConfigError):
        try:
            await server.reload()
        except ReloadUnavailable as exc:
            log.warning("SIGHUP: nothing reloaded", extra={"reason": str(exc)})


#: seconds between the STATUS= lines a serving pmlb sends systemd
STATUS_INTERVAL = 10.0


def status_line(server: Server) -> str:
    """What ``systemctl status`` shows while pmlb serves."""
    stats = server.registry.statistics()
    return (
        f"serving {stats.clients} clients;"
        f" {stats.upstreams_serving} of {stats.upstreams} upstreams serving"
    )


def _listening(server: Server) -> str:
    listeners = ", ".join(
        f"{name} {' '.join(addresses)}" for name, addresses in server.listeners.items()
    )
    return f"listening: {listeners}" + (f"; admin {server.admin_url}" if server.admin_url else "")


async def _notify_status(server: Server, notifier: sdnotify.Notifier) -> None:
    # Until the drain starts: then STOPPING=1 is the last word.
    with trio.CancelScope() as scope:

        async def stop_on_drain() -> None:
            await server.registry.stop_requested.wait()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_drain)
            while True:
                await trio.sleep(STATUS_INTERVAL)
                notifier.status(status_line(server))
    notifier.stopping("draining: closing listeners and clients")


#: a task run beside the server that may stop it (a worker's orders from its parent)
Control = Callable[[Server, trio.CancelScope], Awaitable[None]]


async def run_until_signalled(
    config: Config,
    notifier: sdnotify.Notifier | None = None,
    load: Callable[[], Config] | None = None,
    *,
    control: Control | None = None,
    **options: Any,
) -> None:
    """Serve until SIGINT or SIGTERM: the first stops gracefully, a second at once.

    SIGHUP reloads the configuration with ``load`` (see :mod:`pmlb.reload`).
    ``notifier`` tells systemd (``Type=notify``) when pmlb is ready, reloads
    and stops; by default one reading ``$NOTIFY_SOCKET``. ``options`` go to
    :func:`pmlb.serve`; ``control`` runs beside it.
    """
    notifier = notifier or sdnotify.Notifier()
    # Signals are taken over before anything starts: under trio-asyncio the
    # default KeyboardInterrupt can land anywhere, so pmlb cancels itself.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                _serve_then_cancel, config, nursery.cancel_scope, load, notifier, options
            )
            if control is not None:
                nursery.start_soon(control, server, nursery.cancel_scope)
            # Every listener and the admin are bound and accepting now.
            notifier.ready(_listening(server))
            nursery.start_soon(_notify_status, server, notifier)
            nursery.start_soon(notifier.run_watchdog)
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    log.info("signal received: reloading", extra={"signal": name})
                    nursery.start_soon(_reload, server)
                elif server.stopping:
                    log.warning("second signal: stopping now", extra={"signal": name})
                    nursery.cancel_scope.cancel()
                else:
                    log.info("signal received: stopping", extra={"signal": name})
                    server.stop()


#: gc thresholds for a serving pmlb; see tune_gc()
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Collect cyclic garbage less often than Python's default (every 700 allocations).

    With 19,500 clients held, tearing them down (each close makes a few
    exception-and-traceback cycles) at the default thresholds ran a
    collection over the whole heap every few closes: 19.5 CPU s for the
    teardown, and new connections accepted at 210/s meanwhile instead of
    1,270/s. Memory stays bounded: a collection still runs every 50,000
    allocations.
    """
    gc.set_threshold(*GC_THRESHOLDS)


def run(
    config: Config,
    load: Callable[[], Config] | None = None,
    *,
    control: Control | None = None,
    **options: Any,
) -> int:
    """Serve ``config`` until signalled; the exit code (1: a listener cannot bind)."""
    code = 0
    tune_gc()
    try:
        trio.run(partial(run_until_signalled, config, None, load, control=control, **options))
    except* ListenError as group:
        for exc in _leaves(group):
            print(f"pmlb: {exc}", file=sys.stderr)
        code = 1
    return code


def _leaves(group: BaseExceptionGroup[ListenError]) -> list[BaseException]:
    # The error may come from a nursery inside a nursery: print the errors themselves.
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return leaves


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args, args.config)
    check_admin_exposure(config)
    _log.configure(config.log.level, config.log.format)

    def load() -> Config:
        # The file again, with the same flags on top: they keep precedence.
        return _config(args, args.config)

    if config.workers != 1:
        # Imported here: a single pmlb does not load the supervisor.
        from pmlb.workers.run import run_workers

        return run_workers(config, load, {**vars(args), "handler": None})
    return run(config, load)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate as ``pmlb serve`` does (same errors, same exit code), then print the config."""
    config = _config(args, args.config)
    check_admin_exposure(config)
    shown = config
    if config.management.token:  # a secret: never printed
        shown = attrs.evolve(config, management=attrs.evolve(config.management, token="***"))
    if config.cluster.redis_url:  # its password too
        url = _hide_password(config.cluster.redis_url)
        shown = attrs.evolve(shown, cluster=attrs.evolve(config.cluster, redis_url=url))
    header, _, body = render_config(shown).partition("\n")
    names = read_environment().names
    if names:  # the names only: a value may be a secret
        header += "\n# with the environment's " + ", ".join(names)
    print(header, body, sep="\n", end="")
    return 0


def _hide_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))


def cmd_demo(args: argparse.Namespace) -> int:
    _log.configure(args.log_level)
    upstream = subprocess.Popen(
        [sys.executable, "-m", "pmlb.demo_upstream", "--port", "0", "--exit-with-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None
        line = upstream.stdout.readline()
        if not line.startswith("LISTENING "):
            print("pmlb: the demo upstream did not start", file=sys.stderr)
            return 1
        port = int(line.split()[1])
        config = Config(
            listeners=(ListenerConfig(host=args.host, port=args.port, framing=args.framing),),
            upstreams=(UpstreamConfig(host="127.0.0.1", port=port),),
            management=ManagementConfig(port=args.admin_port, enabled=args.admin_port >= 0),
        )
        dashboard = f"; dashboard: http://127.0.0.1:{args.admin_port}/" if args.admin_port else ""
        print(
            f"pmlb demo: echo upstream on 127.0.0.1:{port}; clients: nc {args.host} {args.port}"
            f"{dashboard} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        return run(config)
    finally:
        upstream.terminate()
        try:
            upstream.wait(timeout=DEMO_UPSTREAM_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            upstream.kill()
            upstream.wait()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    handlers = {
        "serve": cmd_serve,
        "check-config": cmd_check_config,
        "demo": cmd_demo,
        "ctl": ctl.run,
    }
    try:
        code = handlers[args.command](args)
    except ConfigError as exc:
        print(f"pmlb: invalid configuration\n{exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
