"""pmlb end to end: `pmlb serve`, upstreams on grpclib and grpcio, raw TCP clients.

Every server listens on 127.0.0.1; pmlb and the upstreams bind port 0 unless
a test must restart an upstream on the same port.
"""

from __future__ import annotations

import re
import signal
import struct
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    TIMEOUT,
    Processes,
    admin_url,
    free_low_port,
    upstream_arg,
    wait_serving,
)

pytestmark = pytest.mark.e2e

KINDS = ["grpclib", "grpcio"]


@pytest.fixture(autouse=True, params=["native", "grpclib"])
async def transport(request: pytest.FixtureRequest, procs: Processes) -> str:
    """Every test here runs once per upstream transport."""
    procs.upstream_transport = request.param
    return str(request.param)


async def pmlb_with_upstream(
    procs: Processes, kind: str = "grpclib", *args: str
) -> tuple[int, int]:
    _, up_port = await procs.upstream("A", kind=kind)
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(up_port), *args)
    await wait_serving(pmlb, up_port)
    return port, up_port


@pytest.mark.parametrize("kind", KINDS)
async def test_each_client_gets_a_distinct_stable_uuid4(procs: Processes, kind: str) -> None:
    port, _ = await pmlb_with_upstream(procs, kind)
    clients = [await procs.client(port) for _ in range(3)]
    first = [await c.whoami() for c in clients]
    second = [await c.whoami() for c in clients]
    assert first == second
    assert len(set(first)) == 3
    assert all(uuid.UUID(u).version == 4 for u in first)


@pytest.mark.parametrize("kind", KINDS)
async def test_echo_round_trip_keeps_payload_and_order(procs: Processes, kind: str) -> None:
    port, _ = await pmlb_with_upstream(procs, kind)
    client = await procs.client(port)
    messages = [f"message {i} \u00e9\u00e8 \t end" for i in range(200)]
    await client.send(*messages)
    assert await client.recv_many(len(messages)) == [f"A:{m}" for m in messages]


@pytest.mark.parametrize("kind", KINDS)
async def test_each_request_carries_an_rfc3339_utc_time(procs: Processes, kind: str) -> None:
    port, _ = await pmlb_with_upstream(procs, kind)
    client = await procs.client(port)
    before = datetime.now(UTC)
    await client.send("time")
    stamp = await client.recv()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(stamp) <= after


async def test_length_prefixed_framing_end_to_end(procs: Processes) -> None:
    _, up_port = await procs.upstream("A")
    pmlb, port = await procs.pmlb("--framing", "length", *upstream_arg(up_port))
    await wait_serving(pmlb, up_port)
    client = await procs.client(port)
    messages = [b"one", b"", b"line\nbreaks\nkept", bytes(range(256))]
    await client.stream.send_all(b"".join(struct.pack(">I", len(m)) + m for m in messages))
    received = b""
    expected = b"".join(struct.pack(">I", len(m) + 2) + b"A:" + m for m in messages)
    with trio.fail_after(30):
        while len(received) < len(expected):
            received += await client.stream.receive_some(65536)
    assert received == expected


@pytest.mark.parametrize("kind", KINDS)
async def test_reply_by_uuid_reaches_only_that_client(procs: Processes, kind: str) -> None:
    port, _ = await pmlb_with_upstream(procs, kind)
    a, b, c = [await procs.client(port) for _ in range(3)]
    for client in (a, b, c):
        await client.whoami()
    await a.send(f"to {b.uuid} hello b")
    assert await b.recv() == "hello b"
    # "hello b" was routed before these answers were sent: had a or c been a
    # recipient, it would come before them.
    for client in (a, b, c):
        assert await client.whoami() == client.uuid


async def test_unknown_uuid_is_counted_and_nothing_else_happens(procs: Processes) -> None:
    _, up_port = await procs.upstream("A")
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(up_port))
    await wait_serving(pmlb, up_port)
    a, b = await procs.client(port), await procs.client(port)
    for client in (a, b):
        await client.whoami()
    stranger = str(uuid.uuid4())
    mark = pmlb.mark()
    await a.send(f"to {stranger} lost")
    await pmlb.wait_for(rf"message for an unknown client dropped client={stranger}", after=mark)
    # Nobody got it (each client's next line is its own answer), both stay
    # connected, and the drop is counted once.
    for client in (a, b):
        assert await client.whoami() == client.uuid
    async with httpx.AsyncClient(base_url=await admin_url(pmlb), timeout=TIMEOUT) as http:
        metrics = (await http.get("/metrics")).text
        clients = (await http.get("/api/v1/clients")).json()
    drops = [
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "pmlb_unknown_client_drops_total"
    ]
    assert drops == [1]
    assert sorted(c["uuid"] for c in clients["clients"]) == sorted([a.uuid, b.uuid])


@pytest.mark.parametrize("kind", KINDS)
async def test_broadcast_all_active_inactive_reach_exactly_the_right_clients(
    procs: Processes, kind: str
) -> None:
    port, _ = await pmlb_with_upstream(procs, kind)
    active = await procs.client(port)
    await active.whoami()  # sending makes it active
    inactive = [await procs.client(port) for _ in range(2)]  # never sent anything
    # The broadcasts go to the upstream in this order over one stream, so each
    # client sees its share in this order too.
    await active.send("bcast active to-active")
    assert await active.recv() == "to-active"
    await active.send("bcast inactive to-inactive")
    for client in inactive:
        assert await client.recv() == "to-inactive"
    await active.send("bcast all to-all")
    assert await active.recv() == "to-all"
    for client in inactive:
        assert await client.recv() == "to-all"
    # Nothing else was queued for anyone before these answers.
    for client in [active, *inactive]:
        await client.whoami()


