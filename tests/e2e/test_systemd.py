"""`pmlb serve` under a fake systemd: the notifications on its NOTIFY_SOCKET, and the unit file."""

from __future__ import annotations

import configparser
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from pmlb.config import Config
from tests.helpers import ROOT, TIMEOUT, Processes, admin_url, upstream_arg, wait_serving
from tests.notify_socket import NotifySocket

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_ready_once_serving_then_stopping_at_drain(
    procs: Processes, tmp_path: Path, abstract: bool
) -> None:
    _, up_port = await procs.upstream("A")
    async with NotifySocket(None if abstract else tmp_path) as fake:
        pmlb, port = await procs.pmlb(*upstream_arg(up_port), "--framing", "line", env=fake.env)
        ready = await fake.wait_for("READY")
        assert ready["READY"] == "1"
        # The first thing systemd hears is READY=1, sent once every listener
        # and the admin are bound: both answer at that moment.
        assert fake.messages == [ready]
        status = ready["STATUS"]
        assert f"default 127.0.0.1:{port}" in status, status
        url = re.search(r"admin (\S+)", status)
        assert url is not None
        assert url.group(1) == await admin_url(pmlb)
        client = await procs.client(port)
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            assert (await http.get(f"{url.group(1)}/healthz")).status_code == 200
        await wait_serving(pmlb, up_port)
        await client.whoami()

        pmlb.signal(signal.SIGTERM)
        stopping = await fake.wait_for("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert "draining" in stopping["STATUS"]
        assert await pmlb.wait() == 0


async def test_no_notify_socket_changes_nothing(procs: Processes) -> None:
    pmlb, port = await procs.pmlb(env={"NOTIFY_SOCKET": ""})
    await procs.client(port)
    pmlb.signal(signal.SIGTERM)
    assert await pmlb.wait() == 0
    assert pmlb.count("notify") == 0


async def test_an_unreachable_notify_socket_is_logged_and_pmlb_serves(
    procs: Processes, tmp_path: Path
) -> None:
    pmlb, port = await procs.pmlb(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    await pmlb.wait_for("cannot notify the service manager")
    client = await procs.client(port)
    await client.send("hello")
    pmlb.signal(signal.SIGTERM)
    assert await pmlb.wait() == 0


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "pmlb.service")
    return unit


def test_the_unit_file_is_type_notify_and_outlasts_a_drain() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ExecStart"].split()[1:3] == ["serve", "--config"]
    # systemd must not SIGKILL pmlb while its drain may still be running.
    stop = int(service["TimeoutStopSec"].removesuffix("s"))
    assert stop > Config().drain_timeout
    assert int(service["LimitNOFILE"]) >= 65536


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at one that does.
    text = (ROOT / "deploy" / "pmlb.service").read_text()
    unit = tmp_path / "pmlb.service"
    unit.write_text(text.replace("/opt/pmlb/bin/pmlb", shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "pmlb.service" not in result.stderr, result.stderr
