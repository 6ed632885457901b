"""The admin over HTTP/2 gets the limits pmlb sets on its upstreams (issue 17).

hypercorn answers every PING and buffers up to 64 CONTINUATION frames: a
PING flood from anyone who could reach the admin port (frames need no
token) took the event loop that also serves the clients. Now a flood or an
endless header block closes that connection with GOAWAY (ENHANCE_YOUR_CALM).
"""

from __future__ import annotations

import struct

import h2.connection
import h2.events
import httpx
import trio

from tests.helpers import TIMEOUT, Processes, admin_url

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, SETTINGS, PING, GOAWAY, CONTINUATION = 1, 4, 6, 7, 9
ENHANCE_YOUR_CALM = 0xB


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload
    )


async def goaway_after(port: int, attack: bytes, repeat: int) -> tuple[int, int]:
    """Send the preface, then ``attack`` up to ``repeat`` times; the GOAWAY code and sends done."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    sent = 0
    async with stream:
        await stream.send_all(PREFACE + frame(SETTINGS, 0, 0))

        async def reader() -> None:
            nonlocal received
            while data := await stream.receive_some(65536):
                received += data

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                try:
                    for _ in range(repeat):
                        await stream.send_all(attack)
                        sent += 1
                except trio.BrokenResourceError:
                    pass
                # the reader ends when pmlb closes the connection
    pos = 0
    while pos + 9 <= len(received):
        length = int.from_bytes(received[pos : pos + 3], "big")
        if received[pos + 3] == GOAWAY:
            code = struct.unpack(">I", received[pos + 13 : pos + 17])[0]
            return code, sent
        pos += 9 + length
    raise AssertionError(f"no GOAWAY in {len(received)} bytes received")


async def test_a_ping_flood_closes_the_admin_connection(procs: Processes) -> None:
    pmlb, _ = await procs.pmlb()
    url = await admin_url(pmlb)
    port = int(url.rsplit(":", 1)[1])
    pings = frame(PING, 0, 0, b"12345678") * 1000
    code, sent = await goaway_after(port, pings, 1000)
    assert code == ENHANCE_YOUR_CALM
    assert sent < 1000, "refused long before the flood's end"
    await pmlb.wait_for(
        r"admin HTTP/2 connection closed .*reason=\"(control frame flood|more than)"
    )
    async with httpx.AsyncClient() as http:  # the admin serves on
        assert (await http.get(f"{url}/healthz")).status_code == 200


async def test_an_endless_header_block_closes_the_admin_connection(procs: Processes) -> None:
    pmlb, _ = await procs.pmlb()
    url = await admin_url(pmlb)
    port = int(url.rsplit(":", 1)[1])
    # a block begun with HEADERS (no END_HEADERS), then CONTINUATION frames of 16 KiB
    start = frame(HEADERS, 0, 1, b"\x82\x86\x84")
    chunk = frame(CONTINUATION, 0, 1, b"\x00" * 16384)
    code, _ = await goaway_after(port, start + chunk * 8, 100)
    assert code == ENHANCE_YOUR_CALM
    await pmlb.wait_for(r"admin HTTP/2 connection closed .*a header block over 65536 bytes")


async def test_an_ordinary_http2_request_still_works(procs: Processes) -> None:
    pmlb, _ = await procs.pmlb()
    url = await admin_url(pmlb)
    port = int(url.rsplit(":", 1)[1])
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", "/healthz"),
        ],
        end_stream=True,
    )
    status = None
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(conn.data_to_send())
        with trio.fail_after(TIMEOUT):
            while status is None:
                data = await stream.receive_some(65536)
                assert data, "closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
                await stream.send_all(conn.data_to_send())
    assert status == b"200"
