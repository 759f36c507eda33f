//! Fuzz target: arbitrary client bytes through the frame decoder, the
//! connection state machine, the core's authorisation decisions and the
//! router, exactly as a shard drives them.
//!
//! Input layout: byte 0 picks TLS on/off; byte 1 picks the read chunk size;
//! the rest is the client's byte stream. The first byte of each chunk also
//! moves the clock, and, when its top bit is set, stalls the tenant's
//! publishers for up to 127 ms. The authentication snapshot accepts the
//! credential of `proto/golden/connect.bin`, so seeding the corpus with the
//! golden vectors lets the fuzzer reach the `Open` state quickly.
//!
//! Decisions are the core's own (`arqonbus_core::authorize`): `connect` when
//! the session opens, `subscribe` and its quota counts, `publish` with the
//! connection's one-shot reply permissions (granted, as a shard does, when a
//! request is delivered to it), and the shard's `Throttle` (rate limits and
//! stalls), whose waits are carried out by moving the clock.
//!
//! Checked: nothing panics; the codec decodes every body as prost does; a
//! closing session produces no further work; no frame larger than the limit
//! is ever buffered; routing never names the publisher when echo is off; a
//! publish is allowed only by the publish rules or by a reply permission,
//! which it then uses up, and only with a receivable reply subject; a
//! refusal names the protocol's error and sid; the subscription counts equal
//! the subscriptions the router holds and stay within their quotas; a
//! second session of the principal is refused at `max_connections`; a
//! throttled publish goes once it has waited what it was told.
#![no_main]
#![allow(clippy::panic, reason = "a fuzz target reports bugs by panicking")]

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arqonbus_core::auth::CredentialHash;
use arqonbus_core::authorize::{
    self, Admission, Counts, Decision, Denial, MAX_PENDING_REPLIES, ReplyPermissions, Throttle,
};
use arqonbus_core::limits::Limits;
use arqonbus_core::policy::{PolicyRules, compile, parse_pattern};
use arqonbus_core::router::{Origin, RoutePlan, Router};
use arqonbus_core::session::{Checked, Event, Now, Publish, Session, State, Step};
use arqonbus_core::snapshot::{
    ConfigSnapshot, CredentialEntry, PrincipalEntry, Quotas, TenantEntry,
};
use arqonbus_core::subject::SubjectMemo;
use arqonbus_core::{ConnId, CredentialId, PrincipalId, ShardId, TenantId};
use arqonbus_proto::codec::{self, DecodeError, Decoded, LEN_PREFIX, PublishView};
use arqonbus_proto::v1::{ErrorCode, Frame, frame::Kind};
use bytes::{Buf, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

const GOLDEN_TOKEN: &str = "abt_example-not-a-real-token";
/// The tenant's subscription quota (the principal's is smaller).
const TENANT_MAX_SUBS: u32 = 12;
const PRINCIPAL_MAX_SUBS: u32 = 8;

fn pattern(text: &str) -> arqonbus_core::subject::Pattern {
    match parse_pattern(text) {
        Ok(p) => p,
        Err(e) => panic!("bad test pattern {text}: {e}"),
    }
}

/// A decoded frame as the server's connection loop meets it.
enum Input<'a> {
    /// The common publish, borrowed from its batch.
    Publish(PublishView<'a>),
    /// Everything else.
    Event(Event),
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&chunk, stream)) = rest.split_first() else {
        return;
    };
    let tls = flags & 1 == 1;
    let chunk = usize::from(chunk).max(1);

    let limits = Limits {
        max_payload: 4096,
        max_pending_bytes: 1 << 20,
        ..Limits::default()
    };
    // Restricted permissions, so the policy checks are fuzzed too.
    let rules = PolicyRules {
        publish_allow: vec![pattern("jobs.>"), pattern("orders.*")],
        publish_deny: vec![pattern("orders.secret")],
        subscribe_allow: vec![pattern(">")],
        subscribe_deny: vec![pattern("admin.>")],
        presence_allow: vec![],
        presence_deny: vec![],
        allow_responses: true,
    };
    let mut config = ConfigSnapshot::new(1, limits);
    // Quotas small enough to be reached: subscriptions, one session of the
    // principal, and rates whose waits stay under a second (the longest a
    // token bucket names), so a held publish always goes after its wait.
    config.insert_tenant(TenantEntry {
        id: TenantId(1),
        name: "t".into(),
        quotas: Quotas {
            max_subscriptions: TENANT_MAX_SUBS,
            messages_per_second: 50,
            bytes_per_second: 40_960,
            ..Quotas::default()
        },
        verify_key: None,
        placement: arqonbus_core::placement::TenantPlacement::default(),
    });
    let _ = config.insert_principal(PrincipalEntry {
        id: PrincipalId(1),
        tenant: TenantId(1),
        name: "p".into(),
        roles: vec![],
        quotas: Quotas {
            max_subscriptions: PRINCIPAL_MAX_SUBS,
            max_connections: 1,
            ..Quotas::default()
        },
        permissions: Arc::new(compile([&rules])),
    });
    let _ = config.insert_bearer(
        CredentialHash::of(GOLDEN_TOKEN),
        CredentialEntry {
            id: CredentialId(1),
            principal: PrincipalId(1),
            expires_at_unix: None,
        },
    );
    let limits = config.limits().clone();
    let conn = ConnId(1);
    let mut now = Now {
        mono: Instant::now(),
        unix: 1_000_000,
    };
    let mut session = Session::new(now.mono, tls);
    // Publishes enter the session as the connection's task makes them:
    // through `Session::publish` and the shard's subject memo.
    let mut memo = SubjectMemo::default();
    let mut router = Router::new(ShardId(0), 7);
    let mut plan = RoutePlan::default();
    let mut interest = Vec::new();
    let mut buf = BytesMut::new();
    // What the shard keeps for the connection: quota counts (here the only
    // connection of its tenant and principal), reply permissions, and the
    // shard's throttle.
    let (conns_t, conns_p) = (Cell::new(0u32), Cell::new(0u32));
    let connections = Counts {
        tenant: &conns_t,
        principal: &conns_p,
    };
    let (subs_t, subs_p) = (Cell::new(0u32), Cell::new(0u32));
    let subscriptions = Counts {
        tenant: &subs_t,
        principal: &subs_p,
    };
    let replies = ReplyPermissions::default();
    let mut throttle = Throttle::new(1);

    if tls {
        session.handle(Event::TlsEstablished, now, &config);
    }
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        now.mono += Duration::from_millis(u64::from(piece[0]) * 100);
        now.unix += i64::from(piece[0]) / 10;
        if piece[0] & 0x80 != 0 {
            throttle.stall(
                TenantId(1),
                now.mono + Duration::from_millis(u64::from(piece[0] & 0x7f)),
            );
        }
        let _ = session.handle(Event::Tick, now, &config);
        loop {
            if !matches!(session.state(), State::AwaitingConnect | State::Open) {
                break;
            }
            let max_frame = session.max_frame(&limits);
            let batch: Bytes;
            let input = match codec::frame_len(&buf, max_frame) {
                Ok(None) => break,
                Err(e) => Input::Event(Event::Undecodable(e)),
                Ok(Some(total)) => {
                    assert!(total <= LEN_PREFIX + max_frame as usize);
                    let mut frame = buf.split_to(total).freeze();
                    // As the server decodes it: a range of its read batch,
                    // with the bytes that follow in the same read.
                    let mut joined = BytesMut::from(&frame[..]);
                    joined.extend_from_slice(&buf[..buf.len().min(16)]);
                    batch = joined.freeze();
                    let in_batch = codec::decode_in(&batch, LEN_PREFIX..total);
                    frame.advance(LEN_PREFIX);
                    let decoded = codec::decode_body(frame.clone());
                    let owned = match &in_batch {
                        Ok(Decoded::Publish(view)) => Ok(Kind::Publish(view.to_owned())),
                        Ok(Decoded::Frame(kind)) => Ok(kind.clone()),
                        Err(e) => Err(*e),
                    };
                    assert_eq!(owned, decoded, "a frame decodes the same within a batch");
                    // The codec's fast path for publishes says what prost says;
                    // the codec alone refuses a body of several top-level
                    // fields, which prost would merge or resolve last-wins.
                    let general = Frame::decode(frame).map(|f| f.kind);
                    match (&decoded, &general) {
                        (Ok(kind), Ok(Some(k))) if kind == k => {}
                        (Err(_), Err(_) | Ok(None)) | (Err(DecodeError::SeveralKinds), _) => {}
                        _ => panic!("codec {decoded:?} but prost {general:?}"),
                    }
                    // The server's hot path takes the borrowed publish.
                    match in_batch {
                        Ok(Decoded::Publish(view)) => Input::Publish(view),
                        Ok(Decoded::Frame(kind)) => Input::Event(Event::Frame(kind)),
                        Err(e) => Input::Event(Event::Undecodable(e)),
                    }
                }
            };
            let was_closing = session.state() == State::Closing;
            // A publish the hot path accepted stays borrowed from its batch
            // through the checks below, as in a shard.
            let (step, borrowed) = match input {
                Input::Publish(view) => match session.publish(view, now, &config, &mut memo) {
                    Checked::Publish(p) => (Step::Nothing, Some(p)),
                    Checked::Step(step) => (step, None),
                },
                Input::Event(event) => (session.handle(event, now, &config), None),
            };
            if was_closing {
                assert!(matches!(step, Step::Nothing) && borrowed.is_none());
            }
            let (step, owned) = match step {
                Step::Publish(p) => (Step::Nothing, Some(p)),
                step => (step, None),
            };
            let publish = borrowed.or_else(|| owned.as_ref().map(Publish::view));
            let id = session.identity();
            match step {
                Step::Welcome => {
                    let Some(id) = id else {
                        panic!("welcomed without an identity");
                    };
                    assert_eq!(authorize::connect(id, connections), Decision::Allow);
                    // The principal's second session is over its quota.
                    assert_eq!(
                        authorize::connect(id, connections),
                        Decision::Deny(Denial {
                            code: ErrorCode::MaxConnectionsExceeded,
                            sid: 0,
                            detail: "tenant or principal at max_connections",
                        })
                    );
                    assert_eq!((conns_t.get(), conns_p.get()), (1, 1));
                    replies.set_permissions(&id.principal.permissions);
                }
                Step::Subscribe {
                    sid,
                    pattern,
                    queue,
                } => {
                    let Some(id) = id else {
                        panic!("subscribed without an identity");
                    };
                    let perms = &id.principal.permissions;
                    let before = subs_p.get();
                    match authorize::subscribe(id, sid, &pattern, Some(subscriptions)) {
                        Decision::Allow => {
                            assert!(perms.may_subscribe(&pattern));
                            let made = router.subscribe(
                                id.tenant.id,
                                conn,
                                sid,
                                pattern,
                                queue,
                                limits.max_subscriptions,
                                &mut interest,
                            );
                            if let Err(e) = made {
                                subscriptions.release(1);
                                assert_eq!(Denial::subscription(e, sid).sid, sid.0);
                            }
                        }
                        Decision::Deny(d) => {
                            assert_eq!(d.sid, sid.0);
                            assert_eq!(subs_p.get(), before, "a refusal takes no count");
                            match d.code {
                                ErrorCode::PermissionDenied => {
                                    assert!(!perms.may_subscribe(&pattern));
                                }
                                ErrorCode::MaxSubscriptionsExceeded => {
                                    assert!(before >= PRINCIPAL_MAX_SUBS);
                                }
                                code => panic!("subscribe refused with {code:?}"),
                            }
                        }
                    }
                }
                Step::Unsubscribe { sid, after } => {
                    let removed = router.unsubscribe(conn, sid, after, &mut interest);
                    if removed.is_ok() && after == 0 {
                        subscriptions.release(1);
                    }
                }
                Step::Reject(r) if r.close => {
                    assert_eq!(session.state(), State::Closing);
                }
                _ => {}
            }
            if let Some(p) = publish {
                let Some(id) = id else {
                    panic!("published without an identity");
                };
                let perms = &id.principal.permissions;
                let granted = replies.contains(p.subject.as_bytes());
                let decision = authorize::publish(perms, &replies, p.subject, p.reply);
                let by_rules = perms.may_publish(p.subject);
                let used = granted && !replies.contains(p.subject.as_bytes());
                // A reply permission is used only when the rules do not
                // allow the subject, and then whatever the outcome.
                assert_eq!(used, granted && !by_rules && perms.allow_responses());
                match decision {
                    Decision::Allow => {
                        assert!(perms.unrestricted() || by_rules || used);
                        if let Some(r) = p.reply {
                            assert!(perms.may_receive(r));
                        }
                    }
                    Decision::Deny(d) => {
                        assert_eq!((d.code, d.sid), (ErrorCode::PermissionDenied, 0));
                        continue;
                    }
                }
                // Held until the throttle lets it go, as a shard does.
                let mut waits = 0;
                while let Admission::Wait(w) = throttle.admit(id, p.payload.len(), || now.mono) {
                    assert!(!w.is_zero() && w <= Duration::from_secs(1), "{w:?}");
                    assert!(waits < 2, "still held after waiting as told");
                    waits += 1;
                    now.mono += w + Duration::from_millis(1);
                }
                let echo = session.echo();
                router.route(
                    id.tenant.id,
                    p.subject,
                    Origin::Local { conn, echo },
                    &mut plan,
                );
                if !echo {
                    assert!(plan.local.iter().all(|d| d.conn != conn));
                }
                for _ in plan.expired.drain(..) {
                    subscriptions.release(1);
                }
                // A request delivered to this connection may be answered.
                if let Some(reply) = p.reply {
                    for _ in plan.local.iter().filter(|d| d.conn == conn) {
                        replies.grant(reply.as_bytes());
                    }
                }
                assert!(replies.len() <= MAX_PENDING_REPLIES);
                // Kept only for a principal that may need them.
                assert!(ReplyPermissions::needed(perms) || replies.is_empty());
            }
            // The counts are the subscriptions held, within both quotas.
            let held = router.subscription_count(conn) as u32;
            assert_eq!((subs_t.get(), subs_p.get()), (held, held));
            assert!(held <= PRINCIPAL_MAX_SUBS.min(TENANT_MAX_SUBS));
        }
    }
    router.remove_conn(conn, &mut interest);
    subscriptions.release(subs_p.get());
    if session.identity().is_some() {
        connections.release(1);
    }
    assert_eq!((conns_t.get(), conns_p.get(), subs_t.get()), (0, 0, 0));
    // Permissions never let a denied subject through.
    if let Some(id) = session.identity() {
        let denied = arqonbus_core::subject::Subject::parse(
            bytes::Bytes::from_static(b"orders.secret"),
            256,
        );
        if let Ok(s) = denied {
            assert!(!id.principal.permissions.may_publish(&s));
        }
    }
    assert_eq!(router.local_subscriptions(), 0);
});
