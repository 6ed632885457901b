"""A WebSocket listener from a real browser page: Debian's headless Chromium.

A page served by a small HTTP server on 127.0.0.1 opens a WebSocket to a
pmlb WebSocket listener in front of the echo demo upstream. It gets its
replies (text after text, binary after binary), a broadcast sent through the
admin API, and the close code when the admin disconnects it. The admin API
lists it as a WebSocket client meanwhile.

As in tests/e2e/test_dashboard.py, Playwright runs in a child process (its
sync API runs an asyncio loop, which trio-asyncio in this process would have
patched); the child prints what the page saw as JSON, and the test asserts it.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.test_admin import TOKEN
from tests.e2e.test_dashboard import CHROMIUM, CHROMIUM_ARGS, HAVE_CHROMIUM
from tests.helpers import Processes, admin_url, wait_serving

pytestmark = pytest.mark.e2e

PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>pmlb WebSocket</title>
<script>
const seen = [];
const ws = new WebSocket(new URLSearchParams(location.search).get("ws"));
ws.binaryType = "arraybuffer";
ws.onopen = () => { seen.push({event: "open"}); ws.send("hello from the page \\u00e9"); };
ws.onmessage = (message) => seen.push(typeof message.data === "string"
  ? {event: "text", data: message.data}
  : {event: "binary", data: Array.from(new Uint8Array(message.data))});
ws.onclose = (close) => seen.push({event: "close", code: close.code, reason: close.reason});
ws.onerror = () => seen.push({event: "error"});
</script>
"""


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def admin(base: str, method: str, path: str, body: object = None) -> Any:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


def drive_page(ws_url: str, admin_base: str) -> dict[str, Any]:
    """Run the page through its script; return what it saw and what the admin listed."""
    from playwright.sync_api import sync_playwright

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page_url = f"http://127.0.0.1:{server.server_address[1]}/?ws={ws_url}"

    def seen_has(page: Any, event: str, **fields: object) -> None:
        # Wait (Playwright polls in the page) until the page saw that event.
        want = json.dumps({"event": event, **fields})
        page.wait_for_function(
            f"""() => {{
                const want = {want};
                return seen.some(e => Object.keys(want).every(
                    k => JSON.stringify(e[k]) === JSON.stringify(want[k])));
            }}""",
            timeout=30_000,
        )

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(page_url)
                seen_has(page, "text", data="hello from the page \u00e9")
                listed = admin(admin_base, "GET", "/api/v1/clients?listener=ws")["clients"]
                recipients = admin(
                    admin_base, "POST", "/api/v1/broadcast", {"payload": "to every client"}
                )
                seen_has(page, "text", data="to every client")
                page.evaluate("ws.send(new Uint8Array([255, 0, 65]))")
                seen_has(page, "binary", data=[255, 0, 65])
                for client in listed:
                    admin(admin_base, "DELETE", f"/api/v1/clients/{client['uuid']}")
                seen_has(page, "close")
                return {
                    "seen": page.evaluate("seen"),
                    "listed": listed,
                    "broadcast": recipients,
                    "errors": errors,
                }
            finally:
                browser.close()
    finally:
        server.shutdown()


async def test_a_browser_page_talks_to_a_websocket_listener(
    procs: Processes, tmp_path: Path
) -> None:
    if not HAVE_CHROMIUM:
        pytest.fail("Chromium is not installed: run .ci/run, or apt-get install chromium")
    upstream = await procs.start(
        "demo upstream", [sys.executable, "-m", "pmlb.demo_upstream", "--port", "0"]
    )
    up_port = int((await upstream.wait_for(r"^LISTENING (\d+)$")).group(1))
    config = tmp_path / "pmlb.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
framing = "line"

[[listener]]
name = "ws"
host = "127.0.0.1"
port = 0
transport = "websocket"
path = "/ws"

[[upstream]]
host = "127.0.0.1"
port = {up_port}
"""
    )
    pmlb, tcp_port = await procs.pmlb("--config", str(config), env={"PMLB_ADMIN_TOKEN": TOKEN})
    ws_port = int(
        (await pmlb.wait_for(r"listening listener=ws address=127\.0\.0\.1:(\d+)")).group(1)
    )
    url = await admin_url(pmlb)
    await wait_serving(pmlb, up_port)
    # A TCP client too: the broadcast reaches both kinds.
    tcp = await procs.client(tcp_port)
    await tcp.send("tcp here")
    assert await tcp.recv() == "tcp here"

    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, __file__, f"ws://127.0.0.1:{ws_port}/ws", url.rstrip("/")],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result = json.loads(done.stdout.decode().splitlines()[-1])
    assert result["errors"] == []
    [listed] = result["listed"]
    assert (listed["listener"], listed["transport"]) == ("ws", "websocket")
    assert result["broadcast"]["recipients"] == 2
    events = result["seen"]
    assert events[0] == {"event": "open"}
    assert events[1:4] == [
        # a text message gets a text reply
        {"event": "text", "data": "hello from the page \u00e9"},
        # the broadcast: text, since the page's last message was text
        {"event": "text", "data": "to every client"},
        # a binary message gets a binary reply
        {"event": "binary", "data": [255, 0, 65]},
    ]
    close = events[4]
    assert close["event"] == "close"
    assert close["code"] == 1008  # disconnected by the admin: policy
    assert close["reason"] == "kicked by an operator"
    assert len(events) == 5
    assert await tcp.recv() == "to every client"


if __name__ == "__main__":
    print(json.dumps(drive_page(sys.argv[1], sys.argv[2])))
