"""The accept loop of pmlb's listeners: takes connections from the backlog in batches.

:func:`trio.serve_listeners` accepts one connection each time the scheduler
runs its task. Under load a scheduler round runs every busy client's reader,
and can take tens of milliseconds: with 1,000 clients connecting to a busy
pmlb, the last ones waited seconds to be accepted (the benchmark saw half of
them get no echo in 5 s). Here, each time the listening socket is readable,
the loop accepts everything in the backlog (up to :data:`ACCEPT_BATCH`)
before it lets other tasks run.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from pmlb.config import format_address

log = logging.getLogger("pmlb.downstream")

#: connections accepted from one listener's backlog before other tasks run
ACCEPT_BATCH = 256

# accept(2) errors meaning the process or system is out of descriptors or
# memory: wait a little and try again (as trio.serve_listeners does)
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_CAPACITY_PAUSE = 0.1
# accept(2) errors about the one connection only (as trio's SocketListener)
_CONNECTION_ERRNOS = {
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
}

Handler = Callable[[trio.SocketStream], Awaitable[object]]


async def serve_listeners(
    handler: Handler,
    listeners: list[trio.SocketListener],
    *,
    handler_nursery: trio.Nursery | None = None,
) -> NoReturn:
    """Like :func:`trio.serve_listeners`, accepting in batches; closes ``listeners`` when done.

    Each connection runs ``handler(stream)`` in ``handler_nursery`` (default:
    an inner nursery), and its stream is closed when the handler returns.
    """
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_serve_one, listener, handler_nursery or nursery, handler)
    raise AssertionError("the accept loops never return")


async def _serve_one(
    listener: trio.SocketListener, handlers: trio.Nursery, handler: Handler
) -> NoReturn:
    async with listener:
        fd = listener.socket.fileno()
        # A second socket object on the listener's descriptor, for accept(2)
        # without a checkpoint per connection; detached, never closed, below.
        sock = socket.socket(fileno=fd)
        # socket.accept() reads these back (and makes enums of them) and
        # looks at two timeouts on every call: 4% of what a connection costs
        # (tools/bench/accept_callgrind.py). Read once; _accept() is the
        # accept(2) it wraps.
        family, kind, proto = int(sock.family), int(sock.type), sock.proto
        try:
            sock.setblocking(False)
            while True:
                await trio.lowlevel.wait_readable(fd)
                for _ in range(ACCEPT_BATCH):
                    try:
                        accepted = sock._accept()[0]  # type: ignore[attr-defined]
                        conn = socket.socket(family, kind, proto, accepted)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _CONNECTION_ERRNOS:
                            continue
                        if exc.errno not in _CAPACITY_ERRNOS:
                            raise
                        log.error(
                            "cannot accept connections, retrying",
                            extra={
                                "address": format_address(*sock.getsockname()[:2]),
                                "error": os.strerror(exc.errno),
                                "retry_in": _CAPACITY_PAUSE,
                            },
                        )
                        await trio.sleep(_CAPACITY_PAUSE)
                        break
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                    handlers.start_soon(_run_handler, stream, handler)
        finally:
            sock.detach()


async def _run_handler(stream: trio.SocketStream, handler: Handler) -> None:
    try:
        await handler(stream)
    finally:
        # Closed at once, without the checkpoint of trio.aclose_forcefully:
        # a task switch per connection is a good part of what accepting costs.
        stream.socket.close()
