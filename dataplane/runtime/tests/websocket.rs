//! The WebSocket edge end to end: a real data plane, real WebSocket clients
//! (the blocking `tungstenite` client over std sockets, no async runtime in
//! the test), native clients beside them. specs/websocket.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use arqonbus_core::TenantId;
use arqonbus_core::limits::Limits;
use arqonbus_dataplane::{DataPlane, DataPlaneConfig, WebSocketEdge};
use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, ErrorCode, frame::Kind};
use bytes::Bytes;
use common::{RawClient, TOKEN_A, TOKEN_B};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

fn config(edit: impl FnOnce(&mut Limits), origins: &[&str]) -> DataPlaneConfig {
    let mut c = common::config_with(edit);
    c.websocket = Some(WebSocketEdge {
        listen: "127.0.0.1:0".parse().unwrap(),
        allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
    });
    c
}

fn ws_addr(plane: &DataPlane) -> SocketAddr {
    plane.websocket_addr().expect("websocket listener")
}

/// A WebSocket client speaking the native frames, one per binary message.
struct WsClient<S: std::io::Read + Write> {
    ws: WebSocket<S>,
    welcome: Option<v1::Welcome>,
}

fn request(
    addr: SocketAddr,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    req
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    sock.set_nodelay(true).unwrap();
    sock
}

