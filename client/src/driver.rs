//! The background task: one per [`Client`](crate::Client), owning the socket
//! of the current connection and everything that must outlive a connection
//! (subscriptions, pending requests, work queued while disconnected).
//!
//! # Invariants
//! - Commands are handled in the order they were sent. While connected, they
//!   are encoded straight into the write queue, or wait in `queued` while
//!   that queue is above its high-water mark (close and request
//!   cancellation act at once); while disconnected, ordered work
//!   (publishes, requests, flushes, presence queries) waits in `queued`,
//!   and subscription, presence-track and watch changes update `subs` and
//!   `watches` directly.
//! - After every (re)connect, the task first re-sends every live
//!   subscription (with its remaining `unsubscribe_after` count and its
//!   presence track), every presence watch, then the
//!   barriers that were pending on the lost connection, then `queued`. So a
//!   buffered publish is written after the resubscriptions.
//! - Pongs answer pings in order: `pongs` is a FIFO with one waiter per ping
//!   sent on this connection.
//! - The reader never waits for a subscriber: a full buffer drops the message
//!   and counts it.
//! - Many frames are decoded per read, and many frames are encoded per write
//!   (the write queue is only refilled below a high-water mark; publish
//!   permits are returned only when a publish is encoded, so the
//!   reconnect-buffer semaphore bounds what waits in `queued`).

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use arqonbus_proto::codec::{self, LEN_PREFIX};
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::Sid;
use crate::backoff::jitter_seed;
use crate::client::{ConnectionState, State};
use crate::error::{Error, ProtocolViolation, ServerError, code_name};
use crate::events::Event;
use crate::inbox::Inbox;
use crate::message::{Message, MessageStatus};
use crate::options::Resolved;
use crate::outbound::{MAX_SLICES, OutQueue, Outgoing};
use crate::presence::{PresenceAnswer, PresenceEvent, PresenceMember};
use crate::subscriber::SubShared;
use crate::transport::{self, Connection, kind_name};

