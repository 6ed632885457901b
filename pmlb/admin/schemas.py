"""The admin API's request and response bodies; the OpenAPI document is made from these."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pmlb.config import host_problem


def _valid_host(host: str) -> str:
    problem = host_problem(host)
    if problem:
        raise ValueError(problem)
    return host


Host = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_valid_host)]


class _Strict(BaseModel):
    # A typo in a field name is an error, not a silently ignored field.
    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    """Every error answer: what went wrong, and for a bad body, which fields."""

    error: str
    fields: list[str] = []


# -- upstreams ------------------------------------------------------------


class UpstreamIn(_Strict):
    """An upstream to add: every key of a file's ``[[upstream]]`` table.

    The body is checked as the file is (pmlb.config.parse_upstream): a bad
    value, an unknown key or a TLS key without ``tls`` is a 400 naming it.
    """

    host: str
    port: int
    ready_timeout: float = 5.0
    alive_timeout: float = 30.0
    live_interval: float = 5.0
    stall_timeout: float = 10.0
    #: the gRPC transport
    transport: Literal["native", "grpclib"] = "native"
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    #: send it clients' connected and disconnected events
    events: bool = False
    #: acknowledgements (see docs/contract.md) and their limits
    acks: bool = False
    max_unacked: int = 10_000
    ack_timeout: float = 30.0
    max_deliveries: int = 5
    health: Literal["contract", "grpc"] = "contract"
    health_service: str = ""
    #: "dns": ``host`` is a name whose addresses become upstreams
    discovery: Literal["static", "dns"] = "static"
    resolve_interval: float = 10.0
    nameserver: str = ""
    reply_scope: Literal["local", "cluster"] = "local"


class LegacyUpstreamIn(_Strict):
    """The original project's ``POST /upstream/add`` body."""

    host: Host
    port: int = Field(ge=1, le=65535)
    alive_timeout: float = Field(default=30.0, gt=0, le=86400)
    ready_timeout: float = Field(default=5.0, gt=0, le=86400)


class Upstream(BaseModel):
    address: str
    host: str
    port: int
    state: str
    #: what an operator set: ready (in rotation while serving), drain or maint
    admin_state: Literal["ready", "drain", "maint"] = "ready"
    draining: bool
    #: its writes make no progress: it gets no new messages (see stall_timeout)
    stalled: bool
    stalls: int
    #: times it stopped serving, and readiness checks that failed
    failures: int = 0
    ready_failures: int = 0
    last_error: str | None
    ready_at: str | None
    alive_at: str | None
    #: seconds the last liveness ping took to be answered
    ping_seconds: float | None = None
    ready_timeout: float
    alive_timeout: float
    live_interval: float
    stall_timeout: float = 10.0
    transport: str
    tls: bool = False
    events: bool = False
    health: str = "contract"
    messages_to_upstream: int
    messages_from_upstream: int
    #: messages written to its stream (failed-over ones included, requeued ones not)
    messages_written: int
    queued: int
    #: with acks: written and not acknowledged; acks received and unknown
    #: ones; requests redelivered elsewhere, and dropped after max_deliveries
    acks: bool = False
    unacked: int = 0
    acks_received: int = 0
    acks_unknown: int = 0
    redelivered: int = 0
    undeliverable: int = 0


class Discovery(BaseModel):
    """A ``discovery = "dns"`` entry: a name whose addresses are upstreams."""

    address: str
    host: str
    port: int
    resolve_interval: float
    #: the addresses of the upstreams it found
    upstreams: list[str]


class UpstreamList(BaseModel):
    upstreams: list[Upstream]
    discoveries: list[Discovery] = []


class UpstreamStateIn(_Strict):
    """ready: back in rotation; drain: no new messages, replies and acks still
    flow; maint: out of rotation, what is queued moves to the others."""

    state: Literal["ready", "drain", "maint"]


class DrainIn(_Strict):
    timeout: float = Field(default=30.0, gt=0, le=3600)


class Drained(BaseModel):
    upstream: str
    failed_over: int
    pending: bool = False


class Removed(BaseModel):
    removed: str
    #: true when its connection is still closing (it leaves the list once closed)
    pending: bool = False


# -- clients --------------------------------------------------------------


class ClientQuery(_Strict):
    state: Literal["active", "inactive"] | None = None
    listener: str | None = None
    #: clients whose UUID, remote address or listener contains it
    q: str | None = Field(default=None, max_length=200)
    #: a ``next_cursor`` from the page before: a number, or in a cluster NODE/NUMBER
    cursor: str = Field(default="-1", pattern=r"^(?:[A-Za-z0-9._-]{1,100}/)?(?:-1|[0-9]{1,18})$")
    limit: int = Field(default=100, ge=1, le=1000)


