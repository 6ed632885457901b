"""An informal load client for WebSocket listeners, beside tools/echo_load.py for TCP.

C connections, D text messages in flight each, for T seconds; every echo is
checked in order. With ``--tcp-port`` it runs tools/echo_load.py's TCP load
against the same pmlb first, so both figures come from one setup::

    python -m pmlb.demo_upstream --port 45888 &
    pmlb serve --config tools/ws_bench.toml --log-level warning &
    python tools/ws_echo_load.py --port 7997 --tcp-port 7999 --connections 50 --depth 8 --seconds 10

Bounded in count and time; a rough figure, not the benchmark (``nox -s bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

import echo_load


async def connection(port: int, depth: int, deadline: float, counts: list[int], n: int) -> None:
    payload = "x" * 48
    async with connect(f"ws://127.0.0.1:{port}/", compression=None, max_queue=None) as ws:
        sent = received = 0
        for i in range(depth):
            await ws.send(f"{n} {i} {payload}")
        sent = depth
        while time.monotonic() < deadline:
            message = await asyncio.wait_for(ws.recv(), timeout=30)
            expected = f"{n} {received} {payload}"
            if message != expected:
                raise AssertionError(f"connection {n}: expected {expected!r}, got {message!r}")
            received += 1
            await ws.send(f"{n} {sent} {payload}")
            sent += 1
        counts[n] = received


async def main(port: int, connections: int, depth: int, seconds: float) -> None:
    counts = [0] * connections
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(
        *(connection(port, depth, deadline, counts, n) for n in range(connections))
    )
    elapsed = time.monotonic() - start
    total = sum(counts)
    print(f"websocket: {total} messages in {elapsed:.1f}s = {total / elapsed:,.0f} msgs/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the WebSocket listener")
    parser.add_argument("--tcp-port", type=int, help="a line-framed TCP listener, run first")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.tcp_port:
        print("tcp: ", end="", flush=True)
        asyncio.run(echo_load.main(args.tcp_port, args.connections, args.depth, args.seconds))
    asyncio.run(main(args.port, args.connections, args.depth, args.seconds))
