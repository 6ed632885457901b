from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
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
    __slots__ = ("time", "client_uuid", "payload")
    TIME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_UUID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    time: str
    client_uuid: str
    payload: bytes
    def __init__(self, time: _Optional[str] = ..., client_uuid: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class OutputStreamRequest(_message.Message):
    __slots__ = ("time", "client_uuid", "broadcast", "payload")
    class Broadcast(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BROADCAST_ALL: _ClassVar[OutputStreamRequest.Broadcast]
        BROADCAST_ACTIVE: _ClassVar[OutputStreamRequest.Broadcast]
        BROADCAST_NOT_ACTIVE: _ClassVar[OutputStreamRequest.Broadcast]
    BROADCAST_ALL: OutputStreamRequest.Broadcast
    BROADCAST_ACTIVE: OutputStreamRequest.Broadcast
    BROADCAST_NOT_ACTIVE: OutputStreamRequest.Broadcast
    TIME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_UUID_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    time: str
    client_uuid: str
    broadcast: OutputStreamRequest.Broadcast
    payload: bytes
    def __init__(self, time: _Optional[str] = ..., client_uuid: _Optional[str] = ..., broadcast: _Optional[_Union[OutputStreamRequest.Broadcast, str]] = ..., payload: _Optional[bytes] = ...) -> None: ...
