"""Where pmlb's CPU per message goes: ``pmlb serve`` under cProfile, under load.

Starts the benchmark's echo upstream (tools/bench/echo_upstream.py) and one
``pmlb serve`` (native transport, line framing, logs at warning) run by
``python -m cProfile``, loads it with loadgen (``--clients`` connections,
``--depth`` 64 B lines in flight each, for ``--seconds``), stops it with
SIGINT (it drains and exits, and cProfile writes its figures), then prints
the functions with the most time of their own, each as microseconds per
round-tripped message, and the share of the whole process by module.
With ``--accept``, the load is loadgen's accept scenario instead (connect
and reset, as fast as it can, as the benchmark's accept rate measures) and
the figures are per connection. With ``--protocol tls`` or ``ws``, the
clients speak TLS or WebSocket to pmlb's listener of that kind (the
benchmark's configuration, a throwaway self-signed certificate).

cProfile makes every Python call dearer (about twice the time), so the
figures say where the time goes, not what it is without the profiler. Never
part of CI; about a minute.

    python tools/bench/profile_serve.py --clients 1000 --depth 16 --seconds 5
    python tools/bench/profile_serve.py --accept --seconds 2
    python tools/bench/profile_serve.py --protocol tls --clients 100 --depth 1
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    HERE,
    Bench,
    Target,
    build_loadgen,
    free_port,
    make_certificate,
    pmlb_config,
    wait_port,
)


def group(filename: str) -> str:
    """A module-level name for a profiled function's file: pmlb's modules, else the package."""
    path = Path(filename)
    parts = path.parts
    if "pmlb" in parts:
        return "pmlb/" + "/".join(parts[parts.index("pmlb") + 1 :])
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C)"
    return path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--accept", action="store_true", help="profile accepting connections")
    parser.add_argument("--keep", type=Path, help="also write the cProfile figures to this file")
    parser.add_argument("--protocol", choices=("tcp", "tls", "ws"), default="tcp")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    build = Path(tempfile.mkdtemp(prefix="pmlb-profile-"))
    bench = Bench(build, args.seconds, tls=build_loadgen(build / "loadgen"))
    out = build / "serve.prof"
    up = subprocess.Popen(
        [sys.executable, str(HERE / "echo_upstream.py")], stdout=subprocess.PIPE, text=True
    )
    assert up.stdout is not None
    up_port = int(up.stdout.readline().split()[1])
    port, ports = free_port(), {"tls": free_port(), "ws": free_port()}
    config = build / "pmlb.toml"
    cert, key, _ = make_certificate(build)
    config.write_text(pmlb_config(port, ports["tls"], ports["ws"], cert, key))
    serve = subprocess.Popen(
        [
            sys.executable, "-m", "cProfile", "-o", str(out), "-m", "pmlb", "serve",
            "--config", str(config), "--log-level", "warning",
            "--upstream-transport", "native", "--no-admin",
            "--upstream", f"127.0.0.1:{up_port}",
        ],
        env=os.environ,
    )  # fmt: skip
    try:
        wait_port(port, serve)
        target = Target("pmlb", ports.get(args.protocol, port), serve.pid, [up.pid], args.protocol)
        bench.load(target, 2, 1, 64, 0.3, 0)  # connected to its upstream
        if args.accept:
            accepted = bench.accept_rate(target, "127.0.1.1")
        else:
            result = bench.load(target, args.clients, args.depth, 64, args.seconds, 0)
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)
    finally:
        for proc in (serve, up):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        bench.stop_all()
    if args.accept:
        messages, unit = accepted["connections"], "conn."
        print(f"{messages} connections accepted ({accepted['per_s']}/s under the profiler)")
    else:
        messages, unit = result["messages"], "msg"
        print(
            f"{messages} messages round-tripped in {args.seconds} s; pmlb CPU per message"
            f" under the profiler: {result['target_us_per_msg']:.2f} µs"
        )
    stats = pstats.Stats(str(out))
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in raw.values())
    by_group: collections.Counter[str] = collections.Counter()
    for (filename, _, _), (_, _, tt, _, _) in raw.items():
        by_group[group(filename)] += tt
    print(f"\nwhole process: {total:.2f} s of own time under the profiler\n")
    print(f"| module | share | µs/{unit} under cProfile |\n|---|---:|---:|")
    for name, tt in by_group.most_common(args.top):
        print(f"| {name} | {100 * tt / total:.1f}% | {1e6 * tt / messages:.2f} |")
    print(f"\n| function | calls/{unit} | share | µs/{unit} under cProfile |\n|---|---:|---:|---:|")
    rows = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[: args.top]
    for (filename, line, name), (_, calls, tt, _, _) in rows:
        where = f"{group(filename)}:{line} {name}"
        share, us = 100 * tt / total, 1e6 * tt / messages
        print(f"| `{where}` | {calls / messages:.2f} | {share:.1f}% | {us:.2f} |")
    if args.keep:
        shutil.copyfile(out, args.keep)
    shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    main()
