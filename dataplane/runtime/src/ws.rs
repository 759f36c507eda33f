//! The WebSocket edge: RFC 6455 over a connection's stream, for browsers.
//!
//! Owns the HTTP upgrade ([`accept`]: `async-tungstenite` runs it, we check
//! the subprotocol and the server-wide Origin list) and, after it,
//! [`WsConn`]: `tungstenite`'s `WebSocketContext` driven over the inner
//! stream the way [`crate::transport::TlsConn`] drives rustls, so a
//! WebSocket connection is one more byte stream for the connection task.
//!
//! The connection task speaks the native framing (4-byte big-endian length,
//! then one encoded `Frame`) on every transport. `WsConn` translates, so the
//! session, authorisation, quotas, flow control and metrics are the native
//! ones, unchanged:
//! - **read**: each binary WebSocket message is handed to the reader as one
//!   native frame (its length, then its bytes);
//! - **write**: the bytes the task writes are cut at frame boundaries and
//!   each frame's body leaves as one binary WebSocket message.
//!
//! Invariants:
//! - a message larger than the session's frame limit is never buffered:
//!   `tungstenite` refuses it (`max_message_size`: 8 KiB until the session's
//!   `Welcome` leaves, then the `Welcome`'s `limits.max_frame`) and the
//!   connection closes with 1009;
//! - every violation (malformed frame, text frame, oversized message) queues
//!   one close frame with its code (see [`Violation`]), is flushed before the
//!   reader sees end of stream, and ends this connection only;
//! - memory per connection is bounded, and an idle connection holds no
//!   buffer of ours: the read side reads the socket into a [`ReadBuf`] (sized
//!   like the native one: small first, grown while reads fill it, dropped
//!   when the socket has nothing more) and lends it to `tungstenite`, whose
//!   own buffer stays [`CODEC_READ`] bytes plus at most one message; the
//!   write side accepts at most [`WRITE_CHUNK`] bytes per call, and takes
//!   nothing while earlier bytes wait for socket room (so what the task has
//!   not handed over stays in its `Outbound`, where `max_pending_bytes` and
//!   the slow-consumer policies apply);
//! - one ordered byte queue to the socket (`out`): data frames are framed
//!   into it as the task's bytes arrive (the header from `tungstenite`'s
//!   [`FrameHeader`], the body copied once), and `tungstenite`'s own frames
//!   (pongs, close) are appended only between two whole data frames, never
//!   inside one; `out` is dropped once written and the socket idle;
//! - no clock: a peer that never reads its close frame is bounded by the
//!   connection task's own timers (pings, `close_grace`).
//!
//! Copies: each frame body is copied once into `out` (the native path
//! writes payloads from the publisher's buffer); reads copy once more, from
//! the [`ReadBuf`] into `tungstenite`. Measured in `perf/results/`.

use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
use async_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use async_tungstenite::tungstenite::protocol::{
    CloseFrame, Role, WebSocketConfig, WebSocketContext,
};
use async_tungstenite::tungstenite::{self, Message};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};

use crate::readbuf::ReadBuf;
use crate::transport::Transport;

/// The subprotocol a client must offer (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "arqonbus.v1";

/// Most bytes the write side takes from the connection task per call.
pub(crate) const WRITE_CHUNK: usize = 64 * 1024;

/// Bytes `tungstenite` copies from the [`ReadBuf`] at a time: its own buffer
/// keeps about this much for the connection's life (messages larger than
/// this get room of their own while they are read).
const CODEC_READ: usize = 512;

/// Most bytes of `tungstenite`'s own frames (pongs, close) queued behind
/// data: past it they wait in `tungstenite` (which keeps one pong), so a
/// peer that floods pings and never reads holds no more than this.
const CONTROL_ROOM: usize = 4 * 1024;

/// The WebSocket listener: where, and what the server checks during the
/// upgrade, the same for every tenant (a tenant's own Origin list is
/// checked after `Connect`).
#[derive(Debug, Clone)]
pub struct WebSocketEdge {
    /// Where every shard listens for WebSocket clients (port 0 picks one).
    pub listen: std::net::SocketAddr,
    /// Origins any WebSocket client may come from (exact `scheme://host[:port]`
    /// entries, `arqonbus_core::origin::validate`); empty: the server does
    /// not restrict origins itself.
    pub allowed_origins: Vec<String>,
}

