"""The native transport: pmlb's upstream contract over :mod:`pmlb.upstream.h2_connection`.

It owns the contract's calls (``ready``, ``live``, ``bidirectionalStreaming``
on ``UpstreamPeerService``), the outbox writer and the reply reader of one
upstream; the HTTP/2 connection (streams, flow control, pings, the frame
guard) is :class:`~pmlb.upstream.h2_connection.Connection`'s, the gRPC status
names :mod:`pmlb.upstream.grpc_status`'s.

Nothing here crosses into asyncio. The data path batches at every hop: the
stream writer takes everything in the outbox and frames it as one buffer,
written as a few DATA frames in one socket write; every read from the socket
is fed to h2 whole, and every gRPC message it completes on the stream is
decoded and delivered in one list.

There is no background task: whichever task waits for something from the
upstream (a reply, a window update, a liveness answer) reads the socket for
everybody while it waits, and wakes the others after each read. At most one
task reads at a time; one writes at a time.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import trio
from google.protobuf.message import DecodeError

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.grpc import (
    DEFAULT_MAX_MESSAGE_SIZE,
    encode_messages,
)
from pmlb.codecs.request import Request
from pmlb.upstream.h2_connection import Connection, Stream, connect_reason
from pmlb.upstream.h2_guard import FrameGuard
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.transport import Deliver, UpstreamError

_SERVICE = "/upstream.grpc.service.UpstreamPeerService/"
_EMPTY_MESSAGE = encode_messages([b""])  # google.protobuf.Empty


class H2Transport:
    """One HTTP/2 connection to one upstream, made by pmlb itself on Trio.

    ``ssl_context``, if given, makes it a TLS connection negotiating ``h2``
    by ALPN. Replies larger than ``max_message_size`` bytes fail the stream.
    ``guard`` makes the :class:`~pmlb.upstream.h2_guard.FrameGuard` of each
    connection (its limits).
    ``open_stream``, if given, replaces the TCP connect (tests use an
    in-memory stream).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
        server_name: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        guard: Callable[[], FrameGuard] = FrameGuard,
        connect_timeout: float = math.inf,
        open_stream: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    ) -> None:
        self._open_stream = open_stream
        self._host = host
        self._port = port
        # A callable is called at each connect (inside the error handling, so a
        # bad certificate file is an UpstreamError, and a rotated one is read).
        self._ssl_context = ssl_context
        self._server_name = server_name
        self._max_message_size = max_message_size
        self._guard = guard
        self._connect_timeout = connect_timeout
        self._connection: Connection | None = None
        self._connect_lock = trio.Lock()

    async def _connect(self) -> Connection:
        async with self._connect_lock:
            connection = self._connection
            if connection is not None and connection.error is None:
                return connection
            if connection is not None:
                # A failed connection is replaced; its streams have failed already.
                await connection.aclose()
                self._connection = None
            try:
                context = self._ssl_context
                if callable(context):
                    context = context()
                with trio.fail_after(self._connect_timeout):
                    sock: trio.abc.Stream
                    if self._open_stream is not None:
                        sock = await self._open_stream()
                    else:
                        sock = await trio.open_tcp_stream(self._host, self._port)
                if context is not None:
                    tls = trio.SSLStream(
                        sock, context, server_hostname=self._server_name or self._host
                    )
                    await tls.do_handshake()
                    if tls.selected_alpn_protocol() != "h2":
                        await trio.aclose_forcefully(tls)
                        raise UpstreamError("the upstream did not negotiate h2 by ALPN")
                    sock = tls
            except (OSError, trio.BrokenResourceError) as exc:
                raise UpstreamError(f"cannot connect: {connect_reason(exc)}") from None
            except trio.TooSlowError:
                raise UpstreamError("timed out connecting") from None
            authority = (
                f"[{self._host}]:{self._port}"
                if ":" in self._host
                else (f"{self._host}:{self._port}")
            )
            connection = Connection(
                sock,
                authority,
                "https" if self._ssl_context else "http",
                self._max_message_size,
                self._guard,
            )
            self._connection = connection
            await connection.start()
            return connection

    # -- readiness -------------------------------------------------------

    async def check_ready(self) -> bool:
        connection = await self._connect()
        stream = await connection.open_stream(_SERVICE + "ready")
        try:
            await connection.send(stream, _EMPTY_MESSAGE, end=True)
            await connection.wait_until(lambda: stream.closed)
            if stream.error is not None:
                raise UpstreamError(stream.error)
            if not stream.messages:
                raise UpstreamError("the upstream answered ready with no message")
            try:
                reply = pb.ReadyResult.FromString(stream.messages[0])
            except DecodeError as exc:
                raise UpstreamError(f"malformed message from the upstream: {exc}") from None
            return reply.ready
        finally:
            connection.close_stream(stream)

    # -- the bidirectional stream ---------------------------------------

    async def run_stream(self, outbox: Outbox[Request], deliver: Deliver) -> None:
        connection = await self._connect()
        stream = await connection.open_stream(_SERVICE + "bidirectionalStreaming")
        # Either half failing ends both. Failures are kept out of the nursery
        # so that the caller gets one UpstreamError, not an exception group.
        failures: list[UpstreamError] = []

        async def half(fn: Callable[[], Awaitable[None]]) -> None:
            try:
                await fn()
            except UpstreamError as exc:
                failures.append(exc)
            nursery.cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(half, partial(self._send_loop, connection, stream, outbox))
                nursery.start_soon(half, partial(self._receive_loop, connection, stream, deliver))
        finally:
            connection.close_stream(stream)
        raise failures[0] if failures else UpstreamError("the stream ended")

    @staticmethod
    async def _send_loop(connection: Connection, stream: Stream, outbox: Outbox[Request]) -> None:
        while True:
            batch = outbox.take_nowait()
            if not batch:
                await outbox.wait_nonempty()
                continue
            encoded = [message.encode() for message in batch]
            try:
                await connection.send(
                    stream,
                    encode_messages(encoded),
                    progress=outbox.progressed,
                    messages=len(encoded),
                )
            except BaseException:
                outbox.requeue(_unwritten(batch, encoded, stream.written))
                raise

    @staticmethod
    async def _receive_loop(connection: Connection, stream: Stream, deliver: Deliver) -> None:
        parse = pb.OutputStreamRequest.FromString
        while True:
            await connection.wait_until(lambda: bool(stream.messages) or stream.closed)
            if stream.messages:
                raw, stream.messages = stream.messages, []
                replies: list[pb.OutputStreamRequest] = []
                try:
                    for message in raw:
                        replies.append(parse(message))
                except DecodeError as exc:
                    # The replies before the bad one are valid: deliver them.
                    if replies:
                        deliver(replies)
                    raise UpstreamError(f"malformed message from the upstream: {exc}") from None
                deliver(replies)
            if stream.closed and not stream.messages:
                raise UpstreamError(stream.error or "the upstream ended the stream")

    # -- liveness -------------------------------------------------------

    async def run_liveness(
        self, interval: float, answer_deadline: float, alive: Callable[[float | None], None]
    ) -> None:
        connection = await self._connect()
        stream = await connection.open_stream(_SERVICE + "live")
        try:
            while True:
                # An HTTP/2 PING beside each live message: the connection's
                # keepalive, answered by the HTTP/2 layer even when the
                # service is busy.
                sent = trio.current_time()
                pong = await connection.ping()
                await connection.send(stream, _EMPTY_MESSAGE)
                await _live_answer(connection, stream, pong, answer_deadline)
                connection.check()
                if not stream.messages:
                    raise UpstreamError(stream.error or "the upstream ended the live stream")
                raw = stream.messages.pop(0)
                try:
                    answer = pb.LiveResult.FromString(raw)
                except DecodeError as exc:
                    raise UpstreamError(f"malformed message from the upstream: {exc}") from None
                if not answer.live:
                    raise UpstreamError("the upstream answered live = false")
                alive(trio.current_time() - sent)
                await trio.sleep(interval)
        finally:
            connection.close_stream(stream)

    # -- closing --------------------------------------------------------

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.aclose()


