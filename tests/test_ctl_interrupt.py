"""``pmlb ctl events``: Ctrl-C stops tailing however Trio delivers it."""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from typing import Any

import pytest
import trio

from pmlb import ctl


def interrupted(raised: BaseException) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        raise raised

    return run


@pytest.mark.parametrize(
    "raised",
    [KeyboardInterrupt(), BaseExceptionGroup("from a nursery", [KeyboardInterrupt()])],
    ids=["in the main task", "in trio-websocket's reader task"],
)
def test_ctrl_c_while_tailing_ends_quietly(
    monkeypatch: pytest.MonkeyPatch, raised: BaseException
) -> None:
    monkeypatch.setattr(trio, "run", interrupted(raised))
    args = argparse.Namespace(count=None, json=False, recent=False)
    out = io.StringIO()
    ctl._events(ctl.Api("http://127.0.0.1:1", None), args, out)
    assert out.getvalue() == ""


def test_other_errors_while_tailing_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trio, "run", interrupted(RuntimeError("boom")))
    args = argparse.Namespace(count=None, json=False, recent=False)
    with pytest.raises(RuntimeError, match="boom"):
        ctl._events(ctl.Api("http://127.0.0.1:1", None), args, io.StringIO())