/// The WebSocket edge as the shards share it (`Send`): its TLS settings
/// (the server's certificate, ALPN `http/1.1`) and the server-wide origins.
#[derive(Debug)]
pub(crate) struct WsShared {
    tls: Option<Arc<rustls::ServerConfig>>,
    allowed_origins: Vec<String>,
}

impl WsShared {
    /// From the edge's settings and the server's TLS configuration, if any.
    pub(crate) fn new(edge: &WebSocketEdge, tls: Option<&Arc<rustls::ServerConfig>>) -> Self {
        let tls = tls.map(|t| {
            let mut c = (**t).clone();
            // Browsers offer `h2, http/1.1`; WebSocket needs HTTP/1.1.
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        });
        Self {
            tls,
            allowed_origins: edge.allowed_origins.clone(),
        }
    }

    /// The shard's own copy.
    pub(crate) fn on_shard(&self) -> WsShard {
        WsShard {
            tls: self.tls.clone().map(futures_rustls::TlsAcceptor::from),
            allowed_origins: self.allowed_origins.clone(),
        }
    }
}

/// The WebSocket edge on one shard.
pub(crate) struct WsShard {
    pub(crate) tls: Option<futures_rustls::TlsAcceptor>,
    allowed_origins: Vec<String>,
}

impl std::fmt::Debug for WsShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsShard")
            .field("tls", &self.tls.is_some())
            .field("allowed_origins", &self.allowed_origins.len())
            .finish()
    }
}

/// Runs the upgrade over an established (TLS or plain) transport within
/// `timeout`; the result is a WebSocket transport that reads the socket up
/// to `read_chunk` bytes at a time.
pub(crate) async fn upgrade(
    transport: Transport,
    edge: &WsShard,
    timeout: Duration,
    read_chunk: usize,
) -> io::Result<Transport> {
    let pre_auth = arqonbus_core::session::PRE_AUTH_MAX_FRAME as usize;
    let accepted = async {
        accept(transport, &edge.allowed_origins, pre_auth, read_chunk)
            .await
            .map_err(|e| match e {
                UpgradeError::Io(e) => e,
                refused @ UpgradeError::Refused(_) => {
                    io::Error::new(io::ErrorKind::InvalidData, refused)
                }
            })
    };
    let expired = async {
        glommio::timer::sleep(timeout).await;
        Err(io::Error::from(io::ErrorKind::TimedOut))
    };
    let conn = futures_lite::future::or(accepted, expired).await?;
    Ok(Transport::Ws(Box::new(conn)))
}

/// Why the upgrade failed (for logs and counters; the client got an HTTP
/// error status or a closed socket).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    /// Not a valid WebSocket upgrade request, or refused by a check (the
    /// HTTP answer says which).
    #[error("websocket upgrade refused: {0}")]
    Refused(String),
    /// The socket failed or closed during the upgrade.
    #[error("websocket upgrade failed: {0}")]
    Io(#[from] io::Error),
}

/// A violation that ends a WebSocket connection, with its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A malformed frame (bad opcode, reserved bits, unmasked, bad
    /// fragmentation): 1002.
    Malformed,
    /// A text message where binary is expected: 1003.
    Text,
    /// A message over the frame limit: 1009.
    TooLarge,
}

impl Violation {
    fn close_frame(self) -> CloseFrame {
        let (code, reason) = match self {
            Self::Malformed => (CloseCode::Protocol, "malformed WebSocket frame"),
            Self::Text => (CloseCode::Unsupported, "binary messages only"),
            Self::TooLarge => (CloseCode::Size, "frame too large"),
        };
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }

    /// Its label in metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Text => "text",
            Self::TooLarge => "too_large",
        }
    }
}

