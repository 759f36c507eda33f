//! A connection's byte stream: plain TCP or TLS over it.
//!
//! [`PlainStream`] wraps glommio's `TcpStream` to add real vectored writes:
//! glommio reads and writes with non-blocking syscalls and only uses io_uring
//! to wait for readiness, but its `AsyncWrite` has no vectored write. We send
//! with `sendmsg(MSG_DONTWAIT)` over all slices, and when the socket is full
//! fall back to glommio's `poll_write`, which registers the readiness wait.
//! TLS: `futures-rustls` runs the handshake over a `PlainStream`; then the
//! session ([`rustls::ServerConnection`]) and the stream are taken apart and
//! driven by [`TlsConn`], our own small adapter, so TLS records are written
//! with the same vectored path and a connection can be handed to another
//! shard whole ([`Transport::into_parts`]): its descriptor and its TLS state,
//! including bytes rustls already read but we did not.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// Plain TCP with vectored writes.
#[derive(Debug)]
pub(crate) struct PlainStream(pub(crate) TcpStream);

impl AsyncRead for PlainStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlainStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let fd = self.0.as_raw_fd();
        // SAFETY: `fd` belongs to `self.0`, which outlives this borrow.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        match sock.send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Let glommio arm the readiness wait. It tries one send
                // itself first; if that succeeds, report its progress.
                match bufs.iter().find(|b| !b.is_empty()) {
                    Some(first) => Pin::new(&mut self.0).poll_write(cx, first),
                    None => Poll::Ready(Ok(0)),
                }
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

impl PlainStream {
    /// A second descriptor for the socket, independent of this stream (and
    /// of this executor): the socket stays open when the stream is dropped.
    fn dup_fd(&self) -> io::Result<OwnedFd> {
        // SAFETY: the descriptor belongs to `self.0` and is open for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) };
        fd.try_clone_to_owned()
    }

    /// Serves a socket handed over from another shard. Must run on this
    /// shard's executor (glommio registers it with this executor's ring).
    pub(crate) fn from_owned(fd: OwnedFd) -> Self {
        // SAFETY: `fd` is an open, connected, non-blocking TCP socket whose
        // ownership moves into the stream here.
        Self(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
    }
}

/// Lends a [`PlainStream`] to rustls's blocking `Read`/`Write` calls for one
/// poll: `Pending` becomes `WouldBlock`, with the task's waker registered.
struct Lent<'a, 'b> {
    io: &'a mut PlainStream,
    cx: &'a mut Context<'b>,
}

fn ready<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Read for Lent<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        ready(Pin::new(&mut *self.io).poll_read(self.cx, buf))
    }
}

impl Write for Lent<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        ready(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        ready(Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        ready(Pin::new(&mut *self.io).poll_flush(self.cx))
    }
}

/// A TLS session over a [`PlainStream`], after the handshake.
///
/// Invariants: `poll_read` returns `Pending` only after the socket returned
/// `Pending` (so the waker is registered); `poll_write` returns `Ok(n)` once
/// rustls has taken `n` plaintext bytes, even if some records still wait for
/// room in the socket: `poll_flush` writes those.
pub(crate) struct TlsConn {
    io: PlainStream,
    tls: rustls::ServerConnection,
    /// The socket reported end of stream.
    eof: bool,
    /// `close_notify` was queued.
    closing: bool,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("eof", &self.eof)
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    pub(crate) fn new(io: PlainStream, tls: rustls::ServerConnection) -> Self {
        Self {
            io,
            tls,
            eof: false,
            closing: false,
        }
    }

