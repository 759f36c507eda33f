"""The asyncio client.

One client owns at most one connection at a time. Everything runs on the
event loop that called :meth:`Client.connect`:

- a *supervisor* task serves the current connection and, when it is lost,
  reconnects with backoff;
- per connection, a *reader* task decodes frames (many per read) and hands
  messages to subscriptions without ever waiting (a full subscription drops
  and counts), and a *keepalive* task pings every ``ping_interval``.

After every reconnect the client re-sends, in order: every live subscription
(same sid, remaining ``unsubscribe_after`` count), the flushes that were
waiting for a Pong, then the publishes buffered while disconnected. Delivery
is at most once: frames written to a connection that is then lost are lost.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import secrets
import ssl
import string
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Optional, Union

from ._version import __version__ as _version
from .errors import (
    ArqonBusError,
    AuthenticationFailedError,
    ClosedError,
    ConnectionLostError,
    ConnectTimeoutError,
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
from .message import Msg, ServerInfo
from . import presence as _presence
from .presence import PresenceEvent, PresenceFrame, PresenceMember, PresenceSnapshot, PresenceWatch
from .options import (
    MAX_CLIENT_NAME,
    ClientKind,
    Credential,
    CredentialSource,
    ReconnectPolicy,
    ServerUrl,
    tls_context,
)
from .subjects import HeadersLike, check_headers, check_queue_group, check_subject
from .v1 import client_pb2 as pb

__all__ = ["Client", "Subscription", "connect"]

log = logging.getLogger("arqonbus")

PROTOCOL_VERSION = 1
CLIENT_VERSION = f"arqonbus-python/{_version}"
#: The largest frame accepted before the server's limits are known.
PRE_WELCOME_MAX_FRAME = 64 * 1024 * 1024
MAX_PINGS_OUTSTANDING = 2
CLOSE_GRACE = 5.0
# After a Drain notice, how long past its deadline the client waits for the
# server's close before it leaves by itself.
DRAIN_MARGIN = 1.0
_LEN = struct.Struct(">I")
_INBOX_ALPHABET = string.ascii_letters + string.digits


def _frame(**kind: Any) -> bytes:
    body = pb.Frame(**kind).SerializeToString()
    return _LEN.pack(len(body)) + body


_PING = _frame(ping=pb.Ping())
_PONG = _frame(pong=pb.Pong())


def _server_failure(err: ServerError) -> ArqonBusError:
    """The error for a fatal (or pre-Welcome) ``Error`` frame."""
    if err.code == pb.ERROR_CODE_AUTHENTICATION_FAILED:
        return AuthenticationFailedError(err.server_message)
    if err.code == pb.ERROR_CODE_UNSUPPORTED_VERSION:
        return UnsupportedVersionError(err.server_message)
    return err


def _allows_reconnect(err: ArqonBusError) -> bool:
    # A certificate may be fixed on the server side while we back off.
    return err.retryable or isinstance(err, TlsError)


async def _read_frame(
    reader: asyncio.StreamReader, max_frame: int
) -> Union[pb.Frame, PresenceFrame]:
    head = await reader.readexactly(4)
    (n,) = _LEN.unpack(head)
    if n > max_frame:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit of {max_frame}")
    body = await reader.readexactly(n) if n else b""
    frame = pb.Frame()
    try:
        frame.ParseFromString(body)
    except Exception:  # protobuf raises DecodeError (a plain Exception subclass)
        raise ProtocolError("a frame that does not decode") from None
    kind = frame.WhichOneof("kind")
    if kind is None:
        raise ProtocolError("a frame with no kind this client knows")
    if kind == "presence_reply":
        return frame.presence_reply
    if kind == "presence_event":
        return frame.presence_event
    return frame


class _Conn:
    """One established, authenticated connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: ServerInfo
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.info = info
        # One entry per Ping sent on this connection: None for a keepalive,
        # a future for a flush.
        self.pongs: collections.deque[Optional[asyncio.Future[None]]] = collections.deque()
        self.done: asyncio.Future[ArqonBusError] = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task[None]] = []
        self.drain_timer: Optional[asyncio.TimerHandle] = None
        # The server announced this connection's close (Drain): the first
        # reconnect attempt after it does not wait.
        self.announced = False

    def write(self, data: bytes) -> None:
        if not self.done.done():
            self.writer.write(data)

    def fail(self, err: ArqonBusError) -> None:
        """Ends the connection (first reason wins)."""
        if not self.done.done():
            self.done.set_result(err)


