"""One upstream's life: connect, wait until ready, serve, and start over on failure.

States: ``connecting`` -> ``checking readiness`` -> ``serving`` ->
``unhealthy`` (back off, then ``connecting`` again) ... -> ``removed``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol

import trio

from pmlb._proto import upstream_pb2 as pb
from pmlb.config import UpstreamConfig
from pmlb.upstream.state import Upstream, UpstreamState
from pmlb.upstream.transport import Transport, UpstreamError

log = logging.getLogger("pmlb.upstream")

#: Reconnect and readiness retries back off exponentially from ``BACKOFF_MIN``
#: to ``BACKOFF_MAX`` seconds, with jitter so that a restarted pool of pmlb
#: processes does not knock on an upstream in lockstep.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
#: The backoff starts again from BACKOFF_MIN only after the upstream served
#: this long: one that fails right after each reconnect keeps backing off.
STABLE_AFTER = 10.0
#: An upstream whose writer has made no progress (taken nothing, written no
#: byte) this long while messages wait (its flow-control window held at 0,
#: say) is stalled: it gets no new messages while another upstream can take
#: them; its ``stall_timeout`` makes it failed.
STALL_AFTER = 1.0


class Backoff:
    """Exponential backoff with "equal jitter": half fixed, half random."""

    def __init__(self, low: float = BACKOFF_MIN, high: float = BACKOFF_MAX) -> None:
        self._low = low
        self._high = high
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self._high, self._low * 2**self._attempt)
        self._attempt += 1
        delay: float = ceiling / 2 + random.uniform(0, ceiling / 2)
        return delay


class Hub(Protocol):
    """What a supervisor needs from the core: the narrow port it reports through.

    :class:`pmlb.hub.upstreams.UpstreamTable` implements it (and the
    :class:`pmlb.registry.Registry` facade); the supervisor never imports the
    hub, so the upstream layer stays below the core.
    """

    def set_upstream_state(
        self, upstream: Upstream, state: UpstreamState, *, reason: str | None = None
    ) -> None: ...

    def set_upstream_stalled(
        self, upstream: Upstream, stalled: bool, *, waited: float | None = None
    ) -> None: ...

    def others_flowing(self, upstream: Upstream) -> bool: ...

    def deliver(self, replies: list[pb.OutputStreamRequest], *, cluster: bool = False) -> None: ...


async def supervise(
    upstream: Upstream,
    registry: Hub,
    transport_factory: Callable[[UpstreamConfig], Transport],
) -> None:
    """Keep ``upstream`` connected and serving until cancelled or removed."""
    try:
        with upstream.cancel_scope:
            await _supervise(upstream, registry, transport_factory)
    finally:
        registry.set_upstream_state(upstream, UpstreamState.REMOVED)
        upstream.removed.set()


async def _supervise(
    upstream: Upstream,
    registry: Hub,
    transport_factory: Callable[[UpstreamConfig], Transport],
) -> None:
    config = upstream.config
    fields = {"upstream": config.address}
    backoff = Backoff()
    while True:
        transport = transport_factory(config)
        try:
            registry.set_upstream_state(upstream, UpstreamState.CHECKING)
            await _wait_ready(upstream, transport, backoff)
            registry.set_upstream_state(upstream, UpstreamState.SERVING)
            serving_since = trio.current_time()
            reason = await _serve(upstream, transport, registry)
            if trio.current_time() - serving_since >= STABLE_AFTER:
                backoff.reset()
        except UpstreamError as exc:
            reason = str(exc)
        except Exception as exc:
            # A bug must not take the proxy down with it: report it loudly
            # and treat the upstream as failed, which loses nothing queued.
            log.exception("internal error supervising upstream", extra=fields)
            reason = f"internal error: {exc!r}"
        finally:
            await transport.aclose()
        upstream.failed(reason)
        registry.set_upstream_state(upstream, UpstreamState.UNHEALTHY, reason=reason)
        await trio.sleep(backoff.next())
        registry.set_upstream_state(upstream, UpstreamState.CONNECTING)


async def _wait_ready(upstream: Upstream, transport: Transport, backoff: Backoff) -> None:
    config = upstream.config
    while True:
        ready, problem = False, f"no answer within ready_timeout ({config.ready_timeout:g}s)"
        with trio.move_on_after(config.ready_timeout):
            started = time.perf_counter()
            try:
                ready = await transport.check_ready()
                problem = "the upstream answered ready = false"
            except UpstreamError as exc:
                problem = str(exc)
            upstream.ready_latency.observe(time.perf_counter() - started)
        if ready:
            upstream.found_ready()
            return
        if upstream.found_not_ready(problem):
            log.info("upstream not ready", extra={"upstream": config.address, "reason": problem})
        await trio.sleep(backoff.next())


async def _serve(upstream: Upstream, transport: Transport, registry: Hub) -> str:
    """Run the stream and the liveness prober until one fails; return why."""
    config = upstream.config
    reason = "stopped"

    alive = upstream.found_alive

    cluster = config.reply_scope == "cluster"

    def deliver(replies: list[pb.OutputStreamRequest]) -> None:
        upstream.messages_received += len(replies)
        registry.deliver(replies, cluster=cluster)

    def deliver_acked(replies: list[pb.OutputStreamRequest]) -> None:
        upstream.messages_received += len(replies)
        seqs = [seq for reply in replies for seq in reply.acks]
        if seqs:
            upstream.outbox.ack(seqs)
        # Acks alone (no target) are skipped there, not counted as targetless.
        registry.deliver(replies, cluster=cluster)

    async def run(what: str, fn: Callable[[], Awaitable[None]]) -> None:
        nonlocal reason
        try:
            await fn()
            reason = f"{what} ended"
        except UpstreamError as exc:
            reason = f"{what}: {exc}"
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run,
            "stream",
            partial(
                transport.run_stream, upstream.outbox, deliver_acked if config.acks else deliver
            ),
        )
        nursery.start_soon(run, "stream", partial(_watch_writes, upstream, registry))
        nursery.start_soon(
            run,
            "liveness",
            partial(transport.run_liveness, config.live_interval, config.alive_timeout, alive),
        )
        if config.acks:
            nursery.start_soon(run, "acks", partial(_watch_acks, upstream))
    return reason


async def _watch_acks(upstream: Upstream) -> None:
    """Raise :class:`UpstreamError` once a request has waited ``ack_timeout`` for its ack."""
    timeout = upstream.config.ack_timeout
    unacked = upstream.outbox.unacked
    assert unacked is not None
    while True:
        oldest = unacked.oldest()
        now = trio.current_time()
        if oldest is None:
            # Nothing is waiting: look again soon, so that a request written
            # meanwhile is found at most a quarter of the timeout late.
            await trio.sleep(timeout / 4)
        elif now >= oldest + timeout:  # the very sum slept until: no rounding gap
            raise UpstreamError(
                f"no acknowledgement within ack_timeout ({timeout:g}s) for a request"
                f" ({len(unacked)} unacknowledged)"
            )
        else:
            await trio.sleep_until(oldest + timeout)


async def _watch_writes(upstream: Upstream, registry: Hub) -> None:
    """Report the upstream stalled while its writes make no progress; raise past stall_timeout.

    Liveness runs on a stream of its own, so an upstream that holds the bidi
    stream's window at 0 still answers it: only the writes show the stall.
    """
    outbox, timeout = upstream.outbox, upstream.config.stall_timeout
    mark_after = min(STALL_AFTER, timeout)
    try:
        while True:
            since = outbox.busy_since()
            if since is None:
                registry.set_upstream_stalled(upstream, False)
                await outbox.wait_nonempty()
                continue
            waited = trio.current_time() - since
            # Failing it helps only if its messages have somewhere to go: a
            # lone upstream stays (stalled, its clients held back), since
            # failing it would lose what it was written and not answered.
            if waited >= timeout and registry.others_flowing(upstream):
                raise UpstreamError(
                    f"stalled: nothing written for {timeout:g}s while messages waited"
                    " (stall_timeout)"
                )
            if waited < mark_after:
                registry.set_upstream_stalled(upstream, False)
                # A healthy writer progresses many times meanwhile: look again then.
                await trio.sleep_until(since + mark_after)
            else:
                registry.set_upstream_stalled(upstream, True, waited=waited)
                deadline = since + timeout
                if waited >= timeout:
                    deadline = trio.current_time() + mark_after  # look for another again
                with trio.move_on_at(deadline):
                    await outbox.wait_progress()
    finally:
        registry.set_upstream_stalled(upstream, False)
