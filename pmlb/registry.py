"""The running pmlb's core behind one name, for the admin API, metrics and embedders.

The state lives in the parts of :mod:`pmlb.hub`, each the only owner of its
own: the client table (:mod:`pmlb.hub.clients`), the dispatcher (client ->
upstream, :mod:`pmlb.hub.dispatch`), the router (upstream -> client,
:mod:`pmlb.hub.route`), the upstream table (:mod:`pmlb.hub.upstreams`) and
the drain (:mod:`pmlb.hub.drain`). :class:`Registry` builds them, hands each
the others it needs, and exposes their methods under the names callers use:
each is the part's bound method itself, so calling through the facade costs
nothing more (the data path: ``dispatch_from`` per read, ``deliver`` per
batch of replies). It owns only the configuration reloads' counts and the
references every part shares (configuration, cluster bus, event bus).
Everything worth telling an operator is published on :attr:`Registry.events`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pmlb._log import RateLimited
from pmlb.balancer import Policy
from pmlb.config import Config
from pmlb.events import EventBus
from pmlb.hub.clients import ClientTable
from pmlb.hub.dispatch import Dispatcher
from pmlb.hub.drain import Drain
from pmlb.hub.route import Router
from pmlb.hub.stats import Statistics, snapshot
from pmlb.hub.upstreams import UpstreamTable
from pmlb.upstream.state import Upstream

if TYPE_CHECKING:
    from pmlb.cluster import Bus
    from pmlb.reload import Plan

__all__ = ["Registry", "Statistics"]

log = logging.getLogger("pmlb.registry")


class Registry:
    """Clients, upstreams, and the message flow between them."""

    def __init__(self, config: Config, policy: Policy | None = None) -> None:
        self.events = EventBus()
        # One limiter for every "dropped" warning, whichever part drops.
        dropped_log = RateLimited(log)
        upstreams: dict[str, Upstream] = {}
        self.dispatcher = Dispatcher(config, policy, upstreams, self.events, dropped_log)
        self.client_table = ClientTable(config, self.dispatcher, self.events)
        self.router = Router(config, self.client_table.clients, dropped_log)
        self.upstream_table = UpstreamTable(
            config, upstreams, self.dispatcher, self.router, self.events
        )
        self.drain = Drain(self.client_table, self.dispatcher, upstreams, self.events)
        self._config = config
        self._cluster: Bus | None = None
        #: reloads the configuration (set by the server when it has one to
        #: reload from; see pmlb.reload): returns the plan it applied
        self.reloader: Callable[[], Awaitable[Plan]] | None = None
        #: reloads applied and refused, and whether the last one was applied
        self.reloads: Counter[str] = Counter()
        self.last_reload_ok = True

        # The parts' tables, under the names callers use (the same objects).
        table, dispatcher, router = self.client_table, self.dispatcher, self.router
        upstream_table, drain = self.upstream_table, self.drain
        self.clients = table.clients
        self.connections = table.connections
        self.client_queues = table.client_queues
        self.unflushed = router.unflushed
        self.upstreams = upstream_table.upstreams
        self.discoveries = upstream_table.discoveries
        self.dispatch_latency = dispatcher.dispatch_latency
        self.stop_requested = drain.stop_requested

        # The parts' methods, bound once.
        self.add_client = table.add_client
        self.remove_client = table.remove_client
        self.client_page = table.client_page
        self.kick = table.kick
        self.clients_lost_elsewhere = table.clients_lost_elsewhere
        self.dispatch = dispatcher.dispatch
        self.dispatch_from = dispatcher.dispatch_from
        self.dispatch_from_nowait = dispatcher.dispatch_from_nowait
        self.dispatch_held = dispatcher.dispatch_held
        self.set_policy = dispatcher.set_policy
        self.awaiting_upstream = dispatcher.awaiting_upstream
        self.others_flowing = dispatcher.others_flowing
        self.deliver = router.deliver
        self.deliver_from_node = router.deliver_from_node
        self.count_unknown = router.count_unknown
        self.send_to = router.send_to
        self.flush_clients = router.flush_clients
        self.broadcast = router.broadcast
        self.select_clients = router.select_clients
        self.add_upstream = upstream_table.add_upstream
        self.attach_supervisor = upstream_table.attach_supervisor
        self.start_upstream = upstream_table.start_upstream
        self.attach_discovery = upstream_table.attach_discovery
        self.start_discovery = upstream_table.start_discovery
        self.stop_discovery = upstream_table.stop_discovery
        self.remove_upstream = upstream_table.remove_upstream
        self.drain_upstream = upstream_table.drain_upstream
        self.set_upstream_state = upstream_table.set_upstream_state
        self.set_upstream_admin_state = upstream_table.set_upstream_admin_state
        self.set_upstream_stalled = upstream_table.set_upstream_stalled
        self.wait_upstream_state = upstream_table.wait_upstream_state
        self.admit = drain.admit
        self.set_accepting = drain.set_accepting
        self.request_stop = drain.request_stop
        self.drain_clients = drain.drain_clients
        self.flush_upstreams = drain.flush_upstreams

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """A reload's new configuration, for every part that reads it."""
        self._config = config
        for part in (self.dispatcher, self.client_table, self.router, self.upstream_table):
            part.config = config

    @property
    def cluster(self) -> Bus | None:
        """The cluster bus, when this pmlb is a node of a cluster (see pmlb.cluster)."""
        return self._cluster

    @cluster.setter
    def cluster(self, bus: Bus | None) -> None:
        self._cluster = bus
        for part in (self.dispatcher, self.client_table, self.router):
            part.cluster = bus

    @property
    def policy(self) -> Policy:
        return self.dispatcher.policy

    @property
    def accepting(self) -> bool:
        return self.drain.accepting

    # The counters, read where their owner keeps them (statistics() has them all).

    @property
    def clients_total(self) -> int:
        return self.client_table.clients_total

    @property
    def messages_from_clients(self) -> int:
        return self.dispatcher.messages_from_clients

    @property
    def events_dropped(self) -> int:
        return self.dispatcher.events_dropped

    @property
    def messages_to_clients(self) -> int:
        return self.router.messages_to_clients

    @property
    def broadcasts(self) -> int:
        return self.router.broadcasts

    @property
    def broadcast_recipients(self) -> int:
        return self.router.broadcast_recipients

    @property
    def unknown_client(self) -> int:
        return self.router.unknown_client

    @property
    def invalid_target(self) -> int:
        return self.router.invalid_target

    @property
    def redelivered(self) -> int:
        return self.upstream_table.redelivered

    @property
    def undeliverable(self) -> int:
        return self.upstream_table.undeliverable

    @property
    def refused(self) -> int:
        return self.drain.refused

    def count_reload(self, applied: bool) -> None:
        """Count a configuration reload, applied or refused (for /metrics)."""
        self.reloads["applied" if applied else "refused"] += 1
        self.last_reload_ok = applied

    def statistics(self) -> Statistics:
        return snapshot(
            self.client_table, self.dispatcher, self.router, self.upstream_table, self.drain
        )
