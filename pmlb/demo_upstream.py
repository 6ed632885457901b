"""The echo upstream that ``pmlb demo`` runs: answers every message to its sender.

A separate process on grpclib (asyncio), with the protobuf classes rather
than betterproto so that the demo measures pmlb, not the upstream. For an
example to copy when writing an upstream, see ``examples/`` instead.

Run: ``python -m pmlb.demo_upstream [--host 127.0.0.1] [--port 45888]``; it
prints ``LISTENING <port>`` once bound (port 0 picks a free one). With
``--exit-with-stdin`` it also stops when its standard input closes, which is
how it follows ``pmlb demo`` however that process ends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from typing import Any

import grpclib.const
from grpclib.server import Server, Stream

from pmlb._proto import upstream_pb2 as pb
from pmlb._time import rfc3339_now

_STREAM = grpclib.const.Cardinality.STREAM_STREAM
_UNARY = grpclib.const.Cardinality.UNARY_UNARY
_SERVICE = "/upstream.grpc.service.UpstreamPeerService/"


class EchoService:
    async def stream(self, stream: Stream[pb.InputStreamRequest, pb.OutputStreamRequest]) -> None:
        async for request in stream:
            await stream.send_message(
                pb.OutputStreamRequest(
                    time=rfc3339_now(), client_uuid=request.client_uuid, payload=request.payload
                )
            )

    async def ready(self, stream: Stream[Any, pb.ReadyResult]) -> None:
        await stream.recv_message()
        await stream.send_message(pb.ReadyResult(time=rfc3339_now(), ready=True))

    async def live(self, stream: Stream[Any, pb.LiveResult]) -> None:
        async for _ping in stream:
            await stream.send_message(pb.LiveResult(time=rfc3339_now(), live=True))

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        from google.protobuf import empty_pb2

        return {
            _SERVICE + "bidirectionalStreaming": grpclib.const.Handler(
                self.stream, _STREAM, pb.InputStreamRequest, pb.OutputStreamRequest
            ),
            _SERVICE + "ready": grpclib.const.Handler(
                self.ready, _UNARY, empty_pb2.Empty, pb.ReadyResult
            ),
            _SERVICE + "live": grpclib.const.Handler(
                self.live, _STREAM, empty_pb2.Empty, pb.LiveResult
            ),
        }


async def run(host: str, port: int, exit_with_stdin: bool) -> None:
    # Bind the socket ourselves to learn the real port when asked for port 0.
    sock = socket.create_server((host, port), reuse_port=False)
    server = Server([EchoService()])
    await server.start(sock=sock)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if exit_with_stdin:
        # The parent holds the other end of this pipe; it closes when the
        # parent exits, even by SIGKILL.
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 1024):
                stop.set()

        loop.add_reader(stdin, on_stdin)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pmlb.demo_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=45888)
    parser.add_argument("--exit-with-stdin", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args.host, args.port, args.exit_with_stdin))


if __name__ == "__main__":
    main()
