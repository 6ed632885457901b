from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.helpers import Processes


@pytest.fixture
async def procs(nursery: trio.Nursery) -> AsyncIterator[Processes]:
    processes = Processes(nursery)
    try:
        yield processes
    finally:
        await processes.aclose()
