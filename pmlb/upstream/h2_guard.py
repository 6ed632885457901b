"""Limits on what an HTTP/2 upstream may make pmlb do, checked before h2 parses it.

Sans-IO and pure: :class:`FrameGuard` reads the 9-byte header of every frame
in the bytes the upstream sends (skipping payloads), and refuses the
connection with :class:`FloodError` when the upstream:

- sends a header block (HEADERS or PUSH_PROMISE and their CONTINUATION
  frames) longer than ``max_header_block`` bytes: h2 buffers up to 64
  CONTINUATION frames of up to the frame size pmlb accepts (1 MiB), so one
  endless block held 64 MiB although pmlb advertises a 64 KiB header list;
- sends control frames (SETTINGS, PING, PRIORITY, RST_STREAM, unknown
  types, empty DATA or CONTINUATION frames) faster than a token bucket of
  ``control_burst`` frames refilled at ``control_rate`` per second: each
  costs h2 some work, SETTINGS and PING an answer, and a flood starved every
  other task (Envoy's inbound flood limits are the model);
- owes more than ``max_outbound_control`` answers (SETTINGS and PING acks)
  not yet written: it does not read what it asks for (Envoy's
  ``max_outbound_control_frames``);
- sends more WINDOW_UPDATE frames than ``window_update_base`` plus
  ``window_updates_per_data_frame`` per DATA frame and per gRPC message
  pmlb sent (Envoy's ``max_inbound_window_update_frames_per_data_frame_sent``;
  the messages count too because a gRPC peer may credit each message as its
  application reads it: grpcio sent 131 WINDOW_UPDATEs for 200 small
  messages that pmlb had written in 3 DATA frames).

It also cuts the input so that h2 is handed at most ``frames_per_step``
frames at a time: the transport lets other tasks run between the pieces,
so one read (up to 256 KiB of 9-byte frames) never holds the event loop for
long.
"""

from __future__ import annotations

import struct

__all__ = ["FloodError", "FrameGuard"]

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE, _PING = range(7)
_GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 7, 8, 9
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4
#: frames that carry no stream data: each costs work and brings nothing
_CONTROL = frozenset({_PRIORITY, _RST_STREAM, _SETTINGS, _PING})
_KNOWN = frozenset(range(10))
_header = struct.Struct(">HBBB")  # length (24 bits, split as 16 + 8), type, flags

#: defaults (documented in the README's security section)
MAX_HEADER_BLOCK = 64 * 1024
CONTROL_BURST = 1000
CONTROL_RATE = 100.0
MAX_OUTBOUND_CONTROL = 1000
WINDOW_UPDATE_BASE = 100
WINDOW_UPDATES_PER_DATA_FRAME = 10
FRAMES_PER_STEP = 1000


class FloodError(Exception):
    """The upstream went past one of the limits; the text says which."""


