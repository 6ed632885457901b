"""``health = "grpc"``: readiness and liveness through grpc.health.v1.Health.

The upstream is grpcio with grpcio-health-checking's servicer
(tests/upstreams/grpcio_upstream.py --grpc-health): its contract ``ready``
always says true, so only the standard health service can hold pmlb back.
SIGUSR1 sets it SERVING, SIGUSR2 NOT_SERVING.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.helpers import TIMEOUT, Proc, Processes, admin_url, wait_serving

pytestmark = pytest.mark.e2e


async def start(
    procs: Processes,
    tmp_path: Path,
    *,
    initial: str | None = "NOT_SERVING",
    service: str = "",
    transport: str = "native",
) -> tuple[Proc, int, Proc, int]:
    extra = ["--grpc-health", initial] if initial else []
    upstream, up_port = await procs.upstream("A", kind="grpcio", extra=extra)
    config = tmp_path / "pmlb.toml"
    config.write_text(
        f"""
[server]
framing = "line"

[[upstream]]
host = "127.0.0.1"
port = {up_port}
transport = "{transport}"
health = "grpc"
health_service = "{service}"
# Only the Watch stream can notice a change within the test's time.
live_interval = 1000
alive_timeout = 10
"""
    )
    pmlb, port = await procs.pmlb("--config", str(config))
    return pmlb, port, upstream, up_port


@pytest.mark.parametrize("transport", ["native", "grpclib"])
async def test_check_gates_readiness_and_watch_reports_changes(
    procs: Processes, tmp_path: Path, transport: str
) -> None:
    pmlb, port, upstream, up_port = await start(procs, tmp_path, transport=transport)
    await pmlb.wait_for(rf"upstream not ready upstream=127\.0\.0\.1:{up_port}\b")
    client = await procs.client(port)
    await client.send("held")
    await assert_held_back(pmlb, "ready = false")
    mark = pmlb.mark()
    upstream.signal(signal.SIGUSR1)
    await wait_serving(pmlb, up_port, after=mark)
    assert await client.recv() == "A:held"
    mark = pmlb.mark()
    upstream.signal(signal.SIGUSR2)
    await pmlb.wait_for(
        rf"upstream stopped serving upstream=127\.0\.0\.1:{up_port} .*NOT_SERVING", after=mark
    )
    await assert_not_serving(pmlb)
    mark = pmlb.mark()
    upstream.signal(signal.SIGUSR1)
    await wait_serving(pmlb, up_port, after=mark)
    await client.send("again")
    assert await client.recv() == "A:again"


async def test_a_named_service_is_checked(procs: Processes, tmp_path: Path) -> None:
    pmlb, port, _, up_port = await start(procs, tmp_path, initial="SERVING", service="chat")
    await wait_serving(pmlb, up_port)
    client = await procs.client(port)
    await client.send("hi")
    assert await client.recv() == "A:hi"


async def assert_not_serving(pmlb: Proc) -> None:
    """The one upstream is out of the serving set, as the admin API shows it."""
    async with httpx.AsyncClient(base_url=await admin_url(pmlb), timeout=TIMEOUT) as http:
        (upstream,) = (await http.get("/api/v1/upstreams")).json()["upstreams"]
        stats = (await http.get("/api/v1/runtime")).json()["stats"]
    assert upstream["state"] != "serving"
    assert stats["upstreams_serving"] == 0


async def assert_held_back(pmlb: Proc, problem: str) -> None:
    """The upstream is not serving, for ``problem``, and a client's message waits for it."""
    async with httpx.AsyncClient(base_url=await admin_url(pmlb), timeout=TIMEOUT) as http:
        (upstream,) = (await http.get("/api/v1/upstreams")).json()["upstreams"]
        assert upstream["state"] != "serving"
        assert problem in (upstream["last_error"] or "")
        clients = (await http.get("/api/v1/clients")).json()
        stats = (await http.get("/api/v1/runtime")).json()["stats"]
    assert clients["connected"] == 1, "the client is held, not refused"
    assert stats["upstreams_serving"] == 0


async def test_an_unknown_service_is_not_ready(procs: Processes, tmp_path: Path) -> None:
    pmlb, port, _, up_port = await start(procs, tmp_path, initial="SERVING", service="nope")
    await pmlb.wait_for(rf"upstream not ready upstream=127\.0\.0\.1:{up_port} .*NOT_FOUND")
    client = await procs.client(port)
    await client.send("held")
    await assert_held_back(pmlb, "NOT_FOUND")


async def test_an_upstream_without_the_health_service_is_not_ready(
    procs: Processes, tmp_path: Path
) -> None:
    pmlb, port, _, up_port = await start(procs, tmp_path, initial=None)
    await pmlb.wait_for(rf"upstream not ready upstream=127\.0\.0\.1:{up_port} .*UNIMPLEMENTED")
    client = await procs.client(port)
    await client.send("held")
    await assert_held_back(pmlb, "UNIMPLEMENTED")
