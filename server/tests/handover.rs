//! Zero-downtime upgrade and rollback (specs/runbooks.md, "Upgrade",
//! "Canary", "Rollback"): a node started with `take_over` is handed the
//! running node's ports, store and claims; the old node's SDK clients are
//! told to reconnect and land on the new one with their subscriptions; a
//! refused or failed take-over leaves the old node serving, control plane
//! included. In-process servers for what needs a look inside, the real
//! binary for the command line and the old process's exit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::time::{Duration, Instant};

use arqonbus::config::Config;
use arqonbus::handover::{HandoverError, Incoming};
use arqonbus::testing::TestServer;
use arqonbus::{Server, ServerError};
use arqonbus_client::{Client, ConnectOptions, Subscriber};
use arqonbus_proto::control::ListTenantsRequest;
use arqonbus_proto::control::tenant_service_client::TenantServiceClient;
use common::{LIMIT, Node, Setup, control_channel, within};
use futures_util::StreamExt as _;
use tokio::sync::mpsc::UnboundedReceiver;

fn options(s: &TestServer) -> ConnectOptions {
    ConnectOptions::new()
        .url(s.url())
        .ca_file(s.ca_path())
        .credential_file(s.token_path())
        .name("handover-test")
}

/// Starts `Server::take_over(config)` beside `old` and lets `old` answer the
/// request; returns what each side made of it.
fn take_over(
    old: &mut Server,
    requests: &mut UnboundedReceiver<Incoming>,
    config: &Config,
) -> (Result<(), HandoverError>, Result<Server, ServerError>) {
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let new = s.spawn(|| Server::take_over(config, None));
            let incoming = requests
                .blocking_recv()
                .expect("the request reaches the old node");
            let handed = old.hand_over(incoming);
            (handed, new.join().expect("the take-over thread"))
        })
    })
}

