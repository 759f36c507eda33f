//! What a client can make the server hold: every queue is bounded by the
//! memory it really holds, and one client's flood touches no one else.
//! Real sockets, a real two-shard data plane; read timeouts only bound
//! failures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::io::{ErrorKind, Write};
use std::time::Duration;

use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use common::{RawClient, TOKEN_A, TOKEN_B};

const CAP: u64 = 64 * 1024;

/// Writes `frame` over and over without reading anything, until the
/// server stops taking them (the socket buffers fill) or `max` were sent.
/// Returns how many whole frames were written and the rest of the frame
/// cut short, to be written once the server reads again.
fn flood(c: &mut RawClient, frame: &Kind, max: usize) -> (usize, Vec<u8>) {
    let mut one = Vec::new();
    codec::encode(frame, &mut one).unwrap();
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1024).collect();
    c.sock
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let (mut total, mut pos) = (0usize, 0usize);
    while total < max * one.len() {
        match c.sock.write(&batch[pos..]) {
            Ok(n) => {
                total += n;
                pos = (pos + n) % batch.len();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write failed: {e}"),
        }
    }
    c.sock.set_write_timeout(None).unwrap();
    let cut = total % one.len();
    let tail = if cut == 0 {
        Vec::new()
    } else {
        one[cut..].to_vec()
    };
    (total / one.len(), tail)
}

fn held_for_clients(dp: &arqonbus_dataplane::DataPlane) -> u64 {
    dp.metrics().unwrap().iter().map(|m| m.outbound_bytes).sum()
}

fn limited() -> arqonbus_dataplane::DataPlaneConfig {
    common::config_with(|l| {
        l.max_payload = 16 * 1024;
        l.max_pending_bytes = CAP;
    })
}

#[test]
fn a_client_flooding_pings_without_reading_holds_at_most_its_cap() {
    let dp = common::start(&limited());
    let addr = dp.local_addr();
    let mut flooder = RawClient::connect(addr, TOKEN_A);
    let (mut sent, tail) = flood(&mut flooder, &Kind::Ping(v1::Ping {}), 2_000_000);
    // The server stopped reading long before: the kernel's buffers hold
    // the rest.
    assert!(sent > 10_000, "the flood got going: {sent}");
    let held = held_for_clients(&dp);
    // Never past the cap (growth of its buffers included), and never a
    // read buffer's worth of answers.
    assert!(held <= CAP, "held {held} B for a {CAP} B cap");

    // Everyone else is served as usual, on both shards.
    for shard in [0, 1] {
        let mut sub = RawClient::connect_on_shard(addr, TOKEN_B, shard);
        sub.subscribe("calm.>", None);
        let _ = sub.flush();
        let mut publisher = RawClient::connect_on_shard(addr, TOKEN_B, 1 - shard);
        publisher.publish("calm.x", b"still here");
        match sub.next() {
            Some(Kind::Message(m)) => assert_eq!(&m.payload[..], b"still here"),
            other => panic!("expected the message, got {other:?}"),
        }
    }

    // The flooder reads: its Pongs arrive, in order, and it is served again.
    let mut pongs = 0usize;
    let mut tail = Some(tail);
    while pongs < sent {
        if pongs > sent / 2
            && let Some(t) = tail.take()
            && !t.is_empty()
        {
            // The server reads again: finish the Ping cut short.
            flooder.send_raw(&t);
            sent += 1;
        }
        match flooder.recv() {
            Some(Kind::Pong(_)) => pongs += 1,
            other => panic!("expected a Pong, got {other:?}"),
        }
    }
    assert_eq!(pongs, sent, "every Ping is answered once");
    flooder.send(&Kind::Ping(v1::Ping {}));
    assert!(matches!(flooder.recv(), Some(Kind::Pong(_))));
    dp.shutdown();
}

#[test]
fn a_client_flooding_bad_unsubscribes_without_reading_holds_at_most_its_cap() {
    let dp = common::start(&limited());
    let addr = dp.local_addr();
    let mut flooder = RawClient::connect(addr, TOKEN_A);
    let unknown = Kind::Unsubscribe(v1::Unsubscribe {
        sid: 999_999,
        after_messages: 0,
    });
    let (sent, _) = flood(&mut flooder, &unknown, 2_000_000);
    assert!(sent > 1_000, "the flood got going: {sent}");
    let held = held_for_clients(&dp);
    assert!(held <= CAP, "held {held} B for a {CAP} B cap");
    // Each one is answered with UNKNOWN_SID, keeping the connection open.
    match flooder.recv() {
        Some(Kind::Error(e)) => {
            assert_eq!(e.code, i32::from(v1::ErrorCode::UnknownSid));
            assert!(!e.close);
        }
        other => panic!("expected UNKNOWN_SID, got {other:?}"),
    }
    dp.shutdown();
}

#[test]
fn a_slow_subscriber_is_cut_by_what_its_queue_holds_not_its_wire_bytes() {
    let dp = common::start(&limited());
    let addr = dp.local_addr();
    let mut slow = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    slow.subscribe("tiny.>", None);
    let _ = slow.flush();
    let mut publisher = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    // 16-byte messages, until the slow consumer is cut (the kernel's socket
    // buffers take a few megabytes first); what its queue holds never goes
    // above the cap, counting each message's bookkeeping, not just its wire
    // bytes.
    let mut max_held = 0;
    for _ in 0..400 {
        for _ in 0..1000 {
            publisher.publish("tiny.x", &[7u8; 16]);
        }
        let _ = publisher.flush();
        max_held = max_held.max(held_for_clients(&dp));
        if dp.total_stats().unwrap().slow_consumers > 0 {
            break;
        }
    }
    assert!(max_held <= CAP, "held {max_held} B for a {CAP} B cap");
    assert_eq!(dp.total_stats().unwrap().slow_consumers, 1);
    dp.shutdown();
}
