"""Command-line flags applied over a loaded configuration (``apply_overrides``)."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from pmlb.config.checks import (
    _Bad,
    _boolean,
    _host,
    _integer,
    _message_size,
    _one_of,
    _port,
    _redis_url,
    _seconds,
    _string,
    _token,
    _upstream_port,
)
from pmlb.config.parse import _Problems
from pmlb.config.schema import (
    _FRAMINGS,
    _LOG_FORMATS,
    _LOG_LEVELS,
    _POLICIES,
    _UPSTREAM_TRANSPORTS,
    MAX_WORKERS,
    Config,
    ListenerConfig,
    UpstreamConfig,
)

# Command-line overrides


def _upstream_address(value: object) -> UpstreamConfig:
    text = _string(value)
    expected = f"expected HOST:PORT, got {text!r}"
    host, colon, port = text.rpartition(":")
    if not colon or not host or not (port.isascii() and port.isdigit()):
        raise _Bad(expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise _Bad(expected)
    elif ":" in host:
        raise _Bad(f"{expected} (write an IPv6 address as [ADDRESS]:PORT)")
    try:
        return UpstreamConfig(host=_host(host), port=_upstream_port(int(port)))
    except _Bad as bad:
        raise _Bad(f"{expected}: {bad}") from None


def _checked(
    problems: _Problems, flags: Iterable[tuple[str, str, object, Callable[[object], object]]]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for flag, name, value, check in flags:
        if value is None:
            continue
        try:
            values[name] = check(value)
        except _Bad as bad:
            problems.add(flag, str(bad))
    return values


def apply_overrides(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    framing: str | None = None,
    max_message_size: int | None = None,
    activity_window: float | None = None,
    upstreams: Sequence[str] | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    upstream_transport: str | None = None,
    balancing: str | None = None,
    admin_host: str | None = None,
    admin_port: int | None = None,
    admin: bool | None = None,
    admin_token: str | None = None,
    cluster_redis: str | None = None,
    workers: int | None = None,
) -> Config:
    """``config`` with command-line flags applied; ``None`` leaves a setting as it is.

    ``host``, ``port``, ``framing`` and ``max_message_size`` apply to the first
    listener. ``upstreams`` (each ``HOST:PORT`` or ``[IPv6]:PORT``) replaces
    the upstream list; the new upstreams get the default timings.
    ``upstream_transport`` sets every upstream's ``transport``.
    ``cluster_redis`` sets ``[cluster] redis_url``; ``workers`` ``[server]
    workers``. Raises
    :class:`ConfigError` naming each bad flag.
    """
    problems = _Problems("command line")
    listener_changes = _checked(
        problems,
        [
            ("--host", "host", host, _host),
            ("--port", "port", port, _port),
            ("--framing", "framing", framing, _one_of(*_FRAMINGS)),
            ("--max-message-size", "max_message_size", max_message_size, _message_size),
        ],
    )
    config_changes = _checked(
        problems,
        [
            ("--activity-window", "activity_window", activity_window, _seconds),
            ("--balancing", "balancing", balancing, _one_of(*_POLICIES)),
            ("--workers", "workers", workers, _integer(0, MAX_WORKERS)),
        ],
    )
    log_changes = _checked(
        problems,
        [
            ("--log-level", "level", log_level, _one_of(*_LOG_LEVELS)),
            ("--log-format", "format", log_format, _one_of(*_LOG_FORMATS)),
        ],
    )

    if upstreams is not None:
        new_upstreams: list[UpstreamConfig] = []
        for text in [upstreams] if isinstance(upstreams, str) else upstreams:
            try:
                upstream = _upstream_address(text)
            except _Bad as bad:
                problems.add("--upstream", str(bad))
                continue
            if any(
                u.host.lower() == upstream.host.lower() and u.port == upstream.port
                for u in new_upstreams
            ):
                problems.add("--upstream", f"{upstream.address} is given twice")
            else:
                new_upstreams.append(upstream)
        config_changes["upstreams"] = tuple(new_upstreams)
    transport_changes = _checked(
        problems,
        [
            (
                "--upstream-transport",
                "transport",
                upstream_transport,
                _one_of(*_UPSTREAM_TRANSPORTS),
            )
        ],
    )
    if transport_changes:
        config_changes["upstreams"] = tuple(
            attrs.evolve(u, **transport_changes)
            for u in config_changes.get("upstreams", config.upstreams)
        )

    if listener_changes:
        first, *others = config.listeners or (ListenerConfig(),)
        first = attrs.evolve(first, **listener_changes)
        if first.port != 0 and ("host" in listener_changes or "port" in listener_changes):
            for other in others:
                if (other.host.lower(), other.port) == (first.host.lower(), first.port):
                    problems.add(
                        "--port" if "port" in listener_changes else "--host",
                        f"address {first.address} is already used by listener {other.name!r}",
                    )
        config_changes["listeners"] = (first, *others)
    if log_changes:
        config_changes["log"] = attrs.evolve(config.log, **log_changes)
    admin_changes = _checked(
        problems,
        [
            ("--admin-host", "host", admin_host, _host),
            ("--admin-port", "port", admin_port, _port),
            ("--admin/--no-admin", "enabled", admin, _boolean),
            ("PMLB_ADMIN_TOKEN", "token", admin_token, _token),
        ],
    )
    if admin_changes:
        config_changes["management"] = attrs.evolve(config.management, **admin_changes)
    cluster_changes = _checked(
        problems, [("--cluster-redis", "redis_url", cluster_redis, _redis_url)]
    )
    if cluster_changes:
        config_changes["cluster"] = attrs.evolve(config.cluster, **cluster_changes)

    problems.raise_if_any()
    return attrs.evolve(config, **config_changes)
