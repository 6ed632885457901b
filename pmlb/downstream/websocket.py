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

Connections go through what TCP connections go through (see
:mod:`pmlb.downstream.admission`): the listener's ``accept_rate`` (over it, the TCP
connection is closed at once, before any handshake), the PROXY header and
TLS (``wss://``, when the listener has ``tls_cert``) where configured, then
the HTTP upgrade, all three under one ``handshake_timeout``. A client over
``max_clients`` or ``max_clients_total`` completes the upgrade and is closed
at once with 1008 and the limit as the reason, so that a browser can tell
(while ``MAX_COURTESY_CLOSES`` of them are in their upgrade already, more are
closed at once instead).
Every refusal and forced close is counted in ``Core.connections`` (:mod:`pmlb.downstream.port`).

pmlb pings every ``ping_interval`` seconds and disconnects a client whose
pong does not come within ``ping_timeout``. Close codes say why: 1009 for a
message over ``max_message_size``, 1001 when pmlb stops or drains, 1008
(policy) for a limit (``max_clients``, ``idle_timeout``), a slow client or a
disconnection ordered by an upstream or the admin, 1000 when the client
closed, 1011 for a missing pong or anything else. A client that breaks RFC
6455 (an unmasked frame, reserved bits, a bad length: 1002; invalid UTF-8 in
a text message, fragmented or not: 1007) is told so with that code and
counted as bad input; its disconnection is a protocol error.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from functools import partial

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from pmlb._time import rfc3339_now
from pmlb.codecs.request import Request, head, uuid_field
from pmlb.config import ListenerConfig, format_address
from pmlb.downstream.accept import serve_listeners
from pmlb.downstream.admission import (
    Gate,
    admit_websocket,
    websocket_refused,
    websocket_timed_out,
)
from pmlb.downstream.client import Client
from pmlb.downstream.port import Core
from pmlb.downstream.reasons import (
    CLIENT_CLOSED,
    DRAINING,
    PROTOCOL_ERROR,
    STOPPING,
    Reason,
)
from pmlb.downstream.tcp import server_ssl_context

log = logging.getLogger("pmlb.downstream")

#: seconds to wait for the client's side of the closing handshake
DISCONNECT_TIMEOUT = 2.0
#: close code for a limit or another policy (RFC 6455 section 7.4.1)
POLICY_VIOLATION = 1008
#: the close codes wsproto gives a frame RFC 6455 forbids: a protocol error,
#: invalid UTF-8 in a text message
VIOLATION_CODES = frozenset({1002, 1007})
#: connections over ``max_clients`` that may be in their upgrade at once, to
#: be told 1008; past that, more are closed at once, as on TCP
MAX_COURTESY_CLOSES = 64


async def serve_websocket_listener(
    config: ListenerConfig,
    listeners: list[trio.SocketListener],
    registry: Core,
    *,
    connections: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket clients on ``listeners`` until cancelled.

    Reports the bound addresses through ``task_status`` once accepting, and
    runs connections in ``connections`` when given, as
    :func:`pmlb.downstream.tcp.serve_tcp_listener` does.
    """
    context = server_ssl_context(config) if config.uses_tls else None
    addresses = [format_address(*listener.socket.getsockname()[:2]) for listener in listeners]
    for address in addresses:
        log.info(
            "listening",
            extra={
                "listener": config.name,
                "address": address,
                "path": config.path,
                "scheme": "wss" if context else "ws",
            },
        )
    task_status.started(addresses)
    handler = partial(
        admit_websocket,
        config=config,
        registry=registry,
        gate=Gate(config, registry, courtesy=MAX_COURTESY_CLOSES),
        ssl_context=context,
        upgrade=_upgrade,
    )
    await serve_listeners(handler, listeners, handler_nursery=connections)


async def _upgrade(
    stream: trio.abc.Stream,
    remote: str,
    config: ListenerConfig,
    registry: Core,
    deadline: float,
    refusal: str | None,
) -> None:
    """The HTTP upgrade of an admitted connection (by ``deadline``), then the client.

    ``refusal`` is the limit the connection is over, if any: it is told so.
    """
    corked = _Corked(stream)
    async with trio.open_nursery() as nursery:
        request = None
        with trio.move_on_at(deadline):
            request = await wrap_server_stream(
                nursery,
                corked,
                # A full queue is what pushes back on the client; what it
                # holds is handed on as one batch (see _read).
                message_queue_size=queue_size(config.max_message_size),
                max_message_size=config.max_message_size,
            )
        if request is None:
            websocket_timed_out(config, registry, remote)
        else:
            await _handle_request(request, remote, corked, config, registry, refusal)
        nursery.cancel_scope.cancel()  # the connection's reader task


async def _handle_request(
    request: WebSocketRequest,
    remote: str,
    corked: _Corked,
    config: ListenerConfig,
    registry: Core,
    refusal: str | None,
) -> None:
    """Accept (or refuse) one upgrade request and run the client."""
    path = request.path.split("?", 1)[0]
    if path != config.path:
        log.info(
            "websocket handshake refused",
            extra={"listener": config.name, "peer": remote, "path": path},
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
    corked.watch(ws)
    if refusal is not None:
        websocket_refused(config, remote, refusal)
        await close(ws, POLICY_VIOLATION, refusal)
        return
    await _run_client(ws, remote, corked, config, registry)


async def close(ws: WebSocketConnection, code: int, reason: str) -> None:
    """Send a close frame with ``code`` and ``reason`` (cut to fit) and close the connection.

    Shielded, and waits at most ``DISCONNECT_TIMEOUT`` for the client's side
    of the closing handshake: when pmlb stops, this runs inside a cancelled
    scope, and the client should still learn why.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(DISCONNECT_TIMEOUT):
        await ws.aclose(code, _truncate(reason))


async def _run_client(
    ws: WebSocketConnection,
    remote: str,
    corked: _Corked,
    config: ListenerConfig,
    registry: Core,
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
                queue_bytes=registry.config.client_queue_bytes,
                budget=registry.client_queues,
            )
            fields = {"client": client.uuid, "listener": config.name, "peer": remote}
            registry.add_client(client)
            log.debug("client connected", extra=fields)  # as the TCP listener's
            texts = _TextState(config.websocket_reply)
            nursery.start_soon(_write, ws, corked, client, texts)
            nursery.start_soon(_keepalive, ws, client, config)
            await _read(ws, corked, client, config, registry, texts)
    finally:
        if client is not None:
            counters = registry.connections
            if client.closed_slow:
                counters.slow_client_disconnects += 1
            counters.slow_client_dropped += client.dropped
            registry.remove_client(client)
            client.close(STOPPING, Reason.DRAIN)  # kept only if it is the first
            assert client.close_kind is not None
            assert client.close_reason is not None
            await close(ws, client.close_kind.websocket_code, client.close_reason)
            fields["reason"] = client.close_reason
            log.info("client disconnected", extra={**fields, **client.summary()})


def violation(ws: WebSocketConnection | None) -> CloseReason | None:
    """The close reason if the client broke RFC 6455 and no close frame was exchanged.

    wsproto reports a forbidden frame as a close with 1002 or 1007 that no
    one sent: the connection is still open (a client that sends a close
    frame with one of these codes moves it on). trio-websocket then closes
    the stream without a word; :meth:`_Corked.aclose` tells the client.
    """
    reason = None if ws is None else ws.closed
    if reason is None or reason.code not in VIOLATION_CODES:
        return None
    state = getattr(getattr(ws, "_wsproto", None), "state", None)
    # Without the state (another trio-websocket), every 1002/1007 is one.
    return reason if state in (ConnectionState.OPEN, None) else None


class _Corked(trio.abc.Stream):
    """Holds what is sent while ``corked`` and sends it in one piece on :meth:`flush`.

    trio-websocket writes each message with its own ``send_all``; the writer
    corks the stream around a batch so that the batch goes out in one write.
    Anything sent while not corked (pongs, the close frame) goes out at once,
    after whatever is still held, so that the order on the wire is kept.

    Also the stream trio-websocket closes when a client breaks the protocol:
    the close frame saying so goes out first (see :func:`violation`).
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._held: list[bytes] = []
        self._lock = trio.StrictFIFOLock()
        self.corked = False
        self._ws: WebSocketConnection | None = None
        self._violation: CloseReason | None = None

    def watch(self, ws: WebSocketConnection) -> None:
        """Report ``ws``'s protocol violations when it closes this stream."""
        self._ws = ws

    def violation(self) -> CloseReason | None:
        """The client's protocol violation, if it made one (see :func:`violation`).

        Kept once found: telling the client moves the connection on.
        """
        if self._violation is None:
            self._violation = violation(self._ws)
        return self._violation

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.corked:
            self._held.append(bytes(data))
            await trio.lowlevel.checkpoint()
            return
        async with self._lock:
            if self._held:
                data = b"".join([*self._held, data])
                self._held.clear()
            await self._stream.send_all(data)

    async def flush(self) -> None:
        """Uncork and send everything held."""
        self.corked = False
        async with self._lock:
            if self._held:
                data = b"".join(self._held)
                self._held.clear()
                await self._stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        reason = self.violation()
        protocol = getattr(self._ws, "_wsproto", None)
        if reason is not None and protocol is not None and protocol.state is ConnectionState.OPEN:
            farewell = protocol.send(CloseConnection(reason.code, _truncate(reason.reason or "")))
            with trio.move_on_after(DISCONNECT_TIMEOUT):
                async with self._lock:
                    data = b"".join([*self._held, farewell])
                    self._held.clear()
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self._stream.send_all(data)
        await self._stream.aclose()


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
    ws: WebSocketConnection,
    corked: _Corked,
    client: Client,
    config: ListenerConfig,
    registry: Core,
    texts: _TextState,
) -> None:
    uuid_ = client.uuid
    client_field = uuid_field(uuid_)
    idle = config.idle_timeout or float("inf")
    message: str | bytes | None
    while True:
        try:
            message = None
            with trio.move_on_after(idle):
                message = await ws.get_message()
            if message is None:
                registry.connections.idle_timeouts += 1
                client.close(f"idle for idle_timeout ({idle:g}s)", Reason.IDLE)
                return
        except ConnectionClosed as closed:
            reason = closed.reason
            if reason is not None and reason.code == 1009:
                registry.connections.bad_input += 1
                client.close(f"bad input: message too big ({reason.reason})", Reason.TOO_BIG)
            elif corked.violation() is not None:
                assert reason is not None
                registry.connections.bad_input += 1
                client.close(
                    f"{PROTOCOL_ERROR} ({reason.code}): {reason.reason}", Reason.PROTOCOL_ERROR
                )
            elif reason is not None and reason.code == 1006:
                client.close("connection lost", Reason.ERROR)
            else:
                client.close(CLIENT_CLOSED, Reason.CLIENT_CLOSED)
            return
        messages = [message, *_buffered(ws)]
        payloads = [m.encode() if isinstance(m, str) else m for m in messages]
        texts.last_was_text = isinstance(messages[-1], str)
        client.last_active = time.monotonic()
        client.messages_in += len(payloads)
        client.bytes_in += sum(map(len, payloads))
        # One timestamp per batch, as for one TCP read.
        shared = head(rfc3339_now(), client_field)
        requests = [Request(shared, p, uuid_) for p in payloads]
        if not await registry.dispatch_from(client, requests):
            # Draining: read no more; the writer closes the client (1001)
            # once its queue is written.
            await trio.sleep_forever()


#: bytes of whole messages a connection may hold for pmlb to read (beside
#: the one being assembled), which bounds trio-websocket's message queue
QUEUED_BYTES = 256 * 1024
#: the most messages handed to the upstreams as one batch
MAX_BATCH = 32


def queue_size(max_message_size: int) -> int:
    """trio-websocket's message queue: as many messages as fit ``QUEUED_BYTES``, 1 to 32."""
    return max(1, min(MAX_BATCH, QUEUED_BYTES // max(1, max_message_size)))


def _buffered(ws: WebSocketConnection) -> list[str | bytes]:
    """The messages trio-websocket has already read and queued, taken without waiting.

    trio-websocket has no public way to take a message without waiting, so
    this reads its receive channel; should a later version not have it, each
    message is then simply its own batch.
    """
    receive_nowait = getattr(getattr(ws, "_recv_channel", None), "receive_nowait", None)
    taken: list[str | bytes] = []
    if receive_nowait is None:
        return taken
    while len(taken) < MAX_BATCH:
        try:
            taken.append(receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break  # the next get_message() waits, or says why it is closed
    return taken


async def _write(
    ws: WebSocketConnection, corked: _Corked, client: Client, texts: _TextState
) -> None:
    try:
        while True:
            batch = await client.next_batch()
            if not batch:  # drained
                client.close(DRAINING, Reason.DRAIN)
                return
            # Each message is framed on its own; the batch goes out in one write.
            with client.writing() as scope:
                protocol = getattr(ws, "_wsproto", None)
                if protocol is not None:
                    # Framed here, not by send_message: its lock and a held
                    # write cost a scheduler round trip each per message.
                    if ws.closed is not None:
                        raise ConnectionClosed(ws.closed)
                    frames = [protocol.send(_event(texts.encode(p))) for p in batch]
                    await corked.send_all(b"".join(frames))
                    client.messages_out += len(batch)
                    client.bytes_out += sum(map(len, batch))
                else:
                    corked.corked = True
                    try:
                        for payload in batch:
                            await ws.send_message(texts.encode(payload))
                            client.messages_out += 1
                            client.bytes_out += len(payload)
                    finally:
                        corked.corked = False
                    await corked.flush()
            if client.written(scope):
                return
    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        client.close("connection lost while writing", Reason.ERROR)


def _event(message: str | bytes) -> TextMessage | BytesMessage:
    return TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)


async def _keepalive(ws: WebSocketConnection, client: Client, config: ListenerConfig) -> None:
    while True:
        await trio.sleep(config.ping_interval)
        with trio.move_on_after(config.ping_timeout) as scope:
            try:
                await ws.ping()
            except ConnectionClosed:
                return  # the reader sees it too, and says why
        if scope.cancelled_caught:
            client.close(f"no pong within ping_timeout ({config.ping_timeout:g}s)", Reason.ERROR)
            return
