"""Value checks: what each key of each table accepts, and why a value is refused."""

import ipaddress
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from datetime import date, time
from typing import Final, TypeGuard

from pmlb.config.schema import (
    _FRAMINGS,
    _LOG_FORMATS,
    _LOG_LEVELS,
    _MAX_MESSAGE_SIZE,
    _POLICIES,
    _TRANSPORTS,
    _UPSTREAM_TRANSPORTS,
    _WEBSOCKET_REPLIES,
    MAX_WORKERS,
    parse_nameserver,
)

# Checking values


class _Bad(Exception):
    """What is wrong with a value; whoever catches it knows which key it was."""


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array of tables" if value and _is_array_of_tables(value) else "an array"
    if isinstance(value, date | time):
        return f"date/time {value.isoformat()}"
    return f"{type(value).__name__} {value!r}"


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_describe(value)}")
    return value


def _token(value: object) -> str:
    # Never echo the value: it is a secret.
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {type(value).__name__}")
    if value != value.strip() or any(not (33 <= ord(c) <= 126) for c in value):
        raise _Bad("must be printable ASCII without spaces")
    return value


def _name(value: object) -> str:
    name = _string(value)
    if not name:
        raise _Bad("must not be empty")
    return name


_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _host(value: object) -> str:
    host = _name(value)
    if host.startswith("[") or host.endswith("]"):
        raise _Bad(f"must be written without brackets, got {host!r}")
    problem = host_problem(host)
    if problem:
        raise _Bad(problem)
    return host


