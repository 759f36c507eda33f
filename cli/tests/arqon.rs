//! The `arqon` binary against the real server (TLS, generated CA, bootstrap
//! credential), as the README quickstart uses it. A subscriber is known to be
//! live when it prints its "Listening on" line, which it does only after the
//! server's barrier Pong; nothing here sleeps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStderr, Command, Output, Stdio};

use arqonbus::testing::TestServer;

/// `arqon` pointed at `s` through `--data-dir`, as in the README.
fn arqon(s: &TestServer) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_arqon"));
    c.arg("--server")
        .arg(s.url())
        .arg("--data-dir")
        .arg(s.data_dir())
        .env_remove("ARQONBUS_CREDENTIAL")
        .env_remove("ARQONBUS_CREDENTIAL_FILE")
        .env_remove("ARQONBUS_CA")
        .env_remove("ARQONBUS_URL")
        .env_remove("ARQONBUS_DATA_DIR");
    c
}

fn run(mut c: Command, stdin: &[u8]) -> Output {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts a long-running `arqon` command and waits for its first line
/// (printed once its subscription is live on every shard).
fn listening(mut c: Command, first: &str) -> (Child, BufReader<ChildStderr>) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with(first), "unexpected first line: {line:?}");
    (child, stderr)
}

#[test]
fn quickstart_sub_then_pub_over_tls() {
    let s = TestServer::start();
    let mut sub = arqon(&s);
    sub.args(["sub", "demo.>", "--count", "2"]);
    let (child, _stderr) = listening(sub, "Listening on");

    let mut publ = arqon(&s);
    publ.args(["pub", "demo.hello", "hi there", "--count", "2"]);
    let out = run(publ, b"");
    assert!(out.status.success(), "pub failed: {}", text(&out.stderr));

    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sub failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            *line,
            format!("[#{}] Received on \"demo.hello\": hi there", i + 1)
        );
    }
}

#[test]
fn pub_reads_the_payload_from_stdin_and_sends_headers() {
    let s = TestServer::start();
    let mut sub = arqon(&s);
    sub.args(["sub", "orders.eu", "--count", "1", "--json"]);
    let (child, _stderr) = listening(sub, "Listening on");
    let mut publ = arqon(&s);
    publ.args(["pub", "orders.eu", "-H", "trace=a=1"]);
    let out = run(publ, b"from stdin");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = child.wait_with_output().unwrap();
    let json = text(&out.stdout);
    assert!(json.contains("\"subject\":\"orders.eu\""), "{json}");
    assert!(json.contains("from stdin"), "{json}");
    assert!(json.contains("trace"), "{json}");
}

#[test]
fn req_gets_the_reply_or_says_nobody_listens() {
    let s = TestServer::start();
    let mut req = arqon(&s);
    req.args(["req", "svc.echo", "ping", "--timeout", "10s"]);
    let out = run(req, b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no responders"),
        "{}",
        text(&out.stderr)
    );

    let mut reply = arqon(&s);
    reply.args(["reply", "svc.echo", "pong", "--count", "1"]);
    let (responder, _stderr) = listening(reply, "Answering requests on");
    let mut req = arqon(&s);
    req.args(["req", "svc.echo", "ping", "--timeout", "10s"]);
    let out = run(req, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pong\n");
    assert!(responder.wait_with_output().unwrap().status.success());
}

#[test]
fn a_wrong_credential_is_one_clear_line() {
    let s = TestServer::start();
    let bad = s.root().join("bad.token");
    std::fs::write(&bad, "abt_wrong-token\n").unwrap();
    let mut publ = arqon(&s);
    publ.arg("--credential-file")
        .arg(&bad)
        .args(["pub", "x", "y"]);
    let out = run(publ, b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "arqon: authentication failed: check the credential in {}\n",
            bad.display()
        )
    );
    assert!(
        !stderr.contains("abt_wrong"),
        "the secret must not be printed"
    );
    assert_eq!(s.stats().auth_failures, 1);
}

#[test]
fn ctrl_c_ends_sub_cleanly() {
    let s = TestServer::start();
    let mut sub = arqon(&s);
    sub.args(["sub", "a"]);
    let (mut child, mut stderr) = listening(sub, "Listening on");
    assert_eq!(s.stats().subscriptions, 1);
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status:?}: {rest}");
}
