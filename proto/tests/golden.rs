//! Golden vectors: `proto/golden/*.bin` hold one encoded frame each, length
//! prefix included. Every build must decode each file to exactly the value
//! below and re-encode it to exactly the same bytes, so a change to the
//! `.proto` or the codec that moves a byte is caught.
//!
//! New vectors are written with `ARQONBUS_BLESS_GOLDEN=1 cargo test -p
//! arqonbus-proto --test golden`; existing files are never rewritten by it
//! (delete one deliberately to re-bless it, and say why in the commit).
#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::path::PathBuf;

use arqonbus_proto::codec::{self, MessageTemplate};
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::{Bytes, BytesMut};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

/// One metadata entry (a map of one encodes deterministically).
fn one_entry() -> std::collections::HashMap<String, String> {
    [("role".to_owned(), "viewer".to_owned())]
        .into_iter()
        .collect()
}

fn member() -> v1::PresenceMember {
    v1::PresenceMember {
        client_id: 42,
        client_kind: v1::ClientKind::Human.into(),
        client_name: "web".into(),
        metadata: one_entry(),
    }
}

/// Every frame shape the protocol has, by file name.
fn vectors() -> Vec<(&'static str, Kind)> {
    vec![
        (
            "connect",
            Kind::Connect(v1::Connect {
                protocol_version: 1,
                credential: "abt_example-not-a-real-token".into(),
                client_name: "sensor-17".into(),
                client_kind: v1::ClientKind::Device.into(),
                client_version: "arqonbus-client/0.1.0".into(),
                no_echo: true,
            }),
        ),
        (
            "welcome",
            Kind::Welcome(v1::Welcome {
                protocol_version: 1,
                protocol_minor: 0,
                server_id: "ab-0011223344556677".into(),
                session_id: (7u64 << 32) | 3,
                limits: Some(v1::Limits {
                    max_payload: 1_048_576,
                    max_frame: 1_064_960,
                    max_subscriptions: 10_000,
                    max_headers: 32,
                    max_subject_len: 256,
                    ping_interval_ms: 30_000,
                    max_pending_bytes: 16_777_216,
                }),
                shard: 1,
                server_version: "0.1.0".into(),
                tenant: "default".into(),
            }),
        ),
        (
            "publish",
            Kind::Publish(v1::Publish {
                subject: b(b"orders.eu.created"),
                reply: Bytes::new(),
                headers: vec![],
                seq: 0,
                payload: b(b"{\"id\":42}"),
            }),
        ),
        (
            "publish_numbered",
            Kind::Publish(v1::Publish {
                subject: b(b"orders.eu.created"),
                reply: Bytes::new(),
                headers: vec![],
                seq: 300,
                payload: b(b"{\"id\":43}"),
            }),
        ),
        (
            "publish_request_headers",
            Kind::Publish(v1::Publish {
                subject: b(b"svc.echo"),
                reply: b(b"_INBOX.Q1w2E3r4.7"),
                headers: vec![v1::Header {
                    key: b(b"traceparent"),
                    value: b(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                }],
                seq: 0,
                payload: b(b"ping"),
            }),
        ),
        (
            "subscribe",
            Kind::Subscribe(v1::Subscribe {
                sid: 1,
                pattern: b(b"orders.*.created"),
                queue_group: Bytes::new(),
            }),
        ),
        (
            "subscribe_queue",
            Kind::Subscribe(v1::Subscribe {
                sid: 300,
                pattern: b(b"jobs.>"),
                queue_group: b(b"workers"),
            }),
        ),
        (
            "unsubscribe",
            Kind::Unsubscribe(v1::Unsubscribe {
                sid: 300,
                after_messages: 5,
            }),
        ),
        (
            "message",
            Kind::Message(v1::Message {
                sid: 1,
                subject: b(b"orders.eu.created"),
                reply: Bytes::new(),
                headers: vec![],
                status: 0,
                payload: b(b"{\"id\":42}"),
            }),
        ),
        (
            "message_no_responders",
            Kind::Message(v1::Message {
                sid: 2,
                subject: b(b"_INBOX.Q1w2E3r4.7"),
                reply: Bytes::new(),
                headers: vec![],
                status: v1::MessageStatus::NoResponders.into(),
                payload: Bytes::new(),
            }),
        ),
        (
            "drain",
            Kind::Drain(v1::Drain {
                deadline_ms: 30_000,
                reason: "server restarting".into(),
            }),
        ),
        (
            "presence_track",
            Kind::PresenceTrack(v1::PresenceTrack {
                sid: 3,
                metadata: one_entry(),
            }),
        ),
        (
            "presence_watch",
            Kind::PresenceWatch(v1::PresenceWatch {
                watch_id: 7,
                subject: b(b"rooms.lobby"),
                stop: false,
            }),
        ),
        (
            "presence_query",
            Kind::PresenceQuery(v1::PresenceQuery {
                request_id: 9,
                subject: b(b"rooms.lobby"),
            }),
        ),
        (
            "presence_reply",
            Kind::PresenceReply(v1::PresenceReply {
                request_id: 9,
                subject: b(b"rooms.lobby"),
                members: vec![member()],
                truncated: false,
                error: 0,
            }),
        ),
        (
            "presence_event",
            Kind::PresenceEvent(v1::PresenceEvent {
                watch_id: 7,
                subject: b(b"rooms.lobby"),
                action: v1::PresenceAction::Join.into(),
                member: Some(member()),
            }),
        ),
        ("ping", Kind::Ping(v1::Ping {})),
        ("pong", Kind::Pong(v1::Pong {})),
        (
            "error",
            Kind::Error(v1::Error {
                code: v1::ErrorCode::SlowConsumer.into(),
                message: "slow consumer: outbound buffer exceeded max_pending_bytes".into(),
                close: true,
                sid: 0,
                seq: 0,
            }),
        ),
        (
            "error_about_publish",
            Kind::Error(v1::Error {
                code: v1::ErrorCode::PermissionDenied.into(),
                message: "not allowed to publish to this subject".into(),
                close: false,
                sid: 0,
                seq: 300,
            }),
        ),
    ]
}

#[test]
fn every_golden_vector_decodes_and_reencodes_byte_for_byte() {
    let bless = std::env::var_os("ARQONBUS_BLESS_GOLDEN").is_some();
    for (name, expected) in vectors() {
        let path = golden_dir().join(format!("{name}.bin"));
        if !path.exists() && bless {
            let mut out = Vec::new();
            codec::encode(&expected, &mut out).unwrap();
            std::fs::write(&path, out).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (bless new vectors, see module docs)",
                path.display()
            )
        });
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = codec::decode(&mut buf, u32::MAX).unwrap().unwrap();
        assert!(buf.is_empty(), "{name}: trailing bytes");
        assert_eq!(decoded, expected, "{name}: decoded value changed");
        let mut again = Vec::new();
        codec::encode(&decoded, &mut again).unwrap();
        assert_eq!(again, bytes, "{name}: re-encoding changed bytes");
    }
}

