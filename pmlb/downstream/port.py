"""What the listeners need from the core: the narrow port they talk to it through.

Owns no state. :class:`pmlb.registry.Registry` implements :class:`Core` (each
member the owning hub part's own object or bound method: the client table's
counters, budget and add/remove, the drain's ``admit``, the router's list of
clients to flush, the dispatcher's ``dispatch_from``); the listeners never
import the registry or the hub, so the downstream layer has no loop with the
core above it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from pmlb.codecs.request import Request
from pmlb.config import Config
from pmlb.downstream.client import Client, QueueBudget
from pmlb.downstream.limits import ConnectionCounters


class Core(Protocol):
    """The core as a TCP, TLS or WebSocket listener sees it."""

    @property
    def config(self) -> Config: ...

    #: connection limits: what was accepted, refused and closed (listeners count)
    @property
    def connections(self) -> ConnectionCounters: ...

    #: the bytes held for all clients, against client_queue_bytes_total
    @property
    def client_queues(self) -> QueueBudget: ...

    #: directly written clients with something queued (see Client.write_directly)
    @property
    def unflushed(self) -> list[Client]: ...

    def admit(self) -> bool: ...

    def add_client(self, client: Client) -> None: ...

    def remove_client(self, client: Client) -> None: ...

    async def dispatch_from(
        self,
        client: Client,
        requests: list[Request],
        hangup: Callable[[], Awaitable[None]] | None = None,
    ) -> bool: ...

    def dispatch_from_nowait(self, client: Client, requests: list[Request]) -> bool | None: ...

    async def dispatch_held(
        self,
        client: Client,
        pending: list[Request],
        count: int,
        started: float,
        hangup: Callable[[], Awaitable[None]] | None = None,
    ) -> bool: ...
