"""A chat upstream for pmlb: every line a client sends goes to every client.

Run it, then pmlb in line framing, then connect two clients::

    python examples/chat_upstream.py                 # listens on 127.0.0.1:45888
    pmlb serve --config examples/chat_pmlb.toml      # line framing, events = true
    nc 127.0.0.1 7999                                # in two terminals

With ``events = true`` on the upstream (as in ``examples/chat_pmlb.toml``),
pmlb also tells it when clients come and go, and everyone sees
``* <name> joined`` and ``* <name> left (<why>)``. Without it (``pmlb serve
--framing line --upstream 127.0.0.1:45888``) the chat works the same, silently.

Each line is broadcast to all clients as ``<name>: <text>``, where ``<name>`` is
the first 8 characters of the sender's UUID until it sets a nickname:

- ``/nick NAME`` sets the sender's nickname;
- ``/who`` answers the sender only, with how many nicknames are known;
- ``/kick NAME`` disconnects the client with that nickname (an upstream action).

The nicknames live in a dict in this process, which is fine for one upstream.
pmlb round-robins messages across all its upstreams, so a real (stateless)
upstream keeps such state in a store they share, such as Redis or a database,
keyed by the client's UUID.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import betterproto.lib.google.protobuf as pb_lib
from grpclib.server import Server
from grpclib.utils import graceful_exit

from pmlb.contract import (
    Action,
    Broadcast,
    DisconnectReason,
    Event,
    InputStreamRequest,
    LiveResult,
    OutputStreamRequest,
    ReadyResult,
    UpstreamPeerServiceBase,
)


def now() -> str:
    """The current time as RFC 3339 UTC, as the contract's ``time`` fields want it."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def to_all(text: str) -> OutputStreamRequest:
    return OutputStreamRequest(time=now(), broadcast=Broadcast.BROADCAST_ALL, payload=text.encode())


def to_client(client_uuid: str, text: str) -> OutputStreamRequest:
    return OutputStreamRequest(time=now(), client_uuid=client_uuid, payload=text.encode())


def disconnect(client_uuid: str) -> OutputStreamRequest:
    return OutputStreamRequest(time=now(), client_uuid=client_uuid, action=Action.ACTION_DISCONNECT)


#: How a departure reads, by the reason pmlb gives.
LEFT = {
    DisconnectReason.DISCONNECT_CLIENT_CLOSED: "quit",
    DisconnectReason.DISCONNECT_UPSTREAM_ACTION: "kicked",
    DisconnectReason.DISCONNECT_KICKED: "kicked by an operator",
    DisconnectReason.DISCONNECT_TOO_BIG: "said too much at once",
    DisconnectReason.DISCONNECT_SLOW: "too slow to keep up",
    DisconnectReason.DISCONNECT_DRAIN: "server going down",
}


class ChatUpstream(UpstreamPeerServiceBase):
    def __init__(self) -> None:
        self.nicknames: dict[str, str] = {}  # client UUID -> nickname

    def name_of(self, client_uuid: str) -> str:
        return self.nicknames.get(client_uuid, client_uuid[:8])

    def handle(self, client_uuid: str, text: str) -> OutputStreamRequest | None:
        if text.startswith("/nick "):
            old, new = self.name_of(client_uuid), text.removeprefix("/nick ").strip()
            if not new:
                return to_client(client_uuid, "* usage: /nick NAME")
            self.nicknames[client_uuid] = new
            return to_all(f"* {old} is now {new}")
        if text == "/who":
            return to_client(client_uuid, f"* {len(self.nicknames)} nickname(s) known")
        if text.startswith("/kick "):
            name = text.removeprefix("/kick ").strip()
            for uuid, nickname in self.nicknames.items():
                if nickname == name:
                    return disconnect(uuid)
            return to_client(client_uuid, f"* nobody is called {name}")
        if text:
            return to_all(f"{self.name_of(client_uuid)}: {text}")
        return None  # ignore empty lines

    async def bidirectional_streaming(
        self, input_stream_request_iterator: AsyncIterator[InputStreamRequest]
    ) -> AsyncIterator[OutputStreamRequest]:
        async for request in input_stream_request_iterator:
            if request.event == Event.EVENT_CONNECTED:
                yield to_all(f"* {self.name_of(request.client_uuid)} joined ({request.transport})")
                continue
            if request.event == Event.EVENT_DISCONNECTED:
                name = self.nicknames.pop(request.client_uuid, request.client_uuid[:8])
                why = LEFT.get(request.disconnect_reason, "connection lost")
                yield to_all(f"* {name} left ({why})")
                continue
            text = request.payload.decode("utf-8", errors="replace").rstrip("\r\n")
            answer = self.handle(request.client_uuid, text)
            if answer is not None:
                yield answer

    async def ready(self, betterproto_lib_google_protobuf_empty: pb_lib.Empty) -> ReadyResult:
        return ReadyResult(time=now(), ready=True)

    async def live(
        self, betterproto_lib_google_protobuf_empty_iterator: AsyncIterator[pb_lib.Empty]
    ) -> AsyncIterator[LiveResult]:
        async for _ping in betterproto_lib_google_protobuf_empty_iterator:
            yield LiveResult(time=now(), live=True)


async def main(host: str, port: int) -> None:
    server = Server([ChatUpstream()])
    with graceful_exit([server]):  # Ctrl-C or SIGTERM stops the server cleanly
        await server.start(host, port)
        print(f"chat upstream listening on {host}:{port}", flush=True)
        await server.wait_closed()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A chat upstream for pmlb.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=45888)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
