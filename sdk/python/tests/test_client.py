"""The SDK against a real ``arqonbus serve`` (two shards, TLS with the
generated CA). Every wait is bounded by ``within``; nothing asserts on time."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable
from typing import Any, Optional, TypeVar

import pytest

import arqonbus
from server import LIMIT, Node, Tenant

T = TypeVar("T")


async def within(aw: Awaitable[T], what: str = "the operation") -> T:
    try:
        return await asyncio.wait_for(aw, LIMIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what} did not finish within {LIMIT} s") from None


class Events:
    """Collects a client's events; ``wait`` for the first of a type."""

    def __init__(self) -> None:
        self.seen: list[arqonbus.Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: arqonbus.Event) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait(self, kind: type[Any], count: int = 1) -> Any:
        async def find() -> Any:
            while True:
                found = [e for e in self.seen if isinstance(e, kind)]
                if len(found) >= count:
                    return found[count - 1]
                self._changed.clear()
                await self._changed.wait()

        return await within(find(), f"event {kind.__name__}")


async def client(
    node: Node, tenant: Optional[Tenant] = None, **kw: Any
) -> arqonbus.Client:
    token = str(tenant.token_file) if tenant else node.bootstrap_token_file
    return await within(
        arqonbus.connect(node.url, ca_file=node.ca_path, credential_file=token, **kw), "connect"
    )


async def test_connect_shows_the_welcome(node: Node, tenant: Tenant) -> None:
    c = await client(node, tenant, name="py-test")
    info = c.server_info
    assert info is not None and info.tenant == tenant.name and info.protocol_version == 1
    assert info.protocol_minor >= 3
    assert info.limits.max_payload > 0 and info.shard in (0, 1)
    assert c.is_connected
    conns = node.ctl("connections", "list")["connections"]
    mine = [x for x in conns if int(x["tenant_id"]) == tenant.tenant_id]
    assert mine and mine[0]["client_name"] == "py-test" and mine[0]["client_kind"] == "agent"
    await c.close()
    await c.close()  # idempotent
    assert c.is_closed
    with pytest.raises(arqonbus.ClosedError):
        await c.publish("x", b"y")


async def test_a_bad_credential_is_a_typed_error(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="arqonbus")
    with pytest.raises(arqonbus.AuthenticationFailedError) as e:
        await within(
            arqonbus.connect(node.url, ca_file=node.ca_path, credential="abt_not-a-real-token")
        )
    assert not e.value.retryable
    assert "abt_not" not in str(e.value)


async def test_no_log_line_ever_shows_a_token_or_a_payload(
    node: Node, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="arqonbus")
    token = tenant.token()
    events = Events()
    c = await client(node, tenant, on_event=events)
    sub = await within(c.subscribe("secret.>"))
    await c.publish("secret.x", b"payload-s3cr3t", headers={"authorization": "Bearer h3ad3r"})
    await sub.next_msg(timeout=LIMIT)
    assert c.server_info is not None
    node.ctl("connections", "kick", str(c.server_info.session_id))
    await events.wait(arqonbus.Reconnected)
    await c.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "connection lost" in text  # the log was captured
    for secret in (token, "payload-s3cr3t", "h3ad3r"):
        assert secret not in text


async def test_the_wrong_ca_is_refused(node: Node, tmp_path: Any) -> None:
    other = Node()
    try:
        with pytest.raises(arqonbus.TlsError):
            await within(
                arqonbus.connect(
                    node.url, ca_file=other.ca_path, credential_file=node.bootstrap_token_file
                )
            )
    finally:
        other.stop()
    with pytest.raises(arqonbus.OptionsError):
        await arqonbus.connect(node.url, credential="abt_x")  # tls:// needs a CA


async def test_signed_tokens_and_credential_providers(node: Node, tenant: Tenant) -> None:
    signed = node.credential(tenant.name, tenant.tenant_id, tenant.principal_id, signed_ttl="1h")
    assert signed.token().startswith("abs_")
    calls = 0

    async def provide() -> str:
        nonlocal calls
        calls += 1
        return signed.token()

    c = await within(arqonbus.connect(node.url, ca_file=node.ca_path, credential=provide))
    assert calls == 1 and c.server_info is not None and c.server_info.tenant == tenant.name
    sub = await within(c.subscribe("signed.>"))
    await c.publish("signed.ok", "text payload")
    msg = await sub.next_msg(timeout=LIMIT)
    assert msg.text() == "text payload"
    await c.close()


