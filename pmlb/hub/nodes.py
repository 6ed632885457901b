"""What the hub needs from the cluster bus: the narrow port its parts talk to it through.

Owns no state. :class:`pmlb.cluster.Bus` implements :class:`Nodes`; the
registry hands it to the client table (who comes and goes), the dispatcher
(a new client's first message waits until other nodes can find it) and the
router (replies and broadcasts for other nodes' clients). No part of the hub
imports the cluster layer above it.
"""

from __future__ import annotations

from typing import Protocol

from pmlb._proto import upstream_pb2 as pb


class Nodes(Protocol):
    """The other nodes of a cluster, as the data path sees them: nothing here waits but
    :meth:`wait_registered`."""

    #: UUIDs of this node's clients not yet in the cluster's directory
    @property
    def unregistered(self) -> set[str]: ...

    def client_added(self, uuid: str) -> None: ...

    def client_removed(self, uuid: str) -> None: ...

    async def wait_registered(self, uuid: str) -> None: ...

    def forward(self, reply: pb.OutputStreamRequest, uuids: list[str]) -> None: ...

    def broadcast(self, reply: pb.OutputStreamRequest) -> None: ...
