//! A real server for integration tests (feature `test-support`).
//!
//! [`TestServer`] runs the whole server, TLS and bootstrap included, on a
//! temporary data directory and an ephemeral loopback port, with two shards
//! and a fast timer. Tests of this crate, the client SDK and the CLI share it,
//! so they all exercise the real thing. Not for production use.
#![allow(
    clippy::expect_used,
    reason = "test support: a failed start must fail the test"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arqonbus_core::stats::ShardStats;

use crate::Server;
use crate::bootstrap::{BOOTSTRAP_TOKEN, token_hash_hex};
use crate::config::{Config, CredentialConfig, LogFormat, TenantConfig};

/// A running server on a temporary data directory.
#[derive(Debug)]
pub struct TestServer {
    server: Option<Server>,
    config: Config,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// TLS on, two shards, defaults otherwise.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Like [`start`](Self::start), after `edit` adjusts the configuration.
    pub fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.control.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.metrics.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.shards = 2;
        config.server.tick_ms = 20;
        config.log.format = LogFormat::Text;
        // The tests place connections on chosen shards themselves, to cross
        // the mesh; placement tests set `home` back.
        config.steering.default_placement = "spread".into();
        edit(&mut config);
        let server = Server::start(&config).expect("test server starts");
        // Later restarts reuse the client port the first start picked (the
        // control and metrics ports are picked again: `restart`).
        config.server.listen = server.local_addr();
        if let Some(control) = server.control_addr() {
            config.control.listen = control;
        }
        if let Some(metrics) = server.metrics_addr() {
            config.metrics.listen = metrics;
        }
        Self {
            server: Some(server),
            config,
            dir,
        }
    }

    /// The running server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server is running")
    }

    /// The running server, to take requests for it (a hand-over).
    pub fn server_mut(&mut self) -> &mut Server {
        self.server.as_mut().expect("server is running")
    }

    /// Takes the running server out (it then stops when the caller says).
    pub fn take_server(&mut self) -> Option<Server> {
        self.server.take()
    }

    /// The configuration, with the ports the last start picked.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.config.server.listen
    }

    /// `tls://127.0.0.1:PORT`, or `tcp://` when TLS is off.
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.enabled {
            "tls"
        } else {
            "tcp"
        };
        format!("{scheme}://{}", self.addr())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The generated CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.config.data_dir.join("tls/ca.pem")
    }

    /// `https://127.0.0.1:PORT` of the control API.
    pub fn control_url(&self) -> String {
        format!("https://{}", self.config.control.listen)
    }

    /// `host:port` of the metrics and health endpoints.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.config.metrics.listen
    }

    /// The admin credential file of the control API.
    pub fn admin_token_path(&self) -> PathBuf {
        self.config.data_dir.join("credentials/admin.token")
    }

    /// The bootstrap credential file.
    pub fn token_path(&self) -> PathBuf {
        self.config.data_dir.join(BOOTSTRAP_TOKEN)
    }

    /// The bootstrap credential.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_path())
            .expect("bootstrap token")
            .trim()
            .to_owned()
    }

    /// The sum of all shards' counters.
    pub fn stats(&self) -> ShardStats {
        self.server()
            .dataplane()
            .total_stats()
            .expect("shards answer")
    }

    /// Stops the server (connections get `SERVER_SHUTTING_DOWN`).
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }

    /// Starts it again on the same client port and data directory (clients
    /// reconnect there). The control and metrics listeners take new ports:
    /// between the stop and the start another test may bind the old ones
    /// (tests run in parallel and pick ports the same way), and nothing
    /// reconnects to them on its own. The client port is bound again,
    /// retried for a few seconds should a socket hold it a moment longer.
    pub fn restart(&mut self) {
        self.stop();
        self.config.control.listen.set_port(0);
        self.config.metrics.listen.set_port(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let server = loop {
            match Server::start(&self.config) {
                Err(e) if addr_in_use(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                started => break started.expect("test server restarts"),
            }
        };
        if let Some(control) = server.control_addr() {
            self.config.control.listen = control;
        }
        if let Some(metrics) = server.metrics_addr() {
            self.config.metrics.listen = metrics;
        }
        self.server = Some(server);
    }

    /// The temporary directory everything lives in.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// Whether `e`, or an error under it, is an address already in use.
fn addr_in_use(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(err) = at {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
        {
            return true;
        }
        at = err.source();
    }
    false
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tenant with one credential, for [`TestServer::start_with`].
pub fn tenant(id: u64, name: &str, token: &str) -> TenantConfig {
    TenantConfig {
        id,
        name: name.to_owned(),
        credentials: vec![CredentialConfig {
            principal_id: id * 100,
            principal: format!("{name}-principal"),
            sha256: token_hash_hex(token),
        }],
    }
}
