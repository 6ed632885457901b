"""The registry in process: dispatch, backpressure, failover, routing back."""

from __future__ import annotations

import logging
import time

import pytest
import trio
import trio.testing

from pmlb._log import JSONFormatter, TextFormatter
from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.request import Request
from pmlb.codecs.request import message as make_request
from pmlb.config import Config, UpstreamConfig
from pmlb.downstream.client import Client
from pmlb.downstream.reasons import STOPPING, Reason
from pmlb.registry import Registry
from pmlb.upstream.state import Upstream, UpstreamState


def request(n: int) -> Request:
    return make_request(time="t", client_uuid="c", payload=str(n).encode())


def payloads(items: list[Request]) -> list[int]:
    return [int(item.payload) for item in items]


def setup(n_upstreams: int, *, queue: int = 100) -> tuple[Registry, list[Upstream]]:
    registry = Registry(Config(upstream_queue_size=queue))
    ups = [
        registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000 + i))
        for i in range(n_upstreams)
    ]
    return registry, ups


def client(registry: Registry, name: str, *, active: bool = False, limit: int = 10) -> Client:
    c = Client(
        name,
        listener="default",
        remote="x",
        transport="tcp",
        queue_limit=limit,
        scope=trio.CancelScope(),
    )
    if active:
        c.last_active = time.monotonic()
    registry.add_client(c)
    return c


async def test_dispatch_waits_for_a_serving_upstream() -> None:
    registry, (up,) = setup(1)
    done = trio.Event()

    async def reader() -> None:
        await registry.dispatch([request(1), request(2)])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        registry.set_upstream_state(up, UpstreamState.SERVING)
    assert payloads(up.outbox.take_nowait()) == [1, 2]


async def test_dispatch_round_robins_over_serving_upstreams_only() -> None:
    registry, (a, b, c) = setup(3)
    registry.set_upstream_state(a, UpstreamState.SERVING)
    registry.set_upstream_state(c, UpstreamState.SERVING)
    await registry.dispatch([request(i) for i in range(6)])
    assert payloads(a.outbox.take_nowait()) == [0, 2, 4]
    assert payloads(c.outbox.take_nowait()) == [1, 3, 5]
    assert len(b.outbox) == 0


async def test_failover_moves_queued_messages_to_another_upstream() -> None:
    registry, (a, b) = setup(2)
    registry.set_upstream_state(a, UpstreamState.SERVING)
    registry.set_upstream_state(b, UpstreamState.SERVING)
    await registry.dispatch([request(i) for i in range(6)])
    registry.set_upstream_state(a, UpstreamState.UNHEALTHY, reason="test")
    assert len(a.outbox) == 0
    assert sorted(payloads(b.outbox.take_nowait())) == list(range(6))


async def test_failover_with_no_other_upstream_keeps_messages_for_the_next_one() -> None:
    registry, (a, b) = setup(2)
    registry.set_upstream_state(a, UpstreamState.SERVING)
    await registry.dispatch([request(i) for i in range(4)])
    registry.set_upstream_state(a, UpstreamState.UNHEALTHY, reason="test")
    assert registry.statistics().awaiting_upstream == 4
    registry.set_upstream_state(b, UpstreamState.SERVING)
    assert payloads(b.outbox.take_nowait()) == [0, 1, 2, 3]


async def test_blocked_reader_moves_on_when_its_upstream_fails() -> None:
    registry, (a, b) = setup(2, queue=1)
    registry.set_upstream_state(a, UpstreamState.SERVING)
    await registry.dispatch([request(0)])  # a's outbox is now full
    done = trio.Event()

    async def reader() -> None:
        await registry.dispatch([request(1)])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # backpressure
        registry.set_upstream_state(b, UpstreamState.SERVING)
        registry.set_upstream_state(a, UpstreamState.UNHEALTHY, reason="test")
        await trio.testing.wait_all_tasks_blocked()
        # a's queued message failed over to b, which is now full in turn
        assert not done.is_set()
        assert payloads(b.outbox.take_nowait()) == [0]
    assert payloads(b.outbox.take_nowait()) == [1]


