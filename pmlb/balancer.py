"""Balancing policies: pure functions of counts, no I/O, no shared state.

A policy maps one batch of messages onto the serving upstreams. It works on
indexes and slices so that a batch is split with a few list slices instead of
a Python loop per message.
"""

from __future__ import annotations

from typing import Protocol


class Policy(Protocol):
    """Chooses which messages of a batch go to which upstream."""

    name: str

    def assign(self, n_items: int, n_targets: int) -> list[tuple[int, slice]]:
        """Split ``n_items`` messages over ``n_targets`` upstreams.

        Returns ``(target index, slice of the batch)`` pairs; every message is
        in exactly one slice. ``n_targets`` is at least 1.
        """
        ...


class RoundRobin:
    """Each message goes to the next upstream in turn (the original behaviour).

    The turn carries over from batch to batch, so the spread stays even
    whatever the batch sizes are.
    """

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def assign(self, n_items: int, n_targets: int) -> list[tuple[int, slice]]:
        start = self._next % n_targets
        self._next = (start + n_items) % n_targets
        if n_targets == 1:
            return [(0, slice(None))]
        return [
            ((start + k) % n_targets, slice(k, None, n_targets))
            for k in range(min(n_targets, n_items))
        ]
