"""The cluster bus's message format (sans-IO)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmlb.cluster import wire


@given(st.text(min_size=1, max_size=50), st.lists(st.binary(max_size=300), max_size=20))
def test_messages_round_trip(origin: str, records: list[bytes]) -> None:
    message = wire.encode(wire.Kind.REPLIES, origin, records)
    assert wire.decode(message) == (wire.Kind.REPLIES, origin, records)


def test_records_concatenated_behind_one_header_make_one_message() -> None:
    # What the flush script does for each destination node.
    joined = wire.header(wire.Kind.REPLIES, "a") + wire.record(b"one") + wire.record(b"")
    assert wire.decode(joined) == (wire.Kind.REPLIES, "a", [b"one", b""])


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (b"R", "too short"),
        (b"X\x00\x01a", "unknown bus message kind"),
        (b"R\x00\x05ab", "ends inside its header"),
        (b"R\x00\x01a\x00\x00", "ends inside a record's length"),
        (b"R\x00\x01a\x00\x00\x00\x05abc", "ends inside a record"),
    ],
)
def test_malformed_messages_are_format_errors(message: bytes, problem: str) -> None:
    with pytest.raises(wire.BusFormatError, match=problem):
        wire.decode(message)
