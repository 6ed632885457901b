"""WebSocket listeners: the same clients as TCP, one WebSocket message per pmlb message.

A client connects to the listener's ``path`` (other paths get HTTP 404), gets
a UUID like a TCP client, and each text or binary message it sends is one
message to the upstreams (text as its UTF-8 bytes). Each message an upstream
sends back goes out as one WebSocket message, text or binary by the
listener's ``websocket_reply``:

- ``auto`` (default): text if the payload is valid UTF-8 and the client's
  last message was text; otherwise binary (a client that has sent nothing
  yet gets binary);
- ``text``: text whenever the payload is valid UTF-8, else binary;
- ``binary``: always binary.

pmlb pings every ``ping_interval`` seconds and disconnects a client whose
pong does not come within ``ping_timeout``. Close codes say why: 1009 for a
message over ``max_message_size``, 1001 when pmlb stops, 1008 (policy) for a
slow client or a disconnection ordered by an upstream or the admin, 1000 when
the client closed.
"""

from __future__ import annotations

import logging
import time
import uuid
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from pmlb._proto import upstream_pb2 as pb
from pmlb._time import rfc3339_now
from pmlb.config import ListenerConfig, format_address
from pmlb.downstream.client import Client
from pmlb.downstream.reasons import STOPPING, WEBSOCKET_CLOSE_CODES, classify
from pmlb.registry import Registry

log = logging.getLogger("pmlb.downstream")

#: seconds to wait for the client's side of the closing handshake
DISCONNECT_TIMEOUT = 2.0


async def serve_websocket_listener(
    config: ListenerConfig,
    listeners: list[trio.SocketListener],
    registry: Registry,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket clients on ``listeners`` until cancelled.

    Reports the bound addresses through ``task_status`` once accepting, as
    :func:`pmlb.downstream.tcp.serve_tcp_listener` does.
    """
    addresses = [format_address(*listener.socket.getsockname()[:2]) for listener in listeners]
    for address in addresses:
        log.info(
            "listening",
            extra={"listener": config.name, "address": address, "path": config.path},
        )
    server = WebSocketServer(
        partial(handle_request, config=config, registry=registry),
        listeners,
        # One message at a time is enough: the reader hands each on at once,
        # and a full queue is what pushes back on the client.
        message_queue_size=1,
        max_message_size=config.max_message_size,
        connect_timeout=config.handshake_timeout,
        disconnect_timeout=DISCONNECT_TIMEOUT,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        task_status.started(addresses)


async def handle_request(
    request: WebSocketRequest, *, config: ListenerConfig, registry: Registry
) -> None:
    """Accept (or refuse) one handshake and run the client."""
    path = request.path.split("?", 1)[0]
    remote = request.remote
    peer = remote if isinstance(remote, str) else format_address(str(remote.address), remote.port)
    if path != config.path:
        log.info(
            "websocket handshake refused",
            extra={"listener": config.name, "peer": peer, "path": path},
        )
        await request.reject(404, body=f"no WebSocket endpoint at {path}\n".encode())
        return
    if not registry.admit():  # an operator paused new clients
        await request.reject(503, body=b"not accepting new clients\n")
        return
    try:
        ws = await request.accept()
    except ConnectionClosed:
        return
    try:
        await _run_client(ws, peer, config, registry)
    except Exception:
        # A bug in one connection must not end the listener or other clients.
        log.exception("internal error on a client connection", extra={"peer": peer})


async def _run_client(
    ws: WebSocketConnection, remote: str, config: ListenerConfig, registry: Registry
) -> None:
    client: Client | None = None
    try:
        async with trio.open_nursery() as nursery:
            client = Client(
                str(uuid.uuid4()),
                listener=config.name,
                remote=remote,
                transport="websocket",
                queue_limit=registry.config.client_queue_size,
                scope=nursery.cancel_scope,
                slow_policy=registry.config.slow_client_policy,
                slow_timeout=registry.config.slow_client_timeout,
            )
            fields = {"client": client.uuid, "listener": config.name, "peer": remote}
            registry.add_client(client)
            log.info("client connected", extra=fields)
            texts = _TextState(config.websocket_reply)
            nursery.start_soon(_write, ws, client, texts)
            nursery.start_soon(_keepalive, ws, client, config)
            await _read(ws, client, registry, texts)
    finally:
        if client is not None:
            registry.remove_client(client)
            if client.close_reason is None:
                client.close_reason = STOPPING
            kind = classify(client.close_reason)
            # Shielded: when pmlb stops, this runs inside a cancelled scope,
            # and the client should still learn why (1001).
            with trio.CancelScope(shield=True), trio.move_on_after(DISCONNECT_TIMEOUT):
                await ws.aclose(WEBSOCKET_CLOSE_CODES[kind], _truncate(client.close_reason))
            fields["reason"] = client.close_reason
            log.info("client disconnected", extra=fields)


def _truncate(reason: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    data = reason.encode()
    return reason if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


class _TextState:
    """Decides whether a reply goes out as a text or a binary message."""

    __slots__ = ("last_was_text", "mode")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.last_was_text = False

    def encode(self, payload: bytes) -> str | bytes:
        if self.mode == "binary" or (self.mode == "auto" and not self.last_was_text):
            return payload
        try:
            return payload.decode()
        except UnicodeDecodeError:
            return payload


async def _read(
    ws: WebSocketConnection, client: Client, registry: Registry, texts: _TextState
) -> None:
    uuid_ = client.uuid
    while True:
        try:
            message = await ws.get_message()
        except ConnectionClosed as closed:
            reason = closed.reason
            if reason is not None and reason.code == 1009:
                client.close(f"bad input: message too big ({reason.reason})")
            elif reason is not None and reason.code == 1006:
                client.close("connection lost")
            else:
                client.close("client closed the connection")
            return
        if isinstance(message, str):
            texts.last_was_text = True
            payload = message.encode()
        else:
            texts.last_was_text = False
            payload = message
        client.last_active = time.monotonic()
        client.messages_in += 1
        client.bytes_in += len(payload)
        await registry.dispatch(
            [pb.InputStreamRequest(time=rfc3339_now(), client_uuid=uuid_, payload=payload)]
        )


async def _write(ws: WebSocketConnection, client: Client, texts: _TextState) -> None:
    try:
        while True:
            batch = await client.next_batch()
            for payload in batch:
                await ws.send_message(texts.encode(payload))
                client.messages_out += 1
                client.bytes_out += len(payload)
    except ConnectionClosed:
        client.close("connection lost while writing")


async def _keepalive(ws: WebSocketConnection, client: Client, config: ListenerConfig) -> None:
    while True:
        await trio.sleep(config.ping_interval)
        with trio.move_on_after(config.ping_timeout) as scope:
            try:
                await ws.ping()
            except ConnectionClosed:
                return  # the reader sees it too, and says why
        if scope.cancelled_caught:
            client.close(f"no pong within ping_timeout ({config.ping_timeout:g}s)")
            return
