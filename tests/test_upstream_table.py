"""The upstream table in process: what each change of an upstream is told as.

Each change of an upstream's state, admin state or stall is an operator
event (the admin API's live stream, the dashboard) and a log line with its
fields; these tests read both, and the counts a failover leaves, through the
``Registry`` facade. Supervisors and discovery are stood in for by tasks that
do what theirs do on the table (``supervise``).
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from pmlb.config import Config, UpstreamConfig
from pmlb.registry import Registry
from pmlb.upstream.discovery import Discovery
from pmlb.upstream.state import AdminState, Upstream, UpstreamState
from tests.test_registry import request

SERVING, UNHEALTHY, CONNECTING = (
    UpstreamState.SERVING,
    UpstreamState.UNHEALTHY,
    UpstreamState.CONNECTING,
)

#: the fields the table's log lines carry
FIELDS = (
    "upstream",
    "state",
    "reason",
    "admin_state",
    "previous",
    "moved",
    "redelivered",
    "requeued",
    "stalled",
    "waited",
    "queued",
    "dropped",
    "max_deliveries",
    "undeliverable_total",
)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="pmlb.registry")
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, dict[str, object]]]:
    """The table's log lines: level, text and fields, in order; then forgotten."""
    got = [
        (r.levelname, r.getMessage(), {k: getattr(r, k) for k in FIELDS if hasattr(r, k)})
        for r in caplog.records
        if r.name == "pmlb.registry"
    ]
    caplog.clear()
    return got


def published(registry: Registry) -> list[dict[str, object]]:
    """The upstream and discovery events, without their time; then forgotten."""
    got = [
        {k: v for k, v in event.items() if k != "time"}
        for event in registry.events.recent
        if str(event["type"]).startswith(("upstream.", "discovery."))
    ]
    registry.events.recent.clear()
    return got


#: the address of the upstream ``table`` adds
WHERE = "192.0.2.7:50051"


def table(*, acks: bool = False, max_deliveries: int = 5) -> tuple[Registry, Upstream]:
    registry = Registry(Config())
    config = UpstreamConfig(host="192.0.2.7", port=50051, acks=acks, max_deliveries=max_deliveries)
    return registry, registry.add_upstream(config)


def serving_with(queued: int, logs: pytest.LogCaptureFixture) -> tuple[Registry, Upstream]:
    """A table whose upstream serves with ``queued`` messages; what it said so far forgotten."""
    registry, up = table()
    registry.set_upstream_state(up, SERVING)
    up.outbox.put_nowait([request(i) for i in range(queued)])
    published(registry)
    lines(logs)
    return registry, up


async def supervise(registry: Registry, upstream: Upstream) -> None:
    """What a supervisor does on the table when it is cancelled: report the removal."""
    with upstream.cancel_scope:
        await trio.sleep_forever()
    registry.set_upstream_state(upstream, UpstreamState.REMOVED)
    upstream.removed.set()


# Adding


def test_an_added_upstream_is_published_and_a_second_one_at_its_address_refused() -> None:
    registry, up = table()
    assert published(registry) == [{"type": "upstream.added", "upstream": "192.0.2.7:50051"}]
    with pytest.raises(ValueError, match=r"^upstream 192\.0\.2\.7:50051 already exists$"):
        registry.add_upstream(UpstreamConfig(host="192.0.2.7", port=50051))
    assert registry.upstreams == {"192.0.2.7:50051": up}


def test_without_a_running_server_nothing_can_be_started() -> None:
    registry = Registry(Config())
    for start in (registry.start_upstream, registry.start_discovery):
        with pytest.raises(
            RuntimeError, match=r"^this registry is not attached to a running server$"
        ):
            start(UpstreamConfig(host="192.0.2.7", port=50051))
    assert registry.upstreams == {}
    assert registry.discoveries == {}


def test_a_started_upstream_is_added_then_handed_to_the_supervisor_starter() -> None:
    registry = Registry(Config())
    started: list[Upstream] = []
    registry.attach_supervisor(started.append)
    up = registry.start_upstream(UpstreamConfig(host="192.0.2.7", port=50051))
    assert started == [up]
    assert registry.upstreams == {"192.0.2.7:50051": up}


