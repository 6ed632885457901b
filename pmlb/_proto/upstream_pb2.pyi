from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadyResult(_message.Message):
    __slots__ = ("time", "ready")
    TIME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    time: str
    ready: bool
    def __init__(self, time: _Optional[str] = ..., ready: _Optional[bool] = ...) -> None: ...

class LiveResult(_message.Message):
    __slots__ = ("time", "live")
    TIME_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    time: str
    live: bool
    def __init__(self, time: _Optional[str] = ..., live: _Optional[bool] = ...) -> None: ...

class InputStreamRequest(_message.Message):
    __slots__ = ("time", "client_uuid", "payload", "event", "remote_address", "listener", "transport", "disconnect_reason", "disconnect_detail", "seq", "message_id", "delivery_attempt")
    class Event(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        EVENT_MESSAGE: _ClassVar[InputStreamRequest.Event]
        EVENT_CONNECTED: _ClassVar[InputStreamRequest.Event]
        EVENT_DISCONNECTED: _ClassVar[InputStreamRequest.Event]
    EVENT_MESSAGE: InputStreamRequest.Event
    EVENT_CONNECTED: InputStreamRequest.Event
    EVENT_DISCONNECTED: InputStreamRequest.Event
    class DisconnectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DISCONNECT_REASON_UNSPECIFIED: _ClassVar[InputStreamRequest.DisconnectReason]
        DISCONNECT_CLIENT_CLOSED: _ClassVar[InputStreamRequest.DisconnectReason]
        DISCONNECT_KICKED: _ClassVar[InputStreamRequest.DisconnectReason]
        DISCONNECT_TOO_BIG: _ClassVar[InputStreamRequest.DisconnectReason]
        DISCONNECT_SLOW: _ClassVar[InputStreamRequest.DisconnectReason]
        DISCONNECT_DRAIN: _ClassVar[InputStreamRequest.DisconnectReason]
        DISCONNECT_UPSTREAM_ACTION: _ClassVar[InputStreamRequest.DisconnectReason]
        DISCONNECT_ERROR: _ClassVar[InputStreamRequest.DisconnectReason]
        DISCONNECT_PROTOCOL_ERROR: _ClassVar[InputStreamRequest.DisconnectReason]
    DISCONNECT_REASON_UNSPECIFIED: InputStreamRequest.DisconnectReason
    DISCONNECT_CLIENT_CLOSED: InputStreamRequest.DisconnectReason
    DISCONNECT_KICKED: InputStreamRequest.DisconnectReason
    DISCONNECT_TOO_BIG: InputStreamRequest.DisconnectReason
    DISCONNECT_SLOW: InputStreamRequest.DisconnectReason
    DISCONNECT_DRAIN: InputStreamRequest.DisconnectReason
    DISCONNECT_UPSTREAM_ACTION: InputStreamRequest.DisconnectReason
    DISCONNECT_ERROR: InputStreamRequest.DisconnectReason
    DISCONNECT_PROTOCOL_ERROR: InputStreamRequest.DisconnectReason
    TIME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_UUID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LISTENER_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_REASON_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_DETAIL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    time: str
    client_uuid: str
    payload: bytes
    event: InputStreamRequest.Event
    remote_address: str
    listener: str
    transport: str
    disconnect_reason: InputStreamRequest.DisconnectReason
    disconnect_detail: str
    seq: int
    message_id: str
    delivery_attempt: int
    def __init__(self, time: _Optional[str] = ..., client_uuid: _Optional[str] = ..., payload: _Optional[bytes] = ..., event: _Optional[_Union[InputStreamRequest.Event, str]] = ..., remote_address: _Optional[str] = ..., listener: _Optional[str] = ..., transport: _Optional[str] = ..., disconnect_reason: _Optional[_Union[InputStreamRequest.DisconnectReason, str]] = ..., disconnect_detail: _Optional[str] = ..., seq: _Optional[int] = ..., message_id: _Optional[str] = ..., delivery_attempt: _Optional[int] = ...) -> None: ...

class ClientList(_message.Message):
    __slots__ = ("client_uuids",)
    CLIENT_UUIDS_FIELD_NUMBER: _ClassVar[int]
    client_uuids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, client_uuids: _Optional[_Iterable[str]] = ...) -> None: ...

class OutputStreamRequest(_message.Message):
    __slots__ = ("time", "client_uuid", "broadcast", "multicast", "payload", "action", "acks")
    class Broadcast(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BROADCAST_ALL: _ClassVar[OutputStreamRequest.Broadcast]
        BROADCAST_ACTIVE: _ClassVar[OutputStreamRequest.Broadcast]
        BROADCAST_NOT_ACTIVE: _ClassVar[OutputStreamRequest.Broadcast]
    BROADCAST_ALL: OutputStreamRequest.Broadcast
    BROADCAST_ACTIVE: OutputStreamRequest.Broadcast
    BROADCAST_NOT_ACTIVE: OutputStreamRequest.Broadcast
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_SEND: _ClassVar[OutputStreamRequest.Action]
        ACTION_DISCONNECT: _ClassVar[OutputStreamRequest.Action]
    ACTION_SEND: OutputStreamRequest.Action
    ACTION_DISCONNECT: OutputStreamRequest.Action
    TIME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_UUID_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    MULTICAST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    time: str
    client_uuid: str
    broadcast: OutputStreamRequest.Broadcast
    multicast: ClientList
    payload: bytes
    action: OutputStreamRequest.Action
    acks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, time: _Optional[str] = ..., client_uuid: _Optional[str] = ..., broadcast: _Optional[_Union[OutputStreamRequest.Broadcast, str]] = ..., multicast: _Optional[_Union[ClientList, _Mapping]] = ..., payload: _Optional[bytes] = ..., action: _Optional[_Union[OutputStreamRequest.Action, str]] = ..., acks: _Optional[_Iterable[int]] = ...) -> None: ...