#[test]
fn the_fan_out_encoder_writes_the_golden_message() {
    for name in ["message", "message_no_responders"] {
        let bytes = std::fs::read(golden_dir().join(format!("{name}.bin"))).unwrap();
        let Some(Kind::Message(m)) =
            codec::decode(&mut BytesMut::from(&bytes[..]), u32::MAX).unwrap()
        else {
            panic!("{name} is not a message");
        };
        let mut t = MessageTemplate::new();
        t.prepare(&m.subject, &m.reply, &m.headers, m.status, m.payload.len());
        let mut out = Vec::new();
        t.write_prefix(m.sid, &mut out).unwrap();
        out.extend_from_slice(&m.payload);
        assert_eq!(out, bytes, "{name}");
    }
}

#[test]
fn every_frame_kind_has_a_vector() {
    let names: Vec<&str> = vectors()
        .iter()
        .map(|(_, k)| match k {
            Kind::Connect(_) => "connect",
            Kind::Welcome(_) => "welcome",
            Kind::Publish(_) => "publish",
            Kind::Subscribe(_) => "subscribe",
            Kind::Unsubscribe(_) => "unsubscribe",
            Kind::Message(_) => "message",
            Kind::Ping(_) => "ping",
            Kind::Pong(_) => "pong",
            Kind::Error(_) => "error",
            Kind::Drain(_) => "drain",
            Kind::PresenceTrack(_) => "presence_track",
            Kind::PresenceWatch(_) => "presence_watch",
            Kind::PresenceQuery(_) => "presence_query",
            Kind::PresenceReply(_) => "presence_reply",
            Kind::PresenceEvent(_) => "presence_event",
        })
        .collect();
    for kind in [
        "connect",
        "welcome",
        "publish",
        "subscribe",
        "unsubscribe",
        "message",
        "ping",
        "pong",
        "error",
        "drain",
        "presence_track",
        "presence_watch",
        "presence_query",
        "presence_reply",
        "presence_event",
    ] {
        assert!(names.contains(&kind), "no golden vector for {kind}");
    }
}
