from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.helpers import Processes
from tests.redis_server import RedisServer

UPSTREAM_TRANSPORTS = ("native", "grpclib")


@pytest.fixture
async def procs(nursery: trio.Nursery, request: pytest.FixtureRequest) -> AsyncIterator[Processes]:
    processes = Processes(nursery)
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
