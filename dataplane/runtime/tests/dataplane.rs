//! Data-plane behaviour over real sockets: two shards, plaintext, a raw
//! protocol client. Every wait ends on a frame or end of stream; the Ping/Pong
//! barrier is the only synchronisation.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

mod common;

use std::collections::BTreeMap;
use std::thread;

use arqonbus_proto::v1::{self, ErrorCode, MessageStatus, frame::Kind};
use bytes::Bytes;
use common::{RawClient, TOKEN_A, TOKEN_B, config, config_with, start};

fn expect_error(c: &mut RawClient, code: ErrorCode, close: bool) -> v1::Error {
    match c.next() {
        Some(Kind::Error(e)) => {
            assert_eq!(
                ErrorCode::try_from(e.code).unwrap(),
                code,
                "unexpected error: {e:?}"
            );
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

#[test]
fn publish_crosses_shards_in_order() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut sub = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    let mut publ = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let sid = sub.subscribe("orders.*", None);
    sub.flush();
    for i in 0..500u32 {
        publ.publish("orders.created", &i.to_be_bytes());
    }
    publ.flush();
    for i in 0..500u32 {
        let m = sub.message();
        assert_eq!(m.sid, sid);
        assert_eq!(&m.subject[..], b"orders.created");
        assert_eq!(&m.payload[..], &i.to_be_bytes());
    }
    let stats = dp.total_stats().unwrap();
    assert_eq!(
        stats.remote_out, 500,
        "one copy per message to the other shard"
    );
    assert_eq!(stats.msgs_out, 500);
}

/// Reads messages until one arrives on `end` (which is not returned).
fn until_end(c: &mut RawClient) -> Vec<v1::Message> {
    let mut got = Vec::new();
    loop {
        let m = c.message();
        if &m.subject[..] == b"end" {
            return got;
        }
        got.push(m);
    }
}

fn sid_subjects(msgs: &[v1::Message]) -> Vec<(u64, String)> {
    let mut v: Vec<_> = msgs
        .iter()
        .map(|m| (m.sid, String::from_utf8(m.subject.to_vec()).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn wildcards_across_shards() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut a = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let mut b = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    let star = a.subscribe("metrics.*.cpu", None);
    let full = b.subscribe("metrics.>", None);
    let exact = b.subscribe("metrics.host1.cpu", None);
    for c in [&mut a, &mut b] {
        c.subscribe("end", None);
        c.flush();
    }
    let mut p = RawClient::connect(addr, TOKEN_A);
    for s in [
        "metrics.host1.cpu",
        "metrics.host2.mem",
        "metrics",
        "metrics.a.b.c",
        "end",
    ] {
        p.publish(s, s.as_bytes());
    }
    p.flush();
    let own = |v: &[(u64, &str)]| {
        let mut v: Vec<_> = v.iter().map(|(s, n)| (*s, (*n).to_owned())).collect();
        v.sort();
        v
    };
    assert_eq!(
        sid_subjects(&until_end(&mut a)),
        own(&[(star, "metrics.host1.cpu")])
    );
    assert_eq!(
        sid_subjects(&until_end(&mut b)),
        own(&[
            (full, "metrics.host1.cpu"),
            (exact, "metrics.host1.cpu"),
            (full, "metrics.host2.mem"),
            (full, "metrics.a.b.c"),
        ])
    );
}

#[test]
fn a_queue_group_delivers_each_message_to_exactly_one_member_across_shards() {
    const N: u32 = 600;
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut members = vec![
        RawClient::connect_on_shard(addr, TOKEN_A, 0),
        RawClient::connect_on_shard(addr, TOKEN_A, 1),
        RawClient::connect_on_shard(addr, TOKEN_A, 1),
    ];
    for m in &mut members {
        m.subscribe("jobs.*", Some("workers"));
        m.subscribe("end", None);
        m.flush();
    }
    let mut p = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    for i in 0..N {
        p.publish("jobs.resize", &i.to_be_bytes());
    }
    // Per member, "end" arrives after every job assigned to it.
    p.publish("end", b"");
    p.flush();
    let mut all = BTreeMap::new();
    for (i, m) in members.iter_mut().enumerate() {
        let seen = until_end(m);
        assert!(!seen.is_empty(), "member {i} got nothing");
        for msg in seen {
            let v = u32::from_be_bytes(msg.payload[..4].try_into().unwrap());
            *all.entry(v).or_insert(0u32) += 1;
        }
    }
    assert_eq!(all.len(), N as usize, "every message delivered");
    assert!(all.values().all(|&n| n == 1), "no message delivered twice");
}

#[test]
fn request_reply_across_shards_and_no_responders() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut responder = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    let mut requester = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let inbox = requester.subscribe("_INBOX.r1.*", None);
    requester.flush();

    // Nobody listens yet: NO_RESPONDERS.
    requester.publish_req("svc.echo", "_INBOX.r1.1", b"hello");
    let m = requester.message();
    assert_eq!(m.sid, inbox);
    assert_eq!(m.status, i32::from(MessageStatus::NoResponders));
    assert_eq!(&m.subject[..], b"_INBOX.r1.1");
    assert!(m.payload.is_empty());

    responder.subscribe("svc.echo", Some("echoers"));
    responder.flush();
    requester.publish_req("svc.echo", "_INBOX.r1.2", b"hello");
    let req = responder.message();
    assert_eq!(&req.reply[..], b"_INBOX.r1.2");
    let reply = String::from_utf8(req.reply.to_vec()).unwrap();
    responder.publish(&reply, b"HELLO");
    let answer = requester.message();
    assert_eq!(answer.status, i32::from(MessageStatus::Ok));
    assert_eq!(&answer.payload[..], b"HELLO");
    assert_eq!(dp.total_stats().unwrap().no_responders, 1);
}

#[test]
fn unsubscribe_after_n_messages() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut sub = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    let sid = sub.subscribe("ticks", None);
    sub.send(&Kind::Unsubscribe(v1::Unsubscribe {
        sid,
        after_messages: 3,
    }));
    let keep = sub.subscribe("end", None);
    sub.flush();
    let mut p = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    for i in 0..10u8 {
        p.publish("ticks", &[i]);
    }
    p.publish("end", b"");
    p.flush();
    let mut ticks = Vec::new();
    loop {
        let m = sub.message();
        if m.sid == keep {
            break;
        }
        ticks.push(m.payload[0]);
    }
    assert_eq!(ticks, vec![0, 1, 2]);
    // The subscription is gone: unsubscribing again is an error.
    sub.send(&Kind::Unsubscribe(v1::Unsubscribe {
        sid,
        after_messages: 0,
    }));
    let e = expect_error(&mut sub, ErrorCode::UnknownSid, false);
    assert_eq!(e.sid, sid);
}

#[test]
fn no_echo_is_honoured() {
    let dp = start(&config());
    let mut c = RawClient::open(dp.local_addr());
    c.send(&Kind::Connect(v1::Connect {
        protocol_version: 1,
        credential: TOKEN_A.into(),
        no_echo: true,
        ..Default::default()
    }));
    assert!(matches!(c.recv(), Some(Kind::Welcome(_))));
    c.subscribe("self", None);
    let other = c.subscribe("other", None);
    c.flush();
    c.publish("self", b"x");
    c.publish("other", b"y");
    let mut o = RawClient::connect(dp.local_addr(), TOKEN_A);
    o.publish("other", b"z");
    o.flush();
    let m = c.message();
    assert_eq!((m.sid, &m.payload[..]), (other, &b"z"[..]));
}

#[test]
fn bad_credentials_are_rejected_and_closed() {
    let dp = start(&config());
    for credential in ["abt_wrong", "", TOKEN_A.to_uppercase().as_str()] {
        let mut c = RawClient::open(dp.local_addr());
        c.send(&Kind::Connect(v1::Connect {
            protocol_version: 1,
            credential: credential.into(),
            ..Default::default()
        }));
        expect_error(&mut c, ErrorCode::AuthenticationFailed, true);
        expect_closed(&mut c);
    }
    assert_eq!(dp.total_stats().unwrap().auth_failures, 3);
}

#[test]
fn the_first_frame_must_be_connect() {
    let dp = start(&config());
    let mut c = RawClient::open(dp.local_addr());
    c.publish("a", b"sneaky");
    expect_error(&mut c, ErrorCode::ProtocolViolation, true);
    expect_closed(&mut c);
}

/// A `Connect` is decoded before its credential is looked at: one whose
/// string fields are not UTF-8 is not a valid frame (PROTOCOL_VIOLATION),
/// whatever its credential, and counts as no failed login.
#[test]
fn a_connect_that_does_not_decode_is_refused_before_its_credential() {
    let dp = start(&config());
    for credential in ["abt_wrong", TOKEN_A] {
        let mut bytes = Vec::new();
        arqonbus_proto::codec::encode(
            &Kind::Connect(v1::Connect {
                protocol_version: 1,
                credential: credential.into(),
                client_name: "@@".into(),
                ..Default::default()
            }),
            &mut bytes,
        )
        .unwrap();
        let at = bytes.windows(2).position(|w| w == b"@@").unwrap();
        bytes[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
        let mut c = RawClient::open(dp.local_addr());
        c.send_raw(&bytes);
        expect_error(&mut c, ErrorCode::ProtocolViolation, true);
        expect_closed(&mut c);
    }
    let stats = dp.total_stats().unwrap();
    assert_eq!(stats.auth_failures, 0);
    assert_eq!(stats.protocol_errors, 2);
}

/// Server-to-client kinds sent by a client are protocol errors that close
/// only that connection.
#[test]
fn server_frames_from_a_client_close_its_connection() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut sub = RawClient::connect(addr, TOKEN_A);
    sub.subscribe("still", None);
    sub.flush();
    let kinds = [
        Kind::Drain(v1::Drain {
            deadline_ms: 1,
            reason: "client says so".into(),
        }),
        Kind::Welcome(v1::Welcome::default()),
        Kind::Message(v1::Message::default()),
        Kind::Error(v1::Error::default()),
        Kind::PresenceEvent(v1::PresenceEvent::default()),
    ];
    for kind in &kinds {
        let mut c = RawClient::connect(addr, TOKEN_A);
        c.send(kind);
        let e = expect_error(&mut c, ErrorCode::ProtocolViolation, true);
        assert!(e.message.contains("server-to-client"), "{e:?}");
        expect_closed(&mut c);
    }
    let mut publ = RawClient::connect(addr, TOKEN_A);
    publ.publish("still", b"here");
    publ.flush();
    assert_eq!(&sub.message().payload[..], b"here");
}

/// A client that ends its stream in the middle of a frame: the frames
/// before it are acted on, the partial one is discarded unacted, and the
/// server closes its side.
#[test]
fn a_close_in_the_middle_of_a_frame_discards_only_that_frame() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut sub = RawClient::connect(addr, TOKEN_A);
    sub.subscribe("flow", None);
    sub.flush();
    let mut bytes = Vec::new();
    for payload in [&b"whole"[..], &b"half"[..]] {
        arqonbus_proto::codec::encode(
            &Kind::Publish(v1::Publish {
                subject: Bytes::from_static(b"flow"),
                payload: Bytes::copy_from_slice(payload),
                ..Default::default()
            }),
            &mut bytes,
        )
        .unwrap();
    }
    let mut evil = RawClient::connect(addr, TOKEN_A);
    evil.send_raw(&bytes[..bytes.len() - 3]);
    evil.sock.shutdown(std::net::Shutdown::Write).unwrap();
    // The server closed its side too: it has seen the end of stream.
    expect_closed(&mut evil);
    sub.publish("flow", b"end");
    let got = until_end_payloads(&mut sub, b"end");
    assert_eq!(got, vec![b"whole".to_vec()]);
}

/// Payloads of messages until one whose payload is `end` (not returned).
fn until_end_payloads(c: &mut RawClient, end: &[u8]) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        let m = c.message();
        if m.payload[..] == *end {
            return got;
        }
        got.push(m.payload.to_vec());
    }
}

