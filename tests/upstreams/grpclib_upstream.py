"""A scripted test upstream on grpclib, using the betterproto classes of pmlb.contract.

Run: ``python tests/upstreams/grpclib_upstream.py --name A [--host H] [--port P] [--not-ready]``

It prints ``LISTENING <port>`` once bound. ``ready`` answers false while started with
``--not-ready``, until SIGUSR1. SIGTERM or SIGINT stops it with exit code 0.
What it answers to client messages is in :mod:`tests.upstreams.script`.
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
from tests.upstreams.script import Reply, event_line, respond, rfc3339_now

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
    def __init__(self, name: str, *, ready: bool) -> None:
        self.name = name
        self.is_ready = ready

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
            for reply in respond(self.name, request.client_uuid, request.payload, request.time):
                yield to_message(reply)

    async def ready(self, betterproto_lib_google_protobuf_empty: pb_lib.Empty) -> ReadyResult:
        return ReadyResult(time=rfc3339_now(), ready=self.is_ready)

    async def live(
        self, betterproto_lib_google_protobuf_empty_iterator: AsyncIterator[pb_lib.Empty]
    ) -> AsyncIterator[LiveResult]:
        async for _ping in betterproto_lib_google_protobuf_empty_iterator:
            yield LiveResult(time=rfc3339_now(), live=True)


def bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    service = ScriptedUpstream(args.name, ready=not args.not_ready)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, setattr, service, "is_ready", True)

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
