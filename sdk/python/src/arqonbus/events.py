"""What a client reports about its connection (``on_event`` callback)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .errors import ArqonBusError, ServerError
from .message import ServerInfo


@dataclass(frozen=True)
class Disconnected:
    """The connection was lost; ``reason`` says why. A reconnect follows unless
    the reason is not retryable or the policy forbids it."""

    reason: ArqonBusError


@dataclass(frozen=True)
class Reconnected:
    """A new connection is up; subscriptions were re-sent on it."""

    info: ServerInfo


@dataclass(frozen=True)
class ServerErrorEvent:
    """A non-fatal ``Error`` frame (e.g. a refused subscription)."""

    error: ServerError


@dataclass(frozen=True)
class ServerDraining:
    """The server sent ``Drain``: it will close this connection within
    ``deadline`` seconds. The client reconnects at a random moment before it."""

    deadline: float
    reason: str


@dataclass(frozen=True)
class SlowConsumer:
    """A subscription's buffer was full and messages were dropped (counted)."""

    sid: int
    dropped: int


@dataclass(frozen=True)
class Closed:
    """The client is closed for good; ``reason`` is None after close()/drain()."""

    reason: Optional[ArqonBusError]


Event = Union[Disconnected, Reconnected, ServerErrorEvent, ServerDraining, SlowConsumer, Closed]
