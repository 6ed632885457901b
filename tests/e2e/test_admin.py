"""The admin API end to end: `pmlb serve` with its admin, real upstreams, real clients.

Each test starts its own pmlb (admin on a free port, token from the
environment) and talks to it with httpx, trio-websocket and `pmlb ctl`.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from tests.helpers import (
    TIMEOUT,
    LineClient,
    Proc,
    Processes,
    admin_url,
    upstream_arg,
    wait_serving,
)
from tests.ws_client import WsClient

pytestmark = pytest.mark.e2e

TOKEN = "t0ken-for-the-admin-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@attrs.define
class Admin:
    pmlb: Proc
    port: int
    url: str
    upstream_port: int
    http: httpx.AsyncClient

    async def client(self, procs: Processes) -> LineClient:
        client = await procs.client(self.port)
        await client.whoami()
        return client


@asynccontextmanager
async def running(procs: Processes, *args: str, kind: str = "grpclib") -> AsyncIterator[Admin]:
    _, up_port = await procs.upstream("A", kind=kind)
    pmlb, port = await procs.pmlb(
        "--framing", "line", *upstream_arg(up_port), *args, env={"PMLB_ADMIN_TOKEN": TOKEN}
    )
    url = await admin_url(pmlb)
    await wait_serving(pmlb, up_port)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=TIMEOUT) as http:
        yield Admin(pmlb, port, url, up_port, http)


@attrs.frozen
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def run(cmd: list[str], env: dict[str, str] | None = None) -> Ran:
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            cmd,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **(env or {})},
        )
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())


def assert_error(response: httpx.Response, status: int, *fields: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "fields"}
    assert body["error"]
    assert body["fields"] == list(fields)
    return str(body["error"])


# -- health, auth ---------------------------------------------------------

PROTECTED = [
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/api/v1/upstreams"),
    ("POST", "/api/v1/upstreams"),
    ("GET", "/api/v1/upstreams/127.0.0.1:1"),
    ("DELETE", "/api/v1/upstreams/127.0.0.1:1"),
    ("POST", "/api/v1/upstreams/127.0.0.1:1/drain"),
    ("POST", "/upstream/add"),
    ("GET", "/api/v1/clients"),
    ("GET", "/api/v1/clients/x"),
    ("DELETE", "/api/v1/clients/x"),
    ("POST", "/api/v1/clients/x/messages"),
    ("POST", "/api/v1/broadcast"),
    ("GET", "/api/v1/cluster"),
    ("GET", "/api/v1/runtime"),
    ("PATCH", "/api/v1/runtime"),
    ("POST", "/api/v1/runtime/drain"),
]


async def test_every_route_but_the_probes_needs_the_token(procs: Processes) -> None:
    async with running(procs) as admin, httpx.AsyncClient(base_url=admin.url) as anonymous:
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
        ready = await anonymous.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "ready": True,
            "reason": None,
            "upstreams": 1,
            "upstreams_serving": 1,
        }
        for method, path in PROTECTED:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = await anonymous.request(method, path, headers=headers, json={})
                assert_error(response, 401)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        # The dashboard's page is public but carries no data.
        page = await anonymous.get("/")
        assert page.status_code == 200
        assert "<title>pmlb</title>" in page.text
        assert str(admin.upstream_port) not in page.text
    assert not any(TOKEN in line for line in admin.pmlb.lines)


async def test_readyz_stays_ready_through_an_upstream_outage_unless_asked(
    procs: Processes, tmp_path: Path
) -> None:
    pmlb, _ = await procs.pmlb("--upstream", "127.0.0.1:1", env={"PMLB_ADMIN_TOKEN": TOKEN})
    async with httpx.AsyncClient(base_url=await admin_url(pmlb)) as http:
        answer = await http.get("/readyz")  # no token: a kubelet has none
        assert answer.status_code == 200
        assert answer.json() == {
            "ready": True,
            "reason": None,
            "upstreams": 1,
            "upstreams_serving": 0,
        }
        assert (await http.get("/metrics")).status_code == 401
    config = tmp_path / "pmlb.toml"
    config.write_text(
        "[management_server]\nready_requires_upstream = true\npublic_metrics = true\n"
    )
    strict, _ = await procs.pmlb("--config", str(config), "--upstream", "127.0.0.1:1")
    async with httpx.AsyncClient(base_url=await admin_url(strict)) as http:
        answer = await http.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {
            "ready": False,
            "reason": "no upstream is serving",
            "upstreams": 1,
            "upstreams_serving": 0,
        }
        assert "pmlb_clients" in (await http.get("/metrics")).text


async def test_readyz_is_not_ready_while_an_operator_pauses_accepting(procs: Processes) -> None:
    async with running(procs) as admin:
        await admin.http.patch("/api/v1/runtime", json={"accepting": False})
        answer = await admin.http.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["reason"] == "not accepting clients"


async def test_a_non_loopback_admin_without_token_refuses_to_start() -> None:
    cmd = [sys.executable, "-m", "pmlb", "serve", "--port", "0", "--admin-host", "0.0.0.0"]
    done = await run(cmd)
    assert done.returncode == 2
    assert "management_server.host: '0.0.0.0' is not a loopback address" in done.stderr
    assert "PMLB_ADMIN_TOKEN" in done.stderr


async def test_a_taken_admin_port_is_a_clear_error(procs: Processes) -> None:
    first, _ = await procs.pmlb()
    port = (await admin_url(first)).rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "pmlb", "serve", "--port", "0", "--admin-port", port]
    done = await run(cmd)
    assert done.returncode == 1
    assert f"admin (management_server): cannot listen on 127.0.0.1:{port}" in done.stderr


# -- upstreams ------------------------------------------------------------


async def test_upstream_routes(procs: Processes) -> None:
    async with running(procs) as admin:
        http = admin.http
        a = f"127.0.0.1:{admin.upstream_port}"
        listed = (await http.get("/api/v1/upstreams")).json()["upstreams"]
        assert [(u["address"], u["state"]) for u in listed] == [(a, "serving")]
        one = (await http.get(f"/api/v1/upstreams/{a}")).json()
        assert one["ready_at"] is not None
        assert one["last_error"] is None
        assert_error(await http.get("/api/v1/upstreams/127.0.0.1:1"), 404)

        # add: a grpcio upstream that acknowledges, which starts serving
        _, b_port = await procs.upstream("B", kind="grpcio", extra=["--acks"])
        b = f"127.0.0.1:{b_port}"
        mark = admin.pmlb.mark()
        body = {
            "host": "127.0.0.1",
            "port": b_port,
            "ready_timeout": 2,
            "live_interval": 1,
            "acks": True,
            "max_unacked": 100,
        }
        added = await http.post("/api/v1/upstreams", json=body)
        assert added.status_code == 201, added.text
        assert added.json()["address"] == b
        assert added.json()["live_interval"] == 1
        assert added.json()["acks"] is True
        await wait_serving(admin.pmlb, b_port, after=mark)
        assert_error(await http.post("/api/v1/upstreams", json=body), 409)

        # bad bodies name the field
        assert_error(await http.post("/api/v1/upstreams", json={"port": 1}), 400, "host")
        assert_error(
            await http.post("/api/v1/upstreams", json={"host": "h", "port": 0}), 400, "port"
        )
        assert_error(
            await http.post("/api/v1/upstreams", json={"host": "h", "port": 1, "colour": 1}),
            400,
            "colour",
        )
        assert_error(
            await http.post("/api/v1/upstreams", json={"host": "h", "port": 1, "max_unacked": 0}),
            400,
            "max_unacked",
        )
        assert_error(
            await http.post(
                "/api/v1/upstreams",
                content=b"{not json",
                headers={"Content-Type": "application/json"},
            ),
            400,
            "body",
        )
        # a body that does not say it is JSON is refused before it is read
        assert_error(
            await http.post(
                "/api/v1/upstreams",
                content=b'{"host": "h", "port": 1}',
                headers={"Content-Type": "x"},
            ),
            415,
        )

        # messages spread over both, then drain B: nothing new goes to it
        client = await admin.client(procs)
        await client.send(*[f"m{i}" for i in range(20)])
        replies = await client.recv_many(20)
        assert {r.split(":")[0] for r in replies} == {"A", "B"}
        view_b = (await http.get(f"/api/v1/upstreams/{b}")).json()
        assert view_b["acks_received"] == sum(r.startswith("B:") for r in replies)
        assert view_b["unacked"] == 0
        drained = await http.post(f"/api/v1/upstreams/{b}/drain", json={"timeout": 10})
        assert drained.json() == {"upstream": b, "failed_over": 0, "pending": False}
        assert_error(await http.get(f"/api/v1/upstreams/{b}"), 404)
        await client.send(*[f"n{i}" for i in range(10)])
        assert {r.split(":")[0] for r in await client.recv_many(10)} == {"A"}
        assert_error(await http.post(f"/api/v1/upstreams/{b}/drain", json={}), 404)

        # the original project's route
        legacy = {"host": "127.0.0.1", "port": 2, "alive_timeout": 7, "ready_timeout": 3}
        added = await http.post("/upstream/add", json=legacy)
        assert added.status_code == 201, added.text
        assert (added.json()["alive_timeout"], added.json()["ready_timeout"]) == (7, 3)
        assert_error(await http.post("/upstream/add", json=legacy), 409)
        removed = await http.delete("/api/v1/upstreams/127.0.0.1:2")
        assert removed.json() == {"removed": "127.0.0.1:2", "pending": False}
        assert_error(await http.delete("/api/v1/upstreams/127.0.0.1:2"), 404)


# -- clients --------------------------------------------------------------


async def test_client_routes(procs: Processes) -> None:
    async with running(procs) as admin:
        http = admin.http
        clients = [await admin.client(procs) for _ in range(3)]
        uuids = [c.uuid for c in clients]

        first = (await http.get("/api/v1/clients", params={"limit": 2})).json()
        assert [c["uuid"] for c in first["clients"]] == uuids[:2]
        assert first["connected"] == 3
        rest = (
            await http.get("/api/v1/clients", params={"limit": 2, "cursor": first["next_cursor"]})
        ).json()
        assert [c["uuid"] for c in rest["clients"]] == uuids[2:]
        assert rest["next_cursor"] is None
        active = (await http.get("/api/v1/clients", params={"state": "active"})).json()
        assert len(active["clients"]) == 3
        inactive = (await http.get("/api/v1/clients", params={"state": "inactive"})).json()
        assert inactive["clients"] == []
        by_listener = (await http.get("/api/v1/clients", params={"listener": "default"})).json()
        assert len(by_listener["clients"]) == 3
        assert_error(await http.get("/api/v1/clients", params={"listener": "nope"}), 404)
        assert_error(await http.get("/api/v1/clients", params={"state": "bogus"}), 400, "state")
        assert_error(await http.get("/api/v1/clients", params={"limit": 0}), 400, "limit")

        one = (await http.get(f"/api/v1/clients/{uuids[0]}")).json()
        assert one["listener"] == "default"
        assert one["transport"] == "tcp"
        assert one["remote"].startswith("127.0.0.1:")
        assert one["messages_in"] == 1
        assert one["messages_out"] == 1
        assert one["active"] is True
        assert one["last_active_at"].endswith("Z")
        assert_error(await http.get("/api/v1/clients/nobody"), 404)

        sent = await http.post(f"/api/v1/clients/{uuids[0]}/messages", json={"payload": "hi"})
        assert sent.status_code == 202
        assert sent.json() == {"client": uuids[0], "queued": True, "node": None}
        assert await clients[0].recv() == "hi"
        raw = base64.b64encode(b"bin\x00ary").decode()
        body = {"payload": raw, "encoding": "base64"}
        await http.post(f"/api/v1/clients/{uuids[0]}/messages", json=body)
        assert await clients[0].recv() == "bin\x00ary"
        bad = {"payload": "***", "encoding": "base64"}
        assert_error(
            await http.post(f"/api/v1/clients/{uuids[0]}/messages", json=bad), 400, "payload"
        )
        assert_error(
            await http.post(f"/api/v1/clients/{uuids[0]}/messages", json={}), 400, "payload"
        )
        assert_error(await http.post("/api/v1/clients/nobody/messages", json={"payload": "x"}), 404)

        kicked = await http.delete(f"/api/v1/clients/{uuids[1]}")
        assert kicked.json() == {"disconnected": uuids[1], "node": None}
        await clients[1].expect_closed()
        assert_error(await http.get(f"/api/v1/clients/{uuids[1]}"), 404)
        assert_error(await http.delete(f"/api/v1/clients/{uuids[1]}"), 404)


async def test_broadcast_and_runtime(procs: Processes) -> None:
    async with running(procs) as admin:
        http = admin.http
        clients = [await admin.client(procs) for _ in range(2)]
        answer = await http.post("/api/v1/broadcast", json={"payload": "to all"})
        assert answer.json() == {
            "kind": "all",
            "recipients": 2,
            "nodes": 1,  # not in a cluster: this one
            "nodes_asked": 1,
            "partial": None,
        }
        assert [await c.recv() for c in clients] == ["to all", "to all"]
        answer = await http.post("/api/v1/broadcast", json={"kind": "inactive", "payload": "x"})
        assert answer.json()["recipients"] == 0
        assert_error(
            await http.post("/api/v1/broadcast", json={"kind": "some", "payload": "x"}), 400, "kind"
        )

        runtime = (await http.get("/api/v1/runtime")).json()
        assert runtime["policy"] == "round_robin"
        assert "round_robin" in runtime["policies"]
        assert runtime["accepting"] is True
        assert runtime["stopping"] is False
        assert runtime["listeners"]["default"] == [f"127.0.0.1:{admin.port}"]
        assert runtime["config"]["management"]["token"] == "***"
        assert runtime["stats"]["clients"] == 2
        assert runtime["stats"]["broadcast_recipients"] == 2

        changed = await http.patch("/api/v1/runtime", json={"log_level": "debug"})
        assert changed.json()["log_level"] == "debug"
        assert_error(await http.patch("/api/v1/runtime", json={"policy": "psychic"}), 400, "policy")
        assert_error(
            await http.patch("/api/v1/runtime", json={"log_level": "loud"}), 400, "log_level"
        )
        assert (
            await http.patch("/api/v1/runtime", json={"policy": "round_robin"})
        ).status_code == 200

        # not accepting: a new connection is closed at once and counted
        paused = await http.patch("/api/v1/runtime", json={"accepting": False})
        assert paused.json()["accepting"] is False
        refused = await procs.client(admin.port)
        assert await refused.expect_closed() == b""
        assert (await http.get("/api/v1/runtime")).json()["stats"]["refused"] == 1
        await http.patch("/api/v1/runtime", json={"accepting": True})
        await admin.client(procs)

        # drain the whole process: it stops and exits 0
        answer = await http.post("/api/v1/runtime/drain")
        assert answer.status_code == 202
        assert answer.json() == {"draining": True}
        assert await admin.pmlb.wait() == 0


# -- metrics, events ------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_change_when_traffic_flows(procs: Processes) -> None:
    async with running(procs, "--max-message-size", "64") as admin:
        a = f"127.0.0.1:{admin.upstream_port}"
        before = samples((await admin.http.get("/metrics")).text)
        assert before[("pmlb_upstream_state", (("state", "serving"), ("upstream", a)))] == 1
        assert before[("pmlb_messages_total", (("direction", "from_clients"),))] == 0

        client = await admin.client(procs)  # one message and its answer
        await client.send(*[f"m{i}" for i in range(9)])
        answers = [client.uuid or "", *await client.recv_many(9)]
        await admin.http.post("/api/v1/broadcast", json={"payload": "b"})
        answers.append(await client.recv())
        big = await procs.client(admin.port)
        await big.send("x" * 100)
        await big.expect_closed()

        after = samples((await admin.http.get("/metrics")).text)
        assert after[("pmlb_messages_total", (("direction", "from_clients"),))] == 10
        assert after[("pmlb_messages_total", (("direction", "to_clients"),))] == 11
        assert after[("pmlb_client_bytes_total", (("direction", "from_clients"),))] > 0
        # every line the client read, with its newline: the big client got nothing
        assert after[("pmlb_client_bytes_total", (("direction", "to_clients"),))] == sum(
            len(answer) + 1 for answer in answers
        )
        assert after[("pmlb_clients", (("listener", "default"),))] == 1
        assert after[("pmlb_clients_connected_total", (("listener", "default"),))] == 2
        assert after[("pmlb_client_disconnects_total", (("reason", "too_big"),))] == 1
        assert after[("pmlb_connections_accepted_total", ())] == 2
        assert after[("pmlb_connections_open", ())] == 1
        assert after[("pmlb_connections_limited_total", (("reason", "bad_input"),))] == 1
        assert after[("pmlb_connections_limited_total", (("reason", "max_clients"),))] == 0
        assert after[("pmlb_broadcasts_total", ())] == 1
        assert after[("pmlb_broadcast_recipients_total", ())] == 1
        count = ("pmlb_dispatch_latency_seconds_count", ())
        assert after[count] - before[count] == 10
        upstream_out = (
            "pmlb_upstream_messages_total",
            (("direction", "to_upstream"), ("upstream", a)),
        )
        assert after[upstream_out] == 10


async def test_events_stream_sees_clients_come_and_go(procs: Processes) -> None:
    async with running(procs) as admin:
        ws_url = admin.url.replace("http://", "ws://") + "/api/v1/events"
        async with open_websocket_url(
            ws_url, extra_headers=[("Authorization", f"Bearer {TOKEN}")]
        ) as ws:
            hello = json.loads(await ws.get_message())
            assert hello["type"] == "hello"
            assert any(e["type"] == "upstream.state" for e in hello["recent"])
            client = await admin.client(procs)
            event = json.loads(await ws.get_message())
            assert event["type"] == "client.connected"
            assert (event["client"], event["listener"]) == (client.uuid, "default")
            await trio.aclose_forcefully(client.stream)
            event = json.loads(await ws.get_message())
            assert event["type"] == "client.disconnected"
            assert (event["client"], event["reason"]) == (
                client.uuid,
                "client closed the connection",
            )
            # admin actions are reported, even one that changes nothing
            await admin.http.patch("/api/v1/runtime", json={"accepting": True})
            event = json.loads(await ws.get_message())
            assert event["type"] == "admin.accepting"
            assert event["accepting"] is True
            await admin.http.post("/api/v1/broadcast", json={"payload": "x"})
            event = json.loads(await ws.get_message())
            assert event["type"] == "admin.broadcast"
            assert event["recipients"] == 0

        # browsers cannot set headers: the token may come as the first message
        # (a second WebSocket implementation, from the websockets package)
        admin_port = int(admin.url.rsplit(":", 1)[1])
        browser_like = await WsClient.connect(admin_port, "/api/v1/events")
        try:
            await browser_like.send(TOKEN)
            assert json.loads(await browser_like.recv())["type"] == "hello"
        finally:
            await browser_like.aclose()
        wrong = await WsClient.connect(admin_port, "/api/v1/events")
        try:
            await wrong.send("wrong")
            closed = await wrong.expect_close()
            assert closed.code == 1008
            assert closed.reason == "missing or wrong bearer token"
        finally:
            await wrong.aclose()


# -- pmlb ctl -------------------------------------------------------------


async def ctl(admin: Admin, *args: str, token: str = TOKEN) -> Ran:
    cmd = [sys.executable, "-m", "pmlb", "ctl", "--url", admin.url, *args]
    return await run(cmd, env={"PMLB_ADMIN_TOKEN": token})


async def test_pmlb_ctl(procs: Processes) -> None:
    async with running(procs) as admin:
        a = f"127.0.0.1:{admin.upstream_port}"
        listed = await ctl(admin, "upstreams", "list")
        assert listed.returncode == 0, listed.stderr
        header, row = listed.stdout.splitlines()
        assert header.split()[:4] == ["ADDRESS", "STATE", "ADMIN", "TO"]
        assert row.split()[:2] == [a, "serving"]
        assert (await ctl(admin, "upstreams")).stdout == listed.stdout  # list: the default
        assert json.loads((await ctl(admin, "upstreams", "--json")).stdout)["upstreams"]
        as_json = json.loads((await ctl(admin, "--json", "upstreams", "list")).stdout)
        assert as_json["upstreams"][0]["address"] == a

        added = await ctl(admin, "upstreams", "add", "127.0.0.1:3", "--ready-timeout", "1")
        assert added.returncode == 0
        assert added.stdout.startswith("added 127.0.0.1:3")
        again = await ctl(admin, "upstreams", "add", "127.0.0.1:3")
        assert again.returncode == 1
        assert "409: upstream 127.0.0.1:3 already exists" in again.stderr
        drained = await ctl(admin, "upstreams", "drain", "127.0.0.1:3")
        assert drained.returncode == 0
        assert "drained and removed 127.0.0.1:3" in drained.stdout
        missing = await ctl(admin, "upstreams", "remove", "127.0.0.1:3")
        assert missing.returncode == 1
        assert "404: no upstream 127.0.0.1:3" in missing.stderr

        clients = [await admin.client(procs) for _ in range(2)]
        listed = await ctl(admin, "clients", "list", "--limit", "1", "--all")
        assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == [
            c.uuid for c in clients
        ]
        sent = await ctl(admin, "clients", "send", clients[0].uuid or "", "hello there")
        assert sent.stdout.strip() == "queued"
        assert await clients[0].recv() == "hello there"
        # list is the default verb, --json goes after the verb too
        default = await ctl(admin, "clients")
        assert [line.split()[0] for line in default.stdout.splitlines()[1:]] == [
            c.uuid for c in clients
        ]
        after = json.loads((await ctl(admin, "clients", "list", "--all", "--json")).stdout)
        assert [c["uuid"] for c in after["clients"]] == [c.uuid for c in clients]
        got = await ctl(admin, "clients", "get", clients[0].uuid or "")
        assert (clients[0].uuid or "") in got.stdout
        assert any(line.split() == ["active", "yes"] for line in got.stdout.splitlines())
        got_json = json.loads(
            (await ctl(admin, "clients", "get", clients[0].uuid or "", "--json")).stdout
        )
        assert got_json["uuid"] == clients[0].uuid
        broadcast = await ctl(admin, "broadcast", "all of you")
        assert broadcast.stdout.strip() == "sent to 2 clients"
        assert [await c.recv() for c in clients] == ["all of you", "all of you"]
        alone = await ctl(admin, "cluster")
        assert alone.stdout.strip() == "not in a cluster ([cluster] redis_url is not set)"
        assert (await admin.http.get("/api/v1/cluster")).json()["enabled"] is False
        node_cursor = await admin.http.get("/api/v1/clients?cursor=a/3")
        assert node_cursor.status_code == 400
        assert "NODE/NUMBER is for a cluster" in node_cursor.json()["error"]
        assert (await admin.http.get("/api/v1/clients?cursor=x")).status_code == 400
        kicked = await ctl(admin, "clients", "kick", clients[1].uuid or "")
        assert kicked.returncode == 0
        await clients[1].expect_closed()

        changed = await ctl(admin, "set", "--no-accepting", "--log-level", "warning")
        assert "NOT accepting clients" in changed.stdout
        assert "log level warning" in changed.stdout
        status = await ctl(admin, "status")
        assert "clients 1 (1 active)" in status.stdout

        wrong = await ctl(admin, "status", token="nope")
        assert wrong.returncode == 1
        assert "401" in wrong.stderr
        assert "nope" not in wrong.stderr
        drain = await ctl(admin, "drain")
        assert drain.returncode == 0
        assert await admin.pmlb.wait() == 0
    unreachable = await ctl(admin, "status")
    assert unreachable.returncode == 1
    assert "cannot reach the admin API" in unreachable.stderr


# -- OpenAPI --------------------------------------------------------------


async def test_openapi_document_and_schemathesis_finds_no_server_errors(
    procs: Processes, tmp_path: Path
) -> None:
    async with running(procs) as admin:
        document = (await admin.http.get("/openapi.json")).json()
        paths = document["paths"]
        for path in ("/api/v1/upstreams", "/api/v1/clients", "/api/v1/runtime", "/upstream/add"):
            assert path in paths
        body = paths["/api/v1/upstreams"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["title"] == "UpstreamIn"
        assert body["schema"]["required"] == ["host", "port"]
        assert document["security"] == [{"bearer": []}]
        cmd = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{admin.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            # stopping the process would end the run; its route is tested above
            "--exclude-path",
            "/api/v1/runtime/drain",
            "--seed",
            "1",
        ]
        done = await trio.run_process(
            cmd, capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path
        )
        output = done.stdout.decode() + done.stderr.decode()
        log = "\n".join(admin.pmlb.lines[-15:])
        assert done.returncode == 0, f"{output[-4000:]}\npmlb:\n{log}"
        assert admin.pmlb.count("internal error") == 0


async def test_admin_over_tls(procs: Processes, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "admin.pem", tmp_path / "admin.key"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    config = tmp_path / "pmlb.toml"
    config.write_text(
        f'[management_server]\nhost = "127.0.0.1"\nport = 0\n'
        f'[management_server.tls]\ncert_path = "{cert}"\nkey_path = "{key}"\n'
    )
    _, up_port = await procs.upstream("A")
    pmlb, _ = await procs.pmlb(
        "--config", str(config), *upstream_arg(up_port), env={"PMLB_ADMIN_TOKEN": TOKEN}
    )
    url = await admin_url(pmlb)
    assert url.startswith("https://127.0.0.1:")
    await wait_serving(pmlb, up_port)

    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, verify=verify) as http:
        response = await http.get("/api/v1/upstreams")
        assert response.status_code == 200
        assert [u["address"] for u in response.json()["upstreams"]] == [f"127.0.0.1:{up_port}"]
    # A client that does not trust the certificate gets no answer.
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/healthz")


async def test_admin_tls_with_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "pmlb.toml"
    config.write_text(
        '[management_server]\nhost = "127.0.0.1"\nport = 0\n'
        f'[management_server.tls]\ncert_path = "{tmp_path}/none.pem"\n'
        f'key_path = "{tmp_path}/none.key"\n'
    )
    done = await run(
        [sys.executable, "-m", "pmlb", "serve", "--config", str(config), "--port", "0"]
    )
    assert done.returncode == 1
    assert "none.pem" in done.stderr
    assert "Traceback" not in done.stderr
