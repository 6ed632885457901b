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


NO_OVERFLOW = """() => {
  const out = [];
  for (const b of document.querySelectorAll("main button")) {
    const card = b.closest(".card").getBoundingClientRect(), r = b.getBoundingClientRect();
    const outside = r.left < card.left - 0.5 || r.right > card.right + 0.5;
    if (r.width && outside) out.push(b.textContent);
  }
  return out;
}"""
#: pixels of the chart's line colour (#2f6fed): the line is drawn
LINE_PIXELS = """() => {
  const c = document.getElementById("rate-chart");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (d[i + 3] > 200 && Math.abs(d[i] - 47) < 30 && Math.abs(d[i + 2] - 237) < 30) n++;
  return n;
}"""


def drive_dashboard(url: str, a: str, b_port: int, uuid: str, screenshot: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            # the token prompt, then the dashboard
            page.fill("#token", TOKEN)
            page.click("#login-form button")
            expect(page.locator(f'#upstreams tr[data-address="{a}"]')).to_contain_text("serving")
            expect(page.locator("#serving")).to_have_text("1 / 1")
            expect(page.locator("#clients-active")).to_have_text("22")
            expect(page.locator("#logout")).to_be_visible()  # a token is set

            page.fill("#add-upstream input[name=port]", str(b_port))
            page.click("#add-upstream button")
            b = f"127.0.0.1:{b_port}"
            b_row = page.locator(f'#upstreams tr[data-address="{b}"]')
            expect(b_row).to_contain_text("serving", timeout=20_000)
            expect(page.locator("#serving")).to_have_text("2 / 2")
            expect(page.locator("#events")).to_contain_text("admin.upstream_added")

            # drain asks first: dismissed, nothing changes; accepted, drained
            page.once("dialog", lambda dialog: dialog.dismiss())
            b_row.locator("button", has_text="Drain").click()
            expect(page.locator("#events")).not_to_contain_text("admin.upstream_state")
            page.once("dialog", lambda dialog: dialog.accept())
            b_row.locator("button", has_text="Drain").click()
            expect(b_row.locator(".badge.drain")).to_have_text("drain")
            expect(page.locator("#serving")).to_have_text("1 / 2")
            b_row.locator("button", has_text="Ready").click()  # no question to undo
            expect(b_row.locator(".badge.drain")).to_have_count(0)
            expect(page.locator("#serving")).to_have_text("2 / 2")
            page.once("dialog", lambda dialog: dialog.dismiss())
            b_row.locator("button", has_text="Remove").click()
            expect(b_row).to_have_count(1)

            # clients: 20 a page, searchable, with listener and times
            expect(page.locator("#clients tr")).to_have_count(20)
            expect(page.locator("#clients-count")).to_have_text("(22 connected)")
            page.click("#clients-next")
            expect(page.locator("#clients tr")).to_have_count(2)
            expect(page.locator("#clients-page")).to_have_text("page 2")
            page.click("#clients-prev")
            expect(page.locator("#clients tr")).to_have_count(20)
            page.fill("#client-q", uuid[:13])
            row = page.locator(f'#clients tr[data-uuid="{uuid}"]')
            expect(page.locator("#clients tr")).to_have_count(1)
            expect(row).to_contain_text("default")
            expect(row).to_contain_text(" ago")
            page.once("dialog", lambda dialog: dialog.dismiss())
            row.locator("button", has_text="Disconnect").click()
            expect(page.locator("#clients-count")).to_have_text("(22 connected)")
            page.once("dialog", lambda dialog: dialog.accept())
            row.locator("button", has_text="Disconnect").click()
            expect(page.locator("#clients-count")).to_have_text("(21 connected)")
            expect(page.locator("#clients tr")).to_have_text("No client matches.")
            page.fill("#client-q", "")
            expect(page.locator("#clients tr")).to_have_count(20)

            # the charts fill up, one point a second; figures for latency and errors
            page.wait_for_function("history.length >= 3", timeout=20_000)
            # drawn on the next frame after a point arrives: wait for the line itself
            page.wait_for_function(f"({LINE_PIXELS})() > 50", timeout=20_000)
            expect(page.locator("#clients-max")).to_have_text("max 22")
            expect(page.locator("#ping")).not_to_have_text("\N{EN DASH}")
            expect(page.locator("#failures")).to_have_text("0")
            expect(page.locator("#drops")).to_have_text("0")

            expect(page.locator("#cluster-card")).to_be_hidden()  # not in a cluster

            # no button sticks out of its card, wide or narrow
            assert page.evaluate(NO_OVERFLOW) == []
            page.wait_for_function("history.length >= 12", timeout=30_000)  # a fuller chart
            page.screenshot(path=str(screenshot))
            page.set_viewport_size({"width": 700, "height": 900})
            page.wait_for_timeout(200)  # a layout pass, nothing to wait on in the page
            assert page.evaluate(NO_OVERFLOW) == []
            assert errors == []
        finally:
            browser.close()


def drive_open_dashboard(url: str) -> None:
    """A pmlb without a token: no prompt, and no "Forget token" button."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.locator("#status")).to_have_text("live")
            expect(page.locator("#login")).to_be_hidden()
            expect(page.locator("#logout")).to_be_hidden()
        finally:
            browser.close()


async def browse(*args: str) -> None:
    with trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, __file__, *args], capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr.decode()[-3000:]


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
    clients = []
    for _ in range(22):
        client = await procs.client(port)
        await client.whoami()
        clients.append(client)
    uuid = clients[5].uuid or ""

    async def traffic() -> None:
        # Something for the messages/s chart: a message and its answer
        # every 50 ms, at most 1,200 (a minute).
        talker = clients[1]
        for n in range(1200):
            await talker.send(f"t{n}")
            await talker.recv()
            await trio.sleep(0.05)

    screenshot = tmp_path / "dashboard.png"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic)
        await browse(url, f"127.0.0.1:{a_port}", str(b_port), uuid, str(screenshot))
        nursery.cancel_scope.cancel()
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("PMLB_UPDATE_SCREENSHOT"):
        shutil.copy(screenshot, ROOT / "docs" / "dashboard.png")


async def test_without_a_token_there_is_nothing_to_forget(procs: Processes) -> None:
    if not HAVE_CHROMIUM:
        pytest.fail("Chromium is not installed: run .ci/run, or apt-get install chromium")
    pmlb, _ = await procs.pmlb()
    await browse("open", await admin_url(pmlb))


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
    if sys.argv[1] == "open":
        drive_open_dashboard(sys.argv[2])
    elif sys.argv[1] == "cluster":
        drive_cluster_dashboard(sys.argv[2], sys.argv[3])
    else:
        drive_dashboard(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]))
