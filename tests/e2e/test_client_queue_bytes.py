"""Clients that never read, during broadcasts of big messages (issue 17, finding 5).

Bounded by message count only, four such clients held 1,024 messages of
60 KB each (+235 MB of RSS) before they were cut. Now each client's queue
is bounded in bytes too (``client_queue_bytes``, 4 MiB by default), and so
are all clients together (``client_queue_bytes_total``).
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.e2e.test_faults import metric, rss_kib, tiny_window_client, write_config
from tests.helpers import TIMEOUT, LineClient, Processes, admin_url, wait_serving

SLOW = 4
SIZE = 60_000
#: 300 x 60 KB: 18 MB towards each client, far under the count limit (1,024)
BROADCASTS = 300


async def broadcast_and_read(feeder: LineClient, count: int) -> None:
    """``count`` broadcasts of SIZE bytes, sent in tens; the feeder reads each one."""
    payload = "b" * SIZE
    with trio.fail_after(TIMEOUT * 2):
        for start in range(0, count, 10):
            n = min(10, count - start)
            await feeder.send(*(f"bcast all {start + i:04d}{payload}" for i in range(n)))
            for i in range(n):
                line = await feeder.recv()
                assert line[:4] == f"{start + i:04d}", line[:20]
                assert len(line) == 4 + SIZE


async def test_clients_that_never_read_are_cut_by_bytes_before_the_count(
    procs: Processes, tmp_path: Path
) -> None:
    """The defaults: each slow client is cut at 4 MiB; the client that reads gets everything."""
    _, up_port = await procs.upstream("A")
    config = write_config(tmp_path / "pmlb.toml", {"framing": "line"}, [up_port])
    pmlb, port = await procs.pmlb("--config", str(config))
    url = await admin_url(pmlb)
    await wait_serving(pmlb, up_port)
    slow = [await tiny_window_client(procs, port) for _ in range(SLOW)]
    uuids = [await client.whoami() for client in slow]
    feeder = await procs.client(port)
    await feeder.whoami()
    before = rss_kib(pmlb.pid)
    mark = pmlb.mark()
    await broadcast_and_read(feeder, BROADCASTS)
    for uuid in uuids:
        await pmlb.wait_for(
            rf"client disconnected client={uuid} .*reason=\"?slow client: outbound"
            rf" queue full \({4 * 1024 * 1024} bytes\)",
            after=mark,
            timeout=TIMEOUT,
        )
    growth = (rss_kib(pmlb.pid) - before) / 1024
    print(
        f"\n[client-queue-bytes] {SLOW} clients that never read, {BROADCASTS} broadcasts"
        f" of {SIZE // 1000} KB: all cut at 4 MiB; pmlb RSS +{growth:.1f} MB"
    )
    assert await metric(url, "pmlb_client_disconnects_total", reason="slow") == SLOW
    assert await metric(url, "pmlb_client_queued_bytes") == 0
    assert await feeder.whoami() == feeder.uuid
    # What they had been written before their sockets filled (up to the
    # limit), then the close: nothing of the rest.
    for client in slow:
        received = await client.expect_closed()
        assert len(received) < 4 * 1024 * 1024 + 2 * SIZE


async def test_all_clients_together_are_bounded_by_the_total(
    procs: Processes, tmp_path: Path
) -> None:
    """No per-client byte limit, a total of 1 MiB: the slow clients are cut, the reader is not."""
    _, up_port = await procs.upstream("A")
    total = 1024 * 1024
    config = write_config(
        tmp_path / "pmlb.toml",
        {"framing": "line", "client_queue_bytes": 0, "client_queue_bytes_total": total},
        [up_port],
    )
    pmlb, port = await procs.pmlb("--config", str(config))
    url = await admin_url(pmlb)
    await wait_serving(pmlb, up_port)
    slow = [await tiny_window_client(procs, port) for _ in range(SLOW)]
    uuids = [await client.whoami() for client in slow]
    feeder = await procs.client(port)
    await feeder.whoami()
    mark = pmlb.mark()
    await broadcast_and_read(feeder, 100)
    for uuid in uuids:
        await pmlb.wait_for(
            rf"client disconnected client={uuid} .*reason=\"?slow client: the clients'"
            rf" outbound queues hold over client_queue_bytes_total \({total} bytes\)",
            after=mark,
        )
    assert await metric(url, "pmlb_client_disconnects_total", reason="slow") == SLOW
    assert await feeder.whoami() == feeder.uuid
    assert await metric(url, "pmlb_client_queued_bytes") == 0
