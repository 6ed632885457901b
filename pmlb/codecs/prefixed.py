"""Messages each behind a fixed-size header that ends with their length, sans-IO.

One decoder for the two such framings pmlb speaks: the downstream length
prefix (:class:`~pmlb.codecs.framing.LengthPrefixDecoder`, a 4-byte length)
and gRPC's message prefix (:class:`~pmlb.codecs.grpc.GrpcMessageDecoder`, a
flag byte then a 4-byte length). A subclass names its header and the error a
refused header raises; the cutting is here.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

__all__ = ["PrefixedDecoder"]


class PrefixedDecoder:
    """Cuts a byte stream into messages, each behind a ``header`` of (flag, length).

    A header whose flag is true or whose length is over ``max_size`` is
    refused as soon as it arrives, before any of the body: :meth:`feed`
    raises what :meth:`_refuse` returns, and every later :meth:`feed` raises
    what :meth:`_refuse_again` returns.
    """

    #: (flag, length) big-endian; a framing without a flag has a zero-width
    #: one (``"0s"``, always ``b""``), so that both share one loop with one test
    header: ClassVar[struct.Struct]

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        # Bound once: feed() runs per read, often for one small message.
        self._unpack = self.header.unpack_from
        self._header_size = self.header.size
        # The start of an unfinished message, its header included.
        self._partial = bytearray()
        self._error: Exception | None = None

    def _refuse(self, flag: Any, size: int, messages: list[bytes]) -> Exception:
        """The error for a refused header; ``messages`` were completed before it."""
        raise NotImplementedError

    def _refuse_again(self, error: Exception) -> Exception:
        """The error a :meth:`feed` after a refusal raises (``error`` itself here)."""
        return error

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished last message, its header included."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        """Return the messages that ``data`` completes, without their headers."""
        if self._error is not None:
            raise self._refuse_again(self._error)
        buf: bytes | bytearray
        if self._partial:
            self._partial += data
            buf = self._partial
        else:
            # Nothing pending: decode straight from data and copy only its tail.
            buf = data
        messages: list[bytes] = []
        pos = 0
        end = len(buf)
        unpack = self._unpack
        header_size = self._header_size
        max_size = self._max_size
        with memoryview(buf) as view:
            while end - pos >= header_size:
                flag, size = unpack(view, pos)
                if flag or size > max_size:
                    self._error = self._refuse(flag, size, messages)
                    raise self._error
                start = pos + header_size
                stop = start + size
                if stop > end:
                    break
                messages.append(view[start:stop].tobytes())
                pos = stop
            if buf is data:
                self._partial += view[pos:]
        if buf is self._partial:
            # Deleting a bytearray's head moves its start pointer, not its bytes.
            del self._partial[:pos]
        return messages
