"""What the scripted test upstreams answer (tests/upstreams/script.py)."""

import pytest

from tests.upstreams.script import Reply, respond, rfc3339_now

ME = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"


def test_whoami_answers_the_sender_with_its_uuid() -> None:
    assert respond("A", ME, b"whoami") == [Reply(ME, None, ME.encode())]


def test_a_trailing_carriage_return_is_ignored() -> None:
    assert respond("A", ME, b"whoami\r") == [Reply(ME, None, ME.encode())]
    assert respond("A", ME, f"to {OTHER} hi\r".encode()) == [Reply(OTHER, None, b"hi")]


def test_to_answers_the_named_client_with_the_rest_of_the_line() -> None:
    assert respond("A", ME, f"to {OTHER} hello there".encode()) == [
        Reply(OTHER, None, b"hello there")
    ]


def test_to_keeps_the_text_bytes_as_they_are() -> None:
    assert respond("A", ME, b"to x \xff\xfe") == [Reply("x", None, b"\xff\xfe")]


@pytest.mark.parametrize("target", ["all", "active", "inactive"])
def test_bcast_broadcasts_to_the_target(target: str) -> None:
    assert respond("A", ME, f"bcast {target} news today".encode()) == [
        Reply(None, target, b"news today")
    ]


@pytest.mark.parametrize("payload", [b"silent", b"silent ", b"silent please", b"silent\r"])
def test_silent_answers_nothing(payload: bytes) -> None:
    assert respond("A", ME, payload) == []


@pytest.mark.parametrize(
    "payload",
    [
        b"hi",
        b"",
        b"whoami ",
        b"silently",
        b"bcast everyone x",
        b"bcast all",
        b"to",
        b"to x",
        b"line\n",
        b"\xff\xfe",
    ],
)
def test_anything_else_is_echoed_with_the_upstream_name(payload: bytes) -> None:
    assert respond("B", ME, payload) == [Reply(ME, None, b"B:" + payload)]


def test_echo_example() -> None:
    assert respond("A", ME, b"hi") == [Reply(ME, None, b"A:hi")]


@pytest.mark.parametrize(
    ("client_uuid", "broadcast"), [(None, None), (ME, "all"), (None, "everyone")]
)
def test_a_reply_has_exactly_one_valid_target(
    client_uuid: str | None, broadcast: str | None
) -> None:
    with pytest.raises(ValueError, match=r"client_uuid|broadcast"):
        Reply(client_uuid, broadcast, b"")


def test_time_is_rfc3339_utc() -> None:
    assert rfc3339_now().endswith("Z")
    assert "+" not in rfc3339_now()


def test_time_answers_the_request_time_to_the_sender() -> None:
    assert respond("A", "u1", b"time", "2026-01-02T03:04:05.000006Z") == [
        Reply("u1", None, b"2026-01-02T03:04:05.000006Z")
    ]


def test_multi_multicasts_to_the_listed_clients() -> None:
    assert respond("A", ME, f"multi {ME},{OTHER} hi all".encode()) == [
        Reply(None, None, b"hi all", multicast=(ME, OTHER))
    ]


def test_kick_disconnects_one_client_or_several() -> None:
    assert respond("A", ME, f"kick {OTHER}".encode()) == [Reply(OTHER, None, b"", disconnect=True)]
    assert respond("A", ME, f"kick {ME},{OTHER}".encode()) == [
        Reply(None, None, b"", multicast=(ME, OTHER), disconnect=True)
    ]
