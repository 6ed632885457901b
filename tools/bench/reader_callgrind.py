"""Instructions per message read from plain-TCP clients, under callgrind: each reader.

Run: ``python tools/bench/reader_callgrind.py [--clients 100] [--depth 16]``;
never part of CI, a few minutes. It runs this file's ``--drive`` mode under
``valgrind --tool=callgrind`` with ``--messages 0`` and with ``--messages
N``, for each reader (``PMLB_TCP_READER=task``: a reader task per client;
``shared``: pmlb.downstream.reader), and prints (Ir(N) - Ir(0)) / N: the
instructions one message costs, startup excluded.

The drive mode runs a real plain-TCP listener (line framing) and registry in
process, with one serving upstream that is only an outbox. ``--clients``
sockets connect to it over 127.0.0.1; each round, every client sends
``--depth`` 64 B lines at once, the proxy runs until every task waits, and the
outbox is emptied. So a message costs its share of the kernel's read, the
wake-up that reads it, decoding, the request and its dispatch; the sends and
the round's bookkeeping are the driver's, counted too but alike for both.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callgrind import instructions

HERE = Path(__file__).resolve()


async def _drive(messages: int, clients: int, depth: int) -> None:
    from pmlb.config import Config, ListenerConfig, UpstreamConfig
    from pmlb.downstream import tcp
    from pmlb.registry import Registry
    from pmlb.upstream.supervisor import UpstreamState

    config = ListenerConfig(port=0, framing="line")
    registry = Registry(Config(upstream_queue_size=clients * depth + 100))
    upstream = registry.add_upstream(UpstreamConfig(host="127.0.0.1", port=1))
    registry.set_upstream_state(upstream, UpstreamState.SERVING)
    async with trio.open_nursery() as nursery:
        listeners = await tcp.open_listeners(config)
        [address] = await nursery.start(tcp.serve_tcp_listener, config, listeners, registry)
        port = int(address.rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients)]
        await trio.testing.wait_all_tasks_blocked()
        assert len(registry.clients) == clients
        upstream.outbox.take_nowait()  # the connected events
        data = (b"x" * 63 + b"\n") * depth
        dispatched = 0
        for _ in range(messages // (clients * depth)):
            for sock in socks:
                sock.sendall(data)
            await trio.testing.wait_all_tasks_blocked()
            dispatched += len(upstream.outbox.take_nowait())
        assert dispatched == messages // (clients * depth) * clients * depth, dispatched
        for sock in socks:
            sock.close()
        nursery.cancel_scope.cancel()


def _instructions(reader: str, messages: int, clients: int, depth: int) -> int:
    args = ["--drive", "--messages", str(messages), "--clients", str(clients)]
    args += ["--depth", str(depth)]
    return instructions(HERE, args, {"PMLB_TCP_READER": reader})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=32_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--drive", action="store_true")
    args = parser.parse_args()
    if args.drive:
        trio.run(_drive, args.messages, args.clients, args.depth)
        return
    for reader in ("task", "shared"):
        base = _instructions(reader, 0, args.clients, args.depth)
        full = _instructions(reader, args.messages, args.clients, args.depth)
        per = (full - base) / args.messages
        print(f"{reader:6} clients={args.clients} depth={args.depth}: {per:,.0f} instructions/msg")


if __name__ == "__main__":
    main()