#[test]
fn tenants_with_identical_subjects_never_see_each_other() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let seed: u64 = rand::random();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let subjects: Vec<String> = (0..20)
        .map(|_| {
            format!(
                "t.{}.{}",
                rand::Rng::random_range(&mut rng, 0..5),
                rand::Rng::random_range(&mut rng, 0..5)
            )
        })
        .collect();
    let mut subs = Vec::new();
    for (token, shard) in [(TOKEN_A, 0), (TOKEN_A, 1), (TOKEN_B, 0), (TOKEN_B, 1)] {
        let mut c = RawClient::connect_on_shard(addr, token, shard);
        c.subscribe(">", None);
        c.subscribe("end", None);
        c.flush();
        subs.push((token, c));
    }
    let mut pa = RawClient::connect(addr, TOKEN_A);
    let mut pb = RawClient::connect(addr, TOKEN_B);
    for s in &subjects {
        pa.publish(s, b"A");
        pb.publish(s, b"B");
    }
    pa.publish("end", b"A");
    pb.publish("end", b"B");
    pa.flush();
    pb.flush();
    for (token, mut c) in subs {
        let mine: &[u8] = if token == TOKEN_A { b"A" } else { b"B" };
        let mut n = 0;
        let mut ends = 0;
        // `>` and `end` both match "end": two copies close the stream.
        while ends < 2 {
            let m = c.message();
            assert_eq!(
                &m.payload[..],
                mine,
                "seed {seed}: tenant leak on {:?}",
                m.subject
            );
            if &m.subject[..] == b"end" {
                ends += 1;
            } else {
                n += 1;
            }
        }
        assert_eq!(n, subjects.len(), "seed {seed}");
    }
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut sub = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    sub.subscribe("flow", None);
    sub.flush();
    let mut publ = RawClient::connect_on_shard(addr, TOKEN_A, 0);

    let bad_inputs: [&[u8]; 4] = [
        &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff], // not protobuf
        &[0x7f, 0xff, 0xff, 0xff],             // length far beyond max_frame
        &[0, 0, 0, 2, 0xa0, 0x06],             // no known kind
        &[0, 0, 0, 4, 0x3a, 0, 0x42, 0],       // two kinds: Ping and Pong
    ];
    for (round, bad) in bad_inputs.iter().enumerate() {
        let mut evil = RawClient::connect_on_shard(addr, TOKEN_A, (round % 2) as u32);
        publ.publish("flow", &[round as u8, 0]);
        evil.send_raw(bad);
        publ.publish("flow", &[round as u8, 1]);
        let code = if round == 1 {
            ErrorCode::FrameTooLarge
        } else {
            ErrorCode::ProtocolViolation
        };
        expect_error(&mut evil, code, true);
        expect_closed(&mut evil);
    }
    publ.flush();
    for round in 0..4u8 {
        for half in 0..2u8 {
            assert_eq!(&sub.message().payload[..], &[round, half]);
        }
    }
    assert_eq!(dp.total_stats().unwrap().protocol_errors, 4);
}

