"""run_dns_discovery with an injected resolver, on Trio's autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pmlb.config import UpstreamConfig, parse_nameserver
from pmlb.upstream.discovery import DiscoveryError, run_dns_discovery

TEMPLATE = UpstreamConfig(
    host="svc.test", port=45888, discovery="dns", resolve_interval=10, events=True
)


async def test_discovery_follows_the_answers_and_keeps_the_set_on_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answers: list[set[str] | Exception] = [
        {"10.0.0.1", "10.0.0.2"},
        DiscoveryError("timed out"),
        {"10.0.0.2", "10.0.0.3"},
        {"10.0.0.1", "10.0.0.2", "10.0.0.3"},  # 10.0.0.1 is now taken: skipped
        set(),
    ]
    added: list[UpstreamConfig] = []
    removed: list[str] = []
    taken: set[str] = set()
    states: list[set[str]] = []

    async def resolve(host: str, port: int) -> set[str]:
        assert (host, port) == ("svc.test", 45888)
        states.append({c.address for c in added} - set(removed))
        if not answers:
            await trio.sleep_forever()
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def add(config: UpstreamConfig) -> None:
        if config.address in taken:
            raise ValueError(f"upstream {config.address} already exists")
        added.append(config)

    async def remove(address: str) -> None:
        removed.append(address)
        # Meanwhile, someone configures 10.0.0.1 by hand.
        taken.add("10.0.0.1:45888")
        if address == "10.0.0.3:45888":
            raise KeyError(address)  # removed meanwhile: ignored

    with trio.move_on_after(100):
        await run_dns_discovery(TEMPLATE, add, remove, resolve)
    assert states == [
        set(),
        {"10.0.0.1:45888", "10.0.0.2:45888"},
        {"10.0.0.1:45888", "10.0.0.2:45888"},  # the failed lookup changed nothing
        {"10.0.0.2:45888", "10.0.0.3:45888"},
        {"10.0.0.2:45888", "10.0.0.3:45888"},  # 10.0.0.1 was refused: not added
        set(),
    ]
    # Discovered upstreams are the template's settings on each address.
    assert all(c.port == 45888 and c.events and c.discovery == "static" for c in added)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_parse_nameserver(text: str, parsed: tuple[str, int]) -> None:
    assert parse_nameserver(text) == parsed


@pytest.mark.parametrize("text", ["dns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1]x"])
def test_parse_nameserver_refuses(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the problem
        parse_nameserver(text)