def test_deliver_routes_by_uuid_and_counts_unknown() -> None:
    registry, _ = setup(0)
    a = client(registry, "a", active=True)
    b = client(registry, "b", active=False)
    registry.deliver(
        [
            pb.OutputStreamRequest(client_uuid="a", payload=b"for a"),
            pb.OutputStreamRequest(client_uuid="nobody", payload=b"lost"),
            pb.OutputStreamRequest(payload=b"no target"),
        ]
    )
    assert a.queued == 1
    assert b.queued == 0
    stats = registry.statistics()
    assert (stats.unknown_client, stats.invalid_target, stats.messages_to_clients) == (1, 1, 1)


def test_an_upstream_supplied_uuid_is_cut_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    registry, _ = setup(0)
    huge = "u" * 1_000_000
    with caplog.at_level(logging.WARNING, logger="pmlb"):
        registry.deliver([pb.OutputStreamRequest(client_uuid=huge, payload=b"lost")])
    (dropped,) = [r for r in caplog.records if "unknown client" in r.getMessage()]
    for formatter in (TextFormatter(), JSONFormatter()):
        assert len(formatter.format(dropped)) < 1000


def test_broadcast_selects_by_activity() -> None:
    registry, _ = setup(0)
    a = client(registry, "a", active=True)
    b = client(registry, "b", active=False)
    Broadcast = pb.OutputStreamRequest
    registry.deliver([pb.OutputStreamRequest(broadcast=Broadcast.BROADCAST_ACTIVE, payload=b"1")])
    assert (a.queued, b.queued) == (1, 0)
    registry.deliver(
        [pb.OutputStreamRequest(broadcast=Broadcast.BROADCAST_NOT_ACTIVE, payload=b"2")]
    )
    assert (a.queued, b.queued) == (1, 1)
    registry.deliver([pb.OutputStreamRequest(broadcast=Broadcast.BROADCAST_ALL, payload=b"3")])
    assert (a.queued, b.queued) == (2, 2)


def test_a_client_whose_queue_is_full_is_disconnected_not_waited_for() -> None:
    registry, _ = setup(0)
    slow = client(registry, "slow", active=True, limit=2)
    fast = client(registry, "fast", active=True, limit=10)
    for _ in range(3):
        registry.broadcast("all", b"x")
    assert slow.close_reason is not None
    assert "slow client" in slow.close_reason
    assert slow._scope.cancel_called
    assert fast.queued == 3


def from_client(name: str, n: int) -> list[Request]:
    return [make_request(client_uuid=name, payload=str(i).encode()) for i in range(n)]


async def test_set_policy_switches_at_runtime_and_refuses_unknown_names() -> None:
    registry, (a, b) = setup(2)
    for up in (a, b):
        registry.set_upstream_state(up, UpstreamState.SERVING)
    assert registry.policy.name == "round_robin"
    registry.set_policy("sticky")
    await registry.dispatch(from_client("x", 3))
    await registry.dispatch(from_client("x", 3))
    queued = sorted([len(a.outbox.take_nowait()), len(b.outbox.take_nowait())])
    assert queued == [0, 6]
    with pytest.raises(ValueError, match="unknown balancing policy 'random'"):
        registry.set_policy("random")
    assert registry.policy.name == "sticky"


async def test_the_default_policy_comes_from_the_config() -> None:
    assert Registry(Config(balancing="hash")).policy.name == "hash"


async def test_failover_keeps_each_client_together_under_hash() -> None:
    registry = Registry(Config(balancing="hash"))
    a, b, c = (
        registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000 + i)) for i in range(3)
    )
    for up in (a, b, c):
        registry.set_upstream_state(up, UpstreamState.SERVING)
    names = [f"client-{i}" for i in range(30)]
    for name in names:
        await registry.dispatch(from_client(name, 4))
    on_a = {r.client_uuid for r in a.outbox.take_nowait()}
    on_b = {r.client_uuid for r in b.outbox.take_nowait()}
    on_c = {r.client_uuid for r in c.outbox.take_nowait()}
    assert on_a
    assert on_b
    assert on_c
    assert on_a | on_b | on_c == set(names)
    # Queue a mixed batch on a, then fail it: every client goes whole, in
    # order, to one upstream, and the clients of b and c stay where they were.
    a.outbox.put_nowait([r for name in names for r in from_client(name, 4)])
    registry.set_upstream_state(a, UpstreamState.UNHEALTHY)
    moved_b, moved_c = b.outbox.take_nowait(), c.outbox.take_nowait()
    for name in names:
        in_b = [r for r in moved_b if r.client_uuid == name]
        in_c = [r for r in moved_c if r.client_uuid == name]
        assert payloads(in_b or in_c) == [0, 1, 2, 3]
        assert not (in_b and in_c)
        if name in on_b:
            assert in_b
        if name in on_c:
            assert in_c