#[test]
fn a_stalled_subscriber_is_cut_while_a_healthy_one_gets_everything() {
    const N: u32 = 20_000;
    const WINDOW: u32 = 64;
    let cfg = config_with(|l| {
        l.max_payload = 16 * 1024;
        l.max_pending_bytes = 256 * 1024;
        l.close_grace_ms = 60_000;
    });
    let dp = start(&cfg);
    let addr = dp.local_addr();

    let mut stalled = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    stalled.subscribe("firehose", None);
    stalled.flush();
    let mut healthy = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    healthy.subscribe("firehose", None);
    healthy.subscribe("end", None);
    healthy.flush();

    let (progress_tx, progress) = std::sync::mpsc::channel::<u32>();
    let reader = thread::spawn(move || {
        let mut next = 0u32;
        loop {
            let m = healthy.message();
            if &m.subject[..] == b"end" {
                return next;
            }
            assert_eq!(u32::from_be_bytes(m.payload[..4].try_into().unwrap()), next);
            next += 1;
            if next.is_multiple_of(WINDOW) {
                let _ = progress_tx.send(next);
            }
        }
    });
    // 20 000 × 1 KiB: far more than the stalled socket's kernel buffers
    // plus max_pending_bytes.
    let mut publ = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let mut payload = vec![7u8; 1024];
    let mut read = 0u32;
    for i in 0..N {
        // Stay at most two windows ahead of the healthy reader: it keeps up,
        // the stalled one falls behind without bound.
        while i >= read + 2 * WINDOW {
            read = progress.recv().unwrap();
        }
        payload[..4].copy_from_slice(&i.to_be_bytes());
        publ.send(&Kind::Publish(v1::Publish {
            subject: Bytes::from_static(b"firehose"),
            payload: Bytes::copy_from_slice(&payload),
            ..Default::default()
        }));
    }
    publ.publish("end", b"");
    publ.flush();
    assert_eq!(
        reader.join().unwrap(),
        N,
        "the healthy subscriber got everything, in order"
    );

    // Only now does the stalled client read: what was buffered, then the
    // error, then the end of the stream.
    let mut last = None;
    while let Some(k) = stalled.recv() {
        last = Some(k);
    }
    match last {
        Some(Kind::Error(e)) => {
            assert_eq!(e.code, i32::from(ErrorCode::SlowConsumer));
            assert!(e.close);
        }
        other => panic!("expected SLOW_CONSUMER last, got {other:?}"),
    }
    let stats = dp.total_stats().unwrap();
    assert_eq!(stats.slow_consumers, 1);
    assert_eq!(
        stats.connections, 2,
        "publisher and healthy subscriber remain"
    );
}

