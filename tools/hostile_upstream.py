"""Measure what one hostile HTTP/2 upstream does to pmlb: RSS, CPU, healthy throughput.

Starts ``pmlb serve`` (line framing, no admin) with two upstreams: the demo
echo upstream and a hostile one run here, on 127.0.0.1. Clients send line
messages at a fixed total rate; every second the script prints pmlb's RSS,
its CPU use and the echoes the clients got. After ``--attack-seconds`` the
hostile upstream goes away (its listener closes), and ``--after-seconds``
more show what pmlb gave back. Bounded in time and count; everything local.

Attacks (``--attack``), each once its victim's bidi stream is open:

- ``continuation``: a header block that never ends, in 1 MiB CONTINUATION frames;
- ``flood``: PING frames as fast as the socket takes them;
- ``stall``: never opens its flow-control window (answers ready and live);
- ``malformed``: each echo followed by a malformed message in the same frame
  (``hostile_echoes`` counts the echoes of it that reached the clients).

    python tools/hostile_upstream.py --attack flood --seconds 10
    PYTHONPATH=/path/to/other/pmlb python tools/hostile_upstream.py ...  # another pmlb
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.grpc import GrpcMessageDecoder, encode_messages

_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_TICK = os.sysconf("SC_CLK_TCK")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id)
    return header + payload


class Hostile:
    def __init__(self, attack: str) -> None:
        self.attack = attack
        self.connections = 0
        self.flooding = False

    async def serve(self, sock: trio.SocketStream) -> None:
        self.connections += 1
        self.flooding = False
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        lock = trio.Lock()
        paths: dict[int, bytes] = {}
        decoders: dict[int, GrpcMessageDecoder] = {}
        started: set[int] = set()

        async def send(extra: bytes = b"") -> None:
            async with lock:
                await sock.send_all(conn.data_to_send() + extra)

        def reply(stream_id: int, messages: list[bytes], trailing: bytes = b"") -> None:
            if stream_id not in started:
                started.add(stream_id)
                conn.send_headers(stream_id, _HEADERS)
            conn.send_data(stream_id, encode_messages(messages) + trailing)

        def is_ready(stream_id: int | None) -> bool:
            return paths.get(stream_id or 0, b"").endswith(b"/ready")

        async def attack(stream_id: int) -> None:
            if self.attack == "continuation":
                await send(frame(1, 0, stream_id, b"\x88"))
                chunk = frame(9, 0, stream_id, b"\x00" * (1024 * 1024 - 1024))
                while True:
                    await send(chunk)
            elif self.attack == "flood":
                self.flooding = True
                pings = frame(6, 0, 0, b"12345678") * 1000
                while True:
                    await send(pings)

        async with trio.open_nursery() as nursery:
            await send()
            while data := await sock.receive_some(65536):
                if self.flooding:
                    continue  # the acks: not worth parsing, the flood is faster without
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        assert event.stream_id is not None
                        assert event.headers is not None
                        paths[event.stream_id] = dict(event.headers)[b":path"]
                        decoders[event.stream_id] = GrpcMessageDecoder()
                        if paths[event.stream_id].endswith(b"/bidirectionalStreaming"):
                            nursery.start_soon(attack, event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        stream_id, size = event.stream_id, event.flow_controlled_length or 0
                        assert stream_id is not None
                        assert event.data is not None
                        path = paths[stream_id]
                        bidi = path.endswith(b"/bidirectionalStreaming")
                        if size and not (bidi and self.attack == "stall"):
                            conn.acknowledge_received_data(size, stream_id)
                        messages = decoders[stream_id].feed(event.data)
                        if path.endswith(b"/live"):
                            live = pb.LiveResult(live=True).SerializeToString()
                            for _ in messages:
                                reply(stream_id, [live])
                        elif bidi and messages and self.attack in ("stall", "malformed"):
                            echoes = []
                            for raw in messages:
                                request = pb.InputStreamRequest.FromString(raw)
                                echoes.append(
                                    pb.OutputStreamRequest(
                                        client_uuid=request.client_uuid,
                                        payload=b"hostile " + request.payload,
                                    ).SerializeToString()
                                )
                            bad = encode_messages([b"\x0a\x05ab"])
                            reply(stream_id, echoes, bad if self.attack == "malformed" else b"")
                    elif isinstance(event, h2.events.StreamEnded) and is_ready(event.stream_id):
                        assert event.stream_id is not None
                        ready = pb.ReadyResult(ready=True).SerializeToString()
                        reply(event.stream_id, [ready])
                        conn.send_headers(event.stream_id, [(b"grpc-status", b"0")], True)
                await send()
            nursery.cancel_scope.cancel()


def start_echo() -> tuple[subprocess.Popen[bytes], int]:
    """The demo echo upstream, and its port."""
    echo = subprocess.Popen(
        [sys.executable, "-m", "pmlb.demo_upstream", "--port", "0", "--exit-with-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert echo.stdout is not None
    return echo, int(echo.stdout.readline().split()[1])


def start_pmlb(config: str, log_level: str) -> subprocess.Popen[bytes]:
    # Run from / so that the working directory does not shadow PYTHONPATH.
    command = [sys.executable, "-m", "pmlb", "serve", "-c", config, "--log-level", log_level]
    return subprocess.Popen(command, cwd="/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sample(pid: int) -> tuple[float, float]:
    """RSS in MB and CPU seconds so far of process ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / _TICK


