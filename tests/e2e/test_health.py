"""Readiness and liveness against an upstream that stops answering (SIGSTOP)."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import Processes, upstream_arg, wait_serving

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True, params=["native", "grpclib"])
async def transport(request: pytest.FixtureRequest, procs: Processes) -> str:
    """Every test here runs once per upstream transport."""
    procs.upstream_transport = request.param
    return str(request.param)


@pytest.mark.parametrize("kind", ["grpclib", "grpcio"])
async def test_frozen_upstream_is_dropped_by_liveness_and_rejoins(
    procs: Processes, tmp_path: Path, kind: str
) -> None:
    _, a_port = await procs.upstream("A")
    b, b_port = await procs.upstream("B", kind=kind)
    config = tmp_path / "pmlb.toml"
    config.write_text(
        "".join(
            f"[[upstream]]\nhost = '127.0.0.1'\nport = {port}\n"
            "live_interval = 0.2\nalive_timeout = 1\nready_timeout = 1\n"
            for port in (a_port, b_port)
        )
    )
    pmlb, port = await procs.pmlb("--config", str(config), "--framing", "line")
    await wait_serving(pmlb, a_port)
    await wait_serving(pmlb, b_port)
    client = await procs.client(port)

    mark = pmlb.mark()
    b.signal(signal.SIGSTOP)  # the TCP connection stays open, nothing answers
    await pmlb.wait_for(
        rf"upstream stopped serving upstream=127\.0\.0\.1:{b_port} .*no liveness answer within"
        r" alive_timeout \(1s\)",
        after=mark,
    )
    await client.send(*(f"m{i}" for i in range(10)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(10)) == {"A": 10}
    # Reconnecting works at the TCP level (the kernel accepts), but ready hangs.
    await pmlb.wait_for(
        rf"upstream not ready upstream=127\.0\.0\.1:{b_port} .*no answer within ready_timeout",
        after=mark,
    )

    mark = pmlb.mark()
    b.signal(signal.SIGCONT)
    await wait_serving(pmlb, b_port, after=mark)
    await client.send(*(f"n{i}" for i in range(10)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(10)) == {"A": 5, "B": 5}


async def test_upstream_sending_malformed_messages_is_dropped_and_others_carry_on(
    procs: Processes,
) -> None:
    _, good_port = await procs.upstream("A")
    bad, bad_port = await procs.upstream("B", kind="grpcio", extra=["--malformed"])
    pmlb, port = await procs.pmlb(
        "--framing", "line", *upstream_arg(good_port), *upstream_arg(bad_port)
    )
    await wait_serving(pmlb, good_port)
    await wait_serving(pmlb, bad_port)
    client = await procs.client(port)
    await client.send("m0", "m1")  # round robin: one of them goes to the bad upstream
    await pmlb.wait_for(
        rf"upstream stopped serving upstream=127\.0\.0\.1:{bad_port} .*malformed message"
    )
    # The other came back from A; pmlb is still up and serves through A. (B
    # is stopped so that it cannot rejoin after its backoff and take messages.)
    assert await client.recv() in ("A:m0", "A:m1")
    mark = pmlb.mark()
    bad.signal(signal.SIGKILL)
    await bad.wait()
    await pmlb.wait_for(rf"upstream not ready upstream=127\.0\.0\.1:{bad_port} ", after=mark)
    await client.send(*(f"n{i}" for i in range(10)))
    replies = await client.recv_many(10)
    assert replies == [f"A:n{i}" for i in range(10)]
    assert pmlb.count("internal error") == 0
