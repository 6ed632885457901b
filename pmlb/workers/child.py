"""A worker of ``pmlb serve --workers N``: one full pmlb on sockets its parent bound.

Started as ``python -m pmlb._worker`` with the listening sockets
inherited; its first line on stdin is the :class:`Setup` (JSON). stdin then
carries the parent's orders, one per line: ``drain`` (a graceful drain, as
SIGTERM), ``stop`` (stop at once, as a second SIGTERM) and ``reload`` (as
SIGHUP: the file again, with the parent's flags). End of stdin
means the parent is gone: the worker drains and exits.

Orders come on a pipe rather than as signals so that a worker that also
gets the signal itself (systemd's default ``KillMode=control-group`` sends
SIGTERM to every process of the service) drains once instead of taking the
two signals as "stop at once".
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import attrs
import trio

from pmlb.config import Config, ConfigError, ManagementConfig
from pmlb.server import Server

log = logging.getLogger("pmlb.server")


@attrs.frozen
class Setup:
    """What a worker is told at start."""

    index: int
    #: the worker's configuration, as :func:`pmlb.config.render_config` wrote it
    config: str
    #: inherited listening descriptors by listener name
    fds: dict[str, list[int]]
    #: where its admin listens (the parent's front talks to it there)
    admin_socket: str
    #: its cluster node name (None: no cluster)
    node: str | None
    #: the parent's command line (``pmlb serve``'s parsed flags): a reload
    #: reads the file with them, as a single pmlb does
    flags: dict[str, Any]

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Setup:
        return cls(**json.loads(line))


def worker_config(config: Config, node: str | None, keep: Config | None = None) -> Config:
    """``config`` as a worker runs it: one process, its admin private, its node name.

    The front checks the token and serves TLS; a worker's admin is on a
    socket in a directory only this user can open. ``keep``: the config
    whose listeners a reload keeps (the sockets are the parent's: a worker
    cannot bind others).
    """
    changed = attrs.evolve(
        config,
        workers=1,
        management=ManagementConfig(
            host="127.0.0.1",
            port=0,
            enabled=True,
            ready_requires_upstream=config.management.ready_requires_upstream,
        ),
    )
    if node is not None:
        changed = attrs.evolve(changed, cluster=attrs.evolve(config.cluster, node=node))
    if keep is not None and changed.listeners != keep.listeners:
        log.warning(
            "reload: listeners change only with a restart under --workers; kept as they are"
        )
        changed = attrs.evolve(changed, listeners=keep.listeners)
    return changed


async def _reload(server: Server) -> None:
    from pmlb.reload import ReloadUnavailable

    # The reloader logs what it did, or why it refused.
    try:
        await server.reload()
    except (ReloadUnavailable, ConfigError) as exc:
        log.warning("reload: nothing reloaded", extra={"reason": str(exc)})


async def follow_orders(server: Server, cancel_scope: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""
    async with stdin, trio.open_nursery() as reloads:
        while data := await stdin.receive_some(4096):
            buffer += data
            *orders, buffer = buffer.split(b"\n")
            for order in orders:
                if order == b"reload":
                    log.info("parent: reloading")
                    reloads.start_soon(_reload, server)
                elif order == b"drain" and not server.stopping:
                    log.info("parent: stopping")
                    server.stop()
                elif order == b"stop":
                    log.warning("parent: stopping now")
                    cancel_scope.cancel()
    if not server.stopping:
        log.warning("parent gone: stopping")
        server.stop()
