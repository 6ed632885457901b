"""TCP and TLS listeners: accept clients, mark each with a UUID, pump its messages.

A connection is admitted first (:mod:`pmlb.downstream.admission`: the
listener's and the server's limits, checked at accept, a connection over one
closed at once; then the PROXY protocol header and TLS, each where
configured, under ``handshake_timeout``); this module runs its client. Every
refusal and forced close is counted in ``Core.connections``
(:mod:`pmlb.downstream.port`).
"""

from __future__ import annotations

import logging
import os
import ssl
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from pmlb.codecs import FramingError, framer
from pmlb.config import ListenerConfig, format_address
from pmlb.downstream.accept import serve_listeners
from pmlb.downstream.admission import Gate, admit_tcp
from pmlb.downstream.client import Client
from pmlb.downstream.hangup import wait_hangup
from pmlb.downstream.port import Core
from pmlb.downstream.reader import (
    END_OF_INPUT,
    READ_NO_MORE,
    ClientInput,
    Member,
    shared_reader,
)
from pmlb.downstream.reasons import CLIENT_CLOSED, DRAINING, Reason

log = logging.getLogger("pmlb.downstream")

#: whether plain-TCP clients are read by the shared reader
#: (pmlb.downstream.reader, the default) instead of a reader task each
#: (``PMLB_TCP_READER=task`` in the environment: the earlier reader, kept
#: as a way back; TLS clients always have a reader task each)
SHARED_READER = os.environ.get("PMLB_TCP_READER", "shared") != "task"


class ListenError(Exception):
    """A listener could not bind its address."""


async def open_listeners(config: ListenerConfig) -> list[trio.SocketListener]:
    """Bind ``config``'s address; :class:`ListenError` if it cannot (or its TLS files are bad)."""
    if config.uses_tls:
        server_ssl_context(config)  # fail before anything starts
    try:
        return await trio.open_tcp_listeners(config.port, host=config.host)
    except OSError as exc:
        raise ListenError(
            f"listener {config.name!r} cannot listen on {config.address}: {exc.strerror or exc}"
        ) from None


def server_ssl_context(config: ListenerConfig) -> ssl.SSLContext:
    """The TLS context of a ``tls`` listener; :class:`ListenError` naming the file if unusable.

    The error names the files and the TLS library's reason only, never
    their content.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            context.load_verify_locations(cafile=config.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc)
        raise ListenError(
            f"listener {config.name!r} cannot load its TLS files"
            f" (tls_cert {config.tls_cert!r}, tls_key {config.tls_key!r}"
            + (f", tls_client_ca {config.tls_client_ca!r}" if config.tls_client_ca else "")
            + f"): {reason}"
        ) from None
    return context


async def serve_tcp_listener(
    config: ListenerConfig,
    listeners: list[trio.SocketListener],
    registry: Core,
    *,
    connections: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept clients on ``listeners`` until cancelled; cancelling closes the listeners.

    Reports the bound addresses (``host:port``, with the real port when the
    config said 0) through ``task_status`` once accepting. Connections run in
    ``connections`` when given (they then outlive the accept loop: that is
    how a drain stops accepting but keeps its clients), else in here.
    """
    context = server_ssl_context(config) if config.transport == "tls" else None
    addresses = [format_address(*listener.socket.getsockname()[:2]) for listener in listeners]
    for address in addresses:
        log.info("listening", extra={"listener": config.name, "address": address})
    # Bound and listening already: clients that connect before the accept
    # loop runs wait in the backlog.
    task_status.started(addresses)
    handler = partial(
        admit_tcp,
        config=config,
        registry=registry,
        gate=Gate(config, registry),
        ssl_context=context,
        run=_run_client,
    )
    await serve_listeners(handler, listeners, handler_nursery=connections)


