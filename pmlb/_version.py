"""pmlb's version, from its installed distribution's metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

#: pmlb's distribution name on PyPI (the import name is ``pmlb``)
DISTRIBUTION = "pmlb-proxy"


def pmlb_version() -> str:
    """The installed version, or ``"unknown"`` when run from a bare source tree."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
