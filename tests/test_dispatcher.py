"""The dispatcher's counts, stall bookkeeping, event placement and bounds (mutation survivors)."""

from __future__ import annotations

import logging
import types

import pytest
import trio
import trio.testing

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs import request
from pmlb.codecs.request import Request
from pmlb.config import Config, UpstreamConfig
from pmlb.downstream.client import Client
from pmlb.hub import dispatch as dispatch_module
from pmlb.registry import Registry
from pmlb.upstream.state import AdminState, Upstream, UpstreamState

DROPPED = "lifecycle events dropped: no upstream with events = true serves"


def message(client: str, n: int = 0) -> Request:
    return request.message(client_uuid=client, payload=str(n).encode())


def event(client: str) -> Request:
    return request.event("", client, pb.InputStreamRequest.EVENT_CONNECTED)


def start(
    *events: bool, queue: int = 100, balancing: str = "round_robin"
) -> tuple[Registry, list[Upstream]]:
    registry = Registry(Config(upstream_queue_size=queue, balancing=balancing))
    ups = [
        registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000 + i, events=flag))
        for i, flag in enumerate(events)
    ]
    return registry, ups


def serve(registry: Registry, *ups: Upstream) -> None:
    for up in ups:
        registry.set_upstream_state(up, UpstreamState.SERVING)


def taken(up: Upstream) -> list[tuple[str, int, bytes]]:
    return [(r.client_uuid, r.event, r.payload) for r in up.outbox.take_nowait()]


async def test_a_stalled_upstream_stays_avoided_when_another_stalled_one_recovers() -> None:
    registry, (a, b, c) = start(False, False, False)
    serve(registry, a, b, c)
    registry.set_upstream_stalled(b, True)
    registry.set_upstream_stalled(c, True)
    registry.set_upstream_stalled(c, False)
    await registry.dispatch([message("x", n) for n in range(4)])
    assert len(b.outbox) == 0
    assert len(a.outbox) + len(c.outbox) == 4


async def test_messages_from_clients_add_up_over_dispatches() -> None:
    registry, (a,) = start(False)
    serve(registry, a)
    await registry.dispatch([message("x", 0), message("x", 1)])
    await registry.dispatch([message("x", 2)])
    assert registry.statistics().messages_from_clients == 3


async def test_dispatch_latency_is_the_wait_once_per_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, (a,) = start(False)
    serve(registry, a)
    ticks = iter([1000.0, 1000.25])
    fake_time = types.SimpleNamespace(perf_counter=lambda: next(ticks))
    monkeypatch.setattr(dispatch_module, "time", fake_time)
    await registry.dispatcher.dispatch([message("x", 0), message("x", 1)])
    histogram = registry.dispatcher.dispatch_latency
    assert sum(histogram.counts) == 2
    assert histogram.total == pytest.approx(0.5)


def test_a_policy_change_is_logged_and_published(caplog: pytest.LogCaptureFixture) -> None:
    registry, _ = start()
    with caplog.at_level(logging.INFO, logger="pmlb.registry"):
        registry.set_policy("sticky")
    (record,) = [r for r in caplog.records if r.name == "pmlb.registry"]
    assert record.getMessage() == "balancing policy set"
    assert record.policy == "sticky"  # type: ignore[attr-defined]
    published = [e for e in registry.events.recent if e["type"] == "runtime.policy"]
    assert [e["policy"] for e in published] == ["sticky"]


async def test_events_follow_the_messages_when_every_serving_upstream_takes_them() -> None:
    registry, (a, b) = start(True, True, balancing="sticky")
    serve(registry, a, b)
    await registry.dispatch([message("first")])
    await registry.dispatch([message("second")])
    assert [len(a.outbox), len(b.outbox)] == [1, 1]
    registry.dispatcher.send_event(event("second"))
    assert [r.event for r in b.outbox.take_nowait()] == [0, pb.InputStreamRequest.EVENT_CONNECTED]


async def test_events_placed_among_some_upstreams_do_not_move_the_clients_messages() -> None:
    registry, (plain, e1, e2) = start(False, True, True, balancing="sticky")
    serve(registry, plain, e1, e2)
    registry.dispatcher.send_event(event("d"))
    # A fresh client of the sticky policy: its messages go to the first upstream.
    await registry.dispatch([message("d")])
    assert taken(plain) == [("d", 0, b"0")]


def kept_events(registry: Registry, up: Upstream) -> list[tuple[str, int, bytes]]:
    registry.set_upstream_state(up, UpstreamState.SERVING)
    return taken(up)


