//! The real `arqonbus` binary as a child process, for tests of what only a
//! process shows: signals, kill -9, exporting at exit.
//!
//! [`Node`] writes a configuration into a temporary directory (every port 0,
//! two shards, text logs), starts `arqonbus serve --config`, reads the ports
//! from its banner and drains its stderr. A failed test never leaves a server
//! behind: dropping a `Node` kills it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    reason = "test code shared by several test binaries"
)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arqonbus_client::ConnectOptions;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The bound of every wait in these tests.
pub(crate) const LIMIT: Duration = Duration::from_secs(20);

/// `fut`, or a panic naming `what` after [`LIMIT`].
pub(crate) async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

/// What a test node adds to the base configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct Setup {
    /// Keys under `[metrics]` (besides `listen`), e.g. `latency_sample_every = 1`.
    pub metrics: String,
    /// Keys under `[control]` (besides `listen`), e.g. `cpus = [1]`.
    pub control: String,
    /// Whole sections the file ends with, e.g. `[limits]\nmax_payload = 4096\n`.
    pub extra: String,
    /// Environment variables for the process.
    pub envs: Vec<(String, String)>,
    /// The data port (default: one the kernel picks).
    pub listen: Option<SocketAddr>,
}

/// A running `arqonbus serve`.
pub(crate) struct Node {
    child: Child,
    /// The data-plane address (TLS).
    pub data: SocketAddr,
    /// The control API address.
    pub control: SocketAddr,
    /// Shared by a node and the nodes that took it over.
    dir: Arc<tempfile::TempDir>,
    setup: Setup,
}

impl Node {
    /// Starts a node on the base configuration.
    pub(crate) fn spawn() -> Self {
        Self::spawn_with(Setup::default())
    }

    /// Starts a node on the base configuration plus `setup`.
    pub(crate) fn spawn_with(setup: Setup) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let (child, data, control) = start(dir.path(), &setup, None);
        Self {
            child,
            data,
            control,
            dir,
            setup,
        }
    }

    /// Starts `arqonbus serve --take-over` on this node's data directory
    /// and data port (an upgrade); returns once it serves.
    pub(crate) fn take_over(&self) -> Self {
        let (child, data, control) = start(self.dir.path(), &self.setup, Some(self.data));
        Self {
            child,
            data,
            control,
            dir: self.dir.clone(),
            setup: self.setup.clone(),
        }
    }

    /// Starts the node again on the same data directory (after it exited
    /// or was killed); the ports are new.
    pub(crate) fn restart(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "restart needs the old process gone"
        );
        let (child, data, control) = start(self.dir.path(), &self.setup, None);
        (self.child, self.data, self.control) = (child, data, control);
    }

    /// Rewrites the configuration's closing sections (for SIGHUP).
    pub(crate) fn rewrite_config(&mut self, extra: &str) {
        extra.clone_into(&mut self.setup.extra);
        write_config(self.dir.path(), &self.setup, None);
    }

    /// The data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The generated CA certificate.
    pub(crate) fn ca_path(&self) -> PathBuf {
        self.data_dir().join("tls/ca.pem")
    }

    /// A credential file of the data directory (`bootstrap.token`,
    /// `admin.token`), trimmed.
    pub(crate) fn token(&self, file: &str) -> String {
        std::fs::read_to_string(self.data_dir().join("credentials").join(file))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// SDK options for the bootstrap tenant over TLS.
    pub(crate) fn options(&self) -> ConnectOptions {
        ConnectOptions::new()
            .url(format!("tls://{}", self.data))
            .ca_file(self.ca_path())
            .credential(self.token("bootstrap.token"))
    }

    /// A TLS channel to the control API and the admin credential.
    pub(crate) async fn control_channel(&self) -> (Channel, AdminAuth) {
        control_channel(self.control, &self.ca_path(), &self.token("admin.token")).await
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. `-TERM`) with kill(1).
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits (bounded) for the server to exit by itself.
    pub(crate) fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reaps the process.
    pub(crate) fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A failed test never leaves a server behind.
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds `authorization: Bearer <admin token>` to control calls.
#[derive(Clone)]
pub(crate) struct AdminAuth(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// A TLS channel to the control API at `addr` (certificate signed by the CA
/// in `ca_path`) and an interceptor adding `admin_token`, for any generated
/// control client's `with_interceptor`.
pub(crate) async fn control_channel(
    addr: SocketAddr,
    ca_path: &Path,
    admin_token: &str,
) -> (Channel, AdminAuth) {
    let ca = std::fs::read_to_string(ca_path).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", admin_token.trim()).parse().unwrap();
    (channel, AdminAuth(bearer))
}

/// A control client type over [`control_channel`].
pub(crate) type Authed = InterceptedService<Channel, AdminAuth>;

/// The configuration file, listening on `take_over` when given (a node
/// taking over another gets its own file naming the running port).
fn config_file(dir: &Path, take_over: Option<SocketAddr>) -> PathBuf {
    match take_over {
        Some(_) => dir.join("arqonbus-take-over.toml"),
        None => dir.join("arqonbus.toml"),
    }
}

fn write_config(dir: &Path, setup: &Setup, take_over: Option<SocketAddr>) {
    let listen = take_over
        .or(setup.listen)
        .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
    std::fs::write(
        config_file(dir, take_over),
        format!(
            "data_dir = \"{}\"\n\n[server]\nlisten = \"{listen}\"\nshards = 2\ntick_ms = 20\nlame_duck_window_ms = 300\n\n[control]\nlisten = \"127.0.0.1:0\"\n{}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}\n\n[log]\nformat = \"text\"\nlevel = \"warn\"\n\n[steering]\ndefault_placement = \"spread\"\n\n{}",
            dir.join("data").display(),
            setup.control,
            setup.metrics,
            setup.extra,
        ),
    )
    .unwrap();
}

/// Writes the configuration, starts the binary (with `--take-over` of the
/// node on that address when given) and reads its banner.
fn start(
    dir: &Path,
    setup: &Setup,
    take_over: Option<SocketAddr>,
) -> (Child, SocketAddr, SocketAddr) {
    write_config(dir, setup, take_over);
    let mut command = Command::new(env!("CARGO_BIN_EXE_arqonbus"));
    command.arg("serve");
    if take_over.is_some() {
        command.arg("--take-over");
    }
    let mut child = command
        .arg("--config")
        .arg(config_file(dir, take_over))
        .env_remove("ARQONBUS_CONFIG")
        .env_remove("ARQONBUS_DATA_DIR")
        .env_remove("RUST_LOG")
        .envs(setup.envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (mut data, mut control) = (None, None);
    let mut line = String::new();
    while data.is_none() || control.is_none() {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "server exited early"
        );
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ArqonBus listening on tls://") {
            data = Some(rest.parse().unwrap());
        }
        if let Some(rest) = line.strip_prefix("control API:") {
            let url = rest.trim().split_once(' ').map_or(rest.trim(), |(u, _)| u);
            control = Some(url.trim_start_matches("https://").parse().unwrap());
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });
    (child, data.unwrap(), control.unwrap())
}
