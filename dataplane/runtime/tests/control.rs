//! Live configuration on the data plane, over real sockets and two shards:
//! new snapshots revoke sessions and change permissions, quotas and rate
//! limits bind across shards, slow-consumer policies, kicks and drains.
//! Snapshots are pushed with `DataPlane::apply`, as the control plane does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use arqonbus_core::auth::{CredentialHash, sign_token};
use arqonbus_core::limits::Limits;
use arqonbus_core::placement::TenantPlacement;
use arqonbus_core::policy::{PolicyRules, compile, parse_pattern};
use arqonbus_core::snapshot::{
    ConfigSnapshot, CredentialEntry, PrincipalEntry, Quotas, SlowConsumerPolicy, TenantEntry,
};
use arqonbus_core::{CredentialId, PrincipalId, TenantId};
use arqonbus_dataplane::DataPlaneConfig;
use arqonbus_proto::v1::{self, ErrorCode, SignedTokenClaims, frame::Kind};
use bytes::Bytes;
use common::{RawClient, TOKEN_A, TOKEN_B, start};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// (principal id, quotas, policy, credentials as (id, token, expiry)).
type PrincipalSpec = (
    u64,
    Quotas,
    Option<PolicyRules>,
    Vec<(u64, String, Option<i64>)>,
);

/// A tenant "a" (id 1) with principals and credentials described by `ps`,
/// and the plain tenant "b" (id 2) with `TOKEN_B`.
struct Spec {
    epoch: u64,
    limits: Limits,
    tenant_quotas: Quotas,
    verify_key: Option<[u8; 32]>,
    principals: Vec<PrincipalSpec>,
    signed: Vec<(u64, u64)>,
}

impl Spec {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            limits: Limits::default(),
            tenant_quotas: Quotas::default(),
            verify_key: None,
            principals: vec![(1, Quotas::default(), None, vec![(1, TOKEN_A.into(), None)])],
            signed: vec![],
        }
    }

    fn build(&self) -> Arc<ConfigSnapshot> {
        let mut c = ConfigSnapshot::new(self.epoch, self.limits.clone());
        c.insert_tenant(TenantEntry {
            id: TenantId(1),
            name: "a".into(),
            quotas: self.tenant_quotas.clone(),
            verify_key: self.verify_key,
            // These tests place connections on chosen shards themselves.
            placement: TenantPlacement::Spread,
        });
        c.insert_tenant(TenantEntry {
            id: TenantId(2),
            name: "b".into(),
            quotas: Quotas::default(),
            verify_key: None,
            // These tests place connections on chosen shards themselves.
            placement: TenantPlacement::Spread,
        });
        for (pid, quotas, rules, creds) in &self.principals {
            c.insert_principal(PrincipalEntry {
                id: PrincipalId(*pid),
                tenant: TenantId(1),
                name: format!("p{pid}").into(),
                roles: vec![],
                quotas: quotas.clone(),
                permissions: Arc::new(compile(rules.iter())),
            })
            .unwrap();
            for (cid, token, expires) in creds {
                c.insert_bearer(
                    CredentialHash::of(token),
                    CredentialEntry {
                        id: CredentialId(*cid),
                        principal: PrincipalId(*pid),
                        expires_at_unix: *expires,
                    },
                )
                .unwrap();
            }
        }
        for (cid, pid) in &self.signed {
            c.insert_signed(CredentialEntry {
                id: CredentialId(*cid),
                principal: PrincipalId(*pid),
                expires_at_unix: None,
            })
            .unwrap();
        }
        c.insert_principal(PrincipalEntry {
            id: PrincipalId(200),
            tenant: TenantId(2),
            name: "b".into(),
            roles: vec![],
            quotas: Quotas::default(),
            permissions: Arc::new(compile([])),
        })
        .unwrap();
        c.insert_bearer(
            CredentialHash::of(TOKEN_B),
            CredentialEntry {
                id: CredentialId(200),
                principal: PrincipalId(200),
                expires_at_unix: None,
            },
        )
        .unwrap();
        Arc::new(c)
    }

    fn config(&self) -> DataPlaneConfig {
        let mut c = DataPlaneConfig::new("127.0.0.1:0".parse().unwrap(), 2, self.build());
        c.cpus = vec![0, 1];
        c.tick = Duration::from_millis(20);
        c
    }
}

