//! Store damage, loss, backup, restore, rotations and a full disk, on the
//! real `arqonbus` binary and its real data directory.
//!
//! A node that was initialised refuses to start when its store, CA or admin
//! token is missing, empty or damaged: a non-zero exit that is not a panic
//! (101), with one line naming the file and the command that recovers.
//! Recovery is explicit and tested here: `arqonbus restore --from`,
//! `arqonbus admin rotate-token`, `arqonbus serve --recreate-missing`,
//! `arqonbus ca rotate`, and the store reopening after a full disk is freed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use arqonbus_proto::control::node_service_client::NodeServiceClient;
use arqonbus_proto::control::tenant_service_client::TenantServiceClient;
use arqonbus_proto::control::{
    BackupRequest, CreateTenantRequest, GetStatusRequest, ListTenantsRequest, ReloadRequest,
    RotateAdminTokenRequest,
};
use common::{Authed, LIMIT, Node, control_channel, within};
use tonic::Code;

/// How one run of `arqonbus serve` went.
#[derive(Debug)]
enum Outcome {
    /// It printed its banner (and was then killed).
    Served,
    /// It exited by itself: the exit code and everything it wrote.
    Refused { code: Option<i32>, stderr: String },
}

fn config_of(node: &Node) -> PathBuf {
    node.data_dir().parent().unwrap().join("arqonbus.toml")
}

fn arqonbus(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_arqonbus"));
    c.args(args)
        .env_remove("ARQONBUS_CONFIG")
        .env_remove("ARQONBUS_DATA_DIR")
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    c
}

/// Runs `arqonbus serve --config <config> <extra>` until it serves or exits.
fn serve_once(config: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec!["serve", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut child = arqonbus(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let served = line.starts_with("ArqonBus listening on");
            all.push_str(&line);
            all.push('\n');
            if served {
                let _ = tx.send((true, all.clone()));
            }
        }
        let _ = tx.send((false, all));
    });
    let (served, stderr) = rx
        .recv_timeout(LIMIT)
        .expect("serve neither served nor exited");
    if served {
        let _ = child.kill();
        let _ = child.wait();
        return Outcome::Served;
    }
    let status = child.wait().unwrap();
    Outcome::Refused {
        code: status.code(),
        stderr,
    }
}

/// Asserts a refusal that is not a panic and whose last line names
/// `file` and `recovery`.
fn assert_refused(outcome: Outcome, file: &str, recovery: &str) -> String {
    let Outcome::Refused { code, stderr } = outcome else {
        panic!("the node started; it must refuse ({file})");
    };
    assert_ne!(code, Some(101), "a panic is not a refusal: {stderr}");
    assert_ne!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("arqonbus: "), "{stderr}");
    assert!(
        last.contains(file) && last.contains(recovery),
        "the error must name {file} and {recovery}: {last}"
    );
    last
}

