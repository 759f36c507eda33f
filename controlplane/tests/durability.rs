//! kill -9 during a burst of writes loses no acknowledged write.
//!
//! The test re-runs its own binary as a child (`writer_child`, selected by
//! the `ARQONBUS_CP_WRITER_DIR` variable): the child serves the control API
//! and creates tenants through a real gRPC client in a loop, printing
//! `ACK <id> <name>` after each acknowledged call. The parent SIGKILLs it
//! mid-burst, reopens the store and checks every acknowledged tenant is there.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use arqonbus_controlplane::{RedbStore, Store as _};
use arqonbus_proto::control::CreateTenantRequest;
use common::*;

const CHILD_ENV: &str = "ARQONBUS_CP_WRITER_DIR";
/// Acknowledgements to see before the kill.
const ACKS_BEFORE_KILL: usize = 25;
/// The child stops by itself after this many writes.
const CHILD_MAX_WRITES: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::print_stdout,
    reason = "the child reports to its parent on stdout"
)]
async fn writer_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only meaningful as the child of the test below.
    };
    let pki = pki();
    let node = start(std::path::Path::new(&dir), &pki, |_| {}).await;
    let ch = channel(&node, &pki).await;
    let mut c = clients(&ch, &Bearer::new(&node.token));
    for i in 0..CHILD_MAX_WRITES {
        let name = format!("burst-{i}");
        let t = c
            .tenants
            .create_tenant(CreateTenantRequest {
                name: name.clone(),
                quotas: None,
                placement: String::new(),
                allowed_origins: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        println!("ACK {} {name}", t.id);
    }
}

#[test]
fn kill_9_during_a_burst_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["writer_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: Vec<(u64, String)> = Vec::new();
    let parse = |line: &str| {
        let mut parts = line.strip_prefix("ACK ")?.split(' ');
        let id = parts.next()?.parse().ok()?;
        Some((id, parts.next()?.to_owned()))
    };
    while acked.len() < ACKS_BEFORE_KILL {
        let line = lines
            .next()
            .expect("the child stopped before the kill")
            .unwrap();
        acked.extend(parse(&line));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acknowledgements printed before the kill are still in the pipe.
    for line in lines {
        acked.extend(parse(&line.unwrap()));
    }
    assert!(acked.len() < CHILD_MAX_WRITES, "killed mid-burst");

    let store = RedbStore::open(dir.path()).unwrap();
    for (id, name) in &acked {
        let t = store
            .tenant(*id)
            .unwrap_or_else(|e| panic!("acknowledged tenant {id} ({name}) lost: {e}"));
        assert_eq!(&t.name, name);
    }
    // Nothing half-written either: every stored tenant decodes, and the
    // store takes writes again.
    let all = store.load().unwrap();
    assert!(all.tenants.len() >= acked.len());
    store.next_epoch(1).unwrap();
}
