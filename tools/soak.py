"""The soak: pmlb under churning clients while its upstreams restart one by one.

Run it with ``nox -s soak`` (or ``python tools/soak.py``); never part of CI.
It starts ``pmlb serve`` (line framing) in front of ``--upstreams`` echo
upstreams (tools/bench/echo_upstream.py), then for ``--duration`` seconds
``--clients`` clients each connect, send 1 to ``--messages`` lines, wait for
their echoes (at most ``--echo-timeout`` seconds), disconnect, pause up to
``--pause`` seconds and start again, while every ``--restart-every`` seconds
the next upstream is stopped (SIGTERM) and started again on its port. It stops
by itself after ``--duration`` seconds or ``--max-connections`` connections.
With ``--acks``, the upstreams acknowledge every request and pmlb has
``acks = true`` on each (docs/contract.md): then nothing may be lost, and
an echo that comes twice (a redelivery) counts as an unexpected line.

Once the clients are gone and pmlb reports no client and every upstream
serving, it compares pmlb's open file descriptors and RSS with their values
before the first client. Prints a table; ``--json FILE`` writes the figures.
Every process it starts is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
ECHO_UPSTREAM = HERE / "bench" / "echo_upstream.py"
PAGE = os.sysconf("SC_PAGE_SIZE")
#: generous: a loaded machine may take seconds to start an interpreter
TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """Open descriptors by kind: socket, pipe, anon_inode:[eventpoll], file..."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        kind, bracket, _ = target.partition(":[")
        kinds[kind if bracket and kind != "anon_inode" else target if bracket else "file"] += 1
    return dict(sorted(kinds.items()))


def tcp_connections(local_port: int) -> int:
    """Sockets with this local port other than listening or in TIME_WAIT (not descriptors)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port == local_port and fields[3] not in ("0A", "06"):
                    count += 1
    return count


def _die_with_parent() -> None:
    # Linux: the children die with the soak, even if it is killed.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Proc:
    """A child process whose output lines are collected as they come."""

    def __init__(self, name: str, args: Sequence[str]) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_die_with_parent,
        )
        assert self.popen.stdout is not None
        self._stdout = trio.lowlevel.FdStream(os.dup(self.popen.stdout.fileno()))
        self.popen.stdout.close()
        self._pidfd = os.pidfd_open(self.popen.pid)
        self.lines: list[str] = []
        self._changed = trio.lowlevel.ParkingLot()
        self.closed = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    async def pump(self) -> None:
        buffer = b""
        async with self._stdout:
            while data := await self._stdout.receive_some(65536):
                *complete, buffer = (buffer + data).split(b"\n")
                if complete:
                    self.lines += [line.decode(errors="replace") for line in complete]
                    self._changed.unpark_all()
        self.closed = True
        self._changed.unpark_all()

    async def wait_for(self, pattern: str, *, after: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)
        seen = after
        with trio.move_on_after(TIMEOUT):
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                if self.closed:
                    break
                await self._changed.park()
        tail = "\n".join(self.lines[-20:])
        raise RuntimeError(f"{self.name}: no line matching {pattern!r}; last output:\n{tail}")

    async def stop(self, grace: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if self.popen.poll() is None:
                self.popen.send_signal(signum)
            with trio.move_on_after(grace):
                while self.popen.poll() is None:
                    await trio.lowlevel.wait_readable(self._pidfd)
        code = self.popen.wait()
        os.close(self._pidfd)
        return code


class Admin:
    """pmlb's admin API over plain HTTP (urllib, in a worker thread)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.port = urllib.parse.urlsplit(url).port

    async def idle(self) -> bool:
        """Whether pmlb has closed every admin connection (ours are done by now)."""
        return tcp_connections(self.port or 0) == 0

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        def call() -> Any:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(self.url + path, data=data, method=method)
            request.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        return await trio.to_thread.run_sync(call)

    async def stats(self) -> dict[str, Any]:
        runtime = await self.request("GET", "/api/v1/runtime")
        stats: dict[str, Any] = runtime["stats"]
        return stats

    async def upstream_state(self, address: str) -> str:
        state: str = (await self.request("GET", f"/api/v1/upstreams/{address}"))["state"]
        return state


async def until(condition: Any, what: str, within: float = TIMEOUT) -> None:
    """Poll an async ``condition`` every 0.1 s until it holds (RuntimeError after ``within`` s).

    For another process's state (pmlb's counters, /proc), which has no event to wait on.
    """
    with trio.move_on_after(within):
        while not await condition():  # noqa: ASYNC110 (polling another process)
            await trio.sleep(0.1)
        return
    raise RuntimeError(f"timed out after {within:g} s waiting for {what}")


class Figures:
    """What the clients saw."""

    def __init__(self) -> None:
        self.connections = 0
        self.sent = 0
        self.delivered = 0
        self.lost = 0
        self.unexpected = 0
        self.errors: Counter[str] = Counter()


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.figures = Figures()
        self.upstreams: list[Proc] = []
        self.ports: list[int] = []
        self.restarts: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.pmlb: Proc | None = None
        self.port = 0
        self.admin: Admin | None = None
        self.connections_left = args.max_connections

    async def start_upstream(self, nursery: trio.Nursery, port: int = 0) -> tuple[Proc, int]:
        command = [sys.executable, str(ECHO_UPSTREAM), "--port", str(port)]
        if self.args.acks:
            command.append("--acks")
        proc = Proc(f"upstream :{port}", command)
        nursery.start_soon(proc.pump)
        match = await proc.wait_for(r"^LISTENING (\d+)$")
        return proc, int(match.group(1))

    async def start(self, nursery: trio.Nursery) -> None:
        for _ in range(self.args.upstreams):
            proc, port = await self.start_upstream(nursery)
            self.upstreams.append(proc)
            self.ports.append(port)
        args = [
            sys.executable, "-m", "pmlb", "serve", "--host", "127.0.0.1", "--port", "0",
            "--admin-port", "0", "--framing", "line", "--log-level", "info",
        ]  # fmt: skip
        if self.args.acks:
            # acks is an [[upstream]] key only, not a flag: a config file it is.
            upstreams = "".join(
                f'[[upstream]]\nhost = "127.0.0.1"\nport = {port}\nacks = true\n'
                for port in self.ports
            )
            config = Path(tempfile.mkdtemp(prefix="pmlb-soak-")) / "pmlb.toml"
            config.write_text(upstreams)
            args += ["--config", str(config)]
        else:
            for port in self.ports:
                args += ["--upstream", f"127.0.0.1:{port}"]
        self.pmlb = pmlb = Proc("pmlb", args)
        nursery.start_soon(pmlb.pump)
        match = await pmlb.wait_for(r"listening listener=default address=127\.0\.0\.1:(\d+)")
        self.port = int(match.group(1))
        self.admin = Admin((await pmlb.wait_for(r"admin listening url=(\S+)")).group(1))
        for port in self.ports:
            await pmlb.wait_for(rf"upstream serving upstream=127\.0\.0\.1:{port}\b")
        # From here on only warnings: a line per client would be the soak's bottleneck.
        await self.admin.request("PATCH", "/api/v1/runtime", {"log_level": "warning"})

    async def settled(self) -> bool:
        assert self.admin is not None
        stats = await self.admin.stats()
        return bool(stats["clients"] == 0 and stats["upstreams_serving"] == len(self.ports))

    # -- load -----------------------------------------------------------

    async def client(self, index: int, stop_at: float) -> None:
        args, figures = self.args, self.figures
        rng = random.Random(index)
        seq = 0
        while trio.current_time() < stop_at and self.connections_left > 0:
            self.connections_left -= 1
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError as error:
                figures.errors[f"connect: {error.strerror or type(error).__name__}"] += 1
                await trio.sleep(rng.uniform(0, args.pause) + 0.1)
                continue
            figures.connections += 1
            waiting: set[bytes] = set()
            for _ in range(rng.randint(1, args.messages)):
                seq += 1
                waiting.add(f"{index}-{seq}".encode())
            try:
                async with stream:
                    await stream.send_all(b"".join(token + b"\n" for token in waiting))
                    figures.sent += len(waiting)
                    await self.receive(stream, waiting)
            except (trio.BrokenResourceError, OSError) as error:
                figures.errors[f"connection: {type(error).__name__}"] += 1
            figures.lost += len(waiting)
            await trio.sleep(rng.uniform(0, args.pause))

    async def receive(self, stream: trio.SocketStream, waiting: set[bytes]) -> None:
        figures = self.figures
        buffer = b""
        with trio.move_on_after(self.args.echo_timeout):
            while waiting:
                data = await stream.receive_some(65536)
                if not data:
                    figures.errors["closed by pmlb before every echo came"] += 1
                    return
                *lines, buffer = (buffer + data).split(b"\n")
                for line in lines:
                    if line in waiting:
                        waiting.discard(line)
                        figures.delivered += 1
                    else:
                        figures.unexpected += 1

    async def restarter(self, nursery: trio.Nursery, stop_at: float) -> None:
        assert self.admin is not None
        admin = self.admin
        index = 0
        next_at = trio.current_time() + self.args.restart_every
        while next_at < stop_at:
            await trio.sleep_until(next_at)
            i = index % len(self.upstreams)
            index += 1
            address = f"127.0.0.1:{self.ports[i]}"
            started = trio.current_time()
            await self.upstreams[i].stop()
            proc, _ = await self.start_upstream(nursery, self.ports[i])
            self.upstreams[i] = proc

            async def serving(address: str = address) -> bool:
                return await admin.upstream_state(address) == "serving"

            await until(serving, f"{address} serving again")
            self.restarts.append(
                {"upstream": address, "seconds_to_serving": round(trio.current_time() - started, 2)}
            )
            print(f"restarted {address}", file=sys.stderr)
            next_at += self.args.restart_every

    async def sampler(self, stop: trio.Event) -> None:
        assert self.pmlb is not None
        started = trio.current_time()
        while not stop.is_set():
            self.samples.append(
                {
                    "t": round(trio.current_time() - started, 1),
                    "rss_mb": round(rss_bytes(self.pmlb.pid) / 2**20, 1),
                    "fds": open_fds(self.pmlb.pid),
                    "connections": self.figures.connections,
                }
            )
            with trio.move_on_after(5):
                await stop.wait()

    # -- the run --------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        results: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.node()}: {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}",
            "command": "nox -s soak -- " + " ".join(sys.argv[1:]),
        }
        async with trio.open_nursery() as nursery:
            try:
                await self.start(nursery)
                assert self.pmlb is not None
                assert self.admin is not None
                pid = self.pmlb.pid
                # Our own admin requests must not count among pmlb's descriptors.
                await until(self.admin.idle, "admin connections closed")
                results["rss_start_mb"] = round(rss_bytes(pid) / 2**20, 1)
                results["fds_start"] = open_fds(pid)
                results["fd_kinds_start"] = fd_kinds(pid)
                stop_sampling = trio.Event()
                nursery.start_soon(self.sampler, stop_sampling)
                began = trio.current_time()
                stop_at = began + args.duration
                print(f"{args.clients} clients for {args.duration:g} s ...", file=sys.stderr)
                async with trio.open_nursery() as load:
                    load.start_soon(self.restarter, nursery, stop_at)
                    for index in range(args.clients):
                        load.start_soon(self.client, index, stop_at)
                results["load_seconds"] = round(trio.current_time() - began, 1)
                await until(self.settled, "no client and every upstream serving")
                fds_start: int = results["fds_start"]

                async def fds_back() -> bool:
                    return open_fds(pid) <= fds_start

                try:
                    await until(self.admin.idle, "admin connections closed")
                    await until(fds_back, "pmlb's descriptors back to their start", 30)
                except RuntimeError as error:
                    print(error, file=sys.stderr)
                results["fds_end"] = open_fds(pid)
                results["fd_kinds_end"] = fd_kinds(pid)
                results["rss_end_mb"] = round(rss_bytes(pid) / 2**20, 1)
                results["pmlb"] = await self.admin.stats()
                stop_sampling.set()
            finally:
                with trio.CancelScope(shield=True):
                    await self.stop_all()
                nursery.cancel_scope.cancel()
        results.update(self.summary())
        return results

    async def stop_all(self) -> None:
        """Stop pmlb, then the upstreams, each by its PID."""
        for proc in [p for p in (self.pmlb,) if p is not None] + self.upstreams:
            await proc.stop()

    def summary(self) -> dict[str, Any]:
        figures = self.figures
        pmlb_lines = self.pmlb.lines if self.pmlb else []
        problems = Counter(
            re.sub(r"^\S+ (\w+)\s+(\S+ [^=]*?)( \w+=.*)?$", r"\1 \2", line)
            for line in pmlb_lines
            if re.search(r"^\S+ (WARNING|ERROR|CRITICAL) ", line)
        )
        seconds = [r["seconds_to_serving"] for r in self.restarts]
        return {
            "clients": self.args.clients,
            "upstreams": self.args.upstreams,
            "connections": figures.connections,
            "messages_sent": figures.sent,
            "messages_delivered": figures.delivered,
            "messages_lost": figures.lost,
            "unexpected_lines": figures.unexpected,
            "errors": dict(figures.errors),
            "restarts": len(self.restarts),
            "restart_to_serving_s": {
                "median": statistics.median(seconds) if seconds else None,
                "max": max(seconds, default=None),
            },
            "rss_peak_mb": max((s["rss_mb"] for s in self.samples), default=None),
            "pmlb_log_problems": dict(problems.most_common(10)),
            "samples": self.samples,
            "restart_log": self.restarts,
        }


