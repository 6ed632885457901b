"""pmlb's configuration: what it listens on, where it forwards, how it is managed.

The configuration is a TOML file. Every table and key is optional: an empty file
(or no file at all) runs on safe defaults, with one listener on 127.0.0.1:7999
using raw framing, no upstreams, and the management server on 127.0.0.1:8000.
Command-line flags override the file.

An example using every table::

    [server]
    host = "0.0.0.0"            # the first listener's address
    port = 7999
    framing = "line"            # "raw" (default), "line" or "length"
    max_message_size = 65536    # bytes; a client sending more is disconnected
    activity_window = 60        # seconds a client counts as active after its last message
    client_queue_size = 1024
    upstream_queue_size = 4096
    max_clients_total = 10000   # over all listeners; 0 (default): no limit
    slow_client_policy = "disconnect"   # or "drop_oldest"
    slow_client_timeout = 5     # seconds a full client queue is tolerated
    client_fin_timeout = 5      # seconds replies still go to a client after its EOF
    drain_period = 10           # seconds to spread client closes over when draining
    drain_timeout = 20          # seconds a drain may take before pmlb stops at once
    drain_upstream_wait = 5     # seconds a drain waits for an upstream when none serves
    workers = 1                 # processes serving the listeners; 0: one per core

    [[listener]]                # more listeners, as many as needed
    name = "binary"
    host = "0.0.0.0"
    port = 7998
    framing = "length"
    transport = "tls"           # "tcp" (default) or "tls"
    tls_cert = "server.pem"     # required with "tls"
    tls_key = "server.key"
    tls_client_ca = "ca.pem"    # optional: require client certificates
    proxy_protocol = true       # a PROXY v1/v2 header starts every connection
    max_clients = 5000          # 0 (default): no limit
    accept_rate = 200           # new connections per second; 0 (default): no limit
    handshake_timeout = 10      # seconds for the PROXY header and TLS handshake
    idle_timeout = 300          # seconds without a message; 0 (default): never

    [[upstream]]
    host = "127.0.0.1"
    port = 45888
    ready_timeout = 5           # seconds
    alive_timeout = 30
    live_interval = 5
    stall_timeout = 10          # seconds nothing may be written while messages wait
    transport = "native"        # "native" (default) or "grpclib"
    tls = true                  # default false
    tls_ca = "upstream-ca.pem"  # default: the system's CAs
    tls_cert = "pmlb.pem"       # optional client certificate (mutual TLS)
    tls_key = "pmlb.key"
    tls_server_name = "svc.internal"    # default: host
    acks = true                 # default false: see docs/contract.md
    max_unacked = 10000         # with acks: requests written and not acknowledged, at most
    ack_timeout = 30            # with acks: seconds a request may wait for its ack
    max_deliveries = 5          # with acks: deliveries of a request before it is dropped

    [management_server]
    host = "127.0.0.1"
    port = 8000
    enabled = true              # false: no admin API at all
    token = ""                  # bearer token (PMLB_ADMIN_TOKEN in the environment overrides it)
    public_metrics = false      # true: /metrics needs no token
    ready_requires_upstream = false     # true: /readyz is 503 while no upstream serves
    allowed_hosts = ["pmlb.internal"]   # more names the admin may be reached by (Host)
    allowed_origins = ["https://ops.example.com"]   # web origins that may change state

    [management_server.tls]
    cert_path = ""
    key_path = ""

    [log]
    level = "info"              # "debug", "info", "warning" or "error"
    format = "text"             # "text" or "json"

    [cluster]                   # several pmlb as one, through Redis
    redis_url = "redis://127.0.0.1:6379/0"  # or "unix:///run/redis.sock"; set: cluster on
    node = ""                   # this instance's name; default host-pid-random
    heartbeat_interval = 2      # seconds
    node_timeout = 10           # seconds without a heartbeat before a node counts as dead

``[server]``
    ``host`` (default ``"127.0.0.1"``), ``port`` (default 7999), ``name`` (the
    listener's name, default ``"default"``), ``transport`` (``"tcp"``, the
    default, ``"tls"`` or ``"websocket"``), ``framing``, ``max_message_size``,
    the TLS files, the limits and ``proxy_protocol`` (as in the example)
    describe a listener. ``[server]``
    describes a listener when it sets ``host`` or ``port``, or when the file has
    no ``[[listener]]`` table; otherwise the ``[[listener]]`` tables are the only
    listeners, and setting ``name``, ``transport``, ``framing`` or
    ``max_message_size`` in ``[server]`` is an error.

    It also holds settings for the whole server: ``activity_window`` (seconds a
    client counts as active after its last message, default 60),
    ``client_queue_size`` (messages queued towards one client before it counts
    as a slow client, default 1024), ``upstream_queue_size`` (messages queued
    towards one upstream before pmlb stops reading from clients, default 4096),
    ``balancing``, the policy that picks an upstream for each message:
    ``"round_robin"`` (default), ``"sticky"``, ``"hash"`` or ``"least_loaded"``
    (see :mod:`pmlb.balancer`; the admin API can change it at runtime),
    ``max_clients_total``, the slow-client policy (with ``"disconnect"`` and a
    ``slow_client_timeout`` above 0, a full queue may grow to twice its size
    for that long before the client is closed; 0 closes it at once),
    ``client_fin_timeout`` (seconds a client that sent its end of input, a
    TCP half-close, is still written to before pmlb closes it, default 5; 0
    closes it at once) and the drain timings: ``drain_period`` (default 0),
    ``drain_timeout`` (default 20, under Kubernetes' default grace period of
    30 s) and ``drain_upstream_wait`` (seconds a drain waits for an upstream
    to serve when messages wait for one and none serves, default 5).

    ``workers`` (default 1) runs that many worker processes under a small
    parent (``0``: one per core this process may run on): the parent binds
    every listener once per worker with ``SO_REUSEPORT``, so the kernel
    spreads new connections evenly, and serves the one admin address for
    all of them (see :mod:`pmlb.workers`). Each worker is a full pmlb with
    its own upstream streams; with a ``[cluster]`` each worker is a node
    named ``NODE-wI`` (I from 0), so that replies reach a client held by
    another worker; without one, a worker's replies reach its own clients
    only.

    A WebSocket listener ignores ``framing`` (each WebSocket message is one
    message) and reads five more keys: ``path`` (the URL path clients connect
    to, default ``"/"``; other paths get HTTP 404), ``websocket_reply``
    (``"auto"``, the default: a reply goes out as text if it is valid UTF-8
    and the client's last message was text, else binary; ``"text"``: text
    whenever valid UTF-8; ``"binary"``: always binary), ``handshake_timeout``
    (seconds, default 10), ``ping_interval`` and ``ping_timeout`` (seconds,
    default 20 each: a client whose pong does not come in time is
    disconnected). TCP listeners accept these keys and ignore them, except ``handshake_timeout``,
    which bounds their PROXY header and TLS handshake. A WebSocket listener
    also takes the TLS files (with ``tls_cert`` and ``tls_key`` it serves
    ``wss://``), ``proxy_protocol`` and the limits, as TCP listeners do;
    its ``handshake_timeout`` covers the PROXY header, TLS and the HTTP upgrade.

``[[listener]]``
    Another listener, with the same keys as the listener part of ``[server]``;
    ``name`` is required. Listener names must be unique, and so must host and
    port, except port 0 (any free port).

``[[upstream]]``
    A gRPC upstream: ``host`` and ``port`` (both required), ``ready_timeout``
    (seconds to answer the readiness check, default 5), ``alive_timeout``
    (seconds to answer a liveness ping before it counts as unhealthy, default
    30), ``live_interval`` (seconds between liveness pings, default 5),
    ``stall_timeout`` (seconds its writes may make no progress while messages
    wait for it, a flow-control window held at 0, before it counts as failed
    and its queued messages fail over, default 10; after one second it
    already gets no new messages while another upstream has room; an upstream
    with no other one to fail over to is never failed for a stall),
    ``transport``: ``"native"`` (default: pmlb's own HTTP/2 client on Trio,
    the faster) or ``"grpclib"`` (grpclib driven through trio-asyncio), the
    TLS keys of the example, and ``events`` (``true``: also send this upstream
    the clients' connected and disconnected events, see docs/contract.md;
    default ``false``, the original contract), ``health`` (``"contract"``,
    the default: the contract's ``ready`` and ``live`` RPCs; ``"grpc"``: the
    standard ``grpc.health.v1.Health`` service, ``Check`` for readiness and
    ``Watch`` plus a ``Check`` every ``live_interval`` for liveness) and
    ``health_service`` (the service name asked about, default ``""``: the
    whole server), ``discovery`` (``"static"``, the default, or ``"dns"``:
    ``host`` is a DNS name whose A and AAAA records are resolved every
    ``resolve_interval`` seconds, default 10, each address becoming an
    upstream with this entry's port and settings; see
    :mod:`pmlb.upstream.discovery`) and ``nameserver`` (``"IP"`` or
    ``"IP:PORT"``: ask that DNS server instead of the system resolver),
    ``acks`` (``true``: the upstream acknowledges what it is done with, and
    pmlb redelivers what a failed upstream did not acknowledge, see
    docs/contract.md; default ``false``, the original contract, on which
    pmlb sets none of the acknowledgement fields) and, with ``acks``,
    ``max_unacked`` (requests written to its stream and not acknowledged
    yet, at most; reaching it stops writing to it, so its queue fills and
    pmlb pushes back; default 10000), ``ack_timeout`` (seconds a request may
    wait for its acknowledgement before the upstream counts as failed and is
    reconnected, default 30) and ``max_deliveries`` (a request delivered
    that many times without an acknowledgement is dropped, logged and
    counted, default 5), ``reply_scope`` (``"local"``, the default: a reply
    reaches the clients of this pmlb only, as in the original contract;
    ``"cluster"``: with a ``[cluster]``, a reply to a client of another node
    is sent there, and a broadcast reaches every client of the cluster once).
    Two upstreams may not have the same host and port.

``[management_server]`` and ``[management_server.tls]``
    The admin API's ``host`` (default ``"127.0.0.1"``) and ``port`` (default
    8000), ``enabled`` (default true) and ``token``, the bearer token every
    admin route but ``/healthz``, ``/readyz`` and the dashboard's page
    requires (default empty: no token); ``public_metrics`` (default false:
    true serves ``/metrics`` without the token too) and
    ``ready_requires_upstream`` (default false: ``/readyz`` is ready while
    pmlb accepts clients, even when no upstream serves; true: not ready
    while no upstream serves). pmlb
    refuses to serve the admin on an address that is not loopback without a
    token. ``allowed_hosts`` (default empty) lists more names a request's
    ``Host`` may give besides the admin's addresses (its ``host``, and
    ``localhost`` on a loopback address): other names are refused (DNS
    rebinding). ``allowed_origins`` (default empty) lists web origins
    (``scheme://host[:port]``) whose pages may change state or open the event
    WebSocket besides the admin's own dashboard. ``cert_path`` and
    ``key_path`` in the ``tls`` table name a PEM certificate and its key; both
    empty means no TLS.

``[log]``
    ``level`` and ``format``, as in the example.

``[cluster]``
    Joins this pmlb to others through Redis (see :mod:`pmlb.cluster`):
    ``redis_url`` (``redis://[:PASSWORD@]HOST[:PORT][/DB]``, ``rediss://`` for
    TLS, or ``unix:///PATH[?db=N]``; empty, the default: no cluster),
    ``node`` (this instance's name, unique in the cluster: letters, digits,
    ``.``, ``_``, ``-``; default ``HOST-PID-RANDOM``), ``heartbeat_interval``
    (seconds, default 2) and ``node_timeout`` (seconds without a heartbeat
    before a node counts as dead, default 10; more than
    ``heartbeat_interval``). An upstream's ``reply_scope = "cluster"`` lets
    it answer any client of the cluster on any of its streams.

Values are checked strictly: ports are integers from 0 to 65535 (1 to 65535
for upstreams), hosts are non-empty strings (an IPv6 address is written
without brackets), times are numbers of seconds greater than 0,
``max_message_size`` is an integer from 1 to 67108864, queue sizes are
integers of at least 1. An unknown key anywhere is an error. Every problem in
a file is reported at once, one per line, as ``FILE: KEY: PROBLEM``.
"""

