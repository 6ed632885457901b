"""pmlb's core embedded in a Trio program through the public API."""

from __future__ import annotations

import socket
from collections import Counter

import pytest
import trio

import pmlb
from pmlb.upstream.state import UpstreamState
from tests.helpers import Processes


def config(upstream_port: int | None = None, port: int = 0) -> pmlb.Config:
    data: dict[str, object] = {
        "server": {"host": "127.0.0.1", "port": port, "framing": "line"},
        "management_server": {"port": 0},
    }
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


async def test_upstreams_can_be_added_and_removed_at_runtime(procs: Processes) -> None:
    _, a_port = await procs.upstream("A")
    _, b_port = await procs.upstream("B")
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config(a_port))
        registry = server.registry
        b = server.add_upstream(pmlb.UpstreamConfig(host="127.0.0.1", port=b_port))
        with pytest.raises(ValueError, match="already exists"):
            server.add_upstream(pmlb.UpstreamConfig(host="127.0.0.1", port=b_port))
        await registry.wait_upstream_state(f"127.0.0.1:{a_port}", UpstreamState.SERVING)
        await registry.wait_upstream_state(b.address, UpstreamState.SERVING)
        client = await procs.client(server.port())
        await client.send(*(f"m{i}" for i in range(10)))
        assert Counter(r[0] for r in await client.recv_many(10)) == {"A": 5, "B": 5}

        await server.remove_upstream(b.address)
        assert b.address not in registry.upstreams
        assert b.state is UpstreamState.REMOVED
        await client.send(*(f"n{i}" for i in range(10)))
        assert Counter(r[0] for r in await client.recv_many(10)) == {"A": 10}
        with pytest.raises(KeyError):
            await server.remove_upstream(b.address)
        server.stop()


async def test_several_listeners_share_one_registry(procs: Processes) -> None:
    _, up_port = await procs.upstream("A")
    cfg = pmlb.parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "framing": "line"},
            "listener": [{"name": "second", "host": "127.0.0.1", "port": 0, "framing": "line"}],
            "upstream": [{"host": "127.0.0.1", "port": up_port}],
            "management_server": {"enabled": False},
        }
    )
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, cfg)
        first = await procs.client(server.port("default"))
        second = await procs.client(server.port("second"))
        assert server.port("default") != server.port("second")
        assert server.registry.clients[await first.whoami()].listener == "default"
        assert server.registry.clients[await second.whoami()].listener == "second"
        await first.send("bcast all to both")
        assert await first.recv() == "to both"
        assert await second.recv() == "to both"
        server.stop()


async def test_serve_raises_listen_error_for_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(pmlb.ListenError, match=rf"cannot listen on 127\.0\.0\.1:{port}"):
                await nursery.start(pmlb.serve, config(port=port))
