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
from collections.abc import Callable
from typing import Any

import grpclib.client
import grpclib.config
import grpclib.const
import grpclib.encoding.proto
import grpclib.exceptions
import h2.exceptions
import trio
import trio_asyncio
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.grpc import DEFAULT_MAX_MESSAGE_SIZE
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
    message over the size limit (grpclib itself has none)."""

    def __init__(self, max_message_size: int) -> None:
        self._max_message_size = max_message_size

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > self._max_message_size:
            raise UpstreamError(
                f"bad gRPC message from the upstream: message of {len(data)} bytes"
                f" exceeds the maximum of {self._max_message_size}"
            )
        return super().decode(data, message_type)


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
    ) -> None:
        self._host = host
        self._port = port
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
            codec = _LimitedCodec(DEFAULT_MAX_MESSAGE_SIZE)
            if self._ssl_context is None:
                self._channel = grpclib.client.Channel(self._host, self._port, codec=codec)
            else:
                self._channel = grpclib.client.Channel(
                    self._host,
                    self._port,
                    codec=codec,
                    ssl=self._ssl_context(),
                    config=grpclib.config.Configuration(ssl_target_name_override=self._server_name),
                )
        return self._channel

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await trio_asyncio.aio_as_trio(fn, loop=self._loop)(*args)
        except UpstreamError:
            raise
        except _FAILURES as exc:
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

    async def run_stream(self, outbox: Outbox[pb.InputStreamRequest], deliver: Deliver) -> None:
        await self._call(self._aio_stream, outbox, deliver)

    async def _aio_stream(self, outbox: Outbox[pb.InputStreamRequest], deliver: Deliver) -> None:
        channel = self._get_channel()
        async with channel.request(
            _SERVICE + "bidirectionalStreaming",
            _STREAM,
            pb.InputStreamRequest,
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
                try:
                    async with asyncio.timeout(answer_deadline):
                        answer = await stream.recv_message()
                except TimeoutError:
                    raise UpstreamError(
                        f"no liveness answer within alive_timeout ({answer_deadline:g}s)"
                    ) from None
                if answer is None:
                    raise UpstreamError("the upstream ended the live stream")
                if not answer.live:
                    raise UpstreamError("the upstream answered live = false")
                alive(time.perf_counter() - sent)
                await asyncio.sleep(interval)

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
    stream: grpclib.client.Stream[pb.InputStreamRequest, pb.OutputStreamRequest],
    outbox: Outbox[pb.InputStreamRequest],
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
    stream: grpclib.client.Stream[pb.InputStreamRequest, pb.OutputStreamRequest],
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
