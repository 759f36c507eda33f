//! The NATS driver over nats-server's WebSocket listener (`--driver
//! nats-ws`), so ArqonBus's WebSocket edge (`ws`) can be compared with
//! nats-server's.
//!
//! A NATS WebSocket client sends the NATS text protocol inside binary
//! WebSocket messages whose boundaries need not match protocol lines, and
//! the server may split or join its lines across frames. nats.ws writes what
//! it has buffered as one message per flush, so publishers here do the
//! same with their flush, the 64 KiB batch: the batch's pre-encoded `PUB`s
//! are the body of one WebSocket frame (masked with a zero key, as in `ws`;
//! the header is written into room kept in front of the batch), one `write`
//! per batch. `CONNECT`, `SUB`, `PING`, `PONG` and a responder's answers go
//! out as one frame per write.
//!
//! This module owns how received frames are unwrapped ([`Unwrap`]): in the
//! receive buffer, each data frame's header is cut out by moving the bytes
//! in front of it (at most a partial message, as the parser walks each
//! frame's bytes before the next header is cut), so payloads join into the
//! byte stream the NATS parser walks exactly as on TCP; a message split
//! across frames is parsed once, whole, with no allocation per message.
//! WebSocket pings are answered, a close ends the connection. The upgrade
//! and frame headers are `ws.rs`'s; the protocol (handshake, barrier,
//! parsing, echo) is `nats.rs`'s, which holds an [`Unwrap`] when carried
//! over WebSocket.

use super::{DriverError, Frame, Wire, nats, ws};

/// A `PUB` (or `HPUB`) as one WebSocket frame of its own (request/reply
/// sends each request as it falls due).
pub(super) fn publish_frame(subject: &str, reply: &str, payload: &[u8], headers: bool) -> Frame {
    ws::framed(&nats::publish_frame(subject, reply, payload, headers), 0)
}

/// How far the server's frames in a [`Wire`] are unwrapped: the first
/// [`plain`](Self::plain) bytes of `avail()` are protocol bytes, the rest
/// is still framed.
#[derive(Debug, Default)]
pub(crate) struct Unwrap {
    /// Protocol bytes at the front of `avail()`, not consumed.
    plain: usize,
    /// Payload bytes of the current data frame not unwrapped yet (some may
    /// not have arrived).
    left: usize,
}

impl Unwrap {
    /// Protocol bytes at the front of the wire's `avail()`.
    pub(super) fn plain(&self) -> usize {
        self.plain
    }

    /// The parser consumed `n` of the protocol bytes.
    pub(super) fn consumed(&mut self, n: usize) {
        self.plain -= n;
    }

