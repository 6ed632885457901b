"""Balancing policies: pure choices, no I/O.

A policy maps one batch of messages onto the serving upstreams. It returns
``(target index, part)`` pairs where ``part`` is a slice of the batch or a
list of positions in it, so that the common batches (all messages from one
client read, or round robin) are split with a few list slices instead of a
Python loop per message.

- ``round_robin`` (default): each message to the next upstream in turn.
- ``sticky``: a client's messages all go to one upstream (chosen in turn when
  the client first sends) for as long as it serves; when it stops serving, the
  client moves to another one and stays there.
- ``hash``: a client goes to the upstream that its UUID hashes to
  (rendezvous hashing), so when an upstream leaves only its own clients move,
  and when one joins only the clients it takes over move.
- ``least_loaded``: each batch to the upstream with the fewest queued messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol


class Keyed(Protocol):
    """A message as policies see it: the UUID of the client it came from."""

    @property
    def client_uuid(self) -> str: ...


class Target(Protocol):
    """An upstream as policies see it."""

    @property
    def address(self) -> str: ...

    @property
    def queued(self) -> int:
        """Messages waiting to be written to it."""
        ...


Assignment = list[tuple[int, slice | list[int]]]


class Policy(Protocol):
    """Chooses which messages of a batch go to which upstream."""

    name: str

    def assign(self, items: Sequence[Keyed], targets: Sequence[Target]) -> Assignment:
        """Split ``items`` over ``targets`` (at least one).

        Returns ``(target index, part)`` pairs, ``part`` a slice of ``items``
        or a list of positions in it; every item is in exactly one part.
        """
        ...

    def forget(self, client_uuid: str) -> None:
        """The client is gone: drop whatever the policy remembers about it."""
        ...


class RoundRobin:
    """Each message goes to the next upstream in turn (the original behaviour).

    The turn carries over from batch to batch, so the spread stays even
    whatever the batch sizes are.
    """

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def assign(self, items: Sequence[Keyed], targets: Sequence[Target]) -> Assignment:
        return self.split(len(items), len(targets))

    def split(self, n_items: int, n_targets: int) -> Assignment:
        """:meth:`assign` on counts alone."""
        start = self._next % n_targets
        self._next = (start + n_items) % n_targets
        if n_targets == 1:
            return [(0, slice(None))]
        return [
            ((start + k) % n_targets, slice(k, None, n_targets))
            for k in range(min(n_targets, n_items))
        ]

    def forget(self, client_uuid: str) -> None:
        pass


class _PerClient:
    """A policy that sends all of a client's messages to one upstream it picks."""

    name = ""

    def assign(self, items: Sequence[Keyed], targets: Sequence[Target]) -> Assignment:
        if not items:
            return []
        if len(targets) == 1:
            return [(0, slice(None))]
        first = items[0].client_uuid
        # The usual batch: one read from one client.
        if items[-1].client_uuid == first and all(i.client_uuid == first for i in items):
            return [(self.choose(first, targets), slice(None))]
        # Mixed batches (failover): group by client, choosing once per client.
        chosen: dict[str, int] = {}
        parts: dict[int, list[int]] = {}
        for position, item in enumerate(items):
            key = item.client_uuid
            index = chosen.get(key)
            if index is None:
                index = chosen[key] = self.choose(key, targets)
            parts.setdefault(index, []).append(position)
        return list(parts.items())

    def choose(self, client_uuid: str, targets: Sequence[Target]) -> int:
        raise NotImplementedError

    def forget(self, client_uuid: str) -> None:
        pass


class Sticky(_PerClient):
    """A client stays on one upstream while it serves; it moves only when that one stops."""

    name = "sticky"

    def __init__(self) -> None:
        self._homes: dict[str, str] = {}
        self._next = 0

    def choose(self, client_uuid: str, targets: Sequence[Target]) -> int:
        home = self._homes.get(client_uuid)
        if home is not None:
            for index, target in enumerate(targets):
                if target.address == home:
                    return index
        index = self._next % len(targets)
        self._next = index + 1
        self._homes[client_uuid] = targets[index].address
        return index

    def forget(self, client_uuid: str) -> None:
        self._homes.pop(client_uuid, None)

    def __len__(self) -> int:
        return len(self._homes)


def _score(client_uuid: str, address: str) -> int:
    digest = hashlib.blake2b(f"{client_uuid}\x00{address}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Hash(_PerClient):
    """Rendezvous (highest random weight) hashing of the client UUID over upstream addresses.

    Each client goes to the upstream whose address scores highest with its
    UUID. The choice depends only on the UUID and the set of serving
    addresses, not on their order, and an upstream leaving moves exactly the
    clients it had.
    """

    name = "hash"

    def choose(self, client_uuid: str, targets: Sequence[Target]) -> int:
        best, best_score = 0, -1
        for index, target in enumerate(targets):
            score = _score(client_uuid, target.address)
            if score > best_score:
                best, best_score = index, score
        return best


class LeastLoaded:
    """Each batch goes to the upstream with the fewest queued messages.

    Ties go in turn, so that idle upstreams share the traffic.
    """

    name = "least_loaded"

    def __init__(self) -> None:
        self._next = 0

    def assign(self, items: Sequence[Keyed], targets: Sequence[Target]) -> Assignment:
        n = len(targets)
        if n == 1:
            return [(0, slice(None))]
        start = self._next % n
        self._next = start + 1
        best, fewest = start, targets[start].queued
        for offset in range(1, n):
            index = (start + offset) % n
            queued = targets[index].queued
            if queued < fewest:
                best, fewest = index, queued
        return [(best, slice(None))]

    def forget(self, client_uuid: str) -> None:
        pass


#: The policies by name, each a factory for a fresh policy.
POLICIES: Mapping[str, Callable[[], Policy]] = {
    "round_robin": RoundRobin,
    "sticky": Sticky,
    "hash": Hash,
    "least_loaded": LeastLoaded,
}


def make_policy(name: str) -> Policy:
    """A new policy called ``name``; ``ValueError`` if there is none."""
    try:
        factory = POLICIES[name]
    except KeyError:
        known = ", ".join(POLICIES)
        raise ValueError(f"unknown balancing policy {name!r}; expected one of: {known}") from None
    return factory()
