"""Several pmlb as one: the cluster bus over Redis (see :mod:`pmlb.cluster.bus`)."""

from pmlb.cluster.bus import Bus, BusStatistics

__all__ = ["Bus", "BusStatistics"]
