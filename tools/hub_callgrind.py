"""Instructions per message on the hub's data path, under callgrind.

Run: ``python tools/hub_callgrind.py [--batch 1] [--rounds 3]``; never part of
CI, under a minute. It runs this file's ``--drive`` mode under ``valgrind
--tool=callgrind`` twice per path, once with ``--messages 0`` and once with
``--messages N``, and prints (Ir(N) - Ir(0)) / N: the instructions one message
costs on that path, startup excluded. Paths, in process (no socket, no
upstream stream):

- ``dispatch``: ``Registry.dispatch_from`` of batches of ``--batch`` requests
  read from one client, to one serving upstream whose outbox is emptied
  after each batch (the fast path: an outbox with room);
- ``deliver``: ``Registry.deliver`` of batches of ``--batch`` replies to one
  directly written plain-TCP client (line framing) whose descriptor is
  /dev/null: routing, queueing and the direct write.

Callgrind counts are deterministic (PYTHONHASHSEED=0), so one run each is
enough; ``--rounds`` repeats them to show it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

from callgrind import instructions

HERE = Path(__file__).resolve()


async def _drive(path: str, messages: int, batch: int) -> None:
    from pmlb._proto import upstream_pb2 as pb
    from pmlb.codecs.request import message as make_request
    from pmlb.config import Config, UpstreamConfig
    from pmlb.downstream.client import Client
    from pmlb.registry import Registry
    from pmlb.upstream.state import UpstreamState

    registry = Registry(Config(upstream_queue_size=max(batch, 100)))
    upstream = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1))
    registry.set_upstream_state(upstream, UpstreamState.SERVING)
    client = Client(
        "c",
        listener="default",
        remote="x",
        transport="tcp",
        queue_limit=1000,
        scope=trio.CancelScope(),
    )
    fd = os.open(os.devnull, os.O_WRONLY)
    async with trio.open_nursery() as nursery:
        client.write_directly(fd, "line", registry.unflushed, nursery.start_soon)
        registry.add_client(client)
        upstream.outbox.take_nowait()  # the connected event
        rounds = messages // batch
        if path == "dispatch":
            requests = [
                make_request(time="t", client_uuid="c", payload=b"x" * 60) for _ in range(batch)
            ]
            dispatch_from, take = registry.dispatch_from, upstream.outbox.take_nowait
            for _ in range(rounds):
                await dispatch_from(client, list(requests))
                take()
            assert upstream.messages_dispatched == rounds * batch
        else:
            replies = [
                pb.OutputStreamRequest(client_uuid="c", payload=b"y" * 60) for _ in range(batch)
            ]
            deliver = registry.deliver
            for _ in range(rounds):
                deliver(replies)
            assert client.messages_out == rounds * batch
        nursery.cancel_scope.cancel()
    os.close(fd)


def _instructions(path: str, messages: int, batch: int) -> int:
    args = ["--drive", path, "--messages", str(messages), "--batch", str(batch)]
    return instructions(HERE, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--drive", choices=["dispatch", "deliver"])
    parser.add_argument("--only", choices=["dispatch", "deliver"])
    args = parser.parse_args()
    if args.drive:
        trio.run(_drive, args.drive, args.messages, args.batch)
        return
    for path in [args.only] if args.only else ["dispatch", "deliver"]:
        for _ in range(args.rounds):
            base = _instructions(path, 0, args.batch)
            full = _instructions(path, args.messages, args.batch)
            per = (full - base) / args.messages
            print(f"{path} batch={args.batch}: {per:,.0f} instructions per message")


if __name__ == "__main__":
    main()
