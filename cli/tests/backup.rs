//! `arqonctl backup FILE` against a real server: a consistent copy of the
//! control store taken while the node serves, written 0600, never over an
//! existing file. (Restoring it with `arqonbus restore` is tested on the
//! server binary: server/tests/store.rs.)
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
