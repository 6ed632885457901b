"""The committed generated code matches protos/, and both runtimes agree on the wire."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmlb import contract
from pmlb._proto import generate
from pmlb._proto import upstream_pb2 as pb
from pmlb.downstream.reasons import DisconnectKind


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh = generate.generated_files(tmp_path)
    committed = generate.generated_files(generate.OUT_DIR)
    assert "upstream_pb2.py" in fresh
    assert any(name.startswith("bp/") for name in fresh)
    assert sorted(committed) == sorted(fresh), "files differ: run `nox -s protos`"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"generated code drifted from protos/ in {stale}: run `nox -s protos`"


def test_the_contract_keeps_its_original_names_and_numbers() -> None:
    service = pb.DESCRIPTOR.services_by_name["UpstreamPeerService"]
    assert pb.DESCRIPTOR.package == "upstream.grpc.service"
    assert {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods} == {
        "bidirectionalStreaming": (
            "upstream.grpc.service.InputStreamRequest",
            "upstream.grpc.service.OutputStreamRequest",
        ),
        "ready": ("google.protobuf.Empty", "upstream.grpc.service.ReadyResult"),
        "live": ("google.protobuf.Empty", "upstream.grpc.service.LiveResult"),
    }

    def fields(message: str) -> dict[str, int]:
        return {f.name: f.number for f in pb.DESCRIPTOR.message_types_by_name[message].fields}

    assert fields("ReadyResult") == {"time": 1, "ready": 2}
    assert fields("LiveResult") == {"time": 1, "live": 2}
    assert fields("InputStreamRequest") == {
        "time": 1,
        "client_uuid": 2,
        "payload": 3,
        # extension: lifecycle events
        "event": 4,
        "remote_address": 5,
        "listener": 6,
        "transport": 7,
        "disconnect_reason": 8,
        "disconnect_detail": 9,
        # extension: acknowledgements
        "seq": 10,
        "message_id": 11,
        "delivery_attempt": 12,
    }
    assert fields("OutputStreamRequest") == {
        "time": 1,
        "client_uuid": 2,
        "broadcast": 3,
        "payload": 4,
        # extension: actions and multicast
        "action": 5,
        "multicast": 6,
        # extension: acknowledgements
        "acks": 7,
    }
    assert fields("ClientList") == {"client_uuids": 1}
    output = pb.DESCRIPTOR.message_types_by_name["OutputStreamRequest"]
    assert [f.name for f in output.oneofs_by_name["target"].fields] == [
        "client_uuid",
        "broadcast",
        "multicast",
    ]
    broadcast = pb.OutputStreamRequest.Broadcast
    assert dict(broadcast.items()) == {
        "BROADCAST_ALL": 0,
        "BROADCAST_ACTIVE": 1,
        "BROADCAST_NOT_ACTIVE": 2,
    }
    assert dict(pb.InputStreamRequest.Event.items()) == {
        "EVENT_MESSAGE": 0,
        "EVENT_CONNECTED": 1,
        "EVENT_DISCONNECTED": 2,
    }
    assert dict(pb.InputStreamRequest.DisconnectReason.items()) == {
        "DISCONNECT_REASON_UNSPECIFIED": 0,
        "DISCONNECT_CLIENT_CLOSED": 1,
        "DISCONNECT_KICKED": 2,
        "DISCONNECT_TOO_BIG": 3,
        "DISCONNECT_SLOW": 4,
        "DISCONNECT_DRAIN": 5,
        "DISCONNECT_UPSTREAM_ACTION": 6,
        "DISCONNECT_ERROR": 7,
        # extension: a client that broke its protocol (issue 17)
        "DISCONNECT_PROTOCOL_ERROR": 8,
    }
    assert dict(pb.OutputStreamRequest.Action.items()) == {
        "ACTION_SEND": 0,
        "ACTION_DISCONNECT": 1,
    }


text = st.text(max_size=40)
payload = st.binary(max_size=200)


@given(text, text, payload)
def test_input_stream_request_same_bytes(time: str, client_uuid: str, data: bytes) -> None:
    upb = pb.InputStreamRequest(time=time, client_uuid=client_uuid, payload=data)
    bp = contract.InputStreamRequest(time=time, client_uuid=client_uuid, payload=data)
    assert bytes(bp) == upb.SerializeToString()
    assert contract.InputStreamRequest().parse(upb.SerializeToString()) == bp


@given(text, text, payload)
def test_output_stream_request_to_a_client_same_bytes(
    time: str, client_uuid: str, data: bytes
) -> None:
    upb = pb.OutputStreamRequest(time=time, client_uuid=client_uuid, payload=data)
    bp = contract.OutputStreamRequest(time=time, client_uuid=client_uuid, payload=data)
    assert bytes(bp) == upb.SerializeToString()
    assert pb.OutputStreamRequest.FromString(bytes(bp)).WhichOneof("target") == "client_uuid"


@pytest.mark.parametrize("value", [0, 1, 2])
def test_output_stream_request_broadcast_same_bytes_even_for_value_0(value: int) -> None:
    upb = pb.OutputStreamRequest(time="t", broadcast=value, payload=b"p")  # type: ignore[arg-type]
    bp = contract.OutputStreamRequest(time="t", broadcast=contract.Broadcast(value), payload=b"p")
    assert bytes(bp) == upb.SerializeToString()
    # The oneof holding BROADCAST_ALL (0) is on the wire, so "broadcast to all"
    # is told apart from "no target".
    assert b"\x18" + bytes([value]) in upb.SerializeToString()
    assert pb.OutputStreamRequest.FromString(bytes(bp)).WhichOneof("target") == "broadcast"


@pytest.mark.parametrize(
    ("upb", "bp"),
    [
        (pb.ReadyResult(time="t", ready=True), contract.ReadyResult(time="t", ready=True)),
        (pb.LiveResult(time="t", live=True), contract.LiveResult(time="t", live=True)),
    ],
)
def test_health_results_same_bytes(upb: object, bp: object) -> None:
    assert bytes(bp) == upb.SerializeToString()  # type: ignore[call-overload, attr-defined]


def test_disconnect_kinds_are_the_wire_reasons() -> None:
    wire = dict(pb.InputStreamRequest.DisconnectReason.items())
    for kind in DisconnectKind:
        name = "DISCONNECT_REASON_UNSPECIFIED" if kind.value == 0 else f"DISCONNECT_{kind.name}"
        assert wire[name] == kind.value


def test_an_original_contract_message_has_no_extension_bytes() -> None:
    # What an upstream on the original contract receives is byte for byte
    # what it always got: the extensions are all at their defaults.
    upb = pb.InputStreamRequest(time="t", client_uuid="u", payload=b"p")
    assert upb.SerializeToString() == b"\n\x01t\x12\x01u\x1a\x01p"


@given(text, text, text, text, st.integers(0, 2), st.integers(0, 7), text)
def test_event_same_bytes(
    uuid: str, remote: str, listener: str, transport: str, event: int, reason: int, detail: str
) -> None:
    fields = {
        "time": "t",
        "client_uuid": uuid,
        "remote_address": remote,
        "listener": listener,
        "transport": transport,
        "disconnect_detail": detail,
    }
    upb = pb.InputStreamRequest(
        **fields,
        event=event,  # type: ignore[arg-type]
        disconnect_reason=reason,  # type: ignore[arg-type]
    )
    bp = contract.InputStreamRequest(
        **fields, event=contract.Event(event), disconnect_reason=contract.DisconnectReason(reason)
    )
    assert bytes(bp) == upb.SerializeToString()
    assert contract.InputStreamRequest().parse(upb.SerializeToString()) == bp


@given(st.lists(text, max_size=5), st.integers(0, 1), payload)
def test_multicast_and_action_same_bytes(uuids: list[str], action: int, data: bytes) -> None:
    upb = pb.OutputStreamRequest(
        time="t",
        multicast=pb.ClientList(client_uuids=uuids),
        action=action,  # type: ignore[arg-type]
        payload=data,
    )
    bp = contract.OutputStreamRequest(
        time="t",
        multicast=contract.ClientList(client_uuids=uuids),
        action=contract.Action(action),
        payload=data,
    )
    # The two runtimes write the fields in different orders: compare parsed.
    parsed = pb.OutputStreamRequest.FromString(bytes(bp))
    assert parsed == upb
    assert contract.OutputStreamRequest().parse(upb.SerializeToString()) == bp
    assert parsed.WhichOneof("target") == "multicast"
    assert list(parsed.multicast.client_uuids) == uuids


@given(st.integers(1, 2**64 - 1), text, st.integers(1, 2**32 - 1), payload)
def test_ack_fields_same_bytes(seq: int, message_id: str, attempt: int, data: bytes) -> None:
    upb = pb.InputStreamRequest(
        time="t",
        client_uuid="u",
        payload=data,
        seq=seq,
        message_id=message_id,
        delivery_attempt=attempt,
    )
    bp = contract.InputStreamRequest(
        time="t",
        client_uuid="u",
        payload=data,
        seq=seq,
        message_id=message_id,
        delivery_attempt=attempt,
    )
    assert bytes(bp) == upb.SerializeToString()
    assert contract.InputStreamRequest().parse(upb.SerializeToString()) == bp


@given(st.lists(st.integers(1, 2**64 - 1), max_size=20))
def test_acks_same_bytes_alone_and_on_a_reply(acks: list[int]) -> None:
    alone = pb.OutputStreamRequest(acks=acks)
    assert bytes(contract.OutputStreamRequest(acks=acks)) == alone.SerializeToString()
    assert pb.OutputStreamRequest.FromString(alone.SerializeToString()).WhichOneof("target") is None
    reply = contract.OutputStreamRequest(client_uuid="u", payload=b"p", acks=acks)
    parsed = pb.OutputStreamRequest.FromString(bytes(reply))
    assert list(parsed.acks) == acks
    assert parsed.client_uuid == "u"
