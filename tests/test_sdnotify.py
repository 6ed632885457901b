"""pmlb.sdnotify against a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from pmlb.sdnotify import Notifier, monotonic_usec
from tests.notify_socket import NotifySocket


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("serving") is False
    assert notifier.watchdog_interval is None


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_ready_reloading_stopping_reach_the_socket(tmp_path: Path, abstract: bool) -> None:
    async with NotifySocket(None if abstract else tmp_path) as fake:
        notifier = Notifier(fake.env)
        assert notifier.enabled
        assert notifier.ready("listening: default 127.0.0.1:7999")
        assert await fake.receive() == {
            "READY": "1",
            "STATUS": "listening: default 127.0.0.1:7999",
        }
        before = monotonic_usec()
        assert notifier.reloading("reloading")
        fields = await fake.receive()
        assert fields["RELOADING"] == "1"
        assert before <= int(fields["MONOTONIC_USEC"]) <= monotonic_usec()
        assert notifier.stopping("draining\nnow")
        # One assignment a line: a newline in a value must not start another.
        assert await fake.receive() == {"STOPPING": "1", "STATUS": "draining now"}
        notifier.close()


async def test_a_socket_that_is_gone_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-here.sock")})
    with caplog.at_level(logging.WARNING, "pmlb.sdnotify"):
        assert notifier.ready("x") is False
        assert notifier.status("y") is False
    notifier.close()
    assert [r.getMessage() for r in caplog.records] == ["cannot notify the service manager"]


def test_a_relative_notify_socket_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "pmlb.sdnotify"):
        notifier = Notifier({"NOTIFY_SOCKET": "relative.sock"})
    assert not notifier.enabled
    assert "neither a path nor an abstract socket" in caplog.text


async def test_watchdog_pings_at_half_the_interval(tmp_path: Path, autojump_clock: object) -> None:
    async with NotifySocket(tmp_path) as fake:
        env = {**fake.env, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
        notifier = Notifier(env)
        assert notifier.watchdog_interval == 4.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notifier.run_watchdog)
            start = trio.current_time()
            for _ in range(3):
                assert await fake.receive() == {"WATCHDOG": "1"}
            assert trio.current_time() - start == pytest.approx(4.0)
            nursery.cancel_scope.cancel()
        notifier.close()


def test_watchdog_for_another_pid_is_not_ours(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    notifier = Notifier(env)
    assert notifier.watchdog_interval is None
    notifier.close()
