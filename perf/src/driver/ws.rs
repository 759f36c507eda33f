//! The ArqonBus protocol over the WebSocket edge (specs/websocket.md): the
//! native frames without their length prefix, one per binary WebSocket
//! message, subprotocol `arqonbus.v1`.
//!
//! Lean like the native driver, so a comparison measures the server's edge:
//! publish frames are pre-encoded once as whole WebSocket frames (masked
//! with a zero key, which RFC 6455 permits; a browser would pick random keys,
//! which costs the server the same unmasking) and written in batches;
//! received WebSocket frames are walked in place by their header and counted
//! by the native kind byte of their body. The upgrade is a fixed request
//! read back up to its blank line. The server under test never sees
//! anything a real client would not send.
//!
//! The framing pieces (client and server headers, the upgrade) are shared
//! with the NATS protocol over nats-server's WebSocket listener
//! ([`super::nats_ws`]).

use arqonbus_proto::codec;
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::Bytes;

use super::native::{self, TAG_ERROR, TAG_MESSAGE, closed, hello, subscription, welcomed};
use super::{DriverError, Ev, Frame, Role, Stream, Target, Wire, tail_of};

/// WebSocket opcodes (RFC 6455 5.2).
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xa;

/// The longest client frame header: 2 bytes, an 8-byte length, a 4-byte
/// mask key.
pub(super) const MAX_CLIENT_HEADER: usize = 14;

/// The header of a client frame carrying `len` bytes (FIN, `op`, masked
/// with a zero key) and its length.
fn client_header_bytes(op: u8, len: usize) -> ([u8; MAX_CLIENT_HEADER], usize) {
    let mut h = [0u8; MAX_CLIENT_HEADER];
    h[0] = 0x80 | op;
    let n = if len < 126 {
        h[1] = 0x80 | len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 0x80 | 0x7e;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        h[1] = 0x80 | 0x7f;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    // The mask key (zero) follows; the array is already zeroed.
    (h, n + 4)
}

/// Appends the header of a client frame carrying `len` bytes: FIN, `op`,
/// masked with a zero key.
pub(super) fn client_header(op: u8, len: usize, out: &mut Vec<u8>) {
    let (h, n) = client_header_bytes(op, len);
    out.extend_from_slice(&h[..n]);
}

/// Turns `buf[head..head + body]` into one binary client frame by writing
/// its header just before it (`head` must be at least
/// [`MAX_CLIENT_HEADER`]); returns where the frame starts.
pub(super) fn seal(buf: &mut [u8], head: usize, body: usize) -> usize {
    let (h, n) = client_header_bytes(OP_BINARY, body);
    let at = head - n;
    buf[at..head].copy_from_slice(&h[..n]);
    at
}

/// `inner`'s bytes from `skip` on as one binary client frame, its stamp
/// offset moved along.
pub(super) fn framed(inner: &Frame, skip: usize) -> Frame {
    let body = &inner.bytes[skip..];
    let mut bytes = Vec::with_capacity(body.len() + MAX_CLIENT_HEADER);
    client_header(OP_BINARY, body.len(), &mut bytes);
    let header = bytes.len();
    bytes.extend_from_slice(body);
    Frame {
        bytes,
        stamp_end: inner.stamp_end - skip + header,
    }
}

/// `(header length, payload length, opcode)` of the server frame starting
/// `buf`, once its whole header is there.
pub(super) fn server_header(buf: &[u8]) -> Option<(usize, usize, u8)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    let (mut header, len) = match b1 & 0x7f {
        126 => (
            4,
            usize::from(u16::from_be_bytes(*buf.get(2..4)?.first_chunk()?)),
        ),
        127 => (
            10,
            usize::try_from(u64::from_be_bytes(*buf.get(2..10)?.first_chunk()?)).ok()?,
        ),
        n => (2, usize::from(n)),
    };
    if b1 & 0x80 != 0 {
        header += 4;
    }
    Some((header, len, b0 & 0x0f))
}

