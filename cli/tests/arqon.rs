//! Runs the `arqon` binary against a scripted in-process peer that plays
//! the server's side of protocol v1 over loopback TCP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "abt_cli-test-token";

struct Peer {
    tcp: TcpStream,
    rbuf: BytesMut,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> (Self, v1::Connect) {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut peer = Self {
            tcp,
            rbuf: BytesMut::new(),
        };
        let Some(Kind::Connect(connect)) = peer.recv().await else {
            panic!("expected Connect");
        };
        peer.send(Kind::Welcome(v1::Welcome {
            protocol_version: 1,
            session_id: 1,
            ..Default::default()
        }))
        .await;
        (peer, connect)
    }

    async fn send(&mut self, kind: Kind) {
        let mut buf = BytesMut::new();
        codec::encode(&kind, &mut buf).unwrap();
        self.tcp.write_all(&buf).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Kind> {
        loop {
            if let Some(kind) = codec::decode(&mut self.rbuf, u32::MAX).unwrap() {
                return Some(kind);
            }
            if self.tcp.read_buf(&mut self.rbuf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// Answers the client's next frame, which must be a Ping.
    async fn pong(&mut self) {
        let Some(Kind::Ping(_)) = self.recv().await else {
            panic!("expected Ping");
        };
        self.send(Kind::Pong(v1::Pong {})).await;
    }
}

/// Runs `arqon` with `args` against `port` (plaintext), the credential in
/// the environment, and `stdin` as input.
async fn arqon(port: u16, args: &[&str], stdin: &'static [u8]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arqon"));
    command
        .arg("--server")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .args(args)
        .env_remove("ARQONBUS_CREDENTIAL_FILE")
        .env_remove("ARQONBUS_DATA_DIR")
        .env("ARQONBUS_CREDENTIAL", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn pub_sends_count_messages_with_headers_and_flushes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = async {
        let (mut peer, connect) = Peer::accept(&listener).await;
        assert_eq!(connect.credential, TOKEN);
        assert_eq!(connect.client_name, "arqon");
        for _ in 0..2 {
            let Some(Kind::Publish(p)) = peer.recv().await else {
                panic!("expected Publish");
            };
            assert_eq!(&p.subject[..], b"orders.eu");
            assert_eq!(&p.payload[..], b"from stdin\n");
            assert_eq!(&p.headers[0].key[..], b"trace");
            assert_eq!(&p.headers[0].value[..], b"a=1");
        }
        peer.pong().await;
        assert!(peer.recv().await.is_none(), "arqon closes after the flush");
    };
    let (out, ()) = tokio::join!(
        arqon(
            port,
            &["pub", "orders.eu", "--count", "2", "-H", "trace=a=1"],
            b"from stdin\n"
        ),
        server
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
}

#[tokio::test]
async fn sub_prints_one_line_per_message_and_stops_after_count() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = async {
        let (mut peer, _) = Peer::accept(&listener).await;
        let Some(Kind::Subscribe(sub)) = peer.recv().await else {
            panic!("expected Subscribe");
        };
        assert_eq!(&sub.pattern[..], b"a.>");
        peer.pong().await;
        let Some(Kind::Unsubscribe(unsub)) = peer.recv().await else {
            panic!("expected Unsubscribe");
        };
        assert_eq!(unsub.after_messages, 2);
        for payload in ["one\nline", "two"] {
            peer.send(Kind::Message(v1::Message {
                sid: sub.sid,
                subject: Bytes::from_static(b"a.b"),
                payload: Bytes::from_static(payload.as_bytes()),
                ..Default::default()
            }))
            .await;
        }
        while peer.recv().await.is_some() {}
    };
    let (out, ()) = tokio::join!(arqon(port, &["sub", "a.>", "--count", "2"], b""), server);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "[#1] Received on \"a.b\": one\\nline\n[#2] Received on \"a.b\": two\n"
    );
}

#[tokio::test]
async fn req_prints_the_reply_or_fails_clearly_without_responders() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    for (status, payload) in [(0, "42"), (1, "")] {
        let server = async {
            let (mut peer, _) = Peer::accept(&listener).await;
            let Some(Kind::Subscribe(inbox)) = peer.recv().await else {
                panic!("expected the inbox Subscribe");
            };
            peer.pong().await;
            let Some(Kind::Publish(request)) = peer.recv().await else {
                panic!("expected the request");
            };
            peer.send(Kind::Message(v1::Message {
                sid: inbox.sid,
                subject: request.reply,
                status,
                payload: Bytes::from_static(payload.as_bytes()),
                ..Default::default()
            }))
            .await;
            while peer.recv().await.is_some() {}
        };
        let (out, ()) = tokio::join!(arqon(port, &["req", "svc.answer", "q"], b""), server);
        if status == 0 {
            assert!(out.status.success(), "stderr: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout), "42\n");
        } else {
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(
                text(&out.stderr),
                "arqon: no responders on \"svc.answer\"\n"
            );
        }
    }
}

#[tokio::test]
async fn authentication_failure_is_one_clear_line() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("credentials")).unwrap();
    let token_file = dir.path().join("credentials/bootstrap.token");
    std::fs::write(&token_file, "abt_wrong\n").unwrap();
    let server = async {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut peer = Peer {
            tcp,
            rbuf: BytesMut::new(),
        };
        let Some(Kind::Connect(connect)) = peer.recv().await else {
            panic!("expected Connect");
        };
        assert_eq!(connect.credential, "abt_wrong");
        peer.send(Kind::Error(v1::Error {
            code: v1::ErrorCode::AuthenticationFailed.into(),
            message: "authentication failed".into(),
            close: true,
            sid: 0,
        }))
        .await;
    };
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let args = ["--data-dir", data_dir.as_str(), "sub", "a"];
    let mut command = Command::new(env!("CARGO_BIN_EXE_arqon"));
    command
        .arg("--server")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .args(args)
        .env_remove("ARQONBUS_CREDENTIAL")
        .env_remove("ARQONBUS_CREDENTIAL_FILE")
        .stdin(Stdio::null());
    let run = tokio::task::spawn_blocking(move || command.output().unwrap());
    let (out, ()) = tokio::join!(run, server);
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "arqon: authentication failed: check the credential in {}\n",
            token_file.display()
        )
    );
    assert!(!text(&out.stderr).contains("abt_wrong"));
}

#[cfg(unix)]
#[tokio::test]
async fn ctrl_c_ends_sub_cleanly() {
    use std::io::BufRead as _;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_arqon"))
        .arg("--server")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .args(["sub", "a"])
        .env("ARQONBUS_CREDENTIAL", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut peer, _) = Peer::accept(&listener).await;
    let Some(Kind::Subscribe(_)) = peer.recv().await else {
        panic!("expected Subscribe");
    };
    peer.pong().await;
    let stderr = child.stderr.take().unwrap();
    let pid = child.id().to_string();
    let status = tokio::task::spawn_blocking(move || {
        // The "Listening" line means the Ctrl-C handler is installed.
        let mut line = String::new();
        std::io::BufReader::new(stderr)
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("Listening on \"a\""), "{line}");
        let killed = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(killed.success());
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    // Dropping the subscription unsubscribes, then arqon closes.
    while let Some(frame) = peer.recv().await {
        assert!(matches!(frame, Kind::Unsubscribe(_)), "{frame:?}");
    }
}
