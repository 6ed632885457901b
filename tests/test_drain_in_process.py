"""The graceful drain in process: client closes spread over time, nothing accepted lost."""

from __future__ import annotations

import logging

import attrs
import pytest
import trio
import trio.testing

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.request import Request
from pmlb.codecs.request import message as make_request
from pmlb.config import Config, UpstreamConfig
from pmlb.downstream.client import Client
from pmlb.downstream.reasons import DRAINING, DisconnectKind, classify
from pmlb.registry import Registry
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.state import UpstreamState


def request(n: int) -> Request:
    return make_request(time="t", client_uuid="c", payload=str(n).encode())


@attrs.define
class Conn:
    """A connection as the listeners run one: a writer that closes once drained."""

    client: Client
    written: list[bytes] = attrs.Factory(list)
    closed_at: float | None = None


async def run_conn(registry: Registry, name: str, conns: list[Conn]) -> None:
    with trio.CancelScope() as scope:
        client = Client(
            name, listener="default", remote="x", transport="tcp", queue_limit=100, scope=scope
        )
        conn = Conn(client)
        conns.append(conn)
        registry.add_client(client)
        while batch := await client.next_batch():
            conn.written += batch
        client.close(DRAINING)
    conn.closed_at = trio.current_time()
    registry.remove_client(client)


async def test_clients_are_closed_spread_evenly_over_the_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = Registry(Config())
    conns: list[Conn] = []
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(run_conn, registry, f"c{i}", conns)
        await trio.testing.wait_all_tasks_blocked()
        for conn in conns:
            conn.client.send(b"queued before the drain")
        start = trio.current_time()
        await registry.drain_clients(10.0)
        assert trio.current_time() - start == pytest.approx(10.0)
    assert [c.closed_at - start for c in conns if c.closed_at is not None] == pytest.approx(
        [0.0, 2.5, 5.0, 7.5, 10.0]
    )
    assert all(c.written == [b"queued before the drain"] for c in conns)
    assert all(classify(c.client.close_reason) is DisconnectKind.DRAIN for c in conns)
    assert registry.statistics().disconnects == {"drain": 5}


async def test_a_period_of_zero_closes_every_client_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = Registry(Config())
    conns: list[Conn] = []
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(run_conn, registry, f"c{i}", conns)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await registry.drain_clients(0.0)
    assert [c.closed_at for c in conns] == [start] * 3
    assert not registry.clients


async def test_a_drain_hands_on_a_dispatch_waiting_for_room_and_closes_at_once() -> None:
    registry = Registry(Config(upstream_queue_size=1))
    upstream = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000))
    registry.set_upstream_state(upstream, UpstreamState.SERVING)
    await registry.dispatch([request(0)])  # the outbox is now full
    conns: list[Conn] = []
    read_on: list[bool] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_conn, registry, "c", conns)
        await trio.testing.wait_all_tasks_blocked()
        [conn] = conns

        async def reader() -> None:
            read_on.append(await registry.dispatch_from(conn.client, [request(1)]))

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert conn.client.dispatching
        assert registry.statistics().awaiting_upstream == 2
        await registry.drain_clients(0.0)
    # The batch read went over the bound (it was accepted): nothing waited for room.
    assert read_on == [False]
    assert [int(r.payload) for r in upstream.outbox.take_nowait()] == [0, 1]
    assert conn.closed_at is not None


async def test_a_drain_does_not_wait_for_an_upstream_to_serve(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = Registry(Config())
    upstream = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000, events=True))
    conns: list[Conn] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_conn, registry, "c", conns)
        await trio.testing.wait_all_tasks_blocked()
        [conn] = conns
        nursery.start_soon(registry.dispatch_from, conn.client, [request(1)])
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with trio.fail_after(5):
            await registry.drain_clients(0.0)
        assert trio.current_time() == start
    # Kept for the next upstream to serve, the client's events around its message.
    assert registry.statistics().awaiting_upstream == 1
    registry.set_upstream_state(upstream, UpstreamState.SERVING)
    got = upstream.outbox.take_nowait()
    assert [(r.event, r.payload) for r in got] == [
        (pb.InputStreamRequest.EVENT_CONNECTED, b""),
        (pb.InputStreamRequest.EVENT_MESSAGE, b"1"),
        (pb.InputStreamRequest.EVENT_DISCONNECTED, b""),
    ]