import difflib
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, time
from typing import Any, Final, TypeGuard

import attrs

__all__ = [
    "ClusterConfig",
    "Config",
    "ConfigError",
    "ListenerConfig",
    "LogConfig",
    "ManagementConfig",
    "ManagementTLSConfig",
    "UpstreamConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
    "render_config",
]

_FRAMINGS: Final = ("raw", "line", "length")
_TRANSPORTS: Final = ("tcp", "tls", "websocket")
_WEBSOCKET_REPLIES: Final = ("auto", "text", "binary")
#: pmlb.balancer.POLICIES's names (config does not import the balancer)
_POLICIES: Final = ("round_robin", "sticky", "hash", "least_loaded")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_LOG_FORMATS: Final = ("text", "json")
_UPSTREAM_TRANSPORTS: Final = ("native", "grpclib")
_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
#: the most worker processes ``[server] workers`` may ask for
MAX_WORKERS: Final = 256


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"IP"`` or ``"IP:PORT"`` (``"[IPv6]:PORT"``) as (ip, port); ``ValueError`` if not."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected IP or IP:PORT, got {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be from 1 to 65535, got {port}")
    return host, port


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen(kw_only=True)
class ListenerConfig:
    """An address pmlb accepts client connections on, and how it frames messages."""

    name: str = "default"
    host: str = "127.0.0.1"
    port: int = 7999
    transport: str = "tcp"
    framing: str = "raw"
    max_message_size: int = 65536
    # WebSocket listeners only (see the module docstring)
    path: str = "/"
    websocket_reply: str = "auto"
    #: seconds for the PROXY header, the TLS and the WebSocket handshakes
    handshake_timeout: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: TLS (``transport = "tls"``, or ``"websocket"`` for wss): PEM certificate
    #: chain and key; a CA file in ``tls_client_ca`` makes client certificates
    #: required (mutual TLS)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    #: expect a PROXY protocol (v1 or v2) header on every connection
    proxy_protocol: bool = False
    #: connections at once on this listener (0: no limit)
    max_clients: int = 0
    #: new connections per second, with bursts of as many (0: no limit)
    accept_rate: float = 0.0
    #: seconds without a message from the client before it is closed (0: never)
    idle_timeout: float = 0.0

    @property
    def address(self) -> str:
        """``host:port``, with an IPv6 host in brackets."""
        return format_address(self.host, self.port)

    @property
    def uses_tls(self) -> bool:
        """TLS here: ``transport = "tls"``, or a WebSocket listener with a cert (wss)."""
        return self.transport == "tls" or (self.transport == "websocket" and bool(self.tls_cert))


