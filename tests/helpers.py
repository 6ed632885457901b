"""Real processes and real sockets for end-to-end tests.

Nothing here sleeps to wait: tests wait for a line a process prints (its
readiness line, a log event) or for bytes on a socket, each under a deadline.
"""

from __future__ import annotations

import ctypes
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parents[1]
UPSTREAMS = ROOT / "tests" / "upstreams"
#: generous: a loaded CI machine may take seconds to start an interpreter
TIMEOUT = 30.0
GRPCJS = UPSTREAMS / "grpcjs"


#: for tests that need the grpc-js upstream: skipped only where Node.js is not
#: installed at all, and never under .ci/run (which installs it and sets
#: PMLB_TEST_REQUIRE_NODE): there a missing node fails them.
needs_node = pytest.mark.skipif(
    shutil.which("node") is None and not os.environ.get("PMLB_TEST_REQUIRE_NODE"),
    reason="Node.js (node) is not installed: the grpc-js upstream cannot run",
)


def node() -> str:
    """The Node.js interpreter for the grpc-js upstream, with its packages installed."""
    path = shutil.which("node")
    if path is None:
        raise AssertionError("node not found: install Node.js (.ci/run does)")
    if not (GRPCJS / "node_modules" / "@grpc" / "grpc-js").is_dir():
        raise AssertionError(f"@grpc/grpc-js is not installed: run npm ci --prefix {GRPCJS}")
    return path


class Proc:
    """A child process whose output lines are collected as they come."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.popen = popen
        assert popen.stdout is not None
        self._stdout = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
        popen.stdout.close()
        # A pidfd turns readable when the process exits: waiting needs no polling.
        self._pidfd = os.pidfd_open(popen.pid)
        self.lines: list[str] = []
        self._changed = trio.lowlevel.ParkingLot()
        self.closed = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()

    async def pump(self) -> None:
        buffer = b""
        async with self._stdout:
            while data := await self._stdout.receive_some(65536):
                buffer += data
                *complete, buffer = buffer.split(b"\n")
                if complete:
                    self.lines += [line.decode(errors="replace") for line in complete]
                    self._changed.unpark_all()
        self.closed = True
        self._changed.unpark_all()

    def mark(self) -> int:
        """A position in the output: wait_for(after=mark) ignores what came before."""
        return len(self.lines)

    async def wait_for(
        self, pattern: str, *, after: int = 0, timeout: float = TIMEOUT
    ) -> re.Match[str]:
        """The first output line after ``after`` that matches ``pattern``."""
        regex = re.compile(pattern)
        seen = after
        with trio.move_on_after(timeout):
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                if self.closed:
                    break
                await self._changed.park()
        tail = "\n".join(self.lines[-30:])
        raise AssertionError(f"{self.name}: no line matching {pattern!r}; last output:\n{tail}")

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    async def wait(self, timeout: float = TIMEOUT) -> int:
        with trio.fail_after(timeout):
            while (code := self.popen.poll()) is None:
                await trio.lowlevel.wait_readable(self._pidfd)
        return code

    def close(self) -> None:
        os.close(self._pidfd)


def _spawn(args: Sequence[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    # Started here, on the test's own thread, not through trio's open_process:
    # that one forks from a worker thread, and PR_SET_PDEATHSIG fires when the
    # forking *thread* ends, which trio's thread cache does after 10 idle
    # seconds: children were killed mid-test.
    return subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        preexec_fn=_die_with_parent,
    )


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # Linux: SIGKILL this child when the test runner dies, even if pytest is
    # killed before its fixtures can stop what it started.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # Ctrl-C as in a terminal: a shell starts a background job (`.ci/run &`)
    # with SIGINT ignored, which its children inherit, so a test's SIGINT
    # would do nothing. (libc's signal(): this runs between fork and exec.)
    libc.signal(signal.SIGINT, signal.SIG_DFL)


PR_SET_PDEATHSIG = 1


class Processes:
    """Starts processes for one test and stops them (by PID) at its end."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._procs: list[Proc] = []
        self._clients: list[LineClient] = []
        #: passed to every ``pmlb serve`` as ``--upstream-transport`` when set
        self.upstream_transport: str | None = None
        self._streams: list[trio.abc.AsyncResource] = []

    @property
    def started(self) -> list[Proc]:
        """Every process started, in order."""
        return list(self._procs)

    def on_close(self, resource: trio.abc.AsyncResource) -> None:
        """Close ``resource`` at the end of the test."""
        self._streams.append(resource)

    async def client(self, port: int) -> LineClient:
        """A line client connected to ``port`` (closed at the end of the test)."""
        client = LineClient(await trio.open_tcp_stream("127.0.0.1", port))
        self._clients.append(client)
        return client

    async def start(
        self, name: str, args: Sequence[str], env: dict[str, str] | None = None
    ) -> Proc:
        proc = Proc(name, _spawn(args, env))
        self._procs.append(proc)
        self._nursery.start_soon(proc.pump)
        return proc

    async def upstream(
        self,
        name: str,
        *,
        kind: str = "grpclib",
        port: int = 0,
        ready: bool = True,
        extra: Sequence[str] = (),
    ) -> tuple[Proc, int]:
        """A scripted test upstream (see tests/upstreams/script.py); returns it and its port.

        ``kind`` is ``grpclib``, ``grpcio`` or ``grpcjs`` (Node.js, tests/upstreams/grpcjs).
        """
        if kind == "grpcjs":
            program = [node(), str(GRPCJS / "upstream.js")]
        else:
            program = [sys.executable, str(UPSTREAMS / f"{kind}_upstream.py")]
        args = [*program, "--name", name, "--port", str(port)]
        if not ready:
            args.append("--not-ready")
        args += extra
        proc = await self.start(f"upstream {name} ({kind})", args)
        match = await proc.wait_for(r"^LISTENING (\d+)$")
        return proc, int(match.group(1))

    async def pmlb(self, *args: str, env: dict[str, str] | None = None) -> tuple[Proc, int]:
        """``pmlb serve`` on a free port; returns it and the client port.

        The admin API listens on a free port too (see :func:`admin_url`).
        """
        cmd = [sys.executable, "-m", "pmlb", "serve", "--host", "127.0.0.1", "--port", "0"]
        if not any(a.startswith(("--admin-port", "--no-admin")) for a in args):
            cmd += ["--admin-port", "0"]
        if self.upstream_transport is not None:
            cmd += ["--upstream-transport", self.upstream_transport]
        proc = await self.start("pmlb", [*cmd, *args], env=env)
        match = await proc.wait_for(r"listening listener=default address=127\.0\.0\.1:(\d+)")
        return proc, int(match.group(1))

    async def aclose(self) -> None:
        for client in self._clients:
            await trio.aclose_forcefully(client.stream)
        for resource in self._streams:
            await trio.aclose_forcefully(resource)
        for proc in self._procs:
            proc.kill()
        with trio.move_on_after(TIMEOUT):
            for proc in self._procs:
                await proc.wait()
        for proc in self._procs:
            proc.close()


