"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

Playwright runs in a child process: its sync API runs an asyncio loop, which
trio-asyncio (imported by other tests in this process) would have patched.

`.ci/run` installs Chromium (`apt-get install chromium`). Set
``PMLB_UPDATE_SCREENSHOT=1`` to write the README's screenshot to
``docs/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import trio

from tests.e2e.test_admin import TOKEN
from tests.helpers import ROOT, Processes, admin_url, upstream_arg, wait_serving
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
#: what the machine's closed network needs (see the environment notes): no
#: background fetches, no sandbox as root, a fresh profile
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def drive_dashboard(url: str, a: str, b_port: int, screenshot: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            # the token prompt, then the dashboard
            page.fill("#token", TOKEN)
            page.click("#login-form button")
            expect(page.locator(f'#upstreams tr[data-address="{a}"]')).to_contain_text("serving")
            expect(page.locator("#serving")).to_have_text("1 / 1")
            expect(page.locator("#clients-active")).to_have_text("1")

            page.fill("#add-upstream input[name=port]", str(b_port))
            page.click("#add-upstream button")
            b_row = page.locator(f'#upstreams tr[data-address="127.0.0.1:{b_port}"]')
            expect(b_row).to_contain_text("serving", timeout=20_000)
            expect(page.locator("#serving")).to_have_text("2 / 2")
            expect(page.locator("#events")).to_contain_text("admin.upstream_added")
            expect(page.locator("#cluster-card")).to_be_hidden()  # not in a cluster
            page.screenshot(path=str(screenshot), full_page=True)
            assert errors == []
        finally:
            browser.close()


async def test_dashboard_shows_upstreams_and_adds_one(procs: Processes, tmp_path: Path) -> None:
    if not HAVE_CHROMIUM:
        pytest.fail("Chromium is not installed: run .ci/run, or apt-get install chromium")
    _, a_port = await procs.upstream("A")
    _, b_port = await procs.upstream("B", kind="grpcio")
    pmlb, port = await procs.pmlb(
        "--framing", "line", *upstream_arg(a_port), env={"PMLB_ADMIN_TOKEN": TOKEN}
    )
    url = await admin_url(pmlb)
    await wait_serving(pmlb, a_port)
    client = await procs.client(port)
    await client.whoami()

    screenshot = tmp_path / "dashboard.png"
    args = [url, f"127.0.0.1:{a_port}", str(b_port), str(screenshot)]
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, __file__, *args], capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("PMLB_UPDATE_SCREENSHOT"):
        shutil.copy(screenshot, ROOT / "docs" / "dashboard.png")


def drive_cluster_dashboard(url: str, remote_uuid: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.fill("#token", TOKEN)
            page.click("#login-form button")
            expect(page.locator("#cluster-card")).to_be_visible()
            expect(page.locator("#cluster-summary")).to_have_text("(2 nodes, 1 clients)")
            expect(page.locator('#nodes tr[data-node="a"]')).to_contain_text("a (this one)")
            b_row = page.locator('#nodes tr[data-node="b"] td')
            expect(b_row.nth(2)).to_have_text("1")
            expect(b_row.nth(3)).to_have_text("1 / 1")
            # the client of node b, listed by a's dashboard with its node
            row = page.locator(f'#clients td[title="{remote_uuid}"] + td')
            expect(row).to_have_text("b")
            assert errors == []
        finally:
            browser.close()


async def test_dashboard_shows_the_nodes_of_a_cluster(
    procs: Processes, tmp_path: Path, redis: RedisServer
) -> None:
    if not HAVE_CHROMIUM:
        pytest.fail("Chromium is not installed: run .ci/run, or apt-get install chromium")
    from tests.e2e.test_cluster import start_node

    _, up_port = await procs.upstream("A")
    env = {"PMLB_ADMIN_TOKEN": TOKEN}
    (a, _), (_, b_port) = [
        await start_node(procs, tmp_path, redis, n, up_port, env=env) for n in "ab"
    ]
    client = await procs.client(b_port)
    uuid = await client.whoami()
    args = ["cluster", await admin_url(a), uuid]
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, __file__, *args], capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]


if __name__ == "__main__":
    if sys.argv[1] == "cluster":
        drive_cluster_dashboard(sys.argv[2], sys.argv[3])
    else:
        drive_dashboard(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
