//! The ArqonBus data plane: thread-per-core on glommio (io_uring).
//!
//! [`DataPlane::start`] binds one `SO_REUSEPORT` listener per shard on the
//! same address, attaches the steering program (`arqonbus-ebpf`) to the
//! group when it can, builds the N×N mesh of SPSC rings, and starts one
//! glommio executor per shard, pinned to its core. Each shard owns its connections,
//! subscriptions and buffers; shards share no mutable state and talk only
//! through the rings (and a doorbell to wake a parked shard).
//!
//! The protocol and routing decisions live in `arqonbus-core`; this crate is
//! the I/O around them. A message's path is written up in
//! `specs/architecture.md`.
//!
//! Operators drive it through the [`DataPlane`] handle: new configuration
//! snapshots (credentials, permissions, quotas), connection listings and
//! kicks, draining and resuming a shard. A small rebalancer thread moves
//! tenants' rate-limit shares between shards while any rate limit is in use.
//!
//! # Layout
//! - `conn`: one connection's task (authorisation, quotas, throttling, the
//!   hand-over to its tenant's home shard);
//! - `placement`: the steering program and the tenants' home shards;
//! - `shard`: the shard's state, its accept, mesh and tick loops, commands;
//! - `route`: publishing, delivery, the mesh protocol, the barrier, stalls;
//! - `quota`: cross-shard counts and per-shard rate limiters;
//! - `mesh`, `doorbell`: the rings between shards and how a parked shard is
//!   woken;
//! - `outbound`, `readbuf`, `transport`: buffers and the (TLS) byte stream.

mod conn;
mod doorbell;
mod instant_cell;
mod mesh;
mod outbound;
mod placement;
mod presence;
mod quota;
mod readbuf;
mod route;
mod shard;
mod transport;
mod ws;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arqonbus_core::ShardId;
use arqonbus_core::limits::LimitsError;
use arqonbus_core::metrics::ShardMetrics;
use arqonbus_core::ops::{ConnectionInfo, ShardStatus, SteeringStatus, shard_of};
use arqonbus_core::placement::SteeringConfig;
use arqonbus_core::ratelimit::{ShareReport, rebalance};
use arqonbus_core::router::MAX_SHARDS;
use arqonbus_core::snapshot::{ApplyReply, ConfigSnapshot, unconfirmed};
use arqonbus_core::stats::ShardStats;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use rustc_hash::FxHashMap;

pub use crate::ws::{SUBPROTOCOL as WEBSOCKET_SUBPROTOCOL, WebSocketEdge};

use crate::doorbell::Doorbell;
use crate::placement::{PlacementBook, SteeringState};
use crate::quota::{QuotaBook, RateKey, RateUse};
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
    /// The first configuration: limits, tenants, principals, credentials.
    pub config: Arc<ConfigSnapshot>,
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
    /// Time one published message in this many for the publish-to-deliver
    /// latency histogram (0: never). Sampled messages also get spans.
    pub latency_sample_every: u32,
    /// Called with a sampled message's `publish` span, before it is entered,
    /// when the message carries a `traceparent` header; `None` (the default)
    /// costs nothing. The server sets it when a span exporter runs.
    pub trace_parent: Option<TraceParentHook>,
    /// How the steering program places new connections, until the control
    /// API sets another steering in a snapshot.
    pub steering: SteeringConfig,
    /// Refuse to start when the steering program cannot be attached
    /// (instead of warning and leaving placement to the kernel's hash).
    pub steering_required: bool,
    /// How often a shard running hot gives up one home tenant, and the
    /// least gap (open connections, busiest minus least-loaded shard) that
    /// counts as hot; `None` never moves tenants.
    pub rehome: Option<Rehoming>,
    /// The WebSocket edge for browsers (`specs/websocket.md`): its own
    /// listener on every shard, the same TLS (ALPN `http/1.1`); `None`: not
    /// served.
    pub websocket: Option<WebSocketEdge>,
}

/// Moving whole tenants off a shard that runs hot (`HomeTable::rebalance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rehoming {
    /// How often the shards' loads are compared.
    pub every: Duration,
    /// The least gap, in open connections, that counts as hot.
    pub min_gap: u64,
    /// The window over which the moved tenant's connections are asked to
    /// reconnect (each gets a `Drain` notice, then is closed).
    pub window: Duration,
}

impl Default for Rehoming {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(2),
            min_gap: 64,
            window: Duration::from_secs(5),
        }
    }
}

/// Makes `span` a child of the remote span named by `traceparent` (the
/// header's value; its trace id is well-formed) in a span exporter's eyes.
/// The data plane knows no exporter: the server supplies this.
pub type TraceParentHook = fn(span: &tracing::Span, traceparent: &str);