async def test_sticky_forgets_a_client_when_it_is_removed() -> None:
    registry, (a, b) = setup(2)
    registry.set_policy("sticky")
    for up in (a, b):
        registry.set_upstream_state(up, UpstreamState.SERVING)
    c = client(registry, "gone", active=True)
    await registry.dispatch(from_client("gone", 1))
    assert len(registry.policy) == 1  # type: ignore[arg-type]
    registry.remove_client(c)
    assert len(registry.policy) == 0  # type: ignore[arg-type]


def events_setup(*events: bool) -> tuple[Registry, list[Upstream]]:
    registry = Registry(Config())
    ups = [
        registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000 + i, events=flag))
        for i, flag in enumerate(events)
    ]
    return registry, ups


def kinds(items: list[Request]) -> list[tuple[str, int]]:
    return [(item.client_uuid, item.event) for item in items]


CONNECTED = pb.InputStreamRequest.EVENT_CONNECTED
DISCONNECTED = pb.InputStreamRequest.EVENT_DISCONNECTED


async def test_events_go_only_to_upstreams_that_take_them() -> None:
    registry, (plain, eventful) = events_setup(False, True)
    for up in (plain, eventful):
        registry.set_upstream_state(up, UpstreamState.SERVING)
    c = client(registry, "c1", active=False)
    c.close("client closed the connection")
    registry.remove_client(c)
    registry.remove_client(c)  # twice: still one event
    assert plain.outbox.take_nowait() == []
    got = eventful.outbox.take_nowait()
    assert kinds(got) == [("c1", CONNECTED), ("c1", DISCONNECTED)]
    assert got[0].remote_address == "x"
    assert got[0].listener == "default"
    assert got[0].transport == "tcp"
    assert got[1].disconnect_reason == pb.InputStreamRequest.DISCONNECT_CLIENT_CLOSED
    assert got[1].disconnect_detail == "client closed the connection"


async def test_no_events_at_all_without_an_upstream_that_takes_them() -> None:
    registry, (plain,) = events_setup(False)
    client(registry, "c1", active=False)
    registry.set_upstream_state(plain, UpstreamState.SERVING)
    assert plain.outbox.take_nowait() == []


async def test_events_wait_for_an_upstream_that_takes_them_and_never_reach_others() -> None:
    registry, (plain, eventful) = events_setup(False, True)
    client(registry, "c1", active=False)
    registry.set_upstream_state(plain, UpstreamState.SERVING)
    assert plain.outbox.take_nowait() == []
    registry.set_upstream_state(eventful, UpstreamState.SERVING)
    assert kinds(eventful.outbox.take_nowait()) == [("c1", CONNECTED)]


async def test_failover_never_moves_events_to_an_original_contract_upstream() -> None:
    registry, (eventful, plain, other) = events_setup(True, False, True)
    registry.set_upstream_state(eventful, UpstreamState.SERVING)
    client(registry, "c1", active=False)
    await registry.dispatch([request(1)])
    registry.set_upstream_state(plain, UpstreamState.SERVING)
    # eventful fails with an event and a message queued; plain gets the message only.
    registry.set_upstream_state(eventful, UpstreamState.UNHEALTHY)
    assert payloads(plain.outbox.take_nowait()) == [1]
    registry.set_upstream_state(other, UpstreamState.SERVING)
    assert kinds(other.outbox.take_nowait()) == [("c1", CONNECTED)]