@attrs.frozen(kw_only=True)
class UpstreamConfig:
    """A gRPC upstream and its health-check timings, in seconds."""

    host: str
    port: int
    ready_timeout: float = 5.0
    alive_timeout: float = 30.0
    live_interval: float = 5.0
    #: seconds its writes may make no progress while messages wait before it
    #: counts as failed (it gets no new traffic after STALL_AFTER already)
    stall_timeout: float = 10.0
    transport: str = "native"
    #: TLS to the upstream: verified against ``tls_ca`` (else the system's
    #: CAs); ``tls_cert``/``tls_key`` present a client certificate (mutual TLS)
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    #: the name to verify the certificate against, if not ``host``
    tls_server_name: str = ""
    #: send this upstream client lifecycle events (connected, disconnected)
    events: bool = False
    #: the upstream acknowledges requests (seq, message_id, delivery_attempt
    #: set; OutputStreamRequest.acks read): what it did not acknowledge when
    #: its stream fails is redelivered
    acks: bool = False
    max_unacked: int = 10_000
    ack_timeout: float = 30.0
    max_deliveries: int = 5
    #: readiness and liveness through the contract's ready/live RPCs
    #: ("contract") or the standard grpc.health.v1.Health service ("grpc")
    health: str = "contract"
    #: the service name Health is asked about ("": the whole server)
    health_service: str = ""
    #: "static", or "dns": ``host`` names the upstreams, resolved every
    #: ``resolve_interval`` seconds (at ``nameserver`` if set: "IP[:PORT]")
    discovery: str = "static"
    resolve_interval: float = 10.0
    nameserver: str = ""
    #: "local": replies reach this pmlb's clients only; "cluster": any node's
    reply_scope: str = "local"

    @property
    def address(self) -> str:
        """``host:port``, with an IPv6 host in brackets."""
        return format_address(self.host, self.port)


