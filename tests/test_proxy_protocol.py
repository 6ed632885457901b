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


def test_encode_v2_is_the_specifications_layout() -> None:
    # signature, version 2 + PROXY, TCP over IPv4, 12 bytes: addresses, then ports
    assert encode_v2(("1.2.3.4", 5), ("5.6.7.8", 258)) == (
        V2_SIGNATURE + b"\x21\x11\x00\x0c" + b"\x01\x02\x03\x04\x05\x06\x07\x08\x00\x05\x01\x02"
    )
    # TCP over IPv6, 36 bytes, the TLVs after the addresses and counted in the length
    assert encode_v2(("::1", 1), ("::2", 2), tlvs=b"\x04\x00\x01z") == (
        V2_SIGNATURE
        + b"\x21\x21\x00\x28"
        + bytes(15)
        + b"\x01"
        + bytes(15)
        + b"\x02\x00\x01\x00\x02\x04\x00\x01z"
    )


def test_encode_v2_without_an_address_is_local() -> None:
    assert encode_v2(None, None) == V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert encode_v2(("1.2.3.4", 5), None, tlvs=b"ab") == V2_SIGNATURE + b"\x20\x00\x00\x02ab"
    assert encode_v2(None, ("1.2.3.4", 5)) == V2_SIGNATURE + b"\x20\x00\x00\x00"


def test_encode_v1_is_the_specifications_line() -> None:
    assert encode_v1(("1.2.3.4", 5), ("5.6.7.8", 6)) == b"PROXY TCP4 1.2.3.4 5.6.7.8 5 6\r\n"
    assert encode_v1(("::1", 5), ("::2", 6)) == b"PROXY TCP6 ::1 ::2 5 6\r\n"
    assert encode_v1(("1.2.3.4", 5), None) == b"PROXY UNKNOWN\r\n"
    assert encode_v1(None, ("1.2.3.4", 5)) == b"PROXY UNKNOWN\r\n"


def test_a_v1_line_of_107_bytes_is_taken_and_of_108_refused() -> None:
    longest = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(longest) == 107
    assert ProxyHeaderParser().feed(longest + b"rest") == (ProxyHeader(1, None, None), b"rest")
    parser = ProxyHeaderParser()
    assert parser.feed(longest[:-1]) is None  # 106 bytes, no LF yet: may still end
    too_long = b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"
    with pytest.raises(
        ProxyProtocolError, match=r"^PROXY v1 header without CRLF in its first 107 bytes$"
    ):
        ProxyHeaderParser().feed(too_long)
    with pytest.raises(ProxyProtocolError, match="without CRLF in its first 107 bytes"):
        ProxyHeaderParser().feed(too_long[:107])


def test_a_v2_header_at_the_length_limit_is_taken_and_one_more_refused() -> None:
    body = bytes(4096)
    at_limit = V2_SIGNATURE + b"\x21\x00\x10\x00" + body
    assert ProxyHeaderParser().feed(at_limit) == (ProxyHeader(2, None, None), b"")
    with pytest.raises(
        ProxyProtocolError, match=r"^PROXY v2 header of 4097 bytes exceeds the limit of 4096$"
    ):
        ProxyHeaderParser().feed(V2_SIGNATURE + b"\x21\x00\x10\x01")
    small = ProxyHeaderParser(max_v2_length=3)
    assert small.feed(V2_SIGNATURE + b"\x21\x00\x00\x03abc") == (ProxyHeader(2, None, None), b"")


def test_a_v2_datagram_header_carries_its_addresses() -> None:
    # UDP over IPv4 (0x12): the addresses are read as for TCP
    header = V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2])
    assert ProxyHeaderParser().feed(header) == (
        ProxyHeader(2, ("10.0.0.1", 1), ("10.0.0.2", 2)),
        b"",
    )


def test_after_the_header_the_parser_holds_nothing_and_takes_nothing() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN\r\nab") == (ProxyHeader(1, None, None), b"ab")
    assert parser.buffered == 0
    with pytest.raises(RuntimeError, match=r"^the header was already parsed$"):
        parser.feed(b"cd")
    v2 = ProxyHeaderParser()
    assert v2.feed(encode_v2(None, None)) == (ProxyHeader(2, None, None), b"")
    assert v2.buffered == 0
    with pytest.raises(RuntimeError, match="already parsed"):
        v2.feed(b"")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"GET /", "not a PROXY protocol header"),
        (b"PROXZ", "not a PROXY protocol header"),
        (b"\r\n\r\n\x00\r\nQUIX", "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "PROXY v1 header with a LF not preceded by CR"),
        (b"PROXY TCP5 1 2 3 4\r\n", "malformed PROXY v1 header 'TCP5 1 2 3 4'"),
        (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "PROXY v1 header with a bad TCP4 address"),
        (b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n", "PROXY v1 header with a bad TCP6 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "PROXY v1 header with a bad port '65536'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n", "PROXY v1 header with a bad port '00'"),
        (b"PROXY \xff\r\n", "PROXY v1 header is not ASCII"),
        (V2_SIGNATURE + bytes([0x31, 0x11, 0, 12]), "PROXY v2 header with version 3"),
        (V2_SIGNATURE + bytes([0x2F, 0x11, 0, 12]), "PROXY v2 header with unknown command 15"),
        (V2_SIGNATURE + bytes([0x21, 0x41, 0, 0]), "PROXY v2 header with unknown family 0x41"),
        (
            V2_SIGNATURE + bytes([0x21, 0x31, 0, 4]) + bytes(4),
            "PROXY v2 header too short for its addresses (4 < 216 bytes)",
        ),
        (
            V2_SIGNATURE + bytes([0x21, 0x21, 0, 35]) + bytes(35),
            "PROXY v2 header too short for its addresses (35 < 36 bytes)",
        ),
        (
            V2_SIGNATURE + bytes([0x21, 0x11, 0, 11]) + bytes(11),
            "PROXY v2 header too short for its addresses (11 < 12 bytes)",
        ),
    ],
)
def test_each_refusal_says_exactly_what_is_wrong(data: bytes, problem: str) -> None:
    with pytest.raises(ProxyProtocolError) as refused:
        ProxyHeaderParser().feed(data)
    assert str(refused.value) == problem


def test_ports_zero_and_65535_are_valid_v1_ports() -> None:
    line = b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n"
    assert ProxyHeaderParser().feed(line) == (
        ProxyHeader(1, ("1.2.3.4", 0), ("5.6.7.8", 65535)),
        b"",
    )


def test_a_v2_local_header_ignores_the_addresses_it_carries() -> None:
    # LOCAL (a balancer's own health check) over TCP/IPv4 with addresses: the
    # connection's own addresses stand, whatever the body says
    local = V2_SIGNATURE + b"\x20\x11\x00\x0c" + bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2])
    assert ProxyHeaderParser().feed(local + b"x") == (ProxyHeader(2, None, None), b"x")