async def _run_client(
    stream: trio.abc.Stream,
    remote: str,
    config: ListenerConfig,
    registry: Core,
    initial: bytes,
    raw: trio.SocketStream,
) -> None:
    # ``raw`` is the connection under ``stream`` (the same, or what a TLS
    # or PROXY layer wraps): closing it closes ``stream`` at once.
    async with trio.open_nursery() as nursery:
        client = Client(
            str(uuid.uuid4()),
            listener=config.name,
            remote=remote,
            transport=config.transport,
            queue_limit=registry.config.client_queue_size,
            scope=nursery.cancel_scope,
            slow_policy=registry.config.slow_client_policy,
            slow_timeout=registry.config.slow_client_timeout,
            queue_bytes=registry.config.client_queue_bytes,
            budget=registry.client_queues,
        )
        # Plain TCP is read and written on the descriptor itself, with no
        # writer task while nothing waits for the socket (see Client).
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        if fd is not None:
            client.write_directly(fd, config.framing, registry.unflushed, nursery.start_soon)
        registry.add_client(client)
        # DEBUG: the INFO line of a connection is its "client disconnected"
        # (the session, as HAProxy logs it); formatting and writing a second
        # INFO line cost as much as all the rest of accepting a client.
        log.debug(
            "client connected",
            extra={"client": client.uuid, "listener": config.name, "peer": remote},
        )
        try:
            if fd is not None and SHARED_READER:
                await _read_shared(fd, client, config, registry, initial)
            elif fd is not None:
                await _read_socket(fd, client, config, registry, initial)
            else:
                nursery.start_soon(_write, stream, client, config)
                hangup = partial(wait_hangup, raw.socket.fileno())
                await _read(stream, client, config, registry, initial, hangup)
        finally:
            if client.closed_slow:
                registry.connections.slow_client_disconnects += 1
            registry.connections.slow_client_dropped += client.dropped
            registry.remove_client(client)
            client.detach()
            if client.close_reason is None:  # else client.close() cancelled it
                nursery.cancel_scope.cancel()
            log.info(
                "client disconnected",
                extra={
                    "client": client.uuid,
                    "listener": config.name,
                    "peer": remote,
                    "reason": client.close_reason or "closed by pmlb",
                    **client.summary(),
                },
            )
            # Forcefully, as trio.aclose_forcefully would (no TLS
            # close_notify), but without its cancelled checkpoint.
            raw.socket.close()


async def _read(
    stream: trio.abc.Stream,
    client: Client,
    config: ListenerConfig,
    registry: Core,
    initial: bytes = b"",
    hangup: Callable[[], Awaitable[None]] | None = None,
) -> None:
    input_ = ClientInput(client, config.framing, config.max_message_size, registry.connections)
    read_size = input_.read_size
    idle = config.idle_timeout
    fin_timeout = registry.config.client_fin_timeout
    data: bytes | bytearray
    try:
        while True:
            if initial:
                data, initial = initial, b""
            elif idle:
                data = b""
                with trio.move_on_after(idle) as idle_scope:
                    data = await stream.receive_some(read_size)
                if idle_scope.cancelled_caught:
                    input_.idle(idle)
                    return
            else:
                data = await stream.receive_some(read_size)
            if not data:
                await end_of_input(client, fin_timeout)
                return
            requests = input_.requests(data if isinstance(data, bytes) else bytes(data))
            if requests and not await registry.dispatch_from(client, requests, hangup):
                await _read_no_more(client, fin_timeout)
                return
    except FramingError as exc:
        input_.bad_input(exc)
    except trio.BrokenResourceError as exc:
        client.close(f"connection lost: {exc.__cause__ or exc}", Reason.ERROR)


async def _read_socket(
    fd: int,
    client: Client,
    config: ListenerConfig,
    registry: Core,
    initial: bytes = b"",
) -> None:
    """:func:`_read` on a plain TCP socket's descriptor, without trio's stream layers."""
    input_ = ClientInput(client, config.framing, config.max_message_size, registry.connections)
    read_size = input_.read_size
    idle = config.idle_timeout
    fin_timeout = registry.config.client_fin_timeout
    wait_readable = trio.lowlevel.wait_readable
    hangup = partial(wait_hangup, fd)
    # Whether this task ran since its last read that got data: a client that
    # always has data must still let the others run.
    ran = True
    data: bytes | None
    try:
        while True:
            if initial:
                data, initial = initial, b""
            else:
                data = _read_nowait(fd, read_size)
                if data is None:
                    if not idle:
                        await wait_readable(fd)
                    else:
                        with trio.move_on_after(idle) as idle_scope:
                            await wait_readable(fd)
                        if idle_scope.cancelled_caught:
                            input_.idle(idle)
                            return
                    ran = True
                    continue
                if not ran:
                    await trio.lowlevel.checkpoint()
                ran = False
            if not data:
                await end_of_input(client, fin_timeout)
                return
            requests = input_.requests(data)
            if requests and not await registry.dispatch_from(client, requests, hangup):
                await _read_no_more(client, fin_timeout)
                return
    except FramingError as exc:
        input_.bad_input(exc)
    except OSError as exc:
        client.close(f"connection lost: {exc}", Reason.ERROR)


