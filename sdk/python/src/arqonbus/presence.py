"""Presence (protocol 1.2, specs/presence.md): who is on a subject.

A subscription to a literal subject is listed in that subject's presence
when the client asks (:meth:`Subscription.track`); a *watch* receives join
and leave events; a *query* lists the members now. Seeing presence is its
own permission (``PERMISSION_DENIED`` otherwise).

The presence frames are the ``Frame`` kinds 11..15 (``presence_track``,
``presence_watch``, ``presence_query``, ``presence_reply``,
``presence_event``). ``encode``/``decode`` here write and read a frame by
field number (the same bytes), for tests that play the server.
"""

from __future__ import annotations

import collections
import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Optional, Union

from .errors import ArqonBusError, InvalidHeadersError, RequestTimeoutError
from .options import ClientKind
from .v1 import client_pb2 as pb

if TYPE_CHECKING:
    from .client import Client

TRACK, WATCH, QUERY, REPLY, EVENT = 11, 12, 13, 14, 15
MAX_METADATA_ENTRIES = 8
MAX_METADATA_KEY = 32
MAX_METADATA_VALUE = 128
MAX_METADATA_BYTES = 1024


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode(field_number: int, body: bytes) -> bytes:
    """A whole length-prefixed frame holding ``body`` as ``Frame`` field ``field_number``."""
    frame = _varint((field_number << 3) | 2) + _varint(len(body)) + body
    return len(frame).to_bytes(4, "big") + frame


def decode(body: bytes) -> Optional[tuple[int, bytes]]:
    """``(field_number, bytes)`` of a frame holding one length-delimited field, else None."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while pos < len(body):
            b = body[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                break
        raise ValueError("bad varint")

    try:
        tag = varint()
        if tag & 7 != 2:
            return None
        n = varint()
    except ValueError:
        return None
    if pos + n != len(body):
        return None
    return tag >> 3, body[pos:]


def check_metadata(metadata: Optional[dict[str, str]]) -> dict[str, str]:
    """The presence metadata rules: at most 8 entries, keys 1..=32 printable
    ASCII bytes, values at most 128 bytes, 1 KiB in all."""
    if not metadata:
        return {}
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidHeadersError(f"{len(metadata)} metadata entries, the maximum is 8")
    total = 0
    for k, v in metadata.items():
        kb, vb = k.encode("utf-8"), v.encode("utf-8")
        if not kb or len(kb) > MAX_METADATA_KEY or not all(0x21 <= b <= 0x7E for b in kb):
            raise InvalidHeadersError(f"metadata key {k!r} is invalid")
        if len(vb) > MAX_METADATA_VALUE:
            raise InvalidHeadersError(f"the value of metadata key {k!r} is longer than 128 bytes")
        total += len(kb) + len(vb)
    if total > MAX_METADATA_BYTES:
        raise InvalidHeadersError(f"metadata holds {total} bytes, the maximum is 1024")
    return dict(metadata)


@dataclass(frozen=True)
class PresenceMember:
    """One member: a connection's tracked subscription."""

    #: The member connection's ``Welcome.session_id``.
    client_id: int
    kind: Optional[ClientKind]
    name: str
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, m: pb.PresenceMember) -> "PresenceMember":
        try:
            kind: Optional[ClientKind] = ClientKind(m.client_kind)
        except ValueError:
            kind = None
        return cls(int(m.client_id), kind, m.client_name, dict(m.metadata))


@dataclass(frozen=True)
class PresenceEvent:
    """A member joined or left a watched subject."""

    subject: str
    action: Literal["join", "leave"]
    member: PresenceMember


@dataclass(frozen=True)
class PresenceSnapshot:
    """The answer to a presence query: members ordered by client id."""

    subject: str
    members: list[PresenceMember]
    #: More members exist than one answer lists (1,000).
    truncated: bool


class PresenceWatch:
    """Join and leave events of one subject: an async iterator of
    :class:`PresenceEvent`. Re-sent after a reconnect; events while
    disconnected are not replayed (query again after ``Reconnected``)."""

    def __init__(self, client: "Client", watch_id: int, subject: str) -> None:
        self._client = client
        self.watch_id = watch_id
        self.subject = subject
        self._buf: collections.deque[PresenceEvent] = collections.deque()
        self._waiter: Optional[asyncio.Future[None]] = None
        self._ended = False
        self.error: Optional[ArqonBusError] = None

    def _push(self, event: PresenceEvent) -> None:
        self._buf.append(event)
        self._wake()

    def _end(self, error: Optional[ArqonBusError] = None) -> None:
        if not self._ended:
            self._ended = True
            if error is not None and self.error is None:
                self.error = error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def active(self) -> bool:
        return not self._ended

    async def next_event(self, timeout: Optional[float] = None) -> PresenceEvent:
        """The next event; ``StopAsyncIteration`` once stopped, or the error
        that ended the watch; :class:`RequestTimeoutError` after ``timeout``."""
        while not self._buf:
            if self._ended:
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except asyncio.TimeoutError:
                raise RequestTimeoutError(f"no presence event on {self.subject!r}") from None
            finally:
                self._waiter = None
        return self._buf.popleft()

    def __aiter__(self) -> "PresenceWatch":
        return self

    async def __anext__(self) -> PresenceEvent:
        return await self.next_event()

    async def stop(self) -> None:
        """Ends the watch."""
        self._client._stop_watch(self)


PresenceFrame = Union[pb.PresenceReply, pb.PresenceEvent]