class Client(BaseModel):
    uuid: str
    remote: str
    listener: str
    transport: str
    connected_at: str
    last_active_at: str | None
    active: bool
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    queued: int
    #: messages dropped by the ``drop_oldest`` slow-client policy
    dropped: int = 0
    #: in a cluster: the node that holds it
    node: str | None = None


class ClientPage(BaseModel):
    clients: list[Client]
    #: pass as ``cursor`` to get the next page; null on the last page (in a
    #: cluster a string, NODE/NUMBER: the pages go over every node)
    next_cursor: int | str | None
    #: clients connected now, whatever the filters (in a cluster: all its
    #: clients, as its directory counted them at the last heartbeat)
    connected: int
    #: in a cluster: why clients of some nodes are missing (Redis down, a
    #: node not answering); null when the page is whole
    partial: str | None = None


class Message(_Strict):
    payload: str = Field(max_length=16 * 1024 * 1024)
    encoding: Literal["utf-8", "base64"] = "utf-8"


class Queued(BaseModel):
    client: str
    queued: bool
    #: in a cluster: the node that holds the client
    node: str | None = None


class Disconnected(BaseModel):
    disconnected: str
    node: str | None = None


class BroadcastIn(Message):
    kind: Literal["all", "active", "inactive"] = "all"


class BroadcastOut(BaseModel):
    kind: str
    #: clients it was queued for (in a cluster: on every node that answered)
    recipients: int
    #: nodes that answered, this one included, of the nodes asked (1 and 1
    #: outside a cluster)
    nodes: int = 1
    nodes_asked: int = 1
    #: why some nodes are not counted (Redis down, a node not answering)
    partial: str | None = None


# -- cluster --------------------------------------------------------------


class ClusterNode(BaseModel):
    name: str
    #: this node's admin URL (null: no admin API)
    admin: str | None
    clients: int
    upstreams: int
    upstreams_serving: int
    #: its last heartbeat (the node's own clock) and how many seconds ago
    last_heartbeat: str | None
    heartbeat_age: float | None
    version: str
    #: the node that answers this request
    this: bool


class Cluster(BaseModel):
    #: whether this pmlb is in a cluster ([cluster] redis_url)
    enabled: bool
    node: str | None = None
    #: connected to Redis now
    connected: bool = False
    #: why the cluster is degraded (null: it is not); nodes then lists this one only
    degraded: str | None = None
    #: clients in the cluster's directory at the last heartbeat
    clients: int = 0
    nodes: list[ClusterNode] = []


# -- runtime --------------------------------------------------------------


class RuntimeIn(_Strict):
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    policy: str | None = Field(default=None, min_length=1, max_length=64)
    accepting: bool | None = None


class Stats(BaseModel):
    clients: int
    clients_active: int
    clients_total: int
    upstreams: int
    upstreams_serving: int
    messages_from_clients: int
    messages_to_clients: int
    bytes_from_clients: int
    bytes_to_clients: int
    broadcasts: int
    broadcast_recipients: int
    unknown_client: int
    invalid_target: int
    #: mean seconds client batches waited to be handed to an upstream's queue
    dispatch_latency_mean: float = 0.0
    awaiting_upstream: int
    refused: int
    disconnects: dict[str, int]
    #: acknowledgements, all upstreams together (see Upstream)
    unacked: int = 0
    acks_received: int = 0
    acks_unknown: int = 0
    redelivered: int = 0
    undeliverable: int = 0


class Runtime(BaseModel):
    version: str
    started_at: str
    uptime: float
    log_level: str
    policy: str
    policies: list[str]
    accepting: bool
    stopping: bool
    listeners: dict[str, list[str]]
    config: dict[str, object]
    stats: Stats


class Draining(BaseModel):
    draining: bool


class Reloaded(BaseModel):
    """What a reload changed (names of listeners, addresses of upstreams)."""

    reloaded: bool
    source: str | None
    upstreams_added: list[str]
    upstreams_removed: list[str]
    upstreams_changed: list[str]
    listeners_added: list[str]
    listeners_removed: list[str]
    listeners_changed: list[str]
    #: settings applied, as server.KEY or log.level
    settings: list[str]
    #: keys changed in the file that keep their old values until a restart
    restart_required: list[str]


class ReloadRefused(BaseModel):
    """A reload refused: nothing changed. ``problems`` lists each, as FILE: KEY: PROBLEM."""

    error: str
    problems: list[str] = []


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    reason: str | None = None
    #: upstreams known and serving (counts only: the probe needs no token)
    upstreams: int = 0
    upstreams_serving: int = 0
    #: in a cluster: "ok", or "degraded" (Redis unreachable: local traffic goes
    #: on, replies to other nodes are dropped; pmlb stays ready)
    cluster: Literal["ok", "degraded"] | None = None
    cluster_reason: str | None = None