# State changes


async def test_each_state_change_is_published_and_logged_with_its_fields(
    logs: pytest.LogCaptureFixture,
) -> None:
    registry, up = table()
    published(registry)
    where = WHERE
    registry.set_upstream_state(up, SERVING)
    assert published(registry) == [
        {"type": "upstream.state", "upstream": where, "state": "serving"}
    ]
    assert lines(logs) == [("INFO", "upstream serving", {"upstream": where, "state": "serving"})]
    registry.set_upstream_state(up, SERVING)  # no change: nothing said
    assert (published(registry), lines(logs)) == ([], [])

    up.outbox.put_nowait([request(1), request(2)])
    registry.set_upstream_state(up, UNHEALTHY, reason="ping unanswered")
    assert published(registry) == [
        {
            "type": "upstream.state",
            "upstream": where,
            "state": "unhealthy",
            "reason": "ping unanswered",
        }
    ]
    assert lines(logs) == [
        (
            "WARNING",
            "upstream stopped serving",
            {"upstream": where, "state": "unhealthy", "reason": "ping unanswered", "requeued": 2},
        )
    ]
    registry.set_upstream_state(up, CONNECTING)
    assert published(registry) == [
        {"type": "upstream.state", "upstream": where, "state": "connecting"}
    ]
    assert lines(logs) == [("DEBUG", "upstream state", {"upstream": where, "state": "connecting"})]
    registry.set_upstream_state(up, UpstreamState.REMOVED, reason="")
    assert published(registry) == [
        {"type": "upstream.state", "upstream": where, "state": "removed"}
    ]
    assert lines(logs) == [("INFO", "upstream removed", {"upstream": where, "state": "removed"})]
    assert registry.upstreams == {}


async def test_serving_out_of_rotation_or_while_draining_is_logged_as_such(
    logs: pytest.LogCaptureFixture,
) -> None:
    registry, up = table()
    where = WHERE
    registry.set_upstream_admin_state(up, AdminState.DRAIN)
    lines(logs)
    registry.set_upstream_state(up, SERVING)
    assert lines(logs) == [
        (
            "INFO",
            "upstream serving, out of rotation",
            {"upstream": where, "state": "serving", "admin_state": "drain"},
        )
    ]
    registry.set_upstream_state(up, CONNECTING)
    registry.set_upstream_admin_state(up, AdminState.READY)
    up.draining = True  # as drain_upstream marks it
    lines(logs)
    registry.set_upstream_state(up, SERVING)
    assert lines(logs) == [
        ("INFO", "upstream serving again while draining", {"upstream": where, "state": "serving"})
    ]
    assert up.outbox.accepting is False


async def test_a_failover_with_acks_redelivers_then_drops_and_the_counts_add_up(
    logs: pytest.LogCaptureFixture,
) -> None:
    registry, up = table(acks=True, max_deliveries=2)
    where = WHERE

    def deliver_then_fail() -> list[tuple[str, str, dict[str, object]]]:
        registry.set_upstream_state(up, SERVING)
        assert up.outbox.take_nowait()  # written, not acknowledged
        lines(logs)
        registry.set_upstream_state(up, UNHEALTHY)
        return lines(logs)

    def failed(**fields: object) -> tuple[str, str, dict[str, object]]:
        state = {"upstream": where, "state": "unhealthy"}
        return ("WARNING", "upstream stopped serving", {**state, **fields})

    def dropped(n: int, total: int) -> tuple[str, str, dict[str, object]]:
        return (
            "ERROR",
            "requests dropped: delivered max_deliveries times without an acknowledgement",
            {"upstream": where, "dropped": n, "max_deliveries": 2, "undeliverable_total": total},
        )

    for n, total in [(3, 3), (2, 5)]:
        up.outbox.open()
        up.outbox.put_nowait([request(i) for i in range(n)])
        # the first delivery fails: kept to be delivered again, first
        assert deliver_then_fail() == [failed(redelivered=n, requeued=0)]
        assert (up.redelivered, registry.redelivered) == (total, total)
        # the second one too: max_deliveries reached, dropped
        assert deliver_then_fail() == [dropped(n, total), failed(redelivered=0, requeued=0)]
        assert (up.undeliverable, registry.undeliverable) == (total, total)


