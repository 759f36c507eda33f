//! `arqonctl backup FILE` and `arqonctl admin rotate` against a real
//! server: a consistent copy of the control store taken while the node
//! serves, written 0600, never over an existing file (restoring it with
//! `arqonbus restore` is tested on the server binary: server/tests/store.rs);
//! a rotated admin token written 0600 where arqonctl read the old one, never
//! printed, the old one refused at once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output, Stdio};

use arqonbus::testing::TestServer;

fn ctl(s: &TestServer, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_arqonctl"));
    for var in [
        "ARQONBUS_DATA_DIR",
        "ARQONCTL_SERVER",
        "ARQONCTL_CA",
        "ARQONCTL_TOKEN_FILE",
    ] {
        c.env_remove(var);
    }
    c.arg("--server")
        .arg(s.control_url())
        .arg("--data-dir")
        .arg(s.data_dir())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_backup_is_a_private_store_file_and_never_overwrites() {
    let s = TestServer::start();
    let out = ctl(&s, &["tenants", "create", "acme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Beside the server's own temporary data directory, removed with it.
    let file = s.data_dir().join("control.backup");
    let out = ctl(&s, &["--json", "backup", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        json.contains(&format!("\"bytes\":{}", bytes.len())),
        "{json}"
    );
    assert!(bytes.starts_with(b"redb"), "a redb file");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = ctl(&s, &["backup", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "unchanged");
}

#[test]
fn an_online_admin_rotation_rewrites_the_token_file_and_refuses_the_old_token() {
    let s = TestServer::start();
    let token_file = s.data_dir().join("credentials/admin.token");
    let old = std::fs::read_to_string(&token_file).unwrap();
    let saved = s.data_dir().join("old-admin.token");
    std::fs::write(&saved, &old).unwrap();
    std::fs::set_permissions(&saved, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = ctl(&s, &["admin", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let new = std::fs::read_to_string(&token_file).unwrap();
    assert_ne!(new, old);
    assert!(
        !text.contains(new.trim()),
        "the token is never printed: {text}"
    );
    assert!(text.contains("fingerprint"), "{text}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let out = ctl(&s, &["node", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(
        &s,
        &[
            "--admin-token-file",
            saved.to_str().unwrap(),
            "node",
            "status",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unauthenticated"), "{err}");
}
