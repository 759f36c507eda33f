//! Operating the real server: the monitoring endpoints, trace context carried
//! end to end, SIGHUP reload without dropping connections, and SIGTERM lame
//! duck. Process-level tests run the `arqonbus` binary itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use arqonbus::testing::TestServer;
use arqonbus_client::{Client, ConnectOptions, Event, Headers, OutgoingMessage};
use common::{LIMIT, Node, Setup, within};
use futures_util::StreamExt as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A minimal HTTP/1.1 GET; returns (status, body).
fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn options(s: &TestServer) -> ConnectOptions {
    ConnectOptions::new()
        .url(s.url())
        .ca_file(s.ca_path())
        .credential_file(s.token_path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_monitoring_endpoints() {
    let s = TestServer::start();
    let metrics = s.metrics_addr();
    let c = Client::connect(options(&s).name("observed")).await.unwrap();
    let mut sub = c.subscribe("m.*").await.unwrap();
    for _ in 0..20 {
        c.publish("m.x", "hello").await.unwrap();
    }
    c.flush().await.unwrap();
    for _ in 0..20 {
        tokio::time::timeout(LIMIT, sub.next())
            .await
            .unwrap()
            .unwrap();
    }

    let (code, text) = tokio::task::spawn_blocking(move || get(metrics, "/metrics", None))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        text.contains("arqonbus_tenant_messages_in_total{tenant=\"default\"} 20"),
        "{text}"
    );
    assert!(text.contains("arqonbus_handshake_seconds_count"));
    assert!(text.contains("arqonbus_accepting_sessions 1"));
    assert!(!text.contains("hello"), "payloads never appear in metrics");

    let (code, body) = tokio::task::spawn_blocking(move || get(metrics, "/healthz", None))
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = tokio::task::spawn_blocking(move || get(metrics, "/readyz", None))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ready\":true"));

    // Monitoring JSON needs the admin credential.
    let (code, _) = tokio::task::spawn_blocking(move || get(metrics, "/connz", None))
        .await
        .unwrap();
    assert_eq!(code, 401);
    let admin = std::fs::read_to_string(s.admin_token_path()).unwrap();
    let admin = admin.trim().to_owned();
    let a = admin.clone();
    let (code, body) = tokio::task::spawn_blocking(move || get(metrics, "/connz", Some(&a)))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"client_name\":\"observed\""), "{body}");
    let a = admin.clone();
    let (code, body) = tokio::task::spawn_blocking(move || get(metrics, "/varz", Some(&a)))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"msgs_in\":20"), "{body}");
    let (code, body) = tokio::task::spawn_blocking(move || get(metrics, "/subsz", Some(&admin)))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"subscriptions\":1"), "{body}");

    // A drained shard makes the node not ready, with the reason.
    s.server().dataplane().drain(0).unwrap();
    let (code, body) = tokio::task::spawn_blocking(move || get(metrics, "/readyz", None))
        .await
        .unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("draining shards: 0"), "{body}");
}

#[test]
fn a_metrics_port_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().map(|a| (taken, a)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = arqonbus::config::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.control.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = taken.1;
    let err = arqonbus::Server::start(&config).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, arqonbus::ServerError::MetricsListener { addr, .. } if addr == taken.1),
        "{err:?}"
    );
    assert!(err.to_string().contains(&taken.1.to_string()), "{err}");
}

/// A node's configuration on a fresh data directory, with `edit` applied;
/// its own ports are all kernel-picked unless `edit` sets them.
fn second_node(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut arqonbus::config::Config),
) -> arqonbus::config::Config {
    let mut config = arqonbus::config::Config {
        data_dir: dir.join("data"),
        ..Default::default()
    };
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.control.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config.server.shards = 1;
    edit(&mut config);
    config
}

