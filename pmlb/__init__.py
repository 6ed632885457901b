"""pmlb: long-lived client sockets in front of stateless gRPC upstreams.

Run it as ``pmlb serve``, or embed it in a Trio program::

    import pmlb

    async with trio.open_nursery() as nursery:
        server = await nursery.start(pmlb.serve, pmlb.load_config("pmlb.toml"))
        print(server.listeners)
        ...
        server.stop()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pmlb.config import (
        Config,
        ConfigError,
        ListenerConfig,
        UpstreamConfig,
        load_config,
        parse_config,
    )
    from pmlb.downstream.tcp import ListenError
    from pmlb.registry import Registry
    from pmlb.reload import Plan, ReloadUnavailable
    from pmlb.server import Server, serve

# Imported on first use: the core imports trio-asyncio, which patches asyncio
# as it loads, and an asyncio upstream that imports pmlb.contract must not
# get that.
_LAZY = {
    "Config": "pmlb.config",
    "ConfigError": "pmlb.config",
    "ListenerConfig": "pmlb.config",
    "UpstreamConfig": "pmlb.config",
    "load_config": "pmlb.config",
    "parse_config": "pmlb.config",
    "ListenError": "pmlb.downstream.tcp",
    "Registry": "pmlb.registry",
    "Plan": "pmlb.reload",
    "ReloadUnavailable": "pmlb.reload",
    "Server": "pmlb.server",
    "serve": "pmlb.server",
}

__all__ = [
    "Config",
    "ConfigError",
    "ListenError",
    "ListenerConfig",
    "Plan",
    "Registry",
    "ReloadUnavailable",
    "Server",
    "UpstreamConfig",
    "load_config",
    "parse_config",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pmlb' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
