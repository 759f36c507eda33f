//! One connection's task: TLS handshake, then a single poll loop that writes
//! queued frames and reads and processes many frames per read.
//!
//! The task owns the socket, the receive buffer and the [`Session`]. What
//! other tasks of the shard may touch lives in [`ConnShared`]: the outbound
//! queue (deliveries append to it), a waker, and flags (tick, slow consumer,
//! shutdown). One task per connection, reading and writing from the same
//! poll, means the socket is never shared and no wake-up is lost.
//!
//! Closing: a fatal error frame is queued, reading stops, the queue is
//! flushed within `close_grace`, the write side is shut down, and the input
//! is drained briefly so the peer reads the error before the socket closes.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arqonbus_core::ConnId;
use arqonbus_core::router::SubscriptionError;
use arqonbus_core::session::{Event, Rejection, Session, State, Step};
use arqonbus_proto::codec::{self, LEN_PREFIX};
use arqonbus_proto::v1::{self, ErrorCode, frame::Kind};
use bytes::Buf;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::outbound::Outbound;
use crate::readbuf::ReadBuf;
use crate::shard::Shard;
use crate::transport::{PlainStream, Transport};

/// Reasons another task asks a connection's task to look at it.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum Flag {
    /// A deadline passed (keep-alive, auth timeout, close grace).
    Tick = 1,
    /// Its outbound queue overflowed.
    SlowConsumer = 2,
    /// The server is stopping.
    Shutdown = 4,
}

/// The part of a connection other tasks of the shard may touch.
pub(crate) struct ConnShared {
    pub(crate) id: ConnId,
    pub(crate) out: RefCell<Outbound>,
    waker: Cell<Option<Waker>>,
    flags: Cell<u8>,
    /// When the tick loop should raise [`Flag::Tick`].
    pub(crate) deadline: Cell<Option<Instant>>,
    /// No more deliveries: the connection is closing.
    pub(crate) closing: Cell<bool>,
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

impl ConnShared {
    pub(crate) fn new(id: ConnId) -> Self {
        Self {
            id,
            out: RefCell::new(Outbound::new()),
            waker: Cell::new(None),
            flags: Cell::new(0),
            deadline: Cell::new(None),
            closing: Cell::new(false),
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
}

/// Most loop rounds in one poll before yielding to other tasks.
const ROUNDS_PER_POLL: usize = 8;

/// Serves one accepted connection until it ends.
pub(crate) async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(shard = %shard.id, error = %e, "TCP_NODELAY not set");
    }
    let conn = match shard.register() {
        Ok(conn) => conn,
        Err(refusal) => {
            tracing::warn!(shard = %shard.id, ?peer, code = ?refusal.code, "connection refused");
            refuse(&shard, stream, &refusal).await;
            return;
        }
    };
    tracing::debug!(shard = %shard.id, conn = %conn.id, ?peer, "accepted");
    run(&shard, &conn, stream).await;
    conn.closing.set(true);
    shard.unregister(&conn);
}

/// The TLS handshake (when configured), bounded by the auth timeout.
async fn establish(shard: &Shard, stream: TcpStream) -> io::Result<Transport> {
    let Some(acceptor) = &shard.cfg.tls else {
        return Ok(Transport::Plain(PlainStream(stream)));
    };
    let handshake = acceptor.accept(PlainStream(stream));
    let timeout = async {
        glommio::timer::sleep(Duration::from_millis(shard.cfg.limits.auth_timeout_ms)).await;
        Err(io::Error::from(io::ErrorKind::TimedOut))
    };
    let tls = futures_lite::future::or(handshake, timeout)
        .await
        .inspect_err(|_| {
            shard.stats.borrow_mut().tls_failures += 1;
        })?;
    Ok(Transport::Tls(Box::new(tls)))
}

/// Tells a connection the shard cannot take it, then closes it.
async fn refuse(shard: &Shard, stream: TcpStream, refusal: &Rejection) {
    let Ok(mut transport) = establish(shard, stream).await else {
        return;
    };
    let mut frame = Vec::new();
    if codec::encode(&refusal.to_frame(), &mut frame).is_err() {
        return;
    }
    let send = async {
        let _ = transport.write_all(&frame).await;
        let _ = transport.close().await;
    };
    let grace = Duration::from_millis(shard.cfg.limits.close_grace_ms.min(1_000));
    futures_lite::future::or(send, glommio::timer::sleep(grace)).await;
}

async fn run(shard: &Rc<Shard>, conn: &Rc<ConnShared>, stream: TcpStream) {
    let limits = &shard.cfg.limits;
    let mut session = Session::new(Instant::now(), shard.cfg.tls.is_some());
    conn.deadline.set(session.next_deadline(limits));
    let transport = match establish(shard, stream).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(shard = %shard.id, conn = %conn.id, error = %e, "TLS handshake failed");
            return;
        }
    };
    let mut io = ConnIo {
        transport,
        rbuf: ReadBuf::new(shard.cfg.read_chunk),
        needs_flush: false,
        close_at: None,
        closed_with: ErrorCode::Unspecified,
    };
    if shard.cfg.tls.is_some() {
        io.step(shard, conn, &mut session, Event::TlsEstablished);
    }

    let ended = futures_lite::future::poll_fn(|cx| io.poll(cx, shard, conn, &mut session)).await;
    if let Ended::Closed(_) = ended {
        io.linger(limits).await;
    }
    tracing::debug!(
        shard = %shard.id,
        conn = %conn.id,
        tenant = ?session.principal().map(|p| p.tenant),
        reason = ?ended,
        "closed"
    );
}

