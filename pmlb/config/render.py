"""Writing a :class:`~pmlb.config.schema.Config` back as TOML (``render_config``)."""

import math
import re
from collections.abc import Mapping
from typing import Final

import attrs

from pmlb.config.checks import _describe, _is_array_of_tables
from pmlb.config.schema import ClusterConfig, Config, ListenerConfig, UpstreamConfig

# Rendering

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in _ESCAPES:
            escaped.append(_ESCAPES[char])
        elif char < " " or char == "\x7f":
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        # repr() is the shortest text that reads back as the same float, and
        # its forms (1.5, 1e-05, 1e+16) are all valid TOML floats.
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {_describe(value)} as a TOML value")


def _emit(lines: list[str], path: str, table: Mapping[str, object]) -> None:
    # Plain values must come before any header: after one, they would belong
    # to that header's table.
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_array_of_tables(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        child = f"{path}.{_toml_key(key)}" if path else _toml_key(key)
        if isinstance(value, Mapping):
            lines += ["", f"[{child}]"]
            _emit(lines, child, value)
        elif _is_array_of_tables(value):
            for item in value:
                lines += ["", f"[[{child}]]"]
                _emit(lines, child, item)


# Keys added after the original file's are written only when they differ from
# their defaults, so a rendered plain config reads like the original.
_ORIGINAL_KEYS: Final = frozenset(
    {"name", "host", "port", "transport", "framing", "max_message_size"}
    | {"ready_timeout", "alive_timeout", "live_interval"}
    # an upstream's contract and health check: shown even when default
    | {"events", "health"}
)


def _as_table(value: ListenerConfig | UpstreamConfig) -> dict[str, object]:
    return attrs.asdict(
        value,
        filter=lambda field, item: field.name in _ORIGINAL_KEYS or item != field.default,
    )


def render_config(config: Config) -> str:
    """``config`` as a TOML document that :func:`parse_config` reads back as an equal config.

    A config without listeners comes back with the default listener, as an
    empty file does.
    """
    server: dict[str, object] = {}
    if config.listeners:
        server.update(_as_table(config.listeners[0]))
    server["activity_window"] = config.activity_window
    server["client_queue_size"] = config.client_queue_size
    server["client_queue_bytes"] = config.client_queue_bytes
    server["client_queue_bytes_total"] = config.client_queue_bytes_total
    server["upstream_queue_size"] = config.upstream_queue_size
    server["balancing"] = config.balancing
    # Every server-wide setting, default or not: this is what pmlb runs on.
    for name in (
        "max_clients_total",
        "slow_client_policy",
        "slow_client_timeout",
        "client_fin_timeout",
        "drain_period",
        "drain_timeout",
        "drain_upstream_wait",
        "workers",
    ):
        server[name] = getattr(config, name)
    document: dict[str, object] = {"server": server}
    if len(config.listeners) > 1:
        document["listener"] = [_as_table(listener) for listener in config.listeners[1:]]
    if config.upstreams:
        document["upstream"] = [_as_table(upstream) for upstream in config.upstreams]
    management: dict[str, object] = {
        "host": config.management.host,
        "port": config.management.port,
    }
    if not config.management.enabled:
        management["enabled"] = False
    if config.management.token:
        management["token"] = config.management.token
    management["public_metrics"] = config.management.public_metrics
    management["ready_requires_upstream"] = config.management.ready_requires_upstream
    for name in ("allowed_hosts", "allowed_origins", "trusted_proxies"):
        if getattr(config.management, name):
            management[name] = list(getattr(config.management, name))
    if config.management.tls is not None:
        management["tls"] = attrs.asdict(config.management.tls)
    document["management_server"] = management
    document["log"] = attrs.asdict(config.log)
    if config.cluster != ClusterConfig():
        document["cluster"] = attrs.asdict(config.cluster)

    header = "# pmlb configuration"
    if config.source is not None:
        header += f", loaded from {_toml_string(config.source)}"
    lines = [header]
    _emit(lines, "", document)
    return "\n".join(lines) + "\n"
