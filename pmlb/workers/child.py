"""A worker of ``pmlb serve --workers N``: one full pmlb on sockets its parent bound.

Started as ``python -m pmlb.workers.child`` with the listening sockets
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
import socket
import sys
import tomllib

import attrs
import trio

from pmlb import _log
from pmlb.config import parse_config
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


async def _orders(server: Server, cancel_scope: trio.CancelScope) -> None:
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


def main() -> None:
    from pmlb.__main__ import run

    setup = Setup.decode(sys.stdin.buffer.readline())
    config = parse_config(tomllib.loads(setup.config), f"worker {setup.index}")
    _log.configure(config.log.level, config.log.format, fields={"worker": setup.index})
    sockets = {name: [socket.socket(fileno=fd) for fd in fds] for name, fds in setup.fds.items()}
    sys.exit(run(config, sockets=sockets, admin_bind=f"unix:{setup.admin_socket}", control=_orders))


if __name__ == "__main__":
    main()
