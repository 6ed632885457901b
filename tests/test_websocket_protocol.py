"""WebSocket clients that break RFC 6455: told with 1002 or 1007, counted as protocol errors.

pmlb runs in-process with a real scripted upstream that receives lifecycle
events; each client speaks WebSocket with the `websockets` package and then
writes one forbidden frame by hand.
"""

from __future__ import annotations

import os
import struct

import pytest
import trio

import pmlb
from pmlb.downstream.reasons import DisconnectKind, classify
from tests.helpers import Processes
from tests.ws_client import WsClient


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """One client frame, built by hand so that it may break the rules."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if len(payload) < 126:
        head += bytes([mask_bit | len(payload)])
    else:
        head += bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


TEXT, BINARY, CONTINUATION = 0x1, 0x2, 0x0
VIOLATIONS = [
    pytest.param(frame(TEXT, b"caf\xc3"), 1007, id="invalid-utf8-text"),
    pytest.param(
        frame(TEXT, "café".encode()[:4], fin=False) + frame(CONTINUATION, b"\xff"),
        1007,
        id="invalid-utf8-fragmented",
    ),
    pytest.param(frame(BINARY, b"x", masked=False), 1002, id="unmasked"),
    pytest.param(frame(BINARY, b"x", rsv=0b100), 1002, id="reserved-bit"),
    # 2^64-1 bytes announced: a 64-bit length must have its top bit clear
    pytest.param(bytes([0x82, 0xFF]) + b"\xff" * 8 + os.urandom(4), 1002, id="length-2^64-1"),
    pytest.param(frame(0x3, b"x"), 1002, id="reserved-opcode"),
]


@pytest.mark.parametrize(("bad", "code"), VIOLATIONS)
async def test_a_protocol_violation_is_told_and_counted_as_one(
    procs: Processes, bad: bytes, code: int
) -> None:
    upstream, up = await procs.upstream("A")
    config = pmlb.parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "transport": "websocket"},
            "management_server": {"enabled": False},
            "upstream": [{"host": "127.0.0.1", "port": up, "events": True}],
        }
    )
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        client = await WsClient.connect(server.port("default"))
        try:
            uuid = await client.whoami()
            await client.stream.send_all(bad)
            close = await client.expect_close()
        finally:
            await client.aclose()
        assert close.code == code, close
        assert close.reason  # wsproto's words for what was wrong
        event = await upstream.wait_for(rf"EVENT disconnected {uuid} (\S+) (.*)")
        assert event.group(1) == "DISCONNECT_PROTOCOL_ERROR"
        assert event.group(2).startswith(f"protocol error ({code}): ")
        stats = server.registry.statistics()
        assert stats.disconnects == {"protocol_error": 1}
        assert stats.connections.bad_input == 1
        server.stop()


async def test_a_client_closing_with_1002_itself_is_a_client_close(procs: Processes) -> None:
    upstream, up = await procs.upstream("A")
    config = pmlb.parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "transport": "websocket"},
            "management_server": {"enabled": False},
            "upstream": [{"host": "127.0.0.1", "port": up, "events": True}],
        }
    )
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        client = await WsClient.connect(server.port("default"))
        try:
            uuid = await client.whoami()
            # A close frame the client sends with 1002 says pmlb erred: no violation.
            await client.stream.send_all(frame(0x8, struct.pack("!H", 1002) + b"you erred"))
            close = await client.expect_close()
        finally:
            await client.aclose()
        assert close.code == 1002  # the closing handshake echoes the client's code
        event = await upstream.wait_for(rf"EVENT disconnected {uuid} (\S+)")
        assert event.group(1) == "DISCONNECT_CLIENT_CLOSED"
        stats = server.registry.statistics()
        assert stats.disconnects == {"client_closed": 1}
        assert stats.connections.bad_input == 0
        server.stop()


def test_protocol_error_reasons_are_their_own_kind() -> None:
    assert classify("protocol error (1007): invalid UTF-8") is DisconnectKind.PROTOCOL_ERROR
