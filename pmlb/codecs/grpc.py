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

from pmlb.codecs.prefixed import PrefixedDecoder

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


class GrpcMessageDecoder(PrefixedDecoder):
    """Cuts a stream's DATA into messages, whatever the DATA boundaries.

    A message over ``max_size`` is rejected as soon as its 5-byte header
    arrives, before its body is buffered. The messages completed before a
    bad one come with the error (:attr:`GrpcMessageError.messages`). After
    an error every later :meth:`feed` raises it again (with no messages).
    """

    header = _HEADER

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        super().__init__(max_size)

    def _refuse(self, flag: int, size: int, messages: list[bytes]) -> GrpcMessageError:
        if flag:
            error = GrpcMessageError(
                f"compressed message (flag {flag}) but no compression was negotiated"
            )
        else:
            error = GrpcMessageError(
                f"message of {size} bytes exceeds the maximum of {self._max_size}"
            )
        error.messages = messages
        return error

    def _refuse_again(self, error: Exception) -> Exception:
        assert isinstance(error, GrpcMessageError)
        error.messages = []
        return error
