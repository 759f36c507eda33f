//! The [`Client`] handle: what applications call.
//!
//! A `Client` is cheap to clone (one `Arc`) and `Send + Sync`. It validates
//! arguments, accounts publish bytes against the reconnect buffer, and hands
//! commands to the background task ([`crate::driver`]) through one ordered
//! channel. Invariants: nothing invalid is ever sent; a publish either is
//! queued (holding buffer permits until it is encoded) or returns an error;
//! after the client is closed every call fails fast with the reason.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arqonbus_core::subject::{Pattern, QueueGroup, Subject};
use bytes::Bytes;
use tokio::sync::{OnceCell, Semaphore, TryAcquireError, broadcast, mpsc, oneshot, watch};

use crate::Sid;
use crate::driver::{Command, Driver, Sink};
use crate::error::Error;
use crate::events::{EVENT_CAPACITY, Event, Events};
use crate::inbox::Inbox;
use crate::message::{Headers, Message, OutgoingMessage};
use crate::options::{ConnectOptions, Resolved};
use crate::outbound::Outgoing;
use crate::subscriber::{SubShared, Subscriber};
use crate::transport;

/// Whether the client currently has a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Connected and authenticated.
    Connected,
    /// The connection was lost; the client is reconnecting. Publishes are
    /// buffered (up to the reconnect buffer), subscriptions are kept.
    Reconnecting,
    /// Closed for good (on request, or after an unrecoverable error).
    Closed,
}

/// Limits the server enforces on this connection (from `Welcome.limits`,
/// with the protocol defaults for any the server left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest accepted payload, in bytes.
    pub max_payload: usize,
    /// Largest accepted frame, in bytes.
    pub max_frame: u32,
    /// Most subscriptions on one connection.
    pub max_subscriptions: u32,
    /// Most headers on one message.
    pub max_headers: usize,
    /// Longest subject or pattern, in bytes.
    pub max_subject_len: usize,
    /// How often the server pings an idle connection.
    pub ping_interval: Duration,
    /// Bytes the server buffers for this connection before it is a slow
    /// consumer.
    pub max_pending_bytes: u64,
}

impl Default for ServerLimits {
    /// The protocol defaults (specs/protocol.md#limits).
    fn default() -> Self {
        Self {
            max_payload: 1024 * 1024,
            max_frame: 1024 * 1024 + 16 * 1024,
            max_subscriptions: 10_000,
            max_headers: 32,
            max_subject_len: 256,
            ping_interval: Duration::from_secs(30),
            max_pending_bytes: 16 * 1024 * 1024,
        }
    }
}

impl ServerLimits {
    fn from_wire(limits: Option<arqonbus_proto::v1::Limits>) -> Self {
        let d = Self::default();
        let Some(l) = limits else { return d };
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        Self {
            max_payload: if l.max_payload == 0 {
                d.max_payload
            } else {
                l.max_payload as usize
            },
            max_frame: or(l.max_frame, d.max_frame),
            max_subscriptions: or(l.max_subscriptions, d.max_subscriptions),
            max_headers: if l.max_headers == 0 {
                d.max_headers
            } else {
                l.max_headers as usize
            },
            max_subject_len: if l.max_subject_len == 0 {
                d.max_subject_len
            } else {
                l.max_subject_len as usize
            },
            ping_interval: if l.ping_interval_ms == 0 {
                d.ping_interval
            } else {
                Duration::from_millis(u64::from(l.ping_interval_ms))
            },
            max_pending_bytes: if l.max_pending_bytes == 0 {
                d.max_pending_bytes
            } else {
                l.max_pending_bytes
            },
        }
    }

    /// The largest frame accepted from the server: its `max_frame`, and never
    /// less than a full payload plus 16 KiB of envelope.
    pub(crate) fn max_inbound_frame(&self) -> u32 {
        let payload_frame =
            u32::try_from(self.max_payload.saturating_add(16 * 1024)).unwrap_or(u32::MAX);
        self.max_frame.max(payload_frame)
    }
}

/// The server's `Welcome`: who we are talking to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Identifies the server process (changes at every server start).
    pub server_id: String,
    /// Identifies this connection on the server.
    pub session_id: u64,
    /// The data-plane shard that owns this connection.
    pub shard: u32,
    /// The server's version string.
    pub server_version: String,
    /// The tenant the credential belongs to.
    pub tenant: String,
    /// The protocol version the server speaks.
    pub protocol_version: u32,
    /// The limits on this connection.
    pub limits: ServerLimits,
}

