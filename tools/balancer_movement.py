"""How many clients each per-client policy moves when one of 5 upstreams leaves (and returns).

Run: ``python tools/balancer_movement.py [--clients 10000] [--upstreams 5]``

Pure computation on pmlb.balancer (no sockets). Round robin and least loaded
spread each message, not each client, so they have no per-client placement to
move.
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmlb.balancer import Hash, Policy, Sticky


@dataclass
class Up:
    address: str
    queued: int = 0


@dataclass(frozen=True)
class Item:
    client_uuid: str


def homes(policy: Policy, clients: list[str], targets: list[Up]) -> list[str]:
    out = []
    for client in clients:
        ((index, _),) = policy.assign([Item(client)], targets)
        out.append(targets[index].address)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--upstreams", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    clients = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(args.clients)]
    targets = [Up(f"10.0.0.{i}:45888") for i in range(args.upstreams)]
    for policy in (Hash(), Sticky()):
        before = homes(policy, clients, targets)
        spread = sorted(Counter(before).values())
        for leaving in range(args.upstreams):
            rest = [t for i, t in enumerate(targets) if i != leaving]
            after = homes(policy, clients, rest)
            moved = sum(b != a for b, a in zip(before, after, strict=True))
            needed = sum(b == targets[leaving].address for b in before)
            back = homes(policy, clients, targets)
            returned = sum(b != a for b, a in zip(after, back, strict=True))
            print(
                f"{policy.name:7} upstream {leaving} leaves: moved {moved}/{len(clients)}"
                f" = {moved / len(clients):.2%} (its own clients: {needed});"
                f" on its return {returned} move again"
            )
            if isinstance(policy, Sticky):
                policy = Sticky()
                before = homes(policy, clients, targets)
        print(f"{policy.name:7} clients per upstream with all {args.upstreams}: {spread}")


if __name__ == "__main__":
    main()
