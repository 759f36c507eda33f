//! One shard: a pinned glommio executor and everything it owns.
//!
//! A [`Shard`] owns its connections, its [`Router`], its end of the mesh and
//! its counters. Nothing here is shared with another thread except through
//! the rings, the doorbell and the command channel; every `RefCell` is
//! borrowed only between two `await` points, never across one.
//!
//! Tasks on the executor:
//! - the accept loop (one `SO_REUSEPORT` listener per shard);
//! - one task per connection ([`crate::conn`]);
//! - the mesh loop: drains rings from the other shards and operator commands,
//!   then parks on the doorbell;
//! - the tick loop: flags connections whose deadline passed (keep-alive,
//!   auth timeout, close grace).
//!
//! The subscription barrier: every interest update this shard sends carries
//! an increasing `seq`; peers acknowledge the highest `seq` they applied. A
//! client's `Ping` is answered once every peer acknowledged the `seq` current
//! when the `Ping` arrived, so after `Pong` its subscriptions are live
//! everywhere.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use arqonbus_core::auth::AuthSnapshot;
use arqonbus_core::limits::Limits;
use arqonbus_core::router::{
    Delivery, InterestUpdate, Origin, RoutePlan, Router, SubscriptionError,
};
use arqonbus_core::session::{Publish, Rejection};
use arqonbus_core::stats::ShardStats;
use arqonbus_core::subject::{Pattern, QueueGroup};
use arqonbus_core::{ConnId, ShardId, Sid, TenantId};
use arqonbus_proto::codec::MessageTemplate;
use arqonbus_proto::v1::{self, ErrorCode, MessageStatus, frame::Kind};
use bytes::Bytes;
use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, UnixStream};
use slab::Slab;

use crate::conn::{self, ConnShared, Flag};
use crate::doorbell::Doorbell;
use crate::mesh::{Inbox, Link, PeerMsg, RemoteMessage, ShardMesh};

/// Messages from the operator (the [`crate::DataPlane`] handle) to a shard.
#[derive(Debug)]
pub(crate) enum Command {
    /// Reply with a copy of the shard's counters.
    Stats(crossbeam_channel::Sender<ShardStats>),
    /// Use this credential snapshot for new connections.
    UpdateAuth(Arc<AuthSnapshot>),
    /// Stop accepting, close every connection, then stop.
    Shutdown,
}

/// Settings every shard shares, fixed for the process's life.
pub(crate) struct ShardConfig {
    pub(crate) limits: Limits,
    pub(crate) server_id: String,
    pub(crate) tls: Option<futures_rustls::TlsAcceptor>,
    pub(crate) read_chunk: usize,
    pub(crate) tick: Duration,
    pub(crate) overflow_limit: usize,
    pub(crate) shards: usize,
}

impl std::fmt::Debug for ShardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardConfig")
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .field("shards", &self.shards)
            .finish_non_exhaustive()
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
    pub(crate) auth: RefCell<Arc<AuthSnapshot>>,
    router: RefCell<Router>,
    conns: RefCell<Slab<Rc<ConnShared>>>,
    next_conn: Cell<u32>,
    /// Links to the other shards, in shard order (this shard skipped).
    links: RefCell<Vec<Link>>,
    pub(crate) stats: RefCell<ShardStats>,
    plan: RefCell<RoutePlan>,
    template: RefCell<MessageTemplate>,
    interest_out: RefCell<Vec<InterestUpdate>>,
    /// Sequence number of the last interest update this shard sent.
    interest_seq: Cell<u64>,
    /// Highest of our interest updates each shard has applied (by index).
    acked: RefCell<Vec<u64>>,
    /// Highest interest update from each shard we applied and not yet acked.
    acks_due: RefCell<Vec<Option<u64>>>,
    /// Pongs waiting for the barrier: (required seq, connection).
    pending_pongs: RefCell<VecDeque<(u64, ConnId)>>,
    backpressure: Cell<bool>,
    bp_waiters: RefCell<Vec<Waker>>,
    /// The mesh loop, while it is parked: woken when a ring overflows, since
    /// only the mesh loop retries overflowed messages.
    mesh_waker: Cell<Option<Waker>>,
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
    pub(crate) auth: Arc<AuthSnapshot>,
    pub(crate) listener: std::os::fd::OwnedFd,
    pub(crate) mesh: ShardMesh,
    pub(crate) doorbell: Arc<Doorbell>,
    pub(crate) bell_rx: std::os::fd::OwnedFd,
    pub(crate) commands: crossbeam_channel::Receiver<Command>,
    pub(crate) seed: u64,
}

