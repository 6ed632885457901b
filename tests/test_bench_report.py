"""The benchmark's report helpers (tools/bench/run.py): ratios, the README table, the chart's rows.

Runs no benchmark: the figures are made up, the rendering is what is tested.
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pmlb.config import parse_config

X = "\N{MULTIPLICATION SIGN}"
RUN_PY = Path(__file__).resolve().parents[1] / "tools" / "bench" / "run.py"


@pytest.fixture(scope="module")
def run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


def _load(us_per_msg: float, p99: int) -> dict[str, Any]:
    return {
        "messages": 5000,
        "msgs_per_s": 1234.4,
        "p50_us": p99 // 2,
        "p99_us": p99,
        "max_us": p99 * 2,
        "target_us_per_msg": us_per_msg,
        "upstream_cpu_s": [],
        "loadgen_cpu_s": 0.5,
        "least_served": 10,
        "most_served": 12,
    }


def _results() -> dict[str, Any]:
    return {
        "date": "2026-12-03 13:00 UTC",
        "machine": "vm: 2 CPUs",
        "command": "nox -s bench -- --seconds 3",
        "load_average": 0.4,
        "wall_seconds": 161,
        "throughput": {
            "C=100 D=1": {
                "haproxy": _load(8.0, 2000),
                "pmlb-native": _load(32.0, 5000),
            },
            "TLS C=100 D=1": {
                "haproxy": _load(10.0, 2000),
                "pmlb-native": _load(40.0, 6000),
                "haproxy-tls": _load(16.0, 3000),
                "pmlb-tls": _load(64.0, 9000),
            },
            "WebSocket C=100 D=1": {
                "haproxy": _load(10.0, 2000),
                "pmlb-native": _load(40.0, 6000),
                "haproxy-ws": _load(20.0, 3500),
                "pmlb-ws": _load(120.0, 7000),
            },
        },
        "clients": {},
        "accept": {},
        "derived": {},
    }


def test_ratio_as_the_readme_writes_it(run: ModuleType) -> None:
    assert run.ratio(17.6, 0.65) == f"27.1{X}"
    assert run.ratio(33.4, 8.3) == f"4.02{X}"
    assert run.ratio(1.0, None) == "-"
    assert run.ratio(1.0, 0) == "-"


def test_each_target_is_divided_by_the_haproxy_of_its_protocol(run: ModuleType) -> None:
    by = _results()["throughput"]["TLS C=100 D=1"]
    assert run.ratios(by, "pmlb-native") == (f"4.00{X}", f"3.00{X}")  # by plain haproxy
    assert run.ratios(by, "pmlb-tls") == (f"4.00{X}", f"3.00{X}")  # by haproxy-tls
    assert run.ratios(by, "haproxy-tls") == (f"1.00{X}", f"1.00{X}")
    ws = _results()["throughput"]["WebSocket C=100 D=1"]
    assert run.ratios(ws, "pmlb-ws") == (f"6.00{X}", f"2.00{X}")  # by haproxy-ws
    # no HAProxy speaks WebSocket in the run: no ratio rather than a wrong one
    del ws["haproxy-ws"]
    assert run.ratios(ws, "pmlb-ws") == ("-", "-")


def test_table_has_the_readme_columns_and_ratio_columns(run: ModuleType) -> None:
    text = run.table(_results())
    lines = text.splitlines()
    assert lines[0] == (
        "- date: 2026-12-03 13:00 UTC; machine: vm: 2 CPUs, load average 0.4 when the run started;"
    )
    assert lines[1] == "- command: `nox -s bench -- --seconds 3` (161 s)."
    head = next(line for line in lines if line.startswith("| scenario |"))
    columns = [c.strip() for c in head.strip("|").split("|")]
    assert columns[:9] == [
        "scenario", "target", "msgs/s", "p50 µs", "p99 µs", "max µs",
        "target CPU µs/msg", "CPU ÷ HAProxy", "p99 ÷ HAProxy",
    ]  # fmt: skip
    separator = lines[lines.index(head) + 1]
    assert separator.count("|") == head.count("|")
    row = next(line for line in lines if line.startswith("| TLS C=100 D=1 | pmlb-tls |"))
    assert row == (
        f"| TLS C=100 D=1 | pmlb-tls | 1,234 | 4500 | 9000 | 18000 | 64.0 | 4.00{X} | 3.00{X} "
        "| - | 0.5 | 10-12 |"
    )
    assert row.count("|") == head.count("|")


def test_chart_rows_pair_each_scenario_with_its_own_pmlb_and_haproxy(run: ModuleType) -> None:
    rows = [(s, name, base is not None) for s, name, _, base in run.chart_rows(_results())]
    assert rows == [
        ("C=100 D=1", "pmlb-native", True),
        ("TLS C=100 D=1", "pmlb-tls", True),
        ("WebSocket C=100 D=1", "pmlb-ws", True),
    ]


def test_derived_gives_tls_and_websocket_against_plain_tcp(run: ModuleType) -> None:
    out = run.derived(_results())
    assert out["pmlb-tls µs/msg ÷ pmlb-native µs/msg, TLS C=100 D=1"] == 1.6
    assert out["pmlb-ws µs/msg ÷ pmlb-native µs/msg, WebSocket C=100 D=1"] == 3.0
    assert out["pmlb-tls p99 ÷ haproxy-tls p99, TLS C=100 D=1"] == 3.0
    assert out["pmlb-ws p99 ÷ haproxy-ws p99, WebSocket C=100 D=1"] == 2.0
    # the plain-TCP p99 ratio only for the plain scenarios
    assert "pmlb-native p99 ÷ haproxy p99, C=100 D=1" in out
    assert "pmlb-native p99 ÷ haproxy p99, TLS C=100 D=1" not in out


def test_the_bench_configuration_is_one_pmlb_accepts(run: ModuleType, tmp_path: Path) -> None:
    text = run.pmlb_config(7001, 7002, 7003, tmp_path / "cert.pem", tmp_path / "key.pem")
    config = parse_config(tomllib.loads(text))
    listeners = {(x.name, x.transport, x.port, x.framing) for x in config.listeners}
    assert listeners == {
        ("default", "tcp", 7001, "line"),
        ("tls", "tls", 7002, "line"),
        ("websocket", "websocket", 7003, "raw"),
    }


def test_a_run_without_an_echo_gets_no_ratio(run: ModuleType) -> None:
    results = _results()
    by = results["throughput"]["C=100 D=1"]
    by["pmlb-native"]["messages"] = 0
    assert run.ratios(by, "pmlb-native") == ("-", "-")
    assert [row[1] for row in run.chart_rows(results)] == ["pmlb-tls", "pmlb-ws"]
    by["pmlb-native"]["messages"] = 5000
    by["haproxy"]["messages"] = 0
    assert run.ratios(by, "pmlb-native") == ("-", "-")
    assert run.chart_rows(results)[0][3] is None
    ws = results["throughput"]["WebSocket C=100 D=1"]
    ws["pmlb-ws"]["messages"] = 0
    assert (
        "| WebSocket C=100 D=1 | pmlb-ws | 1,234 | 3500 | 7000 | 14000 | - (no echo) | - | - "
        in (run.table(results))
    )
    assert not [key for key in run.derived(results) if "pmlb-ws" in key]