fn p(s: &str) -> arqonbus_core::subject::Pattern {
    parse_pattern(s).unwrap()
}

fn expect_error(c: &mut RawClient, code: ErrorCode, close: bool) -> v1::Error {
    match c.next() {
        Some(Kind::Error(e)) => {
            assert_eq!(ErrorCode::try_from(e.code).unwrap(), code, "{e:?}");
            assert_eq!(e.close, close, "{e:?}");
            e
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn expect_closed(c: &mut RawClient) {
    while let Some(k) = c.recv() {
        assert!(
            matches!(k, Kind::Ping(_)),
            "unexpected frame before close: {k:?}"
        );
    }
}

fn connect_with(addr: std::net::SocketAddr, token: &str) -> (RawClient, Option<Kind>) {
    let mut c = RawClient::open(addr);
    c.send(&Kind::Connect(v1::Connect {
        protocol_version: 1,
        credential: token.into(),
        ..Default::default()
    }));
    let first = c.recv();
    (c, first)
}

/// Connects until a `Welcome` comes back (a reset or refusal is retried).
fn welcome_retrying(addr: std::net::SocketAddr) -> v1::Welcome {
    use std::io::{Read as _, Write as _};
    for _ in 0..100 {
        let Ok(mut sock) = std::net::TcpStream::connect(addr) else {
            continue;
        };
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut out = Vec::new();
        arqonbus_proto::codec::encode(
            &Kind::Connect(v1::Connect {
                protocol_version: 1,
                credential: TOKEN_A.into(),
                ..Default::default()
            }),
            &mut out,
        )
        .unwrap();
        if sock.write_all(&out).is_err() {
            continue;
        }
        let mut buf = bytes::BytesMut::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some(kind)) = arqonbus_proto::codec::decode(&mut buf, u32::MAX) {
                if let Kind::Welcome(w) = kind {
                    return w;
                }
                break;
            }
            match sock.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    }
    panic!("no Welcome in 100 attempts");
}

#[test]
fn revoking_a_credential_closes_its_live_sessions_only() {
    let mut spec = Spec::new(1);
    spec.principals[0].3.push((2, "abt_second".into(), None));
    let dp = start(&spec.config());
    let addr = dp.local_addr();
    let mut doomed = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let mut other_shard = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    let mut survivor = RawClient::connect(addr, "abt_second");
    let mut b = RawClient::connect(addr, TOKEN_B);

    // Revoke TOKEN_A (credential 1).
    let mut next = Spec::new(2);
    next.principals[0].3 = vec![(2, "abt_second".into(), None)];
    dp.apply(&next.build()).unwrap();
    for c in [&mut doomed, &mut other_shard] {
        expect_error(c, ErrorCode::CredentialRevoked, true);
        expect_closed(c);
    }
    survivor.flush();
    b.flush();
    let (_, first) = connect_with(addr, TOKEN_A);
    assert!(
        matches!(first, Some(Kind::Error(e)) if e.code == i32::from(ErrorCode::AuthenticationFailed))
    );
    assert_eq!(dp.total_stats().unwrap().revoked, 2);
    assert!(dp.status().unwrap().iter().all(|s| s.config_epoch == 2));
}

/// Seeing presence is granted by a policy's presence rules alone, and a
/// policy change stops the watches it no longer allows (PERMISSION_DENIED
/// naming the watch) while the others keep hearing.
#[test]
fn presence_is_seen_where_a_policy_allows_and_a_change_stops_watches() {
    fn rules(allow: &[&str], deny: &[&str]) -> PolicyRules {
        PolicyRules {
            subscribe_allow: vec![p("rooms.>")],
            presence_allow: allow.iter().map(|s| p(s)).collect(),
            presence_deny: deny.iter().map(|s| p(s)).collect(),
            ..PolicyRules::default()
        }
    }
    fn watch(c: &mut RawClient, id: u64, subject: &str) {
        c.send(&Kind::PresenceWatch(v1::PresenceWatch {
            watch_id: id,
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            stop: false,
        }));
    }
    fn members(c: &mut RawClient, subject: &str) -> Result<usize, i32> {
        c.send(&Kind::PresenceQuery(v1::PresenceQuery {
            request_id: 1,
            subject: Bytes::copy_from_slice(subject.as_bytes()),
        }));
        match c.next() {
            Some(Kind::PresenceReply(r)) if r.error == 0 => Ok(r.members.len()),
            Some(Kind::PresenceReply(r)) => Err(r.error),
            other => panic!("expected PresenceReply, got {other:?}"),
        }
    }
    let mut spec = Spec::new(1);
    spec.principals[0].2 = Some(rules(&["rooms.>"], &["rooms.secret"]));
    let dp = start(&spec.config());
    let addr = dp.local_addr();
    let mut c = RawClient::connect(addr, TOKEN_A);
    watch(&mut c, 1, "rooms.lobby");
    watch(&mut c, 2, "rooms.secret");
    assert_eq!(
        expect_error(&mut c, ErrorCode::PermissionDenied, false).sid,
        2
    );
    watch(&mut c, 3, "rooms.kitchen");
    assert_eq!(members(&mut c, "rooms.lobby"), Ok(0));
    assert_eq!(
        members(&mut c, "rooms.secret"),
        Err(i32::from(ErrorCode::PermissionDenied))
    );
    // The lobby is taken away: watch 1 stops, watch 3 stays.
    let mut next = Spec::new(2);
    next.principals[0].2 = Some(rules(&["rooms.>"], &["rooms.secret", "rooms.lobby"]));
    dp.apply(&next.build()).unwrap();
    let stopped = expect_error(&mut c, ErrorCode::PermissionDenied, false);
    assert_eq!(stopped.sid, 1, "{stopped:?}");
    let mut member = RawClient::connect(addr, TOKEN_A);
    for room in ["rooms.lobby", "rooms.kitchen"] {
        let sid = member.subscribe(room, None);
        member.send(&Kind::PresenceTrack(v1::PresenceTrack {
            sid,
            metadata: std::collections::HashMap::default(),
        }));
    }
    member.flush();
    match c.next() {
        Some(Kind::PresenceEvent(e)) => assert_eq!(e.watch_id, 3, "{e:?}"),
        other => panic!("expected the kitchen's join, got {other:?}"),
    }
    assert_eq!(members(&mut c, "rooms.kitchen"), Ok(1));
}

#[test]
fn permissions_bind_publish_subscribe_and_change_live() {
    let mut spec = Spec::new(1);
    spec.principals[0].2 = Some(PolicyRules {
        publish_allow: vec![p("orders.>")],
        publish_deny: vec![p("orders.secret.>")],
        subscribe_allow: vec![p("orders.>"), p("audit.*")],
        subscribe_deny: vec![p("orders.secret.>")],
        presence_allow: vec![],
        presence_deny: vec![],
        allow_responses: false,
    });
    let dp = start(&spec.config());
    let mut c = RawClient::connect(dp.local_addr(), TOKEN_A);

    c.publish("billing.x", b"no");
    expect_error(&mut c, ErrorCode::PermissionDenied, false);
    c.publish_numbered("orders.secret.plans", 41, b"no");
    assert_eq!(
        expect_error(&mut c, ErrorCode::PermissionDenied, false).seq,
        41
    );
    let denied = c.subscribe(">", None);
    assert_eq!(
        expect_error(&mut c, ErrorCode::PermissionDenied, false).sid,
        denied
    );
    let audit = c.subscribe("audit.*", None);
    let orders = c.subscribe("orders.eu.*", None);
    c.flush();
    c.publish("orders.eu.new", b"yes");
    assert_eq!(c.message().sid, orders);

    // Policy change: audit.* is no longer allowed; the subscription goes.
    let mut next = Spec::new(2);
    next.principals[0].2 = Some(PolicyRules {
        publish_allow: vec![p("orders.>")],
        publish_deny: vec![],
        subscribe_allow: vec![p("orders.>")],
        subscribe_deny: vec![],
        presence_allow: vec![],
        presence_deny: vec![],
        allow_responses: false,
    });
    dp.apply(&next.build()).unwrap();
    assert_eq!(
        expect_error(&mut c, ErrorCode::PermissionDenied, false).sid,
        audit
    );
    c.publish("orders.secret.plans", b"now allowed");
    c.flush();
    let mut b = RawClient::connect(dp.local_addr(), TOKEN_B);
    b.publish("audit.x", b"other tenant anyway");
    b.flush();
    let stats = dp.total_stats().unwrap();
    assert!(stats.permission_denied >= 4, "{stats:?}");
}

#[test]
fn a_restricted_responder_may_answer_requests_it_received() {
    let mut spec = Spec::new(1);
    let responder_rules = PolicyRules {
        publish_allow: vec![p("status.>")],
        publish_deny: vec![],
        subscribe_allow: vec![p("svc.>")],
        subscribe_deny: vec![],
        presence_allow: vec![],
        presence_deny: vec![],
        allow_responses: true,
    };
    spec.principals.push((
        2,
        Quotas::default(),
        Some(responder_rules),
        vec![(3, "abt_responder".into(), None)],
    ));
    let dp = start(&spec.config());
    let addr = dp.local_addr();
    let mut responder = RawClient::connect_on_shard(addr, "abt_responder", 1);
    responder.subscribe("svc.echo", None);
    responder.flush();
    let mut requester = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let inbox = requester.subscribe("_INBOX.q.*", None);
    requester.flush();
    requester.publish_req("svc.echo", "_INBOX.q.1", b"hi");
    let req = responder.message();
    responder.publish("_INBOX.q.1", b"answer");
    let got = requester.message();
    assert_eq!((got.sid, &got.payload[..]), (inbox, &b"answer"[..]));
    // A restricted requester cannot aim replies where it could not listen.
    let mut nosy = Spec::new(2);
    nosy.principals.push((
        2,
        Quotas::default(),
        Some(PolicyRules {
            publish_allow: vec![p("status.>")],
            publish_deny: vec![],
            subscribe_allow: vec![p("svc.>")],
            subscribe_deny: vec![],
            presence_allow: vec![],
            presence_deny: vec![],
            allow_responses: true,
        }),
        vec![(3, "abt_responder".into(), None)],
    ));
    nosy.principals[0].2 = Some(PolicyRules {
        publish_allow: vec![p("svc.>")],
        publish_deny: vec![],
        subscribe_allow: vec![p("_INBOX.q.*")],
        subscribe_deny: vec![],
        presence_allow: vec![],
        presence_deny: vec![],
        allow_responses: false,
    });
    dp.apply(&nosy.build()).unwrap();
    requester.publish_req("svc.echo", "status.hijack", b"hi");
    expect_error(&mut requester, ErrorCode::PermissionDenied, false);
    // Once only: the same reply subject again is denied.
    responder.publish(std::str::from_utf8(&req.reply).unwrap(), b"again");
    expect_error(&mut responder, ErrorCode::PermissionDenied, false);
}

#[test]
fn a_tenant_flood_is_throttled_while_the_other_tenant_flows() {
    const FLOOD: u32 = 3_000;
    const CALM: u32 = 500;
    let mut spec = Spec::new(1);
    spec.tenant_quotas.messages_per_second = 10_000;
    let dp = start(&spec.config());
    let addr = dp.local_addr();

    let mut sub_a = RawClient::connect(addr, TOKEN_A);
    sub_a.subscribe("flood", None);
    sub_a.flush();
    let mut sub_b = RawClient::connect(addr, TOKEN_B);
    sub_b.subscribe("flood", None);
    sub_b.flush();

    let reader_a = thread::spawn(move || {
        for _ in 0..FLOOD {
            sub_a.message();
        }
    });
    let reader_b = thread::spawn(move || {
        for i in 0..CALM {
            let m = sub_b.message();
            assert_eq!(u32::from_be_bytes(m.payload[..4].try_into().unwrap()), i);
        }
    });
    // Tenant A floods from both shards at once; tenant B publishes calmly.
    let mut floods: Vec<RawClient> = (0..2)
        .map(|s| RawClient::connect_on_shard(addr, TOKEN_A, s))
        .collect();
    let mut batch = Vec::new();
    for i in 0..FLOOD / 2 {
        arqonbus_proto::codec::encode(
            &Kind::Publish(v1::Publish {
                subject: Bytes::from_static(b"flood"),
                payload: Bytes::copy_from_slice(&i.to_be_bytes()),
                ..Default::default()
            }),
            &mut batch,
        )
        .unwrap();
    }
    for f in &mut floods {
        f.send_raw(&batch);
    }
    let mut calm = RawClient::connect(addr, TOKEN_B);
    for i in 0..CALM {
        calm.publish("flood", &i.to_be_bytes());
    }
    calm.flush();
    reader_b.join().unwrap();
    for f in &mut floods {
        f.flush();
    }
    reader_a.join().unwrap();
    let stats = dp.total_stats().unwrap();
    assert!(
        stats.throttled > 0,
        "tenant A was never throttled: {stats:?}"
    );
    assert_eq!(
        stats.msgs_in,
        u64::from(FLOOD + CALM),
        "nothing was dropped"
    );
}

#[test]
fn connection_quotas_hold_across_shards() {
    let mut spec = Spec::new(1);
    spec.tenant_quotas.max_connections = 2;
    let dp = start(&spec.config());
    let addr = dp.local_addr();
    // The count is one per tenant for the whole process, whichever shards
    // the connections land on.
    let _first = RawClient::connect(addr, TOKEN_A);
    let _second = RawClient::connect(addr, TOKEN_A);
    let (mut third, first_frame) = connect_with(addr, TOKEN_A);
    match first_frame {
        Some(Kind::Error(e)) => {
            assert_eq!(e.code, i32::from(ErrorCode::MaxConnectionsExceeded));
            assert!(e.close);
        }
        other => panic!("expected MAX_CONNECTIONS_EXCEEDED, got {other:?}"),
    }
    expect_closed(&mut third);
    // The other tenant is not affected.
    RawClient::connect(addr, TOKEN_B).flush();
}

#[test]
fn operators_list_kick_drain_and_resume() {
    let dp = start(&Spec::new(1).config());
    let addr = dp.local_addr();
    let mut on0 = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let mut on1 = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    on1.subscribe("x", None);
    on1.flush();
    let conns = dp.connections().unwrap();
    let mine = conns
        .iter()
        .find(|c| c.id == on1.welcome.as_ref().unwrap().session_id)
        .unwrap();
    assert_eq!((mine.shard, mine.subscriptions), (1, 1));
    assert_eq!(mine.tenant, Some(TenantId(1)));
    // What its `Connect` said, held once per connection (moved out of the
    // session when it opened), and when it connected.
    assert_eq!(mine.client_name, "raw-test");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - 60_000..=now_ms).contains(&mine.connected_at_unix_ms),
        "connected at {}",
        mine.connected_at_unix_ms
    );

    assert!(dp.kick(mine.id).unwrap());
    expect_error(&mut on1, ErrorCode::DisconnectedByOperator, true);
    assert!(!dp.kick(mine.id ^ 0xffff).unwrap(), "no such connection");
    assert!(!dp.kick(u64::MAX).unwrap(), "no such shard");

    dp.drain(0).unwrap();
    expect_error(&mut on0, ErrorCode::ServerShuttingDown, true);
    // Every new connection now lands on shard 1. Connections the kernel had
    // already queued on shard 0's closing listener are reset (as real
    // clients do, retry; `net.ipv4.tcp_migrate_req = 1` avoids the resets).
    for _ in 0..10 {
        assert_eq!(welcome_retrying(addr).shard, 1);
    }
    let status = dp.status().unwrap();
    assert!(status[0].draining && !status[1].draining);
    dp.resume(0).unwrap();
    // Back in service: some connection lands on shard 0 again.
    RawClient::connect_on_shard(addr, TOKEN_A, 0);
}

