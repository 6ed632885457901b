"""Close reasons as pmlb writes them, classified into the kinds events and close codes use."""

import pytest

from pmlb.downstream.reasons import (
    STOPPING,
    UPSTREAM_ACTION,
    WEBSOCKET_CLOSE_CODES,
    DisconnectKind,
    classify,
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