async def test_held_events_are_bounded() -> None:
    registry = Registry(Config(upstream_queue_size=3))
    up = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000, events=True))
    for name in "abcde":
        client(registry, name, active=False)
    assert registry.events_dropped == 2
    registry.set_upstream_state(up, UpstreamState.SERVING)
    assert [item.client_uuid for item in up.outbox.take_nowait()] == ["c", "d", "e"]


def reply(**fields: object) -> pb.OutputStreamRequest:
    return pb.OutputStreamRequest(time="t", **fields)  # type: ignore[arg-type]


async def test_disconnect_action_and_multicast() -> None:
    registry, _ = setup(1)
    a, b, c = (client(registry, name, active=False) for name in "abc")
    registry.deliver(
        [
            reply(multicast=pb.ClientList(client_uuids=["a", "c", "a", "zz"]), payload=b"m"),
            reply(client_uuid="b", action=pb.OutputStreamRequest.ACTION_DISCONNECT),
        ]
    )
    assert (a.queued, b.queued, c.queued) == (1, 0, 1)
    assert registry.unknown_client == 1
    assert b.close_reason == "disconnected by an upstream"
    assert a.close_reason is None
    registry.deliver(
        [
            reply(
                multicast=pb.ClientList(client_uuids=["a", "c"]),
                action=pb.OutputStreamRequest.ACTION_DISCONNECT,
            )
        ]
    )
    assert a.close_reason == c.close_reason == "disconnected by an upstream"


async def test_disconnect_refuses_a_broadcast_target() -> None:
    registry, _ = setup(1)
    a = client(registry, "a", active=False)
    registry.deliver([reply(broadcast=0, action=pb.OutputStreamRequest.ACTION_DISCONNECT)])
    registry.deliver([reply(client_uuid="a", action=7)])
    assert a.close_reason is None
    assert registry.invalid_target == 2


def test_client_pages_follow_connection_order_and_filters() -> None:
    registry = Registry(Config())
    clients = [client(registry, f"c{i}", active=i % 2 == 0) for i in range(7)]
    registry.remove_client(clients[3])

    seen: list[str] = []
    cursor = -1
    while True:
        page, cursor_next = registry.client_page(after=cursor, limit=2)
        seen += [c.uuid for c in page]
        if cursor_next is None:
            break
        cursor = cursor_next
    assert seen == ["c0", "c1", "c2", "c4", "c5", "c6"]

    active, more = registry.client_page(state="active", limit=10)
    assert [c.uuid for c in active] == ["c0", "c2", "c4", "c6"]
    assert more is None
    inactive, _ = registry.client_page(state="inactive", limit=1)
    assert [c.uuid for c in inactive] == ["c1"]
    assert registry.client_page(listener="other")[0] == []


async def test_disconnects_are_counted_by_kind_and_reported_as_events() -> None:
    registry = Registry(Config())
    with registry.events.subscribe() as events:
        for name, reason in [
            ("a", "slow client: outbound queue full (10 messages)"),
            ("b", "bad input: message of 70000 bytes exceeds max_message_size 65536"),
            ("c", None),
        ]:
            c = client(registry, name, active=True)
            if reason:
                c.close(reason)
            registry.remove_client(c)
        kinds = [e["type"] for e in await events.next_batch()]
    assert kinds == ["client.connected", "client.disconnected"] * 3
    assert registry.statistics().disconnects == {"slow": 1, "too_big": 1, "drain": 1}


async def test_set_policy_and_accepting() -> None:
    registry = Registry(Config())
    registry.set_policy("round_robin")
    with pytest.raises(ValueError, match="unknown balancing policy 'psychic'"):
        registry.set_policy("psychic")
    assert registry.admit()
    registry.set_accepting(False)
    assert not registry.admit()
    assert registry.statistics().refused == 1


