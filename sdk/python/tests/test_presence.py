"""Presence against the real server, when the server under test has the
presence frames (a probe query; otherwise these tests are skipped and say so;
ARQONBUS_REQUIRE_PRESENCE=1 makes that a failure)."""

from __future__ import annotations

import asyncio
import os

import pytest

import arqonbus
from server import LIMIT, Node, Tenant


async def supported(node: Node) -> bool:
    c = await arqonbus.connect(
        node.url, ca_file=node.ca_path, credential_file=node.bootstrap_token_file,
        reconnect=arqonbus.ReconnectPolicy.disabled(),
    )
    try:
        await c.presence("probe.subject", timeout=LIMIT)
        return True
    except (arqonbus.ClosedError, arqonbus.ProtocolError, arqonbus.RequestTimeoutError):
        return False
    except arqonbus.ServerError as e:
        return not e.fatal
    finally:
        await c.close()


@pytest.fixture
async def presence_node(node: Node) -> Node:
    if not await supported(node):
        if os.environ.get("ARQONBUS_REQUIRE_PRESENCE") == "1":
            raise AssertionError("the server under test has no presence frames")
        pytest.skip("the server under test has no presence frames yet")
    return node


async def test_members_events_and_leaving_without_goodbye(presence_node: Node, tenant: Tenant) -> None:
    node = presence_node

    async def connect(name: str) -> arqonbus.Client:
        return await asyncio.wait_for(
            arqonbus.connect(node.url, ca_file=node.ca_path, credential_file=str(tenant.token_file),
                             name=name, kind=arqonbus.ClientKind.AGENT),
            LIMIT,
        )

    a, watcher, b = await connect("agent-a"), await connect("watcher"), await connect("agent-b")
    sub_a = await a.subscribe("room.1")
    await sub_a.track({"role": "reviewer"})
    watch = await watcher.watch_presence("room.1")
    snap = await watcher.presence("room.1", timeout=LIMIT)
    assert [(m.name, m.metadata) for m in snap.members] == [("agent-a", {"role": "reviewer"})]
    assert snap.members[0].kind == arqonbus.ClientKind.AGENT
    sub_b = await b.subscribe("room.1")
    await sub_b.track()
    joined = await watch.next_event(timeout=LIMIT)
    assert (joined.action, joined.member.name) == ("join", "agent-b")
    assert b.server_info is not None and joined.member.client_id == b.server_info.session_id
    await b.close()  # leaves
    left = await watch.next_event(timeout=LIMIT)
    assert (left.action, left.member.name) == ("leave", "agent-b")
    await sub_a.unsubscribe()
    left_a = await watch.next_event(timeout=LIMIT)
    assert (left_a.action, left_a.member.name) == ("leave", "agent-a")
    assert (await watcher.presence("room.1", timeout=LIMIT)).members == []
    await watch.stop()
    await a.close()
    await watcher.close()
