"""The one admin address of ``pmlb serve --workers N``, served by the parent.

Each worker runs its own admin API on a unix socket in a directory only
this user can open; the front, on ``[management_server]``'s address, checks
the token, ``Host`` and origins as a single pmlb's admin does (the same
:class:`~pmlb.admin.guard.Guard`), then asks the workers and merges:

- ``/healthz``: the parent answers; ``/readyz``: ready while every worker is
  running and ready (``upstreams``: the most any worker knows,
  ``upstreams_serving``: the fewest any worker has serving);
- ``/metrics``: every worker's metrics with a ``worker`` label, plus
  ``pmlb_workers``, ``pmlb_workers_running`` and ``pmlb_worker_restarts_total``;
- ``/api/v1/clients``: pages worker by worker (each worker's clients
  oldest first), every client with its ``worker``; a client's routes
  (``GET``/``DELETE``, ``messages``) go to every worker and the one holding
  it answers; ``/api/v1/broadcast`` goes to every worker, recipients summed.
  With a ``[cluster]`` every worker is a node whose admin sees the whole
  cluster already (see :mod:`pmlb.admin.routes.clients`): these routes then go to one
  running worker, and the front adds ``worker`` to the clients of its own
  workers;
- ``/api/v1/upstreams`` and ``/api/v1/runtime``: every worker's view merged
  (counters summed, each upstream's state per worker in ``workers``); a
  change (add, remove, drain an upstream, ``PATCH`` runtime) goes to every
  worker;
- ``/api/v1/runtime/drain``: drains the whole machine, as SIGTERM does;
- ``/api/v1/events``: every running worker's events in one WebSocket, each
  with its ``worker`` (a ``hello`` from each worker first);
- ``/api/v1/workers``: the workers (pid, running, restarts, node);
- any other route: a ``GET`` is answered by the first running worker, a
  change is sent to every worker and the first answer returned.

"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from importlib import resources
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from quart import Response, request, websocket
from quart_trio import QuartTrio
from trio_websocket import ConnectionClosed, HandshakeError, wrap_client_stream

from pmlb._time import rfc3339_from
from pmlb.admin.guard import Guard, HostCheck
from pmlb.config import Config, ManagementConfig
from pmlb.downstream.tcp import ListenError
from pmlb.workers import _http
from pmlb.workers.parent import Supervisor, Worker

log = logging.getLogger("pmlb.admin")

#: what the front's paths need no token for (as a single pmlb's admin)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
#: a front cursor is (worker cursor + 1) * CURSOR_SPAN + worker index
CURSOR_SPAN = 1024
#: events waiting to be sent to one consumer of /api/v1/events
EVENTS_BUFFER = 1024
#: seconds the front waits for a worker's answer
WORKER_TIMEOUT = 10.0

_SUMMED_UPSTREAM = (
    "messages_to_upstream",
    "messages_from_upstream",
    "messages_written",
    "queued",
    "unacked",
    "acks_received",
    "acks_unknown",
    "redelivered",
    "undeliverable",
    "stalls",
)

Reply = tuple[Response, int]


def _json(body: object, status: int = 200) -> Reply:
    return Response(json.dumps(body), content_type="application/json"), status


def _error(status: int, message: str) -> Reply:
    return _json({"error": message, "fields": []}, status)


def _passed(answer: _http.Answer) -> Reply:
    content_type = answer.headers.get("content-type", "application/json")
    return Response(answer.body, content_type=content_type), answer.status


class Front:
    """How the front reaches the workers."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def running(self) -> list[Worker]:
        return [w for w in self.supervisor.workers if w.running]

    async def ask(
        self, worker: Worker, method: str, target: str, body: bytes = b""
    ) -> _http.Answer | None:
        headers = {}
        if body:
            headers["content-type"] = "application/json"
        try:
            return await _http.request(
                worker.admin_socket,
                method,
                target,
                body=body,
                headers=headers,
                wait=WORKER_TIMEOUT,
            )
        except _http.WorkerUnreachable:
            return None

    async def each(
        self, method: str, target: str, body: bytes = b""
    ) -> list[tuple[Worker, _http.Answer]]:
        """Every running worker's answer (in worker order), those that answered."""
        workers = self.running()
        answers: list[_http.Answer | None] = [None] * len(workers)

        async def one(index: int, worker: Worker) -> None:
            answers[index] = await self.ask(worker, method, target, body)

        async with trio.open_nursery() as nursery:
            for index, worker in enumerate(workers):
                nursery.start_soon(one, index, worker)
        return [(w, a) for w, a in zip(workers, answers, strict=True) if a is not None]

    async def one(self, method: str, target: str, body: bytes = b"") -> _http.Answer | None:
        """The first running worker's answer (the next one's if it does not answer)."""
        for worker in self.running():
            answer = await self.ask(worker, method, target, body)
            if answer is not None:
                return answer
        return None

    def with_worker(self, client: dict[str, Any]) -> dict[str, Any]:
        """``client`` (a cluster's, with its ``node``) with ``worker`` if a worker here holds it."""
        for worker in self.supervisor.workers:
            if worker.node is not None and worker.node == client.get("node"):
                return {**client, "worker": worker.index}
        return client

    def workers_view(self) -> list[dict[str, object]]:
        return [
            {
                "worker": w.index,
                "pid": w.pid,
                "running": w.running,
                "started_at": rfc3339_from(w.started_at),
                "restarts": w.restarts,
                "last_exit": w.last_exit,
                "node": w.node,
            }
            for w in self.supervisor.workers
        ]