async def test_kept_events_up_to_the_bound_are_all_kept(caplog: pytest.LogCaptureFixture) -> None:
    registry, (up,) = start(True, queue=3)
    with caplog.at_level(logging.WARNING, logger="pmlb"):
        for name in "abc":
            registry.dispatcher.send_event(event(name))
            registry.dispatcher.redispatch([message(name)])
    assert not [r for r in caplog.records if r.getMessage() == DROPPED]
    assert registry.events_dropped == 0
    assert [r[:2] for r in kept_events(registry, up)] == [
        (name, kind) for name in "abc" for kind in (pb.InputStreamRequest.EVENT_CONNECTED, 0)
    ]


async def test_one_event_past_the_bound_drops_exactly_the_oldest_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, (up,) = start(True, queue=3)
    with caplog.at_level(logging.WARNING, logger="pmlb"):
        for name in "abcd":
            registry.dispatcher.redispatch([message(name)])
            registry.dispatcher.send_event(event(name))
    (record,) = [r for r in caplog.records if r.getMessage() == DROPPED]
    assert record.dropped_total == 1  # type: ignore[attr-defined]
    assert registry.events_dropped == 1
    connected = pb.InputStreamRequest.EVENT_CONNECTED
    assert [r[:2] for r in kept_events(registry, up)] == [
        ("a", 0),
        *[(name, kind) for name in "bcd" for kind in (0, connected)],
    ]


async def test_a_failed_over_batch_past_the_bound_drops_its_oldest_events() -> None:
    registry, (up,) = start(True, queue=3)
    batch = [r for name in "abcde" for r in (event(name), message(name))]
    registry.dispatcher.redispatch(batch)
    assert registry.events_dropped == 2
    connected = pb.InputStreamRequest.EVENT_CONNECTED
    assert [r[:2] for r in kept_events(registry, up)] == [
        ("a", 0),
        ("b", 0),
        *[(name, kind) for name in "cde" for kind in (connected, 0)],
    ]


async def test_events_held_while_only_others_serve_are_bounded_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, (plain, eventful) = start(False, True, queue=3)
    serve(registry, plain)
    with caplog.at_level(logging.WARNING, logger="pmlb"):
        for name in "abc":
            registry.dispatcher.send_event(event(name))
        assert not [r for r in caplog.records if r.getMessage() == DROPPED]
        registry.dispatcher.send_event(event("d"))
        assert registry.events_dropped == 1
        (record,) = [r for r in caplog.records if r.getMessage() == DROPPED]
        assert record.dropped_total == 1  # type: ignore[attr-defined]
        registry.dispatcher.hold_events([event("e"), event("f")])
    assert registry.events_dropped == 3
    assert [r[0] for r in kept_events(registry, eventful)] == ["d", "e", "f"]
    assert taken(plain) == []


class _Suspends:
    def __await__(self):  # type: ignore[no-untyped-def]
        yield "suspended"
        return True


async def _suspending() -> bool:
    return await _Suspends()  # type: ignore[no-any-return]


def test_a_dispatch_that_must_not_wait_and_suspends_is_an_error() -> None:
    with pytest.raises(RuntimeError, match=r"^a dispatch that must not wait suspended$"):
        dispatch_module._run_nowait(_suspending())


def client_of(registry: Registry, name: str) -> Client:
    c = Client(
        name,
        listener="default",
        remote="x",
        transport="tcp",
        queue_limit=10,
        scope=trio.CancelScope(),
    )
    registry.add_client(c)
    return c


async def test_a_batch_placed_without_waiting_says_read_on() -> None:
    registry, (a,) = start(False)
    serve(registry, a)
    c = client_of(registry, "c")
    assert registry.dispatcher.dispatch_from_nowait(c, [message("c")]) is True
    assert taken(a) == [("c", 0, b"0")]


async def test_from_clients_counts_every_read_placed_held_or_drained() -> None:
    registry, (a,) = start(False)
    c = client_of(registry, "c")
    assert registry.dispatcher.dispatch_from_nowait(c, [message("c", 0)]) is None  # none serves
    serve(registry, a)
    assert registry.dispatcher.dispatch_from_nowait(c, [message("c", 1), message("c", 2)])
    assert registry.dispatcher.dispatch_from_nowait(c, [message("c", 3)])
    c.drain()
    assert registry.dispatcher.dispatch_from_nowait(c, [message("c", 4)]) is False
    assert registry.dispatcher.dispatch_from_nowait(c, [message("c", 5)]) is False
    assert registry.statistics().messages_from_clients == 6


def ticking(monkeypatch: pytest.MonkeyPatch) -> None:
    """``time.perf_counter()`` in the dispatcher: 1000, then a quarter second more each call."""
    ticks = iter(1000.0 + 0.25 * n for n in range(100))
    monkeypatch.setattr(
        dispatch_module, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks))
    )


