"""Close reasons as pmlb writes them, classified into the kinds events and close codes use."""

import pytest
import trio

from pmlb.downstream.client import Client
from pmlb.downstream.reasons import (
    CLIENT_CLOSED,
    DRAINING,
    STOPPING,
    UPSTREAM_ACTION,
    WEBSOCKET_CLOSE_CODES,
    DisconnectKind,
    Reason,
    classify,
    classify_text,
)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("client closed the connection", DisconnectKind.CLIENT_CLOSED),
        (UPSTREAM_ACTION, DisconnectKind.UPSTREAM_ACTION),
        ("bad input: message of 300 bytes exceeds max_message_size 200", DisconnectKind.TOO_BIG),
        ("bad input: message too big (Exceeded maximum message size)", DisconnectKind.TOO_BIG),
        ("slow client: outbound queue full (1024 messages)", DisconnectKind.SLOW),
        (STOPPING, DisconnectKind.DRAIN),
        ("pmlb is shutting down", DisconnectKind.DRAIN),
        (None, DisconnectKind.DRAIN),
        ("disconnected by the admin API", DisconnectKind.KICKED),
        ("connection lost: [Errno 104] Connection reset by peer", DisconnectKind.ERROR),
        ("no pong within ping_timeout (20s)", DisconnectKind.ERROR),
    ],
)
def test_classify(reason: str | None, kind: DisconnectKind) -> None:
    assert classify(reason) is kind


def test_every_kind_has_a_websocket_close_code() -> None:
    assert set(WEBSOCKET_CLOSE_CODES) == set(DisconnectKind)
    assert WEBSOCKET_CLOSE_CODES[DisconnectKind.TOO_BIG] == 1009
    assert WEBSOCKET_CLOSE_CODES[DisconnectKind.DRAIN] == 1001


# The typed reasons: one table, and the first close wins.


def _client() -> Client:
    return Client(
        "u-1",
        listener="ws",
        remote="peer",
        transport="websocket",
        queue_limit=8,
        scope=trio.CancelScope(),
    )


def test_reason_table() -> None:
    rows = {reason: (reason.kind, reason.websocket_code) for reason in Reason}
    assert rows == {
        Reason.CLIENT_CLOSED: (DisconnectKind.CLIENT_CLOSED, 1000),
        Reason.KICKED: (DisconnectKind.KICKED, 1008),
        Reason.TOO_BIG: (DisconnectKind.TOO_BIG, 1009),
        Reason.SLOW: (DisconnectKind.SLOW, 1008),
        Reason.DRAIN: (DisconnectKind.DRAIN, 1001),
        Reason.UPSTREAM_ACTION: (DisconnectKind.UPSTREAM_ACTION, 1008),
        Reason.ERROR: (DisconnectKind.ERROR, 1011),
        Reason.PROTOCOL_ERROR: (DisconnectKind.PROTOCOL_ERROR, 1002),
        # a policy close: 1008 to a WebSocket client, DISCONNECT_ERROR upstream
        Reason.IDLE: (DisconnectKind.ERROR, 1008),
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("idle for idle_timeout (0.3s)", Reason.IDLE),
        (STOPPING, Reason.DRAIN),
        (DRAINING, Reason.DRAIN),
        (None, Reason.DRAIN),
        ("protocol error (1007): invalid UTF-8", Reason.PROTOCOL_ERROR),
        ("something else broke", Reason.ERROR),
    ],
)
def test_classify_text_agrees_with_the_typed_reasons(text: str | None, reason: Reason) -> None:
    assert classify_text(text) is reason


def test_first_close_is_kept_with_its_reason() -> None:
    client = _client()
    client.close("idle for idle_timeout (1s)", Reason.IDLE)
    client.close(STOPPING, Reason.DRAIN)  # what the WebSocket listener does at the end
    assert client.close_reason == "idle for idle_timeout (1s)"
    assert client.close_kind is Reason.IDLE


def test_close_without_a_reason_sorts_the_text() -> None:
    client = _client()
    client.close("disconnected by the admin API")
    assert client.close_kind is Reason.KICKED


def test_connection_lost_after_end_of_input_is_the_clients_close() -> None:
    client = _client()
    client.end_input()
    client.close("connection lost: [Errno 32] Broken pipe", Reason.ERROR)
    assert client.close_reason == CLIENT_CLOSED
    assert client.close_kind is Reason.CLIENT_CLOSED
