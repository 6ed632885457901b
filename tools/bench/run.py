"""The benchmark: pmlb beside a plain echo server and HAProxy, in one interleaved run.

Run it with ``nox -s bench`` (or ``python tools/bench/run.py``); never part of
CI. It compiles tools/bench/loadgen.c with the system gcc into a temporary
directory, starts:

- ``echo``: loadgen's plain epoll echo server (the physical limit here);
- ``haproxy``: Debian's HAProxy, ``mode tcp``, 1 thread, in front of it,
  ``haproxy-tls``: the same process terminating TLS (``bind ... ssl crt``)
  in front of the same echo server, and ``haproxy-ws``: the same process,
  ``mode http``, passing WebSocket upgrades to loadgen's WebSocket echo
  server (``wsecho``), which it then tunnels as HAProxy does;
- ``pmlb-native`` / ``pmlb-grpclib``: ``pmlb serve`` (line framing) with a
  batched h2 echo upstream (tools/bench/echo_upstream.py), one per transport.
  One upstream, because round robin over several would reorder a client's
  echoes, which the load generator checks in order; its CPU is reported to
  show it is not what limits pmlb. ``pmlb-tls`` and ``pmlb-ws`` are two more
  listeners of the pmlb-native process: TLS (line framing) and WebSocket.
  The certificate of both TLS targets is a throwaway self-signed one made by
  the ``openssl`` command at run time,

then runs each scenario against every target back to back, so that noise hits
all alike; the TLS and WebSocket scenarios run the plain TCP targets beside
their own, for the "TLS ÷ plain TCP" ratio within one sitting. CPU is read
from /proc/PID/stat between the load generator's "go" and "end", so it covers
only the measured window (the load generator's TLS and WebSocket work is its
own process's). Prints the README's table, with each target's ratio to the
HAProxy of its protocol, and writes the figures as JSON (``--output``,
default bench-results.json), the same table beside it (``.md``) and, when
matplotlib is installed (the nox bench session installs it), a chart of pmlb
CPU per message and p99 against HAProxy per scenario (``--chart``, default
beside the JSON as ``.png``). ``--from-json FILE`` renders the table and the
chart again from a run's JSON without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
STARTUP_TIMEOUT = 30.0
SCENARIOS = ("throughput", "latency", "tls", "websocket", "idle", "broadcast", "max", "accept")
#: the protocol each target's clients speak (default "tcp")
PROTOCOLS = {"haproxy-tls": "tls", "pmlb-tls": "tls", "haproxy-ws": "ws", "pmlb-ws": "ws"}
#: the HAProxy each target is compared with: the one speaking its protocol
BASELINES = {
    "haproxy-tls": "haproxy-tls",
    "pmlb-tls": "haproxy-tls",
    "haproxy-ws": "haproxy-ws",
    "pmlb-ws": "haproxy-ws",
}
#: the scenario name prefixes of the TLS and WebSocket runs
SCENARIO_PROTOCOLS = {"TLS ": "tls", "WebSocket ": "ws"}
#: (connections, messages in flight) of the TLS and WebSocket runs: the issue's two targets
PROTOCOL_SHAPES = ((100, 1), (1000, 16))
TIMES = "\N{MULTIPLICATION SIGN}"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def baseline_of(name: str) -> str:
    """The HAProxy target a target's figures are divided by (its protocol's)."""
    return BASELINES.get(name, "haproxy")


def scenario_protocol(scenario: str) -> str:
    for prefix, proto in SCENARIO_PROTOCOLS.items():
        if scenario.startswith(prefix):
            return proto
    return "tcp"


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway self-signed certificate for localhost: (cert, key, both in one PEM)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    both = directory / "haproxy.pem"
    both.write_text(cert.read_text() + key.read_text())
    return cert, key, both


def build_loadgen(out: Path) -> bool:
    """Compile loadgen.c to ``out``; True with TLS (OpenSSL), False without."""
    source = str(HERE / "loadgen.c")
    tls = subprocess.run(
        ["gcc", "-O2", "-o", str(out), source, "-lssl", "-lcrypto"], capture_output=True, text=True
    )
    if tls.returncode == 0:
        return True
    print(
        "loadgen built without TLS (no OpenSSL headers? apt-get install libssl-dev):\n"
        + tls.stderr[-2000:],
        file=sys.stderr,
    )
    subprocess.run(["gcc", "-O2", "-DNO_TLS", "-o", str(out), source], check=True)
    return False


def pmlb_config(port: int, tls_port: int | None, ws_port: int, cert: Path, key: Path) -> str:
    """pmlb-native's configuration: the plain listener, then the TLS and WebSocket ones."""
    text = f"""[server]
host = "127.0.0.1"
port = {port}
framing = "line"
"""
    if tls_port is not None:
        text += f"""
[[listener]]
name = "tls"
host = "127.0.0.1"
port = {tls_port}
framing = "line"
transport = "tls"
tls_cert = "{cert}"
tls_key = "{key}"
"""
    # no pings within a run: the load generator answers none
    text += f"""
[[listener]]
name = "websocket"
host = "127.0.0.1"
port = {ws_port}
transport = "websocket"
ping_interval = 3600
ping_timeout = 3600
"""
    return text