def _unwritten(batch: list[Request], encoded: list[bytes], written: int) -> list[Request]:
    """The messages of ``batch`` none of whose bytes were written.

    The one being written when the stream broke may have reached the
    upstream, so it is not sent again (as in the grpclib transport).
    """
    offset = 0
    for index, message in enumerate(encoded):
        if offset >= written:
            return batch[index:]
        offset += 5 + len(message)
    return []


async def _live_answer(
    connection: Connection, stream: Stream, pong: trio.Event, answer_deadline: float
) -> None:
    """Wait for the live answer and the PING's, unless the upstream is silent ``answer_deadline``.

    Both wait on the connection behind what the bidi stream sent before
    them (up to a flow-control window): an upstream that works through
    that slowly answers late, yet every read from it shows it alive. So
    only ``answer_deadline`` seconds without an answer *and* without a byte
    from the upstream fail it (gRPC's keepalive rule: any activity counts).
    """
    quiet_since = trio.current_time()
    while True:
        quiet_since = max(quiet_since, connection.received_at)
        with trio.move_on_at(quiet_since + answer_deadline) as scope:
            await connection.wait_until(lambda: bool(stream.messages) or stream.closed)
            await connection.wait_until(pong.is_set)
        if not scope.cancelled_caught:
            return
        if connection.received_at <= quiet_since:
            raise UpstreamError(f"no liveness answer within alive_timeout ({answer_deadline:g}s)")
