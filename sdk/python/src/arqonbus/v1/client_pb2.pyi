from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLIENT_KIND_UNSPECIFIED: _ClassVar[ClientKind]
    CLIENT_KIND_HUMAN: _ClassVar[ClientKind]
    CLIENT_KIND_DEVICE: _ClassVar[ClientKind]
    CLIENT_KIND_AGENT: _ClassVar[ClientKind]

class MessageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_STATUS_OK: _ClassVar[MessageStatus]
    MESSAGE_STATUS_NO_RESPONDERS: _ClassVar[MessageStatus]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_PROTOCOL_VIOLATION: _ClassVar[ErrorCode]
    ERROR_CODE_UNSUPPORTED_VERSION: _ClassVar[ErrorCode]
    ERROR_CODE_AUTHENTICATION_FAILED: _ClassVar[ErrorCode]
    ERROR_CODE_AUTH_TIMEOUT: _ClassVar[ErrorCode]
    ERROR_CODE_FRAME_TOO_LARGE: _ClassVar[ErrorCode]
    ERROR_CODE_MAX_PAYLOAD_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_SUBJECT: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_QUEUE_GROUP: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_HEADERS: _ClassVar[ErrorCode]
    ERROR_CODE_MAX_SUBSCRIPTIONS_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_SID: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_SID: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION_DENIED: _ClassVar[ErrorCode]
    ERROR_CODE_SLOW_CONSUMER: _ClassVar[ErrorCode]
    ERROR_CODE_STALE_CONNECTION: _ClassVar[ErrorCode]
    ERROR_CODE_SERVER_SHUTTING_DOWN: _ClassVar[ErrorCode]
    ERROR_CODE_MAX_CONNECTIONS_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_DISCONNECTED_BY_OPERATOR: _ClassVar[ErrorCode]
    ERROR_CODE_CREDENTIAL_REVOKED: _ClassVar[ErrorCode]
    ERROR_CODE_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_PRESENCE_LIMIT_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_AUTH_THROTTLED: _ClassVar[ErrorCode]

class PresenceAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESENCE_ACTION_UNSPECIFIED: _ClassVar[PresenceAction]
    PRESENCE_ACTION_JOIN: _ClassVar[PresenceAction]
    PRESENCE_ACTION_LEAVE: _ClassVar[PresenceAction]
CLIENT_KIND_UNSPECIFIED: ClientKind
CLIENT_KIND_HUMAN: ClientKind
CLIENT_KIND_DEVICE: ClientKind
CLIENT_KIND_AGENT: ClientKind
MESSAGE_STATUS_OK: MessageStatus
MESSAGE_STATUS_NO_RESPONDERS: MessageStatus
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_PROTOCOL_VIOLATION: ErrorCode
ERROR_CODE_UNSUPPORTED_VERSION: ErrorCode
ERROR_CODE_AUTHENTICATION_FAILED: ErrorCode
ERROR_CODE_AUTH_TIMEOUT: ErrorCode
ERROR_CODE_FRAME_TOO_LARGE: ErrorCode
ERROR_CODE_MAX_PAYLOAD_EXCEEDED: ErrorCode
ERROR_CODE_INVALID_SUBJECT: ErrorCode
ERROR_CODE_INVALID_QUEUE_GROUP: ErrorCode
ERROR_CODE_INVALID_HEADERS: ErrorCode
ERROR_CODE_MAX_SUBSCRIPTIONS_EXCEEDED: ErrorCode
ERROR_CODE_INVALID_SID: ErrorCode
ERROR_CODE_UNKNOWN_SID: ErrorCode
ERROR_CODE_PERMISSION_DENIED: ErrorCode
ERROR_CODE_SLOW_CONSUMER: ErrorCode
ERROR_CODE_STALE_CONNECTION: ErrorCode
ERROR_CODE_SERVER_SHUTTING_DOWN: ErrorCode
ERROR_CODE_MAX_CONNECTIONS_EXCEEDED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_DISCONNECTED_BY_OPERATOR: ErrorCode
ERROR_CODE_CREDENTIAL_REVOKED: ErrorCode
ERROR_CODE_UNAVAILABLE: ErrorCode
ERROR_CODE_PRESENCE_LIMIT_EXCEEDED: ErrorCode
ERROR_CODE_AUTH_THROTTLED: ErrorCode
PRESENCE_ACTION_UNSPECIFIED: PresenceAction
PRESENCE_ACTION_JOIN: PresenceAction
PRESENCE_ACTION_LEAVE: PresenceAction

