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
//! - memory per connection is bounded: the read side holds at most one
//!   message; the write side accepts at most [`WRITE_CHUNK`] bytes per call
//!   beyond an unfinished frame, and takes nothing while earlier WebSocket
//!   frames wait for socket room (so what the task has not handed over stays
//!   in its `Outbound`, where `max_pending_bytes` and the slow-consumer
//!   policies apply);
//! - no clock: a peer that never reads its close frame is bounded by the
//!   connection task's own timers (pings, `close_grace`).
//!
//! Copies: the write side assembles each frame (one copy) and `tungstenite`
//! frames it into its output buffer (a second); the native path writes
//! payloads from the publisher's buffer. Measured in `perf/results/`.

use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{
    CloseFrame, Role, WebSocketConfig, WebSocketContext,
};
use async_tungstenite::tungstenite::{self, Message};
use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};

use crate::transport::Transport;

/// The subprotocol a client must offer (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "arqonbus.v1";

/// Most bytes the write side takes per call beyond an unfinished frame.
pub(crate) const WRITE_CHUNK: usize = 64 * 1024;

/// Bytes `tungstenite` reads from the socket at a time (its read buffer
/// keeps this capacity for the connection's life: idle memory).
const READ_CHUNK: usize = 8 * 1024;

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
/// `timeout`; the result is a WebSocket transport.
pub(crate) async fn upgrade(
    transport: Transport,
    edge: &WsShard,
    timeout: Duration,
) -> io::Result<Transport> {
    let pre_auth = arqonbus_core::session::PRE_AUTH_MAX_FRAME as usize;
    let accepted = async {
        accept(transport, &edge.allowed_origins, pre_auth)
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
        .read_buffer_size(READ_CHUNK)
        .write_buffer_size(WRITE_CHUNK)
        // Room for one chunk's frames on top of what waits: never reached,
        // because nothing is taken while frames wait.
        .max_write_buffer_size(2 * (WRITE_CHUNK + max_frame) + 1024)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Runs the upgrade on `stream` (after TLS, if any). Frames are limited to
/// `pre_auth_max_frame` until [`WsConn::open`].
///
/// RFC 6455 §4.1: a client sends nothing after its upgrade request until it
/// has the response, so no frame bytes can be left over from the request.
pub(crate) async fn accept<S>(
    mut stream: S,
    allowed_origins: &[String],
    pre_auth_max_frame: usize,
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
        Ok(_) => Ok(WsConn::new(stream, config, origin)),
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

/// Lends a stream to `tungstenite`'s blocking `Read`/`Write` calls for one
/// poll: `Pending` becomes `WouldBlock`, with the task's waker registered.
struct Lent<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

fn ready<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl<S: AsyncRead + Unpin> Read for Lent<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        ready(Pin::new(&mut *self.io).poll_read(self.cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> Write for Lent<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        ready(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        ready(Pin::new(&mut *self.io).poll_flush(self.cx))
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

/// A WebSocket connection after the upgrade, as a native-framed byte stream
/// (see the module docs).
pub(crate) struct WsConn<S> {
    io: S,
    ctx: WebSocketContext,
    /// The message being handed to the reader, its length prefix first.
    rx: Bytes,
    rx_prefix: [u8; 4],
    /// How much of prefix + `rx` the reader has taken.
    rx_pos: usize,
    /// Written bytes that do not make a whole frame yet.
    tx: BytesMut,
    /// WebSocket frames wait in `tungstenite` for socket room.
    blocked: bool,
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

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    fn new(io: S, config: WebSocketConfig, origin: Option<Box<str>>) -> Self {
        Self {
            io,
            ctx: WebSocketContext::new(Role::Server, Some(config)),
            rx: Bytes::new(),
            rx_prefix: [0; 4],
            // Nothing to hand out yet (the prefix counts as taken).
            rx_pos: 4,
            tx: BytesMut::new(),
            blocked: false,
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
    fn watch_for_welcome(&mut self, body: &Bytes) {
        /// `Frame.welcome`: field 2, length-delimited.
        const TAG_WELCOME: u8 = (2 << 3) | 2;
        if self.opened || body.first() != Some(&TAG_WELCOME) {
            return;
        }
        if let Ok(arqonbus_proto::v1::frame::Kind::Welcome(w)) =
            arqonbus_proto::codec::decode_body(body.clone())
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
        let mut lent = Lent {
            io: &mut self.io,
            cx,
        };
        // Queued even when the socket is full (`WouldBlock`); flushed below.
        let _ = self.ctx.close(&mut lent, Some(v.close_frame()));
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
        n + take
    }

    /// Hands whole frames in `tx` to `tungstenite`, one message each.
    fn send_frames(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while let Some(prefix) = self.tx.first_chunk::<4>() {
            let len = u32::from_be_bytes(*prefix) as usize;
            if self.tx.len() < 4 + len {
                break;
            }
            self.tx.advance(4);
            let body = self.tx.split_to(len).freeze();
            self.watch_for_welcome(&body);
            let mut lent = Lent {
                io: &mut self.io,
                cx,
            };
            match self.ctx.write(&mut lent, Message::Binary(body)) {
                Ok(()) => {}
                // Queued: it leaves with the next flush.
                Err(e) if would_block(&e) => self.blocked = true,
                Err(e) => return Err(into_io(e)),
            }
        }
        Ok(())
    }

    /// Writes what `tungstenite` holds. `Ready(Ok)` when nothing waits.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut lent = Lent {
            io: &mut self.io,
            cx,
        };
        match self.ctx.flush(&mut lent) {
            Ok(()) => {
                self.blocked = false;
                Poll::Ready(Ok(()))
            }
            Err(e) if would_block(&e) => {
                self.blocked = true;
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(into_io(e))),
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
            let mut lent = Lent {
                io: &mut this.io,
                cx,
            };
            match this.ctx.read(&mut lent) {
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
                // Pongs to pings are queued by tungstenite and flushed on
                // the next read or write.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                // The peer closes: tungstenite queued the answer.
                Ok(Message::Close(_)) => this.closing = true,
                Err(e) if would_block(&e) => {
                    return if n > 0 {
                        Poll::Ready(Ok(n))
                    } else {
                        Poll::Pending
                    };
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
        if this.blocked {
            match this.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other.map(|r| r.map(|()| 0)),
            }
        }
        let mut taken = 0;
        for b in bufs {
            let n = b.len().min(WRITE_CHUNK - taken);
            this.tx.extend_from_slice(&b[..n]);
            taken += n;
            if taken == WRITE_CHUNK {
                break;
            }
        }
        this.send_frames(cx)?;
        if !this.blocked
            && let Poll::Ready(Err(e)) = this.poll_send(cx)
        {
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
            let mut lent = Lent {
                io: &mut this.io,
                cx,
            };
            let _ = this.ctx.close(&mut lent, Some(frame));
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
