"""The wire contract's timestamps: the cached formatting agrees with datetime's."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from pmlb._time import rfc3339_from_ns, rfc3339_now

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# from 1970 to 2200, in nanoseconds
instants = st.integers(min_value=0, max_value=7_258_118_400 * 10**9)


def reference(ns: int) -> str:
    moment = EPOCH + timedelta(microseconds=ns // 1000)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@given(st.lists(instants, min_size=1, max_size=5))
def test_formatting_matches_datetime(moments: list[int]) -> None:
    # several in a row: the cached second must never leak into another one
    for ns in moments:
        assert rfc3339_from_ns(ns) == reference(ns)


def test_second_boundaries() -> None:
    second = 1_767_225_599 * 10**9  # 2025-12-31T23:59:59Z
    assert rfc3339_from_ns(second + 999_999_999) == "2025-12-31T23:59:59.999999Z"
    assert rfc3339_from_ns(second + 10**9) == "2026-01-01T00:00:00.000000Z"
    assert rfc3339_from_ns(second + 999) == "2025-12-31T23:59:59.000000Z"


def test_now_is_current() -> None:
    before = datetime.now(UTC)
    text = rfc3339_now()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert before - timedelta(microseconds=1) <= parsed <= after
