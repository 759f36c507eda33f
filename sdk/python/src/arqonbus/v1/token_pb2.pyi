from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SignedTokenClaims(_message.Message):
    __slots__ = ("tenant_id", "principal_id", "credential_id", "issued_at_unix", "expires_at_unix")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    tenant_id: int
    principal_id: int
    credential_id: int
    issued_at_unix: int
    expires_at_unix: int
    def __init__(self, tenant_id: _Optional[int] = ..., principal_id: _Optional[int] = ..., credential_id: _Optional[int] = ..., issued_at_unix: _Optional[int] = ..., expires_at_unix: _Optional[int] = ...) -> None: ...
