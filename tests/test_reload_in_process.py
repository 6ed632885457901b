"""A reload in process: pmlb.serve with a ``load`` the test changes, real upstreams and sockets."""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import pytest
import trio

import pmlb
from pmlb.upstream.state import UpstreamState
from tests.helpers import LineClient, Processes, free_low_port


class Source:
    """The configuration a reload reads: ``tables`` parsed, or ``error`` raised."""

    def __init__(self, **tables: Any) -> None:
        self.tables = tables
        self.error: pmlb.ConfigError | None = None

    def load(self) -> pmlb.Config:
        if self.error is not None:
            raise self.error
        return pmlb.parse_config(self.tables, "pmlb.toml")


def tables(*upstream_ports: int, **extra: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "framing": "line"},
        "management_server": {"enabled": False},
        "upstream": [{"host": "127.0.0.1", "port": port} for port in upstream_ports],
        **extra,
    }


async def start(nursery: trio.Nursery, source: Source) -> pmlb.Server:
    server: pmlb.Server = await nursery.start(
        lambda task_status: pmlb.serve(source.load(), load=source.load, task_status=task_status)
    )
    return server


async def connect(procs: Processes, port: int) -> LineClient:
    client = await procs.client(port)
    await client.whoami()
    return client


async def test_an_upstream_added_by_reload_gets_traffic_and_a_removed_one_is_drained(
    procs: Processes,
) -> None:
    _, a_port = await procs.upstream("A")
    _, b_port = await procs.upstream("B")
    source = Source(**tables(a_port))
    async with trio.open_nursery() as nursery:
        server = await start(nursery, source)
        client = await connect(procs, server.port())

        source.tables = tables(a_port, b_port)
        change = await server.reload()
        assert [u.address for u in change.upstreams_added] == [f"127.0.0.1:{b_port}"]
        await server.registry.wait_upstream_state(f"127.0.0.1:{b_port}", UpstreamState.SERVING)
        await client.send(*(f"m{i}" for i in range(10)))
        assert Counter(r[0] for r in await client.recv_many(10)) == {"A": 5, "B": 5}

        source.tables = tables(b_port)
        change = await server.reload()
        assert [u.address for u in change.upstreams_removed] == [f"127.0.0.1:{a_port}"]
        await server.registry.wait_upstream_state(f"127.0.0.1:{a_port}", UpstreamState.REMOVED)
        assert list(server.registry.upstreams) == [f"127.0.0.1:{b_port}"]
        await client.send(*(f"n{i}" for i in range(4)))
        assert Counter(r[0] for r in await client.recv_many(4)) == {"B": 4}
        server.stop()


async def test_a_changed_upstream_is_drained_then_started_with_its_new_settings(
    procs: Processes,
) -> None:
    _, a_port = await procs.upstream("A")
    source = Source(**tables(a_port))
    async with trio.open_nursery() as nursery:
        server = await start(nursery, source)
        client = await connect(procs, server.port())
        address = f"127.0.0.1:{a_port}"
        old = server.registry.upstreams[address]
        source.tables["upstream"] = [{"host": "127.0.0.1", "port": a_port, "stall_timeout": 3}]
        change = await server.reload()
        assert change.summary()["upstreams_changed"] == [address]
        await old.removed.wait()
        await server.registry.wait_upstream_state(address, UpstreamState.SERVING)
        assert server.registry.upstreams[address].config.stall_timeout == 3
        assert (await client.whoami()) == client.uuid  # the same client, never dropped
        server.stop()


async def test_a_bad_configuration_changes_nothing(procs: Processes) -> None:
    _, a_port = await procs.upstream("A")
    source = Source(**tables(a_port))
    async with trio.open_nursery() as nursery:
        server = await start(nursery, source)
        before = server.registry.config
        source.error = pmlb.ConfigError(["pmlb.toml: upstream[0].port: must be an integer"])
        with pytest.raises(pmlb.ConfigError, match="upstream"):
            await server.reload()
        assert server.registry.config is before
        assert server.registry.reloads == {"refused": 1}
        assert not server.registry.last_reload_ok
        assert list(server.registry.upstreams) == [f"127.0.0.1:{a_port}"]
        server.stop()


