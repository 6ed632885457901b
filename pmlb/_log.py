"""Structured, leveled logs: a message plus ``key=value`` fields.

Callers pass the fields with ``extra``: ``log.info("client connected",
extra={"client": uuid, "peer": addr})``. The text format appends them as
``key=value`` (logfmt); the JSON format emits one object per line.

Many values come from outside (an upstream's UUID, a client's request path,
an error quoting its input), so both formats cut every value, the message
and a traceback to a bounded length (see :func:`clip`): no input can make a
log line of megabytes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

#: the most characters of one field value in a log line
MAX_VALUE = 256
#: the most characters of a message (its text is pmlb's, but may quote input)
MAX_MESSAGE = 1024
#: the most characters of a traceback
MAX_EXCEPTION = 16384

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def clip(value: object, limit: int = MAX_VALUE) -> str:
    """``value`` as text of at most ``limit`` characters, saying how much was cut."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text) - limit} more)"


def _bounded(value: Any) -> Any:
    # Numbers, booleans and None stay as they are in JSON; anything else
    # becomes at most MAX_VALUE characters.
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return clip(value)
    text = json.dumps(value, default=str)
    return value if len(text) <= MAX_VALUE else clip(text)


# The last second a timestamp was formatted for, and its text (a line per
# connection is logged: strftime for each costs more than the rest of a line).
_second = -1
_second_text = ""


def _timestamp(record: logging.LogRecord) -> str:
    global _second, _second_text
    second = int(record.created)
    if second != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    return f"{_second_text}.{int(record.msecs):03d}Z"


# What a logfmt value cannot hold unquoted.
_NEEDS_QUOTES = re.compile(r'[ "=\n]')


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record),
            f"{record.levelname:<7}",
            f"{record.name}:",
            clip(record.getMessage(), MAX_MESSAGE),
        ]
        parts += [f"{clip(k)}={_logfmt_value(clip(v))}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + clip(self.formatException(record.exc_info), MAX_EXCEPTION)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``msg`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": clip(record.getMessage(), MAX_MESSAGE),
        }
        obj.update((clip(k), _bounded(v)) for k, v in _fields(record).items())
        if record.exc_info:
            obj["exc"] = clip(self.formatException(record.exc_info), MAX_EXCEPTION)
        return json.dumps(obj, default=str)


def configure(
    level: str = "info", fmt: str = "text", *, fields: Mapping[str, object] | None = None
) -> None:
    """Send pmlb's logs to stderr at ``level`` in ``fmt`` (``text`` or ``json``).

    ``fields`` are added to every line (a worker's index, say).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    if fields:
        handler.addFilter(_AddFields(fields))
    root = logging.getLogger("pmlb")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _AddFields(logging.Filter):
    def __init__(self, fields: Mapping[str, object]) -> None:
        super().__init__()
        self._fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self._fields.items():
            setattr(record, name, value)
        return True


class RateLimited:
    """Logs at most once per ``period`` seconds, saying how many were suppressed.

    For events an outside party can repeat at will (an upstream sending to
    unknown UUIDs), so that they cannot flood the log.
    """

    def __init__(self, logger: logging.Logger, period: float = 1.0) -> None:
        self._logger = logger
        self._period = period
        self._next = 0.0
        self._suppressed = 0

    def warning(self, msg: str, **fields: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            fields["suppressed"] = self._suppressed
        self._suppressed = 0
        self._next = now + self._period
        self._logger.warning(msg, extra=fields)
