//! Protocol drivers: one lean, blocking client per protocol under test.
//!
//! Built to measure servers, not clients. Every driver follows the same
//! recipe, so a comparison measures the servers:
//! - one OS thread per connection, blocking sockets, `TCP_NODELAY`;
//! - publishers write pre-encoded frames in [`BATCH`]-byte batches: one
//!   `write` syscall per batch, never one per message;
//! - subscribers read into a [`READ_BUF`]-byte buffer and walk frames in
//!   place: one `read` syscall per buffer, no decoding of bodies, no
//!   allocation per message.
//!
//! [`Conn`] hides which protocol is spoken: `native` (ArqonBus frames),
//! `ws` (ArqonBus frames over its WebSocket edge), `nats` (the NATS text
//! protocol), `nats-ws` (the same over nats-server's WebSocket listener) or
//! `raw` (the raw relay's byte stream).
//! Latency is sampled in band: a publisher stamps the last 8 bytes of the
//! first payload of each batch with the time since [`epoch`]; subscribers
//! read the last 8 payload bytes of every message (a stamp or zero).

pub(crate) mod native;
pub(crate) mod nats;
pub(crate) mod nats_ws;
pub(crate) mod raw;
pub(crate) mod ws;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;

/// Bytes written per `write` call by publishers.
pub(crate) const BATCH: usize = 64 * 1024;

/// Bytes a busy subscriber asks for per `read` call. A connection starts
/// with [`READ_BUF_START`] and doubles up to this each time a read fills its
/// buffer, so 10,000 idle connections do not hold 2.5 GB.
pub(crate) const READ_BUF: usize = 256 * 1024;

/// A new connection's receive buffer.
const READ_BUF_START: usize = 4 * 1024;

/// How long a blocking read waits before the caller gets to check its
/// deadlines.
pub(crate) const READ_POLL: Duration = Duration::from_millis(50);

/// The longest a control exchange (handshake, barrier) or a blocked write
/// may take.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a driver connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriverError {
    /// Socket trouble (refused, reset, timed out).
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// TLS setup or handshake trouble.
    #[error("tls: {0}")]
    Tls(String),
    /// The server said something this driver does not expect.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server closed the connection, or sent an error (for example a
    /// slow-consumer cut).
    #[error("closed by server: {0}")]
    Closed(String),
}

/// The protocol a target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Proto {
    /// ArqonBus frames (protobuf, length-prefixed).
    Native,
    /// The NATS text protocol.
    Nats,
    /// The raw relay: bytes forwarded without parsing.
    Raw,
    /// ArqonBus frames over the WebSocket edge (one per binary message).
    Ws,
    /// The NATS text protocol over nats-server's WebSocket listener.
    #[serde(rename = "nats-ws")]
    NatsWs,
}

/// The process-wide time origin for in-band latency stamps.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`], never 0 (0 means "no stamp").
pub(crate) fn now_ns() -> u64 {
    (epoch().elapsed().as_nanos() as u64).max(1)
}

/// Where a connection that talks to another should land, relative to that
/// other's shard (ArqonBus with more than one shard; other servers have no
/// shards and ignore it). The kernel's `SO_REUSEPORT` hash places each
/// connection by its ephemeral port, so without this a 1→1 run is same-shard
/// or cross-shard by chance, and its throughput swings by about 2×.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Placement {
    /// Wherever the kernel puts it.
    #[default]
    Any,
    /// On the same shard (no ring hop).
    Same,
    /// On another shard (every message crosses a ring).
    Cross,
}

impl Placement {
    /// Where publishers land, in words (for reports).
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Any => "publishers wherever the kernel hashes them",
            Self::Same => "each publisher on its first subscriber's shard",
            Self::Cross => "each publisher on a shard other than its first subscriber's",
        }
    }
}

/// Connections a placed open may make before giving up.
const PLACEMENT_TRIES: usize = 64;

