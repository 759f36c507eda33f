//! Fuzz target: arbitrary client bytes through the frame decoder, the
//! connection state machine and the router, exactly as a shard drives them.
//!
//! Input layout: byte 0 picks TLS on/off; byte 1 picks the read chunk size;
//! the rest is the client's byte stream. The authentication snapshot accepts
//! the credential of `proto/golden/connect.bin`, so seeding the corpus with
//! the golden vectors lets the fuzzer reach the `Open` state quickly.
//!
//! Checked: nothing panics; a closing session produces no further work; no
//! frame larger than the limit is ever buffered; routing never names the
//! publisher when echo is off.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arqonbus_core::auth::{AuthSnapshot, CredentialHash, Principal};
use arqonbus_core::limits::Limits;
use arqonbus_core::router::{Origin, RoutePlan, Router};
use arqonbus_core::session::{Event, Session, State, Step};
use arqonbus_core::{ConnId, PrincipalId, ShardId, TenantId};
use arqonbus_proto::codec::{self, LEN_PREFIX};
use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;

const GOLDEN_TOKEN: &str = "abt_example-not-a-real-token";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&chunk, stream)) = rest.split_first() else {
        return;
    };
    let tls = flags & 1 == 1;
    let chunk = usize::from(chunk).max(1);

    let mut auth = AuthSnapshot::new(1);
    auth.insert(
        CredentialHash::of(GOLDEN_TOKEN),
        Arc::new(Principal {
            tenant: TenantId(1),
            tenant_name: "t".into(),
            id: PrincipalId(1),
            name: "p".into(),
        }),
    );
    let limits = Limits {
        max_payload: 4096,
        max_pending_bytes: 1 << 20,
        ..Limits::default()
    };
    let conn = ConnId(1);
    let mut now = Instant::now();
    let mut session = Session::new(now, tls);
    let mut router = Router::new(ShardId(0), 7);
    let mut plan = RoutePlan::default();
    let mut interest = Vec::new();
    let mut buf = BytesMut::new();

    if tls {
        session.handle(Event::TlsEstablished, now, &auth, &limits);
    }
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        now += Duration::from_millis(u64::from(piece[0]) * 100);
        let _ = session.handle(Event::Tick, now, &auth, &limits);
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
                    match codec::decode_body(frame) {
                        Ok(kind) => Event::Frame(kind),
                        Err(e) => Event::Undecodable(e),
                    }
                }
            };
            let was_closing = session.state() == State::Closing;
            let step = session.handle(event, now, &auth, &limits);
            if was_closing {
                assert!(matches!(step, Step::Nothing));
            }
            let tenant = session.principal().map(|p| p.tenant);
            match step {
                Step::Subscribe {
                    sid,
                    pattern,
                    queue,
                } => {
                    if let Some(t) = tenant {
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
                    if let Some(t) = tenant {
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
    assert_eq!(router.local_subscriptions(), 0);
});
