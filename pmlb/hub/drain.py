"""The graceful drain: whether new clients are taken, and stopping without losing messages.

Owns whether listeners hand new connections on (``accepting``, an operator may
pause it), the count of connections refused meanwhile, and the event set when
someone asked the whole process to drain and stop. Drains clients through
the client table and waits on the dispatcher's and upstreams' queues; changes
neither.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import trio

from pmlb.events import EventBus
from pmlb.hub.clients import ClientTable
from pmlb.hub.dispatch import Dispatcher
from pmlb.upstream.state import Upstream, UpstreamState

log = logging.getLogger("pmlb.registry")


class Drain:
    """New connections on or off, and the drain of clients and upstreams at stop."""

    def __init__(
        self,
        clients: ClientTable,
        dispatcher: Dispatcher,
        upstreams: Mapping[str, Upstream],
        events: EventBus,
    ) -> None:
        self._clients = clients
        self._dispatcher = dispatcher
        # The upstream table's upstreams (read here).
        self._upstreams = upstreams
        self._events = events
        #: whether listeners hand new connections on (an operator may pause it)
        self.accepting = True
        #: connections closed at once because new clients were not accepted
        self.refused = 0
        #: set when someone asked the whole process to drain and stop
        self.stop_requested = trio.Event()

    def admit(self) -> bool:
        """Whether a new connection may become a client; counts the refused ones."""
        if not self.accepting:
            self.refused += 1
        return self.accepting

    def set_accepting(self, accepting: bool) -> None:
        """Let listeners take new clients, or close new connections at once."""
        if accepting != self.accepting:
            self.accepting = accepting
            self._events.publish("runtime.accepting", accepting=accepting)

    def request_stop(self) -> None:
        """Ask the server to drain and stop (what SIGTERM does).

        From now on new connections are refused (the server also closes its
        listeners) and ``/readyz`` answers not ready.
        """
        if not self.stop_requested.is_set():
            self.accepting = False
            self._events.publish("runtime.stop")
            self.stop_requested.set()

    async def drain_clients(self, period: float) -> None:
        """Close every client, spread evenly over ``period`` seconds; return once all are gone.

        The clients connected now are closed oldest first, the first at once
        and the last ``period`` seconds later, so that they do not all
        reconnect elsewhere at the same moment. Each stops being read, gets
        what is queued for it written, then is closed with reason "drain".
        Clients that arrive meanwhile (accepted just before the listeners
        closed) are closed at the end.
        """
        connected = self._clients.clients
        clients = list(connected.values())
        log.info("draining clients", extra={"clients": len(clients), "drain_period": period})
        start = trio.current_time()
        step = period / (len(clients) - 1) if len(clients) > 1 else 0.0
        for index, client in enumerate(clients):
            if step:
                await trio.sleep_until(start + index * step)
            client.drain()
        while connected:
            for client in list(connected.values()):
                client.drain()
            await self._clients.wait_removed()

    async def flush_upstreams(self, upstream_wait: float = math.inf) -> None:
        """Return once every accepted message is written to a serving upstream's stream,
        and, on upstreams with acks, acknowledged.

        Messages kept for the next upstream to serve wait for one at most
        ``upstream_wait`` seconds from when none is found serving; then this
        returns with them still kept (see :meth:`Dispatcher.awaiting_upstream`).
        The caller bounds the whole with a deadline.
        """
        dispatcher = self._dispatcher
        deadline: float | None = None
        while True:
            busy = [u for u in dispatcher.serving if len(u.outbox) or u.outbox.in_flight]
            # Drained by an operator: out of rotation, still writing its queue.
            out = [
                u
                for u in self._upstreams.values()
                if u.state is UpstreamState.SERVING
                and not u.in_rotation
                and (len(u.outbox) or u.outbox.in_flight)
            ]
            if busy:
                await busy[0].outbox.wait_written()
            elif out:
                await out[0].outbox.wait_drained()
            elif dispatcher.orphans:
                if deadline is None:
                    deadline = trio.current_time() + upstream_wait
                with trio.move_on_at(deadline) as scope:
                    await dispatcher.wait_serving_changed()
                if scope.cancelled_caught:
                    return
            elif waiting := [
                u
                for u in self._upstreams.values()
                if u.state is UpstreamState.SERVING and u.unacked
            ]:
                # An upstream that fails meanwhile has its requests taken
                # for redelivery: the wait ends and the loop starts over.
                await waiting[0].outbox.wait_acked()
            else:
                return