/// Commands taken from the channel per wake-up.
const COMMAND_BATCH: usize = 256;
/// Stop taking commands while this many bytes wait for the socket.
const WRITE_HIGH_WATER: usize = 1024 * 1024;
/// Read-buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// Unanswered keepalive pings before the connection counts as stale.
const MAX_PINGS_OUTSTANDING: usize = 2;
/// How long a close may spend writing what is queued.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What a [`Client`](crate::Client) asks the task to do.
pub(crate) enum Command {
    Publish(Outgoing),
    Request {
        token: u64,
        publish: Outgoing,
        reply: oneshot::Sender<Result<Message, Error>>,
    },
    CancelRequest(u64),
    Subscribe {
        sid: Sid,
        pattern: Bytes,
        queue: Bytes,
        sink: Sink,
    },
    Unsubscribe {
        sid: Sid,
        after: u64,
    },
    /// List subscription `sid` in presence (answered once checked and
    /// queued; the server's verdict comes before the next `Pong`).
    Track {
        sid: Sid,
        metadata: Vec<(String, String)>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Watch {
        id: u64,
        subject: Bytes,
        tx: mpsc::Sender<PresenceEvent>,
        shared: Arc<SubShared>,
    },
    Unwatch {
        id: u64,
    },
    Query {
        id: u64,
        subject: Bytes,
        reply: oneshot::Sender<Result<PresenceAnswer, Error>>,
    },
    Flush(oneshot::Sender<Result<(), Error>>),
    Drain(oneshot::Sender<Result<(), Error>>),
    Close(oneshot::Sender<()>),
}

/// Where a subscription's messages go.
pub(crate) enum Sink {
    /// A [`Subscriber`](crate::Subscriber).
    Channel {
        tx: mpsc::Sender<Message>,
        shared: Arc<SubShared>,
    },
    /// The client's request inbox.
    Inbox { shared: Arc<SubShared> },
}

impl Sink {
    fn shared(&self) -> &SubShared {
        match self {
            Self::Channel { shared, .. } | Self::Inbox { shared } => shared,
        }
    }
}

/// One live subscription.
struct SubEntry {
    pattern: Bytes,
    queue: Bytes,
    sink: Sink,
    /// Deliveries left before an `unsubscribe_after` takes effect.
    remaining: Option<u64>,
    /// Whether the last delivery attempt found the buffer full.
    overflowing: bool,
    /// Its presence metadata, while it is (to be) listed.
    presence: Option<Vec<(String, String)>>,
}

/// One presence watch.
struct WatchEntry {
    subject: Bytes,
    tx: mpsc::Sender<PresenceEvent>,
    shared: Arc<SubShared>,
    overflowing: bool,
}

/// Who waits for a `Pong`.
enum PongWaiter {
    Keepalive,
    Flush(oneshot::Sender<Result<(), Error>>),
    Drain(oneshot::Sender<Result<(), Error>>),
}

/// Who to tell once the client is closed.
enum Ack {
    Nobody,
    Close(oneshot::Sender<()>),
    Drain(oneshot::Sender<Result<(), Error>>),
}

impl Ack {
    fn complete(self) {
        // A dropped receiver only means the caller stopped waiting.
        match self {
            Self::Nobody => {}
            Self::Close(tx) => {
                let _gone = tx.send(());
            }
            Self::Drain(tx) => {
                let _gone = tx.send(Ok(()));
            }
        }
    }
}

/// How a connection (or the wait for one) ended.
enum Exit {
    /// Closed on request (or every handle was dropped).
    Closed(Ack),
    /// Lost; reconnect if the error allows it.
    Lost(Error),
}

/// The background task's state.
pub(crate) struct Driver {
    opts: Arc<Resolved>,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<State>,
    permits: Arc<Semaphore>,
    events: broadcast::Sender<Event>,
    inbox: Inbox,
    subs: HashMap<u64, SubEntry>,
    requests: HashMap<u64, oneshot::Sender<Result<Message, Error>>>,
    watches: HashMap<u64, WatchEntry>,
    /// Presence queries sent on this connection, by request id.
    queries: HashMap<u64, oneshot::Sender<Result<PresenceAnswer, Error>>>,
    /// Ordered work waiting for a connection.
    queued: VecDeque<Command>,
    /// The server announced this connection's close (`Drain`): it spreads
    /// those closes itself, so the first reconnect attempt is immediate.
    announced: bool,
}

impl Driver {
    pub(crate) fn new(
        opts: Arc<Resolved>,
        commands: mpsc::UnboundedReceiver<Command>,
        state: watch::Sender<State>,
        permits: Arc<Semaphore>,
        events: broadcast::Sender<Event>,
        inbox: Inbox,
    ) -> Self {
        Self {
            opts,
            commands,
            state,
            permits,
            events,
            inbox,
            subs: HashMap::new(),
            requests: HashMap::new(),
            watches: HashMap::new(),
            queries: HashMap::new(),
            queued: VecDeque::new(),
            announced: false,
        }
    }

    /// Serves `first`, then reconnects as the policy allows, until closed.
    pub(crate) async fn run(mut self, first: Connection) {
        let mut conn = first;
        loop {
            let lost = match self.serve(conn).await {
                Exit::Closed(ack) => {
                    self.shutdown(None);
                    ack.complete();
                    return;
                }
                Exit::Lost(err) => err,
            };
            if self.announced {
                tracing::info!(error = %lost, "the server closed the connection as announced; reconnecting");
            } else {
                tracing::warn!(error = %lost, "connection lost");
            }
            let reconnect = lost.allows_reconnect() && self.opts.reconnect.allows(0);
            if reconnect {
                // Before the event, so a listener already sees the new state.
                self.state
                    .send_modify(|s| s.status = ConnectionState::Reconnecting);
            }
            self.emit(Event::Disconnected {
                reason: lost.clone(),
            });
            if !reconnect {
                self.shutdown(Some(lost));
                return;
            }
            match self.reconnect(lost).await {
                Ok(next) => {
                    tracing::info!(
                        session_id = next.info.session_id,
                        shard = next.info.shard,
                        "reconnected"
                    );
                    self.emit(Event::Reconnected {
                        info: Arc::clone(&next.info),
                    });
                    conn = next;
                }
                Err(Exit::Closed(ack)) => {
                    self.shutdown(None);
                    ack.complete();
                    return;
                }
                Err(Exit::Lost(err)) => {
                    tracing::warn!(error = %err, "giving up reconnecting");
                    self.shutdown(Some(err));
                    return;
                }
            }
        }
    }

    fn emit(&self, event: Event) {
        // No receivers is fine: events are optional.
        let _unheard = self.events.send(event);
    }