def table(r: dict[str, Any]) -> str:
    sent = max(r["messages_sent"], 1)
    p = r.get("pmlb", {})
    rows = [
        ("duration (s)", r.get("load_seconds")),
        ("clients at once / upstreams", f"{r['clients']} / {r['upstreams']}"),
        ("connections", f"{r['connections']:,}"),
        ("messages sent", f"{r['messages_sent']:,}"),
        (
            "messages delivered (echoed back)",
            f"{r['messages_delivered']:,} ({100 * r['messages_delivered'] / sent:.3f} %)",
        ),
        ("messages lost", f"{r['messages_lost']:,}"),
        ("unexpected lines", r["unexpected_lines"]),
        ("client errors", ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"),
        ("upstream restarts", r["restarts"]),
        (
            "restart to serving again, median / max (s)",
            f"{r['restart_to_serving_s']['median']} / {r['restart_to_serving_s']['max']}",
        ),
        (
            "pmlb RSS start / peak / end (MB)",
            f"{r.get('rss_start_mb')} / {r.get('rss_peak_mb')} / {r.get('rss_end_mb')}",
        ),
        ("pmlb open fds start / end", f"{r.get('fds_start')} / {r.get('fds_end')}"),
        ("pmlb fds by kind, start", r.get("fd_kinds_start")),
        ("pmlb fds by kind, end", r.get("fd_kinds_end")),
        (
            "pmlb messages from / to clients",
            f"{p.get('messages_from_clients', 0):,} / {p.get('messages_to_clients', 0):,}",
        ),
        ("pmlb unknown_client (echo after its client left)", p.get("unknown_client")),
        (
            "pmlb acks received / redelivered / undeliverable",
            f"{p.get('acks_received', 0):,} / {p.get('redelivered', 0):,}"
            f" / {p.get('undeliverable', 0):,}",
        ),
        ("pmlb disconnects", p.get("disconnects")),
        (
            "pmlb warnings",
            "; ".join(f"{k} x{v}" for k, v in r["pmlb_log_problems"].items()) or "none",
        ),
    ]
    lines = [
        f"pmlb soak, {r['date']}, {r['machine']}",
        f"command: {r['command']}",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=1000, help="clients at once")
    parser.add_argument("--upstreams", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5, help="most lines per connection")
    parser.add_argument("--pause", type=float, default=1.0, help="most seconds between connections")
    parser.add_argument("--echo-timeout", type=float, default=10.0)
    parser.add_argument("--restart-every", type=float, default=20.0, help="seconds")
    parser.add_argument("--max-connections", type=int, default=1_000_000)
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument(
        "--acks", action="store_true", help="upstreams that acknowledge, acks = true in pmlb"
    )
    args = parser.parse_args()
    if args.upstreams < 2:
        parser.error("--upstreams must be at least 2: one serves while another restarts")
    started = time.monotonic()
    results = trio.run(Soak(args).run)
    results["wall_seconds"] = round(time.monotonic() - started)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\n({results['wall_seconds']} s{'; JSON: ' + args.json if args.json else ''})")


if __name__ == "__main__":
    main()
