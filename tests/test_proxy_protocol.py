"""The PROXY protocol parser: valid headers under any split, and every way to be invalid."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmlb.codecs.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
)

ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: str(ipaddress.IPv6Address(int(a))))
addresses = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
    st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
)


def feed_split(data: bytes, cuts: list[int], header_length: int) -> tuple[ProxyHeader, bytes]:
    """Feed ``data`` cut at ``cuts``: the header must come with its last byte, not before."""
    parser = ProxyHeaderParser()
    points = sorted({min(c, len(data)) for c in cuts} | {0, header_length, len(data)})
    for start, end in itertools.pairwise(points):
        result = parser.feed(data[start:end])
        if end < header_length:
            assert result is None, "header reported before its last byte"
        else:
            assert result is not None, "header not reported with its last byte"
            return result[0], result[1] + data[end:]
    raise AssertionError("unreachable: header_length <= len(data)")


@given(addresses, st.binary(max_size=64), st.lists(st.integers(0, 200), max_size=8))
def test_v1_round_trip(
    pair: tuple[tuple[str, int], tuple[str, int]], rest: bytes, cuts: list[int]
) -> None:
    source, destination = pair
    header = encode_v1(source, destination)
    parsed, after = feed_split(header + rest, cuts, len(header))
    assert parsed == ProxyHeader(1, source, destination)
    assert after == rest


@given(
    addresses,
    st.binary(max_size=64),
    st.binary(max_size=32),
    st.lists(st.integers(0, 200), max_size=8),
)
def test_v2_round_trip(
    pair: tuple[tuple[str, int], tuple[str, int]], rest: bytes, tlvs: bytes, cuts: list[int]
) -> None:
    source, destination = pair
    header = encode_v2(source, destination, tlvs=tlvs)
    parsed, after = feed_split(header + rest, cuts, len(header))
    assert parsed == ProxyHeader(2, source, destination)
    assert after == rest


@pytest.mark.parametrize(
    "header",
    [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", encode_v2(None, None)],
)
def test_no_address(header: bytes) -> None:
    parsed, rest = ProxyHeaderParser().feed(header + b"hello") or (None, b"")
    assert parsed is not None
    assert parsed.source is None
    assert parsed.destination is None
    assert rest == b"hello"


def test_v2_unix_and_unspec_carry_no_address() -> None:
    unix = V2_SIGNATURE + bytes([0x21, 0x31]) + (216).to_bytes(2, "big") + bytes(216)
    unspec = V2_SIGNATURE + bytes([0x21, 0x00, 0, 3]) + b"abc"
    for header in (unix, unspec):
        result = ProxyHeaderParser().feed(header)
        assert result == (ProxyHeader(2, None, None), b"")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (b"PROXZ", "not a PROXY protocol header"),
        (b"\r\n\r\n\x00\r\nQUIX", "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF not preceded by CR"),
        # Refused even with a CRLF after it, as it is when the LF arrives alone.
        (b"PROXY UNKNOWN x\ny\r\n", "LF not preceded by CR"),
        (b"PROXY " + b"x" * 120, "without CRLF"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "malformed PROXY v1"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed PROXY v1"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "malformed PROXY v1"),
        (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "bad TCP4 address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad TCP6 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n", "not ASCII"),
        (V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]), "version 1"),
        (V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]), "unknown command"),
        (V2_SIGNATURE + bytes([0x21, 0x41, 0, 0]), "unknown family"),
        (V2_SIGNATURE + bytes([0x21, 0x13, 0, 0]), "unknown family"),
        (V2_SIGNATURE + bytes([0x21, 0x11, 0, 4]) + bytes(4), "too short"),
        (V2_SIGNATURE + bytes([0x21, 0x21, 0, 12]) + bytes(12), "too short"),
        (V2_SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]), "exceeds the limit"),
    ],
)
def test_invalid(data: bytes, problem: str) -> None:
    with pytest.raises(ProxyProtocolError, match=problem):
        ProxyHeaderParser().feed(data)


def test_invalid_seen_from_the_first_wrong_byte() -> None:
    # A client that does not speak the protocol is refused at once, not after
    # a timeout: each of these is at most a few bytes.
    for data in (b"h", b"PX", b"\r\n\r\n\x01"):
        with pytest.raises(ProxyProtocolError):
            ProxyHeaderParser().feed(data)


def test_incomplete_waits() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"") is None
    assert parser.feed(b"PROXY TCP4 1.2.3.4") is None
    assert parser.buffered == 18


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_arbitrary_bytes_never_crash(data: bytes, cuts: list[int]) -> None:
    parser = ProxyHeaderParser(max_v2_length=256)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    try:
        for start, end in itertools.pairwise(points):
            if parser.feed(data[start:end]) is not None:
                break
    except ProxyProtocolError:
        pass
    assert parser.buffered <= 16 + 256
