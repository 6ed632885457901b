"""Why a client was disconnected, as a small set of kinds.

``Client.close(reason)`` keeps a free-text reason for the log; upstreams that
receive lifecycle events and WebSocket close codes need a kind instead. The
kind is derived from the text in this one place, so that every part of pmlb
(and the admin API) can keep writing plain reasons.
"""

from __future__ import annotations

import enum


class DisconnectKind(enum.Enum):
    """The kinds of disconnection; the values are the wire enum's numbers."""

    UNSPECIFIED = 0
    CLIENT_CLOSED = 1
    KICKED = 2
    TOO_BIG = 3
    SLOW = 4
    DRAIN = 5
    UPSTREAM_ACTION = 6
    ERROR = 7
    PROTOCOL_ERROR = 8


#: The reason pmlb gives when an upstream asks to disconnect a client.
UPSTREAM_ACTION = "disconnected by an upstream"
#: How the reason for a client that broke its protocol starts.
PROTOCOL_ERROR = "protocol error"
#: The reason when pmlb stops (or drains) and closes its clients.
STOPPING = "pmlb is stopping"
#: The reason a graceful drain gives a client it closes, once its queue is written.
DRAINING = "pmlb is draining"

# Checked in order, against the lower-cased reason.
_MARKERS: tuple[tuple[str, DisconnectKind], ...] = (
    (UPSTREAM_ACTION, DisconnectKind.UPSTREAM_ACTION),
    (PROTOCOL_ERROR, DisconnectKind.PROTOCOL_ERROR),
    ("exceeds max_message_size", DisconnectKind.TOO_BIG),
    ("too big", DisconnectKind.TOO_BIG),
    ("slow client", DisconnectKind.SLOW),
    ("client closed", DisconnectKind.CLIENT_CLOSED),
    ("drain", DisconnectKind.DRAIN),
    ("stopping", DisconnectKind.DRAIN),
    ("closed by pmlb", DisconnectKind.DRAIN),
    ("shutting down", DisconnectKind.DRAIN),
    ("admin", DisconnectKind.KICKED),
    ("kick", DisconnectKind.KICKED),
)


def classify(reason: str | None) -> DisconnectKind:
    """The kind of a ``Client.close_reason``; ``None`` (cancelled from outside) is a drain."""
    if reason is None:
        return DisconnectKind.DRAIN
    lowered = reason.lower()
    for marker, kind in _MARKERS:
        if marker in lowered:
            return kind
    return DisconnectKind.ERROR


#: The WebSocket close code (RFC 6455 section 7.4.1) pmlb sends for each kind.
WEBSOCKET_CLOSE_CODES = {
    DisconnectKind.UNSPECIFIED: 1000,
    DisconnectKind.CLIENT_CLOSED: 1000,
    DisconnectKind.KICKED: 1008,
    DisconnectKind.TOO_BIG: 1009,
    DisconnectKind.SLOW: 1008,
    DisconnectKind.DRAIN: 1001,
    DisconnectKind.UPSTREAM_ACTION: 1008,
    DisconnectKind.ERROR: 1011,
    # 1007 for invalid UTF-8 is sent where the violation is found (websocket.py)
    DisconnectKind.PROTOCOL_ERROR: 1002,
}