/// Runs a maintenance command; returns its stdout, asserting success.
fn tool(args: &[&str]) -> String {
    let out = arqonbus(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn tenants(node: &Node) -> TenantServiceClient<Authed> {
    let (ch, auth) = node.control_channel().await;
    TenantServiceClient::with_interceptor(ch, auth)
}

async fn nodes(node: &Node) -> NodeServiceClient<Authed> {
    let (ch, auth) = node.control_channel().await;
    NodeServiceClient::with_interceptor(ch, auth)
}

async fn create(t: &mut TenantServiceClient<Authed>, name: &str) -> Result<u64, tonic::Status> {
    t.create_tenant(CreateTenantRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().id)
}

async fn names(node: &Node) -> Vec<String> {
    let mut t = tenants(node).await;
    let mut names: Vec<String> = t
        .list_tenants(ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    names
}

/// A deterministic byte stream (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_missing_file_refuses_the_start_and_names_the_recovery() {
    let mut node = Node::spawn();
    let mut t = tenants(&node).await;
    for i in 0..30 {
        create(&mut t, &format!("tenant-{i}")).await.unwrap();
    }
    node.kill_9();
    let config = config_of(&node);
    let data = node.data_dir();
    let store = data.join("control.redb");
    let saved = std::fs::read(&store).unwrap();

    // Deleted, then empty.
    std::fs::remove_file(&store).unwrap();
    assert_refused(
        serve_once(&config, &[]),
        "control.redb",
        "arqonbus restore --from",
    );
    std::fs::write(&store, b"").unwrap();
    assert_refused(
        serve_once(&config, &[]),
        "control.redb",
        "arqonbus restore --from",
    );

    // A random 4 KiB overwrite: never a panic; the header's is always caught.
    let mut refused = 0;
    for seed in 0..9_u64 {
        std::fs::write(&store, &saved).unwrap();
        let offset = if seed == 0 {
            0
        } else {
            (seed * 7919 * 4096) % (saved.len() as u64 - 4096)
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&store)
            .unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&noise(seed, 4096)).unwrap();
        drop(f);
        match serve_once(&config, &[]) {
            Outcome::Served => {}
            refusal @ Outcome::Refused { .. } => {
                assert_refused(refusal, "control.redb", "arqonbus restore --from");
                refused += 1;
            }
        }
    }
    println!("random 4 KiB overwrites refused: {refused} of 9 (the rest hit unused pages)");
    assert!(refused >= 1);
    std::fs::write(&store, &saved).unwrap();

    // The CA key, deleted or empty: never a new CA in silence.
    let ca_key = data.join("tls/ca.key");
    let key = std::fs::read(&ca_key).unwrap();
    std::fs::remove_file(&ca_key).unwrap();
    assert_refused(serve_once(&config, &[]), "ca.key", "--recreate-missing");
    std::fs::write(&ca_key, b"").unwrap();
    assert_refused(serve_once(&config, &[]), "ca.key", "--recreate-missing");
    std::fs::write(&ca_key, &key).unwrap();

    // The admin token, deleted or replaced by another.
    let admin = data.join("credentials/admin.token");
    let token = std::fs::read(&admin).unwrap();
    std::fs::remove_file(&admin).unwrap();
    assert_refused(
        serve_once(&config, &[]),
        "admin.token",
        "arqonbus admin rotate-token",
    );
    std::fs::write(&admin, format!("abt_{}\n", "x".repeat(43))).unwrap();
    assert_refused(
        serve_once(&config, &[]),
        "admin.token",
        "arqonbus admin rotate-token",
    );
    std::fs::write(&admin, &token).unwrap();

    // Everything back: the node starts with everything it had.
    node.restart();
    assert_eq!(
        names(&node).await.len(),
        31,
        "30 tenants and the bootstrap one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreating_on_purpose_gives_an_empty_store_and_a_new_ca() {
    let mut node = Node::spawn();
    create(&mut tenants(&node).await, "gone").await.unwrap();
    let admin = node.token("admin.token");
    let old_ca = std::fs::read(node.ca_path()).unwrap();
    node.kill_9();
    let data = node.data_dir();
    std::fs::remove_file(data.join("control.redb")).unwrap();
    std::fs::remove_file(data.join("tls/ca.key")).unwrap();
    assert!(matches!(
        serve_once(&config_of(&node), &["--recreate-missing"]),
        Outcome::Served
    ));
    node.restart();
    assert_ne!(std::fs::read(node.ca_path()).unwrap(), old_ca, "a new CA");
    assert_eq!(
        node.token("admin.token"),
        admin,
        "the admin token is adopted"
    );
    assert_eq!(
        names(&node).await,
        vec!["default"],
        "an empty store, plus the bootstrap tenant"
    );
    let lost: Vec<_> = std::fs::read_dir(data.join("tls"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".lost-"))
        .collect();
    assert!(
        !lost.is_empty(),
        "the old CA files are moved aside, not deleted"
    );

    // A lost admin token with the store holding one: a new token, on purpose.
    node.kill_9();
    std::fs::remove_file(data.join("credentials/admin.token")).unwrap();
    assert!(matches!(
        serve_once(&config_of(&node), &[]),
        Outcome::Refused { .. }
    ));
    assert!(matches!(
        serve_once(&config_of(&node), &["--recreate-missing"]),
        Outcome::Served
    ));
    node.restart();
    assert_ne!(node.token("admin.token"), admin);
    status(&node, &node.token("admin.token")).await.unwrap();
    assert_eq!(
        status(&node, &admin).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_restores_over_a_damaged_store() {
    let mut node = Node::spawn();
    let mut t = tenants(&node).await;
    create(&mut t, "before").await.unwrap();
    // The backup, while the node serves.
    let mut stream = nodes(&node)
        .await
        .backup(BackupRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    let mut expected = (0, String::new());
    while let Some(chunk) = within("backup", stream.message()).await.unwrap() {
        if bytes.is_empty() {
            expected = (chunk.total_bytes, chunk.sha256.clone());
        }
        bytes.extend_from_slice(&chunk.data);
    }
    assert_eq!(bytes.len() as u64, expected.0);
    assert_eq!(expected.1.len(), 64);
    create(&mut t, "after").await.unwrap();
    node.kill_9();

    let backup = node.data_dir().parent().unwrap().join("backup.redb");
    std::fs::write(&backup, &bytes).unwrap();
    let store = node.data_dir().join("control.redb");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    f.write_all(&noise(1, 4096)).unwrap();
    drop(f);
    let config = config_of(&node);
    assert_refused(
        serve_once(&config, &[]),
        "control.redb",
        "arqonbus restore --from",
    );

    let out = tool(&[
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
    ]);
    assert!(out.contains("2 tenants"), "{out}");
    node.restart();
    assert_eq!(names(&node).await, vec!["before", "default"]);
    // A running node's store is never replaced.
    let out = arqonbus(&[
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--from",
        backup.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_admin_token_invalidates_the_old_one() {
    let mut node = Node::spawn();
    let old = node.token("admin.token");
    node.kill_9();
    let config = config_of(&node);
    let out = tool(&[
        "admin",
        "rotate-token",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.contains("admin.token"), "{out}");
    assert!(!out.contains("abt_"), "the token is never printed");
    let path = node.data_dir().join("credentials/admin.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let new = node.token("admin.token");
    assert_ne!(new, old);
    node.restart();

    let (ch, auth) = control_channel(node.control, &node.ca_path(), &old).await;
    let err = NodeServiceClient::with_interceptor(ch, auth)
        .get_status(GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    nodes(&node)
        .await
        .get_status(GetStatusRequest {})
        .await
        .unwrap();
}

/// `GetStatus` with `token`.
async fn status(node: &Node, token: &str) -> Result<(), tonic::Status> {
    let (ch, auth) = control_channel(node.control, &node.ca_path(), token).await;
    NodeServiceClient::with_interceptor(ch, auth)
        .get_status(GetStatusRequest {})
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_admin_token_online_takes_effect_at_once_and_persists() {
    let mut node = Node::spawn();
    let old = node.token("admin.token");
    // Offline rotation refuses a running node and points to the online one.
    let out = arqonbus(&[
        "admin",
        "rotate-token",
        "--config",
        config_of(&node).to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("arqonctl admin rotate"), "{err}");
    assert_eq!(node.token("admin.token"), old, "nothing changed");
    let answer = nodes(&node)
        .await
        .rotate_admin_token(RotateAdminTokenRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(answer.token, old);
    assert_eq!(node.token("admin.token"), answer.token, "the node's file");
    let path = node.data_dir().join("credentials/admin.token");
    assert_eq!(answer.path, path.display().to_string());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let err = status(&node, &old).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    status(&node, &answer.token).await.unwrap();
    node.kill_9();
    node.restart();
    assert_eq!(
        status(&node, &old).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    status(&node, &answer.token).await.unwrap();
}

/// The first certificate of a PEM bundle, as its own PEM file.
fn first_cert(bundle: &Path, out: &Path) {
    let text = std::fs::read_to_string(bundle).unwrap();
    let end = "-----END CERTIFICATE-----";
    let first = &text[..text.find(end).unwrap() + end.len()];
    std::fs::write(out, format!("{first}\n")).unwrap();
}

async fn status_with_ca(node: &Node, ca: &Path) -> Result<(), String> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read_to_string(ca).unwrap(),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", node.control))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let bearer = format!("Bearer {}", node.token("admin.token"));
    let mut c = NodeServiceClient::new(channel);
    let mut req = tonic::Request::new(GetStatusRequest {});
    req.metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    c.get_status(req)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_keeps_old_clients_working_during_the_overlap() {
    let mut node = Node::spawn();
    let dir = node.data_dir().parent().unwrap().to_owned();
    let old_ca = dir.join("old-ca.pem");
    std::fs::copy(node.ca_path(), &old_ca).unwrap();
    node.kill_9();
    let config = config_of(&node);
    let out = tool(&["ca", "rotate", "--config", config.to_str().unwrap()]);
    assert!(out.contains("ca.pem"), "{out}");
    node.restart();
    let new_ca = dir.join("new-ca.pem");
    first_cert(&node.ca_path(), &new_ca);
    assert_ne!(
        std::fs::read(&new_ca).unwrap(),
        std::fs::read(&old_ca).unwrap()
    );
    status_with_ca(&node, &old_ca).await.unwrap();
    status_with_ca(&node, &new_ca).await.unwrap();
    status_with_ca(&node, &node.ca_path()).await.unwrap();
    // The data plane serves the same chain.
    let c = arqonbus_client::Client::connect(node.options().ca_file(old_ca.clone()))
        .await
        .unwrap();
    c.close().await;

    // An overlap of 0 days ends at the next start: the old CA is refused.
    node.kill_9();
    let out = arqonbus(&["ca", "rotate", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "one rotation at a time");
    let (mut fresh, fresh_dir) = {
        let n = Node::spawn();
        let d = n.data_dir().parent().unwrap().to_owned();
        (n, d)
    };
    let before = fresh_dir.join("before.pem");
    std::fs::copy(fresh.ca_path(), &before).unwrap();
    fresh.kill_9();
    tool(&[
        "ca",
        "rotate",
        "--overlap-days",
        "0",
        "--config",
        config_of(&fresh).to_str().unwrap(),
    ]);
    fresh.restart();
    assert!(status_with_ca(&fresh, &before).await.is_err());
    status_with_ca(&fresh, &fresh.ca_path()).await.unwrap();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Unmounts on drop, so a failed test leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0_u8; 16 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

/// Creates tenants until a write fails (the disk is full); returns its error.
async fn write_until_failure(t: &mut TenantServiceClient<Authed>, prefix: &str) -> tonic::Status {
    for i in 0..2_000 {
        if let Err(e) = create(t, &format!("{prefix}-{i}")).await {
            return e;
        }
    }
    panic!("2,000 writes fitted on a full disk");
}

/// Polls (bounded by [`LIMIT`]) until a control write succeeds again.
async fn writes_again(node: &Node, name: &str) {
    within("the store to reopen", async {
        loop {
            let mut t = tenants(node).await;
            if create(&mut t, name).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_disk_is_freed_the_store_reopens() {
    if !is_root() {
        println!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let mut node = Node::spawn();
    node.kill_9();
    // Move the data directory onto a small tmpfs.
    let data = node.data_dir();
    let saved = data.with_file_name("data.saved");
    std::fs::rename(&data, &saved).unwrap();
    std::fs::create_dir(&data).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    if !ok.success() {
        println!("SKIPPED: mount -t tmpfs failed (no privilege in this container)");
        return;
    }
    let _mount = Mount(data.clone());
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", saved.display()))
        .arg(&data)
        .status()
        .unwrap();
    assert!(copied.success());
    node.restart();
    let filler = data.join("filler");

    // By itself: the disk fills, writes fail closed, space is freed, and
    // the store comes back without any operator action.
    let mut t = tenants(&node).await;
    create(&mut t, "fits").await.unwrap();
    fill(&filler);
    let err = write_until_failure(&mut t, "full").await;
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    // Sessions go on from the last snapshot meanwhile.
    std::fs::remove_file(&filler).unwrap();
    writes_again(&node, "after-backoff").await;
    within("accepting again", async {
        loop {
            let s = nodes(&node)
                .await
                .get_status(GetStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            if s.accepting {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // On `node reload`: a reopen at once, then the write goes through.
    fill(&filler);
    let err = write_until_failure(&mut t, "full-again").await;
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    std::fs::remove_file(&filler).unwrap();
    let status = nodes(&node)
        .await
        .reload(ReloadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.accepting, "{}", status.reason);
    create(&mut t, "after-reload").await.unwrap();

    // SIGHUP during the failure, then once space is back: the node stays
    // up and writes resume (SIGHUP reopens as Reload does; the reopen task
    // may get there first).
    fill(&filler);
    let err = write_until_failure(&mut t, "full-hup").await;
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    node.signal("-HUP");
    std::fs::remove_file(&filler).unwrap();
    node.signal("-HUP");
    writes_again(&node, "after-sighup").await;

    let all = names(&node).await;
    for name in ["fits", "after-backoff", "after-reload", "after-sighup"] {
        assert!(all.iter().any(|n| n == name), "{name} in {all:?}");
    }
    node.kill_9();
}
