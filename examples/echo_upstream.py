"""An echo upstream: the smallest useful pmlb upstream, to copy when writing your own.

It sends every client message back to the client that sent it. Run it, then
pmlb in front of it, then talk to pmlb::

    python examples/echo_upstream.py                 # listens on 127.0.0.1:45888
    pmlb serve --upstream 127.0.0.1:45888
    nc 127.0.0.1 7999                                # what you type comes back

An upstream implements three RPCs of the contract (see protos/upstream.proto):
``bidirectional_streaming`` gets every client message with the client's UUID and
answers by UUID (or by broadcast); ``ready`` tells pmlb it may send traffic;
``live`` answers each liveness ping.

With ``--acks`` (and ``acks = true`` on the upstream in pmlb) it acknowledges
each message on its echo, and skips a redelivered message it has echoed
already, by ``message_id`` (see docs/contract.md, "Acknowledgements").
"""

from __future__ import annotations

import argparse
import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import betterproto.lib.google.protobuf as pb_lib
from grpclib.server import Server
from grpclib.utils import graceful_exit

from pmlb.contract import (
    InputStreamRequest,
    LiveResult,
    OutputStreamRequest,
    ReadyResult,
    UpstreamPeerServiceBase,
)


def now() -> str:
    """The current time as RFC 3339 UTC, as the contract's ``time`` fields want it."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class SeenIds:
    """The ``message_id`` of the last ``size`` messages handled: enough to drop a
    redelivery, which follows the failure that caused it within seconds."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, message_id: str) -> bool:
        """Whether ``message_id`` was handled already; remembers it if not."""
        if message_id in self._ids:
            return True
        self._ids[message_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return False


class EchoUpstream(UpstreamPeerServiceBase):
    def __init__(self, acks: bool = False) -> None:
        self.acks = acks
        # Shared by every stream: a redelivery may come on another connection.
        self.handled = SeenIds()

    async def bidirectional_streaming(
        self, input_stream_request_iterator: AsyncIterator[InputStreamRequest]
    ) -> AsyncIterator[OutputStreamRequest]:
        # One stream carries the messages of many clients: answer each as it arrives.
        async for request in input_stream_request_iterator:
            if not self.acks or not request.seq:  # the original contract
                yield OutputStreamRequest(
                    time=now(), client_uuid=request.client_uuid, payload=request.payload
                )
            elif request.event or self.handled.seen(request.message_id):
                # An event, or a redelivery of a message echoed already: only the ack.
                yield OutputStreamRequest(acks=[request.seq])
            else:
                # Handled: the ack rides on the echo.
                yield OutputStreamRequest(
                    time=now(),
                    client_uuid=request.client_uuid,
                    payload=request.payload,
                    acks=[request.seq],
                )

    async def ready(self, betterproto_lib_google_protobuf_empty: pb_lib.Empty) -> ReadyResult:
        return ReadyResult(time=now(), ready=True)

    async def live(
        self, betterproto_lib_google_protobuf_empty_iterator: AsyncIterator[pb_lib.Empty]
    ) -> AsyncIterator[LiveResult]:
        async for _ping in betterproto_lib_google_protobuf_empty_iterator:
            yield LiveResult(time=now(), live=True)


async def main(host: str, port: int, acks: bool = False) -> None:
    server = Server([EchoUpstream(acks)])
    with graceful_exit([server]):  # Ctrl-C or SIGTERM stops the server cleanly
        await server.start(host, port)
        print(f"echo upstream listening on {host}:{port}", flush=True)
        await server.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An echo upstream for pmlb.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=45888)
    parser.add_argument("--acks", action="store_true", help="acknowledge, dedupe by message_id")
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.acks))
