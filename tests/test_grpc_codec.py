"""gRPC message framing: plain synchronous tests, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmlb.codecs.grpc import GrpcMessageDecoder, GrpcMessageError, encode_messages
from tests.test_codecs import chunks

SETTINGS = settings(max_examples=200, database=None)


@SETTINGS
@given(
    messages=st.lists(st.binary(max_size=40), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10),
)
def test_messages_survive_any_split(messages: list[bytes], cuts: list[int]) -> None:
    decoder = GrpcMessageDecoder(40)
    received: list[bytes] = []
    wire = encode_messages(messages)
    for chunk in chunks(wire, [c % (len(wire) + 1) for c in cuts]):
        received += decoder.feed(chunk)
    assert received == messages
    assert decoder.buffered == 0


def test_encoding_is_flag_length_message() -> None:
    assert encode_messages([b"ab", b""]) == b"\x00\x00\x00\x00\x02ab" + b"\x00" * 5
    assert encode_messages([]) == b""


def test_one_feed_returns_every_complete_message_and_keeps_the_rest() -> None:
    decoder = GrpcMessageDecoder()
    wire = encode_messages([b"one", b"two", b"three"])
    assert decoder.feed(wire[:-2]) == [b"one", b"two"]
    assert decoder.buffered == 5 + 3
    assert decoder.feed(wire[-2:]) == [b"three"]


def test_limit_is_inclusive_and_checked_from_the_header_alone() -> None:
    decoder = GrpcMessageDecoder(4)
    assert decoder.feed(encode_messages([b"1234"])) == [b"1234"]
    with pytest.raises(GrpcMessageError, match="message of 5 bytes exceeds the maximum of 4"):
        decoder.feed(b"\x00\x00\x00\x00\x05")
    # the error sticks
    with pytest.raises(GrpcMessageError):
        decoder.feed(encode_messages([b"x"]))


def test_compressed_flag_is_rejected() -> None:
    decoder = GrpcMessageDecoder()
    with pytest.raises(GrpcMessageError, match="compressed"):
        decoder.feed(b"\x01\x00\x00\x00\x01x")


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_size"):
        GrpcMessageDecoder(-1)


def test_a_zero_limit_takes_only_empty_messages() -> None:
    decoder = GrpcMessageDecoder(0)
    assert decoder.feed(encode_messages([b"", b""])) == [b"", b""]
    with pytest.raises(GrpcMessageError, match=r"^message of 1 bytes exceeds the maximum of 0$"):
        decoder.feed(encode_messages([b"x"]))


def test_the_negative_limit_error_names_the_value() -> None:
    with pytest.raises(ValueError, match=r"^max_size must be >= 0, got -3$"):
        GrpcMessageDecoder(-3)


def test_the_default_limit_is_grpcs_4_mib() -> None:
    decoder = GrpcMessageDecoder()
    # the header alone decides: a 4 MiB header is pending, one byte more is refused
    assert decoder.feed(b"\x00" + (4 * 1024 * 1024).to_bytes(4, "big")) == []
    with pytest.raises(GrpcMessageError, match=r"exceeds the maximum of 4194304$"):
        GrpcMessageDecoder().feed(b"\x00" + (4 * 1024 * 1024 + 1).to_bytes(4, "big"))


def test_an_error_carries_the_messages_before_it_once_then_none() -> None:
    decoder = GrpcMessageDecoder(4)
    with pytest.raises(GrpcMessageError) as first:
        decoder.feed(encode_messages([b"a", b"bc"]) + b"\x00\x00\x00\x00\x05")
    assert first.value.messages == [b"a", b"bc"]
    with pytest.raises(GrpcMessageError) as again:
        decoder.feed(encode_messages([b"d"]))
    assert again.value is first.value
    assert again.value.messages == []


def test_an_error_made_by_hand_carries_no_messages() -> None:
    assert GrpcMessageError("bad").messages == []
