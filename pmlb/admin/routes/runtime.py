"""The runtime: ``/api/v1/runtime`` (configuration, counters, switches: log level,
balancing policy, accepting) and its ``/reload`` and ``/drain`` of the whole process.
"""

from __future__ import annotations

import time

import attrs
from quart_schema import validate_request, validate_response
from quart_trio import QuartTrio

from pmlb._time import rfc3339_from
from pmlb._version import pmlb_version
from pmlb.admin import schemas as s
from pmlb.admin.context import Context
from pmlb.admin.errors import Invalid
from pmlb.balancer import POLICIES
from pmlb.config import ConfigError
from pmlb.registry import Registry
from pmlb.reload import ReloadUnavailable


def _public_config(registry: Registry) -> dict[str, object]:
    config = attrs.asdict(registry.config, recurse=True)
    config.pop("source", None)
    management = config["management"]
    if management.get("token"):
        management["token"] = "***"
    # The upstreams are what runs now, not what the file said at start.
    config["upstreams"] = [attrs.asdict(u.config) for u in registry.upstreams.values()]
    return config


def register(app: QuartTrio, ctx: Context) -> None:
    registry, action = ctx.registry, ctx.action

    def runtime_view() -> s.Runtime:
        stats = registry.statistics()
        return s.Runtime(
            version=pmlb_version(),
            started_at=rfc3339_from(ctx.started_at) or "",
            uptime=time.monotonic() - ctx.started,
            log_level=ctx.log_level(),
            policy=stats.policy,
            policies=sorted(POLICIES),
            accepting=stats.accepting,
            stopping=registry.stop_requested.is_set(),
            listeners=ctx.listeners,
            config=_public_config(registry),
            stats=s.Stats(
                clients=stats.clients,
                clients_active=sum(1 for _ in registry.select_clients("active")),
                clients_total=stats.clients_total,
                upstreams=stats.upstreams,
                upstreams_serving=stats.upstreams_serving,
                messages_from_clients=stats.messages_from_clients,
                messages_to_clients=stats.messages_to_clients,
                bytes_from_clients=stats.bytes_from_clients,
                bytes_to_clients=stats.bytes_to_clients,
                broadcasts=stats.broadcasts,
                broadcast_recipients=stats.broadcast_recipients,
                unknown_client=stats.unknown_client,
                invalid_target=stats.invalid_target,
                dispatch_latency_mean=registry.dispatch_latency.mean(),
                awaiting_upstream=stats.awaiting_upstream,
                refused=stats.refused,
                disconnects=stats.disconnects,
                unacked=stats.unacked,
                acks_received=stats.acks_received,
                acks_unknown=stats.acks_unknown,
                redelivered=stats.redelivered,
                undeliverable=stats.undeliverable,
            ),
        )

    @app.get("/api/v1/runtime")
    @validate_response(s.Runtime)
    async def get_runtime() -> s.Runtime:
        """The effective configuration, counters and runtime switches."""
        return runtime_view()

    @app.patch("/api/v1/runtime")
    @validate_request(s.RuntimeIn)
    @validate_response(s.Runtime)
    async def patch_runtime(data: s.RuntimeIn) -> s.Runtime:
        """Change the log level, the balancing policy or whether new clients are accepted."""
        if data.policy is not None and data.policy not in POLICIES:
            known = ", ".join(sorted(POLICIES))
            raise Invalid(f"unknown policy {data.policy!r}; known: {known}", "policy")
        if data.log_level is not None:
            ctx.set_log_level(data.log_level)
            action("log_level", level=data.log_level)
        if data.policy is not None:
            registry.set_policy(data.policy)
            action("policy", policy=data.policy)
        if data.accepting is not None:
            registry.set_accepting(data.accepting)
            action("accepting", accepting=data.accepting)
        return runtime_view()

    @app.post("/api/v1/runtime/reload")
    @validate_response(s.Reloaded)
    @validate_response(s.ReloadRefused, 422)
    @validate_response(s.ReloadRefused, 409)
    async def reload() -> s.Reloaded | tuple[s.ReloadRefused, int]:
        """Load the configuration file again and apply what changed (as SIGHUP does).

        A file with problems is refused with 422 and every problem; nothing
        changes then. 409 when there is no file to reload or pmlb drains.
        """
        action("reload")
        if registry.reloader is None:
            return s.ReloadRefused(error="this pmlb has no configuration file to reload"), 409
        try:
            change = await registry.reloader()
        except ConfigError as error:
            refused = s.ReloadRefused(
                error="the configuration is unusable; nothing changed",
                problems=list(error.problems),
            )
            return refused, 422
        except ReloadUnavailable as error:
            return s.ReloadRefused(error=str(error)), 409
        return s.Reloaded(reloaded=True, source=change.config.source, **change.summary())

    @app.post("/api/v1/runtime/drain")
    @validate_response(s.Draining, 202)
    async def drain() -> tuple[s.Draining, int]:
        """Drain and stop the whole process, as SIGTERM does (answers before the drain ends)."""
        action("drain")
        registry.request_stop()
        return s.Draining(draining=True), 202
