"""Typed errors of the ArqonBus Python SDK.

Every error the SDK raises is an :class:`ArqonBusError`. Its ``retryable``
attribute says whether trying the same call again (later, or after the client
reconnects) can succeed without changing the configuration or the arguments.
No message ever holds a credential or a payload.
"""

from __future__ import annotations

from typing import Optional

from .v1 import client_pb2 as pb

__all__ = [
    "ArqonBusError",
    "OptionsError",
    "InvalidSubjectError",
    "InvalidQueueGroupError",
    "InvalidHeadersError",
    "PayloadTooLargeError",
    "TransportError",
    "TlsError",
    "ConnectTimeoutError",
    "AuthenticationFailedError",
    "UnsupportedVersionError",
    "ServerError",
    "ProtocolError",
    "ConnectionLostError",
    "StaleConnectionError",
    "ReconnectBufferFullError",
    "NoRespondersError",
    "RequestTimeoutError",
    "ClosedError",
    "code_name",
]


def code_name(code: int) -> str:
    """The name of an error code without its ``ERROR_CODE_`` prefix."""
    try:
        name = pb.ErrorCode.Name(code)
    except ValueError:
        return f"UNKNOWN({code})"
    return name.removeprefix("ERROR_CODE_")


class ArqonBusError(Exception):
    """Base class of every SDK error."""

    retryable: bool = False


class OptionsError(ArqonBusError, ValueError):
    """The connection options are invalid (bad URL, missing CA or credential,
    unreadable file, ...). Fix the configuration; retrying does not help."""


class InvalidSubjectError(ArqonBusError, ValueError):
    """A subject or pattern breaks the subject rules. Checked locally: nothing
    was sent."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"invalid subject {subject!r}: {reason}")
        self.subject = subject
        self.reason = reason


class InvalidQueueGroupError(ArqonBusError, ValueError):
    """A queue group name breaks the naming rules. Nothing was sent."""

    def __init__(self, group: str, reason: str) -> None:
        super().__init__(f"invalid queue group {group!r}: {reason}")
        self.group = group
        self.reason = reason


class InvalidHeadersError(ArqonBusError, ValueError):
    """Headers break the header rules or the server's limits. Nothing was sent."""


class PayloadTooLargeError(ArqonBusError, ValueError):
    """The payload is larger than the server's ``max_payload``. Nothing was sent."""

    def __init__(self, length: int, maximum: int) -> None:
        super().__init__(
            f"payload of {length} bytes exceeds the server maximum of {maximum}"
        )
        self.length = length
        self.maximum = maximum


class TransportError(ArqonBusError):
    """A network error (refused, reset, DNS, ...). Retrying may help."""

    retryable = True


class TlsError(ArqonBusError):
    """The TLS handshake failed (untrusted certificate, wrong name, no TLS 1.3).
    Retrying does not help until the configuration or the server changes."""


class ConnectTimeoutError(ArqonBusError, TimeoutError):
    """Connecting (TCP, TLS and the Welcome) took longer than the connect timeout."""

    retryable = True

    def __init__(self) -> None:
        super().__init__("timed out connecting to the server")


class AuthenticationFailedError(ArqonBusError):
    """The server rejected the credential. Not retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(f"authentication failed: {message}")
        self.server_message = message


class UnsupportedVersionError(ArqonBusError):
    """The server does not speak protocol version 1. Not retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(f"the server does not support protocol version 1: {message}")
        self.server_message = message


class ServerError(ArqonBusError):
    """An ``Error`` frame from the server.

    ``code`` is the stable numeric code (``arqonbus.v1.ErrorCode``), ``code_name``
    its name (``PERMISSION_DENIED``), ``fatal`` whether the server closed the
    connection after it, ``sid`` the subscription it is about (or ``None``).
    Fatal ones are retryable (the client reconnects); non-fatal ones are not.
    """

    def __init__(self, code: int, message: str, fatal: bool, sid: Optional[int]) -> None:
        self.code = code
        self.code_name = code_name(code)
        self.server_message = message
        self.fatal = fatal
        self.sid = sid
        self.retryable = fatal
        super().__init__(f"server error {self.code_name}: {message}")

    @classmethod
    def from_frame(cls, frame: pb.Error) -> "ServerError":
        return cls(
            int(frame.code),
            frame.message,
            bool(frame.close),
            int(frame.sid) if frame.sid else None,
        )


class ProtocolError(ArqonBusError):
    """The server sent bytes that are not valid protocol v1 (points at a server
    bug). The client reconnects."""

    retryable = True


class ConnectionLostError(ArqonBusError):
    """The server closed the connection without an ``Error`` frame."""

    retryable = True

    def __init__(self, detail: str = "the server closed the connection") -> None:
        super().__init__(detail)


class StaleConnectionError(ArqonBusError):
    """The server answered no client pings for two ping intervals."""

    retryable = True

    def __init__(self) -> None:
        super().__init__("the server stopped answering pings")


class ReconnectBufferFullError(ArqonBusError):
    """Disconnected and the reconnect buffer is full: the publish was not queued."""

    retryable = True

    def __init__(self, limit: int) -> None:
        super().__init__(f"disconnected and the reconnect buffer ({limit} bytes) is full")
        self.limit = limit


class NoRespondersError(ArqonBusError):
    """A request found no subscriber for its subject."""

    retryable = True

    def __init__(self, subject: str) -> None:
        super().__init__(f"no responders on {subject!r}")
        self.subject = subject


class RequestTimeoutError(ArqonBusError, TimeoutError):
    """A request got no reply in time (or a flush no Pong)."""

    retryable = True


class ClosedError(ArqonBusError):
    """The client is closed (``close``/``drain``) or gave up reconnecting."""

    def __init__(self, reason: Optional[BaseException] = None) -> None:
        super().__init__(
            "the client is closed" if reason is None else f"the client is closed: {reason}"
        )
        self.reason = reason
