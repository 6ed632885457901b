"""`/api/v1/events` with the token as the first message: the dashboard's way, and `pmlb ctl`'s."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from quart.testing.connections import WebsocketDisconnectError

from pmlb.admin.app import create_app
from pmlb.admin.routes.events import TOKEN_WAIT
from pmlb.config import Config
from pmlb.registry import Registry

TOKEN = "s3cret"


@asynccontextmanager
async def events_socket(registry: Registry) -> AsyncIterator[Any]:
    app = create_app(registry, listeners={}, token=TOKEN)
    async with app.test_app() as test_app, test_app.test_client().websocket("/api/v1/events") as ws:
        yield ws


async def test_the_stream_outlives_the_wait_for_the_token(autojump_clock: trio.abc.Clock) -> None:
    registry = Registry(Config())
    async with events_socket(registry) as ws:
        await ws.send(TOKEN)
        assert json.loads(await ws.receive())["type"] == "hello"
        # long after the wait for the token is over, events still come
        await trio.sleep(TOKEN_WAIT * 3)
        registry.events.publish("admin.accepting", accepting=False)
        event = json.loads(await ws.receive())
        assert (event["type"], event["accepting"]) == ("admin.accepting", False)


async def test_no_token_in_time_is_refused_with_1008(autojump_clock: trio.abc.Clock) -> None:
    async with events_socket(Registry(Config())) as ws:
        with trio.fail_after(TOKEN_WAIT * 2), pytest.raises(WebsocketDisconnectError) as closed:
            await ws.receive()
        assert closed.value.args[0] == 1008
