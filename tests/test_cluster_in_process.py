"""Several pmlb in one Trio program, joined through a real redis-server."""

from __future__ import annotations

from collections.abc import Sequence

import coredis
import trio

import pmlb
from pmlb.cluster import scripts
from pmlb.cluster.bus import Bus
from tests.helpers import TIMEOUT, LineClient, Processes
from tests.redis_server import RedisServer, needs_redis

pytestmark = needs_redis


def node_config(
    redis_url: str,
    node: str,
    upstream_port: int,
    *,
    events: bool = False,
    heartbeat_interval: float = 0.2,
) -> pmlb.Config:
    return pmlb.parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "framing": "line"},
            "upstream": [
                {
                    "host": "127.0.0.1",
                    "port": upstream_port,
                    "reply_scope": "cluster",
                    "events": events,
                }
            ],
            "management_server": {"enabled": False},
            "cluster": {
                "redis_url": redis_url,
                "node": node,
                "heartbeat_interval": heartbeat_interval,
                "node_timeout": heartbeat_interval * 5,
            },
        }
    )


async def start_nodes(
    nursery: trio.Nursery, redis_url: str, names: Sequence[str], upstream_port: int
) -> list[pmlb.Server]:
    servers = []
    for name in names:
        server: pmlb.Server = await nursery.start(
            pmlb.serve, node_config(redis_url, name, upstream_port)
        )
        servers.append(server)
    for server in servers:
        await bus(server).wait_connected()
    for server in servers:  # each has seen all the others
        await bus(server).wait_heartbeat()
    return servers


def bus(server: pmlb.Server) -> Bus:
    assert server.registry.cluster is not None
    return server.registry.cluster


async def silent_client(procs: Processes, server: pmlb.Server) -> tuple[LineClient, str]:
    """A client that never sends (so it stays inactive), and its UUID once registered."""
    registry = server.registry
    with registry.events.subscribe() as events:
        client = await procs.client(server.port())
        with trio.fail_after(TIMEOUT):
            uuid = None
            while uuid is None:
                for event in await events.next_batch():
                    if event["type"] == "client.connected":
                        uuid = event["client"]
    await bus(server).wait_registered(uuid)
    assert uuid not in bus(server).unregistered
    return client, uuid


async def test_replies_reach_clients_on_other_nodes(procs: Processes, redis: RedisServer) -> None:
    _, up_port = await procs.upstream("U")
    async with trio.open_nursery() as nursery:
        a, b, c = await start_nodes(nursery, redis.url, ["a", "b", "c"], up_port)
        on_a, on_b, on_c = [await procs.client(s.port()) for s in (a, b, c)]
        ua, ub, uc = [await client.whoami() for client in (on_a, on_b, on_c)]
        idle, u_idle = await silent_client(procs, b)

        # one client on another node
        await on_a.send(f"to {ub} hello b")
        assert await on_b.recv() == "hello b"
        # a multicast over three nodes, one UUID unknown everywhere
        unknown_before = a.registry.unknown_client
        await on_a.send(f"multi {ub},{uc},{ua},11111111-2222-4333-8444-555555555555 all of you")
        assert await on_a.recv() == "all of you"
        assert await on_b.recv() == "all of you"
        assert await on_c.recv() == "all of you"
        # broadcasts: once per client of the cluster, whatever the kind
        await on_c.send("bcast all everyone")
        for client in (on_a, on_b, on_c, idle):
            assert await client.recv() == "everyone"
        await on_c.send("bcast active busy ones")
        for client in (on_a, on_b, on_c):
            assert await client.recv() == "busy ones"
        await on_a.send("bcast inactive quiet ones")
        assert await idle.recv() == "quiet ones"
        # nothing more came (no duplicates): the next line each gets is this one
        for client, uuid in ((on_a, ua), (on_b, ub), (on_c, uc), (idle, u_idle)):
            await on_b.send(f"to {uuid} end")
            assert await client.recv() == "end"
        assert a.registry.unknown_client == unknown_before + 1
        # the sender counts what crossed nodes, the receivers what came in
        assert bus(a).statistics().sent >= 3
        assert bus(b).statistics().received >= 3
        assert bus(a).statistics().nodes == ("a", "b", "c")

        # kick across nodes, one by UUID and two by multicast
        await on_a.send(f"kick {ub}")
        await on_b.expect_closed()
        await on_a.send(f"kick {uc},{u_idle}")
        await on_c.expect_closed()
        await idle.expect_closed()
        for server in (a, b, c):
            server.stop()


