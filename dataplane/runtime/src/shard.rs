//! One shard: a pinned glommio executor and everything it owns.
//!
//! A [`Shard`] owns its connections, its `Router`, its end of the mesh, its
//! `Throttle` (the core's rate limiters and the publisher stalls it knows of)
//! and its counters. Nothing here is shared with another thread
//! except through the rings, the doorbell, the command channel, the immutable
//! configuration snapshot and the quota counters (touched on connect and
//! subscribe only). Every `RefCell` is borrowed only between two `await`
//! points, never across one.
//!
//! Tasks on the executor:
//! - the accept loop (one `SO_REUSEPORT` listener per shard; closed while the
//!   shard is drained, re-bound when it resumes);
//! - one task per connection ([`crate::conn`]);
//! - the mesh loop: drains rings from the other shards and operator commands
//!   (a new snapshot, listings, kicks, drain), then parks on the doorbell;
//! - the tick loop: flags connections whose deadline passed (keep-alive,
//!   auth timeout, credential expiry, close grace).
//!
//! Message routing, the mesh protocol and the subscription barrier are in
//! `route.rs`.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use arqonbus_core::authorize::Throttle;
use arqonbus_core::barrier::Barrier;
use arqonbus_core::metrics::{ErrorCounts, ShardMetrics, TenantStats, latency_histogram};
use arqonbus_core::ops::{ConnectionInfo, ShardStatus};
use arqonbus_core::router::{InterestUpdate, RoutePlan, Router};
use arqonbus_core::session::{Now, Rejection};
use arqonbus_core::snapshot::ConfigSnapshot;
use arqonbus_core::stats::ShardStats;
use arqonbus_core::subject::SubjectMemo;
use arqonbus_core::throttle::{AuthThrottle, ThrottleConfig};
use arqonbus_core::{ConnId, ShardId, TenantId};
use arqonbus_proto::codec::MessageTemplate;
use arqonbus_proto::v1::{self, ErrorCode, frame::Kind};
use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, UnixStream};
use rustc_hash::FxHashMap;
use slab::Slab;

use crate::ShardPort;
use crate::conn::{self, ConnShared, Flag};
use crate::doorbell::Doorbell;
use crate::mesh::{Inbox, Link, ShardMesh};
use crate::placement::PlacementBook;
use crate::quota::{QuotaBook, RateKey, RateUse};

/// Messages from the operator (the [`crate::DataPlane`] handle) to a shard.
#[derive(Debug)]
pub(crate) enum Command {
    /// Presence changes on another shard, for this shard's replica
    /// (`arqonbus_core::presence`, specs/presence.md).
    Presence(Arc<[arqonbus_core::presence::Delta]>),
    /// Reply with a copy of the shard's counters.
    Stats(crossbeam_channel::Sender<ShardStats>),
    /// Apply a new configuration snapshot; reply once every connection was
    /// told to re-check (its epoch).
    Apply(Arc<ConfigSnapshot>, crossbeam_channel::Sender<u64>),
    /// Reply with every connection.
    Connections(crossbeam_channel::Sender<Vec<ConnectionInfo>>),
    /// Close one connection; reply whether it existed.
    Kick(u64, crossbeam_channel::Sender<bool>),
    /// Stop accepting and move every connection away; close the listener
    /// too when the steering program cannot skip this shard.
    Drain {
        /// Close the listener (no steering program).
        close_listener: bool,
    },
    /// Serve a connection another shard authenticated: this shard is its
    /// tenant's home.
    Adopt(Box<conn::Handoff>),
    /// The tenant has a new home: ask its connections here to reconnect
    /// (a `Drain` notice each, closes spread over `window`).
    MoveTenant {
        /// The tenant.
        tenant: TenantId,
        /// Spread of the closes.
        window: Duration,
    },
    /// Accept again after a drain.
    Resume,
    /// Reply with the shard's status.
    Status(crossbeam_channel::Sender<ShardStatus>),
    /// Reply with everything the shard measured.
    Metrics(crossbeam_channel::Sender<ShardMetrics>),
    /// Reply with this window's rate-limit use.
    RateReport(crossbeam_channel::Sender<Vec<(RateKey, RateUse)>>),
    /// New rate shares for this shard.
    RateShares(FxHashMap<RateKey, f64>),
    /// Lame duck: stop accepting, tell every client to move (`Drain`), and
    /// close the connections spread over the window.
    LameDuck(Duration),
    /// An upgrade hand-over: another process serves the ports now. Like
    /// [`Command::LameDuck`], and the WebSocket listener stops too (a lame
    /// duck keeps it to refuse clearly; here the new process takes them).
    HandOff(Duration),
    /// Stop accepting, close every connection, then stop.
    Shutdown,
}

/// How [`Shard::send_away`] spreads the closes over its window.
#[derive(Debug, Clone, Copy)]
enum Spread {
    /// Each connection at its own point: reconnects spread evenly.
    ByConnection,
    /// A tenant's connections at one point, on every shard: its clients
    /// move together (an upgrade hand-over, where moving splits them
    /// between two processes).
    ByTenant,
}

