"""The hand-encoded requests (pmlb.codecs.request) write the protobuf runtime's bytes."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.request import Request, event, head, message, uuid_field

texts = st.text()
# Small and large: one-byte and multi-byte varint lengths.
payloads = st.binary() | st.binary(min_size=120, max_size=20_000)
EVENTS = list(pb.InputStreamRequest.Event.values())
REASONS = list(pb.InputStreamRequest.DisconnectReason.values())
acks = st.tuples(
    st.integers(0, 2**64 - 1), texts, st.integers(0, 2**32 - 1)
)  # seq, message_id, delivery_attempt


def stamped(request: Request, fields: tuple[int, str, int]) -> Request:
    request.seq, request.message_id, request.delivery_attempt = fields
    return request


@given(texts, texts, payloads, acks)
@example(
    "2026-01-02T03:04:05.123456Z", "5f0c6c1e-9d3c-4c55-8c39-7b7a8d7e0f00", b"x" * 64, (0, "", 0)
)
@example("", "", b"", (0, "", 0))
@example("t", "c", b"p", (1, "p-1", 1))
@example("", "", b"", (0, "0", 0))  # each ack field on its own
@example("", "", b"", (0, "", 1))
@example("t", "c", b"y" * 127, (127, "", 128))
@example("t", "c", b"y" * 128, (2**64 - 1, "i", 2**32 - 1))
def test_a_message_is_encoded_as_protobuf_encodes_it(
    time: str, uuid: str, payload: bytes, fields: tuple[int, str, int]
) -> None:
    seq, message_id, attempt = fields
    expected = pb.InputStreamRequest(
        time=time,
        client_uuid=uuid,
        payload=payload,
        seq=seq,
        message_id=message_id,
        delivery_attempt=attempt,
    ).SerializeToString()
    # As readers make them: the time and UUID fields encoded apart, once.
    shared = head(time, uuid_field(uuid))
    assert stamped(Request(shared, payload, uuid), fields).encode() == expected
    assert stamped(message(time, uuid, payload), fields).encode() == expected


@given(
    texts,
    texts,
    st.sampled_from(EVENTS),
    texts,
    texts,
    texts,
    st.sampled_from(REASONS),
    texts,
    acks,
)
def test_an_event_is_encoded_as_protobuf_encodes_it(
    time: str,
    uuid: str,
    kind: int,
    remote: str,
    listener: str,
    transport: str,
    reason: int,
    detail: str,
    fields: tuple[int, str, int],
) -> None:
    seq, message_id, attempt = fields
    expected = pb.InputStreamRequest(
        time=time,
        client_uuid=uuid,
        event=kind,  # type: ignore[arg-type]
        remote_address=remote,
        listener=listener,
        transport=transport,
        disconnect_reason=reason,  # type: ignore[arg-type]
        disconnect_detail=detail,
        seq=seq,
        message_id=message_id,
        delivery_attempt=attempt,
    )
    got = event(
        time,
        uuid,
        kind,
        remote_address=remote,
        listener=listener,
        transport=transport,
        disconnect_reason=reason,
        disconnect_detail=detail,
    )
    assert (got.client_uuid, got.event) == (uuid, kind)
    assert stamped(got, fields).encode() == expected.SerializeToString()
    assert got.message() == expected
    assert got == expected
    assert (got.time, got.remote_address, got.listener, got.transport) == (
        time,
        remote,
        listener,
        transport,
    )
    assert (got.disconnect_reason, got.disconnect_detail) == (reason, detail)


def test_requests_compare_by_their_fields() -> None:
    a = message("t", "c", b"p")
    assert a == message("t", "c", b"p")
    assert a == pb.InputStreamRequest(time="t", client_uuid="c", payload=b"p")
    assert a != message("t", "c", b"q")
    assert a != pb.InputStreamRequest(time="t", client_uuid="c")
    assert a != b"\n\x01t\x12\x01c\x1a\x01p"
    assert (a.payload, a.client_uuid, a.event) == (b"p", "c", 0)
    assert (a.seq, a.message_id, a.delivery_attempt) == (0, "", 0)
    assert "payload" in repr(a)


def test_the_defaults_leave_every_field_unset() -> None:
    assert message().encode() == b""
    assert message() == pb.InputStreamRequest()
    for kind in EVENTS:
        assert event("t", "c", kind) == pb.InputStreamRequest(time="t", client_uuid="c", event=kind)
