//! The connection state machine (specs/state-machines.md).
//!
//! One [`Session`] per connection. Every input is an [`Event`]; the only way
//! the state changes is [`Session::handle`], which returns one [`Step`] for
//! the runtime to carry out. The session validates everything a client sends
//! (subjects, sizes, headers, the credential) so the runtime only routes.
//!
//! ```text
//!  Handshaking --TlsEstablished--> AwaitingConnect --Connect(ok)--> Open
//!       |                               |                            |
//!       +--------- any error, timeout, shutdown, slow consumer ------+--> Closing --Closed--> Closed
//! ```
//!
//! Invalid transitions are protocol errors that close the connection: any
//! frame other than `Connect` while awaiting it, a second `Connect`, and any
//! server-to-client frame kind sent by a client. Frames that arrive while
//! `Closing` are ignored. No I/O and no clock: time arrives as `now`.
//!
//! The hot path's publish ([`Session::publish`]) stays borrowed from the
//! read batch it was decoded from: the session validates it in place and
//! hands on a [`PublishRef`]; whoever keeps the message past the batch makes
//! it owned ([`PublishRef::to_owned`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arqonbus_proto::codec::{DecodeError, PublishView, share};
use arqonbus_proto::v1::{self, ErrorCode, Header, frame::Kind};
use bytes::Bytes;

use crate::ids::Sid;
use crate::limits::{Limits, MAX_HEADER_BYTES, MAX_HEADER_KEY_LEN, MAX_HEADER_VALUE_LEN};
use crate::presence::Metadata;
use crate::snapshot::{AuthError, ConfigSnapshot, Identity};
use crate::subject::{Pattern, QueueGroup, Subject, SubjectError, SubjectMemo, SubjectRef};

/// Longest `Connect.client_name`.
pub const MAX_CLIENT_NAME_LEN: usize = 128;
/// Longest `Connect.client_version`.
pub const MAX_CLIENT_VERSION_LEN: usize = 64;
/// Largest frame accepted before authentication (a `Connect` is far smaller).
pub const PRE_AUTH_MAX_FRAME: u32 = 8 * 1024;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// TLS handshake in progress (skipped for plaintext listeners).
    Handshaking,
    /// Waiting for the client's `Connect`.
    AwaitingConnect,
    /// Authenticated; publishing and subscribing allowed.
    Open,
    /// A final error is being written; input is ignored.
    Closing,
    /// Gone. Every further event is ignored.
    Closed,
}

/// The time, as the runtime read it: monotonic for timers, Unix seconds for
/// credential expiry.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Seconds since the Unix epoch.
    pub unix: i64,
}

/// Everything that can happen to a connection.
#[derive(Debug)]
pub enum Event {
    /// The TLS handshake finished.
    TlsEstablished,
    /// A frame arrived from the client.
    Frame(Kind),
    /// The client's bytes could not be decoded.
    Undecodable(DecodeError),
    /// Time passed; check timeouts and keep-alives.
    Tick,
    /// The connection's outbound buffer overflowed.
    SlowConsumer,
    /// The server is stopping, or the connection's shard is draining.
    Shutdown,
    /// The server closes the connection with this code: an operator's kick,
    /// a quota, a drain.
    Close {
        /// The code sent to the client.
        code: ErrorCode,
        /// Text for humans.
        detail: &'static str,
    },
    /// A new configuration snapshot arrived: re-check the credential.
    Reauthorize,
    /// The socket closed or failed.
    Closed,
}

/// A validated publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Where it goes.
    pub subject: Subject,
    /// Where responders should answer, if it is a request.
    pub reply: Option<Subject>,
    /// Headers, already checked against the limits.
    pub headers: Vec<Header>,
    /// The payload, sharing the receive buffer.
    pub payload: Bytes,
    /// The client's number for it (0: none), echoed in an error about it.
    pub seq: u64,
}

impl Publish {
    /// The message borrowed, as the hot path passes it on.
    pub fn view(&self) -> PublishRef<'_> {
        PublishRef {
            subject: self.subject.view(),
            reply: self.reply.as_ref().map(Subject::view),
            headers: &self.headers,
            payload: &self.payload,
            seq: self.seq,
            backing: Backing::Owned(self),
        }
    }
}

/// A validated publish borrowed from where it was decoded: a read batch
/// (the common publish, see [`Session::publish`]) or an owned [`Publish`].
/// The hot path authorises, routes and delivers it by reference, counting
/// nothing; what must outlive the batch is kept as ranges of
/// [`payload_owner`](Self::payload_owner) or made owned by
/// [`to_owned`](Self::to_owned).
/// Its `Debug` shows the subjects and sizes only (never the payload, nor
/// the batch around it).
#[derive(Clone, Copy)]
pub struct PublishRef<'a> {
    /// Where it goes.
    pub subject: SubjectRef<'a>,
    /// Where responders should answer, if it is a request.
    pub reply: Option<SubjectRef<'a>>,
    /// Headers, already checked against the limits.
    pub headers: &'a [Header],
    /// The payload.
    pub payload: &'a [u8],
    /// The client's number for it (0: none), echoed in an error about it.
    pub seq: u64,
    backing: Backing<'a>,
}

/// What a [`PublishRef`]'s fields borrow from.
#[derive(Clone, Copy)]
enum Backing<'a> {
    /// Each field is a slice of this read batch.
    Batch(&'a Bytes),
    /// The fields are this publish's.
    Owned(&'a Publish),
}

impl std::fmt::Debug for PublishRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishRef")
            .field("subject", &self.subject)
            .field("reply", &self.reply)
            .field("headers", &self.headers.len())
            .field("payload_len", &self.payload.len())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl<'a> PublishRef<'a> {
    /// The read batch every field lies in, for a publish borrowed from
    /// one; `None` for an owned publish.
    pub fn batch(&self) -> Option<&'a Bytes> {
        match self.backing {
            Backing::Batch(batch) => Some(batch),
            Backing::Owned(_) => None,
        }
    }

    /// The buffer the payload lies in: the read batch, or the owned
    /// publish's payload. A subscriber's queue keeps the payload as a
    /// range of it, holding it once for a run of payloads from it.
    #[inline]
    pub fn payload_owner(&self) -> &'a Bytes {
        match self.backing {
            Backing::Batch(batch) => batch,
            Backing::Owned(p) => &p.payload,
        }
    }

    /// The message owned, sharing the buffers it was read into (a
    /// reference count per non-empty field), to keep past the batch.
    pub fn to_owned(&self) -> Publish {
        match self.backing {
            Backing::Owned(p) => p.clone(),
            Backing::Batch(batch) => Publish {
                subject: self.subject.to_subject_in(batch),
                reply: self.reply.map(|r| r.to_subject_in(batch)),
                headers: self.headers.to_vec(),
                payload: share(batch, self.payload),
                seq: self.seq,
            },
        }
    }
}

