"""TCP listeners: accept clients, mark each with a UUID, pump its messages."""

from __future__ import annotations

import logging
import time
import uuid
from functools import partial

import trio

from pmlb._proto import upstream_pb2 as pb
from pmlb._time import rfc3339_now
from pmlb.codecs import FramingError, frame, make_decoder
from pmlb.config import ListenerConfig, format_address
from pmlb.downstream.client import Client
from pmlb.registry import Registry

log = logging.getLogger("pmlb.downstream")


class ListenError(Exception):
    """A listener could not bind its address."""


async def open_listeners(config: ListenerConfig) -> list[trio.SocketListener]:
    """Bind ``config``'s address; :class:`ListenError` if it cannot."""
    try:
        return await trio.open_tcp_listeners(config.port, host=config.host)
    except OSError as exc:
        raise ListenError(
            f"listener {config.name!r} cannot listen on {config.address}: {exc.strerror or exc}"
        ) from None


async def serve_tcp_listener(
    config: ListenerConfig,
    listeners: list[trio.SocketListener],
    registry: Registry,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept clients on ``listeners`` until cancelled.

    Reports the bound addresses (``host:port``, with the real port when the
    config said 0) through ``task_status`` once accepting.
    """
    addresses = [format_address(*listener.socket.getsockname()[:2]) for listener in listeners]
    for address in addresses:
        log.info("listening", extra={"listener": config.name, "address": address})
    # Bound and listening already: clients that connect before the accept
    # loop runs wait in the backlog.
    task_status.started(addresses)
    handler = partial(handle_connection, config=config, registry=registry)
    await trio.serve_listeners(handler, listeners)


async def handle_connection(
    stream: trio.SocketStream, *, config: ListenerConfig, registry: Registry
) -> None:
    """Run one client: its reader and writer, in the connection's own nursery."""
    try:
        remote = format_address(*stream.socket.getpeername()[:2])
    except OSError:  # the peer is already gone
        await trio.aclose_forcefully(stream)
        return
    try:
        await _run_client(stream, remote, config, registry)
    except Exception:
        # A bug in one connection must not end the listener or other clients.
        log.exception("internal error on a client connection", extra={"peer": remote})


async def _run_client(
    stream: trio.SocketStream, remote: str, config: ListenerConfig, registry: Registry
) -> None:
    async with trio.open_nursery() as nursery:
        client = Client(
            str(uuid.uuid4()),
            listener=config.name,
            remote=remote,
            transport="tcp",
            queue_limit=registry.config.client_queue_size,
            scope=nursery.cancel_scope,
        )
        fields = {"client": client.uuid, "listener": config.name, "peer": remote}
        registry.add_client(client)
        log.info("client connected", extra=fields)
        try:
            nursery.start_soon(_write, stream, client, config)
            await _read(stream, client, config, registry)
        finally:
            registry.remove_client(client)
            nursery.cancel_scope.cancel()
            await trio.aclose_forcefully(stream)
            fields["reason"] = client.close_reason or "closed by pmlb"
            log.info("client disconnected", extra=fields)


async def _read(
    stream: trio.SocketStream, client: Client, config: ListenerConfig, registry: Registry
) -> None:
    decoder = make_decoder(config.framing, config.max_message_size)
    uuid_ = client.uuid
    make_request = pb.InputStreamRequest
    try:
        while True:
            data = await stream.receive_some(decoder.read_size)
            if not data:
                client.close("client closed the connection")
                return
            client.bytes_in += len(data)
            messages = decoder.feed(data)
            if not messages:
                continue
            client.last_active = time.monotonic()
            client.messages_in += len(messages)
            # One timestamp per read: every message in it arrived together.
            now = rfc3339_now()
            await registry.dispatch(
                [make_request(time=now, client_uuid=uuid_, payload=m) for m in messages]
            )
    except FramingError as exc:
        client.close(f"bad input: {exc}")
        log.warning("client sent bad input", extra={"client": uuid_, "problem": str(exc)})
    except trio.BrokenResourceError as exc:
        client.close(f"connection lost: {exc.__cause__ or exc}")


async def _write(stream: trio.SocketStream, client: Client, config: ListenerConfig) -> None:
    framing = config.framing
    try:
        while True:
            batch = await client.next_batch()
            data = frame(framing, batch)
            await stream.send_all(data)
            client.messages_out += len(batch)
            client.bytes_out += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        client.close(f"connection lost: {exc.__cause__ or exc}")
