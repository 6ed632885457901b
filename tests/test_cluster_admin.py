"""The admin API of any node sees the whole cluster (three nodes in one Trio program)."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import trio

import pmlb
from pmlb.cluster.bus import Bus
from tests.helpers import TIMEOUT, LineClient, Processes
from tests.redis_server import RedisServer, needs_redis

pytestmark = needs_redis

UNKNOWN = "11111111-2222-4333-8444-555555555555"


def admin_config(redis_url: str, node: str, upstream_port: int) -> pmlb.Config:
    return pmlb.parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "framing": "line"},
            "upstream": [{"host": "127.0.0.1", "port": upstream_port, "reply_scope": "cluster"}],
            "management_server": {"host": "127.0.0.1", "port": 0},
            "cluster": {
                "redis_url": redis_url,
                "node": node,
                "heartbeat_interval": 0.2,
                "node_timeout": 1.0,
            },
        }
    )


def bus(server: pmlb.Server) -> Bus:
    assert server.registry.cluster is not None
    return server.registry.cluster


async def start(
    nursery: trio.Nursery, redis_url: str, names: Sequence[str], upstream_port: int
) -> list[pmlb.Server]:
    servers = [
        await nursery.start(pmlb.serve, admin_config(redis_url, name, upstream_port))
        for name in names
    ]
    for server in servers:
        await bus(server).wait_connected()
    return servers


async def beat_all(servers: Sequence[pmlb.Server]) -> None:
    """Every node has sent a heartbeat since now, and seen the others' (one more round)."""
    for _ in range(2):
        for server in servers:
            await bus(server).wait_heartbeat()


def http(server: pmlb.Server) -> httpx.AsyncClient:
    assert server.admin_url is not None
    return httpx.AsyncClient(base_url=server.admin_url, timeout=TIMEOUT)


async def test_any_nodes_admin_reaches_every_client(procs: Processes, redis: RedisServer) -> None:
    _, up_port = await procs.upstream("U")
    async with trio.open_nursery() as nursery:
        servers = await start(nursery, redis.url, ["a", "b", "c"], up_port)
        a, b, c = servers
        clients: list[LineClient] = []
        uuids: list[str] = []
        for server, count in ((a, 1), (b, 2), (c, 1)):
            for _ in range(count):
                client = await procs.client(server.port())
                clients.append(client)
                uuids.append(await client.whoami())
        on_a, on_b1, on_b2, on_c = clients
        ua, ub1, ub2, uc = uuids
        await beat_all(servers)

        async with http(a) as api:
            cluster = (await api.get("/api/v1/cluster")).json()
            assert cluster["enabled"]
            assert cluster["connected"]
            assert cluster["degraded"] is None
            assert cluster["node"] == "a"
            assert cluster["clients"] == 4
            nodes = {n["name"]: n for n in cluster["nodes"]}
            assert list(nodes) == ["a", "b", "c"]
            assert [nodes[n]["clients"] for n in "abc"] == [1, 2, 1]
            assert [nodes[n]["this"] for n in "abc"] == [True, False, False]
            assert nodes["b"]["admin"] == b.admin_url
            assert nodes["c"]["upstreams_serving"] == 1
            assert 0 <= nodes["b"]["heartbeat_age"] < TIMEOUT

            # one client of another node: seen, sent to, through a's admin
            seen = (await api.get(f"/api/v1/clients/{ub1}")).json()
            assert seen["uuid"] == ub1
            assert seen["node"] == "b"
            assert seen["messages_in"] == 1
            local = (await api.get(f"/api/v1/clients/{ua}")).json()
            assert local["node"] == "a"
            sent = await api.post(f"/api/v1/clients/{uc}/messages", json={"payload": "to c"})
            assert sent.status_code == 202
            assert sent.json() == {"client": uc, "queued": True, "node": "c"}
            assert await on_c.recv() == "to c"
            missing = await api.get(f"/api/v1/clients/{UNKNOWN}")
            assert missing.status_code == 404
            assert missing.json()["error"] == f"no client {UNKNOWN} in the cluster"

            # a broadcast reaches every client of the cluster once
            answer = (await api.post("/api/v1/broadcast", json={"payload": "all of you"})).json()
            assert answer == {
                "kind": "all",
                "recipients": 4,
                "nodes": 3,
                "nodes_asked": 3,
                "partial": None,
            }
            for client in clients:
                assert await client.recv() == "all of you"

            # the client list pages over every node, each client once
            seen_uuids: list[str] = []
            cursor = "-1"
            pages = 0
            while cursor is not None:
                page = (await api.get(f"/api/v1/clients?limit=1&cursor={cursor}")).json()
                assert page["partial"] is None
                assert page["connected"] == 4
                seen_uuids += [c["uuid"] for c in page["clients"]]
                cursor = page["next_cursor"]
                pages += 1
                assert pages <= 5
            assert sorted(seen_uuids) == sorted(uuids)
            assert seen_uuids[0] == ua
            assert set(seen_uuids[1:3]) == {ub1, ub2}
            whole = (await api.get("/api/v1/clients")).json()
            assert [c["node"] for c in whole["clients"]] == ["a", "b", "b", "c"]
            assert whole["next_cursor"] is None

            # kicked from another node
            kicked = await api.delete(f"/api/v1/clients/{ub2}")
            assert kicked.json() == {"disconnected": ub2, "node": "b"}
            await on_b2.expect_closed()
            assert (await api.get(f"/api/v1/clients/{ub2}")).status_code == 404

        # the message after each: nothing else came (no duplicates)
        for client, uuid in ((on_a, ua), (on_b1, ub1), (on_c, uc)):
            await on_a.send(f"to {uuid} end")
            assert await client.recv() == "end"
        for server in servers:
            server.stop()