class Target:
    def __init__(
        self, name: str, port: int, pid: int, helpers: list[int] | None = None, proto: str = "tcp"
    ) -> None:
        self.name = name
        self.port = port
        self.pid = pid
        #: processes serving the target that are not the proxy (upstreams)
        self.helpers = helpers or []
        #: what the load generator speaks to it: "tcp", "tls" or "ws"
        self.proto = proto


class Bench:
    def __init__(
        self, build: Path, seconds: float, upstreams: int = 1, tls: bool = True, warmup: float = 0
    ) -> None:
        self.upstreams = upstreams
        #: seconds of load before each measured window of the scenarios (not of the probes)
        self.warmup = warmup
        #: the load generator speaks TLS (built with OpenSSL)
        self.tls = tls
        self.build = build
        self.seconds = seconds
        self.loadgen = str(build / "loadgen")
        self.procs: list[subprocess.Popen[Any]] = []
        self.targets: dict[str, Target] = {}

    def start(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(args, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()

    def start_targets(self, haproxy: str | None) -> None:
        echo = self.start([self.loadgen, "echo", "0"], stdout=subprocess.PIPE, text=True)
        assert echo.stdout is not None
        echo_port = int(echo.stdout.readline().split()[1])
        self.targets["echo"] = Target("echo", echo_port, echo.pid)
        cert, key, both = make_certificate(self.build)
        if haproxy:
            port, tls_port, ws_port = free_port(), free_port(), free_port()
            cfg = self.build / "haproxy.cfg"
            tls_frontend = ws_frontend = ""
            if self.tls:  # loadgen's TLS and its WebSocket echo server need OpenSSL
                tls_frontend = (
                    f"frontend ftls\n  bind 127.0.0.1:{tls_port} ssl crt {both}\n"
                    "  default_backend b\n"
                )
                wsecho = self.start(
                    [self.loadgen, "wsecho", "0"], stdout=subprocess.PIPE, text=True
                )
                assert wsecho.stdout is not None
                wsecho_port = int(wsecho.stdout.readline().split()[1])
                ws_frontend = (
                    f"frontend fws\n  mode http\n  bind 127.0.0.1:{ws_port}\n"
                    "  default_backend bws\n"
                    f"backend bws\n  mode http\n  server wsecho 127.0.0.1:{wsecho_port}\n"
                )
            cfg.write_text(
                "global\n  nbthread 1\n  maxconn 9500\n"
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n"
                "  timeout server 120s\n  maxconn 9500\n"
                f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
                f"{tls_frontend}"
                f"backend b\n  server echo 127.0.0.1:{echo_port}\n"
                f"{ws_frontend}"
            )
            proc = self.start([haproxy, "-db", "-f", str(cfg)])
            wait_port(port, proc)
            self.targets["haproxy"] = Target("haproxy", port, proc.pid)
            if self.tls:
                wait_port(tls_port, proc)
                self.targets["haproxy-tls"] = Target("haproxy-tls", tls_port, proc.pid, proto="tls")
                wait_port(ws_port, proc)
                self.targets["haproxy-ws"] = Target("haproxy-ws", ws_port, proc.pid, proto="ws")
        upstreams = []
        for _ in range(self.upstreams):
            up = self.start(
                [sys.executable, str(HERE / "echo_upstream.py")], stdout=subprocess.PIPE, text=True
            )
            assert up.stdout is not None
            upstreams.append((up.pid, int(up.stdout.readline().split()[1])))
        helpers = [pid for pid, _ in upstreams]
        for transport in ("native", "grpclib"):
            port = free_port()
            args = [
                sys.executable, "-m", "pmlb", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--framing", "line", "--log-level", "warning",
                "--upstream-transport", transport,
                # both would want the admin API's default port 8000
                "--no-admin",
            ]  # fmt: skip
            extra: dict[str, int] = {}
            if transport == "native":
                # the TLS and WebSocket listeners, beside the plain one
                extra = {"pmlb-ws": free_port()}
                if self.tls:
                    extra["pmlb-tls"] = free_port()
                config = self.build / "pmlb.toml"
                config.write_text(
                    pmlb_config(port, extra.get("pmlb-tls"), extra["pmlb-ws"], cert, key)
                )
                args += ["--config", str(config)]
            for _, up_port in upstreams:
                args += ["--upstream", f"127.0.0.1:{up_port}"]
            proc = self.start(args)
            wait_port(port, proc)
            name = f"pmlb-{transport}"
            self.targets[name] = Target(name, port, proc.pid, helpers)
            for extra_name, extra_port in extra.items():
                wait_port(extra_port, proc)
                self.targets[extra_name] = Target(
                    extra_name, extra_port, proc.pid, helpers, PROTOCOLS[extra_name]
                )
            # every upstream serving: one round trip through each
            for _ in range(2 * self.upstreams):
                self.load(self.targets[name], 2, 1, 64, 0.3, 0)
            for extra_name in extra:
                self.load(self.targets[extra_name], 2, 1, 64, 0.3, 0)

    def plain(self) -> dict[str, Target]:
        """The targets plain TCP clients talk to (every scenario but TLS and WebSocket)."""
        return {name: t for name, t in self.targets.items() if t.proto == "tcp"}

    # -- scenarios -----------------------------------------------------

    def load(
        self,
        target: Target,
        conns: int,
        depth: int,
        size: int,
        seconds: float,
        rate: float,
        warmup: float = 0,
    ) -> dict[str, Any]:
        cmd = [self.loadgen, "load", str(target.port), str(conns), str(depth), str(size)]
        cmd += [str(seconds), str(rate), target.proto, str(warmup)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        cpu0 = cpu1 = {}
        result: dict[str, Any] = {}
        pids = [target.pid, *target.helpers]
        for line in proc.stdout:
            event = json.loads(line)
            if event["event"] == "go":
                cpu0 = {pid: cpu_seconds(pid) for pid in pids}
            elif event["event"] == "end":
                cpu1 = {pid: cpu_seconds(pid) for pid in pids}
            elif event["event"] == "result":
                result = event
        if proc.wait() != 0 or not result:
            raise RuntimeError(f"load against {target.name} failed: {result}")
        messages = max(result["messages"], 1)
        result["target_cpu_s"] = round(cpu1[target.pid] - cpu0[target.pid], 3)
        result["target_us_per_msg"] = round(result["target_cpu_s"] / messages * 1e6, 2)
        result["upstream_cpu_s"] = [round(cpu1[p] - cpu0[p], 3) for p in target.helpers]
        result["loadgen_cpu_s"] = result.pop("cpu_s")
        return result

    def throughput(self, conns: int, depth: int) -> dict[str, Any]:
        return {
            name: self.load(target, conns, depth, 64, self.seconds, 0, self.warmup)
            for name, target in self.plain().items()
        }

    def latency_at_rate(self, rate: float) -> dict[str, Any]:
        return {
            name: self.load(target, 100, 1, 64, self.seconds, rate, self.warmup)
            for name, target in self.plain().items()
        }

    def protocol(self, proto: str, conns: int, depth: int) -> dict[str, Any]:
        """Saturated, like ``throughput``: the HAProxy and pmlb targets speaking ``proto``,
        each beside its plain TCP counterpart, in one sitting."""
        names = ["haproxy", "pmlb-native"]
        names += [n for n, t in self.targets.items() if t.proto == proto]
        results = {}
        for name in names:
            if name in self.targets:
                # pmlb-native and its TLS and WebSocket listeners are one process:
                # not while it still answers the previous run's messages
                self.settle(self.targets[name])
                results[name] = self.load(
                    self.targets[name], conns, depth, 64, self.seconds, 0, self.warmup
                )
        return results

    @contextmanager
    def hold(
        self, target: Target, count: int, source: str, bcast_len: int = 0
    ) -> Iterator[subprocess.Popen[str]]:
        cmd = [self.loadgen, "hold", str(target.port), str(count), source, str(bcast_len)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            yield proc
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=60)

    def settle(self, target: Target) -> None:
        """Wait until a round trip on a new connection succeeds.

        The new connection queues behind every client already connected, so
        its echo proves that the target accepted them all. A probe that got
        no echo in its 0.2 s (the target still busy, e.g. closing the
        previous scenario's clients) proves nothing: it is repeated. Without
        this, a broadcast could be sent before the last clients were
        accepted, and they missed it.
        """
        deadline = time.monotonic() + 60
        while self.load(target, 1, 1, 64, 0.2, 0)["messages"] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name}: no round trip within 60 s")

    @staticmethod
    def event(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator ended early")
        result: dict[str, Any] = json.loads(line)
        return result

    def idle(self, target: Target, count: int) -> dict[str, Any]:
        before = rss_bytes(target.pid)
        with self.hold(target, count, "127.0.0.2") as proc:
            connected = self.event(proc)
            self.settle(target)
            after = rss_bytes(target.pid)
        return {
            "clients": connected["ok"],
            "failed": connected["failed"],
            "rss_before_mb": round(before / 2**20, 1),
            "rss_after_mb": round(after / 2**20, 1),
            "rss_per_client_bytes": round((after - before) / max(connected["ok"], 1)),
        }

    def broadcast(self, target: Target, counts: list[int]) -> dict[str, Any]:
        """Clients held by several processes; one ``!bcast`` line; time until the last has it."""
        line = "!bcast " + "b" * 56  # 64 bytes with its newline
        sources = ["127.0.0.3", "127.0.0.4", "127.0.0.5"]
        before = rss_bytes(target.pid)
        holders = [
            self.hold(target, count, sources[i], len(line) + 1) for i, count in enumerate(counts)
        ]
        procs = [holder.__enter__() for holder in holders]
        try:
            connected = [self.event(proc) for proc in procs]
            ok = sum(c["ok"] for c in connected)
            self.settle(target)
            rss = rss_bytes(target.pid)
            sender = subprocess.run(
                [self.loadgen, "send", str(target.port), line],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            sent = json.loads(sender.stdout.splitlines()[0])["sent_ns"]
            done = [self.event(proc) for proc in procs]
            last = max(d["last_ns"] for d in done)
            received = sum(d["received"] for d in done)
        finally:
            for holder in holders:
                holder.__exit__(None, None, None)
        return {
            "clients": ok,
            "received": received,
            "time_to_last_ms": round((last - sent) / 1e6, 2),
            "rss_per_client_bytes": round((rss - before) / max(ok, 1)),
            "alive_after": os.path.exists(f"/proc/{target.pid}"),
        }

    def accept_rate(self, target: Target, source: str) -> dict[str, Any]:
        # not while the target still closes the previous scenario's clients
        self.settle(target)
        cpu0 = cpu_seconds(target.pid)
        out = subprocess.run(
            [self.loadgen, "accept", str(target.port), "2", "64", source],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out.stdout)
        result["target_cpu_s"] = round(cpu_seconds(target.pid) - cpu0, 3)
        result.pop("event")
        return result


def ratio(value: float, base: float | None) -> str:
    """``value / base`` as the README writes it (``9.0`` and a multiplication sign);
    ``-`` without a base."""
    if base is None or base <= 0:
        return "-"
    x = value / base
    return f"{x:.2f}{TIMES}" if x < 10 else f"{x:.1f}{TIMES}"


def ratios(by_target: dict[str, Any], name: str) -> tuple[str, str]:
    """A target's CPU per message and p99, each divided by its HAProxy's in that scenario."""
    base = by_target.get(baseline_of(name))
    r = by_target[name]
    if base is None or not base.get("messages", 1) or not r.get("messages", 1):
        return "-", "-"  # no baseline, or a run without a single echo
    return (
        ratio(r["target_us_per_msg"], base["target_us_per_msg"]),
        ratio(r["p99_us"], base["p99_us"]),
    )


def header(results: dict[str, Any]) -> list[str]:
    """The two lines above the README's table."""
    load = results.get("load_average")
    quiet = f", load average {load} when the run started" if load is not None else ""
    return [
        f"- date: {results['date']}; machine: {results['machine']}{quiet};",
        f"- command: `{results['command']}` ({results.get('wall_seconds', '?')} s).",
    ]


def table(results: dict[str, Any]) -> str:
    """The README's benchmark tables, ready to paste."""
    lines = [
        *header(results),
        "",
        "| scenario | target | msgs/s | p50 µs | p99 µs | max µs | target CPU µs/msg "
        "| CPU ÷ HAProxy | p99 ÷ HAProxy "
        "| upstream CPU s | loadgen CPU s | echoes per conn., least-most |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, by_target in results["throughput"].items():
        for name, r in by_target.items():
            cpu_ratio, p99_ratio = ratios(by_target, name)
            # no echo in the window: the CPU was not spent on messages that came back
            per_msg = r["target_us_per_msg"] if r.get("messages", 1) else "- (no echo)"
            lines.append(
                f"| {scenario} | {name} | {r['msgs_per_s']:,.0f} | {r['p50_us']} | {r['p99_us']} "
                f"| {r['max_us']} | {per_msg} | {cpu_ratio} | {p99_ratio} "
                f"| {'+'.join(str(c) for c in r['upstream_cpu_s']) or '-'} | {r['loadgen_cpu_s']} "
                f"| {r['least_served']}-{r['most_served']} |"
            )
    lines.append("")
    lines += ["| derived | value |", "|---|---:|"]
    for key, value in results["derived"].items():
        lines.append(f"| {key} | {value} |")
    lines.append("")
    lines += [
        "| clients | target | clients held | RSS per client | other |",
        "|---|---|---:|---:|---|",
    ]
    for key, r in results["clients"].items():
        other = ", ".join(
            f"{k}={v}" for k, v in r.items() if k not in ("clients", "rss_per_client_bytes")
        )
        lines.append(
            f"| {key} | | {r['clients']} | {r.get('rss_per_client_bytes', '-')} B | {other} |"
        )
    lines.append("")
    lines += ["| accept rate | conns/s | target CPU s |", "|---|---:|---:|"]
    for name, r in results["accept"].items():
        lines.append(f"| {name} | {r['per_s']:,.0f} | {r['target_cpu_s']} |")
    return "\n".join(lines)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not numbers: {text!r}") from None
    if not all(rate > 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"rates must be > 0: {text!r}")
    return rates


def chart_rows(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], Any]]:
    """(scenario, pmlb target, its figures, its HAProxy's or None) for the chart.

    The pmlb targets of each scenario's own protocol (pmlb-native in the
    plain scenarios, pmlb-tls in the TLS ones...), grpclib left out.
    """
    rows = []
    for scenario, by_target in results["throughput"].items():
        proto = scenario_protocol(scenario)
        for name, r in by_target.items():
            ours = name.startswith("pmlb-") and name != "pmlb-grpclib"
            if ours and PROTOCOLS.get(name, "tcp") == proto and r.get("messages", 1):
                base = by_target.get(baseline_of(name))
                rows.append((scenario, name, r, base if base and base.get("messages", 1) else None))
    return rows


def chart(results: dict[str, Any], path: Path) -> bool:
    """pmlb CPU per message and p99 against HAProxy, per scenario, as a PNG.

    False (and a note) without matplotlib: it is the bench session's, never
    pmlb's dependency.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no chart: matplotlib is not installed (nox -s bench installs it)", file=sys.stderr)
        return False
    rows = chart_rows(results)
    if not rows:
        return False
    labels = [f"{scenario}\n{name}" for scenario, name, _, _ in rows]
    xs = range(len(rows))
    width = 0.4
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(rows) + 2), 8), sharex=True)
    for ax, key, title in (
        (axes[0], "target_us_per_msg", "CPU µs per round-tripped message"),
        (axes[1], "p99_us", "p99 latency, µs"),
    ):
        pmlb = [r[key] for _, _, r, _ in rows]
        base = [b[key] if b else 0 for _, _, _, b in rows]
        ax.bar([x - width / 2 for x in xs], pmlb, width, label="pmlb", color="tab:blue")
        ax.bar([x + width / 2 for x in xs], base, width, label="HAProxy", color="tab:gray")
        for x, value, b in zip(xs, pmlb, base, strict=True):
            if b:
                ax.annotate(ratio(value, b), (x - width / 2, value), ha="center", va="bottom")
        ax.set_yscale("log")
        ax.set_ylim(top=max([*pmlb, *base, 1]) * 6)  # room for the ratios and the legend
        ax.set_ylabel(title)
        ax.legend(loc="upper left", ncols=2, fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[1].set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    fig.suptitle(f"pmlb beside HAProxy (ratio above each pmlb bar), {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(results: dict[str, Any], output: Path, chart_path: Path | None) -> None:
    """The table on stdout and beside the JSON (``.md``), and the chart."""
    text = table(results)
    output.with_suffix(".md").write_text(text + "\n")
    print(text)
    made = chart_path is not None and chart(results, chart_path)
    print(
        f"\n(JSON: {output}; table: {output.with_suffix('.md')}"
        + (f"; chart: {chart_path}" if made else "")
        + f"; {results.get('wall_seconds', '?')} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="seconds of load before each measured window, left out of its figures "
        "(default 0: the window starts with the first burst, as in the README's runs)",
    )
    parser.add_argument(
        "--rates",
        type=_rates,
        default="1000,5000",
        help="offered msgs/s of the latency runs, comma-separated",
    )
    parser.add_argument("--output", default="bench-results.json")
    parser.add_argument(
        "--chart", help="the chart's PNG (default: beside --output, .png); 'none': no chart"
    )
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        help="render the table and chart of a finished run's JSON, run nothing",
    )
    parser.add_argument("--max-clients", type=int, default=19_500)
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    if only - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(only - set(SCENARIOS)))}")
    if args.from_json:
        source = Path(args.from_json)
        done: dict[str, Any] = json.loads(source.read_text())
        done["derived"] = derived(done)  # as this version of the script derives them
        chart_path = (
            None if args.chart == "none" else Path(args.chart or source.with_suffix(".png"))
        )
        write_outputs(done, source, chart_path)
        return
    output = Path(args.output)
    chart_path = None if args.chart == "none" else Path(args.chart or output.with_suffix(".png"))

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    haproxy = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if haproxy is None:
        print("haproxy not found (apt-get install haproxy); running without it", file=sys.stderr)
    build = Path(tempfile.mkdtemp(prefix="pmlb-bench-"))
    tls = build_loadgen(build / "loadgen")
    if not tls and "tls" in only:
        print("TLS scenarios skipped: the load generator has no TLS", file=sys.stderr)
        only.discard("tls")
    bench = Bench(build, args.seconds, tls=tls, warmup=args.warmup)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or ''} "
        f"{_cpu_model()}, Linux {platform.release()}, Python {platform.python_version()}",
        "command": "nox -s bench -- " + " ".join(sys.argv[1:]),
        "open_files_limit": hard,
        "load_average": round(os.getloadavg()[0], 1),
    }
    started = time.monotonic()
    try:
        bench.start_targets(haproxy)
        results["throughput"] = {}
        if "throughput" in only:
            for conns, depth in [(100, 1), (100, 16), (1000, 1), (1000, 16)]:
                key = f"C={conns} D={depth}"
                print(f"throughput {key} ...", file=sys.stderr)
                results["throughput"][key] = bench.throughput(conns, depth)
        if "latency" in only:
            for rate in args.rates:
                key = f"C=100 D=1 at {rate:.0f}/s"
                print(f"latency {key} ...", file=sys.stderr)
                results["throughput"][key] = bench.latency_at_rate(rate)
        for scenario, proto in (("tls", "tls"), ("websocket", "ws")):
            if scenario not in only:
                continue
            prefix = next(p for p, q in SCENARIO_PROTOCOLS.items() if q == proto)
            for conns, depth in PROTOCOL_SHAPES:
                key = f"{prefix}C={conns} D={depth}"
                print(f"{key} ...", file=sys.stderr)
                results["throughput"][key] = bench.protocol(proto, conns, depth)
        targets = bench.targets
        results["clients"] = {}
        if "idle" in only:
            print("idle clients ...", file=sys.stderr)
            if "haproxy" in targets:
                # HAProxy needs two descriptors per client: 9,000 fit its limit.
                results["clients"]["idle 9k: haproxy"] = bench.idle(targets["haproxy"], 9000)
            results["clients"]["idle 10k: pmlb-native"] = bench.idle(targets["pmlb-native"], 10_000)
        if "broadcast" in only:
            print("broadcast ...", file=sys.stderr)
            results["clients"]["broadcast 10k: pmlb-native"] = bench.broadcast(
                targets["pmlb-native"], [10_000]
            )
        if "max" in only:
            print("max clients ...", file=sys.stderr)
            half = args.max_clients // 2
            results["clients"][f"max {args.max_clients}: pmlb-native"] = bench.broadcast(
                targets["pmlb-native"], [half, args.max_clients - half]
            )
        results["accept"] = {}
        if "accept" in only:
            print("accept rate ...", file=sys.stderr)
            names = [n for n in ("echo", "haproxy", "pmlb-native") if n in targets]
            for i, name in enumerate(names):
                results["accept"][name] = bench.accept_rate(targets[name], f"127.0.1.{i + 1}")
    finally:
        bench.stop_all()
        shutil.rmtree(build, ignore_errors=True)
    results["wall_seconds"] = round(time.monotonic() - started)
    results["derived"] = derived(results)
    output.write_text(json.dumps(results, indent=2) + "\n")
    write_outputs(results, output, chart_path)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def derived(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, as ratios within this run."""
    out: dict[str, Any] = {}
    t = results["throughput"]
    big = t.get("C=1000 D=16", {})
    if "haproxy" in big:
        out["pmlb-native µs/msg ÷ haproxy µs/msg, C=1000 D=16"] = round(
            big["pmlb-native"]["target_us_per_msg"]
            / max(big["haproxy"]["target_us_per_msg"], 1e-9),
            1,
        )
    for key, by in t.items():
        if "pmlb-native" not in by or "pmlb-grpclib" not in by:
            continue
        n, g = by["pmlb-native"], by["pmlb-grpclib"]
        per_cpu = [r["messages"] / max(r["target_cpu_s"], 1e-9) for r in (n, g)]
        if per_cpu[1] > 0:  # grpclib may get no echo at all in a short run
            out[f"native ÷ grpclib msgs per pmlb CPU second, {key}"] = round(
                per_cpu[0] / per_cpu[1], 2
            )
    for key, by in t.items():
        if "haproxy" in by and "pmlb-native" in by and scenario_protocol(key) == "tcp":
            out[f"pmlb-native p99 ÷ haproxy p99, {key}"] = round(
                by["pmlb-native"]["p99_us"] / max(by["haproxy"]["p99_us"], 1), 2
            )
    # the target: TLS and WebSocket clients at most twice plain TCP's CPU per message
    for key, by in t.items():
        by = {name: r for name, r in by.items() if r.get("messages", 1)}  # had echoes
        for name in ("pmlb-tls", "pmlb-ws"):
            if name in by and "pmlb-native" in by:
                out[f"{name} µs/msg ÷ pmlb-native µs/msg, {key}"] = round(
                    by[name]["target_us_per_msg"]
                    / max(by["pmlb-native"]["target_us_per_msg"], 1e-9),
                    2,
                )
            base = baseline_of(name)
            if name in by and base in by:
                out[f"{name} p99 ÷ {base} p99, {key}"] = round(
                    by[name]["p99_us"] / max(by[base]["p99_us"], 1), 2
                )
    return out


if __name__ == "__main__":
    main()