async def test_unknown_uuid_on_a_node_alone_is_counted_once(
    procs: Processes, redis: RedisServer
) -> None:
    _, up_port = await procs.upstream("U")
    async with trio.open_nursery() as nursery:
        [a] = await start_nodes(nursery, redis.url, ["a"], up_port)
        client = await procs.client(a.port())
        await client.whoami()
        await client.send("to 11111111-2222-4333-8444-555555555555 nobody")
        await client.whoami()  # the reply before it was handed to the bus by then
        with trio.fail_after(TIMEOUT):
            await bus(a).wait_idle()
        assert a.registry.unknown_client == 1
        a.stop()


async def test_a_new_clients_first_message_waits_for_its_registration(
    procs: Processes, redis: RedisServer
) -> None:
    _, up_port = await procs.upstream("U")
    async with coredis.Redis.from_url(redis.url) as admin, trio.open_nursery() as nursery:
        # A first message waits at most heartbeat_interval for its registration.
        config = node_config(redis.url, "a", up_port, heartbeat_interval=5)
        a: pmlb.Server = await nursery.start(pmlb.serve, config)
        await bus(a).wait_connected()
        # Writes stall in Redis for a while: the registration of the
        # client below is held up; its first message must wait for it.
        await admin.client_pause(1000, mode=coredis.PureToken.WRITE)
        client = await procs.client(a.port())
        uuid = await client.whoami()
        assert await admin.hget(scripts.DIRECTORY, uuid) == b"a"
        a.stop()


async def test_redis_down_local_traffic_goes_on_and_cross_node_resumes(
    procs: Processes, redis: RedisServer
) -> None:
    _, up_port = await procs.upstream("U")
    async with trio.open_nursery() as nursery:
        a, b = await start_nodes(nursery, redis.url, ["a", "b"], up_port)
        on_a, on_b = [await procs.client(s.port()) for s in (a, b)]
        await on_a.whoami()
        ub = await on_b.whoami()
        await on_a.send(f"to {ub} before")
        assert await on_b.recv() == "before"

        await redis.kill()
        # Local traffic never stops, on both nodes.
        for i in range(20):
            await on_a.send(f"local {i}")
            assert await on_a.recv() == f"U:local {i}"
            await on_b.send(f"local {i}")
            assert await on_b.recv() == f"U:local {i}"
        with trio.fail_after(TIMEOUT):
            while bus(a).connected:
                await bus(a).changed()
        dropped = bus(a).statistics().dropped
        await on_a.send(f"to {ub} lost")
        await on_a.send("whoami")
        await on_a.recv()
        assert bus(a).statistics().dropped == dropped + 1
        assert bus(a).statistics().errors >= 1

        await redis.start()  # empty: both nodes register their clients again
        await bus(a).wait_connected()
        await bus(b).wait_connected()
        with trio.fail_after(TIMEOUT):
            # b's resync is flushed, then seen in a heartbeat (of b: it ran after)
            while bus(b).unregistered or bus(b).statistics().cluster_clients < 2:
                await bus(b).changed()
        await on_a.send(f"to {ub} after")
        assert await on_b.recv() == "after"
        for server in (a, b):
            server.stop()


async def test_unreachable_redis_at_start_starts_degraded(
    procs: Processes, redis: RedisServer
) -> None:
    _, up_port = await procs.upstream("U")
    await redis.kill()
    async with trio.open_nursery() as nursery:
        a: pmlb.Server = await nursery.start(pmlb.serve, node_config(redis.url, "a", up_port))
        client = await procs.client(a.port())
        await client.send("hello")
        assert await client.recv() == "U:hello"
        assert not bus(a).connected
        await redis.start()
        await bus(a).wait_connected()
        a.stop()


