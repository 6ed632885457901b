"""A real redis-server per test, on a unix socket, persistence off (Debian's redis-server)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import Proc, Processes

#: skipped only where redis-server is not installed, and never under .ci/run
#: (which installs it and sets PMLB_TEST_REQUIRE_REDIS): there it fails.
needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("PMLB_TEST_REQUIRE_REDIS"),
    reason="redis-server is not installed (.ci/run installs it)",
)


class RedisServer:
    """One redis-server process; :meth:`start` again after :meth:`kill` reuses its socket."""

    def __init__(self, procs: Processes) -> None:
        self._procs = procs
        # Short: a unix socket's path has at most 107 bytes; pytest's tmp_path may be longer.
        self.directory = Path(tempfile.mkdtemp(prefix="pmlb-redis-", dir="/tmp"))
        self.socket = self.directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc: Proc | None = None

    async def start(self) -> RedisServer:
        self.proc = await self._procs.start(
            "redis-server",
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
        )
        await self.proc.wait_for("ready to accept connections at")
        return self

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
