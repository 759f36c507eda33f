//! Login throttling on the real server: a flood of wrong credentials from
//! one source address is refused with `AUTH_THROTTLED` before its
//! credentials are checked (its valid credential too), while a valid login
//! from another source address (127.0.0.2) is served at once. Plaintext, so
//! the frames can be written by hand; nothing here sleeps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use arqonbus::testing::TestServer;
use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::Bytes;

/// The answer to one `Connect`: `WELCOME` or the error code's name.
fn login(stream: &mut TcpStream, credential: &str) -> String {
    let mut out = Vec::new();
    codec::encode(
        &Kind::Connect(v1::Connect {
            protocol_version: arqonbus_proto::PROTOCOL_VERSION,
            credential: credential.to_owned(),
            client_name: "throttle-test".into(),
            client_kind: v1::ClientKind::Agent.into(),
            client_version: String::new(),
            no_echo: false,
        }),
        &mut out,
    )
    .unwrap();
    stream.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(total) = codec::frame_len(&buf, 1 << 20).unwrap() {
            let body = Bytes::copy_from_slice(&buf[codec::LEN_PREFIX..total]);
            return match codec::decode_body(body).unwrap() {
                Kind::Welcome(_) => "WELCOME".to_owned(),
                Kind::Error(e) => v1::ErrorCode::try_from(e.code)
                    .map_or_else(|_| e.code.to_string(), |c| c.as_str_name().to_owned()),
                other => panic!("unexpected answer {other:?}"),
            };
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A connection from 127.0.0.2 (bound before connecting).
fn connect_from_127_0_0_2(addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(s.local_addr().unwrap().ip().to_string(), "127.0.0.2");
    s
}

#[test]
fn a_flood_of_wrong_credentials_is_throttled_but_not_other_sources() {
    let s = TestServer::start_with(|c| c.tls.enabled = false);
    let addr = s.addr();
    let valid = s.token();
    let mut answers: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..300 {
        let mut c = connect(addr);
        *answers.entry(login(&mut c, "abt_wrong-guess")).or_default() += 1;
    }
    let throttled = answers
        .get("ERROR_CODE_AUTH_THROTTLED")
        .copied()
        .unwrap_or(0);
    let failed = answers
        .get("ERROR_CODE_AUTHENTICATION_FAILED")
        .copied()
        .unwrap_or(0);
    assert_eq!(failed + throttled, 300, "{answers:?}");
    // Each of the 2 shards checks about 10 before refusing (a little decay
    // may let one or two more through).
    assert!(
        (10..=30).contains(&failed),
        "checked credentials: {answers:?}"
    );
    assert_eq!(s.stats().auth_failures, u64::from(failed));
    // The flooding source's valid credential is refused too, unchecked...
    let mut same = connect(addr);
    assert_eq!(login(&mut same, &valid), "ERROR_CODE_AUTH_THROTTLED");
    // ...while another source logs in at once.
    let mut other = connect_from_127_0_0_2(addr);
    assert_eq!(login(&mut other, &valid), "WELCOME");
    // The refusals are counted by code.
    let mut http = TcpStream::connect(s.metrics_addr()).unwrap();
    http.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut metrics = String::new();
    http.read_to_string(&mut metrics).unwrap();
    let counted = |family: &str, label: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    // The valid login refused above counts too, by code and per shard.
    let expected = u64::from(throttled + 1);
    assert_eq!(
        counted("arqonbus_errors_total", "\"AUTH_THROTTLED\""),
        expected,
        "{metrics}"
    );
    assert_eq!(
        counted("arqonbus_auth_throttled_total", "shard="),
        expected,
        "{metrics}"
    );
}