async def test_redis_down_cluster_routes_say_why(procs: Processes, redis: RedisServer) -> None:
    _, up_port = await procs.upstream("U")
    async with trio.open_nursery() as nursery:
        a, b = await start(nursery, redis.url, ["a", "b"], up_port)
        on_a = await procs.client(a.port())
        on_b = await procs.client(b.port())
        await on_a.whoami()
        ub = await on_b.whoami()
        await beat_all([a, b])
        async with http(a) as api:
            ready = (await api.get("/readyz")).json()
            assert ready["ready"]
            assert ready["cluster"] == "ok"

            await redis.kill()
            with trio.fail_after(TIMEOUT):
                while bus(a).connected:
                    await bus(a).changed()

            ready_answer = await api.get("/readyz")
            assert ready_answer.status_code == 200
            ready = ready_answer.json()
            assert ready["ready"]
            assert ready["cluster"] == "degraded"
            assert ready["cluster_reason"].startswith("Redis unreachable: ")

            cluster = (await api.get("/api/v1/cluster")).json()
            assert not cluster["connected"]
            assert cluster["degraded"].startswith("Redis unreachable")
            assert [n["name"] for n in cluster["nodes"]] == ["a"]

            remote = await api.get(f"/api/v1/clients/{ub}")
            assert remote.status_code == 503
            assert "the other nodes cannot be asked: Redis is unreachable" in remote.json()["error"]
            page = (await api.get("/api/v1/clients")).json()
            assert [c["node"] for c in page["clients"]] == ["a"]
            assert page["partial"].startswith("the other nodes: Redis unreachable")
            answer = (await api.post("/api/v1/broadcast", json={"payload": "local"})).json()
            assert answer["recipients"] == 1
            assert answer["nodes"] == 1
            assert answer["partial"].startswith("this node only: Redis is unreachable")
            assert await on_a.recv() == "local"

            await redis.start()
            await bus(a).wait_connected()
            await bus(b).wait_connected()
            await beat_all([a, b])
            seen = (await api.get(f"/api/v1/clients/{ub}")).json()
            assert seen["node"] == "b"
        for server in (a, b):
            server.stop()


async def test_a_node_that_does_not_answer_is_a_504(procs: Processes, redis: RedisServer) -> None:
    _, up_port = await procs.upstream("U")
    async with trio.open_nursery() as nursery:
        a, b = await start(nursery, redis.url, ["a", "b"], up_port)
        on_b = await procs.client(b.port())
        ub = await on_b.whoami()
        await beat_all([a, b])
        # b stops answering admin requests (as a node stuck in a long pause would)
        b_bus = bus(b)
        b_bus._answer = lambda origin, data: None  # type: ignore[method-assign]
        import pmlb.admin.app as app

        old, app.ASK_TIMEOUT = app.ASK_TIMEOUT, 0.5
        try:
            async with http(a) as api:
                answer = await api.get(f"/api/v1/clients/{ub}")
                assert answer.status_code == 504
                assert answer.json()["error"] == (
                    f"client {ub}: node b did not answer within 0.5 s"
                )
                broadcast = (await api.post("/api/v1/broadcast", json={"payload": "x"})).json()
                assert broadcast["nodes"] == 1
                assert broadcast["nodes_asked"] == 2
                assert broadcast["partial"] == "1 node(s) did not answer within 0.5 s"
                page = (await api.get("/api/v1/clients")).json()
                assert page["partial"] == "b: node b did not answer within 0.5 s"
        finally:
            app.ASK_TIMEOUT = old
        for server in (a, b):
            server.stop()
