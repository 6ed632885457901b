"""What the admin refuses before reading a request: web pages of other origins, rebound
host names, bodies that are not JSON, and unauthenticated bodies (pmlb.admin.guard).

Each test starts its own pmlb with its admin on a free port and plays the
browser by hand: an ``Origin`` header is what a browser adds to a page's
form or script request, a foreign ``Host`` is what it sends after a DNS
rebinding.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.helpers import TIMEOUT, Processes, admin_url, upstream_arg, wait_serving

pytestmark = pytest.mark.e2e

TOKEN = "t0ken-for-the-guard-tests"
EVIL = "http://evil.example"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@asynccontextmanager
async def admin(procs: Processes, *args: str, token: str = "") -> AsyncIterator[httpx.AsyncClient]:
    _, up_port = await procs.upstream("A")
    env = {"PMLB_ADMIN_TOKEN": token} if token else None
    pmlb, _ = await procs.pmlb("--framing", "line", *upstream_arg(up_port), *args, env=env)
    url = await admin_url(pmlb)
    await wait_serving(pmlb, up_port)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT) as http:
        yield http


def refused(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


async def test_a_page_of_another_origin_cannot_drain_or_change_anything(procs: Processes) -> None:
    async with admin(procs) as http:
        # What <form method=post action=.../drain> on evil.example sends.
        answer = await http.post("/api/v1/runtime/drain", headers={**FORM, "Origin": EVIL})
        refused(answer, 403, "cross-origin a state change from 'http://evil.example' refused")
        for method, path in (("PATCH", "/api/v1/runtime"), ("POST", "/api/v1/broadcast")):
            answer = await http.request(method, path, json={}, headers={"Origin": EVIL})
            refused(answer, 403, "cross-origin")
        # "null" is the origin of sandboxed and file pages
        answer = await http.post("/api/v1/runtime/drain", headers={"Origin": "null"})
        refused(answer, 403, "cross-origin")
        # Without Origin (not a browser), a form body is still not JSON.
        refused(await http.post("/api/v1/runtime/drain", headers=FORM), 415, "must be JSON")
        text = {"Content-Type": "text/plain"}
        refused(await http.post("/api/v1/broadcast", content=b"{}", headers=text), 415, "JSON")
        # pmlb still runs; reading needs no origin check, and the dashboard's
        # own origin may change state.
        assert (await http.get("/api/v1/runtime", headers={"Origin": EVIL})).status_code == 200
        own = str(http.base_url).rstrip("/")
        answer = await http.patch(
            "/api/v1/runtime", json={"accepting": True}, headers={"Origin": own}
        )
        assert answer.status_code == 200, answer.text


async def test_a_rebound_host_name_is_refused_over_http1_and_http2(procs: Processes) -> None:
    async with admin(procs) as http:
        port = http.base_url.port
        for h2 in (False, True):
            async with httpx.AsyncClient(
                base_url=http.base_url, http1=not h2, http2=h2, timeout=TIMEOUT
            ) as client:
                evil = {"Host": f"evil.example:{port}"}
                for method, path, body in (
                    ("GET", "/api/v1/clients", None),
                    ("POST", "/api/v1/broadcast", {"payload": "x"}),
                    ("DELETE", "/api/v1/clients/x", None),
                    ("POST", "/api/v1/runtime/drain", None),
                ):
                    answer = await client.request(method, path, json=body, headers=evil)
                    assert answer.http_version == ("HTTP/2" if h2 else "HTTP/1.1")
                    refused(answer, 403, "Host 'evil.example:")
                for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1"):
                    answer = await client.get("/api/v1/clients", headers={"Host": host})
                    assert answer.status_code == 200, (host, answer.text)
                answer = await client.get("/api/v1/clients", headers={"Host": f"[::1]:{port}"})
                assert answer.status_code == 200  # another loopback address


async def upgrade(procs: Processes, http: httpx.AsyncClient, host: str, origin: str) -> bytes:
    """The admin's answer to an event WebSocket upgrade with these headers (its first line)."""
    stream = await trio.open_tcp_stream(str(http.base_url.host), http.base_url.port)
    procs.on_close(stream)
    await stream.send_all(
        f"GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    answer = b""
    with trio.fail_after(TIMEOUT):
        while b"\r\n" not in answer:
            answer += await stream.receive_some(65536)
    return answer.split(b"\r\n", 1)[0]


async def test_a_page_of_another_origin_cannot_open_the_event_stream(procs: Processes) -> None:
    async with admin(procs) as http:
        url = str(http.base_url).rstrip("/")
        own = url.removeprefix("http://")
        assert await upgrade(procs, http, own, EVIL) == b"HTTP/1.1 403 "
        # A rebound name in Host, with the page's own (same) origin.
        assert await upgrade(procs, http, "evil.example", EVIL) == b"HTTP/1.1 403 "
        # The dashboard's own page may.
        assert await upgrade(procs, http, own, url) == b"HTTP/1.1 101 "
        ws_url = url.replace("http://", "ws://") + "/api/v1/events"
        async with open_websocket_url(ws_url, extra_headers=[("Origin", url)]) as ws:
            with trio.fail_after(TIMEOUT):
                assert json.loads(await ws.get_message())["type"] == "hello"


async def test_more_hosts_and_origins_may_be_allowed(procs: Processes, tmp_path: Path) -> None:
    config = tmp_path / "pmlb.toml"
    config.write_text(
        "[management_server]\n"
        'allowed_hosts = ["pmlb.internal"]\n'
        'allowed_origins = ["https://ops.example.com"]\n'
    )
    async with admin(procs, "--config", str(config)) as http:
        port = http.base_url.port
        answer = await http.get("/api/v1/clients", headers={"Host": f"pmlb.internal:{port}"})
        assert answer.status_code == 200
        answer = await http.get("/api/v1/clients", headers={"Host": f"other.internal:{port}"})
        refused(answer, 403, "Host")
        ops = {"Origin": "https://ops.example.com"}
        answer = await http.patch("/api/v1/runtime", json={"accepting": True}, headers=ops)
        assert answer.status_code == 200
        answer = await http.patch("/api/v1/runtime", json={}, headers={"Origin": EVIL})
        refused(answer, 403, "cross-origin")


async def test_an_unauthenticated_body_is_not_read_before_the_401(procs: Processes) -> None:
    async with admin(procs, token=TOKEN) as http:
        host, port = str(http.base_url.host), http.base_url.port
        stream = await trio.open_tcp_stream(host, port)
        procs.on_close(stream)
        # 30 MiB announced, none sent: the answer must not wait for it, and
        # the connection closes after it.
        await stream.send_all(
            f"POST /api/v1/broadcast HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 31457280\r\n\r\n".encode()
        )
        answer = b""
        with trio.fail_after(TIMEOUT):
            while data := await stream.receive_some(65536):
                answer += data
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"] == "missing or wrong bearer token"
        # A small refused body is read: the connection stays usable.
        async with httpx.AsyncClient(base_url=http.base_url, timeout=TIMEOUT) as anonymous:
            for _ in range(3):
                answer = await anonymous.post("/api/v1/broadcast", json={"payload": "x"})
                refused(answer, 401, "bearer token")
            assert (await http.post("/api/v1/broadcast", json={"payload": "x"})).status_code == 200


async def _h2_post_until_answered(host: str, port: int, path: str, size: int) -> list[object]:
    """POST ``size`` bytes over HTTP/2 (prior knowledge) and keep sending after the answer.

    Returns the h2 events received: the answer comes before the body ends.
    """
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream = await trio.open_tcp_stream(host, port)
    seen: list[object] = []
    async with stream:
        headers = [
            (":method", "POST"),
            (":path", path),
            (":scheme", "http"),
            (":authority", f"{host}:{port}"),
            ("content-type", "application/json"),
            ("content-length", str(size)),
        ]
        connection.send_headers(1, headers)
        await stream.send_all(connection.data_to_send())
        sent, chunk = 0, b"x" * 16384
        with trio.move_on_after(TIMEOUT):
            while sent < size and not any(isinstance(e, h2.events.StreamReset) for e in seen):
                room = min(connection.local_flow_control_window(1), len(chunk), size - sent)
                if room > 0:
                    connection.send_data(1, chunk[:room], end_stream=sent + room == size)
                    sent += room
                    await stream.send_all(connection.data_to_send())
                    continue
                data = await stream.receive_some(65536)
                if not data:
                    break
                seen += connection.receive_data(data)
                await stream.send_all(connection.data_to_send())
    return seen


@pytest.mark.parametrize("token", ["", TOKEN])
async def test_a_body_that_outlives_its_answer_over_http2_leaves_the_admin_up(
    procs: Processes, token: str
) -> None:
    # Without a token: a body over the 32 MiB limit (413); with one, no token (401).
    async with admin(procs, token=token) as http:
        host, port = str(http.base_url.host), http.base_url.port
        seen = await _h2_post_until_answered(host, port, "/api/v1/broadcast", 33 * 1024 * 1024)
        (answer,) = [e for e in seen if isinstance(e, h2.events.ResponseReceived)]
        assert dict(answer.headers)[b":status"] == (b"401" if token else b"413")
        assert (await http.get("/healthz")).json() == {"status": "ok"}
