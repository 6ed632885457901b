"""An in-process gRPC upstream on h2 and Trio that can misbehave on purpose.

It serves the upstream contract over any Trio stream (a memory stream in the
unit tests), echoes each client message as ``echo:<payload>``, and can reset
the stream, send GOAWAY, drop the connection, hold back its flow-control
window, send oversized or malformed replies, or stop answering liveness.
With ``acks``, it acknowledges what it got, on its replies or alone, or
holds its acknowledgements back. It records what it got.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterable

import attrs
import h2.config
import h2.connection
import h2.errors
import h2.events
import trio
from google.protobuf.message import Message

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.grpc import GrpcMessageDecoder, encode_messages

_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame as bytes, whatever h2 would allow (for attacks)."""
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id)
    return header + payload


@attrs.define
class FakeUpstream:
    ready: bool = True
    #: answer ``ready`` with this grpc-status (trailers-only) instead
    ready_status: tuple[int, str] | None = None
    #: reset the stream (INTERNAL_ERROR) once this many messages arrived
    reset_after: int | None = None
    #: send GOAWAY once this many messages arrived
    goaway_after: int | None = None
    #: acknowledge received DATA (reopening the 64 KiB default window) only
    #: once ``open_window`` is set
    hold_window: bool = False
    open_window: trio.Event = attrs.Factory(trio.Event)
    reply_padding: int = 0
    malformed: bool = False
    #: raw bytes sent after the echoes of each read, in the same DATA frame
    #: (a malformed message, the header of an oversized one...)
    trailing: bytes = b""
    live: bool | None = True  # None: never answer
    #: end the bidi stream with this grpc-status once this many messages arrived
    end_after: tuple[int, int, str] | None = None
    #: close the connection without a word once this many messages arrived
    kill_after: int | None = None
    #: acknowledge each request's seq: "reply" on its echo, "alone" in a
    #: message of acks only after the echoes; None: never
    acks: str | None = None
    #: with acks: keep the acks back until ``release_acks`` is set (then
    #: they go, alone, and the following ones as usual)
    hold_acks: bool = False
    release_acks: trio.Event = attrs.Factory(trio.Event)
    #: with acks: also acknowledge these seqs, every time
    extra_acks: list[int] = attrs.Factory(list)
    #: raw bytes written, chunk by chunk, once the first message arrives on a
    #: bidi stream (called with that stream's id), past h2's own state
    attack: Callable[[int], Iterable[bytes]] | None = None
    #: chunks of ``attack`` written so far
    attack_sent: int = 0

    received: list[pb.InputStreamRequest] = attrs.Factory(list)
    #: flow-controlled bytes received on bidi streams
    received_bytes: int = 0
    #: DATA frames that carried client messages on the bidi stream
    data_frames: int = 0
    pings: int = 0
    connections: int = 0
    #: (connection, stream id) of the streams whose response headers were sent
    _started: set[tuple[int, int]] = attrs.Factory(set)
    _ended: set[tuple[int, int]] = attrs.Factory(set)
    _held_acks: list[tuple[int, list[int]]] = attrs.Factory(list)
    _changed: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked after each read."""
        while not predicate():
            await self._changed.park()

    async def serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        paths: dict[int, bytes] = {}
        decoders: dict[int, GrpcMessageDecoder] = {}
        unacked: list[tuple[int, int]] = []
        held: list[tuple[int, list[int]]] = []  # acks held back: (stream id, seqs)
        self._held_acks = held
        # the window opener and the main loop both send (at once, on a socket)
        sending = trio.Lock()

        async def send_pending() -> None:
            async with sending:
                if out := conn.data_to_send():
                    await stream.send_all(out)

        async with stream, trio.open_nursery() as nursery:

            async def window_opener() -> None:
                await self.open_window.wait()
                for stream_id, size in unacked:
                    conn.acknowledge_received_data(size, stream_id)
                unacked.clear()
                await send_pending()

            async def acks_releaser() -> None:
                await self.release_acks.wait()
                for stream_id, seqs in held:
                    self._send(conn, stream_id, [pb.OutputStreamRequest(acks=seqs)])
                held.clear()
                await send_pending()

            if self.hold_window:
                nursery.start_soon(window_opener)
            if self.hold_acks:
                nursery.start_soon(acks_releaser)

            async def attacker(stream_id: int) -> None:
                assert self.attack is not None
                # the client drops the connection when it has seen enough
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    for chunk in self.attack(stream_id):
                        async with sending:
                            await stream.send_all(chunk)
                        self.attack_sent += 1

            await send_pending()
            attacked = False
            while data := await stream.receive_some(65536):
                if conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
                    continue  # after our GOAWAY: what the client still sends is ignored
                for event in conn.receive_data(data):
                    self._handle(conn, event, paths, decoders, unacked)
                if self.kill_after is not None and len(self.received) >= self.kill_after:
                    self._changed.unpark_all()
                    break  # no reply, no GOAWAY: the connection just closes
                if self.attack is not None and not attacked and self.received:
                    attacked = True
                    bidi = max(
                        i for i, p in paths.items() if p.endswith(b"/bidirectionalStreaming")
                    )
                    nursery.start_soon(attacker, bidi)
                await send_pending()
                self._changed.unpark_all()
            nursery.cancel_scope.cancel()

    def _handle(
        self,
        conn: h2.connection.H2Connection,
        event: h2.events.Event,
        paths: dict[int, bytes],
        decoders: dict[int, GrpcMessageDecoder],
        unacked: list[tuple[int, int]],
    ) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            assert event.headers is not None
            headers = dict(event.headers)
            paths[event.stream_id] = headers[b":path"]
            decoders[event.stream_id] = GrpcMessageDecoder()
            assert headers[b"content-type"] == b"application/grpc"
            assert headers[b"te"] == b"trailers"
        elif isinstance(event, h2.events.PingReceived):
            self.pings += 1
        elif isinstance(event, h2.events.DataReceived):
            stream_id = event.stream_id
            assert stream_id is not None
            assert event.data is not None
            size = event.flow_controlled_length or 0
            if self.hold_window and not self.open_window.is_set():
                unacked.append((stream_id, size))
            elif size:
                conn.acknowledge_received_data(size, stream_id)
            messages = decoders[stream_id].feed(event.data)
            path = paths[stream_id]
            if path.endswith(b"/bidirectionalStreaming"):
                self.data_frames += 1
                self.received_bytes += size
                self._stream(conn, stream_id, messages)
            elif path.endswith(b"/live"):
                for _ in messages:
                    if self.live is not None:
                        self._send(conn, stream_id, [pb.LiveResult(live=self.live)])
        elif isinstance(event, h2.events.StreamEnded):
            stream_id = event.stream_id
            assert stream_id is not None
            if paths.get(stream_id, b"").endswith(b"/ready"):
                if self.ready_status is not None:
                    code, message = self.ready_status
                    conn.send_headers(
                        stream_id,
                        [*_HEADERS, (b"grpc-status", b"%d" % code), (b"grpc-message", message)],
                        end_stream=True,
                    )
                    return
                self._send(conn, stream_id, [pb.ReadyResult(ready=self.ready)])
                conn.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)

    def _send(
        self,
        conn: h2.connection.H2Connection,
        stream_id: int,
        messages: list[Message],
        trailing: bytes = b"",
    ) -> None:
        if (id(conn), stream_id) not in self._started:
            self._started.add((id(conn), stream_id))
            conn.send_headers(stream_id, _HEADERS)
        raw = [b"\x0a\x05ab" if self.malformed else m.SerializeToString() for m in messages]
        # No empty DATA frame when a frame carried only part of a message:
        # legal HTTP/2, but grpclib takes one for the end of the stream.
        if raw:
            conn.send_data(stream_id, encode_messages(raw) + trailing)

    def _stream(self, conn: h2.connection.H2Connection, stream_id: int, raw: list[bytes]) -> None:
        requests = [pb.InputStreamRequest.FromString(m) for m in raw]
        self.received += requests
        if (id(conn), stream_id) in self._ended:
            # Sent before the client saw this side end the stream: received, not answered.
            return
        if self.attack is not None:
            return  # the attack is all this stream gets
        count = len(self.received)
        if self.reset_after is not None and count >= self.reset_after:
            self._ended.add((id(conn), stream_id))  # what follows in this read is ignored
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        if self.goaway_after is not None and count >= self.goaway_after:
            conn.close_connection(h2.errors.ErrorCodes.NO_ERROR, additional_data=b"bye")
            return
        if self.kill_after is not None and count >= self.kill_after:
            return
        padding = b"x" * self.reply_padding
        replies = [
            pb.OutputStreamRequest(
                client_uuid=r.client_uuid, payload=b"echo:" + r.payload + padding
            )
            for r in requests
        ]
        acks = [r.seq for r in requests]
        if self.acks is not None and self.hold_acks and not self.release_acks.is_set():
            self._held_acks.append((stream_id, acks))
        elif self.acks == "reply":
            for reply, seq in zip(replies, acks, strict=True):
                reply.acks.append(seq)
            if replies:
                replies[-1].acks.extend(self.extra_acks)
        elif self.acks == "alone":
            replies.append(pb.OutputStreamRequest(acks=acks + self.extra_acks))
        self._send(conn, stream_id, replies, self.trailing)
        if self.end_after is not None and count >= self.end_after[0]:
            self._ended.add((id(conn), stream_id))
            _, code, message = self.end_after
            conn.send_headers(
                stream_id,
                [(b"grpc-status", b"%d" % code), (b"grpc-message", message.encode())],
                end_stream=True,
            )
