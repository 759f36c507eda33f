//! Secrets and payloads never reach the logs, at any level: the whole stack
//! (data plane, control plane, SDK) runs under a TRACE subscriber writing
//! JSON to a buffer, does everything that touches a credential or a payload,
//! and the buffer is searched for them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};

use arqonbus::testing::TestServer;
use arqonbus_client::{Client, ConnectOptions, Headers, OutgoingMessage};
use futures_util::StreamExt as _;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_or_payload_appears_in_the_logs_at_any_level() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .json()
        .with_writer(move || writer.clone())
        .init();

    let s = TestServer::start();
    let token = s.token();
    let payload = "PAYLOAD-MARKER-7f3c9d";
    let header_secret = "Bearer HEADER-SECRET-11aa";

    // A good session: subscribe, publish with a sensitive header, receive.
    let c = Client::connect(
        ConnectOptions::new()
            .url(s.url())
            .ca_file(s.ca_path())
            .credential(token.clone()),
    )
    .await
    .unwrap();
    let mut sub = c.subscribe("secret.topic").await.unwrap();
    let mut headers = Headers::new();
    headers.insert("authorization", header_secret);
    c.publish_message(OutgoingMessage::new("secret.topic", payload).headers(headers))
        .await
        .unwrap();
    let got = sub.next().await.unwrap();
    assert_eq!(&got.payload[..], payload.as_bytes());
    // A request, and a publish refused for its size.
    let _ = c
        .request_with_timeout("nobody.home", payload, std::time::Duration::from_secs(5))
        .await;

    // A wrong credential.
    let wrong = "abt_WRONG-CREDENTIAL-MARKER-55";
    assert!(
        Client::connect(
            ConnectOptions::new()
                .url(s.url())
                .ca_file(s.ca_path())
                .credential(wrong)
        )
        .await
        .is_err()
    );

    // The admin credential on the monitoring endpoint, right and wrong.
    let admin = std::fs::read_to_string(s.admin_token_path()).unwrap();
    let admin = admin.trim().to_owned();
    let metrics = s.metrics_addr();
    for bearer in [admin.clone(), "abt_WRONG-ADMIN-MARKER-66".to_owned()] {
        tokio::task::spawn_blocking(move || {
            let mut sock = std::net::TcpStream::connect(metrics).unwrap();
            write!(
                sock,
                "GET /connz HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {bearer}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            sock.read_to_string(&mut out).unwrap();
        })
        .await
        .unwrap();
    }
    c.close().await;
    drop(s);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.len() > 1000, "the test must actually capture logs");
    for secret in [
        token.as_str(),
        payload,
        "HEADER-SECRET-11aa",
        "WRONG-CREDENTIAL-MARKER-55",
        admin.as_str(),
        "WRONG-ADMIN-MARKER-66",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}