    /// Writes the TLS records rustls holds; `Ready(Ok)` when none is left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let mut lent = Lent {
                io: &mut self.io,
                cx,
            };
            match self.tls.write_tls(&mut lent) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes plaintext bytes into rustls, then writes what records it can.
    fn poll_put(
        &mut self,
        cx: &mut Context<'_>,
        put: impl Fn(&mut rustls::Writer<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let taken = match put(&mut self.tls.writer()) {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(e)),
        };
        match self.poll_send(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if taken == 0 => Poll::Pending,
            // rustls took nothing (its buffer was full) but now has room.
            Poll::Ready(Ok(())) if taken == 0 => match put(&mut self.tls.writer()) {
                Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    // Best effort: anything left goes out on the flush.
                    let _ = self.poll_send(cx);
                    Poll::Ready(Ok(n))
                }
                Err(e) => Poll::Ready(Err(e)),
            },
            _ => Poll::Ready(Ok(taken)),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            match this.tls.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                // The peer closed TCP without close_notify: end of stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(0));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                return Poll::Ready(Ok(0));
            }
            let mut lent = Lent {
                io: &mut this.io,
                cx,
            };
            match this.tls.read_tls(&mut lent) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = this.tls.process_new_packets() {
                // Send the alert rustls queued, then fail.
                let _ = this.poll_send(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            // Post-handshake messages (key updates) may need an answer.
            if this.tls.wants_write()
                && let Poll::Ready(Err(e)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_put(cx, |w| w.write(buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_put(cx, |w| w.write_vectored(bufs))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Err(e) = this.tls.writer().flush() {
            return Poll::Ready(Err(e));
        }
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.closing {
            this.closing = true;
            this.tls.send_close_notify();
        }
        match this.poll_send(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.io).poll_close(cx),
            other => other,
        }
    }
}

/// A connection's stream after the (optional) TLS handshake, and for
/// connections of the WebSocket listener, the upgrade (`crate::ws`).
#[derive(Debug)]
pub(crate) enum Transport {
    Plain(PlainStream),
    Tls(Box<TlsConn>),
    /// Native frames carried one per binary WebSocket message, over a plain
    /// or TLS transport. Never handed to another shard.
    Ws(Box<crate::ws::WsConn<Transport>>),
}

/// A connection's stream taken apart to cross to another shard: the socket
/// and, with TLS, the session (keys, sequence numbers, buffered records).
/// Never logged: the session holds keys.
pub(crate) struct TransportParts {
    pub(crate) fd: OwnedFd,
    pub(crate) tls: Option<Box<rustls::ServerConnection>>,
}

impl Transport {
    /// After the handshake.
    pub(crate) fn tls(tls: futures_rustls::server::TlsStream<PlainStream>) -> Self {
        let (io, session) = tls.into_inner();
        Self::Tls(Box::new(TlsConn::new(io, session)))
    }

    /// Takes the stream apart; the socket stays open in the parts. Fails
    /// (and the connection is lost) only when no descriptor is left.
    pub(crate) fn into_parts(self) -> io::Result<TransportParts> {
        match self {
            Self::Plain(p) => Ok(TransportParts {
                fd: p.dup_fd()?,
                tls: None,
            }),
            Self::Tls(t) => {
                let TlsConn { io, tls, .. } = *t;
                Ok(TransportParts {
                    fd: io.dup_fd()?,
                    tls: Some(Box::new(tls)),
                })
            }
            // The WebSocket codec's buffered state cannot cross shards.
            Self::Ws(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a WebSocket connection stays on its shard",
            )),
        }
    }

    /// The WebSocket side of the connection, if it came through the
    /// WebSocket listener.
    pub(crate) fn ws(&self) -> Option<&crate::ws::WsConn<Transport>> {
        match self {
            Self::Ws(w) => Some(w),
            _ => None,
        }
    }

    /// The same, to change.
    pub(crate) fn ws_mut(&mut self) -> Option<&mut crate::ws::WsConn<Transport>> {
        match self {
            Self::Ws(w) => Some(w),
            _ => None,
        }
    }

    /// Puts handed-over parts back together on this shard's executor.
    pub(crate) fn from_parts(parts: TransportParts) -> Self {
        let io = PlainStream::from_owned(parts.fd);
        match parts.tls {
            None => Self::Plain(io),
            Some(tls) => Self::Tls(Box::new(TlsConn::new(io, *tls))),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Self::Ws(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_close(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Self::Ws(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