/// What [`Session::publish`] decided about a publish.
#[derive(Debug)]
pub enum Checked<'a> {
    /// Accepted: authorise and route it.
    Publish(PublishRef<'a>),
    /// Anything else (a rejection, or the frame outside `Open`).
    Step(Step),
}

/// An error to send to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Stable code.
    pub code: ErrorCode,
    /// Whether the connection closes after the error is written.
    pub close: bool,
    /// The subscription concerned, or 0.
    pub sid: u64,
    /// The `Publish.seq` of the publish concerned, or 0.
    pub seq: u64,
    /// Text for humans; never holds client data.
    pub detail: &'static str,
}

impl Rejection {
    fn fatal(code: ErrorCode, detail: &'static str) -> Self {
        Self {
            code,
            close: true,
            sid: 0,
            seq: 0,
            detail,
        }
    }

    fn soft(code: ErrorCode, sid: u64, detail: &'static str) -> Self {
        Self {
            code,
            close: false,
            sid,
            seq: 0,
            detail,
        }
    }

    /// This rejection, about the publish the client numbered `seq`.
    pub fn about_publish(self, seq: u64) -> Self {
        Self { seq, ..self }
    }

    /// The `Error` frame for this rejection.
    pub fn to_frame(&self) -> Kind {
        Kind::Error(v1::Error {
            code: self.code.into(),
            message: self.detail.to_owned(),
            close: self.close,
            sid: self.sid,
            seq: self.seq,
        })
    }
}

/// What the runtime must do after an event.
#[derive(Debug)]
pub enum Step {
    /// Nothing.
    Nothing,
    /// Authenticated: send `Welcome` ([`Session::identity`] says to whom).
    Welcome,
    /// The principal's permissions changed: re-check its subscriptions.
    PermissionsChanged,
    /// Route this message.
    Publish(Publish),
    /// Add this subscription.
    Subscribe {
        /// Client id of the subscription.
        sid: Sid,
        /// What it matches.
        pattern: Pattern,
        /// Its queue group, if any.
        queue: Option<QueueGroup>,
    },
    /// Remove a subscription now (`after == 0`) or after `after` messages.
    Unsubscribe {
        /// Client id of the subscription.
        sid: Sid,
        /// Messages to deliver first.
        after: u64,
    },
    /// Answer the client's ping, once its earlier subscription changes are
    /// in effect on every shard.
    Pong,
    /// Send a keep-alive ping.
    Ping,
    /// Send this error; when it closes, the session is now `Closing`.
    Reject(Rejection),
    /// List subscription `sid` in its subject's presence (specs/presence.md).
    PresenceTrack {
        /// The subscription.
        sid: Sid,
        /// What others see besides id, kind and name (checked).
        metadata: Metadata,
    },
    /// Start watching `subject`'s presence as `watch`, or stop (`None`).
    PresenceWatch {
        /// Client-chosen watch id, never 0.
        watch: u64,
        /// The subject (a copy), or `None` to stop.
        subject: Option<Subject>,
    },
    /// Answer who is on `subject`.
    PresenceQuery {
        /// Echoed in the reply.
        request_id: u64,
        /// The subject (a copy).
        subject: Subject,
    },
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    state: State,
    accepted_at: Instant,
    last_seen: Instant,
    pings_outstanding: u32,
    identity: Option<Identity>,
    /// The largest payload this principal may publish.
    max_payload: u32,
    no_echo: bool,
    client_kind: v1::ClientKind,
    /// Boxed, not a `String`: every connection's task holds its session.
    client_name: Box<str>,
}

fn subject_rejection(e: SubjectError, sid: u64) -> Rejection {
    match e {
        SubjectError::Reserved => Rejection::soft(
            ErrorCode::PermissionDenied,
            sid,
            "subjects starting with '$' are reserved",
        ),
        _ => Rejection::soft(ErrorCode::InvalidSubject, sid, "invalid subject"),
    }
}

/// The smallest of the server's, the tenant's and the principal's payload
/// limits (0 in a quota means "no quota").
fn effective_max_payload(limits: &Limits, id: &Identity) -> u32 {
    [
        id.tenant.quotas.max_payload,
        id.principal.quotas.max_payload,
    ]
    .into_iter()
    .filter(|q| *q > 0)
    .fold(limits.max_payload, u32::min)
}

fn check_headers(headers: &[Header], limits: &Limits) -> Result<(), Rejection> {
    let bad = |detail| Err(Rejection::soft(ErrorCode::InvalidHeaders, 0, detail));
    if headers.len() > limits.max_headers as usize {
        return bad("too many headers");
    }
    let mut total = 0usize;
    for h in headers {
        if h.key.is_empty() || h.key.len() > MAX_HEADER_KEY_LEN {
            return bad("header key must be 1..=64 bytes");
        }
        if !h
            .key
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b'.' && b != b'*' && b != b'>')
        {
            return bad("header key must be a subject token");
        }
        if h.value.len() > MAX_HEADER_VALUE_LEN {
            return bad("header value longer than 1024 bytes");
        }
        if !h.value.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
            return bad("header value must be printable ASCII");
        }
        total += h.key.len() + h.value.len();
    }
    if total > MAX_HEADER_BYTES {
        return bad("headers exceed 8 KiB");
    }
    Ok(())
}

