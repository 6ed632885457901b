"""``/api/v1/events``: the WebSocket of operator events (:mod:`pmlb.events`) as they happen."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import trio
from quart import websocket
from quart_trio import QuartTrio

from pmlb.admin.context import Context
from pmlb.registry import Registry

#: Seconds a WebSocket without an ``Authorization`` header has to send its
#: token as the first message.
TOKEN_WAIT = 10.0


def register(app: QuartTrio, ctx: Context) -> None:
    registry = ctx.registry

    @app.websocket("/api/v1/events")
    async def events() -> None:
        """JSON events as they happen, one per WebSocket message.

        Authenticate with the ``Authorization`` header, or (browsers cannot
        set headers) by sending the token as the first message. A consumer
        that falls behind is closed with code 1008.
        """
        if not ctx.authorized(websocket.headers.get("Authorization")):
            # Only the wait for the token is bounded, not the stream after it.
            given = ""
            with trio.move_on_after(TOKEN_WAIT):
                first = await websocket.receive()
                given = first if isinstance(first, str) else first.decode(errors="replace")
            if not given or not ctx.authorized(f"Bearer {given.strip()}"):
                await websocket.close(1008, "missing or wrong bearer token")
                return
        else:
            await websocket.accept()
        await _stream_events(registry, websocket.send)


async def _stream_events(registry: Registry, send: Callable[[str], Awaitable[None]]) -> None:
    with registry.events.subscribe() as subscription:
        await send(json.dumps({"type": "hello", "recent": list(registry.events.recent)}))
        while batch := await subscription.next_batch():
            for event in batch:
                await send(json.dumps(event))
    if subscription.dropped:
        await websocket.close(1008, "event consumer too slow: dropped")