class FrameGuard:
    """Watches the frames of one HTTP/2 connection, as the client, in the order received."""

    def __init__(
        self,
        *,
        max_header_block: int = MAX_HEADER_BLOCK,
        control_burst: int = CONTROL_BURST,
        control_rate: float = CONTROL_RATE,
        max_outbound_control: int = MAX_OUTBOUND_CONTROL,
        window_update_base: int = WINDOW_UPDATE_BASE,
        window_updates_per_data_frame: int = WINDOW_UPDATES_PER_DATA_FRAME,
        frames_per_step: int = FRAMES_PER_STEP,
    ) -> None:
        self.max_header_block = max_header_block
        self.control_burst = control_burst
        self.control_rate = control_rate
        self.max_outbound_control = max_outbound_control
        self.window_update_base = window_update_base
        self.window_updates_per_data_frame = window_updates_per_data_frame
        self.frames_per_step = frames_per_step
        self._pending = b""  # a frame header cut by the end of a read
        self._skip = 0  # payload bytes of the current frame still to come
        self._block: int | None = None  # bytes of the header block being received
        self._tokens = float(control_burst)
        self._refilled_at: float | None = None
        #: SETTINGS and PING acks h2 has queued since the last :meth:`written`
        self.owed = 0
        self.window_updates = 0
        self.data_frames_sent = 0
        self.messages_sent = 0
        self.frames = 0

    def sent_data_frames(self, count: int) -> None:
        """pmlb handed ``count`` more DATA frames to h2 (each may earn WINDOW_UPDATEs)."""
        self.data_frames_sent += count

    def sent_messages(self, count: int) -> None:
        """pmlb is writing ``count`` more gRPC messages (a peer may credit each as it reads it)."""
        self.messages_sent += count

    def written(self) -> None:
        """Everything h2 had to send was written: the acks owed are paid."""
        self.owed = 0

    def feed(self, data: bytes | bytearray, now: float) -> list[int]:
        """Check the frames ``data`` holds or begins; return where to cut it.

        The offsets returned end the pieces to hand h2 one after the other
        (the last is ``len(data)``), each with at most ``frames_per_step``
        frame headers. Raises :class:`FloodError` past a limit: nothing of
        ``data`` should then be handed to h2.
        """
        self._refill(now)
        cuts: list[int] = []
        end = len(data)
        pos = min(self._skip, end)
        self._skip -= pos
        in_step = 0
        if self._pending:
            need = 9 - len(self._pending)
            if end - pos < need:
                self._pending += bytes(data[pos:])
                return [end]
            header = self._pending + bytes(data[pos : pos + need])
            self._pending = b""
            pos += need
            self._frame(header, 0)
            in_step += 1
            pos = self._after_header(pos, end)
        while end - pos >= 9:
            if in_step == self.frames_per_step:
                cuts.append(pos)
                in_step = 0
            self._frame(data, pos)
            in_step += 1
            pos = self._after_header(pos + 9, end)
        if pos < end:
            self._pending = bytes(data[pos:end])
        cuts.append(end)
        return cuts

    def _after_header(self, pos: int, end: int) -> int:
        take = min(self._skip, end - pos)
        self._skip -= take
        return pos + take

    def _frame(self, data: bytes | bytearray, pos: int) -> None:
        high, low, kind, flags = _header.unpack_from(data, pos)
        length = high << 8 | low
        self._skip = length
        self.frames += 1
        block = self._block
        if kind == _CONTINUATION and block is not None:
            block += length
            self._block = None if flags & _END_HEADERS else block
            if block > self.max_header_block:
                raise FloodError(
                    f"a header block over {self.max_header_block} bytes"
                    " (HEADERS and CONTINUATION frames)"
                )
            if length == 0 and not flags & _END_HEADERS:
                self._control("empty CONTINUATION")
            return
        # Anything else in the middle of a header block is h2's protocol error.
        if kind in (_HEADERS, _PUSH_PROMISE):
            if length > self.max_header_block:
                raise FloodError(f"a header block over {self.max_header_block} bytes")
            if not flags & _END_HEADERS:
                self._block = length
        elif kind == _DATA:
            if length == 0 and not flags & _END_STREAM:
                self._control("empty DATA")
        elif kind == _WINDOW_UPDATE:
            self.window_updates += 1
            earned = self.data_frames_sent + self.messages_sent
            allowed = self.window_update_base + self.window_updates_per_data_frame * earned
            if self.window_updates > allowed:
                raise FloodError(
                    f"WINDOW_UPDATE flood: {self.window_updates} frames for"
                    f" {self.data_frames_sent} DATA frames and {self.messages_sent}"
                    f" messages sent (at most {self.window_update_base}"
                    f" + {self.window_updates_per_data_frame} per DATA frame or message)"
                )
        elif kind in _CONTROL or kind not in _KNOWN:
            if kind in (_SETTINGS, _PING) and not flags & _ACK:
                self.owed += 1
                if self.owed > self.max_outbound_control:
                    raise FloodError(
                        f"more than {self.max_outbound_control} SETTINGS/PING acks owed"
                        " and not written: the peer does not read them"
                    )
            self._control(_NAMES.get(kind, f"unknown (type {kind})"))

    def _control(self, what: str) -> None:
        self._tokens -= 1
        if self._tokens < 0:
            raise FloodError(
                f"control frame flood ({what} frames among them): more than"
                f" {self.control_burst} at once or {self.control_rate:g}/s sustained"
            )

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None:
            self._tokens = min(
                float(self.control_burst),
                self._tokens + (now - self._refilled_at) * self.control_rate,
            )
        self._refilled_at = now


_NAMES = {_PRIORITY: "PRIORITY", _RST_STREAM: "RST_STREAM", _SETTINGS: "SETTINGS", _PING: "PING"}
