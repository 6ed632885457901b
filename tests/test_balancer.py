from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Sequence

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmlb import config as config_module
from pmlb.balancer import (
    POLICIES,
    Hash,
    LeastLoaded,
    Policy,
    RoundRobin,
    Sticky,
    Target,
    make_policy,
)


@attrs.frozen
class Item:
    client_uuid: str


@attrs.define
class Up:
    address: str
    queued: int = 0


def ups(n: int) -> list[Up]:
    return [Up(f"10.0.0.{i}:5000") for i in range(n)]


def uuids(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def route(policy: Policy, items: Sequence[Item], targets: Sequence[Target]) -> list[int]:
    """The target index of each item, checking that each is assigned exactly once."""
    chosen = [-1] * len(items)
    for index, part in policy.assign(items, targets):
        positions = range(len(items))[part] if isinstance(part, slice) else part
        for position in positions:
            assert chosen[position] == -1, "an item was assigned twice"
            chosen[position] = index
    assert -1 not in chosen, "an item was not assigned"
    return chosen


def homes(policy: Policy, clients: list[str], targets: Sequence[Up]) -> dict[str, str]:
    """Where each client's next message goes (one message per client)."""
    return {c: targets[route(policy, [Item(c)], targets)[0]].address for c in clients}


# -- round robin -----------------------------------------------------


def spread(policy: RoundRobin, batch_sizes: list[int], n_targets: int) -> list[int]:
    order: list[int] = []
    for size in batch_sizes:
        order += route(policy, [Item("c")] * size, ups(n_targets))
    return order


def test_round_robin_goes_in_turn_across_batches() -> None:
    assert spread(RoundRobin(), [2, 3, 1], 3) == [0, 1, 2, 0, 1, 2]


@given(st.lists(st.integers(0, 50), max_size=30), st.integers(1, 7))
def test_round_robin_is_exactly_cyclic_whatever_the_batches(batch_sizes: list[int], n: int) -> None:
    order = spread(RoundRobin(), batch_sizes, n)
    assert order == [i % n for i in range(len(order))]
    counts = Counter(order)
    assert max(counts.values(), default=0) - min(counts.values(), default=0) <= 1


# -- per-client policies ---------------------------------------------


@pytest.mark.parametrize("policy", [Sticky, Hash])
@given(batch=st.lists(st.sampled_from(uuids(5)), max_size=40), n=st.integers(1, 6))
def test_per_client_policies_keep_each_client_on_one_upstream(
    policy: type[Policy], batch: list[str], n: int
) -> None:
    p = policy()
    targets = ups(n)
    before = homes(p, sorted(set(batch)), targets)
    chosen = route(p, [Item(c) for c in batch], targets)
    for client, index in zip(batch, chosen, strict=True):
        assert targets[index].address == before[client]


def test_sticky_spreads_new_clients_in_turn_and_keeps_them() -> None:
    policy, targets = Sticky(), ups(3)
    clients = uuids(9)
    first = homes(policy, clients, targets)
    assert Counter(first.values()) == {t.address: 3 for t in targets}
    assert homes(policy, clients, targets) == first
    # Order of the serving list does not matter: the home is an address.
    assert homes(policy, clients, targets[::-1]) == first


def test_sticky_moves_only_the_clients_of_a_failed_upstream_and_keeps_them_there() -> None:
    policy, targets = Sticky(), ups(5)
    clients = uuids(1000)
    before = homes(policy, clients, targets)
    gone = targets[2]
    after = homes(policy, clients, [t for t in targets if t is not gone])
    moved = {c for c in clients if before[c] != after[c]}
    assert moved == {c for c in clients if before[c] == gone.address}
    # When it comes back, nobody moves back: the moved clients stay put.
    assert homes(policy, clients, targets) == after


def test_sticky_forgets_clients_that_left() -> None:
    policy, targets = Sticky(), ups(2)
    a, b = uuids(2)
    homes(policy, [a, b], targets)
    assert len(policy) == 2
    policy.forget(a)
    policy.forget("never seen")
    assert len(policy) == 1


def test_hash_spreads_clients_evenly() -> None:
    counts = Counter(homes(Hash(), uuids(5000), ups(5)).values())
    assert len(counts) == 5
    # 1000 expected each; a binomial's standard deviation here is about 28.
    assert all(850 <= count <= 1150 for count in counts.values()), counts


# No deadline: hypothesis's 200 ms default is a timing test, and on the shared
# 2-core machine an example took 265 and 317 ms now and then (a red unit run).
@settings(deadline=None)
@given(st.integers(0, 4), st.integers(0, 1000))
def test_hash_moves_only_the_clients_of_a_leaving_upstream(leaving: int, seed: int) -> None:
    policy, targets, clients = Hash(), ups(5), uuids(200, seed)
    before = homes(policy, clients, targets)
    rest = [t for i, t in enumerate(targets) if i != leaving]
    after = homes(policy, clients, rest)
    moved = {c for c in clients if before[c] != after[c]}
    assert moved == {c for c in clients if before[c] == targets[leaving].address}
    # ... and when it comes back, exactly those go back.
    assert homes(policy, clients, targets) == before


def test_hash_does_not_depend_on_the_order_of_upstreams() -> None:
    clients, targets = uuids(300), ups(4)
    assert homes(Hash(), clients, targets) == homes(Hash(), clients, targets[::-1])


def test_mixed_batches_are_grouped_per_client() -> None:
    policy, targets = Hash(), ups(3)
    clients = uuids(6)
    batch = [Item(clients[i % 6]) for i in range(30)]
    chosen = route(policy, batch, targets)
    expected = homes(policy, clients, targets)
    assert all(
        targets[index].address == expected[item.client_uuid]
        for item, index in zip(batch, chosen, strict=True)
    )


# -- least loaded ----------------------------------------------------


def test_least_loaded_picks_the_shortest_queue() -> None:
    targets = [Up("a", 5), Up("b", 2), Up("c", 9)]
    policy = LeastLoaded()
    for _ in range(4):
        assert route(policy, [Item("x")] * 3, targets) == [1, 1, 1]
    targets[1].queued = 7
    assert route(policy, [Item("x")], targets) == [0]


def test_least_loaded_shares_ties_in_turn() -> None:
    targets, policy = ups(3), LeastLoaded()
    assert [route(policy, [Item("x")], targets)[0] for _ in range(6)] == [0, 1, 2, 0, 1, 2]


@given(st.lists(st.integers(0, 20), min_size=1, max_size=6))
def test_least_loaded_never_picks_a_longer_queue(queues: list[int]) -> None:
    targets = [Up(str(i), q) for i, q in enumerate(queues)]
    (index,) = set(route(LeastLoaded(), [Item("x")] * 2, targets))
    assert targets[index].queued == min(queues)


# -- names -----------------------------------------------------------


def test_policies_by_name() -> None:
    assert set(POLICIES) == {"round_robin", "sticky", "hash", "least_loaded"}
    for name in POLICIES:
        assert make_policy(name).name == name
    with pytest.raises(ValueError, match="unknown balancing policy 'random'"):
        make_policy("random")


def test_config_knows_the_same_policy_names() -> None:
    assert set(config_module._POLICIES) == set(POLICIES)
