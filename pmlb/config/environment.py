"""Configuration from environment variables, between the file and the command line.

Precedence: the file < the environment < command-line flags. Each variable
sets one key of the file, and goes through the same checks:

==============================  ============================================
``PMLB_SERVER_<KEY>``           ``[server] <key>`` (``PMLB_SERVER_PORT=7999``,
                                ``PMLB_SERVER_MAX_CLIENTS_TOTAL=10000``)
``PMLB_ADMIN_<KEY>``            ``[management_server] <key>``
                                (``PMLB_ADMIN_TOKEN``, ``PMLB_ADMIN_PORT``)
``PMLB_ADMIN_TLS_<KEY>``        ``[management_server.tls] <key>``
``PMLB_LOG_<KEY>``              ``[log] <key>``
``PMLB_CLUSTER_<KEY>``          ``[cluster] <key>``
``PMLB_UPSTREAMS``              replaces every ``[[upstream]]``:
                                ``host:port,host:port`` (``[v6]:port``)
``PMLB_UPSTREAM_<KEY>``         ``<key>`` of every ``[[upstream]]`` (the
                                file's, or ``PMLB_UPSTREAMS``')
==============================  ============================================

``<KEY>`` is the key in capitals. Values are text: integers and numbers as
written (``30``, ``2.5``), booleans as ``true``/``false`` (also ``1``/``0``,
``yes``/``no``, ``on``/``off``), lists (``allowed_hosts``,
``allowed_origins``, ``trusted_proxies``) comma-separated. An empty
variable counts as unset. ``[[listener]]`` tables beyond ``[server]`` are
not settable from the environment (use the file). An unknown
``PMLB_SERVER_``/``PMLB_ADMIN_``/... variable is an error with the closest
known name; other ``PMLB_`` variables (``PMLB_ADMIN_URL``, read by ``pmlb
ctl``) are not configuration and are ignored here.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any, Final

import attrs

from pmlb.config.parse import parse_config, read_config_file
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

# Config's fields that are tables, not [server] keys
_NOT_KEYS: Final = frozenset({"listeners", "upstreams", "management", "log", "cluster", "source"})


def _defaults(*classes: type[Any], but: tuple[str, ...] = ()) -> dict[str, object]:
    found: dict[str, object] = {}
    for cls in classes:
        for field in attrs.fields(cls):
            if field.name not in (*_NOT_KEYS, *but) and field.name not in found:
                found[field.name] = field.default
    return found


#: (prefix, the path of the table it sets, its keys with their defaults)
_SECTIONS: Final[tuple[tuple[str, tuple[str, ...], dict[str, object]], ...]] = (
    # Longest prefixes first: PMLB_ADMIN_TLS_ before PMLB_ADMIN_.
    ("PMLB_ADMIN_TLS_", ("management_server", "tls"), _defaults(ManagementTLSConfig)),
    ("PMLB_ADMIN_", ("management_server",), _defaults(ManagementConfig, but=("tls",))),
    ("PMLB_SERVER_", ("server",), _defaults(ListenerConfig, Config)),
    ("PMLB_LOG_", ("log",), _defaults(LogConfig)),
    ("PMLB_CLUSTER_", ("cluster",), _defaults(ClusterConfig)),
    # Every upstream's address is its own: PMLB_UPSTREAMS gives them.
    ("PMLB_UPSTREAM_", ("upstream",), _defaults(UpstreamConfig, but=("host", "port"))),
)
#: PMLB_ variables that are not configuration
_OTHERS: Final = frozenset({"PMLB_ADMIN_URL"})
UPSTREAMS: Final = "PMLB_UPSTREAMS"
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})


def _value(text: str, default: object) -> object:
    """``text`` as the kind of value ``default`` is, else as text (the check then says why)."""
    if isinstance(default, bool):
        lowered = text.strip().lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else text
    if isinstance(default, int | float):
        for kind in (int, float) if isinstance(default, float) else (int,):
            try:
                return kind(text.strip())
            except ValueError:
                continue
        return text
    if isinstance(default, tuple):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _upstream_table(item: str) -> dict[str, object]:
    host, colon, port = item.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon:
        # No port: the check of "port" says it is missing.
        return {"host": item}
    return {"host": host, "port": int(port) if port.isascii() and port.isdigit() else port}


@attrs.frozen
class Environment:
    """The configuration keys set by environment variables."""

    #: (variable, table path, key, value), in the order they apply
    settings: tuple[tuple[str, tuple[str, ...], str, object], ...] = ()
    #: the upstreams of PMLB_UPSTREAMS, if set
    upstreams: tuple[dict[str, object], ...] | None = None
    #: unknown variables, with what is wrong
    problems: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """The variables that set something, sorted."""
        found = {name for name, _, _, _ in self.settings}
        if self.upstreams is not None:
            found.add(UPSTREAMS)
        return sorted(found)


def read_environment(environ: Mapping[str, str] | None = None) -> Environment:
    """The configuration ``environ`` (default: this process's) sets."""
    env = os.environ if environ is None else environ
    settings = []
    problems = []
    upstreams = None
    for name in sorted(env):
        text = env[name]
        if not name.startswith("PMLB_") or name in _OTHERS or not text:
            continue
        if name == UPSTREAMS:
            upstreams = tuple(_upstream_table(i.strip()) for i in text.split(",") if i.strip())
            continue
        for prefix, path, keys in _SECTIONS:
            if not name.startswith(prefix):
                continue
            key = name.removeprefix(prefix).lower()
            if key in keys:
                settings.append((name, path, key, _value(text, keys[key])))
            else:
                known = [prefix + k.upper() for k in keys]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append(f"environment: {name}: unknown variable{hint}")
            break
    return Environment(tuple(settings), upstreams, tuple(problems))


def _key_of(path: tuple[str, ...], key: str, index: int | None = None) -> str:
    if path == ("upstream",):
        return f"upstream[{index}].{key}"
    return ".".join((*path, key))


def load_with_environment(path: str | None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration of the file at ``path`` (none: the defaults) with ``environ`` on top.

    Raises :class:`ConfigError` with every problem; a problem with a value
    from the environment names its variable (``environment: PMLB_SERVER_PORT:
    must be an integer from 0 to 65535, got string 'x'``).
    """
    env = read_environment(environ)
    if path is None and not env.settings and env.upstreams is None:
        if env.problems:
            raise ConfigError(env.problems)
        return Config()
    source = path or "<environment>"
    data: dict[str, Any] = read_config_file(path) if path else {}
    # Which variable set each key, to name it in a problem.
    origins: dict[str, str] = {}
    if env.upstreams is not None:
        data["upstream"] = [dict(table) for table in env.upstreams]
        for index, table in enumerate(env.upstreams):
            for key in table:
                origins[f"upstream[{index}].{key}"] = f"{UPSTREAMS} (item {index + 1})"
    for name, table_path, key, value in env.settings:
        if table_path == ("upstream",):
            tables = data.get("upstream")
            for index, table in enumerate(tables if isinstance(tables, list) else []):
                if isinstance(table, dict):
                    table[key] = value
                    origins[_key_of(table_path, key, index)] = name
            continue
        table = data
        for part in table_path:
            inner = table.get(part)
            if not isinstance(inner, dict):
                # Not a table in the file: the check of the file reports it;
                # a missing one is made.
                if inner is not None:
                    break
                inner = table[part] = {}
            table = inner
        else:
            table[key] = value
            origins[_key_of(table_path, key)] = name
    try:
        config = parse_config(data, source)
    except ConfigError as error:
        raise ConfigError(
            [*env.problems, *(_named(problem, source, origins) for problem in error.problems)]
        ) from None
    if env.problems:
        raise ConfigError(env.problems)
    return attrs.evolve(config, source=path) if path is None else config


def _named(problem: str, source: str, origins: Mapping[str, str]) -> str:
    prefix = f"{source}: "
    if not problem.startswith(prefix):
        return problem
    key, sep, rest = problem.removeprefix(prefix).partition(": ")
    if sep and key in origins:
        return f"environment: {origins[key]}: {rest}"
    return problem