/// A native frame (with its length prefix) as one binary WebSocket frame.
fn wrap(native: &[u8], out: &mut Vec<u8>) {
    let body = &native[codec::LEN_PREFIX..];
    client_header(OP_BINARY, body.len(), out);
    out.extend_from_slice(body);
}

/// A publish as one WebSocket frame.
pub(super) fn publish_frame(
    subject: &str,
    reply: &str,
    payload: &[u8],
    headers: bool,
) -> Result<Frame, DriverError> {
    let inner = native::publish_frame(subject, reply, payload, headers)?;
    Ok(framed(&inner, codec::LEN_PREFIX))
}

/// The HTTP upgrade on `wire`: a fixed request (asking for `protocol` when
/// given), the answer read to its blank line and left out of `avail()`.
pub(super) fn upgrade(
    wire: &mut Wire,
    host: &str,
    protocol: Option<&str>,
) -> Result<(), DriverError> {
    let protocol = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         {protocol}\r\n"
    );
    wire.write_all(request.as_bytes())?;
    loop {
        if let Some(end) = wire.avail().windows(4).position(|w| w == b"\r\n\r\n") {
            let ok = wire.avail().starts_with(b"HTTP/1.1 101");
            let head = String::from_utf8_lossy(&wire.avail()[..end]).into_owned();
            wire.consume(end + 4);
            if !ok {
                return Err(DriverError::Closed(format!("upgrade refused: {head}")));
            }
            return Ok(());
        }
        if wire.avail().len() > 16 * 1024 {
            return Err(DriverError::Protocol("upgrade answer too long".into()));
        }
        wire.fill_to(wire.avail().len() + 1)?;
    }
}

/// One ArqonBus connection over WebSocket.
pub(crate) struct Conn {
    pub(super) wire: Wire,
    /// The shard the server put this connection on.
    pub(crate) shard: u32,
}

impl Conn {
    /// Upgrades, authenticates, subscribes as `role` says, and waits for
    /// the subscription to be in effect on every shard.
    pub(super) fn open(stream: Stream, t: &Target, role: &Role<'_>) -> Result<Self, DriverError> {
        let mut c = Self {
            wire: Wire::new(stream, t.control_limit())?,
            shard: 0,
        };
        upgrade(&mut c.wire, &t.addr, Some("arqonbus.v1"))?;
        c.send(&hello(t, v1::ClientKind::Human))?;
        c.shard = welcomed(c.next_frame()?)?;
        if let Some(subscribe) = subscription(role) {
            c.send(&subscribe)?;
            c.barrier()?;
        }
        Ok(c)
    }

    /// Encodes and writes one control frame.
    fn send(&mut self, kind: &Kind) -> Result<(), DriverError> {
        let mut native = Vec::new();
        codec::encode(kind, &mut native).map_err(|e| DriverError::Protocol(e.to_string()))?;
        let mut out = Vec::with_capacity(native.len() + 10);
        wrap(&native, &mut out);
        self.wire.write_all(&out)
    }

    /// The next whole WebSocket frame: `(opcode, body)`, consumed.
    fn next_ws(&mut self) -> Result<(u8, Bytes), DriverError> {
        loop {
            if let Some((header, len, op)) = server_header(self.wire.avail())
                && self.wire.avail().len() >= header + len
            {
                let body = Bytes::copy_from_slice(&self.wire.avail()[header..header + len]);
                self.wire.consume(header + len);
                return Ok((op, body));
            }
            self.wire.fill_to(self.wire.avail().len() + 1)?;
        }
    }

    /// The next native frame, fully decoded (control frames only).
    fn next_frame(&mut self) -> Result<Kind, DriverError> {
        loop {
            let (op, body) = self.next_ws()?;
            match op {
                OP_BINARY => {
                    return codec::decode_body(body)
                        .map_err(|e| DriverError::Protocol(e.to_string()));
                }
                OP_CLOSE => return Err(DriverError::Closed("WebSocket close".into())),
                _ => {}
            }
        }
    }

