"""The native transport against an in-process h2 upstream, over memory streams.

The fake upstream (tests/fake_h2_upstream.py) misbehaves on demand: resets,
GOAWAY, a held-back flow-control window, oversized or malformed replies,
silent liveness. The autojump clock makes the timeouts instant.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.grpc import encode_messages
from pmlb.codecs.request import Request
from pmlb.codecs.request import message as make_request
from pmlb.upstream.h2_transport import H2Transport
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.transport import UpstreamError
from tests.fake_h2_upstream import FakeUpstream


def connect(nursery: trio.Nursery, upstream: FakeUpstream, **kwargs: int) -> H2Transport:
    async def open_stream() -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(upstream.serve, theirs)
        return ours

    return H2Transport("upstream.test", 50051, open_stream=open_stream, **kwargs)


def requests(n: int, start: int = 0) -> list[Request]:
    return [
        make_request(time="t", client_uuid=f"c{i % 3}", payload=b"m%d" % i)
        for i in range(start, start + n)
    ]


class Collector:
    def __init__(self) -> None:
        self.batches: list[list[pb.OutputStreamRequest]] = []
        self.changed = trio.lowlevel.ParkingLot()

    def __call__(self, replies: list[pb.OutputStreamRequest]) -> None:
        self.batches.append(replies)
        self.changed.unpark_all()

    @property
    def replies(self) -> list[pb.OutputStreamRequest]:
        return [reply for batch in self.batches for reply in batch]

    async def wait_for(self, n: int) -> None:
        while len(self.replies) < n:
            await self.changed.park()


def start_stream(
    nursery: trio.Nursery,
    transport: H2Transport,
    outbox: Outbox[Request],
    deliver: Collector,
) -> trio.CancelScope:
    """Run the stream in the background; cancel the scope returned to stop it."""
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await transport.run_stream(outbox, deliver)

    nursery.start_soon(run)
    return scope


async def stop(scope: trio.CancelScope, transport: H2Transport) -> None:
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    await transport.aclose()


async def run_stream_until_error(
    transport: H2Transport, outbox: Outbox[Request], deliver: Collector
) -> str:
    with trio.fail_after(10), pytest.raises(UpstreamError) as info:
        await transport.run_stream(outbox, deliver)
    return str(info.value)


async def test_ready_true_false_and_status_error(nursery: trio.Nursery) -> None:
    assert await connect(nursery, FakeUpstream(ready=True)).check_ready() is True
    assert await connect(nursery, FakeUpstream(ready=False)).check_ready() is False
    down = connect(nursery, FakeUpstream(ready_status=(14, "down%20for%20now")))
    with pytest.raises(UpstreamError, match=r"^gRPC status UNAVAILABLE: down for now$"):
        await down.check_ready()


async def test_ready_can_be_asked_again_on_the_same_connection(nursery: trio.Nursery) -> None:
    upstream = FakeUpstream()
    transport = connect(nursery, upstream)
    for _ in range(3):
        assert await transport.check_ready()
    assert upstream.connections == 1
    await transport.aclose()
    await transport.aclose()


async def test_a_batch_is_one_data_frame_and_replies_come_back_in_order(
    nursery: trio.Nursery,
) -> None:
    upstream = FakeUpstream()
    transport = connect(nursery, upstream)
    outbox: Outbox[Request] = Outbox(1000)
    outbox.open()
    outbox.put_nowait(requests(100))
    deliver = Collector()
    scope = start_stream(nursery, transport, outbox, deliver)
    with trio.fail_after(10):
        await deliver.wait_for(100)
        # a second batch, queued while the stream is running
        outbox.put_nowait(requests(50, start=100))
        await deliver.wait_for(150)
    assert [r.payload for r in deliver.replies] == [b"echo:m%d" % i for i in range(150)]
    assert [r.client_uuid for r in deliver.replies[:3]] == ["c0", "c1", "c2"]
    assert upstream.data_frames == 2
    # replies decoded from one read are delivered as one list
    assert len(deliver.batches) == 2
    assert len(outbox) == 0
    await stop(scope, transport)


async def test_large_batches_are_cut_into_frames_and_flow_control_is_honoured(
    nursery: trio.Nursery,
) -> None:
    # the default 64 KiB windows are smaller than what is sent; the first
    # replies (24 KB frames) come in the same read as the ACK of our settings
    upstream = FakeUpstream(reply_padding=1000)
    transport = connect(nursery, upstream)
    outbox: Outbox[Request] = Outbox(10_000)
    outbox.open()
    big = [make_request(client_uuid="c", payload=b"%d:" % i + b"y" * 2000) for i in range(200)]
    outbox.put_nowait(big)
    deliver = Collector()
    scope = start_stream(nursery, transport, outbox, deliver)
    with trio.fail_after(10):
        await deliver.wait_for(200)
    assert [r.payload.split(b":")[1] for r in deliver.replies] == [b"%d" % i for i in range(200)]
    assert upstream.data_frames > 1
    await stop(scope, transport)


def big_requests(n: int) -> list[Request]:
    return [make_request(client_uuid="c", payload=b"%04d" % i * 250) for i in range(n)]


async def test_a_stalled_window_blocks_the_writer_and_unsent_messages_are_requeued(
    nursery: trio.Nursery,
) -> None:
    # The fake holds its window: 65535 bytes may be written, no more.
    upstream = FakeUpstream(hold_window=True)
    transport = connect(nursery, upstream)
    outbox: Outbox[Request] = Outbox(1000)
    outbox.open()
    batch = big_requests(100)
    size = 5 + len(batch[0].encode())
    outbox.put_nowait(batch)
    scope = start_stream(nursery, transport, outbox, Collector())
    await trio.testing.wait_all_tasks_blocked()
    assert len(outbox) == 0
    # Cancelled while waiting for window: whole messages and the start of one
    # were written, the rest goes back to the outbox, in order.
    await stop(scope, transport)
    started = -(-65535 // size)
    assert outbox.take_nowait() == batch[started:]
    assert upstream.received == batch[: 65535 // size]


async def test_the_writer_resumes_when_the_window_opens(nursery: trio.Nursery) -> None:
    upstream = FakeUpstream(hold_window=True)
    transport = connect(nursery, upstream)
    outbox: Outbox[Request] = Outbox(1000)
    outbox.open()
    batch = big_requests(100)
    outbox.put_nowait(batch)
    deliver = Collector()
    scope = start_stream(nursery, transport, outbox, deliver)
    await trio.testing.wait_all_tasks_blocked()
    assert len(deliver.replies) < 100
    upstream.open_window.set()
    with trio.fail_after(10):
        await deliver.wait_for(100)
    assert [r.payload for r in deliver.replies] == [b"echo:" + m.payload for m in batch]
    await stop(scope, transport)


async def test_rst_stream_fails_the_stream(nursery: trio.Nursery) -> None:
    transport = connect(nursery, FakeUpstream(reset_after=1))
    outbox: Outbox[Request] = Outbox(10)
    outbox.open()
    outbox.put_nowait(requests(3))
    error = await run_stream_until_error(transport, outbox, Collector())
    assert error == "the upstream reset the stream (INTERNAL_ERROR)"


async def test_goaway_fails_the_stream_and_the_next_call_reconnects(
    nursery: trio.Nursery,
) -> None:
    upstream = FakeUpstream(goaway_after=1)
    transport = connect(nursery, upstream)
    outbox: Outbox[Request] = Outbox(10)
    outbox.open()
    outbox.put_nowait(requests(1))
    error = await run_stream_until_error(transport, outbox, Collector())
    assert error == "the upstream sent GOAWAY (NO_ERROR): bye"
    assert await transport.check_ready()
    assert upstream.connections == 2


async def test_grpc_status_in_trailers_ends_the_stream_with_it(nursery: trio.Nursery) -> None:
    transport = connect(nursery, FakeUpstream(end_after=(2, 8, "too much")))
    outbox: Outbox[Request] = Outbox(10)
    outbox.open()
    outbox.put_nowait(requests(2))
    deliver = Collector()
    error = await run_stream_until_error(transport, outbox, deliver)
    assert error == "gRPC status RESOURCE_EXHAUSTED: too much"
    # replies sent before the trailers are delivered first
    assert len(deliver.replies) == 2


async def test_status_ok_still_ends_a_bidi_stream_as_a_failure(nursery: trio.Nursery) -> None:
    transport = connect(nursery, FakeUpstream(end_after=(1, 0, "")))
    outbox: Outbox[Request] = Outbox(10)
    outbox.open()
    outbox.put_nowait(requests(1))
    assert await run_stream_until_error(transport, outbox, Collector()) == (
        "the upstream ended the stream"
    )


async def test_status_ok_in_the_middle_of_a_reply_fails_the_stream_saying_so(
    nursery: trio.Nursery,
) -> None:
    # After the echo, the header of a 16-byte message and 3 of its bytes; then status OK.
    upstream = FakeUpstream(end_after=(1, 0, ""), trailing=b"\x00\x00\x00\x00\x10abc")
    transport = connect(nursery, upstream)
    outbox: Outbox[pb.InputStreamRequest] = Outbox(10)
    outbox.open()
    outbox.put_nowait(requests(1))
    deliver = Collector()
    error = await run_stream_until_error(transport, outbox, deliver)
    assert error == (
        "the upstream ended the stream (status OK) in the middle of a message"
        " (8 bytes of it received, its header included)"
    )
    assert len(deliver.replies) == 1  # the whole reply before it is delivered


async def test_a_reply_over_the_maximum_size_fails_the_stream(nursery: trio.Nursery) -> None:
    transport = connect(nursery, FakeUpstream(reply_padding=200), max_message_size=100)
    outbox: Outbox[Request] = Outbox(10)
    outbox.open()
    outbox.put_nowait(requests(1))
    error = await run_stream_until_error(transport, outbox, Collector())
    assert "exceeds the maximum of 100" in error


async def test_a_malformed_reply_fails_the_stream(nursery: trio.Nursery) -> None:
    transport = connect(nursery, FakeUpstream(malformed=True))
    outbox: Outbox[Request] = Outbox(10)
    outbox.open()
    outbox.put_nowait(requests(1))
    error = await run_stream_until_error(transport, outbox, Collector())
    assert error.startswith("malformed message from the upstream")


@pytest.mark.parametrize(
    "trailing",
    [encode_messages([b"\x0a\x05ab"]), b"\x00\x7f\xff\xff\xff", b"\x01\x00\x00\x00\x00"],
    ids=["malformed", "oversized", "compressed"],
)
async def test_replies_before_a_bad_one_in_the_same_read_are_delivered(
    nursery: trio.Nursery, trailing: bytes
) -> None:
    transport = connect(nursery, FakeUpstream(trailing=trailing))
    outbox: Outbox[Request] = Outbox(10)
    outbox.open()
    outbox.put_nowait(requests(3))
    deliver = Collector()
    error = await run_stream_until_error(transport, outbox, deliver)
    assert [r.payload for r in deliver.replies] == [b"echo:m0", b"echo:m1", b"echo:m2"]
    assert error.startswith(("malformed message", "bad gRPC message"))


async def test_liveness_answers_and_keepalive_pings(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    upstream = FakeUpstream()
    transport = connect(nursery, upstream)
    answers = 0
    done = trio.Event()

    def alive(_round_trip: float | None) -> None:
        nonlocal answers
        answers += 1
        if answers == 3:
            done.set()

    with trio.fail_after(100):
        async with trio.open_nursery() as inner:
            inner.start_soon(transport.run_liveness, 5.0, 1.0, alive)
            await done.wait()
            inner.cancel_scope.cancel()
    assert upstream.pings == 3


async def test_liveness_without_answer_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    transport = connect(nursery, FakeUpstream(live=None))
    with pytest.raises(UpstreamError, match=r"^no liveness answer within alive_timeout \(2s\)$"):
        await transport.run_liveness(1.0, 2.0, lambda _: None)


async def test_liveness_false_is_a_failure(nursery: trio.Nursery) -> None:
    transport = connect(nursery, FakeUpstream(live=False))
    with pytest.raises(UpstreamError, match=r"^the upstream answered live = false$"):
        await transport.run_liveness(1.0, 2.0, lambda _: None)


async def test_connection_refused_is_an_upstream_error() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    # The OS's reason, not trio's "all attempts to connect ... failed (1 sub-exception)".
    with pytest.raises(UpstreamError, match=r"^cannot connect: connection refused$"):
        await H2Transport("127.0.0.1", port).check_ready()


async def test_the_upstream_closing_the_connection_fails_every_stream(
    nursery: trio.Nursery,
) -> None:
    async def open_stream() -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        await theirs.aclose()
        return ours

    transport = H2Transport("x", 1, open_stream=open_stream)
    with pytest.raises(UpstreamError, match=r"connection lost|closed the connection"):
        await transport.check_ready()
