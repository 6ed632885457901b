"""The pmlb command line, run as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio

from pmlb.config import format_address
from tests.helpers import Processes, upstream_arg, wait_serving
from tests.test_config import ORIGINAL

pytestmark = pytest.mark.e2e


def pmlb_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pmlb", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_config_prints_the_effective_config_of_the_original_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(ORIGINAL)
    result = pmlb_cli(
        "check-config", str(path), "--port", "8999", env={"PMLB_ADMIN_TOKEN": "s3cret-token"}
    )
    assert result.returncode == 0, result.stderr
    assert 'host = "0.0.0.0"' in result.stdout
    assert "port = 8999" in result.stdout  # the flag overrides the file
    assert "port = 45888" in result.stdout
    assert "alive_timeout = 30" in result.stdout
    assert 'token = "***"' in result.stdout
    assert "s3cret-token" not in result.stdout
    # The effective config shows what pmlb runs on, defaults included.
    for line in ("drain_period = 0", "drain_timeout = 20", "drain_upstream_wait = 5"):
        assert line in result.stdout
    assert "events = false" in result.stdout
    assert 'health = "contract"' in result.stdout


def test_check_config_refuses_what_serve_refuses_with_the_same_message_and_code(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(ORIGINAL)  # the admin on 0.0.0.0, and no token
    env = {"PMLB_ADMIN_TOKEN": ""}
    checked = pmlb_cli("check-config", str(path), env=env)
    served = pmlb_cli("serve", "--config", str(path), env=env)
    assert checked.returncode == served.returncode == 2
    assert checked.stderr == served.stderr
    assert "management_server.host: '0.0.0.0' is not a loopback address" in checked.stderr
    assert checked.stdout == ""


def test_check_config_suggests_the_key_meant(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("[server]\nmax_mesage_size = 100\n")
    result = pmlb_cli("check-config", str(path))
    assert result.returncode == 2
    assert (
        f"{path}: server.max_mesage_size: unknown key (did you mean 'max_message_size'?)"
        in result.stderr
    )


def test_check_config_reports_every_problem_with_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "x"\ncolour = "red"\n[[upstream]]\nhost = "h"\n')
    result = pmlb_cli("check-config", str(path))
    assert result.returncode == 2
    assert f"{path}: server.port: must be an integer" in result.stderr
    assert f"{path}: server.colour: unknown key" in result.stderr
    assert f"{path}: upstream[0].port: required" in result.stderr
    assert result.stdout == ""


def test_serve_with_a_bad_flag_value_exits_2() -> None:
    result = pmlb_cli("serve", "--upstream", "nonsense")
    assert result.returncode == 2
    assert "--upstream" in result.stderr


def test_serve_on_a_taken_port_exits_1_with_a_clear_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = pmlb_cli("serve", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_stops_gracefully_with_exit_0(procs: Processes, signum: int) -> None:
    _, up_port = await procs.upstream("A")
    pmlb, port = await procs.pmlb("--framing", "line", *upstream_arg(up_port))
    await wait_serving(pmlb, up_port)
    client = await procs.client(port)
    await client.whoami()
    pmlb.signal(signum)
    assert await pmlb.wait() == 0
    assert await client.expect_closed() == b""
    await pmlb.wait_for("stopping: closing listeners and clients")
    await pmlb.wait_for("stopping: closing upstream streams")


async def test_demo_answers_a_client_at_once(procs: Processes) -> None:
    demo = await procs.start(
        "pmlb demo", [sys.executable, "-m", "pmlb", "demo", "--port", "0", "--admin-port", "0"]
    )
    port = int(
        (await demo.wait_for(r"listening listener=default address=127\.0\.0\.1:(\d+)")).group(1)
    )
    await demo.wait_for("upstream serving")
    client = await procs.client(port)
    await client.stream.send_all(b"hello pmlb\n")
    assert await client.recv() == "hello pmlb"
    demo.signal(signal.SIGINT)
    assert await demo.wait() == 0


async def test_demo_upstream_follows_a_killed_demo(procs: Processes) -> None:
    demo = await procs.start(
        "pmlb demo", [sys.executable, "-m", "pmlb", "demo", "--port", "0", "--admin-port", "0"]
    )
    await demo.wait_for("upstream serving")
    children = trio.Path(f"/proc/{demo.pid}/task/{demo.pid}/children")
    [child] = (await children.read_text()).split()
    # A pidfd turns readable when that process exits: no polling.
    pidfd = os.pidfd_open(int(child))
    try:
        demo.signal(signal.SIGKILL)
        await demo.wait()
        with trio.fail_after(30):
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def test_json_logs_are_one_object_per_line_with_fields(procs: Processes) -> None:
    cmd = [sys.executable, "-m", "pmlb", "serve", "--host", "127.0.0.1", "--port", "0"]
    # No wait for replies after a client's EOF: it is closed (and logged) at once.
    env = {"PMLB_SERVER_CLIENT_FIN_TIMEOUT": "0"}
    pmlb = await procs.start("pmlb", [*cmd, "--admin-port", "0", "--log-format", "json"], env)
    line = (await pmlb.wait_for(r'"msg": "listening"')).string
    event = json.loads(line)
    assert event["level"] == "info"
    assert event["logger"] == "pmlb.downstream"
    assert event["listener"] == "default"
    port = int(event["address"].rsplit(":", 1)[1])
    client = await procs.client(port)
    peer = format_address(*client.stream.socket.getsockname()[:2])
    await trio.aclose_forcefully(client.stream)
    # A connection's INFO line is its "client disconnected" (the session).
    ended = json.loads((await pmlb.wait_for(r'"msg": "client disconnected"')).string)
    assert uuid.UUID(ended["client"]).version == 4
    assert ended["peer"] == peer
    assert ended["level"] == "info"
    assert isinstance(ended["duration"], float | int)


def test_version() -> None:
    result = pmlb_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("pmlb ")
    assert "(pmlb-proxy)" in result.stdout


def test_check_config_shows_the_environment_between_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nhost = "127.0.0.1"\nport = 7000\nactivity_window = 30\n')
    env = {
        "PMLB_SERVER_PORT": "7001",
        "PMLB_SERVER_ACTIVITY_WINDOW": "12",
        "PMLB_SERVER_MAX_CLIENTS_TOTAL": "777",
        "PMLB_ADMIN_TOKEN": "env-s3cret",
        "PMLB_UPSTREAMS": "127.0.0.1:5001,127.0.0.1:5002",
    }
    result = pmlb_cli("check-config", str(path), "--activity-window", "9", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "port = 7001" in out  # the environment over the file
    assert "activity_window = 9" in out  # the flag over the environment
    assert "max_clients_total = 777" in out
    assert "port = 5001" in out
    assert "port = 5002" in out
    assert 'token = "***"' in out
    assert "env-s3cret" not in out
    assert (
        "# with the environment's PMLB_ADMIN_TOKEN, PMLB_SERVER_ACTIVITY_WINDOW,"
        " PMLB_SERVER_MAX_CLIENTS_TOTAL, PMLB_SERVER_PORT, PMLB_UPSTREAMS"
    ) in out


def test_a_bad_environment_variable_stops_serve_with_code_2_naming_it() -> None:
    env = {"PMLB_SERVER_MAX_CLIENTS_TOTAL": "lots", "PMLB_LOG_LEVL": "debug"}
    result = pmlb_cli("serve", "--no-admin", env=env)
    assert result.returncode == 2
    assert (
        "environment: PMLB_SERVER_MAX_CLIENTS_TOTAL: must be an integer >= 0, got string 'lots'"
        in result.stderr
    )
    assert "PMLB_LOG_LEVL: unknown variable (did you mean PMLB_LOG_LEVEL?)" in result.stderr


async def test_serve_listens_where_the_environment_says(procs: Processes) -> None:
    _, up_port = await procs.upstream("A")
    env = {"PMLB_UPSTREAMS": f"127.0.0.1:{up_port}", "PMLB_SERVER_FRAMING": "line"}
    pmlb, port = await procs.pmlb(env=env)
    await wait_serving(pmlb, up_port)
    client = await procs.client(port)
    await client.send("hello")
    assert await client.recv() == "A:hello"
