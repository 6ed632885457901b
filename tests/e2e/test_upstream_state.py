"""An operator's upstream states end to end, and adding upstreams with every file key.

`pmlb serve` with two grpclib upstreams: `drain`, `maint` and `ready` through
the API and `pmlb ctl`, seen in the replies' senders, the views and /metrics.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.e2e.test_admin import assert_error, ctl, running, samples
from tests.helpers import TIMEOUT, Processes, wait_serving

pytestmark = pytest.mark.e2e


async def senders(client: object, count: int, tag: str) -> set[str]:
    await client.send(*[f"{tag}{i}" for i in range(count)])  # type: ignore[attr-defined]
    replies = await client.recv_many(count)  # type: ignore[attr-defined]
    return {r.split(":")[0] for r in replies}


async def admin_state(http: httpx.AsyncClient, address: str) -> tuple[str, float]:
    view = (await http.get(f"/api/v1/upstreams/{address}")).json()
    metric = samples((await http.get("/metrics")).text)[
        ("pmlb_upstream_admin_state", (("state", view["admin_state"]), ("upstream", address)))
    ]
    return view["admin_state"], metric


async def test_drain_maint_and_ready_are_reversible(procs: Processes) -> None:
    async with running(procs) as admin:
        http = admin.http
        _, b_port = await procs.upstream("B")
        b = f"127.0.0.1:{b_port}"
        mark = admin.pmlb.mark()
        # every key a file's [[upstream]] takes
        body = {
            "host": "127.0.0.1",
            "port": b_port,
            "ready_timeout": 2,
            "alive_timeout": 10,
            "live_interval": 1,
            "stall_timeout": 5,
            "transport": "native",
            "tls": False,
            "events": False,
            "acks": False,
            "max_unacked": 50,
            "ack_timeout": 9,
            "max_deliveries": 3,
            "health": "contract",
            "health_service": "",
            "discovery": "static",
            "resolve_interval": 4,
            "nameserver": "",
            "reply_scope": "local",
        }
        added = await http.post("/api/v1/upstreams", json=body)
        assert added.status_code == 201, added.text
        assert (added.json()["stall_timeout"], added.json()["admin_state"]) == (5, "ready")
        await wait_serving(admin.pmlb, b_port, after=mark)
        client = await admin.client(procs)
        assert await senders(client, 20, "a") == {"A", "B"}

        drained = await ctl(admin, "upstreams", "state", b, "drain")
        assert drained.returncode == 0, drained.stderr
        assert drained.stdout.strip() == f"{b}: drain (serving)"
        assert await admin_state(http, b) == ("drain", 1.0)
        assert await senders(client, 20, "b") == {"A"}
        listed = await ctl(admin, "upstreams")
        assert any(
            line.split()[:3] == [b, "serving", "drain"] for line in listed.stdout.splitlines()
        )

        maint = await http.put(f"/api/v1/upstreams/{b}/state", json={"state": "maint"})
        assert maint.status_code == 200, maint.text
        assert maint.json()["admin_state"] == "maint"
        assert await admin_state(http, b) == ("maint", 1.0)
        assert await senders(client, 20, "c") == {"A"}

        ready = await http.post(f"/api/v1/upstreams/{b}/state", json={"state": "ready"})
        assert ready.json()["admin_state"] == "ready"
        assert await admin_state(http, b) == ("ready", 1.0)
        assert await senders(client, 20, "d") == {"A", "B"}

        assert_error(
            await http.put(f"/api/v1/upstreams/{b}/state", json={"state": "off"}), 400, "state"
        )
        assert_error(
            await http.put("/api/v1/upstreams/127.0.0.1:1/state", json={"state": "drain"}), 404
        )
        missing = await ctl(admin, "upstreams", "state", "127.0.0.1:1", "maint")
        assert missing.returncode == 1
        assert "404: no upstream 127.0.0.1:1" in missing.stderr


async def test_an_added_upstream_is_checked_as_the_file_checks_it(procs: Processes) -> None:
    async with running(procs) as admin:
        http = admin.http
        message = assert_error(
            await http.post("/api/v1/upstreams", json={"host": "h", "port": 1, "tls_ca": "ca.pem"}),
            400,
            "tls_ca",
        )
        assert "tls_ca: only applies when tls = true" in message
        message = assert_error(
            await http.post(
                "/api/v1/upstreams",
                json={"host": "h", "port": 1, "tls": True, "tls_cert": "c.pem", "helth": "grpc"},
            ),
            400,
            "helth",
            "tls_key",
        )
        assert "unknown key (did you mean 'health'?)" in message
        assert_error(
            await http.post(
                "/api/v1/upstreams", json={"host": "h", "port": 1, "nameserver": "not an ip"}
            ),
            400,
            "nameserver",
        )
        assert_error(
            await http.post("/api/v1/upstreams", json={"host": "h", "port": 1, "events": "yes"}),
            400,
            "events",
        )
        assert_error(await http.post("/api/v1/upstreams", json=[1]), 400, "body")


async def test_a_dns_discovery_entry_added_and_removed_at_runtime(procs: Processes) -> None:
    async with running(procs) as admin:
        http = admin.http
        _, c_port = await procs.upstream("C")
        mark = admin.pmlb.mark()
        name = f"localhost:{c_port}"
        body = {"host": "localhost", "port": c_port, "discovery": "dns", "resolve_interval": 1}
        added = await http.post("/api/v1/upstreams", json=body)
        assert added.status_code == 202, added.text
        assert added.json()["address"] == name
        await wait_serving(admin.pmlb, c_port, after=mark)
        assert_error(await http.post("/api/v1/upstreams", json=body), 409)
        with trio.fail_after(TIMEOUT):
            while True:
                listed = (await http.get("/api/v1/upstreams")).json()
                found = [d["upstreams"] for d in listed["discoveries"] if d["address"] == name]
                if found and f"127.0.0.1:{c_port}" in found[0]:
                    break
                await trio.sleep(0.05)
        removed = await http.delete(f"/api/v1/upstreams/{name}")
        assert removed.json() == {"removed": name, "pending": False}
        listed = (await http.get("/api/v1/upstreams")).json()
        assert listed["discoveries"] == []
        assert [u["address"] for u in listed["upstreams"]] == [f"127.0.0.1:{admin.upstream_port}"]
