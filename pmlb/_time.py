"""Timestamps as the wire contract writes them."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339_now() -> str:
    """The current time, RFC 3339 in UTC with microseconds: ``2026-01-02T03:04:05.123456Z``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def rfc3339_from(timestamp: float | None) -> str | None:
    """A ``time.time()`` value as RFC 3339 in UTC (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    return (
        datetime.fromtimestamp(timestamp, UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )
