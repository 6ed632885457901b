"""The benchmark's echo upstream: gRPC on h2 and Trio, batched, so that it is not the bottleneck.

Every message is echoed to its sender; a payload starting with ``!bcast`` is
broadcast to every client instead. Each read is decoded whole and answered
with one DATA write, the way pmlb's native transport talks. Prints
``LISTENING <port>`` once bound. With ``--acks``, every echo also
acknowledges its request (pmlb's ``acks = true``, see docs/contract.md).

    python tools/bench/echo_upstream.py [--port 0] [--acks]
"""

from __future__ import annotations

import argparse
from functools import partial

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.grpc import GrpcMessageDecoder, encode_messages

_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_ALL = pb.OutputStreamRequest.BROADCAST_ALL


async def serve_connection(stream: trio.SocketStream, acks: bool = False) -> None:
    config = h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_inbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 8 * 1024 * 1024})
    conn.increment_flow_control_window(8 * 1024 * 1024)
    paths: dict[int, bytes] = {}
    decoders: dict[int, GrpcMessageDecoder] = {}
    parse = pb.InputStreamRequest.FromString
    reply = pb.OutputStreamRequest
    pending: dict[int, bytearray] = {}
    async with stream:
        await stream.send_all(conn.data_to_send())
        while data := await stream.receive_some(262144):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    assert event.stream_id is not None
                    assert event.headers is not None
                    paths[event.stream_id] = dict(event.headers)[b":path"]
                    decoders[event.stream_id] = GrpcMessageDecoder()
                    conn.send_headers(event.stream_id, _HEADERS)
                elif isinstance(event, h2.events.DataReceived):
                    sid = event.stream_id
                    assert sid is not None
                    assert event.data is not None
                    if event.flow_controlled_length:
                        conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    messages = decoders[sid].feed(event.data)
                    path = paths[sid]
                    if path.endswith(b"/bidirectionalStreaming"):
                        out = []
                        for raw in messages:
                            request = parse(raw)
                            if request.payload.startswith(b"!bcast"):
                                out.append(reply(broadcast=_ALL, payload=request.payload))
                            else:
                                out.append(
                                    reply(client_uuid=request.client_uuid, payload=request.payload)
                                )
                            if acks and request.seq:
                                out[-1].acks.append(request.seq)
                        encoded = encode_messages([m.SerializeToString() for m in out])
                    elif path.endswith(b"/live"):
                        live = pb.LiveResult(live=True).SerializeToString()
                        encoded = encode_messages([live] * len(messages))
                    else:
                        encoded = encode_messages(
                            [pb.ReadyResult(ready=True).SerializeToString()] * len(messages)
                        )
                    pending.setdefault(sid, bytearray()).extend(encoded)
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    assert sid is not None
                    if paths.get(sid, b"").endswith(b"/ready"):
                        _send(conn, sid, pending)
                        conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
                elif isinstance(event, h2.events.StreamReset):
                    pending.pop(event.stream_id or 0, None)
            for sid in list(pending):
                _send(conn, sid, pending)
            if out_data := conn.data_to_send():
                await stream.send_all(out_data)


def _send(conn: h2.connection.H2Connection, sid: int, pending: dict[int, bytearray]) -> None:
    buf = pending.get(sid)
    if not buf:
        return
    window = min(conn.local_flow_control_window(sid), len(buf))
    frame = conn.max_outbound_frame_size
    pos = 0
    while pos < window:
        size = min(frame, window - pos)
        conn.send_data(sid, bytes(buf[pos : pos + size]))
        pos += size
    del buf[:pos]


async def main(port: int, acks: bool) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(f"LISTENING {listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(partial(serve_connection, acks=acks), listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--acks", action="store_true", help="acknowledge every request")
    args = parser.parse_args()
    trio.run(main, args.port, args.acks)
