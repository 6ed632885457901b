"""gRPC's message framing inside an HTTP/2 stream, sans-IO.

Each message is a 1-byte compressed flag, a 4-byte big-endian length, then
the message. pmlb never negotiates compression, so a set flag is an error.
Pure and synchronous: the transport feeds the DATA it receives to
:meth:`GrpcMessageDecoder.feed` and writes what :func:`encode_messages`
returns.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "GrpcMessageDecoder",
    "GrpcMessageError",
    "encode_messages",
]

#: gRPC's customary default limit on a received message.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024

_HEADER = struct.Struct(">BI")
_pack_header = _HEADER.pack


class GrpcMessageError(Exception):
    """The peer sent bytes that are not acceptable gRPC messages.

    :attr:`messages` holds the messages that the failing :meth:`feed
    <GrpcMessageDecoder.feed>` completed before the bad one: they were
    valid and are the caller's to deliver.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.messages: list[bytes] = []


def encode_messages(messages: Iterable[bytes]) -> bytes:
    """``messages`` framed one after the other, uncompressed, as one buffer."""
    parts: list[bytes] = []
    append = parts.append
    for message in messages:
        append(_pack_header(0, len(message)))
        append(message)
    return b"".join(parts)


class GrpcMessageDecoder:
    """Cuts a stream's DATA into messages, whatever the DATA boundaries.

    A message over ``max_size`` is rejected as soon as its 5-byte header
    arrives, before its body is buffered. The messages completed before a
    bad one come with the error (:attr:`GrpcMessageError.messages`). After
    an error every later :meth:`feed` raises it again (with no messages).
    """

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self._max_size = max_size
        self._partial = bytearray()
        self._error: GrpcMessageError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished message, its header included."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """Return the messages that ``data`` completes, without their headers."""
        if self._error is not None:
            self._error.messages = []
            raise self._error
        buf: bytes | bytearray
        if self._partial:
            self._partial += data
            buf = self._partial
        else:
            buf = data
        messages: list[bytes] = []
        pos = 0
        end = len(buf)
        unpack = _HEADER.unpack_from
        with memoryview(buf) as view:
            while end - pos >= 5:
                flag, size = unpack(view, pos)
                if flag:
                    self._error = GrpcMessageError(
                        f"compressed message (flag {flag}) but no compression was negotiated"
                    )
                    self._error.messages = messages
                    raise self._error
                if size > self._max_size:
                    self._error = GrpcMessageError(
                        f"message of {size} bytes exceeds the maximum of {self._max_size}"
                    )
                    self._error.messages = messages
                    raise self._error
                start = pos + 5
                stop = start + size
                if stop > end:
                    break
                messages.append(view[start:stop].tobytes())
                pos = stop
            if buf is data:
                self._partial += view[pos:]
        if buf is self._partial:
            del self._partial[:pos]
        return messages
