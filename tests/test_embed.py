"""pmlb's core embedded in a Trio program through the public API."""

from __future__ import annotations

import socket

import pytest
import trio

import pmlb
from tests.helpers import Processes


def config(upstream_port: int | None = None, port: int = 0) -> pmlb.Config:
    data: dict[str, object] = {"server": {"host": "127.0.0.1", "port": port, "framing": "line"}}
    if upstream_port is not None:
        data["upstream"] = [{"host": "127.0.0.1", "port": upstream_port}]
    return pmlb.parse_config(data)


async def test_serve_reports_bound_addresses_and_proxies(procs: Processes) -> None:
    _, up_port = await procs.upstream("A")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config(up_port))
        [address] = server.listeners["default"]
        assert address == f"127.0.0.1:{server.port()}"
        client = await procs.client(server.port())
        # No wait for the upstream: until it serves, pmlb holds the message.
        uuid = await client.whoami()
        assert server.registry.clients[uuid].remote.startswith("127.0.0.1:")
        assert server.registry.statistics().upstreams_serving == 1
        server.stop()
    # serve() returned after closing its clients
    assert await client.expect_closed() == b""


async def test_serve_raises_listen_error_for_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(pmlb.ListenError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
                await nursery.start(pmlb.serve, config(port=port))
