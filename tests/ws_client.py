"""A WebSocket test client on Trio, from the `websockets` package's sans-IO protocol.

pmlb serves WebSocket with trio-websocket (wsproto); the tests speak to it
with another implementation, so that both ends are not the same code.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid

import trio
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.helpers import TIMEOUT


class HandshakeRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"handshake refused with HTTP {status}")
        self.status = status


class WsClient:
    """One WebSocket connection; frames arrive whole (pmlb does not fragment)."""

    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self._frames: list[Frame] = []
        self.close: Close | None = None
        self.pings = 0
        self.uuid: str | None = None
        self._pumping = False
        self._arrived = trio.lowlevel.ParkingLot()

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/",
        *,
        ssl_context: ssl.SSLContext | None = None,
        prefix: bytes = b"",
    ) -> WsClient:
        """Open ``ws://``, or ``wss://`` with ``ssl_context``.

        ``prefix`` (a PROXY header) goes first: before the TLS handshake, else
        in one write with the upgrade request.
        """
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream: trio.abc.Stream = tcp
        scheme = "ws"
        try:
            if ssl_context is not None:
                if prefix:
                    await tcp.send_all(prefix)
                    prefix = b""
                stream = trio.SSLStream(tcp, ssl_context, server_hostname="127.0.0.1")
                await stream.do_handshake()
                scheme = "wss"
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        protocol = ClientProtocol(parse_uri(f"{scheme}://127.0.0.1:{port}{path}"), max_size=None)
        client = cls(stream, protocol)
        try:
            protocol.send_request(protocol.connect())
            await stream.send_all(prefix + b"".join(protocol.data_to_send()))
            with trio.fail_after(TIMEOUT):
                while True:
                    for event in await client._receive():
                        if isinstance(event, Response):
                            if event.status_code != 101:
                                raise HandshakeRefused(event.status_code)
                            return client
                        client._frames.append(event)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await self.stream.send_all(data)

    async def _receive(self) -> list[Response | Frame]:
        data = await self.stream.receive_some(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        events = self.protocol.events_received()
        # Pongs (and the answer to a close) go out at once.
        with contextlib.suppress(trio.BrokenResourceError):
            await self._flush()
        if not data and not events:
            raise EOFError
        return list(events)

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        await self._flush()

    async def recv(self, timeout: float = TIMEOUT) -> str | bytes:
        """The next message: ``str`` for a text message, ``bytes`` for binary."""
        with trio.fail_after(timeout):
            while True:
                while self._frames:
                    frame = self._frames.pop(0)
                    if frame.opcode is Opcode.PING:
                        self.pings += 1
                        continue
                    if frame.opcode is Opcode.CLOSE:
                        self.close = Close.parse(frame.data)
                        raise AssertionError(f"connection closed: {self.close}")
                    assert frame.fin, "pmlb sent a fragmented message"
                    if frame.opcode is Opcode.TEXT:
                        return frame.data.decode()
                    if frame.opcode is Opcode.BINARY:
                        return bytes(frame.data)
                if self._pumping:
                    await self._arrived.park()
                    continue
                try:
                    self._frames += [e for e in await self._receive() if isinstance(e, Frame)]
                except EOFError:
                    raise AssertionError("connection closed without a close frame") from None

    async def pump(self) -> None:
        """Read all the time (answering pings at once) until EOF; ``recv`` then only waits."""
        self._pumping = True
        try:
            while True:
                self._frames += [e for e in await self._receive() if isinstance(e, Frame)]
                self._arrived.unpark_all()
        except (EOFError, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # closed by pmlb, or by the test
        finally:
            self._pumping = False
            self._arrived.unpark_all()

    async def expect_close(self, timeout: float = TIMEOUT) -> Close:
        """Wait for pmlb's close frame (ignoring messages before it); return it."""
        with trio.fail_after(timeout):
            while True:
                try:
                    await self.recv(timeout)
                except AssertionError:
                    if self.close is not None:
                        return self.close
                    raise

    async def whoami(self) -> str:
        await self.send("whoami")
        answer = await self.recv()
        assert isinstance(answer, str), answer
        assert uuid.UUID(answer).version == 4, answer
        self.uuid = answer
        return answer

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
