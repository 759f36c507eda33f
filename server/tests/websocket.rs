//! The real server with `[websocket]` enabled: a browser-like client (the
//! blocking `tungstenite` client over rustls, offering ALPN `h2, http/1.1`
//! like a browser, with an allowed `Origin`) and the Rust SDK on the same
//! subject. specs/websocket.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use arqonbus::testing::TestServer;
use arqonbus_client::{Client, ConnectOptions};
use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::Bytes;
use futures_util::StreamExt as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest as _;

const LIMIT: Duration = Duration::from_secs(20);

type Wss = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

fn wss(s: &TestServer, addr: SocketAddr) -> Wss {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(s.ca_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    let tls = rustls::StreamOwned::new(
        rustls::ClientConnection::new(Arc::new(cfg), name).unwrap(),
        tcp,
    );
    let mut req = format!("wss://localhost:{}/", addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "arqonbus.v1".parse().unwrap());
    req.headers_mut()
        .insert("origin", "http://localhost:5173".parse().unwrap());
    let (ws, _) = tungstenite::client(req, tls).unwrap();
    assert_eq!(ws.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    ws
}

fn send(ws: &mut Wss, kind: &Kind) {
    // The native encoding without its 4-byte length prefix.
    let mut framed = Vec::new();
    codec::encode(kind, &mut framed).unwrap();
    ws.send(Message::Binary(Bytes::from(framed).slice(4..)))
        .unwrap();
}

fn recv(ws: &mut Wss) -> Kind {
    loop {
        match ws.read().unwrap() {
            Message::Binary(b) => return codec::decode_body(b).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_and_sdk_clients_meet_over_wss() {
    let s = TestServer::start_with(|c| {
        c.websocket.enabled = true;
        c.websocket.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.websocket.allowed_origins = vec!["http://localhost:5173".into()];
    });
    let addr = s.server().websocket_addr().expect("the edge is served");
    let token = s.token();

    let sdk = Client::connect(
        ConnectOptions::new()
            .url(s.url())
            .ca_file(s.ca_path())
            .credential_file(s.token_path()),
    )
    .await
    .unwrap();
    let mut from_browser = sdk.subscribe("room.1").await.unwrap();

    let browser = tokio::task::spawn_blocking(move || {
        let mut ws = wss(&s, addr);
        send(
            &mut ws,
            &Kind::Connect(v1::Connect {
                protocol_version: 1,
                credential: token,
                client_kind: v1::ClientKind::Human.into(),
                ..Default::default()
            }),
        );
        let Kind::Welcome(w) = recv(&mut ws) else {
            panic!("no Welcome")
        };
        assert_eq!(w.tenant, "default");
        send(
            &mut ws,
            &Kind::Publish(v1::Publish {
                subject: Bytes::from_static(b"room.1"),
                reply: Bytes::new(),
                headers: vec![],
                seq: 0,
                payload: Bytes::from_static(b"hello from a browser"),
            }),
        );
        send(&mut ws, &Kind::Ping(v1::Ping {}));
        assert!(matches!(recv(&mut ws), Kind::Pong(_)));
        s
    });
    let msg = tokio::time::timeout(LIMIT, from_browser.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&msg.payload[..], b"hello from a browser");
    let s = browser.await.unwrap();
    assert!(s.stats().ws_upgrades >= 1);
    sdk.close().await;
}
