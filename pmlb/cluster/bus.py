"""The cluster bus: this node's link to the others, through one Redis.

The data path only ever calls the bus's synchronous methods (a client came
or went, a reply for a client this node does not hold, a broadcast): they
queue and return. One writer task takes everything queued at each wake-up
and hands it to Redis in one call (the flush script): directory changes,
and the replies for other nodes, which the script groups into one PUBLISH
per destination node. A subscriber task receives this node's channel and
the broadcast channel and delivers to local clients only. A heartbeat task
refreshes this node's TTL, learns the live nodes and reaps the dead.

Redis down: the data path goes on; what would cross nodes is counted as
dropped; the bus reconnects with backoff and registers this node's clients
again. Replies cross nodes at most once: nothing is retried.

The admin API of any node reaches the clients of the others through
:meth:`Bus.ask_owner`, :meth:`Bus.ask_all` and :meth:`Bus.ask_node`: a
request (:mod:`pmlb.cluster.ops`) rides the next flush, the node that holds
the client (found in the directory by the flush script) answers on the
asking node's channel, and the asker waits for the answer with a timeout.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import coredis
import coredis.exceptions
import coredis.retry
import trio

from pmlb._log import RateLimited
from pmlb._proto import upstream_pb2 as pb
from pmlb._version import pmlb_version
from pmlb.cluster import ops, scripts, wire
from pmlb.cluster.ops import BusDown, NoAnswer
from pmlb.config import ClusterConfig
from pmlb.histogram import LatencyHistogram
from pmlb.upstream.supervisor import Backoff

if TYPE_CHECKING:
    from pmlb.registry import Registry

log = logging.getLogger("pmlb.cluster")


#: replies queued for other nodes before more are dropped (and counted)
QUEUE_LIMIT = 65536
#: clients registered again per flush after a reconnection
RESYNC_CHUNK = 10_000
#: seconds a node leaving on purpose waits for Redis to forget it
LEAVE_TIMEOUT = 1.0
#: admin requests to other nodes waiting for the next flush, at most
REQUEST_LIMIT = 1024

#: what a lost or failing Redis raises through coredis and anyio
_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


@attrs.frozen
class NodeInfo:
    """A live node as its last heartbeat described it."""

    name: str
    #: its admin API's URL (None: it has none)
    admin: str | None
    clients: int
    upstreams: int
    upstreams_serving: int
    #: when it sent that heartbeat (its clock, ``time.time()``)
    heartbeat_at: float
    version: str


def _node_info(name: str, raw: bytes) -> NodeInfo:
    try:
        info = json.loads(raw)
        return NodeInfo(
            name=name,
            admin=info.get("admin"),
            clients=int(info.get("clients", 0)),
            upstreams=int(info.get("upstreams", 0)),
            upstreams_serving=int(info.get("upstreams_serving", 0)),
            heartbeat_at=float(info.get("at", 0.0)),
            version=str(info.get("version", "")),
        )
    except (ValueError, TypeError, AttributeError):  # not a pmlb we know: keep the name
        return NodeInfo(name, None, 0, 0, 0, 0.0, "")


class _Pending:
    """An admin request waiting for its answers."""

    def __init__(self) -> None:
        #: nodes the request reached (known once flushed)
        self.expected: int | None = None
        #: "u" and "n" requests: the node it reached ("" none)
        self.reached = ""
        self.answers: list[dict[str, Any]] = []
        self.error: str | None = None
        self.done = trio.Event()

    def check(self) -> None:
        if self.error is not None or (
            self.expected is not None and len(self.answers) >= self.expected
        ):
            self.done.set()


def default_node_name() -> str:
    """``HOST-PID-RANDOM``: unique on a machine and across restarts."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return f"{host or 'pmlb'}-{os.getpid()}-{secrets.token_hex(3)}"


def open_redis(url: str, *, connect_timeout: float, stream_timeout: float) -> coredis.Redis[bytes]:
    """A coredis client for ``url`` that never retries by itself (the bus does)."""
    return coredis.Redis.from_url(
        url,
        retry_policy=coredis.retry.NoRetryPolicy(),
        connect_timeout=connect_timeout,
        stream_timeout=stream_timeout,
    )


