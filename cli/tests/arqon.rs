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
use std::time::Duration;

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

/// Reads stderr lines until one contains `want`; returns every line read.
fn read_until(stderr: &mut BufReader<ChildStderr>, want: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).unwrap();
        assert!(n > 0, "stderr ended before {want:?}: {seen}");
        seen.push_str(&line);
        if line.contains(want) {
            return seen;
        }
    }
}

#[test]
fn sub_reports_the_drain_and_gives_up_when_the_server_stays_gone() {
    let s = TestServer::start();
    let mut sub = arqon(&s);
    sub.args(["sub", "x", "--reconnect-attempts", "2"]);
    let (mut child, mut stderr) = listening(sub, "Listening on");
    // The lame duck: a Drain notice to every client, then the closes.
    s.server().dataplane().lame_duck(Duration::from_millis(200));
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    let url = s.url();
    assert!(
        rest.contains(&format!("arqon: the server at {url} is draining (")),
        "the drain is reported without ARQON_LOG: {rest}"
    );
    assert!(
        rest.contains(&format!("arqon: lost the connection to {url}: ")),
        "{rest}"
    );
    assert!(rest.contains("reconnecting (up to 2 attempts)"), "{rest}");
    assert!(
        rest.lines().last().is_some_and(|l| l
            .starts_with("arqon: lost the connection and gave up after 2 reconnect attempts: ")),
        "{rest}"
    );
    assert!(
        !rest.contains('\u{1b}'),
        "no colour codes into a pipe: {rest:?}"
    );
    assert!(!rest.contains("WARN"), "no log lines by default: {rest}");
}

#[test]
fn sub_says_when_it_lost_the_connection_and_when_it_is_back() {
    let s = TestServer::start();
    let mut sub = arqon(&s);
    sub.args(["sub", "y"]);
    let (mut child, mut stderr) = listening(sub, "Listening on");
    // An operator's kick: the client is told, reconnects and resubscribes.
    let list = Command::new(env!("CARGO_BIN_EXE_arqonctl"))
        .arg("--server")
        .arg(s.control_url())
        .arg("--data-dir")
        .arg(s.data_dir())
        .args(["--json", "connections", "list"])
        .env_remove("ARQONCTL_SERVER")
        .env_remove("ARQONCTL_CA")
        .env_remove("ARQONCTL_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", text(&list.stderr));
    let json: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let id = json["connections"][0]["id"].as_str().unwrap().to_owned();
    let kick = Command::new(env!("CARGO_BIN_EXE_arqonctl"))
        .arg("--server")
        .arg(s.control_url())
        .arg("--data-dir")
        .arg(s.data_dir())
        .args(["connections", "kick", &id])
        .output()
        .unwrap();
    assert!(kick.status.success(), "{}", text(&kick.stderr));
    let seen = read_until(&mut stderr, "arqon: reconnected to");
    assert!(seen.contains("arqon: lost the connection to"), "{seen}");
    assert!(seen.contains("DISCONNECTED_BY_OPERATOR"), "{seen}");
    assert!(seen.contains("reconnecting (up to 10 attempts)"), "{seen}");
    assert!(!seen.contains('\u{1b}'), "{seen:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn pub_into_a_stopped_server_is_one_line_without_colour() {
    let mut s = TestServer::start();
    let url = s.url();
    s.stop();
    let mut publ = arqon(&s);
    publ.args(["pub", "x", "y"]);
    let out = run(publ, b"");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}
