//! Presence end to end on a real data plane with two shards: members on one
//! shard, watchers and queries on the other, leaves when a connection drops
//! without a goodbye, tenants apart, bad requests refused without closing.
//! specs/presence.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use arqonbus_proto::v1::{self, ErrorCode, frame::Kind};
use bytes::Bytes;
use common::{RawClient, TOKEN_A, TOKEN_B};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn watch(c: &mut RawClient, id: u64, subject: &str) {
    c.send(&Kind::PresenceWatch(v1::PresenceWatch {
        watch_id: id,
        subject: b(subject),
        stop: false,
    }));
}

fn track(c: &mut RawClient, sid: u64, meta: &[(&str, &str)]) {
    c.send(&Kind::PresenceTrack(v1::PresenceTrack {
        sid,
        metadata: meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }));
}

fn query(c: &mut RawClient, id: u64, subject: &str) -> v1::PresenceReply {
    c.send(&Kind::PresenceQuery(v1::PresenceQuery {
        request_id: id,
        subject: b(subject),
    }));
    match c.next() {
        Some(Kind::PresenceReply(r)) => {
            assert_eq!(r.request_id, id);
            r
        }
        other => panic!("expected PresenceReply, got {other:?}"),
    }
}

fn event(c: &mut RawClient) -> v1::PresenceEvent {
    match c.next() {
        Some(Kind::PresenceEvent(e)) => e,
        other => panic!("expected PresenceEvent, got {other:?}"),
    }
}

fn error(c: &mut RawClient) -> (ErrorCode, u64) {
    match c.next() {
        Some(Kind::Error(e)) => {
            assert!(!e.close, "presence errors never close");
            (e.code(), e.sid)
        }
        other => panic!("expected Error, got {other:?}"),
    }
}

#[test]
fn members_on_one_shard_are_seen_from_the_other_and_leave_without_goodbye() {
    let plane = common::start(&common::config());
    let addr = plane.local_addr();
    let mut watcher = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    let mut other_tenant = RawClient::connect_on_shard(addr, TOKEN_B, 1);
    watch(&mut watcher, 5, "room.1");
    watch(&mut other_tenant, 5, "room.1");
    watcher.flush();
    other_tenant.flush();

    let mut member = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let member_id = member.welcome.as_ref().unwrap().session_id;
    let sid = member.subscribe("room.1", None);
    track(&mut member, sid, &[("role", "host")]);
    member.flush();

    // The watcher on the other shard hears the join.
    let join = event(&mut watcher);
    assert_eq!(join.watch_id, 5);
    assert_eq!(join.action(), v1::PresenceAction::Join);
    assert_eq!(&join.subject[..], b"room.1");
    let m = join.member.unwrap();
    assert_eq!(m.client_id, member_id);
    assert_eq!(m.client_name, "raw-test");
    assert_eq!(m.metadata.get("role").map(String::as_str), Some("host"));

    // Both shards answer the query from their own replica.
    let from_1 = query(&mut watcher, 1, "room.1");
    assert_eq!(from_1.error, 0);
    assert_eq!(from_1.members.len(), 1);
    assert_eq!(from_1.members[0].client_id, member_id);
    let mut asker_0 = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    assert_eq!(query(&mut asker_0, 2, "room.1").members.len(), 1);

    // Another tenant with the same subject saw nothing (its watch is on the
    // shard that already delivered the join: the Pong comes after it).
    assert!(
        other_tenant
            .flush()
            .iter()
            .all(|k| !matches!(k, Kind::PresenceEvent(_)))
    );
    assert!(query(&mut other_tenant, 3, "room.1").members.is_empty());

    // The member's connection drops without a goodbye.
    drop(member);
    let leave = event(&mut watcher);
    assert_eq!(leave.action(), v1::PresenceAction::Leave);
    assert_eq!(leave.member.unwrap().client_id, member_id);
    assert!(query(&mut watcher, 4, "room.1").members.is_empty());
    assert!(query(&mut asker_0, 5, "room.1").members.is_empty());
    plane.shutdown();
}