async def test_a_draining_clients_last_read_goes_over_the_bound() -> None:
    registry = Registry(Config(upstream_queue_size=1))
    upstream = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000))
    registry.set_upstream_state(upstream, UpstreamState.SERVING)
    await registry.dispatch([request(0)])  # full
    client = Client(
        "c", listener="l", remote="x", transport="tcp", queue_limit=1, scope=trio.CancelScope()
    )
    client.drain()
    with trio.testing.assert_no_checkpoints():
        assert not await registry.dispatch_from(client, [request(1)])
    assert [int(r.payload) for r in upstream.outbox.take_nowait()] == [0, 1]


async def test_flush_waits_until_the_writer_comes_back_for_more() -> None:
    registry = Registry(Config())
    upstream = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000))
    registry.set_upstream_state(upstream, UpstreamState.SERVING)
    await registry.dispatch([request(0)])
    flushed = trio.Event()

    async def flush() -> None:
        await registry.flush_upstreams()
        flushed.set()

    outbox: Outbox[Request] = upstream.outbox
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush)
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.take_nowait()  # taken, being written
        await trio.testing.wait_all_tasks_blocked()
        assert not flushed.is_set()
        assert outbox.take_nowait() == []  # written: the writer wants more
        await trio.testing.wait_all_tasks_blocked()
        assert flushed.is_set()


async def test_flush_ends_when_the_upstream_stops_serving() -> None:
    registry = Registry(Config())
    upstream = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000))
    registry.set_upstream_state(upstream, UpstreamState.SERVING)
    await registry.dispatch([request(0)])
    upstream.outbox.take_nowait()
    with trio.testing.assert_checkpoints():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry.flush_upstreams)
            await trio.testing.wait_all_tasks_blocked()
            # Its stream broke: the batch is put back, and fails over to no one.
            upstream.outbox.requeue([request(0)])
            registry.set_upstream_state(upstream, UpstreamState.UNHEALTHY, reason="test")
            await trio.testing.wait_all_tasks_blocked()
            assert nursery.child_tasks  # waits for an upstream to take the orphan
            other = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1001))
            registry.set_upstream_state(other, UpstreamState.SERVING)
            await trio.testing.wait_all_tasks_blocked()
            assert other.outbox.take_nowait()
            assert other.outbox.take_nowait() == []


def test_pausing_and_resuming_new_clients_is_published_once_per_change() -> None:
    registry = Registry(Config())
    registry.set_accepting(False)
    assert registry.accepting is False
    assert registry.statistics().accepting is False
    assert registry.drain.admit() is False
    registry.set_accepting(False)  # no change: nothing published
    registry.set_accepting(True)
    assert registry.accepting is True
    assert registry.drain.admit() is True
    published = [
        {k: v for k, v in e.items() if k != "time"}
        for e in registry.events.recent
        if e["type"].startswith("runtime.")
    ]
    assert published == [
        {"type": "runtime.accepting", "accepting": False},
        {"type": "runtime.accepting", "accepting": True},
    ]
    assert registry.statistics().refused == 1


def test_a_stop_request_refuses_new_clients_and_is_published_once() -> None:
    registry = Registry(Config())
    registry.request_stop()
    assert registry.drain.stop_requested.is_set()
    assert registry.accepting is False
    assert registry.drain.admit() is False
    assert registry.drain.admit() is False
    registry.request_stop()  # asked twice: one stop
    assert [e["type"] for e in registry.events.recent] == ["runtime.stop"]
    assert registry.statistics().refused == 2


async def test_a_drain_of_two_clients_spreads_them_and_logs_the_count_and_period(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(Config())
    conns: list[Conn] = []
    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(run_conn, registry, f"c{i}", conns)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with caplog.at_level(logging.INFO, logger="pmlb.registry"):
            await registry.drain_clients(4.0)
    # two clients: the first at once, the second at the end of the period
    assert [c.closed_at - start for c in conns if c.closed_at is not None] == [0.0, 4.0]
    (record,) = [r for r in caplog.records if r.name == "pmlb.registry"]
    assert record.getMessage() == "draining clients"
    assert (record.clients, record.drain_period) == (2, 4.0)  # type: ignore[attr-defined]
