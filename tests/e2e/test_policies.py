"""Balancing policies end to end: `pmlb serve --balancing ...` over 3 real upstreams."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import LineClient, Proc, Processes, upstream_arg, wait_serving

pytestmark = pytest.mark.e2e


async def start(
    procs: Processes, policy: str, n: int = 3
) -> tuple[Proc, int, dict[str, tuple[Proc, int]]]:
    """pmlb over ``n`` echo upstreams named A, B, C...: pmlb, its port, the upstreams."""
    upstreams = {name: await procs.upstream(name) for name in "ABCDE"[:n]}
    args = [arg for _, port in upstreams.values() for arg in upstream_arg(port)]
    pmlb, port = await procs.pmlb("--framing", "line", "--balancing", policy, *args)
    for _, up_port in upstreams.values():
        await wait_serving(pmlb, up_port)
    return pmlb, port, upstreams


async def served_by(client: LineClient, n: int = 4) -> set[str]:
    """Which upstreams answered ``n`` messages from ``client``."""
    await client.send(*[f"m{i}" for i in range(n)])
    replies = await client.recv_many(n)
    assert [r.split(":", 1)[1] for r in replies] == [f"m{i}" for i in range(n)]
    return {r.split(":", 1)[0] for r in replies}


@pytest.mark.parametrize("policy", ["sticky", "hash"])
async def test_a_client_stays_on_one_upstream_and_only_the_failed_ones_move(
    procs: Processes, policy: str
) -> None:
    pmlb, port, ups = await start(procs, policy)
    clients = [await procs.client(port) for _ in range(12)]
    before = {}
    for client in clients:
        (home,) = await served_by(client)  # one upstream per client
        before[client] = home
    assert len(set(before.values())) >= 2  # spread over the upstreams
    victim = before[clients[0]]
    mark = pmlb.mark()
    victim_proc, victim_port = ups[victim]
    victim_proc.signal(signal.SIGKILL)
    await pmlb.wait_for(
        rf"upstream stopped serving upstream=127\.0\.0\.1:{victim_port}\b", after=mark
    )
    for client in clients:
        (home,) = await served_by(client)
        if before[client] == victim:
            assert home != victim
        else:
            assert home == before[client], "a client of a healthy upstream moved"
        # and it stays on its new home
        assert await served_by(client) == {home}


async def test_sticky_places_new_clients_in_turn(procs: Processes) -> None:
    _, port, _ = await start(procs, "sticky")
    clients = [await procs.client(port) for _ in range(6)]
    homes = [next(iter(await served_by(client, 2))) for client in clients]
    assert sorted(homes) == ["A", "A", "B", "B", "C", "C"]


async def test_least_loaded_shares_idle_upstreams(procs: Processes) -> None:
    _, port, _ = await start(procs, "least_loaded", n=2)
    client = await procs.client(port)
    answered = []
    for i in range(10):  # one at a time: both queues are empty at each choice
        await client.send(f"m{i}")
        answered.append((await client.recv()).split(":", 1)[0])
    assert answered.count("A") == answered.count("B") == 5
