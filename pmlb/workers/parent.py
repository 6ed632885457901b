"""The parent of ``pmlb serve --workers N``: binds, starts, supervises and stops the workers.

It binds every listener once per worker (see :mod:`pmlb.workers.sockets`)
and the one admin address (see :mod:`pmlb.workers.front`), then starts the
workers, each a ``python -m pmlb._worker`` in a process group of its
own (a Ctrl-C at a terminal reaches the parent only) with its sockets
inherited. A worker that exits while the parent is not stopping is
started again on the same sockets, after a backoff that grows while it
keeps dying (0.5 s doubling to 30 s; reset once a worker ran 30 s).

SIGHUP: every worker reloads the configuration (see :meth:`Supervisor.reload`).
SIGTERM or SIGINT: every worker is told to drain (through its stdin, see
:mod:`pmlb.workers.child`), nothing is restarted, and the parent exits once
they all did: 0 if every worker exited 0, else 1. A second signal tells
them to stop at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from pmlb import sdnotify
from pmlb.config import MAX_WORKERS, Config, ConfigError, render_config
from pmlb.upstream.supervisor import Backoff
from pmlb.workers.child import Setup, worker_config

log = logging.getLogger("pmlb.workers")

_NOTIFY_ENV = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})
#: seconds between the parent's looks at whether every worker is ready (for systemd)
READY_POLL = 0.2

#: restart backoff: first delay, longest delay, seconds of life that reset it
RESTART_MIN, RESTART_MAX, RESTART_RESET = 0.5, 30.0, 30.0


def worker_count(config: Config) -> int:
    """``[server] workers``, with 0 meaning the cores this process may run on."""
    if config.workers:
        return config.workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def node_name(config: Config, base: str, index: int) -> str:
    """Worker ``index``'s cluster node name: ``NODE-wI``."""
    return f"{config.cluster.node or base}-w{index}"


def check(config: Config, count: int) -> None:
    """The checks a worker would fail, made in the parent (exit 2 before anything starts)."""
    if config.cluster.enabled and len(node_name(config, "", count - 1)) > 100:
        raise ConfigError(
            f"{config.source or 'configuration'}: cluster.node: too long for worker names"
            f" ({config.cluster.node!r}-wN must be 100 characters at most)"
        )


@attrs.define(eq=False)
class Worker:
    """One worker slot: its sockets, and the process running on them now."""

    index: int
    fds: dict[str, list[int]]
    admin_socket: str
    node: str | None
    process: subprocess.Popen[bytes] | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit: str | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def order(self, what: bytes) -> None:
        """Send ``drain`` or ``stop`` to the worker (nothing if it is not running)."""
        process = self.process
        if process is None or process.stdin is None or process.poll() is not None:
            return
        try:
            process.stdin.write(what + b"\n")
            process.stdin.flush()
        except (BrokenPipeError, ValueError):  # it is exiting
            pass