class Subscription:
    """A live subscription: an async iterator of :class:`Msg`.

    The iterator yields buffered messages, then ends when the subscription is
    unsubscribed or the client closes. If the server refused the subscription
    (or the client closed on a fatal error), iteration raises that error after
    the buffered messages."""

    def __init__(
        self,
        client: "Client",
        sid: int,
        subject: str,
        queue: Optional[str],
        capacity: int,
        callback: Optional[Callable[[Msg], None]] = None,
    ) -> None:
        self._client = client
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self._capacity = capacity
        self._callback = callback
        self._buf: collections.deque[Msg] = collections.deque()
        self._waiter: Optional[asyncio.Future[None]] = None
        self._ended = False
        self._overflowing = False
        #: Deliveries left before an ``unsubscribe_after`` takes effect.
        self._remaining: Optional[int] = None
        #: Messages dropped because the buffer was full.
        self.dropped = 0
        #: Why the subscription ended, when it was not asked to.
        self.error: Optional[ArqonBusError] = None
        #: Presence metadata while the subscription is listed (track()).
        self._presence: Optional[dict[str, str]] = None
        self._track_error: Optional[ArqonBusError] = None

    # -- called by the client -------------------------------------------------
    def _push(self, msg: Msg) -> bool:
        if self._callback is not None:
            self._callback(msg)
            return True
        if len(self._buf) >= self._capacity:
            self.dropped += 1
            return False
        self._buf.append(msg)
        self._wake()
        return True

    def _end(self, error: Optional[ArqonBusError] = None) -> None:
        if not self._ended:
            self._ended = True
            if error is not None and self.error is None:
                self.error = error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- public -----------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether the subscription still receives messages."""
        return not self._ended

    def pending(self) -> int:
        """Messages buffered and not read yet."""
        return len(self._buf)

    async def next_msg(self, timeout: Optional[float] = None) -> Msg:
        """The next message. Raises :class:`RequestTimeoutError` after
        ``timeout`` seconds, ``StopAsyncIteration`` when the subscription ended,
        or the error that ended it."""
        while not self._buf:
            if self._ended:
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except asyncio.TimeoutError:
                raise RequestTimeoutError(
                    f"no message on {self.subject!r} within {timeout} s"
                ) from None
            finally:
                self._waiter = None
        return self._buf.popleft()

    def __aiter__(self) -> AsyncIterator[Msg]:
        return self

    async def __anext__(self) -> Msg:
        return await self.next_msg()

    async def track(self, metadata: Optional[dict[str, str]] = None) -> None:
        """Lists this subscription (its subject must be literal) in the
        subject's presence, with ``metadata`` (at most 8 entries, keys up to 32
        bytes, values up to 128, 1 KiB in all), until it ends. Listed again
        after a reconnect. Raises the server's ``PRESENCE_LIMIT_EXCEEDED`` or
        ``INVALID_HEADERS`` (the subscription itself stays)."""
        await self._client._track(self, metadata)

    async def unsubscribe(self) -> None:
        """Stops the subscription now. Buffered messages can still be read."""
        self._client._unsubscribe(self, 0)

    async def unsubscribe_after(self, n: int) -> None:
        """Stops the subscription after ``n`` more messages."""
        if n <= 0:
            raise ValueError("n must be positive")
        self._client._unsubscribe(self, n)

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.unsubscribe()

    def __repr__(self) -> str:
        return f"Subscription(sid={self.sid}, subject={self.subject!r}, queue={self.queue!r})"


OnEvent = Callable[[Event], Union[None, Awaitable[None]]]
_QueuedItem = Union[bytes, "asyncio.Future[None]"]


class Client:
    """An ArqonBus client. Create with :meth:`Client.connect` (or the module
    function :func:`arqonbus.connect`)."""

    def __init__(
        self,
        url: ServerUrl,
        ssl_ctx: Optional[ssl.SSLContext],
        credential: CredentialSource,
        name: str,
        kind: ClientKind,
        no_echo: bool,
        reconnect: ReconnectPolicy,
        request_timeout: float,
        connect_timeout: float,
        ping_interval: float,
        reconnect_buffer_size: int,
        subscriber_capacity: int,
        on_event: Optional[OnEvent],
    ) -> None:
        self._url = url
        self._ssl = ssl_ctx
        self._credential = credential
        self._name = name
        self._kind = kind
        self._no_echo = no_echo
        self._policy = reconnect
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._buffer_limit = reconnect_buffer_size
        self._capacity = subscriber_capacity
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()

        self._conn: Optional[_Conn] = None
        self._info: Optional[ServerInfo] = None
        self._status = "connecting"
        self._closing = False
        self._closed_reason: Optional[ArqonBusError] = None
        self._closed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._supervisor: Optional[asyncio.Task[None]] = None

        self._sids = itertools.count(1)
        self._subs: dict[int, Subscription] = {}
        self._queued: collections.deque[_QueuedItem] = collections.deque()
        self._queued_bytes = 0

        self._inbox_prefix = "_INBOX." + "".join(
            secrets.choice(_INBOX_ALPHABET) for _ in range(22)
        )
        self._inbox_ready: Optional[asyncio.Task[None]] = None
        self._tokens = itertools.count(1)
        self._requests: dict[int, tuple[str, asyncio.Future[Msg]]] = {}
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._watches: dict[int, PresenceWatch] = {}
        self._queries: dict[int, tuple[str, asyncio.Future[PresenceSnapshot]]] = {}
        self._query_ids = itertools.count(1)

    # ------------------------------------------------------------------ connect
    @classmethod
    async def connect(
        cls,
        url: str = "tls://127.0.0.1:7420",
        *,
        credential: Optional[CredentialSource] = None,
        credential_file: Optional[str] = None,
        ca_file: Optional[str] = None,
        ca_pem: Optional[str] = None,
        name: str = "",
        kind: ClientKind = ClientKind.AGENT,
        no_echo: bool = False,
        reconnect: ReconnectPolicy = ReconnectPolicy(),
        request_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        ping_interval: float = 30.0,
        reconnect_buffer_size: int = 8 * 1024 * 1024,
        subscriber_capacity: int = 8192,
        on_event: Optional[OnEvent] = None,
    ) -> "Client":
        """Connects and returns once the server's ``Welcome`` arrived.

        ``url`` is ``tls://host[:port]`` (default scheme), ``tcp://host[:port]``
        (plaintext) or ``host[:port]``; port 7420 by default. ``tls://`` needs
        ``ca_file`` or ``ca_pem``. The credential is a bearer (``abt_``) or
        signed (``abs_``) token, given as ``credential`` (a string, a
        :class:`Credential`, or a callable returning one, called before every
        attempt) or ``credential_file``. The first attempt is made once,
        bounded by ``connect_timeout``; later ones follow ``reconnect``.
        """
        parsed = ServerUrl.parse(url)
        source: CredentialSource
        if credential is not None and credential_file is not None:
            raise OptionsError("give credential or credential_file, not both")
        if credential_file is not None:
            source = Credential.from_file(credential_file)
        elif credential is None:
            raise OptionsError("no credential configured")
        elif isinstance(credential, str):
            source = Credential(credential)
        else:
            source = credential
        if len(name.encode()) > MAX_CLIENT_NAME:
            raise OptionsError(f"client name is {len(name.encode())} bytes, the maximum is 128")
        for value, label in (
            (request_timeout, "request_timeout"),
            (connect_timeout, "connect_timeout"),
            (ping_interval, "ping_interval"),
            (reconnect_buffer_size, "reconnect_buffer_size"),
            (subscriber_capacity, "subscriber_capacity"),
        ):
            if value <= 0:
                raise OptionsError(f"option {label} must be greater than zero")
        ctx = tls_context(ca_pem, ca_file) if parsed.tls else None
        client = cls(
            parsed,
            ctx,
            source,
            name,
            kind,
            no_echo,
            reconnect,
            request_timeout,
            connect_timeout,
            ping_interval,
            reconnect_buffer_size,
            subscriber_capacity,
            on_event,
        )
        conn = await client._open()
        client._attach(conn)
        client._supervisor = asyncio.get_running_loop().create_task(client._supervise(conn))
        return client

    async def _credential_text(self) -> str:
        src = self._credential
        if isinstance(src, Credential):
            return src.expose()
        if isinstance(src, str):
            return Credential(src).expose()
        got = src()
        if inspect.isawaitable(got):
            got = await got
        if isinstance(got, Credential):
            return got.expose()
        return Credential(got).expose()

    async def _open(self) -> _Conn:
        """One connection attempt: TCP, TLS, Connect, Welcome; bounded by the
        connect timeout."""
        try:
            return await asyncio.wait_for(self._open_inner(), self._connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectTimeoutError() from None

    async def _open_inner(self) -> _Conn:
        token = await self._credential_text()
        try:
            reader, writer = await asyncio.open_connection(
                self._url.host,
                self._url.port,
                ssl=self._ssl,
                server_hostname=self._url.host if self._ssl is not None else None,
            )
        except ssl.SSLError as e:
            raise TlsError(f"tls: {e.reason or e}") from None
        except OSError as e:
            raise TransportError(f"cannot connect to {self._url}: {e.strerror or e}") from None
        try:
            connect = pb.Connect(
                protocol_version=PROTOCOL_VERSION,
                credential=token,
                client_name=self._name,
                client_kind=self._kind.value,
                client_version=CLIENT_VERSION,
                no_echo=self._no_echo,
            )
            writer.write(_frame(connect=connect))
            del connect, token
            await writer.drain()
            while True:
                frame = await _read_frame(reader, PRE_WELCOME_MAX_FRAME)
                if not isinstance(frame, pb.Frame):
                    raise ProtocolError("a presence frame before Welcome")
                kind = frame.WhichOneof("kind")
                if kind == "welcome":
                    info = ServerInfo.from_welcome(frame.welcome)
                    log.debug(
                        "connected: server %s session %d shard %d tenant %s",
                        info.server_id, info.session_id, info.shard, info.tenant,
                    )
                    return _Conn(reader, writer, info)
                if kind == "error":
                    err = ServerError.from_frame(frame.error)
                    err.fatal = True
                    err.retryable = True
                    raise _server_failure(err)
                raise ProtocolError(f"unexpected {kind} frame before Welcome")
        except BaseException as e:
            writer.close()
            if isinstance(e, asyncio.IncompleteReadError):
                raise ConnectionLostError() from None
            if isinstance(e, ssl.SSLError):
                raise TlsError(f"tls: {e.reason or e}") from None
            if isinstance(e, OSError):
                raise TransportError(f"i/o: {e.strerror or e}") from None
            raise

    # ----------------------------------------------------------- connection loop
    def _attach(self, conn: _Conn) -> None:
        """Makes ``conn`` current: replays subscriptions, then pending flushes,
        then buffered publishes; starts its reader and keepalive."""
        self._conn = conn
        self._info = conn.info
        for sid in sorted(self._subs):
            sub = self._subs[sid]
            sub_frame = pb.Subscribe(
                sid=sid,
                pattern=sub.subject.encode("ascii"),
                queue_group=(sub.queue or "").encode("ascii"),
            )
            conn.write(_frame(subscribe=sub_frame))
            if sub._remaining is not None:
                conn.write(_frame(unsubscribe=pb.Unsubscribe(sid=sid, after_messages=sub._remaining)))
            if sub._presence is not None:
                conn.write(self._track_frame(sid, sub._presence))
        for wid in sorted(self._watches):
            conn.write(self._watch_frame(wid, self._watches[wid].subject, False))
        for qid, (subject, fut) in sorted(self._queries.items()):
            if not fut.done():
                conn.write(self._query_frame(qid, subject))
        while self._queued:
            item = self._queued.popleft()
            if isinstance(item, bytes):
                conn.write(item)
            elif not item.done():
                conn.pongs.append(item)
                conn.write(_PING)
        self._queued_bytes = 0
        self._status = "connected"
        conn.tasks.append(self._loop.create_task(self._read_loop(conn)))
        conn.tasks.append(self._loop.create_task(self._keepalive(conn)))

    async def _serve(self, conn: _Conn) -> ArqonBusError:
        err = await conn.done
        if conn.drain_timer is not None:
            conn.drain_timer.cancel()
        for t in conn.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        if self._closing:
            # Best effort: write what is queued, then a FIN (and close_notify).
            try:
                conn.writer.close()
                await asyncio.wait_for(conn.writer.wait_closed(), CLOSE_GRACE)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                pass
        else:
            conn.writer.transport.abort()
        self._conn = None
        # Flushes waiting on this connection are re-sent after the
        # resubscription, ahead of what was queued since.
        waiting = [f for f in conn.pongs if f is not None and not f.done()]
        conn.pongs.clear()
        self._queued.extendleft(reversed(waiting))
        return err

    async def _supervise(self, conn: _Conn) -> None:
        current: Optional[_Conn] = conn
        try:
            while current is not None:
                lost = await self._serve(current)
                announced = current.announced
                current = None
                if self._closing:
                    break
                log.warning("connection lost: %s", lost)
                can = _allows_reconnect(lost) and self._policy.allows(0)
                if can:
                    self._status = "reconnecting"
                self._emit(Disconnected(lost))
                if not can:
                    self._shutdown(lost)
                    return
                current = await self._reconnect(lost, at_once=announced)
                if current is None:
                    return
                self._attach(current)
                log.info("reconnected: session %d shard %d", current.info.session_id, current.info.shard)
                self._emit(Reconnected(current.info))
        finally:
            self._shutdown(None)

    async def _reconnect(self, last: ArqonBusError, at_once: bool = False) -> Optional[_Conn]:
        # at_once: the server announced the close (Drain) and chose its
        # moment, so the first attempt does not wait.
        attempt = 0
        while True:
            if not self._policy.allows(attempt):
                log.warning("giving up reconnecting: %s", last)
                self._shutdown(last)
                return None
            delay = 0.0 if at_once and attempt == 0 else self._policy.delay(attempt)
            attempt += 1
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if self._closing:
                return None
            try:
                return await self._open()
            except ArqonBusError as e:
                if self._closing:
                    return None
                if not _allows_reconnect(e):
                    log.warning("reconnect refused: %s", e)
                    self._shutdown(e)
                    return None
                log.debug("reconnect attempt %d failed: %s", attempt, e)
                if isinstance(e, ServerError) and e.code == pb.ERROR_CODE_AUTH_THROTTLED:
                    # Login throttling: retrying soon prolongs it; wait the longest.
                    attempt = max(attempt, 32)
                last = e

    async def _keepalive(self, conn: _Conn) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            outstanding = sum(1 for w in conn.pongs if w is None)
            if outstanding >= MAX_PINGS_OUTSTANDING:
                conn.fail(StaleConnectionError())
                return
            conn.pongs.append(None)
            conn.write(_PING)

    async def _read_loop(self, conn: _Conn) -> None:
        max_frame = max(conn.info.limits.max_frame, 16 * 1024) + 1024
        try:
            while True:
                frame = await _read_frame(conn.reader, max_frame)
                self._on_frame(conn, frame)
        except asyncio.CancelledError:
            raise
        except ArqonBusError as e:
            conn.fail(e)
        except asyncio.IncompleteReadError:
            conn.fail(ConnectionLostError())
        except ssl.SSLError as e:
            conn.fail(TlsError(f"tls: {e.reason or e}"))
        except OSError as e:
            conn.fail(TransportError(f"i/o: {e.strerror or e}"))

    def _on_frame(self, conn: _Conn, frame: Union[pb.Frame, PresenceFrame]) -> None:
        if isinstance(frame, (pb.PresenceReply, pb.PresenceEvent)):
            self._on_presence(frame)
            return
        kind = frame.WhichOneof("kind")
        if kind == "message":
            self._deliver(frame.message)
        elif kind == "ping":
            conn.write(_PONG)
        elif kind == "pong":
            if conn.pongs:
                waiter = conn.pongs.popleft()
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        elif kind == "drain":
            deadline = frame.drain.deadline_ms / 1000.0
            log.info("server is draining (deadline %.3f s): %s", deadline, frame.drain.reason)
            self._emit(ServerDraining(deadline, frame.drain.reason))
            conn.announced = True
            if conn.drain_timer is None:
                # The server closes within the window, spread as it chose
                # (a tenant's clients together on an upgrade); only if it
                # has not by the deadline does the client leave by itself.
                conn.drain_timer = self._loop.call_later(
                    deadline + DRAIN_MARGIN,
                    conn.fail,
                    ConnectionLostError("reconnecting after the server's Drain notice"),
                )
        elif kind == "error":
            err = ServerError.from_frame(frame.error)
            if err.fatal:
                conn.fail(_server_failure(err))
            else:
                self._on_server_error(err)
        else:
            conn.fail(ProtocolError(f"unexpected {kind} frame"))

    def _deliver(self, m: pb.Message) -> None:
        sub = self._subs.get(int(m.sid))
        if sub is None:
            return
        msg = Msg.from_wire(m, self)
        if sub._push(msg):
            sub._overflowing = False
        elif not sub._overflowing:
            sub._overflowing = True
            log.warning(
                "subscription %d buffer full: dropping messages (client-side slow consumer)",
                sub.sid,
            )
            self._emit(SlowConsumer(sub.sid, sub.dropped))
        if sub._remaining is not None:
            sub._remaining -= 1
            if sub._remaining <= 0:
                self._subs.pop(sub.sid, None)
                sub._end()

    def _on_server_error(self, err: ServerError) -> None:
        log.warning("server reported an error: %s (sid %s)", err, err.sid)
        if err.sid is not None:
            watch = self._watches.pop(err.sid, None)
            if watch is not None:
                watch._end(err)
            elif err.code in (pb.ERROR_CODE_PRESENCE_LIMIT_EXCEEDED, pb.ERROR_CODE_INVALID_HEADERS) and (
                tracked := self._subs.get(err.sid)
            ) is not None:
                # A refused listing: the subscription stays, unlisted.
                tracked._presence = None
                tracked._track_error = err
            else:
                sub = self._subs.pop(err.sid, None)
                if sub is not None:
                    sub._end(err)
        self._emit(ServerErrorEvent(err))

    def _emit(self, event: Event) -> None:
        if self._on_event is None:
            return
        try:
            result = self._on_event(event)
            if inspect.isawaitable(result):
                task = self._loop.create_task(_await(result))
                self._event_tasks.add(task)
                task.add_done_callback(self._event_tasks.discard)
        except Exception:
            log.exception("the on_event callback raised")

    def _shutdown(self, reason: Optional[ArqonBusError]) -> None:
        if self._status == "closed":
            return
        self._status = "closed"
        self._closed_reason = reason
        err: ArqonBusError = reason if reason is not None else ClosedError()
        for sub in list(self._subs.values()):
            sub._end(reason)
        self._subs.clear()
        for _, fut in self._requests.values():
            if not fut.done():
                fut.set_exception(ClosedError(reason) if reason is not None else err)
        self._requests.clear()
        for watch in self._watches.values():
            watch._end(reason)
        self._watches.clear()
        for _, qfut in self._queries.values():
            if not qfut.done():
                qfut.set_exception(ClosedError(reason))
        self._queries.clear()
        for item in self._queued:
            if not isinstance(item, bytes) and not item.done():
                item.set_exception(ClosedError(reason))
        self._queued.clear()
        self._queued_bytes = 0
        self._closed.set()
        self._emit(Closed(reason))

    # --------------------------------------------------------------- public API
    @property
    def server_info(self) -> Optional[ServerInfo]:
        """The last ``Welcome``: shard, tenant, session and limits."""
        return self._info

    @property
    def is_connected(self) -> bool:
        return self._status == "connected"

    @property
    def is_closed(self) -> bool:
        return self._status == "closed"

    @property
    def status(self) -> str:
        """``connected``, ``reconnecting`` or ``closed``."""
        return self._status

    @property
    def closed_reason(self) -> Optional[ArqonBusError]:
        """Why the client closed by itself (None after close()/drain())."""
        return self._closed_reason

    def _check_open(self) -> None:
        if self._status == "closed" or self._closing:
            raise ClosedError(self._closed_reason)

    def _limits(self) -> tuple[int, int, int]:
        lim = self._info.limits if self._info else None
        if lim is None:
            return (256, 32, 1024 * 1024)
        return (lim.max_subject_len, lim.max_headers, lim.max_payload)

    def _encode_publish(
        self,
        subject: str,
        data: Union[bytes, bytearray, memoryview, str],
        reply: Optional[str],
        headers: Optional[HeadersLike],
    ) -> bytes:
        max_subject, max_headers, max_payload = self._limits()
        subj = check_subject(subject, max_subject, wildcards=False)
        rep = check_subject(reply, max_subject, wildcards=False) if reply is not None else b""
        hdrs = check_headers(headers, max_headers)
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(payload) > max_payload:
            raise PayloadTooLargeError(len(payload), max_payload)
        publish = pb.Publish(
            subject=subj,
            reply=rep,
            headers=[pb.Header(key=k, value=v) for k, v in hdrs],
            payload=payload,
        )
        return _frame(publish=publish)

    async def _send_ordered(self, frame: bytes) -> None:
        conn = self._conn
        if conn is not None and self._status == "connected" and not conn.done.done():
            conn.write(frame)
            try:
                await conn.writer.drain()
            except (OSError, ssl.SSLError):
                pass  # the connection is lost; the reader reports why
            return
        if self._queued_bytes + len(frame) > self._buffer_limit:
            raise ReconnectBufferFullError(self._buffer_limit)
        self._queued.append(frame)
        self._queued_bytes += len(frame)

    async def publish(
        self,
        subject: str,
        data: Union[bytes, bytearray, memoryview, str] = b"",
        *,
        reply: Optional[str] = None,
        headers: Optional[HeadersLike] = None,
    ) -> None:
        """Publishes ``data`` on ``subject``. Checks the subject, headers and
        size first (nothing invalid is sent). Returns once queued; while
        disconnected the publish waits in the reconnect buffer (or raises
        :class:`ReconnectBufferFullError`)."""
        self._check_open()
        await self._send_ordered(self._encode_publish(subject, data, reply, headers))

    async def flush(self, timeout: Optional[float] = None) -> None:
        """The Ping/Pong barrier: returns when everything sent before (and
        every subscription change) is in effect on every shard. Repeated after
        a reconnect. Raises :class:`RequestTimeoutError` after ``timeout``."""
        self._check_open()
        fut: asyncio.Future[None] = self._loop.create_future()
        conn = self._conn
        if conn is not None and self._status == "connected" and not conn.done.done():
            conn.pongs.append(fut)
            conn.write(_PING)
        else:
            self._queued.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"no Pong within {timeout} s") from None

    async def subscribe(
        self,
        subject: str,
        *,
        queue: Optional[str] = None,
        capacity: Optional[int] = None,
    ) -> Subscription:
        """Subscribes to ``subject`` (a subject or a pattern with ``*`` and
        ``>``), optionally in queue group ``queue`` (each message goes to one
        member). Returns after a flush, so the subscription is in effect on
        every shard; raises the server's error if it refused it."""
        return await self._subscribe(subject, queue, capacity, None)

    async def _subscribe(
        self,
        subject: str,
        queue: Optional[str],
        capacity: Optional[int],
        callback: Optional[Callable[[Msg], None]],
    ) -> Subscription:
        self._check_open()
        max_subject, _, _ = self._limits()
        pattern = check_subject(subject, max_subject, wildcards=True)
        group = check_queue_group(queue) if queue is not None else b""
        sid = next(self._sids)
        sub = Subscription(self, sid, subject, queue, capacity or self._capacity, callback)
        self._subs[sid] = sub
        conn = self._conn
        if conn is not None and self._status == "connected":
            conn.write(_frame(subscribe=pb.Subscribe(sid=sid, pattern=pattern, queue_group=group)))
        await self.flush()
        if sub.error is not None:
            raise sub.error
        return sub

    def _unsubscribe(self, sub: Subscription, after: int) -> None:
        if sub.sid not in self._subs:
            return
        if after == 0:
            del self._subs[sub.sid]
            sub._end()
        else:
            sub._remaining = after
        conn = self._conn
        if conn is not None and self._status == "connected":
            conn.write(_frame(unsubscribe=pb.Unsubscribe(sid=sub.sid, after_messages=after)))

    async def _ensure_inbox(self) -> None:
        task = self._inbox_ready
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):

            async def setup() -> None:
                await self._subscribe(self._inbox_prefix + ".*", None, 1, self._on_reply)

            task = self._loop.create_task(setup())
            self._inbox_ready = task
        await asyncio.shield(task)

    def _on_reply(self, msg: Msg) -> None:
        _, _, tail = msg.subject.rpartition(".")
        if not tail.isdigit():
            return
        entry = self._requests.pop(int(tail), None)
        if entry is None:
            return  # a late or second reply
        subject, fut = entry
        if fut.done():
            return
        if msg.no_responders:
            fut.set_exception(NoRespondersError(subject))
        else:
            fut.set_result(msg)

    async def request(
        self,
        subject: str,
        data: Union[bytes, bytearray, memoryview, str] = b"",
        *,
        headers: Optional[HeadersLike] = None,
        timeout: Optional[float] = None,
    ) -> Msg:
        """Publishes a request and returns the first reply. Raises
        :class:`NoRespondersError` at once when nobody subscribes to
        ``subject``, :class:`RequestTimeoutError` after ``timeout`` (default
        the client's ``request_timeout``)."""
        self._check_open()
        limit = self._request_timeout if timeout is None else timeout
        token = next(self._tokens)
        frame = self._encode_publish(subject, data, f"{self._inbox_prefix}.{token}", headers)
        fut: asyncio.Future[Msg] = self._loop.create_future()

        async def run() -> Msg:
            await self._ensure_inbox()
            self._requests[token] = (subject, fut)
            await self._send_ordered(frame)
            return await fut

        try:
            return await asyncio.wait_for(run(), limit)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"no reply on {subject!r} within {limit} s") from None
        finally:
            self._requests.pop(token, None)

    # ------------------------------------------------------------- presence
    @staticmethod
    def _track_frame(sid: int, metadata: dict[str, str]) -> bytes:
        return _frame(presence_track=pb.PresenceTrack(sid=sid, metadata=metadata))

    @staticmethod
    def _watch_frame(watch_id: int, subject: str, stop: bool) -> bytes:
        return _frame(
            presence_watch=pb.PresenceWatch(watch_id=watch_id, subject=subject.encode("ascii"), stop=stop)
        )

    @staticmethod
    def _query_frame(request_id: int, subject: str) -> bytes:
        return _frame(presence_query=pb.PresenceQuery(request_id=request_id, subject=subject.encode("ascii")))

    def _live_conn(self) -> Optional[_Conn]:
        conn = self._conn
        if conn is not None and self._status == "connected" and not conn.done.done():
            return conn
        return None

    async def _track(self, sub: Subscription, metadata: Optional[dict[str, str]]) -> None:
        self._check_open()
        max_subject, _, _ = self._limits()
        check_subject(sub.subject, max_subject, wildcards=False)
        md = _presence.check_metadata(metadata)
        if sub.sid not in self._subs:
            raise ClosedError(sub.error)
        sub._presence = md
        sub._track_error = None
        conn = self._live_conn()
        if conn is not None:
            conn.write(self._track_frame(sub.sid, md))
        await self.flush()
        if sub._track_error is not None:
            raise sub._track_error
        if sub.error is not None:
            raise sub.error

    async def watch_presence(self, subject: str) -> PresenceWatch:
        """Join and leave events of ``subject`` (a literal subject) from now on.
        Watch, then query (:meth:`presence`): every change after the answer
        arrives as an event. Raises ``PERMISSION_DENIED`` or
        ``PRESENCE_LIMIT_EXCEEDED`` (256 watches per connection)."""
        self._check_open()
        max_subject, _, _ = self._limits()
        check_subject(subject, max_subject, wildcards=False)
        watch = PresenceWatch(self, next(self._sids), subject)
        self._watches[watch.watch_id] = watch
        conn = self._live_conn()
        if conn is not None:
            conn.write(self._watch_frame(watch.watch_id, subject, False))
        await self.flush()
        if watch.error is not None:
            raise watch.error
        return watch

    def _stop_watch(self, watch: PresenceWatch) -> None:
        if self._watches.pop(watch.watch_id, None) is None:
            return
        watch._end()
        conn = self._live_conn()
        if conn is not None:
            conn.write(self._watch_frame(watch.watch_id, watch.subject, True))

    async def presence(self, subject: str, *, timeout: Optional[float] = None) -> PresenceSnapshot:
        """Who is on ``subject`` now (at most 1,000 members; ``truncated`` says
        when there are more). Raises :class:`ServerError` ``PERMISSION_DENIED``
        or ``INVALID_SUBJECT``, :class:`RequestTimeoutError` after ``timeout``
        (default ``request_timeout``)."""
        self._check_open()
        max_subject, _, _ = self._limits()
        check_subject(subject, max_subject, wildcards=False)
        qid = next(self._query_ids)
        fut: asyncio.Future[PresenceSnapshot] = self._loop.create_future()
        self._queries[qid] = (subject, fut)
        conn = self._live_conn()
        if conn is not None:
            conn.write(self._query_frame(qid, subject))
        limit = self._request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), limit)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"no presence answer on {subject!r} within {limit} s") from None
        finally:
            self._queries.pop(qid, None)

    def _on_presence(self, frame: PresenceFrame) -> None:
        if isinstance(frame, pb.PresenceReply):
            entry = self._queries.pop(int(frame.request_id), None)
            if entry is None or entry[1].done():
                return
            subject, fut = entry
            if frame.error:
                fut.set_exception(ServerError(int(frame.error), "presence query refused", False, None))
            else:
                fut.set_result(
                    PresenceSnapshot(
                        subject,
                        [PresenceMember.from_wire(m) for m in frame.members],
                        bool(frame.truncated),
                    )
                )
            return
        watch = self._watches.get(int(frame.watch_id))
        if watch is None:
            return
        if frame.action == pb.PRESENCE_ACTION_JOIN:
            action: Any = "join"
        elif frame.action == pb.PRESENCE_ACTION_LEAVE:
            action = "leave"
        else:
            return
        watch._push(
            PresenceEvent(
                frame.subject.decode("ascii", "replace"), action, PresenceMember.from_wire(frame.member)
            )
        )

    async def drain(self) -> None:
        """Unsubscribes everything, waits for the barrier so subscribers get
        what was already sent to them, writes queued publishes, then closes."""
        if self._status == "closed" or self._closing:
            return
        conn = self._conn
        if conn is not None and self._status == "connected":
            for sid in sorted(self._subs):
                conn.write(_frame(unsubscribe=pb.Unsubscribe(sid=sid)))
            try:
                await self.flush(timeout=CLOSE_GRACE)
            except ArqonBusError:
                pass
        await self.close()

    async def close(self) -> None:
        """Closes at once (a best-effort write of what is queued). Idempotent."""
        if self._status == "closed" and self._supervisor is None:
            return
        self._closing = True
        self._wakeup.set()
        conn = self._conn
        sup = self._supervisor
        if conn is not None:
            conn.fail(ClosedError())
        elif sup is not None and sup is not asyncio.current_task():
            # Reconnecting: stop at once, even in the middle of an attempt
            # (an attempt cancelled mid-way closes its socket).
            sup.cancel()
        if sup is not None and sup is not asyncio.current_task():
            try:
                await sup
            except asyncio.CancelledError:
                pass
        self._supervisor = None
        self._shutdown(None)

    async def wait_closed(self) -> Optional[ArqonBusError]:
        """Waits until the client is closed; returns why (None after close())."""
        await self._closed.wait()
        return self._closed_reason

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Client(url={str(self._url)!r}, status={self._status!r})"


async def _await(aw: Awaitable[None]) -> None:
    try:
        await aw
    except Exception:
        log.exception("the on_event callback raised")


connect = Client.connect
