"""``/api/v1/cluster``: the nodes of the cluster, as their heartbeats describe them."""

from __future__ import annotations

import time

from quart_schema import validate_response
from quart_trio import QuartTrio

from pmlb._time import rfc3339_from
from pmlb._version import pmlb_version
from pmlb.admin import schemas as s
from pmlb.admin.context import Context, degraded


def register(app: QuartTrio, ctx: Context) -> None:
    registry = ctx.registry

    @app.get("/api/v1/cluster")
    @validate_response(s.Cluster)
    async def cluster() -> s.Cluster:
        """The nodes of the cluster, as their last heartbeats described them.

        Redis down: ``degraded`` says why, and the nodes are this one only.
        """
        bus = registry.cluster
        if bus is None:
            return s.Cluster(enabled=False)
        stats = registry.statistics()
        wall = time.time()
        peers = bus.peers if bus.connected else {}
        nodes = []
        for name in sorted({bus.node, *peers}):
            info = peers.get(name)
            if name == bus.node:  # now, not as of the last heartbeat
                nodes.append(
                    s.ClusterNode(
                        name=name,
                        admin=bus.admin_url,
                        clients=stats.clients,
                        upstreams=stats.upstreams,
                        upstreams_serving=stats.upstreams_serving,
                        last_heartbeat=rfc3339_from(info.heartbeat_at) if info else None,
                        heartbeat_age=max(0.0, wall - info.heartbeat_at) if info else None,
                        version=pmlb_version(),
                        this=True,
                    )
                )
            elif info is not None:
                nodes.append(
                    s.ClusterNode(
                        name=name,
                        admin=info.admin,
                        clients=info.clients,
                        upstreams=info.upstreams,
                        upstreams_serving=info.upstreams_serving,
                        last_heartbeat=rfc3339_from(info.heartbeat_at),
                        heartbeat_age=max(0.0, wall - info.heartbeat_at),
                        version=info.version,
                        this=False,
                    )
                )
        return s.Cluster(
            enabled=True,
            node=bus.node,
            connected=bus.connected,
            degraded=None if bus.connected else degraded(bus),
            clients=bus.cluster_clients if bus.connected else stats.clients,
            nodes=nodes,
        )
