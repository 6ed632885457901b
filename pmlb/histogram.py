"""The latency histogram the core keeps on the data path; pmlb.metrics exposes it.

It sits at the bottom of the layers (no pmlb imports) so that the supervisor,
the outbox's acks, the cluster bus and the registry can each own one without
importing the Prometheus side.
"""

from bisect import bisect_left

#: Upper bounds in seconds; a batch that waits for an upstream to serve can
#: take seconds, a healthy one microseconds.
LATENCY_BUCKETS = (
    0.00001,
    0.00005,
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
)


class LatencyHistogram:
    """A cumulative histogram cheap enough for the data path (no locks, one bisect)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float, count: int = 1) -> None:
        """Record ``count`` events that each took ``seconds``."""
        self.counts[bisect_left(self.buckets, seconds)] += count
        self.total += seconds * count

    def mean(self) -> float:
        """The mean of what was observed (0 before anything was)."""
        count = sum(self.counts)
        return self.total / count if count else 0.0

    def cumulative(self) -> list[tuple[str, int]]:
        running, out = 0, []
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out
