"""ArqonBus Python SDK (asyncio).

>>> client = await arqonbus.connect("tls://127.0.0.1:7420", ca_file="ca.pem",
...                                 credential_file="agent.token")
>>> sub = await client.subscribe("tasks.>")
>>> await client.publish("events.started", b"hello")
>>> reply = await client.request("tasks.echo", b"ping")
"""

from ._version import __version__
from .client import Client, Subscription, connect
from .errors import (
    ArqonBusError,
    AuthenticationFailedError,
    ClosedError,
    ConnectionLostError,
    ConnectTimeoutError,
    InvalidHeadersError,
    InvalidQueueGroupError,
    InvalidSubjectError,
    NoRespondersError,
    OptionsError,
    PayloadTooLargeError,
    ProtocolError,
    ReconnectBufferFullError,
    RequestTimeoutError,
    ServerError,
    StaleConnectionError,
    TlsError,
    TransportError,
    UnsupportedVersionError,
)
from .events import (
    Closed,
    Disconnected,
    Event,
    Reconnected,
    ServerDraining,
    ServerErrorEvent,
    SlowConsumer,
)
from .message import Limits, Msg, ServerInfo
from .options import ClientKind, Credential, ReconnectPolicy, ServerUrl
from .presence import PresenceEvent, PresenceMember, PresenceSnapshot, PresenceWatch

__all__ = [
    "__version__",
    "connect",
    "Client",
    "Subscription",
    "Msg",
    "ServerInfo",
    "Limits",
    "ClientKind",
    "Credential",
    "ReconnectPolicy",
    "ServerUrl",
    "PresenceEvent",
    "PresenceMember",
    "PresenceSnapshot",
    "PresenceWatch",
    "Event",
    "Disconnected",
    "Reconnected",
    "ServerErrorEvent",
    "ServerDraining",
    "SlowConsumer",
    "Closed",
    "ArqonBusError",
    "AuthenticationFailedError",
    "ClosedError",
    "ConnectionLostError",
    "ConnectTimeoutError",
    "InvalidHeadersError",
    "InvalidQueueGroupError",
    "InvalidSubjectError",
    "NoRespondersError",
    "OptionsError",
    "PayloadTooLargeError",
    "ProtocolError",
    "ReconnectBufferFullError",
    "RequestTimeoutError",
    "ServerError",
    "StaleConnectionError",
    "TlsError",
    "TransportError",
    "UnsupportedVersionError",
]
