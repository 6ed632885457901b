"""The upstream contract as betterproto classes, for people writing upstreams.

An upstream in Python subclasses :class:`UpstreamPeerServiceBase` and serves it
with grpclib::

    from grpclib.server import Server
    from pmlb.contract import UpstreamPeerServiceBase

pmlb itself never uses these classes on its data path (they cost ~100x the
protobuf runtime per message); they are the convenient API for upstreams.
"""

from pmlb._proto.bp.upstream.grpc.service import (
    ClientList,
    InputStreamRequest,
    InputStreamRequestDisconnectReason,
    InputStreamRequestEvent,
    LiveResult,
    OutputStreamRequest,
    OutputStreamRequestAction,
    OutputStreamRequestBroadcast,
    ReadyResult,
    UpstreamPeerServiceBase,
    UpstreamPeerServiceStub,
)

Broadcast = OutputStreamRequestBroadcast
Action = OutputStreamRequestAction
Event = InputStreamRequestEvent
DisconnectReason = InputStreamRequestDisconnectReason

__all__ = [
    "Action",
    "Broadcast",
    "ClientList",
    "DisconnectReason",
    "Event",
    "InputStreamRequest",
    "InputStreamRequestDisconnectReason",
    "InputStreamRequestEvent",
    "LiveResult",
    "OutputStreamRequest",
    "OutputStreamRequestAction",
    "OutputStreamRequestBroadcast",
    "ReadyResult",
    "UpstreamPeerServiceBase",
    "UpstreamPeerServiceStub",
]
