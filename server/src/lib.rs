//! The ArqonBus server process.
//!
//! This crate turns a configuration file into a running node: it validates
//! the [`config`], prepares the data directory ([`bootstrap`]: the bootstrap
//! tenant and credential; [`tls`]: the private CA and server certificate),
//! opens the control plane (its store is the source of truth for tenants,
//! credentials and policies), starts the glommio data plane with the control
//! plane's first snapshot, and runs the control plane on its own tokio
//! runtime thread. It owns no protocol or routing logic. [`otlp`] exports
//! the server's spans when `[tracing] otlp_endpoint` is set.
//!
//! Before it binds anything it claims its client ports ([`owner`]): one node
//! per port, and a second start names the first. A start with
//! [`Server::take_over`] asks the running node to hand its ports over
//! instead ([`handover`]: zero-downtime upgrade and rollback).
//!
//! Threads: one pinned executor per shard (data plane), one tokio runtime
//! thread (control API), the rate rebalancer, one idle claim thread per
//! client port, the caller's thread, and with trace export the span
//! processor's thread.

pub mod bootstrap;
pub mod config;
mod control;
pub mod doctor;
pub mod handover;
mod monitor;
pub mod notify;
pub mod otlp;
pub mod owner;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arqonbus_controlplane::{ControlPlane, ControlPlaneConfig, ControlPlaneError, SeedTenant};
use arqonbus_dataplane::{DataPlane, DataPlaneConfig, Rehoming, StartError};

use crate::bootstrap::BootstrapError;
use crate::config::{Config, ConfigError};
use crate::control::{ControlRuntime, MonitorSettings};
use crate::handover::{HandoverError, Incoming, Outgoing};
use crate::owner::{ClaimError, Holder, PortClaim};
use crate::tls::TlsError;

