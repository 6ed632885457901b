"""The PROXY protocol (HAProxy's, versions 1 and 2), sans-IO.

An L4 balancer in front of pmlb opens each connection with a header naming
the real client's address. :class:`ProxyHeaderParser` takes the bytes the
connection starts with and returns the header once it is complete, with the
bytes after it (the client's own data); anything that is not a valid header
raises :class:`ProxyProtocolError` as soon as the bytes prove it, without
waiting for more. The parser buffers at most one header (v1: 107 bytes, v2:
16 bytes plus the announced length, itself bounded by ``max_v2_length``).
:func:`encode_v1` and :func:`encode_v2` build headers (for tests and tools).

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "encode_v1",
    "encode_v2",
]

V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_CR = ord("\r")
_V2_FIXED = struct.Struct(">12sBBH")
_IPV4 = struct.Struct(">4s4sHH")
_IPV6 = struct.Struct(">16s16sHH")
# Address families (high nibble) and transports (low nibble) of v2.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_STREAM, _DGRAM = 1, 2
_UNIX_ADDRESS_LENGTH = 216


class ProxyProtocolError(Exception):
    """The connection did not start with a valid PROXY protocol header."""


@attrs.frozen
class ProxyHeader:
    """A parsed header.

    ``source`` and ``destination`` are ``(host, port)``, or ``None`` when the
    header carries no usable address (v1 ``UNKNOWN``, v2 ``LOCAL``, UNSPEC or
    UNIX): the connection's own addresses then stand.
    """

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


class ProxyHeaderParser:
    """Reads one PROXY header from the start of a connection.

    Call :meth:`feed` with each chunk received until it returns a
    ``(header, rest)`` pair; ``rest`` is what followed the header.
    """

    def __init__(self, *, max_v2_length: int = 4096) -> None:
        self._buffer = bytearray()
        self._max_v2_length = max_v2_length
        self._done = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """Add received bytes; the header and the rest once complete, else ``None``."""
        if self._done:
            raise RuntimeError("the header was already parsed")
        self._buffer += data
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[0] == _V1_PREFIX[0]:
            result = self._v1(buffer)
        elif buffer[0] == V2_SIGNATURE[0]:
            result = self._v2(buffer)
        else:
            raise ProxyProtocolError("not a PROXY protocol header")
        if result is not None:
            self._done = True
            self._buffer = bytearray()
        return result

    # -- version 1 ------------------------------------------------------

    def _v1(self, buffer: bytearray) -> tuple[ProxyHeader, bytes] | None:
        prefix = bytes(buffer[: len(_V1_PREFIX)])
        if not _V1_PREFIX.startswith(prefix):
            raise ProxyProtocolError("not a PROXY protocol header")
        # The line ends at its first LF, which must follow a CR: a bare LF is
        # refused whether or not a CRLF comes later, so that the verdict
        # does not depend on how the bytes were split into reads.
        newline = buffer.find(b"\n", 0, V1_MAX_LENGTH)
        if newline < 0:
            if len(buffer) >= V1_MAX_LENGTH:
                raise ProxyProtocolError(
                    f"PROXY v1 header without CRLF in its first {V1_MAX_LENGTH} bytes"
                )
            return None
        end = newline - 1
        if buffer[end] != _CR:
            raise ProxyProtocolError("PROXY v1 header with a LF not preceded by CR")
        header = _parse_v1(bytes(buffer[len(_V1_PREFIX) : end]))
        return header, bytes(buffer[end + 2 :])

    # -- version 2 ------------------------------------------------------

    def _v2(self, buffer: bytearray) -> tuple[ProxyHeader, bytes] | None:
        if not V2_SIGNATURE.startswith(bytes(buffer[: len(V2_SIGNATURE)])):
            raise ProxyProtocolError("not a PROXY protocol header")
        if len(buffer) < _V2_FIXED.size:
            return None
        _, version_command, family, length = _V2_FIXED.unpack_from(buffer)
        if version_command >> 4 != 2:
            raise ProxyProtocolError(f"PROXY v2 header with version {version_command >> 4}")
        command = version_command & 0x0F
        if command > 1:
            raise ProxyProtocolError(f"PROXY v2 header with unknown command {command}")
        if length > self._max_v2_length:
            raise ProxyProtocolError(
                f"PROXY v2 header of {length} bytes exceeds the limit of {self._max_v2_length}"
            )
        end = _V2_FIXED.size + length
        if len(buffer) < end:
            return None
        body = bytes(buffer[_V2_FIXED.size : end])
        header = _parse_v2(command, family, body)
        return header, bytes(buffer[end:])


def _parse_v1(line: bytes) -> ProxyHeader:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
    parts = text.split(" ")
    if parts[0] == "UNKNOWN":
        return ProxyHeader(1, None, None)
    if len(parts) != 5 or parts[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed PROXY v1 header {text[:V1_MAX_LENGTH]!r}")
    kind = ipaddress.IPv4Address if parts[0] == "TCP4" else ipaddress.IPv6Address
    try:
        source, destination = kind(parts[1]), kind(parts[2])
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 header with a bad {parts[0]} address") from None
    return ProxyHeader(1, (str(source), _v1_port(parts[3])), (str(destination), _v1_port(parts[4])))


def _v1_port(text: str) -> int:
    # The spec forbids leading zeros and signs; int() would accept both.
    if not (text.isascii() and text.isdigit()) or (text != "0" and text.startswith("0")):
        raise ProxyProtocolError(f"PROXY v1 header with a bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"PROXY v1 header with a bad port {text!r}")
    return port


def _parse_v2(command: int, family: int, body: bytes) -> ProxyHeader:
    address_family, transport = family >> 4, family & 0x0F
    if address_family > _AF_UNIX or transport > _DGRAM:
        raise ProxyProtocolError(f"PROXY v2 header with unknown family 0x{family:02x}")
    needed = {_AF_INET: _IPV4.size, _AF_INET6: _IPV6.size, _AF_UNIX: _UNIX_ADDRESS_LENGTH}.get(
        address_family, 0
    )
    if len(body) < needed:
        raise ProxyProtocolError(
            f"PROXY v2 header too short for its addresses ({len(body)} < {needed} bytes)"
        )
    # LOCAL: the balancer's own connection (a health check); UNSPEC and UNIX
    # carry no IP address. The connection's own addresses stand for all three.
    if command == 0 or address_family in (_AF_UNSPEC, _AF_UNIX):
        return ProxyHeader(2, None, None)
    layout = _IPV4 if address_family == _AF_INET else _IPV6
    src, dst, sport, dport = layout.unpack_from(body)
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return ProxyHeader(2, (str(source), sport), (str(destination), dport))


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 header; ``UNKNOWN`` when either address is ``None``."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    kind = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {kind} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header (``PROXY`` over TCP, or ``LOCAL`` when an address is ``None``)."""
    if source is None or destination is None:
        return _V2_FIXED.pack(V2_SIGNATURE, 0x20, 0, len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version == 4:
        family, body = 0x11, _IPV4.pack(src.packed, dst.packed, source[1], destination[1])
    else:
        family, body = 0x21, _IPV6.pack(src.packed, dst.packed, source[1], destination[1])
    body += tlvs
    return _V2_FIXED.pack(V2_SIGNATURE, 0x21, family, len(body)) + body
