"""What crossing nodes costs: a cross-node reply beside a local one, and a broadcast.

Starts its own redis-server (unix socket, no persistence), a scripted test
upstream (``tests/upstreams/grpclib_upstream.py``, or grpc-js with
``--upstream grpcjs``) and two ``pmlb serve`` nodes with ``reply_scope =
"cluster"``, then measures, in one run:

- **replies**: ``--pairs`` clients on node a each send ``--messages`` lines
  ``to <uuid> <t>`` (``--window`` in flight per client), in alternating
  rounds: *local* (the UUID is the sender's own, on node a) and *cross* (a
  partner's, on node b). Printed: pmlb CPU per reply (both nodes' utime +
  stime from /proc, over the messages), the latency from send to receipt
  (p50/p99), Redis CPU per cross-node reply, and the upstream's CPU.
  Then the latency alone: one sender, one message in flight at a time.
- **broadcast**: ``--broadcast-clients`` idle clients, all on one pmlb
  without a cluster, then spread over the two nodes; one client asks the
  upstream for ``bcast all``; the time until the last client has it
  (median of ``--broadcasts``).

    python tools/cluster_cost.py                      # ~1-2 minutes
    python tools/cluster_cost.py --profile /tmp/prof  # nodes under cProfile

Bounded in count and time; every process it starts is stopped by its PID.
Raises its own file limit (``resource.setrlimit``) for the broadcast's
clients: the pmlb it starts inherit it.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
DEADLINE = 600.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (children excluded)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Proc:
    """A child process whose output is read line by line (for the lines we wait on)."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def pump(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines += [line.decode(errors="replace") for line in complete]
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pattern: str, within: float = 60) -> re.Match[str]:
        seen = 0
        with trio.fail_after(within):
            while True:
                for line in self.lines[seen:]:
                    if match := re.search(pattern, line):
                        return match
                seen = len(self.lines)
                if self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited: " + "\n".join(self.lines[-20:]))
                await self._changed.wait()


class Run:
    def __init__(self, nursery: trio.Nursery, tmp: Path) -> None:
        self.nursery = nursery
        self.tmp = tmp
        self.procs: list[Proc] = []

    async def start(self, name: str, args: list[str]) -> Proc:
        process = await trio.lowlevel.open_process(
            args, stdout=-1, stderr=-2, stdin=-3, cwd=ROOT, start_new_session=True
        )
        proc = Proc(name, process)
        self.procs.append(proc)
        self.nursery.start_soon(proc.pump)
        return proc

    async def stop(self, proc: Proc) -> None:
        if proc.process.returncode is None:
            proc.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await proc.process.wait()
            if proc.process.returncode is None:
                proc.process.kill()
                await proc.process.wait()

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            await self.stop(proc)

    async def pmlb(
        self, name: str, config: str, *, profile: Path | None = None
    ) -> tuple[Proc, int]:
        path = self.tmp / f"{name}.toml"
        path.write_text(config)
        python = [sys.executable]
        if profile is not None:
            python += ["-m", "cProfile", "-o", str(profile / f"{name}.prof")]
        args = [*python, "-m", "pmlb", "serve", "--config", str(path), "--no-admin"]
        proc = await self.start(f"pmlb {name}", args)
        match = await proc.wait_for(r"listening listener=default address=127\.0\.0\.1:(\d+)")
        await proc.wait_for("upstream serving")
        return proc, int(match.group(1))


def node_config(name: str, up_port: int, redis_url: str | None) -> str:
    text = (
        '[server]\nhost = "127.0.0.1"\nport = 0\nframing = "line"\n'
        '[log]\nlevel = "info"\n'
        f'[[upstream]]\nhost = "127.0.0.1"\nport = {up_port}\n'
    )
    if redis_url is None:
        return text
    return text + (
        'reply_scope = "cluster"\n'
        f'[cluster]\nredis_url = "{redis_url}"\nnode = "{name}"\n'
        "heartbeat_interval = 1\nnode_timeout = 5\n"
    )


class Totals:
    """One kind of reply's figures over the rounds."""

    def __init__(self, cpu: dict[str, float]) -> None:
        self.cpu = cpu
        self.wall = 0.0
        self.n = 0
        self.latencies: list[float] = []


class LineClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def line(self) -> bytes:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("pmlb closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    async def send(self, text: str) -> None:
        await self.stream.send_all(text.encode() + b"\n")


async def connect(port: int, count: int) -> list[LineClient]:
    clients = []
    for _ in range(count):
        clients.append(LineClient(await trio.open_tcp_stream("127.0.0.1", port)))
    return clients


async def whoami(client: LineClient) -> str:
    await client.send("whoami")
    return (await client.line()).decode()


async def replies(
    senders: list[LineClient],
    receivers: list[LineClient],
    targets: list[str],
    messages: int,
    window: int,
) -> list[float]:
    """Each sender sends ``messages`` replies for its target; latencies in seconds."""
    latencies: list[float] = []

    async def pair(sender: LineClient, receiver: LineClient, target: str) -> None:
        room = trio.Semaphore(window)

        async def send_all() -> None:
            for _ in range(messages):
                await room.acquire()
                await sender.send(f"to {target} {time.perf_counter_ns()}")

        async def receive_all() -> None:
            for _ in range(messages):
                sent = int(await receiver.line())
                latencies.append((time.perf_counter_ns() - sent) / 1e9)
                room.release()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            nursery.start_soon(receive_all)

    async with trio.open_nursery() as nursery:
        for sender, receiver, target in zip(senders, receivers, targets, strict=True):
            nursery.start_soon(pair, sender, receiver, target)
    return latencies


async def broadcast_time(trigger: LineClient, clients: list[LineClient], text: str) -> float:
    """Seconds from asking for a broadcast to the last of ``clients`` having it."""
    started = time.perf_counter()
    done = [0.0]

    async def read(client: LineClient) -> None:
        line = await client.line()
        assert line == text.encode(), line
        done[0] = max(done[0], time.perf_counter())

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(read, client)
        await trigger.send(f"bcast all {text}")
    return done[0] - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def close(clients: list[LineClient]) -> None:
    for client in clients:
        await trio.aclose_forcefully(client.stream)


async def measure(args: argparse.Namespace, run: Run, tmp: Path) -> None:
    redis_socket = tmp / "redis.sock"
    redis = await run.start(
        "redis",
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(redis_socket),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
    )
    await redis.wait_for("ready to accept connections")
    redis_url = f"unix://{redis_socket}"
    if args.upstream == "grpcjs":
        program = ["node", str(ROOT / "tests/upstreams/grpcjs/upstream.js")]
    else:
        program = [sys.executable, str(ROOT / "tests/upstreams/grpclib_upstream.py")]
    upstream = await run.start("upstream", [*program, "--name", "U", "--port", "0"])
    up_port = int((await upstream.wait_for(r"^LISTENING (\d+)$")).group(1))
    profile = Path(args.profile) if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    a, a_port = await run.pmlb("a", node_config("a", up_port, redis_url), profile=profile)
    b, b_port = await run.pmlb("b", node_config("b", up_port, redis_url), profile=profile)
    await a.wait_for("cluster joined")
    await b.wait_for("cluster joined")
    pids = {"pmlb a+b": [a.pid, b.pid], "redis": [redis.pid], "upstream": [upstream.pid]}

    def cpu() -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}

    on_a = await connect(a_port, args.pairs)
    on_b = await connect(b_port, args.pairs)
    uuids_a = [await whoami(c) for c in on_a]
    uuids_b = [await whoami(c) for c in on_b]
    # a round of each to warm up (imports, caches, the first registrations)
    await replies(on_a, on_a, uuids_a, 20, args.window)
    await replies(on_a, on_b, uuids_b, 20, args.window)

    totals = {kind: Totals(dict.fromkeys(pids, 0.0)) for kind in ("local", "cross")}
    for _ in range(args.rounds):
        for kind in ("local", "cross"):
            receivers, targets = (on_a, uuids_a) if kind == "local" else (on_b, uuids_b)
            before, started = cpu(), time.perf_counter()
            entry = totals[kind]
            entry.latencies += await replies(on_a, receivers, targets, args.messages, args.window)
            after = cpu()
            entry.wall += time.perf_counter() - started
            entry.n += args.pairs * args.messages
            for name in pids:
                entry.cpu[name] += after[name] - before[name]

    print(
        f"\nreplies: {args.pairs} senders on node a, {args.messages} messages each per round,"
        f" {args.rounds} rounds of each kind, window {args.window}, upstream {args.upstream}"
    )
    print(
        f"{'':8} {'msgs':>7} {'msg/s':>7} {'pmlb µs/msg':>12} {'redis µs/msg':>13}"
        f" {'upstream µs/msg':>16} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for kind, entry in totals.items():
        n = entry.n
        print(
            f"{kind:8} {n:>7} {n / entry.wall:>7.0f} {entry.cpu['pmlb a+b'] / n * 1e6:>12.1f}"
            f" {entry.cpu['redis'] / n * 1e6:>13.1f} {entry.cpu['upstream'] / n * 1e6:>16.1f}"
            f" {pct(entry.latencies, 0.5) * 1e3:>7.2f} {pct(entry.latencies, 0.99) * 1e3:>7.2f}"
        )
    local, cross = totals["local"], totals["cross"]
    if local.cpu["pmlb a+b"] > 0:
        ratio = (cross.cpu["pmlb a+b"] / cross.n) / (local.cpu["pmlb a+b"] / local.n)
        print(f"cross/local pmlb CPU per reply: {ratio:.2f}x")
    else:  # CPU time counts in clock ticks (10 ms)
        print("cross/local pmlb CPU per reply: n/a (too few messages to measure)")

    # Latency alone: one message in flight at a time, so no queue adds to it.
    quiet: dict[str, list[float]] = {"local": [], "cross": []}
    for _ in range(args.rounds):
        for kind in ("local", "cross"):
            receivers, targets = (on_a, uuids_a) if kind == "local" else (on_b, uuids_b)
            quiet[kind] += await replies(
                on_a[:1], receivers[:1], targets[:1], args.latency_messages, 1
            )
    print(
        f"latency with one message in flight ({args.latency_messages} x {args.rounds} each):"
        f" local p50 {pct(quiet['local'], 0.5) * 1e3:.2f} ms p99"
        f" {pct(quiet['local'], 0.99) * 1e3:.2f} ms; cross p50"
        f" {pct(quiet['cross'], 0.5) * 1e3:.2f} ms p99 {pct(quiet['cross'], 0.99) * 1e3:.2f} ms;"
        f" added p50 {(pct(quiet['cross'], 0.5) - pct(quiet['local'], 0.5)) * 1e3:.2f} ms,"
        f" p99 {(pct(quiet['cross'], 0.99) - pct(quiet['local'], 0.99)) * 1e3:.2f} ms"
    )
    await close(on_a + on_b)

    if args.broadcast_clients:
        solo, solo_port = await run.pmlb("solo", node_config("solo", up_port, None))
        results = {}
        for setup in ("one node", "two nodes"):
            if setup == "one node":
                clients = await connect(solo_port, args.broadcast_clients)
                trigger_port = solo_port
            else:
                half = args.broadcast_clients // 2
                clients = await connect(a_port, half)
                clients += await connect(b_port, args.broadcast_clients - half)
                trigger_port = a_port
            [trigger] = await connect(trigger_port, 1)
            await whoami(trigger)  # registered, as are the others by now (idle: no message)
            for client in clients[-1:]:
                await whoami(client)
            times = []
            for i in range(args.broadcasts):
                elapsed = await broadcast_time(trigger, [*clients, trigger], f"b{i}")
                times.append(elapsed)
            results[setup] = statistics.median(times)
            await close([*clients, trigger])
        await run.stop(solo)
        print(
            f"\nbroadcast to {args.broadcast_clients} clients (+1 sender), time to the last"
            f" client, median of {args.broadcasts}:"
        )
        for setup, seconds in results.items():
            print(f"  {setup:9} {seconds * 1e3:8.1f} ms")
        if results["one node"] > 0:
            print(f"  two nodes / one node: {results['two nodes'] / results['one node']:.2f}x")


async def main(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 20_000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if args.broadcast_clients + 100 > want:
        raise SystemExit(f"--broadcast-clients needs more files than the limit {want} allows")
    tmp = Path(tempfile.mkdtemp(prefix="pmlb-cc-", dir="/tmp"))
    try:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                run = Run(nursery, tmp)
                try:
                    await measure(args, run, tmp)
                finally:
                    with trio.CancelScope(shield=True):
                        await run.stop_all()
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.profile:
        import pstats

        for name in ("a", "b"):
            path = Path(args.profile) / f"{name}.prof"
            if path.exists():
                print(f"\n--- profile of node {name} (cProfile, by own time) ---")
                pstats.Stats(str(path)).sort_stats("tottime").print_stats(args.profile_lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20, help="sending clients (and partners)")
    parser.add_argument("--messages", type=int, default=250, help="per sender per round")
    parser.add_argument("--window", type=int, default=8, help="messages in flight per sender")
    parser.add_argument("--latency-messages", type=int, default=200, help="one at a time")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind, alternating")
    parser.add_argument("--upstream", choices=["grpclib", "grpcjs"], default="grpclib")
    parser.add_argument("--broadcast-clients", type=int, default=10_000, help="0: skip")
    parser.add_argument("--broadcasts", type=int, default=3)
    parser.add_argument("--profile", help="run both nodes under cProfile, stats in this directory")
    parser.add_argument("--profile-lines", type=int, default=25)
    trio.run(main, parser.parse_args())
