"""One gRPC-over-HTTP/2 client connection on the ``h2`` sans-IO engine, on a Trio stream.

It owns the HTTP/2 state: the streams open on it, flow control, pings, the
frame guard, and the one-reader-at-a-time rule (whichever task waits reads the
socket for everybody). It knows gRPC's framing and status trailers, not pmlb's
service: :mod:`pmlb.upstream.h2_transport` opens the streams of the contract.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Callable
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from pmlb.codecs.grpc import (
    GrpcMessageDecoder,
    GrpcMessageError,
)
from pmlb.upstream import h2_trace
from pmlb.upstream.grpc_status import status_name
from pmlb.upstream.h2_guard import FloodError, FrameGuard
from pmlb.upstream.transport import UpstreamError

h2_trace.install()

_READ_SIZE = 256 * 1024
#: What we let the upstream send before it must wait for our WINDOW_UPDATE,
#: per stream and for the connection. Replies are consumed as they arrive,
#: so a large window only saves round trips.
_RECEIVE_WINDOW = 8 * 1024 * 1024
_MAX_FRAME_SIZE = 1024 * 1024
#: bytes of a stream's data written at most in one socket write
_WRITE_CHUNK = 256 * 1024


def _error_code_name(code: int | None) -> str:
    if code is None:
        return "no error code"
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


class Stream:
    """What has arrived on one HTTP/2 stream and not been consumed yet."""

    __slots__ = ("closed", "decoder", "error", "headers", "messages", "stream_id", "written")

    def __init__(self, stream_id: int, max_message_size: int) -> None:
        self.stream_id = stream_id
        self.decoder = GrpcMessageDecoder(max_message_size)
        self.messages: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        #: set once nothing more will come: why, or None for a clean end (status OK)
        self.closed = False
        self.error: str | None = None
        #: bytes of the current :meth:`Connection.send` handed to h2 so far
        self.written = 0

    def fail(self, error: str) -> None:
        if not self.closed:
            self.closed = True
            self.error = error

    def finish(self, trailers: dict[bytes, bytes]) -> None:
        """The stream ended; its status is in ``trailers`` (or the headers, trailers-only)."""
        if self.closed:
            return
        status = trailers.get(b"grpc-status")
        if status is None:
            self.fail("the upstream ended the stream without a grpc-status")
            return
        if status != b"0":
            code = int(status) if status.isdigit() else -1
            message = unquote(trailers.get(b"grpc-message", b"").decode("utf-8", "replace"))
            self.fail(f"gRPC status {status_name(code, status.decode())}: {message}")
            return
        if self.decoder.buffered:
            # Status OK, yet a reply was cut short: say so, never drop it unseen.
            self.fail(
                "the upstream ended the stream (status OK) in the middle of a message"
                f" ({self.decoder.buffered} bytes of it received, its header included)"
            )
            return
        self.closed = True


class Connection:
    """One HTTP/2 connection and the streams open on it."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        authority: str,
        scheme: str,
        max_message_size: int,
        guard: Callable[[], FrameGuard] = FrameGuard,
    ) -> None:
        self._socket = stream
        self._authority = authority.encode()
        self._scheme = scheme.encode()
        self._max_message_size = max_message_size
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.streams: dict[int, Stream] = {}
        #: set once the connection cannot be used any more, with why
        self.error: str | None = None
        self._reading = False
        self._writing = False
        self._changed = trio.lowlevel.ParkingLot()
        self._pings: dict[bytes, trio.Event] = {}
        self._ping_count = 0
        self._guard = guard()
        #: trio.current_time() of the last read from the upstream
        self.received_at = 0.0

    async def start(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _RECEIVE_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: _MAX_FRAME_SIZE,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            }
        )
        # h2 raises its frame size limit when the upstream acknowledges these
        # settings, but only from its next read: a larger frame arriving in
        # the same read as that ACK (legal: the upstream already has our
        # settings) would fail the connection as "overlong".
        self.h2.max_inbound_frame_size = _MAX_FRAME_SIZE
        self.h2.increment_flow_control_window(_RECEIVE_WINDOW - 65535)
        await self.flush()

    # -- failure --------------------------------------------------------

    def fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        for stream in self.streams.values():
            stream.fail(error)
        for event in self._pings.values():
            event.set()
        self._changed.unpark_all()

    def check(self) -> None:
        if self.error is not None:
            raise UpstreamError(self.error)

    # -- writing --------------------------------------------------------

    async def flush(self) -> None:
        """Write whatever h2 has to send. Safe to call from any task."""
        if self._writing:
            # The writing task loops until h2 has nothing left: ours included.
            return
        self._writing = True
        try:
            while data := self.h2.data_to_send():
                await self._socket.send_all(data)
            self._guard.written()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.fail(f"connection lost: {exc.__cause__ or exc}")
        except BaseException:
            # Cancelled in the middle of a write: the byte stream is torn.
            self.fail("a write to the upstream was interrupted")
            raise
        finally:
            self._writing = False
        self.check()

    # -- reading --------------------------------------------------------

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, reading the socket meanwhile if nobody else is.

        Raises :class:`UpstreamError` if the connection fails first (the
        condition should also hold when the stream it waits on is closed).
        """
        while not condition():
            self.check()
            if self._reading:
                await self._changed.park()
                continue
            self._reading = True
            try:
                data = await self._socket.receive_some(_READ_SIZE)
                if not data:
                    self.fail("the upstream closed the connection")
                    continue
                self.received_at = trio.current_time()
                await self._receive_checked(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.fail(f"connection lost: {exc.__cause__ or exc}")
                continue
            finally:
                self._reading = False
                # Another waiter takes over reading if this one is done.
                self._changed.unpark_all()
            # A failure here shows in the condition or in check() above.
            with contextlib.suppress(UpstreamError):
                await self.flush()

    async def _receive_checked(self, data: bytes | bytearray) -> None:
        """Hand ``data`` to h2 within the guard's limits, a bounded number of frames at a time."""
        try:
            cuts = self._guard.feed(data, trio.current_time())
        except FloodError as exc:
            self.fail(f"the upstream went past a limit: {exc}")
            return
        if len(cuts) == 1:
            self._receive(data)
            return
        view, start = memoryview(data), 0
        for cut in cuts:
            if start:
                # Let the other tasks run; not a cancellation point, since the
                # rest of the read must reach h2 for the byte stream to hold.
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._receive(view[start:cut])
            if self.error is not None:
                return
            start = cut

    def _receive(self, data: bytes | bytearray | memoryview) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.fail(f"HTTP/2 protocol error: {exc}")
            return
        streams = self.streams
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                stream = streams.get(event.stream_id)
                if event.flow_controlled_length:
                    # Consumed at once: replies are delivered as they arrive.
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if stream is None or stream.closed:
                    continue
                try:
                    stream.messages += stream.decoder.feed(event.data)
                except GrpcMessageError as exc:
                    # What came before the bad message is delivered first.
                    stream.messages += exc.messages
                    stream.fail(f"bad gRPC message from the upstream: {exc}")
                    self._reset(event.stream_id, h2.errors.ErrorCodes.CANCEL)
            elif isinstance(event, h2.events.ResponseReceived):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    self._response_headers(stream, dict(event.headers))
            elif isinstance(event, h2.events.TrailersReceived):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.finish(dict(event.headers))
            elif isinstance(event, h2.events.StreamEnded):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    # Trailers-only responses carry the status in the headers.
                    stream.finish(stream.headers)
            elif isinstance(event, h2.events.StreamReset):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.fail(
                        f"the upstream reset the stream ({_error_code_name(event.error_code)})"
                    )
            elif isinstance(event, h2.events.ConnectionTerminated):
                extra = (
                    f": {event.additional_data.decode(errors='replace')}"
                    if (event.additional_data)
                    else ""
                )
                self.fail(f"the upstream sent GOAWAY ({_error_code_name(event.error_code)}){extra}")
            elif isinstance(event, h2.events.PingAckReceived):
                waiter = self._pings.pop(event.ping_data, None)
                if waiter is not None:
                    waiter.set()
        self._changed.unpark_all()

    def _response_headers(self, stream: Stream, headers: dict[bytes, bytes]) -> None:
        stream.headers = headers
        status = headers.get(b":status")
        if status != b"200":
            stream.fail(f"HTTP status {status.decode() if status else 'missing'}")
            self._reset(stream.stream_id, h2.errors.ErrorCodes.CANCEL)
            return
        content_type = headers.get(b"content-type", b"")
        if not content_type.startswith(b"application/grpc"):
            stream.fail(f"not a gRPC response (content-type {content_type.decode()!r})")
            self._reset(stream.stream_id, h2.errors.ErrorCodes.CANCEL)

    def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):  # already closed
            self.h2.reset_stream(stream_id, code)

    # -- streams ---------------------------------------------------------

    async def open_stream(self, path: str) -> Stream:
        """Start a call to the method at ``path`` (headers sent, body open)."""
        self.check()
        try:
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(
                stream_id,
                [
                    (b":method", b"POST"),
                    (b":scheme", self._scheme),
                    (b":path", path.encode()),
                    (b":authority", self._authority),
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                    (b"user-agent", b"pmlb"),
                ],
            )
        except h2.exceptions.H2Error as exc:
            raise UpstreamError(f"cannot open a stream: {exc}") from None
        stream = Stream(stream_id, self._max_message_size)
        self.streams[stream_id] = stream
        await self.flush()
        return stream

    def close_stream(self, stream: Stream) -> None:
        """Forget ``stream``, resetting it if it is still open on our side."""
        self.streams.pop(stream.stream_id, None)
        h2_stream = self.h2.streams.get(stream.stream_id)
        if h2_stream is not None and not h2_stream.closed:
            self._reset(stream.stream_id, h2.errors.ErrorCodes.CANCEL)

    async def send(
        self,
        stream: Stream,
        data: bytes,
        *,
        end: bool = False,
        progress: Callable[[], None] | None = None,
        messages: int = 1,
    ) -> None:
        """Write ``data`` (``messages`` gRPC messages) on ``stream``, waiting for window as needed.

        However it ends, ``stream.written`` says how many bytes of ``data``
        were handed to h2 (and so may have reached the upstream).
        ``progress`` is called each time some of them were written.
        """
        h2conn = self.h2
        stream_id = stream.stream_id
        view = memoryview(data)
        pos, total = 0, len(data)
        stream.written = 0
        self._guard.sent_messages(messages)
        try:
            while pos < total:
                self.check()
                if stream.closed:
                    raise UpstreamError(stream.error or "the upstream ended the stream")
                window = h2conn.local_flow_control_window(stream_id)
                if window <= 0:
                    # Flush first: the peer may be waiting for what we have.
                    await self.flush()
                    await self.wait_until(
                        lambda: (
                            stream.closed
                            or self.error is not None
                            or h2conn.local_flow_control_window(stream_id) > 0
                        )
                    )
                    continue
                frame = min(window, h2conn.max_outbound_frame_size)
                # Hand what the window allows to h2 before one socket write, up
                # to _WRITE_CHUNK: a slow upstream then shows its progress
                # (one write of megabytes may take it seconds).
                frames = 0
                window = min(window, _WRITE_CHUNK)
                while pos < total and window > 0:
                    size = min(frame, window, total - pos)
                    h2conn.send_data(stream_id, view[pos : pos + size].tobytes())
                    pos += size
                    window -= size
                    stream.written = pos
                    frames += 1
                self._guard.sent_data_frames(frames)
                await self.flush()
                if progress is not None:
                    progress()
            if end:
                h2conn.end_stream(stream_id)
                await self.flush()
        except h2.exceptions.H2Error as exc:
            raise UpstreamError(f"HTTP/2 error: {exc}") from None

    async def ping(self) -> trio.Event:
        """Send a PING; the event is set when it is acknowledged (or the connection fails)."""
        self.check()
        self._ping_count += 1
        data = self._ping_count.to_bytes(8, "big")
        event = trio.Event()
        self._pings[data] = event
        self.h2.ping(data)
        await self.flush()
        return event

    async def aclose(self) -> None:
        self.fail("the connection was closed")
        with trio.CancelScope(shield=True):
            # Closing a broken connection may fail; it is closed all the same.
            with trio.move_on_after(1), contextlib.suppress(Exception):
                self.h2.close_connection()
                data = self.h2.data_to_send()
                if data and not self._writing:
                    await self._socket.send_all(data)
            await trio.aclose_forcefully(self._socket)
        # h2's connection refers to itself (its frame dispatch table holds its
        # bound methods), so only the cyclic collector would free it and what
        # it buffered, and pmlb's raised gc thresholds (pmlb.__main__.tune_gc)
        # kept dead connections piling up across reconnects. Break the cycle.
        table = getattr(self.h2, "_frame_dispatch_table", None)
        if isinstance(table, dict):
            table.clear()


def connect_reason(exc: BaseException) -> str:
    """Why a connection failed, in the OS's words ("connection refused").

    trio's ``open_tcp_stream`` raises "all attempts to connect to ... failed"
    with the real errors in an exception group as its cause: those are
    what an operator needs.
    """
    cause = exc.__cause__ or exc
    leaves = [cause]
    while any(isinstance(leaf, BaseExceptionGroup) for leaf in leaves):
        leaves = [
            inner
            for leaf in leaves
            for inner in (leaf.exceptions if isinstance(leaf, BaseExceptionGroup) else (leaf,))
        ]
    # An SSL error is an OSError too, but its errno is OpenSSL's, not the OS's.
    reasons = [
        os.strerror(leaf.errno).lower()
        if isinstance(leaf, OSError) and not isinstance(leaf, ssl.SSLError) and leaf.errno
        else str(leaf)
        for leaf in leaves
    ]
    return "; ".join(dict.fromkeys(reasons)) or type(exc).__name__