struct ConnIo {
    transport: Transport,
    rbuf: ReadBuf,
    /// Bytes were handed to TLS since the last flush.
    needs_flush: bool,
    /// When a closing connection gives up writing its final error.
    close_at: Option<Instant>,
    /// The code of the final error, once closing.
    closed_with: ErrorCode,
}

impl ConnIo {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        shard: &Rc<Shard>,
        conn: &ConnShared,
        session: &mut Session,
    ) -> Poll<Ended> {
        for _ in 0..ROUNDS_PER_POLL {
            let flags = conn.take_flags();
            if flags & Flag::Shutdown as u8 != 0 {
                self.step(shard, conn, session, Event::Shutdown);
            }
            if flags & Flag::SlowConsumer as u8 != 0 {
                self.step(shard, conn, session, Event::SlowConsumer);
            }
            if flags & Flag::Tick as u8 != 0 {
                if self.close_at.is_some_and(|t| t <= Instant::now()) {
                    return Poll::Ready(Ended::GraceExpired);
                }
                self.step(shard, conn, session, Event::Tick);
            }

            let mut progress = false;
            match self.poll_write(cx, conn) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(e)) => return Poll::Ready(Ended::Io(e.kind())),
                Poll::Pending => {}
            }

            if session.state() == State::Closing {
                if conn.out.borrow().is_empty() && !self.needs_flush {
                    return Poll::Ready(Ended::Closed(self.closed_with));
                }
            } else if conn.out.borrow().pending() as u64 > shard.cfg.limits.max_pending_bytes {
                // The client does not read what we answer (pongs, errors):
                // stop reading its requests until it does. The pending write
                // above has registered the wake-up.
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
                        session.handle(
                            Event::Closed,
                            Instant::now(),
                            &shard.auth.borrow(),
                            &shard.cfg.limits,
                        );
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
                    self.needs_flush = matches!(self.transport, Transport::Tls(_));
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

    /// Decodes and handles every whole frame in the receive buffer.
    fn process(&mut self, shard: &Rc<Shard>, conn: &ConnShared, session: &mut Session) {
        loop {
            if !matches!(session.state(), State::AwaitingConnect | State::Open) {
                break;
            }
            let max_frame = session.max_frame(&shard.cfg.limits);
            let event = match codec::frame_len(self.rbuf.filled(), max_frame) {
                Ok(None) => break,
                Err(e) => Event::Undecodable(e),
                Ok(Some(total)) => {
                    let mut frame = self.rbuf.take(total);
                    frame.advance(LEN_PREFIX);
                    match codec::decode_body(frame) {
                        Ok(kind) => Event::Frame(kind),
                        Err(e) => Event::Undecodable(e),
                    }
                }
            };
            self.step(shard, conn, session, event);
        }
        shard.after_batch();
    }

    /// Feeds one event to the session and carries out the step.
    fn step(&mut self, shard: &Rc<Shard>, conn: &ConnShared, session: &mut Session, event: Event) {
        let now = Instant::now();
        let step = {
            let auth = shard.auth.borrow();
            session.handle(event, now, &auth, &shard.cfg.limits)
        };
        match step {
            Step::Nothing => {}
            Step::Welcome(principal) => {
                let welcome = shard.welcome(conn.id, &principal.tenant_name);
                conn.out.borrow_mut().push_frame(&welcome);
                tracing::debug!(
                    shard = %shard.id,
                    conn = %conn.id,
                    tenant = %principal.tenant,
                    principal = %principal.id,
                    kind = ?session.client_kind(),
                    name = session.client_name(),
                    "authenticated"
                );
            }
            Step::Publish(msg) => {
                if let Some(p) = session.principal() {
                    shard.publish(p.tenant, conn.id, session.echo(), msg);
                }
            }
            Step::Subscribe {
                sid,
                pattern,
                queue,
            } => {
                let Some(p) = session.principal() else { return };
                if let Err(e) = shard.subscribe(p.tenant, conn.id, sid, pattern, queue) {
                    Self::reject_subscription(shard, conn, sid.0, e);
                }
            }
            Step::Unsubscribe { sid, after } => {
                if let Err(e) = shard.unsubscribe(conn.id, sid, after) {
                    Self::reject_subscription(shard, conn, sid.0, e);
                }
            }
            Step::Pong => shard.pong(conn),
            Step::Ping => conn.out.borrow_mut().push_frame(&Kind::Ping(v1::Ping {})),
            Step::Reject(r) => self.reject(shard, conn, &r, now),
        }
        conn.deadline.set(
            self.close_at
                .or_else(|| session.next_deadline(&shard.cfg.limits)),
        );
    }

    fn reject_subscription(shard: &Shard, conn: &ConnShared, sid: u64, e: SubscriptionError) {
        let (code, detail) = match e {
            SubscriptionError::InvalidSid => (ErrorCode::InvalidSid, "sid is 0 or already in use"),
            SubscriptionError::TooMany(_) => (
                ErrorCode::MaxSubscriptionsExceeded,
                "connection holds max_subscriptions subscriptions",
            ),
            SubscriptionError::UnknownSid => {
                (ErrorCode::UnknownSid, "no subscription with that sid")
            }
        };
        shard.stats.borrow_mut().client_errors += 1;
        conn.out.borrow_mut().push_frame(
            &Rejection {
                code,
                close: false,
                sid,
                detail,
            }
            .to_frame(),
        );
    }

    fn reject(&mut self, shard: &Shard, conn: &ConnShared, r: &Rejection, now: Instant) {
        {
            let mut stats = shard.stats.borrow_mut();
            match r.code {
                ErrorCode::AuthenticationFailed => stats.auth_failures += 1,
                ErrorCode::StaleConnection => stats.stale_connections += 1,
                ErrorCode::ProtocolViolation
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnsupportedVersion => {
                    stats.protocol_errors += 1;
                }
                _ if !r.close => stats.client_errors += 1,
                _ => {}
            }
        }
        let level_is_warn = matches!(r.code, ErrorCode::SlowConsumer);
        if level_is_warn {
            tracing::warn!(shard = %shard.id, conn = %conn.id, code = ?r.code, "closing slow consumer");
        } else if r.close {
            tracing::info!(shard = %shard.id, conn = %conn.id, code = ?r.code, detail = r.detail, "closing connection");
        } else {
            tracing::debug!(shard = %shard.id, conn = %conn.id, code = ?r.code, sid = r.sid, "client error");
        }
        let mut out = conn.out.borrow_mut();
        if r.code == ErrorCode::SlowConsumer {
            out.drop_queued();
        }
        out.push_frame(&r.to_frame());
        drop(out);
        if r.close {
            self.closed_with = r.code;
            conn.closing.set(true);
            let at = now + Duration::from_millis(shard.cfg.limits.close_grace_ms);
            self.close_at = Some(at);
            conn.deadline.set(Some(at));
        }
    }

    /// After the final error: shut down our side and read until the peer
    /// closes (bounded), so a reset does not destroy the error in flight.
    async fn linger(&mut self, limits: &arqonbus_core::limits::Limits) {
        // TLS: close_notify, then (like plain TCP) shut down the write side.
        let _ = self.transport.close().await;
        let grace = Duration::from_millis(limits.close_grace_ms.min(1_000));
        let drain = async {
            let mut sink = [0u8; 4096];
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