/// Settings every shard shares, fixed for the process's life.
pub(crate) struct ShardConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) server_id: String,
    pub(crate) tls: Option<futures_rustls::TlsAcceptor>,
    pub(crate) read_chunk: usize,
    pub(crate) tick: Duration,
    pub(crate) overflow_limit: usize,
    pub(crate) shards: usize,
    /// Time one published message in this many (0: never).
    pub(crate) sample_every: u32,
    /// Links sampled spans to their `traceparent` (a span exporter runs).
    pub(crate) trace_parent: Option<crate::TraceParentHook>,
    /// The WebSocket edge, when it is served.
    pub(crate) ws: Option<crate::ws::WsShard>,
}

impl std::fmt::Debug for ShardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// One tenant's figures on this shard, bumped without atomics.
#[derive(Debug, Default)]
pub(crate) struct TenantCell {
    pub(crate) msgs_in: Cell<u64>,
    pub(crate) bytes_in: Cell<u64>,
    pub(crate) msgs_out: Cell<u64>,
    pub(crate) bytes_out: Cell<u64>,
    pub(crate) connections: Cell<u64>,
    pub(crate) slow_consumers: Cell<u64>,
    pub(crate) quota_rejections: Cell<u64>,
}

impl TenantCell {
    fn get(&self) -> TenantStats {
        TenantStats {
            msgs_in: self.msgs_in.get(),
            bytes_in: self.bytes_in.get(),
            msgs_out: self.msgs_out.get(),
            bytes_out: self.bytes_out.get(),
            connections: self.connections.get(),
            slow_consumers: self.slow_consumers.get(),
            quota_rejections: self.quota_rejections.get(),
        }
    }

    pub(crate) fn bump(cell: &Cell<u64>, by: u64) {
        cell.set(cell.get() + by);
    }
}

