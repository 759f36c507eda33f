//! The raw relay driver: the client side of [`crate::relay`].
//!
//! A connection starts with one hello line naming the channel it publishes
//! into and the channel it listens to (`RELAY pub=a sub=b mode=fan\n`); the
//! relay answers `OK\n` once the subscription is registered. After that the
//! relay parses nothing: every byte a publisher writes reaches every
//! subscriber of its channel (`mode=fan`), or read chunks, cut at frame
//! boundaries, go round-robin to the members (`mode=queue`).
//!
//! Frames are the scenarios' own framing, as short as a frame can be: a
//! 4-byte big-endian length, then the payload. A fan-out subscriber's stream
//! is its publisher's stream, and a queue member's is a sequence of whole
//! frames of it, so subscribers walk frames like the other drivers.

use std::net::Shutdown;

use super::{DriverError, Ev, Frame, Role, Stream, Wire, tail_of};

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// A raw frame: length prefix and payload.
pub(super) fn frame(payload: &[u8]) -> Frame {
    let mut bytes = Vec::with_capacity(PREFIX + payload.len());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    let stamp_end = bytes.len();
    Frame { bytes, stamp_end }
}

/// One raw relay connection.
pub(crate) struct Conn {
    pub(super) wire: Wire,
}

impl Conn {
    /// Sends the hello line and waits for `OK`.
    pub(super) fn open(stream: Stream, role: &Role<'_>) -> Result<Self, DriverError> {
        let mut c = Self {
            wire: Wire::new(stream, super::CONTROL_TIMEOUT)?,
        };
        let hello = format!(
            "RELAY pub={} sub={} mode={}\n",
            role.publish.unwrap_or("-"),
            role.subscribe.unwrap_or("-"),
            if role.queue.is_some() { "queue" } else { "fan" }
        );
        c.wire.write_all(hello.as_bytes())?;
        c.wire.fill_to(3)?;
        if &c.wire.avail()[..3] != b"OK\n" {
            return Err(DriverError::Protocol(format!(
                "relay refused: {:?}",
                String::from_utf8_lossy(c.wire.avail())
            )));
        }
        c.wire.consume(3);
        Ok(c)
    }

    /// Walks every whole frame buffered.
    pub(super) fn drain(&mut self, mut on: impl FnMut(Ev)) {
        let avail = self.wire.avail();
        let mut used = 0;
        while let Some(p) = avail[used..].first_chunk::<PREFIX>() {
            let len = u32::from_be_bytes(*p) as usize;
            let Some(payload) = avail.get(used + PREFIX..used + PREFIX + len) else {
                break;
            };
            used += PREFIX + len;
            on(Ev::Msg {
                tail: tail_of(payload),
            });
        }
        self.wire.consume(used);
    }

    /// Echoes every whole request frame back (the relay carries it to the
    /// requester's channel), all in one write.
    pub(super) fn echo(&mut self, out: &mut Vec<u8>) -> Result<u64, DriverError> {
        out.clear();
        let mut answered = 0;
        let avail = self.wire.avail();
        let mut used = 0;
        while let Some(p) = avail[used..].first_chunk::<PREFIX>() {
            let len = u32::from_be_bytes(*p) as usize;
            let Some(frame) = avail.get(used..used + PREFIX + len) else {
                break;
            };
            out.extend_from_slice(frame);
            used += PREFIX + len;
            answered += 1;
        }
        self.wire.consume(used);
        if !out.is_empty() {
            self.wire.write_all(out)?;
        }
        Ok(answered)
    }

    /// Shuts the write side down and waits until the relay, having read
    /// everything, closes the connection.
    pub(super) fn finish(&mut self) -> Result<(), DriverError> {
        let tcp = match &self.wire.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        };
        tcp.shutdown(Shutdown::Write)?;
        let deadline = std::time::Instant::now() + super::CONTROL_TIMEOUT;
        loop {
            match self.wire.fill() {
                Err(DriverError::Closed(_)) => return Ok(()),
                Err(e) => return Err(e),
                Ok(_) if std::time::Instant::now() > deadline => {
                    return Err(DriverError::Protocol("relay did not close".into()));
                }
                Ok(_) => {
                    let n = self.wire.avail().len();
                    self.wire.consume(n);
                }
            }
        }
    }
}
