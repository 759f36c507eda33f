//! The per-connection receive buffer.
//!
//! Bytes are read from the socket straight into a [`BytesMut`] and complete
//! frames are split off it as [`Bytes`]: payloads decoded from a frame share
//! this memory all the way to every subscriber's socket. Invariants: the
//! buffer's length is always its initialised size (so no `unsafe` is needed to
//! read into it), `filled <= buf.len()`, and `buf[..filled]` is received data
//! not yet taken as frames.

use bytes::{Bytes, BytesMut};

#[derive(Debug)]
pub(crate) struct ReadBuf {
    buf: BytesMut,
    filled: usize,
    chunk: usize,
}

impl ReadBuf {
    /// A buffer that reads up to `chunk` bytes at a time. Memory is only
    /// allocated on the first read, so idle connections cost nothing here.
    pub(crate) fn new(chunk: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            filled: 0,
            chunk,
        }
    }

    /// A buffer holding `bytes` already received (a connection handed over
    /// from another shard with frames it did not process).
    pub(crate) fn with_received(chunk: usize, bytes: &[u8]) -> Self {
        let mut rb = Self::new(chunk);
        if !bytes.is_empty() {
            rb.unfilled(bytes.len())[..bytes.len()].copy_from_slice(bytes);
            rb.advance(bytes.len());
        }
        rb
    }

    /// Received bytes not yet taken as frames.
    pub(crate) fn filled(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Room to read into, at least `need` bytes beyond what is filled (for a
    /// frame whose length is already known) and at least a quarter chunk.
    /// Moves the unconsumed tail to a fresh buffer when the current one is
    /// too small; taken frames keep the old one alive until they are sent.
    pub(crate) fn unfilled(&mut self, need: usize) -> &mut [u8] {
        let min_room = need.max(self.chunk / 4).max(1);
        if self.buf.len() - self.filled < min_room {
            let size = (self.filled + min_room).max(self.chunk);
            let mut fresh = BytesMut::zeroed(size);
            fresh[..self.filled].copy_from_slice(&self.buf[..self.filled]);
            self.buf = fresh;
        }
        &mut self.buf[self.filled..]
    }

    /// Records `n` bytes read into [`unfilled`](Self::unfilled).
    pub(crate) fn advance(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// Splits the first `n` filled bytes off as a frame.
    pub(crate) fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.filled);
        self.filled -= n;
        self.buf.split_to(n).freeze()
    }

    /// Drops the buffer's memory when nothing is pending (idle connections).
    pub(crate) fn shrink_if_idle(&mut self) {
        if self.filled == 0 && !self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_share_the_buffer_and_tails_move() {
        let mut rb = ReadBuf::new(16);
        let room = rb.unfilled(0);
        assert!(room.len() >= 16);
        room[..10].copy_from_slice(b"abcdefghij");
        rb.advance(10);
        let first = rb.take(4);
        assert_eq!(&first[..], b"abcd");
        assert_eq!(rb.filled(), b"efghij");
        // Ask for more room than is left: the tail moves, the frame stays valid.
        let room = rb.unfilled(100);
        assert!(room.len() >= 100);
        assert_eq!(rb.filled(), b"efghij");
        assert_eq!(&first[..], b"abcd");
        rb.take(6);
        rb.shrink_if_idle();
        assert!(rb.filled().is_empty());
    }
}
