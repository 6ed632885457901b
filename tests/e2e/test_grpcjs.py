"""pmlb against an upstream on @grpc/grpc-js (Node.js), with each upstream transport.

The upstream is tests/upstreams/grpcjs/upstream.js: the same script as the
Python upstreams, plus commands that make it reset its stream, send GOAWAY or
end the stream with a status. These tests skip only where Node.js is not
installed at all (see ``needs_node``).
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter

import pytest

from tests.helpers import Processes, free_low_port, needs_node, upstream_arg, wait_serving

pytestmark = [pytest.mark.e2e, needs_node]


@pytest.fixture(autouse=True, params=["native", "grpclib"])
async def transport(request: pytest.FixtureRequest, procs: Processes) -> str:
    """Every test here runs once per upstream transport."""
    procs.upstream_transport = request.param
    return str(request.param)


async def pmlb_with_grpcjs(procs: Processes) -> tuple[int, int]:
    _, up_port = await procs.upstream("J", kind="grpcjs")
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(up_port))
    await wait_serving(pmlb, up_port)
    return port, up_port


async def test_uuid_replies_echo_and_time(procs: Processes) -> None:
    port, _ = await pmlb_with_grpcjs(procs)
    clients = [await procs.client(port) for _ in range(3)]
    first = [await c.whoami() for c in clients]
    assert first == [await c.whoami() for c in clients]
    assert len(set(first)) == 3
    assert all(uuid.UUID(u).version == 4 for u in first)
    messages = [f"message {i} \u00e9\u00e8 \t end" for i in range(200)]
    await clients[0].send(*messages)
    assert await clients[0].recv_many(200) == [f"J:{m}" for m in messages]
    await clients[1].send("time")
    assert (await clients[1].recv()).endswith("Z")
    await clients[1].send(f"to {first[2]} private")
    assert await clients[2].recv() == "private"


async def test_broadcast_multicast_and_kick(procs: Processes) -> None:
    port, _ = await pmlb_with_grpcjs(procs)
    active = await procs.client(port)
    await active.whoami()
    inactive = [await procs.client(port) for _ in range(2)]
    await active.send("bcast active to-active")
    assert await active.recv() == "to-active"
    await active.send("bcast inactive to-inactive")
    for client in inactive:
        assert await client.recv() == "to-inactive"
    await active.send("bcast all to-all")
    assert await active.recv() == "to-all"
    for client in inactive:
        assert await client.recv() == "to-all"
    for client in inactive:
        await client.whoami()
    await active.send(f"multi {active.uuid},{inactive[0].uuid} to-two")
    assert await active.recv() == "to-two"
    assert await inactive[0].recv() == "to-two"
    await active.send(f"kick {inactive[1].uuid}")
    assert await inactive[1].expect_closed() == b""
    for client in [active, inactive[0]]:
        await client.whoami()


async def test_round_robin_with_grpclib_and_grpcio_alongside(procs: Processes) -> None:
    ports = [
        (await procs.upstream("A", kind="grpclib"))[1],
        (await procs.upstream("B", kind="grpcio"))[1],
        (await procs.upstream("J", kind="grpcjs"))[1],
    ]
    pmlb, port = await procs.pmlb("--framing", "line", *(a for p in ports for a in upstream_arg(p)))
    for p in ports:
        await wait_serving(pmlb, p)
    clients = [await procs.client(port) for _ in range(3)]
    for i, client in enumerate(clients):
        await client.send(*(f"c{i}-m{j}" for j in range(100)))
    replies = [line for client in clients for line in await client.recv_many(100)]
    assert Counter(line.split(":", 1)[0] for line in replies) == {"A": 100, "B": 100, "J": 100}
    assert sorted(line.split(":", 1)[1] for line in replies) == sorted(
        f"c{i}-m{j}" for i in range(3) for j in range(100)
    )


async def test_killed_grpcjs_upstream_fails_over_and_rejoins(procs: Processes) -> None:
    _, a_port = await procs.upstream("A", kind="grpclib")
    j_port = free_low_port()
    j, _ = await procs.upstream("J", kind="grpcjs", port=j_port)
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(a_port), *upstream_arg(j_port))
    await wait_serving(pmlb, a_port)
    await wait_serving(pmlb, j_port)
    client = await procs.client(port)
    await client.send(*(f"m{i}" for i in range(20)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(20)) == {"A": 10, "J": 10}

    mark = pmlb.mark()
    j.signal(signal.SIGKILL)
    await j.wait()
    await pmlb.wait_for(rf"upstream stopped serving upstream=127\.0\.0\.1:{j_port}\b", after=mark)
    await client.send(*(f"n{i}" for i in range(20)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(20)) == {"A": 20}

    mark = pmlb.mark()
    await procs.upstream("J", kind="grpcjs", port=j_port)
    await wait_serving(pmlb, j_port, after=mark)
    await client.send(*(f"o{i}" for i in range(20)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(20)) == {"A": 10, "J": 10}


async def test_grpcjs_shutdown_sends_goaway_and_traffic_fails_over(
    procs: Processes, transport: str
) -> None:
    _, a_port = await procs.upstream("A", kind="grpclib")
    j, j_port = await procs.upstream("J", kind="grpcjs")
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(a_port), *upstream_arg(j_port))
    await wait_serving(pmlb, a_port)
    await wait_serving(pmlb, j_port)
    client = await procs.client(port)
    await client.send(*(f"m{i}" for i in range(20)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(20)) == {"A": 10, "J": 10}

    mark = pmlb.mark()
    j.signal(signal.SIGTERM)
    stopped = await pmlb.wait_for(
        rf"upstream stopped serving upstream=127\.0\.0\.1:{j_port}\b.*", after=mark
    )
    if transport == "native":
        # pmlb saw the GOAWAY itself, not only the connection closing after it
        assert "GOAWAY (NO_ERROR)" in stopped.group(0)
    assert await j.wait() == 0
    await client.send(*(f"n{i}" for i in range(20)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(20)) == {"A": 20}


async def misbehave_and_recover(procs: Processes, command: str) -> str:
    """Send ``command`` to a lone grpc-js upstream; return why pmlb's stream failed.

    The upstream keeps running: pmlb must reconnect and serve the same client.
    """
    j, up_port = await procs.upstream("J", kind="grpcjs")
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(up_port))
    await wait_serving(pmlb, up_port)
    client = await procs.client(port)
    before = await client.whoami()
    mark = pmlb.mark()
    await client.send(command)
    stopped = await pmlb.wait_for(
        rf"upstream stopped serving upstream=127\.0\.0\.1:{up_port}\b.*", after=mark
    )
    await wait_serving(pmlb, up_port, after=mark)
    assert await client.whoami() == before
    assert j.returncode is None
    return stopped.group(0)


async def test_grpcjs_resetting_the_stream(procs: Processes, transport: str) -> None:
    reason = await misbehave_and_recover(procs, "reset")
    expected = {
        "native": "the upstream reset the stream (INTERNAL_ERROR)",
        "grpclib": "Stream reset by remote party, error_code: 2",
    }
    assert expected[transport] in reason


async def test_grpcjs_sending_goaway_without_stopping(procs: Processes, transport: str) -> None:
    reason = await misbehave_and_recover(procs, "goaway")
    # (grpclib carries on until the server closes the connection a second later)
    if transport == "native":
        assert "the upstream sent GOAWAY (NO_ERROR)" in reason


async def test_grpcjs_ending_the_stream_with_a_status(procs: Processes) -> None:
    reason = await misbehave_and_recover(procs, "fail 8 too much")
    assert "gRPC status RESOURCE_EXHAUSTED: too much" in reason
