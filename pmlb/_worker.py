"""The entry point of a worker of ``pmlb serve --workers N`` (see :mod:`pmlb.workers.child`)."""

from __future__ import annotations

import socket
import sys
import tomllib

from pmlb import _log
from pmlb.__main__ import run
from pmlb.config import parse_config
from pmlb.workers.child import Setup, follow_orders


def main() -> None:
    setup = Setup.decode(sys.stdin.buffer.readline())
    config = parse_config(tomllib.loads(setup.config), f"worker {setup.index}")
    _log.configure(config.log.level, config.log.format, fields={"worker": setup.index})
    sockets = {name: [socket.socket(fileno=fd) for fd in fds] for name, fds in setup.fds.items()}
    code = run(
        config, sockets=sockets, admin_bind=f"unix:{setup.admin_socket}", control=follow_orders
    )
    sys.exit(code)


if __name__ == "__main__":
    main()
