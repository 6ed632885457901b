"""Why a client was disconnected: the close reasons, in one table.

``Client.close(detail, reason)`` keeps a free-text detail for the log and a
:class:`Reason`; each reason's row gives the wire kind upstreams receive
(``DisconnectReason`` of a DISCONNECTED event, and the ``pmlb_disconnects``
metric label) and the WebSocket close code. pmlb's own code always passes a
reason; :func:`classify` sorts a bare text (an embedder's, an old caller's)
into one, and is the only place that reads the text.

An idle timeout (``idle_timeout``) is a close by pmlb's policy, not a fault:
WebSocket clients get 1008 (policy violation); upstreams and the metrics see
``DISCONNECT_ERROR``, as before (the wire has no idle kind; the detail,
``idle for idle_timeout (...)``, says which). Both come from the ``IDLE`` row.
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


class Reason(enum.Enum):
    """Why pmlb closed a client: its wire kind and its WebSocket close code."""

    #: the client closed (or half-closed and then lost) its connection
    CLIENT_CLOSED = (DisconnectKind.CLIENT_CLOSED, 1000)
    #: an operator disconnected it (admin API)
    KICKED = (DisconnectKind.KICKED, 1008)
    #: it sent a message over max_message_size
    TOO_BIG = (DisconnectKind.TOO_BIG, 1009)
    #: its outbound queue stayed full (slow_client_policy, client_queue_bytes_total)
    SLOW = (DisconnectKind.SLOW, 1008)
    #: pmlb is stopping or draining
    DRAIN = (DisconnectKind.DRAIN, 1001)
    #: an upstream asked to disconnect it
    UPSTREAM_ACTION = (DisconnectKind.UPSTREAM_ACTION, 1008)
    #: connection lost, bad input, no pong in time
    ERROR = (DisconnectKind.ERROR, 1011)
    #: it broke its protocol (1007 for invalid UTF-8 is sent where it is found)
    PROTOCOL_ERROR = (DisconnectKind.PROTOCOL_ERROR, 1002)
    #: nothing received for idle_timeout: a policy close (see the module docstring)
    IDLE = (DisconnectKind.ERROR, 1008)

    def __init__(self, kind: DisconnectKind, websocket_code: int) -> None:
        #: what upstreams receive, and the metric label (its lower-cased name)
        self.kind = kind
        #: the close code (RFC 6455 section 7.4.1) a WebSocket client receives
        self.websocket_code = websocket_code


#: The reason pmlb gives when an upstream asks to disconnect a client.
UPSTREAM_ACTION = "disconnected by an upstream"
#: How the reason for a client that broke its protocol starts.
PROTOCOL_ERROR = "protocol error"
#: The reason when pmlb stops (or drains) and closes its clients.
STOPPING = "pmlb is stopping"
#: The reason when the client closed (or half-closed) its side of the connection.
CLIENT_CLOSED = "client closed the connection"
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


def classify_text(reason: str | None) -> Reason:
    """The reason a bare text gives (for callers that pass none); ``None`` is a drain."""
    if reason is None:
        return Reason.DRAIN
    if reason.startswith("idle for"):
        return Reason.IDLE
    lowered = reason.lower()
    for marker, kind in _MARKERS:
        if marker in lowered:
            return Reason[kind.name]
    return Reason.ERROR


def classify(reason: str | None) -> DisconnectKind:
    """The wire kind of a bare close text; ``None`` (cancelled from outside) is a drain."""
    return classify_text(reason).kind


#: The WebSocket close code (RFC 6455 section 7.4.1) of each wire kind's own
#: row of :class:`Reason` (kept for callers that hold only a kind).
WEBSOCKET_CLOSE_CODES: dict[DisconnectKind, int] = {
    DisconnectKind.UNSPECIFIED: 1000,
    **{row.kind: row.websocket_code for row in Reason if row.name == row.kind.name},
}
