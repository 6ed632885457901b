from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from tests.helpers import Processes
from tests.redis_server import RedisServer

UPSTREAM_TRANSPORTS = ("native", "grpclib")

#: a folder: the output of every process a failed test started is written
#: there, one file per process, under a folder named after the test
KEEP_LOGS = os.environ.get("PMLB_TEST_KEEP_LOGS")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    # pytest-trio runs async fixtures inside the test's call: the processes'
    # output is complete when the call's report is made.
    report = yield
    processes = getattr(item, "pmlb_processes", None)
    if KEEP_LOGS and processes is not None and report.when == "call" and report.failed:
        folder = Path(KEEP_LOGS) / re.sub(r"[^\w.-]+", "_", item.nodeid)
        folder.mkdir(parents=True, exist_ok=True)
        for index, proc in enumerate(processes.started):
            name = re.sub(r"[^\w.-]+", "_", proc.name)
            (folder / f"{index}-{name}.log").write_text("\n".join(proc.lines) + "\n")
    return report


@pytest.fixture
async def procs(nursery: trio.Nursery, request: pytest.FixtureRequest) -> AsyncIterator[Processes]:
    processes = Processes(nursery)
    request.node.pmlb_processes = processes
    # A module runs its tests once per upstream transport with an autouse
    # fixture parametrized as "transport". That fixture's own assignment to
    # procs.upstream_transport may come too late: pytest-trio does not wait
    # for an autouse fixture the test does not name before the test starts.
    callspec = getattr(request.node, "callspec", None)
    transport = callspec.params.get("transport") if callspec is not None else None
    if transport in UPSTREAM_TRANSPORTS:
        processes.upstream_transport = transport
    try:
        yield processes
    finally:
        await processes.aclose()


@pytest.fixture
async def redis(procs: Processes) -> AsyncIterator[RedisServer]:
    """A redis-server of the test's own (unix socket, no persistence)."""
    server = RedisServer(procs)
    await server.start()
    try:
        yield server
    finally:
        server.cleanup()