/// Upgrades; `Err` carries the HTTP status of a refused upgrade.
fn upgrade(
    addr: SocketAddr,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> Result<WsClient<TcpStream>, u16> {
    match tungstenite::client(request(addr, protocol, origin), tcp(addr)) {
        Ok((ws, resp)) => {
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some("arqonbus.v1")
            );
            Ok(WsClient { ws, welcome: None })
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

fn open(addr: SocketAddr) -> WsClient<TcpStream> {
    upgrade(addr, Some("arqonbus.v1"), None).unwrap()
}

fn connect(addr: SocketAddr, token: &str) -> WsClient<TcpStream> {
    let mut c = open(addr);
    c.connect(token);
    c
}

impl<S: std::io::Read + Write> WsClient<S> {
    fn send(&mut self, kind: &Kind) {
        // The native encoding without its 4-byte length prefix.
        let mut framed = Vec::new();
        codec::encode(kind, &mut framed).unwrap();
        self.ws
            .send(Message::Binary(Bytes::from(framed).slice(4..)))
            .unwrap();
    }

    fn connect(&mut self, token: &str) {
        self.send(&Kind::Connect(v1::Connect {
            protocol_version: 1,
            credential: token.into(),
            client_name: "ws-test".into(),
            client_kind: v1::ClientKind::Human.into(),
            ..Default::default()
        }));
        match self.recv() {
            Recv::Frame(Kind::Welcome(w)) => self.welcome = Some(w),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// The next frame (one per binary message), or how the socket closed.
    fn recv(&mut self) -> Recv {
        loop {
            match self.ws.read() {
                Ok(Message::Binary(b)) => {
                    let kind = codec::decode_body(b).expect("one whole Frame per message");
                    return Recv::Frame(kind);
                }
                Ok(Message::Close(c)) => return Recv::Closed(c.map(|c| c.code)),
                Ok(Message::Text(_)) => panic!("the server sent text"),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Recv::Closed(None);
                }
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Recv::Closed(None);
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next frame that is not a server Ping (answered).
    fn next(&mut self) -> Recv {
        loop {
            match self.recv() {
                Recv::Frame(Kind::Ping(_)) => self.send(&Kind::Pong(v1::Pong {})),
                r => return r,
            }
        }
    }

    fn subscribe(&mut self, sid: u64, pattern: &str) {
        self.send(&Kind::Subscribe(v1::Subscribe {
            sid,
            pattern: Bytes::copy_from_slice(pattern.as_bytes()),
            queue_group: Bytes::new(),
        }));
    }

    fn publish(&mut self, subject: &str, payload: &[u8]) {
        self.send(&Kind::Publish(v1::Publish {
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            reply: Bytes::new(),
            headers: vec![],
            seq: 0,
            payload: Bytes::copy_from_slice(payload),
        }));
    }

    fn flush(&mut self) {
        self.send(&Kind::Ping(v1::Ping {}));
        match self.next() {
            Recv::Frame(Kind::Pong(_)) => {}
            other => panic!("expected Pong, got {other:?}"),
        }
    }

    fn message(&mut self) -> v1::Message {
        match self.next() {
            Recv::Frame(Kind::Message(m)) => m,
            other => panic!("expected Message, got {other:?}"),
        }
    }

    /// Reads until the server closes; returns the close code and the
    /// error frames seen before it.
    fn until_closed(&mut self) -> (Option<CloseCode>, Vec<ErrorCode>) {
        let mut errors = Vec::new();
        loop {
            match self.recv() {
                Recv::Frame(Kind::Error(e)) => errors.push(e.code()),
                Recv::Frame(_) => {}
                Recv::Closed(code) => return (code, errors),
            }
        }
    }
}

#[derive(Debug)]
enum Recv {
    Frame(Kind),
    Closed(Option<CloseCode>),
}

/// A native and a WebSocket client exchange messages both ways.
fn both_ways(ws: &mut WsClient<impl std::io::Read + Write>, native: &mut RawClient, n: u8) {
    let subject = format!("chat.{n}");
    ws.subscribe(u64::from(n) + 1, &subject);
    ws.flush();
    let sid = native.subscribe(&subject, None);
    native.flush();
    native.publish(&subject, b"from native");
    let m = ws.message();
    assert_eq!(&m.payload[..], b"from native");
    assert_eq!(&m.subject[..], subject.as_bytes());
    assert_eq!(native.message().sid, sid);
    ws.publish(&subject, b"from the browser");
    assert_eq!(&ws.message().payload[..], b"from the browser");
    assert_eq!(&native.message().payload[..], b"from the browser");
}

#[test]
fn browser_and_native_clients_share_subjects() {
    let plane = common::start(&config(|_| {}, &[]));
    let mut native = RawClient::connect(plane.local_addr(), TOKEN_A);
    // Several WebSocket connections land on both shards.
    let mut clients: Vec<_> = (0..6).map(|_| connect(ws_addr(&plane), TOKEN_A)).collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(ws.welcome.as_ref().unwrap().tenant, "a");
        both_ways(ws, &mut native, i as u8);
    }
    // Another tenant on the same subject hears nothing.
    let mut other = connect(ws_addr(&plane), TOKEN_B);
    other.subscribe(1, "chat.0");
    other.flush();
    native.publish("chat.0", b"tenant a only");
    assert_eq!(&clients[0].message().payload[..], b"tenant a only");
    other.flush();
    let infos = plane.connections().unwrap();
    assert_eq!(infos.len(), 8);
    plane.shutdown();
}

#[test]
fn subprotocol_is_required() {
    let plane = common::start(&config(|_| {}, &[]));
    let addr = ws_addr(&plane);
    assert_eq!(upgrade(addr, None, None).err(), Some(400));
    assert_eq!(upgrade(addr, Some("mqtt"), None).err(), Some(400));
    // Offered among others, it is chosen.
    let mut c = upgrade(addr, Some("mqtt, arqonbus.v1"), None).unwrap();
    c.connect(TOKEN_A);
    // A request that is not a WebSocket upgrade at all.
    let mut raw = tcp(addr);
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut raw, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    c.flush();
    plane.shutdown();
}

#[test]
fn server_wide_origins_are_checked() {
    let plane = common::start(&config(|_| {}, &["https://app.example"]));
    let addr = ws_addr(&plane);
    assert_eq!(
        upgrade(addr, Some("arqonbus.v1"), Some("https://evil.example")).err(),
        Some(403)
    );
    let mut ok = upgrade(addr, Some("arqonbus.v1"), Some("https://app.example")).unwrap();
    ok.connect(TOKEN_A);
    // Not a browser: no Origin to check.
    let mut program = upgrade(addr, Some("arqonbus.v1"), None).unwrap();
    program.connect(TOKEN_A);
    plane.shutdown();
}

#[test]
fn tenant_origins_are_checked() {
    let mut cfg = config(|_| {}, &[]);
    let mut snap = common::snapshot(1, Limits::default());
    snap.set_allowed_origins(TenantId(1), vec!["https://a.example".into()]);
    cfg.config = Arc::new(snap);
    let plane = common::start(&cfg);
    let addr = ws_addr(&plane);

    let mut wrong = upgrade(addr, Some("arqonbus.v1"), Some("https://b.example")).unwrap();
    wrong.send(&Kind::Connect(v1::Connect {
        protocol_version: 1,
        credential: TOKEN_A.into(),
        ..Default::default()
    }));
    let (code, errors) = wrong.until_closed();
    assert_eq!(errors, [ErrorCode::PermissionDenied]);
    assert_eq!(code, Some(CloseCode::Policy));

    let mut right = upgrade(addr, Some("arqonbus.v1"), Some("HTTPS://A.example")).unwrap();
    right.connect(TOKEN_A);
    // Tenant b has no list: any origin.
    let mut b = upgrade(addr, Some("arqonbus.v1"), Some("https://b.example")).unwrap();
    b.connect(TOKEN_B);
    // Native connections have no Origin.
    let mut native = RawClient::connect(plane.local_addr(), TOKEN_A);
    both_ways(&mut right, &mut native, 1);
    plane.shutdown();
}

#[test]
fn bad_input_closes_only_that_connection() {
    let plane = common::start(&config(|_| {}, &[]));
    let addr = ws_addr(&plane);
    let mut healthy = connect(addr, TOKEN_A);
    let mut native = RawClient::connect(plane.local_addr(), TOKEN_A);

    // A text message.
    let mut text = connect(addr, TOKEN_A);
    text.ws.send(Message::text("{\"publish\":1}")).unwrap();
    assert_eq!(text.until_closed().0, Some(CloseCode::Unsupported));

    // An unmasked client frame (malformed per RFC 6455 5.1).
    let mut unmasked = connect(addr, TOKEN_A);
    unmasked
        .ws
        .get_mut()
        .write_all(&[0x82, 0x01, 0x00])
        .unwrap();
    assert_eq!(unmasked.until_closed().0, Some(CloseCode::Protocol));

    // A reserved opcode.
    let mut opcode = open(addr);
    opcode
        .ws
        .get_mut()
        .write_all(&[0x83, 0x80, 0, 0, 0, 0])
        .unwrap();
    assert_eq!(opcode.until_closed().0, Some(CloseCode::Protocol));

    // A message over 8 KiB before Welcome: never buffered, closed 1009.
    let mut big = open(addr);
    big.ws
        .send(Message::Binary(vec![0u8; 9 * 1024].into()))
        .unwrap();
    assert_eq!(big.until_closed().0, Some(CloseCode::Size));

    // After Welcome the limit is max_frame.
    let mut huge = connect(addr, TOKEN_A);
    let max_frame = huge.welcome.as_ref().unwrap().limits.unwrap().max_frame as usize;
    huge.ws
        .send(Message::Binary(vec![0u8; max_frame + 1].into()))
        .unwrap();
    assert_eq!(huge.until_closed().0, Some(CloseCode::Size));

    // A binary message that is not a Frame: the protocol's own error.
    let mut garbage = connect(addr, TOKEN_A);
    garbage
        .ws
        .send(Message::Binary(vec![0xff; 16].into()))
        .unwrap();
    let (code, errors) = garbage.until_closed();
    assert_eq!(errors, [ErrorCode::ProtocolViolation]);
    assert_eq!(code, Some(CloseCode::Protocol));

    // A wrong credential.
    let mut stranger = open(addr);
    stranger.send(&Kind::Connect(v1::Connect {
        protocol_version: 1,
        credential: "abt_wrong".into(),
        ..Default::default()
    }));
    let (code, errors) = stranger.until_closed();
    assert_eq!(errors, [ErrorCode::AuthenticationFailed]);
    assert_eq!(code, Some(CloseCode::Policy));

    // Everyone else is untouched.
    both_ways(&mut healthy, &mut native, 9);
    plane.shutdown();
}

#[test]
fn slow_reader_is_cut() {
    let plane = common::start(&config(
        |l| {
            l.max_payload = 64 * 1024;
            l.max_pending_bytes = 256 * 1024;
        },
        &[],
    ));
    let addr = ws_addr(&plane);
    // A browser tab that never reads, with a small receive buffer.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let sock: TcpStream = sock.into();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (ws, _) = tungstenite::client(request(addr, Some("arqonbus.v1"), None), sock).unwrap();
    let mut slow = WsClient { ws, welcome: None };
    slow.connect(TOKEN_A);
    slow.subscribe(1, "feed");
    slow.flush();
    let mut healthy = connect(addr, TOKEN_A);
    healthy.subscribe(1, "feed");
    healthy.flush();

    let mut native = RawClient::connect(plane.local_addr(), TOKEN_A);
    let payload = vec![7u8; 4096];
    // Far more than the cap plus every buffer on the way; the healthy
    // subscriber keeps reading.
    for _ in 0..1024 {
        native.publish("feed", &payload);
        assert_eq!(healthy.message().payload.len(), 4096);
    }
    native.flush();
    let stats = plane.total_stats().unwrap();
    assert_eq!(stats.slow_consumers, 1);
    // The slow tab reads at last: some messages, SLOW_CONSUMER, close 1008.
    let (code, errors) = slow.until_closed();
    assert_eq!(errors, [ErrorCode::SlowConsumer]);
    assert_eq!(code, Some(CloseCode::Policy));
    healthy.flush();
    plane.shutdown();
}

#[test]
fn reconnect_storm_leaves_nothing_behind() {
    let plane = common::start(&config(|_| {}, &[]));
    let addr = ws_addr(&plane);
    for i in 0..300 {
        match i % 3 {
            // Gone before the upgrade finished.
            0 => {
                let mut s = tcp(addr);
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            }
            // Gone after the upgrade, before Connect.
            1 => drop(open(addr)),
            // Gone without a goodbye after Welcome, with a subscription.
            _ => {
                let mut c = connect(addr, TOKEN_A);
                c.subscribe(1, "storm");
                c.flush();
            }
        }
    }
    // Every one of them is gone from the shards (unregistered).
    let mut waited = 0;
    while !plane.connections().unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
        waited += 1;
        assert!(waited < 1_000, "connections left behind");
    }
    let stats = plane.total_stats().unwrap();
    assert_eq!(stats.subscriptions, 0);
    let mut after = connect(addr, TOKEN_A);
    let mut native = RawClient::connect(plane.local_addr(), TOKEN_A);
    both_ways(&mut after, &mut native, 3);
    plane.shutdown();
}

/// Over TLS, with a browser's ALPN offer.
#[test]
fn wss_over_tls() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    server.alpn_protocols = vec![b"arqonbus/1".to_vec()];
    let mut cfg = config(|_| {}, &[]);
    cfg.tls = Some(Arc::new(server));
    let plane = common::start(&cfg);
    let addr = ws_addr(&plane);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
    let tls = rustls::StreamOwned::new(conn, tcp(addr));
    let mut req = "wss://localhost/".into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "arqonbus.v1".parse().unwrap());
    let (ws, _) = tungstenite::client(req, tls).unwrap();
    assert_eq!(ws.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut c = WsClient { ws, welcome: None };
    c.connect(TOKEN_A);
    c.subscribe(1, "secure");
    c.flush();
    c.publish("secure", b"over wss");
    assert_eq!(&c.message().payload[..], b"over wss");
    plane.shutdown();
}
