"""The metrics exposition, in process: what is there besides the registry's counters."""

from __future__ import annotations

import socket

import trio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pmlb._proto import upstream_pb2 as pb
from pmlb._version import pmlb_version
from pmlb.config import Config, UpstreamConfig
from pmlb.downstream.client import Client
from pmlb.metrics import metrics_registry
from pmlb.registry import Registry


def samples(
    registry: Registry, started_at: float = 1700000000.0
) -> dict[str, list[dict[str, str]]]:
    text = generate_latest(metrics_registry(registry, started_at)).decode()
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append({**sample.labels, "": str(sample.value)})
    return found


def test_build_info_start_time_and_the_process_collectors() -> None:
    found = samples(Registry(Config()))
    assert found["pmlb_build_info"][0]["version"] == pmlb_version()
    assert found["pmlb_start_time_seconds"] == [{"": "1700000000.0"}]
    for name in ("process_cpu_seconds_total", "process_open_fds", "python_info"):
        assert name in found, name
    assert "python_gc_collections_total" in found


def test_label_values_have_no_spaces() -> None:
    registry = Registry(Config())
    registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000))
    found = samples(registry)
    states = {labels["state"] for labels in found["pmlb_upstream_state"]}
    assert "checking_readiness" in states
    for name, rows in found.items():
        if name.startswith("pmlb_"):
            for labels in rows:
                assert not any(" " in v for k, v in labels.items() if k), (name, labels)


def client_bytes(registry: Registry) -> dict[str, float]:
    rows = samples(registry)["pmlb_client_bytes_total"]
    return {row["direction"]: float(row[""]) for row in rows}


async def test_bytes_to_clients_are_what_the_direct_writer_wrote(nursery: trio.Nursery) -> None:
    # A plain-TCP client as the listener sets it up, written by the registry's
    # routing: the metric counts the bytes on the wire, newlines included,
    # and keeps them once the client is gone.
    registry = Registry(Config())
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        client = Client(
            "u-1",
            listener="default",
            remote="peer",
            transport="tcp",
            queue_limit=16,
            scope=trio.CancelScope(),
        )
        client.write_directly(ours.fileno(), "line", registry.unflushed, nursery.start_soon)
        registry.add_client(client)
        assert client_bytes(registry)["to_clients"] == 0
        registry.deliver([pb.OutputStreamRequest(client_uuid="u-1", payload=b"hello")])
        registry.deliver([pb.OutputStreamRequest(client_uuid="u-1", payload=b"again")])
        assert theirs.recv(100) == b"hello\nagain\n"
        assert client_bytes(registry)["to_clients"] == 12
        client.detach()
        registry.remove_client(client)
        assert client_bytes(registry) == {"from_clients": 0, "to_clients": 12}
