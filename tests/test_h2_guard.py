"""The HTTP/2 frame guard, sans-IO: limits, cuts, frames split across reads."""

from __future__ import annotations

import pytest

from pmlb.upstream.h2_guard import FloodError, FrameGuard
from tests.fake_h2_upstream import raw_frame

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE, CONTINUATION = (
    0,
    1,
    2,
    3,
    4,
    6,
    8,
    9,
)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4


def ping(ack: bool = False) -> bytes:
    return raw_frame(PING, ACK if ack else 0, 0, b"12345678")


def test_frames_split_anywhere_are_all_seen() -> None:
    wire = raw_frame(DATA, 0, 1, b"x" * 100) + ping() + raw_frame(HEADERS, END_HEADERS, 1, b"\x88")
    for cut in range(len(wire) + 1):
        guard = FrameGuard()
        guard.feed(wire[:cut], 0.0)
        guard.feed(wire[cut:], 0.0)
        assert guard.frames == 3
        assert guard.owed == 1


def test_cuts_hand_h2_a_bounded_number_of_frames_at_a_time() -> None:
    guard = FrameGuard(frames_per_step=10, control_burst=100)
    wire = ping(ack=True) * 25
    assert guard.feed(wire, 0.0) == [170, 340, len(wire)]
    # a frame header cut by the end of a read is looked at with the next read
    assert FrameGuard(frames_per_step=2).feed(wire[:20], 0.0) == [20]


def test_a_header_block_is_limited_over_its_continuation_frames() -> None:
    guard = FrameGuard(max_header_block=100)
    guard.feed(raw_frame(HEADERS, 0, 1, b"h" * 60), 0.0)
    guard.feed(raw_frame(CONTINUATION, 0, 1, b"c" * 40), 0.0)
    with pytest.raises(FloodError, match="a header block over 100 bytes"):
        # refused on the frame's header, before its body is read
        guard.feed(raw_frame(CONTINUATION, END_HEADERS, 1, b"c")[:9], 0.0)


def test_a_finished_header_block_starts_the_count_again() -> None:
    guard = FrameGuard(max_header_block=100)
    for _ in range(5):
        guard.feed(raw_frame(HEADERS, 0, 1, b"h" * 60), 0.0)
        guard.feed(raw_frame(CONTINUATION, END_HEADERS, 1, b"c" * 40), 0.0)
    with pytest.raises(FloodError, match="a header block over 100 bytes"):
        guard.feed(raw_frame(HEADERS, END_HEADERS, 1, b"h" * 101), 0.0)


def test_control_frames_are_limited_by_a_token_bucket() -> None:
    guard = FrameGuard(control_burst=10, control_rate=5.0)
    guard.feed(ping(ack=True) * 10, 0.0)
    with pytest.raises(FloodError, match=r"more than 10 at once or 5/s sustained"):
        guard.feed(ping(ack=True), 0.0)
    guard = FrameGuard(control_burst=10, control_rate=5.0)
    guard.feed(ping(ack=True) * 10, 0.0)
    guard.feed(ping(ack=True) * 5, 1.0)  # refilled by 5 in a second
    with pytest.raises(FloodError, match="control frame flood"):
        guard.feed(ping(ack=True), 1.0)


@pytest.mark.parametrize(
    "frame",
    [
        raw_frame(SETTINGS, 0, 0),
        raw_frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x08"),
        raw_frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
        raw_frame(DATA, 0, 1),  # empty, not ending the stream
        raw_frame(0x42, 0, 0, b"ext"),  # an extension type h2 ignores
    ],
    ids=["settings", "rst_stream", "priority", "empty_data", "unknown"],
)
def test_what_counts_as_a_control_frame(frame: bytes) -> None:
    guard = FrameGuard(control_burst=3)
    guard.feed(frame * 3, 0.0)
    with pytest.raises(FloodError, match="control frame flood"):
        guard.feed(frame, 0.0)


def test_data_and_headers_are_not_control_frames() -> None:
    guard = FrameGuard(control_burst=1)
    guard.feed(raw_frame(DATA, 0, 1, b"x") * 100, 0.0)
    guard.feed(raw_frame(DATA, END_STREAM, 1) * 100, 0.0)
    guard.feed(raw_frame(HEADERS, END_HEADERS, 1, b"\x88") * 100, 0.0)


def test_acks_owed_are_paid_by_a_write() -> None:
    guard = FrameGuard(max_outbound_control=5, control_burst=100)
    for _ in range(4):
        guard.feed(ping() * 5, 0.0)
        guard.written()
    with pytest.raises(FloodError, match="more than 5 SETTINGS/PING acks owed"):
        guard.feed(ping() * 6, 0.0)


def test_window_updates_are_allowed_per_data_frame_sent() -> None:
    update = raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x01")
    guard = FrameGuard(window_update_base=2, window_updates_per_data_frame=3)
    guard.feed(update * 2, 0.0)
    guard.sent_data_frames(1)
    guard.feed(update * 3, 0.0)
    with pytest.raises(
        FloodError, match="WINDOW_UPDATE flood: 6 frames for 1 DATA frames and 0 messages sent"
    ):
        guard.feed(update, 0.0)


def test_window_updates_are_allowed_per_message_sent() -> None:
    # grpcio credits each message as its application reads it: 131
    # WINDOW_UPDATEs came for 200 small messages written in 3 DATA frames.
    update = raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x01")
    guard = FrameGuard(window_update_base=100, window_updates_per_data_frame=10)
    guard.sent_data_frames(3)
    guard.sent_messages(200)
    guard.feed(update * 2130, 0.0)
    with pytest.raises(
        FloodError, match="WINDOW_UPDATE flood: 2131 frames for 3 DATA frames and 200 messages"
    ):
        guard.feed(update, 0.0)