/// The `Send` form of [`ShardConfig`], turned into an `Rc` on the shard.
#[derive(Debug)]
pub(crate) struct ShardConfigSend {
    pub(crate) limits: Limits,
    pub(crate) server_id: String,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) read_chunk: usize,
    pub(crate) tick: Duration,
    pub(crate) overflow_limit: usize,
    pub(crate) shards: usize,
}

/// Runs a shard until it is shut down. Called on the shard's executor.
pub(crate) async fn run(init: ShardInit, ready: crossbeam_channel::Sender<ShardId>) {
    use std::os::fd::{FromRawFd, IntoRawFd};

    let ShardInit {
        id,
        cfg,
        auth,
        listener,
        mesh,
        doorbell,
        bell_rx,
        commands,
        seed,
    } = init;
    let cfg = Rc::new(ShardConfig {
        limits: cfg.limits.clone(),
        server_id: cfg.server_id.clone(),
        tls: cfg.tls.clone().map(futures_rustls::TlsAcceptor::from),
        read_chunk: cfg.read_chunk,
        tick: cfg.tick,
        overflow_limit: cfg.overflow_limit,
        shards: cfg.shards,
    });
    // SAFETY: both descriptors were created for this shard, are open, and
    // ownership moves into the glommio objects here.
    let (listener, bell) = unsafe {
        (
            TcpListener::from_raw_fd(listener.into_raw_fd()),
            UnixStream::from_raw_fd(bell_rx.into_raw_fd()),
        )
    };
    let n = cfg.shards;
    let shard = Rc::new(Shard {
        id,
        cfg,
        auth: RefCell::new(auth),
        router: RefCell::new(Router::new(id, seed)),
        conns: RefCell::new(Slab::new()),
        next_conn: Cell::new(0),
        links: RefCell::new(mesh.links),
        stats: RefCell::new(ShardStats::default()),
        plan: RefCell::new(RoutePlan::default()),
        template: RefCell::new(MessageTemplate::new()),
        interest_out: RefCell::new(Vec::new()),
        interest_seq: Cell::new(0),
        acked: RefCell::new(vec![0; n]),
        acks_due: RefCell::new(vec![None; n]),
        pending_pongs: RefCell::new(VecDeque::new()),
        backpressure: Cell::new(false),
        bp_waiters: RefCell::new(Vec::new()),
        mesh_waker: Cell::new(None),
        shutdown: Latch::default(),
        stopped: Latch::default(),
    });
    tracing::info!(shard = %id, "shard started");
    glommio::spawn_local(accept_loop(shard.clone(), listener)).detach();
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

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.shutdown.wait().await;
            None
        })
        .await;
        match next {
            None => break,
            Some(Ok(stream)) => {
                glommio::spawn_local(conn::serve(shard.clone(), stream)).detach();
            }
            Some(Err(e)) => {
                // Typically EMFILE/ENFILE: back off instead of spinning.
                tracing::warn!(shard = %shard.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tracing::debug!(shard = %shard.id, "listener closed");
}

async fn tick_loop(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(shard.cfg.tick).await;
        let now = Instant::now();
        for (_, c) in shard.conns.borrow().iter() {
            if c.deadline.get().is_some_and(|d| d <= now) {
                c.raise(Flag::Tick);
            }
        }
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

impl Shard {
    // ---- connections -------------------------------------------------

    /// Registers a new connection, or says why it is refused.
    pub(crate) fn register(&self) -> Result<Rc<ConnShared>, Rejection> {
        let mut conns = self.conns.borrow_mut();
        let refusal = if self.shutdown.is_set() {
            Some((ErrorCode::ServerShuttingDown, "server shutting down"))
        } else if conns.len() >= self.cfg.limits.max_connections_per_shard as usize {
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
                detail,
            });
        }
        let generation = self.next_conn.get().wrapping_add(1);
        self.next_conn.set(generation);
        let entry = conns.vacant_entry();
        let id = ConnId((u64::from(generation) << 32) | entry.key() as u64);
        let conn = Rc::new(ConnShared::new(id));
        entry.insert(conn.clone());
        self.stats.borrow_mut().connections_accepted += 1;
        Ok(conn)
    }

    /// Forgets a closed connection and withdraws its subscriptions.
    pub(crate) fn unregister(&self, conn: &ConnShared) {
        let mut updates = self.interest_out.borrow_mut();
        self.router.borrow_mut().remove_conn(conn.id, &mut updates);
        self.broadcast(&mut updates);
        drop(updates);
        let idx = (conn.id.0 & 0xffff_ffff) as usize;
        let mut conns = self.conns.borrow_mut();
        if conns.get(idx).is_some_and(|c| c.id == conn.id) {
            conns.remove(idx);
        }
        self.stats.borrow_mut().connections_closed += 1;
        let empty = conns.is_empty();
        drop(conns);
        self.after_batch();
        if empty && self.shutdown.is_set() {
            self.stopped.set();
        }
    }

    fn conn(conns: &Slab<Rc<ConnShared>>, id: ConnId) -> Option<&Rc<ConnShared>> {
        conns
            .get((id.0 & 0xffff_ffff) as usize)
            .filter(|c| c.id == id)
    }

    /// Queues a control frame for `id` and wakes it.
    fn send_frame(&self, id: ConnId, kind: &Kind) {
        let conns = self.conns.borrow();
        if let Some(c) = Self::conn(&conns, id) {
            c.out.borrow_mut().push_frame(kind);
            c.wake();
        }
    }

    /// The `Welcome` for a freshly authenticated connection.
    pub(crate) fn welcome(&self, conn: ConnId, tenant: &str) -> Kind {
        let l = &self.cfg.limits;
        Kind::Welcome(v1::Welcome {
            protocol_version: arqonbus_proto::PROTOCOL_VERSION,
            server_id: self.cfg.server_id.clone(),
            session_id: conn.0,
            limits: Some(v1::Limits {
                max_payload: l.max_payload,
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

    // ---- subscriptions and the barrier ---------------------------------

    pub(crate) fn subscribe(
        &self,
        tenant: TenantId,
        conn: ConnId,
        sid: Sid,
        pattern: Pattern,
        queue: Option<QueueGroup>,
    ) -> Result<(), SubscriptionError> {
        let mut updates = self.interest_out.borrow_mut();
        self.router.borrow_mut().subscribe(
            tenant,
            conn,
            sid,
            pattern,
            queue,
            self.cfg.limits.max_subscriptions,
            &mut updates,
        )?;
        self.broadcast(&mut updates);
        Ok(())
    }

    pub(crate) fn unsubscribe(
        &self,
        conn: ConnId,
        sid: Sid,
        after: u64,
    ) -> Result<(), SubscriptionError> {
        let mut updates = self.interest_out.borrow_mut();
        self.router
            .borrow_mut()
            .unsubscribe(conn, sid, after, &mut updates)?;
        self.broadcast(&mut updates);
        Ok(())
    }

    /// Sends interest updates to every peer, numbering them.
    fn broadcast(&self, updates: &mut Vec<InterestUpdate>) {
        if updates.is_empty() {
            return;
        }
        let mut links = self.links.borrow_mut();
        let mut full = 0;
        for update in updates.drain(..) {
            let seq = self.interest_seq.get() + 1;
            self.interest_seq.set(seq);
            for link in links.iter_mut() {
                if !link.send(PeerMsg::Interest {
                    seq,
                    update: update.clone(),
                }) {
                    full += 1;
                }
            }
        }
        if full > 0 {
            self.stats.borrow_mut().ring_full += full;
            self.wake_mesh();
        }
    }

    /// A ring overflowed: make sure the mesh loop retries it.
    fn wake_mesh(&self) {
        if let Some(w) = self.mesh_waker.take() {
            w.wake();
        }
    }

    fn min_acked(&self) -> u64 {
        let acked = self.acked.borrow();
        self.links
            .borrow()
            .iter()
            .map(|l| acked[l.peer.index()])
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Answers a client's `Ping` now, or when the barrier allows.
    pub(crate) fn pong(&self, conn: &ConnShared) {
        let seq = self.interest_seq.get();
        if seq <= self.min_acked() {
            conn.out.borrow_mut().push_frame(&Kind::Pong(v1::Pong {}));
        } else {
            self.pending_pongs.borrow_mut().push_back((seq, conn.id));
        }
    }

    fn release_pongs(&self) {
        let min = self.min_acked();
        loop {
            let next = {
                let mut pending = self.pending_pongs.borrow_mut();
                match pending.front() {
                    Some(&(seq, id)) if seq <= min => {
                        pending.pop_front();
                        id
                    }
                    _ => break,
                }
            };
            self.send_frame(next, &Kind::Pong(v1::Pong {}));
        }
    }

    // ---- publishing ------------------------------------------------------

    /// Routes a message published by `conn`.
    pub(crate) fn publish(&self, tenant: TenantId, conn: ConnId, echo: bool, msg: Publish) {
        {
            let mut stats = self.stats.borrow_mut();
            stats.msgs_in += 1;
            stats.bytes_in += msg.payload.len() as u64;
        }
        let mut plan = self.plan.borrow_mut();
        self.router.borrow_mut().route(
            tenant,
            &msg.subject,
            Origin::Local { conn, echo },
            &mut plan,
        );
        self.broadcast(&mut plan.interest);

        if plan.is_empty() {
            if let Some(reply) = &msg.reply {
                self.router
                    .borrow_mut()
                    .route_to_conn(tenant, reply, conn, &mut plan);
                self.broadcast(&mut plan.interest);
                let mut t = self.template.borrow_mut();
                t.prepare(
                    reply.as_bytes(),
                    b"",
                    &[],
                    MessageStatus::NoResponders.into(),
                    0,
                );
                self.deliver(&plan.local, &t, &Bytes::new());
                self.stats.borrow_mut().no_responders += 1;
            }
            return;
        }

        if !plan.local.is_empty() {
            let mut t = self.template.borrow_mut();
            t.prepare(
                msg.subject.as_bytes(),
                msg.reply.as_ref().map_or(&[][..], |r| r.as_bytes()),
                &msg.headers,
                MessageStatus::Ok.into(),
                msg.payload.len(),
            );
            self.deliver(&plan.local, &t, &msg.payload);
        }
        if !plan.remote.is_empty() {
            let mut links = self.links.borrow_mut();
            let mut stats = self.stats.borrow_mut();
            let last = plan.remote.len() - 1;
            let mut msg = Some(msg);
            for (i, copy) in plan.remote.drain(..).enumerate() {
                // The last copy takes the message itself, the others clone
                // it (reference counts only).
                let m = if i == last { msg.take() } else { msg.clone() };
                let Some(m) = m else { break };
                let Some(link) = links.iter_mut().find(|l| l.peer == copy.shard) else {
                    continue;
                };
                stats.remote_out += 1;
                if !link.send(PeerMsg::Deliver(Box::new(RemoteMessage {
                    tenant,
                    subject: m.subject,
                    reply: m.reply,
                    headers: m.headers,
                    payload: m.payload,
                    groups: copy.groups,
                }))) {
                    stats.ring_full += 1;
                    self.wake_mesh();
                }
            }
        }
    }

    /// Queues one message for each delivery; flags slow consumers.
    fn deliver(&self, deliveries: &[Delivery], template: &MessageTemplate, payload: &Bytes) {
        let conns = self.conns.borrow();
        let mut stats = self.stats.borrow_mut();
        let max = usize::try_from(self.cfg.limits.max_pending_bytes).unwrap_or(usize::MAX);
        for d in deliveries {
            let Some(c) = Self::conn(&conns, d.conn) else {
                continue;
            };
            if c.closing.get() {
                continue;
            }
            let mut out = c.out.borrow_mut();
            if out.pending() + template.frame_len(d.sid.0) > max {
                drop(out);
                c.closing.set(true);
                c.raise(Flag::SlowConsumer);
                stats.slow_consumers += 1;
                continue;
            }
            out.push_message(template, d.sid.0, payload);
            drop(out);
            stats.msgs_out += 1;
            stats.bytes_out += payload.len() as u64;
            c.wake();
        }
    }

    // ---- the mesh ----------------------------------------------------------

    fn on_peer(&self, from: ShardId, msg: PeerMsg) {
        match msg {
            PeerMsg::Interest { seq, update } => {
                self.router.borrow_mut().apply_interest(from, &update);
                self.acks_due.borrow_mut()[from.index()] = Some(seq);
            }
            PeerMsg::InterestAck { seq } => {
                let mut acked = self.acked.borrow_mut();
                let slot = &mut acked[from.index()];
                *slot = (*slot).max(seq);
                drop(acked);
                self.release_pongs();
            }
            PeerMsg::Deliver(m) => self.on_remote_message(&m),
        }
    }

    fn on_remote_message(&self, m: &RemoteMessage) {
        self.stats.borrow_mut().remote_in += 1;
        let mut plan = self.plan.borrow_mut();
        self.router.borrow_mut().route(
            m.tenant,
            &m.subject,
            Origin::Remote { groups: &m.groups },
            &mut plan,
        );
        self.broadcast(&mut plan.interest);
        self.stats.borrow_mut().queue_misses += u64::from(plan.missed_groups);
        if plan.local.is_empty() {
            return;
        }
        let mut t = self.template.borrow_mut();
        t.prepare(
            m.subject.as_bytes(),
            m.reply.as_ref().map_or(&[][..], |r| r.as_bytes()),
            &m.headers,
            MessageStatus::Ok.into(),
            m.payload.len(),
        );
        self.deliver(&plan.local, &t, &m.payload);
    }

    /// End of a batch of work: acknowledge interest, push overflow into the
    /// rings, ring the peers' doorbells, update back-pressure.
    pub(crate) fn after_batch(&self) {
        {
            let mut due = self.acks_due.borrow_mut();
            let mut links = self.links.borrow_mut();
            for link in links.iter_mut() {
                if let Some(seq) = due[link.peer.index()].take()
                    && !link.send(PeerMsg::InterestAck { seq })
                {
                    self.wake_mesh();
                }
            }
            let mut over = false;
            for link in links.iter_mut() {
                link.flush();
                over |= link.overflow_len() > self.cfg.overflow_limit;
            }
            let was = self.backpressure.replace(over);
            if was && !over {
                for w in self.bp_waiters.take() {
                    w.wake();
                }
            }
        }
    }

    fn has_overflow(&self) -> bool {
        self.links.borrow().iter().any(|l| l.overflow_len() > 0)
    }

    /// While the rings are overloaded, connections stop reading (they park
    /// here) so TCP pushes back on publishers.
    pub(crate) fn backpressured(&self, waker: &Waker) -> bool {
        if self.backpressure.get() {
            self.bp_waiters.borrow_mut().push(waker.clone());
            true
        } else {
            false
        }
    }

    // ---- operator commands -------------------------------------------------

    fn command(&self, cmd: Command) {
        match cmd {
            Command::Stats(reply) => {
                let mut s = *self.stats.borrow();
                s.connections = self.conns.borrow().len() as u64;
                s.subscriptions = self.router.borrow().local_subscriptions() as u64;
                let ring_used: usize = self.links.borrow().iter().map(Link::ring_used).sum();
                tracing::trace!(shard = %self.id, ring_used, "stats requested");
                let _ = reply.send(s);
            }
            Command::UpdateAuth(auth) => {
                tracing::info!(shard = %self.id, epoch = auth.epoch(), "credentials updated");
                *self.auth.borrow_mut() = auth;
            }
            Command::Shutdown => {
                tracing::info!(shard = %self.id, "shutting down");
                self.shutdown.set();
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
}