async def test_round_robin_spreads_messages_evenly_over_three_upstreams(procs: Processes) -> None:
    ports = [
        (await procs.upstream("A", kind="grpclib"))[1],
        (await procs.upstream("B", kind="grpclib"))[1],
        (await procs.upstream("C", kind="grpcio"))[1],
    ]
    args = [arg for p in ports for arg in upstream_arg(p)]
    pmlb, port = await procs.pmlb("--framing", "line", *args)
    for p in ports:
        await wait_serving(pmlb, p)
    clients = [await procs.client(port) for _ in range(3)]
    for i, client in enumerate(clients):
        await client.send(*(f"c{i}-m{j}" for j in range(100)))
    replies = [line for client in clients for line in await client.recv_many(100)]
    by_upstream = Counter(line.split(":", 1)[0] for line in replies)
    assert by_upstream == {"A": 100, "B": 100, "C": 100}
    assert sorted(line.split(":", 1)[1] for line in replies) == sorted(
        f"c{i}-m{j}" for i in range(3) for j in range(100)
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_upstream_not_ready_gets_no_traffic_until_ready(procs: Processes, kind: str) -> None:
    _, ready_port = await procs.upstream("A")
    late, late_port = await procs.upstream("B", kind=kind, ready=False)
    pmlb, port = await procs.pmlb(
        "--framing", "line", *upstream_arg(ready_port), *upstream_arg(late_port)
    )
    await wait_serving(pmlb, ready_port)
    await pmlb.wait_for(rf"upstream not ready upstream=127\.0\.0\.1:{late_port} .*ready = false")
    client = await procs.client(port)
    await client.send(*(f"m{i}" for i in range(30)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(30)) == {"A": 30}

    mark = pmlb.mark()
    late.signal(signal.SIGUSR1)
    await wait_serving(pmlb, late_port, after=mark)
    await client.send(*(f"n{i}" for i in range(30)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(30)) == {"A": 15, "B": 15}


@pytest.mark.parametrize("kind", KINDS)
async def test_killed_upstream_stops_getting_traffic_and_rejoins(
    procs: Processes, kind: str
) -> None:
    _, a_port = await procs.upstream("A")
    b_port = free_low_port()
    b, _ = await procs.upstream("B", kind=kind, port=b_port)
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(a_port), *upstream_arg(b_port))
    await wait_serving(pmlb, a_port)
    await wait_serving(pmlb, b_port)
    client = await procs.client(port)
    await client.send(*(f"m{i}" for i in range(20)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(20)) == {"A": 10, "B": 10}

    mark = pmlb.mark()
    b.signal(signal.SIGKILL)
    await b.wait()
    await pmlb.wait_for(rf"upstream stopped serving upstream=127\.0\.0\.1:{b_port}\b", after=mark)
    await client.send(*(f"n{i}" for i in range(20)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(20)) == {"A": 20}

    mark = pmlb.mark()
    await procs.upstream("B", kind=kind, port=b_port)
    await wait_serving(pmlb, b_port, after=mark)
    await client.send(*(f"o{i}" for i in range(20)))
    assert Counter(r.split(":")[0] for r in await client.recv_many(20)) == {"A": 10, "B": 10}


async def test_no_upstream_holds_clients_and_delivers_once_one_appears(procs: Processes) -> None:
    up_port = free_low_port()
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(up_port))
    await pmlb.wait_for(rf"upstream not ready upstream=127\.0\.0\.1:{up_port}")
    clients = [await procs.client(port) for _ in range(3)]
    for i, client in enumerate(clients):
        await client.send(*(f"c{i}-m{j}" for j in range(50)))
    mark = pmlb.mark()
    await procs.upstream("A", port=up_port)
    await wait_serving(pmlb, up_port, after=mark)
    for i, client in enumerate(clients):
        assert await client.recv_many(50) == [f"A:c{i}-m{j}" for j in range(50)]
    assert pmlb.count("client disconnected") == 0


async def test_oversized_message_disconnects_only_its_sender(procs: Processes) -> None:
    port, _ = await pmlb_with_upstream(procs, "grpclib", "--max-message-size", "100")
    bystander = await procs.client(port)
    await bystander.whoami()
    offender = await procs.client(port)
    await offender.whoami()
    await offender.send("x" * 101)
    assert await offender.expect_closed() == b""
    assert await bystander.whoami() == bystander.uuid
    newcomer = await procs.client(port)
    await newcomer.send("x" * 100)
    assert await newcomer.recv() == "A:" + "x" * 100


async def test_with_a_reader_task_per_client_clients_are_served_alike(procs: Processes) -> None:
    """``PMLB_TCP_READER=task``: the way back from the shared reader still works."""
    _, up_port = await procs.upstream("A")
    pmlb, port = await procs.pmlb(
        "--framing", "line", "--max-message-size", "100", *upstream_arg(up_port),
        env={"PMLB_TCP_READER": "task"},
    )  # fmt: skip
    await wait_serving(pmlb, up_port)
    clients = [await procs.client(port) for _ in range(3)]
    for n, client in enumerate(clients):
        await client.send(*(f"{n}:{i}" for i in range(50)))
    for n, client in enumerate(clients):
        assert await client.recv_many(50) == [f"A:{n}:{i}" for i in range(50)]
    await clients[0].send("x" * 101)
    assert await clients[0].expect_closed() == b""
    assert await clients[1].whoami() == clients[1].uuid


async def test_sigterm_closes_clients_and_exits_zero(procs: Processes) -> None:
    _, up_port = await procs.upstream("A")
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(up_port))
    await wait_serving(pmlb, up_port)
    client = await procs.client(port)
    await client.whoami()
    pmlb.signal(signal.SIGTERM)
    assert await pmlb.wait() == 0
    assert await client.expect_closed() == b""
    await pmlb.wait_for(r"stopped")