/// The close code a connection gets when the server closes it after the
/// error frame `code` (the error frame itself says more).
pub(crate) fn close_code_for(code: arqonbus_proto::v1::ErrorCode) -> CloseCode {
    use arqonbus_proto::v1::ErrorCode as E;
    match code {
        E::Unspecified => CloseCode::Normal,
        E::ServerShuttingDown => CloseCode::Away,
        E::FrameTooLarge => CloseCode::Size,
        E::ProtocolViolation | E::UnsupportedVersion => CloseCode::Protocol,
        E::Internal | E::Unavailable => CloseCode::Error,
        _ => CloseCode::Policy,
    }
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_owned()));
    *r.status_mut() = status;
    r
}

/// Checks an upgrade request: the subprotocol must be offered, the Origin
/// (when the server restricts them) allowed. Returns the response to send
/// and the request's Origin.
#[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
fn check_request(
    allowed_origins: &[String],
    request: &Request,
    mut response: Response,
) -> Result<(Response, Option<Box<str>>), ErrorResponse> {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must offer arqonbus.v1",
        ));
    }
    let origin = match request.headers().get("origin").map(HeaderValue::to_str) {
        None => None,
        Some(Ok(o)) => Some(Box::<str>::from(o)),
        Some(Err(_)) => return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed")),
    };
    if !arqonbus_core::origin::allowed(allowed_origins, origin.as_deref()) {
        return Err(refuse(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    response.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok((response, origin))
}

/// `tungstenite`'s limits for a connection whose frames may be `max_frame`
/// bytes.
fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(CODEC_READ)
        // `tungstenite` writes only its own frames (pongs, close), each at
        // once into `out` (or kept while a data frame is being framed).
        .write_buffer_size(0)
        .max_write_buffer_size(CONTROL_ROOM)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Runs the upgrade on `stream` (after TLS, if any). Frames are limited to
/// `pre_auth_max_frame` until [`WsConn::open`]; the connection reads the
/// socket up to `read_chunk` bytes at a time.
///
/// RFC 6455 §4.1: a client sends nothing after its upgrade request until it
/// has the response, so no frame bytes can be left over from the request.
pub(crate) async fn accept<S>(
    mut stream: S,
    allowed_origins: &[String],
    pre_auth_max_frame: usize,
    read_chunk: usize,
) -> Result<WsConn<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut origin = None;
    let mut refused = None;
    #[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
    let callback = |request: &Request, response: Response| match check_request(
        allowed_origins,
        request,
        response,
    ) {
        Ok((response, o)) => {
            origin = o;
            Ok(response)
        }
        Err(e) => {
            refused.clone_from(e.body());
            Err(e)
        }
    };
    let config = ws_config(pre_auth_max_frame);
    // Lent, so a request that is no upgrade at all can still be answered.
    let upgraded =
        async_tungstenite::accept_hdr_async_with_config(&mut stream, callback, Some(config))
            .await
            .map(async_tungstenite::WebSocketStream::into_inner);
    match upgraded {
        Ok(_) => Ok(WsConn::new(stream, config, origin, read_chunk)),
        Err(tungstenite::Error::Io(e)) => Err(UpgradeError::Io(e)),
        // Refused by our checks: tungstenite sent the answer.
        Err(_) if refused.is_some() => Err(UpgradeError::Refused(refused.unwrap_or_default())),
        Err(e) => {
            let answer = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\
                          Sec-WebSocket-Version: 13\r\nContent-Length: 47\r\n\r\n\
                          a WebSocket upgrade offering arqonbus.v1 needed";
            // Best effort: the connection ends either way.
            let _ = futures_lite::AsyncWriteExt::write_all(&mut stream, answer.as_bytes()).await;
            let _ = futures_lite::AsyncWriteExt::close(&mut stream).await;
            Err(UpgradeError::Refused(e.to_string()))
        }
    }
}

/// Lends the socket to `tungstenite`'s blocking `Read`/`Write` calls for one
/// poll: reads come from the connection's [`ReadBuf`] (refilled from the
/// socket when empty; `Pending` becomes `WouldBlock`, with the task's waker
/// registered), writes go to the end of `out`, at a frame boundary only.
struct Lent<'a, 'b, S> {
    io: &'a mut S,
    inbuf: &'a mut ReadBuf,
    out: &'a mut BytesMut,
    /// A data frame is partly in `out`: nothing else may be appended.
    mid_frame: bool,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for Lent<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbuf.filled().is_empty() {
            let room = self.inbuf.unfilled(0);
            match Pin::new(&mut *self.io).poll_read(self.cx, room) {
                Poll::Ready(Ok(0)) => return Ok(0),
                Poll::Ready(Ok(n)) => self.inbuf.advance(n),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    // Nothing buffered and nothing arriving: hold no memory.
                    self.inbuf.shrink_if_idle();
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
        }
        let filled = self.inbuf.filled();
        let n = filled.len().min(buf.len());
        buf[..n].copy_from_slice(&filled[..n]);
        self.inbuf.consume(n);
        Ok(n)
    }
}

impl<S> Write for Lent<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.mid_frame || self.out.len() > CONTROL_ROOM + WRITE_CHUNK {
            // Kept by `tungstenite` and offered again at its next flush.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // `out` reaches the socket in `WsConn::poll_send`.
        Ok(())
    }
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

fn into_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::BrokenPipe.into()
        }
        other => io::Error::other(other.to_string()),
    }
}

