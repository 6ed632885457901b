"""A worker of ``pmlb serve --workers N``: one full pmlb on sockets its parent bound.

Started as ``python -m pmlb._worker`` with the listening sockets
inherited; its first line on stdin is the :class:`Setup` (JSON). stdin then
carries the parent's orders, one per line: ``drain`` (a graceful drain, as
SIGTERM) and ``stop`` (stop at once, as a second SIGTERM). End of stdin
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

import attrs
import trio

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

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Setup:
        return cls(**json.loads(line))


async def follow_orders(server: Server, cancel_scope: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""
    async with stdin:
        while data := await stdin.receive_some(4096):
            buffer += data
            *orders, buffer = buffer.split(b"\n")
            for order in orders:
                if order == b"drain" and not server.stopping:
                    log.info("parent: stopping")
                    server.stop()
                elif order == b"stop":
                    log.warning("parent: stopping now")
                    cancel_scope.cancel()
    if not server.stopping:
        log.warning("parent gone: stopping")
        server.stop()