# Admin state


async def test_an_admin_state_change_is_logged_and_published_and_a_same_one_is_nothing(
    logs: pytest.LogCaptureFixture,
) -> None:
    registry, up = serving_with(2, logs)
    where = WHERE
    assert registry.set_upstream_admin_state(up, AdminState.DRAIN) == 0
    said = {"upstream": where, "admin_state": "drain", "previous": "ready"}
    assert lines(logs) == [("INFO", "upstream admin state set", said)]
    assert published(registry) == [{"type": "upstream.admin_state", **said}]
    assert registry.set_upstream_admin_state(up, AdminState.DRAIN) == 0
    assert (published(registry), lines(logs)) == ([], [])

    assert registry.set_upstream_admin_state(up, AdminState.MAINT) == 2
    said = {"upstream": where, "admin_state": "maint", "previous": "drain", "moved": 2}
    assert lines(logs) == [("INFO", "upstream admin state set", said)]
    assert published(registry) == [{"type": "upstream.admin_state", **said}]


# Stalls


async def test_a_stall_and_its_end_are_logged_published_and_counted(
    logs: pytest.LogCaptureFixture,
) -> None:
    registry, up = serving_with(3, logs)
    where = WHERE
    registry.set_upstream_stalled(up, True, waited=1.23456)
    assert lines(logs) == [
        (
            "WARNING",
            "upstream stalled: its writes make no progress",
            {"upstream": where, "stalled": True, "waited": 1.235, "queued": 3},
        )
    ]
    assert published(registry) == [{"type": "upstream.stalled", "upstream": where, "stalled": True}]
    registry.set_upstream_stalled(up, True, waited=5.0)  # no change: nothing said
    assert (published(registry), lines(logs)) == ([], [])
    registry.set_upstream_stalled(up, False)
    assert lines(logs) == [
        ("INFO", "upstream writes progress again", {"upstream": where, "stalled": False})
    ]
    assert published(registry) == [
        {"type": "upstream.stalled", "upstream": where, "stalled": False}
    ]
    registry.set_upstream_stalled(up, True)  # no wait given: 0 seconds
    assert lines(logs)[0][2]["waited"] == 0.0
    assert up.stalls == 2


async def test_others_flow_when_another_serving_upstream_is_not_stalled() -> None:
    registry, up = table()
    other = registry.add_upstream(UpstreamConfig(host="192.0.2.8", port=50051))
    registry.set_upstream_state(up, SERVING)
    assert not registry.upstream_table.others_flowing(up)  # itself only
    registry.set_upstream_state(other, SERVING)
    assert registry.upstream_table.others_flowing(up)
    registry.set_upstream_stalled(other, True)
    assert not registry.upstream_table.others_flowing(up)


# Waiting for a state


