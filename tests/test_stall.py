"""An upstream that holds its flow-control window at 0 (issue 17, finding 3).

Real supervisors, the native transport and the registry's dispatch, against
the scripted h2 upstream over memory streams, on the autojump clock: the
stalled upstream stops getting traffic, is reported, and past its
``stall_timeout`` fails, its queued messages going to the other one.
"""

from __future__ import annotations

import trio
import trio.testing

from pmlb.codecs.request import Request
from pmlb.codecs.request import message as make_request
from pmlb.config import Config, UpstreamConfig
from pmlb.registry import Registry
from pmlb.upstream.h2_transport import H2Transport
from pmlb.upstream.state import Upstream, UpstreamState
from pmlb.upstream.supervisor import supervise
from tests.fake_h2_upstream import FakeUpstream


def batch(index: int, size: int = 20) -> list[Request]:
    return [
        make_request(client_uuid="c", payload=b"%06d" % (index * size + i) + b"x" * 250)
        for i in range(size)
    ]


async def start(
    nursery: trio.Nursery, fakes: list[FakeUpstream], **config: float
) -> tuple[Registry, list[Upstream]]:
    registry = Registry(Config(upstream_queue_size=50))
    by_port = {1000 + i: fake for i, fake in enumerate(fakes)}

    def factory(upstream: UpstreamConfig) -> H2Transport:
        fake = by_port[upstream.port]

        async def open_stream() -> trio.abc.Stream:
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(fake.serve, theirs)
            return ours

        return H2Transport(upstream.host, upstream.port, open_stream=open_stream)

    ups = [
        registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=port, **config))
        for port in by_port
    ]
    for up in ups:
        nursery.start_soon(supervise, up, registry, factory)
    for up in ups:
        await registry.wait_upstream_state(up.address, UpstreamState.SERVING)
    return registry, ups


def received(fake: FakeUpstream) -> set[bytes]:
    return {r.payload for r in fake.received}


async def test_a_stalled_upstream_gets_no_new_traffic_then_fails_over(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    healthy, stuck = FakeUpstream(), FakeUpstream(hold_window=True)
    registry, (a, b) = await start(nursery, [healthy, stuck], stall_timeout=10.0)
    sent = [m for i in range(100) for m in batch(i)]
    started = trio.current_time()
    with trio.fail_after(60):
        for i in range(100):
            await registry.dispatch(sent[i * 20 : (i + 1) * 20])
    # All of it was taken long before the stalled upstream counts as failed:
    # after a second without progress its share went to the other one.
    assert trio.current_time() - started < 2.0
    assert b.stalled
    assert b.state is UpstreamState.SERVING
    assert b.stalls == 1
    assert registry.statistics().upstreams_serving == 2
    assert len(received(healthy)) > len(sent) // 2

    with trio.fail_after(60):
        await registry.wait_upstream_state(b.address, UpstreamState.UNHEALTHY)
    assert trio.current_time() - started >= 10.0
    assert b.last_error == (
        "stream: stalled: nothing written for 10s while messages waited (stall_timeout)"
    )
    assert not b.stalled
    # What it had queued failed over: every message reached an upstream but
    # the one being written when it failed (it may have reached it).
    everything = {m.payload for m in sent}
    with trio.fail_after(60):
        # failed over when only the healthy one served: it gets the rest
        await healthy.wait_until(lambda: len(everything - received(healthy) - received(stuck)) <= 1)
    assert a.state is UpstreamState.SERVING


async def test_a_stall_that_ends_in_time_changes_nothing_else(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    healthy, slow = FakeUpstream(), FakeUpstream(hold_window=True)
    registry, (_, b) = await start(nursery, [healthy, slow], stall_timeout=10.0)
    with trio.fail_after(60):
        for i in range(60):
            await registry.dispatch(batch(i))
        assert b.stalled
        await trio.sleep(3.0)
        held = len(slow.received)
        slow.open_window.set()
        await slow.wait_until(lambda: len(slow.received) > held)
        await trio.testing.wait_all_tasks_blocked()
    assert not b.stalled
    assert b.state is UpstreamState.SERVING
    assert b.failures == 0
    # it takes its share again
    before = len(slow.received)
    with trio.fail_after(60):
        for i in range(60, 70):
            await registry.dispatch(batch(i))
        await slow.wait_until(lambda: len(slow.received) > before)


async def test_a_lone_stalled_upstream_is_reported_but_not_failed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Failing it would send its messages nowhere and lose those it was written.
    stuck = FakeUpstream(hold_window=True)
    registry, (b,) = await start(nursery, [stuck], stall_timeout=5.0)

    async def reader() -> None:
        for i in range(60):
            await registry.dispatch(batch(i))

    nursery.start_soon(reader)  # held back once the window and the queue are full
    with trio.move_on_after(60):
        await registry.wait_upstream_state(b.address, UpstreamState.UNHEALTHY)
    assert len(b.outbox) >= 50
    assert b.state is UpstreamState.SERVING
    assert b.stalled
    assert b.failures == 0