@attrs.frozen(kw_only=True)
class ManagementTLSConfig:
    """The admin server's certificate and key files; both empty means no TLS."""

    cert_path: str = ""
    key_path: str = ""


@attrs.frozen(kw_only=True)
class ManagementConfig:
    """Where the admin server listens."""

    host: str = "127.0.0.1"
    port: int = 8000
    enabled: bool = True
    #: the admin's bearer token; empty: none (allowed on loopback only)
    token: str = attrs.field(default="", repr=False)
    #: more names ``Host`` may give (see pmlb.admin.guard)
    allowed_hosts: tuple[str, ...] = ()
    #: web origins that may change state and open the event WebSocket
    allowed_origins: tuple[str, ...] = ()
    tls: ManagementTLSConfig | None = None
    #: serve /metrics without the token (for a Prometheus that has none)
    public_metrics: bool = False
    #: /readyz answers 503 while no upstream serves (default: ready means
    #: accepting clients, which pmlb does through an upstream outage)
    ready_requires_upstream: bool = False

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def loopback(self) -> bool:
        """Whether the admin listens only on this machine."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name other than localhost
            return False


@attrs.frozen(kw_only=True)
class LogConfig:
    """Log level (``debug``, ``info``, ``warning``, ``error``) and format (``text``, ``json``)."""

    level: str = "info"
    format: str = "text"


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """How this pmlb joins a cluster through Redis; an empty ``redis_url``: no cluster."""

    redis_url: str = attrs.field(default="", repr=False)
    #: this node's name; empty: chosen at start (host-pid-random)
    node: str = ""
    heartbeat_interval: float = 2.0
    node_timeout: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


@attrs.frozen(kw_only=True)
class Config:
    """Everything pmlb runs on.

    ``activity_window`` is how many seconds a client counts as active after its
    last message. ``client_queue_size`` is how many outbound messages may wait
    for one client before it counts as a slow client; ``upstream_queue_size``
    how many may wait for one upstream before pmlb stops reading from clients.
    ``source`` names the file the configuration came from; it does not take
    part in comparisons.
    """

    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    upstreams: tuple[UpstreamConfig, ...] = ()
    activity_window: float = 60.0
    client_queue_size: int = 1024
    upstream_queue_size: int = 4096
    #: the balancing policy pmlb starts with (see pmlb.balancer)
    balancing: str = "round_robin"
    #: connections at once over all listeners (0: no limit)
    max_clients_total: int = 0
    #: what to do when a client's outbound queue is full: "disconnect" it once
    #: the queue has stayed full ``slow_client_timeout`` seconds, or
    #: "drop_oldest" of its queued messages
    slow_client_policy: str = "disconnect"
    slow_client_timeout: float = 0.0
    #: seconds a client that sent its end of input (a half-close) is still
    #: written to before it is closed; 0 closes it at once
    client_fin_timeout: float = 5.0
    #: graceful drain: clients are closed spread over ``drain_period``
    #: seconds; whatever is left after ``drain_timeout`` is stopped at once
    drain_period: float = 0.0
    #: Under Kubernetes' default grace period of 30 s, with room to spare.
    drain_timeout: float = 20.0
    #: messages kept while no upstream serves wait this long for one to
    #: serve during a drain; then pmlb stops without them (logged)
    drain_upstream_wait: float = 5.0
    #: worker processes (0: one per core); see pmlb.workers
    workers: int = 1
    management: ManagementConfig = ManagementConfig()
    log: LogConfig = LogConfig()
    cluster: ClusterConfig = ClusterConfig()
    source: str | None = attrs.field(default=None, eq=False)


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` lists every problem found."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


def check_admin_exposure(config: Config) -> None:
    """Raise :class:`ConfigError` if the admin would listen beyond loopback without a token."""
    management = config.management
    if management.enabled and not management.loopback and not management.token:
        raise ConfigError(
            f"{config.source or 'configuration'}: management_server.host: {management.host!r}"
            " is not a loopback address and no token is set; set management_server.token"
            " or the PMLB_ADMIN_TOKEN environment variable, or listen on 127.0.0.1"
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
_TOP_LEVEL: Final = ("server", "listener", "upstream", "management_server", "log", "cluster")


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[str] = []

    def add(self, key: str, problem: str) -> None:
        self.found.append(f"{self.source}: {key}: {problem}")

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


def _is_array_of_tables(value: object) -> TypeGuard[Sequence[Mapping[str, object]]]:
    return isinstance(value, list | tuple) and all(isinstance(item, Mapping) for item in value)


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
        _require(problems, table, key, ["host", "port"])
        values = _read(problems, table, key, _UPSTREAM_CHECKS)
        _check_upstream_tls(problems, key, values)
        if "host" in values and "port" in values:
            upstreams.append((key, UpstreamConfig(**values)))
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


def _check_upstream_tls(problems: _Problems, key: str, values: Mapping[str, Any]) -> None:
    for name in ("tls_ca", "tls_cert", "tls_key", "tls_server_name"):
        if values.get(name) and not values.get("tls"):
            problems.add(f"{key}.{name}", "only applies when tls = true")
    if values.get("tls_cert") and not values.get("tls_key"):
        problems.add(f"{key}.tls_key", "must be set when tls_cert is set")
    if values.get("tls_key") and not values.get("tls_cert"):
        problems.add(f"{key}.tls_cert", "must be set when tls_key is set")


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
    return parse_config(data, source)


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
    ``cluster_redis`` sets ``[cluster] redis_url``. Raises
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
    for name in ("allowed_hosts", "allowed_origins"):
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
