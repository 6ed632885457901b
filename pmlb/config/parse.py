"""Reading a TOML file into a :class:`~pmlb.config.schema.Config`, with every problem at once."""

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from pmlb.config.checks import (
    _CLUSTER_CHECKS,
    _LISTENER_CHECKS,
    _LOG_CHECKS,
    _MANAGEMENT_CHECKS,
    _SERVER_CHECKS,
    _TLS_CHECKS,
    _UPSTREAM_CHECKS,
    _Bad,
    _describe,
    _is_array_of_tables,
)
from pmlb.config.schema import (
    ClusterConfig,
    Config,
    ConfigError,
    ListenerConfig,
    LogConfig,
    ManagementConfig,
    ManagementTLSConfig,
    UpstreamConfig,
)

_TOP_LEVEL: Final = ("server", "listener", "upstream", "management_server", "log", "cluster")


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[str] = []
        self.keyed: list[tuple[str, str]] = []

    def add(self, key: str, problem: str) -> None:
        self.found.append(f"{self.source}: {key}: {problem}")
        self.keyed.append((key, problem))

    def raise_if_any(self) -> None:
        if self.found:
            raise ConfigError(self.found)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _read(
    problems: _Problems,
    table: Mapping[str, object],
    prefix: str,
    checks: Mapping[str, Callable[[object], object]],
    subtables: Sequence[str] = (),
) -> dict[str, Any]:
    """The table's valid values by key; unknown keys and bad values go to ``problems``."""
    values: dict[str, Any] = {}
    for name, value in table.items():
        check = checks.get(name)
        if check is None:
            if name not in subtables:
                problems.add(
                    _key(prefix, name), "unknown key" + _suggestion(name, checks, subtables)
                )
            continue
        try:
            values[name] = check(value)
        except _Bad as bad:
            problems.add(_key(prefix, name), str(bad))
    return values