/// Where and how to connect.
#[derive(Clone)]
pub(crate) struct Target {
    /// The protocol.
    pub(crate) proto: Proto,
    /// `host:port`.
    pub(crate) addr: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// The bearer credential (ArqonBus only).
    pub(crate) credential: String,
    /// Where peers' connections land relative to each other.
    pub(crate) placement: Placement,
    /// A bound on the TCP connect and on each read and write of the
    /// handshake, instead of [`CONTROL_TIMEOUT`] on the latter and the
    /// kernel's SYN retries on the former (a storm that must end on time).
    pub(crate) handshake_timeout: Option<Duration>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("proto", &self.proto)
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parses `tls://host:port` or `tcp://host:port` (a bare `host:port`
    /// is plaintext). TLS needs the CA that signed the server certificate.
    pub(crate) fn new(
        proto: Proto,
        url: &str,
        ca: Option<&Path>,
        credential: String,
    ) -> Result<Self, DriverError> {
        let (tls, addr) = if let Some(a) = url.strip_prefix("tls://") {
            (true, a)
        } else if let Some(a) = url.strip_prefix("tcp://") {
            (false, a)
        } else {
            (false, url)
        };
        let tls = if tls {
            if proto == Proto::Raw {
                return Err(DriverError::Tls("the raw relay is plaintext only".into()));
            }
            let ca = ca.ok_or_else(|| DriverError::Tls("tls:// needs --ca".into()))?;
            let alpn: &[u8] = match proto {
                Proto::Native => b"arqonbus/1",
                Proto::Ws | Proto::NatsWs => b"http/1.1",
                Proto::Nats | Proto::Raw => b"",
            };
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| DriverError::Tls(e.to_string()))?;
            Some((tls_config(ca, alpn)?, name))
        } else {
            None
        };
        Ok(Self {
            proto,
            addr: addr.to_owned(),
            tls,
            credential,
            placement: Placement::Any,
            handshake_timeout: None,
        })
    }

    /// The same target with another credential (ArqonBus: a bearer token;
    /// NATS: `user:password`).
    pub(crate) fn with_credential(&self, credential: &str) -> Self {
        Self {
            credential: credential.to_owned(),
            ..self.clone()
        }
    }

    /// The longest a control exchange may take on this target's
    /// connections.
    pub(crate) fn control_limit(&self) -> Duration {
        self.handshake_timeout.unwrap_or(CONTROL_TIMEOUT)
    }

    /// True when connections use TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A connected TCP socket with `TCP_NODELAY`; reads and writes give up
    /// after [`CONTROL_TIMEOUT`] until [`Wire`] takes over.
    fn tcp(&self) -> Result<TcpStream, DriverError> {
        let tcp = match self.handshake_timeout {
            None => TcpStream::connect(&self.addr)?,
            Some(limit) => {
                let addr = self.addr.to_socket_addrs()?.next().ok_or_else(|| {
                    DriverError::Io(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{} resolves to no address", self.addr),
                    ))
                })?;
                TcpStream::connect_timeout(&addr, limit)?
            }
        };
        tcp.set_nodelay(true)?;
        let limit = self.control_limit();
        tcp.set_read_timeout(Some(limit))?;
        tcp.set_write_timeout(Some(limit))?;
        Ok(tcp)
    }

    /// Wraps `tcp` in TLS and completes the handshake (so a connect storm
    /// counts it), or returns it as is for plaintext targets.
    fn secure(&self, tcp: TcpStream) -> Result<Stream, DriverError> {
        let Some((cfg, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let conn = rustls::ClientConnection::new(cfg.clone(), name.clone())
            .map_err(|e| DriverError::Tls(e.to_string()))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .map_err(|e| DriverError::Tls(format!("handshake: {e}")))?;
        }
        Ok(Stream::Tls(Box::new(s)))
    }

    /// A batch of identical publish frames, about [`BATCH`] bytes (for
    /// `nats-ws`: identical `PUB`s in one WebSocket frame).
    pub(crate) fn publish_batch(
        &self,
        subject: &str,
        payload_len: usize,
        headers: bool,
    ) -> Result<Batch, DriverError> {
        let payload = vec![0; payload_len];
        if self.proto == Proto::NatsWs {
            let one = nats::publish_frame(subject, "", &payload, headers);
            return Ok(Batch::in_one_ws_frame(&one.bytes, one.stamp_end));
        }
        let one = self.publish_frame(subject, "", &payload, headers)?;
        Ok(Batch::repeat(&one.bytes, one.stamp_end))
    }

    /// One publish frame for `payload`, with a reply subject if not empty.
    pub(crate) fn publish_frame(
        &self,
        subject: &str,
        reply: &str,
        payload: &[u8],
        headers: bool,
    ) -> Result<Frame, DriverError> {
        match self.proto {
            Proto::Native => native::publish_frame(subject, reply, payload, headers),
            Proto::Nats => Ok(nats::publish_frame(subject, reply, payload, headers)),
            Proto::Raw => Ok(raw::frame(payload)),
            Proto::Ws => ws::publish_frame(subject, reply, payload, headers),
            Proto::NatsWs => Ok(nats_ws::publish_frame(subject, reply, payload, headers)),
        }
    }
}

