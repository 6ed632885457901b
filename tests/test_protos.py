"""The committed generated code matches protos/, and both runtimes agree on the wire."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmlb import contract
from pmlb._proto import generate
from pmlb._proto import upstream_pb2 as pb


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
    assert fields("InputStreamRequest") == {"time": 1, "client_uuid": 2, "payload": 3}
    assert fields("OutputStreamRequest") == {
        "time": 1,
        "client_uuid": 2,
        "broadcast": 3,
        "payload": 4,
    }
    broadcast = pb.OutputStreamRequest.Broadcast
    assert dict(broadcast.items()) == {
        "BROADCAST_ALL": 0,
        "BROADCAST_ACTIVE": 1,
        "BROADCAST_NOT_ACTIVE": 2,
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
