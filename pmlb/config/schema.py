"""The configuration's records (listeners, upstreams, management, log, cluster) and its error."""

import ipaddress
from collections.abc import Iterable
from typing import Final

import attrs

from pmlb.balancer import POLICIES
from pmlb.codecs.framing import Framing

#: the names their owners define: the codecs' Framing, the balancer's POLICIES
_FRAMINGS: Final = tuple(framing.value for framing in Framing)
_TRANSPORTS: Final = ("tcp", "tls", "websocket")
_WEBSOCKET_REPLIES: Final = ("auto", "text", "binary")
_POLICIES: Final = tuple(POLICIES)
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
    #: given as its name (``"line"``) or the enum; always held as the enum
    framing: Framing = attrs.field(default=Framing.RAW, converter=Framing)
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
    #: limits on what the upstream may make pmlb do (pmlb.upstream.h2_guard):
    #: a header block's bytes, control frames at once and per second, a reply's bytes
    max_header_block: int = 64 * 1024
    control_frame_burst: int = 1000
    control_frame_rate: float = 100.0
    max_reply_size: int = 4 * 1024 * 1024

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
    #: reverse proxies (IP networks) whose forwarded-for headers are believed
    trusted_proxies: tuple[str, ...] = ()
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
    for one client before it counts as a slow client, ``client_queue_bytes``
    how many bytes (whichever comes first), ``client_queue_bytes_total`` how
    many bytes all clients together may hold; ``upstream_queue_size``
    how many may wait for one upstream before pmlb stops reading from clients.
    ``source`` names the file the configuration came from; it does not take
    part in comparisons.
    """

    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    upstreams: tuple[UpstreamConfig, ...] = ()
    activity_window: float = 60.0
    client_queue_size: int = 1024
    #: bytes queued towards one client before it counts as slow (0: no limit)
    client_queue_bytes: int = 4 * 1024 * 1024
    #: bytes queued for or being written to all clients together (0: no limit)
    client_queue_bytes_total: int = 256 * 1024 * 1024
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
