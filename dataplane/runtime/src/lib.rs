//! The ArqonBus data plane: thread-per-core on glommio (io_uring).
//!
//! [`DataPlane::start`] binds one `SO_REUSEPORT` listener per shard on the
//! same address, builds the N×N mesh of SPSC rings, and starts one glommio
//! executor per shard, pinned to its core. Each shard owns its connections,
//! subscriptions and buffers; shards share no mutable state and talk only
//! through the rings (and a doorbell to wake a parked shard).
//!
//! The protocol and routing decisions live in `arqonbus-core`; this crate is
//! the I/O around them. A message's path is written up in
//! `specs/architecture.md`.
//!
//! # Layout
//! - `conn`: one connection's task;
//! - `shard`: the shard's state and its accept, mesh and tick loops;
//! - `mesh`, `doorbell`: the rings between shards and how a parked shard is
//!   woken;
//! - `outbound`, `readbuf`, `transport`: buffers and the (TLS) byte stream.

mod conn;
mod doorbell;
mod mesh;
mod outbound;
mod readbuf;
mod shard;
mod transport;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use arqonbus_core::ShardId;
use arqonbus_core::auth::AuthSnapshot;
use arqonbus_core::limits::{Limits, LimitsError};
use arqonbus_core::router::MAX_SHARDS;
use arqonbus_core::stats::ShardStats;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::doorbell::Doorbell;
use crate::shard::{Command, ShardConfigSend, ShardInit};

/// How the data plane runs. Built by the server from its config file.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    /// Address every shard listens on (port 0 picks one).
    pub listen: SocketAddr,
    /// Number of shards (executors); at most 64.
    pub shards: usize,
    /// Pin shard `i` to CPU `cpus[i % cpus.len()]`; empty means do not pin.
    pub cpus: Vec<usize>,
    /// TLS settings; `None` serves plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Per-connection limits.
    pub limits: Limits,
    /// Valid credentials.
    pub auth: Arc<AuthSnapshot>,
    /// Identifies this server in `Welcome`.
    pub server_id: String,
    /// Pinned memory per executor for io_uring buffers, bytes.
    pub io_memory: usize,
    /// Slots in each ring between two shards.
    pub ring_capacity: usize,
    /// Messages allowed to wait beside a full ring before publishers pause.
    pub overflow_limit: usize,
    /// Bytes read from a socket at a time.
    pub read_buffer: usize,
    /// Spin this long before parking an idle executor (busy-poll mode for
    /// dedicated hosts); `None` parks at once and idles at ~0 % CPU.
    pub spin_before_park: Option<Duration>,
    /// Timer granularity for keep-alives and timeouts.
    pub tick: Duration,
}

impl DataPlaneConfig {
    /// A configuration with defaults for everything but what must be given.
    pub fn new(listen: SocketAddr, shards: usize, auth: Arc<AuthSnapshot>) -> Self {
        Self {
            listen,
            shards,
            cpus: Vec::new(),
            tls: None,
            limits: Limits::default(),
            auth,
            server_id: String::from("arqonbus"),
            io_memory: 128 * 1024,
            ring_capacity: 8 * 1024,
            overflow_limit: 64 * 1024,
            read_buffer: 64 * 1024,
            spin_before_park: None,
            tick: Duration::from_millis(250),
        }
    }

    /// Checks the configuration can run.
    pub fn validate(&self) -> Result<(), StartError> {
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(StartError::Config(format!(
                "shards = {} is out of range (1..={MAX_SHARDS})",
                self.shards
            )));
        }
        if self.ring_capacity < 16 || self.read_buffer < 4096 || self.overflow_limit == 0 {
            return Err(StartError::Config(
                "ring_capacity >= 16, read_buffer >= 4096 and overflow_limit >= 1 are required"
                    .into(),
            ));
        }
        if self.tick.is_zero() {
            return Err(StartError::Config("tick must be > 0".into()));
        }
        self.limits.validate()?;
        Ok(())
    }
}

/// Why the data plane could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid; fix it and retry.
    #[error("invalid data-plane configuration: {0}")]
    Config(String),
    /// A limit is out of range.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// The listen address could not be bound (in use, or not permitted).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An executor could not start (io_uring unavailable, memlock too low).
    #[error("shard {shard} failed to start: {reason}")]
    Shard {
        /// The shard.
        shard: u16,
        /// What went wrong.
        reason: String,
    },
    /// Creating sockets or threads failed.
    #[error("data-plane setup failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a running data plane did not answer an operator request.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A shard did not answer in time (overloaded or stopped).
    #[error("shard {0} did not answer")]
    Unresponsive(u16),
}

#[derive(Debug)]
struct ShardHandle {
    commands: crossbeam_channel::Sender<Command>,
    doorbell: Arc<Doorbell>,
    join: Option<ExecutorJoinHandle<()>>,
}

impl ShardHandle {
    fn send(&self, cmd: Command) {
        if self.commands.send(cmd).is_ok() {
            self.doorbell.ring();
        }
    }
}

/// A running data plane. Dropping it shuts it down.
#[derive(Debug)]
pub struct DataPlane {
    local_addr: SocketAddr,
    shards: Vec<ShardHandle>,
}

