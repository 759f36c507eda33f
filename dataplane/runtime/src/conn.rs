//! One connection's tasks: the TLS handshake or WebSocket upgrade in a
//! short-lived one ([`serve`]), then, for the rest of its life, [`Life`]: a
//! single poll loop that writes queued frames and reads and processes many
//! frames per read.
//!
//! The task owns the socket, the receive buffer and the [`Session`]. What
//! other tasks of the shard may touch lives in [`ConnShared`]: the outbound
//! queue (deliveries append to it), a waker, flags (tick, slow consumer,
//! shutdown, kick, re-authorise), what operators see in listings, and the
//! connection's quota holds. One task at a time per connection, reading and writing
//! from the same poll, means the socket is never shared and no wake-up is
//! lost.
//!
//! Authorisation is decided by the core (`arqonbus_core::authorize`), with
//! the identity the session resolved, and carried out here: permissions
//! before a publish or subscribe (`authorize::publish`, `subscribe`), quotas
//! when the session opens and on each subscription (`authorize::connect`,
//! `subscribe`, counting in the shared [`Holds`]), rate limits and publisher
//! stalls before a publish is routed (the shard's `Throttle::admit`). A
//! refusal is answered with the error frame the decision names. A publish
//! that must wait is held, with a timer, and reading stops until it has
//! gone: throttling is back-pressure, nothing is dropped. The connection's
//! one-shot reply permissions (`authorize::ReplyPermissions`) live in its
//! [`ConnShared`], since deliveries from other tasks grant them.
//!
//! Placement: when a session authenticates, its tenant's home shard is
//! asked for (`PlacementBook::place`). If it is another shard, the task
//! stops before `Welcome`, takes the connection apart (socket, TLS session,
//! bytes read but not processed, the authenticated [`Session`]) and hands it
//! to the home shard as a [`Handoff`]; [`adopt`] serves it there, starting
//! with the `Welcome`. A connection moves at most once, and nothing it sent
//! after `Connect` is processed before the move.
//!
//! Closing: a fatal error frame is queued, reading stops, the queue is
//! flushed within `close_grace`, the write side is shut down, and the input
//! is drained briefly so the peer reads the error before the socket closes.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arqonbus_core::authorize::{self, Admission, Decision, Denial, ReplyPermissions};
use arqonbus_core::ops::ConnectionInfo;
use arqonbus_core::placement::Placed;
use arqonbus_core::router::SubscriptionError;
use arqonbus_core::session::{
    Checked, Event, Now, Publish, PublishRef, Rejection, Session, State, Step,
};
use arqonbus_core::snapshot::{Identity, PrincipalEntry, SlowConsumerPolicy};
use arqonbus_core::throttle::{Attempt, ThrottleReason, Verdict};
use arqonbus_core::{ConnId, PrincipalId, ShardId, Sid, TenantId};
use arqonbus_proto::codec::{self, Decoded, LEN_PREFIX};
use arqonbus_proto::v1::{self, ErrorCode, frame::Kind};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;

use crate::instant_cell::InstantCell;
use crate::outbound::Outbound;
use crate::quota::Holds;
use crate::readbuf::ReadBuf;
use crate::shard::{Shard, TenantCell};
use crate::transport::{PlainStream, Transport, TransportParts};

/// Reasons another task asks a connection's task to look at it.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum Flag {
    /// A deadline passed (keep-alive, auth timeout, expiry, close grace), or
    /// a publisher stall ended early.
    Tick = 1,
    /// Its outbound queue overflowed.
    SlowConsumer = 2,
    /// The server is stopping or the shard is draining.
    Shutdown = 4,
    /// An operator asked to close it.
    Kick = 8,
    /// A new configuration snapshot was applied.
    Reauthorize = 16,
}

/// The part of a connection other tasks of the shard may touch.
pub(crate) struct ConnShared {
    pub(crate) id: ConnId,
    pub(crate) out: RefCell<Outbound>,
    waker: Cell<Option<Waker>>,
    flags: Cell<u8>,
    /// When the tick loop should raise [`Flag::Tick`] (a plain `Cell`:
    /// set once per read batch, where an [`InstantCell`]'s conversion
    /// showed in the publish path's instruction count).
    pub(crate) deadline: Cell<Option<Instant>>,
    /// No more deliveries: the connection is closing.
    pub(crate) closing: Cell<bool>,
    /// Lame duck: when to close this connection.
    pub(crate) lame_at: InstantCell,
    peer: Option<SocketAddr>,
    /// Handed to its tenant's home shard: not closed, only gone from here.
    pub(crate) moved: Cell<bool>,
    /// Came through the WebSocket listener.
    pub(crate) ws: Cell<bool>,
    connected_at_ms: i64,
    /// Its principal (and so its tenant), once authenticated here: the
    /// entry its session's identity holds too, so keeping it costs a
    /// count, not a copy of its name.
    principal: Cell<Option<Arc<PrincipalEntry>>>,
    /// The name its `Connect` gave (`None`: empty).
    client_name: Cell<Option<Box<str>>>,
    client_kind: Cell<v1::ClientKind>,
    /// What happens when this subscriber's queue is full.
    pub(crate) policy: Cell<SlowConsumerPolicy>,
    /// How long it may stall its tenant's publishers, in milliseconds.
    stall_max_ms: Cell<u32>,
    /// Set while this subscriber is stalling its tenant's publishers.
    pub(crate) stalled_since: InstantCell,
    /// Requests it received that it may answer once (kept for restricted
    /// principals with `allow_responses` only).
    replies: ReplyPermissions,
    /// Its quota holds and its tenant's figures on this shard, once
    /// authenticated.
    tenancy: RefCell<Option<Tenancy>>,
    subs: Cell<u32>,
    msgs_in: Cell<u64>,
    bytes_in: Cell<u64>,
    msgs_out: Cell<u64>,
    bytes_out: Cell<u64>,
}

/// What an authenticated connection holds of its tenant on this shard.
struct Tenancy {
    /// Its quota holds (connections, subscriptions).
    holds: Holds,
    /// Its tenant's figures on this shard.
    cell: Rc<TenantCell>,
}

impl std::fmt::Debug for ConnShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnShared")
            .field("id", &self.id)
            .field("pending", &self.out.borrow().pending())
            .field("closing", &self.closing.get())
            .finish_non_exhaustive()
    }
}

/// Reads what `cell` holds, taken out and put back: a `RefCell` would cost
/// every connection's shared state 8 bytes more per field. `f` must not
/// reach the same cell (it would see the default).
fn peek<T: Default, R>(cell: &Cell<T>, f: impl FnOnce(&T) -> R) -> R {
    let value = cell.take();
    let r = f(&value);
    cell.set(value);
    r
}

/// How long a subscriber with policy `Stall` may stall its publishers when
/// its quotas do not say.
const DEFAULT_STALL_MAX_MS: u32 = 100;

pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl ConnShared {
    pub(crate) fn new(id: ConnId, peer: Option<SocketAddr>, connected_at_ms: i64) -> Self {
        Self {
            id,
            out: RefCell::new(Outbound::new()),
            waker: Cell::new(None),
            flags: Cell::new(0),
            deadline: Cell::new(None),
            closing: Cell::new(false),
            lame_at: InstantCell::none(),
            peer,
            moved: Cell::new(false),
            ws: Cell::new(false),
            connected_at_ms,
            principal: Cell::new(None),
            client_name: Cell::new(None),
            client_kind: Cell::new(v1::ClientKind::Unspecified),
            policy: Cell::new(SlowConsumerPolicy::Disconnect),
            stall_max_ms: Cell::new(DEFAULT_STALL_MAX_MS),
            stalled_since: InstantCell::none(),
            replies: ReplyPermissions::default(),
            tenancy: RefCell::new(None),
            subs: Cell::new(0),
            msgs_in: Cell::new(0),
            bytes_in: Cell::new(0),
            msgs_out: Cell::new(0),
            bytes_out: Cell::new(0),
        }
    }

    /// Wakes the connection's task if it is parked.
    pub(crate) fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    pub(crate) fn raise(&self, flag: Flag) {
        self.flags.set(self.flags.get() | flag as u8);
        self.wake();
    }

    fn take_flags(&self) -> u8 {
        self.flags.replace(0)
    }

    fn park(&self, waker: &Waker) {
        let current = self.waker.take();
        match current {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    /// Reads its principal.
    fn with_principal<R>(&self, f: impl FnOnce(&PrincipalEntry) -> R) -> Option<R> {
        peek(&self.principal, |p| p.as_deref().map(f))
    }

    /// Reads the name its `Connect` gave (empty: none).
    pub(crate) fn with_client_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        peek(&self.client_name, |n| f(n.as_deref().unwrap_or_default()))
    }

    /// Its tenant, once authenticated here.
    pub(crate) fn tenant(&self) -> Option<TenantId> {
        self.with_principal(|p| p.tenant)
    }

    /// Its principal, once authenticated here.
    pub(crate) fn principal(&self) -> Option<PrincipalId> {
        self.with_principal(|p| p.id)
    }

    /// How long it may stall its tenant's publishers (policy `Stall`).
    pub(crate) fn stall_max(&self) -> Duration {
        Duration::from_millis(u64::from(self.stall_max_ms.get()))
    }

    /// Takes on what a (re-)authorised identity implies.
    fn adopt(&self, id: &Identity) {
        self.principal.set(Some(Arc::clone(&id.principal)));
        // The principal's own slow-consumer policy wins over the tenant's.
        let (pq, tq) = (&id.principal.quotas, &id.tenant.quotas);
        let q = if pq.slow_consumer == SlowConsumerPolicy::Disconnect {
            tq
        } else {
            pq
        };
        self.policy.set(q.slow_consumer);
        self.stall_max_ms.set(if q.stall_max.is_zero() {
            DEFAULT_STALL_MAX_MS
        } else {
            // Rounded up: a limit under a millisecond is not "none".
            u32::try_from(q.stall_max.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX)
        });
        self.replies.set_permissions(&id.principal.permissions);
    }

    /// A request with reply subject `reply` was delivered here: it may be
    /// answered once. The permission is a copy (`ReplyPermissions::grant`):
    /// `reply` is a slice of the requester's receive buffer, which it must
    /// not pin.
    pub(crate) fn allow_reply(&self, reply: &[u8]) {
        self.replies.grant(reply);
    }

    pub(crate) fn count_out(&self, bytes: usize) {
        self.msgs_out.set(self.msgs_out.get() + 1);
        self.bytes_out.set(self.bytes_out.get() + bytes as u64);
        if let Some(Tenancy { cell: t, .. }) = self.tenancy.borrow().as_ref() {
            TenantCell::bump(&t.msgs_out, 1);
            TenantCell::bump(&t.bytes_out, bytes as u64);
        }
    }

    fn count_in(&self, bytes: usize) {
        self.msgs_in.set(self.msgs_in.get() + 1);
        self.bytes_in.set(self.bytes_in.get() + bytes as u64);
        if let Some(Tenancy { cell: t, .. }) = self.tenancy.borrow().as_ref() {
            TenantCell::bump(&t.msgs_in, 1);
            TenantCell::bump(&t.bytes_in, bytes as u64);
        }
    }

    /// Counts a quota or policy rejection against its tenant.
    fn count_rejection(&self) {
        if let Some(Tenancy { cell: t, .. }) = self.tenancy.borrow().as_ref() {
            TenantCell::bump(&t.quota_rejections, 1);
        }
    }

    /// Counts a slow-consumer cut against its tenant.
    pub(crate) fn count_slow(&self) {
        if let Some(Tenancy { cell: t, .. }) = self.tenancy.borrow().as_ref() {
            TenantCell::bump(&t.slow_consumers, 1);
        }
    }

    fn subscription_added(&self) {
        self.subs.set(self.subs.get() + 1);
    }

    /// One of its subscriptions is gone.
    pub(crate) fn subscription_released(&self) {
        if let Some(t) = self.tenancy.borrow().as_ref() {
            t.holds.unsubscribe(1);
        }
        self.subs.set(self.subs.get().saturating_sub(1));
    }

    /// Gives back the connection's quota holds (it closed).
    pub(crate) fn release_quota(&self) {
        if let Some(Tenancy { holds, cell }) = self.tenancy.borrow_mut().take() {
            holds.unsubscribe(self.subs.replace(0));
            holds.disconnect();
            cell.connections
                .set(cell.connections.get().saturating_sub(1));
        }
    }

    /// The name its `Connect` gave.
    fn client_name(&self) -> String {
        self.with_client_name(str::to_owned)
    }

    /// What operators see.
    pub(crate) fn info(&self, shard: ShardId, subscriptions: usize) -> ConnectionInfo {
        let kind = match self.client_kind.get() {
            v1::ClientKind::Human => "human",
            v1::ClientKind::Device => "device",
            v1::ClientKind::Agent => "agent",
            v1::ClientKind::Unspecified => "unspecified",
        };
        ConnectionInfo {
            id: self.id.0,
            shard: shard.0,
            tenant: self.tenant(),
            principal: self.principal(),
            principal_name: self
                .with_principal(|p| p.name.to_string())
                .unwrap_or_default(),
            client_name: self.client_name(),
            client_kind: kind.to_owned(),
            remote_addr: self.peer.map(|p| p.to_string()).unwrap_or_default(),
            subscriptions: u32::try_from(subscriptions).unwrap_or(u32::MAX),
            msgs_in: self.msgs_in.get(),
            bytes_in: self.bytes_in.get(),
            msgs_out: self.msgs_out.get(),
            bytes_out: self.bytes_out.get(),
            connected_at_unix_ms: self.connected_at_ms,
        }
    }
}

/// Why a connection ended (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The peer closed its side.
    PeerClosed,
    /// We closed after a final error frame.
    Closed(ErrorCode),
    /// A socket error.
    Io(io::ErrorKind),
    /// The final error could not be written within the grace period.
    GraceExpired,
    /// Authenticated; to be handed to its tenant's home shard.
    Moving(ShardId),
}

/// A connection on its way to its tenant's home shard: everything its task
/// owned, `Send`, taken apart between two polls. Its `Debug` shows no keys
/// and no received bytes.
pub(crate) struct Handoff {
    transport: TransportParts,
    /// Bytes read but not processed (frames pipelined after `Connect`).
    received: Vec<u8>,
    /// Authenticated, `Welcome` not yet sent.
    session: Session,
    peer: Option<SocketAddr>,
    /// When it connected (Unix milliseconds, as operators see it).
    connected_at_ms: i64,
    from: ShardId,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("from", &self.from)
            .field("peer", &self.peer)
            .field("tls", &self.transport.tls.is_some())
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

/// The most one client frame's answer adds to its own queue (a Pong, an
/// error frame with its detail): room for it is kept below
/// `max_pending_bytes` before the frame is taken.
const MAX_ANSWER: usize = 256;

/// Most loop rounds in one poll before yielding to other tasks.
const ROUNDS_PER_POLL: usize = 8;

pub(crate) fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix: unix_ms() / 1000,
    }
}