def host_problem(host: str) -> str | None:
    """Why ``host`` is neither an IP address nor a valid DNS name, or ``None`` if it is one."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    shown = host if len(host) <= 80 else host[:77] + "..."
    if len(host) > 253 or not all(
        _HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")
    ):
        return (
            f"must be an IP address or a host name (labels of 1 to 63 letters, digits,"
            f" '-' or '_'; 253 characters at most), got {shown!r}"
        )
    return None


def _integer(low: int, high: int | None = None) -> Callable[[object], int]:
    want = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be {want}, got {_describe(value)}")
        if value < low or (high is not None and value > high):
            raise _Bad(f"must be {want}, got {value}")
        return value

    return check


_port = _integer(0, 65535)
# Port 0 means "any free port" for something pmlb binds, but nothing can be
# reached there.
_upstream_port = _integer(1, 65535)
_message_size = _integer(1, _MAX_MESSAGE_SIZE)
_queue_size = _integer(1)


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"must be a number > 0, got {_describe(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if math.isinf(seconds) or math.isnan(seconds):
        raise _Bad(f"must be a finite number > 0, got {value!r}")
    if seconds <= 0:
        raise _Bad(f"must be a number > 0, got {value!r}")
    return seconds


def _non_negative(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    try:
        return _seconds(value)
    except _Bad:
        raise _Bad(f"must be a number >= 0, got {_describe(value)}") from None


def _nameserver(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string IP or IP:PORT, got {_describe(value)}")
    if value:
        try:
            parse_nameserver(value)
        except ValueError:
            raise _Bad(f"must be an IP address, optionally with :PORT, got {value!r}") from None
    return value


_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
_NODE_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,100}")


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL pmlb can use, or ``None`` if it is one."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in _REDIS_SCHEMES:
        return (
            "must start with redis://, rediss:// or unix://, got"
            f" {parsed.scheme + '://' if parsed.scheme else 'no scheme'}"
        )
    try:
        port = parsed.port
    except ValueError as error:
        return f"bad port: {error}"
    if parsed.scheme == "unix":
        if not parsed.path:
            return "unix:// needs the socket's path, as in unix:///run/redis.sock"
        db = urllib.parse.parse_qs(parsed.query).get("db", ["0"])[-1]
    else:
        host = parsed.hostname or ""
        if not host:
            return f"{parsed.scheme}:// needs a host, as in redis://127.0.0.1:6379/0"
        problem = host_problem(host)
        if problem:
            return f"host {problem}"
        if port == 0:
            return "port must be from 1 to 65535, got 0"
        db = parsed.path.strip("/") or "0"
    if not (db.isascii() and db.isdigit()):
        return f"the database must be a number, got {db!r}"
    return None


def _redis_url(value: object) -> str:
    # Never echo the whole URL: it may hold a password.
    url = _string(value)
    if url:
        problem = redis_url_problem(url)
        if problem:
            raise _Bad(problem)
    return url


def _node_name(value: object) -> str:
    name = _string(value)
    if name and not _NODE_NAME.fullmatch(name):
        raise _Bad(f"must be 1 to 100 letters, digits, '.', '_' or '-', got {name!r}")
    return name


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_describe(value)}")
    return value


def _list_of(check: Callable[[object], str]) -> Callable[[object], tuple[str, ...]]:
    def checked(value: object) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise _Bad(f"must be an array of strings, got {_describe(value)}")
        found = []
        for index, item in enumerate(value):
            try:
                found.append(check(item))
            except _Bad as bad:
                raise _Bad(f"item {index}: {bad}") from None
        return tuple(found)

    return checked


_ORIGIN: Final = re.compile(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[^/:\[\]]+)(:[0-9]{1,5})?")


def _origin(value: object) -> str:
    text = _string(value)
    match = _ORIGIN.fullmatch(text)
    host = match.group(2).strip("[]") if match else ""
    if match is None or host_problem(host) is not None:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise _Bad(
            f"must be a web origin, scheme://host[:port] with scheme http or https"
            f" and no path, got {shown!r}"
        )
    return text.lower()


def _network(value: object) -> str:
    text = _string(value)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise _Bad(f"must be an IP address or network (e.g. '10.0.0.0/8'), got {text!r}") from None


def _one_of(*choices: str) -> Callable[[object], str]:
    want = "must be one of " + ", ".join(repr(choice) for choice in choices)

    def check(value: object) -> str:
        if isinstance(value, str) and value in choices:
            return value
        got = repr(value) if isinstance(value, str) else _describe(value)
        raise _Bad(f"{want}, got {got}")

    return check


def _path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        got = repr(value) if isinstance(value, str) else _describe(value)
        raise _Bad(f"must be a URL path starting with '/', got {got}")
    return value


def _is_array_of_tables(value: object) -> TypeGuard[Sequence[Mapping[str, object]]]:
    return isinstance(value, list | tuple) and all(isinstance(item, Mapping) for item in value)


_LISTENER_CHECKS: Final[Mapping[str, Callable[[object], object]]] = {
    "name": _name,
    "host": _host,
    "port": _port,
    "transport": _one_of(*_TRANSPORTS),
    "framing": _one_of(*_FRAMINGS),
    "max_message_size": _message_size,
    "path": _path,
    "websocket_reply": _one_of(*_WEBSOCKET_REPLIES),
    "handshake_timeout": _seconds,
    "ping_interval": _seconds,
    "ping_timeout": _seconds,
    "tls_cert": _string,
    "tls_key": _string,
    "tls_client_ca": _string,
    "proxy_protocol": _boolean,
    "max_clients": _integer(0),
    "accept_rate": _non_negative,
    "idle_timeout": _non_negative,
}
_SERVER_CHECKS: Final[Mapping[str, Callable[[object], object]]] = {
    **_LISTENER_CHECKS,
    "activity_window": _seconds,
    "client_queue_size": _queue_size,
    "client_queue_bytes": _integer(0),
    "client_queue_bytes_total": _integer(0),
    "upstream_queue_size": _queue_size,
    "balancing": _one_of(*_POLICIES),
    "max_clients_total": _integer(0),
    "slow_client_policy": _one_of("disconnect", "drop_oldest"),
    "slow_client_timeout": _non_negative,
    "client_fin_timeout": _non_negative,
    "drain_period": _non_negative,
    "drain_timeout": _seconds,
    "drain_upstream_wait": _non_negative,
    "workers": _integer(0, MAX_WORKERS),
}
_UPSTREAM_CHECKS: Final[Mapping[str, Callable[[object], object]]] = {
    "host": _host,
    "port": _upstream_port,
    "ready_timeout": _seconds,
    "alive_timeout": _seconds,
    "live_interval": _seconds,
    "stall_timeout": _seconds,
    "transport": _one_of(*_UPSTREAM_TRANSPORTS),
    "tls": _boolean,
    "tls_ca": _string,
    "tls_cert": _string,
    "tls_key": _string,
    "tls_server_name": _string,
    "events": _boolean,
    "acks": _boolean,
    "max_unacked": _integer(1),
    "ack_timeout": _seconds,
    "max_deliveries": _integer(1),
    "health": _one_of("contract", "grpc"),
    "health_service": _string,
    "discovery": _one_of("static", "dns"),
    "resolve_interval": _seconds,
    "nameserver": _nameserver,
    "reply_scope": _one_of("local", "cluster"),
    "max_header_block": _integer(1024, 16 * 1024 * 1024),
    "control_frame_burst": _integer(1),
    "control_frame_rate": _seconds,
    "max_reply_size": _integer(1024, 2**31 - 1),
}
_MANAGEMENT_CHECKS: Final[Mapping[str, Callable[[object], object]]] = {
    "host": _host,
    "port": _port,
    "enabled": _boolean,
    "token": _token,
    "public_metrics": _boolean,
    "ready_requires_upstream": _boolean,
    "allowed_hosts": _list_of(_host),
    "allowed_origins": _list_of(_origin),
    "trusted_proxies": _list_of(_network),
}
_TLS_CHECKS: Final[Mapping[str, Callable[[object], object]]] = {
    "cert_path": _string,
    "key_path": _string,
}
_LOG_CHECKS: Final[Mapping[str, Callable[[object], object]]] = {
    "level": _one_of(*_LOG_LEVELS),
    "format": _one_of(*_LOG_FORMATS),
}
_CLUSTER_CHECKS: Final[Mapping[str, Callable[[object], object]]] = {
    "redis_url": _redis_url,
    "node": _node_name,
    "heartbeat_interval": _seconds,
    "node_timeout": _seconds,
}