class Frame(_message.Message):
    __slots__ = ("connect", "welcome", "publish", "subscribe", "unsubscribe", "message", "ping", "pong", "error", "drain", "presence_track", "presence_watch", "presence_query", "presence_reply", "presence_event")
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_TRACK_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_WATCH_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_QUERY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_REPLY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_EVENT_FIELD_NUMBER: _ClassVar[int]
    connect: Connect
    welcome: Welcome
    publish: Publish
    subscribe: Subscribe
    unsubscribe: Unsubscribe
    message: Message
    ping: Ping
    pong: Pong
    error: Error
    drain: Drain
    presence_track: PresenceTrack
    presence_watch: PresenceWatch
    presence_query: PresenceQuery
    presence_reply: PresenceReply
    presence_event: PresenceEvent
    def __init__(self, connect: _Optional[_Union[Connect, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., publish: _Optional[_Union[Publish, _Mapping]] = ..., subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., unsubscribe: _Optional[_Union[Unsubscribe, _Mapping]] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., presence_track: _Optional[_Union[PresenceTrack, _Mapping]] = ..., presence_watch: _Optional[_Union[PresenceWatch, _Mapping]] = ..., presence_query: _Optional[_Union[PresenceQuery, _Mapping]] = ..., presence_reply: _Optional[_Union[PresenceReply, _Mapping]] = ..., presence_event: _Optional[_Union[PresenceEvent, _Mapping]] = ...) -> None: ...

class Connect(_message.Message):
    __slots__ = ("protocol_version", "credential", "client_name", "client_kind", "client_version", "no_echo")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KIND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NO_ECHO_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    credential: str
    client_name: str
    client_kind: ClientKind
    client_version: str
    no_echo: bool
    def __init__(self, protocol_version: _Optional[int] = ..., credential: _Optional[str] = ..., client_name: _Optional[str] = ..., client_kind: _Optional[_Union[ClientKind, str]] = ..., client_version: _Optional[str] = ..., no_echo: _Optional[bool] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_payload", "max_frame", "max_subscriptions", "max_headers", "max_subject_len", "ping_interval_ms", "max_pending_bytes")
    MAX_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_FIELD_NUMBER: _ClassVar[int]
    MAX_SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_HEADERS_FIELD_NUMBER: _ClassVar[int]
    MAX_SUBJECT_LEN_FIELD_NUMBER: _ClassVar[int]
    PING_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_payload: int
    max_frame: int
    max_subscriptions: int
    max_headers: int
    max_subject_len: int
    ping_interval_ms: int
    max_pending_bytes: int
    def __init__(self, max_payload: _Optional[int] = ..., max_frame: _Optional[int] = ..., max_subscriptions: _Optional[int] = ..., max_headers: _Optional[int] = ..., max_subject_len: _Optional[int] = ..., ping_interval_ms: _Optional[int] = ..., max_pending_bytes: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "server_id", "session_id", "limits", "shard", "server_version", "tenant", "protocol_minor")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_MINOR_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    server_id: str
    session_id: int
    limits: Limits
    shard: int
    server_version: str
    tenant: str
    protocol_minor: int
    def __init__(self, protocol_version: _Optional[int] = ..., server_id: _Optional[str] = ..., session_id: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., shard: _Optional[int] = ..., server_version: _Optional[str] = ..., tenant: _Optional[str] = ..., protocol_minor: _Optional[int] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class Publish(_message.Message):
    __slots__ = ("subject", "reply", "headers", "seq", "payload")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    subject: bytes
    reply: bytes
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    seq: int
    payload: bytes
    def __init__(self, subject: _Optional[bytes] = ..., reply: _Optional[bytes] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., seq: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("sid", "pattern", "queue_group")
    SID_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_GROUP_FIELD_NUMBER: _ClassVar[int]
    sid: int
    pattern: bytes
    queue_group: bytes
    def __init__(self, sid: _Optional[int] = ..., pattern: _Optional[bytes] = ..., queue_group: _Optional[bytes] = ...) -> None: ...

class Unsubscribe(_message.Message):
    __slots__ = ("sid", "after_messages")
    SID_FIELD_NUMBER: _ClassVar[int]
    AFTER_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    sid: int
    after_messages: int
    def __init__(self, sid: _Optional[int] = ..., after_messages: _Optional[int] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("sid", "subject", "reply", "headers", "status", "payload")
    SID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    sid: int
    subject: bytes
    reply: bytes
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    status: MessageStatus
    payload: bytes
    def __init__(self, sid: _Optional[int] = ..., subject: _Optional[bytes] = ..., reply: _Optional[bytes] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., status: _Optional[_Union[MessageStatus, str]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Pong(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Drain(_message.Message):
    __slots__ = ("deadline_ms", "reason")
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    deadline_ms: int
    reason: str
    def __init__(self, deadline_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "close", "sid", "seq")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    close: bool
    sid: int
    seq: int
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., close: _Optional[bool] = ..., sid: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class PresenceTrack(_message.Message):
    __slots__ = ("sid", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    sid: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, sid: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PresenceWatch(_message.Message):
    __slots__ = ("watch_id", "subject", "stop")
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    watch_id: int
    subject: bytes
    stop: bool
    def __init__(self, watch_id: _Optional[int] = ..., subject: _Optional[bytes] = ..., stop: _Optional[bool] = ...) -> None: ...

class PresenceQuery(_message.Message):
    __slots__ = ("request_id", "subject")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    subject: bytes
    def __init__(self, request_id: _Optional[int] = ..., subject: _Optional[bytes] = ...) -> None: ...

class PresenceMember(_message.Message):
    __slots__ = ("client_id", "client_kind", "client_name", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KIND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    client_kind: ClientKind
    client_name: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, client_id: _Optional[int] = ..., client_kind: _Optional[_Union[ClientKind, str]] = ..., client_name: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PresenceReply(_message.Message):
    __slots__ = ("request_id", "subject", "members", "truncated", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    subject: bytes
    members: _containers.RepeatedCompositeFieldContainer[PresenceMember]
    truncated: bool
    error: ErrorCode
    def __init__(self, request_id: _Optional[int] = ..., subject: _Optional[bytes] = ..., members: _Optional[_Iterable[_Union[PresenceMember, _Mapping]]] = ..., truncated: _Optional[bool] = ..., error: _Optional[_Union[ErrorCode, str]] = ...) -> None: ...

class PresenceEvent(_message.Message):
    __slots__ = ("watch_id", "subject", "action", "member")
    WATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    watch_id: int
    subject: bytes
    action: PresenceAction
    member: PresenceMember
    def __init__(self, watch_id: _Optional[int] = ..., subject: _Optional[bytes] = ..., action: _Optional[_Union[PresenceAction, str]] = ..., member: _Optional[_Union[PresenceMember, _Mapping]] = ...) -> None: ...