class Supervisor:
    """The workers and what the parent knows of them (the front reads it)."""

    def __init__(
        self,
        config: Config,
        count: int,
        sockets: dict[str, list[list[int]]],
        load: Callable[[], Config] | None = None,
        flags: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.load = load
        self.flags = flags or {}
        self.count = count
        self.directory = Path(tempfile.mkdtemp(prefix="pmlb-workers-"))
        base = _default_base() if config.cluster.enabled and not config.cluster.node else ""
        self.workers = [
            Worker(
                index=i,
                fds={name: per_worker[i] for name, per_worker in sockets.items()},
                admin_socket=str(self.directory / f"worker-{i}.sock"),
                node=node_name(config, base, i) if config.cluster.enabled else None,
            )
            for i in range(count)
        ]
        self.notifier = sdnotify.Notifier()
        self.stopping = False
        self.stop_now = False
        self._stop = trio.Event()
        #: exit codes of the workers once stopped
        self.codes: dict[int, int] = {}

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    def request_stop(self) -> None:
        """Drain every worker and restart none (SIGTERM, or the admin's drain)."""
        if self.stopping:
            return
        self.stopping = True
        self.notifier.stopping("draining the workers")
        self._stop.set()
        for worker in self.workers:
            worker.order(b"drain")

    def stop_at_once(self) -> None:
        self.request_stop()
        self.stop_now = True
        for worker in self.workers:
            worker.order(b"stop")

    def _config_for(self, worker: Worker) -> str:
        return render_config(worker_config(self.config, worker.node))

    async def refresh_config(self) -> None:
        """The file again (with the flags), for the workers started from now on."""
        if self.load is None:
            return
        try:
            new = await trio.to_thread.run_sync(self.load)
        except ConfigError as exc:
            log.warning("reload refused by the parent", extra={"problems": str(exc)})
            return
        self.config = attrs.evolve(new, listeners=self.config.listeners, workers=self.count)

    async def reload(self) -> None:
        """SIGHUP: :meth:`refresh_config`, and ``reload`` to each worker.

        Each worker reloads the file itself (as a single pmlb does, see
        :mod:`pmlb.reload`), keeping its listeners: the sockets are bound here.
        """
        await self.refresh_config()
        for worker in self.workers:
            worker.order(b"reload")

    def _start(self, worker: Worker) -> subprocess.Popen[bytes]:
        Path(worker.admin_socket).unlink(missing_ok=True)
        fds = [fd for fds in worker.fds.values() for fd in fds]
        # The parent speaks to systemd for the service: a worker must not.
        env = {k: v for k, v in os.environ.items() if k not in _NOTIFY_ENV}
        process = subprocess.Popen(
            [sys.executable, "-m", "pmlb._worker"],
            stdin=subprocess.PIPE,
            pass_fds=fds,
            process_group=0,
            env=env,
        )
        assert process.stdin is not None
        setup = Setup(
            index=worker.index,
            config=self._config_for(worker),
            fds=worker.fds,
            admin_socket=worker.admin_socket,
            node=worker.node,
            flags=self.flags,
        )
        process.stdin.write(setup.encode())
        process.stdin.flush()
        return process

    async def supervise(self, worker: Worker) -> None:
        """Keep ``worker`` running until the parent stops."""
        backoff = Backoff(RESTART_MIN, RESTART_MAX)
        while not self.stopping:
            process = worker.process = self._start(worker)
            worker.started_at = time.time()
            started = time.monotonic()
            log.info(
                "worker started",
                extra={"worker": worker.index, "pid": process.pid, "node": worker.node},
            )
            code = await _wait(process)
            worker.last_exit = _describe(code)
            if self.stopping:
                self.codes[worker.index] = code
                log.info(
                    "worker stopped",
                    extra={"worker": worker.index, "pid": process.pid, "exit": worker.last_exit},
                )
                return
            if time.monotonic() - started >= RESTART_RESET:
                backoff.reset()
            delay = backoff.next()
            worker.restarts += 1
            log.warning(
                "worker exited unexpectedly: restarting it",
                extra={
                    "worker": worker.index,
                    "pid": process.pid,
                    "exit": worker.last_exit,
                    "restart_in": round(delay, 2),
                    "restarts": worker.restarts,
                },
            )
            with trio.move_on_after(delay):
                await self._stop.wait()
        self.codes.setdefault(worker.index, 0)

    async def notify_ready(self) -> None:
        """Tell systemd (Type=notify) the service is ready once every worker is, then keep
        its watchdog fed."""
        from pmlb.workers import _http

        while not self.stopping:
            ready = 0
            for worker in self.workers:
                try:
                    answer = await _http.request(worker.admin_socket, "GET", "/readyz")
                except _http.WorkerUnreachable:
                    break
                ready += answer.status == 200
            if ready == self.count:
                self.notifier.ready(f"serving with {self.count} workers")
                await self.notifier.run_watchdog()
                return
            await trio.sleep(READY_POLL)

    def cleanup(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.stdin is not None:
                worker.process.stdin.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _default_base() -> str:
    from pmlb.cluster.bus import default_node_name

    return default_node_name()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


async def _wait(process: subprocess.Popen[bytes]) -> int:
    # A pidfd turns readable when the process exits: no polling, no SIGCHLD.
    pidfd = os.pidfd_open(process.pid)
    try:
        while (code := process.poll()) is None:
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    return code