#[test]
fn limits_give_clear_errors_without_closing() {
    let cfg = config_with(|l| {
        l.max_subscriptions = 2;
        l.max_payload = 1024;
    });
    let dp = start(&cfg);
    let mut c = RawClient::connect(dp.local_addr(), TOKEN_A);
    c.subscribe("a", None);
    c.subscribe("b", None);
    let third = c.subscribe("c", None);
    let e = expect_error(&mut c, ErrorCode::MaxSubscriptionsExceeded, false);
    assert_eq!(e.sid, third);
    c.publish("a", &[0u8; 1025]);
    expect_error(&mut c, ErrorCode::MaxPayloadExceeded, false);
    c.publish("bad..subject", b"");
    expect_error(&mut c, ErrorCode::InvalidSubject, false);
    c.publish("$SYS.x", b"");
    expect_error(&mut c, ErrorCode::PermissionDenied, false);
    let dup = c.subscribe("x", None);
    c.send(&Kind::Subscribe(v1::Subscribe {
        sid: dup,
        pattern: Bytes::from_static(b"y"),
        queue_group: Bytes::new(),
    }));
    // The first of the two got MAX_SUBSCRIPTIONS (sid dup is new but over the
    // limit), the duplicate is refused as well; the connection stays open.
    expect_error(&mut c, ErrorCode::MaxSubscriptionsExceeded, false);
    expect_error(&mut c, ErrorCode::MaxSubscriptionsExceeded, false);
    c.publish("a", b"still here");
    assert!(matches!(c.next(), Some(Kind::Message(_))));
}

