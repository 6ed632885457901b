"""Downstream framing codecs: plain synchronous tests, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmlb.codecs import (
    Decoder,
    Framing,
    FramingError,
    LengthPrefixDecoder,
    LineDecoder,
    MessageTooLarge,
    RawDecoder,
    frame,
    framer,
    make_decoder,
)

# No example database: a run leaves nothing behind in the working tree.
SETTINGS = settings(max_examples=200, database=None)

LIMIT = 16
DECODER_CLASSES = [RawDecoder, LineDecoder, LengthPrefixDecoder]

payloads = st.binary(max_size=40)
line_payloads = payloads.map(lambda b: b.replace(b"\n", b""))


def chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` cut at the offsets in ``cuts`` (any order, repeats allowed)."""
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        yield data[start:cut]
        start = cut


def pair(
    framing: Framing, messages: list[bytes], cuts: list[int], max_size: int = 1 << 20
) -> tuple[list[bytes], Decoder]:
    """Send ``messages`` through ``frame`` and a decoder, the wire cut at ``cuts``."""
    decoder = make_decoder(framing, max_size)
    received: list[bytes] = []
    for chunk in chunks(frame(framing, messages), cuts):
        received += decoder.feed(chunk)
    return received, decoder


def draw_cuts(data: st.DataObject, wire_size: int) -> list[int]:
    return data.draw(st.lists(st.integers(0, wire_size), max_size=20), label="cuts")


@SETTINGS
@given(messages=st.lists(line_payloads, max_size=10), data=st.data())
def test_line_roundtrip_any_split(messages: list[bytes], data: st.DataObject) -> None:
    cuts = draw_cuts(data, len(frame(Framing.LINE, messages)))
    received, decoder = pair(Framing.LINE, messages, cuts)
    assert received == messages
    assert decoder.buffered == 0


@SETTINGS
@given(messages=st.lists(payloads, max_size=10), data=st.data())
def test_length_roundtrip_any_split(messages: list[bytes], data: st.DataObject) -> None:
    cuts = draw_cuts(data, len(frame(Framing.LENGTH, messages)))
    received, decoder = pair(Framing.LENGTH, messages, cuts)
    assert received == messages
    assert decoder.buffered == 0


@SETTINGS
@given(
    framing=st.sampled_from([Framing.LINE, Framing.LENGTH]),
    messages=st.lists(line_payloads, max_size=10),
    data=st.data(),
)
def test_limit_any_split(framing: Framing, messages: list[bytes], data: st.DataObject) -> None:
    # However the wire is cut, the decoder fails iff some message is over the limit.
    cuts = draw_cuts(data, len(frame(framing, messages)))
    if any(len(m) > LIMIT for m in messages):
        with pytest.raises(MessageTooLarge):
            pair(framing, messages, cuts, max_size=LIMIT)
    else:
        assert pair(framing, messages, cuts, max_size=LIMIT)[0] == messages


def test_line_partial_line_is_buffered() -> None:
    decoder = LineDecoder(LIMIT)
    assert decoder.feed(b"ab\ncd") == [b"ab"]
    assert decoder.buffered == 2
    assert decoder.feed(b"e") == []
    assert decoder.buffered == 3
    assert decoder.feed(b"f\ngh\ni") == [b"cdef", b"gh"]
    assert decoder.buffered == 1


def test_length_partial_frame_is_buffered() -> None:
    decoder = LengthPrefixDecoder(LIMIT)
    assert decoder.feed(b"\x00\x00") == []
    assert decoder.buffered == 2
    assert decoder.feed(b"\x00\x03ab") == []
    assert decoder.buffered == 6
    assert decoder.feed(b"c\x00\x00\x00\x01d\x00") == [b"abc", b"d"]
    assert decoder.buffered == 1


def test_raw_each_feed_is_one_message() -> None:
    decoder = RawDecoder(LIMIT)
    assert decoder.feed(b"a\nb") == [b"a\nb"]
    assert decoder.feed(b"\x00\x00\x00\x01c") == [b"\x00\x00\x00\x01c"]
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


def test_read_sizes() -> None:
    assert RawDecoder(LIMIT).read_size == LIMIT + 1
    assert LineDecoder(LIMIT).read_size == 65536
    assert LengthPrefixDecoder(LIMIT).read_size == 65536


def test_raw_limit() -> None:
    decoder = RawDecoder(LIMIT)
    assert decoder.feed(b"x" * LIMIT) == [b"x" * LIMIT]
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"x" * (LIMIT + 1))
    assert (info.value.size, info.value.limit) == (LIMIT + 1, LIMIT)


def test_line_limit_complete_line() -> None:
    decoder = LineDecoder(LIMIT)
    assert decoder.feed(b"x" * LIMIT + b"\n") == [b"x" * LIMIT]
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"y" * (LIMIT + 1) + b"\n")
    assert (info.value.size, info.value.limit) == (LIMIT + 1, LIMIT)
    assert str(info.value) == f"message of {LIMIT + 1} bytes exceeds max_message_size {LIMIT}"


def test_line_keeps_carriage_return_and_counts_it() -> None:
    decoder = LineDecoder(LIMIT)
    assert decoder.feed(b"x" * (LIMIT - 1) + b"\r\n") == [b"x" * (LIMIT - 1) + b"\r"]
    with pytest.raises(MessageTooLarge):
        decoder.feed(b"x" * LIMIT + b"\r\n")


def test_line_limit_raises_before_newline() -> None:
    decoder = LineDecoder(LIMIT)
    assert decoder.feed(b"x" * (LIMIT - 1)) == []
    assert decoder.feed(b"x") == []
    assert decoder.buffered == LIMIT
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"x")
    assert (info.value.size, info.value.limit) == (LIMIT + 1, LIMIT)
    assert str(info.value) == (
        f"incomplete message of at least {LIMIT + 1} bytes exceeds max_message_size {LIMIT}"
    )