/// Accepts one connection: registers it, runs its TLS handshake or
/// WebSocket upgrade (when configured), then hands it to a task of its
/// own, [`Life`], for the rest of its life. `WS`: it came through the
/// WebSocket listener (the upgrade after TLS, then the native protocol, one
/// frame per binary WebSocket message, `crate::ws`).
///
/// This task lives only through the handshake; every connection's memory
/// is its [`Life`] task, which holds no room for the handshake's state. The
/// stream comes boxed (8 bytes where it is 120, given back once the
/// handshake takes it, in `start`), a refused connection is told so by a
/// task of its own, and the span is boxed ([`InSpan`]).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in the task"
)]
pub(crate) fn serve<const WS: bool>(
    shard: Rc<Shard>,
    stream: Box<TcpStream>,
) -> impl Future<Output = ()> {
    async move {
        let conn = match admit(&shard, &stream) {
            Ok(conn) => conn,
            Err(refusal) => {
                glommio::spawn_local(refuse(shard, *stream, refusal, WS)).detach();
                return;
            }
        };
        // The handshake, then the connection's life, both in its span.
        let span = connection_span(&shard, &conn);
        let during = span.as_deref().map(|s| Box::new(s.clone()));
        match InSpan::new(during, start(&shard, &conn, stream, WS)).await {
            Some((io, session)) => {
                glommio::spawn_local(Life::new(shard, conn, span, io, session)).detach();
            }
            None => end(&shard, &conn),
        }
    }
}

/// An established connection's task, from its handshake (or its hand-over
/// from another shard) until it ends or moves: the poll loop
/// ([`ConnIo::poll`]), then, once closing, the linger after a final error.
///
/// Written by hand rather than as an `async` block so that every
/// connection's task holds exactly this: the shard and the connection, the
/// span (boxed, [`InSpan`]), the I/O state and the session; no references
/// among them and no room for anything else. The closing phase is boxed:
/// it is brief, and its room would cost every live connection.
pub(crate) struct Life {
    shard: Rc<Shard>,
    conn: Rc<ConnShared>,
    span: Option<Box<tracing::Span>>,
    state: LifeState,
}

#[expect(
    clippy::large_enum_variant,
    reason = "the open state is the task's reason to exist, inline on purpose: boxed, it would be a second allocation per connection"
)]
enum LifeState {
    Open { io: ConnIo, session: Session },
    Closing(Pin<Box<dyn Future<Output = ()>>>),
    Over,
}

impl Life {
    fn new(
        shard: Rc<Shard>,
        conn: Rc<ConnShared>,
        span: Option<Box<tracing::Span>>,
        io: ConnIo,
        session: Session,
    ) -> Self {
        Self {
            shard,
            conn,
            span,
            state: LifeState::Open { io, session },
        }
    }
}

impl Future for Life {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let _entered = this.span.as_deref().map(tracing::Span::enter);
        loop {
            let ended = match &mut this.state {
                LifeState::Open { io, session } => {
                    std::task::ready!(io.poll(cx, &this.shard, &this.conn, session))
                }
                LifeState::Closing(closing) => {
                    std::task::ready!(closing.as_mut().poll(cx));
                    this.state = LifeState::Over;
                    end(&this.shard, &this.conn);
                    return Poll::Ready(());
                }
                LifeState::Over => return Poll::Ready(()),
            };
            if let LifeState::Open { io, session } =
                std::mem::replace(&mut this.state, LifeState::Over)
                && let Some(closing) = io.finish(&this.shard, &this.conn, session, ended)
            {
                // Polled in the next iteration, so it registers its wake-ups.
                this.state = LifeState::Closing(Box::pin(closing));
                continue;
            }
            end(&this.shard, &this.conn);
            return Poll::Ready(());
        }
    }
}

/// Registers an accepted connection with the shard, or says why not. Not
/// part of `serve`'s body, so nothing it reads (the peer's address) is
/// kept in the task.
fn admit(shard: &Shard, stream: &TcpStream) -> Result<Rc<ConnShared>, Rejection> {
    let peer = stream.peer_addr().ok();
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(shard = %shard.id, error = %e, "TCP_NODELAY not set");
    }
    let conn = shard
        .register(peer, unix_ms(), false)
        .inspect_err(|refusal| {
            tracing::warn!(shard = %shard.id, ?peer, code = ?refusal.code, "connection refused");
        })?;
    tracing::debug!(shard = %shard.id, conn = %conn.id, ?peer, "accepted");
    Ok(conn)
}

/// One span per connection (TLS handshake, authentication, its life),
/// boxed, and none at all while it would be disabled.
fn connection_span(shard: &Shard, conn: &ConnShared) -> Option<Box<tracing::Span>> {
    let span =
        tracing::debug_span!("connection", shard = %shard.id, conn = %conn.id, peer = ?conn.peer);
    (!span.is_disabled()).then(|| Box::new(span))
}

pin_project_lite::pin_project! {
    /// A connection's future run inside its span, like
    /// `tracing::Instrument`, but with the span boxed and absent when
    /// disabled: 8 bytes in every connection's task instead of 40 (the
    /// task's size decides its allocator size class).
    struct InSpan<F> {
        span: Option<Box<tracing::Span>>,
        #[pin]
        inner: F,
    }
}

impl<F> InSpan<F> {
    fn new(span: Option<Box<tracing::Span>>, inner: F) -> Self {
        Self { span, inner }
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.as_deref().map(tracing::Span::enter);
        this.inner.poll(cx)
    }
}

/// The TLS handshake (when configured), bounded by the auth timeout.
async fn establish(shard: &Shard, stream: TcpStream, ws: bool) -> io::Result<Transport> {
    let edge = if ws { shard.cfg.ws.as_ref() } else { None };
    let tls = match edge {
        Some(e) => e.tls.as_ref(),
        None => shard.cfg.tls.as_ref(),
    };
    let Some(acceptor) = tls else {
        let plain = Transport::Plain(PlainStream(stream));
        return match edge {
            Some(e) => upgrade(shard, plain, e).await,
            None => Ok(plain),
        };
    };
    let handshake = acceptor.accept(PlainStream(stream));
    let auth_timeout = Duration::from_millis(shard.config.borrow().limits().auth_timeout_ms);
    let timeout = async {
        glommio::timer::sleep(auth_timeout).await;
        Err(io::Error::from(io::ErrorKind::TimedOut))
    };
    let tls = futures_lite::future::or(handshake, timeout)
        .await
        .inspect_err(|_| {
            shard.stats.borrow_mut().tls_failures += 1;
        })?;
    match edge {
        Some(e) => upgrade(shard, Transport::tls(tls), e).await,
        None => Ok(Transport::tls(tls)),
    }
}

