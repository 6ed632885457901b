"""Both transports against real upstream processes (grpclib, grpcio and grpc-js).

The differential test sends the same scripted traffic through the grpclib
transport and the native one and requires the same replies, in the same order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_asyncio

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.request import Request
from pmlb.codecs.request import message as make_request
from pmlb.upstream.grpclib_transport import GrpclibTransport
from pmlb.upstream.h2_transport import H2Transport
from pmlb.upstream.outbox import Outbox
from pmlb.upstream.transport import Transport, UpstreamError
from tests.helpers import TIMEOUT, Processes, needs_node

pytestmark = pytest.mark.e2e

KINDS = ["grpclib", "grpcio", pytest.param("grpcjs", marks=needs_node)]
TRANSPORTS = ["grpclib", "native"]


@asynccontextmanager
async def open_transport(name: str, port: int) -> AsyncIterator[Transport]:
    transport: Transport
    if name == "native":
        transport = H2Transport("127.0.0.1", port)
        try:
            yield transport
        finally:
            await transport.aclose()
        return
    async with trio_asyncio.open_loop() as loop:
        transport = GrpclibTransport("127.0.0.1", port, loop)
        try:
            yield transport
        finally:
            await transport.aclose()


def script() -> list[Request]:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    payloads = [
        (a, b"hello"),
        (b, "ünïcode ✓".encode()),
        (a, b"whoami"),
        (b, b"to " + a.encode() + b" private"),
        (a, b"bcast all to everyone"),
        (b, b"bcast inactive quiet ones"),
        (a, b"silent"),
        (b, b""),
        (a, bytes(range(256))),
        *[(a if i % 2 else b, b"n%d" % i) for i in range(300)],
    ]
    return [
        make_request(time="2026-01-01T00:00:00Z", client_uuid=c, payload=p) for c, p in payloads
    ]


def summary(replies: list[pb.OutputStreamRequest]) -> list[tuple[str, object, bytes]]:
    out: list[tuple[str, object, bytes]] = []
    for reply in replies:
        target = reply.WhichOneof("target")
        assert target is not None
        out.append((target, getattr(reply, target), reply.payload))
    return out


async def round_trip(
    transport: Transport, requests: list[Request], expected: int
) -> list[pb.OutputStreamRequest]:
    outbox: Outbox[Request] = Outbox(10_000)
    outbox.open()
    got: list[pb.OutputStreamRequest] = []
    done = trio.Event()

    def deliver(replies: list[pb.OutputStreamRequest]) -> None:
        got.extend(replies)
        if len(got) >= expected:
            done.set()

    with trio.fail_after(TIMEOUT):
        assert await transport.check_ready()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.run_stream, outbox, deliver)
            # in two batches, the second while the stream runs
            outbox.put_nowait(requests[:5])
            outbox.put_nowait(requests[5:])
            await done.wait()
            nursery.cancel_scope.cancel()
    return got


@pytest.mark.parametrize("kind", KINDS)
async def test_both_transports_give_the_same_replies(procs: Processes, kind: str) -> None:
    _, port = await procs.upstream("A", kind=kind)
    requests = script()
    expected = len(requests) - 1  # "silent" has no reply
    results: dict[str, list[tuple[str, object, bytes]]] = {}
    for name in TRANSPORTS:
        async with open_transport(name, port) as transport:
            results[name] = summary(await round_trip(transport, requests, expected))
    assert results["native"] == results["grpclib"]
    assert len(results["native"]) == expected
    assert results["native"][0] == ("client_uuid", requests[0].client_uuid, b"A:hello")
    assert ("broadcast", pb.OutputStreamRequest.BROADCAST_NOT_ACTIVE, b"quiet ones") in (
        results["native"]
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_native_readiness_and_liveness_with_keepalive_pings(
    procs: Processes, kind: str
) -> None:
    _, not_ready_port = await procs.upstream("N", kind=kind, ready=False)
    _, port = await procs.upstream("A", kind=kind)
    with trio.fail_after(TIMEOUT):
        async with open_transport("native", not_ready_port) as transport:
            assert await transport.check_ready() is False
            assert await transport.check_ready() is False
        async with open_transport("native", port) as transport:
            assert await transport.check_ready() is True
            answers = 0
            done = trio.Event()

            trips: list[float | None] = []

            def alive(round_trip: float | None) -> None:
                nonlocal answers
                answers += 1
                trips.append(round_trip)
                if answers == 20:
                    done.set()

            # 20 rounds, each with an HTTP/2 PING: a server's ping policy
            # would answer too many with GOAWAY and fail this.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.run_liveness, 0.01, 5.0, alive)
                await done.wait()
                nursery.cancel_scope.cancel()
            # each answer says how long its ping took
            assert all(t is not None and 0 < t < 5.0 for t in trips)


@pytest.mark.parametrize("kind", KINDS)
async def test_native_stream_fails_when_the_upstream_dies(procs: Processes, kind: str) -> None:
    up, port = await procs.upstream("A", kind=kind)
    async with open_transport("native", port) as transport:
        outbox: Outbox[Request] = Outbox(100)
        outbox.open()
        outbox.put_nowait(script()[:1])
        got = trio.Event()

        async def kill_after_first_reply() -> None:
            await got.wait()
            up.kill()

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_after_first_reply)
                with pytest.raises(UpstreamError, match=r"connection|GOAWAY"):
                    await transport.run_stream(outbox, lambda _: got.set())
