"""How fast the admin API answers while pmlb holds many idle clients.

Starts the demo upstream and ``pmlb serve`` (admin on a free port), opens
``--clients`` idle TCP clients, then times ``--rounds`` requests of each kind
of admin GET and prints p50/p99 per route::

    python tools/admin_latency.py --clients 10000

Bounded in count and time; every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import sys
import time

import httpx

TOKEN = "admin-latency-token"


async def read_until(stream: asyncio.StreamReader, pattern: str) -> re.Match[str]:
    async with asyncio.timeout(30):
        while line := (await stream.readline()).decode():
            if match := re.search(pattern, line):
                return match
    raise RuntimeError(f"process ended before printing {pattern!r}")


async def start(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def timed(http: httpx.AsyncClient, path: str, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = await http.get(path)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    return times


async def main(clients: int, rounds: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if clients + 100 > hard:
        raise SystemExit(f"--clients {clients} needs more than this machine's {hard} open files")
    procs: list[asyncio.subprocess.Process] = []
    writers: list[asyncio.StreamWriter] = []
    try:
        upstream = await start(sys.executable, "-m", "pmlb.demo_upstream", "--port", "0")
        procs.append(upstream)
        assert upstream.stdout is not None
        up_port = (await read_until(upstream.stdout, r"LISTENING (\d+)")).group(1)
        pmlb = await start(
            sys.executable, "-m", "pmlb", "serve", "--host", "127.0.0.1", "--port", "0",
            "--admin-port", "0", "--upstream", f"127.0.0.1:{up_port}", "--log-level", "info",
            env={"PMLB_ADMIN_TOKEN": TOKEN},
        )  # fmt: skip
        procs.append(pmlb)
        assert pmlb.stdout is not None
        port = int((await read_until(pmlb.stdout, r"address=127\.0\.0\.1:(\d+)")).group(1))
        url = (await read_until(pmlb.stdout, r"admin listening url=(\S+)")).group(1)
        await read_until(pmlb.stdout, r"upstream serving")
        logs = asyncio.ensure_future(drain(pmlb.stdout))

        for start_at in range(0, clients, 500):
            opened = await asyncio.gather(
                *(
                    asyncio.open_connection("127.0.0.1", port)
                    for _ in range(min(500, clients - start_at))
                )
            )
            writers += [writer for _, writer in opened]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            deadline = time.monotonic() + 60
            while (await http.get("/api/v1/runtime")).json()["stats"]["clients"] < clients:
                if time.monotonic() > deadline:
                    raise SystemExit("pmlb did not register every client within 60 s")
                await asyncio.sleep(0.1)
            # A cursor in the middle of the list: the first page's cursor
            # points at the start, so walk pages of 1000 to halfway.
            cursor = None
            for _ in range(clients // 2000):
                params = {"limit": 1000} | ({"cursor": cursor} if cursor is not None else {})
                cursor = (await http.get("/api/v1/clients", params=params)).json()["next_cursor"]
            routes = {
                "healthz (baseline: no work)": "/healthz",
                "clients, first page of 100": "/api/v1/clients?limit=100",
                "clients, a page of 100 from the middle": (
                    f"/api/v1/clients?limit=100&cursor={cursor or 0}"
                ),
                "clients, 100 inactive": "/api/v1/clients?limit=100&state=inactive",
                "clients, a page of 1000": "/api/v1/clients?limit=1000",
                "runtime": "/api/v1/runtime",
                "upstreams": "/api/v1/upstreams",
                "metrics": "/metrics",
            }
            print(f"admin latency with {clients} idle clients, {rounds} requests each")
            print(f"{'route':42} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
            for name, path in routes.items():
                times = sorted(await timed(http, path, rounds))
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                print(
                    f"{name:42} {statistics.median(times) * 1e3:8.1f}"
                    f" {p99 * 1e3:8.1f} {times[-1] * 1e3:8.1f}"
                )
        logs.cancel()
    finally:
        for writer in writers:
            writer.transport.abort()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.clients, arguments.rounds))
