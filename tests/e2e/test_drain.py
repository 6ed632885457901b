"""Graceful drain end to end: `pmlb serve` stopped by SIGTERM or the admin API.

What is checked: the listeners close at once, clients are closed spread over
``drain_period`` (WebSocket ones with 1001, upstreams told "drain"), replies
queued before the drain still reach their clients, ``drain_timeout`` and a
second SIGTERM stop at once, and the exit code is 0 every time.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from tests.helpers import TIMEOUT, LineClient, Proc, Processes, admin_url, wait_serving
from tests.ws_client import WsClient

pytestmark = pytest.mark.e2e

TOKEN = "t0ken-for-the-drain-tests"


@attrs.define
class Setup:
    procs: Processes
    pmlb: Proc
    upstream: Proc
    port: int
    ws_port: int
    admin: str

    async def client(self) -> LineClient:
        client = await self.procs.client(self.port)
        await client.whoami()
        return client

    async def ws(self) -> WsClient:
        client = await WsClient.connect(self.ws_port, "/ws")
        self.procs.on_close(client.stream)
        await client.whoami()
        return client

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.admin, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT
        )


async def start(procs: Processes, tmp_path: Path, *, period: float, timeout: float) -> Setup:
    upstream, up_port = await procs.upstream("A")
    config = tmp_path / "pmlb.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
framing = "line"
drain_period = {period}
drain_timeout = {timeout}
# the floods below queue 9 MB for one client that reads nothing: no byte
# bound, so that it stays (queued, not disconnected as slow) until the drain
client_queue_bytes = 0

[[listener]]
name = "ws"
host = "127.0.0.1"
port = 0
transport = "websocket"
path = "/ws"

[[upstream]]
host = "127.0.0.1"
port = {up_port}
events = true
"""
    )
    pmlb, port = await procs.pmlb("--config", str(config), env={"PMLB_ADMIN_TOKEN": TOKEN})
    ws_port = int(
        (await pmlb.wait_for(r"listening listener=ws address=127\.0\.0\.1:(\d+)")).group(1)
    )
    url = await admin_url(pmlb)
    await wait_serving(pmlb, up_port)
    return Setup(procs, pmlb, upstream, port, ws_port, url)


async def close_times(tcp: list[LineClient], ws: list[WsClient]) -> list[float]:
    """When each client saw pmlb close it (TCP: EOF; WebSocket: the 1001 close frame)."""
    times: list[float] = []

    async def tcp_closed(client: LineClient) -> None:
        assert await client.expect_closed() == b""
        times.append(trio.current_time())

    async def ws_closed(client: WsClient) -> None:
        close = await client.expect_close()
        times.append(trio.current_time())
        assert close.code == 1001, close
        assert close.reason == "pmlb is draining"

    async with trio.open_nursery() as nursery:
        for client in tcp:
            nursery.start_soon(tcp_closed, client)
        for ws_client in ws:
            nursery.start_soon(ws_closed, ws_client)
    return sorted(times)


async def assert_refused(port: int) -> None:
    with trio.socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        await sock.connect(("127.0.0.1", port))


async def test_sigterm_closes_clients_spread_over_the_drain_period(
    procs: Processes, tmp_path: Path
) -> None:
    period, timeout = 4.0, 60.0
    setup = await start(procs, tmp_path, period=period, timeout=timeout)
    tcp = [await setup.client() for _ in range(5)]
    ws = [await setup.ws()]
    mark = setup.pmlb.mark()
    started = trio.current_time()
    setup.pmlb.signal(signal.SIGTERM)
    async with trio.open_nursery() as nursery:

        async def closes() -> None:
            times.extend(await close_times(tcp, ws))

        times: list[float] = []
        nursery.start_soon(closes)
        await setup.pmlb.wait_for("stopping: closing listeners and clients", after=mark)
        await setup.pmlb.wait_for(r"draining clients clients=6 drain_period=4(\.0)?\b", after=mark)
        await assert_refused(setup.port)
        await assert_refused(setup.ws_port)
    assert await setup.pmlb.wait() == 0
    exited = trio.current_time() - started
    spread = times[-1] - times[0]
    print(f"drain_period={period:g}s close times after SIGTERM (s):", end=" ")
    print(" ".join(f"{t - started:.2f}" for t in times), f"spread={spread:.2f}s exit={exited:.2f}s")
    # Evenly spread: the first close comes at once, the last a period later.
    # A loaded machine can only delay closes, so it can only delay the first
    # one into the spread: half the period leaves room for that.
    assert spread >= period / 2
    assert exited < timeout
    for client in tcp:
        await setup.upstream.wait_for(
            rf"^EVENT disconnected {client.uuid} DISCONNECT_DRAIN pmlb is draining$"
        )
    await setup.pmlb.wait_for("stopping: closing upstream streams", after=mark)
    assert setup.pmlb.count("drain_timeout reached") == 0


