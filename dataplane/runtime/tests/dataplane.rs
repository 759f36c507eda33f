//! Data-plane behaviour over real sockets, two shards, plaintext.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

mod common;

use arqonbus_proto::v1::{ErrorCode, MessageStatus, frame::Kind};
use common::{RawClient, TOKEN_A, config, start};

#[test]
fn publish_crosses_shards() {
    let dp = start(&config());
    let addr = dp.local_addr();
    let mut sub = RawClient::connect_on_shard(addr, TOKEN_A, 1);
    let mut publ = RawClient::connect_on_shard(addr, TOKEN_A, 0);
    let sid = sub.subscribe("orders.*", None);
    sub.flush();
    for i in 0..100u32 {
        publ.publish("orders.created", &i.to_be_bytes());
    }
    publ.flush();
    for i in 0..100u32 {
        let m = sub.message();
        assert_eq!(m.sid, sid);
        assert_eq!(&m.subject[..], b"orders.created");
        assert_eq!(&m.payload[..], &i.to_be_bytes());
    }
    let stats = dp.total_stats().unwrap();
    assert_eq!(stats.remote_out, 100);
    assert_eq!(stats.msgs_out, 100);
}

#[test]
fn request_without_responders_gets_no_responders() {
    let dp = start(&config());
    let mut c = RawClient::connect(dp.local_addr(), TOKEN_A);
    let sid = c.subscribe("_INBOX.x.*", None);
    c.flush();
    c.publish_req("service.echo", "_INBOX.x.1", b"ping");
    let m = c.message();
    assert_eq!(m.sid, sid);
    assert_eq!(m.status, i32::from(MessageStatus::NoResponders));
    assert_eq!(&m.subject[..], b"_INBOX.x.1");
}

#[test]
fn garbage_gets_an_error_and_a_close() {
    let dp = start(&config());
    let mut c = RawClient::connect(dp.local_addr(), TOKEN_A);
    c.send_raw(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    match c.recv() {
        Some(Kind::Error(e)) => {
            assert_eq!(e.code, i32::from(ErrorCode::ProtocolViolation));
            assert!(e.close);
        }
        other => panic!("expected Error, got {other:?}"),
    }
    assert!(c.recv().is_none());
}