/// The WebSocket upgrade (bounded by the auth timeout), counted.
async fn upgrade(
    shard: &Shard,
    transport: Transport,
    edge: &crate::ws::WsShard,
) -> io::Result<Transport> {
    let timeout = Duration::from_millis(shard.config.borrow().limits().auth_timeout_ms);
    let upgraded = crate::ws::upgrade(transport, edge, timeout, shard.cfg.read_chunk).await;
    let mut stats = shard.stats.borrow_mut();
    if upgraded.is_ok() {
        stats.ws_upgrades += 1;
    } else {
        stats.ws_upgrade_failures += 1;
    }
    upgraded
}

fn close_grace(shard: &Shard) -> Duration {
    Duration::from_millis(shard.config.borrow().limits().close_grace_ms)
}

/// Tells a connection the shard cannot take it, then closes it.
async fn refuse(shard: Rc<Shard>, stream: TcpStream, refusal: Rejection, ws: bool) {
    shard.errors.borrow_mut().count(refusal.code.into());
    let Ok(transport) = establish(&shard, stream, ws).await else {
        return;
    };
    refuse_on(&shard, transport, &refusal).await;
}

/// Sends `refusal` on an established transport, then closes it.
async fn refuse_on(shard: &Shard, mut transport: Transport, refusal: &Rejection) {
    if let Some(ws) = transport.ws_mut() {
        ws.closing_after(refusal.code);
    }
    let mut frame = Vec::new();
    if codec::encode(&refusal.to_frame(), &mut frame).is_err() {
        return;
    }
    let send = async {
        let _ = transport.write_all(&frame).await;
        let _ = transport.close().await;
    };
    let grace = close_grace(shard).min(Duration::from_secs(1));
    futures_lite::future::or(send, glommio::timer::sleep(grace)).await;
}

/// The TLS handshake or WebSocket upgrade, then the connection's I/O state
/// and session (the TLS step taken); `None` when the handshake failed.
async fn start(
    shard: &Rc<Shard>,
    conn: &Rc<ConnShared>,
    stream: Box<TcpStream>,
    ws: bool,
) -> Option<(ConnIo, Session)> {
    let mut session = Session::new(Instant::now(), shard.cfg.tls.is_some());
    conn.deadline
        .set(session.next_deadline(shard.config.borrow().limits(), now()));
    // Moved out in a block, so the box is given back now: a moved-from
    // `Box` frees its memory only when its binding goes out of scope.
    let stream = {
        let b = stream;
        *b
    };
    let transport = match Box::pin(establish(shard, stream, ws)).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(shard = %shard.id, conn = %conn.id, error = %e, ws, "TLS handshake or WebSocket upgrade failed");
            return None;
        }
    };
    let origin = transport.ws().map(|w| w.origin().map(Box::from));
    let mut io = ConnIo::new(transport, ReadBuf::new(shard.cfg.read_chunk), false);
    if let Some(origin) = origin {
        conn.ws.set(true);
        io.ws_origin = origin;
    }
    if shard.cfg.tls.is_some() {
        shard.read_clock();
        io.step(shard, conn, &mut session, Event::TlsEstablished);
    }
    Some((io, session))
}

/// A connection's task is over: it is gone from the shard.
fn end(shard: &Shard, conn: &ConnShared) {
    conn.closing.set(true);
    shard.unregister(conn);
}

/// Takes a connection another shard authenticated and handed over: this
/// shard is its tenant's home. Sends the `Welcome`, processes what the
/// client already sent, then gives it its [`Life`] task, like any other.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in the task"
)]
pub(crate) fn adopt(shard: Rc<Shard>, handoff: Box<Handoff>) -> impl Future<Output = ()> {
    // Like `serve`: an `async move` block, a refusal in a task of its own.
    async move {
        let conn = match shard.register(handoff.peer, handoff.connected_at_ms, true) {
            Ok(conn) => conn,
            Err(refusal) => {
                glommio::spawn_local(refuse_handoff(shard, handoff, refusal)).detach();
                return;
            }
        };
        shard.stats.borrow_mut().moved_in += 1;
        let span = connection_span(&shard, &conn);
        let (io, session) = take_over(&shard, &conn, handoff);
        glommio::spawn_local(Life::new(shard, conn, span, io, session)).detach();
    }
}

/// Puts a handed-over connection together on this shard, sends its
/// `Welcome` and processes what the client already sent.
#[allow(
    clippy::boxed_local,
    reason = "it crosses shards boxed; taken apart here, its box is freed before the connection's task starts"
)]
fn take_over(shard: &Rc<Shard>, conn: &Rc<ConnShared>, handoff: Box<Handoff>) -> (ConnIo, Session) {
    let Handoff {
        transport,
        received,
        mut session,
        from,
        ..
    } = *handoff;
    let mut io = ConnIo::new(
        Transport::from_parts(transport),
        ReadBuf::with_received(shard.cfg.read_chunk, &received),
        true,
    );
    drop(received);
    let _handoff = tracing::debug_span!("handoff", from = %from, to = %shard.id).entered();
    shard.read_clock();
    io.welcome(shard, conn, &mut session);
    io.set_deadline(shard, conn, &session);
    io.process(shard, conn, &mut session);
    (io, session)
}

/// The home shard cannot take a handed-over connection (full, stopping):
/// it is told so and closed, like a connection refused at accept.
async fn refuse_handoff(shard: Rc<Shard>, handoff: Box<Handoff>, refusal: Rejection) {
    if let Some(t) = handoff.session.identity().map(|i| i.tenant.id) {
        shard.placement.closed(t, shard.id);
    }
    tracing::warn!(shard = %shard.id, peer = ?handoff.peer, code = ?refusal.code, "handed-over connection refused");
    shard.errors.borrow_mut().count(refusal.code.into());
    let transport = Transport::from_parts(handoff.transport);
    refuse_on(&shard, transport, &refusal).await;
}

impl ConnIo {
    /// After the poll loop: hands a moving connection over, or returns what
    /// is left to do for a closing one (linger after a final error, then
    /// log), to be boxed by the caller so the task carries none of it while
    /// the connection lives.
    fn finish(
        self,
        shard: &Rc<Shard>,
        conn: &Rc<ConnShared>,
        session: Session,
        ended: Ended,
    ) -> Option<impl Future<Output = ()> + use<>> {
        if let Ended::Moving(home) = ended {
            self.hand_over(shard, conn, session, home);
            return None;
        }
        let (shard_id, conn_id) = (shard.id, conn.id);
        if let Some(v) = self.transport.ws().and_then(crate::ws::WsConn::violation) {
            shard.stats.borrow_mut().ws_violations += 1;
            tracing::info!(shard = %shard.id, conn = %conn.id, violation = v.label(), "websocket connection closed for a violation");
        }
        let tenant = session.identity().map(|i| i.tenant.id.0);
        let grace = close_grace(shard);
        drop(session);
        // A WebSocket connection we closed for a violation lingers too, so
        // the peer reads its close frame.
        let violated = self.transport.ws().is_some_and(|w| w.violation().is_some());
        Some(async move {
            let mut io = self;
            if matches!(ended, Ended::Closed(_)) || violated {
                io.linger(grace).await;
            }
            tracing::debug!(shard = %shard_id, conn = %conn_id, tenant, reason = ?ended, "closed");
        })
    }
}