/// The native frames the connection task writes, re-framed as binary
/// WebSocket messages as their bytes arrive (a frame may span writes).
#[derive(Debug, Default)]
struct Reframer {
    /// The length prefix of the next frame, as far as it has arrived.
    prefix: [u8; 4],
    have: usize,
    /// Body bytes of the current frame still to come.
    remaining: usize,
    /// The current frame's body while the session is not open yet, to find
    /// the `Welcome` (few, small frames).
    probe: Option<Vec<u8>>,
}

impl Reframer {
    /// A frame is partly framed: its header (or part of its body) is out.
    fn mid_frame(&self) -> bool {
        self.have > 0 || self.remaining > 0
    }
}

/// A WebSocket connection after the upgrade, as a native-framed byte stream
/// (see the module docs).
pub(crate) struct WsConn<S> {
    io: S,
    ctx: WebSocketContext,
    /// Received bytes `tungstenite` has not taken yet.
    inbuf: ReadBuf,
    /// The message being handed to the reader, its length prefix first.
    rx: Bytes,
    rx_prefix: [u8; 4],
    /// How much of prefix + `rx` the reader has taken.
    rx_pos: usize,
    /// Bytes for the socket, in order: whole WebSocket frames, the last
    /// possibly still being framed.
    out: BytesMut,
    reframer: Reframer,
    /// A close frame is queued: flush it, then end the stream.
    closing: bool,
    /// Nothing more to read.
    done: bool,
    /// Closed by the connection task, which now drains the socket before
    /// dropping it (so a reset does not destroy the close frame): reads
    /// return the raw bytes, to be discarded.
    lingering: bool,
    /// What ended the connection on our side, if a violation did.
    violation: Option<Violation>,
    /// The session's `Welcome` went out: frames may be `limits.max_frame`.
    opened: bool,
    /// The close code [`poll_close`](AsyncWrite::poll_close) sends.
    close_code: CloseCode,
    /// The upgrade request's Origin header.
    origin: Option<Box<str>>,
}

impl<S> std::fmt::Debug for WsConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("closing", &self.closing)
            .field("done", &self.done)
            .field("violation", &self.violation)
            .finish_non_exhaustive()
    }
}

