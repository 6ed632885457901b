"""The entry point of a worker of ``pmlb serve --workers N`` (see :mod:`pmlb.workers.child`)."""

from __future__ import annotations

import argparse
import socket
import sys
import tomllib

from pmlb import _log
from pmlb.__main__ import _config, run
from pmlb.config import Config, parse_config
from pmlb.workers.child import Setup, follow_orders, worker_config


def main() -> None:
    setup = Setup.decode(sys.stdin.buffer.readline())
    config = parse_config(tomllib.loads(setup.config), f"worker {setup.index}")
    _log.configure(config.log.level, config.log.format, fields={"worker": setup.index})
    flags = argparse.Namespace(**setup.flags)

    def load() -> Config:
        return worker_config(_config(flags, flags.config), setup.node, keep=config)

    sockets = {name: [socket.socket(fileno=fd) for fd in fds] for name, fds in setup.fds.items()}
    code = run(
        config,
        load,
        sockets=sockets,
        admin_bind=f"unix:{setup.admin_socket}",
        control=follow_orders,
    )
    sys.exit(code)


if __name__ == "__main__":
    main()