    /// Unwraps what the buffer holds of the current data frame, or else
    /// cuts out the next data frame's header (control frames before it are
    /// handled and cut out whole). True when protocol bytes were added.
    pub(super) fn next(&mut self, wire: &mut Wire) -> Result<bool, DriverError> {
        loop {
            let framed = wire.avail().len() - self.plain;
            if self.left > 0 {
                let take = self.left.min(framed);
                self.plain += take;
                self.left -= take;
                return Ok(take > 0);
            }
            let at = self.plain;
            let rest = &wire.avail()[at..];
            let Some((header, len, op)) = ws::server_header(rest) else {
                return Ok(false);
            };
            if rest[1] & 0x80 != 0 {
                return Err(DriverError::Protocol("masked frame from the server".into()));
            }
            if op & 0x8 == 0 {
                // Binary, text or continuation: its payload is stream.
                wire.cut(at, header);
                self.left = len;
                continue;
            }
            let Some(payload) = rest.get(header..header + len) else {
                return Ok(false);
            };
            match op {
                ws::OP_CLOSE => return Err(DriverError::Closed("WebSocket close".into())),
                ws::OP_PING => {
                    let mut pong = Vec::with_capacity(ws::MAX_CLIENT_HEADER + len);
                    ws::client_header(ws::OP_PONG, len, &mut pong);
                    pong.extend_from_slice(payload);
                    wire.cut(at, header + len);
                    wire.write_all(&pong)?;
                }
                _ => wire.cut(at, header + len),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;
    use crate::driver::{Ev, Proto, Stream, Target};

    /// A NATS connection over WebSocket on a loopback socket, and the
    /// socket's other end playing the server.
    fn pair() -> (nats::Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let wire = Wire::new(Stream::Plain(client), Duration::from_secs(5)).unwrap();
        (nats::Conn::with_ws(wire), server)
    }

    /// A server frame (unmasked, FIN).
    fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | op];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// The server writes `bytes`; the client reads until it has them.
    fn feed(c: &mut nats::Conn, server: &mut TcpStream, bytes: &[u8]) {
        server.write_all(bytes).unwrap();
        let want = c.wire.avail().len() + bytes.len();
        c.wire.fill_to(want).unwrap();
    }

    /// Tails of the messages one drain hands out.
    fn drained(c: &mut nats::Conn) -> Vec<u64> {
        let mut tails = Vec::new();
        c.drain(|ev| {
            if let Ev::Msg { tail } = ev {
                tails.push(tail);
            }
        })
        .unwrap();
        tails
    }

    /// One client frame read by the server: `(opcode, body)`, checking the
    /// zero mask key.
    fn read_client_frame(server: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        server.read_exact(&mut head).unwrap();
        assert_eq!(head[1] & 0x80, 0x80, "client frames are masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                server.read_exact(&mut b).unwrap();
                usize::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                server.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => usize::from(n),
        };
        let mut key = [0u8; 4];
        server.read_exact(&mut key).unwrap();
        assert_eq!(key, [0; 4]);
        let mut body = vec![0u8; len];
        server.read_exact(&mut body).unwrap();
        (head[0] & 0x0f, body)
    }

    #[test]
    fn a_message_split_across_frames_is_parsed_once() {
        let (mut c, mut server) = pair();
        let stamp = 0x0102_0304_0506_0708u64.to_le_bytes();
        let mut msg = b"MSG a.b 1 10\r\nxy".to_vec();
        msg.extend_from_slice(&stamp);
        msg.extend_from_slice(b"\r\nMSG a.b 1 3\r\nabc\r\n");
        let (one, two) = msg.split_at(18);
        feed(&mut c, &mut server, &server_frame(ws::OP_BINARY, one));
        assert!(drained(&mut c).is_empty());
        feed(&mut c, &mut server, &server_frame(ws::OP_BINARY, two));
        assert_eq!(drained(&mut c), [0x0102_0304_0506_0708, 0]);
        assert!(drained(&mut c).is_empty());
        assert!(c.wire.avail().is_empty());
    }

    #[test]
    fn headers_split_across_reads_and_control_frames_between() {
        let (mut c, mut server) = pair();
        // A 200-byte message (two-byte length form) whose frame header
        // arrives one byte at a time, a WebSocket ping, then a frame with
        // the rest of the message, a server PING and two messages.
        let body = [b'z'; 200];
        let mut first = b"MSG s 1 200\r\n".to_vec();
        first.extend_from_slice(&body[..150]);
        let mut second = body[150..].to_vec();
        second.extend_from_slice(b"\r\nPING\r\nMSG s 1 2\r\nok\r\nMSG s 1 0\r\n\r\n");
        let frame = server_frame(ws::OP_BINARY, &first);
        for b in &frame[..3] {
            feed(&mut c, &mut server, &[*b]);
            assert!(drained(&mut c).is_empty());
        }
        feed(&mut c, &mut server, &frame[3..]);
        assert!(drained(&mut c).is_empty());
        feed(&mut c, &mut server, &server_frame(ws::OP_PING, b"hi"));
        feed(&mut c, &mut server, &server_frame(ws::OP_BINARY, &second));
        assert_eq!(drained(&mut c).len(), 3);
        assert_eq!(
            read_client_frame(&mut server),
            (ws::OP_PONG, b"hi".to_vec())
        );
        assert_eq!(
            read_client_frame(&mut server),
            (ws::OP_BINARY, b"PONG\r\n".to_vec())
        );
        feed(&mut c, &mut server, &server_frame(ws::OP_CLOSE, &[3, 232]));
        assert!(c.drain(|_| {}).is_err());
    }

    #[test]
    fn echo_answers_in_one_frame() {
        let (mut c, mut server) = pair();
        feed(
            &mut c,
            &mut server,
            &server_frame(ws::OP_BINARY, b"MSG svc 1 in.1 3\r\nab"),
        );
        feed(
            &mut c,
            &mut server,
            &server_frame(ws::OP_BINARY, b"c\r\nMSG svc 1 in.1 1\r\nd\r\n"),
        );
        let mut out = Vec::new();
        assert_eq!(c.echo(&mut out).unwrap(), 2);
        assert_eq!(
            read_client_frame(&mut server),
            (
                ws::OP_BINARY,
                b"PUB in.1 3\r\nabc\r\nPUB in.1 1\r\nd\r\n".to_vec()
            )
        );
    }

    #[test]
    fn a_batch_is_one_frame_of_pubs() {
        let t = Target::new(Proto::NatsWs, "127.0.0.1:9", None, String::new()).unwrap();
        let mut batch = t.publish_batch("a.b", 128, false).unwrap();
        let one = nats::publish_frame("a.b", "", &[0; 128], false);
        assert_eq!(batch.frame_len, one.bytes.len());
        batch.stamp(0x1122_3344_5566_7788);
        for n in [batch.per, 3, 1] {
            let per = batch.per;
            let frame_len = batch.frame_len;
            let bytes = batch.frames(n).to_vec();
            let (header, len, op) = ws::server_header(&bytes).unwrap();
            assert_eq!(
                (op, len, bytes.len()),
                (ws::OP_BINARY, n * frame_len, header + len)
            );
            assert_eq!(bytes[1] & 0x80, 0x80, "masked");
            assert_eq!(&bytes[header - 4..header], &[0; 4], "zero key");
            let body = &bytes[header..];
            let mut stamped = one.bytes.clone();
            stamped[one.stamp_end - 8..one.stamp_end]
                .copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
            let pubs: Vec<&[u8]> = body.chunks(frame_len).collect();
            assert_eq!(pubs.len(), n);
            assert_eq!(
                pubs[0],
                stamped.as_slice(),
                "the first PUB carries the stamp"
            );
            assert!(pubs[1..].iter().all(|p| *p == one.bytes.as_slice()));
            assert!(per >= n);
        }
        let f = t.publish_frame("a.b", "r", &[1; 4], false).unwrap();
        let (header, len, _) = ws::server_header(&f.bytes).unwrap();
        assert_eq!(
            &f.bytes[header..header + len],
            b"PUB a.b r 4\r\n\x01\x01\x01\x01\r\n"
        );
        assert_eq!(f.stamp_end, f.bytes.len() - 2);
    }
}