async def test_waiting_for_a_state_returns_only_once_the_upstream_is_in_it() -> None:
    registry, up = table()
    where = up.address
    await registry.wait_upstream_state("192.0.2.99:1", UpstreamState.REMOVED)  # never was
    reached: list[str] = []

    async def wait(address: str, state: UpstreamState) -> None:
        await registry.wait_upstream_state(address, state)
        reached.append(f"{address} {state}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervise, registry, up)
        nursery.start_soon(wait, where, UpstreamState.REMOVED)
        nursery.start_soon(wait, "192.0.2.99:1", SERVING)
        nursery.start_soon(wait, where, SERVING)
        await trio.testing.wait_all_tasks_blocked()
        assert reached == []
        registry.set_upstream_state(up, SERVING)
        await trio.testing.wait_all_tasks_blocked()
        assert reached == [f"{where} serving"]
        await registry.remove_upstream(where)
        await trio.testing.wait_all_tasks_blocked()
        assert reached == [f"{where} serving", f"{where} removed"]
        nursery.cancel_scope.cancel()  # the absent one never serves


# Draining


async def test_a_drain_waits_for_a_silent_stream_publishes_and_logs_once(
    logs: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    registry, up = table()
    where = up.address
    registry.set_upstream_state(up, SERVING)
    up.messages_received = 1  # what the stream had answered so far
    published(registry)
    lines(logs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervise, registry, up)

        async def answer_late() -> None:
            await trio.sleep(0.4)  # within the first quiet period: one more
            up.messages_received += 1

        nursery.start_soon(answer_late)
        started = trio.current_time()
        assert await registry.drain_upstream(where) == 0
        assert trio.current_time() - started == pytest.approx(2 * 0.5)
    assert published(registry)[:1] == [{"type": "upstream.draining", "upstream": where}]
    assert lines(logs)[:1] == [("INFO", "upstream draining", {"upstream": where})]
    assert where not in registry.upstreams


async def test_a_drain_that_cannot_finish_gives_up_after_its_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry, up = table()
    registry.set_upstream_state(up, SERVING)
    up.outbox.put_nowait([request(1), request(2)])  # never written
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervise, registry, up)
        started = trio.current_time()
        assert await registry.drain_upstream(up.address) == 2
        assert trio.current_time() - started == pytest.approx(30.0)


async def test_a_drained_upstream_takes_no_new_messages_even_if_it_serves_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry, up = table()
    other = registry.add_upstream(UpstreamConfig(host="192.0.2.8", port=50051))
    registry.set_upstream_state(up, SERVING)
    registry.set_upstream_state(other, SERVING)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervise, registry, up)

        async def drain() -> None:
            await registry.drain_upstream(up.address)

        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        assert up.draining
        assert registry.dispatcher.serving == [other]  # out of the balancing at once
        registry.set_upstream_state(up, CONNECTING)
        registry.set_upstream_state(up, SERVING)  # reconnected while draining
        await registry.dispatch([request(n) for n in range(4)])
        assert len(other.outbox) == 4
        assert len(up.outbox) == 0
        registry.events.recent.clear()
        await registry.drain_upstream(up.address)  # a second drain: said once
    assert "upstream.draining" not in [e["type"] for e in registry.events.recent]


# Discovery


async def test_a_discovery_is_started_once_and_stopping_it_removes_what_it_found() -> None:
    registry = Registry(Config())
    started: list[Discovery] = []
    registry.attach_discovery(started.append)
    config = UpstreamConfig(host="upstreams.example", port=50051, discovery="dns")
    entry = registry.start_discovery(config)
    assert started == [entry]
    assert entry.config is config
    assert registry.discoveries == {"upstreams.example:50051": entry}
    assert published(registry) == [
        {"type": "discovery.added", "upstream": "upstreams.example:50051"}
    ]
    with pytest.raises(ValueError, match=r"^upstream upstreams\.example:50051 already exists$"):
        registry.start_discovery(config)
    plain = registry.add_upstream(UpstreamConfig(host="192.0.2.9", port=50051))
    with pytest.raises(ValueError, match=r"^upstream 192\.0\.2\.9:50051 already exists$"):
        registry.start_discovery(UpstreamConfig(host="192.0.2.9", port=50051, discovery="dns"))
    assert started == [entry]

    # what the discovery added (one of them removed by then)
    found = [registry.add_upstream(UpstreamConfig(host=f"192.0.2.{i}", port=50051)) for i in (1, 2)]
    entry.addresses.update({"192.0.2.1:50051", "192.0.2.2:50051", "192.0.2.3:50051"})
    published(registry)
    async with trio.open_nursery() as nursery:
        for up in found:
            nursery.start_soon(supervise, registry, up)
        await trio.testing.wait_all_tasks_blocked()
        await registry.stop_discovery("upstreams.example:50051")
    assert entry.cancel_scope.cancel_called
    assert entry.addresses == set()
    assert registry.discoveries == {}
    assert registry.upstreams == {"192.0.2.9:50051": plain}
    assert published(registry)[-1] == {
        "type": "discovery.removed",
        "upstream": "upstreams.example:50051",
    }
    with pytest.raises(KeyError):
        await registry.stop_discovery("upstreams.example:50051")
