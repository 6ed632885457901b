"""Measure what clients that never read cost pmlb during broadcasts: RSS, CPU, what was cut.

Starts ``pmlb serve`` (line framing, no upstream; the admin API on
127.0.0.1), connects ``--slow`` clients with a tiny receive buffer that never
read and one client that reads everything, then broadcasts ``--messages``
messages of ``--size`` bytes through the admin API (``POST
/api/v1/broadcast``, which takes the same path to the clients as an
upstream's broadcast; one payload object shared by all clients), or with
``--distinct`` sends each client a message of its own (``POST
/api/v1/clients/UUID/messages``, as replies to each client would be).
Prints pmlb's RSS before, at its peak and after, its CPU, how many slow
clients were cut and what the reader got. Bounded in count and time;
everything local.

    python tools/slow_clients.py                      # 4 clients, 1,100 x 60 KB
    python tools/slow_clients.py --set client_queue_bytes=0   # the count limit only
    python tools/slow_clients.py --distinct  # a message of its own to each client
    PYTHONPATH=/path/to/other/pmlb python tools/slow_clients.py  # another pmlb
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

_TICK = os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> tuple[float, float]:
    """RSS in MB and CPU seconds so far of process ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / _TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metric(admin: str, name: str, label: str = "") -> float:
    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main(args: argparse.Namespace) -> None:
    port, admin_port = free_port(), free_port()
    extra = "".join(f"{item.split('=', 1)[0]} = {item.split('=', 1)[1]}\n" for item in args.set)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(
            f'[server]\nport = {port}\nframing = "line"\n{extra}'
            f"[management_server]\nport = {admin_port}\n"
        )
    # Run from / so that the working directory does not shadow PYTHONPATH.
    command = [sys.executable, "-m", "pmlb", "serve", "-c", f.name, "--log-level", "warning"]
    pmlb = subprocess.Popen(command, cwd="/")
    admin = f"http://127.0.0.1:{admin_port}"
    sockets: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{admin}/healthz", timeout=1).close()
                break
            if time.monotonic() > deadline:
                raise SystemExit("pmlb did not start")
            time.sleep(0.05)
        for _ in range(args.slow):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sockets.append(sock)
        reader = socket.create_connection(("127.0.0.1", port))
        reader.setblocking(False)
        sockets.append(reader)
        while metric(admin, "pmlb_clients", 'listener="default"') < args.slow + 1:
            time.sleep(0.05)
        start_rss, start_cpu = sample(pmlb.pid)
        peak = start_rss
        got = 0
        body = json.dumps({"kind": "all", "payload": "x" * args.size}).encode()
        routes = [f"{admin}/api/v1/broadcast"]
        if args.distinct:
            with urllib.request.urlopen(f"{admin}/api/v1/clients?limit=1000", timeout=10) as r:
                uuids = [c["uuid"] for c in json.load(r)["clients"]]
            routes = [f"{admin}/api/v1/clients/{uuid}/messages" for uuid in uuids]
            body = json.dumps({"payload": "x" * args.size}).encode()
        started = time.monotonic()
        for n in range(args.messages):
            for route in routes:
                request = urllib.request.Request(
                    route, data=body, headers={"Content-Type": "application/json"}
                )
                with contextlib.suppress(urllib.error.HTTPError):  # 404: a client cut
                    urllib.request.urlopen(request, timeout=30).close()
            with contextlib.suppress(BlockingIOError):
                while data := reader.recv(1 << 20):
                    got += data.count(b"\n")
            if n % 20 == 0:
                peak = max(peak, sample(pmlb.pid)[0])
            if time.monotonic() - started > args.timeout:
                print(f"stopped after {n + 1} broadcasts ({args.timeout:g}s)")
                break
        end = time.monotonic() + 10
        while got < args.messages and time.monotonic() < end:
            with contextlib.suppress(BlockingIOError):
                while data := reader.recv(1 << 20):
                    got += data.count(b"\n")
            time.sleep(0.01)
        rss, cpu = sample(pmlb.pid)
        peak = max(peak, rss)
        cut = metric(admin, "pmlb_client_disconnects_total", 'reason="slow"')
        print(
            f"slow_clients={args.slow} broadcasts={args.messages} x {args.size} B:"
            f" rss start={start_rss:.0f}MB peak={peak:.0f}MB (+{peak - start_rss:.0f}MB)"
            f" end={rss:.0f}MB cpu={cpu - start_cpu:.1f}s"
            f" in {time.monotonic() - started:.1f}s; slow clients cut={cut:.0f}"
            f" reader got {got}/{args.messages}"
        )
    finally:
        for sock in sockets:
            sock.close()
        pmlb.terminate()
        try:
            pmlb.wait(20)
        except subprocess.TimeoutExpired:
            pmlb.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=4, help="clients that never read")
    parser.add_argument("--messages", type=int, default=1100, help="broadcasts (at most 5000)")
    parser.add_argument("--size", type=int, default=60_000, help="bytes per message")
    parser.add_argument("--timeout", type=float, default=120, help="seconds at most")
    parser.add_argument(
        "--distinct", action="store_true", help="a message of its own to each client"
    )
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE added to [server]")
    args = parser.parse_args()
    if not 0 < args.messages <= 5000 or not 0 < args.slow <= 64:
        parser.error("--messages must be 1..5000 and --slow 1..64")
    main(args)
