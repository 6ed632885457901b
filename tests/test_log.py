from __future__ import annotations

import json
import logging
import sys

import pytest

from pmlb import _log


def record(msg: str, **fields: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "pmlb.test", "levelname": "INFO", "msg": msg})
    rec.__dict__.update(fields)
    return rec


def test_text_format_appends_fields_as_logfmt_quoting_when_needed() -> None:
    line = _log.TextFormatter().format(record("client connected", client="abc", reason="too big x"))
    assert line.endswith('INFO    pmlb.test: client connected client=abc reason="too big x"')


def test_json_format_is_one_object_with_the_fields() -> None:
    obj = json.loads(_log.JSONFormatter().format(record("listening", address="127.0.0.1:1")))
    assert obj["msg"] == "listening"
    assert obj["address"] == "127.0.0.1:1"
    assert obj["level"] == "info"
    assert obj["time"].endswith("Z")


def test_rate_limited_logs_once_per_period_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [100.0]
    monkeypatch.setattr(_log.time, "monotonic", lambda: now[0])
    limited = _log.RateLimited(logging.getLogger("pmlb.test"), period=1.0)
    with caplog.at_level(logging.WARNING, logger="pmlb.test"):
        for _ in range(5):
            limited.warning("dropped", n=1)
        now[0] += 1.0
        limited.warning("dropped", n=2)
    assert [r.getMessage() for r in caplog.records] == ["dropped", "dropped"]
    assert not hasattr(caplog.records[0], "suppressed")
    assert caplog.records[1].suppressed == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize("formatter", [_log.TextFormatter(), _log.JSONFormatter()])
def test_no_value_makes_a_line_longer_than_its_cap(formatter: logging.Formatter) -> None:
    huge = "u" * 1_000_000
    rec = record("x" * 100_000, client=huge, nested=[huge], count=3)
    try:
        raise ValueError(huge)
    except ValueError:
        rec.exc_info = sys.exc_info()
    line = formatter.format(rec)
    bound = _log.MAX_MESSAGE + 2 * _log.MAX_VALUE + _log.MAX_EXCEPTION + 400
    assert len(line) < bound
    assert "(999744 more)" in line  # says how much was cut
    assert "count=3" in line or '"count": 3' in line


def test_clip_keeps_short_text_and_says_what_it_cut() -> None:
    assert _log.clip("abc") == "abc"
    assert _log.clip("abcdef", 3) == "abc...(3 more)"
