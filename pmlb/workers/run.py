"""``pmlb serve --workers N``: bind, start the front and the workers, wait until stopped."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import trio

from pmlb.config import Config, format_address
from pmlb.downstream.tcp import ListenError, server_ssl_context
from pmlb.workers.front import start_front
from pmlb.workers.parent import Supervisor, check, worker_count
from pmlb.workers.sockets import bind_reuseport

log = logging.getLogger("pmlb.workers")


async def _main(config: Config, supervisor: Supervisor) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            if config.management.enabled:
                await start_front(nursery, config, supervisor)
            async with trio.open_nursery() as workers:
                for worker in supervisor.workers:
                    workers.start_soon(supervisor.supervise, worker)

                async def on_signals() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if signum == signal.SIGHUP:
                            log.info("signal received: reloading", extra={"signal": name})
                            nursery.start_soon(supervisor.reload)
                        elif supervisor.stopping:
                            log.warning(
                                "second signal: stopping workers now", extra={"signal": name}
                            )
                            supervisor.stop_at_once()
                        else:
                            log.info("signal received: draining workers", extra={"signal": name})
                            supervisor.request_stop()

                nursery.start_soon(on_signals)
                if supervisor.notifier.enabled:
                    nursery.start_soon(supervisor.notify_ready)
            nursery.cancel_scope.cancel()


def run_workers(
    config: Config, load: Callable[[], Config] | None = None, flags: dict[str, Any] | None = None
) -> int:
    """``pmlb serve`` with ``[server] workers`` other than 1; the exit code.

    ``load`` reads the configuration again (SIGHUP); ``flags`` are ``pmlb
    serve``'s parsed command line, which the workers apply to it as well.
    """
    count = worker_count(config)
    check(config, count)
    sockets: dict[str, list[list[int]]] = {}
    held = []
    try:
        for listener in config.listeners:
            if listener.uses_tls:
                server_ssl_context(listener)
            per_worker = bind_reuseport(listener, count)
            held += [s for group in per_worker for s in group]
            sockets[listener.name] = [[s.fileno() for s in group] for group in per_worker]
            for address in dict.fromkeys(_address(s.getsockname()) for s in per_worker[0]):
                log.info(
                    "listening",
                    extra={"listener": listener.name, "address": address, "workers": count},
                )
    except ListenError as exc:
        print(f"pmlb: {exc}", file=sys.stderr)
        for sock in held:
            sock.close()
        return 1
    supervisor = Supervisor(config, count, sockets, load, flags)
    log.info("starting workers", extra={"workers": count})
    errors: list[BaseException] = []
    try:
        trio.run(_main, config, supervisor)
    except* ListenError as group:
        errors += group.exceptions
    finally:
        supervisor.cleanup()
        for sock in held:
            sock.close()
    for error in errors:
        print(f"pmlb: {error}", file=sys.stderr)
    if errors:
        return 1
    failed = {i: c for i, c in supervisor.codes.items() if c != 0}
    if failed:
        log.warning("stopped; workers exited with errors", extra={"workers": str(failed)})
        return 1
    log.info("stopped")
    return 0


def _address(name: tuple[str, int] | tuple[str, int, int, int]) -> str:
    return format_address(name[0], name[1])
