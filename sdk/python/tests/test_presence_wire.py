"""Presence against a scripted peer: the frames the SDK sends (kinds 11..13
by field number), how it reads replies and events (14, 15), refusals, and
what it re-sends after a reconnect."""

from __future__ import annotations

import asyncio
import struct

import pytest

import arqonbus
from arqonbus import presence as wire
from arqonbus.v1 import client_pb2 as pb
from server import LIMIT
from test_wire import Events, Peer, scripted


async def recv_raw(p: Peer) -> tuple[int, bytes]:
    head = await asyncio.wait_for(p.reader.readexactly(4), LIMIT)
    (n,) = struct.unpack(">I", head)
    body = await asyncio.wait_for(p.reader.readexactly(n), LIMIT)
    decoded = wire.decode(body)
    assert decoded is not None, body
    return decoded


def send_presence(p: Peer, field: int, msg: pb.PresenceReply | pb.PresenceEvent) -> None:
    frame = wire.encode(field, msg.SerializeToString())
    p.writer.write(frame)


def member(cid: int, name: str, **md: str) -> pb.PresenceMember:
    return pb.PresenceMember(client_id=cid, client_kind=pb.CLIENT_KIND_HUMAN, client_name=name, metadata=md)


def test_codec_round_trips() -> None:
    body = pb.PresenceQuery(request_id=300, subject=b"room.1").SerializeToString()
    framed = wire.encode(wire.QUERY, body)
    assert struct.unpack(">I", framed[:4])[0] == len(framed) - 4
    assert wire.decode(framed[4:]) == (wire.QUERY, body)
    assert wire.decode(b"\x08\x01") is None  # a varint field, not a message
    with pytest.raises(arqonbus.InvalidHeadersError):
        wire.check_metadata({f"k{i}": "v" for i in range(9)})
    with pytest.raises(arqonbus.InvalidHeadersError):
        wire.check_metadata({"k": "v" * 129})
    with pytest.raises(arqonbus.InvalidHeadersError):
        wire.check_metadata({"bad key": "v"})


async def test_track_watch_query_events_and_replay() -> None:
    first_done = asyncio.Event()
    may_close = asyncio.Event()
    replay: list[tuple[str, object]] = []
    replayed = asyncio.Event()

    async def first(p: Peer) -> None:
        await p.welcome()
        assert await p.recv_kind() == "subscribe"
        assert await p.recv_kind() == "ping"
        p.send(pb.Frame(pong=pb.Pong()))
        field, body = await recv_raw(p)
        assert field == wire.TRACK
        track = pb.PresenceTrack.FromString(body)
        assert dict(track.metadata) == {"role": "reviewer"}
        assert await p.recv_kind() == "ping"
        p.send(pb.Frame(pong=pb.Pong()))
        field, body = await recv_raw(p)
        assert field == wire.WATCH
        watch = pb.PresenceWatch.FromString(body)
        assert (watch.subject, watch.stop) == (b"room.1", False)
        assert await p.recv_kind() == "ping"
        p.send(pb.Frame(pong=pb.Pong()))
        field, body = await recv_raw(p)
        assert field == wire.QUERY
        query = pb.PresenceQuery.FromString(body)
        send_presence(p, wire.REPLY, pb.PresenceReply(
            request_id=query.request_id, subject=b"room.1",
            members=[member(7, "me", role="reviewer"), member(9, "ann")], truncated=False,
        ))
        send_presence(p, wire.EVENT, pb.PresenceEvent(
            watch_id=watch.watch_id, subject=b"room.1", action=pb.PRESENCE_ACTION_LEAVE,
            member=member(9, "ann"),
        ))
        first_done.set()
        await may_close.wait()  # the client has read everything: drop it
        p.close()

    async def second(p: Peer) -> None:
        await p.welcome()
        assert await p.recv_kind() == "subscribe"
        field, body = await recv_raw(p)
        replay.append(("track", dict(pb.PresenceTrack.FromString(body).metadata)))
        field, body = await recv_raw(p)
        replay.append(("watch", pb.PresenceWatch.FromString(body).subject))
        replayed.set()
        await p.reader.read()

    events = Events()
    async with scripted(first, second) as url:
        c = await arqonbus.connect(
            url, credential="abt_x", on_event=events,
            reconnect=arqonbus.ReconnectPolicy(initial_delay=0.01, max_delay=0.05),
        )
        sub = await asyncio.wait_for(c.subscribe("room.1"), LIMIT)
        await asyncio.wait_for(sub.track({"role": "reviewer"}), LIMIT)
        watch = await asyncio.wait_for(c.watch_presence("room.1"), LIMIT)
        snap = await asyncio.wait_for(c.presence("room.1"), LIMIT)
        assert [(m.client_id, m.name, m.metadata) for m in snap.members] == [
            (7, "me", {"role": "reviewer"}), (9, "ann", {})
        ]
        assert snap.members[0].kind == arqonbus.ClientKind.HUMAN and not snap.truncated
        ev = await watch.next_event(timeout=LIMIT)
        assert (ev.action, ev.member.client_id, ev.subject) == ("leave", 9, "room.1")
        await asyncio.wait_for(first_done.wait(), LIMIT)
        may_close.set()
        assert isinstance(await events.next(), arqonbus.Disconnected)
        await asyncio.wait_for(replayed.wait(), LIMIT)
        assert replay == [("track", {"role": "reviewer"}), ("watch", b"room.1")]
        await c.close()
        with pytest.raises(StopAsyncIteration):
            await watch.next_event(timeout=LIMIT)