/// How long the old node of a hand-over keeps accepting after the new one
/// serves: connections the kernel placed on its listeners before the new
/// steering program took over finish their handshakes and are accepted.
pub const HANDOFF_GRACE: Duration = Duration::from_millis(250);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The data directory could not be prepared.
    #[error("data directory: {0}")]
    Bootstrap(#[from] BootstrapError),
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The control plane could not open (store, listener, admin credential).
    #[error("control plane: {0}")]
    Control(#[from] ControlPlaneError),
    /// The data plane did not start.
    #[error("data plane: {0}")]
    DataPlane(#[from] StartError),
    /// The metrics and health listener could not bind.
    #[error("metrics listener on {addr}: {source}")]
    MetricsListener {
        /// The configured `[metrics] listen` address.
        addr: std::net::SocketAddr,
        /// Why binding failed (for example, the port is in use).
        source: std::io::Error,
    },
    /// A client port is held by another node, or could not be claimed.
    #[error("listen: {0}")]
    Port(#[from] ClaimError),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    /// `control.cpus` names a CPU this process may not run on.
    #[error("control.cpus: this process may not run on CPU {0} (see `taskset -p $$`)")]
    ControlCpus(usize),
    /// `--take-over`: the running node did not hand over.
    #[error("take-over: {0}")]
    Handover(#[from] HandoverError),
}

/// Where first-start material lives, for the operator.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The CA clients must trust (when generated).
    pub ca: Option<PathBuf>,
    /// The bootstrap credential file (when it exists).
    pub bootstrap_token: Option<PathBuf>,
    /// The admin credential for the control API (when the control plane runs).
    pub admin_token: Option<PathBuf>,
    /// Whether TLS material was generated during this start.
    pub generated_tls: bool,
    /// Whether the bootstrap credential was created during this start.
    pub created_credential: bool,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    dataplane: Arc<DataPlane>,
    control: Option<ControlRuntime>,
    paths: Paths,
    config_path: Option<PathBuf>,
    config: Config,
    /// The client ports this node owns; released after it stopped serving.
    claims: Vec<PortClaim>,
    /// This process, as the claims name it.
    me: Holder,
    /// What the control plane needs to open again (a failed hand-over).
    tls_config: Arc<rustls::ServerConfig>,
    /// This process's id for clients (`Welcome`) and the control plane.
    id: String,
    /// Hand-over requests from the native port's claim, until taken.
    handovers: Option<tokio::sync::mpsc::UnboundedReceiver<Incoming>>,
}

/// Converts the config file's tenants into control-plane seeds.
fn seeds(config: &Config) -> Vec<SeedTenant> {
    config
        .tenants
        .iter()
        .map(|t| SeedTenant {
            id: t.id,
            name: t.name.clone(),
            credentials: t
                .credentials
                .iter()
                .map(|c| arqonbus_controlplane::SeedCredential {
                    principal_id: c.principal_id,
                    principal: c.principal.clone(),
                    sha256: c.sha256.clone(),
                })
                .collect(),
        })
        .collect()
}

fn reload_limits(path: &Path) -> Result<arqonbus_core::limits::Limits, ConfigError> {
    let config = Config::load(path)?;
    config.validate()?;
    Ok(config.limits)
}

/// Why [`Server::reload`] failed. Only [`ReloadError::took_effect`] errors
/// changed anything.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file could not be read or does not validate:
    /// nothing changed.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The control plane is disabled: limits change only on restart.
    #[error("the control plane is disabled; restart to change limits")]
    ControlDisabled,
    /// The control plane refused the reload (nothing changed), or took it
    /// while some shards had not applied it in time.
    #[error(transparent)]
    Control(#[from] arqonbus_controlplane::ReloadError),
}

impl ReloadError {
    /// Whether the reload took effect all the same: the new snapshot is the
    /// current one, only some shards had not applied it in time (they have
    /// it queued).
    pub fn took_effect(&self) -> bool {
        matches!(self, Self::Control(e) if e.took_effect())
    }
}

impl Server {
    /// Validates `config`, prepares the data directory and starts serving.
    pub fn start(config: &Config) -> Result<Self, ServerError> {
        Self::start_with(config, None)
    }

    /// Like [`start`](Self::start); `config_path` is re-read on reload.
    pub fn start_with(config: &Config, config_path: Option<&Path>) -> Result<Self, ServerError> {
        Self::start_inner(config, config_path, false)
    }

    /// Starts like [`start_with`](Self::start_with), taking over the node
    /// that serves the native port, if one does (an upgrade or a rollback,
    /// see [`handover`]): it must serve the same data directory, addresses
    /// and TLS setting, or it refuses and keeps serving. If this node fails
    /// to start after the old one released its store, the old one serves
    /// on. Without a running node this is a plain start.
    pub fn take_over(config: &Config, config_path: Option<&Path>) -> Result<Self, ServerError> {
        Self::start_inner(config, config_path, true)
    }

    fn start_inner(
        config: &Config,
        config_path: Option<&Path>,
        take_over: bool,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        // Before anything is opened or handed over.
        if let Some(cpu) = config
            .control
            .enabled
            .then(|| control::unavailable_cpu(&config.control.cpus))
            .flatten()
        {
            return Err(ServerError::ControlCpus(cpu));
        }
        // Claim the client ports before anything touches the data directory
        // or binds: a second node on a port refuses here and names the first
        // (or, taking over, is handed them).
        let me = Holder::this_process(
            std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone()),
        );
        let native = config.server.listen.port();
        let mut claims = Vec::new();
        let mut handover = None;
        for port in client_ports(config.server.listen, config.websocket_listen()) {
            if port == 0 {
                continue;
            }
            match owner::claim(port, &me) {
                Ok(claim) => claims.push(claim),
                Err(ClaimError::Held { .. } | ClaimError::HeldUnknown { .. })
                    if take_over && port == native =>
                {
                    let request = handover::Request {
                        handover: handover::VERSION,
                        pid: me.pid,
                        version: me.version.clone(),
                        data_dir: me.data_dir.clone(),
                        listen: config.server.listen,
                        websocket: config.websocket_listen(),
                        tls: config.tls.enabled,
                    };
                    let out = owner::request_handover(port, &request)?;
                    tracing::info!(old_pid = out.old.pid, old_version = %out.old.version, "take-over: the running node released its store; starting");
                    handover = Some(out);
                    // Its other ports come with the hand-over.
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if take_over && handover.is_none() {
            tracing::info!(
                port = native,
                "take-over: no node serves the port; starting fresh"
            );
        }
        match handover {
            None => Self::serve(config, config_path, claims, me),
            Some(out) => match Self::serve(config, config_path, claims, me) {
                Ok(mut server) => {
                    server.adopt_claims(out);
                    Ok(server)
                }
                // Everything this start opened is closed by now (the store,
                // the steering program): the old node takes them back.
                Err(e) => {
                    out.abort(&e.to_string());
                    Err(e)
                }
            },
        }
    }

    /// Tells the old node we serve and holds the claims it sends.
    fn adopt_claims(&mut self, out: Outgoing) {
        let old = out.old.pid;
        match out.serving() {
            Ok(sent) => {
                for (port, fd) in sent {
                    match PortClaim::adopt(port, fd, &self.me) {
                        Ok(claim) => self.claims.push(claim),
                        Err(e) => {
                            tracing::error!(port, error = %e, "take-over: cannot hold the port's claim");
                        }
                    }
                }
                tracing::info!(
                    old_pid = old,
                    "take-over: serving; the old node moves its clients here"
                );
            }
            Err(e) => {
                // The old node went away mid-exchange: its claims are free.
                tracing::warn!(old_pid = old, error = %e, "take-over: the old node did not send its claims; claiming the ports");
                for port in client_ports(self.local_addr(), self.websocket_addr()) {
                    match owner::claim(port, &self.me) {
                        Ok(claim) => self.claims.push(claim),
                        Err(e) => tracing::error!(port, error = %e, "take-over: port not claimed"),
                    }
                }
            }
        }
        self.forward_handovers();
    }

    /// Passes hand-over requests on the native port to [`Self::handovers`].
    fn forward_handovers(&mut self) {
        let native = self.local_addr().port();
        if let Some(claim) = self.claims.iter().find(|c| c.port() == native) {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            claim.forward_handovers(tx);
            self.handovers = Some(rx);
        }
    }

    fn serve(
        config: &Config,
        config_path: Option<&Path>,
        mut claims: Vec<PortClaim>,
        me: Holder,
    ) -> Result<Self, ServerError> {
        // First start: the bootstrap tenant and its credential (0600 file).
        // With the control plane, its store imports them once.
        let default_placement = config.steering.default_placement()?;
        let creds = bootstrap::credentials(
            &config.data_dir,
            &config.tenants,
            &config.limits,
            default_placement,
        )?;
        // The control API is always TLS, so the material exists even when the
        // data plane serves plaintext.
        let tls = tls::prepare(&config.data_dir, &config.tls)?;
        if !config.tls.enabled {
            tracing::warn!("TLS is disabled: clients connect in plaintext");
        }
        let server_id = server_id();

        let (control, first_snapshot) =
            match open_control(config, config_path, &tls.server_config, &server_id)? {
                Some((plane, snapshot)) => (Some(plane), snapshot),
                None => (None, creds.auth.clone()),
            };

        let shards = config.shard_count();
        let s = &config.server;
        let mut dp = DataPlaneConfig::new(s.listen, shards, first_snapshot);
        dp.cpus = if s.pin_cores {
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            (0..cpus).collect()
        } else {
            Vec::new()
        };
        dp.tls = config.tls.enabled.then(|| tls.server_config.clone());
        dp.server_id = server_id;
        dp.io_memory = s.io_memory;
        dp.ring_capacity = s.ring_capacity;
        dp.overflow_limit = s.overflow_limit;
        dp.read_buffer = s.read_buffer;
        dp.spin_before_park = (s.busy_poll_us > 0).then(|| Duration::from_micros(s.busy_poll_us));
        dp.tick = config.tick();
        dp.steering = config.steering.to_config()?;
        dp.steering_required = config.steering.required;
        dp.websocket = config
            .websocket
            .enabled
            .then(|| arqonbus_dataplane::WebSocketEdge {
                listen: config.websocket.listen,
                allowed_origins: config.websocket.allowed_origins.clone(),
            });
        dp.rehome = (config.steering.rebalance_min_gap > 0).then(|| Rehoming {
            min_gap: config.steering.rebalance_min_gap,
            ..Rehoming::default()
        });
        // Sampled messages feed the latency histogram and get spans: trace
        // export samples even when metrics are off.
        let exporting = config.tracing.exporting();
        dp.latency_sample_every = if config.metrics.enabled || exporting {
            config.metrics.latency_sample_every
        } else {
            0
        };
        if exporting {
            dp.trace_parent = Some(otlp::link_parent);
        }
        // Bind the monitoring listener before anything runs, so a port in
        // use is a start-up error, not a log line.
        if config.metrics.enabled && !config.control.enabled {
            tracing::warn!(
                "[metrics] is ignored: the metrics and health endpoints run beside the control plane, and [control] enabled = false"
            );
        }
        let monitoring = bind_monitoring(config, &dp.server_id)?;
        let dataplane = Arc::new(DataPlane::start(&dp)?);
        // Ports the kernel picked (configured as 0) are claimed once known;
        // a take-over is handed its claims once it serves.
        let configured = client_ports(config.server.listen, config.websocket_listen());
        for port in client_ports(dataplane.local_addr(), dataplane.websocket_addr()) {
            if !configured.contains(&port) && !claims.iter().any(|c| c.port() == port) {
                claims.push(owner::claim(port, &me)?);
            }
        }

        let admin_token = control.as_ref().map(|c| c.admin_token_path().to_owned());
        let control = match control {
            Some(plane) => Some(ControlRuntime::start(
                plane,
                dataplane.clone(),
                monitoring,
                &config.control.cpus,
            )?),
            None => None,
        };
        let paths = Paths {
            ca: tls.ca_path.clone(),
            bootstrap_token: creds.bootstrap_token,
            admin_token,
            generated_tls: tls.generated,
            created_credential: creds.created,
        };
        let mut server = Self {
            dataplane,
            control,
            paths,
            config_path: config_path.map(Path::to_owned),
            config: config.clone(),
            claims,
            me,
            tls_config: tls.server_config.clone(),
            id: dp.server_id.clone(),
            handovers: None,
        };
        server.forward_handovers();
        Ok(server)
    }

    /// Hand-over requests from processes started with
    /// [`take_over`](Self::take_over), for [`hand_over`](Self::hand_over).
    /// `None` once taken, or when the native port is not claimed.
    pub fn handovers(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Incoming>> {
        self.handovers.take()
    }

    /// The old side of a hand-over: checks the request, stops the control
    /// plane (the store closes; the data plane serves on), and waits for the
    /// new node to serve. `Ok` means it does and holds our claims now: call
    /// [`finish_hand_off`](Self::finish_hand_off). Otherwise this node
    /// serves as before (its control plane reopened, its steering program
    /// attached again) and the error says why.
    pub fn hand_over(&mut self, mut incoming: Incoming) -> Result<(), HandoverError> {
        let here = handover::Serving {
            data_dir: self.me.data_dir.clone(),
            listen: self.local_addr(),
            websocket: self.websocket_addr(),
            tls: self.config.tls.enabled,
        };
        let (pid, version) = (incoming.request.pid, incoming.request.version.clone());
        if let Some(reason) = here.refuse(&incoming.request) {
            tracing::warn!(pid, %version, %reason, "hand-over refused; serving on");
            incoming.refuse(&reason);
            return Err(HandoverError::Refused(reason));
        }
        tracing::info!(pid, %version, "hand-over: stopping the control plane for the new node");
        if let Some(control) = self.control.take() {
            control.stop();
        }
        match incoming.release(&self.me) {
            Ok(()) => {
                // The new node's steering program steers the group now.
                self.dataplane.release_steering();
                let mut sent = Vec::new();
                for claim in std::mem::take(&mut self.claims) {
                    let port = claim.port();
                    match claim.surrender() {
                        Ok(c) => sent.push(c),
                        Err(e) => {
                            tracing::error!(port, error = %e, "hand-over: claim not surrendered");
                        }
                    }
                }
                if let Err(e) = incoming.send_claims(sent) {
                    tracing::error!(pid, error = %e, "hand-over: the claims did not reach the new node");
                }
                tracing::info!(pid, %version, "hand-over: the new node serves; moving clients to it");
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(pid, %reason, "hand-over: the new node did not take over; serving on");
                self.dataplane.reattach_steering();
                self.resume_control();
                Err(HandoverError::NotTaken(reason))
            }
        }
    }

    /// Opens the control plane again after a failed hand-over and gives the
    /// shards its snapshot. On failure the node serves on its last snapshot
    /// with the control plane down, and says so.
    fn resume_control(&mut self) {
        let opened = open_control(
            &self.config,
            self.config_path.as_deref(),
            &self.tls_config,
            &self.id,
        );
        let started = opened.and_then(|opened| {
            let Some((plane, snapshot)) = opened else {
                return Ok(None);
            };
            if let Err(e) = self.dataplane.apply(&snapshot) {
                tracing::warn!(error = %e, "hand-over: the reopened snapshot is not applied everywhere yet");
            }
            let monitoring = bind_monitoring(&self.config, &self.id)?;
            Ok(Some(ControlRuntime::start(
                plane,
                self.dataplane.clone(),
                monitoring,
                &self.config.control.cpus,
            )?))
        });
        match started {
            Ok(control) => self.control = control,
            Err(e) => tracing::error!(
                error = %e,
                "control plane not reopened after the failed hand-over: the data plane serves its last snapshot; restart the node"
            ),
        }
    }

    /// The old side's last step after [`hand_over`](Self::hand_over): both
    /// listeners stop after [`HANDOFF_GRACE`], every client is told to
    /// reconnect (to the new node) over `lame_duck_window_ms`, and the node
    /// stops once they are gone or the window and the close grace passed.
    pub fn finish_hand_off(self) {
        let window = Duration::from_millis(self.config.server.lame_duck_window_ms);
        let grace = Duration::from_millis(self.config.limits.close_grace_ms);
        // Connections the kernel placed here before the new node's steering
        // program took over finish their handshakes and are accepted first.
        std::thread::sleep(HANDOFF_GRACE);
        self.dataplane.hand_off(window);
        if !self
            .dataplane
            .wait_idle(std::time::Instant::now() + window + grace)
        {
            tracing::warn!("connections remained after the hand-over window; closing them");
        }
        self.shutdown();
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.dataplane.local_addr()
    }

    /// The address of the WebSocket edge, when it is served.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.dataplane.websocket_addr()
    }

    /// The address of the control API, when it runs.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().map(ControlRuntime::addr)
    }

    /// The address of the metrics and health endpoints, when they run.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().and_then(ControlRuntime::metrics_addr)
    }

    /// This process's server id (clients see it in `Welcome`).
    pub fn server_id(&self) -> &str {
        &self.id
    }

    /// Where first-start material lives.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The data plane, for counters and operator commands.
    pub fn dataplane(&self) -> &DataPlane {
        &self.dataplane
    }

    /// The configuration the server started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reopens a control store closed by an I/O error, re-reads the
    /// configuration file when the node was started with one and applies
    /// what can change live (the per-connection limits; without a file the
    /// limits in force are kept), then pushes a new snapshot; connections
    /// stay open. Returns the new configuration epoch.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let limits = self.config_path.as_deref().map(reload_limits).transpose()?;
        let control = self.control.as_ref().ok_or(ReloadError::ControlDisabled)?;
        Ok(control.handle().reload(limits)?.epoch())
    }

    /// Lame duck, then stop: stop accepting, tell every client to move
    /// (`Drain`), close connections spread over the configured window, and
    /// stop once they are gone or the window and the close grace passed.
    pub fn shutdown_gracefully(self) {
        let window = Duration::from_millis(self.config.server.lame_duck_window_ms);
        let grace = Duration::from_millis(self.config.limits.close_grace_ms);
        self.dataplane.lame_duck(window);
        let idle = self
            .dataplane
            .wait_idle(std::time::Instant::now() + window + grace);
        if !idle {
            tracing::warn!("connections remained after the lame-duck window; closing them");
        }
        self.shutdown();
    }

    /// Closes every connection and stops.
    pub fn shutdown(self) {
        let Self {
            dataplane,
            control,
            claims,
            ..
        } = self;
        if let Some(c) = control {
            c.stop();
        }
        match Arc::try_unwrap(dataplane) {
            Ok(dp) => dp.shutdown(),
            // Someone still holds it; dropping the last handle stops it.
            Err(shared) => drop(shared),
        }
        // Only now may another node take the ports.
        drop(claims);
    }
}

/// Opens the control plane when it is enabled: its store, its snapshot.
fn open_control(
    config: &Config,
    config_path: Option<&Path>,
    tls: &Arc<rustls::ServerConfig>,
    server_id: &str,
) -> Result<Option<(ControlPlane, Arc<arqonbus_core::snapshot::ConfigSnapshot>)>, ServerError> {
    if !config.control.enabled {
        return Ok(None);
    }
    let mut cp = ControlPlaneConfig::new(&config.data_dir, tls.clone());
    cp.listen = config.control.listen;
    cp.client_ca.clone_from(&config.control.client_ca);
    cp.limits = config.limits.clone();
    cp.seed_tenants = seeds(config);
    server_id.clone_into(&mut cp.server_id);
    cp.default_placement = config.steering.default_placement()?;
    if let Some(path) = config_path {
        let path = path.to_owned();
        cp.reload = Some(Box::new(move || {
            reload_limits(&path).map_err(|e| e.to_string())
        }));
    }
    Ok(Some(ControlPlane::open(cp)?))
}

/// Binds the metrics and health listener when they run (beside the
/// control plane).
fn bind_monitoring(
    config: &Config,
    server_id: &str,
) -> Result<Option<MonitorSettings>, ServerError> {
    if !(config.metrics.enabled && config.control.enabled) {
        return Ok(None);
    }
    let addr = config.metrics.listen;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|source| ServerError::MetricsListener { addr, source })?;
    Ok(Some(MonitorSettings {
        listener,
        max_tenant_labels: config.metrics.max_tenant_labels,
        server_id: server_id.to_owned(),
    }))
}

/// The distinct client ports of a node: the native port and, when served,
/// the WebSocket port.
fn client_ports(native: SocketAddr, websocket: Option<SocketAddr>) -> Vec<u16> {
    let mut ports = vec![native.port()];
    if let Some(ws) = websocket
        && ws.port() != native.port()
    {
        ports.push(ws.port());
    }
    ports
}

/// A random id for this server process.
fn server_id() -> String {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => format!("ab-{}", hex::encode(b)),
        Err(_) => format!("ab-pid{}", std::process::id()),
    }
}