/// Waits until `client` is connected to the server `server_id`.
async fn lands_on(client: &Client, server_id: &str) {
    let deadline = Instant::now() + LIMIT;
    while client.server_info().server_id != server_id {
        assert!(
            Instant::now() < deadline,
            "the client did not reconnect to {server_id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes `n` numbered messages and sees each arrive on `sub`.
async fn round_trip(publisher: &Client, sub: &mut Subscriber, subject: &str, n: u32) {
    for i in 0..n {
        publisher
            .publish(subject, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    for i in 0..n {
        let m = within("a message", sub.next()).await.unwrap();
        assert_eq!(&m.payload[..], &i.to_be_bytes());
    }
}

/// The control API at `addr` answers with the node's tenants.
async fn control_answers(addr: std::net::SocketAddr, s: &TestServer) -> usize {
    let admin = std::fs::read_to_string(s.admin_token_path()).unwrap();
    let (channel, auth) = control_channel(addr, &s.ca_path(), &admin).await;
    let mut tenants = TenantServiceClient::with_interceptor(channel, auth);
    within("list tenants", tenants.list_tenants(ListTenantsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tenants
        .len()
}

/// Ends the old side of a hand-over on its own thread (it waits out the
/// lame-duck window).
fn finish(old: Server) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || old.finish_hand_off())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_moves_every_client_and_a_rollback_moves_them_back() {
    let mut first = TestServer::start_with(|c| c.server.lame_duck_window_ms = 300);
    let config = first.config().clone();
    let mut requests = first.server_mut().handovers().unwrap();
    let subscriber = Client::connect(options(&first)).await.unwrap();
    let publisher = Client::connect(options(&first)).await.unwrap();
    let mut sub = subscriber.subscribe("upgrade.>").await.unwrap();
    let first_id = first.server().server_id().to_owned();
    round_trip(&publisher, &mut sub, "upgrade.before", 20).await;

    // Upgrade: the second node takes the ports, the store and the claim.
    let (handed, second) = take_over(first.server_mut(), &mut requests, &config);
    handed.unwrap();
    let mut second = second.unwrap();
    assert_ne!(second.server_id(), first_id);
    // With the steering program (CAP_BPF), new connections go to the new
    // node at once, while the old one still has its clients; the old node
    // gave its program up. Without it the kernel's hash may still pick the
    // old node's listeners until they stop.
    let fresh = Client::connect(options(&first)).await.unwrap();
    let old_steering = first.server().dataplane().steering_status();
    if second.dataplane().steering_status().active {
        assert_eq!(fresh.server_info().server_id, second.server_id());
        assert!(!old_steering.active);
        assert_eq!(
            old_steering.fallback_reason.as_deref(),
            Some("handed over to another process")
        );
    }
    let old = finish(first.take_server().unwrap());

    // The old node's clients are told to move and land on the new node,
    // their subscription with them.
    lands_on(&subscriber, second.server_id()).await;
    lands_on(&publisher, second.server_id()).await;
    subscriber.flush().await.unwrap();
    round_trip(&publisher, &mut sub, "upgrade.after", 20).await;
    tokio::task::block_in_place(|| old.join().unwrap());

    // The new node serves the control API on the same store, and holds the
    // port: another plain start is refused, naming it.
    let control = second.control_addr().unwrap();
    assert_eq!(control, config.control.listen);
    assert!(control_answers(control, &first).await >= 1);
    match Server::start(&config) {
        Err(ServerError::Port(e)) => {
            assert!(e.to_string().contains("held by a running ArqonBus node"));
        }
        other => panic!("a second start must be refused: {other:?}"),
    }

    // Rollback: the same exchange in the other direction.
    let mut requests = second.handovers().unwrap();
    let (handed, third) = take_over(&mut second, &mut requests, &config);
    handed.unwrap();
    let third = third.unwrap();
    let second_id = second.server_id().to_owned();
    let old = finish(second);
    lands_on(&subscriber, third.server_id()).await;
    lands_on(&publisher, third.server_id()).await;
    lands_on(&fresh, third.server_id()).await;
    assert_ne!(third.server_id(), second_id);
    subscriber.flush().await.unwrap();
    round_trip(&publisher, &mut sub, "upgrade.rolled-back", 20).await;
    tokio::task::block_in_place(|| old.join().unwrap());
    assert!(control_answers(third.control_addr().unwrap(), &first).await >= 1);
    third.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_with_another_data_directory_is_refused_and_the_node_serves_on() {
    let mut node = TestServer::start();
    let mut requests = node.server_mut().handovers().unwrap();
    let subscriber = Client::connect(options(&node)).await.unwrap();
    let publisher = Client::connect(options(&node)).await.unwrap();
    let mut sub = subscriber.subscribe("steady").await.unwrap();

    let mut other = node.config().clone();
    other.data_dir = node.root().join("elsewhere");
    let (handed, new) = take_over(node.server_mut(), &mut requests, &other);
    let Err(HandoverError::Refused(reason)) = handed else {
        panic!("expected a refusal, got {handed:?}");
    };
    assert!(reason.contains("data directory"), "{reason}");
    match new {
        Err(ServerError::Handover(HandoverError::Refused(r))) => assert_eq!(r, reason),
        other => panic!("the new node must fail with the refusal: {other:?}"),
    }
    // Nothing of the old node stopped: traffic, the control API, the claim.
    round_trip(&publisher, &mut sub, "steady", 10).await;
    let control = node.server().control_addr().unwrap();
    assert!(control_answers(control, &node).await >= 1);
    assert!(!other.data_dir.exists(), "the refused node created nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_that_fails_to_start_gives_the_node_back_its_control_plane() {
    let mut node = TestServer::start();
    let mut requests = node.server_mut().handovers().unwrap();
    let subscriber = Client::connect(options(&node)).await.unwrap();
    let publisher = Client::connect(options(&node)).await.unwrap();
    let mut sub = subscriber.subscribe("steady").await.unwrap();
    let id = node.server().server_id().to_owned();
    let steering = node.server().dataplane().steering_status().active;

    // The new node opens the store, then cannot bind its metrics port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut broken = node.config().clone();
    broken.metrics.listen = taken.local_addr().unwrap();
    let (handed, new) = take_over(node.server_mut(), &mut requests, &broken);
    let Err(HandoverError::NotTaken(reason)) = handed else {
        panic!("expected a failed take-over, got {handed:?}");
    };
    assert!(reason.contains("metrics listener"), "{reason}");
    assert!(matches!(new, Err(ServerError::MetricsListener { .. })));

    // The old node reopened its store and serves its control API again;
    // its clients never left, its steering program still steers.
    assert_eq!(node.server().dataplane().steering_status().active, steering);
    let control = node.server().control_addr().unwrap();
    assert!(control_answers(control, &node).await >= 1);
    assert_eq!(subscriber.server_info().server_id, id);
    round_trip(&publisher, &mut sub, "steady", 10).await;
    // And it can still be taken over.
    let config = node.config().clone();
    let (handed, new) = take_over(node.server_mut(), &mut requests, &config);
    handed.unwrap();
    let new = new.unwrap();
    finish(node.take_server().unwrap())
        .join()
        .unwrap_or_else(|_| panic!("the old node's finish"));
    lands_on(&subscriber, new.server_id()).await;
    new.shutdown();
}

/// The command line: `arqonbus serve --take-over` replaces a running
/// `arqonbus serve`, which exits 0 once its clients moved; the reverse is
/// the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_over_and_the_old_process_exits_cleanly() {
    let mut first = Node::spawn();
    let client = Client::connect(first.options()).await.unwrap();
    let mut sub = client.subscribe("bin.>").await.unwrap();
    let first_id = client.server_info().server_id.clone();

    let mut second = first.take_over();
    assert_eq!(second.data, first.data);
    assert!(first.exit_status().success(), "the old process exits 0");
    lands_on_other(&client, &first_id).await;
    let second_id = client.server_info().server_id.clone();
    client.flush().await.unwrap();
    client.publish("bin.x", b"after".to_vec()).await.unwrap();
    let m = within("a message after the upgrade", sub.next())
        .await
        .unwrap();
    assert_eq!(&m.payload[..], b"after");

    // Rollback.
    let third = second.take_over();
    assert!(second.exit_status().success());
    lands_on_other(&client, &second_id).await;
    drop(third);
}

async fn lands_on_other(client: &Client, not: &str) {
    let deadline = Instant::now() + LIMIT;
    while client.server_info().server_id == not {
        assert!(Instant::now() < deadline, "the client did not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills a process this test did not spawn (the one SIGUSR2 started).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid and a signal number has no memory
        // effects; a pid that is gone makes it fail, nothing else.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
        }
    }
}

/// The `MAINPID=` of a readiness notification (with `READY=1`).
fn main_pid(socket: &std::os::unix::net::UnixDatagram) -> u32 {
    let mut buf = [0u8; 256];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the limit");
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(text.lines().any(|l| l == "READY=1"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .expect("MAINPID")
        .parse()
        .unwrap()
}

/// The service manager's upgrade (deploy/arqonbus.service): SIGUSR2 makes
/// the node start its binary again with `--take-over`; the new process
/// says it is the main one (`MAINPID`, `READY=1`), takes the clients, and
/// the old one exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_in_place_and_the_service_manager_follows_the_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let manager = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    manager.set_read_timeout(Some(LIMIT)).unwrap();
    // A fixed port: the new process reads the same configuration.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut first = Node::spawn_with(Setup {
        envs: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        listen: Some(port),
        ..Setup::default()
    });
    assert_eq!(main_pid(&manager), first.pid());
    let client = Client::connect(first.options()).await.unwrap();
    let mut sub = client.subscribe("usr2.>").await.unwrap();
    let first_id = client.server_info().server_id.clone();

    first.signal("-USR2");
    let new_pid = main_pid(&manager);
    let _new = KillOnDrop(i32::try_from(new_pid).unwrap());
    assert_ne!(new_pid, first.pid());
    assert!(first.exit_status().success(), "the old process exits 0");
    lands_on_other(&client, &first_id).await;
    client.flush().await.unwrap();
    client.publish("usr2.x", b"after".to_vec()).await.unwrap();
    let m = within("a message after the upgrade", sub.next())
        .await
        .unwrap();
    assert_eq!(&m.payload[..], b"after");
}