#[test]
fn drop_oldest_keeps_a_slow_subscriber_connected() {
    let mut spec = Spec::new(1);
    spec.limits.max_payload = 16 * 1024;
    spec.limits.max_pending_bytes = 64 * 1024;
    spec.tenant_quotas.slow_consumer = SlowConsumerPolicy::DropOldest;
    let dp = start(&spec.config());
    let addr = dp.local_addr();
    let mut slow = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    slow.subscribe("burst", None);
    slow.subscribe("end", None);
    slow.flush();
    let mut publ = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let payload = vec![1u8; 1024];
    for _ in 0..20_000 {
        publ.publish("burst", &payload);
    }
    publ.publish("end", b"");
    publ.flush();
    // Still connected: it reads a valid stream ending with "end".
    let mut n = 0u32;
    loop {
        let m = slow.message();
        if &m.subject[..] == b"end" {
            break;
        }
        n += 1;
    }
    let stats = dp.total_stats().unwrap();
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.slow_consumers, 0);
    assert_eq!(u64::from(n) + stats.dropped, 20_000);
}

fn stall_spec(stall_max: Duration) -> Spec {
    let mut spec = Spec::new(1);
    spec.limits.max_payload = 16 * 1024;
    spec.limits.max_pending_bytes = 64 * 1024;
    spec.limits.close_grace_ms = 60_000;
    spec.tenant_quotas.slow_consumer = SlowConsumerPolicy::StallPublisher;
    spec.tenant_quotas.stall_max = stall_max;
    spec
}