/// A connection's I/O state. The reading side's logic (`process` and what
/// it calls) does not touch the transport, so it is written for any `T`:
/// the hot-path workloads (`crate::bench`) drive it with none.
pub(crate) struct ConnIo<T = Transport> {
    transport: T,
    rbuf: ReadBuf,
    /// Bytes were handed to TLS since the last flush.
    needs_flush: bool,
    /// Once closing: the final error's code, and when writing it is given
    /// up (boxed, like `held`: rare, and every idle connection's task would
    /// carry its room inline).
    closed: Option<Box<Closed>>,
    /// A publish waiting for its rate limit or a publisher stall to pass.
    held: Option<Box<Held>>,
    /// Authenticated, and its tenant's home is another shard.
    moving: Option<ShardId>,
    /// Handed over from another shard: it does not move again.
    adopted: bool,
    /// A WebSocket connection's upgrade request's `Origin`, checked
    /// against its tenant's list when it authenticates.
    ws_origin: Option<Box<str>>,
    /// Frames wait in the buffer because the connection's queue was full
    /// when they came up; processed before anything more is read.
    unprocessed: bool,
}

/// A closing connection's final error, and when writing it is given up.
struct Closed {
    code: ErrorCode,
    at: Instant,
}

/// A publish a rate limit or a publisher stall holds, and its timer (none:
/// try again now).
struct Held {
    msg: Publish,
    timer: Option<Timer>,
}

impl<T> ConnIo<T> {
    /// The code of the final error (`Unspecified` until closing).
    fn closed_with(&self) -> ErrorCode {
        self.closed
            .as_ref()
            .map_or(ErrorCode::Unspecified, |c| c.code)
    }

    /// The receive buffer (the hot-path workloads fill it as a read would).
    pub(crate) fn rbuf_mut(&mut self) -> &mut ReadBuf {
        &mut self.rbuf
    }

    pub(crate) fn new(transport: T, rbuf: ReadBuf, adopted: bool) -> Self {
        Self {
            transport,
            rbuf,
            needs_flush: false,
            closed: None,
            held: None,
            moving: None,
            adopted,
            ws_origin: None,
            unprocessed: false,
        }
    }
}

