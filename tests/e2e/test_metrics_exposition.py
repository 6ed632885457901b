"""/metrics end to end: the upstream health latency histograms and OpenMetrics negotiation."""

from __future__ import annotations

import pytest
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from tests.e2e.test_admin import running, samples
from tests.helpers import TIMEOUT, Processes

pytestmark = pytest.mark.e2e

#: what Prometheus 3 sends when it scrapes
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


@pytest.mark.parametrize("kind", ["grpclib", "grpcio"])
async def test_ping_and_readiness_latency_histograms(procs: Processes, kind: str) -> None:
    async with running(procs, kind=kind) as admin:
        a = (("upstream", f"127.0.0.1:{admin.upstream_port}"),)
        with trio.fail_after(TIMEOUT):
            while True:  # the first ping goes as soon as it serves
                found = samples((await admin.http.get("/metrics")).text)
                if found.get(("pmlb_upstream_ping_seconds_count", a)):
                    break
                await trio.sleep(0.05)
        assert 0 < found[("pmlb_upstream_ping_seconds_sum", a)] < 5
        assert found[("pmlb_upstream_ready_check_seconds_count", a)] >= 1
        assert 0 < found[("pmlb_upstream_ready_check_seconds_sum", a)] < 5
        inf = ("pmlb_upstream_ping_seconds_bucket", (("le", "+Inf"), *a))
        assert found[inf] == found[("pmlb_upstream_ping_seconds_count", a)]
        view = (await admin.http.get(f"/api/v1/upstreams/{a[0][1]}")).json()
        assert 0 < view["ping_seconds"] < 5


async def test_openmetrics_when_the_scraper_asks_for_it(procs: Processes) -> None:
    async with running(procs) as admin:
        plain = await admin.http.get("/metrics")
        assert plain.headers["content-type"].startswith("text/plain")
        assert "# EOF" not in plain.text

        answer = await admin.http.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        assert answer.text.endswith("# EOF\n")
        families = {f.name: f for f in openmetrics_families(answer.text)}  # strict parser
        assert families["pmlb_messages"].type == "counter"
        assert families["pmlb_upstream_ping_seconds"].type == "histogram"
        assert "pmlb_build_info" in families
        assert "process_cpu_seconds" in families

        # text preferred, or OpenMetrics refused: the text format
        for accept in (
            "text/plain, application/openmetrics-text;q=0.5",
            "application/openmetrics-text;q=0, */*",
        ):
            other = await admin.http.get("/metrics", headers={"Accept": accept})
            assert other.headers["content-type"].startswith("text/plain"), accept