/// Publishes `n` 1 KiB messages on `subject` from a thread.
fn publish_burst(
    mut publ: RawClient,
    subject: &'static str,
    n: u32,
) -> thread::JoinHandle<RawClient> {
    thread::spawn(move || {
        let mut payload = vec![1u8; 1024];
        for i in 0..n {
            payload[..4].copy_from_slice(&i.to_be_bytes());
            publ.publish(subject, &payload);
        }
        publ.flush();
        publ
    })
}

#[test]
fn stall_publisher_pauses_the_tenant_until_the_subscriber_catches_up() {
    const N: u32 = 20_000;
    let dp = start(&stall_spec(Duration::from_secs(30)).config());
    let addr = dp.local_addr();
    let mut sub = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    sub.subscribe("burst", None);
    sub.flush();
    let publisher = publish_burst(RawClient::connect_on_shard(addr, TOKEN_A, 0), "burst", N);
    // The subscriber does not read until the publisher has been paused.
    while dp.total_stats().unwrap().stalls == 0 {
        thread::yield_now();
    }
    for i in 0..N {
        let m = sub.message();
        assert_eq!(u32::from_be_bytes(m.payload[..4].try_into().unwrap()), i);
    }
    publisher.join().unwrap();
    let stats = dp.total_stats().unwrap();
    assert_eq!(stats.slow_consumers, 0, "{stats:?}");
    assert!(stats.throttled > 0, "the publisher waited: {stats:?}");
}