async def test_pub_sub_across_shards_wildcards_headers_and_order(node: Node, tenant: Tenant) -> None:
    subs_client = await client(node, tenant)
    pub_client = await client(node, tenant)
    wild = await within(subs_client.subscribe("orders.*.created"))
    full = await within(subs_client.subscribe("orders.>"))
    for i in range(100):
        await pub_client.publish("orders.eu.created", str(i), headers=[("seq", str(i)), ("k", "v")])
    await pub_client.publish("orders.us.shipped", b"\x00\xff")
    await within(pub_client.flush())
    for i in range(100):
        m = await wild.next_msg(timeout=LIMIT)
        assert (m.subject, m.text(), m.header("seq"), m.header("k")) == (
            "orders.eu.created", str(i), str(i), "v"
        )
    got = [(await full.next_msg(timeout=LIMIT)).data for _ in range(101)]
    assert got[-1] == b"\x00\xff" and got[:3] == [b"0", b"1", b"2"]
    assert "payload=<" in repr(m) and "v'" not in repr(m)
    await subs_client.close()
    await pub_client.close()


async def test_a_queue_group_gives_each_message_to_exactly_one_member(
    node: Node, tenant: Tenant
) -> None:
    members = [await client(node, tenant) for _ in range(3)]
    subs = [await within(m.subscribe("jobs.run", queue="workers")) for m in members]
    plain = await within(members[0].subscribe("jobs.run"))
    pub = await client(node, tenant)
    for i in range(60):
        await pub.publish("jobs.run", str(i))
    await within(pub.flush())
    for _ in range(60):
        await plain.next_msg(timeout=LIMIT)  # the plain subscriber sees all 60
    got: list[str] = []
    arrived = asyncio.Event()

    async def read(s: arqonbus.Subscription) -> None:
        async for msg in s:
            got.append(msg.text())
            if len(got) >= 60:
                arrived.set()

    readers = [asyncio.create_task(read(s)) for s in subs]
    await within(arrived.wait(), "60 queue-group deliveries")
    for m in members:
        await within(m.flush())  # anything extra would have arrived by now
    seen = collections.Counter(got)
    assert sorted(seen) == sorted(str(i) for i in range(60))
    assert set(seen.values()) == {1}
    for r in readers:
        r.cancel()
    for m in [*members, pub]:
        await m.close()


async def test_request_reply_no_responders_and_timeout(node: Node, tenant: Tenant) -> None:
    responder = await client(node, tenant)
    requester = await client(node, tenant)
    sub = await within(responder.subscribe("svc.echo", queue="echo"))

    async def serve() -> None:
        async for msg in sub:
            await msg.respond(b"echo:" + msg.data, headers={"served-by": "py"})

    task = asyncio.create_task(serve())
    reply = await within(requester.request("svc.echo", b"hi", timeout=LIMIT))
    assert reply.data == b"echo:hi" and reply.header("served-by") == "py"
    replies = await within(
        asyncio.gather(*(requester.request("svc.echo", str(i), timeout=LIMIT) for i in range(20)))
    )
    assert [r.text() for r in replies] == [f"echo:{i}" for i in range(20)]

    with pytest.raises(arqonbus.NoRespondersError) as nr:
        await within(requester.request("svc.nobody", b"x", timeout=LIMIT))
    assert nr.value.retryable

    silent = await within(responder.subscribe("svc.silent"))
    with pytest.raises(arqonbus.RequestTimeoutError):
        await requester.request("svc.silent", b"x", timeout=0.3)
    assert (await silent.next_msg(timeout=LIMIT)).reply is not None
    task.cancel()
    await responder.close()
    await requester.close()


async def test_tenants_with_identical_subjects_never_meet(node: Node) -> None:
    a, b = node.tenant("iso-a"), node.tenant("iso-b")
    ca, cb = await client(node, a), await client(node, b)
    sa = await within(ca.subscribe("shared.>"))
    sb = await within(cb.subscribe("shared.>"))
    await ca.publish("shared.x", b"from a")
    await cb.publish("shared.x", b"from b")
    await within(ca.flush())
    await within(cb.flush())
    assert (await sa.next_msg(timeout=LIMIT)).data == b"from a"
    assert (await sb.next_msg(timeout=LIMIT)).data == b"from b"
    await within(ca.flush())
    await within(cb.flush())
    assert sa.pending() == 0 and sb.pending() == 0
    await ca.close()
    await cb.close()


