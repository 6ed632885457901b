"""The cluster bus's Prometheus metrics, read from its snapshot at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from pmlb.cluster.bus import Bus


def collect(bus: Bus) -> Iterator[Metric]:
    stats = bus.statistics()
    messages = CounterMetricFamily(
        "pmlb_cluster_messages",
        "Replies to clients of other nodes (to_nodes: sent, one per destination node,"
        " a broadcast once; from_nodes: received; dropped: Redis down, queue full or"
        " the node gone).",
        labels=["direction"],
    )
    messages.add_metric(["to_nodes"], stats.sent)
    messages.add_metric(["from_nodes"], stats.received)
    messages.add_metric(["dropped"], stats.dropped)
    yield messages
    yield CounterMetricFamily(
        "pmlb_cluster_bus_errors",
        "Failed Redis calls, lost Redis connections and malformed bus messages.",
        value=stats.errors,
    )
    yield GaugeMetricFamily(
        "pmlb_cluster_connected", "1 while this node is connected to Redis.", value=stats.connected
    )
    yield GaugeMetricFamily(
        "pmlb_cluster_queued", "Replies waiting to be sent to other nodes.", value=stats.queued
    )
    yield GaugeMetricFamily(
        "pmlb_cluster_nodes",
        "Live nodes at the last heartbeat, this one included.",
        value=len(stats.nodes),
    )
    yield GaugeMetricFamily(
        "pmlb_cluster_clients",
        "Clients of the whole cluster (Redis's directory) at the last heartbeat.",
        value=stats.cluster_clients,
    )
    latency = bus.latency
    yield HistogramMetricFamily(
        "pmlb_cluster_bus_latency_seconds",
        "Time of one flush to Redis (directory changes and replies for other nodes).",
        buckets=latency.cumulative(),
        sum_value=latency.total,
    )