    /// Ping, then read until the Pong (the protocol's barrier).
    pub(super) fn barrier(&mut self) -> Result<(), DriverError> {
        self.send(&Kind::Ping(v1::Ping {}))?;
        loop {
            match self.next_frame()? {
                Kind::Pong(_) => return Ok(()),
                Kind::Error(e) => return Err(closed(&e)),
                _ => {}
            }
        }
    }

    /// Walks every whole WebSocket frame buffered.
    pub(super) fn drain(&mut self, mut on: impl FnMut(Ev)) -> Result<(), DriverError> {
        let mut used = 0;
        let avail = self.wire.avail();
        while let Some((header, len, op)) = server_header(&avail[used..]) {
            let Some(body) = avail.get(used + header..used + header + len) else {
                break;
            };
            used += header + len;
            match (op, body.first().copied()) {
                (OP_BINARY, Some(TAG_MESSAGE)) => on(Ev::Msg {
                    tail: tail_of(body),
                }),
                (OP_BINARY, Some(TAG_ERROR)) => {
                    let err = codec::decode_body(Bytes::copy_from_slice(body));
                    self.wire.consume(used);
                    return Err(match err {
                        Ok(Kind::Error(e)) => closed(&e),
                        _ => DriverError::Protocol("undecodable error frame".into()),
                    });
                }
                (OP_CLOSE, _) => {
                    self.wire.consume(used);
                    return Err(DriverError::Closed("WebSocket close".into()));
                }
                (OP_PING, _) => on(Ev::Other),
                _ => on(Ev::Other),
            }
        }
        self.wire.consume(used);
        Ok(())
    }

    /// Answers every buffered request: publishes its payload to its reply.
    pub(super) fn echo(&mut self, out: &mut Vec<u8>) -> Result<u64, DriverError> {
        out.clear();
        let mut answered = 0;
        let mut native = Vec::new();
        while let Some((header, len, op)) = server_header(self.wire.avail()) {
            if self.wire.avail().len() < header + len {
                break;
            }
            let body = Bytes::copy_from_slice(&self.wire.avail()[header..header + len]);
            self.wire.consume(header + len);
            if op != OP_BINARY {
                continue;
            }
            match codec::decode_body(body) {
                Ok(Kind::Message(m)) if !m.reply.is_empty() => {
                    native.clear();
                    codec::write_publish_prefix(&m.reply, b"", &[], m.payload.len(), &mut native)
                        .map_err(|e| DriverError::Protocol(e.to_string()))?;
                    native.extend_from_slice(&m.payload);
                    wrap(&native, out);
                    answered += 1;
                }
                Ok(Kind::Error(e)) => return Err(closed(&e)),
                Ok(_) => {}
                Err(e) => return Err(DriverError::Protocol(e.to_string())),
            }
        }
        if !out.is_empty() {
            self.wire.write_all(out)?;
        }
        Ok(answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_at_each_length_form() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let mut out = Vec::new();
            client_header(OP_BINARY, len, &mut out);
            let (header, got, op) = server_header(&out).unwrap();
            assert_eq!((header, got, op), (out.len(), len, OP_BINARY));
        }
    }

    #[test]
    fn sealed_and_framed_bodies_match_client_header() {
        for body in [0usize, 125, 126, 70_000] {
            let mut want = Vec::new();
            client_header(OP_BINARY, body, &mut want);
            want.resize(want.len() + body, 7);
            let mut buf = vec![0u8; MAX_CLIENT_HEADER + body];
            buf[MAX_CLIENT_HEADER..].fill(7);
            let at = seal(&mut buf, MAX_CLIENT_HEADER, body);
            assert_eq!(&buf[at..], want.as_slice());
            let inner = Frame {
                bytes: [&[1u8, 2][..], &vec![7u8; body]].concat(),
                stamp_end: 2 + body,
            };
            let f = framed(&inner, 2);
            assert_eq!(f.bytes, want);
            assert_eq!(f.stamp_end, want.len());
        }
    }
}
