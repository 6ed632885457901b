"""Reload end to end: `pmlb serve --config FILE`, the file rewritten, then SIGHUP or the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from tests.helpers import TIMEOUT, Proc, Processes, admin_url, wait_serving
from tests.notify_socket import NotifySocket

pytestmark = pytest.mark.e2e

TOKEN = "t0ken-for-the-reload-tests"


def write(path: Path, *upstream_ports: int, listeners: str = "", server: str = "") -> None:
    upstreams = "".join(
        f'\n[[upstream]]\nhost = "127.0.0.1"\nport = {port}\n' for port in upstream_ports
    )
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\nframing = "line"\n{server}\n'
        f"{listeners}{upstreams}"
    )


async def ctl_reload(url: str) -> subprocess.CompletedProcess[str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "pmlb", "ctl", "--url", url, "reload"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "PMLB_ADMIN_TOKEN": TOKEN},
        )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def reloaded(pmlb: Proc, mark: int) -> str:
    match = await pmlb.wait_for(r"configuration reloaded .*", after=mark)
    return match.group(0)


async def test_sighup_adds_an_upstream_that_gets_traffic_and_keeps_every_client(
    procs: Processes, tmp_path: Path
) -> None:
    _, a_port = await procs.upstream("A")
    _, b_port = await procs.upstream("B")
    config = tmp_path / "pmlb.toml"
    write(config, a_port)
    async with NotifySocket(tmp_path) as fake:
        pmlb, port = await procs.pmlb("--config", str(config), env=fake.env)
        await fake.wait_for("READY")
        await wait_serving(pmlb, a_port)
        client = await procs.client(port)
        uuid = await client.whoami()

        write(config, a_port, b_port)
        mark = pmlb.mark()
        pmlb.signal(signal.SIGHUP)
        reloading = await fake.wait_for("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        ready = await fake.wait_for("READY")
        assert ready["STATUS"] == "reloaded: 1 upstreams added"
        assert "1 upstreams added" in await reloaded(pmlb, mark)
        await wait_serving(pmlb, b_port, after=mark)
        await client.send(*(f"m{i}" for i in range(10)))
        assert Counter(r[0] for r in await client.recv_many(10)) == {"A": 5, "B": 5}
        assert await client.whoami() == uuid

        # A bad file: refused, logged, and everything goes on as it was.
        config.write_text(config.read_text() + "\n[server.oops]\n")
        config.write_text(config.read_text().replace("framing", "framming"))
        mark = pmlb.mark()
        pmlb.signal(signal.SIGHUP)
        refused = await pmlb.wait_for(r"reload refused.*", after=mark)
        assert "framming" in refused.group(0)
        assert "did you mean 'framing'" in refused.group(0)
        ready = await fake.wait_for("READY")
        assert ready["STATUS"].startswith("reload refused: ")
        await client.send(*(f"n{i}" for i in range(4)))
        assert Counter(r[0] for r in await client.recv_many(4)) == {"A": 2, "B": 2}

        pmlb.signal(signal.SIGTERM)
        assert await pmlb.wait() == 0


async def test_the_api_and_ctl_reload_listeners_and_report_problems(
    procs: Processes, tmp_path: Path
) -> None:
    _, a_port = await procs.upstream("A")
    config = tmp_path / "pmlb.toml"
    extra = '[[listener]]\nname = "extra"\nhost = "127.0.0.1"\nport = 0\nframing = "line"\n'
    # [server] sets host and port, so it stays a listener beside [[listener]]s.
    write(config, a_port)
    env = {"PMLB_ADMIN_TOKEN": TOKEN}
    pmlb, port = await procs.pmlb("--config", str(config), env=env)
    url = await admin_url(pmlb)
    await wait_serving(pmlb, a_port)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT) as http:
        write(config, a_port, listeners=extra)
        answer = await http.post("/api/v1/runtime/reload")
        assert answer.status_code == 200, answer.text
        assert answer.json()["listeners_added"] == ["extra"]
        runtime = (await http.get("/api/v1/runtime")).json()
        extra_port = int(runtime["listeners"]["extra"][0].rsplit(":", 1)[1])
        on_extra = await procs.client(extra_port)
        on_default = await procs.client(port)
        uuids = (await on_extra.whoami(), await on_default.whoami())

        # Removed: it stops accepting, its client stays and is served.
        write(config, a_port, server="activity_window = 9")
        answer = await http.post("/api/v1/runtime/reload")
        assert answer.json()["listeners_removed"] == ["extra"]
        assert answer.json()["settings"] == ["server.activity_window"]
        with pytest.raises(OSError):  # noqa: PT011 (refused, whatever the errno)
            await procs.client(extra_port)
        assert (await on_extra.whoami(), await on_default.whoami()) == uuids

        # A bad file: 422 with each problem; nothing changes.
        config.write_text(config.read_text() + '\n[[upstream]]\nhost = ""\nport = 0\n')
        answer = await http.post("/api/v1/runtime/reload")
        assert answer.status_code == 422
        problems = answer.json()["problems"]
        assert any("upstream[1].host: must not be empty" in p for p in problems), problems
        assert any("upstream[1].port: must be an integer from 1" in p for p in problems)
        assert (await http.get("/api/v1/runtime")).json()["config"]["activity_window"] == 9
        metrics = (await http.get("/metrics")).text
        assert 'pmlb_config_reloads_total{result="applied"} 2.0' in metrics
        assert 'pmlb_config_reloads_total{result="refused"} 1.0' in metrics
        assert "pmlb_config_last_reload_successful 0.0" in metrics
        ctl = await ctl_reload(url)
        assert ctl.returncode == 1
        assert "422: the configuration is unusable" in ctl.stderr
        assert "upstream[1].host: must not be empty" in ctl.stderr

        write(config, a_port, server="activity_window = 9")
        ctl = await ctl_reload(url)
        assert ctl.returncode == 0, ctl.stderr
        assert "nothing changed" in ctl.stdout
    pmlb.signal(signal.SIGTERM)
    assert await pmlb.wait() == 0