async def test_a_listener_is_added_and_removed_without_dropping_its_clients(
    procs: Processes,
) -> None:
    _, a_port = await procs.upstream("A")
    extra = {"host": "127.0.0.1", "port": 0, "framing": "line"}
    source = Source(**tables(a_port))
    async with trio.open_nursery() as nursery:
        server = await start(nursery, source)
        source.tables["listener"] = [{"name": "extra", **extra}]
        change = await server.reload()
        assert [x.name for x in change.listeners_added] == ["extra"]
        extra_port = server.port("extra")
        on_extra = await connect(procs, extra_port)
        assert server.registry.clients[on_extra.uuid or ""].listener == "extra"

        del source.tables["listener"]
        change = await server.reload()
        assert [x.name for x in change.listeners_removed] == ["extra"]
        assert "extra" not in server.listeners
        with pytest.raises(OSError):  # noqa: PT011 (connection refused, whatever its errno)
            await trio.open_tcp_stream("127.0.0.1", extra_port)
        # Its client stays, and is served.
        await on_extra.send("still here")
        assert await on_extra.recv() == "A:still here"
        server.stop()


async def test_a_listener_that_cannot_bind_refuses_the_whole_reload(procs: Processes) -> None:
    _, a_port = await procs.upstream("A")
    _, b_port = await procs.upstream("B")
    source = Source(**tables(a_port))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            server = await start(nursery, source)
            source.tables = tables(a_port, b_port)
            source.tables["listener"] = [
                {"name": "fine", "host": "127.0.0.1", "port": 0},
                {"name": "busy", "host": "127.0.0.1", "port": busy},
            ]
            with pytest.raises(pmlb.ConfigError, match="'busy' cannot listen"):
                await server.reload()
            assert set(server.listeners) == {"default"}
            assert list(server.registry.upstreams) == [f"127.0.0.1:{a_port}"]
            server.stop()


async def test_settings_apply_and_restart_only_keys_are_reported(procs: Processes) -> None:
    source = Source(**tables())
    async with trio.open_nursery() as nursery:
        server = await start(nursery, source)
        source.tables["server"] = {**source.tables["server"], "activity_window": 7}
        source.tables["server"]["balancing"] = "sticky"
        source.tables["management_server"] = {"enabled": False, "port": 9999}
        change = await server.reload()
        assert change.settings == ("server.activity_window", "server.balancing")
        assert change.restart_required == ("management_server.port",)
        assert server.registry.config.activity_window == 7
        assert server.registry.policy.name == "sticky"
        assert server.registry.config.management.port == 8000  # kept until a restart
        server.stop()


async def test_no_reload_during_a_drain_or_without_a_file() -> None:
    config = pmlb.parse_config(tables())
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        with pytest.raises(pmlb.ReloadUnavailable, match="no configuration"):
            await server.reload()
        server.stop()
    source = Source(**tables())
    async with trio.open_nursery() as nursery:
        server = await start(nursery, source)
        server.stop()
        with pytest.raises(pmlb.ReloadUnavailable, match="draining"):
            await server.reload()


async def test_a_changed_listener_is_bound_anew_and_its_clients_keep_their_settings(
    procs: Processes,
) -> None:
    _, a_port = await procs.upstream("A")
    port = free_low_port()
    listener = {"name": "fixed", "host": "127.0.0.1", "port": port, "framing": "line"}
    source = Source(**tables(a_port), listener=[listener])
    async with trio.open_nursery() as nursery:
        server = await start(nursery, source)
        before = await connect(procs, port)
        source.tables["listener"] = [{**listener, "framing": "length"}]
        change = await server.reload()
        assert change.summary()["listeners_changed"] == ["fixed"]
        assert server.port("fixed") == port
        # The same address, now with length framing.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(len(b"hi").to_bytes(4, "big") + b"hi")
        with trio.fail_after(30):
            reply = b""
            while len(reply) < 4 + len(b"A:hi"):
                reply += await stream.receive_some()
        assert reply == len(b"A:hi").to_bytes(4, "big") + b"A:hi"
        await stream.aclose()
        # The client from before keeps its line framing.
        await before.send("old")
        assert await before.recv() == "A:old"
        server.stop()
