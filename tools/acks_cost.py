"""What acknowledgements cost: pmlb CPU per message with acks on and off, and memory per unacked.

Run: ``python tools/acks_cost.py [--clients 20] [--messages 2000] [--rounds 3]``; never
part of CI, a few seconds per round. It starts two ``pmlb serve`` (line
framing), each in front of its own batched echo upstream
(tools/bench/echo_upstream.py): one with ``acks = true`` and an upstream
started with ``--acks``, one without. Then, ``--rounds`` times and
alternating, ``--clients`` clients each send ``--messages`` lines at once to
one of them and wait for every echo; pmlb's CPU (from /proc/PID/stat) over
that window, divided by the messages, is its CPU per message. Same machine,
same moment, interleaved: noise hits both alike.

Memory: in a fresh process, RSS before and after making 200,000 requests like
pmlb's (a UUID, a timestamp, a 60-byte payload) and keeping them in an
:class:`pmlb.upstream.acks.Unacked` table, stamped: the request itself (kept
until acknowledged instead of freed once written) and the table's bookkeeping.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ECHO = HERE / "bench" / "echo_upstream.py"
TICK = os.sysconf("SC_CLK_TCK")
TIMEOUT = 60.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_line(proc: subprocess.Popen[str], prefix: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"process ended before printing {prefix!r}")
        if prefix in line:
            return line
    raise SystemExit(f"no {prefix!r} within {TIMEOUT}s")


def start_pair(acks: bool, tmp: Path, procs: list[subprocess.Popen[str]]) -> tuple[int, int]:
    """An echo upstream and a pmlb in front of it; returns (pmlb's pid, its client port)."""
    up = subprocess.Popen(
        [sys.executable, str(ECHO), "--port", "0", *(["--acks"] if acks else [])],
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(up)
    up_port = int(wait_line(up, "LISTENING").split()[1])
    config = tmp / f"pmlb-{'on' if acks else 'off'}.toml"
    config.write_text(
        f'[[upstream]]\nhost = "127.0.0.1"\nport = {up_port}\n'
        f"acks = {'true' if acks else 'false'}\n"
    )
    pmlb = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pmlb",
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--framing",
            "line",
            "--no-admin",
            "--log-level",
            "info",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    procs.append(pmlb)
    line = wait_line(pmlb, "listening listener=default")
    port = int(line.rsplit(":", 1)[1].split()[0])
    wait_line(pmlb, "upstream serving")
    return pmlb.pid, port


def load(port: int, clients: int, messages: int, burst: int = 200) -> None:
    """Each client sends ``messages`` lines, ``burst`` at a time, reading every echo of one
    burst before the next (more in flight would make it a slow client)."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(clients)]
    for start in range(0, messages, burst):
        sizes = []
        for i, sock in enumerate(socks):
            data = b"".join(
                b"c%03d-%06d %s\n" % (i, n, b"x" * 48)
                for n in range(start, min(start + burst, messages))
            )
            sizes.append(len(data))
            sock.sendall(data)
        for sock, size in zip(socks, sizes, strict=True):
            got = 0
            while got < size:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise SystemExit("pmlb closed a client before every echo came")
                got += len(chunk)
    for sock in socks:
        sock.close()


def memory_per_unacked(count: int = 200_000) -> tuple[float, float]:
    """(bytes per request kept, bytes of table bookkeeping per request), from RSS."""
    code = f"""
import uuid
from pmlb.codecs.request import message as make_request
from pmlb.upstream.acks import Unacked
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * {os.sysconf("SC_PAGE_SIZE")}
uuids = [str(uuid.uuid4()) for _ in range({count})]
base = rss()
requests = [make_request(time="2026-12-02T07:00:00.123456Z", client_uuid=u,
                                  payload=b"x" * 60) for u in uuids]
made = rss()
table = Unacked({count})
table.stamp(requests, 0.0)
stamped = rss()
print((made - base) / {count}, (stamped - made) / {count})
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    message, bookkeeping = (float(x) for x in out.stdout.split())
    return message, bookkeeping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--messages", type=int, default=2000, help="per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    procs: list[subprocess.Popen[str]] = []
    per: dict[str, list[float]] = {"off": [], "on": []}
    try:
        with tempfile.TemporaryDirectory(prefix="pmlb-acks-cost-") as tmp:
            pairs = {
                "off": start_pair(False, Path(tmp), procs),
                "on": start_pair(True, Path(tmp), procs),
            }
            total = args.clients * args.messages
            for name, (_, port) in pairs.items():
                load(port, args.clients, 200)  # warm up
                del name
            for _ in range(args.rounds):
                for name, (pid, port) in pairs.items():
                    before = cpu_seconds(pid)
                    load(port, args.clients, args.messages)
                    per[name].append((cpu_seconds(pid) - before) / total * 1e6)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(TIMEOUT)
    off, on = statistics.median(per["off"]), statistics.median(per["on"])
    message, bookkeeping = memory_per_unacked()
    print(f"rounds of {args.clients} x {args.messages} messages, pmlb CPU µs per message:")
    print(f"  acks off: {', '.join(f'{v:.1f}' for v in per['off'])} (median {off:.1f})")
    print(f"  acks on:  {', '.join(f'{v:.1f}' for v in per['on'])} (median {on:.1f})")
    print(f"  on / off: {on / off:.2f}x")
    print(
        f"memory per unacked request: {message:.0f} B the request (60-byte payload),"
        f" {bookkeeping:.0f} B the table's bookkeeping, {message + bookkeeping:.0f} B in all"
    )


if __name__ == "__main__":
    main()