/// A client that numbers its publishes (`Publish.seq`) learns which one an
/// error is about: the error carries the number, in a batch sent at once.
#[test]
fn an_error_about_a_publish_names_its_seq() {
    let dp = start(&config_with(|l| l.max_payload = 1024));
    let mut c = RawClient::connect(dp.local_addr(), TOKEN_A);
    // The server says it speaks the revision that has `seq`.
    let welcome = c.welcome.clone().unwrap();
    assert_eq!(
        (welcome.protocol_version, welcome.protocol_minor),
        (1, arqonbus_proto::PROTOCOL_MINOR)
    );
    const { assert!(arqonbus_proto::PROTOCOL_MINOR >= 3) };
    let sid = c.subscribe("ok", None);
    c.flush();
    c.publish_numbered("ok", 1, b"fine");
    c.publish_numbered("ok", 2, &[0u8; 1025]);
    c.publish_numbered("ok", 3, b"fine");
    c.publish_numbered("bad..subject", 4, b"");
    c.publish_numbered("$SYS.x", 5, b"");
    c.publish_numbered("ok", 6, b"fine");
    c.publish("bad..subject", b"");
    let seen: Vec<(String, u64)> = c
        .flush()
        .into_iter()
        .map(|k| match k {
            Kind::Message(m) => {
                assert_eq!(m.sid, sid);
                ("message".into(), 0)
            }
            Kind::Error(e) => {
                assert!(!e.close, "{e:?}");
                assert_eq!(e.sid, 0, "{e:?}");
                (format!("{:?}", ErrorCode::try_from(e.code).unwrap()), e.seq)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("message", 0),
        ("MaxPayloadExceeded", 2),
        ("message", 0),
        ("InvalidSubject", 4),
        ("PermissionDenied", 5),
        ("message", 0),
        ("InvalidSubject", 0),
    ]
    .into_iter()
    .map(|(k, s)| (k.to_owned(), s))
    .collect();
    assert_eq!(seen, expected);
}

#[test]
fn silent_connections_time_out() {
    let cfg = config_with(|l| {
        l.auth_timeout_ms = 100;
        l.ping_interval_ms = 50;
        l.max_pings_outstanding = 2;
    });
    let dp = start(&cfg);

    // Never sends Connect.
    let mut mute = RawClient::open(dp.local_addr());
    expect_error(&mut mute, ErrorCode::AuthTimeout, true);
    expect_closed(&mut mute);

    // Authenticates, then never answers pings.
    let mut deaf = RawClient::connect(dp.local_addr(), TOKEN_A);
    assert!(matches!(deaf.recv(), Some(Kind::Ping(_))));
    assert!(matches!(deaf.recv(), Some(Kind::Ping(_))));
    match deaf.recv() {
        Some(Kind::Error(e)) => assert_eq!(e.code, i32::from(ErrorCode::StaleConnection)),
        other => panic!("expected STALE_CONNECTION, got {other:?}"),
    }
    let s = dp.total_stats().unwrap();
    assert_eq!(s.stale_connections, 1);
}

/// Regression: a ring that filled up while the mesh loop was parked left the
/// overflow unflushed and the back-pressured publisher stalled for good.
/// The flush composes across connections and shards: a publisher's `Pong`
/// comes once every message it published before its `Ping` was routed on
/// every shard, so a subscriber's `Ping` sent after that `Pong` is answered
/// after all of them. (A subscriber's `Pong` alone says nothing about
/// messages other connections published.) Small rings keep copies waiting
/// in overflow, where an unmarked `Pong` would overtake them.
#[test]
fn a_publishers_pong_means_its_messages_were_routed_on_every_shard() {
    const N: u32 = 3_000;
    let mut cfg = config();
    cfg.ring_capacity = 16;
    let dp = start(&cfg);
    let addr = dp.local_addr();
    let mut sub = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    let sid = sub.subscribe("flow", None);
    sub.flush();
    let mut publ = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    for round in 0..3u32 {
        let mut batch = Vec::new();
        for i in 0..N {
            arqonbus_proto::codec::encode(
                &Kind::Publish(v1::Publish {
                    subject: Bytes::from_static(b"flow"),
                    payload: Bytes::copy_from_slice(&(round * N + i).to_be_bytes()),
                    ..Default::default()
                }),
                &mut batch,
            )
            .unwrap();
        }
        publ.send_raw(&batch);
        assert!(publ.flush().is_empty(), "the publisher got no messages");
        let got = sub.flush();
        assert_eq!(
            got.len(),
            N as usize,
            "round {round}: all routed before the Pong"
        );
        for (i, k) in got.iter().enumerate() {
            let Kind::Message(m) = k else {
                panic!("expected Message, got {k:?}")
            };
            assert_eq!(m.sid, sid);
            assert_eq!(&m.payload[..], &(round * N + i as u32).to_be_bytes());
        }
    }
}

#[test]
fn a_full_ring_never_stalls_delivery() {
    const N: u32 = 30_000;
    // Bursts until one overflowed the ring: copies cross in batches of up
    // to 64, so a receiving shard that keeps up can drain 16 entries as
    // fast as they fill. Every burst must arrive whole and in order.
    const BURSTS: u32 = 5;
    let mut cfg = config();
    cfg.ring_capacity = 16;
    cfg.overflow_limit = 8;
    let dp = start(&cfg);
    let addr = dp.local_addr();
    let mut sub = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    sub.subscribe("burst", None);
    sub.flush();
    let mut publ = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let mut batch = Vec::new();
    for i in 0..N {
        arqonbus_proto::codec::encode(
            &Kind::Publish(v1::Publish {
                subject: Bytes::from_static(b"burst"),
                payload: Bytes::copy_from_slice(&i.to_be_bytes()),
                ..Default::default()
            }),
            &mut batch,
        )
        .unwrap();
    }
    let mut bursts = 0;
    loop {
        bursts += 1;
        let reader = thread::spawn(move || {
            for i in 0..N {
                let m = sub.message();
                assert_eq!(u32::from_be_bytes(m.payload[..4].try_into().unwrap()), i);
            }
            sub
        });
        publ.send_raw(&batch);
        publ.flush();
        sub = reader.join().unwrap();
        let s = dp.total_stats().unwrap();
        assert_eq!(s.remote_in, u64::from(N * bursts));
        if s.ring_full > 0 {
            break;
        }
        assert!(bursts < BURSTS, "the test must overflow the ring");
    }
}

#[test]
fn a_full_shard_refuses_with_a_clear_error() {
    let cfg = config_with(|l| l.max_connections_per_shard = 1);
    let dp = start(&cfg);
    let mut kept = Vec::new();
    for _ in 0..20 {
        let mut c = RawClient::open(dp.local_addr());
        c.send(&Kind::Connect(v1::Connect {
            protocol_version: 1,
            credential: TOKEN_A.into(),
            ..Default::default()
        }));
        match c.recv() {
            Some(Kind::Welcome(_)) => kept.push(c),
            Some(Kind::Error(e)) => {
                assert_eq!(e.code, i32::from(ErrorCode::MaxConnectionsExceeded));
                assert!(e.close);
                expect_closed(&mut c);
                assert!(dp.total_stats().unwrap().connections_refused >= 1);
                return;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("20 connections to two shards of one connection each were all accepted");
}

#[test]
fn strangers_cannot_send_large_frames() {
    let dp = start(&config());
    let mut c = RawClient::open(dp.local_addr());
    c.send(&Kind::Connect(v1::Connect {
        protocol_version: 1,
        credential: "x".repeat(9000),
        ..Default::default()
    }));
    expect_error(&mut c, ErrorCode::FrameTooLarge, true);
    expect_closed(&mut c);
}

#[test]
fn shards_measure_per_tenant_errors_and_latencies() {
    let mut cfg = config();
    cfg.latency_sample_every = 1;
    let dp = start(&cfg);
    let addr = dp.local_addr();
    let mut sub = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    sub.subscribe("m", None);
    sub.flush();
    let mut publ = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    for _ in 0..10 {
        publ.publish("m", b"12345");
    }
    publ.publish("bad..subject", b"");
    expect_error(&mut publ, ErrorCode::InvalidSubject, false);
    for _ in 0..10 {
        sub.message();
    }
    let metrics = dp.metrics().unwrap();
    assert_eq!(metrics.len(), 2);
    let mut tenant_a = arqonbus_core::metrics::TenantStats::default();
    let mut errors = arqonbus_core::metrics::ErrorCounts::default();
    let mut delivered_samples = 0;
    let mut handshakes = 0;
    for m in &metrics {
        for (t, s) in &m.tenants {
            if t.0 == 1 {
                tenant_a.merge(s);
            }
        }
        errors.merge(&m.errors);
        delivered_samples += m.deliver_latency.len();
        handshakes += m.handshake_latency.len();
    }
    assert_eq!((tenant_a.msgs_in, tenant_a.bytes_in), (10, 50));
    assert_eq!((tenant_a.msgs_out, tenant_a.bytes_out), (10, 50));
    assert_eq!(errors.0[ErrorCode::InvalidSubject as usize], 1);
    assert_eq!(delivered_samples, 10, "every message sampled");
    assert!(handshakes >= 2);
}

#[test]
fn lame_duck_tells_every_client_then_closes_them_spread_over_the_window() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut clients: Vec<RawClient> = (0..6).map(|_| RawClient::connect(addr, TOKEN_A)).collect();
    // Two connections that have not sent `Connect` yet, accepted by a shard.
    let mut strangers: Vec<RawClient> = (0..2).map(|_| RawClient::open(addr)).collect();
    for _ in 0..2_000 {
        if dp.total_stats().unwrap().connections == 8 {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(dp.total_stats().unwrap().connections, 8);
    dp.lame_duck(std::time::Duration::from_millis(300));
    for c in &mut clients {
        match c.next() {
            Some(Kind::Drain(d)) => assert_eq!(d.deadline_ms, 300),
            other => panic!("expected Drain first, got {other:?}"),
        }
        expect_error(c, ErrorCode::ServerShuttingDown, true);
        expect_closed(c);
    }
    // No session yet, so no `Drain` before a `Welcome`: refused at once.
    for c in &mut strangers {
        expect_error(c, ErrorCode::ServerShuttingDown, true);
        expect_closed(c);
    }
    assert!(dp.wait_idle(std::time::Instant::now() + std::time::Duration::from_secs(30)));
    // Nobody is accepting any more.
    let refused = std::net::TcpStream::connect(addr);
    if let Ok(mut s) = refused {
        use std::io::Read as _;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "a listener still accepted"
        );
    }
}
