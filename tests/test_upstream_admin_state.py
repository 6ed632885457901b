"""An operator's upstream states in process: ready, drain and maint, reversibly."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pmlb.codecs.request import Request
from pmlb.codecs.request import message as make_request
from pmlb.config import Config, UpstreamConfig, UpstreamError, parse_upstream
from pmlb.registry import Registry
from pmlb.upstream.state import AdminState, Upstream, UpstreamState
from tests.test_registry import client


def request(n: int) -> Request:
    return make_request(time="t", client_uuid="c", payload=str(n).encode())


def payloads(items: list[Request]) -> list[int]:
    return [int(item.payload) for item in items]


def serving(n: int, *, queue: int = 100) -> tuple[Registry, list[Upstream]]:
    registry = Registry(Config(upstream_queue_size=queue))
    ups = [registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000 + i)) for i in range(n)]
    for up in ups:
        registry.set_upstream_state(up, UpstreamState.SERVING)
    return registry, ups


async def test_drain_sends_no_new_messages_keeps_the_queue_and_is_undone_by_ready() -> None:
    registry, (a, b) = serving(2)
    await registry.dispatch([request(n) for n in range(4)])
    assert registry.set_upstream_admin_state(b, AdminState.DRAIN) == 0
    assert registry.statistics().upstreams_serving == 1
    await registry.dispatch([request(n) for n in range(4, 8)])
    assert payloads(a.outbox.take_nowait()) == [0, 2, 4, 5, 6, 7]
    # what b had queued stays with it, to be written; it is still serving
    assert payloads(b.outbox.take_nowait()) == [1, 3]
    assert b.state is UpstreamState.SERVING
    registry.set_upstream_admin_state(b, AdminState.READY)
    await registry.dispatch([request(n) for n in range(8, 12)])
    assert sorted(payloads(a.outbox.take_nowait()) + payloads(b.outbox.take_nowait())) == [
        8,
        9,
        10,
        11,
    ]
    assert len(b.outbox) == 0


async def test_maint_moves_the_queue_to_the_others_at_once() -> None:
    registry, (a, b) = serving(2)
    await registry.dispatch([request(n) for n in range(4)])
    assert registry.set_upstream_admin_state(b, AdminState.MAINT) == 2
    assert len(b.outbox) == 0
    assert sorted(payloads(a.outbox.take_nowait())) == [0, 1, 2, 3]
    assert registry.statistics().awaiting_upstream == 0


async def test_maint_of_the_only_upstream_keeps_messages_for_the_next_in_rotation() -> None:
    registry, (a,) = serving(1)
    await registry.dispatch([request(n) for n in range(3)])
    registry.set_upstream_admin_state(a, AdminState.MAINT)
    assert len(a.outbox) == 0
    assert registry.statistics().awaiting_upstream == 3
    registry.set_upstream_admin_state(a, AdminState.READY)
    assert payloads(a.outbox.take_nowait()) == [0, 1, 2]


async def test_a_reader_waits_while_every_upstream_is_drained_and_goes_on_at_ready() -> None:
    registry, (a,) = serving(1)
    registry.set_upstream_admin_state(a, AdminState.DRAIN)
    done = trio.Event()

    async def reader() -> None:
        await registry.dispatch([request(1)])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # backpressure, as with no upstream
        assert registry.statistics().awaiting_upstream == 1
        registry.set_upstream_admin_state(a, AdminState.READY)
    assert payloads(a.outbox.take_nowait()) == [1]


async def test_a_reader_waiting_for_room_goes_elsewhere_when_its_upstream_is_drained() -> None:
    registry, (a, b) = serving(2, queue=1)
    await registry.dispatch([request(0), request(1)])  # both full
    done = trio.Event()

    async def reader() -> None:
        await registry.dispatch([request(2)])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        waiting_on = a if a.outbox._space else b
        other = b if waiting_on is a else a
        registry.set_upstream_admin_state(waiting_on, AdminState.DRAIN)
        await trio.testing.wait_all_tasks_blocked()
        other.outbox.take_nowait()  # room on the other one
    assert payloads(other.outbox.take_nowait()) == [2]
    assert len(waiting_on.outbox) == 1  # its own queue is left to be written


async def test_an_upstream_in_maint_that_reconnects_stays_out_of_rotation() -> None:
    registry, (a, b) = serving(2)
    registry.set_upstream_admin_state(b, AdminState.MAINT)
    registry.set_upstream_state(b, UpstreamState.UNHEALTHY, reason="test")
    registry.set_upstream_state(b, UpstreamState.SERVING)
    await registry.dispatch([request(n) for n in range(3)])
    assert payloads(a.outbox.take_nowait()) == [0, 1, 2]
    assert b.admin_state is AdminState.MAINT
    assert not b.outbox.accepting


async def test_events_skip_a_drained_upstream() -> None:
    registry = Registry(Config())
    a = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1, events=True))
    b = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=2, events=True))
    for up in (a, b):
        registry.set_upstream_state(up, UpstreamState.SERVING)
    registry.set_upstream_admin_state(a, AdminState.DRAIN)
    for n in range(3):
        client(registry, f"c{n}", active=True)
    assert len(a.outbox) == 0
    assert len(b.outbox) == 3


async def test_a_process_drain_waits_for_a_drained_upstreams_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry, (a,) = serving(1)
    await registry.dispatch([request(n) for n in range(2)])
    registry.set_upstream_admin_state(a, AdminState.DRAIN)
    flushed = trio.Event()

    async def flush() -> None:
        await registry.flush_upstreams(upstream_wait=1.0)
        flushed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush)
        await trio.testing.wait_all_tasks_blocked()
        assert not flushed.is_set()
        assert payloads(a.outbox.take_nowait()) == [0, 1]  # the writer writes them
        await trio.testing.wait_all_tasks_blocked()
        assert not flushed.is_set()  # in flight until its next, empty, take
        assert a.outbox.take_nowait() == []
    assert flushed.is_set()


def test_parse_upstream_checks_a_mapping_as_the_file_does() -> None:
    config = parse_upstream(
        {"host": "10.0.0.1", "port": 5, "events": True, "tls": True, "tls_ca": "ca.pem"}
    )
    assert config == UpstreamConfig(host="10.0.0.1", port=5, events=True, tls=True, tls_ca="ca.pem")
    with pytest.raises(UpstreamError) as caught:
        parse_upstream({"host": "", "tls_cert": "c.pem", "ready_timout": 1, "acks": "yes"})
    keys = {key for key, _ in caught.value.problems}
    assert keys == {"port", "host", "tls_cert", "tls_key", "ready_timout", "acks"}
    text = str(caught.value)
    assert "port: required, but missing" in text
    assert "ready_timout: unknown key (did you mean 'ready_timeout'?)" in text
    assert "tls_cert: only applies when tls = true" in text