    /// Runs one connection until it is lost or closed.
    async fn serve(&mut self, conn: Connection) -> Exit {
        let Connection { io, mut rbuf, info } = conn;
        let max_frame = info.limits.max_inbound_frame();
        self.state.send_modify(|s| {
            s.status = ConnectionState::Connected;
            s.info = Arc::clone(&info);
        });
        let (mut reader, mut writer) = tokio::io::split(io);
        let mut out = OutQueue::new();
        let mut pongs: VecDeque<PongWaiter> = VecDeque::new();
        let mut closing: Option<Ack> = None;
        let mut close_deadline: Option<Instant> = None;
        let mut needs_flush = false;

        self.replay(&mut out);
        if let Err(err) =
            self.process_frames(&mut rbuf, max_frame, &mut out, &mut pongs, &mut closing)
        {
            return self.end(err, pongs, closing);
        }

        let period = self.opts.ping_interval;
        let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(COMMAND_BATCH);

        loop {
            // Ordered work waits in `queued` while the write queue is full.
            while out.len() < WRITE_HIGH_WATER
                && let Some(command) = self.queued.pop_front()
            {
                self.dispatch(command, &mut out, &mut pongs, &mut closing);
            }
            if closing.is_some() {
                let deadline = *close_deadline.get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
                if out.is_empty() && !needs_flush && self.queued.is_empty() {
                    // Best effort: a TLS close_notify and a FIN.
                    let _best_effort = tokio::time::timeout_at(deadline, writer.shutdown()).await;
                    return self.end(Error::Closed, pongs, closing);
                }
            }
            reserve_for_next_frame(&mut rbuf);
            tokio::select! {
                read = reader.read_buf(&mut rbuf) => {
                    let result = match read {
                        Ok(0) => Err(Error::ConnectionReset),
                        Ok(_) => self.process_frames(&mut rbuf, max_frame, &mut out, &mut pongs, &mut closing),
                        Err(e) => Err(Error::from_io(e)),
                    };
                    if let Err(err) = result {
                        return self.end(err, pongs, closing);
                    }
                }
                progress = drive_writer(&mut writer, &out), if !out.is_empty() || needs_flush => {
                    match progress {
                        Ok(Some(written)) => {
                            out.advance(written);
                            needs_flush = true;
                        }
                        Ok(None) => needs_flush = false,
                        Err(e) => return self.end(Error::from_io(e), pongs, closing),
                    }
                }
                received = self.commands.recv_many(&mut batch, COMMAND_BATCH), if closing.is_none() => {
                    if received == 0 {
                        // Every Client and Subscriber is gone.
                        closing = Some(Ack::Nobody);
                    }
                    for command in batch.drain(..) {
                        match command {
                            _ if closing.is_some() => self.reject(command, &Error::Closed),
                            // Close and cancel take effect at once, even when
                            // the socket is slow.
                            Command::Close(tx) => closing = Some(Ack::Close(tx)),
                            Command::CancelRequest(token) => {
                                self.requests.remove(&token);
                            }
                            _ if out.len() >= WRITE_HIGH_WATER || !self.queued.is_empty() => {
                                self.queued.push_back(command);
                            }
                            _ => self.dispatch(command, &mut out, &mut pongs, &mut closing),
                        }
                    }
                }
                _ = keepalive.tick() => {
                    let outstanding = pongs
                        .iter()
                        .filter(|w| matches!(w, PongWaiter::Keepalive))
                        .count();
                    if outstanding >= MAX_PINGS_OUTSTANDING {
                        return self.end(Error::StaleConnection, pongs, closing);
                    }
                    pongs.push_back(PongWaiter::Keepalive);
                    push_frame(&mut out, &Kind::Ping(v1::Ping {}));
                }
                () = tokio::time::sleep_until(close_deadline.unwrap_or_else(Instant::now)), if close_deadline.is_some() => {
                    tracing::debug!("close grace elapsed with data still queued");
                    return self.end(Error::Closed, pongs, closing);
                }
            }
        }
    }