impl DataPlaneConfig {
    /// A configuration with defaults for everything but what must be given.
    pub fn new(listen: SocketAddr, shards: usize, config: Arc<ConfigSnapshot>) -> Self {
        Self {
            listen,
            shards,
            cpus: Vec::new(),
            tls: None,
            config,
            server_id: String::from("arqonbus"),
            io_memory: 128 * 1024,
            ring_capacity: 8 * 1024,
            overflow_limit: 64 * 1024,
            read_buffer: 64 * 1024,
            spin_before_park: None,
            tick: Duration::from_millis(250),
            latency_sample_every: 64,
            trace_parent: None,
            steering: SteeringConfig::default(),
            steering_required: false,
            rehome: Some(Rehoming::default()),
            websocket: None,
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
        self.config.limits().validate()?;
        self.steering
            .validate(self.shards)
            .map_err(|e| StartError::Config(e.to_string()))?;
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
    /// `steering.required` is set and the steering program could not be
    /// attached (no CAP_BPF, or the kernel refused it).
    #[error("steering.required is set, but the steering program could not be attached: {0}")]
    Steering(String),
    /// Creating sockets or threads failed.
    #[error("data-plane setup failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a running data plane did not answer an operator request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// A shard did not answer in time (overloaded or stopped).
    #[error("shard {0} did not answer")]
    Unresponsive(u16),
    /// There is no shard with that number.
    #[error("no shard {0}")]
    NoSuchShard(u16),
}

/// Shards that did not confirm a configuration snapshot in time
/// ([`DataPlane::apply`]). The snapshot is still queued for them: each
/// applies it when it next reads its commands, unless a newer one came first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shard(s) {shards:?} did not apply configuration epoch {epoch} in time")]
pub struct ApplyError {
    /// The snapshot's epoch.
    pub epoch: u64,
    /// The shards that did not confirm it, in order.
    pub shards: Vec<u16>,
}

/// Holds one shard's thread still until dropped ([`DataPlane::hold_shard`]).
/// Test-only: it makes a shard as late as a stuck one would be.
#[derive(Debug)]
pub struct ShardHold {
    _release: crossbeam_channel::Receiver<ShardStatus>,
}

/// The way to one shard's command channel (shared with the rebalancer and
/// with the other shards, which hand connections over through it).
#[derive(Debug)]
pub(crate) struct ShardPort {
    commands: crossbeam_channel::Sender<Command>,
    doorbell: Arc<Doorbell>,
}

impl ShardPort {
    /// Sends a command and wakes the shard; false when the shard is gone.
    pub(crate) fn send(&self, cmd: Command) -> bool {
        if self.commands.send(cmd).is_ok() {
            self.doorbell.ring();
            true
        } else {
            false
        }
    }
}

/// How long an operator request waits for a shard, and by default how long
/// a snapshot push waits for every shard's confirmation
/// ([`DataPlane::set_apply_within`]).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

fn ask<T>(
    port: &ShardPort,
    shard: usize,
    make: impl FnOnce(crossbeam_channel::Sender<T>) -> Command,
) -> Result<T, ControlError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    port.send(make(tx));
    rx.recv_timeout(ANSWER_WITHIN)
        .map_err(|_| ControlError::Unresponsive(shard as u16))
}

/// A running data plane. Dropping it shuts it down.
#[derive(Debug)]
pub struct DataPlane {
    local_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    ports: Arc<Vec<ShardPort>>,
    joins: Vec<Option<ExecutorJoinHandle<()>>>,
    /// Set while the current snapshot has any rate limit.
    rates_in_use: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    rebalancer: Option<JoinHandle<()>>,
    placement: Arc<PlacementBook>,
    /// The steering the node was configured with (used while no snapshot
    /// carries one).
    default_steering: SteeringConfig,
    /// How long [`DataPlane::apply`] waits for every shard, milliseconds.
    apply_within_ms: AtomicU64,
    /// The snapshot last given to the shards, held until every shard has
    /// swapped in the next one, so that the old one is freed on the thread
    /// that calls [`DataPlane::apply`], never on a shard: freeing a snapshot
    /// of 100,000 principals takes milliseconds the shard would not serve.
    applied: Mutex<Arc<ConfigSnapshot>>,
}

/// How often rate-limit shares are rebalanced.
const REBALANCE_EVERY: Duration = Duration::from_millis(200);

/// Moves a tenant off a shard that runs hot, when one does: its new home
/// takes its next connections, and the old home asks its connections there
/// to reconnect.
fn rehome(ports: &[ShardPort], placement: &PlacementBook, r: Rehoming) {
    if let Some(m) = placement.rebalance(r.min_gap) {
        tracing::info!(
            tenant = m.tenant.0,
            from = %m.from,
            to = %m.to,
            connections = m.connections,
            "placement: shard {} runs hot, tenant re-homed", m.from
        );
        if let Some(port) = ports.get(m.from.index()) {
            port.send(Command::MoveTenant {
                tenant: m.tenant,
                window: r.window,
            });
        }
    }
}

/// Moves each rate-limited key's share towards the shards that use it, and
/// tenants off shards that run hot.
fn rebalancer(
    ports: &[ShardPort],
    placement: &PlacementBook,
    rehoming: Option<Rehoming>,
    in_use: &AtomicBool,
    stopping: &AtomicBool,
) {
    let mut last = Instant::now();
    let mut last_rehome = last;
    while !stopping.load(Ordering::Relaxed) {
        std::thread::park_timeout(
            rehoming.map_or(REBALANCE_EVERY, |r| r.every.min(REBALANCE_EVERY)),
        );
        if stopping.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        if let Some(r) = rehoming
            && now.duration_since(last_rehome) >= r.every
        {
            last_rehome = now;
            rehome(ports, placement, r);
        }
        if now.duration_since(last) < REBALANCE_EVERY {
            continue;
        }
        let window = now.duration_since(last).as_secs_f64().max(1e-3);
        last = now;
        if !in_use.load(Ordering::Relaxed) {
            continue;
        }
        let mut reports: Vec<FxHashMap<RateKey, RateUse>> = Vec::with_capacity(ports.len());
        for (i, port) in ports.iter().enumerate() {
            match ask(port, i, Command::RateReport) {
                Ok(r) => reports.push(r.into_iter().collect()),
                // A shard too busy to answer: try again next window.
                Err(_) => break,
            }
        }
        if reports.len() != ports.len() {
            continue;
        }
        let mut keys: Vec<RateKey> = reports.iter().flat_map(|r| r.keys().copied()).collect();
        keys.sort_unstable_by_key(|k| match k {
            RateKey::Tenant(t) => (0, t.0),
            RateKey::Principal(p) => (1, p.0),
        });
        keys.dedup();
        let mut shares: Vec<FxHashMap<RateKey, f64>> = vec![FxHashMap::default(); ports.len()];
        for key in keys {
            let per_shard: Vec<ShareReport> = reports
                .iter()
                .map(|r| {
                    r.get(&key).map_or(
                        ShareReport {
                            share: 1.0 / ports.len() as f64,
                            used: 0.0,
                            throttled: false,
                        },
                        |u| {
                            let frac = |(granted, rate): (f64, f64)| {
                                if rate > 0.0 {
                                    granted / (rate * window)
                                } else {
                                    0.0
                                }
                            };
                            ShareReport {
                                share: u.share,
                                used: frac(u.msgs).max(frac(u.bytes)),
                                throttled: u.throttled,
                            }
                        },
                    )
                })
                .collect();
            for (i, share) in rebalance(&per_shard).into_iter().enumerate() {
                shares[i].insert(key, share);
            }
        }
        for (port, s) in ports.iter().zip(shares) {
            if !s.is_empty() {
                port.send(Command::RateShares(s));
            }
        }
    }
}

/// What the steering program did, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SteeringCounters {
    /// Whether the program is attached.
    pub active: bool,
    /// The mode in force.
    pub mode: arqonbus_core::placement::SteeringMode,
    /// Drained shards (bit i: shard i).
    pub draining: u64,
    /// Connections the program sent to a shard.
    pub selected: u64,
    /// Connections left to the kernel's hash: the chosen shard had no
    /// listener in the map.
    pub fallback_no_socket: u64,
    /// Connections left to the kernel's hash: every shard was drained.
    pub fallback_all_drained: u64,
    /// Connections placed by an affinity rule.
    pub affinity_hits: u64,
    /// Connections placed by the CPU that took the SYN.
    pub cpu_hits: u64,
    /// Map updates that failed.
    pub map_errors: u64,
    /// Tenants moved off a shard that ran hot.
    pub rehomed: u64,
}

