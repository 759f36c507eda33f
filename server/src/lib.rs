//! The ArqonBus server process.
//!
//! This crate turns a configuration file into a running node: it validates
//! the [`config`], prepares the data directory ([`bootstrap`]: tenants and the
//! bootstrap credential; [`tls`]: the private CA and server certificate), and
//! starts the glommio data plane. It owns no protocol or routing logic.

pub mod bootstrap;
pub mod config;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arqonbus_dataplane::{DataPlane, DataPlaneConfig, StartError};

use crate::bootstrap::BootstrapError;
use crate::config::{Config, ConfigError};
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
    /// The data plane did not start.
    #[error("data plane: {0}")]
    DataPlane(#[from] StartError),
}

/// Where first-start material lives, for the operator.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The CA clients must trust (when generated).
    pub ca: Option<PathBuf>,
    /// The bootstrap credential file (when it exists).
    pub bootstrap_token: Option<PathBuf>,
    /// Whether TLS material was generated during this start.
    pub generated_tls: bool,
    /// Whether the bootstrap credential was created during this start.
    pub created_credential: bool,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    dataplane: DataPlane,
    paths: Paths,
}

impl Server {
    /// Validates `config`, prepares the data directory and starts serving.
    pub fn start(config: &Config) -> Result<Self, ServerError> {
        config.validate()?;
        let creds = bootstrap::credentials(&config.data_dir, &config.tenants, &config.limits)?;
        let tls = if config.tls.enabled {
            Some(tls::prepare(&config.data_dir, &config.tls)?)
        } else {
            tracing::warn!("TLS is disabled: clients connect in plaintext");
            None
        };
        let shards = config.shard_count();
        let s = &config.server;
        let mut dp = DataPlaneConfig::new(s.listen, shards, creds.auth);
        dp.cpus = if s.pin_cores {
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            (0..cpus).collect()
        } else {
            Vec::new()
        };
        dp.tls = tls.as_ref().map(|t| t.server_config.clone());
        dp.server_id = server_id();
        dp.io_memory = s.io_memory;
        dp.ring_capacity = s.ring_capacity;
        dp.overflow_limit = s.overflow_limit;
        dp.read_buffer = s.read_buffer;
        dp.spin_before_park = (s.busy_poll_us > 0).then(|| Duration::from_micros(s.busy_poll_us));
        dp.tick = config.tick();
        let dataplane = DataPlane::start(&dp)?;
        let paths = Paths {
            ca: tls.as_ref().and_then(|t| t.ca_path.clone()),
            bootstrap_token: creds.bootstrap_token,
            generated_tls: tls.as_ref().is_some_and(|t| t.generated),
            created_credential: creds.created,
        };
        Ok(Self { dataplane, paths })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.dataplane.local_addr()
    }

    /// Where first-start material lives.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The data plane, for counters and operator commands.
    pub fn dataplane(&self) -> &DataPlane {
        &self.dataplane
    }

    /// Closes every connection and stops.
    pub fn shutdown(self) {
        self.dataplane.shutdown();
    }
}

/// A random id for this server process.
fn server_id() -> String {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => format!("ab-{}", hex::encode(b)),
        Err(_) => format!("ab-pid{}", std::process::id()),
    }
}