def _suggestion(name: str, checks: Iterable[str], subtables: Iterable[str]) -> str:
    """`` (did you mean 'KEY'?)`` for the known key closest to a misspelt one, else ``""``."""
    close = difflib.get_close_matches(name, [*checks, *subtables], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _table(
    problems: _Problems, parent: Mapping[str, object], prefix: str, name: str
) -> Mapping[str, object]:
    if name not in parent:
        return {}
    value = parent[name]
    key = _key(prefix, name)
    if isinstance(value, Mapping):
        return value
    if value and _is_array_of_tables(value):
        problems.add(key, f"must be a table ([{key}]), got an array of tables ([[{key}]])")
    else:
        problems.add(key, f"must be a table, got {_describe(value)}")
    return {}


def _array_of_tables(
    problems: _Problems, parent: Mapping[str, object], name: str
) -> list[tuple[str, Mapping[str, object]]]:
    if name not in parent:
        return []
    value = parent[name]
    if isinstance(value, Mapping):
        problems.add(name, f"must be an array of tables ([[{name}]]), got a table ([{name}])")
        return []
    if not isinstance(value, list | tuple):
        problems.add(name, f"must be an array of tables ([[{name}]]), got {_describe(value)}")
        return []
    tables = []
    for index, item in enumerate(value):
        key = f"{name}[{index}]"
        if isinstance(item, Mapping):
            tables.append((key, item))
        else:
            problems.add(key, f"must be a table, got {_describe(item)}")
    return tables


def _require(
    problems: _Problems, table: Mapping[str, object], prefix: str, names: Iterable[str]
) -> None:
    for name in names:
        if name not in table:
            problems.add(_key(prefix, name), "required, but missing")


# Parsing


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """The configuration described by ``data`` (a parsed TOML document).

    Raises :class:`ConfigError` listing every problem; ``source`` names the
    document in them.
    """
    problems = _Problems(source)
    _read(problems, data, "", {}, subtables=_TOP_LEVEL)

    server = _table(problems, data, "", "server")
    server_values = _read(problems, server, "server", _SERVER_CHECKS)
    listener_tables = _array_of_tables(problems, data, "listener")

    # (key, table, valid values) for each listener, in order.
    listeners: list[tuple[str, Mapping[str, object], dict[str, Any]]] = []
    if "host" in server or "port" in server or not listener_tables:
        listeners.append(("server", server, server_values))
    else:
        for name in server:
            if name in _LISTENER_CHECKS:
                problems.add(
                    f"server.{name}",
                    "only applies when [server] sets host or port"
                    " (this file's listeners are its [[listener]] tables)",
                )
    for key, table in listener_tables:
        _require(problems, table, key, ["name"])
        listeners.append((key, table, _read(problems, table, key, _LISTENER_CHECKS)))
    for key, _, values in listeners:
        _check_listener_tls(problems, key, values)
    listener_configs = _unique_listeners(problems, listeners)

    upstreams = []
    for key, table in _array_of_tables(problems, data, "upstream"):
        upstream = _upstream(problems, key, table)
        if upstream is not None:
            upstreams.append((key, upstream))
    _check_unique_upstreams(problems, upstreams)

    management = _table(problems, data, "", "management_server")
    management_values = _read(
        problems, management, "management_server", _MANAGEMENT_CHECKS, subtables=["tls"]
    )
    if "tls" in management:
        tls = _table(problems, management, "management_server", "tls")
        tls_values = _read(problems, tls, "management_server.tls", _TLS_CHECKS)
        cert_path, key_path = tls_values.get("cert_path", ""), tls_values.get("key_path", "")
        if cert_path and not key_path:
            problems.add("management_server.tls.key_path", "must be set when cert_path is set")
        if key_path and not cert_path:
            problems.add("management_server.tls.cert_path", "must be set when key_path is set")
        management_values["tls"] = ManagementTLSConfig(**tls_values)

    log = _read(problems, _table(problems, data, "", "log"), "log", _LOG_CHECKS)
    cluster = _read(problems, _table(problems, data, "", "cluster"), "cluster", _CLUSTER_CHECKS)
    cluster_config = ClusterConfig(**cluster)
    if (
        "heartbeat_interval" in cluster or "node_timeout" in cluster
    ) and cluster_config.node_timeout <= cluster_config.heartbeat_interval:
        problems.add(
            "cluster.node_timeout",
            f"must be more than heartbeat_interval ({cluster_config.heartbeat_interval:g}),"
            f" got {cluster_config.node_timeout:g}",
        )

    problems.raise_if_any()
    return Config(
        listeners=listener_configs,
        upstreams=tuple(upstream for _, upstream in upstreams),
        management=ManagementConfig(**management_values),
        log=LogConfig(**log),
        cluster=cluster_config,
        source=source,
        **{name: value for name, value in server_values.items() if name not in _LISTENER_CHECKS},
    )


def _check_listener_tls(problems: _Problems, key: str, values: Mapping[str, Any]) -> None:
    transport = values.get("transport")
    tls = transport == "tls"
    for name in ("tls_cert", "tls_key"):
        if tls and not values.get(name):
            problems.add(f"{key}.{name}", 'required when transport = "tls"')
    if transport == "websocket":  # optional: with both files, the listener serves wss://
        if values.get("tls_cert") and not values.get("tls_key"):
            problems.add(f"{key}.tls_key", "must be set when tls_cert is set")
        if values.get("tls_key") and not values.get("tls_cert"):
            problems.add(f"{key}.tls_cert", "must be set when tls_key is set")
        if values.get("tls_client_ca") and not values.get("tls_cert"):
            problems.add(f"{key}.tls_client_ca", "only applies when tls_cert is set")
        return
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        if values.get(name) and not tls:
            problems.add(f"{key}.{name}", 'only applies when transport = "tls" or "websocket"')


def _upstream(problems: _Problems, key: str, table: Mapping[str, object]) -> UpstreamConfig | None:
    _require(problems, table, key, ["host", "port"])
    values = _read(problems, table, key, _UPSTREAM_CHECKS)
    _check_upstream_tls(problems, key, values)
    if "host" in values and "port" in values:
        return UpstreamConfig(**values)
    return None


class UpstreamError(ValueError):
    """An upstream described by a mapping (an API body) that cannot be used.

    ``problems`` lists ``(key, problem)`` pairs, checked as a file's
    ``[[upstream]]`` table is.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {problem}" for key, problem in problems))


def parse_upstream(table: Mapping[str, object]) -> UpstreamConfig:
    """The upstream an ``[[upstream]]`` table (or a JSON object like it) describes.

    Raises :class:`UpstreamError` with every problem, found by the checks
    :func:`parse_config` runs on a file's ``[[upstream]]`` tables.
    """
    problems = _Problems("")
    upstream = _upstream(problems, "", table)
    if problems.keyed or upstream is None:
        raise UpstreamError(problems.keyed)
    return upstream


def _check_upstream_tls(problems: _Problems, key: str, values: Mapping[str, Any]) -> None:
    for name in ("tls_ca", "tls_cert", "tls_key", "tls_server_name"):
        if values.get(name) and not values.get("tls"):
            problems.add(_key(key, name), "only applies when tls = true")
    if values.get("tls_cert") and not values.get("tls_key"):
        problems.add(_key(key, "tls_key"), "must be set when tls_cert is set")
    if values.get("tls_key") and not values.get("tls_cert"):
        problems.add(_key(key, "tls_cert"), "must be set when tls_key is set")


def _unique_listeners(
    problems: _Problems, listeners: Iterable[tuple[str, Mapping[str, object], dict[str, Any]]]
) -> tuple[ListenerConfig, ...]:
    configs = []
    names: dict[str, str] = {}
    addresses: dict[tuple[str, int], str] = {}
    for key, table, values in listeners:
        listener = ListenerConfig(**{n: v for n, v in values.items() if n in _LISTENER_CHECKS})
        configs.append(listener)
        # A bad or missing value is reported already; comparing the default
        # that stands in for it would only add noise.
        if "name" in values or (key == "server" and "name" not in table):
            if listener.name in names:
                problems.add(
                    f"{key}.name",
                    f"listener name {listener.name!r} is already used by {names[listener.name]}",
                )
            else:
                names[listener.name] = key
        address_valid = all(n in values or n not in table for n in ("host", "port"))
        if address_valid and listener.port != 0:
            address = (listener.host.lower(), listener.port)
            if address in addresses:
                problems.add(
                    f"{key}.port",
                    f"address {listener.address} is already used by {addresses[address]}",
                )
            else:
                addresses[address] = key
    return tuple(configs)


def _check_unique_upstreams(
    problems: _Problems, upstreams: Iterable[tuple[str, UpstreamConfig]]
) -> None:
    seen: dict[tuple[str, int], str] = {}
    for key, upstream in upstreams:
        address = (upstream.host.lower(), upstream.port)
        if address in seen:
            problems.add(
                f"{key}.port", f"address {upstream.address} is already used by {seen[address]}"
            )
        else:
            seen[address] = key


_TOML_POSITION: Final = re.compile(
    r"(?P<message>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)"
)


def load_config(path: str | os.PathLike[str]) -> Config:
    """The configuration in the TOML file at ``path``.

    Raises :class:`ConfigError` if the file cannot be read or parsed, or
    describes an unusable configuration.
    """
    return parse_config(read_config_file(path), os.fspath(path))


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML document at ``path``, not checked yet; :class:`ConfigError` if unreadable."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as error:
        raise ConfigError(f"{source}: cannot read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{source}: cannot read: not UTF-8 text (bad byte at offset {error.start})"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        # tomllib only exposes the position inside its message before 3.14.
        match = _TOML_POSITION.fullmatch(message)
        if match is not None:
            message = f"line {match['line']}: {match['message']} (column {match['column']})"
        raise ConfigError(f"{source}: {message}") from None
    return data