async def test_refusals_are_typed_and_a_refused_listing_keeps_the_subscription() -> None:
    async def script(p: Peer) -> None:
        await p.welcome()
        assert await p.recv_kind() == "subscribe"
        assert await p.recv_kind() == "ping"
        p.send(pb.Frame(pong=pb.Pong()))
        field, body = await recv_raw(p)
        sid = pb.PresenceTrack.FromString(body).sid
        p.send(pb.Frame(error=pb.Error(code=pb.ERROR_CODE_PRESENCE_LIMIT_EXCEEDED, message="full", sid=sid)))
        assert await p.recv_kind() == "ping"
        p.send(pb.Frame(pong=pb.Pong()))
        field, body = await recv_raw(p)
        wid = pb.PresenceWatch.FromString(body).watch_id
        p.send(pb.Frame(error=pb.Error(code=pb.ERROR_CODE_PERMISSION_DENIED, message="no", sid=wid)))
        assert await p.recv_kind() == "ping"
        p.send(pb.Frame(pong=pb.Pong()))
        field, body = await recv_raw(p)
        qid = pb.PresenceQuery.FromString(body).request_id
        send_presence(p, wire.REPLY, pb.PresenceReply(request_id=qid, error=pb.ERROR_CODE_PERMISSION_DENIED))
        p.send(pb.Frame(message=pb.Message(sid=sid, subject=b"room.2", payload=b"still")))
        await p.reader.read()

    async with scripted(script) as url:
        c = await arqonbus.connect(url, credential="abt_x")
        sub = await asyncio.wait_for(c.subscribe("room.2"), LIMIT)
        with pytest.raises(arqonbus.ServerError) as full:
            await asyncio.wait_for(sub.track(), LIMIT)
        assert full.value.code_name == "PRESENCE_LIMIT_EXCEEDED" and sub.active
        with pytest.raises(arqonbus.ServerError) as denied:
            await asyncio.wait_for(c.watch_presence("room.2"), LIMIT)
        assert denied.value.code_name == "PERMISSION_DENIED"
        with pytest.raises(arqonbus.ServerError) as q:
            await asyncio.wait_for(c.presence("room.2"), LIMIT)
        assert q.value.code_name == "PERMISSION_DENIED" and not q.value.fatal
        assert (await sub.next_msg(timeout=LIMIT)).data == b"still"
        with pytest.raises(arqonbus.InvalidSubjectError):
            await c.watch_presence("room.*")
        await c.close()