/// A one-shot, many-waiter event local to the executor.
#[derive(Debug, Default)]
pub(crate) struct Latch {
    set: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Latch {
    pub(crate) fn set(&self) {
        self.set.set(true);
        for w in self.waiters.take() {
            w.wake();
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.get()
    }

    pub(crate) async fn wait(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.set.get() {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

pub(crate) struct Shard {
    pub(crate) id: ShardId,
    pub(crate) cfg: Rc<ShardConfig>,
    /// The configuration in force (replaced whole by `Command::Apply`).
    pub(crate) config: RefCell<Arc<ConfigSnapshot>>,
    pub(crate) quota: Arc<QuotaBook>,
    /// Steering and tenant homes, shared by the shards.
    pub(crate) placement: Arc<PlacementBook>,
    /// Every shard's command port (this one's too), for hand-overs.
    pub(crate) peers: Arc<Vec<ShardPort>>,
    /// Rate limiters and publisher stalls: whether a publish may go now.
    pub(crate) throttle: RefCell<Throttle>,
    /// Login throttling: which `Connect`s are refused before their
    /// credential is checked (per source address and claimed principal).
    pub(crate) logins: RefCell<AuthThrottle>,
    pub(crate) router: RefCell<Router>,
    pub(crate) conns: RefCell<Slab<Rc<ConnShared>>>,
    next_conn: Cell<u32>,
    /// Links to the other shards, in shard order (this shard skipped).
    pub(crate) links: RefCell<Vec<Link>>,
    pub(crate) stats: RefCell<ShardStats>,
    pub(crate) plan: RefCell<RoutePlan>,
    pub(crate) template: RefCell<MessageTemplate>,
    /// The last subject a publish on this shard was validated with.
    pub(crate) subjects: RefCell<SubjectMemo>,
    /// The time, read when a connection's task starts a round or a read
    /// batch ([`Shard::read_clock`]) and used until the next read: clock
    /// reads are not free on the per-message path, and kept here rather
    /// than in every connection's task, whose size idle connections pay.
    clock: Cell<Now>,
    pub(crate) interest_out: RefCell<Vec<InterestUpdate>>,
    /// The subscription barrier: interest update numbers, acknowledgements
    /// and the pings waiting for them.
    pub(crate) barrier: RefCell<Barrier>,
    pub(crate) backpressure: Cell<bool>,
    pub(crate) bp_waiters: RefCell<Vec<Waker>>,
    /// The mesh loop, while it is parked: woken when a ring overflows, since
    /// only the mesh loop retries overflowed messages.
    pub(crate) mesh_waker: Cell<Option<Waker>>,
    /// `Error` frames sent, by code.
    pub(crate) errors: RefCell<ErrorCounts>,
    /// Per-tenant figures; connections keep their tenant's cell.
    pub(crate) tenant_stats: RefCell<FxHashMap<TenantId, Rc<TenantCell>>>,
    /// Who is on which subject: this shard's members and watches, and its
    /// replica of the other shards' members.
    pub(crate) presence: RefCell<arqonbus_core::presence::Presence>,
    /// Sampled publish-to-deliver latency, µs.
    pub(crate) deliver_latency: RefCell<hdrhistogram::Histogram<u64>>,
    /// Accept-to-Welcome latency, µs.
    pub(crate) handshake_latency: RefCell<hdrhistogram::Histogram<u64>>,
    /// Counts publishes towards the next latency sample.
    pub(crate) sample_counter: Cell<u32>,
    /// Set while drained; the accept loop watches the current latch.
    draining: Cell<bool>,
    accept_stop: RefCell<Rc<Latch>>,
    /// The listening socket while the accept loop owns it, so a drain can
    /// stop it at once (see [`Shard::stop_listening`]).
    listen_fd: Cell<Option<RawFd>>,
    /// Set when the WebSocket listener stops before the shard does (an
    /// upgrade hand-over); `ws_fd` is that listener while its loop owns it.
    ws_stop: Latch,
    ws_fd: Cell<Option<RawFd>>,
    pub(crate) shutdown: Latch,
    stopped: Latch,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Everything a shard needs to start; built on the main thread.
#[derive(Debug)]
pub(crate) struct ShardInit {
    pub(crate) id: ShardId,
    pub(crate) cfg: Arc<ShardConfigSend>,
    pub(crate) config: Arc<ConfigSnapshot>,
    pub(crate) quota: Arc<QuotaBook>,
    pub(crate) listener: std::os::fd::OwnedFd,
    /// This shard's WebSocket listener, when the edge is served.
    pub(crate) ws_listener: Option<std::os::fd::OwnedFd>,
    pub(crate) mesh: ShardMesh,
    pub(crate) doorbell: Arc<Doorbell>,
    pub(crate) bell_rx: std::os::fd::OwnedFd,
    pub(crate) commands: crossbeam_channel::Receiver<Command>,
    pub(crate) peers: Arc<Vec<ShardPort>>,
    pub(crate) placement: Arc<PlacementBook>,
    pub(crate) seed: u64,
}

/// The `Send` form of [`ShardConfig`], turned into an `Rc` on the shard.
#[derive(Debug)]
pub(crate) struct ShardConfigSend {
    pub(crate) listen: SocketAddr,
    pub(crate) server_id: String,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) read_chunk: usize,
    pub(crate) tick: Duration,
    pub(crate) overflow_limit: usize,
    pub(crate) shards: usize,
    pub(crate) sample_every: u32,
    pub(crate) trace_parent: Option<crate::TraceParentHook>,
    pub(crate) ws: Option<crate::ws::WsShared>,
}

/// What [`Shard::new`] builds a shard from.
pub(crate) struct ShardParts {
    pub(crate) id: ShardId,
    pub(crate) cfg: Rc<ShardConfig>,
    pub(crate) config: Arc<ConfigSnapshot>,
    pub(crate) quota: Arc<QuotaBook>,
    pub(crate) placement: Arc<PlacementBook>,
    pub(crate) peers: Arc<Vec<ShardPort>>,
    pub(crate) links: Vec<Link>,
    pub(crate) seed: u64,
}

impl Shard {
    /// A shard with no connections and no tasks yet: [`run`] starts its
    /// loops; the hot-path workloads (`crate::bench`) drive it directly.
    pub(crate) fn new(parts: ShardParts) -> Rc<Self> {
        crate::instant_cell::init();
        let ShardParts {
            id,
            cfg,
            config,
            quota,
            placement,
            peers,
            links,
            seed,
        } = parts;
        let n = cfg.shards;
        let presence_limits = config.limits().presence();
        Rc::new(Shard {
            id,
            config: RefCell::new(config),
            quota,
            placement,
            peers,
            throttle: RefCell::new(Throttle::new(n)),
            // Keyed with the process's seed, so remote peers cannot aim
            // their addresses at one bucket of the table.
            logins: RefCell::new(AuthThrottle::new(
                ThrottleConfig::default(),
                seed.rotate_left(29) ^ u64::from(id.0),
            )),
            router: RefCell::new(Router::new(id, seed)),
            conns: RefCell::new(Slab::new()),
            next_conn: Cell::new(0),
            links: RefCell::new(links),
            stats: RefCell::new(ShardStats::default()),
            plan: RefCell::new(RoutePlan::default()),
            template: RefCell::new(MessageTemplate::new()),
            subjects: RefCell::new(SubjectMemo::default()),
            clock: Cell::new(conn::now()),
            interest_out: RefCell::new(Vec::new()),
            barrier: RefCell::new(Barrier::new(id, n)),
            backpressure: Cell::new(false),
            bp_waiters: RefCell::new(Vec::new()),
            mesh_waker: Cell::new(None),
            errors: RefCell::new(ErrorCounts::default()),
            tenant_stats: RefCell::new(FxHashMap::default()),
            presence: RefCell::new(arqonbus_core::presence::Presence::new(presence_limits)),
            deliver_latency: RefCell::new(latency_histogram()),
            handshake_latency: RefCell::new(latency_histogram()),
            sample_counter: Cell::new(0),
            draining: Cell::new(false),
            accept_stop: RefCell::new(Rc::new(Latch::default())),
            listen_fd: Cell::new(None),
            ws_stop: Latch::default(),
            ws_fd: Cell::new(None),
            shutdown: Latch::default(),
            stopped: Latch::default(),
            cfg,
        })
    }
}

/// Runs a shard until it is shut down. Called on the shard's executor.
pub(crate) async fn run(init: ShardInit, ready: crossbeam_channel::Sender<ShardId>) {
    let ShardInit {
        id,
        cfg,
        config,
        quota,
        listener,
        ws_listener,
        mesh,
        doorbell,
        bell_rx,
        commands,
        peers,
        placement,
        seed,
    } = init;
    let cfg = Rc::new(ShardConfig {
        listen: cfg.listen,
        server_id: cfg.server_id.clone(),
        tls: cfg.tls.clone().map(futures_rustls::TlsAcceptor::from),
        read_chunk: cfg.read_chunk,
        tick: cfg.tick,
        overflow_limit: cfg.overflow_limit,
        shards: cfg.shards,
        sample_every: cfg.sample_every,
        trace_parent: cfg.trace_parent,
        ws: cfg.ws.as_ref().map(crate::ws::WsShared::on_shard),
    });
    let listen_fd = listener.into_raw_fd();
    // SAFETY: both descriptors were created for this shard, are open, and
    // ownership moves into the glommio objects here.
    let (listener, bell) = unsafe {
        (
            TcpListener::from_raw_fd(listen_fd),
            UnixStream::from_raw_fd(bell_rx.into_raw_fd()),
        )
    };
    let shard = Shard::new(ShardParts {
        id,
        cfg,
        config,
        quota,
        placement,
        peers,
        links: mesh.links,
        seed,
    });
    let accept_stop = shard.accept_stop.borrow().clone();
    tracing::info!(shard = %id, "shard started");
    shard.listen_fd.set(Some(listen_fd));
    glommio::spawn_local(accept_loop(shard.clone(), listener, accept_stop)).detach();
    if let Some(fd) = ws_listener {
        // SAFETY: the descriptor was created for this shard, is open, and
        // its ownership moves into the listener here.
        let fd = fd.into_raw_fd();
        let ws = unsafe { TcpListener::from_raw_fd(fd) };
        shard.ws_fd.set(Some(fd));
        glommio::spawn_local(ws_accept_loop(shard.clone(), ws)).detach();
    }
    glommio::spawn_local(tick_loop(shard.clone())).detach();
    glommio::spawn_local(mesh_loop(
        shard.clone(),
        mesh.inboxes,
        commands,
        doorbell,
        bell,
    ))
    .detach();
    let _ = ready.send(id);
    shard.stopped.wait().await;
    tracing::info!(shard = %id, "shard stopped");
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, stop: Rc<Latch>) {
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Ok(stream)) => {
                glommio::spawn_local(conn::serve::<false>(shard.clone(), Box::new(stream)))
                    .detach();
            }
            // Stopping: shutdown(SHUT_RD) made the pending accept fail.
            Some(Err(_)) if stop.is_set() => break,
            Some(Err(e)) => {
                // Typically EMFILE/ENFILE: back off instead of spinning.
                tracing::warn!(shard = %shard.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // The descriptor closes with the listener: forget it first.
    shard.listen_fd.set(None);
    drop(listener);
    tracing::debug!(shard = %shard.id, "listener closed");
}

/// Accepts on the WebSocket listener until the shard shuts down or hands
/// its ports to another process. A lame duck or drained shard keeps
/// accepting here: `Shard::register` refuses what it must with a clear
/// error after the upgrade.
async fn ws_accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            futures_lite::future::or(shard.shutdown.wait(), shard.ws_stop.wait()).await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Ok(stream)) => {
                glommio::spawn_local(conn::serve::<true>(shard.clone(), Box::new(stream))).detach();
            }
            // Handed over: shutdown(SHUT_RD) made the pending accept fail.
            Some(Err(_)) if shard.ws_stop.is_set() => break,
            Some(Err(e)) => {
                tracing::warn!(shard = %shard.id, error = %e, "websocket accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    shard.ws_fd.set(None);
    drop(listener);
    tracing::debug!(shard = %shard.id, "websocket listener closed");
}

async fn tick_loop(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(shard.cfg.tick).await;
        let now = Instant::now();
        let conns = shard.conns.borrow();
        for (_, c) in conns.iter() {
            if c.deadline.get().is_some_and(|d| d <= now) {
                c.raise(Flag::Tick);
            }
        }
        let live = conns.len() as u64 + shard.accept_queue();
        drop(conns);
        shard.placement.report_live(shard.id, live);
        shard.throttle.borrow_mut().expire(now);
        if shard.stopped.is_set() {
            break;
        }
    }
}

/// Most ring messages taken from one peer before looking at the others.
const DRAIN_BATCH: usize = 1024;

async fn mesh_loop(
    shard: Rc<Shard>,
    mut inboxes: Vec<Inbox>,
    commands: crossbeam_channel::Receiver<Command>,
    doorbell: Arc<Doorbell>,
    mut bell: UnixStream,
) {
    let mut scratch = [0u8; 64];
    loop {
        let mut work = 0usize;
        while let Ok(cmd) = commands.try_recv() {
            work += 1;
            shard.command(cmd);
        }
        for inbox in &mut inboxes {
            let mut n = 0;
            while n < DRAIN_BATCH {
                let Ok(msg) = inbox.rx.pop() else { break };
                shard.on_peer(inbox.peer, msg);
                n += 1;
            }
            work += n;
        }
        shard.after_batch();
        if shard.stopped.is_set() {
            break;
        }
        if work > 0 {
            // Let the connections write out what was just delivered before
            // taking more: draining rings faster than subscribers' sockets
            // would only grow their queues.
            futures_lite::future::yield_now().await;
            continue;
        }
        if shard.has_overflow() {
            // A ring to a peer is full; its consumer frees room without
            // telling us, so retry shortly (only while overloaded).
            glommio::timer::sleep(Duration::from_micros(100)).await;
            continue;
        }
        doorbell.arm();
        if inboxes.iter().any(|i| !i.rx.is_empty()) || !commands.is_empty() {
            doorbell.disarm();
            continue;
        }
        // A byte on the doorbell (from a peer or the operator), or a ring of
        // ours overflowing (from a local connection), means "look again".
        let overflowed = futures_lite::future::poll_fn(|cx| {
            if shard.has_overflow() {
                Poll::Ready(Ok(0))
            } else {
                shard.mesh_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        });
        let woke = futures_lite::future::or(bell.read(&mut scratch), overflowed).await;
        doorbell.disarm();
        if let Err(e) = woke {
            tracing::error!(shard = %shard.id, error = %e, "doorbell failed");
            break;
        }
    }
}

fn conn_index(id: ConnId) -> usize {
    (id.0 & 0xffff_ffff) as usize
}

impl Shard {
    // ---- the clock ---------------------------------------------------

    /// Reads the clock, and keeps the reading for [`Shard::clock`].
    pub(crate) fn read_clock(&self) -> Now {
        let t = conn::now();
        self.clock.set(t);
        t
    }

    /// The time as last read (the current round or read batch of the
    /// connection being served).
    pub(crate) fn clock(&self) -> Now {
        self.clock.get()
    }

    // ---- connections -------------------------------------------------

    /// Registers a new connection (accepted here, or `adopted` from another
    /// shard; it connected at `connected_at_ms`, Unix milliseconds), or says
    /// why it is refused.
    pub(crate) fn register(
        &self,
        peer: Option<SocketAddr>,
        connected_at_ms: i64,
        adopted: bool,
    ) -> Result<Rc<ConnShared>, Rejection> {
        let mut conns = self.conns.borrow_mut();
        let max = self.config.borrow().limits().max_connections_per_shard;
        // A shard drained by steering keeps accepting what its queue holds
        // (those connections move to their tenant's home after
        // authentication); one whose listener closed refuses.
        let closed = self.draining.get() && self.listen_fd.get().is_none();
        let refusal = if self.shutdown.is_set() || closed {
            Some((ErrorCode::ServerShuttingDown, "server shutting down"))
        } else if conns.len() >= max as usize {
            Some((
                ErrorCode::MaxConnectionsExceeded,
                "server at max_connections_per_shard",
            ))
        } else {
            None
        };
        if let Some((code, detail)) = refusal {
            self.stats.borrow_mut().connections_refused += 1;
            return Err(Rejection {
                code,
                close: true,
                sid: 0,
                seq: 0,
                detail,
            });
        }
        let generation = self.next_conn.get().wrapping_add(1) & 0x00ff_ffff;
        self.next_conn.set(generation);
        let entry = conns.vacant_entry();
        // The shard in the top byte makes ids unique across the process.
        let id = ConnId(
            (u64::from(self.id.0) << 56) | (u64::from(generation) << 32) | entry.key() as u64,
        );
        let conn = Rc::new(ConnShared::new(id, peer, connected_at_ms));
        entry.insert(conn.clone());
        self.placement.set_open(self.id, conns.len());
        if !adopted {
            self.stats.borrow_mut().connections_accepted += 1;
        }
        Ok(conn)
    }

    /// Forgets a closed connection and withdraws its subscriptions.
    pub(crate) fn unregister(&self, conn: &ConnShared) {
        // Its memberships leave, goodbye or not (specs/presence.md).
        let (mut deltas, mut events) = (Vec::new(), Vec::new());
        self.presence
            .borrow_mut()
            .close(conn.id, &mut deltas, &mut events);
        self.presence_out(deltas, events);
        let mut updates = self.interest_out.borrow_mut();
        self.router.borrow_mut().remove_conn(conn.id, &mut updates);
        self.broadcast(&mut updates);
        drop(updates);
        conn.release_quota();
        if let Some(tenant) = conn.tenant() {
            self.placement.closed(tenant, self.id);
        }
        let idx = conn_index(conn.id);
        let mut conns = self.conns.borrow_mut();
        if conns.get(idx).is_some_and(|c| c.id == conn.id) {
            conns.remove(idx);
        }
        self.placement.set_open(self.id, conns.len());
        if !conn.moved.get() {
            self.stats.borrow_mut().connections_closed += 1;
        }
        let empty = conns.is_empty();
        drop(conns);
        self.after_batch();
        if empty && self.shutdown.is_set() {
            self.stopped.set();
        }
    }

    /// Sends presence deltas to every other shard and events to this
    /// shard's watches.
    pub(crate) fn presence_out(
        &self,
        deltas: Vec<arqonbus_core::presence::Delta>,
        events: Vec<arqonbus_core::presence::PresenceEvent>,
    ) {
        if !deltas.is_empty() {
            let deltas: Arc<[arqonbus_core::presence::Delta]> = deltas.into();
            for (i, peer) in self.peers.iter().enumerate() {
                if i != self.id.index() {
                    let _ = peer.send(Command::Presence(deltas.clone()));
                }
            }
        }
        self.presence_events(events);
    }

    /// Queues each event as a `PresenceEvent` frame to its watching
    /// connection.
    pub(crate) fn presence_events(&self, events: Vec<arqonbus_core::presence::PresenceEvent>) {
        if events.is_empty() {
            return;
        }
        let conns = self.conns.borrow();
        for e in events {
            let Some(c) = Self::conn(&conns, e.conn) else {
                continue;
            };
            if c.closing.get() {
                continue;
            }
            let action = match e.action {
                arqonbus_core::presence::Action::Join => v1::PresenceAction::Join,
                arqonbus_core::presence::Action::Leave => v1::PresenceAction::Leave,
            };
            c.out
                .borrow_mut()
                .push_frame(&Kind::PresenceEvent(v1::PresenceEvent {
                    watch_id: e.watch,
                    subject: e.subject,
                    action: action.into(),
                    member: Some(e.member.to_wire()),
                }));
            c.wake();
        }
    }

    pub(crate) fn conn(conns: &Slab<Rc<ConnShared>>, id: ConnId) -> Option<&Rc<ConnShared>> {
        conns.get(conn_index(id)).filter(|c| c.id == id)
    }

    /// Queues a control frame for `id` and wakes it.
    pub(crate) fn send_frame(&self, id: ConnId, kind: &Kind) {
        let conns = self.conns.borrow();
        if let Some(c) = Self::conn(&conns, id) {
            c.out.borrow_mut().push_frame(kind);
            c.wake();
        }
    }

    /// The `Welcome` for a freshly authenticated connection.
    pub(crate) fn welcome(&self, conn: ConnId, tenant: &str, max_payload: u32) -> Kind {
        let config = self.config.borrow();
        let l = config.limits();
        Kind::Welcome(v1::Welcome {
            protocol_version: arqonbus_proto::PROTOCOL_VERSION,
            protocol_minor: arqonbus_proto::PROTOCOL_MINOR,
            server_id: self.cfg.server_id.clone(),
            session_id: conn.0,
            limits: Some(v1::Limits {
                max_payload,
                max_frame: l.max_frame(),
                max_subscriptions: l.max_subscriptions,
                max_headers: l.max_headers,
                max_subject_len: l.max_subject_len,
                ping_interval_ms: u32::try_from(l.ping_interval_ms).unwrap_or(u32::MAX),
                max_pending_bytes: l.max_pending_bytes,
            }),
            shard: u32::from(self.id.0),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            tenant: tenant.to_owned(),
        })
    }

    // ---- operator commands -------------------------------------------------

    fn command(self: &Rc<Self>, cmd: Command) {
        match cmd {
            Command::Presence(deltas) => {
                let mut events = Vec::new();
                {
                    let mut presence = self.presence.borrow_mut();
                    for d in deltas.iter() {
                        presence.apply(d, &mut events);
                    }
                }
                self.presence_events(events);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.current_stats());
            }
            Command::Apply(snapshot, reply) => {
                self.apply(snapshot);
                let _ = reply.send(self.config.borrow().epoch());
            }
            Command::Connections(reply) => {
                let router = self.router.borrow();
                let list = self
                    .conns
                    .borrow()
                    .iter()
                    .map(|(_, c)| c.info(self.id, router.subscription_count(c.id)))
                    .collect();
                let _ = reply.send(list);
            }
            Command::Kick(id, reply) => {
                let conns = self.conns.borrow();
                let found = Self::conn(&conns, ConnId(id));
                if let Some(c) = found {
                    c.raise(Flag::Kick);
                }
                let _ = reply.send(found.is_some());
            }
            Command::Drain { close_listener } => self.drain(close_listener),
            Command::MoveTenant { tenant, window } => {
                self.send_away(
                    window,
                    "tenant moved to another shard",
                    Some(tenant),
                    Spread::ByConnection,
                );
            }
            Command::Adopt(handoff) => {
                glommio::spawn_local(conn::adopt(self.clone(), handoff)).detach();
            }
            Command::LameDuck(window) => self.lame_duck(window),
            Command::HandOff(window) => self.hand_off(window),
            Command::Resume => self.resume(),
            Command::Status(reply) => {
                let _ = reply.send(ShardStatus {
                    id: self.id.0,
                    draining: self.draining.get(),
                    connections: self.conns.borrow().len() as u64,
                    subscriptions: self.router.borrow().local_subscriptions() as u64,
                    config_epoch: self.config.borrow().epoch(),
                    moved_in: self.stats.borrow().moved_in,
                    moved_out: self.stats.borrow().moved_out,
                });
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            Command::RateReport(reply) => {
                let _ = reply.send(self.throttle.borrow_mut().rates().report());
            }
            Command::RateShares(shares) => {
                self.throttle
                    .borrow_mut()
                    .rates()
                    .set_shares(&shares, Instant::now());
            }
            Command::Shutdown => {
                tracing::info!(shard = %self.id, "shutting down");
                self.shutdown.set();
                self.stop_listening();
                let conns = self.conns.borrow();
                if conns.is_empty() {
                    self.stopped.set();
                }
                for (_, c) in conns.iter() {
                    c.raise(Flag::Shutdown);
                }
            }
        }
    }

    /// The cell of per-tenant figures for `tenant`.
    pub(crate) fn tenant_cell(&self, tenant: TenantId) -> Rc<TenantCell> {
        self.tenant_stats
            .borrow_mut()
            .entry(tenant)
            .or_default()
            .clone()
    }

    /// The counters with the gauges (connections, subscriptions, ring
    /// occupancy) read now.
    fn current_stats(&self) -> ShardStats {
        let mut stats = *self.stats.borrow();
        stats.connections = self.conns.borrow().len() as u64;
        stats.subscriptions = self.router.borrow().local_subscriptions() as u64;
        stats.ws_connections = self
            .conns
            .borrow()
            .iter()
            .filter(|(_, c)| c.ws.get())
            .count() as u64;
        stats.ring_used = self
            .links
            .borrow()
            .iter()
            .map(|l| (l.ring_used() + l.overflow_len()) as u64)
            .sum();
        let presence = self.presence.borrow().gauges();
        stats.presence_subjects = presence.subjects;
        stats.presence_members = presence.members;
        stats.presence_local_members = presence.local_members;
        stats.presence_watches = presence.watches;
        stats
    }

    fn metrics(&self) -> ShardMetrics {
        let stats = self.current_stats();
        ShardMetrics {
            shard: self.id.0,
            stats,
            errors: *self.errors.borrow(),
            tenants: self
                .tenant_stats
                .borrow()
                .iter()
                .map(|(t, c)| (*t, c.get()))
                .collect(),
            outbound_bytes: self
                .conns
                .borrow()
                .iter()
                .map(|(_, c)| c.out.borrow().held() as u64)
                .sum(),
            deliver_latency: self.deliver_latency.borrow().clone(),
            handshake_latency: self.handshake_latency.borrow().clone(),
        }
    }

    /// A new snapshot: the connections it touches re-check their credential
    /// and rights.
    fn apply(&self, snapshot: Arc<ConfigSnapshot>) {
        let epoch = snapshot.epoch();
        let running = self.config.borrow().epoch();
        if epoch <= running {
            tracing::debug!(shard = %self.id, epoch, "stale snapshot ignored");
            return;
        }
        // New presence bounds apply to the next track and watch; what is
        // listed stays (specs/presence.md).
        self.presence
            .borrow_mut()
            .set_limits(snapshot.limits().presence());
        // Only the sessions the change touches re-check (all of them when
        // the snapshot does not say what changed since the one running).
        let mut rechecked = 0_usize;
        for (_, c) in self.conns.borrow().iter() {
            if snapshot.rechecks(running, c.tenant(), c.principal()) {
                c.raise(Flag::Reauthorize);
                rechecked += 1;
            }
        }
        *self.config.borrow_mut() = snapshot;
        self.throttle.borrow_mut().rates().reset();
        tracing::debug!(shard = %self.id, epoch, rechecked, "configuration applied");
    }

    /// Spreads closes over `window` so clients do not all reconnect at once;
    /// each is told first with a `Drain` notice.
    fn lame_duck(&self, window: Duration) {
        self.draining.set(true);
        self.stop_listening();
        self.send_away(window, "server shutting down", None, Spread::ByConnection);
    }

    /// An upgrade hand-over: the new process's listeners (and its steering
    /// program) take new clients, so both listeners stop here (what was
    /// still queued on them is reset: the steering program sent nothing new
    /// here since the new process attached it), and every client is told to
    /// reconnect, spread over `window`, which brings it to the new process.
    /// A tenant's clients move together ([`Spread::ByTenant`]): clients of
    /// one tenant talk only to each other, so none of them is left on the
    /// old process while its peers publish on the new one.
    fn hand_off(&self, window: Duration) {
        self.draining.set(true);
        self.stop_listening();
        stop_listener(&self.ws_stop, self.ws_fd.get());
        self.send_away(
            window,
            "server upgrading: reconnect",
            None,
            Spread::ByTenant,
        );
    }

    /// Tells connections (all, or those of `tenant`) to move with a `Drain`
    /// notice, and closes each at a fixed point of `window` so they do not
    /// all reconnect at once.
    fn send_away(&self, window: Duration, reason: &str, tenant: Option<TenantId>, spread: Spread) {
        let now = Instant::now();
        let deadline_ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX);
        let notice = Kind::Drain(v1::Drain {
            deadline_ms,
            reason: reason.into(),
        });
        let conns = self.conns.borrow();
        tracing::info!(shard = %self.id, connections = conns.len(), tenant = tenant.map(|t| t.0), ?window, reason, "moving clients away");
        for (_, c) in conns.iter() {
            if c.tenant().is_none() {
                // No session yet, so no `Drain` before its `Welcome`: a lame
                // duck refuses it (SERVER_SHUTTING_DOWN as its first frame);
                // moving one tenant away does not concern it.
                if tenant.is_none() {
                    c.raise(Flag::Shutdown);
                }
                continue;
            }
            if tenant.is_some() && c.tenant() != tenant {
                continue;
            }
            // A fixed point of the window: a hash of the connection's id, or
            // of its tenant's (the same on every shard).
            let key = match spread {
                Spread::ByConnection => c.id.0,
                Spread::ByTenant => c.tenant().map_or(c.id.0, |t| t.0),
            };
            let point =
                (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
            let at = now + window.mul_f64(point);
            c.out.borrow_mut().push_frame(&notice);
            c.lame_at.set(Some(at));
            c.deadline
                .set(Some(c.deadline.get().map_or(at, |d| d.min(at))));
            c.wake();
        }
    }

    fn drain(&self, close_listener: bool) {
        if self.draining.replace(true) {
            return;
        }
        if close_listener {
            tracing::info!(shard = %self.id, "draining: listener closed (no steering program), closing connections");
            self.stop_listening();
        } else {
            tracing::info!(shard = %self.id, "draining: steered away, accept queue still served, closing connections");
        }
        for (_, c) in self.conns.borrow().iter() {
            // With the listener open, a connection still authenticating
            // finishes and is handed to a shard not drained (placement
            // never picks a drained one), so it is not refused.
            if close_listener || c.tenant().is_some() {
                c.raise(Flag::Shutdown);
            }
        }
    }

    /// Stops the listener now: `shutdown(SHUT_RD)` on a listening socket
    /// takes it out of the `SO_REUSEPORT` group at once (new connections go
    /// to the other shards) and resets what was queued on it; the accept
    /// loop then ends and closes it.
    fn stop_listening(&self) {
        stop_listener(&self.accept_stop.borrow(), self.listen_fd.get());
    }

    /// The connections waiting in this shard's accept queue.
    fn accept_queue(&self) -> u64 {
        let Some(fd) = self.listen_fd.get() else {
            return 0;
        };
        // SAFETY: `tcp_info` is plain data; the kernel writes at most `len`
        // bytes of it. `fd` is the listener the accept loop still owns.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &raw mut len,
            );
            // On a listener, tcpi_unacked is the accept queue's length.
            if rc == 0 {
                u64::from(info.tcpi_unacked)
            } else {
                0
            }
        }
    }

    fn resume(self: &Rc<Self>) {
        if !self.draining.get() || self.shutdown.is_set() {
            return;
        }
        if self.listen_fd.get().is_some() {
            // Steered away only: the listener never closed.
            self.draining.set(false);
            tracing::info!(shard = %self.id, "resumed");
            return;
        }
        match listen_again(self.cfg.listen) {
            Ok(fd) => {
                // SAFETY: `fd` is the fresh listener, open until the accept
                // loop below closes it.
                self.placement
                    .replace_socket(self.id, unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) });
                // SAFETY: a fresh, bound, listening socket owned by us.
                let listener = unsafe { TcpListener::from_raw_fd(fd) };
                let stop = Rc::new(Latch::default());
                *self.accept_stop.borrow_mut() = stop.clone();
                self.listen_fd.set(Some(fd));
                self.draining.set(false);
                glommio::spawn_local(accept_loop(self.clone(), listener, stop)).detach();
                tracing::info!(shard = %self.id, "resumed");
            }
            Err(e) => tracing::error!(shard = %self.id, error = %e, "cannot listen again"),
        }
    }
}

/// Stops an accept loop: sets its latch and, while the loop still owns its
/// listener (`fd`), shuts the listener's read side, which fails the pending
/// accept and takes it out of its `SO_REUSEPORT` group.
fn stop_listener(stop: &Latch, fd: Option<RawFd>) {
    stop.set();
    if let Some(fd) = fd {
        // SAFETY: `fd` is a listening socket its accept loop still owns (each
        // loop clears its fd before closing the listener); shutdown does not
        // close or invalidate the descriptor.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RD);
        }
    }
}

/// A new `SO_REUSEPORT` listener on `addr`, joining the shards' group.
fn listen_again(addr: SocketAddr) -> std::io::Result<RawFd> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into_raw_fd())
}