impl ConnIo {
    /// Takes the connection apart and sends it to `home`. On any failure
    /// the connection is lost (the client reconnects): nothing it sent was
    /// acknowledged yet.
    fn hand_over(self, shard: &Shard, conn: &ConnShared, session: Session, home: ShardId) {
        let _span = tracing::debug_span!("handoff", from = %shard.id, to = %home).entered();
        let tenant = session.identity().map(|i| i.tenant.id);
        let received = self.rbuf.unprocessed();
        let sent = match self.transport.into_parts() {
            Ok(transport) => {
                let handoff = Box::new(Handoff {
                    transport,
                    received,
                    session,
                    peer: conn.peer,
                    connected_at_ms: conn.connected_at_ms,
                    from: shard.id,
                });
                shard
                    .peers
                    .get(home.index())
                    .is_some_and(|p| p.send(crate::shard::Command::Adopt(handoff)))
            }
            Err(e) => {
                tracing::warn!(shard = %shard.id, conn = %conn.id, error = %e, "hand-over failed: no descriptor");
                false
            }
        };
        if sent {
            conn.moved.set(true);
            shard.stats.borrow_mut().moved_out += 1;
            tracing::debug!(shard = %shard.id, conn = %conn.id, to = %home, "handed to the tenant's home shard");
        } else {
            if let Some(t) = tenant {
                shard.placement.closed(t, home);
            }
            tracing::warn!(shard = %shard.id, conn = %conn.id, to = %home, "hand-over failed: home shard gone");
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        shard: &Rc<Shard>,
        conn: &ConnShared,
        session: &mut Session,
    ) -> Poll<Ended> {
        for _ in 0..ROUNDS_PER_POLL {
            if let Some(home) = self.moving {
                return Poll::Ready(Ended::Moving(home));
            }
            let clock = shard.read_clock();
            let flags = conn.take_flags();
            if flags & Flag::Shutdown as u8 != 0 {
                self.step(shard, conn, session, Event::Shutdown);
            }
            if flags & Flag::Kick as u8 != 0 {
                shard.stats.borrow_mut().kicked += 1;
                let kick = Event::Close {
                    code: ErrorCode::DisconnectedByOperator,
                    detail: "disconnected by an operator",
                };
                self.step(shard, conn, session, kick);
            }
            if flags & Flag::Reauthorize as u8 != 0 {
                self.step(shard, conn, session, Event::Reauthorize);
            }
            if flags & Flag::SlowConsumer as u8 != 0 {
                self.step(shard, conn, session, Event::SlowConsumer);
            }
            if flags & Flag::Tick as u8 != 0 {
                let now = clock.mono;
                if self.closed.as_ref().is_some_and(|c| c.at <= now) {
                    return Poll::Ready(Ended::GraceExpired);
                }
                if conn.lame_at.get().is_some_and(|t| t <= now) {
                    conn.lame_at.set(None);
                    self.step(shard, conn, session, Event::Shutdown);
                }
                self.step(shard, conn, session, Event::Tick);
                // A stall may have ended early: retry a held publish now.
                if let Some(held) = self.held.as_mut() {
                    held.timer = None;
                }
            }

            let mut progress = false;
            match self.poll_write(cx, conn) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(e)) => return Poll::Ready(Ended::Io(e.kind())),
                Poll::Pending => {}
            }
            Self::end_stall(shard, conn);

            if session.state() == State::Closing {
                if conn.out.borrow().is_empty() && !self.needs_flush {
                    return Poll::Ready(Ended::Closed(self.closed_with()));
                }
            } else if self.held.is_some() {
                if self.retry_held(cx, shard, conn, session) {
                    self.process(shard, conn, session);
                    progress = true;
                }
            } else if conn.out.borrow().held_after(MAX_ANSWER, 0) as u64
                > shard.config.borrow().limits().max_pending_bytes
            {
                // The client does not read what we answer (pongs, errors):
                // stop reading its requests until it does. The pending write
                // above has registered the wake-up.
            } else if self.unprocessed {
                if !shard.backpressured(cx.waker()) {
                    self.process(shard, conn, session);
                    progress = true;
                }
            } else if !shard.backpressured(cx.waker()) {
                let need = self
                    .rbuf
                    .filled()
                    .first_chunk::<LEN_PREFIX>()
                    .map_or(0, |p| LEN_PREFIX + u32::from_be_bytes(*p) as usize)
                    .saturating_sub(self.rbuf.filled().len());
                let room = self.rbuf.unfilled(need);
                match Pin::new(&mut self.transport).poll_read(cx, room) {
                    Poll::Ready(Ok(0)) => {
                        let config = shard.config.borrow();
                        session.handle(Event::Closed, shard.clock(), &config);
                        return Poll::Ready(Ended::PeerClosed);
                    }
                    Poll::Ready(Ok(n)) => {
                        self.rbuf.advance(n);
                        self.process(shard, conn, session);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Ended::Io(e.kind())),
                    Poll::Pending => {}
                }
            }

            if !progress {
                self.rbuf.shrink_if_idle();
                conn.out.borrow_mut().release_if_empty();
                conn.park(cx.waker());
                return Poll::Pending;
            }
        }
        // Fairness: let other connections run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes queued frames; `Ok(true)` when bytes left.
    fn poll_write(&mut self, cx: &mut Context<'_>, conn: &ConnShared) -> Poll<io::Result<bool>> {
        let mut wrote = false;
        loop {
            let mut out = conn.out.borrow_mut();
            if out.is_empty() {
                break;
            }
            match out.poll_write(cx, &mut self.transport) {
                Poll::Ready(Ok(_)) => {
                    wrote = true;
                    self.needs_flush = !matches!(self.transport, Transport::Plain(_));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    return if wrote {
                        Poll::Ready(Ok(true))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
        if self.needs_flush {
            match Pin::new(&mut self.transport).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(wrote))
    }

    /// A subscriber that stalled its tenant's publishers and has caught up
    /// (queue below half the bound) lets them go.
    fn end_stall(shard: &Shard, conn: &ConnShared) {
        if conn.stalled_since.get().is_none() {
            return;
        }
        let max = shard.config.borrow().limits().max_pending_bytes;
        if (conn.out.borrow().items() as u64) < max / 2 {
            conn.stalled_since.set(None);
            if let Some(t) = conn.tenant() {
                shard.unstall(t);
            }
        }
    }

    /// Tries the held publish again when its timer fired. True when it went.
    ///
    /// Returns false only with a pending timer registered to wake this task
    /// (or nothing held): a new timer that has already expired when first
    /// polled (the thread was descheduled past a short wait) registers no
    /// wake-up, so it is retried at once instead of parking on it.
    fn retry_held(
        &mut self,
        cx: &mut Context<'_>,
        shard: &Rc<Shard>,
        conn: &ConnShared,
        session: &Session,
    ) -> bool {
        loop {
            let Some(mut held) = self.held.take() else {
                return false;
            };
            if let Some(timer) = held.timer.as_mut()
                && Pin::new(timer).poll(cx).is_pending()
            {
                self.held = Some(held);
                return false;
            }
            let Some(wait) = Self::gate_and_publish(shard, conn, session, held.msg.view()) else {
                return true;
            };
            // Still waiting: held again as it is, not copied.
            held.timer = Some(Timer::new(wait));
            self.held = Some(held);
        }
    }
}

impl<T> ConnIo<T> {
    /// Decodes and handles every whole frame in the receive buffer.
    ///
    /// Stops early, leaving frames in the buffer (`unprocessed`), once the
    /// connection's own queue holds more than `max_pending_bytes`: a client
    /// that sends Pings (or frames answered with errors) and never reads
    /// makes the server hold at most that much for it, not a whole read
    /// buffer's worth of answers.
    pub(crate) fn process(&mut self, shard: &Rc<Shard>, conn: &ConnShared, session: &mut Session) {
        let clock = shard.read_clock();
        self.unprocessed = false;
        let max_pending = shard.config.borrow().limits().max_pending_bytes;
        let mut published = false;
        loop {
            if self.held.is_some()
                || self.moving.is_some()
                || !matches!(session.state(), State::AwaitingConnect | State::Open)
            {
                break;
            }
            // Room for the answer this frame may queue (control frames
            // are small), growth of the queue's buffers included.
            if conn.out.borrow().held_after(MAX_ANSWER, 0) as u64 > max_pending {
                self.unprocessed = self.rbuf.has_unprocessed();
                break;
            }
            let max_frame = {
                let config = shard.config.borrow();
                session.max_frame(config.limits())
            };
            let event = match self.rbuf.next_frame(max_frame) {
                Ok(None) => break,
                Err(e) => Event::Undecodable(e),
                Ok(Some((batch, body))) => match codec::decode_in(batch, body) {
                    Ok(Decoded::Publish(view)) => {
                        // The hot path: the session's own entry for a
                        // publish (the subject checked through the shard's
                        // memo), then the core's permission check and the
                        // route, the message borrowed from the batch
                        // throughout. It is `step` without the login
                        // throttle (which only `Connect` meets) and without
                        // the deadline, which is set once per batch.
                        let checked = {
                            let config = shard.config.borrow();
                            let mut memo = shard.subjects.borrow_mut();
                            session.publish(view, clock, &config, &mut memo)
                        };
                        match checked {
                            Checked::Publish(msg) => {
                                Self::publish(shard, conn, session, &mut self.held, msg);
                            }
                            Checked::Step(step) => self.carry_out(shard, conn, session, step),
                        }
                        published = true;
                        continue;
                    }
                    Ok(Decoded::Frame(kind)) => Event::Frame(kind),
                    Err(e) => Event::Undecodable(e),
                },
            };
            self.step(shard, conn, session, event);
        }
        if published {
            self.set_deadline(shard, conn, session);
        }
        shard.after_batch();
    }

    /// Feeds one event to the session and carries out the step.
    fn step(&mut self, shard: &Rc<Shard>, conn: &ConnShared, session: &mut Session, event: Event) {
        let t = shard.clock();
        // Login throttling (`arqonbus_core::throttle`): decided before the
        // credential is checked; a refusal closes with AUTH_THROTTLED.
        let attempt = match &event {
            Event::Frame(Kind::Connect(c)) => {
                let peer = conn.peer.map(|p| p.ip());
                match shard.logins.borrow_mut().check(peer, &c.credential, t.mono) {
                    Verdict::Go(attempt) => Some(attempt),
                    Verdict::Refuse {
                        reason,
                        retry_after,
                        attempt,
                        first,
                    } => {
                        log_throttled(shard, conn, reason, retry_after, &attempt, first);
                        let close = Event::Close {
                            code: ErrorCode::AuthThrottled,
                            detail: "too many failed logins; retry later",
                        };
                        return self.step(shard, conn, session, close);
                    }
                }
            }
            _ => None,
        };
        let step = {
            let config = shard.config.borrow();
            session.handle(event, t, &config)
        };
        if let (Some(attempt), Step::Reject(r)) = (&attempt, &step)
            && r.code == ErrorCode::AuthenticationFailed
        {
            shard.logins.borrow_mut().failed(attempt, t.mono);
        }
        self.carry_out(shard, conn, session, step);
    }

    /// Carries out what the session decided, then sets the deadline.
    fn carry_out(
        &mut self,
        shard: &Rc<Shard>,
        conn: &ConnShared,
        session: &mut Session,
        step: Step,
    ) {
        let t = shard.clock();
        match step {
            Step::Nothing => {}
            Step::Welcome => self.welcome(shard, conn, session),
            Step::PermissionsChanged => {
                if let Some(id) = session.identity() {
                    conn.adopt(id);
                }
                Self::recheck_subscriptions(shard, conn, session);
                crate::presence::recheck_watches(shard, conn, session);
            }
            Step::Publish(msg) => Self::publish(shard, conn, session, &mut self.held, msg.view()),
            Step::Subscribe {
                sid,
                pattern,
                queue,
            } => {
                let Some(id) = session.identity() else { return };
                let decision = {
                    let tenancy = conn.tenancy.borrow();
                    authorize::subscribe(
                        id,
                        sid,
                        &pattern,
                        tenancy.as_ref().map(|t| t.holds.subscriptions()),
                    )
                };
                if let Decision::Deny(denial) = decision {
                    if denial.code == ErrorCode::PermissionDenied {
                        Self::deny(shard, conn, denial.soft());
                    } else {
                        shard.stats.borrow_mut().client_errors += 1;
                        conn.count_rejection();
                        Self::soft_error(shard, conn, denial.soft());
                    }
                    return;
                }
                match shard.subscribe(id.tenant.id, conn.id, sid, pattern, queue) {
                    Ok(()) => conn.subscription_added(),
                    Err(e) => {
                        if let Some(t) = conn.tenancy.borrow().as_ref() {
                            t.holds.unsubscribe(1);
                        }
                        Self::reject_subscription(shard, conn, sid, e);
                    }
                }
            }
            Step::Unsubscribe { sid, after } => match shard.unsubscribe(conn.id, sid, after) {
                Ok(()) if after == 0 => {
                    conn.subscription_released();
                    crate::presence::left(shard, conn.id, sid);
                }
                Ok(()) => {}
                Err(e) => Self::reject_subscription(shard, conn, sid, e),
            },
            Step::Pong => shard.pong(conn),
            Step::Ping => conn.out.borrow_mut().push_frame(&Kind::Ping(v1::Ping {})),
            Step::Reject(r) => self.reject(shard, conn, &r, t.mono),
            Step::PresenceTrack { sid, metadata } => {
                crate::presence::track(shard, conn, session, sid, metadata);
            }
            Step::PresenceWatch { watch, subject } => {
                crate::presence::watch(shard, conn, session, watch, subject);
            }
            Step::PresenceQuery {
                request_id,
                subject,
            } => crate::presence::query(shard, conn, session, request_id, &subject),
        }
        self.set_deadline(shard, conn, session);
    }

    /// When the tick loop should next look at this connection.
    fn set_deadline(&self, shard: &Shard, conn: &ConnShared, session: &Session) {
        let config = shard.config.borrow();
        let next = (self.closed.as_ref().map(|c| c.at))
            .or_else(|| session.next_deadline(config.limits(), shard.clock()));
        let lame = conn.lame_at.get();
        conn.deadline.set(match (next, lame) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        });
    }

    fn welcome(&mut self, shard: &Rc<Shard>, conn: &ConnShared, session: &mut Session) {
        let Some(id) = session.identity() else { return };
        // A browser from an origin its tenant does not allow never gets a
        // `Welcome` (specs/websocket.md).
        if conn.ws.get() {
            let origin = self.ws_origin.take();
            let allowed = arqonbus_core::origin::allowed(
                shard.config.borrow().allowed_origins(id.tenant.id),
                origin.as_deref(),
            );
            if !allowed {
                shard.stats.borrow_mut().permission_denied += 1;
                let close = Event::Close {
                    code: ErrorCode::PermissionDenied,
                    detail: "origin not allowed for this tenant",
                };
                self.step(shard, conn, session, close);
                return;
            }
        }
        if !self.adopted
            && let Placed::MoveTo(home) =
                shard
                    .placement
                    .place(id.tenant.id, id.tenant.placement, shard.id)
        {
            if !conn.ws.get() {
                self.moving = Some(home);
                return;
            }
            // A WebSocket connection stays where it was accepted: undo the
            // count `place` made on the home shard.
            shard.placement.closed(id.tenant.id, home);
        }
        let holds = shard.quota.holds(id);
        if let Decision::Deny(Denial { code, detail, .. }) =
            authorize::connect(id, holds.connections())
        {
            shard.placement.closed(id.tenant.id, shard.id);
            shard
                .tenant_cell(id.tenant.id)
                .quota_rejections
                .set(shard.tenant_cell(id.tenant.id).quota_rejections.get() + 1);
            self.step(shard, conn, session, Event::Close { code, detail });
            return;
        }
        let cell = shard.tenant_cell(id.tenant.id);
        TenantCell::bump(&cell.connections, 1);
        *conn.tenancy.borrow_mut() = Some(Tenancy { holds, cell });
        conn.adopt(id);
        let micros = u64::try_from(session.accepted_at().elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = shard.handshake_latency.borrow_mut().record(micros.max(1));
        let max_payload = session.max_payload();
        let welcome = shard.welcome(conn.id, &id.tenant.name, max_payload);
        conn.out.borrow_mut().push_frame(&welcome);
        let _auth = tracing::debug_span!(
            "auth",
            tenant = %id.tenant.id,
            principal = %id.principal.id,
            credential = %id.credential,
        )
        .entered();
        tracing::debug!(
            shard = %shard.id,
            conn = %conn.id,
            kind = ?session.client_kind(),
            name = session.client_name(),
            "authenticated"
        );
        // The name moves here from the session: held once, where operators
        // and presence read it.
        conn.client_kind.set(session.client_kind());
        let name = session.take_client_name();
        conn.client_name.set((!name.is_empty()).then_some(name));
    }

    /// Asks the core whether the principal may publish `msg`, then gates
    /// and routes it. An associated function over the fields it needs, so
    /// `msg` may borrow the connection's read batch.
    fn publish(
        shard: &Rc<Shard>,
        conn: &ConnShared,
        session: &Session,
        held: &mut Option<Box<Held>>,
        msg: PublishRef<'_>,
    ) {
        let Some(id) = session.identity() else { return };
        let decision = authorize::publish(
            &id.principal.permissions,
            &conn.replies,
            msg.subject,
            msg.reply,
        );
        if let Decision::Deny(denial) = decision {
            Self::deny(shard, conn, denial.soft().about_publish(msg.seq));
            return;
        }
        if let Some(wait) = Self::gate_and_publish(shard, conn, session, msg) {
            // Held past the batch: owned, as slices of it.
            *held = Some(Box::new(Held {
                msg: msg.to_owned(),
                timer: Some(Timer::new(wait)),
            }));
        }
    }

    /// Routes `msg` now, or says how long it must wait (the shard's
    /// `Throttle`: a rate limit or a publisher stall); the caller holds it
    /// that long.
    fn gate_and_publish(
        shard: &Rc<Shard>,
        conn: &ConnShared,
        session: &Session,
        msg: PublishRef<'_>,
    ) -> Option<Duration> {
        let id = session.identity()?;
        let admission = shard
            .throttle
            .borrow_mut()
            .admit(id, msg.payload.len(), Instant::now);
        match admission {
            Admission::Go => {
                conn.count_in(msg.payload.len());
                shard.publish(id.tenant.id, conn.id, session.echo(), msg);
                None
            }
            Admission::Wait(wait) => {
                shard.stats.borrow_mut().throttled += 1;
                conn.count_rejection();
                Some(wait)
            }
        }
    }

    /// After a permission change: drop subscriptions no longer allowed.
    fn recheck_subscriptions(shard: &Rc<Shard>, conn: &ConnShared, session: &Session) {
        let Some(id) = session.identity() else { return };
        if id.principal.permissions.unrestricted() {
            return;
        }
        let subs = shard.router.borrow().subscriptions_of(conn.id);
        for (sid, pattern) in subs {
            let Decision::Deny(denial) =
                authorize::keep_subscription(&id.principal.permissions, sid, &pattern)
            else {
                continue;
            };
            if shard.unsubscribe(conn.id, sid, 0).is_ok() {
                conn.subscription_released();
                crate::presence::left(shard, conn.id, sid);
                shard.stats.borrow_mut().permission_denied += 1;
                Self::soft_error(shard, conn, denial.soft());
            }
        }
    }

    /// A request the client's permissions do not allow: counted on the
    /// shard and the connection, answered with the PERMISSION_DENIED error
    /// the core named, which keeps the connection open.
    fn deny(shard: &Shard, conn: &ConnShared, denial: Rejection) {
        shard.stats.borrow_mut().permission_denied += 1;
        conn.count_rejection();
        Self::soft_error(shard, conn, denial);
    }

    /// Queues the error frame of a refusal that keeps the connection open.
    fn soft_error(shard: &Shard, conn: &ConnShared, refusal: Rejection) {
        shard.errors.borrow_mut().count(refusal.code.into());
        conn.out.borrow_mut().push_frame(&refusal.to_frame());
    }

    /// A subscribe or unsubscribe the router refused.
    fn reject_subscription(shard: &Shard, conn: &ConnShared, sid: Sid, e: SubscriptionError) {
        shard.stats.borrow_mut().client_errors += 1;
        Self::soft_error(shard, conn, Denial::subscription(e, sid).soft());
    }

    fn reject(&mut self, shard: &Shard, conn: &ConnShared, r: &Rejection, now: Instant) {
        {
            let mut stats = shard.stats.borrow_mut();
            match r.code {
                ErrorCode::AuthenticationFailed => stats.auth_failures += 1,
                ErrorCode::AuthThrottled => stats.auth_throttled += 1,
                ErrorCode::StaleConnection => stats.stale_connections += 1,
                ErrorCode::CredentialRevoked => stats.revoked += 1,
                ErrorCode::ProtocolViolation
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnsupportedVersion => {
                    stats.protocol_errors += 1;
                }
                _ if !r.close => stats.client_errors += 1,
                _ => {}
            }
        }
        if r.code == ErrorCode::SlowConsumer {
            tracing::warn!(shard = %shard.id, conn = %conn.id, tenant = conn.tenant().map(|t| t.0), code = ?r.code, "closing slow consumer");
        } else if r.close && r.code != ErrorCode::AuthThrottled {
            // Throttled logins were warned about once per streak
            // (`log_throttled`); one line each would flood the log.
            tracing::info!(shard = %shard.id, conn = %conn.id, tenant = conn.tenant().map(|t| t.0), code = ?r.code, detail = r.detail, "closing connection");
        } else {
            tracing::debug!(shard = %shard.id, conn = %conn.id, code = ?r.code, sid = r.sid, "client error");
        }
        shard.errors.borrow_mut().count(r.code.into());
        let mut out = conn.out.borrow_mut();
        if r.code == ErrorCode::SlowConsumer {
            out.drop_queued();
        }
        out.push_frame(&r.to_frame());
        drop(out);
        if r.close {
            self.held = None;
            conn.closing.set(true);
            let at = now + close_grace(shard);
            self.closed = Some(Box::new(Closed { code: r.code, at }));
            conn.deadline.set(Some(at));
        }
    }
}

impl ConnIo {
    /// After the final error: shut down our side and read until the peer
    /// closes (bounded), so a reset does not destroy the error in flight.
    async fn linger(&mut self, grace: Duration) {
        // WebSocket: a close frame whose code follows the final error.
        let code = self.closed_with();
        if let Some(ws) = self.transport.ws_mut() {
            ws.closing_after(code);
        }
        // TLS: close_notify, then (like plain TCP) shut down the write side.
        let _ = self.transport.close().await;
        let grace = grace.min(Duration::from_secs(1));
        let drain = async {
            let mut sink = vec![0u8; 4096];
            loop {
                match self.transport.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        futures_lite::future::or(drain, glommio::timer::sleep(grace)).await;
    }
}

/// One warning per throttled streak (the rest at debug): the source, why,
/// the principal its credential claimed, when it may retry; never the
/// credential.
fn log_throttled(
    shard: &Shard,
    conn: &ConnShared,
    reason: ThrottleReason,
    retry_after: Duration,
    attempt: &Attempt,
    first: bool,
) {
    let source = conn.peer.map(|p| p.ip());
    let claimed_tenant = attempt.principal.map(|p| p.tenant);
    let claimed_principal = attempt.principal.map(|p| p.principal);
    let retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
    if first {
        tracing::warn!(shard = %shard.id, conn = %conn.id, ?source, reason = reason.as_str(), claimed_tenant, claimed_principal, retry_after_ms, "login throttled");
    } else {
        tracing::debug!(shard = %shard.id, conn = %conn.id, ?source, reason = reason.as_str(), retry_after_ms, "login throttled");
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn returns, from the fn alone.
    fn size_of_future<A, B, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every connection's task is allocated at this size for its whole life:
    /// idle connections cost mostly this. A binding that kept a close-time
    /// future's storage alive once doubled it (1,032 -> 2,056 bytes, about
    /// 1 KiB of RSS per idle connection); rarely used phases are boxed.
    /// An async fn keeps its arguments for the task's whole life, beside
    /// the bindings it moves them into, and a moved-from binding keeps its
    /// storage while it is in scope: the stream is passed boxed, and values
    /// moved on are bound in blocks that end before the long await (1,152 /
    /// 1,088 -> 696 / 624 bytes: idle RSS per connection 2,468 -> 1,950 B,
    /// perf/memory.py). Then a refusal went to a task of its own and the
    /// span was boxed (`InSpan`): 568 / 544 bytes, 1,950 -> 1,825 B. Then
    /// the clock went to the shard, the closing and held-publish state into
    /// boxes, the receive buffer's offsets to `u32`: 464 bytes, 1,825 ->
    /// 1,705 B. Then the receive buffer's buffers were boxed (held only
    /// while reading) and the WebSocket origin moved here from
    /// `ConnShared`: 392 bytes, the 448 class (1,707 -> 1,481 B with
    /// `ConnShared` at 360). Then the handshake got a task of its own and
    /// the connection's life became [`super::Life`], a future written by
    /// hand: 320 bytes, the 384 class.
    #[test]
    fn a_connection_task_stays_small() {
        // The allocator (mimalloc) rounds a task, this plus 48 bytes of
        // glommio's, up to its size class: a histogram of live allocations
        // by size (a counting allocator around mimalloc, 5,000 idle
        // connections) put a 544-byte future's task at 577..592 bytes (the
        // 640 class) and a 464-byte one's at 497..512. Over 336 bytes, the
        // task leaves the 384 class for the 448 one: 64 bytes of RSS more
        // per connection.
        let life = std::mem::size_of::<super::Life>();
        assert!(life <= 336, "a connection's life task is {life} bytes");
        // Only while the handshake runs (TLS, WebSocket upgrade), but every
        // connection in it holds this: 208 bytes, the 256 class.
        let serve = size_of_future(super::serve::<false>);
        let serve_ws = size_of_future(super::serve::<true>);
        let adopt = size_of_future(super::adopt);
        assert!(serve <= 208, "serve's future is {serve} bytes");
        assert!(
            serve_ws <= 208,
            "serve's future (WebSocket) is {serve_ws} bytes"
        );
        assert!(adopt <= 208, "adopt's future is {adopt} bytes");
    }

    /// Each connection's shared state lives in an `Rc` (16 bytes of counts
    /// before it). By mimalloc's bins, up to 368 bytes would share its
    /// 384-byte class, but measured, 368 cost 60 B of RSS per idle
    /// connection more than 360 did (`perf/memory.py --only 7`: 1,545 /
    /// 1,553 / 1,554 B against 1,477..1,496 B), so the limit is the size
    /// measured good. Its rare optional instants are `InstantCell`s (8
    /// bytes, not 16), its principal and reply permissions `Cell`s, and the
    /// WebSocket origin lives in the task, which reads it once.
    #[test]
    fn a_connections_shared_state_stays_in_its_size_class() {
        let size = std::mem::size_of::<super::ConnShared>();
        assert!(size <= 360, "ConnShared is {size} bytes");
    }
}