impl Session {
    /// A session for a connection accepted at `now`. `tls` says whether a
    /// handshake comes first.
    pub fn new(now: Instant, tls: bool) -> Self {
        Self {
            state: if tls {
                State::Handshaking
            } else {
                State::AwaitingConnect
            },
            accepted_at: now,
            last_seen: now,
            pings_outstanding: 0,
            identity: None,
            max_payload: 0,
            no_echo: false,
            client_kind: v1::ClientKind::Unspecified,
            client_name: Box::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Who the session is, once `Open`.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The largest payload this session may publish (server limit and the
    /// tenant's and principal's quotas).
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Whether the client receives its own messages.
    pub fn echo(&self) -> bool {
        !self.no_echo
    }

    /// What the client said it is.
    pub fn client_kind(&self) -> v1::ClientKind {
        self.client_kind
    }

    /// When the connection was accepted (the auth timeout counts from it).
    pub fn accepted_at(&self) -> Instant {
        self.accepted_at
    }

    /// What the client called itself (empty once taken).
    pub fn client_name(&self) -> &str {
        &self.client_name
    }

    /// Moves the client's name out, leaving it empty: once the session is
    /// open, the runtime keeps it where operators see it, so each
    /// connection holds it once.
    pub fn take_client_name(&mut self) -> Box<str> {
        std::mem::take(&mut self.client_name)
    }

    /// The largest frame accepted in the current state. Until the client has
    /// authenticated only a `Connect` can arrive, so a stranger cannot make
    /// the server reserve `max_frame` bytes per connection.
    pub fn max_frame(&self, limits: &Limits) -> u32 {
        if self.state == State::Open {
            limits.max_frame()
        } else {
            PRE_AUTH_MAX_FRAME
        }
    }

    /// When [`Event::Tick`] next has something to do (an authentication
    /// deadline, a keep-alive ping, the credential's expiry), or `None`.
    pub fn next_deadline(&self, limits: &Limits, now: Now) -> Option<Instant> {
        match self.state {
            State::Handshaking | State::AwaitingConnect => {
                Some(self.accepted_at + Duration::from_millis(limits.auth_timeout_ms))
            }
            State::Open => {
                let ping = self.last_seen + Duration::from_millis(limits.ping_interval_ms);
                let expiry = self
                    .identity
                    .as_ref()
                    .and_then(|i| i.expires_at_unix)
                    .map(|e| {
                        now.mono
                            + Duration::from_secs(e.saturating_sub(now.unix).max(0).cast_unsigned())
                    });
                Some(expiry.map_or(ping, |e| e.min(ping)))
            }
            State::Closing | State::Closed => None,
        }
    }

    /// The one entry point for state changes.
    pub fn handle(&mut self, event: Event, now: Now, config: &ConfigSnapshot) -> Step {
        if matches!(self.state, State::Closed) {
            return Step::Nothing;
        }
        let limits = config.limits();
        let step = match event {
            Event::Closed => {
                self.state = State::Closed;
                Step::Nothing
            }
            _ if self.state == State::Closing => Step::Nothing,
            Event::TlsEstablished => self.on_tls(),
            Event::Frame(kind) => {
                self.last_seen = now.mono;
                self.pings_outstanding = 0;
                self.on_frame(kind, now, config)
            }
            Event::Undecodable(e) => Step::Reject(match e {
                DecodeError::TooLarge { .. } => {
                    Rejection::fatal(ErrorCode::FrameTooLarge, "frame exceeds max_frame")
                }
                DecodeError::Malformed | DecodeError::UnknownKind => {
                    Rejection::fatal(ErrorCode::ProtocolViolation, "malformed frame")
                }
                DecodeError::SeveralKinds => Rejection::fatal(
                    ErrorCode::ProtocolViolation,
                    "a frame holds exactly one kind",
                ),
            }),
            Event::Tick => self.on_tick(now, limits),
            Event::SlowConsumer => Step::Reject(Rejection::fatal(
                ErrorCode::SlowConsumer,
                "slow consumer: outbound buffer exceeded max_pending_bytes",
            )),
            Event::Shutdown => Step::Reject(Rejection::fatal(
                ErrorCode::ServerShuttingDown,
                "server shutting down",
            )),
            Event::Close { code, detail } => Step::Reject(Rejection::fatal(code, detail)),
            Event::Reauthorize => self.on_reauthorize(now, config),
        };
        if let Step::Reject(r) = &step
            && r.close
        {
            self.state = State::Closing;
        }
        step
    }

    fn on_tls(&mut self) -> Step {
        if self.state == State::Handshaking {
            self.state = State::AwaitingConnect;
            Step::Nothing
        } else {
            Step::Reject(Rejection::fatal(
                ErrorCode::Internal,
                "TLS established twice",
            ))
        }
    }

    fn revoked() -> Step {
        Step::Reject(Rejection::fatal(
            ErrorCode::CredentialRevoked,
            "credential revoked or expired",
        ))
    }

    fn on_reauthorize(&mut self, now: Now, config: &ConfigSnapshot) -> Step {
        let Some(current) = &self.identity else {
            return Step::Nothing;
        };
        match config.revalidate(current, now.unix) {
            Err(_) => Self::revoked(),
            Ok(fresh) => {
                let changed =
                    !Arc::ptr_eq(&fresh.principal.permissions, &current.principal.permissions);
                self.max_payload = effective_max_payload(config.limits(), &fresh);
                self.identity = Some(fresh);
                if changed {
                    Step::PermissionsChanged
                } else {
                    Step::Nothing
                }
            }
        }
    }

    fn on_tick(&mut self, now: Now, limits: &Limits) -> Step {
        match self.state {
            State::Handshaking | State::AwaitingConnect => {
                if now.mono.duration_since(self.accepted_at)
                    >= Duration::from_millis(limits.auth_timeout_ms)
                {
                    Step::Reject(Rejection::fatal(
                        ErrorCode::AuthTimeout,
                        "no valid Connect within the authentication timeout",
                    ))
                } else {
                    Step::Nothing
                }
            }
            State::Open => {
                if self
                    .identity
                    .as_ref()
                    .and_then(|i| i.expires_at_unix)
                    .is_some_and(|e| e <= now.unix)
                {
                    return Self::revoked();
                }
                if now.mono.duration_since(self.last_seen)
                    < Duration::from_millis(limits.ping_interval_ms)
                {
                    return Step::Nothing;
                }
                if self.pings_outstanding >= limits.max_pings_outstanding {
                    return Step::Reject(Rejection::fatal(
                        ErrorCode::StaleConnection,
                        "stale connection: pings unanswered",
                    ));
                }
                self.pings_outstanding += 1;
                self.last_seen = now.mono;
                Step::Ping
            }
            State::Closing | State::Closed => Step::Nothing,
        }
    }

    fn on_frame(&mut self, kind: Kind, now: Now, config: &ConfigSnapshot) -> Step {
        let limits = config.limits();
        match (self.state, kind) {
            (State::AwaitingConnect, Kind::Connect(c)) => self.on_connect(c, now, config),
            (State::AwaitingConnect, _) => Step::Reject(Rejection::fatal(
                ErrorCode::ProtocolViolation,
                "the first frame must be Connect",
            )),
            (State::Open, Kind::Connect(_)) => Step::Reject(Rejection::fatal(
                ErrorCode::ProtocolViolation,
                "Connect sent twice",
            )),
            (State::Open, Kind::Publish(p)) => match self.check_publish(p, limits) {
                Ok(p) => Step::Publish(p),
                Err(r) => Step::Reject(r),
            },
            (State::Open, Kind::Subscribe(s)) => Self::check_subscribe(s, limits),
            (State::Open, Kind::Unsubscribe(u)) => {
                if u.sid == 0 {
                    Step::Reject(Rejection::soft(
                        ErrorCode::UnknownSid,
                        0,
                        "sid 0 is invalid",
                    ))
                } else {
                    Step::Unsubscribe {
                        sid: Sid(u.sid),
                        after: u.after_messages,
                    }
                }
            }
            (State::Open, Kind::PresenceTrack(t)) => Self::check_track(&t),
            (State::Open, Kind::PresenceWatch(w)) => {
                if w.watch_id == 0 {
                    Step::Reject(Rejection::soft(
                        ErrorCode::InvalidSid,
                        0,
                        "watch id 0 is invalid",
                    ))
                } else if w.stop {
                    Step::PresenceWatch {
                        watch: w.watch_id,
                        subject: None,
                    }
                } else {
                    match Subject::parse(
                        Bytes::copy_from_slice(&w.subject),
                        limits.max_subject_len as usize,
                    ) {
                        Ok(subject) => Step::PresenceWatch {
                            watch: w.watch_id,
                            subject: Some(subject),
                        },
                        Err(e) => Step::Reject(subject_rejection(e, w.watch_id)),
                    }
                }
            }
            (State::Open, Kind::PresenceQuery(q)) => {
                match Subject::parse(
                    Bytes::copy_from_slice(&q.subject),
                    limits.max_subject_len as usize,
                ) {
                    Ok(subject) => Step::PresenceQuery {
                        request_id: q.request_id,
                        subject,
                    },
                    Err(e) => Step::Reject(subject_rejection(e, q.request_id)),
                }
            }
            (State::Open, Kind::Ping(_)) => Step::Pong,
            (State::Open, Kind::Pong(_)) => Step::Nothing,
            (
                State::Open,
                Kind::Welcome(_)
                | Kind::Message(_)
                | Kind::Error(_)
                | Kind::Drain(_)
                | Kind::PresenceReply(_)
                | Kind::PresenceEvent(_),
            ) => Step::Reject(Rejection::fatal(
                ErrorCode::ProtocolViolation,
                "frame kind is server-to-client only",
            )),
            (State::Handshaking, _) => Step::Reject(Rejection::fatal(
                ErrorCode::ProtocolViolation,
                "frame before the TLS handshake finished",
            )),
            (State::Closing | State::Closed, _) => Step::Nothing,
        }
    }

    fn on_connect(&mut self, c: v1::Connect, now: Now, config: &ConfigSnapshot) -> Step {
        // The credential first: a peer that cannot authenticate learns
        // nothing about this server, not even which versions it speaks.
        let identity = match config.authenticate(&c.credential, now.unix) {
            Ok(identity) => identity,
            Err(AuthError::Unavailable) => {
                return Step::Reject(Rejection::fatal(
                    ErrorCode::Unavailable,
                    "not accepting new sessions; retry later",
                ));
            }
            Err(_) => {
                return Step::Reject(Rejection::fatal(
                    ErrorCode::AuthenticationFailed,
                    "authentication failed",
                ));
            }
        };
        if c.protocol_version != arqonbus_proto::PROTOCOL_VERSION {
            return Step::Reject(Rejection::fatal(
                ErrorCode::UnsupportedVersion,
                "unsupported protocol version; this server speaks 1",
            ));
        }
        if c.client_name.len() > MAX_CLIENT_NAME_LEN
            || c.client_version.len() > MAX_CLIENT_VERSION_LEN
        {
            return Step::Reject(Rejection::fatal(
                ErrorCode::ProtocolViolation,
                "client_name or client_version too long",
            ));
        }
        self.state = State::Open;
        self.no_echo = c.no_echo;
        self.client_kind =
            v1::ClientKind::try_from(c.client_kind).unwrap_or(v1::ClientKind::Unspecified);
        self.client_name = c.client_name.into_boxed_str();
        self.max_payload = effective_max_payload(config.limits(), &identity);
        self.identity = Some(identity);
        Step::Welcome
    }

    /// A `Publish` frame the fast decoder took, the hot path's entry: the
    /// same transition as [`handle`](Self::handle) with
    /// `Event::Frame(Kind::Publish(p))`, except that the message stays
    /// borrowed from its batch and the subject is validated through the
    /// shard's `memo`.
    pub fn publish<'a>(
        &mut self,
        p: PublishView<'a>,
        now: Now,
        config: &ConfigSnapshot,
        memo: &mut SubjectMemo,
    ) -> Checked<'a> {
        if self.state != State::Open {
            let frame = Event::Frame(Kind::Publish(p.to_owned()));
            return Checked::Step(self.handle(frame, now, config));
        }
        self.last_seen = now.mono;
        self.pings_outstanding = 0;
        let checked = self.check_fields(
            p.subject,
            p.reply,
            &[],
            p.payload.len(),
            p.seq,
            config.limits(),
            |raw, max| memo.check(raw, max),
        );
        match checked {
            Ok((subject, reply)) => Checked::Publish(PublishRef {
                subject,
                reply,
                headers: &[],
                payload: p.payload,
                seq: p.seq,
                backing: Backing::Batch(p.batch),
            }),
            Err(r) => Checked::Step(Step::Reject(r)),
        }
    }

    /// A `Publish` decoded by prost (one with headers, or one the fast
    /// decoder did not take): the checks of [`publish`](Self::publish) on
    /// the owned message.
    fn check_publish(&self, p: v1::Publish, limits: &Limits) -> Result<Publish, Rejection> {
        let (subject, reply) = self.check_fields(
            &p.subject,
            &p.reply,
            &p.headers,
            p.payload.len(),
            p.seq,
            limits,
            SubjectRef::parse,
        )?;
        let subject = subject.to_subject_in(&p.subject);
        let reply = reply.map(|r| r.to_subject_in(&p.reply));
        Ok(Publish {
            subject,
            reply,
            headers: p.headers,
            payload: p.payload,
            seq: p.seq,
        })
    }

    /// Every check of a publish: payload size, subject and reply subject,
    /// headers. Returns the validated subjects.
    #[expect(
        clippy::too_many_arguments,
        reason = "the fields of a publish, borrowed from a batch or an owned message alike"
    )]
    #[inline]
    fn check_fields<'a>(
        &self,
        subject: &'a [u8],
        reply: &'a [u8],
        headers: &[Header],
        payload: usize,
        seq: u64,
        limits: &Limits,
        parse_subject: impl FnOnce(&'a [u8], usize) -> Result<SubjectRef<'a>, SubjectError>,
    ) -> Result<(SubjectRef<'a>, Option<SubjectRef<'a>>), Rejection> {
        if payload > self.max_payload as usize {
            return Err(Rejection::soft(
                ErrorCode::MaxPayloadExceeded,
                0,
                "payload exceeds max_payload",
            )
            .about_publish(seq));
        }
        let max = limits.max_subject_len as usize;
        let refused = |e| subject_rejection(e, 0).about_publish(seq);
        let subject = parse_subject(subject, max).map_err(refused)?;
        let reply = if reply.is_empty() {
            None
        } else {
            Some(SubjectRef::parse(reply, max).map_err(refused)?)
        };
        check_headers(headers, limits).map_err(|r| r.about_publish(seq))?;
        Ok((subject, reply))
    }

    fn check_subscribe(s: v1::Subscribe, limits: &Limits) -> Step {
        if s.sid == 0 {
            return Step::Reject(Rejection::soft(
                ErrorCode::InvalidSid,
                0,
                "sid must not be 0",
            ));
        }
        // A subscription lives on: it gets memory of its own rather than
        // pinning the receive buffer its frame was read into.
        let pattern = match Pattern::parse(s.pattern, limits.max_subject_len as usize) {
            Ok(p) => p.detach(),
            Err(e) => return Step::Reject(subject_rejection(e, s.sid)),
        };
        let queue = if s.queue_group.is_empty() {
            None
        } else {
            match QueueGroup::parse(s.queue_group) {
                Ok(q) => Some(q.detach()),
                Err(_) => {
                    return Step::Reject(Rejection::soft(
                        ErrorCode::InvalidQueueGroup,
                        s.sid,
                        "invalid queue group name",
                    ));
                }
            }
        };
        Step::Subscribe {
            sid: Sid(s.sid),
            pattern,
            queue,
        }
    }

    fn check_track(t: &v1::PresenceTrack) -> Step {
        if t.sid == 0 {
            return Step::Reject(Rejection::soft(
                ErrorCode::UnknownSid,
                0,
                "sid 0 is invalid",
            ));
        }
        match Metadata::parse(t.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            Ok(metadata) => Step::PresenceTrack {
                sid: Sid(t.sid),
                metadata,
            },
            Err(_) => Step::Reject(Rejection::soft(
                ErrorCode::InvalidHeaders,
                t.sid,
                "presence metadata breaks its limits (8 entries, 32-byte keys, 128-byte values, 1 KiB)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialHash;
    use crate::ids::{CredentialId, PrincipalId, TenantId};
    use crate::policy::Permissions;
    use crate::snapshot::{CredentialEntry, PrincipalEntry, Quotas, TenantEntry};
    use arqonbus_proto::codec::{self, Decoded};

    const TOKEN: &str = "abt_test";

    fn config(expires: Option<i64>) -> ConfigSnapshot {
        let mut c = ConfigSnapshot::new(1, Limits::default());
        c.insert_tenant(TenantEntry {
            id: TenantId(1),
            name: "t".into(),
            quotas: Quotas {
                max_payload: 4096,
                ..Quotas::default()
            },
            verify_key: None,
            placement: crate::placement::TenantPlacement::default(),
        });
        c.insert_principal(PrincipalEntry {
            id: PrincipalId(1),
            tenant: TenantId(1),
            name: "p".into(),
            roles: vec![],
            quotas: Quotas::default(),
            permissions: Arc::new(Permissions::allow_all()),
        })
        .unwrap();
        c.insert_bearer(
            CredentialHash::of(TOKEN),
            CredentialEntry {
                id: CredentialId(1),
                principal: PrincipalId(1),
                expires_at_unix: expires,
            },
        )
        .unwrap();
        c
    }

    fn connect(credential: &str, version: u32) -> Event {
        Event::Frame(Kind::Connect(v1::Connect {
            protocol_version: version,
            credential: credential.into(),
            ..Default::default()
        }))
    }

    struct Harness {
        s: Session,
        now: Instant,
        unix: i64,
        config: ConfigSnapshot,
        limits: Limits,
    }

    impl Harness {
        fn with(tls: bool, config: ConfigSnapshot) -> Self {
            let now = Instant::now();
            Self {
                s: Session::new(now, tls),
                now,
                unix: 1_000,
                limits: config.limits().clone(),
                config,
            }
        }
        fn new(tls: bool) -> Self {
            Self::with(tls, config(None))
        }
        fn open() -> Self {
            let mut h = Self::new(false);
            assert!(matches!(h.step(connect(TOKEN, 1)), Step::Welcome));
            h
        }
        fn at(&self) -> Now {
            Now {
                mono: self.now,
                unix: self.unix,
            }
        }
        fn step(&mut self, e: Event) -> Step {
            let now = self.at();
            self.s.handle(e, now, &self.config)
        }
        fn advance(&mut self, ms: u64) -> Step {
            self.now += Duration::from_millis(ms);
            self.unix += (ms / 1000).cast_signed();
            self.step(Event::Tick)
        }
    }

    fn rejected(step: &Step) -> Option<(ErrorCode, bool)> {
        match step {
            Step::Reject(r) => Some((r.code, r.close)),
            _ => None,
        }
    }

    #[test]
    fn handshake_then_connect_opens() {
        let mut h = Harness::new(true);
        assert_eq!(h.s.state(), State::Handshaking);
        assert!(matches!(h.step(Event::TlsEstablished), Step::Nothing));
        assert_eq!(h.s.state(), State::AwaitingConnect);
        assert!(matches!(h.step(connect(TOKEN, 1)), Step::Welcome));
        assert_eq!(h.s.state(), State::Open);
        assert_eq!(h.s.identity().unwrap().tenant.id, TenantId(1));
    }

    #[test]
    fn invalid_transitions_close() {
        // Anything but Connect first.
        let mut h = Harness::new(false);
        let s = h.step(Event::Frame(Kind::Ping(v1::Ping {})));
        assert_eq!(rejected(&s), Some((ErrorCode::ProtocolViolation, true)));
        assert_eq!(h.s.state(), State::Closing);
        // Input while closing is ignored.
        assert!(matches!(h.step(connect(TOKEN, 1)), Step::Nothing));

        // A second Connect.
        let mut h = Harness::open();
        let s = h.step(connect(TOKEN, 1));
        assert_eq!(rejected(&s), Some((ErrorCode::ProtocolViolation, true)));

        // Server-only frames from a client.
        let mut h = Harness::open();
        let s = h.step(Event::Frame(Kind::Message(v1::Message::default())));
        assert_eq!(rejected(&s), Some((ErrorCode::ProtocolViolation, true)));

        // TLS established twice.
        let mut h = Harness::new(true);
        h.step(Event::TlsEstablished);
        assert_eq!(
            rejected(&h.step(Event::TlsEstablished)),
            Some((ErrorCode::Internal, true))
        );

        // Everything is ignored once closed.
        let mut h = Harness::open();
        h.step(Event::Closed);
        assert_eq!(h.s.state(), State::Closed);
        assert!(matches!(h.step(Event::SlowConsumer), Step::Nothing));
    }

    #[test]
    fn bad_credentials_and_versions() {
        let mut h = Harness::new(false);
        assert_eq!(
            rejected(&h.step(connect("abt_wrong", 1))),
            Some((ErrorCode::AuthenticationFailed, true))
        );
        let mut h = Harness::new(false);
        assert_eq!(
            rejected(&h.step(connect(TOKEN, 2))),
            Some((ErrorCode::UnsupportedVersion, true))
        );
        // Without a valid credential the version is not even looked at.
        let mut h = Harness::new(false);
        assert_eq!(
            rejected(&h.step(connect("abt_wrong", 2))),
            Some((ErrorCode::AuthenticationFailed, true))
        );
        let mut h = Harness::new(false);
        let long = Event::Frame(Kind::Connect(v1::Connect {
            protocol_version: 1,
            credential: TOKEN.into(),
            client_name: "x".repeat(MAX_CLIENT_NAME_LEN + 1),
            ..Default::default()
        }));
        assert_eq!(
            rejected(&h.step(long)),
            Some((ErrorCode::ProtocolViolation, true))
        );
    }

    #[test]
    fn auth_timeout() {
        let mut h = Harness::new(true);
        assert!(matches!(h.advance(4_999), Step::Nothing));
        assert_eq!(
            rejected(&h.advance(1)),
            Some((ErrorCode::AuthTimeout, true))
        );
    }

    #[test]
    fn pings_then_stale() {
        let mut h = Harness::open();
        assert!(matches!(h.advance(29_999), Step::Nothing));
        assert!(matches!(h.advance(1), Step::Ping));
        assert!(matches!(h.advance(30_000), Step::Ping));
        assert_eq!(
            rejected(&h.advance(30_000)),
            Some((ErrorCode::StaleConnection, true))
        );
    }

    #[test]
    fn frames_are_small_until_authenticated() {
        let mut h = Harness::new(false);
        assert_eq!(h.s.max_frame(&h.limits), PRE_AUTH_MAX_FRAME);
        h.step(connect(TOKEN, 1));
        assert_eq!(h.s.max_frame(&h.limits), h.limits.max_frame());
    }

    #[test]
    fn deadlines_follow_the_state() {
        let mut h = Harness::new(true);
        let auth = Duration::from_millis(h.limits.auth_timeout_ms);
        assert_eq!(h.s.next_deadline(&h.limits, h.at()), Some(h.now + auth));
        h.step(Event::TlsEstablished);
        h.step(connect(TOKEN, 1));
        let ping = Duration::from_millis(h.limits.ping_interval_ms);
        assert_eq!(h.s.next_deadline(&h.limits, h.at()), Some(h.now + ping));
        h.step(Event::Shutdown);
        assert_eq!(h.s.next_deadline(&h.limits, h.at()), None);
    }

    #[test]
    fn any_frame_counts_as_life() {
        let mut h = Harness::open();
        assert!(matches!(h.advance(30_000), Step::Ping));
        h.now += Duration::from_millis(29_000);
        h.step(Event::Frame(Kind::Pong(v1::Pong {})));
        assert!(matches!(h.advance(29_999), Step::Nothing));
        assert!(matches!(h.advance(1), Step::Ping));
    }

    fn publish(subject: &'static [u8], reply: &'static [u8], payload: usize) -> Event {
        Event::Frame(Kind::Publish(v1::Publish {
            subject: Bytes::from_static(subject),
            reply: Bytes::from_static(reply),
            headers: vec![],
            seq: 0,
            payload: Bytes::from(vec![0u8; payload]),
        }))
    }

    #[test]
    fn publish_validation_is_not_fatal() {
        let mut h = Harness::open();
        assert!(matches!(h.step(publish(b"a.b", b"", 10)), Step::Publish(_)));
        // The tenant's quota (4096) is below the server's limit.
        let big = 4097;
        assert_eq!(
            rejected(&h.step(publish(b"a.b", b"", big))),
            Some((ErrorCode::MaxPayloadExceeded, false))
        );
        assert_eq!(
            rejected(&h.step(publish(b"a.*", b"", 1))),
            Some((ErrorCode::InvalidSubject, false))
        );
        assert_eq!(
            rejected(&h.step(publish(b"a", b"in box", 1))),
            Some((ErrorCode::InvalidSubject, false))
        );
        assert_eq!(
            rejected(&h.step(publish(b"$SYS.x", b"", 1))),
            Some((ErrorCode::PermissionDenied, false))
        );
        let Step::Publish(p) = h.step(publish(b"a", b"_INBOX.1", 1)) else {
            panic!("expected publish");
        };
        assert_eq!(p.reply.unwrap().as_bytes(), b"_INBOX.1");
        assert_eq!(h.s.state(), State::Open);
    }

    /// A publish accepted by the hot path stays in its read batch: what is
    /// kept past the batch (the payload for subscribers here, the whole
    /// message for another shard) shares the batch's memory, never a copy.
    #[test]
    fn a_borrowed_publish_is_kept_as_slices_of_its_batch() {
        let mut h = Harness::open();
        let Event::Frame(kind) = publish(b"orders.eu", b"_INBOX.1", 64) else {
            unreachable!("publish() builds a publish frame");
        };
        let mut wire = bytes::BytesMut::from(&b"junk"[..]);
        codec::encode(&kind, &mut wire).unwrap();
        wire.extend_from_slice(b"more frames");
        let batch = wire.freeze();
        let end = batch.len() - b"more frames".len();
        let Ok(Decoded::Publish(view)) = codec::decode_in(&batch, 8..end) else {
            panic!("the fast decoder takes a plain publish");
        };
        let now = h.at();
        let mut memo = SubjectMemo::default();
        let Checked::Publish(p) = h.s.publish(view, now, &h.config, &mut memo) else {
            panic!("an allowed publish is accepted");
        };
        assert_eq!(p.subject.as_bytes(), b"orders.eu");
        let within = |b: &[u8]| {
            let start = batch.as_ptr() as usize;
            let at = b.as_ptr() as usize;
            start <= at && at + b.len() <= start + batch.len()
        };
        assert_eq!(
            (p.payload_owner().as_ptr(), p.payload_owner().len()),
            (batch.as_ptr(), batch.len())
        );
        assert!(within(p.payload));
        let owned = p.to_owned();
        assert!(within(owned.subject.as_bytes()));
        assert!(within(owned.reply.as_ref().unwrap().as_bytes()));
        assert!(within(&owned.payload));
        assert_eq!(owned.payload.len(), 64);
        // An owned publish seen through a view gives back the same message.
        assert_eq!(owned.view().to_owned(), owned);
    }

    /// The hot path's entry is the same transition as `handle`: the same
    /// steps and the same state, before `Connect`, when open (the memo warm
    /// or cold) and once closing.
    #[test]
    fn the_publish_entry_is_the_frame_transition() {
        let frames: [(&'static [u8], &'static [u8], usize); 7] = [
            (b"a.b", b"", 10),
            (b"a.b", b"", 10),
            (b"a.b", b"", 4097),
            (b"a.b.", b"", 1),
            (b"$SYS.x", b"", 1),
            (b"a.b", b"in box", 1),
            (b"a.b", b"_INBOX.1", 1),
        ];
        let mut general = Harness::new(false);
        let mut hot = Harness::new(false);
        let mut memo = SubjectMemo::default();
        for round in 0..3 {
            if round == 1 {
                general.step(connect(TOKEN, 1));
                hot.step(connect(TOKEN, 1));
            }
            for &(subject, reply, size) in &frames {
                let a = general.step(publish(subject, reply, size));
                let Event::Frame(kind) = publish(subject, reply, size) else {
                    unreachable!("publish() builds a publish frame");
                };
                let mut wire = bytes::BytesMut::new();
                codec::encode(&kind, &mut wire).unwrap();
                let batch = wire.freeze();
                let Ok(Decoded::Publish(view)) = codec::decode_in(&batch, 4..batch.len()) else {
                    panic!("the fast decoder takes a plain publish");
                };
                let now = hot.at();
                let b = match hot.s.publish(view, now, &hot.config, &mut memo) {
                    Checked::Publish(p) => Step::Publish(p.to_owned()),
                    Checked::Step(step) => step,
                };
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "round {round}");
                assert_eq!(general.s.state(), hot.s.state());
            }
            if round == 1 {
                general.step(Event::Shutdown);
                hot.step(Event::Shutdown);
            }
        }
    }

    #[test]
    fn header_rules() {
        let mut h = Harness::open();
        let with = |headers: Vec<Header>| {
            Event::Frame(Kind::Publish(v1::Publish {
                subject: Bytes::from_static(b"a"),
                headers,
                ..Default::default()
            }))
        };
        let hdr = |k: &[u8], v: &[u8]| Header {
            key: Bytes::copy_from_slice(k),
            value: Bytes::copy_from_slice(v),
        };
        assert!(matches!(
            h.step(with(vec![hdr(b"traceparent", b"00-abc-01")])),
            Step::Publish(_)
        ));
        for bad in [
            vec![hdr(b"", b"v")],
            vec![hdr(b"a b", b"v")],
            vec![hdr(b"k", b"line\nbreak")],
            vec![hdr(b"k", &[b'v'; 1025])],
            (0..33).map(|_| hdr(b"k", b"v")).collect(),
        ] {
            assert_eq!(
                rejected(&h.step(with(bad))),
                Some((ErrorCode::InvalidHeaders, false))
            );
        }
    }

    #[test]
    fn subscribe_validation_carries_the_sid() {
        let mut h = Harness::open();
        let sub = |sid, pattern: &'static [u8], queue: &'static [u8]| {
            Event::Frame(Kind::Subscribe(v1::Subscribe {
                sid,
                pattern: Bytes::from_static(pattern),
                queue_group: Bytes::from_static(queue),
            }))
        };
        assert!(matches!(
            h.step(sub(1, b"a.>", b"")),
            Step::Subscribe { .. }
        ));
        assert!(matches!(
            h.step(sub(2, b"a.*", b"workers")),
            Step::Subscribe { queue: Some(_), .. }
        ));
        let Step::Reject(r) = h.step(sub(3, b"a..b", b"")) else {
            panic!()
        };
        assert_eq!(
            (r.code, r.sid, r.close),
            (ErrorCode::InvalidSubject, 3, false)
        );
        let Step::Reject(r) = h.step(sub(4, b"a", b"bad group")) else {
            panic!()
        };
        assert_eq!((r.code, r.sid), (ErrorCode::InvalidQueueGroup, 4));
        assert_eq!(
            rejected(&h.step(sub(0, b"a", b""))),
            Some((ErrorCode::InvalidSid, false))
        );
    }

    #[test]
    fn presence_frames_are_checked_and_never_fatal_for_bad_input() {
        let mut h = Harness::open();
        let frame = |k: Kind| Event::Frame(k);
        let track = |sid, meta: &[(&str, &str)]| {
            frame(Kind::PresenceTrack(v1::PresenceTrack {
                sid,
                metadata: meta
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }))
        };
        let Step::PresenceTrack { sid, metadata } = h.step(track(3, &[("b", "2"), ("a", "1")]))
        else {
            panic!()
        };
        assert_eq!(sid, Sid(3));
        assert_eq!(metadata.entries().next(), Some(("a", "1")));
        let long = "v".repeat(129);
        let Step::Reject(r) = h.step(track(4, &[("k", long.as_str())])) else {
            panic!()
        };
        assert_eq!(
            (r.code, r.sid, r.close),
            (ErrorCode::InvalidHeaders, 4, false)
        );
        assert_eq!(
            rejected(&h.step(track(0, &[]))),
            Some((ErrorCode::UnknownSid, false))
        );
        let watch = |id, subject: &'static [u8], stop| {
            frame(Kind::PresenceWatch(v1::PresenceWatch {
                watch_id: id,
                subject: Bytes::from_static(subject),
                stop,
            }))
        };
        assert!(matches!(
            h.step(watch(7, b"rooms.lobby", false)),
            Step::PresenceWatch {
                watch: 7,
                subject: Some(_)
            }
        ));
        assert!(matches!(
            h.step(watch(7, b"", true)),
            Step::PresenceWatch {
                watch: 7,
                subject: None
            }
        ));
        let Step::Reject(r) = h.step(watch(8, b"rooms.*", false)) else {
            panic!()
        };
        assert_eq!((r.code, r.sid), (ErrorCode::InvalidSubject, 8));
        let Step::Reject(r) = h.step(watch(9, b"$SYS.x", false)) else {
            panic!()
        };
        assert_eq!((r.code, r.sid), (ErrorCode::PermissionDenied, 9));
        assert_eq!(
            rejected(&h.step(watch(0, b"a", false))),
            Some((ErrorCode::InvalidSid, false))
        );
        let query = |id, subject: &'static [u8]| {
            frame(Kind::PresenceQuery(v1::PresenceQuery {
                request_id: id,
                subject: Bytes::from_static(subject),
            }))
        };
        assert!(matches!(
            h.step(query(1, b"rooms.lobby")),
            Step::PresenceQuery { request_id: 1, .. }
        ));
        let Step::Reject(r) = h.step(query(2, b"a..b")) else {
            panic!()
        };
        assert_eq!(
            (r.code, r.sid, r.close),
            (ErrorCode::InvalidSubject, 2, false)
        );
        // Server-to-client presence frames from a client close it.
        assert_eq!(
            rejected(&h.step(frame(Kind::PresenceEvent(v1::PresenceEvent::default())))),
            Some((ErrorCode::ProtocolViolation, true))
        );
    }

    #[test]
    fn presence_frames_before_connect_are_violations() {
        let mut h = Harness::new(false);
        let step = h.step(Event::Frame(Kind::PresenceQuery(v1::PresenceQuery {
            request_id: 1,
            subject: Bytes::from_static(b"a"),
        })));
        assert_eq!(rejected(&step), Some((ErrorCode::ProtocolViolation, true)));
    }

    #[test]
    fn undecodable_input_closes_with_the_right_code() {
        let mut h = Harness::open();
        let s = h.step(Event::Undecodable(DecodeError::TooLarge { len: 9, max: 1 }));
        assert_eq!(rejected(&s), Some((ErrorCode::FrameTooLarge, true)));
        let mut h = Harness::new(false);
        let s = h.step(Event::Undecodable(DecodeError::Malformed));
        assert_eq!(rejected(&s), Some((ErrorCode::ProtocolViolation, true)));
    }

    #[test]
    fn slow_consumer_and_shutdown_close() {
        let mut h = Harness::open();
        assert_eq!(
            rejected(&h.step(Event::SlowConsumer)),
            Some((ErrorCode::SlowConsumer, true))
        );
        let mut h = Harness::open();
        assert_eq!(
            rejected(&h.step(Event::Shutdown)),
            Some((ErrorCode::ServerShuttingDown, true))
        );
    }

    #[test]
    fn expiry_and_revocation_end_the_session() {
        let mut h = Harness::with(false, config(Some(1_005)));
        assert!(matches!(h.step(connect(TOKEN, 1)), Step::Welcome));
        // The deadline accounts for the expiry (5 s away), not just pings.
        let d = h.s.next_deadline(&h.limits, h.at()).unwrap();
        assert_eq!(d, h.now + Duration::from_secs(5));
        assert!(matches!(h.advance(4_000), Step::Nothing));
        assert_eq!(
            rejected(&h.advance(1_000)),
            Some((ErrorCode::CredentialRevoked, true))
        );

        // A new snapshot without the credential revokes at once.
        let mut h = Harness::open();
        h.config = ConfigSnapshot::new(2, Limits::default());
        assert_eq!(
            rejected(&h.step(Event::Reauthorize)),
            Some((ErrorCode::CredentialRevoked, true))
        );

        // The same credential with new permissions: re-check subscriptions.
        let mut h = Harness::open();
        h.config = config(None);
        assert!(matches!(
            h.step(Event::Reauthorize),
            Step::PermissionsChanged
        ));
    }

    #[test]
    fn refused_while_closed_and_kicked_on_request() {
        let closed = config(None).refusing_new_sessions(2, "store unreadable");
        let mut h = Harness::with(false, closed);
        assert_eq!(
            rejected(&h.step(connect(TOKEN, 1))),
            Some((ErrorCode::Unavailable, true))
        );
        let mut h = Harness::open();
        let kick = Event::Close {
            code: ErrorCode::DisconnectedByOperator,
            detail: "disconnected by an operator",
        };
        assert_eq!(
            rejected(&h.step(kick)),
            Some((ErrorCode::DisconnectedByOperator, true))
        );
    }
}
