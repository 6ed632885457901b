"""A scripted test upstream on grpcio (``grpc.aio``), using the upb classes of pmlb._proto.

Run: ``python tests/upstreams/grpcio_upstream.py --name A [--host H] [--port P] [--not-ready]``

The same behaviour and command line as ``grpclib_upstream.py``, on a gRPC
implementation pmlb did not write: it prints ``LISTENING <port>`` once bound,
``ready`` answers false while started with ``--not-ready``, until SIGUSR1,
SIGUSR2 makes it answer ``live`` and ``ready`` false from then on, and
SIGTERM or SIGINT stops it with exit code 0. The payload ``reset <name>`` makes it
end the stream with status INTERNAL. With ``--acks`` it acknowledges each
request once it has handled it: on its last reply, or alone when there is none.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pmlb._proto import upstream_pb2 as pb2
from tests.upstreams import script
from tests.upstreams.script import Recorder, Reply, event_line, respond, rfc3339_now

SERVICE = "upstream.grpc.service.UpstreamPeerService"
BROADCASTS = {
    "all": pb2.OutputStreamRequest.BROADCAST_ALL,
    "active": pb2.OutputStreamRequest.BROADCAST_ACTIVE,
    "inactive": pb2.OutputStreamRequest.BROADCAST_NOT_ACTIVE,
}


def to_message(reply: Reply) -> pb2.OutputStreamRequest:
    if reply.disconnect or reply.multicast is not None:
        message = pb2.OutputStreamRequest(time=rfc3339_now(), payload=reply.payload)
        if reply.multicast is not None:
            message.multicast.client_uuids.extend(reply.multicast)
        else:
            message.client_uuid = reply.client_uuid or ""
        if reply.disconnect:
            message.action = pb2.OutputStreamRequest.ACTION_DISCONNECT
        return message
    if reply.broadcast is not None:
        return pb2.OutputStreamRequest(
            time=rfc3339_now(), broadcast=BROADCASTS[reply.broadcast], payload=reply.payload
        )
    return pb2.OutputStreamRequest(
        time=rfc3339_now(), client_uuid=reply.client_uuid, payload=reply.payload
    )


def _serialize_output(message: pb2.OutputStreamRequest | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


class ScriptedUpstream:
    def __init__(
        self,
        name: str,
        *,
        ready: bool,
        recorder: Recorder,
        malformed: bool = False,
        ready_hangs: bool = False,
        acks: bool = False,
    ) -> None:
        self.name = name
        self.is_ready = ready
        self.is_live = True
        self.recorder = recorder
        self.malformed = malformed
        self.ready_hangs = ready_hangs
        self.acks = acks

    def go_bad(self) -> None:
        self.is_live = self.is_ready = False

    async def bidirectional_streaming(
        self, requests: AsyncIterator[pb2.InputStreamRequest], context: Any
    ) -> AsyncIterator[pb2.OutputStreamRequest]:
        async for request in requests:
            if self.malformed:
                # field 1, length 5, but 2 bytes follow: not valid protobuf
                yield b"\x0a\x05ab"  # type: ignore[misc]
                continue
            if request.event:
                reason = pb2.InputStreamRequest.DisconnectReason.Name(request.disconnect_reason)
                line = event_line(
                    request.event,
                    request.client_uuid,
                    remote=request.remote_address,
                    listener=request.listener,
                    transport=request.transport,
                    reason=reason,
                    detail=request.disconnect_detail,
                )
                print(line, flush=True)
                if self.acks and request.seq:
                    yield pb2.OutputStreamRequest(acks=[request.seq])
                continue
            self.recorder.record(request.payload)
            if request.payload == b"reset " + self.name.encode():
                await context.abort(grpc.StatusCode.INTERNAL, "reset on purpose")
            replies = [
                to_message(reply)
                for reply in respond(
                    self.name,
                    request.client_uuid,
                    request.payload,
                    request.time,
                    request.delivery_attempt,
                )
            ]
            if self.acks and request.seq:
                # Handled: acknowledged on the last reply, or alone.
                if replies:
                    replies[-1].acks.append(request.seq)
                else:
                    replies.append(pb2.OutputStreamRequest(acks=[request.seq]))
            for message in replies:
                yield message

    async def ready(self, request: empty_pb2.Empty, context: Any) -> pb2.ReadyResult:
        if self.ready_hangs:
            await asyncio.Event().wait()
        return pb2.ReadyResult(time=rfc3339_now(), ready=self.is_ready)

    async def live(
        self, pings: AsyncIterator[empty_pb2.Empty], context: Any
    ) -> AsyncIterator[pb2.LiveResult]:
        async for _ping in pings:
            yield pb2.LiveResult(time=rfc3339_now(), live=self.is_live)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "bidirectionalStreaming": grpc.stream_stream_rpc_method_handler(
                    self.bidirectional_streaming,
                    request_deserializer=pb2.InputStreamRequest.FromString,
                    response_serializer=_serialize_output,
                ),
                "ready": grpc.unary_unary_rpc_method_handler(
                    self.ready,
                    request_deserializer=empty_pb2.Empty.FromString,
                    response_serializer=pb2.ReadyResult.SerializeToString,
                ),
                "live": grpc.stream_stream_rpc_method_handler(
                    self.live,
                    request_deserializer=empty_pb2.Empty.FromString,
                    response_serializer=pb2.LiveResult.SerializeToString,
                ),
            },
        )


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    service = ScriptedUpstream(
        args.name,
        ready=not args.not_ready,
        recorder=Recorder(args.record),
        malformed=args.malformed,
        ready_hangs=args.ready_hangs,
        acks=args.acks,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, setattr, service, "is_ready", True)
    loop.add_signal_handler(signal.SIGUSR2, service.go_bad)

    # Without SO_REUSEPORT, a port already in use is an error instead of a shared port.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((service.handler(),))
    if args.grpc_health:
        # The standard health service (grpcio-health-checking): SIGUSR1 sets
        # SERVING, SIGUSR2 NOT_SERVING, for the server ("") and "chat".
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_health.v1.health import aio as health_aio

        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

        pending: set[asyncio.Future[None]] = set()

        def set_health(status: int) -> None:
            for name in ("", "chat"):
                task = asyncio.ensure_future(health.set(name, status))
                pending.add(task)
                task.add_done_callback(pending.discard)

        set_health(health_pb2.HealthCheckResponse.ServingStatus.Value(args.grpc_health))
        loop.add_signal_handler(signal.SIGUSR1, set_health, health_pb2.HealthCheckResponse.SERVING)
        loop.add_signal_handler(
            signal.SIGUSR2, set_health, health_pb2.HealthCheckResponse.NOT_SERVING
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = server.add_insecure_port(f"{host}:{args.port}")
    if not port:
        sys.exit(f"cannot bind {host}:{args.port}")
    await server.start()
    print(f"LISTENING {port}", flush=True)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = script.parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--malformed", action="store_true", help="answer stream messages with invalid protobuf"
    )
    parser.add_argument(
        "--acks", action="store_true", help="acknowledge each request once handled (pmlb acks)"
    )
    parser.add_argument(
        "--grpc-health",
        choices=["SERVING", "NOT_SERVING"],
        help="also serve grpc.health.v1.Health, starting with this status",
    )
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