    /// Decides how a connection ended. Barriers pending on a lost connection
    /// are queued again, ahead of the rest (they are re-sent after the
    /// resubscription); a drain in progress completes, since a lost
    /// connection holds no subscription. Frames encoded but not written are
    /// lost (delivery is at most once).
    fn end(&mut self, err: Error, pongs: VecDeque<PongWaiter>, closing: Option<Ack>) -> Exit {
        // Queries in flight on this connection will not be answered.
        for (_, tx) in self.queries.drain() {
            let _gone = tx.send(Err(err.clone()));
        }
        if let Some(ack) = closing {
            for waiter in pongs {
                // A dropped receiver only means the caller stopped waiting.
                let _gone = match waiter {
                    PongWaiter::Keepalive => Ok(()),
                    PongWaiter::Flush(tx) => tx.send(Err(Error::Closed)),
                    // Closed is what a drain wants.
                    PongWaiter::Drain(tx) => tx.send(Ok(())),
                };
            }
            return Exit::Closed(ack);
        }
        let mut drain = None;
        let mut flushes = Vec::new();
        for waiter in pongs {
            match waiter {
                PongWaiter::Keepalive => {}
                PongWaiter::Flush(tx) => flushes.push(tx),
                PongWaiter::Drain(tx) => drain = Some(tx),
            }
        }
        // Their pings were sent before anything still queued.
        for tx in flushes.into_iter().rev() {
            self.queued.push_front(Command::Flush(tx));
        }
        match drain {
            Some(tx) => Exit::Closed(Ack::Drain(tx)),
            None => Exit::Lost(err),
        }
    }

    /// Re-sends every live subscription (in sid order) with its remaining
    /// `unsubscribe_after` count.
    fn replay(&self, out: &mut OutQueue) {
        let mut sids: Vec<u64> = self.subs.keys().copied().collect();
        sids.sort_unstable();
        for sid in sids {
            let Some(entry) = self.subs.get(&sid) else {
                continue;
            };
            push_frame(
                out,
                &Kind::Subscribe(v1::Subscribe {
                    sid,
                    pattern: entry.pattern.clone(),
                    queue_group: entry.queue.clone(),
                }),
            );
            if let Some(after) = entry.remaining {
                push_frame(
                    out,
                    &Kind::Unsubscribe(v1::Unsubscribe {
                        sid,
                        after_messages: after,
                    }),
                );
            }
            if let Some(metadata) = &entry.presence {
                push_frame(out, &track_frame(sid, metadata));
            }
        }
        let mut ids: Vec<u64> = self.watches.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(w) = self.watches.get(&id) {
                push_frame(out, &watch_frame(id, w.subject.clone()));
            }
        }
    }

    /// Records a presence track of `sid`; returns the frame to send, if
    /// the subscription is not listed already.
    fn track_locally(
        &mut self,
        sid: Sid,
        metadata: Vec<(String, String)>,
    ) -> Result<Option<Kind>, Error> {
        let entry = self.subs.get_mut(&sid.0).ok_or(Error::Closed)?;
        if entry.presence.is_some() {
            return Ok(None);
        }
        if entry
            .pattern
            .split(|&b| b == b'.')
            .any(|t| t == b"*" || t == b">")
        {
            return Err(Error::InvalidSubject {
                subject: entry.pattern.escape_ascii().to_string(),
                source: arqonbus_core::subject::SubjectError::WildcardNotAllowed,
            });
        }
        let frame = track_frame(sid.0, &metadata);
        entry.presence = Some(metadata);
        Ok(Some(frame))
    }