async def clients(port: int, count: int, rate: float, stop: trio.Event, got: list[int]) -> None:
    async def one(n: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:

            async def reader() -> None:
                while data := await stream.receive_some(65536):
                    got[0] += data.count(b"\n")
                    got[1] += data.count(b"hostile ")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                interval, i = count / rate, 0
                next_at = trio.current_time()
                while not stop.is_set():
                    with trio.move_on_after(1):
                        await stream.send_all(b"%d %d %s\n" % (n, i, b"x" * 200))
                    i += 1
                    next_at += interval
                    await trio.sleep_until(next_at)
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(one, n)


async def main(args: argparse.Namespace) -> None:
    hostile = Hostile(args.attack)
    echo, echo_port = start_echo()
    async with trio.open_nursery() as nursery:
        hostile_scope = trio.CancelScope()

        async def run_hostile(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
            with hostile_scope:
                await trio.serve_tcp(
                    lambda s: _quiet(hostile.serve(s)), 0, host="127.0.0.1", task_status=task_status
                )

        listeners = await nursery.start(run_hostile)
        hostile_port = listeners[0].socket.getsockname()[1]
        port = free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(
                f'[server]\nport = {port}\nframing = "line"\n'
                f"[management_server]\nenabled = false\n"
                f'[[upstream]]\nhost = "127.0.0.1"\nport = {echo_port}\n'
                f'[[upstream]]\nhost = "127.0.0.1"\nport = {hostile_port}\n'
            )
        pmlb = start_pmlb(f.name, args.pmlb_log_level)
        try:
            with trio.fail_after(10):
                while True:
                    with contextlib.suppress(OSError):
                        await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                        break
                    await trio.sleep(0.05)
            await trio.sleep(1)  # both upstreams serving
            got, stop = [0, 0], trio.Event()
            nursery.start_soon(clients, port, args.clients, args.rate, stop, got)
            start_rss, start_cpu = sample(pmlb.pid)
            print(f"attack={args.attack} start rss={start_rss:.0f}MB")
            last_cpu, last_got = start_cpu, 0
            peak = start_rss
            total = args.attack_seconds + args.after_seconds
            for second in range(1, int(total) + 1):
                await trio.sleep(1)
                if second == args.attack_seconds:
                    hostile_scope.cancel()  # its listener and connections close
                rss, cpu = sample(pmlb.pid)
                peak = max(peak, rss)
                phase = "attack" if second <= args.attack_seconds else "after"
                print(
                    f"t={second:2d} {phase:6s} rss={rss:6.0f}MB cpu={100 * (cpu - last_cpu):4.0f}%"
                    f" echoes={got[0] - last_got:5d}/s hostile_echoes={got[1]}"
                )
                last_cpu, last_got = cpu, got[0]
            stop.set()
            print(
                f"summary attack={args.attack} rss start={start_rss:.0f}MB peak={peak:.0f}MB"
                f" end={rss:.0f}MB cpu={100 * (cpu - start_cpu) / total:.0f}%"
                f" echoes={got[0] / total:.0f}/s (sent {args.rate:g}/s)"
                f" hostile_echoes={got[1]} hostile_connections={hostile.connections}"
            )
        finally:
            pmlb.terminate()
            try:
                pmlb.wait(5)
            except subprocess.TimeoutExpired:  # a drain held up by the stalled upstream
                pmlb.kill()
                pmlb.wait(5)
            echo.kill()
            echo.wait(10)
            os.unlink(f.name)
            nursery.cancel_scope.cancel()


_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError)


async def _quiet(coro: object) -> None:
    try:
        await coro  # type: ignore[misc]
    except _GONE:
        pass  # pmlb dropped the connection
    except BaseExceptionGroup as group:
        if group.split(_GONE)[1] is not None:
            raise


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--attack", choices=["continuation", "flood", "stall", "malformed"], required=True
    )
    parser.add_argument("--attack-seconds", type=int, default=8)
    parser.add_argument("--after-seconds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second, in all")
    parser.add_argument("--pmlb-log-level", default="error", help="pmlb's, on stderr")
    args = parser.parse_args()
    if not 1 <= args.attack_seconds + args.after_seconds <= 60:
        parser.error("the run must last 1 to 60 seconds")
    trio.run(main, args)
