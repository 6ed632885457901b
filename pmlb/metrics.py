"""Prometheus metrics, read from the registry's snapshots at scrape time.

Nothing here runs per message except :meth:`LatencyHistogram.observe`, once
per dispatched batch; every other figure is a counter the core keeps anyway,
collected when ``/metrics`` is scraped.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from pmlb._version import pmlb_version
from pmlb.histogram import LATENCY_BUCKETS as LATENCY_BUCKETS
from pmlb.histogram import LatencyHistogram as LatencyHistogram

if TYPE_CHECKING:
    from pmlb.registry import Registry


class RegistryCollector(Collector):
    """Turns one :class:`~pmlb.registry.Registry` into Prometheus metric families."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        from pmlb.upstream.state import AdminState, UpstreamState

        registry = self._registry
        stats = registry.statistics()

        current = GaugeMetricFamily(
            "pmlb_clients", "Clients connected now, by listener.", labels=["listener"]
        )
        total = CounterMetricFamily(
            "pmlb_clients_connected", "Clients ever connected, by listener.", labels=["listener"]
        )
        for listener in registry.config.listeners:
            current.add_metric([listener.name], stats.clients_by_listener.get(listener.name, 0))
            total.add_metric([listener.name], stats.clients_total_by_listener.get(listener.name, 0))
        yield current
        yield total

        messages = CounterMetricFamily(
            "pmlb_messages", "Messages by direction.", labels=["direction"]
        )
        messages.add_metric(["from_clients"], stats.messages_from_clients)
        messages.add_metric(["to_clients"], stats.messages_to_clients)
        yield messages
        data = CounterMetricFamily(
            "pmlb_client_bytes", "Bytes on client connections by direction.", labels=["direction"]
        )
        data.add_metric(["from_clients"], stats.bytes_from_clients)
        data.add_metric(["to_clients"], stats.bytes_to_clients)
        yield data

        disconnects = CounterMetricFamily(
            "pmlb_client_disconnects",
            "Closed client connections by kind of reason (slow, too_big, kicked, ...).",
            labels=["reason"],
        )
        for reason, count in sorted(stats.disconnects.items()):
            disconnects.add_metric([reason], count)
        yield disconnects
        yield CounterMetricFamily(
            "pmlb_clients_refused",
            "Connections closed at once because new clients were not accepted.",
            value=stats.refused,
        )

        connections = stats.connections
        yield GaugeMetricFamily(
            "pmlb_connections_open",
            "Connections open now, including those still in their handshake.",
            value=connections.open,
        )
        yield CounterMetricFamily(
            "pmlb_connections_accepted",
            "Connections accepted by the listeners.",
            value=connections.accepted,
        )
        limited = CounterMetricFamily(
            "pmlb_connections_limited",
            "Connections refused or closed by a limit or a failed handshake, by reason.",
            labels=["reason"],
        )
        for reason, count in (
            ("max_clients", connections.refused_max_clients),
            ("accept_rate", connections.refused_accept_rate),
            ("handshake_timeout", connections.handshake_timeouts),
            ("tls_handshake", connections.tls_handshake_failures),
            ("proxy_header", connections.proxy_header_errors),
            ("idle_timeout", connections.idle_timeouts),
            ("bad_input", connections.bad_input),
            ("slow_client", connections.slow_client_disconnects),
        ):
            limited.add_metric([reason], count)
        yield limited
        yield CounterMetricFamily(
            "pmlb_slow_client_dropped_messages",
            "Messages to slow clients dropped by the drop_oldest policy.",
            value=connections.slow_client_dropped,
        )

        states = GaugeMetricFamily(
            "pmlb_upstream_state",
            "1 for each upstream's current state.",
            labels=["upstream", "state"],
        )
        admin_states = GaugeMetricFamily(
            "pmlb_upstream_admin_state",
            "1 for the state an operator set on each upstream (ready, drain, maint).",
            labels=["upstream", "state"],
        )
        queued = GaugeMetricFamily(
            "pmlb_upstream_queued", "Messages waiting for each upstream.", labels=["upstream"]
        )
        stalled = GaugeMetricFamily(
            "pmlb_upstream_stalled",
            "1 while an upstream's writes make no progress (it gets no new messages).",
            labels=["upstream"],
        )
        stalls = CounterMetricFamily(
            "pmlb_upstream_stalls", "Times each upstream stalled.", labels=["upstream"]
        )
        upstream_messages = CounterMetricFamily(
            "pmlb_upstream_messages",
            "Messages to and from each upstream (to_upstream: dispatched to its queue;"
            " written_to_upstream: of those, written to its stream).",
            labels=["upstream", "direction"],
        )
        failures = CounterMetricFamily(
            "pmlb_upstream_failures",
            "Upstream failures: serving (its stream or liveness failed, it stopped serving)"
            " and readiness (a ready check failed).",
            labels=["upstream", "kind"],
        )
        for address, upstream in list(registry.upstreams.items()):
            failures.add_metric([address, "serving"], upstream.failures)
            failures.add_metric([address, "readiness"], upstream.ready_failures)
            for state in UpstreamState:
                if state is not UpstreamState.REMOVED:
                    # Label values without spaces: "checking readiness" is checking_readiness.
                    label = str(state).replace(" ", "_")
                    states.add_metric([address, label], float(upstream.state is state))
            for admin_state in AdminState:
                admin_states.add_metric(
                    [address, str(admin_state)], float(upstream.admin_state is admin_state)
                )
            queued.add_metric([address], len(upstream.outbox))
            stalled.add_metric([address], float(upstream.stalled))
            stalls.add_metric([address], upstream.stalls)
            upstream_messages.add_metric([address, "to_upstream"], upstream.messages_dispatched)
            upstream_messages.add_metric([address, "from_upstream"], upstream.messages_received)
            upstream_messages.add_metric(
                [address, "written_to_upstream"], upstream.messages_written
            )
        yield states
        yield admin_states
        yield from _health_latency(registry)
        yield queued
        yield stalled
        yield stalls
        yield upstream_messages
        yield failures
        yield from _ack_metrics(registry)
        yield GaugeMetricFamily(
            "pmlb_upstreams_serving", "Upstreams serving now.", value=stats.upstreams_serving
        )
        yield GaugeMetricFamily(
            "pmlb_accepting",
            "1 while new clients are accepted (0: paused by an operator, or draining).",
            value=float(stats.accepting),
        )
        yield GaugeMetricFamily(
            "pmlb_draining",
            "1 once a drain has started (SIGTERM, the admin API); the process exits after it.",
            value=float(registry.stop_requested.is_set()),
        )
        reloads = CounterMetricFamily(
            "pmlb_config_reloads",
            "Configuration reloads (SIGHUP, the admin API), applied or refused.",
            labels=["result"],
        )
        for result in ("applied", "refused"):
            reloads.add_metric([result], registry.reloads[result])
        yield reloads
        yield GaugeMetricFamily(
            "pmlb_config_last_reload_successful",
            "0 when the last reload was refused (the file has a problem), else 1.",
            value=float(registry.last_reload_ok),
        )
        yield GaugeMetricFamily(
            "pmlb_awaiting_upstream",
            "Accepted client messages not yet written to an upstream.",
            value=stats.awaiting_upstream,
        )
        yield GaugeMetricFamily(
            "pmlb_client_queued",
            "Messages waiting to be written to clients, all clients together.",
            value=stats.queued_to_clients,
        )
        yield GaugeMetricFamily(
            "pmlb_client_queued_bytes",
            "Bytes queued for or being written to clients, all clients together"
            " (bounded by client_queue_bytes_total).",
            value=stats.queued_bytes_to_clients,
        )

        latency = registry.dispatch_latency
        yield HistogramMetricFamily(
            "pmlb_dispatch_latency_seconds",
            "Time from reading client messages to handing them to an upstream's queue.",
            buckets=latency.cumulative(),
            sum_value=latency.total,
        )

        yield CounterMetricFamily(
            "pmlb_broadcasts",
            "Broadcasts sent (by upstreams or the admin).",
            value=stats.broadcasts,
        )
        yield CounterMetricFamily(
            "pmlb_broadcast_recipients",
            "Clients a broadcast was queued for, summed over broadcasts.",
            value=stats.broadcast_recipients,
        )
        yield CounterMetricFamily(
            "pmlb_unknown_client_drops",
            "Upstream messages dropped because their client UUID is not connected.",
            value=stats.unknown_client,
        )
        yield CounterMetricFamily(
            "pmlb_invalid_target_drops",
            "Upstream messages dropped because their target is invalid.",
            value=stats.invalid_target,
        )
        yield CounterMetricFamily(
            "pmlb_event_subscribers_dropped",
            "Admin event stream consumers dropped for falling behind.",
            value=registry.events.dropped_subscribers,
        )
        if registry.cluster is not None:
            from pmlb.cluster.metrics import collect

            yield from collect(registry.cluster)