def free_low_port() -> int:
    """A free port below the ephemeral range, for an upstream that must restart on the same port.

    (A port from the ephemeral range could be taken meanwhile by an outgoing
    connection, or even be connected to itself.)
    """
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


async def admin_url(pmlb: Proc) -> str:
    """The admin API's base URL, from pmlb's log."""
    match = await pmlb.wait_for(r"admin listening url=(\S+)")
    return match.group(1)


def upstream_arg(port: int) -> list[str]:
    return ["--upstream", f"127.0.0.1:{port}"]


async def wait_serving(pmlb: Proc, port: int, *, after: int = 0) -> None:
    await pmlb.wait_for(rf"upstream serving upstream=127\.0\.0\.1:{port}\b", after=after)


class LineClient:
    """A raw TCP client speaking newline-delimited messages."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""
        self.uuid: str | None = None

    async def send(self, *lines: str) -> None:
        await self.stream.send_all(b"".join(line.encode() + b"\n" for line in lines))

    async def recv(self, timeout: float = TIMEOUT) -> str:
        """The next line; AssertionError on EOF or timeout."""
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise AssertionError(f"connection closed; unread: {self._buffer!r}")
                self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    async def recv_many(self, n: int) -> list[str]:
        return [await self.recv() for _ in range(n)]

    async def whoami(self) -> str:
        """This client's UUID, from the upstream; proves nothing else was queued before."""
        await self.send("whoami")
        answer = await self.recv()
        assert uuid.UUID(answer).version == 4, answer
        self.uuid = answer
        return answer

    async def expect_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Wait until pmlb closes the connection; return what arrived before."""
        received = self._buffer
        with trio.fail_after(timeout):
            try:
                while data := await self.stream.receive_some(65536):
                    received += data
            except trio.BrokenResourceError:
                pass
        return received


def terminate(proc: Proc) -> None:
    proc.signal(signal.SIGTERM)
