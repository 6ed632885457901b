"""``pmlb serve --workers 2`` beside one pmlb process, same load, interleaved in one run.

    python tools/bench/workers.py [--seconds 5] [--rounds 3] [--output workers-bench.json]

Compiles tools/bench/loadgen.c, starts one batched echo upstream
(tools/bench/echo_upstream.py) and two pmlb on it: ``one`` (a plain ``pmlb
serve``, one process) and ``workers-2`` (``--workers 2``: a parent and two
workers). Then, for each round and each load shape, it runs the load
generator against each target back to back, so that what else the shared
machine does hits both alike. CPU is read from /proc between the load
generator's "go" and "end": pmlb's is the sum over every process of the
target (parent and workers), beside the upstream's and the load
generator's own. Bounded: rounds x shapes x 2 targets x seconds (about
2 minutes by default). Prints a table (medians over the rounds) and writes
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import build_loadgen, cpu_seconds, free_port, wait_port  # noqa: E402

#: (connections, messages in flight per connection)
SHAPES = [(100, 16), (1000, 1)]


def family(pid: int) -> list[int]:
    """``pid`` and its children (a --workers parent's workers)."""
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def load(
    loadgen: str, port: int, pids: list[int], upstream: int, conns: int, depth: int, seconds: float
) -> dict[str, Any]:
    cmd = [loadgen, "load", str(port), str(conns), str(depth), "64", str(seconds), "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    watched = [*pids, upstream]
    cpu0: dict[int, float] = {}
    cpu1: dict[int, float] = {}
    result: dict[str, Any] = {}
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "go":
            cpu0 = {pid: cpu_seconds(pid) for pid in watched}
        elif event["event"] == "end":
            cpu1 = {pid: cpu_seconds(pid) for pid in watched}
        elif event["event"] == "result":
            result = event
    if proc.wait() != 0 or not result:
        raise RuntimeError(f"load against port {port} failed: {result}")
    messages = max(result["messages"], 1)
    pmlb_cpu = sum(cpu1[p] - cpu0[p] for p in pids)
    return {
        "msgs_per_s": result["msgs_per_s"],
        "p50_us": result["p50_us"],
        "p99_us": result["p99_us"],
        "pmlb_cpu_s": round(pmlb_cpu, 3),
        "pmlb_us_per_msg": round(pmlb_cpu / messages * 1e6, 2),
        "pmlb_cpu_by_process_s": [round(cpu1[p] - cpu0[p], 3) for p in pids],
        "upstream_cpu_s": round(cpu1[upstream] - cpu0[upstream], 3),
        "loadgen_cpu_s": result["cpu_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per load run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="workers-bench.json")
    args = parser.parse_args()
    build = Path(tempfile.mkdtemp(prefix="pmlb-workers-bench-"))
    procs: list[subprocess.Popen[Any]] = []
    try:
        loadgen = str(build / "loadgen")
        build_loadgen(Path(loadgen))
        up = subprocess.Popen(
            [sys.executable, str(HERE / "echo_upstream.py")], stdout=subprocess.PIPE, text=True
        )
        procs.append(up)
        assert up.stdout is not None
        up_port = int(up.stdout.readline().split()[1])
        targets: dict[str, tuple[int, subprocess.Popen[Any]]] = {}
        for name, extra in (("one", []), ("workers-2", ["--workers", "2"])):
            port = free_port()
            command = [
                sys.executable, "-m", "pmlb", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--framing", "line", "--log-level", "warning",
                "--no-admin", "--upstream", f"127.0.0.1:{up_port}", *extra,
            ]  # fmt: skip
            proc = subprocess.Popen(command)
            procs.append(proc)
            wait_port(port, proc)
            targets[name] = (port, proc)
        for port, proc in targets.values():  # every worker's stream serving
            deadline = time.monotonic() + 30
            while True:
                try:
                    load(loadgen, port, family(proc.pid), up.pid, 20, 1, 0.5)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for round_ in range(args.rounds):
            for conns, depth in SHAPES:
                key = f"C={conns} D={depth}"
                for name, (port, proc) in targets.items():
                    print(f"round {round_ + 1}: {key} {name} ...", file=sys.stderr)
                    run = load(loadgen, port, family(proc.pid), up.pid, conns, depth, args.seconds)
                    runs.setdefault(key, {}).setdefault(name, []).append(run)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(build, ignore_errors=True)
    summary: dict[str, Any] = {}
    lines = [
        "| load | target | msgs/s | pmlb CPU µs/msg | pmlb CPU s | upstream CPU s"
        " | loadgen CPU s | p50 µs | p99 µs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, by_target in runs.items():
        summary[key] = {}
        for name, results in by_target.items():
            median = {
                field: statistics.median(r[field] for r in results)
                for field in (
                    "msgs_per_s", "pmlb_us_per_msg", "pmlb_cpu_s", "upstream_cpu_s",
                    "loadgen_cpu_s", "p50_us", "p99_us",
                )
            }  # fmt: skip
            summary[key][name] = median
            lines.append(
                f"| {key} | {name} | {median['msgs_per_s']:,.0f} | {median['pmlb_us_per_msg']}"
                f" | {median['pmlb_cpu_s']} | {median['upstream_cpu_s']}"
                f" | {median['loadgen_cpu_s']} | {median['p50_us']} | {median['p99_us']} |"
            )
        one, two = summary[key]["one"], summary[key]["workers-2"]
        summary[key]["ratio"] = {
            "msgs_per_s": round(two["msgs_per_s"] / one["msgs_per_s"], 2),
            "pmlb_us_per_msg": round(two["pmlb_us_per_msg"] / one["pmlb_us_per_msg"], 2),
        }
    output = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, Linux {platform.release()},"
        f" Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end",
        "command": "python tools/bench/workers.py " + " ".join(sys.argv[1:]),
        "runs": runs,
        "summary": summary,
    }
    Path(args.output).write_text(json.dumps(output, indent=2) + "\n")
    print("\n".join(lines))
    for key in runs:
        print(f"{key}: workers-2 / one = {summary[key]['ratio']}")


if __name__ == "__main__":
    main()