    /// Handles one command while connected.
    fn dispatch(
        &mut self,
        command: Command,
        out: &mut OutQueue,
        pongs: &mut VecDeque<PongWaiter>,
        closing: &mut Option<Ack>,
    ) {
        match command {
            Command::Publish(publish) => self.write_publish(out, &publish),
            Command::Request {
                token,
                publish,
                reply,
            } => {
                if reply.is_closed() {
                    // The caller already gave up: do not send it at all.
                    self.permits.add_permits(publish.permits as usize);
                } else {
                    self.requests.insert(token, reply);
                    self.write_publish(out, &publish);
                }
            }
            Command::CancelRequest(token) => {
                self.requests.remove(&token);
            }
            Command::Subscribe {
                sid,
                pattern,
                queue,
                sink,
            } => {
                push_frame(
                    out,
                    &Kind::Subscribe(v1::Subscribe {
                        sid: sid.0,
                        pattern: pattern.clone(),
                        queue_group: queue.clone(),
                    }),
                );
                self.subs.insert(sid.0, SubEntry::new(pattern, queue, sink));
            }
            Command::Unsubscribe { sid, after } => {
                // Unknown sids (already ended) are not sent: the server would
                // only answer UNKNOWN_SID.
                if self.unsubscribe_locally(sid, after) {
                    push_frame(
                        out,
                        &Kind::Unsubscribe(v1::Unsubscribe {
                            sid: sid.0,
                            after_messages: after,
                        }),
                    );
                }
            }
            Command::Track {
                sid,
                metadata,
                reply,
            } => {
                let tracked = self.track_locally(sid, metadata).map(|frame| {
                    if let Some(frame) = frame {
                        push_frame(out, &frame);
                    }
                });
                let _gone = reply.send(tracked);
            }
            Command::Watch {
                id,
                subject,
                tx,
                shared,
            } => {
                push_frame(out, &watch_frame(id, subject.clone()));
                self.watches
                    .insert(id, WatchEntry::new(subject, tx, shared));
            }
            Command::Unwatch { id } => {
                if self.watches.remove(&id).is_some() {
                    push_frame(
                        out,
                        &Kind::PresenceWatch(v1::PresenceWatch {
                            watch_id: id,
                            subject: Bytes::new(),
                            stop: true,
                        }),
                    );
                }
            }
            Command::Query { id, subject, reply } => {
                // Callers that gave up (timed out) leave closed senders.
                self.queries.retain(|_, tx| !tx.is_closed());
                self.queries.insert(id, reply);
                push_frame(
                    out,
                    &Kind::PresenceQuery(v1::PresenceQuery {
                        request_id: id,
                        subject,
                    }),
                );
            }
            Command::Flush(tx) => {
                pongs.push_back(PongWaiter::Flush(tx));
                push_frame(out, &Kind::Ping(v1::Ping {}));
            }
            Command::Drain(tx) => {
                let mut sids: Vec<u64> = self.subs.keys().copied().collect();
                sids.sort_unstable();
                for sid in sids {
                    push_frame(
                        out,
                        &Kind::Unsubscribe(v1::Unsubscribe {
                            sid,
                            after_messages: 0,
                        }),
                    );
                }
                pongs.push_back(PongWaiter::Drain(tx));
                push_frame(out, &Kind::Ping(v1::Ping {}));
            }
            Command::Close(tx) => *closing = Some(Ack::Close(tx)),
        }
    }

    /// Handles one command while disconnected; returns an exit when the
    /// command ends the client.
    fn dispatch_offline(&mut self, command: Command) -> Option<Exit> {
        match command {
            Command::Publish(_)
            | Command::Request { .. }
            | Command::Flush(_)
            | Command::Query { .. } => {
                self.queued.push_back(command);
            }
            // State only: the reconnect replays it.
            Command::Track {
                sid,
                metadata,
                reply,
            } => {
                let _gone = reply.send(self.track_locally(sid, metadata).map(|_| ()));
            }
            Command::Watch {
                id,
                subject,
                tx,
                shared,
            } => {
                self.watches
                    .insert(id, WatchEntry::new(subject, tx, shared));
            }
            Command::Unwatch { id } => {
                self.watches.remove(&id);
            }
            Command::CancelRequest(token) => {
                self.requests.remove(&token);
            }
            Command::Subscribe {
                sid,
                pattern,
                queue,
                sink,
            } => {
                self.subs.insert(sid.0, SubEntry::new(pattern, queue, sink));
            }
            Command::Unsubscribe { sid, after } => {
                self.unsubscribe_locally(sid, after);
            }
            // Without a connection there is nothing left to drain.
            Command::Drain(tx) => return Some(Exit::Closed(Ack::Drain(tx))),
            Command::Close(tx) => return Some(Exit::Closed(Ack::Close(tx))),
        }
        None
    }

    /// Applies an unsubscribe to `subs`; returns whether the sid was live.
    fn unsubscribe_locally(&mut self, sid: Sid, after: u64) -> bool {
        if after == 0 {
            return self.subs.remove(&sid.0).is_some();
        }
        match self.subs.get_mut(&sid.0) {
            Some(entry) => {
                entry.remaining = Some(after);
                true
            }
            None => false,
        }
    }

    fn write_publish(&self, out: &mut OutQueue, publish: &Outgoing) {
        if let Err(e) = out.push_publish(publish) {
            tracing::error!(error = %e, "cannot encode a publish; dropped");
        }
        self.permits.add_permits(publish.permits as usize);
    }

