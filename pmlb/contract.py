"""The upstream contract as betterproto classes, for people writing upstreams.

An upstream in Python subclasses :class:`UpstreamPeerServiceBase` and serves it
with grpclib::

    from grpclib.server import Server
    from pmlb.contract import UpstreamPeerServiceBase

An upstream with ``acks = true`` in pmlb acknowledges each request it has
handled by its ``seq`` (on a reply, or alone) and drops redeliveries it has
handled already by ``message_id``::

    if request.delivery_attempt > 1 and request.message_id in handled:
        yield OutputStreamRequest(acks=[request.seq])
    else:
        handled.add(request.message_id)
        yield OutputStreamRequest(client_uuid=request.client_uuid, payload=b"...",
                                  acks=[request.seq])

(examples/echo_upstream.py ``--acks``; docs/contract.md, "Acknowledgements").

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