@attrs.frozen
class BusStatistics:
    """A snapshot of the bus's counters (see :meth:`Bus.statistics`)."""

    node: str
    connected: bool
    #: replies sent to other nodes (one per destination node), broadcasts counted once
    sent: int
    received: int
    #: replies for other nodes that were dropped: queue full, Redis down, node gone
    dropped: int
    #: failed Redis calls and lost connections
    errors: int
    queued: int
    #: live nodes, this one included, at the last heartbeat
    nodes: tuple[str, ...]
    #: clients in the whole cluster's directory, at the last heartbeat
    cluster_clients: int
    last_error: str | None
    #: the live nodes as their heartbeats described them (this one included)
    peers: tuple[NodeInfo, ...] = ()


class Bus:
    """This node on the cluster bus; see the module docstring."""

    def __init__(self, config: ClusterConfig, registry: Registry) -> None:
        self.config = config
        self.node = config.node or default_node_name()
        self._registry = registry
        self._header = wire.header(wire.Kind.REPLIES, self.node)
        self.connected = False
        #: the admin's URL, told to the other nodes in heartbeats
        self.admin_url: str | None = None
        # What the next flush carries.
        self._added: list[str] = []
        self._removed: list[str] = []
        self._broadcasts: list[bytes] = []
        self._lookups: list[tuple[bytes, list[str]]] = []
        self._queued = 0
        #: replies for other nodes queued before more are dropped
        self.queue_limit = QUEUE_LIMIT
        # Admin requests and answers: mode ("u", "n", "a"), target, message, who waits.
        self._messages: list[tuple[str, str, bytes, _Pending | None]] = []
        self._pending: dict[int, _Pending] = {}
        self._request_ids = 0
        # Register every client again (and forget what Redis had) at the next flush.
        self._resync = True
        self._wakeup = trio.Event()
        #: clients added but not yet in Redis's directory: their first
        #: messages wait for that (see wait_registered)
        self.unregistered: set[str] = set()
        self._registered = trio.lowlevel.ParkingLot()
        self._changed = trio.lowlevel.ParkingLot()
        self._flushing = False
        self.heartbeats = 0
        self.latency = LatencyHistogram()
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self.errors = 0
        self.nodes: tuple[str, ...] = ()
        self.peers: dict[str, NodeInfo] = {}
        self.cluster_clients = 0
        self.last_error: str | None = None
        self._drop_log = RateLimited(log)

    # -- the data path's side: never waits -------------------------------

    def client_added(self, uuid: str) -> None:
        if not self.connected:
            return  # registered by the resync once Redis is back
        self._added.append(uuid)
        self.unregistered.add(uuid)
        self._wakeup.set()

    def client_removed(self, uuid: str) -> None:
        self.unregistered.discard(uuid)
        if self.connected:
            self._removed.append(uuid)
            self._wakeup.set()

    def forward(self, reply: pb.OutputStreamRequest, uuids: list[str]) -> None:
        """Send ``reply`` to whichever nodes hold ``uuids`` (none of them held here)."""
        if self._room():
            self._lookups.append((wire.record(reply.SerializeToString()), uuids))
            self._queued += 1
            self._wakeup.set()

    def broadcast(self, reply: pb.OutputStreamRequest) -> None:
        """Send a broadcast ``reply`` to every other node, once."""
        if self._room():
            self._broadcasts.append(wire.record(reply.SerializeToString()))
            self._queued += 1
            self._wakeup.set()

    def _room(self) -> bool:
        if self.connected and self._queued < self.queue_limit:
            return True
        self.dropped += 1
        self._drop_log.warning(
            "reply for another node dropped",
            reason="the queue to Redis is full" if self.connected else "Redis is unreachable",
            dropped_total=self.dropped,
        )
        return False

    # -- the admin API's side: asks other nodes, waits for answers ------

    async def ask_owner(
        self, uuid: str, request: dict[str, Any], within: float
    ) -> dict[str, Any] | None:
        """The answer of the node holding client ``uuid`` (None: no node holds it).

        Raises :class:`BusDown` if Redis cannot be used, :class:`NoAnswer`
        if that node did not answer within ``within`` seconds.
        """
        pending = await self._ask("u", uuid, request, within)
        if not pending.answers:
            if pending.expected == 0:
                return None
            raise NoAnswer(f"node {pending.reached} did not answer within {within:g} s")
        return pending.answers[0]

    async def ask_node(
        self, node: str, request: dict[str, Any], within: float
    ) -> dict[str, Any] | None:
        """Node ``node``'s answer (None: it is not connected); as :meth:`ask_owner` else."""
        pending = await self._ask("n", node, request, within)
        if not pending.answers:
            if pending.expected == 0:
                return None
            raise NoAnswer(f"node {node} did not answer within {within:g} s")
        return pending.answers[0]

    async def ask_all(
        self, request: dict[str, Any], within: float
    ) -> tuple[list[dict[str, Any]], int]:
        """Every other node's answer that came within ``within``, and how many were asked.

        Raises :class:`BusDown` if Redis cannot be used.
        """
        pending = await self._ask("a", "", request, within)
        return pending.answers, pending.expected or 0

    async def _ask(
        self, mode: str, target: str, request: dict[str, Any], within: float
    ) -> _Pending:
        if not self.connected:
            raise BusDown(f"Redis is unreachable: {self.last_error or 'not connected yet'}")
        if len(self._messages) >= REQUEST_LIMIT:
            raise BusDown("too many requests to other nodes are waiting for Redis")
        self._request_ids += 1
        ident = self._request_ids
        pending = _Pending()
        body = json.dumps({"id": ident, **request}).encode()
        message = wire.encode(wire.Kind.REQUEST, self.node, [body])
        self._pending[ident] = pending
        self._messages.append((mode, target, message, pending))
        self._wakeup.set()
        try:
            with trio.move_on_after(within):
                await pending.done.wait()
        finally:
            del self._pending[ident]
        if pending.error is not None:
            raise BusDown(pending.error)
        if pending.expected is None:
            raise BusDown(f"Redis did not take the request within {within:g} s")
        return pending

    def _answer(self, origin: str, data: bytes) -> None:
        try:
            request = json.loads(data)
            ident = int(request["id"])
            reply = {"id": ident, "node": self.node, **ops.answer(self._registry, request, origin)}
        except (ValueError, KeyError, TypeError) as exc:
            self.errors += 1
            self._drop_log.warning("bad request from another node", node=origin, problem=str(exc))
            return
        body = json.dumps(reply).encode()
        if self.connected and len(self._messages) < REQUEST_LIMIT:
            self._messages.append(
                ("n", origin, wire.encode(wire.Kind.ANSWER, self.node, [body]), None)
            )
            self._wakeup.set()

    def _answered(self, data: bytes) -> None:
        try:
            reply = json.loads(data)
            pending = self._pending.get(int(reply["id"]))
        except (ValueError, KeyError, TypeError) as exc:
            self.errors += 1
            self._drop_log.warning("bad answer from another node", problem=str(exc))
            return
        if pending is not None:  # else: it came after its timeout
            pending.answers.append(reply)
            pending.check()

    async def wait_registered(self, uuid: str) -> None:
        """Return once ``uuid`` is in Redis's directory, or Redis is down, or after a while.

        A new client's first message waits for this, so that a reply to it
        sent through another node finds it. It waits at most
        ``heartbeat_interval`` seconds: a slow Redis must not hold clients.
        """
        with trio.move_on_after(self.config.heartbeat_interval):
            while uuid in self.unregistered:
                await self._registered.park()

    async def changed(self) -> None:
        """Return at the next change: connected, disconnected, a heartbeat or a flush done."""
        await self._changed.park()

    async def wait_connected(self) -> None:
        """Return once the bus is connected to Redis (for tests and tools)."""
        while not self.connected:
            await self.changed()

    async def wait_heartbeat(self) -> None:
        """Return after this node's next heartbeat."""
        beats = self.heartbeats
        while self.heartbeats == beats:
            await self.changed()

    async def wait_idle(self) -> None:
        """Return once everything queued so far has been handed to Redis (or dropped)."""
        while self._queued or self._flushing:
            await self.changed()

    # -- the tasks -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Bus] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected to Redis until cancelled; started at once, connected or not."""
        task_status.started(self)
        backoff = Backoff(0.1, max(1.0, self.config.heartbeat_interval))
        while True:
            try:
                await self._run_connected(backoff)
            except BaseException as exc:
                if trio.current_effective_deadline() == -math.inf:
                    # Cancelled: stop, whatever coredis raised on its way out
                    # (its pub/sub cleanup writes to a connection already closed).
                    self.connected = False
                    await trio.lowlevel.checkpoint()
                problem = _redis_problem(exc)
                if problem is None:
                    raise
                self._disconnected(problem)
            await trio.sleep(backoff.next())

    async def _run_connected(self, backoff: Backoff) -> None:
        redis = open_redis(
            self.config.redis_url,
            connect_timeout=self.config.heartbeat_interval,
            stream_timeout=max(self.config.node_timeout / 2, self.config.heartbeat_interval),
        )
        async with redis, trio.open_nursery() as nursery:
            await nursery.start(self._subscribe, redis)
            heartbeat = redis.register_script(scripts.HEARTBEAT)
            await self._beat(heartbeat)
            self._resync = True
            self._wakeup.set()
            self.connected = True
            self._changed.unpark_all()
            backoff.reset()
            log.info(
                "cluster joined" if self.last_error is None else "cluster connected again",
                extra={"node": self.node, "nodes": len(self.nodes)},
            )
            self.last_error = None
            try:
                nursery.start_soon(self._heartbeats, heartbeat)
                await self._write(redis.register_script(scripts.FLUSH))
            except BaseException as exc:
                if _redis_problem(exc) is None:  # cancelled: this node is stopping
                    with trio.CancelScope(shield=True), trio.move_on_after(LEAVE_TIMEOUT):
                        await self._leave(redis)
                raise

    async def _leave(self, redis: coredis.Redis[bytes]) -> None:
        # Cancelled (a drain ends, or the server stops): let the others know now.
        try:
            await redis.register_script(scripts.LEAVE)(
                keys=[
                    scripts.node_key(self.node),
                    scripts.NODES,
                    scripts.DIRECTORY,
                    scripts.clients_key(self.node),
                ],
                args=[self.node],
            )
            log.info("cluster left", extra={"node": self.node})
        except _REDIS_ERRORS as exc:
            log.info("cluster left without telling Redis", extra={"reason": str(exc)})

    def _disconnected(self, problem: str) -> None:
        # Logged once per outage: when it starts, or at the first try at start.
        log_it = self.connected or self.last_error is None
        self.connected = False
        self.errors += 1
        self.last_error = problem
        lost = self._queued
        self.dropped += lost
        self._added, self._removed, self._broadcasts, self._lookups = [], [], [], []
        self._queued = 0
        self._messages = []
        for pending in self._pending.values():
            pending.error = f"Redis is unreachable: {problem}"
            pending.check()
        self._resync = True
        self._flushing = False
        self.unregistered.clear()
        self._registered.unpark_all()
        self._changed.unpark_all()
        if log_it:
            log.warning(
                "cluster degraded: Redis unreachable, replies to other nodes are dropped",
                extra={"node": self.node, "reason": problem, "dropped": lost},
            )

    async def _subscribe(
        self, redis: coredis.Redis[bytes], *, task_status: trio.TaskStatus[None]
    ) -> None:
        pubsub = redis.pubsub(
            channels=[scripts.node_channel(self.node), scripts.BROADCAST_CHANNEL],
            retry_policy=None,
            ignore_subscribe_messages=True,
        )
        async with pubsub:
            task_status.started()
            async for message in pubsub:
                data = message["data"]
                if isinstance(data, bytes):
                    self._receive(data)
        raise BusDown("the subscription ended")

    def _receive(self, data: bytes) -> None:
        try:
            kind, origin, records = wire.decode(data)
            if origin == self.node:
                return  # this node's own broadcast, delivered here already
            if kind is wire.Kind.REQUEST:
                for record in records:
                    self._answer(origin, record)
                return
            if kind is wire.Kind.ANSWER:
                for record in records:
                    self._answered(record)
                return
            replies = [pb.OutputStreamRequest.FromString(r) for r in records]
        except Exception as exc:  # malformed: from something that is not pmlb
            self.errors += 1
            self._drop_log.warning("malformed message on the cluster bus", problem=str(exc))
            return
        self.received += len(replies)
        self._registry.deliver_from_node(replies)

    async def _heartbeats(self, heartbeat: Any) -> None:
        while True:
            await trio.sleep(self.config.heartbeat_interval)
            if await self._beat(heartbeat):
                log.warning(
                    "cluster: this node's entry had expired; registering its clients again",
                    extra={"node": self.node},
                )
                self._resync = True
                self._wakeup.set()

    async def _beat(self, heartbeat: Any) -> bool:
        """One heartbeat; whether this node's key was missing (it must register again)."""
        stats = self._registry.statistics()
        info = json.dumps(
            {
                "admin": self.admin_url,
                "clients": stats.clients,
                "upstreams": stats.upstreams,
                "upstreams_serving": stats.upstreams_serving,
                "at": time.time(),
                "version": pmlb_version(),
            }
        )
        expired, clients, live, reaped = await heartbeat(
            keys=[scripts.node_key(self.node), scripts.NODES, scripts.DIRECTORY],
            args=[self.node, info, int(self.config.node_timeout * 1000), scripts.PREFIX],
        )
        self.cluster_clients = int(clients)
        peers = {}
        for index in range(0, len(live), 2):
            name = live[index].decode()
            peers[name] = _node_info(name, live[index + 1])
        self.peers = dict(sorted(peers.items()))
        self.nodes = tuple(self.peers)
        self._reaped(reaped)
        self.heartbeats += 1
        self._changed.unpark_all()
        return bool(expired)

    def _reaped(self, flat: list[Any]) -> None:
        index = 0
        while index < len(flat):
            node, count = flat[index].decode(), int(flat[index + 1])
            uuids = [uuid.decode() for uuid in flat[index + 2 : index + 2 + count]]
            index += 2 + count
            log.warning(
                "cluster: node gone (no heartbeat), its clients removed from the directory",
                extra={"node": node, "clients": count},
            )
            self._registry.clients_lost_elsewhere(uuids, node)

    async def _write(self, flush: Any) -> None:
        keys = [scripts.DIRECTORY, scripts.clients_key(self.node)]
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            reset, added = self._resync, self._added
            if reset:
                self._resync = False
                current = list(self._registry.clients)
                added = current[:RESYNC_CHUNK]
                self._added = current[RESYNC_CHUNK:]
                if self._added:
                    self._wakeup.set()
            else:
                self._added = []
            removed, broadcasts, lookups = self._removed, self._broadcasts, self._lookups
            self._removed, self._broadcasts, self._lookups = [], [], []
            messages, self._messages = self._messages, []
            self._queued = 0
            args: list[str | bytes | int] = [
                self.node,
                self._header,
                scripts.node_channel(""),
                scripts.BROADCAST_CHANNEL,
                "1" if reset else "0",
                len(added),
                *added,
                len(removed),
                *removed,
                len(broadcasts),
                *broadcasts,
                len(lookups),
            ]
            for record, uuids in lookups:
                args += [record, len(uuids), *uuids]
            args.append(len(messages))
            for mode, target, message, _ in messages:
                args += [mode, target, message]
            started = time.perf_counter()
            self._flushing = True
            try:
                unknown, sent, dropped, reached = await flush(keys=keys, args=args)
            except _REDIS_ERRORS:
                self.dropped += len(broadcasts) + len(lookups)
                raise
            self._flushing = False
            for (mode, _, _, pending), where in zip(messages, reached, strict=True):
                if pending is not None:
                    if mode == "a":  # every subscriber of the broadcast channel but this node
                        pending.expected = max(0, int(where) - 1)
                    else:
                        pending.reached = where.decode()
                        pending.expected = 1 if where else 0
                    pending.check()
            self.latency.observe(time.perf_counter() - started)
            self.sent += int(sent)
            self.dropped += int(dropped)
            if unknown:
                self._registry.count_unknown(int(unknown), "no node of the cluster holds it")
            if added:
                self.unregistered.difference_update(added)
                self._registered.unpark_all()
            if reset:
                log.info("cluster: clients registered", extra={"clients": len(added)})
            self._changed.unpark_all()

    # -- snapshots -------------------------------------------------------

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            node=self.node,
            connected=self.connected,
            sent=self.sent,
            received=self.received,
            dropped=self.dropped,
            errors=self.errors,
            queued=self._queued,
            nodes=self.nodes,
            cluster_clients=self.cluster_clients,
            last_error=self.last_error,
            peers=tuple(self.peers.values()),
        )


def _redis_problem(exc: BaseException) -> str | None:
    """What went wrong with Redis, if ``exc`` (or every error in a group) is a Redis failure."""
    if isinstance(exc, BaseExceptionGroup):
        problems = [_redis_problem(inner) for inner in exc.exceptions]
        if all(p is not None for p in problems):
            return "; ".join(dict.fromkeys(p for p in problems if p))
        return None
    if isinstance(exc, (BusDown, *_REDIS_ERRORS)):
        return str(exc) or type(exc).__name__
    return None
