"""Health through the standard ``grpc.health.v1.Health`` service (``health = "grpc"``).

Wraps a transport: the bidirectional stream stays on it, while readiness and
liveness use ``Health`` on a connection of their own (grpclib, through
trio-asyncio: a few calls per interval, never on the data path).

- readiness: ``Check`` answers ``SERVING``;
- liveness: a ``Watch`` stream reports each change at once (anything but
  ``SERVING`` makes the upstream unhealthy), and a ``Check`` every
  ``live_interval`` that must answer within ``alive_timeout`` catches an
  upstream that hangs without saying so. A server without ``Watch``
  (UNIMPLEMENTED) is checked with ``Check`` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import Any

import grpclib.client
import grpclib.const
import grpclib.exceptions
import trio
import trio_asyncio
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from pmlb.codecs.request import Request
from pmlb.upstream.grpclib_transport import GuardedChannel, tls_options
from pmlb.upstream.h2_guard import FrameGuard
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.transport import Deliver, Transport, UpstreamError

_SERVING = HealthCheckResponse.SERVING
_FAILURES = (
    grpclib.exceptions.GRPCError,
    grpclib.exceptions.StreamTerminatedError,
    grpclib.exceptions.ProtocolError,
    ConnectionError,
    OSError,
    ssl.SSLError,
    asyncio.TimeoutError,
)


_STATUS_NAMES: dict[int, str] = {
    int(value): name for name, value in HealthCheckResponse.ServingStatus.items()
}


def _status_name(status: int) -> str:
    return _STATUS_NAMES.get(status, str(status))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpclib.exceptions.GRPCError):
        return f"health check failed: {exc.status.name}: {exc.message or ''}".rstrip(": ")
    return f"health check failed: {type(exc).__name__}: {exc}".rstrip(": ")


class GrpcHealthTransport:
    """``inner`` for the stream, ``grpc.health.v1.Health`` for readiness and liveness."""

    def __init__(
        self,
        inner: Transport,
        host: str,
        port: int,
        loop: trio_asyncio.TrioEventLoop,
        *,
        service: str = "",
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        server_name: str | None = None,
        guard: Callable[[], FrameGuard] = FrameGuard,
    ) -> None:
        self._inner = inner
        self._guard = guard
        self._limit_error: str | None = None
        self._host = host
        self._port = port
        self._loop = loop
        self._service = service
        self._ssl_context = ssl_context
        self._server_name = server_name
        self._channel: grpclib.client.Channel | None = None

    def _stub(self) -> HealthStub:
        if self._channel is None:
            options = tls_options(self._ssl_context, self._server_name)
            # The same limits as the stream's transport (see GuardedChannel).
            self._channel = GuardedChannel(
                self._host,
                self._port,
                guard=self._guard,
                on_limit=self._set_limit_error,
                **options,
            )
        return HealthStub(self._channel)

    def _set_limit_error(self, error: str | None) -> None:
        self._limit_error = error

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await trio_asyncio.aio_as_trio(fn, loop=self._loop)(*args)
        except UpstreamError:
            raise
        except _FAILURES as exc:
            if self._limit_error is not None:
                raise UpstreamError(self._limit_error) from None
            raise UpstreamError(_describe(exc)) from None

    # -- readiness -------------------------------------------------------

    async def check_ready(self) -> bool:
        status: int = await self._call(self._aio_check)
        return status == _SERVING

    async def _aio_check(self) -> int:
        reply = await self._stub().Check(HealthCheckRequest(service=self._service))
        return int(reply.status)

    # -- the stream -------------------------------------------------------

    async def run_stream(self, outbox: Outbox[Request], deliver: Deliver) -> None:
        await self._inner.run_stream(outbox, deliver)

    # -- liveness -------------------------------------------------------

    async def run_liveness(
        self, interval: float, answer_deadline: float, alive: Callable[[float | None], None]
    ) -> None:
        await self._call(self._aio_liveness, interval, answer_deadline, alive)

    async def _aio_liveness(
        self, interval: float, answer_deadline: float, alive: Callable[[float | None], None]
    ) -> None:
        watch = asyncio.ensure_future(self._aio_watch(alive))
        poll = asyncio.ensure_future(self._aio_poll(interval, answer_deadline, alive))
        try:
            done, _ = await asyncio.wait({watch, poll}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
            # Only the watch can end without raising (UNIMPLEMENTED): poll on.
            await poll
        finally:
            for task in (watch, poll):
                task.cancel()
            await asyncio.gather(watch, poll, return_exceptions=True)

    async def _aio_watch(self, alive: Callable[[float | None], None]) -> None:
        try:
            async with self._stub().Watch.open() as stream:
                await stream.send_message(HealthCheckRequest(service=self._service), end=True)
                async for reply in stream:
                    if reply.status != _SERVING:
                        raise UpstreamError(
                            f"the health service reports {_status_name(reply.status)}"
                        )
                    alive(None)
        except grpclib.exceptions.GRPCError as exc:
            if exc.status is grpclib.const.Status.UNIMPLEMENTED:
                return
            raise
        raise UpstreamError("the upstream ended the health Watch stream")

    async def _aio_poll(
        self, interval: float, answer_deadline: float, alive: Callable[[float | None], None]
    ) -> None:
        while True:
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(answer_deadline):
                    status = await self._aio_check()
            except TimeoutError:
                raise UpstreamError(
                    f"no health answer within alive_timeout ({answer_deadline:g}s)"
                ) from None
            if status != _SERVING:
                raise UpstreamError(f"the health service reports {_status_name(status)}")
            alive(time.perf_counter() - sent)
            await asyncio.sleep(interval)

    # -- closing --------------------------------------------------------

    async def aclose(self) -> None:
        channel, self._channel = self._channel, None
        try:
            await self._inner.aclose()
        finally:
            if channel is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await trio_asyncio.aio_as_trio(_close, loop=self._loop)(channel)


async def _close(channel: grpclib.client.Channel) -> None:
    channel.close()