async def test_a_reaped_node_that_comes_back_registers_its_clients_again(
    procs: Processes, redis: RedisServer
) -> None:
    _, up_port = await procs.upstream("U")
    async with coredis.Redis.from_url(redis.url) as admin, trio.open_nursery() as nursery:
        [a] = await start_nodes(nursery, redis.url, ["a"], up_port)
        # b beats every 2 s (its entry lives 10 s): a, beating every 0.2 s,
        # reaps it between two of its heartbeats once its entry is gone.
        config = node_config(redis.url, "b", up_port, heartbeat_interval=2)
        b: pmlb.Server = await nursery.start(pmlb.serve, config)
        await bus(b).wait_connected()
        on_a = await procs.client(a.port())
        await on_a.whoami()
        on_b, ub = await silent_client(procs, b)
        assert await admin.hget(scripts.DIRECTORY, ub) == b"b"
        with trio.fail_after(TIMEOUT):
            while "b" not in bus(a).nodes:
                await bus(a).wait_heartbeat()

        # b's entry expires (as when b stalls longer than node_timeout)
        beats = bus(b).heartbeats
        await admin.delete([scripts.node_key("b")])
        with trio.fail_after(TIMEOUT):
            while "b" in bus(a).nodes:
                await bus(a).wait_heartbeat()
        assert bus(b).heartbeats == beats  # reaped before b's next heartbeat
        assert await admin.hget(scripts.DIRECTORY, ub) is None
        await on_a.send(f"to {ub} while b is reaped")
        await on_a.whoami()
        with trio.fail_after(TIMEOUT):
            await bus(a).wait_idle()
        assert a.registry.unknown_client == 1

        # b's next heartbeat finds its entry gone: it registers its clients again
        with trio.fail_after(TIMEOUT):
            while bus(b).heartbeats == beats or bus(b).unregistered:
                await bus(b).changed()
            while await admin.hget(scripts.DIRECTORY, ub) != b"b":
                await bus(b).changed()
            while "b" not in bus(a).nodes:
                await bus(a).wait_heartbeat()
        await on_a.send(f"to {ub} back again")
        assert await on_b.recv() == "back again"  # and not the one sent while reaped
        for server in (a, b):
            server.stop()


async def test_replies_beyond_the_queue_to_redis_are_counted_and_dropped(
    procs: Processes, redis: RedisServer
) -> None:
    from pmlb._proto import upstream_pb2 as pb

    _, up_port = await procs.upstream("U")
    async with trio.open_nursery() as nursery:
        a, b = await start_nodes(nursery, redis.url, ["a", "b"], up_port)
        on_b, ub = await silent_client(procs, b)
        bus(a).queue_limit = 2
        dropped = bus(a).statistics().dropped
        # One batch from an upstream: deliver() queues and never waits, so the
        # queue holds 2 of them when the writer wakes up; the rest is dropped.
        replies = [pb.OutputStreamRequest(client_uuid=ub, payload=b"r%d" % i) for i in range(5)]
        a.registry.deliver(replies, cluster=True)
        assert bus(a).statistics().dropped == dropped + 3
        assert bus(a).statistics().queued == 2
        assert [await on_b.recv(), await on_b.recv()] == ["r0", "r1"]
        on_a = await procs.client(a.port())
        await on_a.whoami()
        await on_a.send(f"to {ub} next")
        assert await on_b.recv() == "next"  # nothing else came before it
        for server in (a, b):
            server.stop()


async def test_three_nodes_broadcast_and_multicast_reach_each_client_exactly_once(
    procs: Processes, redis: RedisServer
) -> None:
    _, up_port = await procs.upstream("U")
    async with trio.open_nursery() as nursery:
        servers = await start_nodes(nursery, redis.url, ["a", "b", "c"], up_port)
        busy: list[LineClient] = []
        busy_ids: list[str] = []
        idle: list[LineClient] = []
        idle_ids: list[str] = []
        for server in servers:  # one active and one inactive client per node
            client = await procs.client(server.port())
            busy.append(client)
            busy_ids.append(await client.whoami())
            quiet, uuid = await silent_client(procs, server)
            idle.append(quiet)
            idle_ids.append(uuid)
        sender = busy[0]
        before = [s.registry.statistics().messages_to_clients for s in servers]

        await sender.send("bcast all everyone")
        await sender.send("bcast active busy ones")
        await sender.send("bcast inactive quiet ones")
        await sender.send(f"multi {idle_ids[1]},{busy_ids[2]},{idle_ids[0]} some")
        for client in busy:
            assert await client.recv_many(2) == ["everyone", "busy ones"]
        for client in idle:
            assert await client.recv_many(2) == ["everyone", "quiet ones"]
        for client in (idle[1], busy[2], idle[0]):
            assert await client.recv() == "some"
        # the next line each gets is this one: no duplicate came
        for client, uuid in zip(busy + idle, busy_ids + idle_ids, strict=True):
            await sender.send(f"to {uuid} end")
            assert await client.recv() == "end"
        after = [s.registry.statistics().messages_to_clients for s in servers]
        # each node: 2 clients x (2 broadcasts + end), and one of the multicast
        assert [x - y for x, y in zip(after, before, strict=True)] == [2 * 3 + 1] * 3

        # disconnect by multicast over the three nodes, from the third
        await busy[2].send(f"kick {busy_ids[1]},{idle_ids[0]},{idle_ids[2]}")
        for client in (busy[1], idle[0], idle[2]):
            await client.expect_closed()
        for client, uuid in ((busy[0], busy_ids[0]), (idle[1], idle_ids[1])):
            await busy[2].send(f"to {uuid} still here")
            assert await client.recv() == "still here"
        for server in servers:
            server.stop()
