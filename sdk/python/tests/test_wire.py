"""Wire-contract tests: a scripted peer plays the server frame by frame over
plaintext TCP on 127.0.0.1 and checks exactly what the SDK sends and how it
reacts to what the real server cannot easily be made to do (ignore pings,
send an unknown frame kind, drop a connection with a flush in flight)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

import arqonbus
from arqonbus.v1 import client_pb2 as pb
from server import LIMIT

Script = Callable[["Peer"], Awaitable[None]]


class Peer:
    """One accepted connection of the scripted server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def recv(self) -> pb.Frame:
        head = await asyncio.wait_for(self.reader.readexactly(4), LIMIT)
        (n,) = struct.unpack(">I", head)
        frame = pb.Frame()
        frame.ParseFromString(await asyncio.wait_for(self.reader.readexactly(n), LIMIT))
        return frame

    async def recv_kind(self) -> str:
        kind = (await self.recv()).WhichOneof("kind")
        assert kind is not None
        return str(kind)

    def send(self, frame: pb.Frame) -> None:
        body = frame.SerializeToString()
        self.writer.write(struct.pack(">I", len(body)) + body)

    def send_raw(self, body: bytes) -> None:
        self.writer.write(struct.pack(">I", len(body)) + body)

    async def welcome(self) -> pb.Connect:
        first = await self.recv()
        assert first.WhichOneof("kind") == "connect"
        self.send(
            pb.Frame(
                welcome=pb.Welcome(
                    protocol_version=1, server_id="scripted", session_id=7, tenant="t",
                    limits=pb.Limits(max_payload=1024, max_frame=4096, max_headers=4,
                                     max_subject_len=64),
                )
            )
        )
        return first.connect

    def close(self) -> None:
        self.writer.close()


