"""The listeners of ``pmlb serve --workers N``: each address bound once per worker.

Every worker gets a listening socket of its own on each address, all bound
with ``SO_REUSEPORT``: the kernel then hashes each new connection to one of
the sockets, so connections spread evenly over the workers whatever their
load. (One socket shared by all workers spreads badly: the worker whose
``epoll`` wakes first takes the whole backlog, and the kernel wakes the
most recent waiter first, so one worker can take nearly everything.)

The parent keeps every socket open for the life of the process:
connections that arrive for a worker being restarted wait in its socket's
backlog instead of being refused, and the restarted worker takes over the
same socket.
"""

from __future__ import annotations

import socket

from pmlb.config import ListenerConfig
from pmlb.downstream.tcp import ListenError

#: trio's choice (the kernel caps it at net.core.somaxconn)
BACKLOG = 0xFFFF


def bind_reuseport(config: ListenerConfig, count: int) -> list[list[socket.socket]]:
    """``count`` lists (one per worker) of listening sockets on ``config``'s address.

    A host that resolves to several addresses gets a socket per address in
    each list. With port 0 the first socket of an address picks a free
    port and the others bind that port. Raises :class:`ListenError` (and
    closes what it opened) if an address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise _error(config, exc) from None
    per_worker: list[list[socket.socket]] = [[] for _ in range(count)]
    opened: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
            (i[0], i[1], i[2], i[3], i[4]) for i in infos
        ):
            for worker in range(count):
                sock = socket.socket(family, kind, proto)
                opened.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                if worker == 0:  # the others take the port the first one got
                    address = (address[0], sock.getsockname()[1], *address[2:])
                sock.listen(BACKLOG)
                sock.set_inheritable(True)
                per_worker[worker].append(sock)
    except OSError as exc:
        for sock in opened:
            sock.close()
        raise _error(config, exc) from None
    return per_worker


def _error(config: ListenerConfig, exc: OSError) -> ListenError:
    return ListenError(
        f"listener {config.name!r} cannot listen on {config.address}: {exc.strerror or exc}"
    )