def test_line_limit_raises_on_one_long_read_without_newline() -> None:
    decoder = LineDecoder(LIMIT)
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"ok\n" + b"x" * (LIMIT + 1))
    assert info.value.size == LIMIT + 1


def test_length_limit() -> None:
    decoder = LengthPrefixDecoder(LIMIT)
    body = b"x" * LIMIT
    assert decoder.feed(frame(Framing.LENGTH, [body])) == [body]


def test_length_limit_raises_on_header_alone() -> None:
    decoder = LengthPrefixDecoder(LIMIT)
    assert decoder.feed(b"\x00\x00\x00") == []
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed((LIMIT + 1).to_bytes(4, "big")[-1:])
    assert (info.value.size, info.value.limit) == (LIMIT + 1, LIMIT)


def test_length_limit_uses_whole_unsigned_header() -> None:
    with pytest.raises(MessageTooLarge) as info:
        LengthPrefixDecoder(LIMIT).feed(b"\xff\xff\xff\xff")
    assert info.value.size == 2**32 - 1


@pytest.mark.parametrize("cls", [LineDecoder, LengthPrefixDecoder])
def test_decoder_stays_failed(cls: type[LineDecoder | LengthPrefixDecoder]) -> None:
    decoder = cls(LIMIT)
    with pytest.raises(MessageTooLarge) as first:
        decoder.feed(b"\x7f" * (LIMIT + 1))
    with pytest.raises(MessageTooLarge) as second:
        decoder.feed(b"\n\x00\x00\x00\x00")
    assert second.value is first.value


def test_message_too_large_is_framing_error() -> None:
    error = MessageTooLarge(70000, 65536)
    assert isinstance(error, FramingError)
    assert str(error) == "message of 70000 bytes exceeds max_message_size 65536"


def test_empty_line_messages() -> None:
    assert LineDecoder(LIMIT).feed(b"\n\na\n\n") == [b"", b"", b"a", b""]
    assert frame(Framing.LINE, [b"", b""]) == b"\n\n"


def test_empty_length_messages() -> None:
    decoder = LengthPrefixDecoder(LIMIT)
    assert decoder.feed(b"\x00\x00\x00\x00" * 2) == [b"", b""]
    assert decoder.buffered == 0
    assert frame(Framing.LENGTH, [b""]) == b"\x00\x00\x00\x00"


@pytest.mark.parametrize("cls", [LineDecoder, LengthPrefixDecoder])
def test_feed_empty_bytes(cls: type[LineDecoder | LengthPrefixDecoder]) -> None:
    decoder = cls(LIMIT)
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    ("framing", "expected"),
    [
        (Framing.RAW, b"ab\x00c"),
        (Framing.LINE, b"ab\n\n\x00c\n"),
        (Framing.LENGTH, b"\x00\x00\x00\x02ab\x00\x00\x00\x00\x00\x00\x00\x02\x00c"),
    ],
)
def test_frame(framing: Framing, expected: bytes) -> None:
    assert frame(framing, [b"ab", b"", b"\x00c"]) == expected
    assert frame(framing.value, [b"ab", b"", b"\x00c"]) == expected
    assert frame(framing, []) == b""


def test_frame_length_rejects_payload_over_4_gib() -> None:
    class Huge(bytes):
        # A payload that claims to be 4 GiB, so the test needs no 4 GiB.
        def __len__(self) -> int:
            return 2**32

    with pytest.raises(ValueError, match="4-byte length prefix"):
        frame(Framing.LENGTH, [b"ok", Huge()])


def test_frame_length_takes_a_payload_of_exactly_the_prefix_maximum() -> None:
    # 2**32 - 1 bytes still fit the prefix (found by mutmut: ">=" survived).
    class Largest(bytes):
        def __len__(self) -> int:
            return 2**32 - 1

    payload = Largest(b"abc")
    framed = frame(Framing.LENGTH, [payload])
    assert framed.startswith(b"\xff\xff\xff\xff")


@pytest.mark.parametrize("cls", DECODER_CLASSES)
@pytest.mark.parametrize("max_size", [0, -1])
def test_max_size_must_be_positive(cls: Callable[[int], Decoder], max_size: int) -> None:
    with pytest.raises(ValueError, match="max_size"):
        cls(max_size)
    assert cls(1).feed(b"") == []


@pytest.mark.parametrize(
    ("name", "cls"),
    [("raw", RawDecoder), ("line", LineDecoder), ("length", LengthPrefixDecoder)],
)
def test_make_decoder(name: str, cls: type) -> None:
    assert type(make_decoder(name, LIMIT)) is cls
    assert type(make_decoder(Framing(name), LIMIT)) is cls


def test_make_decoder_rejects_unknown_framing() -> None:
    with pytest.raises(ValueError, match="'lines'") as info:
        make_decoder("lines", LIMIT)
    assert all(f in str(info.value) for f in ("raw", "line", "length"))
    with pytest.raises(ValueError, match="raw, line, length"):
        frame("LINE", [b"x"])


@pytest.mark.parametrize("framing", list(Framing))
def test_framer_is_frame_looked_up_once(framing: Framing) -> None:
    encode = framer(framing)
    assert encode is framer(framing.value)
    payloads = [b"ab", b"", b"\x00c"]
    assert encode(payloads) == frame(framing, payloads)
    with pytest.raises(ValueError, match="'lines'; expected one of: raw, line, length"):
        framer("lines")


def test_framing_from_string() -> None:
    assert Framing("line") is Framing.LINE
    assert Framing("length") is Framing.LENGTH
    assert Framing("raw") is Framing.RAW
    assert f"{Framing.LINE}" == "line"
