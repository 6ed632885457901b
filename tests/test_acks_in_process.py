"""Acknowledgements and redelivery, in process: registry, supervisor, transport, fake upstream.

The scripted upstream of tests/fake_h2_upstream.py acknowledges on its
replies, alone, late or never, and fails on demand (reset stream, GOAWAY, a
dropped connection). The native transport runs over memory streams under the
autojump clock; the grpclib one over real TCP on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial

import pytest
import trio
import trio.testing
import trio_asyncio
from prometheus_client import generate_latest

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.request import Request
from pmlb.codecs.request import message as make_request
from pmlb.config import Config, UpstreamConfig
from pmlb.downstream.client import Client
from pmlb.metrics import metrics_registry
from pmlb.registry import Registry
from pmlb.upstream.acks import MessageIds, Unacked
from pmlb.upstream.grpclib_transport import GrpclibTransport
from pmlb.upstream.h2_transport import H2Transport
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.state import Upstream, UpstreamState
from pmlb.upstream.supervisor import supervise
from pmlb.upstream.transport import Transport
from tests.fake_h2_upstream import FakeUpstream
from tests.helpers import TIMEOUT

SERVING, UNHEALTHY = UpstreamState.SERVING, UpstreamState.UNHEALTHY
#: seconds of the (autojump) Trio clock a test may take
CAP = 600


def requests(n: int, start: int = 0) -> list[Request]:
    return [
        make_request(time="t", client_uuid=f"c{i % 3}", payload=b"m%d" % i)
        for i in range(start, start + n)
    ]


def start(
    nursery: trio.Nursery, registry: Registry, fake: FakeUpstream, port: int = 1, **settings: object
) -> Upstream:
    """Supervise an upstream served by ``fake`` over memory streams."""

    async def open_stream() -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(fake.serve, theirs)
        return ours

    def transport(config: UpstreamConfig) -> Transport:
        return H2Transport(config.host, config.port, open_stream=open_stream)

    config = UpstreamConfig(host="upstream.test", port=port, **settings)  # type: ignore[arg-type]
    upstream = registry.add_upstream(config)
    nursery.start_soon(supervise, upstream, registry, transport)
    return upstream


def ack_fields(request: Request) -> tuple[int, str, int]:
    return request.seq, request.message_id, request.delivery_attempt


# -- the table and the outbox, alone -----------------------------------------


def test_stamps_number_per_stream_and_keep_the_message_id() -> None:
    table = Unacked(10, MessageIds("p"))
    batch = requests(3)
    table.stamp(batch, now=0.0)
    assert [ack_fields(r) for r in batch] == [(1, "p-1", 1), (2, "p-2", 1), (3, "p-3", 1)]
    table.ack([2, 2, 7], now=1.0)
    assert (len(table), table.acks_received, table.acks_unknown) == (2, 1, 2)
    again = table.take_all()
    assert [r.payload for r in again] == [b"m0", b"m2"]
    table.stamp(again, now=2.0)  # the next stream: numbering starts again, ids stay
    assert [ack_fields(r) for r in again] == [(1, "p-1", 2), (2, "p-3", 2)]


def test_unstamping_what_was_never_written_restores_the_request() -> None:
    table = Unacked(10, MessageIds("p"))
    batch = requests(2)
    original = [r.encode() for r in batch]
    table.stamp(batch, now=0.0)
    table.unstamp(batch)
    assert [r.encode() for r in batch] == original
    assert len(table) == 0


async def test_the_writer_takes_only_what_the_table_has_room_for() -> None:
    outbox: Outbox[Request] = Outbox(100, unacked=Unacked(3))
    outbox.open()
    outbox.put_nowait(requests(5))
    assert [r.seq for r in outbox.take_nowait()] == [1, 2, 3]
    assert outbox.take_nowait() == []
    with trio.move_on_after(1) as waited:
        await outbox.wait_nonempty()  # something is queued, but no room
    assert waited.cancelled_caught
    outbox.ack([1])
    await outbox.wait_nonempty()
    assert [r.seq for r in outbox.take_nowait()] == [4]


# -- through the supervisor and the native transport --------------------------


async def test_an_upstream_without_acks_sees_no_ack_field_even_after_failover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    acked = FakeUpstream(acks="reply", kill_after=5)
    plain = FakeUpstream()
    registry = Registry(Config(balancing="round_robin"))
    with trio.fail_after(CAP):  # the autojump clock makes a hang fail fast
        async with trio.open_nursery() as nursery:
            first = start(nursery, registry, acked, acks=True)
            await registry.wait_upstream_state(first.address, SERVING)
            # the acked one takes everything, dies, then only the plain one serves
            await registry.dispatch(requests(6))
            await registry.wait_upstream_state(first.address, UNHEALTHY)
            await registry.remove_upstream(first.address)
            second = start(nursery, registry, plain, port=2)
            await registry.wait_upstream_state(second.address, SERVING)
            await plain.wait_until(lambda: len(plain.received) == 6)
            nursery.cancel_scope.cancel()
    assert all(ack_fields(r) == (0, "", 0) for r in plain.received)
    assert {f.name for r in plain.received for f, _ in r.ListFields()} == {
        "time",
        "client_uuid",
        "payload",
    }
    assert sorted(r.payload for r in plain.received) == sorted(r.payload for r in requests(6))


@pytest.mark.parametrize("mode", ["reply", "alone"])
async def test_acks_on_replies_or_alone_empty_the_table(
    autojump_clock: trio.testing.MockClock, mode: str
) -> None:
    fake = FakeUpstream(acks=mode)
    registry = Registry(Config())
    with trio.fail_after(CAP):  # the autojump clock makes a hang fail fast
        async with trio.open_nursery() as nursery:
            upstream = start(nursery, registry, fake, acks=True)
            await registry.wait_upstream_state(upstream.address, SERVING)
            await registry.dispatch(requests(10))
            with trio.fail_after(5):
                await registry.flush_upstreams()  # returns once all are acknowledged
            stats = registry.statistics()
            scraped = generate_latest(metrics_registry(registry)).decode()
            nursery.cancel_scope.cancel()
    assert 'pmlb_upstream_acks_total{kind="received",upstream="upstream.test:1"} 10.0' in scraped
    assert 'pmlb_upstream_unacked{upstream="upstream.test:1"} 0.0' in scraped
    assert 'pmlb_ack_latency_seconds_count{upstream="upstream.test:1"} 10.0' in scraped
    assert len({r.message_id for r in fake.received}) == 10
    assert {r.delivery_attempt for r in fake.received} == {1}
    assert (stats.unacked, stats.acks_received, stats.acks_unknown) == (0, 10, 0)
    # every echo was routed (to no such client); an ack alone is no targetless message
    assert (stats.unknown_client, stats.invalid_target) == (10, 0)


@pytest.mark.parametrize("fault", ["reset_after", "goaway_after", "kill_after"])
async def test_what_a_failed_stream_left_unacknowledged_is_redelivered(
    autojump_clock: trio.testing.MockClock, fault: str
) -> None:
    fake = FakeUpstream(acks="reply")
    registry = Registry(Config())
    with trio.fail_after(CAP):  # the autojump clock makes a hang fail fast
        async with trio.open_nursery() as nursery:
            upstream = start(nursery, registry, fake, acks=True)
            await registry.wait_upstream_state(upstream.address, SERVING)
            await registry.dispatch(requests(3))
            await registry.flush_upstreams()  # acknowledged
            setattr(fake, fault, 4)  # the next batch breaks the stream, unanswered
            await registry.dispatch(requests(4, start=3))
            await registry.wait_upstream_state(upstream.address, UNHEALTHY)
            setattr(fake, fault, None)
            await registry.wait_upstream_state(upstream.address, SERVING)
            with trio.fail_after(5):
                await registry.flush_upstreams()
            nursery.cancel_scope.cancel()
    first, again = fake.received[3:7], fake.received[7:]
    assert [r.payload for r in again] == [b"m3", b"m4", b"m5", b"m6"]
    assert [r.message_id for r in again] == [r.message_id for r in first]
    assert [(r.seq, r.delivery_attempt) for r in first] == [(4, 1), (5, 1), (6, 1), (7, 1)]
    assert [(r.seq, r.delivery_attempt) for r in again] == [(1, 2), (2, 2), (3, 2), (4, 2)]
    assert len(fake.received) == 11  # the acknowledged three were not sent again
    assert (upstream.redelivered, registry.statistics().unacked) == (4, 0)


async def test_redeliveries_go_to_another_upstream_ahead_of_newer_messages() -> None:
    registry = Registry(Config())
    dying = registry.add_upstream(UpstreamConfig(host="a", port=1, acks=True))
    other = registry.add_upstream(UpstreamConfig(host="b", port=1, acks=True))
    registry.set_upstream_state(dying, SERVING)
    await registry.dispatch(requests(3))
    written = dying.outbox.take_nowait()  # as its stream writer does: stamped, unacked
    dying.outbox.ack([written[1].seq])
    registry.set_upstream_state(other, SERVING)
    await registry.dispatch(requests(2, start=3))  # round robin: one each
    registry.set_upstream_state(dying, UNHEALTHY)
    queued = other.outbox.take_nowait()
    # redelivered first; then what was queued there (m4), then what was
    # queued for the dying one and never written (m3, failed over as ever)
    assert [(r.payload, r.delivery_attempt) for r in queued] == [
        (b"m0", 2),
        (b"m2", 2),
        (b"m4", 1),
        (b"m3", 1),
    ]
    assert [r.message_id for r in queued[:2]] == [written[0].message_id, written[2].message_id]
    assert (dying.redelivered, dying.unacked) == (2, 0)


async def test_redeliveries_with_no_upstream_serving_wait_first_in_line() -> None:
    registry = Registry(Config())
    dying = registry.add_upstream(UpstreamConfig(host="a", port=1, acks=True))
    plain = registry.add_upstream(UpstreamConfig(host="b", port=1))
    registry.set_upstream_state(dying, SERVING)
    await registry.dispatch(requests(2))
    dying.outbox.take_nowait()
    await registry.dispatch(requests(1, start=2))  # queued, not written
    registry.set_upstream_state(dying, UNHEALTHY)
    registry.set_upstream_state(plain, SERVING)
    queued = plain.outbox.take_nowait()
    assert [r.payload for r in queued] == [b"m0", b"m1", b"m2"]
    # an upstream without acks gets them as the original contract has them
    assert [ack_fields(r) for r in queued] == [(0, "", 0)] * 3


async def test_max_unacked_stops_the_writing_and_then_pushes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUpstream(acks="reply", hold_acks=True)
    registry = Registry(Config(upstream_queue_size=4))
    done: list[int] = []
    with trio.fail_after(CAP):  # the autojump clock makes a hang fail fast
        async with trio.open_nursery() as nursery:
            upstream = start(nursery, registry, fake, acks=True, max_unacked=5)
            await registry.wait_upstream_state(upstream.address, SERVING)
            await registry.dispatch(requests(5))
            await fake.wait_until(lambda: len(fake.received) == 5)
            await registry.dispatch(requests(4, start=5))  # the outbox is full now

            async def reader() -> None:
                await registry.dispatch(requests(1, start=9))
                done.append(1)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert (len(fake.received), upstream.unacked, len(upstream.outbox)) == (5, 5, 4)
            assert done == []  # backpressure: the reader waits
            fake.release_acks.set()
            with trio.fail_after(5):
                await fake.wait_until(lambda: len(fake.received) == 10)
                await registry.flush_upstreams()
            assert done == [1]
            nursery.cancel_scope.cancel()
    assert [r.payload for r in fake.received] == [b"m%d" % i for i in range(10)]


async def test_ack_timeout_fails_the_upstream_and_max_deliveries_drops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUpstream()  # never acknowledges
    registry = Registry(Config())
    with trio.fail_after(CAP):  # the autojump clock makes a hang fail fast
        async with trio.open_nursery() as nursery:
            upstream = start(nursery, registry, fake, acks=True, ack_timeout=3, max_deliveries=3)
            await registry.wait_upstream_state(upstream.address, SERVING)
            written = trio.current_time()
            await registry.dispatch(requests(2))
            await registry.wait_upstream_state(upstream.address, UNHEALTHY)
            assert 3 <= trio.current_time() - written <= 3.75
            assert upstream.last_error is not None
            assert "ack_timeout (3s)" in upstream.last_error
            await fake.wait_until(lambda: len(fake.received) == 6)  # delivered 3 times
            await registry.wait_upstream_state(upstream.address, SERVING)
            await registry.wait_upstream_state(upstream.address, UNHEALTHY)
            stats = registry.statistics()
            scraped = generate_latest(metrics_registry(registry)).decode()
            # nothing more comes: they were dropped, not redelivered a fourth time
            await registry.wait_upstream_state(upstream.address, SERVING)
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    assert [(r.payload, r.delivery_attempt) for r in fake.received] == [
        (b"m0", 1),
        (b"m1", 1),
        (b"m0", 2),
        (b"m1", 2),
        (b"m0", 3),
        (b"m1", 3),
    ]
    assert len({r.message_id for r in fake.received}) == 2
    assert (stats.redelivered, stats.undeliverable, upstream.undeliverable) == (4, 2, 2)
    assert 'pmlb_upstream_undeliverable_total{upstream="upstream.test:1"} 2.0' in scraped
    assert upstream.state is UpstreamState.REMOVED or upstream.unacked == 0


async def test_unknown_and_repeated_acks_are_counted_and_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUpstream(acks="alone", extra_acks=[1, 999])
    registry = Registry(Config())
    with trio.fail_after(CAP):  # the autojump clock makes a hang fail fast
        async with trio.open_nursery() as nursery:
            upstream = start(nursery, registry, fake, acks=True)
            await registry.wait_upstream_state(upstream.address, SERVING)
            await registry.dispatch(requests(3))
            await registry.flush_upstreams()
            await registry.dispatch(requests(2, start=3))
            await registry.flush_upstreams()
            stats = registry.statistics()
            assert upstream.state is SERVING
            assert upstream.failures == 0
            nursery.cancel_scope.cancel()
    # first batch: 1, 2, 3 then 1 again and 999; second: 4, 5, 1, 999
    assert (stats.acks_received, stats.acks_unknown, stats.invalid_target) == (5, 4, 0)


async def test_flushing_for_a_drain_waits_for_the_acks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUpstream(acks="reply", hold_acks=True)
    registry = Registry(Config())
    flushed: list[float] = []
    with trio.fail_after(CAP):  # the autojump clock makes a hang fail fast
        async with trio.open_nursery() as nursery:
            upstream = start(nursery, registry, fake, acks=True)
            await registry.wait_upstream_state(upstream.address, SERVING)
            await registry.dispatch(requests(3))
            await fake.wait_until(lambda: len(fake.received) == 3)

            async def flush() -> None:
                await registry.flush_upstreams()
                flushed.append(trio.current_time())

            nursery.start_soon(flush)
            await trio.sleep(2)
            assert flushed == []  # written, not acknowledged
            fake.release_acks.set()
            await fake.wait_until(lambda: upstream.unacked == 0)
            await trio.testing.wait_all_tasks_blocked()
            assert len(flushed) == 1
            nursery.cancel_scope.cancel()


async def test_draining_an_upstream_waits_for_its_acks_then_fails_over_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeUpstream(acks="reply", hold_acks=True)
    registry = Registry(Config())
    with trio.fail_after(CAP):  # the autojump clock makes a hang fail fast
        async with trio.open_nursery() as nursery:
            upstream = start(nursery, registry, fake, acks=True)
            await registry.wait_upstream_state(upstream.address, SERVING)
            await registry.dispatch(requests(3))
            await fake.wait_until(lambda: len(fake.received) == 3)
            left = await registry.drain_upstream(upstream.address, grace=5)
            assert left == 3  # never acknowledged: failed over (held, no other upstream)
            assert len(registry.dispatcher._orphans) == 3
            assert all(r.delivery_attempt == 1 for r in registry.dispatcher._orphans)
            nursery.cancel_scope.cancel()


# -- the grpclib transport, over TCP ----------------------------------------


@contextlib.asynccontextmanager
async def tcp_serving(fake: FakeUpstream) -> AsyncIterator[int]:
    async def handler(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await fake.serve(stream)

    with trio.fail_after(CAP):  # the autojump clock makes a hang fail fast
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            yield listeners[0].socket.getsockname()[1]
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("name", ["grpclib", "native"])
async def test_both_transports_redeliver_after_a_reset(name: str) -> None:
    fake = FakeUpstream(acks="reply")
    registry = Registry(Config())
    async with trio_asyncio.open_loop() as loop, tcp_serving(fake) as port:
        make: Callable[[UpstreamConfig], Transport]
        if name == "native":
            make = lambda config: H2Transport(config.host, config.port)  # noqa: E731
        else:
            make = lambda config: GrpclibTransport(config.host, config.port, loop)  # noqa: E731
        config = UpstreamConfig(host="127.0.0.1", port=port, acks=True, transport=name)
        upstream = registry.add_upstream(config)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervise, upstream, registry, make)
            with trio.fail_after(TIMEOUT):
                await registry.wait_upstream_state(upstream.address, SERVING)
                await registry.dispatch(requests(3))
                await registry.flush_upstreams()
                fake.reset_after = 4
                await registry.dispatch(requests(2, start=3))
                await registry.wait_upstream_state(upstream.address, UNHEALTHY)
                fake.reset_after = None
                await registry.wait_upstream_state(upstream.address, SERVING)
                await registry.flush_upstreams()
            stats = registry.statistics()
            nursery.cancel_scope.cancel()
    again = fake.received[5:]
    assert [(r.payload, r.delivery_attempt) for r in again] == [(b"m3", 2), (b"m4", 2)]
    assert [r.message_id for r in again] == [r.message_id for r in fake.received[3:5]]
    assert (stats.unacked, stats.acks_received, stats.redelivered) == (0, 5, 2)


async def test_lifecycle_events_are_acknowledged_and_redelivered_too() -> None:
    registry = Registry(Config())
    dying = registry.add_upstream(UpstreamConfig(host="a", port=1, acks=True, events=True))
    plain = registry.add_upstream(UpstreamConfig(host="b", port=1, events=True))
    registry.set_upstream_state(dying, SERVING)
    client = Client(
        "c", listener="l", remote="x", transport="tcp", queue_limit=1, scope=trio.CancelScope()
    )
    registry.add_client(client)
    [event] = dying.outbox.take_nowait()
    assert event.event == pb.InputStreamRequest.EVENT_CONNECTED
    assert (event.seq, event.delivery_attempt) == (1, 1)
    assert event.message_id
    registry.set_upstream_state(dying, UNHEALTHY)
    registry.set_upstream_state(plain, SERVING)
    [again] = plain.outbox.take_nowait()
    assert again.event == pb.InputStreamRequest.EVENT_CONNECTED
    assert ack_fields(again) == (0, "", 0)  # to an upstream without acks: as ever