async def test_drain_sends_nothing_new_and_removes_once_written() -> None:
    registry, (a, b) = setup(2)
    for up in (a, b):
        registry.set_upstream_state(up, UpstreamState.SERVING)
    registry.attach_supervisor(lambda upstream: None)
    await registry.dispatch([request(n) for n in range(4)])
    assert (len(a.outbox), len(b.outbox)) == (2, 2)

    async def finish_b() -> None:
        # B's stream writes out what it had; nothing new arrives meanwhile
        await trio.testing.wait_all_tasks_blocked()
        assert not b.outbox.accepting
        assert payloads(b.outbox.take_nowait()) == [1, 3]

    async with trio.open_nursery() as nursery:

        async def supervise_b() -> None:
            with b.cancel_scope:
                await trio.sleep_forever()
            registry.set_upstream_state(b, UpstreamState.REMOVED)
            b.removed.set()

        nursery.start_soon(supervise_b)
        nursery.start_soon(finish_b)
        left = await registry.drain_upstream(b.address, quiet=0.01)
    assert left == 0
    assert b.address not in registry.upstreams
    await registry.dispatch([request(n) for n in range(4, 8)])
    assert payloads(a.outbox.take_nowait()) == [0, 2, 4, 5, 6, 7]


async def test_awaiting_upstream_counts_batches_readers_hold() -> None:
    registry, (up,) = setup(1, queue=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.dispatch, [request(1), request(2)])
        await trio.testing.wait_all_tasks_blocked()
        assert registry.statistics().awaiting_upstream == 2  # no upstream serves
        registry.set_upstream_state(up, UpstreamState.SERVING)
        # The first batch is placed before the second reader comes (Trio
        # runs woken tasks in random order).
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(registry.dispatch, [request(3)])
        await trio.testing.wait_all_tasks_blocked()
        assert registry.statistics().awaiting_upstream == 3  # 2 queued, 1 waiting for room
        assert payloads(up.outbox.take_nowait()) == [1, 2]
    assert payloads(up.outbox.take_nowait()) == [3]
    assert registry.statistics().awaiting_upstream == 0


async def test_a_hang_up_hands_the_waiting_batch_on_before_the_disconnected_event() -> None:
    registry = Registry(Config())
    up = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1000, events=True))
    c = client(registry, "c", active=False)
    hung_up = trio.Event()
    read_on: list[bool] = []

    async def reader() -> None:
        read_on.append(await registry.dispatch_from(c, [request(1)], hung_up.wait))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not read_on
        hung_up.set()
    assert read_on == [False]
    assert c.input_ended
    c.close("client closed the connection")
    registry.remove_client(c)
    assert not registry.clients
    registry.set_upstream_state(up, UpstreamState.SERVING)
    assert [(r.event, r.payload) for r in up.outbox.take_nowait()] == [
        (pb.InputStreamRequest.EVENT_CONNECTED, b""),
        (pb.InputStreamRequest.EVENT_MESSAGE, b"1"),
        (pb.InputStreamRequest.EVENT_DISCONNECTED, b""),
    ]


async def test_a_dispatch_that_need_not_wait_does_not_watch_for_hang_ups() -> None:
    registry, (up,) = setup(1)
    registry.set_upstream_state(up, UpstreamState.SERVING)
    c = client(registry, "c", active=False)

    async def never() -> None:
        raise AssertionError("watched although nothing waited")

    with trio.testing.assert_no_checkpoints():
        assert await registry.dispatch_from(c, [request(1)], never)
    assert payloads(up.outbox.take_nowait()) == [1]


# -- the facade ---------------------------------------------------------------


def test_the_data_path_calls_the_owning_part_directly() -> None:
    # The registry adds no call on the data path: what the listeners and the
    # supervisors call is the hub part's own bound method.
    registry = Registry(Config())
    assert registry.dispatch_from == registry.dispatcher.dispatch_from
    assert registry.deliver == registry.router.deliver
    assert registry.upstream_table.deliver == registry.router.deliver


def test_a_reloaded_configuration_reaches_every_part() -> None:
    registry = Registry(Config(upstream_queue_size=5, activity_window=60.0))
    new = Config(upstream_queue_size=7, activity_window=0.0)
    registry.config = new
    assert registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1)).outbox.capacity == 7
    c = client(registry, "c", active=True)
    c.last_active = time.monotonic() - 1.0  # active within 60 s, not within 0 s
    assert registry.client_page(state="inactive")[0] == [c]
    assert list(registry.select_clients("inactive")) == [c]
    parts = [registry.dispatcher, registry.client_table, registry.router, registry.upstream_table]
    assert all(part.config is new for part in parts)


