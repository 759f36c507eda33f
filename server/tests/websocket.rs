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

mod common;

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
    wss_from(s, addr, "http://localhost:5173")
}

/// A browser-like connection whose page is at `origin`.
fn wss_from(s: &TestServer, addr: SocketAddr, origin: &str) -> Wss {
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
    req.headers_mut().insert("origin", origin.parse().unwrap());
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

/// A tenant's origin list, set through the control API, is checked after
/// `Connect` authenticates: a page from another origin gets
/// PERMISSION_DENIED and the close; clearing the list lets any origin in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_origin_list_from_the_control_api_refuses_other_pages() {
    use arqonbus_proto::control::tenant_service_client::TenantServiceClient;
    use arqonbus_proto::control::{
        AllowedOrigins, GetTenantRequest, TenantRef, UpdateTenantRequest,
    };

    let s = TestServer::start_with(|c| {
        c.websocket.enabled = true;
        c.websocket.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    });
    let addr = s.server().websocket_addr().unwrap();
    let admin = std::fs::read_to_string(s.server().paths().admin_token.clone().unwrap()).unwrap();
    let (channel, auth) = common::control_channel(
        s.server().control_addr().unwrap(),
        &s.ca_path(),
        admin.trim(),
    )
    .await;
    let mut tenants = TenantServiceClient::with_interceptor(channel, auth);
    let tenant = tenants
        .get_tenant(GetTenantRequest {
            tenant: Some(TenantRef {
                id: 0,
                name: "default".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let set = |origins: &[&str]| UpdateTenantRequest {
        id: tenant.id,
        allowed_origins: Some(AllowedOrigins {
            origins: origins.iter().map(|o| (*o).to_owned()).collect(),
        }),
        ..UpdateTenantRequest::default()
    };
    let updated = tenants
        .update_tenant(set(&["HTTP://LOCALHOST:5173", "http://localhost:5173"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.allowed_origins, ["http://localhost:5173"]);
    let bad = tenants
        .update_tenant(set(&["http://localhost:5173", "localhost"]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("allowed_origins.origins[1]"),
        "{bad:?}"
    );

    let token = s.token();
    let again = token.clone();
    let s = tokio::task::spawn_blocking(move || {
        assert!(matches!(
            hello(&mut wss(&s, addr), &token),
            Kind::Welcome(_)
        ));
        match hello(&mut wss_from(&s, addr, "https://elsewhere.example"), &token) {
            Kind::Error(e) => {
                assert_eq!(e.code, i32::from(v1::ErrorCode::PermissionDenied), "{e:?}");
                assert!(e.close);
            }
            other => panic!("expected PERMISSION_DENIED, got {other:?}"),
        }
        s
    })
    .await
    .unwrap();
    // Any origin again.
    tenants.update_tenant(set(&[])).await.unwrap();
    tokio::task::spawn_blocking(move || {
        assert!(matches!(
            hello(&mut wss_from(&s, addr, "https://elsewhere.example"), &again),
            Kind::Welcome(_)
        ));
    })
    .await
    .unwrap();
}

/// Sends `Connect` with `token`; the server's first answer.
fn hello(ws: &mut Wss, token: &str) -> Kind {
    send(
        ws,
        &Kind::Connect(v1::Connect {
            protocol_version: 1,
            credential: token.to_owned(),
            ..Default::default()
        }),
    );
    recv(ws)
}