    /// Waits for a new connection, following the reconnect policy, while
    /// still taking commands.
    async fn reconnect(&mut self, mut last: Error) -> Result<Connection, Exit> {
        let policy = self.opts.reconnect;
        let mut attempt = 0u32;
        // After a `Drain`, the server chose when to close (spread over its
        // window, a tenant's clients together): follow at once.
        let mut at_once = std::mem::take(&mut self.announced);
        loop {
            if !policy.allows(attempt) {
                return Err(Exit::Lost(last));
            }
            let delay = if std::mem::take(&mut at_once) {
                Duration::ZERO
            } else {
                policy.delay(attempt, jitter_seed())
            };
            attempt = attempt.saturating_add(1);
            tracing::debug!(attempt, delay_ms = delay.as_millis(), "reconnect scheduled");
            self.offline(tokio::time::sleep(delay)).await?;
            let opts = Arc::clone(&self.opts);
            match self
                .offline(async move { transport::connect(&opts).await })
                .await?
            {
                Ok(conn) => return Ok(conn),
                Err(err) if err.allows_reconnect() => {
                    tracing::debug!(attempt, error = %err, "reconnect attempt failed");
                    last = err;
                }
                Err(err) => return Err(Exit::Lost(err)),
            }
        }
    }

    /// Drives `work` while handling commands as a disconnected client.
    async fn offline<F: Future>(&mut self, work: F) -> Result<F::Output, Exit> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return Ok(output),
                command = self.commands.recv() => match command {
                    None => return Err(Exit::Closed(Ack::Nobody)),
                    Some(command) => {
                        if let Some(exit) = self.dispatch_offline(command) {
                            return Err(exit);
                        }
                    }
                },
            }
        }
    }

    /// Decodes and handles every whole frame in `rbuf`.
    fn process_frames(
        &mut self,
        rbuf: &mut BytesMut,
        max_frame: u32,
        out: &mut OutQueue,
        pongs: &mut VecDeque<PongWaiter>,
        closing: &mut Option<Ack>,
    ) -> Result<(), Error> {
        loop {
            let frame = codec::decode(rbuf, max_frame)
                .map_err(|e| Error::Protocol(ProtocolViolation::Decode(e)))?;
            let Some(frame) = frame else {
                return Ok(());
            };
            match frame {
                Kind::Message(message) => self.deliver(message),
                Kind::Ping(_) => push_frame(out, &Kind::Pong(v1::Pong {})),
                Kind::Pong(_) => match pongs.pop_front() {
                    Some(PongWaiter::Keepalive) => {}
                    Some(PongWaiter::Flush(tx)) => {
                        let _gone = tx.send(Ok(()));
                    }
                    Some(PongWaiter::Drain(tx)) => *closing = Some(Ack::Drain(tx)),
                    None => tracing::debug!("ignoring a Pong nobody waited for"),
                },
                Kind::Drain(drain) => {
                    tracing::info!(deadline_ms = drain.deadline_ms, "server is draining");
                    self.announced = true;
                    self.emit(Event::ServerDraining {
                        deadline: std::time::Duration::from_millis(u64::from(drain.deadline_ms)),
                        reason: drain.reason,
                    });
                }
                Kind::Error(frame) => {
                    let err = ServerError::from_frame(&frame);
                    if err.fatal {
                        return Err(Error::from_server(err));
                    }
                    self.on_server_error(err);
                }
                Kind::PresenceReply(reply) => self.answer_query(reply),
                Kind::PresenceEvent(event) => self.deliver_presence(event),
                other @ (Kind::Connect(_)
                | Kind::Welcome(_)
                | Kind::Publish(_)
                | Kind::Subscribe(_)
                | Kind::Unsubscribe(_)
                | Kind::PresenceTrack(_)
                | Kind::PresenceWatch(_)
                | Kind::PresenceQuery(_)) => {
                    return Err(Error::Protocol(ProtocolViolation::UnexpectedFrame(
                        kind_name(&other),
                    )));
                }
            }
        }
    }

    /// Hands a message to its subscription without ever waiting.
    fn deliver(&mut self, message: v1::Message) {
        let sid = message.sid;
        let Some(entry) = self.subs.get_mut(&sid) else {
            tracing::trace!(sid, "message for an ended subscription");
            return;
        };
        let message = Message::from_wire(message);
        match &entry.sink {
            Sink::Channel { tx, shared } => match tx.try_send(message) {
                Ok(()) => entry.overflowing = false,
                Err(TrySendError::Full(_)) => {
                    let dropped = shared.count_drop();
                    if !entry.overflowing {
                        entry.overflowing = true;
                        tracing::warn!(
                            sid,
                            dropped,
                            "subscriber buffer full: dropping messages (client-side slow consumer)"
                        );
                        // Direct field access: `entry` borrows `self.subs`.
                        let _unheard = self.events.send(Event::SlowConsumer {
                            sid: Sid(sid),
                            dropped,
                        });
                    }
                }
                // The Subscriber was dropped; its Unsubscribe is queued.
                Err(TrySendError::Closed(_)) => {}
            },
            Sink::Inbox { .. } => answer_request(&self.inbox, &mut self.requests, message),
        }
        if let Some(remaining) = entry.remaining.as_mut() {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                self.subs.remove(&sid);
            }
        }
    }

    /// Completes the presence query `reply` answers.
    fn answer_query(&mut self, reply: v1::PresenceReply) {
        // A late answer (its caller timed out) finds no waiter.
        let Some(tx) = self.queries.remove(&reply.request_id) else {
            return;
        };
        let result = if reply.error == 0 {
            Ok(PresenceAnswer {
                subject: String::from_utf8_lossy(&reply.subject).into_owned(),
                members: reply
                    .members
                    .into_iter()
                    .map(PresenceMember::from_wire)
                    .collect(),
                truncated: reply.truncated,
            })
        } else {
            let code = v1::ErrorCode::try_from(reply.error).unwrap_or(v1::ErrorCode::Unspecified);
            Err(Error::Server(ServerError {
                code,
                message: "presence query refused".into(),
                fatal: false,
                sid: None,
            }))
        };
        let _gone = tx.send(result);
    }

    /// Hands a presence event to its watch without ever waiting.
    fn deliver_presence(&mut self, event: v1::PresenceEvent) {
        let id = event.watch_id;
        let Some(w) = self.watches.get_mut(&id) else {
            tracing::trace!(id, "presence event for an ended watch");
            return;
        };
        let Some(event) = PresenceEvent::from_wire(event) else {
            tracing::debug!(id, "ignoring a presence event this SDK cannot represent");
            return;
        };
        match w.tx.try_send(event) {
            Ok(()) => w.overflowing = false,
            Err(TrySendError::Full(_)) => {
                let dropped = w.shared.count_drop();
                if !w.overflowing {
                    w.overflowing = true;
                    tracing::warn!(id, dropped, "presence watcher buffer full: dropping events");
                }
            }
            // The watcher was dropped; its Unwatch is queued.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// A non-fatal server error: it ends the subscription or watch it
    /// names, if any, except a refused presence track, after which the
    /// subscription goes on unlisted.
    fn on_server_error(&mut self, err: ServerError) {
        tracing::warn!(
            code = code_name(err.code),
            sid = err.sid.map(|s| s.0),
            message = %err.message,
            "server reported an error"
        );
        if let Some(sid) = err.sid
            && let Some(w) = self.watches.remove(&sid.0)
        {
            w.shared.fail(Error::Server(err.clone()));
        } else if let Some(sid) = err.sid
            && err.code == v1::ErrorCode::PresenceLimitExceeded
            && let Some(entry) = self.subs.get_mut(&sid.0)
        {
            entry.presence = None;
            entry.sink.shared().refuse_track(Error::Server(err.clone()));
        } else if let Some(sid) = err.sid
            && let Some(entry) = self.subs.remove(&sid.0)
        {
            if matches!(entry.sink, Sink::Inbox { .. }) {
                tracing::error!("the server rejected the request inbox; requests will time out");
            }
            entry.sink.shared().fail(Error::Server(err.clone()));
        }
        self.emit(Event::ServerError(err));
    }

    /// Fails or acknowledges a command that arrived after the client closed.
    fn reject(&self, command: Command, err: &Error) {
        match command {
            Command::Publish(publish) => self.permits.add_permits(publish.permits as usize),
            Command::Request { reply, .. } => {
                let _gone = reply.send(Err(err.clone()));
            }
            Command::Flush(tx) => {
                let _gone = tx.send(Err(err.clone()));
            }
            Command::Drain(tx) => {
                let _gone = tx.send(Ok(()));
            }
            Command::Close(tx) => {
                let _gone = tx.send(());
            }
            Command::Track { reply, .. } => {
                let _gone = reply.send(Err(err.clone()));
            }
            Command::Query { reply, .. } => {
                let _gone = reply.send(Err(err.clone()));
            }
            Command::Watch { shared, .. } => shared.fail(err.clone()),
            Command::CancelRequest(_)
            | Command::Subscribe { .. }
            | Command::Unsubscribe { .. }
            | Command::Unwatch { .. } => {}
        }
    }

    /// Closes the client for good: publishes the final state, ends every
    /// subscription, and fails everything still waiting.
    fn shutdown(&mut self, reason: Option<Error>) {
        if let Some(err) = &reason {
            tracing::warn!(error = %err, "client closed");
        } else {
            tracing::debug!("client closed");
        }
        self.state.send_modify(|s| {
            s.status = ConnectionState::Closed;
            s.closed_reason.clone_from(&reason);
        });
        self.permits.close();
        let err = reason.clone().unwrap_or(Error::Closed);
        for (_, entry) in self.subs.drain() {
            if let Some(reason) = &reason {
                entry.sink.shared().fail(reason.clone());
            }
        }
        for (_, tx) in self.requests.drain() {
            let _gone = tx.send(Err(err.clone()));
        }
        for (_, w) in self.watches.drain() {
            if let Some(reason) = &reason {
                w.shared.fail(reason.clone());
            }
        }
        for (_, tx) in self.queries.drain() {
            let _gone = tx.send(Err(err.clone()));
        }
        self.commands.close();
        let mut leftovers: Vec<Command> = self.queued.drain(..).collect();
        while let Ok(command) = self.commands.try_recv() {
            leftovers.push(command);
        }
        for command in leftovers {
            self.reject(command, &err);
        }
        self.emit(Event::Closed { reason });
    }
}

impl SubEntry {
    fn new(pattern: Bytes, queue: Bytes, sink: Sink) -> Self {
        Self {
            pattern,
            queue,
            sink,
            remaining: None,
            overflowing: false,
            presence: None,
        }
    }
}

impl WatchEntry {
    fn new(subject: Bytes, tx: mpsc::Sender<PresenceEvent>, shared: Arc<SubShared>) -> Self {
        Self {
            subject,
            tx,
            shared,
            overflowing: false,
        }
    }
}

fn track_frame(sid: u64, metadata: &[(String, String)]) -> Kind {
    Kind::PresenceTrack(v1::PresenceTrack {
        sid,
        metadata: metadata.iter().cloned().collect(),
    })
}

fn watch_frame(id: u64, subject: Bytes) -> Kind {
    Kind::PresenceWatch(v1::PresenceWatch {
        watch_id: id,
        subject,
        stop: false,
    })
}

/// Completes the request a reply (or a no-responders notice) belongs to.
fn answer_request(
    inbox: &Inbox,
    requests: &mut HashMap<u64, oneshot::Sender<Result<Message, Error>>>,
    message: Message,
) {
    let Some(token) = inbox.token_of(&message.subject) else {
        return;
    };
    // A late or second reply finds no waiter and is ignored.
    let Some(tx) = requests.remove(&token) else {
        return;
    };
    let result = if message.status == MessageStatus::NoResponders {
        Err(Error::NoResponders)
    } else {
        Ok(message)
    };
    let _gone = tx.send(result);
}

/// Appends a control frame. Control frames are tiny, so encoding cannot
/// fail; if it ever did, the frame is dropped and logged.
fn push_frame(out: &mut OutQueue, kind: &Kind) {
    if let Err(e) = out.push_frame(kind) {
        tracing::error!(error = %e, frame = kind_name(kind), "cannot encode a frame; dropped");
    }
}

/// Makes room in the read buffer: for the rest of a partly received frame,
/// or at least one read chunk.
fn reserve_for_next_frame(rbuf: &mut BytesMut) {
    let wanted = match rbuf.first_chunk::<LEN_PREFIX>() {
        Some(prefix) => (LEN_PREFIX + u32::from_be_bytes(*prefix) as usize)
            .saturating_sub(rbuf.len())
            .clamp(READ_CHUNK, 16 * READ_CHUNK),
        None => READ_CHUNK,
    };
    if rbuf.capacity() - rbuf.len() < wanted / 2 {
        rbuf.reserve(wanted);
    }
}

/// Writes some queued bytes (a vectored write), or flushes once the queue is
/// empty. Returns the bytes written, or `None` after a flush.
async fn drive_writer<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &OutQueue,
) -> io::Result<Option<usize>> {
    if out.is_empty() {
        writer.flush().await?;
        return Ok(None);
    }
    let mut slots = [IoSlice::new(&[]); MAX_SLICES];
    let filled = out.slices(&mut slots);
    let written = writer.write_vectored(&slots[..filled]).await?;
    if written == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(Some(written))
}
