"""The grpclib transport: grpclib (asyncio) driven from Trio through trio-asyncio.

This is the only module of pmlb that touches asyncio. Crossing the
Trio/asyncio bridge costs far more than handling a message, so each gRPC call
is owned from open to close by one long-lived asyncio coroutine, entered once
with ``aio_as_trio``. The stream writer takes whole batches from the outbox
with a plain synchronous call and crosses back into Trio only to wait when the
outbox is empty; replies are handed to Trio code by a synchronous callback.
(Opening and closing grpclib streams from the Trio side instead was seen to
hang at close.) The event loop comes from ``trio_asyncio.open_loop()``, which
:func:`pmlb.serve` opens and hands to every transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpclib.client
import grpclib.config
import grpclib.const
import grpclib.encoding.proto
import grpclib.exceptions
import grpclib.protocol
import h2.events
import h2.exceptions
import trio
import trio_asyncio
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.grpc import DEFAULT_MAX_MESSAGE_SIZE
from pmlb.codecs.request import Request
from pmlb.upstream.h2_guard import FloodError, FrameGuard
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.transport import Deliver, UpstreamError

#: Seconds closing a channel may take before pmlb gives up on it.
CLOSE_TIMEOUT = 5.0
_SERVICE = "/upstream.grpc.service.UpstreamPeerService/"
_STREAM = grpclib.const.Cardinality.STREAM_STREAM
_UNARY = grpclib.const.Cardinality.UNARY_UNARY

# What grpclib and the layers below it raise when a call or connection fails.
_FAILURES = (
    OSError,
    asyncio.TimeoutError,
    grpclib.exceptions.GRPCError,
    grpclib.exceptions.StreamTerminatedError,
    grpclib.exceptions.ProtocolError,
    h2.exceptions.ProtocolError,
    DecodeError,
)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpclib.exceptions.GRPCError):
        return f"gRPC status {exc.status.name}: {exc.message}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, DecodeError):
        return f"malformed message from the upstream: {exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _LimitedCodec(grpclib.encoding.proto.ProtoCodec):
    """grpclib's protobuf codec, refusing what the native transport refuses: a
    message over the size limit (grpclib itself has none). A :class:`Request`
    encodes itself."""

    def __init__(self, max_message_size: int) -> None:
        self._max_message_size = max_message_size

    def encode(self, message: Any, message_type: Any) -> bytes:
        if message_type is Request:
            encoded: bytes = message.encode()
            return encoded
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > self._max_message_size:
            raise UpstreamError(
                f"bad gRPC message from the upstream: message of {len(data)} bytes"
                f" exceeds the maximum of {self._max_message_size}"
            )
        return super().decode(data, message_type)


def _ignore(event: object) -> None:
    pass


class _GuardedProtocol(grpclib.protocol.H2Protocol):
    """grpclib's HTTP/2 protocol with the native transport's limits in front of h2.

    Every read goes through a :class:`~pmlb.upstream.h2_guard.FrameGuard`
    before h2 parses it: past a limit the connection is aborted and its
    streams fail with the reason. A read of more than ``frames_per_step``
    frames is handed to h2 in pieces, one per turn of the event loop, with
    reading paused meanwhile (as the native transport lets other tasks run).
    DATA frames pmlb sends are counted by wrapping h2's ``send_data``, which
    grpclib calls once per frame.
    """

    def __init__(
        self,
        *args: Any,
        guard: Callable[[], FrameGuard],
        on_limit: Callable[[str | None], None],
        max_message_size: int,
        on_receive: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(*args)
        self._max_message_size = max_message_size
        self._on_receive = on_receive
        self._make_guard = guard
        self._on_limit = on_limit
        self._pieces: deque[bytes] = deque()
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._transport = transport
        # grpclib has no processor for h2's UnknownFrameReceived and raises
        # NotImplementedError (a fatal error of the connection); HTTP/2 says
        # frames of unknown types are ignored (RFC 9113, 4.1). The guard
        # still counts them towards a control frame flood.
        self.processor.processors[h2.events.UnknownFrameReceived] = _ignore
        self._guard = guard = self._make_guard()
        self._on_limit(None)
        h2_connection = self.connection._connection
        send_data = h2_connection.send_data

        def counted(*args: Any, **kwargs: Any) -> None:
            guard.sent_data_frames(1)
            send_data(*args, **kwargs)

        h2_connection.send_data = counted  # type: ignore[method-assign]
        # Every stream of the connection (ready, the bidi stream, live,
        # health) reads its messages through _SizeChecked.
        connection = self.connection

        def create_stream(
            *, stream_id: int | None = None, wrapper: Any = None
        ) -> grpclib.protocol.Stream:
            stream = _SizeChecked(
                connection,
                h2_connection,
                connection._transport,
                stream_id=stream_id,
                wrapper=wrapper,
            )
            stream.max_message_size = self._max_message_size
            return stream

        connection.create_stream = create_stream  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._on_receive()
        try:
            cuts = self._guard.feed(data, time.monotonic())
        except FloodError as exc:
            self._done = True
            reason = f"the upstream went past a limit: {exc}"
            self._on_limit(reason)
            self._pieces.clear()
            self.processor.close(reason)
            assert isinstance(self._transport, asyncio.Transport)
            self._transport.abort()
            return
        if len(cuts) == 1 and not self._pieces:
            self._parse(data)
            return
        start = 0
        for cut in cuts:
            self._pieces.append(data[start:cut])
            start = cut
        assert isinstance(self._transport, asyncio.ReadTransport)
        self._transport.pause_reading()
        self._next_piece()

    def _next_piece(self) -> None:
        if self._done or not self._pieces:
            return
        self._parse(self._pieces.popleft())
        if self._done:
            return
        if self._pieces:
            asyncio.get_running_loop().call_soon(self._next_piece)
        else:
            assert isinstance(self._transport, asyncio.ReadTransport)
            self._transport.resume_reading()

    def _parse(self, data: bytes) -> None:
        super().data_received(data)
        # The acks h2 owed went out with the rest, unless the upstream does not read.
        assert isinstance(self._transport, asyncio.WriteTransport)
        if not self._transport.get_write_buffer_size():
            self._guard.written()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._done = True
        self._pieces.clear()
        super().connection_lost(exc)


def tls_options(
    ssl_context: Callable[[], ssl.SSLContext] | None, server_name: str | None
) -> dict[str, Any]:
    """A grpclib ``Channel``'s keyword arguments for TLS (none for plain TCP).

    ``server_name`` is the name the upstream's certificate is checked against.
    """
    if ssl_context is None:
        return {}
    return {
        "ssl": ssl_context(),
        "config": grpclib.config.Configuration(ssl_target_name_override=server_name),
    }


class GuardedChannel(grpclib.client.Channel):
    """A grpclib channel whose connections are guarded (see :class:`_GuardedProtocol`).

    Built on grpclib 0.4's private ``Channel._protocol_factory``,
    ``Connection.create_stream`` and ``Connection._connection`` (the h2
    connection); pyproject.toml pins grpclib below 0.5.
    """

    def __init__(
        self,
        *args: Any,
        guard: Callable[[], FrameGuard],
        on_limit: Callable[[str | None], None],
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        on_receive: Callable[[], None] = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._make_guard = guard
        self._on_limit = on_limit
        self._max_message_size = max_message_size
        self._on_receive = on_receive

    def _protocol_factory(self) -> grpclib.protocol.H2Protocol:
        return _GuardedProtocol(
            grpclib.client.Handler(),
            self._config,
            self._h2_config,
            guard=self._make_guard,
            on_limit=self._on_limit,
            max_message_size=self._max_message_size,
            on_receive=self._on_receive,
        )


class _SizeChecked(grpclib.protocol.Stream):
    """grpclib's HTTP/2 stream, refusing a message over the limit on its 5-byte prefix.

    grpclib reads a message whole (``recv_data(length)``) before its codec
    sees it: an upstream that announced 4 GiB was read until then.
    """

    max_message_size = DEFAULT_MAX_MESSAGE_SIZE

    async def recv_data(self, size: int) -> bytes:
        if size > self.max_message_size:
            raise UpstreamError(
                f"bad gRPC message from the upstream: message of {size} bytes"
                f" exceeds the maximum of {self.max_message_size}"
            )
        return await super().recv_data(size)


class GrpclibTransport:
    """One HTTP/2 connection to one upstream, made with grpclib."""

    def __init__(
        self,
        host: str,
        port: int,
        loop: trio_asyncio.TrioEventLoop,
        *,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        server_name: str | None = None,
        guard: Callable[[], FrameGuard] = FrameGuard,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._host = host
        self._port = port
        self._guard = guard
        self._max_message_size = max_message_size
        # Why the connection was dropped, when it went past one of the guard's limits.
        self._limit_error: str | None = None
        # time.monotonic() of the last read from the upstream (see _aio_liveness)
        self._received_at = 0.0
        # Made at connect time (inside _call, so a bad file is an UpstreamError).
        self._ssl_context = ssl_context
        self._server_name = server_name
        # Explicit, not the loop of the current context: a supervisor started
        # at runtime (Server.add_upstream) runs in its caller's context.
        self._loop = loop
        # grpclib binds a Channel to the running asyncio loop, so it is made
        # lazily inside the first asyncio call.
        self._channel: grpclib.client.Channel | None = None

    def _get_channel(self) -> grpclib.client.Channel:
        if self._channel is None:
            codec = _LimitedCodec(self._max_message_size)
            options = tls_options(self._ssl_context, self._server_name)
            self._channel = GuardedChannel(
                self._host,
                self._port,
                codec=codec,
                guard=self._guard,
                on_limit=self._set_limit_error,
                max_message_size=self._max_message_size,
                on_receive=self._received,
                **options,
            )
        return self._channel

    def _set_limit_error(self, error: str | None) -> None:
        self._limit_error = error

    def _received(self) -> None:
        self._received_at = time.monotonic()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await trio_asyncio.aio_as_trio(fn, loop=self._loop)(*args)
        except UpstreamError:
            raise
        except _FAILURES as exc:
            if self._limit_error is not None:
                raise UpstreamError(self._limit_error) from exc
            raise UpstreamError(_describe(exc)) from exc

    # -- readiness -------------------------------------------------------

    async def check_ready(self) -> bool:
        ready: bool = await self._call(self._aio_ready)
        return ready

    async def _aio_ready(self) -> bool:
        channel = self._get_channel()
        async with channel.request(
            _SERVICE + "ready", _UNARY, empty_pb2.Empty, pb.ReadyResult
        ) as stream:
            await stream.send_message(empty_pb2.Empty(), end=True)
            reply = await stream.recv_message()
        return reply is not None and reply.ready

    # -- the bidirectional stream ---------------------------------------

    async def run_stream(self, outbox: Outbox[Request], deliver: Deliver) -> None:
        await self._call(self._aio_stream, outbox, deliver)

    async def _aio_stream(self, outbox: Outbox[Request], deliver: Deliver) -> None:
        channel = self._get_channel()
        async with channel.request(
            _SERVICE + "bidirectionalStreaming",
            _STREAM,
            Request,
            pb.OutputStreamRequest,
        ) as stream:
            await stream.send_request()
            sender = asyncio.ensure_future(_send_loop(stream, outbox, self._loop))
            receiver = asyncio.ensure_future(_receive_loop(stream, deliver))
            try:
                done, _ = await asyncio.wait(
                    {sender, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                # Both loops only end by raising.
                for task in done:
                    task.result()
            finally:
                for task in (sender, receiver):
                    task.cancel()
                await asyncio.gather(sender, receiver, return_exceptions=True)

    # -- liveness -------------------------------------------------------

    async def run_liveness(
        self, interval: float, answer_deadline: float, alive: Callable[[float | None], None]
    ) -> None:
        await self._call(self._aio_liveness, interval, answer_deadline, alive)

    async def _aio_liveness(
        self, interval: float, answer_deadline: float, alive: Callable[[float | None], None]
    ) -> None:
        channel = self._get_channel()
        async with channel.request(
            _SERVICE + "live", _STREAM, empty_pb2.Empty, pb.LiveResult
        ) as stream:
            await stream.send_request()
            ping = empty_pb2.Empty()
            while True:
                sent = time.perf_counter()
                await stream.send_message(ping)
                answer = await self._live_answer(stream, answer_deadline)
                if answer is None:
                    raise UpstreamError("the upstream ended the live stream")
                if not answer.live:
                    raise UpstreamError("the upstream answered live = false")
                alive(time.perf_counter() - sent)
                await asyncio.sleep(interval)

    async def _live_answer(
        self,
        stream: grpclib.client.Stream[empty_pb2.Empty, pb.LiveResult],
        answer_deadline: float,
    ) -> pb.LiveResult | None:
        """The answer to the ping just sent, unless the upstream is silent ``answer_deadline``.

        The ping waits on the connection behind what the bidi stream sent
        before it (up to a flow-control window): an upstream that works
        through that slowly answers late, yet every read from it shows it
        alive. So only ``answer_deadline`` seconds without an answer *and*
        without a byte from the upstream fail it (gRPC's keepalive rule:
        any activity counts).
        """
        answer = asyncio.ensure_future(stream.recv_message())
        try:
            quiet_since = time.monotonic()
            while True:
                quiet_since = max(quiet_since, self._received_at)
                left = quiet_since + answer_deadline - time.monotonic()
                if left <= 0:
                    raise UpstreamError(
                        f"no liveness answer within alive_timeout ({answer_deadline:g}s)"
                    )
                done, _ = await asyncio.wait({answer}, timeout=left)
                if done:
                    result: pb.LiveResult | None = answer.result()
                    return result
        finally:
            if not answer.done():
                answer.cancel()
                with contextlib.suppress(asyncio.CancelledError, *_FAILURES):
                    await answer

    # -- closing --------------------------------------------------------

    async def aclose(self) -> None:
        channel, self._channel = self._channel, None
        if channel is None:
            return
        # Closing a broken connection may fail; it is closed all the same.
        # Shielded so that a removal still closes it, but bounded: a close
        # that never completes must not keep the upstream from being removed.
        with (
            trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT),
            contextlib.suppress(Exception),
        ):
            await trio_asyncio.aio_as_trio(_close_channel, loop=self._loop)(channel)


async def _close_channel(channel: grpclib.client.Channel) -> None:
    protocol = getattr(channel, "_protocol", None)
    transport = getattr(getattr(protocol, "connection", None), "_transport", None)
    channel.close()
    if transport is not None and transport.get_extra_info("ssl_object") is not None:
        # An asyncio TLS transport closes its socket only after a close_notify
        # round trip, which a closing loop may never run (the socket leaks);
        # the stream is over, so nothing is lost by cutting it now.
        transport.abort()
        await asyncio.sleep(0)


async def _send_loop(
    stream: grpclib.client.Stream[Request, pb.OutputStreamRequest],
    outbox: Outbox[Request],
    loop: trio_asyncio.TrioEventLoop,
) -> None:
    wait_nonempty = trio_asyncio.trio_as_aio(outbox.wait_nonempty, loop=loop)
    while True:
        batch = outbox.take_nowait()
        if not batch:
            await wait_nonempty()
            continue
        sent = 0
        try:
            for message in batch:
                sent += 1
                await stream.send_message(message)
                outbox.progressed()
        except BaseException:
            # batch[sent - 1] was being written when the stream broke: it may
            # have reached the upstream, so it is not sent again. The rest
            # were never written and go back for failover.
            outbox.requeue(batch[sent:])
            raise


async def _receive_loop(
    stream: grpclib.client.Stream[Request, pb.OutputStreamRequest],
    deliver: Deliver,
) -> None:
    while True:
        try:
            message = await stream.recv_message()
        except NotImplementedError:
            # grpclib's word for a message with the compressed flag set
            raise UpstreamError(
                "bad gRPC message from the upstream: compressed message"
                " but no compression was negotiated"
            ) from None
        if message is None:
            # The upstream ended the stream; its trailers say why (as the
            # native transport reports). grpclib reads them only once our
            # half is ended too, and raises GRPCError for an error status.
            with contextlib.suppress(*_FAILURES):
                await stream.end()
            await stream.recv_trailing_metadata()
            raise UpstreamError("the upstream ended the stream")
        deliver([message])
