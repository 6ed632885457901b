"""Every metric the alert rules and the Grafana dashboard use is in a real pmlb's /metrics."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers import TIMEOUT, Processes, admin_url, upstream_arg, wait_serving
from tests.redis_server import RedisServer, needs_redis
from tests.test_deploy import metric_names_used

pytestmark = [pytest.mark.e2e, needs_redis]


async def test_the_rules_and_the_dashboard_use_only_metrics_pmlb_exports(
    procs: Processes, redis: RedisServer
) -> None:
    _, up_port = await procs.upstream("A")
    pmlb, port = await procs.pmlb(
        *upstream_arg(up_port), "--framing", "line", "--cluster-redis", redis.url
    )
    url = await admin_url(pmlb)
    await wait_serving(pmlb, up_port)
    client = await procs.client(port)
    await client.whoami()  # a message each way, through the upstream
    await client.stream.aclose()
    await pmlb.wait_for(r"client disconnected")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        text = (await http.get(f"{url}/metrics")).text
    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", text, re.M))
    used = metric_names_used()
    assert "pmlb_cluster_nodes" in used
    assert used - exported == set()