async def test_invalid_input_is_refused_before_sending(node: Node, tenant: Tenant) -> None:
    c = await client(node, tenant)
    assert c.server_info is not None
    with pytest.raises(arqonbus.InvalidSubjectError):
        await c.publish("a.*", b"")
    with pytest.raises(arqonbus.InvalidSubjectError):
        await c.subscribe("$SYS.>")
    with pytest.raises(arqonbus.InvalidQueueGroupError):
        await c.subscribe("a", queue="bad group")
    with pytest.raises(arqonbus.InvalidHeadersError):
        await c.publish("a", b"", headers={"bad key": "v"})
    with pytest.raises(arqonbus.PayloadTooLargeError):
        await c.publish("a", b"x" * (c.server_info.limits.max_payload + 1))
    await within(c.flush())
    assert c.is_connected
    await c.close()


async def test_refused_subscriptions_carry_their_code_and_the_connection_lives_on(
    node: Node, tenant: Tenant
) -> None:
    node.ctl(
        "policies", "put", "--tenant", str(tenant.tenant_id), "--principal",
        str(tenant.principal_id), "--pub-allow", "orders.>", "--sub-allow", "orders.>",
        "--sub-allow", "_INBOX.>",
    )
    events = Events()
    c = await client(node, tenant, on_event=events)
    with pytest.raises(arqonbus.ServerError) as e:
        await within(c.subscribe("billing.>"))
    assert e.value.code_name == "PERMISSION_DENIED" and not e.value.fatal
    await events.wait(arqonbus.ServerErrorEvent)
    await c.publish("billing.x", b"refused")  # the server refuses it, not fatal
    err = await events.wait(arqonbus.ServerErrorEvent, 2)
    assert err.error.code_name == "PERMISSION_DENIED"
    sub = await within(c.subscribe("orders.>"))
    await c.publish("orders.1", b"ok")
    assert (await sub.next_msg(timeout=LIMIT)).data == b"ok"
    assert c.is_connected
    await c.close()


async def test_unsubscribe_after_n_ends_the_iteration(node: Node, tenant: Tenant) -> None:
    c = await client(node, tenant)
    other = await client(node, tenant)
    sub = await within(c.subscribe("count.>"))
    await sub.unsubscribe_after(3)
    for i in range(10):
        await other.publish("count.x", str(i))
    await within(other.flush())
    async def read_all() -> list[str]:
        return [m.text() async for m in sub]

    got = await within(read_all(), "the subscription's end")
    assert got == ["0", "1", "2"] and not sub.active
    s2 = await within(c.subscribe("count.>"))
    await s2.unsubscribe()
    with pytest.raises(StopAsyncIteration):
        await s2.next_msg(timeout=LIMIT)
    await c.close()
    await other.close()


async def test_a_kicked_client_reconnects_and_its_subscriptions_come_back(
    node: Node, tenant: Tenant
) -> None:
    events = Events()
    c = await client(node, tenant, on_event=events, name="kick-me")
    sub = await within(c.subscribe("kick.>"))
    pub = await client(node, tenant)
    await pub.publish("kick.before", b"1")
    assert (await sub.next_msg(timeout=LIMIT)).data == b"1"
    assert c.server_info is not None
    node.ctl("connections", "kick", str(c.server_info.session_id))
    lost = await events.wait(arqonbus.Disconnected)
    assert isinstance(lost.reason, arqonbus.ServerError)
    assert lost.reason.code_name == "DISCONNECTED_BY_OPERATOR"
    await events.wait(arqonbus.Reconnected)
    await within(c.flush())  # resubscription is in effect
    await pub.publish("kick.after", b"2")
    assert (await sub.next_msg(timeout=LIMIT)).data == b"2"
    await c.publish("kick.self", b"3")
    assert (await sub.next_msg(timeout=LIMIT)).data == b"3"
    await c.close()
    await pub.close()


async def test_a_revoked_credential_closes_the_client(node: Node, tenant: Tenant) -> None:
    events = Events()
    c = await client(
        node, tenant, on_event=events,
        reconnect=arqonbus.ReconnectPolicy(initial_delay=0.01, max_delay=0.1),
    )
    sub = await within(c.subscribe("rev.>"))
    node.ctl("credentials", "revoke", str(tenant.credential_id))
    closed = await events.wait(arqonbus.Closed)
    assert isinstance(closed.reason, arqonbus.AuthenticationFailedError)
    assert c.is_closed and not closed.reason.retryable
    with pytest.raises(arqonbus.AuthenticationFailedError):
        await sub.next_msg(timeout=LIMIT)
    with pytest.raises(arqonbus.ClosedError):
        await c.flush()