#[test]
fn stall_publisher_cuts_a_subscriber_that_never_catches_up() {
    let dp = start(&stall_spec(Duration::from_millis(200)).config());
    let addr = dp.local_addr();
    let mut stalled = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    stalled.subscribe("burst", None);
    stalled.flush();
    // The publisher is paused for at most stall_max, then goes on.
    publish_burst(
        RawClient::connect_on_shard(addr, TOKEN_A, 0),
        "burst",
        20_000,
    )
    .join()
    .unwrap();
    let mut last = None;
    while let Some(k) = stalled.recv() {
        last = Some(k);
    }
    assert!(
        matches!(last, Some(Kind::Error(e)) if e.code == i32::from(ErrorCode::SlowConsumer)),
        "a subscriber that never reads is cut after stall_max"
    );
    let stats = dp.total_stats().unwrap();
    assert!(stats.stalls > 0 && stats.throttled > 0, "{stats:?}");
}

#[test]
fn signed_tokens_authenticate_locally_and_are_revocable() {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let mut spec = Spec::new(1);
    spec.verify_key = Some(key.public_key().as_ref().try_into().unwrap());
    spec.signed = vec![(9, 1)];
    let dp = start(&spec.config());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .cast_signed();
    let token = sign_token(
        &SignedTokenClaims {
            tenant_id: 1,
            principal_id: 1,
            credential_id: 9,
            issued_at_unix: now,
            expires_at_unix: now + 3600,
        },
        &key,
    );
    let mut c = RawClient::connect(dp.local_addr(), &token);
    c.flush();
    let mut next = Spec::new(2);
    next.verify_key = spec.verify_key;
    dp.apply(&next.build()).unwrap();
    expect_error(&mut c, ErrorCode::CredentialRevoked, true);
}

#[test]
fn a_fail_closed_snapshot_refuses_new_sessions_and_keeps_old_ones() {
    let spec = Spec::new(1);
    let dp = start(&spec.config());
    let mut old = RawClient::connect(dp.local_addr(), TOKEN_A);
    old.subscribe("still", None);
    old.flush();
    dp.apply(&Arc::new(
        spec.build().refusing_new_sessions(2, "store unreadable"),
    ))
    .unwrap();
    // The barrier proves the snapshot reached this connection's shard.
    old.flush();
    let (_, first) = connect_with(dp.local_addr(), TOKEN_A);
    assert!(matches!(first, Some(Kind::Error(e)) if e.code == i32::from(ErrorCode::Unavailable)));
    old.publish("still", b"here");
    assert_eq!(&old.message().payload[..], b"here");
}
