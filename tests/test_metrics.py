"""The metrics exposition, in process: what is there besides the registry's counters."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pmlb._version import pmlb_version
from pmlb.config import Config, UpstreamConfig
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
