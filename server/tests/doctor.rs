//! `arqonbus doctor` through the real binary: one line per check, JSON,
//! the exit codes (0 ok, 1 warn, 2 fail, 3 could not check), and bad input
//! (unknown profile, broken configuration, no privileges, too little locked
//! memory), with a running node left undisturbed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output};

use common::LIMIT;

const VERDICTS: [&str; 3] = ["ok", "warn", "fail"];

fn doctor(args: &[&str]) -> Command {
    doctor_at(std::path::Path::new(env!("CARGO_BIN_EXE_arqonbus")), args)
}

fn doctor_at(bin: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("doctor").args(args).env_remove("ARQONBUS_CONFIG");
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().unwrap();
    (
        status.code().unwrap(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn json(c: &mut Command) -> (i32, serde_json::Value) {
    let (code, out, err) = run(c);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
    (code, v)
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v:#}"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

#[test]
fn one_line_per_check_and_an_exit_code_that_matches_the_worst() {
    let (code, out, err) = run(&mut doctor(&[]));
    assert!((0..=2).contains(&code), "{code}: {out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    let (summary, checks) = lines.split_last().unwrap();
    assert!(checks.len() >= 10, "{out}");
    for line in checks {
        let verdict = line.split_whitespace().next().unwrap();
        assert!(VERDICTS.contains(&verdict), "{line}");
        assert_eq!(verdict != "ok", line.contains(" -> fix: "), "{line}");
    }
    assert!(summary.contains(&format!("exit code {code}")), "{summary}");
    for name in [
        "kernel:",
        "io_uring:",
        "RLIMIT_MEMLOCK:",
        "RLIMIT_NOFILE:",
        "CAP_BPF:",
        "transparent huge pages:",
        "clock source:",
        "CPUs and shards:",
        "sysctl net.core.somaxconn:",
    ] {
        assert!(out.contains(name), "{name} missing:\n{out}");
    }
    assert!(out.contains("NIC "), "{out}");
}

#[test]
fn json_report_for_each_profile() {
    for profile in ["latency", "throughput", "connections"] {
        let (code, v) = json(&mut doctor(&["--profile", profile, "--json"]));
        assert_eq!(v["profile"], profile);
        let worst = v["verdict"].as_str().unwrap();
        assert_eq!(
            code,
            i32::try_from(VERDICTS.iter().position(|x| *x == worst).unwrap()).unwrap()
        );
        let checks = v["checks"].as_array().unwrap();
        // Every sysctl of the profile file is checked.
        let file = std::fs::read_to_string(format!(
            "{}/../tuning/profiles/{profile}.conf",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        for line in file
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let key = line.split('=').next().unwrap().trim();
            check(&v, &format!("sysctl {key}"));
        }
        for c in checks {
            let verdict = c["verdict"].as_str().unwrap();
            assert!(VERDICTS.contains(&verdict));
            assert_eq!(verdict != "ok", c["fix"].is_string(), "{c}");
        }
    }
}

#[test]
fn bad_input_is_one_message_and_exit_3() {
    let (code, out, err) = run(&mut doctor(&["--profile", "fast"]));
    assert_eq!(code, 3);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown profile \"fast\""), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nshards = 65\n").unwrap();
    let (code, out, err) = run(&mut doctor(&["--config", bad.to_str().unwrap()]));
    assert_eq!(code, 3);
    assert!(out.is_empty());
    assert!(err.contains("server.shards"), "{err}");

    let (code, _, err) = run(&mut doctor(&["--config", "/nonexistent/arqonbus.toml"]));
    assert_eq!(code, 3);
    assert!(err.contains("/nonexistent/arqonbus.toml"), "{err}");
}

#[test]
fn too_little_locked_memory_fails_with_the_fix() {
    // prlimit lowers the limit for the doctor only.
    let mut c = Command::new("prlimit");
    c.args(["--memlock=65536:65536", "--"])
        .arg(env!("CARGO_BIN_EXE_arqonbus"))
        .args(["doctor", "--json"])
        .env_remove("ARQONBUS_CONFIG");
    let (code, v) = json(&mut c);
    assert_eq!(code, 2, "{v:#}");
    let m = check(&v, "RLIMIT_MEMLOCK");
    assert_eq!(m["verdict"], "fail");
    assert!(m["fix"].as_str().unwrap().contains("LimitMEMLOCK="), "{m}");
}

/// A minimal GET; returns the status.
fn get_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw[9..12].parse().unwrap()
}

#[test]
fn unprivileged_says_so_exits_non_zero_and_disturbs_no_node() {
    if !is_root() {
        // Already unprivileged: the same holds for this process.
        let (code, v) = json(&mut doctor(&["--json"]));
        assert!(code >= 1);
        assert_eq!(check(&v, "privileges")["verdict"], "warn");
        return;
    }
    let node = arqonbus::testing::TestServer::start();
    let metrics = node.metrics_addr();
    assert_eq!(get_status(metrics, "/readyz"), 200);

    let dir = tempfile::tempdir().unwrap();
    let strict = dir.path().join("strict.toml");
    std::fs::write(&strict, "[steering]\nrequired = true\n").unwrap();
    // World-readable, so `nobody` can read it.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&strict, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // A copy of the binary `nobody` can reach wherever the checkout lives (a
    // clone under a 0700 directory, as `mktemp -d` makes, is not reachable).
    let bin = dir.path().join("arqonbus");
    std::fs::copy(env!("CARGO_BIN_EXE_arqonbus"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let (code, out, _) = run(doctor_at(&bin, &[]).uid(65534).gid(65534));
    assert!(code >= 1, "{out}");
    let line = out.lines().find(|l| l.contains("privileges:")).unwrap();
    assert!(
        line.starts_with("warn") && line.contains("unprivileged"),
        "{line}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("warn") && l.contains("CAP_BPF: no CAP_")),
        "{out}"
    );

    // With steering required, the missing capability is a failure.
    let (code, v) = json(
        doctor_at(&bin, &["--json", "--config", strict.to_str().unwrap()])
            .uid(65534)
            .gid(65534),
    );
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(check(&v, "CAP_BPF")["verdict"], "fail");

    // The running node noticed nothing.
    assert_eq!(get_status(metrics, "/readyz"), 200);
    assert!(node.stats().connections_refused == 0);
}