def listener_client(registry: Registry, name: str, listener: str) -> Client:
    c = Client(
        name,
        listener=listener,
        remote="x",
        transport="tcp",
        queue_limit=10,
        scope=trio.CancelScope(),
        budget=registry.client_table.client_queues,  # as the listeners make them
    )
    registry.add_client(c)
    return c


async def test_statistics_read_every_part_as_it_is_now() -> None:
    registry = Registry(Config())
    registry.set_policy("sticky")
    registry.set_accepting(False)
    a = listener_client(registry, "a", "one")
    b = listener_client(registry, "b", "two")
    gone = listener_client(registry, "gone", "two")
    gone.bytes_in, gone.bytes_out = 7, 9
    registry.remove_client(gone)
    a.bytes_in, a.bytes_out, b.bytes_in = 100, 5, 20
    a.send(b"xy")
    a.send(b"z")
    registry.connections.accepted = 3
    acked = registry.add_upstream(UpstreamConfig(host="u", port=1, acks=True))
    registry.set_upstream_state(acked, UpstreamState.SERVING)
    await registry.dispatch([request(i) for i in range(3)])
    acked.outbox.take_nowait()  # written, as its stream writer does: not yet acknowledged

    stats = registry.statistics()
    assert (stats.clients, stats.clients_total) == (2, 3)
    assert (stats.upstreams, stats.upstreams_serving) == (1, 1)
    assert (stats.queued_to_clients, stats.queued_bytes_to_clients) == (2, 3)
    assert (stats.bytes_from_clients, stats.bytes_to_clients) == (7 + 100 + 20, 9 + 5)
    assert stats.clients_by_listener == {"one": 1, "two": 1}
    assert stats.clients_total_by_listener == {"one": 1, "two": 2}
    assert (stats.policy, stats.accepting, stats.unacked) == ("sticky", False, 3)
    assert stats.connections.accepted == 3
    # a copy: the snapshot does not move with the counters
    registry.connections.accepted = 4
    assert stats.connections.accepted == 3


def is_rfc3339(text: str) -> bool:
    return text.endswith("Z") and "T" in text


async def test_a_disconnected_event_is_stamped_with_the_time() -> None:
    registry, (eventful,) = events_setup(True)
    registry.set_upstream_state(eventful, UpstreamState.SERVING)
    c = client(registry, "c1")
    c.close("client closed the connection")
    registry.remove_client(c)
    connected, disconnected = eventful.outbox.take_nowait()
    assert disconnected.event == DISCONNECTED
    assert is_rfc3339(connected.time)
    assert is_rfc3339(disconnected.time)


def test_clients_by_listener_count_down_one_per_removal() -> None:
    registry = Registry(Config())
    clients = [listener_client(registry, f"c{i}", "one") for i in range(3)]
    registry.remove_client(clients[0])
    assert registry.statistics().clients_by_listener == {"one": 2}
    registry.remove_client(clients[1])
    assert registry.statistics().clients_by_listener == {"one": 1}


async def test_clients_lost_with_another_node_are_reported_as_disconnected() -> None:
    registry, (eventful,) = events_setup(True)
    registry.set_upstream_state(eventful, UpstreamState.SERVING)
    registry.clients_lost_elsewhere(["u1", "u2"], "node-b")
    got = eventful.outbox.take_nowait()
    assert kinds(got) == [("u1", DISCONNECTED), ("u2", DISCONNECTED)]
    for lost in got:
        assert lost.disconnect_reason == pb.InputStreamRequest.DISCONNECT_ERROR
        assert lost.disconnect_detail == "their pmlb node node-b stopped"
        assert is_rfc3339(lost.time)


