"""Connection limits and the counters of what they refused or closed."""

from __future__ import annotations

import attrs


@attrs.define
class ConnectionCounters:
    """What the listeners accepted, refused and closed, over all listeners.

    ``open`` is a gauge (connections now, including those still in their
    handshake); every other field only grows.

    A plain record of counters, incremented by the listeners' code where
    each event happens, never read back to decide anything: ``accepted``,
    ``open`` and the handshake failures at admission (``tcp.py``'s
    ``handle_connection`` and ``handshake``, ``websocket.py``'s handler);
    the refusals by :class:`~pmlb.downstream.tcp.Gate`; ``idle_timeouts``
    and ``bad_input`` by the readers (:class:`~pmlb.downstream.reader.ClientInput`,
    the WebSocket reader); the slow-client fields when a connection ends.
    Each field has one kind of writer; they are not behind methods yet
    because the admission code is moving to its own module.
    """

    open: int = 0
    accepted: int = 0
    #: refused at accept: a listener's ``max_clients`` or ``max_clients_total``
    refused_max_clients: int = 0
    #: refused at accept: over the listener's ``accept_rate``
    refused_accept_rate: int = 0
    #: closed before their first message
    handshake_timeouts: int = 0
    tls_handshake_failures: int = 0
    proxy_header_errors: int = 0
    #: closed later
    idle_timeouts: int = 0
    bad_input: int = 0
    slow_client_disconnects: int = 0
    #: outbound messages dropped by the ``drop_oldest`` slow-client policy
    slow_client_dropped: int = 0


class TokenBucket:
    """At most ``rate`` events per second on average, in bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._updated: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token if there is one (``now`` in seconds, monotonic)."""
        if self._updated is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
