"""A scripted test upstream on grpclib, using the betterproto classes of pmlb.contract.

Run: ``python tests/upstreams/grpclib_upstream.py --name A [--host H] [--port P] [--not-ready]``

It prints ``LISTENING <port>`` once bound. ``ready`` answers false while started with
``--not-ready``, until SIGUSR1. SIGUSR2 makes it answer ``live`` and ``ready`` false
from then on (an upstream going bad). SIGTERM or SIGINT stops it with exit code 0.
What it answers to client messages is in :mod:`tests.upstreams.script`; the
payload ``reset <name>`` makes it reset the stream (HTTP/2 RST_STREAM).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import betterproto.lib.google.protobuf as pb_lib
import grpclib.const
import grpclib.server
from grpclib.server import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pmlb.contract import (
    Action,
    Broadcast,
    ClientList,
    DisconnectReason,
    InputStreamRequest,
    LiveResult,
    OutputStreamRequest,
    ReadyResult,
    UpstreamPeerServiceBase,
)
from tests.upstreams import script
from tests.upstreams.script import Recorder, Reply, event_line, respond, rfc3339_now

_BIDI = "/upstream.grpc.service.UpstreamPeerService/bidirectionalStreaming"


class _Reset(Exception):
    """Raised by the stream handler to reset the stream."""


BROADCASTS = {
    "all": Broadcast.BROADCAST_ALL,
    "active": Broadcast.BROADCAST_ACTIVE,
    "inactive": Broadcast.BROADCAST_NOT_ACTIVE,
}


def to_message(reply: Reply) -> OutputStreamRequest:
    if reply.disconnect or reply.multicast is not None:
        message = OutputStreamRequest(time=rfc3339_now(), payload=reply.payload)
        if reply.multicast is not None:
            message.multicast = ClientList(client_uuids=list(reply.multicast))
        else:
            message.client_uuid = reply.client_uuid or ""
        if reply.disconnect:
            message.action = Action.ACTION_DISCONNECT
        return message
    if reply.broadcast is not None:
        return OutputStreamRequest(
            time=rfc3339_now(), broadcast=BROADCASTS[reply.broadcast], payload=reply.payload
        )
    return OutputStreamRequest(
        time=rfc3339_now(), client_uuid=reply.client_uuid, payload=reply.payload
    )


class ScriptedUpstream(UpstreamPeerServiceBase):
    def __init__(
        self, name: str, *, ready: bool, recorder: Recorder, ready_hangs: bool = False
    ) -> None:
        self.name = name
        self.is_ready = ready
        self.is_live = True
        self.recorder = recorder
        self.ready_hangs = ready_hangs

    def go_bad(self) -> None:
        self.is_live = self.is_ready = False

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping = super().__mapping__()
        handler = mapping[_BIDI]
        mapping[_BIDI] = grpclib.const.Handler(
            self._bidi, handler.cardinality, handler.request_type, handler.reply_type
        )
        return mapping

    async def _bidi(
        self, stream: grpclib.server.Stream[InputStreamRequest, OutputStreamRequest]
    ) -> None:
        try:
            async for reply in self.bidirectional_streaming(stream.__aiter__()):
                await stream.send_message(reply)
        except _Reset:
            await stream.cancel()

    async def bidirectional_streaming(
        self, input_stream_request_iterator: AsyncIterator[InputStreamRequest]
    ) -> AsyncIterator[OutputStreamRequest]:
        async for request in input_stream_request_iterator:
            if request.event:
                line = event_line(
                    int(request.event),
                    request.client_uuid,
                    remote=request.remote_address,
                    listener=request.listener,
                    transport=request.transport,
                    reason=DisconnectReason(request.disconnect_reason).name or "",
                    detail=request.disconnect_detail,
                )
                print(line, flush=True)
                continue
            self.recorder.record(request.payload)
            if request.payload == b"reset " + self.name.encode():
                raise _Reset
            for reply in respond(self.name, request.client_uuid, request.payload, request.time):
                yield to_message(reply)

    async def ready(self, betterproto_lib_google_protobuf_empty: pb_lib.Empty) -> ReadyResult:
        if self.ready_hangs:
            await asyncio.Event().wait()
        return ReadyResult(time=rfc3339_now(), ready=self.is_ready)

    async def live(
        self, betterproto_lib_google_protobuf_empty_iterator: AsyncIterator[pb_lib.Empty]
    ) -> AsyncIterator[LiveResult]:
        async for _ping in betterproto_lib_google_protobuf_empty_iterator:
            yield LiveResult(time=rfc3339_now(), live=self.is_live)


def bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    service = ScriptedUpstream(
        args.name,
        ready=not args.not_ready,
        recorder=Recorder(args.record),
        ready_hangs=args.ready_hangs,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, setattr, service, "is_ready", True)
    loop.add_signal_handler(signal.SIGUSR2, service.go_bad)

    server = Server([service])
    sock = bind(args.host, args.port)
    await server.start(sock=sock, ssl=script.server_ssl_context(args))
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    await asyncio.wait_for(server.wait_closed(), timeout=5)


def main() -> None:
    asyncio.run(serve(script.parser(__doc__.splitlines()[0]).parse_args()))


if __name__ == "__main__":
    main()
