"""Several pmlb as one: the cluster bus over Redis (see :mod:`pmlb.cluster.bus`).

``Bus`` is imported on first use: :mod:`pmlb.cluster.ops` (what the admin
API needs) must not load coredis in a pmlb that is not in a cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pmlb.cluster.bus import Bus, BusStatistics

__all__ = ["Bus", "BusStatistics"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pmlb.cluster import bus

        return getattr(bus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
