"""What the upstream supervisor needs from a gRPC transport.

A transport is one connection to one upstream. The supervisor calls
:meth:`Transport.check_ready` until the upstream is ready, then runs
:meth:`Transport.run_stream` and :meth:`Transport.run_liveness` side by side
until either fails, then :meth:`Transport.aclose`. Every error a transport
raises is an :class:`UpstreamError`; library exceptions never leak past it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pmlb._proto import upstream_pb2 as pb
from pmlb.codecs.request import Request
from pmlb.upstream.outbox import Outbox

#: Called, synchronously, with every batch of messages an upstream sends.
Deliver = Callable[[list[pb.OutputStreamRequest]], None]


class UpstreamError(Exception):
    """The upstream failed: refused, timed out, reset the stream, said not live..."""


class Transport(Protocol):
    async def check_ready(self) -> bool:
        """Ask the ``ready`` RPC; ``False`` if the upstream says not ready.

        Raises :class:`UpstreamError` if it cannot be asked. The caller bounds
        the wait with a cancel scope.
        """
        ...

    async def run_stream(self, outbox: Outbox[Request], deliver: Deliver) -> None:
        """Own the bidirectional stream: write what the outbox holds, deliver what comes back.

        Runs until the stream fails (raising :class:`UpstreamError`) or is
        cancelled. Messages taken from the outbox but not written are put back
        in it before this returns, so that the caller can hand them to another
        upstream.
        """
        ...

    async def run_liveness(
        self, interval: float, answer_deadline: float, alive: Callable[[float | None], None]
    ) -> None:
        """Ping the ``live`` stream every ``interval`` seconds; call ``alive`` on each answer.

        ``alive`` gets the seconds from the ping to its answer (``None`` for
        an answer no ping asked for, such as a health Watch update).

        Raises :class:`UpstreamError` when an answer takes longer than
        ``answer_deadline`` seconds or says ``live = false``.
        """
        ...

    async def aclose(self) -> None:
        """Close the connection. Never raises; safe to call twice."""
        ...