/// Borrows the fields `tungstenite` works on, beside `ctx`.
macro_rules! lent {
    ($this:ident, $cx:expr) => {
        Lent {
            io: &mut $this.io,
            inbuf: &mut $this.inbuf,
            out: &mut $this.out,
            mid_frame: $this.reframer.mid_frame(),
            cx: $cx,
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    fn new(io: S, config: WebSocketConfig, origin: Option<Box<str>>, read_chunk: usize) -> Self {
        Self {
            io,
            ctx: WebSocketContext::new(Role::Server, Some(config)),
            inbuf: ReadBuf::new(read_chunk),
            rx: Bytes::new(),
            rx_prefix: [0; 4],
            // Nothing to hand out yet (the prefix counts as taken).
            rx_pos: 4,
            out: BytesMut::new(),
            reframer: Reframer::default(),
            closing: false,
            done: false,
            lingering: false,
            violation: None,
            opened: false,
            close_code: CloseCode::Normal,
            origin,
        }
    }

    /// The session is open: messages may be as large as `max_frame`.
    fn open(&mut self, max_frame: usize) {
        self.opened = true;
        let wanted = ws_config(max_frame);
        self.ctx.set_config(|c| *c = wanted);
    }

    /// Before the session is open, looks at each frame going out: the
    /// `Welcome` opens it, with the frame limit it announces. (The connection
    /// task writes the `Welcome` before it processes anything the client sent
    /// after `Connect`, so no larger message can come first.)
    fn watch_for_welcome(&mut self, body: Vec<u8>) {
        /// `Frame.welcome`: field 2, length-delimited.
        const TAG_WELCOME: u8 = (2 << 3) | 2;
        if self.opened || body.first() != Some(&TAG_WELCOME) {
            return;
        }
        if let Ok(arqonbus_proto::v1::frame::Kind::Welcome(w)) =
            arqonbus_proto::codec::decode_body(Bytes::from(body))
            && let Some(limits) = w.limits
        {
            self.open(limits.max_frame as usize);
        }
    }

    /// The upgrade request's Origin header, if it had one.
    pub(crate) fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The violation that made us close, if one did.
    pub(crate) fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// The close code to send when the connection task closes after the
    /// error frame `code`.
    pub(crate) fn closing_after(&mut self, code: arqonbus_proto::v1::ErrorCode) {
        self.close_code = close_code_for(code);
    }

    /// Queues the close frame for `v`; reading ends once it is flushed.
    fn fail(&mut self, cx: &mut Context<'_>, v: Violation) {
        self.violation = Some(v);
        self.closing = true;
        // Queued in `tungstenite` when it cannot be appended yet; flushed
        // by `poll_send`.
        let _ = self.ctx.close(&mut lent!(self, cx), Some(v.close_frame()));
    }

    /// Copies what is left of the current message (prefix first) into `buf`.
    fn hand_out(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() && self.rx_pos < 4 {
            buf[n] = self.rx_prefix[self.rx_pos];
            self.rx_pos += 1;
            n += 1;
        }
        let take = (buf.len() - n).min(self.rx.len());
        buf[n..n + take].copy_from_slice(&self.rx[..take]);
        self.rx.advance(take);
        if self.rx.is_empty() {
            // An empty slice would still hold the codec's buffer.
            self.rx = Bytes::new();
        }
        n + take
    }

    /// Frames the native bytes in `buf` into `out`: each frame's length
    /// prefix becomes a binary message's header, its body follows.
    fn reframe(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let r = &mut self.reframer;
            if r.remaining == 0 {
                let k = (4 - r.have).min(buf.len());
                r.prefix[r.have..r.have + k].copy_from_slice(&buf[..k]);
                r.have += k;
                buf = &buf[k..];
                if r.have < 4 {
                    break;
                }
                r.have = 0;
                let len = u32::from_be_bytes(r.prefix) as usize;
                let header = FrameHeader {
                    is_final: true,
                    opcode: OpCode::Data(Data::Binary),
                    ..FrameHeader::default()
                };
                // Writing into memory cannot fail.
                let _ = header.format(len as u64, &mut (&mut self.out).writer());
                r.remaining = len;
                if !self.opened {
                    r.probe = Some(Vec::with_capacity(len));
                }
            } else {
                let k = r.remaining.min(buf.len());
                self.out.extend_from_slice(&buf[..k]);
                if let Some(probe) = &mut r.probe {
                    probe.extend_from_slice(&buf[..k]);
                }
                r.remaining -= k;
                buf = &buf[k..];
            }
            if self.reframer.remaining == 0
                && self.reframer.have == 0
                && let Some(body) = self.reframer.probe.take()
            {
                self.watch_for_welcome(body);
            }
        }
    }

    /// Moves `tungstenite`'s frames into `out` (between data frames only)
    /// and writes `out` to the socket. `Ready(Ok)` when nothing waits.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let queued = match self.ctx.flush(&mut lent!(self, cx)) {
            Err(e) if !would_block(&e) => Err(into_io(e)),
            _ => Ok(()),
        };
        while !self.out.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(queued),
            other => other,
        }
    }

    /// Drops the empty output buffer of a connection with nothing to write.
    fn release_if_idle(&mut self) {
        if self.out.is_empty() && !self.reframer.mid_frame() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.lingering {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // Hands out as many whole messages as `buf` takes (one read of the
        // connection task then carries a batch, as on TCP), stopping at the
        // first that would block.
        let mut n = 0;
        loop {
            if this.rx_pos < 4 || !this.rx.is_empty() {
                if n == buf.len() {
                    return Poll::Ready(Ok(n));
                }
                n += this.hand_out(&mut buf[n..]);
                continue;
            }
            if n > 0 && (this.done || this.closing) {
                // The end comes at the next read, after these bytes.
                return Poll::Ready(Ok(n));
            }
            if this.done {
                return Poll::Ready(Ok(0));
            }
            if this.closing {
                // Our close frame (or the answer to the peer's) goes out
                // before the reader sees the end.
                match this.poll_send(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => {
                        this.done = true;
                        continue;
                    }
                }
            }
            match this.ctx.read(&mut lent!(this, cx)) {
                Ok(Message::Binary(body)) => {
                    let Ok(len) = u32::try_from(body.len()) else {
                        this.fail(cx, Violation::TooLarge);
                        continue;
                    };
                    this.rx_prefix = len.to_be_bytes();
                    this.rx = body;
                    this.rx_pos = 0;
                }
                Ok(Message::Text(_)) => this.fail(cx, Violation::Text),
                // Pongs to pings are queued by tungstenite and sent with
                // the next read or write.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                // The peer closes: tungstenite queued the answer.
                Ok(Message::Close(_)) => this.closing = true,
                Err(e) if would_block(&e) => {
                    if n > 0 {
                        return Poll::Ready(Ok(n));
                    }
                    // A pong (or what a full socket held back) leaves now;
                    // a write error shows at the task's next write.
                    if this.poll_send(cx).is_ready() {
                        this.release_if_idle();
                    }
                    return Poll::Pending;
                }
                Err(tungstenite::Error::Io(e)) => {
                    if n > 0 {
                        // These bytes first; the stream ends after them.
                        this.done = true;
                        return Poll::Ready(Ok(n));
                    }
                    return Poll::Ready(Err(e));
                }
                Err(tungstenite::Error::Capacity(_)) => this.fail(cx, Violation::TooLarge),
                Err(
                    tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    )
                    | tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed,
                ) => this.done = true,
                Err(_) => this.fail(cx, Violation::Malformed),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsConn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.closing || this.done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if !this.out.is_empty() {
            // Nothing is taken while earlier bytes wait for the socket.
            match this.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map(|r| r.map(|()| 0)),
            }
        }
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        let take = offered.min(WRITE_CHUNK);
        // Room for the bodies and, at worst, 10 header bytes per 5-byte
        // frame in place of its 4-byte prefix.
        this.out.reserve(take + take / 5 * 6 + 16);
        let mut taken = 0;
        for b in bufs {
            let n = b.len().min(take - taken);
            this.reframe(&b[..n]);
            taken += n;
            if taken == take {
                break;
            }
        }
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.closing {
            this.closing = true;
            let frame = CloseFrame {
                code: this.close_code,
                reason: "".into(),
            };
            // Queued in `tungstenite` when it cannot be appended yet (a data
            // frame the task left unfinished never gets its close frame).
            let _ = this.ctx.close(&mut lent!(this, cx), Some(frame));
        }
        match this.poll_send(cx) {
            Poll::Ready(_) => {
                this.lingering = true;
                Pin::new(&mut this.io).poll_close(cx)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    /// A socket scripted by the test: reads hand out `incoming` and then
    /// block; writes take at most `per_write` bytes and block every other
    /// call, so frames leave in pieces.
    #[derive(Default)]
    struct Scripted {
        incoming: Vec<u8>,
        written: Vec<u8>,
        per_write: usize,
        calls: usize,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            if self.incoming.is_empty() {
                return Poll::Pending;
            }
            let n = buf.len().min(self.incoming.len());
            buf[..n].copy_from_slice(&self.incoming[..n]);
            self.incoming.drain(..n);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Poll::Pending;
            }
            let n = buf.len().min(self.per_write);
            self.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A client frame (masked with a zero key) with opcode `op`.
    fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | op, 0x80 | u8::try_from(payload.len()).unwrap()];
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(payload);
        f
    }

    fn native(body: &[u8]) -> Vec<u8> {
        let mut f = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    /// What a client reads from `bytes`: every message, in order.
    fn client_reads(bytes: Vec<u8>) -> Vec<Message> {
        let mut ws =
            tungstenite::WebSocket::from_raw_socket(io::Cursor::new(bytes), Role::Client, None);
        let mut got = Vec::new();
        loop {
            match ws.read() {
                Ok(m) => got.push(m),
                // The end of the bytes, between two frames.
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => return got,
                Err(e) => panic!("malformed output after {} messages: {e}", got.len()),
            }
        }
    }

    fn conn(per_write: usize) -> WsConn<Scripted> {
        let io = Scripted {
            per_write,
            ..Scripted::default()
        };
        WsConn::new(io, ws_config(1 << 20), None, 64 * 1024)
    }

    #[test]
    fn pongs_never_land_inside_a_data_frame_and_frames_survive_any_split() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut ws = conn(7);
        let bodies: Vec<Vec<u8>> = (0u8..6)
            .map(|i| vec![i; [3, 300, 1, 70_000, 125, 126][usize::from(i)]])
            .collect();
        let stream: Vec<u8> = bodies.iter().flat_map(|b| native(b)).collect();
        // The task writes in odd pieces; between two pieces the peer pings.
        let mut at = 0;
        let pieces = [1, 2, 5, 150, 3, 200, 9, 65_536, 40, 5000, usize::MAX];
        for (pings, piece) in (0u8..).zip(pieces) {
            let end = at + piece.min(stream.len() - at);
            while at < end {
                match Pin::new(&mut ws).poll_write(&mut cx, &stream[at..end]) {
                    Poll::Ready(Ok(n)) => at += n,
                    Poll::Ready(Err(e)) => panic!("{e}"),
                    Poll::Pending => {}
                }
            }
            ws.io.incoming = client_frame(OP_PING, &[b'p', pings]);
            let mut sink = [0u8; 64];
            assert!(Pin::new(&mut ws).poll_read(&mut cx, &mut sink).is_pending());
        }
        while Pin::new(&mut ws).poll_flush(&mut cx).is_pending() {}
        let got = client_reads(std::mem::take(&mut ws.io.written));
        let data: Vec<_> = got
            .iter()
            .filter_map(|m| match m {
                Message::Binary(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(data, bodies, "every frame whole, in order");
        let pongs = got.iter().filter(|m| matches!(m, Message::Pong(_))).count();
        assert!(pongs >= 1, "the pings were answered");
        // Idle (the task's read blocks): nothing buffered on either side.
        assert!(
            Pin::new(&mut ws)
                .poll_read(&mut cx, &mut [0u8; 64])
                .is_pending()
        );
        assert_eq!(ws.out.capacity(), 0, "the output buffer is given back");
        assert!(ws.inbuf.filled().is_empty());
    }

    #[test]
    fn messages_read_in_pieces_are_handed_out_as_native_frames() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut ws = conn(1 << 20);
        let bodies = [vec![1u8; 10], vec![2u8; 125], vec![3u8; 1]];
        ws.io.incoming = bodies.iter().flat_map(|b| client_frame(2, b)).collect();
        let mut got = Vec::new();
        let mut buf = [0u8; 17];
        while let Poll::Ready(r) = Pin::new(&mut ws).poll_read(&mut cx, &mut buf) {
            got.extend_from_slice(&buf[..r.unwrap()]);
        }
        let want: Vec<u8> = bodies.iter().flat_map(|b| native(b)).collect();
        assert_eq!(got, want);
        assert!(ws.rx.is_empty());
    }

    const OP_PING: u8 = 0x9;
}