def _health_latency(registry: Registry) -> Iterator[Metric]:
    """Per upstream: liveness ping round trips and readiness check latency."""
    ping = HistogramMetricFamily(
        "pmlb_upstream_ping_seconds",
        "Round trip of each upstream's liveness pings (to the answer).",
        labels=["upstream"],
    )
    ready = HistogramMetricFamily(
        "pmlb_upstream_ready_check_seconds",
        "Time each upstream's readiness checks took to answer (ready or not).",
        labels=["upstream"],
    )
    for address, upstream in list(registry.upstreams.items()):
        ping.add_metric([address], upstream.ping_latency.cumulative(), upstream.ping_latency.total)
        ready.add_metric(
            [address], upstream.ready_latency.cumulative(), upstream.ready_latency.total
        )
    yield ping
    yield ready


def _ack_metrics(registry: Registry) -> Iterator[Metric]:
    """Per upstream with ``acks = true``: the unacknowledged, acks, redeliveries, latency."""
    unacked = GaugeMetricFamily(
        "pmlb_upstream_unacked",
        "Requests written to an upstream with acks and not acknowledged yet.",
        labels=["upstream"],
    )
    acks = CounterMetricFamily(
        "pmlb_upstream_acks",
        "Acknowledgements received: matched, or unknown (no such seq, or acked already).",
        labels=["upstream", "kind"],
    )
    redelivered = CounterMetricFamily(
        "pmlb_upstream_redelivered",
        "Unacknowledged requests of a failed upstream dispatched again.",
        labels=["upstream"],
    )
    undeliverable = CounterMetricFamily(
        "pmlb_upstream_undeliverable",
        "Unacknowledged requests dropped after max_deliveries deliveries.",
        labels=["upstream"],
    )
    latency = HistogramMetricFamily(
        "pmlb_ack_latency_seconds",
        "Time from writing a request to an upstream's stream to its acknowledgement.",
        labels=["upstream"],
    )
    for address, upstream in list(registry.upstreams.items()):
        table = upstream.outbox.unacked
        if table is None:
            continue
        unacked.add_metric([address], len(table))
        acks.add_metric([address, "received"], table.acks_received)
        acks.add_metric([address, "unknown"], table.acks_unknown)
        redelivered.add_metric([address], upstream.redelivered)
        undeliverable.add_metric([address], upstream.undeliverable)
        latency.add_metric([address], table.latency.cumulative(), table.latency.total)
    yield unacked
    yield acks
    yield redelivered
    yield undeliverable
    yield latency


class BuildCollector(Collector):
    """``pmlb_build_info`` (version and Python as labels) and ``pmlb_start_time_seconds``."""

    def __init__(self, started_at: float) -> None:
        self._started_at = started_at

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "pmlb_build_info", "pmlb's version; always 1.", labels=["version", "python"]
        )
        info.add_metric([pmlb_version(), platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily(
            "pmlb_start_time_seconds",
            "When this pmlb started, in seconds since the Unix epoch.",
            value=self._started_at,
        )


def metrics_registry(registry: Registry, started_at: float | None = None) -> CollectorRegistry:
    """A Prometheus registry with this pmlb's metrics and its process's.

    The process (CPU, memory, descriptors), platform (Python) and garbage
    collector collectors are registered here rather than in the global
    registry, so that two pmlb in one process each have their own.
    """
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(RegistryCollector(registry))
    collectors.register(BuildCollector(time.time() if started_at is None else started_at))
    ProcessCollector(registry=collectors)
    PlatformCollector(registry=collectors)
    GCCollector(registry=collectors)
    return collectors