def _read_nowait(fd: int, size: int) -> bytes | None:
    """``os.read``, or None if there is nothing to read yet.

    Not inline in the read loop: a ``BlockingIOError`` raised there would
    give the long-lived coroutine a frame object (its traceback's), and one
    waited on in the except clause keeps the exception too: ~0.7 KB per idle
    client together.
    """
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None


async def _read_shared(
    fd: int,
    client: Client,
    config: ListenerConfig,
    registry: Core,
    initial: bytes = b"",
) -> None:
    """:func:`_read_socket` by this run's :class:`~pmlb.downstream.reader.SharedReader`.

    This task sleeps while the reader reads its socket with the others', and
    does only what has to wait: a batch with no room upstream yet
    (backpressure: the socket is not read meanwhile), the end of input, a
    drain.
    """
    hangup = partial(wait_hangup, fd)
    fin_timeout = registry.config.client_fin_timeout
    member = Member(
        fd,
        client,
        config.framing,
        config.max_message_size,
        registry.connections,
        registry.dispatch_from_nowait,
    )
    if initial:
        try:
            requests = member.requests(initial)
        except FramingError as exc:
            member.bad_input(exc)
            return
        if requests and not await registry.dispatch_from(client, requests, hangup):
            await _read_no_more(client, fin_timeout)
            return
    reader = shared_reader(config.idle_timeout)
    reader.add(member)
    try:
        while True:
            work = await reader.next_work(member)
            if work == END_OF_INPUT:
                reader.release(member)
                await end_of_input(client, fin_timeout)
                return
            if work == READ_NO_MORE:
                reading = False
            else:
                assert isinstance(work, tuple)
                # The reader notices a hang-up meanwhile (Client.hang_up), if
                # a task polls it: this one, if no other does.
                if reader.polled:
                    reading = await registry.dispatch_held(client, *work)
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(reader.poll, member)
                        reading = await registry.dispatch_held(client, *work)
                        nursery.cancel_scope.cancel()
            if not reading:
                reader.release(member)
                await _read_no_more(client, fin_timeout)
                return
            reader.resume(member)
    finally:
        reader.remove(member)


async def _read_no_more(client: Client, fin_timeout: float) -> None:
    """Dispatch refused a batch from ``client``: it is read no more.

    Either it hung up while it was not read (its input ended: it is closed
    after :func:`end_of_input`), or it is draining: this sleeps until the
    writer closes the connection, once the client's queue is written.
    """
    if client.input_ended:
        await end_of_input(client, fin_timeout)
        return
    await trio.sleep_forever()


async def end_of_input(client: Client, fin_timeout: float) -> None:
    """The client ended its input (EOF): write to it ``fin_timeout`` seconds more, then close.

    A client that half-closes (``shutdown(SHUT_WR)``, ``nc -N``) still reads
    the replies to what it sent, as HAProxy's ``timeout client-fin`` allows;
    its disconnected event comes when it is closed. A write that fails, or a
    drain, closes it earlier.
    """
    client.end_input()
    if fin_timeout > 0:
        await trio.sleep(fin_timeout)
    client.close(CLIENT_CLOSED, Reason.CLIENT_CLOSED)


async def _write(stream: trio.abc.Stream, client: Client, config: ListenerConfig) -> None:
    frame = framer(config.framing)
    try:
        while True:
            batch = await client.next_batch()
            if not batch:  # drained
                client.close(DRAINING, Reason.DRAIN)
                return
            data = frame(batch)
            with client.writing() as scope:
                await stream.send_all(data)
            if client.written(scope):
                return
            client.sent(len(data), len(batch))
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        client.close(f"connection lost: {exc.__cause__ or exc}", Reason.ERROR)