impl ServerInfo {
    pub(crate) fn from_welcome(w: arqonbus_proto::v1::Welcome) -> Self {
        Self {
            server_id: w.server_id,
            session_id: w.session_id,
            shard: w.shard,
            server_version: w.server_version,
            tenant: w.tenant,
            protocol_version: w.protocol_version,
            limits: ServerLimits::from_wire(w.limits),
        }
    }
}

/// What the background task publishes about the connection.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) status: ConnectionState,
    pub(crate) info: Arc<ServerInfo>,
    /// Why the client closed, when it was not on request.
    pub(crate) closed_reason: Option<Error>,
}

/// State shared by every clone of a [`Client`].
struct Shared {
    opts: Arc<Resolved>,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<State>,
    /// Reconnect-buffer budget in bytes.
    permits: Arc<Semaphore>,
    /// Most permits one publish takes (the whole budget).
    permit_cap: u32,
    /// Kept only to create new event receivers.
    events: broadcast::Receiver<Event>,
    next_sid: AtomicU64,
    next_token: AtomicU64,
    inbox: Inbox,
    inbox_ready: OnceCell<()>,
}

/// A connection to an ArqonBus server. Clone it freely: clones share the
/// connection. The connection stays up while any `Client` or
/// [`Subscriber`] handle exists, or until [`close`](Self::close) /
/// [`drain`](Self::drain).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.borrow();
        f.debug_struct("Client")
            .field("url", &self.inner.opts.url)
            .field("state", &state.status)
            .field("session_id", &state.info.session_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Validates `options`, connects, and waits for the server's `Welcome`,
    /// so a wrong credential or CA fails here with a typed error. The first
    /// connection is tried once; reconnects later follow the
    /// [`ReconnectPolicy`](crate::ReconnectPolicy). Must be called inside a
    /// tokio runtime (multi-thread or current-thread).
    pub async fn connect(options: ConnectOptions) -> Result<Self, Error> {
        let opts = Arc::new(options.resolve()?);
        let conn = transport::connect(&opts).await?;
        let inbox =
            Inbox::new().map_err(|e| Error::Io(Arc::new(io::Error::other(e.to_string()))))?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(State {
            status: ConnectionState::Connected,
            info: Arc::clone(&conn.info),
            closed_reason: None,
        });
        let permit_cap = opts
            .reconnect_buffer_size
            .min(Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        let permits = Arc::new(Semaphore::new(permit_cap));
        let (events_tx, events) = broadcast::channel(EVENT_CAPACITY);
        let driver = Driver::new(
            Arc::clone(&opts),
            command_rx,
            state_tx,
            Arc::clone(&permits),
            events_tx,
            inbox.clone(),
        );
        tokio::spawn(driver.run(conn));
        Ok(Self {
            inner: Arc::new(Shared {
                opts,
                commands,
                state,
                permits,
                permit_cap: u32::try_from(permit_cap).unwrap_or(u32::MAX),
                events,
                next_sid: AtomicU64::new(1),
                next_token: AtomicU64::new(1),
                inbox,
                inbox_ready: OnceCell::new(),
            }),
        })
    }

    /// The `Welcome` of the current (or last) connection.
    pub fn server_info(&self) -> Arc<ServerInfo> {
        Arc::clone(&self.inner.state.borrow().info)
    }

    /// Whether the client is connected, reconnecting or closed.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().status
    }

    /// A stream of connection events from now on.
    pub fn events(&self) -> Events {
        Events::new(self.inner.events.resubscribe())
    }

    /// Publishes `payload` on `subject`. Returns once the message is queued
    /// for the socket (not when the server has it; see [`flush`](Self::flush)).
    /// Waits while the client holds more than the reconnect buffer of
    /// unsent publishes; while disconnected it fails fast instead with
    /// [`Error::ReconnectBufferFull`].
    pub async fn publish(&self, subject: &str, payload: impl Into<Bytes>) -> Result<(), Error> {
        self.publish_message(OutgoingMessage::new(subject, payload))
            .await
    }

    /// Publishes with a reply subject (for hand-rolled request/reply).
    pub async fn publish_with_reply(
        &self,
        subject: &str,
        reply: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.publish_message(OutgoingMessage::new(subject, payload).reply(reply))
            .await
    }

    /// Publishes with headers.
    pub async fn publish_with_headers(
        &self,
        subject: &str,
        headers: Headers,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.publish_message(OutgoingMessage::new(subject, payload).headers(headers))
            .await
    }

    /// Publishes a fully specified message (subject, optional reply,
    /// headers, payload).
    pub async fn publish_message(&self, message: OutgoingMessage) -> Result<(), Error> {
        let out = self.prepare(message)?;
        self.reserve(out.permits).await?;
        self.send(Command::Publish(out))
    }

    /// Subscribes to `pattern` (`*` matches one token, `>` the rest). Returns
    /// once the subscription is in effect on every server shard (the SDK
    /// sends `Subscribe` then a `Ping` and waits for the `Pong`), so a
    /// message published after this returns is delivered. A subscription
    /// the server rejects fails here with [`Error::Server`]. While
    /// disconnected this waits for the reconnect.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscriber, Error> {
        self.subscribe_inner(pattern, None).await
    }

    /// Like [`subscribe`](Self::subscribe), as a member of queue group
    /// `group`: each message goes to one member of the group.
    pub async fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscriber, Error> {
        self.subscribe_inner(pattern, Some(group)).await
    }

    async fn subscribe_inner(
        &self,
        pattern: &str,
        group: Option<&str>,
    ) -> Result<Subscriber, Error> {
        let limits = self.limits()?;
        let raw = Bytes::copy_from_slice(pattern.as_bytes());
        Pattern::parse(raw.clone(), limits.max_subject_len).map_err(|source| {
            Error::InvalidSubject {
                subject: pattern.escape_debug().to_string(),
                source,
            }
        })?;
        let queue = match group {
            None => Bytes::new(),
            Some(group) => {
                let raw = Bytes::copy_from_slice(group.as_bytes());
                QueueGroup::parse(raw.clone()).map_err(|source| Error::InvalidQueueGroup {
                    group: group.escape_debug().to_string(),
                    source,
                })?;
                raw
            }
        };
        let sid = self.next_sid();
        let (tx, rx) = mpsc::channel(self.inner.opts.subscriber_capacity);
        let shared = Arc::new(SubShared::default());
        let subscriber = Subscriber::new(sid, rx, Arc::clone(&shared), self.inner.commands.clone());
        self.send(Command::Subscribe {
            sid,
            pattern: raw,
            queue,
            sink: Sink::Channel {
                tx,
                shared: Arc::clone(&shared),
            },
        })?;
        self.confirmed(&shared).await?;
        Ok(subscriber)
    }

    /// Waits for the barrier behind a subscribe or watch just sent; the
    /// server's refusal of it, if any, arrived before the `Pong`.
    async fn confirmed(&self, shared: &SubShared) -> Result<(), Error> {
        self.flush().await?;
        match shared.error() {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    /// Watches `subject`'s presence (a literal subject): the stream yields a
    /// [`PresenceEvent`](crate::PresenceEvent) for every member that joins
    /// or leaves from now on. Returns once the watch is in effect; a watch
    /// the server refuses (`PERMISSION_DENIED`, `PRESENCE_LIMIT_EXCEEDED`)
    /// fails here with [`Error::Server`]. Re-made after a reconnect (the
    /// members then join again as the server lists them anew). Dropping
    /// the watcher stops the watch.
    pub async fn watch_presence(&self, subject: &str) -> Result<crate::PresenceWatcher, Error> {
        let raw = self.literal(subject)?;
        let id = self.next_sid().0;
        let (tx, rx) = mpsc::channel(self.inner.opts.subscriber_capacity);
        let shared = Arc::new(SubShared::default());
        let watcher =
            crate::PresenceWatcher::new(id, rx, Arc::clone(&shared), self.inner.commands.clone());
        self.send(Command::Watch {
            id,
            subject: raw,
            tx,
            shared: Arc::clone(&shared),
        })?;
        self.confirmed(&shared).await?;
        Ok(watcher)
    }

    /// Who is listed on `subject` (a literal subject) now, as the server's
    /// shard sees it, within the configured request timeout
    /// ([`Error::Timeout`]). A principal not allowed to see the subject's
    /// presence gets [`Error::Server`] with `PERMISSION_DENIED`.
    pub async fn presence(&self, subject: &str) -> Result<crate::PresenceAnswer, Error> {
        let raw = self.literal(subject)?;
        let id = self.next_sid().0;
        let (tx, rx) = oneshot::channel();
        self.send(Command::Query {
            id,
            subject: raw,
            reply: tx,
        })?;
        tokio::time::timeout(self.inner.opts.request_timeout, rx)
            .await
            .map_err(|_| Error::Timeout)?
            .unwrap_or_else(|_| Err(self.closed_error()))
    }

    /// `subject` checked as a literal subject against the server's limits.
    fn literal(&self, subject: &str) -> Result<Bytes, Error> {
        let limits = self.limits()?;
        let raw = Bytes::copy_from_slice(subject.as_bytes());
        Subject::parse(raw.clone(), limits.max_subject_len).map_err(|source| {
            Error::InvalidSubject {
                subject: subject.escape_debug().to_string(),
                source,
            }
        })?;
        Ok(raw)
    }

    /// Sends a request and waits for the first reply, up to the configured
    /// request timeout. Fails with [`Error::NoResponders`] as soon as the
    /// server reports that nobody subscribes to `subject`, and with
    /// [`Error::Timeout`] when no reply comes in time.
    pub async fn request(
        &self,
        subject: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Message, Error> {
        self.request_message(
            OutgoingMessage::new(subject, payload),
            self.inner.opts.request_timeout,
        )
        .await
    }

    /// Like [`request`](Self::request) with an explicit timeout.
    pub async fn request_with_timeout(
        &self,
        subject: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        self.request_message(OutgoingMessage::new(subject, payload), timeout)
            .await
    }

    /// A request with headers; any reply subject set on `message` is replaced
    /// by the client's inbox. The timeout covers everything, including the
    /// one-time inbox subscription and waiting for buffer room.
    pub async fn request_message(
        &self,
        message: OutgoingMessage,
        timeout: Duration,
    ) -> Result<Message, Error> {
        tokio::time::timeout(timeout, self.request_inner(message))
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    async fn request_inner(&self, mut message: OutgoingMessage) -> Result<Message, Error> {
        self.ensure_inbox().await?;
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        message.reply = Some(self.inner.inbox.reply_subject(token));
        let out = self.prepare(message)?;
        self.reserve(out.permits).await?;
        // Declared before the receiver so that, when this future is dropped
        // (timeout), the receiver is already gone when the cancel is sent.
        let mut guard = CancelRequest {
            token,
            commands: Some(&self.inner.commands),
        };
        let (tx, rx) = oneshot::channel();
        self.send(Command::Request {
            token,
            publish: out,
            reply: tx,
        })?;
        let result = rx.await.unwrap_or_else(|_| Err(self.closed_error()));
        guard.commands = None;
        result
    }

    /// Subscribes the client's inbox once (lazily, on the first request) and
    /// waits until that subscription is in effect.
    async fn ensure_inbox(&self) -> Result<(), Error> {
        self.inner
            .inbox_ready
            .get_or_try_init(|| async {
                let shared = Arc::new(SubShared::default());
                self.send(Command::Subscribe {
                    sid: self.next_sid(),
                    pattern: self.inner.inbox.pattern(),
                    queue: Bytes::new(),
                    sink: Sink::Inbox {
                        shared: Arc::clone(&shared),
                    },
                })?;
                self.flush().await?;
                match shared.error() {
                    Some(err) => Err(err.clone()),
                    None => Ok(()),
                }
            })
            .await
            .copied()
    }

    /// Waits until the server has processed everything this client sent
    /// before the call: earlier publishes were routed to every subscriber
    /// on every shard (queued for them, not yet necessarily read) and every
    /// earlier subscribe or unsubscribe is in effect on every shard (a
    /// `Ping`/`Pong` barrier). If
    /// the connection drops meanwhile, the barrier is repeated on the new
    /// connection after the subscriptions were re-sent.
    pub async fn flush(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Flush(tx))?;
        rx.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    /// Graceful shutdown: unsubscribes everything, waits for the barrier so
    /// nothing more is in flight, lets subscribers read what was already
    /// delivered to them (their streams then end), writes queued publishes,
    /// and closes the connection. Pending requests fail with
    /// [`Error::Closed`]. Returns `Ok` if the client is already closed.
    pub async fn drain(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        if self.inner.commands.send(Command::Drain(tx)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Closes now: writes publishes already queued (best effort, without
    /// waiting for the server), ends every subscriber stream after the
    /// messages they already hold, and fails pending requests and flushes
    /// with [`Error::Closed`]. Idempotent.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.commands.send(Command::Close(tx)).is_ok() {
            // An error only means the task is already gone: closed either way.
            let _closed = rx.await;
        }
    }

    fn next_sid(&self) -> Sid {
        Sid(self.inner.next_sid.fetch_add(1, Ordering::Relaxed))
    }

    /// The current limits, or the close reason when the client is closed.
    fn limits(&self) -> Result<crate::ServerLimits, Error> {
        let state = self.inner.state.borrow();
        if state.status == ConnectionState::Closed {
            return Err(state.closed_reason.clone().unwrap_or(Error::Closed));
        }
        Ok(state.info.limits)
    }

    fn closed_error(&self) -> Error {
        self.inner
            .state
            .borrow()
            .closed_reason
            .clone()
            .unwrap_or(Error::Closed)
    }

    /// Validates a message against the subject rules and server limits.
    fn prepare(&self, message: OutgoingMessage) -> Result<Outgoing, Error> {
        let limits = self.limits()?;
        let OutgoingMessage {
            subject,
            reply,
            headers,
            payload,
        } = message;
        let subject = literal_subject(subject, limits.max_subject_len)?;
        let reply = match reply {
            Some(reply) => literal_subject(reply, limits.max_subject_len)?,
            None => Bytes::new(),
        };
        headers.validate(limits.max_headers)?;
        if payload.len() > limits.max_payload {
            return Err(Error::PayloadTooLarge {
                len: payload.len(),
                max: limits.max_payload,
            });
        }
        let size = 16 + subject.len() + reply.len() + headers.byte_len() + payload.len();
        Ok(Outgoing {
            subject,
            reply,
            headers: headers.to_wire(),
            payload,
            permits: u32::try_from(size)
                .unwrap_or(u32::MAX)
                .min(self.inner.permit_cap),
        })
    }

    /// Takes `permits` bytes of the reconnect buffer: waits for room while
    /// connected, fails fast while disconnected.
    async fn reserve(&self, permits: u32) -> Result<(), Error> {
        let semaphore = &self.inner.permits;
        let mut state = self.inner.state.clone();
        loop {
            let status = state.borrow_and_update().status;
            match semaphore.try_acquire_many(permits) {
                Ok(permit) => {
                    permit.forget();
                    return Ok(());
                }
                Err(TryAcquireError::Closed) => return Err(self.closed_error()),
                Err(TryAcquireError::NoPermits) => {}
            }
            match status {
                ConnectionState::Closed => return Err(self.closed_error()),
                ConnectionState::Reconnecting => {
                    return Err(Error::ReconnectBufferFull {
                        limit: self.inner.opts.reconnect_buffer_size,
                    });
                }
                ConnectionState::Connected => {
                    tokio::select! {
                        acquired = semaphore.acquire_many(permits) => {
                            return match acquired {
                                Ok(permit) => {
                                    permit.forget();
                                    Ok(())
                                }
                                Err(_) => Err(self.closed_error()),
                            };
                        }
                        changed = state.changed() => {
                            if changed.is_err() {
                                return Err(self.closed_error());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Hands a command to the background task.
    fn send(&self, command: Command) -> Result<(), Error> {
        self.inner.commands.send(command).map_err(|rejected| {
            match rejected.0 {
                Command::Publish(p) | Command::Request { publish: p, .. } => {
                    self.inner.permits.add_permits(p.permits as usize);
                }
                _ => {}
            }
            self.closed_error()
        })
    }
}

/// Validates a literal subject (publish subject or reply).
fn literal_subject(subject: String, max_len: usize) -> Result<Bytes, Error> {
    let raw = Bytes::from(subject);
    Subject::parse(raw.clone(), max_len).map_err(|source| Error::InvalidSubject {
        subject: raw.escape_ascii().to_string(),
        source,
    })?;
    Ok(raw)
}

/// Tells the task to forget a request whose caller gave up (timeout or a
/// dropped future), unless disarmed by setting `commands` to `None`.
struct CancelRequest<'a> {
    token: u64,
    commands: Option<&'a mpsc::UnboundedSender<Command>>,
}

impl Drop for CancelRequest<'_> {
    fn drop(&mut self) {
        if let Some(commands) = self.commands {
            // Failing only means the task is gone, and the request with it.
            let _gone = commands.send(Command::CancelRequest(self.token));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Client>();
        assert_send_sync::<Subscriber>();
        assert_send_sync::<Events>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn limits_fall_back_to_protocol_defaults() {
        assert_eq!(ServerLimits::from_wire(None), ServerLimits::default());
        let l = ServerLimits::from_wire(Some(arqonbus_proto::v1::Limits {
            max_payload: 10,
            max_subject_len: 0,
            ..Default::default()
        }));
        assert_eq!(l.max_payload, 10);
        assert_eq!(l.max_subject_len, 256);
        assert_eq!(l.max_inbound_frame(), 1024 * 1024 + 16 * 1024);
    }
}