/// Most bytes of a reason shown in `/readyz`, `steering get` and the log.
const BRIEF_MAX: usize = 600;

/// `text` cut to what an operator reads: a verifier refusal carries the
/// whole verifier log (megabytes), whose first line says what failed and
/// whose last lines say where. Keeps those, marked as cut.
fn brief(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let short = if lines.len() <= 3 {
        lines.join(" | ")
    } else {
        format!(
            "{} | ... ({} lines cut) ... | {} | {}",
            lines[0],
            lines.len() - 3,
            lines[lines.len() - 2],
            lines[lines.len() - 1]
        )
    };
    if short.len() <= BRIEF_MAX {
        return short;
    }
    let mut end = BRIEF_MAX;
    while !short.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &short[..end])
}

/// Loads and attaches the steering program to the shards' listeners, or
/// says why not (an error only when `steering.required` is set).
fn attach_steering(
    cfg: &DataPlaneConfig,
    listeners: &[OwnedFd],
) -> Result<SteeringState, StartError> {
    use std::os::fd::AsFd;
    let fds: Vec<_> = listeners.iter().map(AsFd::as_fd).collect();
    let attached = arqonbus_ebpf::Steering::attach(&fds, placement::mode(cfg.steering.mode))
        .and_then(|mut p| {
            let rules = placement::rules(&cfg.steering);
            p.set_affinity(&rules)?;
            if !cfg.cpus.is_empty() {
                let cpus: Vec<(u32, u32)> = (0..cfg.shards)
                    .map(|i| (cfg.cpus[i % cfg.cpus.len()] as u32, i as u32))
                    .collect();
                p.set_cpus(&cpus)?;
            }
            Ok(p)
        });
    match attached {
        Ok(program) => Ok(SteeringState {
            program: Some(program),
            fallback: None,
            config: cfg.steering.clone(),
            from_api: false,
        }),
        Err(e) if cfg.steering_required => Err(StartError::Steering(brief(&e.to_string()))),
        Err(e) => {
            let reason = brief(&e.to_string());
            tracing::debug!(error = %e, "steering program not attached (whole error)");
            tracing::warn!(
                error = %reason,
                "steering program not attached: the kernel's hash places connections, drains close the listener (set steering.required = true to refuse to start instead)"
            );
            Ok(SteeringState {
                program: None,
                fallback: Some(reason),
                config: cfg.steering.clone(),
                from_api: false,
            })
        }
    }
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
        let (ws_listeners, ws_addr) = match &cfg.websocket {
            Some(edge) => {
                let (fds, addr) = bind_group(edge.listen, cfg.shards)?;
                (fds.into_iter().map(Some).collect(), Some(addr))
            }
            None => ((0..cfg.shards).map(|_| None).collect::<Vec<_>>(), None),
        };
        let steering = attach_steering(cfg, &listeners)?;
        let placement = Arc::new(PlacementBook::new(cfg.shards, steering));
        let mut bells = Vec::with_capacity(cfg.shards);
        let mut bell_rxs = Vec::with_capacity(cfg.shards);
        let mut ports = Vec::with_capacity(cfg.shards);
        let mut cmd_rxs = Vec::with_capacity(cfg.shards);
        for _ in 0..cfg.shards {
            let (bell, rx) = Doorbell::new()?;
            let bell = Arc::new(bell);
            let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
            ports.push(ShardPort {
                commands: cmd_tx,
                doorbell: bell.clone(),
            });
            cmd_rxs.push(cmd_rx);
            bells.push(bell);
            bell_rxs.push(rx);
        }
        let ports = Arc::new(ports);
        let meshes = mesh::build(&bells, cfg.ring_capacity);
        let shared = Arc::new(ShardConfigSend {
            listen: local_addr,
            server_id: cfg.server_id.clone(),
            tls: cfg.tls.clone(),
            read_chunk: cfg.read_buffer,
            tick: cfg.tick,
            overflow_limit: cfg.overflow_limit,
            shards: cfg.shards,
            sample_every: cfg.latency_sample_every,
            trace_parent: cfg.trace_parent,
            ws: cfg
                .websocket
                .as_ref()
                .map(|edge| ws::WsShared::new(edge, cfg.tls.as_ref())),
        });
        let quota = Arc::new(QuotaBook::default());
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed)
            .map_err(|e| StartError::Io(std::io::Error::other(e.to_string())))?;
        let seed = u64::from_le_bytes(seed);

        let (ready_tx, ready_rx) = crossbeam_channel::bounded(cfg.shards);
        let mut joins = Vec::with_capacity(cfg.shards);
        let mut spawn_error = None;
        let parts = listeners
            .into_iter()
            .zip(ws_listeners)
            .zip(meshes)
            .zip(bell_rxs)
            .zip(cmd_rxs)
            .enumerate();
        for (i, ((((listener, ws_listener), mesh), bell_rx), cmd_rx)) in parts {
            let id = ShardId(i as u16);
            let pin = if cfg.cpus.is_empty() {
                Placement::Unbound
            } else {
                Placement::Fixed(cfg.cpus[i % cfg.cpus.len()])
            };
            let mut builder = LocalExecutorBuilder::new(pin)
                .name(&format!("arqonbus-shard-{i}"))
                .io_memory(cfg.io_memory);
            if let Some(spin) = cfg.spin_before_park {
                builder = builder.spin_before_park(spin);
            }
            let init = ShardInit {
                id,
                cfg: shared.clone(),
                config: cfg.config.clone(),
                quota: quota.clone(),
                listener,
                ws_listener,
                mesh,
                doorbell: bells[i].clone(),
                bell_rx,
                commands: cmd_rx,
                peers: ports.clone(),
                placement: placement.clone(),
                seed: seed
                    .wrapping_add(i as u64)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15),
            };
            let ready = ready_tx.clone();
            match builder.spawn(move || shard::run(init, ready)) {
                Ok(join) => joins.push(Some(join)),
                Err(e) => {
                    spawn_error = Some(StartError::Shard {
                        shard: id.0,
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        drop(ready_tx);
        let rates_in_use = Arc::new(AtomicBool::new(cfg.config.uses_rates()));
        let stopping = Arc::new(AtomicBool::new(false));
        // Built before anything can fail: dropping `plane` stops every shard
        // already running.
        let mut plane = Self {
            local_addr,
            ws_addr,
            ports: ports.clone(),
            joins,
            rates_in_use: rates_in_use.clone(),
            stopping: stopping.clone(),
            rebalancer: None,
            placement,
            default_steering: cfg.steering.clone(),
            apply_within_ms: AtomicU64::new(ANSWER_WITHIN.as_millis() as u64),
            applied: Mutex::new(cfg.config.clone()),
        };
        if let Some(e) = spawn_error {
            return Err(e);
        }
        // A steering set through the control API (stored) wins over the file.
        plane.apply_steering(cfg.config.steering().map(|s| &**s));
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
        let book = plane.placement.clone();
        let rehoming = cfg.rehome;
        plane.rebalancer = Some(
            std::thread::Builder::new()
                .name("arqonbus-rebalancer".into())
                .spawn(move || {
                    rebalancer(&ports, &book, rehoming, &rates_in_use, &stopping);
                })?,
        );
        let steering = plane.steering_status();
        tracing::info!(
            addr = %local_addr,
            shards = cfg.shards,
            tls = cfg.tls.is_some(),
            websocket = ?ws_addr,
            steering = %steering.config.mode,
            steering_active = steering.active,
            "data plane listening"
        );
        Ok(plane)
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the WebSocket edge, when it is served.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.ports.len()
    }

    fn port(&self, shard: u16) -> Result<&ShardPort, ControlError> {
        self.ports
            .get(usize::from(shard))
            .ok_or(ControlError::NoSuchShard(shard))
    }

    /// A copy of every shard's counters, in shard order.
    pub fn stats(&self) -> Result<Vec<ShardStats>, ControlError> {
        self.ports
            .iter()
            .enumerate()
            .map(|(i, p)| ask(p, i, Command::Stats))
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

    /// Pushes a new configuration snapshot to every shard. Each applies it
    /// between two batches of work; sessions whose credential is no longer
    /// valid close, and changed permissions apply to existing sessions.
    ///
    /// Returns `Ok` once every shard has applied it (and flagged every
    /// connection to re-check), so a revoked credential's sessions are
    /// already being closed; a shard that is gone (stopped) counts as done.
    /// Waits at most [`set_apply_within`](Self::set_apply_within) for all of
    /// them together; the shards still silent then are named in the error
    /// (`arqonbus_core::snapshot::unconfirmed` decides). Pushing the same
    /// snapshot again is harmless: a shard already at its epoch just
    /// confirms.
    pub fn apply(&self, snapshot: &Arc<ConfigSnapshot>) -> Result<(), ApplyError> {
        self.rates_in_use
            .store(snapshot.uses_rates(), Ordering::Relaxed);
        self.apply_steering(snapshot.steering().map(|s| &**s));
        let deadline =
            Instant::now() + Duration::from_millis(self.apply_within_ms.load(Ordering::Relaxed));
        let sent: Vec<_> = self
            .ports
            .iter()
            .map(|p| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                p.send(Command::Apply(snapshot.clone(), tx)).then_some(rx)
            })
            .collect();
        let replies: Vec<ApplyReply> = sent
            .into_iter()
            .map(|rx| match rx {
                None => ApplyReply::Gone,
                Some(rx) => match rx.recv_deadline(deadline) {
                    Ok(epoch) => ApplyReply::Applied(epoch),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => ApplyReply::Gone,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => ApplyReply::Silent,
                },
            })
            .collect();
        // The shards now hold `snapshot`: the one before it is released
        // here (a shard that stayed silent may still hold it, and frees it).
        let previous = {
            let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
            (snapshot.epoch() > applied.epoch())
                .then(|| std::mem::replace(&mut *applied, snapshot.clone()))
        };
        if let Some(previous) = previous {
            let at = Instant::now();
            let epoch = previous.epoch();
            drop(previous);
            tracing::debug!(
                epoch,
                micros = at.elapsed().as_micros(),
                "previous snapshot released"
            );
        }
        let shards = unconfirmed(snapshot.epoch(), &replies);
        if shards.is_empty() {
            Ok(())
        } else {
            Err(ApplyError {
                epoch: snapshot.epoch(),
                shards,
            })
        }
    }

    /// Sets how long [`apply`](Self::apply) waits for every shard to confirm
    /// a snapshot (default 10 s; at least 1 ms).
    pub fn set_apply_within(&self, within: Duration) {
        let ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX).max(1);
        self.apply_within_ms.store(ms, Ordering::Relaxed);
    }

    /// Test-only: stops `shard`'s thread (its connections, commands and
    /// rings) until the returned [`ShardHold`] is dropped, as a shard stuck
    /// in a long batch would be. The shard stops when it reads this request,
    /// after the commands queued before it; every command sent after waits.
    /// For tests of what the control plane does about a late shard; nothing
    /// in the server calls it.
    #[doc(hidden)]
    pub fn hold_shard(&self, shard: u16) -> Result<ShardHold, ControlError> {
        let port = self.port(shard)?;
        // A rendezvous channel: the shard's reply blocks its thread until
        // the receiver reads it or is dropped.
        let (tx, rx) = crossbeam_channel::bounded(0);
        port.send(Command::Status(tx));
        Ok(ShardHold { _release: rx })
    }

    /// Every open connection.
    pub fn connections(&self) -> Result<Vec<ConnectionInfo>, ControlError> {
        let mut all = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            all.extend(ask(p, i, Command::Connections)?);
        }
        Ok(all)
    }

    /// Closes one connection; `false` when there is no such connection.
    pub fn kick(&self, connection_id: u64) -> Result<bool, ControlError> {
        let shard = shard_of(connection_id);
        let Ok(port) = self.port(shard) else {
            return Ok(false);
        };
        ask(port, usize::from(shard), |tx| {
            Command::Kick(connection_id, tx)
        })
    }

    /// Takes a shard out of service: new connections go to the other
    /// shards, and its connections are closed with `SERVER_SHUTTING_DOWN`
    /// so clients reconnect elsewhere. With the steering program the
    /// listener stays open and its accept queue is served (nothing queued is
    /// reset); without it the listener is closed, as the kernel's hash
    /// cannot skip it.
    pub fn drain(&self, shard: u16) -> Result<(), ControlError> {
        let port = self.port(shard)?;
        let steered = self.placement.set_draining(ShardId(shard), true);
        port.send(Command::Drain {
            close_listener: !steered,
        });
        Ok(())
    }

    /// Puts a drained shard back into service.
    pub fn resume(&self, shard: u16) -> Result<(), ControlError> {
        let port = self.port(shard)?;
        self.placement.set_draining(ShardId(shard), false);
        port.send(Command::Resume);
        Ok(())
    }

    /// The steering in force and whether the program runs.
    pub fn steering_status(&self) -> SteeringStatus {
        let st = self.placement.steering();
        SteeringStatus {
            config: st.config.clone(),
            source: if st.from_api { "api" } else { "config" },
            active: st.program.is_some(),
            fallback_reason: st.fallback.clone(),
        }
    }

    /// What the steering program counted, and failed map updates.
    pub fn steering_counters(&self) -> SteeringCounters {
        let map_errors = self.placement.map_errors();
        let st = self.placement.steering();
        let c = st
            .program
            .as_ref()
            .and_then(|p| p.counters().ok())
            .unwrap_or_default();
        SteeringCounters {
            active: st.program.is_some(),
            mode: st.config.mode,
            draining: self.placement.draining(),
            selected: c.selected,
            fallback_no_socket: c.fallback_no_socket,
            fallback_all_drained: c.fallback_all_drained,
            affinity_hits: c.affinity_hits,
            cpu_hits: c.cpu_hits,
            map_errors,
            rehomed: self.placement.rehomed(),
        }
    }

    /// Brings the program in line with the snapshot's steering (or the
    /// configured default when the snapshot has none).
    fn apply_steering(&self, wanted: Option<&SteeringConfig>) {
        let from_api = wanted.is_some();
        let wanted = wanted.unwrap_or(&self.default_steering);
        let mut st = self.placement.steering();
        if st.config == *wanted && st.from_api == from_api {
            return;
        }
        if let Err(e) = wanted.validate(self.ports.len()) {
            // The control plane validates first; a snapshot from elsewhere
            // (a test, a future path) must not break placement.
            tracing::error!(error = %e, "steering in the snapshot ignored");
            return;
        }
        if let Some(program) = st.program.as_mut() {
            let rules = placement::rules(wanted);
            let applied = program
                .set_affinity(&rules)
                .and_then(|()| program.set_mode(placement::mode(wanted.mode)));
            if let Err(e) = applied {
                drop(st);
                self.placement.count_map_error();
                tracing::error!(error = %e, "steering: cannot apply the new mode");
                return;
            }
        }
        tracing::info!(mode = %wanted.mode, rules = wanted.affinity.len(), from_api, "steering changed");
        st.config = wanted.clone();
        st.from_api = from_api;
    }

    /// Everything every shard measured, for a scrape.
    pub fn metrics(&self) -> Result<Vec<ShardMetrics>, ControlError> {
        self.ports
            .iter()
            .enumerate()
            .map(|(i, p)| ask(p, i, Command::Metrics))
            .collect()
    }

    /// Every shard's status.
    pub fn status(&self) -> Result<Vec<ShardStatus>, ControlError> {
        self.ports
            .iter()
            .enumerate()
            .map(|(i, p)| ask(p, i, Command::Status))
            .collect()
    }

    /// Lame duck: every shard stops accepting, sends each client a `Drain`
    /// notice, and closes its connections spread over `window`. Returns at
    /// once; [`wait_idle`](Self::wait_idle) then [`shutdown`](Self::shutdown)
    /// finish the job.
    pub fn lame_duck(&self, window: Duration) {
        for p in self.ports.iter() {
            p.send(Command::LameDuck(window));
        }
    }

    /// Gives the listener group to the program of the process that took
    /// this node over: ours is dropped without detaching theirs (which
    /// dropping it otherwise would), and steering status says so.
    pub fn release_steering(&self) {
        self.placement.release_steering();
    }

    /// The old side of an upgrade hand-over, once the new process serves
    /// the same ports (after [`release_steering`](Self::release_steering)):
    /// stops both listeners and moves every client away like
    /// [`lame_duck`](Self::lame_duck) (a `Drain` notice each, closes spread
    /// over `window`, a tenant's together). Returns at once.
    pub fn hand_off(&self, window: Duration) {
        for p in self.ports.iter() {
            p.send(Command::HandOff(window));
        }
    }

    /// Attaches this node's steering program to its listener group again,
    /// after an upgrade hand-over failed: the new process's program replaced
    /// it and went away with that process. Nothing to do without a program.
    pub fn reattach_steering(&self) {
        self.placement.reattach_steering();
    }

    /// Waits until no connection is open or `deadline` passes; true when
    /// idle.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            match self.total_stats() {
                Ok(s) if s.connections == 0 => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }

    /// Stops accepting, closes every connection with `SERVER_SHUTTING_DOWN`,
    /// and waits for every shard to stop.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(r) = self.rebalancer.take() {
            r.thread().unpark();
            let _ = r.join();
        }
        for p in self.ports.iter() {
            p.send(Command::Shutdown);
        }
        for join in &mut self.joins {
            if let Some(join) = join.take()
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

/// Thin public wrappers over crate-private hot paths, for the
/// `arqonbus-benches` micro-benchmarks only. Not an API: hidden from the
/// docs, and free to change whenever the data plane does.
#[doc(hidden)]
pub mod bench {
    use std::io::{self, IoSlice};
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use arqonbus_core::TenantId;
    use arqonbus_proto::codec::MessageTemplate;
    use bytes::Bytes;
    use futures_lite::AsyncWrite;
    use rtrb::{Consumer, Producer, RingBuffer};
    use smallvec::SmallVec;

    use std::net::SocketAddr;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use arqonbus_core::auth::CredentialHash;
    use arqonbus_core::limits::Limits;
    use arqonbus_core::placement::{SteeringConfig, TenantPlacement};
    use arqonbus_core::policy::Permissions;
    use arqonbus_core::session::{Session, State};
    use arqonbus_core::snapshot::{
        ConfigSnapshot, CredentialEntry, PrincipalEntry, Quotas, TenantEntry,
    };
    use arqonbus_core::{CredentialId, PrincipalId, ShardId};
    use arqonbus_proto::v1::{self, frame::Kind};

    use crate::conn::{ConnIo, ConnShared};
    use crate::mesh::{Body, Copies, PeerMsg, RemoteMessage};
    use crate::outbound::Outbound;
    use crate::placement::{PlacementBook, SteeringState};
    use crate::quota::QuotaBook;
    use crate::readbuf::ReadBuf;
    use crate::shard::{Shard, ShardConfig, ShardParts};

    /// A socket with unlimited room: takes every slice of every vectored
    /// write and touches none of their bytes.
    #[derive(Debug, Default)]
    pub struct NullSink {
        /// Bytes taken so far.
        pub bytes: usize,
        /// Vectored writes so far.
        pub writes: usize,
    }

    impl AsyncWrite for NullSink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.bytes += buf.len();
            self.writes += 1;
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let n = bufs.iter().map(|b| b.len()).sum();
            self.bytes += n;
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// One connection's outbound queue (`outbound::Outbound`).
    #[derive(Debug, Default)]
    pub struct OutboundQueue(Outbound);

    impl OutboundQueue {
        /// An empty queue.
        pub fn new() -> Self {
            Self::default()
        }

        /// Queues a `Message` for `sid` whose payload is `payload` of
        /// `owner` (a read batch, or a payload of its own), as the shard
        /// does per delivery.
        pub fn push_message(
            &mut self,
            template: &MessageTemplate,
            sid: u64,
            owner: &Bytes,
            payload: &[u8],
        ) {
            self.0.push_message(template, sid, owner, payload);
        }

        /// Queued bytes.
        pub fn pending(&self) -> usize {
            self.0.pending()
        }

        /// Builds the iovecs and hands them to `sink`, one vectored write at
        /// a time, until the queue is empty. Returns the bytes written.
        pub fn flush_into(&mut self, sink: &mut NullSink) -> io::Result<usize> {
            let mut cx = Context::from_waker(Waker::noop());
            let mut total = 0;
            while self.0.pending() > 0 {
                match self.0.poll_write(&mut cx, sink) {
                    Poll::Ready(Ok(n)) => total += n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            Ok(total)
        }
    }

    /// One end of [`PublishPath`]: a registered connection, its reading
    /// side and its session.
    struct Peer {
        conn: Rc<ConnShared>,
        io: ConnIo<()>,
        session: Session,
    }

    impl Peer {
        /// Lands `bytes` in the receive buffer as reads would (each read
        /// takes the room the buffer offers, as the connection's poll asks
        /// for it), processing after each read.
        fn read(&mut self, shard: &Rc<Shard>, bytes: &[u8]) {
            let mut rest = bytes;
            while !rest.is_empty() {
                let rbuf = self.io.rbuf_mut();
                let need = rbuf
                    .filled()
                    .first_chunk::<{ arqonbus_proto::codec::LEN_PREFIX }>()
                    .map_or(0, |p| {
                        arqonbus_proto::codec::LEN_PREFIX + u32::from_be_bytes(*p) as usize
                    })
                    .saturating_sub(rbuf.filled().len());
                let room = rbuf.unfilled(need);
                let n = room.len().min(rest.len());
                room[..n].copy_from_slice(&rest[..n]);
                rbuf.advance(n);
                rest = &rest[n..];
                self.io.process(shard, &self.conn, &mut self.session);
            }
        }

        /// Writes everything queued for this connection into `sink`.
        fn write_out(&self, sink: &mut NullSink) -> io::Result<usize> {
            let mut cx = Context::from_waker(Waker::noop());
            let mut out = self.conn.out.borrow_mut();
            let mut total = 0;
            while out.pending() > 0 {
                match out.poll_write(&mut cx, sink) {
                    Poll::Ready(Ok(n)) => total += n,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            Ok(total)
        }
    }

    /// Why a [`PublishPath`] could not be set up.
    #[derive(Debug, thiserror::Error)]
    #[error("publish path fixture: {0}")]
    pub struct FixtureError(String);

    /// The whole publish path of one shard, all-in, with no socket: a
    /// publisher's read batch of `Publish` frames is decoded, checked
    /// (session, permissions, rate limits), routed and queued for a
    /// subscriber on the same shard, whose queue is then written out (the
    /// iovecs built and handed to a [`NullSink`]). The same code a
    /// connection's task runs between a read and a write; only the
    /// syscalls are missing.
    pub struct PublishPath {
        shard: Rc<Shard>,
        publisher: Peer,
        subscriber: Peer,
        batch: Vec<u8>,
        frames: usize,
        sink: NullSink,
    }

    impl std::fmt::Debug for PublishPath {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PublishPath")
                .field("frames", &self.frames)
                .finish_non_exhaustive()
        }
    }

    const TOKEN: &str = "abt_bench_publish_path";

    impl PublishPath {
        /// A shard with one tenant, a publisher and a subscriber of
        /// `subject`, both authenticated through `Connect` frames; each
        /// read batch carries `frames` publishes of `payload` bytes.
        pub fn new(subject: &str, payload: usize, frames: usize) -> Result<Self, FixtureError> {
            let err = |e: &dyn std::fmt::Display| FixtureError(e.to_string());
            let mut config = ConfigSnapshot::new(1, Limits::default());
            config.insert_tenant(TenantEntry {
                id: TenantId(1),
                name: "bench".into(),
                quotas: Quotas::default(),
                verify_key: None,
                placement: TenantPlacement::Home,
            });
            config
                .insert_principal(PrincipalEntry {
                    id: PrincipalId(1),
                    tenant: TenantId(1),
                    name: "bench".into(),
                    roles: vec![],
                    quotas: Quotas::default(),
                    permissions: Arc::new(Permissions::allow_all()),
                })
                .map_err(|e| err(&e))?;
            config
                .insert_bearer(
                    CredentialHash::of(TOKEN),
                    CredentialEntry {
                        id: CredentialId(1),
                        principal: PrincipalId(1),
                        expires_at_unix: None,
                    },
                )
                .map_err(|e| err(&e))?;
            let cfg = Rc::new(ShardConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                server_id: "bench".into(),
                tls: None,
                read_chunk: 64 * 1024,
                tick: Duration::from_secs(1),
                overflow_limit: 1024,
                shards: 1,
                sample_every: 0,
                trace_parent: None,
                ws: None,
            });
            let steering = SteeringState {
                program: None,
                fallback: Some("bench".into()),
                config: SteeringConfig::default(),
                from_api: false,
            };
            let shard = Shard::new(ShardParts {
                id: ShardId(0),
                cfg,
                config: Arc::new(config),
                quota: Arc::new(QuotaBook::default()),
                placement: Arc::new(PlacementBook::new(1, steering)),
                peers: Arc::new(Vec::new()),
                links: Vec::new(),
                seed: 1,
            });
            let connect = |shard: &Rc<Shard>| -> Result<Peer, FixtureError> {
                let conn = shard
                    .register(None, 0, false)
                    .map_err(|r| FixtureError(r.detail.to_owned()))?;
                let mut peer = Peer {
                    conn,
                    io: ConnIo::new((), ReadBuf::new(64 * 1024), false),
                    session: Session::new(Instant::now(), false),
                };
                let hello = Kind::Connect(v1::Connect {
                    protocol_version: 1,
                    credential: TOKEN.into(),
                    ..v1::Connect::default()
                });
                peer.read(shard, &encode(&hello)?);
                if peer.session.state() != State::Open {
                    return Err(FixtureError("Connect did not open the session".into()));
                }
                Ok(peer)
            };
            let publisher = connect(&shard)?;
            let mut subscriber = connect(&shard)?;
            let sub = Kind::Subscribe(v1::Subscribe {
                sid: 1,
                pattern: Bytes::copy_from_slice(subject.as_bytes()),
                queue_group: Bytes::new(),
            });
            subscriber.read(&shard, &encode(&sub)?);
            let mut sink = NullSink::default();
            publisher.write_out(&mut sink).map_err(|e| err(&e))?;
            subscriber.write_out(&mut sink).map_err(|e| err(&e))?;
            let one = encode(&Kind::Publish(v1::Publish {
                subject: Bytes::copy_from_slice(subject.as_bytes()),
                reply: Bytes::new(),
                headers: Vec::new(),
                seq: 0,
                payload: Bytes::from(vec![0x5a; payload]),
            }))?;
            let batch = one.repeat(frames);
            let mut path = Self {
                shard,
                publisher,
                subscriber,
                batch,
                frames,
                sink,
            };
            let expected = path.frames * (one.len() + 2);
            let wrote = path.read_batch();
            if wrote < path.frames * payload || wrote > expected + 64 * path.frames {
                return Err(FixtureError(format!(
                    "one batch wrote {wrote} bytes to the subscriber, not about {expected}"
                )));
            }
            Ok(path)
        }

        /// Publishes per read batch.
        pub fn frames(&self) -> usize {
            self.frames
        }

        /// One read batch through the whole path; returns the bytes written
        /// to the subscriber (0 when anything failed).
        pub fn read_batch(&mut self) -> usize {
            self.publisher.read(&self.shard, &self.batch);
            self.subscriber.write_out(&mut self.sink).unwrap_or(0)
        }
    }

    fn encode(kind: &Kind) -> Result<Vec<u8>, FixtureError> {
        let mut out = Vec::new();
        arqonbus_proto::codec::encode(kind, &mut out).map_err(|e| FixtureError(e.to_string()))?;
        Ok(out)
    }

    /// One shard-to-shard ring carrying the data plane's `PeerMsg`.
    #[derive(Debug)]
    pub struct Ring {
        tx: Producer<PeerMsg>,
        rx: Consumer<PeerMsg>,
    }

    impl Ring {
        /// A ring of `capacity` slots.
        pub fn new(capacity: usize) -> Self {
            let (tx, rx) = RingBuffer::new(capacity);
            Self { tx, rx }
        }

        /// Pushes `n` message copies shaped as `Shard::publish` stages them
        /// (offsets into one read batch, held once), sealed in one
        /// `PeerMsg::Deliver` entry, then pops it as the mesh loop does and
        /// drops it. `batch` stands for the publisher's read batch; the
        /// copies' payloads are all of it (their subjects are not read
        /// here). Returns the payload bytes that crossed.
        pub fn hand_off(&mut self, n: usize, tenant: TenantId, batch: &Bytes) -> usize {
            let mut copies = Copies::default();
            let end = u32::try_from(batch.len()).unwrap_or(u32::MAX);
            for _ in 0..n {
                let at = copies.hold(batch);
                copies.msgs.push(RemoteMessage {
                    tenant,
                    body: Body::InBatch {
                        batch: at,
                        subject: 0..0,
                        reply: 0..0,
                        payload: 0..end,
                    },
                    groups: SmallVec::new(),
                    sample: None,
                });
            }
            if self.tx.push(PeerMsg::Deliver(copies)).is_err() {
                return 0;
            }
            let mut bytes = 0;
            if let Ok(PeerMsg::Deliver(copies)) = self.rx.pop() {
                bytes = copies
                    .msgs
                    .iter()
                    .map(|m| match &m.body {
                        Body::InBatch { payload, .. } => payload.len(),
                        Body::Owned(p) => p.payload.len(),
                    })
                    .sum();
            }
            bytes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BRIEF_MAX, brief};

    #[test]
    fn a_verifier_log_is_cut_to_its_first_and_last_lines() {
        let mut log = String::from("loading the steering program: permission denied\n");
        for i in 0..100_000 {
            log.push_str(&i.to_string());
            log.push_str(": (bf) r1 = r6\n");
        }
        log.push_str("The sequence of 8193 jumps is too complex.\nverification time 12 usec\n");
        let b = brief(&log);
        assert!(b.len() <= BRIEF_MAX + 3, "{} bytes", b.len());
        assert!(b.starts_with("loading the steering program: permission denied"));
        assert!(b.contains("too complex"), "{b}");
        assert!(b.contains("lines cut"), "{b}");
        assert_eq!(brief("one line"), "one line");
    }
}