#[test]
fn unsubscribing_leaves_and_bad_requests_are_refused_without_closing() {
    let plane = common::start(&common::config());
    let addr = plane.local_addr();
    let mut c = RawClient::connect(addr, TOKEN_A);
    watch(&mut c, 9, "lobby");
    let sid = c.subscribe("lobby", None);
    track(&mut c, sid, &[]);
    assert_eq!(event(&mut c).action(), v1::PresenceAction::Join);
    c.send(&Kind::Unsubscribe(v1::Unsubscribe {
        sid,
        after_messages: 0,
    }));
    assert_eq!(event(&mut c).action(), v1::PresenceAction::Leave);

    // A wildcard subscription cannot be listed.
    let wild = c.subscribe("lobby.*", None);
    track(&mut c, wild, &[]);
    assert_eq!(error(&mut c), (ErrorCode::InvalidSubject, wild));
    // Nor an unknown one.
    track(&mut c, 999, &[]);
    assert_eq!(error(&mut c), (ErrorCode::UnknownSid, 999));
    // Metadata past its bounds.
    let lit = c.subscribe("lobby", None);
    let long = "v".repeat(200);
    track(&mut c, lit, &[("k", long.as_str())]);
    assert_eq!(error(&mut c), (ErrorCode::InvalidHeaders, lit));
    // The same subscription twice.
    track(&mut c, lit, &[]);
    assert_eq!(event(&mut c).action(), v1::PresenceAction::Join);
    track(&mut c, lit, &[]);
    assert_eq!(error(&mut c), (ErrorCode::InvalidSid, lit));
    // Reserved subjects, watch id 0, a watch id twice, an unknown watch.
    watch(&mut c, 10, "$SYS.x");
    assert_eq!(error(&mut c), (ErrorCode::PermissionDenied, 10));
    watch(&mut c, 0, "lobby");
    assert_eq!(error(&mut c).0, ErrorCode::InvalidSid);
    watch(&mut c, 9, "lobby");
    assert_eq!(error(&mut c), (ErrorCode::InvalidSid, 9));
    c.send(&Kind::PresenceWatch(v1::PresenceWatch {
        watch_id: 77,
        subject: Bytes::new(),
        stop: true,
    }));
    assert_eq!(error(&mut c), (ErrorCode::UnknownSid, 77));
    // Still open and served.
    assert_eq!(query(&mut c, 1, "lobby").members.len(), 1);
    c.flush();
    plane.shutdown();
}

#[test]
fn configured_bounds_refuse_count_and_change_with_the_configuration() {
    let plane = common::start(&common::config_with(|l| {
        l.presence_members_per_subject = 1;
        l.presence_watches_per_connection = 1;
    }));
    let addr = plane.local_addr();
    let mut watcher = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    watch(&mut watcher, 1, "room");
    watch(&mut watcher, 2, "hall");
    assert_eq!(error(&mut watcher), (ErrorCode::PresenceLimitExceeded, 2));

    let mut a = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let sid_a = a.subscribe("room", None);
    track(&mut a, sid_a, &[]);
    a.flush();
    assert_eq!(event(&mut watcher).action(), v1::PresenceAction::Join);
    let mut b = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let sid_b = b.subscribe("room", None);
    track(&mut b, sid_b, &[]);
    assert_eq!(error(&mut b), (ErrorCode::PresenceLimitExceeded, sid_b));

    // The gauges and refusals reach the shard counters /metrics exports.
    let stats = plane.total_stats().unwrap();
    assert_eq!(stats.presence_refused_subject_full, 1);
    assert_eq!(stats.presence_refused_watches, 1);
    assert_eq!(stats.presence_refused_tenant_full, 0);
    assert_eq!(stats.presence_local_members, 1);
    assert_eq!(stats.presence_members, 1);
    assert_eq!(stats.presence_watches, 1);

    // A subscription ended by `Unsubscribe{after_messages}` leaves with its
    // last message, and frees its place.
    a.send(&Kind::Unsubscribe(v1::Unsubscribe {
        sid: sid_a,
        after_messages: 1,
    }));
    a.flush();
    let mut publisher = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    publisher.publish("room", b"last");
    publisher.flush();
    let leave = event(&mut watcher);
    assert_eq!(leave.action(), v1::PresenceAction::Leave);
    assert_eq!(
        leave.member.unwrap().client_id,
        a.welcome.as_ref().unwrap().session_id
    );
    track(&mut b, sid_b, &[]);
    b.flush();
    assert_eq!(event(&mut watcher).action(), v1::PresenceAction::Join);
    let stats = plane.total_stats().unwrap();
    assert_eq!(stats.presence_members, 1);

    // Raised bounds apply to the next request; what is listed stays.
    let limits = arqonbus_core::limits::Limits {
        presence_members_per_subject: 2,
        presence_watches_per_connection: 2,
        ..arqonbus_core::limits::Limits::default()
    };
    plane
        .apply(&std::sync::Arc::new(common::snapshot(2, limits)))
        .unwrap();
    watch(&mut watcher, 2, "hall");
    let sid_c = a.subscribe("room", None);
    track(&mut a, sid_c, &[]);
    a.flush();
    assert_eq!(event(&mut watcher).action(), v1::PresenceAction::Join);
    assert_eq!(query(&mut watcher, 3, "room").members.len(), 2);
    plane.shutdown();
}
