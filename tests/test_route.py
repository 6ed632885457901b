"""The router in process (upstream -> client), through the Registry facade.

Every count it keeps (``messages_to_clients``, ``broadcasts``,
``broadcast_recipients``, ``unknown_client``, ``invalid_target``), what it
forwards to the other nodes of a cluster, what it skips for a node, and the
warnings it logs for what it drops.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from pmlb._proto import upstream_pb2 as pb
from pmlb.config import Config
from pmlb.downstream.reasons import Reason
from pmlb.registry import Registry
from tests.test_registry import client

Reply = pb.OutputStreamRequest
DISCONNECT = Reply.ACTION_DISCONNECT


def reply(**fields: Any) -> pb.OutputStreamRequest:
    return pb.OutputStreamRequest(time="t", **fields)


def multicast(*uuids: str, **fields: Any) -> pb.OutputStreamRequest:
    return reply(multicast=pb.ClientList(client_uuids=list(uuids)), **fields)


def no_writer_task(task: Callable[[], Coroutine[Any, Any, None]]) -> None:
    raise AssertionError("a small write needs no writer task")


class Direct:
    """A client written directly to one end of a socket pair, as the TCP listener does."""

    def __init__(self, registry: Registry, uuid: str) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.client = client(registry, uuid)
        self.client.write_directly(self.ours.fileno(), "line", registry.unflushed, no_writer_task)

    def written(self) -> bytes:
        """What the peer can read now, without waiting."""
        try:
            return self.theirs.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        self.client.detach()
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def direct() -> Iterator[Callable[[Registry, str], Direct]]:
    made: list[Direct] = []

    def make(registry: Registry, uuid: str) -> Direct:
        made.append(Direct(registry, uuid))
        return made[-1]

    yield make
    for pair in made:
        pair.close()


class FakeNodes:
    """The cluster bus as the router sees it (pmlb.hub.nodes.Nodes): records what it is sent."""

    def __init__(self) -> None:
        self.forwarded: list[tuple[pb.OutputStreamRequest, list[str]]] = []
        self.broadcasted: list[pb.OutputStreamRequest] = []

    @property
    def unregistered(self) -> set[str]:
        return set()

    def client_added(self, uuid: str) -> None:
        pass

    def client_removed(self, uuid: str) -> None:
        pass

    async def wait_registered(self, uuid: str) -> None:
        pass

    def forward(self, reply: pb.OutputStreamRequest, uuids: list[str]) -> None:
        self.forwarded.append((reply, uuids))

    def broadcast(self, reply: pb.OutputStreamRequest) -> None:
        self.broadcasted.append(reply)


def clustered() -> tuple[Registry, FakeNodes]:
    registry = Registry(Config())
    nodes = FakeNodes()
    registry.router.cluster = nodes
    return registry, nodes


def counts(registry: Registry) -> tuple[int, int, int, int, int]:
    """(messages_to_clients, broadcasts, broadcast_recipients, unknown_client, invalid_target)"""
    s = registry.statistics()
    return (
        s.messages_to_clients,
        s.broadcasts,
        s.broadcast_recipients,
        s.unknown_client,
        s.invalid_target,
    )


def dropped(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pmlb.registry"]


def test_a_new_registry_has_routed_nothing() -> None:
    assert counts(Registry(Config())) == (0, 0, 0, 0, 0)


def test_broadcasts_count_each_broadcast_and_the_clients_it_was_queued_for() -> None:
    registry = Registry(Config())
    a, b = client(registry, "a"), client(registry, "b")
    client(registry, "closed").close("gone")
    assert registry.broadcast("all", b"1") == 2
    assert counts(registry) == (2, 1, 2, 0, 0)
    assert registry.broadcast("all", b"2") == 2
    assert counts(registry) == (4, 2, 4, 0, 0)
    assert (a.queued, b.queued) == (2, 2)
    # to nobody: counted as a broadcast all the same
    assert registry.broadcast("active", b"3") == 0
    assert counts(registry) == (4, 3, 4, 0, 0)


def test_a_broadcast_is_written_out_to_direct_clients_before_it_returns(
    direct: Callable[[Registry, str], Direct],
) -> None:
    registry = Registry(Config())
    idle, busy = direct(registry, "idle"), direct(registry, "busy")
    # queued by someone who has not flushed yet: the broadcast goes behind it
    assert busy.client.send(b"first")
    assert registry.unflushed == [busy.client]
    assert registry.broadcast("all", b"all") == 2
    assert registry.unflushed == []
    assert idle.written() == b"all\n"
    assert busy.written() == b"first\nall\n"
    assert counts(registry) == (2, 1, 2, 0, 0)


def test_send_to_counts_what_it_queued_and_writes_it_out(
    direct: Callable[[Registry, str], Direct],
) -> None:
    registry = Registry(Config())
    pair = direct(registry, "d")
    assert registry.send_to("d", b"one")
    assert pair.written() == b"one\n"
    assert registry.send_to("d", b"two")
    assert pair.written() == b"two\n"
    assert registry.unflushed == []
    assert counts(registry) == (2, 0, 0, 0, 0)
    pair.client.close("gone")
    assert not registry.send_to("d", b"three")
    assert counts(registry) == (2, 0, 0, 0, 0)
    with pytest.raises(KeyError):
        registry.send_to("nobody", b"x")


def test_deliver_writes_out_direct_clients_once_for_the_batch(
    direct: Callable[[Registry, str], Direct],
) -> None:
    registry = Registry(Config())
    pair = direct(registry, "d")
    registry.deliver([reply(client_uuid="d", payload=b"1"), multicast("d", payload=b"2")])
    assert registry.unflushed == []
    assert pair.written() == b"1\n2\n"
    assert counts(registry) == (2, 0, 0, 0, 0)


def test_deliver_from_node_writes_out_direct_clients(
    direct: Callable[[Registry, str], Direct],
) -> None:
    registry = Registry(Config())
    pair = direct(registry, "d")
    assert pair.client.send(b"queued")
    registry.deliver_from_node([multicast("d", payload=b"from b")])
    assert registry.unflushed == []
    assert pair.written() == b"queued\nfrom b\n"


def test_every_message_sent_is_counted_and_a_refused_one_is_not() -> None:
    registry = Registry(Config())
    a = client(registry, "a")
    client(registry, "closed").close("gone")
    registry.deliver(
        [
            reply(client_uuid="a", payload=b"1"),
            reply(client_uuid="a", payload=b"2"),
            reply(client_uuid="closed", payload=b"x"),
            multicast("a", "closed", payload=b"3"),
            multicast("a", payload=b"4"),
        ]
    )
    assert a.queued == 4
    assert counts(registry) == (4, 0, 0, 0, 0)


def test_unknown_uuids_are_counted_one_by_one_and_the_rest_delivered() -> None:
    registry = Registry(Config())
    a, kicked = client(registry, "a"), client(registry, "k")
    registry.deliver(
        [
            reply(client_uuid="x", payload=b"lost"),
            reply(client_uuid="y", payload=b"lost"),
            multicast("a", "x", "z", "x", payload=b"m"),
            reply(client_uuid="w", action=DISCONNECT),
            multicast("x", "k", action=DISCONNECT),
        ]
    )
    assert a.queued == 1
    assert (a.close_kind, kicked.close_kind) == (None, Reason.UPSTREAM_ACTION)
    # x, y; then x and z of the multicast (x once); w; x of the disconnect
    assert counts(registry) == (1, 0, 0, 6, 0)


def test_an_unknown_uuid_is_logged_with_the_count_so_far(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry(Config())
    client(registry, "a")
    registry.deliver([reply(client_uuid="a", payload=b"x")])
    with caplog.at_level(logging.WARNING, logger="pmlb"):
        registry.deliver([reply(client_uuid="nobody", payload=b"lost")])
    (record,) = dropped(caplog)
    assert record.getMessage() == "message for an unknown client dropped"
    assert record.client == "nobody"  # type: ignore[attr-defined]
    assert record.unknown_total == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "unknown",
    [multicast("a", "nobody", payload=b"m"), reply(client_uuid="nobody", action=DISCONNECT)],
    ids=["multicast", "disconnect"],
)
def test_an_unknown_uuid_of_a_target_list_is_logged_with_the_count_so_far(
    caplog: pytest.LogCaptureFixture, unknown: pb.OutputStreamRequest
) -> None:
    registry = Registry(Config())
    client(registry, "a")
    with caplog.at_level(logging.WARNING, logger="pmlb"):
        registry.deliver([unknown])
    (record,) = dropped(caplog)
    assert record.getMessage() == "message for an unknown client dropped"
    assert record.client == "nobody"  # type: ignore[attr-defined]
    assert record.unknown_total == 1  # type: ignore[attr-defined]


def test_unknowns_the_cluster_counted_add_up_and_are_logged_with_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry(Config())
    registry.deliver([reply(client_uuid="nobody", payload=b"lost")])
    registry.count_unknown(3, "no node of the cluster holds it")
    assert counts(registry) == (0, 0, 0, 4, 0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pmlb"):
        other = Registry(Config())
        other.count_unknown(2, "no node of the cluster holds it")
    (record,) = dropped(caplog)
    assert record.getMessage() == "message for an unknown client dropped"
    assert record.reason == "no node of the cluster holds it"  # type: ignore[attr-defined]
    assert record.unknown_total == 2  # type: ignore[attr-defined]


INVALID = {
    "unknown broadcast": (reply(broadcast=7, payload=b"x"), "unknown broadcast value 7"),
    "no target": (
        reply(payload=b"x"),
        "message without a target (neither client_uuid, broadcast nor multicast)",
    ),
    "unknown action": (reply(client_uuid="a", action=7), "unknown action value 7"),
    "disconnect broadcast": (
        reply(broadcast=Reply.BROADCAST_ALL, action=DISCONNECT),
        "disconnect needs a client_uuid or multicast target",
    ),
    "disconnect nobody": (
        reply(action=DISCONNECT),
        "disconnect needs a client_uuid or multicast target",
    ),
}


@pytest.mark.parametrize("case", INVALID)
def test_a_reply_without_a_valid_target_is_counted_logged_and_reaches_nobody(
    caplog: pytest.LogCaptureFixture, case: str
) -> None:
    invalid, problem = INVALID[case]
    registry = Registry(Config())
    a = client(registry, "a", active=True)
    with caplog.at_level(logging.WARNING, logger="pmlb"):
        registry.deliver([invalid])
    assert (a.queued, a.close_kind) == (0, None)
    assert counts(registry) == (0, 0, 0, 0, 1)
    (record,) = dropped(caplog)
    assert record.getMessage() == "message from an upstream dropped"
    assert record.problem == problem  # type: ignore[attr-defined]


def test_invalid_targets_add_up() -> None:
    registry = Registry(Config())
    registry.deliver([invalid for invalid, _ in INVALID.values()])
    registry.deliver([reply(payload=b"again")])
    assert counts(registry) == (0, 0, 0, 0, len(INVALID) + 1)


def test_acknowledgements_alone_are_no_invalid_target() -> None:
    registry = Registry(Config())
    registry.deliver([reply(acks=[1, 2])])
    assert counts(registry) == (0, 0, 0, 0, 0)


def test_an_upstream_broadcast_counts_like_an_admin_one() -> None:
    registry = Registry(Config())
    a, b = client(registry, "a", active=True), client(registry, "b")
    registry.deliver(
        [reply(broadcast=Reply.BROADCAST_ALL, payload=b"1"), reply(broadcast=0, payload=b"2")]
    )
    assert (a.queued, b.queued) == (2, 2)
    assert counts(registry) == (4, 2, 4, 0, 0)


def test_select_clients_by_activity_and_refuses_other_kinds() -> None:
    registry = Registry(Config())
    a, b = client(registry, "a", active=True), client(registry, "b")
    assert list(registry.select_clients("all")) == [a, b]
    assert list(registry.select_clients("active")) == [a]
    assert list(registry.select_clients("inactive")) == [b]
    with pytest.raises(ValueError, match="broadcast kind must be all, active or inactive"):
        registry.select_clients("everyone")


# With a cluster


def test_with_cluster_scope_what_is_for_other_nodes_goes_to_them() -> None:
    registry, nodes = clustered()
    a = client(registry, "a")
    elsewhere = reply(client_uuid="x", payload=b"for x")
    kick = reply(client_uuid="y", action=DISCONNECT)
    mixed = multicast("a", "x", "z", "x", payload=b"m")
    kick_many = multicast("a", "z", action=DISCONNECT)
    registry.deliver([elsewhere, reply(client_uuid="a", payload=b"1"), mixed, kick], cluster=True)
    assert a.queued == 2, "a reply after one forwarded is still delivered"
    registry.deliver([kick_many], cluster=True)
    assert a.close_kind == Reason.UPSTREAM_ACTION
    assert nodes.forwarded == [
        (elsewhere, ["x"]),
        (mixed, ["x", "z"]),
        (kick, ["y"]),
        (kick_many, ["z"]),
    ]
    assert nodes.broadcasted == []
    # what is forwarded is not unknown here
    assert counts(registry) == (2, 0, 0, 0, 0)


def test_with_cluster_scope_a_multicast_to_local_clients_only_is_not_forwarded() -> None:
    registry, nodes = clustered()
    a, b = client(registry, "a"), client(registry, "b")
    registry.deliver(
        [multicast("a", "b", payload=b"m"), multicast("a", action=DISCONNECT)], cluster=True
    )
    assert b.queued == 1
    assert (a.close_kind, b.close_kind) == (Reason.UPSTREAM_ACTION, None)
    assert nodes.forwarded == []


def test_with_cluster_scope_a_broadcast_goes_to_every_node_too() -> None:
    registry, nodes = clustered()
    a = client(registry, "a")
    everyone = reply(broadcast=Reply.BROADCAST_ALL, payload=b"all")
    registry.deliver([everyone], cluster=True)
    assert a.queued == 1
    assert nodes.broadcasted == [everyone]
    assert counts(registry) == (1, 1, 1, 0, 0)


def test_without_cluster_scope_nothing_goes_to_other_nodes() -> None:
    registry, nodes = clustered()
    client(registry, "a")
    registry.deliver(
        [
            reply(client_uuid="x", payload=b"lost"),
            multicast("a", "z", payload=b"m"),
            reply(broadcast=Reply.BROADCAST_ALL, payload=b"all"),
        ]
    )
    assert (nodes.forwarded, nodes.broadcasted) == ([], [])
    assert counts(registry) == (2, 1, 1, 2, 0)


def test_cluster_scope_without_a_cluster_delivers_locally() -> None:
    registry = Registry(Config())
    a = client(registry, "a")
    registry.deliver(
        [reply(client_uuid="x", payload=b"lost"), multicast("a", "z", payload=b"m")],
        cluster=True,
    )
    assert a.queued == 1
    assert counts(registry) == (1, 0, 0, 2, 0)


def test_from_a_node_the_uuids_held_elsewhere_are_skipped_not_unknown() -> None:
    registry, nodes = clustered()
    a, b = client(registry, "a"), client(registry, "b")
    registry.deliver_from_node(
        [
            multicast("a", "x", payload=b"m"),
            multicast("y", "b", action=DISCONNECT),
            reply(client_uuid="a", payload=b"1"),
        ]
    )
    assert a.queued == 2
    assert b.close_kind == Reason.UPSTREAM_ACTION
    assert (nodes.forwarded, nodes.broadcasted) == ([], [])
    assert counts(registry) == (2, 0, 0, 0, 0)


def test_from_a_node_a_broadcast_is_not_sent_on() -> None:
    registry, nodes = clustered()
    a = client(registry, "a")
    registry.deliver_from_node([reply(broadcast=Reply.BROADCAST_ALL, payload=b"all")])
    assert a.queued == 1
    assert nodes.broadcasted == []
    assert counts(registry) == (1, 1, 1, 0, 0)


def test_from_a_node_a_disconnect_for_a_client_gone_is_skipped_not_unknown() -> None:
    registry, nodes = clustered()
    a = client(registry, "a")
    registry.deliver_from_node([reply(client_uuid="gone", action=DISCONNECT)])
    registry.deliver_from_node([reply(client_uuid="a", action=DISCONNECT)])
    assert a.close_kind == Reason.UPSTREAM_ACTION
    assert nodes.forwarded == []
    assert counts(registry) == (0, 0, 0, 0, 0)