def test_kick_closes_the_client_as_kicked_with_the_operators_reason() -> None:
    registry = Registry(Config())
    a, b = client(registry, "a"), client(registry, "b")
    assert registry.kick("a") is a
    assert (a.close_reason, a.close_kind) == ("kicked by an operator", Reason.KICKED)
    registry.kick("b", "bye")
    assert (b.close_reason, b.close_kind) == ("bye", Reason.KICKED)
    with pytest.raises(KeyError):
        registry.kick("nobody")


def record(name: str, transport: str) -> Client:
    """A client of listener ``one`` from 192.0.2.1:4000, not yet in any table."""
    return Client(
        name,
        listener="one",
        remote="192.0.2.1:4000",
        transport=transport,
        queue_limit=10,
        scope=trio.CancelScope(),
    )


class Membership:
    """The cluster bus as the client table sees it: records who came and went."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def client_added(self, uuid: str) -> None:
        self.calls.append(("added", uuid))

    def client_removed(self, uuid: str) -> None:
        self.calls.append(("removed", uuid))


def test_clients_coming_and_going_are_published_and_told_to_the_cluster() -> None:
    registry = Registry(Config())
    membership = Membership()
    registry.client_table.cluster = membership  # type: ignore[assignment]
    a = record("a", "websocket")
    registry.add_client(a)
    b = client(registry, "b")
    a.close("bye now")
    registry.remove_client(a)
    registry.remove_client(b)  # never closed: pmlb is stopping
    registry.remove_client(b)  # a second removal is nothing
    assert membership.calls == [("added", "a"), ("added", "b"), ("removed", "a"), ("removed", "b")]
    published = [
        {k: v for k, v in event.items() if k != "time"}
        for event in registry.events.recent
        if event["type"].startswith("client.")
    ]
    assert published == [
        {
            "type": "client.connected",
            "client": "a",
            "listener": "one",
            "remote": "192.0.2.1:4000",
            "transport": "websocket",
        },
        {
            "type": "client.connected",
            "client": "b",
            "listener": "default",
            "remote": "x",
            "transport": "tcp",
        },
        {"type": "client.disconnected", "client": "a", "listener": "one", "reason": "bye now"},
        {"type": "client.disconnected", "client": "b", "listener": "default", "reason": STOPPING},
    ]


def test_the_bytes_of_clients_gone_add_up() -> None:
    registry = Registry(Config())
    a, b = client(registry, "a"), client(registry, "b")
    a.bytes_in, a.bytes_out, b.bytes_in, b.bytes_out = 3, 4, 50, 60
    registry.remove_client(a)
    registry.remove_client(b)
    stats = registry.statistics()
    assert (stats.bytes_from_clients, stats.bytes_to_clients) == (53, 64)


def test_the_queue_budget_is_the_configured_total_over_the_tables_clients() -> None:
    registry = Registry(Config(client_queue_bytes_total=1000))
    big, small = listener_client(registry, "big", "one"), listener_client(registry, "small", "one")
    assert big.send(b"b" * 700)
    assert small.send(b"s" * 300)
    assert small.send(b"s")  # past the total: the biggest holder pays
    assert big.closed_slow
    assert small.close_reason is None


def test_the_admin_view_of_a_client_shows_each_of_its_fields() -> None:
    c = record("c1", "tls")
    c.connected_at = 1_700_000_000.25
    c.messages_in, c.messages_out, c.bytes_in, c.bytes_out, c.dropped = 1, 2, 30, 40, 5
    assert c.send(b"queued")
    never = c.view(now=105.0, wall=1_700_000_100.0, window=10.0)
    assert never["last_active_at"] is None
    assert never["active"] is False
    c.last_active = 100.0  # five seconds before now
    assert c.view(now=105.0, wall=1_700_000_100.0, window=10.0) == {
        "uuid": "c1",
        "remote": "192.0.2.1:4000",
        "listener": "one",
        "transport": "tls",
        "connected_at": "2023-11-14T22:13:20.250000Z",
        "last_active_at": "2023-11-14T22:14:55.000000Z",
        "active": True,
        "messages_in": 1,
        "messages_out": 2,
        "bytes_in": 30,
        "bytes_out": 40,
        "queued": 1,
        "dropped": 5,
    }
    assert c.view(now=105.0, wall=1_700_000_100.0, window=4.0)["active"] is False
