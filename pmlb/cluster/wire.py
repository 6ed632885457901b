"""What nodes send each other over Redis pub/sub: sans-IO, no Redis, no Trio.

A bus message is a header (its kind and the sending node's name) followed by
records, each a 4-byte big-endian length and that many bytes. Records are
self-delimiting so that the flush script (:mod:`pmlb.cluster.scripts`) can
concatenate the records bound for one node behind one header without
understanding them: one PUBLISH per destination node, whatever the number of
replies. A ``REPLIES`` record is an ``OutputStreamRequest`` as an upstream
sent it; a ``REQUEST`` or ``ANSWER`` record is one JSON object (the admin
API of one node asking another, :mod:`pmlb.cluster.ops`).
"""

from __future__ import annotations

import enum
import struct
from typing import Final

_LENGTH: Final = struct.Struct(">I")
_NAME_LENGTH: Final = struct.Struct(">H")


class Kind(enum.Enum):
    """What a bus message carries; the value is its first byte on the wire."""

    #: upstream replies (serialized OutputStreamRequest), delivered to local clients only
    REPLIES = b"R"
    #: admin requests (JSON, see pmlb.cluster.ops), answered by an ANSWER to the origin
    REQUEST = b"Q"
    ANSWER = b"A"


_KINDS: Final = {kind.value: kind for kind in Kind}


class BusFormatError(ValueError):
    """A bus message that is not one pmlb wrote."""


def header(kind: Kind, origin: str) -> bytes:
    """The bytes every message of ``kind`` from node ``origin`` starts with."""
    name = origin.encode()
    return kind.value + _NAME_LENGTH.pack(len(name)) + name


def record(data: bytes) -> bytes:
    """``data`` as one record of a message body."""
    return _LENGTH.pack(len(data)) + data


def encode(kind: Kind, origin: str, records: list[bytes]) -> bytes:
    """A whole message: the header, then each of ``records`` framed."""
    return header(kind, origin) + b"".join(record(data) for data in records)


def decode(message: bytes) -> tuple[Kind, str, list[bytes]]:
    """The kind, origin node and records of ``message``; :class:`BusFormatError` if malformed."""
    if len(message) < 1 + _NAME_LENGTH.size:
        raise BusFormatError(f"bus message too short ({len(message)} bytes)")
    kind = _KINDS.get(message[:1])
    if kind is None:
        raise BusFormatError(f"unknown bus message kind {message[:1]!r}")
    (name_length,) = _NAME_LENGTH.unpack_from(message, 1)
    offset = 1 + _NAME_LENGTH.size + name_length
    if offset > len(message):
        raise BusFormatError("bus message ends inside its header")
    origin = message[1 + _NAME_LENGTH.size : offset].decode(errors="replace")
    records = []
    end = len(message)
    while offset < end:
        if offset + _LENGTH.size > end:
            raise BusFormatError("bus message ends inside a record's length")
        (length,) = _LENGTH.unpack_from(message, offset)
        offset += _LENGTH.size
        if offset + length > end:
            raise BusFormatError("bus message ends inside a record")
        records.append(message[offset : offset + length])
        offset += length
    return kind, origin, records