fn bind_group(addr: SocketAddr, n: usize) -> Result<(Vec<OwnedFd>, SocketAddr), StartError> {
    let bind_err = |source| StartError::Bind { addr, source };
    let mut fds = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(bound),
            socket2::Type::STREAM.cloexec(),
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_reuse_port(true).map_err(bind_err)?;
        sock.set_reuse_address(true).map_err(bind_err)?;
        sock.bind(&bound.into()).map_err(bind_err)?;
        sock.listen(4096).map_err(bind_err)?;
        // The first socket fixes the port for the others (port 0 case).
        if let Some(local) = sock.local_addr()?.as_socket() {
            bound = local;
        }
        fds.push(sock.into());
    }
    Ok((fds, bound))
}

impl DataPlane {
    /// Binds, starts every shard, and returns once all of them run.
    pub fn start(cfg: &DataPlaneConfig) -> Result<Self, StartError> {
        cfg.validate()?;
        let (listeners, local_addr) = bind_group(cfg.listen, cfg.shards)?;
        let mut bells = Vec::with_capacity(cfg.shards);
        let mut bell_rxs = Vec::with_capacity(cfg.shards);
        for _ in 0..cfg.shards {
            let (bell, rx) = Doorbell::new()?;
            bells.push(Arc::new(bell));
            bell_rxs.push(rx);
        }
        let meshes = mesh::build(&bells, cfg.ring_capacity);
        let shared = Arc::new(ShardConfigSend {
            limits: cfg.limits.clone(),
            server_id: cfg.server_id.clone(),
            tls: cfg.tls.clone(),
            read_chunk: cfg.read_buffer,
            tick: cfg.tick,
            overflow_limit: cfg.overflow_limit,
            shards: cfg.shards,
        });
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed)
            .map_err(|e| StartError::Io(std::io::Error::other(e.to_string())))?;
        let seed = u64::from_le_bytes(seed);

        let (ready_tx, ready_rx) = crossbeam_channel::bounded(cfg.shards);
        // Built up shard by shard: if a later shard fails, dropping `plane`
        // stops the ones already running.
        let mut plane = Self {
            local_addr,
            shards: Vec::with_capacity(cfg.shards),
        };
        let parts = listeners.into_iter().zip(meshes).zip(bell_rxs).enumerate();
        for (i, ((listener, mesh), bell_rx)) in parts {
            let id = ShardId(i as u16);
            let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
            let placement = if cfg.cpus.is_empty() {
                Placement::Unbound
            } else {
                Placement::Fixed(cfg.cpus[i % cfg.cpus.len()])
            };
            let mut builder = LocalExecutorBuilder::new(placement)
                .name(&format!("arqonbus-shard-{i}"))
                .io_memory(cfg.io_memory);
            if let Some(spin) = cfg.spin_before_park {
                builder = builder.spin_before_park(spin);
            }
            let init = ShardInit {
                id,
                cfg: shared.clone(),
                auth: cfg.auth.clone(),
                listener,
                mesh,
                doorbell: bells[i].clone(),
                bell_rx,
                commands: cmd_rx,
                seed: seed
                    .wrapping_add(i as u64)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15),
            };
            let ready = ready_tx.clone();
            let join = builder
                .spawn(move || shard::run(init, ready))
                .map_err(|e| StartError::Shard {
                    shard: id.0,
                    reason: e.to_string(),
                })?;
            plane.shards.push(ShardHandle {
                commands: cmd_tx,
                doorbell: bells[i].clone(),
                join: Some(join),
            });
        }
        drop(ready_tx);
        let mut started = vec![false; cfg.shards];
        for _ in 0..cfg.shards {
            if let Ok(id) = ready_rx.recv_timeout(Duration::from_secs(30)) {
                started[id.index()] = true;
            } else {
                let shard = started.iter().position(|s| !s).unwrap_or(0) as u16;
                return Err(StartError::Shard {
                    shard,
                    reason: "executor did not start (io_uring or memlock limits?)".into(),
                });
            }
        }
        tracing::info!(addr = %local_addr, shards = cfg.shards, tls = cfg.tls.is_some(), "data plane listening");
        Ok(plane)
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// A copy of every shard's counters, in shard order.
    pub fn stats(&self) -> Result<Vec<ShardStats>, ControlError> {
        let mut replies = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let (tx, rx) = crossbeam_channel::bounded(1);
            s.send(Command::Stats(tx));
            replies.push(rx);
        }
        replies
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                rx.recv_timeout(Duration::from_secs(10))
                    .map_err(|_| ControlError::Unresponsive(i as u16))
            })
            .collect()
    }

    /// The sum of every shard's counters.
    pub fn total_stats(&self) -> Result<ShardStats, ControlError> {
        let mut total = ShardStats::default();
        for s in self.stats()? {
            total.merge(&s);
        }
        Ok(total)
    }

    /// Replaces the credentials new connections are checked against.
    pub fn update_auth(&self, auth: &Arc<AuthSnapshot>) {
        for s in &self.shards {
            s.send(Command::UpdateAuth(auth.clone()));
        }
    }

    /// Stops accepting, closes every connection with `SERVER_SHUTTING_DOWN`,
    /// and waits for every shard to stop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for s in &self.shards {
            s.send(Command::Shutdown);
        }
        for s in &mut self.shards {
            if let Some(join) = s.join.take()
                && let Err(e) = join.join()
            {
                tracing::error!(error = %e, "shard ended with an error");
            }
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
