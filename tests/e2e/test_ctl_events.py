"""`pmlb ctl events` end to end: tail a running pmlb's event stream."""

from __future__ import annotations

import json
import signal
import sys

import pytest

from tests.e2e.test_admin import TOKEN, Admin, ctl, running
from tests.helpers import Processes

pytestmark = pytest.mark.e2e


async def tail(procs: Processes, admin: Admin, *args: str, token: str = TOKEN) -> object:
    cmd = [sys.executable, "-m", "pmlb", "ctl", "--url", admin.url, "events", *args]
    proc = await procs.start("ctl events", cmd, env={"PMLB_ADMIN_TOKEN": token})
    await proc.wait_for(r"^tailing events from ws://")
    return proc


async def test_events_are_tailed_as_readable_lines_until_the_count(procs: Processes) -> None:
    async with running(procs) as admin:
        proc = await tail(procs, admin, "--count", "2")
        client = await admin.client(procs)
        line = (await proc.wait_for(r" client\.connected ")).string
        assert f"client={client.uuid}" in line
        assert "listener=default" in line
        assert "transport=tcp" in line
        await admin.http.delete(f"/api/v1/clients/{client.uuid}")
        kicked = (await proc.wait_for(r" admin\.client_kicked ")).string
        assert f"client={client.uuid}" in kicked
        assert "caller=127.0.0.1:" in kicked
        assert await proc.wait() == 0  # two events: done
        assert proc.count(r" client\.disconnected ") == 0


async def test_events_as_json_lines_with_the_recent_ones_first(procs: Processes) -> None:
    async with running(procs) as admin:
        proc = await tail(procs, admin, "--recent", "--json", "--count", "1")
        assert await proc.wait() == 0
        (event,) = [json.loads(line) for line in proc.lines if line.startswith("{")]
        # the first event pmlb kept: its upstream was added at start
        assert event["type"] == "upstream.added"
        assert event["upstream"] == f"127.0.0.1:{admin.upstream_port}"


async def test_ctrl_c_stops_tailing_with_exit_0(procs: Processes) -> None:
    async with running(procs) as admin:
        proc = await tail(procs, admin)
        proc.signal(signal.SIGINT)
        assert await proc.wait() == 0
        assert not any("Traceback" in line for line in proc.lines)


async def test_a_wrong_token_is_refused_at_once(procs: Processes) -> None:
    async with running(procs) as admin:
        wrong = await ctl(admin, "events", "--count", "1", token="nope")
        assert wrong.returncode == 1
        assert "the event stream closed: 1008 missing or wrong bearer token" in wrong.stderr
        assert "nope" not in wrong.stderr + wrong.stdout
        bad = await ctl(admin, "events", "--count", "0")
        assert bad.returncode == 2
        assert "must be a whole number of at least 1" in bad.stderr