async def test_the_latency_of_a_batch_placed_at_once_is_from_its_placing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, (a,) = start(False)
    serve(registry, a)
    c = client_of(registry, "c")
    ticking(monkeypatch)
    assert await registry.dispatch_from(c, [message("c", 0), message("c", 1)])
    histogram = registry.dispatcher.dispatch_latency
    assert sum(histogram.counts) == 2
    assert histogram.total == pytest.approx(2 * 0.25)


async def test_the_latency_of_a_held_batch_is_from_its_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, (a,) = start(False)
    c = client_of(registry, "c")
    ticking(monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.dispatch_from, c, [message("c", 0), message("c", 1)])
        await trio.testing.wait_all_tasks_blocked()
        serve(registry, a)
    histogram = registry.dispatcher.dispatch_latency
    assert sum(histogram.counts) == 2
    assert histogram.total == pytest.approx(2 * 0.5)  # read at 1000, placed at 1000.5


async def test_another_upstream_flows_only_if_it_is_not_stalled() -> None:
    registry, (a, b) = start(False, False)
    serve(registry, a, b)
    registry.set_upstream_stalled(a, True)
    registry.set_upstream_stalled(b, True)
    assert not registry.dispatcher.others_flowing(a)
    registry.set_upstream_stalled(b, False)
    assert registry.dispatcher.others_flowing(a)


async def test_a_forgotten_client_is_placed_afresh_for_its_events_too() -> None:
    registry, (plain, e1, e2) = start(False, True, True, balancing="sticky")
    serve(registry, plain, e1, e2)
    registry.dispatcher.send_event(event("d"))
    registry.dispatcher.forget("d")
    registry.dispatcher.send_event(event("d"))
    assert [r[0] for r in taken(e1)] == ["d"]
    assert [r[0] for r in taken(e2)] == ["d"]


async def test_redeliveries_kept_for_the_next_upstream_go_ahead_of_what_was_kept() -> None:
    registry, (a,) = start(False)
    registry.dispatcher.redispatch([message("c", 0)])
    registry.dispatcher.redispatch([message("c", 1), message("c", 2)], front=True)
    serve(registry, a)
    assert [r[2] for r in taken(a)] == [b"1", b"2", b"0"]


async def test_messages_dispatched_add_up_per_upstream() -> None:
    registry, (a, b) = start(False, False)
    serve(registry, a)
    await registry.dispatch([message("c", 0), message("c", 1)])
    await registry.dispatch([message("c", 2)])
    assert a.messages_dispatched == 3
    serve(registry, b)
    for n in range(3):
        await registry.dispatch([message("c", 2 * n), message("c", 2 * n + 1)])
    assert (a.messages_dispatched, b.messages_dispatched) == (6, 3)


async def test_a_batch_spread_without_waiting_says_read_on() -> None:
    registry, (a, b) = start(False, False)
    serve(registry, a, b)
    c = client_of(registry, "c")
    assert registry.dispatcher.dispatch_from_nowait(c, [message("c", 0), message("c", 1)]) is True
    assert (taken(a), taken(b)) == ([("c", 0, b"0")], [("c", 0, b"1")])


async def test_a_batch_that_meets_a_full_outbox_keeps_what_is_not_placed() -> None:
    registry, (a, b) = start(False, False, queue=1)
    serve(registry, a, b)
    c = client_of(registry, "c")
    await registry.dispatch([message("c", 0)])  # a is full; b is next in turn
    batch = [message("c", 1), message("c", 2)]
    assert registry.dispatcher.dispatch_from_nowait(c, batch) is None
    assert [r.payload for r in batch] == [b"2"]  # for a, full: held for dispatch_held
    assert taken(b) == [("c", 0, b"1")]


async def test_batches_refused_by_two_drained_upstreams_go_on_together() -> None:
    registry, (a, b, c) = start(False, False, False, queue=1)
    serve(registry, a, b, c)
    for n in range(3):
        await registry.dispatch([message("c", n)])  # each outbox full
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.dispatch, [message("x", n) for n in range(3)])
        await trio.testing.wait_all_tasks_blocked()  # waiting for room in a
        registry.set_upstream_admin_state(a, AdminState.DRAIN)
        registry.set_upstream_admin_state(b, AdminState.DRAIN)
        got = []
        for _ in range(3):  # c's own message, then x2, then the refused x0 and x1
            await trio.testing.wait_all_tasks_blocked()
            got += [(r[0], r[2]) for r in taken(c)]
    assert got == [("c", b"2"), ("x", b"2"), ("x", b"0"), ("x", b"1")]
    assert (len(a.outbox), len(b.outbox)) == (1, 1)
