"""An informal load client: C connections, D line messages in flight each, for T seconds.

Against ``pmlb demo --framing line`` (echo upstream) it reports round-tripped
messages per second and checks every echo. Bounded in count and time; it is a
rough start point, not the benchmark (that is ``nox -s bench``, to come).

    pmlb demo --framing line --port 7999 &
    python tools/echo_load.py --port 7999 --connections 50 --depth 8 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import time


async def connection(port: int, depth: int, deadline: float, counts: list[int], n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = received = 0
    payload = b"x" * 48
    writer.write(b"".join(b"%d %d " % (n, i) + payload + b"\n" for i in range(depth)))
    sent = depth
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(reader.readline(), timeout=30)
        expected = b"%d %d " % (n, received) + payload + b"\n"
        if line != expected:
            raise AssertionError(f"connection {n}: expected {expected!r}, got {line!r}")
        received += 1
        writer.write(b"%d %d " % (n, sent) + payload + b"\n")
        sent += 1
    counts[n] = received
    writer.close()


async def main(port: int, connections: int, depth: int, seconds: float) -> None:
    counts = [0] * connections
    start = time.monotonic()
    cpu = time.process_time()
    deadline = start + seconds
    await asyncio.gather(
        *(connection(port, depth, deadline, counts, n) for n in range(connections))
    )
    elapsed = time.monotonic() - start
    total = sum(counts)
    print(
        f"{total} messages echoed in {elapsed:.1f}s: {total / elapsed:,.0f} msgs/s "
        f"({connections} connections x {depth} in flight, 64 B lines; "
        f"load client CPU {time.process_time() - cpu:.1f}s)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7999)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.connections, args.depth, args.seconds))
