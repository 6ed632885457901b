"""The client list's search, as the dashboard uses it (server side, with paging)."""

from __future__ import annotations

import pytest
import trio

from pmlb.config import Config
from pmlb.downstream.client import Client
from pmlb.registry import Registry


def add(registry: Registry, uuid: str, remote: str, listener: str = "default") -> Client:
    client = Client(
        uuid,
        listener=listener,
        remote=remote,
        transport="tcp",
        queue_limit=1,
        scope=trio.CancelScope(),
    )
    registry.add_client(client)
    return client


def test_search_matches_uuid_remote_or_listener_and_pages() -> None:
    registry = Registry(Config())
    add(registry, "aaaa-1", "10.0.0.1:5000")
    add(registry, "bbbb-2", "10.0.0.2:5000", listener="WS")
    add(registry, "cccc-3", "192.0.2.9:7000")
    add(registry, "dddd-4", "10.0.0.4:7000")

    def uuids(**kw: object) -> tuple[list[str], int | None]:
        page, cursor = registry.client_page(**kw)  # type: ignore[arg-type]
        return [c.uuid for c in page], cursor

    assert uuids(search="BBBB")[0] == ["bbbb-2"]
    assert uuids(search="ws")[0] == ["bbbb-2"]
    assert uuids(search=":7000")[0] == ["cccc-3", "dddd-4"]
    first, cursor = uuids(search="10.0.0.", limit=2)
    assert first == ["aaaa-1", "bbbb-2"]
    assert uuids(search="10.0.0.", limit=2, after=cursor) == (["dddd-4"], None)
    assert uuids(search="nothing") == ([], None)
    assert len(uuids(search="")[0]) == 4


def test_another_node_searches_its_clients_when_asked() -> None:
    from pmlb.cluster.ops import answer

    registry = Registry(Config())
    add(registry, "aaaa-1", "10.0.0.1:5000")
    add(registry, "bbbb-2", "10.0.0.2:5000")
    asked = {"op": "clients", "after": -1, "limit": 10}
    found = answer(registry, {**asked, "q": "BBBB"}, "node-a")
    assert [c["uuid"] for c in found["clients"]] == ["bbbb-2"]
    # a node asked without q (an older one asking) lists them all
    assert len(answer(registry, asked, "node-a")["clients"]) == 2


def test_a_page_holds_100_clients_by_default() -> None:
    registry = Registry(Config())
    clients = [add(registry, f"c{i:03}", "x") for i in range(101)]
    page, cursor = registry.client_page()
    assert page == clients[:100]
    assert cursor == clients[99].seq
    assert registry.client_page(after=cursor) == ([clients[100]], None)


def test_each_filter_skips_a_mismatch_and_looks_on() -> None:
    registry = Registry(Config())
    first = add(registry, "aaaa", "10.0.0.1:1", listener="one")
    second = add(registry, "bbbb", "Host-B.example:2", listener="two")
    assert registry.client_page(listener="two") == ([second], None)
    assert registry.client_page(search="HOST-b") == ([second], None)
    assert registry.client_page(search="bbbb") == ([second], None)
    assert registry.client_page(state="inactive") == ([first, second], None)
    assert registry.client_page(state="active") == ([], None)


def test_an_unknown_state_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^state must be active or inactive, got 'idle'$"):
        Registry(Config()).client_page(state="idle")
