from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from pmlb.balancer import RoundRobin


def spread(policy: RoundRobin, batch_sizes: list[int], n_targets: int) -> list[int]:
    """Which target each message went to, in message order."""
    order: list[int] = []
    for size in batch_sizes:
        targets = [-1] * size
        for index, part in policy.assign(size, n_targets):
            for position in range(size)[part]:
                assert targets[position] == -1, "a message was assigned twice"
                targets[position] = index
        assert -1 not in targets, "a message was not assigned"
        order += targets
    return order


def test_round_robin_goes_in_turn_across_batches() -> None:
    assert spread(RoundRobin(), [2, 3, 1], 3) == [0, 1, 2, 0, 1, 2]


@given(st.lists(st.integers(0, 50), max_size=30), st.integers(1, 7))
def test_round_robin_is_exactly_cyclic_whatever_the_batches(batch_sizes: list[int], n: int) -> None:
    order = spread(RoundRobin(), batch_sizes, n)
    assert order == [i % n for i in range(len(order))]
    counts = Counter(order)
    assert max(counts.values(), default=0) - min(counts.values(), default=0) <= 1