@asynccontextmanager
async def scripted(*scripts: Script) -> AsyncIterator[str]:
    """Serves one script per accepted connection, in order; yields the URL."""
    queue = list(scripts)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not queue:
            writer.close()
            return
        script = queue.pop(0)
        await script(Peer(reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        server.close()


class Events:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[arqonbus.Event] = asyncio.Queue()

    def __call__(self, event: arqonbus.Event) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> arqonbus.Event:
        return await asyncio.wait_for(self.queue.get(), LIMIT)


async def test_connect_carries_the_options_and_server_pings_are_answered() -> None:
    seen: dict[str, object] = {}
    finished = asyncio.Event()

    async def script(p: Peer) -> None:
        connect = await p.welcome()
        seen.update(
            name=connect.client_name, kind=connect.client_kind, no_echo=connect.no_echo,
            version=connect.protocol_version, credential=connect.credential,
        )
        p.send(pb.Frame(ping=pb.Ping()))
        seen["answer"] = await p.recv_kind()
        finished.set()
        await p.reader.read()  # until the client closes

    async with scripted(script) as url:
        c = await arqonbus.connect(url, credential="abt_x", name="n", kind=arqonbus.ClientKind.DEVICE, no_echo=True)
        await asyncio.wait_for(finished.wait(), LIMIT)
        assert seen == {"name": "n", "kind": pb.CLIENT_KIND_DEVICE, "no_echo": True, "version": 1,
                        "credential": "abt_x", "answer": "pong"}
        assert c.server_info is not None and c.server_info.limits.max_payload == 1024
        with pytest.raises(arqonbus.PayloadTooLargeError):
            await c.publish("a", b"x" * 1025)  # the Welcome's limits apply
        await c.close()


async def test_a_server_that_answers_no_pings_is_stale() -> None:
    async def script(p: Peer) -> None:
        await p.welcome()
        await p.reader.read()  # reads everything, answers nothing

    events = Events()
    async with scripted(script) as url:
        c = await arqonbus.connect(
            url, credential="abt_x", ping_interval=0.05, on_event=events,
            reconnect=arqonbus.ReconnectPolicy.disabled(),
        )
        lost = await events.next()
        assert isinstance(lost, arqonbus.Disconnected)
        assert isinstance(lost.reason, arqonbus.StaleConnectionError)
        closed = await events.next()
        assert isinstance(closed, arqonbus.Closed) and c.is_closed


async def test_an_unknown_frame_kind_is_a_protocol_error() -> None:
    async def script(p: Peer) -> None:
        await p.welcome()
        p.send_raw(b"\xfa\x06\x00")  # field 111, empty: no kind this client knows
        await p.reader.read()

    events = Events()
    async with scripted(script) as url:
        await arqonbus.connect(
            url, credential="abt_x", on_event=events, reconnect=arqonbus.ReconnectPolicy.disabled()
        )
        lost = await events.next()
        assert isinstance(lost, arqonbus.Disconnected)
        assert isinstance(lost.reason, arqonbus.ProtocolError)


async def test_after_a_reconnect_subscriptions_then_flushes_then_buffered_publishes() -> None:
    first_done = asyncio.Event()
    second: list[str] = []
    second_sub: list[tuple[int, bytes, bytes]] = []
    second_unsub: list[tuple[int, int]] = []
    replayed = asyncio.Event()

    async def first(p: Peer) -> None:
        await p.welcome()
        assert await p.recv_kind() == "subscribe"
        assert await p.recv_kind() == "ping"
        p.send(pb.Frame(pong=pb.Pong()))  # subscribe() returns
        assert await p.recv_kind() == "unsubscribe"  # unsubscribe_after(2)
        assert await p.recv_kind() == "ping"  # a flush the server never answers
        first_done.set()
        p.close()

    async def second_script(p: Peer) -> None:
        await p.welcome()
        for _ in range(4):
            f = await p.recv()
            kind = f.WhichOneof("kind")
            assert kind is not None
            second.append(kind)
            if kind == "subscribe":
                second_sub.append((f.subscribe.sid, f.subscribe.pattern, f.subscribe.queue_group))
            if kind == "unsubscribe":
                second_unsub.append((f.unsubscribe.sid, f.unsubscribe.after_messages))
            if kind == "ping":
                p.send(pb.Frame(pong=pb.Pong()))
        replayed.set()
        await p.reader.read()

    events = Events()
    async with scripted(first, second_script) as url:
        c = await arqonbus.connect(
            url, credential="abt_x", on_event=events,
            reconnect=arqonbus.ReconnectPolicy(initial_delay=0.01, max_delay=0.05),
        )
        sub = await asyncio.wait_for(c.subscribe("a.>", queue="q"), LIMIT)
        await sub.unsubscribe_after(2)
        flushed = asyncio.create_task(c.flush())
        await asyncio.wait_for(first_done.wait(), LIMIT)
        lost = await events.next()
        assert isinstance(lost, arqonbus.Disconnected)
        await c.publish("a.b", b"buffered")  # while disconnected
        await asyncio.wait_for(replayed.wait(), LIMIT)
        await asyncio.wait_for(flushed, LIMIT)  # the lost flush was repeated and answered
        assert second == ["subscribe", "unsubscribe", "ping", "publish"]
        assert second_sub == [(sub.sid, b"a.>", b"q")]
        assert second_unsub == [(sub.sid, 2)]
        await c.close()


async def test_close_while_reconnecting_returns_at_once() -> None:
    async def script(p: Peer) -> None:
        await p.welcome()
        p.close()

    events = Events()
    async with scripted(script) as url:  # later connections are closed at once
        c = await arqonbus.connect(
            url, credential="abt_x", on_event=events,
            reconnect=arqonbus.ReconnectPolicy(initial_delay=0.01, max_delay=0.02),
        )
        assert isinstance(await events.next(), arqonbus.Disconnected)
        assert c.status == "reconnecting"
        flushed = asyncio.create_task(c.flush())
        await asyncio.wait_for(c.close(), LIMIT)
        assert c.is_closed
        with pytest.raises(arqonbus.ClosedError):
            await asyncio.wait_for(flushed, LIMIT)
