"""Downstream framings: cutting a client's byte stream into messages, and back.

Pure and synchronous: the I/O layer reads ``decoder.read_size`` bytes, passes
them to :meth:`Decoder.feed` and forwards the messages it returns; outbound
messages become one write with :func:`frame`, or with the function
:func:`framer` returns, looked up once per connection.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from typing import Protocol

from pmlb.codecs.prefixed import PrefixedDecoder

__all__ = [
    "Decoder",
    "Framer",
    "Framing",
    "FramingError",
    "LengthPrefixDecoder",
    "LineDecoder",
    "MessageTooLarge",
    "RawDecoder",
    "frame",
    "framer",
    "make_decoder",
]

_READ_SIZE = 65536
_HEADER = struct.Struct(">I")
_MAX_PREFIXED_SIZE = 2**32 - 1


class Framing(enum.StrEnum):
    """How messages are delimited on a client connection."""

    RAW = "raw"
    """Each read from the socket is one message."""
    LINE = "line"
    """Messages end with ``b"\\n"``."""
    LENGTH = "length"
    """Each message follows its length as a 4-byte big-endian unsigned integer."""


class FramingError(Exception):
    """A client sent bytes that cannot be decoded as messages."""


class MessageTooLarge(FramingError):
    """A client's message is larger than the configured maximum.

    ``size`` is the message's size, or for an incomplete message
    (``partial=True``) the bytes received of it so far; ``limit`` is the maximum.
    """

    size: int
    limit: int

    def __init__(self, size: int, limit: int, *, partial: bool = False) -> None:
        what = "incomplete message of at least" if partial else "message of"
        super().__init__(f"{what} {size} bytes exceeds max_message_size {limit}")
        self.size = size
        self.limit = limit


class Decoder(Protocol):
    """Cuts a byte stream into messages.

    :class:`MessageTooLarge` is fatal: the caller closes the connection and
    drops the decoder, whose later behaviour is unspecified.
    """

    read_size: int
    """How many bytes the I/O layer should ask for per read."""

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message completed by them, in order."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held back until the rest of their message arrives."""
        ...


def _check_max_size(max_size: int) -> None:
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")


class RawDecoder:
    """Each non-empty :meth:`feed` is one message; nothing is ever buffered.

    ``read_size`` is one more than ``max_size``, so that a read larger than the
    limit is seen as such rather than silently cut in two.
    """

    def __init__(self, max_size: int) -> None:
        _check_max_size(max_size)
        self.read_size = max_size + 1
        self._max_size = max_size

    @property
    def buffered(self) -> int:
        """Always 0."""
        return 0

    def feed(self, data: bytes) -> list[bytes]:
        """Return ``[data]``, or ``[]`` for ``b""``; raise if it is over the limit."""
        if len(data) > self._max_size:
            raise MessageTooLarge(len(data), self._max_size)
        return [data] if data else []


class LineDecoder:
    """Messages delimited by ``b"\\n"``, which is not part of the message.

    A ``b"\\r"`` before the newline is kept, so CRLF clients' messages end in
    ``b"\\r"``. An empty line is the message ``b""``. ``max_size`` bounds a line
    without its newline; a line is rejected as soon as more than ``max_size``
    bytes of it have arrived, without waiting for its newline. After
    :class:`MessageTooLarge`, every later :meth:`feed` raises it again.
    """

    def __init__(self, max_size: int) -> None:
        _check_max_size(max_size)
        self.read_size = _READ_SIZE
        self._max_size = max_size
        # Only ever the start of an unfinished line: it holds no b"\n", so it
        # is never searched again and each byte is scanned once.
        self._partial = bytearray()
        self._error: MessageTooLarge | None = None

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished last line."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """Return the lines that ``data`` completes, without their newlines."""
        if self._error is not None:
            raise self._error
        lines = data.split(b"\n")
        tail = lines.pop()
        if lines:
            if self._partial:
                lines[0] = b"".join((self._partial, lines[0]))
            # Most reads fit the limit whole, so no line in them can exceed it.
            if len(self._partial) + len(data) > self._max_size:
                longest = max(map(len, lines))
                if longest > self._max_size:
                    self._error = MessageTooLarge(longest, self._max_size)
                    raise self._error
            self._partial.clear()
        pending = len(self._partial) + len(tail)
        if pending > self._max_size:
            self._error = MessageTooLarge(pending, self._max_size, partial=True)
            raise self._error
        self._partial += tail
        return lines


class LengthPrefixDecoder(PrefixedDecoder):
    """Messages each preceded by their length, a 4-byte big-endian unsigned integer.

    Zero-length messages are allowed. A length over ``max_size`` is rejected as
    soon as its 4 bytes arrive, before any of the body. After
    :class:`MessageTooLarge`, every later :meth:`feed` raises it again.
    """

    # No flag: a zero-width field (see PrefixedDecoder.header).
    header = struct.Struct(">0sI")

    def __init__(self, max_size: int) -> None:
        _check_max_size(max_size)
        super().__init__(max_size)
        self.read_size = _READ_SIZE

    def _refuse(self, flag: object, size: int, messages: list[bytes]) -> MessageTooLarge:
        return MessageTooLarge(size, self._max_size)


_DECODERS: dict[str, Callable[[int], Decoder]] = {
    Framing.RAW: RawDecoder,
    Framing.LINE: LineDecoder,
    Framing.LENGTH: LengthPrefixDecoder,
}

Framer = Callable[[Sequence[bytes]], bytes]
"""Encodes payloads as consecutive messages of one framing (see :func:`frame`)."""


def _frame_raw(payloads: Sequence[bytes]) -> bytes:
    return b"".join(payloads)


def _frame_line(payloads: Sequence[bytes]) -> bytes:
    # The trailing b"" puts a newline after the last payload too.
    return b"\n".join([*payloads, b""])


def _frame_length(payloads: Sequence[bytes]) -> bytes:
    parts: list[bytes] = []
    for payload in payloads:
        size = len(payload)
        if size > _MAX_PREFIXED_SIZE:
            raise ValueError(
                f"payload of {size} bytes does not fit a 4-byte length prefix "
                f"(at most {_MAX_PREFIXED_SIZE})"
            )
        parts.append(_HEADER.pack(size))
        parts.append(payload)
    return b"".join(parts)


# Keyed by str: a Framing is one (StrEnum), so its name finds it as well.
_FRAMERS: dict[str, Framer] = {
    Framing.RAW: _frame_raw,
    Framing.LINE: _frame_line,
    Framing.LENGTH: _frame_length,
}


def _unknown(framing: object) -> ValueError:
    allowed = ", ".join(f.value for f in Framing)
    return ValueError(f"unknown framing {framing!r}; expected one of: {allowed}")


def make_decoder(framing: Framing | str, max_size: int) -> Decoder:
    """Return a new decoder for ``framing`` accepting messages of up to ``max_size`` bytes."""
    try:
        make = _DECODERS[framing]
    except KeyError:
        raise _unknown(framing) from None
    return make(max_size)


def framer(framing: Framing | str) -> Framer:
    """The function that does :func:`frame` for ``framing``: look it up once, call it often."""
    try:
        return _FRAMERS[framing]
    except KeyError:
        raise _unknown(framing) from None


def frame(framing: Framing | str, payloads: Sequence[bytes]) -> bytes:
    """Encode ``payloads`` as consecutive messages in one bytes object.

    With line framing a payload containing ``b"\\n"`` reaches the client as
    several lines. With length framing a payload of 2**32 bytes or more raises
    :class:`ValueError`.
    """
    return framer(framing)(payloads)
