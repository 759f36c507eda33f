"""Delivered messages and the server's Welcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .subjects import HeadersLike
from .v1 import client_pb2 as pb

if TYPE_CHECKING:
    from .client import Client


@dataclass(frozen=True)
class Limits:
    """Limits the server enforces on this connection (from ``Welcome``)."""

    max_payload: int
    max_frame: int
    max_subscriptions: int
    max_headers: int
    max_subject_len: int
    ping_interval_ms: int
    max_pending_bytes: int


@dataclass(frozen=True)
class ServerInfo:
    """The server's ``Welcome``."""

    server_id: str
    session_id: int
    shard: int
    tenant: str
    server_version: str
    protocol_version: int
    limits: Limits
    #: The revision of version 1 the server speaks (0: older than 1.3; 2 has presence).
    protocol_minor: int = 0

    @classmethod
    def from_welcome(cls, w: pb.Welcome) -> "ServerInfo":
        lim = w.limits
        return cls(
            server_id=w.server_id,
            session_id=int(w.session_id),
            shard=int(w.shard),
            tenant=w.tenant,
            server_version=w.server_version,
            protocol_version=int(w.protocol_version),
            protocol_minor=int(w.protocol_minor),
            limits=Limits(
                max_payload=int(lim.max_payload) or 1024 * 1024,
                max_frame=int(lim.max_frame) or 1024 * 1024 + 16 * 1024,
                max_subscriptions=int(lim.max_subscriptions) or 10_000,
                max_headers=int(lim.max_headers) or 32,
                max_subject_len=int(lim.max_subject_len) or 256,
                ping_interval_ms=int(lim.ping_interval_ms),
                max_pending_bytes=int(lim.max_pending_bytes),
            ),
        )


class Msg:
    """A message delivered to a subscription or returned by a request.

    ``repr`` shows the subject and header keys, never the payload or header
    values."""

    __slots__ = ("subject", "reply", "headers", "data", "sid", "no_responders", "_client")

    def __init__(
        self,
        subject: str,
        reply: Optional[str],
        headers: list[tuple[str, str]],
        data: bytes,
        sid: int,
        no_responders: bool,
        client: Optional["Client"],
    ) -> None:
        self.subject = subject
        self.reply = reply
        self.headers = headers
        self.data = data
        self.sid = sid
        self.no_responders = no_responders
        self._client = client

    @classmethod
    def from_wire(cls, m: pb.Message, client: Optional["Client"]) -> "Msg":
        return cls(
            subject=m.subject.decode("ascii", "replace"),
            reply=m.reply.decode("ascii", "replace") or None,
            headers=[
                (h.key.decode("ascii", "replace"), h.value.decode("ascii", "replace"))
                for h in m.headers
            ],
            data=bytes(m.payload),
            sid=int(m.sid),
            no_responders=m.status == pb.MESSAGE_STATUS_NO_RESPONDERS,
            client=client,
        )

    def header(self, key: str) -> Optional[str]:
        """The first value of header ``key``, or None."""
        for k, v in self.headers:
            if k == key:
                return v
        return None

    def text(self, encoding: str = "utf-8") -> str:
        """The payload decoded as text."""
        return self.data.decode(encoding)

    async def respond(self, data: bytes | str = b"", *, headers: Optional[HeadersLike] = None) -> None:
        """Publishes ``data`` to this message's reply subject (request/reply)."""
        if self.reply is None or self._client is None:
            raise ValueError("this message has no reply subject")
        await self._client.publish(self.reply, data, headers=headers)

    def __repr__(self) -> str:
        keys = [k for k, _ in self.headers]
        return (
            f"Msg(subject={self.subject!r}, reply={self.reply!r}, sid={self.sid}, "
            f"header_keys={keys!r}, payload=<{len(self.data)} bytes>)"
        )
