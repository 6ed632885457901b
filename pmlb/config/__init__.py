"""pmlb's configuration: what it listens on, where it forwards, how it is managed.

The configuration is a TOML file. Every table and key is optional: an empty file
(or no file at all) runs on safe defaults, with one listener on 127.0.0.1:7999
using raw framing, no upstreams, and the management server on 127.0.0.1:8000.
Environment variables (``PMLB_SERVER_PORT``..., see
:mod:`pmlb.config.environment`) override the file, and command-line flags
override both.

An example using every table::

    [server]
    host = "0.0.0.0"            # the first listener's address
    port = 7999
    framing = "line"            # "raw" (default), "line" or "length"
    max_message_size = 65536    # bytes; a client sending more is disconnected
    activity_window = 60        # seconds a client counts as active after its last message
    client_queue_size = 1024
    client_queue_bytes = 4194304        # bytes queued towards one client before it is slow
    client_queue_bytes_total = 268435456    # bytes held for all clients together
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
    max_header_block = 65536    # bytes of one header block (HEADERS + CONTINUATION)
    control_frame_burst = 1000  # control frames (PING, SETTINGS...) at once
    control_frame_rate = 100    # control frames per second, sustained
    max_reply_size = 4194304    # bytes of one reply
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
    trusted_proxies = ["10.0.0.0/8"]    # proxies whose X-Forwarded-For the audit log names

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
    as a slow client, default 1024), ``client_queue_bytes`` (bytes of the
    messages queued towards one client before it counts as a slow client,
    whichever of the two comes first, default 4 MiB; 0: no byte limit),
    ``client_queue_bytes_total`` (bytes queued for, or being written to, all
    clients together, default 256 MiB; past it the slow-client policy applies
    to the clients holding the most, whatever ``slow_client_timeout``, until
    they hold 7/8 of it; 0: no limit), ``upstream_queue_size`` (messages queued
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
    parent (``0``: one per core this process may run on, at most 256): the
    parent binds every listener once per worker with ``SO_REUSEPORT``, so
    the kernel spreads new connections evenly, and serves the one admin
    address for all of them (see :mod:`pmlb.workers`). Each worker is a
    full pmlb with its own upstream streams; with a ``[cluster]`` each
    worker is a node named ``NODE-wI`` (I from 0), so that replies reach a
    client held by another worker; without one, a worker's replies reach
    its own clients only.

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
    the limits on what a broken or hostile upstream may make pmlb do, past
    which its connection is dropped with the limit as the reason (see
    :mod:`pmlb.upstream.h2_guard`, both transports): ``max_header_block``
    (bytes of one header block, HEADERS or PUSH_PROMISE plus CONTINUATION
    frames, default 65536), ``control_frame_burst`` and
    ``control_frame_rate`` (control frames, PING, SETTINGS, PRIORITY,
    RST_STREAM, unknown types, empty DATA or CONTINUATION, at once and per
    second sustained: a token bucket, defaults 1000 and 100) and
    ``max_reply_size`` (bytes of one reply, refused on its 5-byte header,
    default 4 MiB),
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
    WebSocket besides the admin's own dashboard. ``trusted_proxies``
    (default empty) lists IP addresses or networks (``"10.0.0.0/8"``) of
    reverse proxies in front of the admin: a request from one of them has
    the client its ``X-Forwarded-For`` or ``Forwarded`` header names logged
    beside the proxy's address (as ``forwarded_for``) in the admin's audit
    and access lines; from anyone else those headers are ignored. ``cert_path`` and
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

The package is split by job: :mod:`~pmlb.config.schema` (the records and
:class:`ConfigError`), :mod:`~pmlb.config.checks` (what each key accepts),
:mod:`~pmlb.config.parse` (TOML to a :class:`Config`),
:mod:`~pmlb.config.overrides` (command-line flags) and
:mod:`~pmlb.config.render` (a :class:`Config` back to TOML). Import from
``pmlb.config``: the names below are its public surface.
"""

from pmlb.config.checks import host_problem as host_problem
from pmlb.config.checks import redis_url_problem as redis_url_problem
from pmlb.config.environment import Environment, load_with_environment, read_environment
from pmlb.config.overrides import apply_overrides
from pmlb.config.parse import UpstreamError, load_config, parse_config, parse_upstream
from pmlb.config.render import render_config
from pmlb.config.schema import _POLICIES as _POLICIES
from pmlb.config.schema import MAX_WORKERS as MAX_WORKERS
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
from pmlb.config.schema import check_admin_exposure as check_admin_exposure
from pmlb.config.schema import format_address as format_address
from pmlb.config.schema import parse_nameserver as parse_nameserver

__all__ = [
    "ClusterConfig",
    "Config",
    "ConfigError",
    "Environment",
    "ListenerConfig",
    "LogConfig",
    "ManagementConfig",
    "ManagementTLSConfig",
    "UpstreamConfig",
    "UpstreamError",
    "apply_overrides",
    "load_config",
    "load_with_environment",
    "parse_config",
    "parse_upstream",
    "read_environment",
    "render_config",
]
