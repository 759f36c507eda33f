//! `arqonctl` against the real server: the control API over TLS with the
//! admin credential, its store, and the data plane it drives, checked with
//! the `arqon` client. A subscriber is live once it prints its first line;
//! a revoked or kicked one exits. Nothing here sleeps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Output, Stdio};

use arqonbus::testing::TestServer;

fn clean(c: &mut Command) {
    for var in [
        "ARQONBUS_CREDENTIAL",
        "ARQONBUS_CREDENTIAL_FILE",
        "ARQONBUS_CA",
        "ARQONBUS_URL",
        "ARQONBUS_DATA_DIR",
        "ARQONCTL_SERVER",
        "ARQONCTL_CA",
        "ARQONCTL_TOKEN_FILE",
    ] {
        c.env_remove(var);
    }
}

fn ctl(s: &TestServer, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_arqonctl"));
    clean(&mut c);
    c.arg("--server")
        .arg(s.control_url())
        .arg("--data-dir")
        .arg(s.data_dir())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `arqonctl --json …`, expects success, returns stdout.
fn ctl_json(s: &TestServer, args: &[&str]) -> String {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(s, &all);
    assert!(
        out.status.success(),
        "arqonctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The number after `"key":` in a JSON text (the first occurrence).
fn json_u64(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    json[at + key.len() + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// The id after `"key":` in a JSON text (the first occurrence): ids are
/// JSON strings of digits.
fn json_id(json: &str, key: &str) -> u64 {
    json_str(json, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is a string of digits in {json}"))
}

/// The string after `"key":"` in a JSON text.
fn json_str(json: &str, key: &str) -> String {
    let at = json
        .find(&format!("\"{key}\":\""))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    json[at + key.len() + 4..]
        .chars()
        .take_while(|c| *c != '"')
        .collect()
}

fn arqon(s: &TestServer, token_file: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_arqon"));
    clean(&mut c);
    c.arg("--server")
        .arg(s.url())
        .arg("--ca")
        .arg(s.ca_path())
        .arg("--credential-file")
        .arg(token_file);
    c
}

fn run(mut c: Command) -> Output {
    c.stdin(Stdio::null()).output().unwrap()
}

/// Starts a subscriber and waits until it is live.
fn subscriber(mut c: Command) -> (Child, BufReader<ChildStderr>) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("Listening on"), "{line}");
    (child, stderr)
}

/// Creates tenant `name` with a principal and a bearer credential; returns
/// (principal id, credential id, token file).
fn tenant_with_credential(s: &TestServer, name: &str) -> (u64, u64, std::path::PathBuf) {
    let tenant = ctl_json(s, &["tenants", "create", name]);
    let tenant_id = json_id(&tenant, "id").to_string();
    let principal = ctl_json(s, &["principals", "create", "--tenant", &tenant_id, "svc"]);
    let principal_id = json_id(&principal, "id");
    let issued = ctl_json(
        s,
        &[
            "credentials",
            "issue",
            "--principal",
            &principal_id.to_string(),
        ],
    );
    let token = json_str(&issued, "token");
    assert!(token.starts_with("abt_"));
    let credential_id = json_id(&issued, "id");
    let file = s.root().join(format!("{name}.token"));
    std::fs::write(&file, format!("{token}\n")).unwrap();
    (principal_id, credential_id, file)
}

#[test]
fn a_new_tenant_and_credential_work_on_the_data_plane() {
    let s = TestServer::start();
    let (_, _, token) = tenant_with_credential(&s, "acme");
    let mut sub = arqon(&s, &token);
    sub.args(["sub", "orders.>", "--count", "1"]);
    let (child, _err) = subscriber(sub);
    let mut publ = arqon(&s, &token);
    publ.args(["pub", "orders.eu", "hello acme"]);
    assert!(run(publ).status.success());
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello acme"));

    // The bootstrap tenant shares no subjects with acme.
    let listed = ctl_json(&s, &["tenants", "list"]);
    assert!(listed.contains("\"acme\"") && listed.contains("\"default\""));
}

#[test]
fn revoking_a_credential_cuts_its_live_session() {
    let s = TestServer::start();
    let (_, credential, token) = tenant_with_credential(&s, "acme");
    let mut sub = arqon(&s, &token);
    sub.args(["sub", "x"]);
    let (mut child, mut stderr) = subscriber(sub);
    ctl_json(&s, &["credentials", "revoke", &credential.to_string()]);
    // The subscriber is cut; its client cannot reconnect and exits.
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(!status.success(), "{rest}");
    assert!(
        rest.contains("revoked") || rest.contains("authentication failed"),
        "{rest}"
    );
    let mut again = arqon(&s, &token);
    again.args(["pub", "x", "y"]);
    let out = run(again);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
}

#[test]
fn policies_deny_publish_and_subscribe_with_clear_errors() {
    let s = TestServer::start();
    let (principal, _, token) = tenant_with_credential(&s, "acme");
    let tenant = json_id(&ctl_json(&s, &["tenants", "get", "acme"]), "id").to_string();
    ctl_json(
        &s,
        &[
            "policies",
            "put",
            "--tenant",
            &tenant,
            "--principal",
            &principal.to_string(),
            "--pub-allow",
            "orders.>",
            "--sub-allow",
            "orders.>",
            "--sub-deny",
            "orders.secret.>",
        ],
    );
    let mut publ = arqon(&s, &token);
    publ.args(["pub", "billing.x", "nope"]);
    let out = run(publ);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("permission_denied") || err.contains("permission denied"),
        "{err}"
    );

    let mut sub = arqon(&s, &token);
    sub.args(["sub", "orders.>"]);
    let out = run(sub);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("permission_denied") || err.contains("permission denied"),
        "{err}"
    );

    let mut ok = arqon(&s, &token);
    ok.args(["pub", "orders.eu", "fine"]);
    assert!(run(ok).status.success());
}

#[test]
fn operators_see_and_kick_connections_and_drain_shards() {
    let s = TestServer::start();
    let token = s.token_path();
    let mut sub = arqon(&s, &token);
    sub.args(["sub", "watched", "--name", "watcher"]);
    let (mut child, _err) = subscriber(sub);
    let listed = ctl_json(&s, &["connections", "list"]);
    assert!(listed.contains("\"watcher\""), "{listed}");
    let id = json_id(&listed, "id");
    ctl_json(&s, &["connections", "kick", &id.to_string()]);
    // Kicked: the server says so; the client reconnects on its own, so stop it.
    let kicked = s.stats().kicked;
    assert_eq!(kicked, 1);
    child.kill().unwrap();
    child.wait().unwrap();

    let status = ctl_json(&s, &["node", "status"]);
    assert!(status.contains("\"accepting\":true"), "{status}");
    ctl_json(&s, &["node", "drain", "0"]);
    assert!(ctl_json(&s, &["node", "status"]).contains("\"draining\":true"));
    ctl_json(&s, &["node", "resume", "0"]);
    assert!(!ctl_json(&s, &["node", "status"]).contains("\"draining\":true"));
    ctl_json(&s, &["node", "reload"]);
}

#[test]
fn state_survives_a_restart() {
    let mut s = TestServer::start();
    let (_, _, token) = tenant_with_credential(&s, "durable");
    s.restart();
    let listed = ctl_json(&s, &["tenants", "list"]);
    assert!(listed.contains("\"durable\""), "{listed}");
    let mut publ = arqon(&s, &token);
    publ.args(["pub", "still", "works"]);
    assert!(run(publ).status.success(), "the credential survived too");
}

#[test]
fn bad_requests_are_invalid_argument_and_bad_admins_unauthenticated() {
    let s = TestServer::start();
    let out = ctl(&s, &["tenants", "create", "no spaces allowed"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid argument") && err.contains("name"),
        "{err}"
    );

    let forged = s.root().join("forged.token");
    std::fs::write(&forged, "abt_not-the-admin\n").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_arqonctl"));
    clean(&mut c);
    let out = c
        .arg("--server")
        .arg(s.control_url())
        .arg("--ca")
        .arg(s.ca_path())
        .arg("--admin-token-file")
        .arg(&forged)
        .args(["tenants", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unauthenticated"), "{err}");
    assert!(
        !err.contains("abt_not-the-admin"),
        "the token is never printed"
    );
    std::io::stderr().flush().unwrap();
}

#[test]
fn deleting_a_tenant_closes_its_connections() {
    let s = TestServer::start();
    let (_, _, token) = tenant_with_credential(&s, "doomed");
    let mut sub = arqon(&s, &token);
    sub.args(["sub", "x"]);
    let (mut child, mut stderr) = subscriber(sub);
    let tenant = json_id(&ctl_json(&s, &["tenants", "get", "doomed"]), "id").to_string();
    let deleted = ctl_json(&s, &["tenants", "delete", &tenant]);
    assert_eq!(json_u64(&deleted, "connections_closed"), 1, "{deleted}");
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(!status.success(), "{rest}");
    assert!(!ctl_json(&s, &["tenants", "list"]).contains("\"doomed\""));
}

#[test]
fn steering_and_tenant_placement_through_arqonctl() {
    let mut s = TestServer::start();
    let before = ctl_json(&s, &["steering", "get"]);
    assert!(before.contains("\"source\":\"config\""), "{before}");

    let set = ctl_json(
        &s,
        &[
            "steering",
            "set",
            "--mode",
            "affinity",
            "--affinity",
            "10.1.2.3/8=0",
        ],
    );
    assert_eq!(json_str(&set, "mode"), "affinity", "{set}");
    assert_eq!(json_str(&set, "source"), "api", "{set}");
    assert!(
        set.contains(r#""affinity":[{"prefix":"10.0.0.0/8","shard":0}]"#),
        "{set}"
    );
    let text = ctl(&s, &["steering", "get"]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.starts_with("mode:   affinity\nsource: api\n"),
        "{text}"
    );
    assert!(text.contains("10.0.0.0/8  0\n"), "{text}");

    let out = ctl(
        &s,
        &[
            "steering",
            "set",
            "--mode",
            "balance",
            "--affinity",
            "10.0.0.0/8=999",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid argument: affinity[0].shard: shard 999 does not exist"),
        "{err}"
    );

    let status = ctl_json(&s, &["node", "status"]);
    assert!(status.contains("\"steering\":{"), "{status}");
    assert!(status.contains("\"moved_in\":"), "{status}");

    let created = ctl_json(&s, &["tenants", "create", "big", "--placement", "spread"]);
    assert_eq!(json_str(&created, "placement"), "spread", "{created}");
    let updated = ctl_json(&s, &["tenants", "update", "big", "--placement", "shard:0"]);
    assert_eq!(json_str(&updated, "placement"), "shard:0", "{updated}");
    let out = ctl(
        &s,
        &["tenants", "create", "far", "--placement", "shard:999"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid argument: placement: shard 999 does not exist"),
        "{err}"
    );

    // Both are stored.
    s.restart();
    let after = ctl_json(&s, &["steering", "get"]);
    assert_eq!(json_str(&after, "mode"), "affinity", "{after}");
    assert_eq!(json_str(&after, "source"), "api", "{after}");
    let big = ctl_json(&s, &["tenants", "get", "big"]);
    assert_eq!(json_str(&big, "placement"), "shard:0", "{big}");
}

#[test]
fn json_ids_are_exact_strings_and_kick_finds_a_shard_1_connection() {
    let s = TestServer::start();
    let token = s.token_path();
    // Two subscribers, so at least one is on shard 1 whatever the steering
    // (balance puts them on both shards; the hash may not: then more).
    let mut subs = Vec::new();
    let mut on_shard_1 = None;
    for i in 0..16 {
        let mut sub = arqon(&s, &token);
        sub.args(["sub", "ids", "--name", &format!("sub-{i}")]);
        subs.push(subscriber(sub));
        let listed = ctl_json(&s, &["connections", "list"]);
        let json: serde_json::Value = serde_json::from_str(&listed).unwrap();
        on_shard_1 = json["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["shard"] == 1)
            .cloned();
        if on_shard_1.is_some() {
            break;
        }
    }
    let conn = on_shard_1.expect("a connection on shard 1");
    let id = conn["id"].as_str().expect("the id is a JSON string");
    let exact: u64 = id.parse().unwrap();
    assert!(exact > 1 << 53, "shard 1's ids exceed 2^53: {exact}");
    assert!(conn["tenant_id"].is_string() && conn["principal_id"].is_string());
    let kicked = ctl_json(&s, &["connections", "kick", id]);
    assert!(kicked.contains(&format!(r#""id":"{id}""#)), "{kicked}");
    assert_eq!(s.stats().kicked, 1);
    for (mut child, _) in subs {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn a_tenant_named_with_digits_is_reachable_by_name_and_id_prefixes() {
    let s = TestServer::start();
    // The bootstrap tenant has id 1; "99" is a name no tenant id matches.
    let created = ctl_json(&s, &["tenants", "create", "99"]);
    let id = json_id(&created, "id");
    assert_ne!(id, 99);
    // Bare digits: no tenant has id 99, one is named "99": that one.
    let got = ctl_json(&s, &["tenants", "get", "99"]);
    assert_eq!(json_id(&got, "id"), id, "{got}");
    assert_eq!(json_str(&got, "name"), "99");
    let by_name = ctl_json(&s, &["tenants", "get", "name:99"]);
    assert_eq!(json_id(&by_name, "id"), id);
    let by_id = ctl_json(&s, &["tenants", "get", &format!("id:{id}")]);
    assert_eq!(json_str(&by_id, "name"), "99");
    // Bare digits that are an id keep meaning the id (scripts keep working).
    let default = ctl_json(&s, &["tenants", "get", "1"]);
    assert_eq!(json_str(&default, "name"), "default");
    // A tenant named like another's id: bare digits are ambiguous.
    let named_1 = ctl_json(&s, &["tenants", "create", "1"]);
    let named_1_id = json_id(&named_1, "id");
    let out = ctl(&s, &["tenants", "get", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "\"1\" is ambiguous: tenant 1 and tenant {named_1_id} named \"1\" both exist (write id:1 or name:1)"
        )),
        "{err}"
    );
    assert_eq!(
        json_str(&ctl_json(&s, &["tenants", "get", "id:1"]), "name"),
        "default"
    );
    assert_eq!(
        json_id(&ctl_json(&s, &["tenants", "get", "name:1"]), "id"),
        named_1_id
    );
    // --tenant takes the same forms.
    let p = ctl_json(&s, &["principals", "create", "--tenant", "name:99", "svc"]);
    assert_eq!(json_id(&p, "tenant_id"), id, "{p}");
    let out = ctl(&s, &["tenants", "get", "12345"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("not found: no tenant has id 12345 or is named \"12345\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
