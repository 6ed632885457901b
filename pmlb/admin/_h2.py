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

The subclass also puts the limits pmlb sets on its upstreams' connections
(:mod:`pmlb.upstream.h2_guard`) in front of h2 on every admin HTTP/2
connection: a header block over 64 KiB, or control frames (PING, SETTINGS,
PRIORITY, RST_STREAM...) past a bucket of 1,000 refilled at 100/s, close
the connection with GOAWAY (ENHANCE_YOUR_CALM). Without it a PING flood
from anyone who reaches the admin port (no token is needed to send frames)
took the event loop that serves the clients too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import hypercorn.protocol
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h2 import H2Protocol

from pmlb.upstream.h2_guard import FloodError, FrameGuard

log = logging.getLogger("pmlb.admin")
_PREFACE_LENGTH = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": not frames


class _H2Protocol(H2Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The WINDOW_UPDATE rule needs the DATA frames sent, which hypercorn
        # does not tell: off here (the other limits hold).
        self._guard = FrameGuard(window_update_base=sys.maxsize)
        self._preface_left = _PREFACE_LENGTH

    async def handle(self, event: Any) -> None:
        if isinstance(event, RawData) and not self.closed:
            data = event.data
            if self._preface_left:
                skipped = min(self._preface_left, len(data))
                self._preface_left -= skipped
                data = data[skipped:]
            try:
                self._guard.feed(data, time.monotonic())
            except FloodError as exc:
                log.warning(
                    "admin HTTP/2 connection closed",
                    extra={"peer": self.client, "reason": str(exc)},
                )
                self.connection.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                await self._flush()
                await self.send(Closed())
                return
        await super().handle(event)
        # hypercorn writes what h2 owes (the acks) before it reads again.
        self._guard.written()

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
