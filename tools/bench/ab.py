"""A/B of ``pmlb serve`` variants in one sitting: the same load, alternating.

Each ``--variant NAME[:VAR=VALUE,...]`` is a ``pmlb serve`` (native
transport, line framing) run with those environment variables, for
example ``PMLB_TCP_READER=task`` (a reader task per client) or
``PYTHONPATH=/tmp/other-tree`` (another copy of the code). Each round
starts one echo upstream (tools/bench/echo_upstream.py) and every variant
in front of it, then loads each in turn (the order alternating between
rounds), ``--rounds`` times, and prints each round and the medians: pmlb
CPU per round-tripped message (``--clients`` clients, ``--depth`` in
flight each, 64 B lines) and, with ``--idle N``, the RSS per idle client
with N clients held. Without ``--variant``: the two plain-TCP readers, a
task per client against the shared reader (the default). Never part of CI.

    python tools/bench/ab.py --rounds 5 --seconds 4 --idle 10000
    python tools/bench/ab.py --variant main:PYTHONPATH=/tmp/main --variant new:PYTHONPATH=.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import HERE, Bench, Target, build_loadgen, free_port, wait_port

READERS = ["task:PMLB_TCP_READER=task", "shared"]


def variant(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME[:VAR=VALUE,...]`` as its name and environment variables."""
    name, _, assignments = spec.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--idle", type=int, default=0, help="idle clients to hold (0: none)")
    parser.add_argument(
        "--variant", action="append", help="NAME[:VAR=VALUE,...] (repeat; default: the readers)"
    )
    args = parser.parse_args()
    variants = dict(variant(spec) for spec in args.variant or READERS)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    build = Path(tempfile.mkdtemp(prefix="pmlb-ab-"))
    bench = Bench(build, args.seconds, tls=build_loadgen(build / "loadgen"))
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    rss: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for round_ in range(args.rounds):
            # Fresh processes each round: the RSS a process grew to stays
            # (and the echo upstream ends with the first pmlb killed).
            up = subprocess.Popen(
                [sys.executable, str(HERE / "echo_upstream.py")], stdout=subprocess.PIPE, text=True
            )
            assert up.stdout is not None
            up_port = int(up.stdout.readline().split()[1])
            targets, procs = {}, [up]
            for name, env in variants.items():
                port = free_port()
                args_ = [
                    sys.executable, "-m", "pmlb", "serve", "--host", "127.0.0.1",
                    "--port", str(port), "--framing", "line", "--log-level", "warning",
                    "--upstream-transport", "native", "--no-admin",
                    "--upstream", f"127.0.0.1:{up_port}",
                ]  # fmt: skip
                # cwd: not a source tree, so that a PYTHONPATH variant is the pmlb imported
                proc = subprocess.Popen(args_, env={**os.environ, **env}, cwd=build)
                procs.append(proc)
                wait_port(port, proc)
                targets[name] = Target(name, port, proc.pid, [up.pid])
                bench.load(targets[name], 2, 1, 64, 0.3, 0)
            try:
                names = list(variants)
                for name in names if round_ % 2 == 0 else reversed(names):
                    line = f"round {round_}: {name:6}"
                    if args.idle:
                        held = bench.idle(targets[name], args.idle)
                        rss[name].append(held["rss_per_client_bytes"])
                        line += f"  idle {held['clients']}: {held['rss_per_client_bytes']} B/client"
                    target = targets[name]
                    result = bench.load(target, args.clients, args.depth, 64, args.seconds, 0)
                    cpu[name].append(result["target_us_per_msg"])
                    line += f"  {result['target_us_per_msg']:6.2f} µs/msg"
                    line += f"  {result['messages'] / args.seconds:9.0f} msg/s"
                    print(line, flush=True)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
    finally:
        bench.stop_all()
        shutil.rmtree(build, ignore_errors=True)
    for name in variants:
        line = f"median {name:6} {statistics.median(cpu[name]):6.2f} µs/msg"
        if rss[name]:
            line += f"  idle {statistics.median(rss[name]):.0f} B/client"
        print(line)


if __name__ == "__main__":
    main()
