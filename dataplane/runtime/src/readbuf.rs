//! The per-connection receive buffer.
//!
//! Bytes are read from the socket straight into a [`BytesMut`] and complete
//! frames are split off it as [`Bytes`]: payloads decoded from a frame share
//! this memory all the way to every subscriber's socket, and keep the whole
//! allocation alive while any of them is queued. So allocations are sized to
//! what reads bring: a fresh buffer is [`MIN_BUF`] at first, doubles (up to
//! the configured read size) while reads fill all the room they are
//! offered, and halves when a read brings less than a quarter of it. A quiet
//! connection's Ping pins about a kilobyte, not the 64 KiB a busy publisher's
//! read uses; an idle connection holds no buffer at all.
//!
//! Invariants: the buffer's length is always its initialised size (so no
//! `unsafe` is needed to read into it), `filled <= buf.len()`,
//! `buf[..filled]` is received data not yet taken as frames, and
//! `MIN_BUF <= next <= max(MIN_BUF, chunk)`.

use bytes::{Bytes, BytesMut};

/// The first buffer of a connection, and the smallest a fresh one gets.
pub(crate) const MIN_BUF: usize = 1024;

/// Least room worth a read before a fresh buffer is taken.
const MIN_ROOM: usize = 256;

#[derive(Debug)]
pub(crate) struct ReadBuf {
    buf: BytesMut,
    filled: usize,
    /// The largest fresh buffer (the configured read size).
    chunk: usize,
    /// The size of the next fresh buffer.
    next: usize,
    /// Room offered to the last read.
    offered: usize,
}

impl ReadBuf {
    /// A buffer that reads up to `chunk` bytes at a time. Memory is only
    /// allocated on the first read, so idle connections cost nothing here.
    pub(crate) fn new(chunk: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            filled: 0,
            chunk,
            next: MIN_BUF,
            offered: 0,
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
    /// frame whose length is already known) and at least [`MIN_ROOM`].
    /// Moves the unconsumed tail to a fresh buffer (of the adaptive size, or
    /// what `need` asks) when the current one is too small; taken frames
    /// keep the old one alive until they are sent.
    pub(crate) fn unfilled(&mut self, need: usize) -> &mut [u8] {
        let min_room = need.max(MIN_ROOM);
        if self.buf.len() - self.filled < min_room {
            let size = (self.filled + min_room).max(self.next);
            let mut fresh = BytesMut::zeroed(size);
            fresh[..self.filled].copy_from_slice(&self.buf[..self.filled]);
            self.buf = fresh;
        }
        self.offered = self.buf.len() - self.filled;
        &mut self.buf[self.filled..]
    }

    /// Records `n` bytes read into [`unfilled`](Self::unfilled), and sizes
    /// the next fresh buffer by how much of the room the read used.
    pub(crate) fn advance(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
        if n >= self.offered {
            // More may be waiting: read in bigger steps.
            self.next = (self.next * 2).min(self.chunk.max(MIN_BUF));
        } else if n * 4 < self.offered && self.offered * 2 >= self.next {
            // A full-size offer mostly unused: the peer sends little.
            self.next = (self.next / 2).max(MIN_BUF);
        }
    }

    /// The size the next fresh buffer will get.
    #[cfg(test)]
    pub(crate) fn next_size(&self) -> usize {
        self.next
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

    #[test]
    fn buffers_grow_while_reads_fill_them_and_shrink_when_they_do_not() {
        let mut rb = ReadBuf::new(64 * 1024);
        // A quiet peer: a small first buffer.
        let room = rb.unfilled(0).len();
        assert_eq!(room, MIN_BUF);
        rb.advance(10);
        rb.take(10);
        assert_eq!(rb.next_size(), MIN_BUF);
        // A busy one: every read fills its room, the size doubles to the cap.
        for _ in 0..12 {
            let room = rb.unfilled(0).len();
            rb.advance(room);
            let n = rb.filled().len();
            rb.take(n);
        }
        assert_eq!(rb.next_size(), 64 * 1024);
        // Quiet again: full-size offers mostly unused halve it.
        for _ in 0..12 {
            let room = rb.unfilled(0).len();
            rb.advance(room.min(8));
            let n = rb.filled().len();
            rb.take(n);
        }
        assert_eq!(rb.next_size(), MIN_BUF);
        // A frame larger than the size still gets room for all of it.
        assert!(rb.unfilled(200_000).len() >= 200_000);
    }
}
