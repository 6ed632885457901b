"""The requests pmlb sends upstream (``InputStreamRequest``), encoded by hand, sans-IO.

A client's messages differ only in their payload: the ``time`` field is the
same for every message of one read, the ``client_uuid`` field the same for
every message of the client. So a reader encodes those two fields once per
read (:func:`head`) and each message is a :class:`Request` holding them and
its payload, which the transport writes with :meth:`Request.encode`: no
protobuf object per message. The bytes are those the protobuf runtime
writes for the same fields (fields in number order, defaults left out), as
tests/test_request_codec.py checks with hypothesis.

A request also carries what later stages read: the client's UUID (the
balancer), the lifecycle event (dispatch), and the acknowledgement fields,
set while it is on an upstream's stream (:mod:`pmlb.upstream.acks`) and
encoded last, as their field numbers come last.
"""

from __future__ import annotations

from pmlb._proto import upstream_pb2 as pb

__all__ = ["Request", "event", "head", "message", "uuid_field"]

# Tags: (field number << 3) | wire type (0: varint, 2: length-delimited).
_TIME = 0x0A  # 1, string
_CLIENT_UUID = 0x12  # 2, string
_PAYLOAD = b"\x1a"  # 3, bytes
_EVENT = 0x20  # 4, enum
_REMOTE_ADDRESS = 0x2A  # 5, string
_LISTENER = 0x32  # 6, string
_TRANSPORT = 0x3A  # 7, string
_DISCONNECT_REASON = 0x40  # 8, enum
_DISCONNECT_DETAIL = 0x4A  # 9, string
_SEQ = 0x50  # 10, uint64
_MESSAGE_ID = 0x5A  # 11, string
_DELIVERY_ATTEMPT = 0x60  # 12, uint32

_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, value: str) -> bytes:
    """A string field (nothing for an empty value, as proto3 writes it)."""
    data = value.encode()
    if not data:
        return b""
    return _ONE_BYTE[tag] + _varint(len(data)) + data


def _number(tag: int, value: int) -> bytes:
    return _ONE_BYTE[tag] + _varint(value) if value else b""


def uuid_field(client_uuid: str) -> bytes:
    """The encoded ``client_uuid`` field, for :func:`head` (once per client)."""
    return _field(_CLIENT_UUID, client_uuid)


def head(time: str, client: bytes) -> bytes:
    """The encoded ``time`` field and ``client`` (a :func:`uuid_field`): once per read."""
    return _field(_TIME, time) + client


class Request:
    """One ``InputStreamRequest``: its encoded fields but the payload, and what is read later.

    ``head`` holds every field but the payload (3) and the acknowledgement
    fields (10-12); :meth:`encode` adds them. Make one with :func:`message`
    or :func:`event`, or, on the data path, from a shared :func:`head`.
    """

    __slots__ = ("client_uuid", "delivery_attempt", "event", "head", "message_id", "payload", "seq")

    def __init__(self, head: bytes, payload: bytes, client_uuid: str, event: int = 0) -> None:
        self.head = head
        self.payload = payload
        self.client_uuid = client_uuid
        #: the lifecycle event (pb.InputStreamRequest.Event; 0: a client message)
        self.event = event
        #: the acknowledgement fields (0 and "": not set)
        self.seq = 0
        self.message_id = ""
        self.delivery_attempt = 0

    def encode(self) -> bytes:
        """The request's wire bytes, as ``pb.InputStreamRequest.SerializeToString`` writes them."""
        payload = self.payload
        if payload:
            n = len(payload)
            data = b"".join(
                (self.head, _PAYLOAD, _ONE_BYTE[n] if n < 0x80 else _varint(n), payload)
            )
        else:
            data = self.head
        if self.seq or self.delivery_attempt or self.message_id:
            data += (
                _number(_SEQ, self.seq)
                + _field(_MESSAGE_ID, self.message_id)
                + _number(_DELIVERY_ATTEMPT, self.delivery_attempt)
            )
        return data

    def message(self) -> pb.InputStreamRequest:
        """The request as a protobuf message (to inspect it; the data path never does)."""
        return pb.InputStreamRequest.FromString(self.encode())

    # The fields nothing on the data path reads, decoded when asked for.

    @property
    def time(self) -> str:
        return self.message().time

    @property
    def remote_address(self) -> str:
        return self.message().remote_address

    @property
    def listener(self) -> str:
        return self.message().listener

    @property
    def transport(self) -> str:
        return self.message().transport

    @property
    def disconnect_reason(self) -> int:
        return self.message().disconnect_reason

    @property
    def disconnect_detail(self) -> str:
        return self.message().disconnect_detail

    def __repr__(self) -> str:
        return f"Request({self.message()!r})"

    def __eq__(self, other: object) -> bool:
        # Equal to a request, or a protobuf message, of the same fields.
        if isinstance(other, Request):
            return self.encode() == other.encode()
        if isinstance(other, pb.InputStreamRequest):
            return self.message() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def message(time: str = "", client_uuid: str = "", payload: bytes = b"") -> Request:
    """A client message (the data path shares one :func:`head` per read instead)."""
    return Request(head(time, uuid_field(client_uuid)), payload, client_uuid)


def event(
    time: str,
    client_uuid: str,
    kind: int,
    *,
    remote_address: str = "",
    listener: str = "",
    transport: str = "",
    disconnect_reason: int = 0,
    disconnect_detail: str = "",
) -> Request:
    """A lifecycle event (``kind``: pb.InputStreamRequest.Event) about one client."""
    encoded = b"".join(
        (
            head(time, uuid_field(client_uuid)),
            _number(_EVENT, kind),
            _field(_REMOTE_ADDRESS, remote_address),
            _field(_LISTENER, listener),
            _field(_TRANSPORT, transport),
            _number(_DISCONNECT_REASON, disconnect_reason),
            _field(_DISCONNECT_DETAIL, disconnect_detail),
        )
    )
    return Request(encoded, b"", client_uuid, kind)
