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
//! per port, and a second start names the first.
//!
//! Threads: one pinned executor per shard (data plane), one tokio runtime
//! thread (control API), the rate rebalancer, one idle claim thread per
//! client port, the caller's thread, and with trace export the span
//! processor's thread.

pub mod bootstrap;
pub mod config;
mod control;
pub mod doctor;
mod monitor;
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
use crate::owner::{ClaimError, Holder, PortClaim};
use crate::tls::TlsError;

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
        config.validate()?;
        // Claim the client ports before anything touches the data directory
        // or binds: a second node on a port refuses here and names the first.
        let me = Holder::this_process(
            std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone()),
        );
        let mut claims = Vec::new();
        for port in client_ports(config.server.listen, config.websocket_listen()) {
            if port != 0 {
                claims.push(owner::claim(port, &me)?);
            }
        }
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

        let (control, first_snapshot) = if config.control.enabled {
            let mut cp = ControlPlaneConfig::new(&config.data_dir, tls.server_config.clone());
            cp.listen = config.control.listen;
            cp.client_ca.clone_from(&config.control.client_ca);
            cp.limits = config.limits.clone();
            cp.seed_tenants = seeds(config);
            cp.server_id.clone_from(&server_id);
            cp.default_placement = default_placement;
            if let Some(path) = config_path {
                let path = path.to_owned();
                cp.reload = Some(Box::new(move || {
                    reload_limits(&path).map_err(|e| e.to_string())
                }));
            }
            let (plane, snapshot) = ControlPlane::open(cp)?;
            (Some(plane), snapshot)
        } else {
            (None, creds.auth.clone())
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
        let monitoring = if config.metrics.enabled && config.control.enabled {
            let addr = config.metrics.listen;
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|source| ServerError::MetricsListener { addr, source })?;
            Some(MonitorSettings {
                listener,
                max_tenant_labels: config.metrics.max_tenant_labels,
                server_id: dp.server_id.clone(),
            })
        } else {
            None
        };
        let dataplane = Arc::new(DataPlane::start(&dp)?);
        // Ports the kernel picked (configured as 0) are claimed once known.
        for port in client_ports(dataplane.local_addr(), dataplane.websocket_addr()) {
            if !claims.iter().any(|c| c.port() == port) {
                claims.push(owner::claim(port, &me)?);
            }
        }

        let admin_token = control.as_ref().map(|c| c.admin_token_path().to_owned());
        let control = match control {
            Some(plane) => Some(ControlRuntime::start(plane, dataplane.clone(), monitoring)?),
            None => None,
        };
        let paths = Paths {
            ca: tls.ca_path.clone(),
            bootstrap_token: creds.bootstrap_token,
            admin_token,
            generated_tls: tls.generated,
            created_credential: creds.created,
        };
        Ok(Self {
            dataplane,
            control,
            paths,
            config_path: config_path.map(Path::to_owned),
            config: config.clone(),
            claims,
        })
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
