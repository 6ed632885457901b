"""Embedding pmlb in a Trio program.

pmlb's core runs inside your own nursery: ``nursery.start(pmlb.serve, config)``
returns once its listeners accept, with the bound addresses and the registry.
This program also uses the registry to broadcast a tick to every client each
second, something a plain ``pmlb serve`` cannot do.

    python examples/echo_upstream.py &
    python examples/embed.py --upstream 127.0.0.1:45888
    nc 127.0.0.1 7999
"""

from __future__ import annotations

import argparse

import trio

import pmlb
from pmlb.config import apply_overrides


async def main(port: int, upstream: str, ticks: int) -> None:
    config = apply_overrides(
        pmlb.Config(), port=port, framing="line", upstreams=[upstream], admin_port=0
    )
    async with trio.open_nursery() as nursery:
        server: pmlb.Server = await nursery.start(pmlb.serve, config)
        print(f"pmlb embedded, clients connect to {server.listeners['default'][0]}", flush=True)
        print(f"admin API and dashboard at {server.admin_url}/", flush=True)
        for n in range(1, ticks + 1):
            await trio.sleep(1)
            sent = server.registry.broadcast("all", f"tick {n}".encode())
            print(f"tick {n} sent to {sent} clients", flush=True)
        server.stop()  # a drain: closes clients, then upstream streams; serve() returns


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="pmlb inside a Trio program")
    parser.add_argument("--port", type=int, default=7999)
    parser.add_argument("--upstream", default="127.0.0.1:45888")
    parser.add_argument("--ticks", type=int, default=3600, help="stop after this many ticks")
    args = parser.parse_args()
    trio.run(main, args.port, args.upstream, args.ticks)
