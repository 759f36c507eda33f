//! Fuzz target: arbitrary client bytes through the frame decoder, the
//! connection state machine and the router, exactly as a shard drives them.
//!
//! Input layout: byte 0 picks TLS on/off; byte 1 picks the read chunk size;
//! the rest is the client's byte stream. The authentication snapshot accepts
//! the credential of `proto/golden/connect.bin`, so seeding the corpus with
//! the golden vectors lets the fuzzer reach the `Open` state quickly.
//!
//! Checked: nothing panics; the codec decodes every body as prost does; a
//! closing session produces no further work; no frame larger than the limit
//! is ever buffered; routing never names the publisher when echo is off.
#![no_main]
#![allow(clippy::panic, reason = "a fuzz target reports bugs by panicking")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arqonbus_core::auth::CredentialHash;
use arqonbus_core::limits::Limits;
use arqonbus_core::policy::{PolicyRules, compile, parse_pattern};
use arqonbus_core::router::{Origin, RoutePlan, Router};
use arqonbus_core::session::{Event, Now, Session, State, Step};
use arqonbus_core::snapshot::{
    ConfigSnapshot, CredentialEntry, PrincipalEntry, Quotas, TenantEntry,
};
use arqonbus_core::{ConnId, CredentialId, PrincipalId, ShardId, TenantId};
use arqonbus_proto::codec::{self, LEN_PREFIX};
use arqonbus_proto::v1::Frame;
use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

const GOLDEN_TOKEN: &str = "abt_example-not-a-real-token";

fn pattern(text: &str) -> arqonbus_core::subject::Pattern {
    match parse_pattern(text) {
        Ok(p) => p,
        Err(e) => panic!("bad test pattern {text}: {e}"),
    }
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
        allow_responses: true,
    };
    let mut config = ConfigSnapshot::new(1, limits);
    config.insert_tenant(TenantEntry {
        id: TenantId(1),
        name: "t".into(),
        quotas: Quotas::default(),
        verify_key: None,
        placement: arqonbus_core::placement::TenantPlacement::default(),
    });
    let _ = config.insert_principal(PrincipalEntry {
        id: PrincipalId(1),
        tenant: TenantId(1),
        name: "p".into(),
        roles: vec![],
        quotas: Quotas::default(),
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
    let mut router = Router::new(ShardId(0), 7);
    let mut plan = RoutePlan::default();
    let mut interest = Vec::new();
    let mut buf = BytesMut::new();

    if tls {
        session.handle(Event::TlsEstablished, now, &config);
    }
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        now.mono += Duration::from_millis(u64::from(piece[0]) * 100);
        now.unix += i64::from(piece[0]) / 10;
        let _ = session.handle(Event::Tick, now, &config);
        loop {
            if !matches!(session.state(), State::AwaitingConnect | State::Open) {
                break;
            }
            let max_frame = session.max_frame(&limits);
            let event = match codec::frame_len(&buf, max_frame) {
                Ok(None) => break,
                Err(e) => Event::Undecodable(e),
                Ok(Some(total)) => {
                    assert!(total <= LEN_PREFIX + max_frame as usize);
                    let mut frame = buf.split_to(total).freeze();
                    frame.advance(LEN_PREFIX);
                    let decoded = codec::decode_body(frame.clone());
                    // The codec's fast path for publishes says what prost says.
                    let general = Frame::decode(frame).map(|f| f.kind);
                    match (&decoded, &general) {
                        (Ok(kind), Ok(Some(k))) if kind == k => {}
                        (Err(_), Err(_) | Ok(None)) => {}
                        _ => panic!("codec {decoded:?} but prost {general:?}"),
                    }
                    match decoded {
                        Ok(kind) => Event::Frame(kind),
                        Err(e) => Event::Undecodable(e),
                    }
                }
            };
            let was_closing = session.state() == State::Closing;
            let step = session.handle(event, now, &config);
            if was_closing {
                assert!(matches!(step, Step::Nothing));
            }
            let tenant = session.identity().map(|i| i.tenant.id);
            let perms = session.identity().map(|i| i.principal.permissions.clone());
            match step {
                Step::Subscribe {
                    sid,
                    pattern,
                    queue,
                } => {
                    if let Some(t) = tenant
                        && perms.as_ref().is_some_and(|p| p.may_subscribe(&pattern))
                    {
                        let _ = router.subscribe(
                            t,
                            conn,
                            sid,
                            pattern,
                            queue,
                            limits.max_subscriptions,
                            &mut interest,
                        );
                    }
                }
                Step::Unsubscribe { sid, after } => {
                    let _ = router.unsubscribe(conn, sid, after, &mut interest);
                }
                Step::Publish(p) => {
                    if let Some(t) = tenant
                        && perms
                            .as_ref()
                            .is_some_and(|perm| perm.may_publish(&p.subject))
                    {
                        let echo = session.echo();
                        router.route(t, &p.subject, Origin::Local { conn, echo }, &mut plan);
                        if !echo {
                            assert!(plan.local.iter().all(|d| d.conn != conn));
                        }
                    }
                }
                Step::Reject(r) if r.close => {
                    assert_eq!(session.state(), State::Closing);
                }
                _ => {}
            }
        }
    }
    router.remove_conn(conn, &mut interest);
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
