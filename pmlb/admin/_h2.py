"""hypercorn's HTTP/2 server, made to survive a body that outlives its response.

When the app answers before a request's body has all arrived (a 413 for a
body over the limit, a refusal by :mod:`pmlb.admin.guard`), hypercorn closes
the stream, and the next DATA frame for it raises ``KeyError`` in its event
loop (hypercorn issue #329, fixes proposed in pull requests #312 and #334).
Under Trio that error ends the whole admin server, not just the connection:
one HTTP/2 request could take the admin down. :func:`install` swaps in a
subclass that drops such frames, still crediting their bytes to the
connection's flow-control window, and resets the stream (``NO_ERROR``, as
RFC 9113 section 8.1 says a server that answered early does) so that the
client stops sending it.
"""

from __future__ import annotations

import contextlib

import h2.errors
import h2.events
import h2.exceptions
import hypercorn.protocol
from hypercorn.protocol.h2 import H2Protocol


class _H2Protocol(H2Protocol):
    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One event at a time: handling one may close the stream a later one
        # names (that is how the error arises).
        for event in events:
            if (
                isinstance(event, h2.events.DataReceived | h2.events.StreamEnded)
                and event.stream_id not in self.streams
            ):
                if isinstance(event, h2.events.DataReceived):
                    self.connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    with contextlib.suppress(h2.exceptions.StreamClosedError):  # reset already
                        self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    await self._flush()
                continue
            await super()._handle_events([event])


def install() -> None:
    """Make hypercorn use the fixed protocol for its HTTP/2 connections (idempotent)."""
    hypercorn.protocol.H2Protocol = _H2Protocol  # type: ignore[attr-defined]