fn assert_held_by(err: &arqonbus::ServerError, port: u16, first: &TestServer) {
    let first_dir = std::path::absolute(first.data_dir()).unwrap();
    match err {
        arqonbus::ServerError::Port(arqonbus::owner::ClaimError::Held { port: p, holder }) => {
            assert_eq!(*p, port);
            assert_eq!(holder.pid, std::process::id());
            assert_eq!(holder.data_dir, first_dir);
        }
        other => panic!("expected the port to be held, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(text.contains(&first_dir.display().to_string()), "{text}");
}

/// One owner per port: a second node on a served port (same address, or the
/// wildcard over it, with its own data directory and no control plane) is
/// refused before it binds, and the refusal names the first node; the first
/// keeps serving, and once it stopped the port is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_served_port_is_refused_and_names_the_first() {
    let mut first = TestServer::start();
    let port = first.addr().port();
    let dir = tempfile::tempdir().unwrap();
    for listen in [first.addr(), SocketAddr::from(([0, 0, 0, 0], port))] {
        let second = second_node(dir.path(), |c| {
            c.server.listen = listen;
            c.control.enabled = false;
        });
        let err = arqonbus::Server::start(&second).map(|_| ()).unwrap_err();
        assert_held_by(&err, port, &first);
    }
    // Nothing of the second node was created, and every connect still
    // reaches the first one.
    assert!(!dir.path().join("data").exists());
    for _ in 0..8 {
        let client = within("connect", Client::connect(options(&first)))
            .await
            .unwrap();
        within("close", client.close()).await;
    }
    // The real binary says the same on stderr and exits non-zero at once.
    let config = dir.path().join("second.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[server]\nlisten = \"{}\"\n[control]\nenabled = false\n",
            dir.path().join("data").display().to_string(),
            first.addr()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arqonbus"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_ne!(
        out.status.code(),
        Some(101),
        "a panic is not a refusal: {stderr}"
    );
    let first_dir = std::path::absolute(first.data_dir()).unwrap();
    assert!(
        stderr.contains(&format!("pid {}", std::process::id()))
            && stderr.contains(&first_dir.display().to_string()),
        "{stderr}"
    );
    // Stopped, the first node frees the port for the next.
    first.stop();
    let second = second_node(dir.path(), |c| {
        c.server.listen = SocketAddr::from(([127, 0, 0, 1], port));
        c.control.enabled = false;
    });
    let node = arqonbus::Server::start(&second).unwrap();
    assert_eq!(node.local_addr().port(), port);
    node.shutdown();
}

/// The WebSocket port is claimed like the native one.
#[test]
fn a_served_websocket_port_is_refused_to_a_second_node() {
    let first = TestServer::start_with(|c| {
        c.websocket.enabled = true;
        c.websocket.listen = "127.0.0.1:0".parse().unwrap();
    });
    let ws = first.server().websocket_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let second = second_node(dir.path(), |c| {
        c.control.enabled = false;
        c.websocket.enabled = true;
        c.websocket.listen = ws;
    });
    let err = arqonbus::Server::start(&second).map(|_| ()).unwrap_err();
    assert_held_by(&err, ws.port(), &first);
}

/// The monitoring listener serves at most 64 connections at once
/// (`monitor::MAX_CONNECTIONS`); more are closed on accept, and a freed slot
/// serves again.
#[test]
fn the_monitoring_listener_caps_its_connections() {
    let s = TestServer::start();
    let metrics = s.metrics_addr();
    let mut held: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(metrics).unwrap())
        .collect();
    // Accepted in order: the 65th is closed without an answer.
    let mut extra = TcpStream::connect(metrics).unwrap();
    extra.set_read_timeout(Some(LIMIT)).unwrap();
    write!(extra, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").ok();
    let mut buf = [0u8; 64];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection past the cap was served: {other:?}"),
    }
    // Held connections are served.
    write!(
        held[0],
        "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    held[0].read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // held[0] is closed now: its slot serves a new connection (once the
    // server has seen the close).
    held.remove(0);
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let mut c = TcpStream::connect(metrics).unwrap();
        c.set_read_timeout(Some(LIMIT)).unwrap();
        write!(
            c,
            "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .ok();
        let mut answer = String::new();
        if c.read_to_string(&mut answer).is_ok() && answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a freed slot never served again"
        );
        std::thread::yield_now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_header_travels_end_to_end() {
    let s = TestServer::start();
    let a = Client::connect(options(&s)).await.unwrap();
    let b = Client::connect(options(&s)).await.unwrap();
    let mut sub = b.subscribe("traced").await.unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = Headers::new();
    headers.insert("traceparent", traceparent);
    a.publish_message(OutgoingMessage::new("traced", "x").headers(headers))
        .await
        .unwrap();
    let m = tokio::time::timeout(LIMIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.headers.get("traceparent"), Some(traceparent.as_bytes()));
}

// ---- the binary -----------------------------------------------------------

fn max_payload(bytes: u32) -> String {
    format!("[limits]\nmax_payload = {bytes}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_limits_without_dropping_connections() {
    let mut node = Node::spawn_with(Setup {
        extra: max_payload(4096),
        ..Setup::default()
    });
    let c = within("connect", Client::connect(node.options()))
        .await
        .unwrap();
    let session = c.server_info().session_id;
    let mut events = c.events();
    c.publish("big", vec![0u8; 3000]).await.unwrap();
    within("first flush", c.flush()).await.unwrap();

    node.rewrite_config(&max_payload(1024));
    node.signal("-HUP");
    // The new limit applies once the snapshot reaches the shard: publish
    // until the server refuses the same payload (bounded in time, not in
    // tries: under load the reload may take many round trips).
    let mut refused = false;
    let deadline = std::time::Instant::now() + LIMIT;
    while std::time::Instant::now() < deadline {
        c.publish("big", vec![0u8; 3000]).await.unwrap();
        within("flush after reload", c.flush()).await.unwrap();
        while let Some(Some(e)) =
            futures_util::FutureExt::now_or_never(tokio::task::unconstrained(events.next()))
        {
            if let Event::ServerError(err) = e {
                assert_eq!(err.code, arqonbus_client::ErrorCode::MaxPayloadExceeded);
                refused = true;
            }
        }
        if refused {
            break;
        }
    }
    assert!(refused, "the reloaded max_payload never applied");
    assert_eq!(
        c.server_info().session_id,
        session,
        "the connection was kept"
    );
    c.publish("small", "fits").await.unwrap();
    within("last flush", c.flush()).await.unwrap();

    node.signal("-INT");
    assert!(node.exit_status().success());
}

/// `Server::reload` (SIGHUP) on a node started without `--config`: it does
/// not give up for want of a file, it reopens the store if needed and pushes
/// a snapshot with the limits in force. Without the control plane it fails
/// and says nothing changed.
#[test]
fn a_reload_without_a_config_file_still_pushes_a_snapshot() {
    let s = TestServer::start();
    let first = s.server().reload().unwrap();
    let second = s.server().reload().unwrap();
    assert!(second > first, "epoch {first} then {second}");

    let s = TestServer::start_with(|c| {
        c.control.enabled = false;
        c.metrics.enabled = false;
    });
    let e = s.server().reload().unwrap_err();
    assert!(matches!(e, arqonbus::ReloadError::ControlDisabled), "{e}");
    assert!(!e.took_effect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_clients_then_exits() {
    let mut node = Node::spawn();
    let c = within("connect", Client::connect(node.options()))
        .await
        .unwrap();
    let mut events = c.events();
    // A load balancer watching health holds a stream open that never ends
    // by itself: the exit must not wait for it.
    let (channel, _) = node.control_channel().await;
    let mut health = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = within("health", health.message()).await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    node.signal("-TERM");
    let mut drained = false;
    let mut disconnected = false;
    while !(drained && disconnected) {
        match within("the next event", events.next()).await {
            Some(Event::ServerDraining { deadline, .. }) => {
                assert_eq!(deadline, Duration::from_millis(300));
                drained = true;
            }
            Some(Event::Disconnected { .. }) => {
                assert!(drained, "the Drain notice comes first");
                disconnected = true;
            }
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
    within("close", c.close()).await;
    assert!(node.exit_status().success(), "the server exits by itself");
    drop(health);
}

/// The CPUs a thread may run on, from `/proc/PID/task/TID/status`.
fn allowed_cpus(task: &std::path::Path) -> Option<String> {
    let status = std::fs::read_to_string(task.join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_cpus_keep_every_control_thread_on_them() {
    // The last CPU this process may use: the node may use it too.
    let cpu = last_allowed_cpu();
    let node = Node::spawn_with(Setup {
        control: format!("cpus = [{cpu}]"),
        ..Setup::default()
    });
    // A write runs on the blocking pool: its threads must be there too.
    let (channel, auth) = node.control_channel().await;
    let mut tenants =
        arqonbus_proto::control::tenant_service_client::TenantServiceClient::with_interceptor(
            channel, auth,
        );
    within(
        "a tenant created",
        tenants.create_tenant(arqonbus_proto::control::CreateTenantRequest {
            name: "pinned".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let tasks = std::path::PathBuf::from(format!("/proc/{}/task", node.pid()));
    let mut control = Vec::new();
    let mut shards = Vec::new();
    for task in std::fs::read_dir(&tasks).unwrap() {
        let task = task.unwrap().path();
        // A thread that ended since the listing has no files left.
        let (Ok(name), Some(cpus)) = (
            std::fs::read_to_string(task.join("comm")),
            allowed_cpus(&task),
        ) else {
            continue;
        };
        // `comm` keeps the first 15 bytes of a thread's name.
        if name.starts_with("arqonbus-contro") {
            control.push(cpus);
        } else if name.starts_with("arqonbus-shard") {
            shards.push(cpus);
        }
    }
    // The runtime's own thread and at least one blocking thread (the write).
    assert!(control.len() >= 2, "control threads: {control:?}");
    assert!(
        control.iter().all(|c| *c == cpu.to_string()),
        "control threads on {control:?}, not on CPU {cpu}"
    );
    // The shards keep their own pinning.
    assert!(!shards.is_empty());
    assert!(
        shards.iter().all(|c| !c.contains(['-', ','])),
        "shards each on one CPU: {shards:?}"
    );
}

/// The highest CPU number this process may run on.
fn last_allowed_cpu() -> usize {
    let own = allowed_cpus(std::path::Path::new("/proc/thread-self")).unwrap();
    own.split(',')
        .filter_map(|range| range.rsplit('-').next()?.parse().ok())
        .max()
        .unwrap()
}

#[test]
fn a_control_cpu_the_process_may_not_use_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    // Valid (below CPU_SETSIZE), but far beyond the CPUs of any host
    // these tests run on.
    let config = second_node(dir.path(), |c| {
        c.control.cpus = vec![arqonbus::config::MAX_CPU];
    });
    config.validate().unwrap();
    let err = arqonbus::Server::start(&config).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, arqonbus::ServerError::ControlCpus(c) if c == arqonbus::config::MAX_CPU),
        "{err:?}"
    );
    assert!(err.to_string().contains("control.cpus"), "{err}");
}