/// Trust only `ca`, TLS 1.3, and no session resumption: every connection
/// pays a full handshake, which is what a connect storm should measure.
fn tls_config(ca: &Path, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, DriverError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| DriverError::Tls(e.to_string()))? {
        let cert = cert.map_err(|e| DriverError::Tls(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| DriverError::Tls(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| DriverError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !alpn.is_empty() {
        cfg.alpn_protocols = vec![alpn.to_vec()];
    }
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// A plaintext or TLS byte stream.
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// What one blocking read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Some bytes.
    Data,
    /// The read timeout passed with nothing to read.
    Timeout,
}

/// A stream with a receive buffer that frames are walked in place.
pub(crate) struct Wire {
    stream: Stream,
    /// The longest a control exchange may take.
    limit: Duration,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    full_read: bool,
}

impl Wire {
    /// Reads time out after [`READ_POLL`] (callers check their deadlines
    /// between reads); a write blocked for `limit` fails, and so does a
    /// control exchange that takes longer.
    fn new(stream: Stream, limit: Duration) -> Result<Self, DriverError> {
        stream.tcp().set_read_timeout(Some(READ_POLL))?;
        stream.tcp().set_write_timeout(Some(limit))?;
        Ok(Self {
            stream,
            limit,
            buf: vec![0; READ_BUF_START],
            start: 0,
            end: 0,
            full_read: false,
        })
    }

    /// Bytes received and not consumed.
    fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Removes `avail()[at..at + n]` by moving the `at` bytes before it
    /// forward (cheap when few bytes precede it: a WebSocket frame header
    /// behind a partial message).
    fn cut(&mut self, at: usize, n: usize) {
        self.buf
            .copy_within(self.start..self.start + at, self.start + n);
        self.start += n;
    }

    /// One `read` into the free end of the buffer (moving a partial frame to
    /// the front first, growing the buffer for a frame larger than it).
    fn fill(&mut self) -> Result<Fill, DriverError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Grow when a frame does not fit, or when the last read filled
        // everything it was offered (below `READ_BUF`).
        if self.end == self.buf.len() || (self.full_read && self.buf.len() < READ_BUF) {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.stream.read(&mut self.buf[self.end..]) {
            Ok(0) => Err(DriverError::Closed("end of stream".into())),
            Ok(n) => {
                self.end += n;
                self.full_read = self.end == self.buf.len();
                Ok(Fill::Data)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(Fill::Timeout)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads until `avail()` holds at least `n` bytes, for at most the
    /// wire's limit ([`CONTROL_TIMEOUT`] unless the target says otherwise).
    fn fill_to(&mut self, n: usize) -> Result<(), DriverError> {
        let deadline = Instant::now() + self.limit;
        while self.end - self.start < n {
            if self.fill()? == Fill::Timeout && Instant::now() > deadline {
                return Err(DriverError::Io(io::ErrorKind::TimedOut.into()));
            }
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        self.stream.write_all(bytes)?;
        if let Stream::Tls(_) = self.stream {
            self.stream.flush()?;
        }
        Ok(())
    }
}

/// One frame received, as a scenario sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ev {
    /// A message, `tail` being its last 8 payload bytes (little-endian; 0
    /// when unstamped or shorter than 8 bytes).
    Msg {
        /// The in-band stamp, if any.
        tail: u64,
    },
    /// Anything else (pongs, pings already answered, informational lines).
    Other,
}

/// The last 8 bytes of `payload` as a stamp.
fn tail_of(payload: &[u8]) -> u64 {
    payload
        .last_chunk::<8>()
        .map_or(0, |b| u64::from_le_bytes(*b))
}

/// One encoded frame and where its payload ends.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// The bytes on the wire.
    pub(crate) bytes: Vec<u8>,
    /// Offset just past the payload's last byte.
    pub(crate) stamp_end: usize,
}

/// Pre-encoded identical frames filling about [`BATCH`] bytes: either
/// back to back, or (`nats-ws`) as the body of one WebSocket frame whose
/// header [`frames`](Self::frames) writes into the room kept before them.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
    /// Room for a WebSocket frame header before the frames (0: none).
    head: usize,
    /// Frames in a full batch.
    pub(crate) per: usize,
    /// Bytes per frame.
    pub(crate) frame_len: usize,
    stamp_end: usize,
}

impl Batch {
    fn repeat(one: &[u8], stamp_end: usize) -> Self {
        Self::with_head(0, one, stamp_end)
    }

    /// Frames that [`frames`](Self::frames) hands out as the body of one
    /// binary WebSocket frame: one message per write, as a WebSocket
    /// client sends what it buffered.
    fn in_one_ws_frame(one: &[u8], stamp_end: usize) -> Self {
        Self::with_head(ws::MAX_CLIENT_HEADER, one, stamp_end)
    }

    fn with_head(head: usize, one: &[u8], stamp_end: usize) -> Self {
        let frame_len = one.len();
        let per = (BATCH / frame_len).max(1);
        let mut bytes = vec![0; head];
        bytes.extend_from_slice(&one.repeat(per));
        Self {
            bytes,
            head,
            per,
            frame_len,
            stamp_end: head + stamp_end,
        }
    }

    /// Stamps the first frame's payload with `ns` (when it has 8 bytes).
    pub(crate) fn stamp(&mut self, ns: u64) {
        if let Some(s) = self
            .stamp_end
            .checked_sub(8 + self.head)
            .and_then(|start| self.bytes.get_mut(self.head + start..self.stamp_end))
        {
            s.copy_from_slice(&ns.to_le_bytes());
        }
    }

    /// The first `n` frames (`n <= per`), ready to write.
    pub(crate) fn frames(&mut self, n: usize) -> &[u8] {
        let body = n.min(self.per) * self.frame_len;
        if self.head == 0 {
            return &self.bytes[..body];
        }
        let at = ws::seal(&mut self.bytes, self.head, body);
        &self.bytes[at..self.head + body]
    }
}

/// What a connection does in a scenario.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Role<'a> {
    /// The subject it publishes to (the raw relay binds it at connect).
    pub(crate) publish: Option<&'a str>,
    /// The subject it subscribes to.
    pub(crate) subscribe: Option<&'a str>,
    /// The queue group of that subscription.
    pub(crate) queue: Option<&'a str>,
}

/// One connection of any protocol.
pub(crate) enum Conn {
    /// ArqonBus.
    Native(native::Conn),
    /// NATS, over TCP or over WebSocket.
    Nats(nats::Conn),
    /// The raw relay.
    Raw(raw::Conn),
    /// ArqonBus over WebSocket.
    Ws(ws::Conn),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Native(_) => f.write_str("Conn::Native"),
            Self::Nats(c) if c.over_ws() => f.write_str("Conn::Nats (WebSocket)"),
            Self::Nats(_) => f.write_str("Conn::Nats"),
            Self::Raw(_) => f.write_str("Conn::Raw"),
            Self::Ws(_) => f.write_str("Conn::Ws"),
        }
    }
}

impl Conn {
    /// Connects, completes the protocol handshake, subscribes if asked, and
    /// returns once the subscription is in effect on the whole server.
    pub(crate) fn open(t: &Target, role: &Role<'_>) -> Result<Self, DriverError> {
        let stream_for = |tcp| t.secure(tcp);
        Ok(match t.proto {
            Proto::Native => Self::Native(native::Conn::open(stream_for(t.tcp()?)?, t, role)?),
            Proto::Nats => Self::Nats(nats::Conn::open(t.tcp()?, t, role)?),
            Proto::Raw => Self::Raw(raw::Conn::open(stream_for(t.tcp()?)?, role)?),
            Proto::Ws => Self::Ws(ws::Conn::open(stream_for(t.tcp()?)?, t, role)?),
            Proto::NatsWs => Self::Nats(nats::Conn::open_ws(stream_for(t.tcp()?)?, t, role)?),
        })
    }

    /// Like [`open`](Self::open), but reconnects until the connection lands
    /// where [`Target::placement`] wants it relative to `peer` (another
    /// connection's shard). Without a peer shard (other servers), or with
    /// [`Placement::Any`], it is a plain open.
    pub(crate) fn open_near(
        t: &Target,
        role: &Role<'_>,
        peer: Option<u32>,
    ) -> Result<Self, DriverError> {
        let Some(peer) = peer.filter(|_| t.placement != Placement::Any) else {
            return Self::open(t, role);
        };
        for _ in 0..PLACEMENT_TRIES {
            let conn = Self::open(t, role)?;
            let same = conn.shard() == Some(peer);
            if same == (t.placement == Placement::Same) {
                return Ok(conn);
            }
            conn.close();
        }
        Err(DriverError::Protocol(format!(
            "no connection landed {:?} shard {peer} in {PLACEMENT_TRIES} tries (does the server have more than one shard? \
             is the tenant `spread`? a `home` tenant's connections all meet on one shard)",
            t.placement
        )))
    }

    /// The shard the server put this connection on (ArqonBus only).
    pub(crate) fn shard(&self) -> Option<u32> {
        match self {
            Self::Native(c) => Some(c.shard),
            Self::Ws(c) => Some(c.shard),
            Self::Nats(_) | Self::Raw(_) => None,
        }
    }

    fn wire(&mut self) -> &mut Wire {
        match self {
            Self::Native(c) => &mut c.wire,
            Self::Nats(c) => &mut c.wire,
            Self::Raw(c) => &mut c.wire,
            Self::Ws(c) => &mut c.wire,
        }
    }

    /// Writes pre-encoded bytes.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        self.wire().write_all(bytes)
    }

    /// Hands every whole frame buffered to `on`.
    pub(crate) fn drain(&mut self, on: impl FnMut(Ev)) -> Result<(), DriverError> {
        match self {
            Self::Native(c) => c.drain(on),
            Self::Ws(c) => c.drain(on),
            Self::Nats(c) => c.drain(on),
            Self::Raw(c) => {
                c.drain(on);
                Ok(())
            }
        }
    }

    /// One blocking read (at most [`READ_POLL`]).
    pub(crate) fn fill(&mut self) -> Result<Fill, DriverError> {
        self.wire().fill()
    }

    /// Answers every request buffered (a publish of its payload to its
    /// reply subject, all answers in one write). Returns how many.
    pub(crate) fn echo(&mut self, out: &mut Vec<u8>) -> Result<u64, DriverError> {
        match self {
            Self::Native(c) => c.echo(out),
            Self::Ws(c) => c.echo(out),
            Self::Nats(c) => c.echo(out),
            Self::Raw(c) => c.echo(out),
        }
    }

    /// A publisher's end-of-run barrier: returns once the server has taken
    /// everything written before. The raw relay has no such round trip, so
    /// its publisher shuts its write side down and waits for the relay to
    /// close (the connection is finished after that).
    pub(crate) fn finish(&mut self) -> Result<(), DriverError> {
        match self {
            Self::Native(c) => c.barrier(),
            Self::Ws(c) => c.barrier(),
            Self::Nats(c) => c.barrier(),
            Self::Raw(c) => c.finish(),
        }
    }

    /// A second handle on the socket for a writer thread (plaintext only).
    pub(crate) fn writer(&self) -> Result<TcpStream, DriverError> {
        let s = match self {
            Self::Native(c) => &c.wire.stream,
            Self::Nats(c) => &c.wire.stream,
            Self::Raw(c) => &c.wire.stream,
            Self::Ws(c) => &c.wire.stream,
        };
        match s {
            Stream::Plain(tcp) => Ok(tcp.try_clone()?),
            Stream::Tls(_) => Err(DriverError::Tls(
                "a split reader/writer needs a plaintext connection".into(),
            )),
        }
    }

    /// Closes the socket at once (both directions).
    pub(crate) fn close(self) {
        let s = match &self {
            Self::Native(c) => &c.wire.stream,
            Self::Nats(c) => &c.wire.stream,
            Self::Raw(c) => &c.wire.stream,
            Self::Ws(c) => &c.wire.stream,
        };
        let _ = s.tcp().shutdown(Shutdown::Both);
    }
}