async def flood(setup: Setup, n: int, size: int) -> tuple[LineClient, list[str]]:
    """A client that asked for ``n`` replies of ``size`` bytes and reads none of them.

    Returns once every one of its messages was read by pmlb and answered by
    the upstream: a second client gets a message the upstream sends only
    after them. Its small receive buffer keeps most replies queued in pmlb.
    """
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", setup.port))
    flooder = LineClient(trio.SocketStream(sock))
    setup.procs.on_close(flooder.stream)
    observer = await setup.client()
    lines = [f"{i:06d}" + "x" * (size - 6) for i in range(n)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flooder.send, *lines, f"to {observer.uuid} all sent")
        assert await observer.recv() == "all sent"
    return flooder, lines


async def test_replies_queued_before_a_sigterm_reach_the_client(
    procs: Processes, tmp_path: Path
) -> None:
    setup = await start(procs, tmp_path, period=0, timeout=60)
    flooder, lines = await flood(setup, 300, 30_000)
    async with setup.http() as http:
        clients = (await http.get("/api/v1/clients")).json()["clients"]
    queued = max(c["queued"] for c in clients)
    print(f"replies queued in pmlb at SIGTERM: {queued} of {len(lines)}")
    assert queued > 0  # replies wait in pmlb, not only in the kernel's buffers
    setup.pmlb.signal(signal.SIGTERM)
    # Every message pmlb read got its answer, in order, before the close.
    assert await flooder.recv_many(len(lines)) == [f"A:{line}" for line in lines]
    assert await flooder.expect_closed() == b""
    assert await setup.pmlb.wait() == 0
    assert setup.pmlb.count("drain_timeout reached") == 0


async def test_drain_timeout_stops_at_once_with_exit_0(procs: Processes, tmp_path: Path) -> None:
    setup = await start(procs, tmp_path, period=0, timeout=1)
    await flood(setup, 300, 30_000)  # never read: its drain cannot finish
    mark = setup.pmlb.mark()
    setup.pmlb.signal(signal.SIGTERM)
    assert await setup.pmlb.wait() == 0
    await setup.pmlb.wait_for(r"drain_timeout reached: stopping at once", after=mark)


async def test_a_second_sigterm_stops_at_once_with_exit_0(procs: Processes, tmp_path: Path) -> None:
    period = 120.0
    setup = await start(procs, tmp_path, period=period, timeout=300)
    tcp = [await setup.client() for _ in range(3)]
    mark = setup.pmlb.mark()
    started = trio.current_time()
    setup.pmlb.signal(signal.SIGTERM)
    assert await tcp[0].expect_closed() == b""  # the drain is on: the first is closed at once
    setup.pmlb.signal(signal.SIGTERM)
    assert await setup.pmlb.wait() == 0
    for client in tcp[1:]:
        assert await client.expect_closed() == b""
    assert trio.current_time() - started < period / 2
    await setup.pmlb.wait_for("second signal: stopping now", after=mark)


async def test_admin_drain_order_drains_and_exits_0(procs: Processes, tmp_path: Path) -> None:
    period = 6.0
    setup = await start(procs, tmp_path, period=period, timeout=60)
    tcp = [await setup.client() for _ in range(2)]
    mark = setup.pmlb.mark()
    async with setup.http() as http:
        answer = await http.post("/api/v1/runtime/drain")
        assert answer.status_code == 202
        assert answer.json() == {"draining": True}
        started = trio.current_time()
        # Still running (the last client goes a period later), and not ready.
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "stopping"
    await setup.pmlb.wait_for("stopping: closing listeners and clients", after=mark)
    await assert_refused(setup.port)
    times = await close_times(tcp, [])
    assert times[-1] - times[0] >= period / 2
    assert await setup.pmlb.wait() == 0
    assert trio.current_time() - started < 60