def _target() -> str:
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


async def _body() -> bytes:
    data = await request.get_data()
    return data if isinstance(data, bytes) else data.encode()


def _load(answer: _http.Answer) -> Any:
    return json.loads(answer.body)


def _first_failure(answers: list[tuple[Worker, _http.Answer]]) -> Reply | None:
    for _, answer in answers:
        if answer.status >= 400:
            return _passed(answer)
    return None


def _merge_upstreams(answers: list[tuple[Worker, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for worker, upstreams in answers:
        for upstream in upstreams:
            address = upstream["address"]
            if address not in merged:
                merged[address] = {**upstream, "workers": []}
            else:
                into = merged[address]
                for name in _SUMMED_UPSTREAM:
                    into[name] = into.get(name, 0) + upstream.get(name, 0)
                if upstream["state"] != "serving":
                    into["state"] = upstream["state"]
                into["stalled"] = into.get("stalled") or upstream.get("stalled")
            merged[address]["workers"].append({"worker": worker.index, "state": upstream["state"]})
    return list(merged.values())


def _merge_runtime(front: Front, answers: list[tuple[Worker, _http.Answer]]) -> Reply:
    if not answers:
        return _error(503, "no worker answered")
    if (failure := _first_failure(answers)) is not None:
        return failure
    bodies = [_load(a) for _, a in answers]
    merged = bodies[0]
    stats = merged["stats"]
    for other in bodies[1:]:
        for name, value in other["stats"].items():
            if name == "upstreams":
                stats[name] = max(stats[name], value)
            elif name == "upstreams_serving":
                stats[name] = min(stats[name], value)
            elif isinstance(value, int) and not isinstance(value, bool):
                stats[name] += value
        merged["accepting"] = merged["accepting"] and other["accepting"]
    merged["stopping"] = front.supervisor.stopping
    merged["workers"] = front.workers_view()
    return _json(merged)


class _WorkerMetrics(Collector):
    def __init__(self, texts: list[tuple[int, str]], front: Front) -> None:
        self._texts = texts
        self._front = front

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for index, text in self._texts:
            for family in text_string_to_metric_families(text):
                into = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": str(index)}
                    into.add_sample(sample.name, labels, sample.value, sample.timestamp)
        yield from families.values()
        supervisor = self._front.supervisor
        yield GaugeMetricFamily(
            "pmlb_workers", "Worker processes configured", value=supervisor.count
        )
        yield GaugeMetricFamily(
            "pmlb_workers_running", "Worker processes running", value=len(self._front.running())
        )
        yield CounterMetricFamily(
            "pmlb_worker_restarts",
            "Workers started again after exiting unexpectedly",
            value=supervisor.restarts,
        )


def create_front(supervisor: Supervisor, management: ManagementConfig) -> QuartTrio:
    """The front's app (see the module docstring)."""
    front = Front(supervisor)
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 32 * 1024 * 1024
    expected = management.token.encode()
    public = PUBLIC_PATHS | {"/metrics"} if management.public_metrics else PUBLIC_PATHS

    def authorized(header: str | None) -> bool:
        if not expected:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), expected)

    app.asgi_app = Guard(  # type: ignore[method-assign]
        app.asgi_app,
        hosts=HostCheck(management.host, management.allowed_hosts),
        origins=management.allowed_origins,
        authorized=authorized,
        public=lambda path: path in public,
    )

    @app.get("/healthz")
    async def healthz() -> Reply:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Reply:
        answers = dict((w.index, a) for w, a in await front.each("GET", "/readyz"))
        reason = "stopping" if supervisor.stopping else None
        upstreams, serving = 0, None
        for worker in supervisor.workers:
            answer = answers.get(worker.index)
            body = _load(answer) if answer is not None else None
            if body is None:
                reason = reason or f"worker {worker.index} is not running"
                continue
            upstreams = max(upstreams, body.get("upstreams", 0))
            count = body.get("upstreams_serving", 0)
            serving = count if serving is None else min(serving, count)
            if not body.get("ready"):
                reason = reason or f"worker {worker.index}: {body.get('reason')}"
        ready = {
            "ready": reason is None,
            "reason": reason,
            "upstreams": upstreams,
            "upstreams_serving": serving or 0,
            "workers": supervisor.count,
            "workers_ready": sum(
                1 for a in answers.values() if a.status == 200 and _load(a).get("ready")
            ),
        }
        return _json(ready, 200 if reason is None else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        texts = [
            (w.index, a.body.decode())
            for w, a in await front.each("GET", "/metrics")
            if a.status == 200
        ]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_WorkerMetrics(texts, front))
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/workers")
    async def workers() -> Reply:
        return _json({"workers": front.workers_view(), "restarts": supervisor.restarts})

    clustered = supervisor.config.cluster.enabled

    async def through_one_worker(adapt: Any = None) -> Reply:
        answer = await front.one(request.method, _target(), await _body())
        if answer is None:
            return _error(503, "no worker answered")
        if adapt is None or answer.status != 200:
            return _passed(answer)
        return _json(adapt(_load(answer)))

    @app.get("/api/v1/clients")
    async def clients() -> Reply:
        if clustered:
            return await through_one_worker(
                lambda page: {**page, "clients": [front.with_worker(c) for c in page["clients"]]}
            )
        query = dict(urllib.parse.parse_qsl(request.query_string.decode("latin-1")))
        try:
            cursor = int(query.pop("cursor", "-1"))
            limit = int(query.pop("limit", "100"))
        except ValueError:
            return _error(400, "invalid request: cursor and limit must be integers")
        if cursor < -1 or not 1 <= limit <= 1000:
            return _error(400, "invalid request: cursor >= -1, limit from 1 to 1000")
        index, after = (
            (0, -1) if cursor == -1 else (cursor % CURSOR_SPAN, cursor // CURSOR_SPAN - 1)
        )
        counts = await front.each(
            "GET", "/api/v1/clients?" + urllib.parse.urlencode({**query, "limit": 1})
        )
        if (failure := _first_failure(counts)) is not None:
            return failure
        page: list[dict[str, Any]] = []
        next_cursor = None
        by_index = {w.index: w for w in front.running()}
        while index < supervisor.count:
            worker = by_index.get(index)
            answer = None
            if worker is not None:
                target = "/api/v1/clients?" + urllib.parse.urlencode(
                    {**query, "cursor": after, "limit": limit - len(page)}
                )
                answer = await front.ask(worker, "GET", target)
            if answer is not None and answer.status == 200:
                body = _load(answer)
                page += [{**c, "worker": index} for c in body["clients"]]
                if body["next_cursor"] is not None:
                    next_cursor = (body["next_cursor"] + 1) * CURSOR_SPAN + index
                    break
            index, after = index + 1, -1
            if len(page) == limit:
                if index < supervisor.count:
                    next_cursor = index
                break
        connected = sum(_load(a)["connected"] for _, a in counts)
        return _json({"clients": page, "next_cursor": next_cursor, "connected": connected})

    async def one_client(worker_field: bool) -> Reply:
        if clustered:
            return await through_one_worker(front.with_worker if worker_field else None)
        body = await _body()
        answers = await front.each(request.method, _target(), body)
        for worker, answer in answers:
            if answer.status != 404:
                if worker_field and answer.status == 200:
                    return _json({**_load(answer), "worker": worker.index})
                return _passed(answer)
        uuid = request.path.split("/")[4]
        return _error(404, f"no client {uuid}")

    @app.route("/api/v1/clients/<uuid>", methods=["GET", "DELETE"])
    async def client(uuid: str) -> Reply:
        return await one_client(request.method == "GET")

    @app.post("/api/v1/clients/<uuid>/messages")
    async def client_message(uuid: str) -> Reply:
        return await one_client(False)

    @app.post("/api/v1/broadcast")
    async def broadcast() -> Reply:
        if clustered:
            return await through_one_worker()
        answers = await front.each("POST", _target(), await _body())
        if not answers:
            return _error(503, "no worker answered")
        if (failure := _first_failure(answers)) is not None:
            return failure
        bodies = [_load(a) for _, a in answers]
        recipients = sum(b["recipients"] for b in bodies)
        return _json({**bodies[0], "recipients": recipients, "workers": len(answers)})

    @app.route("/api/v1/upstreams", methods=["GET", "POST"])
    async def upstreams() -> Reply:
        answers = await front.each(request.method, _target(), await _body())
        if not answers:
            return _error(503, "no worker answered")
        if (failure := _first_failure(answers)) is not None:
            return failure
        if request.method == "POST":
            merged = _merge_upstreams([(w, [_load(a)]) for w, a in answers])
            return _json(merged[0], answers[0][1].status)
        merged = _merge_upstreams([(w, _load(a)["upstreams"]) for w, a in answers])
        return _json({"upstreams": merged})

    @app.get("/api/v1/upstreams/<address>")
    async def upstream(address: str) -> Reply:
        answers = await front.each("GET", _target())
        found = [(w, [_load(a)]) for w, a in answers if a.status == 200]
        if not found:
            return _passed(answers[0][1]) if answers else _error(503, "no worker answered")
        return _json(_merge_upstreams(found)[0])

    @app.get("/api/v1/runtime")
    async def runtime() -> Reply:
        return _merge_runtime(front, await front.each("GET", _target()))

    @app.patch("/api/v1/runtime")
    async def patch_runtime() -> Reply:
        return _merge_runtime(front, await front.each("PATCH", _target(), await _body()))

    @app.post("/api/v1/runtime/drain")
    async def drain() -> Reply:
        log.info("admin: drain")
        supervisor.request_stop()
        return _json({"draining": True}, 202)

    @app.post("/api/v1/runtime/reload")
    async def reload() -> Reply:
        # Each worker reloads the file itself; the parent's copy is for the
        # workers it starts from now on.
        answers = await front.each("POST", _target(), await _body())
        if not answers:
            return _error(503, "no worker answered")
        await supervisor.refresh_config()
        return _failure_or_first(answers)

    @app.websocket("/api/v1/events")
    async def events() -> None:
        # As a single pmlb's: the token in the header, or as the first message.
        if not authorized(websocket.headers.get("Authorization")):
            given = ""
            with trio.move_on_after(10):
                first = await websocket.receive()
                given = first if isinstance(first, str) else first.decode(errors="replace")
            if not authorized(f"Bearer {given.strip()}"):
                await websocket.close(1008, "missing or wrong bearer token")
                return
        else:
            await websocket.accept()
        await _relay_events(front, websocket.send)

    @app.get("/")
    async def dashboard() -> Response:
        page = resources.files("pmlb.admin").joinpath("dashboard.html").read_text()
        return Response(page, content_type="text/html; charset=utf-8")

    @app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def other(path: str) -> Reply:
        body = await _body()
        if request.method == "GET":
            for worker in front.running():
                answer = await front.ask(worker, "GET", _target())
                if answer is not None:
                    return _passed(answer)
            return _error(503, "no worker answered")
        answers = await front.each(request.method, _target(), body)
        if not answers:
            return _error(503, "no worker answered")
        return _failure_or_first(answers)

    return app


async def _relay_events(front: Front, send: Callable[[str], Awaitable[None]]) -> None:
    """Every running worker's events, each marked with its worker, until they all end."""
    sender, receiver = trio.open_memory_channel[str](EVENTS_BUFFER)

    async def relay(worker: Worker, out: trio.MemorySendChannel[str]) -> None:
        with out, contextlib.suppress(OSError, ConnectionClosed, HandshakeError):
            stream = await trio.open_unix_socket(worker.admin_socket)
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/api/v1/events")
                try:
                    while True:
                        event = json.loads(await ws.get_message())
                        event["worker"] = worker.index
                        for recent in event.get("recent", ()):
                            recent["worker"] = worker.index
                        # Full: this worker's feed waits, and its admin closes
                        # it (1008) if it falls too far behind.
                        await out.send(json.dumps(event))
                finally:
                    await ws.aclose()

    async with trio.open_nursery() as nursery:
        with sender:
            for worker in front.running():
                nursery.start_soon(relay, worker, sender.clone())
        async with receiver:
            async for text in receiver:
                await send(text)


def _failure_or_first(answers: list[tuple[Worker, _http.Answer]]) -> Reply:
    failure = _first_failure(answers)
    return failure if failure is not None else _passed(answers[0][1])


async def start_front(nursery: trio.Nursery, config: Config, supervisor: Supervisor) -> str:
    """Serve the front in ``nursery``; its URL. :class:`ListenError` if it cannot bind."""
    from pmlb.admin import _h2

    _h2.install()
    management = config.management
    hypercorn = HypercornConfig()
    hypercorn.bind = [management.address]
    hypercorn.accesslog = None
    hypercorn.errorlog = logging.getLogger("pmlb.admin.http")
    hypercorn.graceful_timeout = 1.0
    if management.tls is not None and management.tls.cert_path:
        hypercorn.certfile = management.tls.cert_path
        hypercorn.keyfile = management.tls.key_path
    app = create_front(supervisor, management)
    try:
        binds: list[str] = await nursery.start(partial(hypercorn_serve, app, hypercorn))
    except (OSError, BaseExceptionGroup) as exc:
        from pmlb.server import _first_os_error

        error = _first_os_error(exc)
        if error is None:
            raise
        raise ListenError(
            f"admin (management_server): cannot listen on {management.address}:"
            f" {error.strerror or error}"
        ) from exc
    log.info("admin listening", extra={"url": binds[0], "token": bool(management.token)})
    return binds[0]