async def test_drain_delivers_what_was_sent_then_closes(node: Node, tenant: Tenant) -> None:
    c = await client(node, tenant)
    pub = await client(node, tenant)
    sub = await within(c.subscribe("drain.>"))
    for i in range(50):
        await pub.publish("drain.x", str(i))
    await within(pub.flush())
    await within(c.drain())
    assert c.is_closed
    got = [m.text() async for m in sub]
    assert got == [str(i) for i in range(50)]
    await pub.close()


async def test_a_drain_notice_then_a_restart_reconnects_and_resubscribes() -> None:
    node = Node()
    try:
        events = Events()
        c = await client(
            node, on_event=events,
            reconnect=arqonbus.ReconnectPolicy(initial_delay=0.05, max_delay=0.2),
        )
        sub = await within(c.subscribe("restart.>"))
        node.terminate()
        drain = await events.wait(arqonbus.ServerDraining)
        assert drain.deadline > 0
        await events.wait(arqonbus.Disconnected)
        node.wait_exit()
        # Buffered while disconnected, sent after the resubscription.
        await c.publish("restart.buffered", b"kept")
        flushed = asyncio.create_task(c.flush())
        node.start()
        await events.wait(arqonbus.Reconnected)
        await within(flushed, "a flush pending across the reconnect")
        assert (await sub.next_msg(timeout=LIMIT)).data == b"kept"
        other = await client(node)
        await other.publish("restart.after", b"again")
        assert (await sub.next_msg(timeout=LIMIT)).data == b"again"
        await other.close()
        await c.close()
    finally:
        node.stop()


async def test_publishes_fail_fast_when_the_reconnect_buffer_is_full() -> None:
    node = Node()
    try:
        events = Events()
        c = await client(
            node, on_event=events, reconnect_buffer_size=1024,
            reconnect=arqonbus.ReconnectPolicy(initial_delay=0.05, max_delay=0.2),
        )
        node.kill()
        await events.wait(arqonbus.Disconnected)
        await c.publish("x", b"a" * 500)
        with pytest.raises(arqonbus.ReconnectBufferFullError):
            await c.publish("x", b"a" * 600)
        await c.close()
        assert isinstance(events.seen[-1], arqonbus.Closed)
    finally:
        node.stop()


async def test_an_expired_signed_token_is_replaced_by_the_provider_on_reconnect(
    node: Node, tenant: Tenant
) -> None:
    """A session whose signed token expires ends with CREDENTIAL_REVOKED; the
    client asks its credential function for a fresh token and resubscribes."""
    minted: list[int] = []

    async def mint() -> str:
        # The first token lives 2 s; the ones that replace it an hour, so
        # the rest of the test cannot race a second expiry.
        fresh = await asyncio.to_thread(
            node.credential, tenant.name, tenant.tenant_id, tenant.principal_id,
            signed_ttl="2s" if not minted else "1h",
        )
        minted.append(fresh.credential_id)
        return fresh.token()

    events = Events()
    c = await within(
        arqonbus.connect(
            node.url, ca_file=node.ca_path, credential=mint, on_event=events,
            reconnect=arqonbus.ReconnectPolicy(initial_delay=0.05, max_delay=0.2),
        )
    )
    sub = await within(c.subscribe("expiry.>"))
    lost = await events.wait(arqonbus.Disconnected)
    assert isinstance(lost.reason, arqonbus.ServerError)
    assert lost.reason.code_name == "CREDENTIAL_REVOKED"
    await events.wait(arqonbus.Reconnected)
    assert len(minted) >= 2 and len(set(minted)) == len(minted)
    other = await client(node, tenant)
    await other.publish("expiry.after", b"still here")
    assert (await sub.next_msg(timeout=LIMIT)).data == b"still here"
    await c.close()
    await other.close()


async def test_a_full_subscription_drops_and_counts_without_blocking(
    node: Node, tenant: Tenant
) -> None:
    events = Events()
    c = await client(node, tenant, on_event=events)
    other = await client(node, tenant)
    sub = await within(c.subscribe("flood.>", capacity=5))
    for i in range(50):
        await other.publish("flood.x", str(i))
    await within(other.flush())
    await within(c.flush())  # the reader kept going: pongs still arrive
    slow = await events.wait(arqonbus.SlowConsumer)
    assert slow.sid == sub.sid
    assert sub.dropped == 45
    assert [(await sub.next_msg(timeout=LIMIT)).text() for _ in range(5)] == ["0", "1", "2", "3", "4"]
    await c.close()
    await other.close()
