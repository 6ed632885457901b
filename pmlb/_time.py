"""Timestamps as the wire contract writes them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

# The last whole second formatted, and its text up to the seconds: every
# client message carries a timestamp, and datetime's formatting costs ~6 µs.
_second = -1
_prefix = ""


def rfc3339_now() -> str:
    """The current time, RFC 3339 in UTC with microseconds: ``2026-01-02T03:04:05.123456Z``."""
    return rfc3339_from_ns(time.time_ns())


def rfc3339_from_ns(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 in UTC, truncated to microseconds."""
    global _second, _prefix
    second, rest = divmod(ns, 1_000_000_000)
    if second != _second:
        _prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    return f"{_prefix}.{rest // 1000:06d}Z"


def rfc3339_from(timestamp: float | None) -> str | None:
    """A ``time.time()`` value as RFC 3339 in UTC (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    return (
        datetime.fromtimestamp(timestamp, UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )
