"""deploy/: the Prometheus rules pass promtool's check and their unit tests; the files parse."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

RULES = ROOT / "deploy" / "prometheus" / "pmlb-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "pmlb-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "pmlb-dashboard.json"
#: metric names as the rules and the dashboard write them (Prometheus's own `up` aside)
METRIC = re.compile(r"\b((?:pmlb|process|python)_[a-z0-9_]+)\b")


def promtool() -> str:
    """Debian's promtool (package prometheus); .ci/run installs it and requires it."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("PMLB_TEST_REQUIRE_PROMTOOL"):
            pytest.fail("promtool not found: apt-get install prometheus (.ci/run does)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules() -> None:
    result = run("check", "rules", RULES.name, cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert alerts
    assert alerts == tested


def metric_names_used() -> set[str]:
    """Every metric name the rules and the dashboard's queries use."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    names = {name for expr in exprs for name in METRIC.findall(expr)}
    names |= set(METRIC.findall(RULES.read_text()))
    return names


def test_the_dashboard_is_grafana_json_with_a_query_per_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "pmlb-overview"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    assert "pmlb_clients" in metric_names_used()
