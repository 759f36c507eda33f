//! The per-connection receive buffer.
//!
//! Bytes are read from the socket straight into a [`BytesMut`]. The whole
//! frames a read brought are split off it at once, as one [`Bytes`] (the
//! read batch, [`ReadBuf::next_frame`]), and handed out one at a time as
//! ranges of it: one reference count per read batch, not per frame, and the
//! cursor moves without touching the allocation's shared header (on a
//! cross-shard path another core releases the same header). Payloads decoded
//! from a frame share this memory all the way to every subscriber's socket,
//! and keep the whole allocation alive while any of them is queued. So
//! allocations are sized to what reads bring: a fresh buffer is
//! [`MIN_BUF`] at first, doubles (up to
//! the configured read size) while reads fill all of a full-size offer, and
//! halves when a read brings less than a quarter of it. A quiet
//! connection's Ping pins about a kilobyte, not the 64 KiB a busy publisher's
//! read uses; an idle connection holds no buffer at all, and its task no
//! room for one (the buffers are boxed, [`ReadBuf`] is 24 bytes).
//!
//! Allocations are reused, not re-taken: when a buffer runs out of room and
//! every frame split off it has been dropped (sent, or refused), it starts
//! over from its beginning; otherwise the buffer retired before it (the
//! `spare`) is taken back if its frames are gone. A busy publisher whose
//! subscribers keep up so alternates between two allocations, neither
//! allocated nor zeroed again; an allocation is zeroed once, when it is
//! created.
//!
//! Invariants: the buffer's length is always its initialised size (reads
//! need initialised memory: reused room is memory zeroed at creation or
//! written since), `filled <= buf.len()`, `buf[..filled]` is received data
//! not yet taken as frames, `batch[pos..]` is whole frames taken but not yet
//! handed out (they come before `buf[..filled]`), the spare holds no data,
//! and `MIN_BUF <= next <= max(MIN_BUF, chunk)`. Every allocation comes from
//! [`BytesMut::zeroed`], so its whole capacity is initialised.

use std::ops::Range;

use arqonbus_proto::codec::{self, DecodeError, LEN_PREFIX};
use bytes::{Bytes, BytesMut};

/// The first buffer of a connection, and the smallest a fresh one gets.
pub(crate) const MIN_BUF: usize = 1024;

/// Least room worth a read before a fresh buffer is taken.
const MIN_ROOM: usize = 256;

#[derive(Debug)]
pub(crate) struct ReadBuf {
    /// The buffers, boxed and only while the connection is reading: an
    /// idle connection holds none (every connection's task holds this
    /// struct, and its size decides the task's allocator size class).
    mem: Option<Box<Mem>>,
    /// Where the next frame of the batch starts.
    pos: u32,
    filled: u32,
    /// The largest fresh buffer (the configured read size). Offsets and
    /// sizes are `u32` (a buffer holds at most a few frames, each within
    /// `Limits::max_frame`), so every connection's task, which holds this
    /// struct, stays smaller.
    chunk: u32,
    /// The size of the next fresh buffer.
    next: u32,
}

/// A reading connection's buffers.
#[derive(Debug, Default)]
struct Mem {
    buf: BytesMut,
    /// The whole frames of the current read batch, split off `buf` at once.
    batch: Bytes,
    /// The buffer retired last, empty; reused once nothing references it.
    spare: Option<BytesMut>,
}

impl ReadBuf {
    /// A buffer that reads up to `chunk` bytes at a time. Memory is only
    /// allocated on the first read, so idle connections cost nothing here.
    pub(crate) fn new(chunk: usize) -> Self {
        Self {
            mem: None,
            pos: 0,
            filled: 0,
            chunk: u32::try_from(chunk).unwrap_or(u32::MAX),
            next: MIN_BUF as u32,
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
        match self.mem.as_deref() {
            Some(m) => &m.buf[..self.filled as usize],
            None => &[],
        }
    }

    /// The whole frames of the batch not yet handed out.
    fn batch_rest(&self) -> &[u8] {
        (self.mem.as_deref())
            .and_then(|m| m.batch.get(self.pos as usize..))
            .unwrap_or_default()
    }

    /// Whether anything received is not yet handed out as a frame (whole
    /// frames of the batch, or bytes in the buffer).
    pub(crate) fn has_unprocessed(&self) -> bool {
        !self.batch_rest().is_empty() || self.filled > 0
    }

    /// Everything received and not yet handed out, in order (a connection
    /// handed to another shard takes it along).
    pub(crate) fn unprocessed(&self) -> Vec<u8> {
        let rest = self.batch_rest();
        let mut out = Vec::with_capacity(rest.len() + self.filled().len());
        out.extend_from_slice(rest);
        out.extend_from_slice(self.filled());
        out
    }

    /// The next whole frame: the read batch and the range of the frame's
    /// body in it (the prefix skipped), to decode with
    /// [`codec::decode_in`]. `Ok(None)` when no whole frame is left.
    ///
    /// When the batch is used up, every whole frame in the buffer within
    /// `max_frame` becomes the next batch, one split. Each frame is checked
    /// against the `max_frame` given when it is handed out (the limit grows
    /// once a connection is authenticated), so the verdicts are those of
    /// [`codec::frame_len`] on one frame at a time.
    #[inline]
    pub(crate) fn next_frame(
        &mut self,
        max_frame: u32,
    ) -> Result<Option<(&Bytes, Range<usize>)>, DecodeError> {
        let Some(m) = self.mem.as_deref_mut() else {
            return Ok(None);
        };
        if self.pos as usize >= m.batch.len() {
            m.batch = Bytes::new();
            self.pos = 0;
            let filled = &m.buf[..self.filled as usize];
            let mut whole = 0;
            loop {
                match codec::frame_len(&filled[whole..], max_frame) {
                    Ok(Some(total)) => whole += total,
                    Ok(None) if whole == 0 => return Ok(None),
                    Err(e) if whole == 0 => return Err(e),
                    Ok(None) | Err(_) => break,
                }
            }
            self.filled -= whole as u32;
            m.batch = m.buf.split_to(whole).freeze();
        }
        // Whole by construction; a smaller limit than when it was split
        // off still refuses it.
        let start = self.pos as usize;
        let Some(total) = codec::frame_len(&m.batch[start..], max_frame)? else {
            return Err(DecodeError::Malformed);
        };
        self.pos = (start + total) as u32;
        Ok(Some((&m.batch, start + LEN_PREFIX..start + total)))
    }

    /// Drops the batch once every frame of it is handed out, so its
    /// allocation can be reused when nothing else holds it.
    fn release_batch(&mut self) {
        if let Some(m) = self.mem.as_deref_mut()
            && self.pos as usize >= m.batch.len()
        {
            m.batch = Bytes::new();
            self.pos = 0;
        }
    }

    /// Room to read into, at least `need` bytes beyond what is filled (for a
    /// frame whose length is already known) and at least [`MIN_ROOM`].
    /// When the current buffer is too small it starts over from its
    /// beginning if no frame taken from it is still alive; otherwise the
    /// unconsumed tail moves to the spare (if its frames are gone and its
    /// size fits) or to a fresh buffer of the adaptive size (or what `need`
    /// asks), and the current one becomes the spare.
    pub(crate) fn unfilled(&mut self, need: usize) -> &mut [u8] {
        self.release_batch();
        let m = self.mem.get_or_insert_with(Box::default);
        let min_room = need.max(MIN_ROOM);
        let filled = self.filled as usize;
        if m.buf.len() - filled < min_room {
            let size = (filled + min_room).max(self.next as usize);
            m.buf.truncate(filled);
            if !reuse(&mut m.buf, size) {
                let mut fresh = (m.spare.take())
                    .and_then(|mut spare| reuse(&mut spare, size).then_some(spare))
                    .unwrap_or_else(|| BytesMut::zeroed(size));
                fresh[..filled].copy_from_slice(&m.buf[..filled]);
                let mut old = std::mem::replace(&mut m.buf, fresh);
                old.clear();
                m.spare = Some(old);
            }
        }
        &mut m.buf[filled..]
    }

    /// Records `n` bytes read into [`unfilled`](Self::unfilled) (called
    /// right after it: the room it offered is still what is unfilled), and
    /// sizes the next fresh buffer by how much of that room the read used.
    pub(crate) fn advance(&mut self, n: usize) {
        let len = self.mem.as_deref().map_or(0, |m| m.buf.len());
        let filled = self.filled as usize;
        let offered = len - filled;
        self.filled = (filled + n).min(len) as u32;
        let next = self.next as usize;
        if n >= offered && offered * 2 >= next {
            // A full-size offer filled: more may be waiting, read in bigger
            // steps. (Filling the last few bytes of a buffer says nothing.)
            self.next = self
                .next
                .saturating_mul(2)
                .min(self.chunk.max(MIN_BUF as u32));
        } else if n * 4 < offered && offered * 2 >= next {
            // A full-size offer mostly unused: the peer sends little.
            self.next = (self.next / 2).max(MIN_BUF as u32);
        }
    }

    /// The size the next fresh buffer will get.
    #[cfg(test)]
    pub(crate) fn next_size(&self) -> usize {
        self.next as usize
    }

    /// Splits the first `n` filled bytes off.
    #[cfg(test)]
    fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.filled as usize);
        self.filled -= n as u32;
        (self.mem.as_deref_mut()).map_or_else(Bytes::new, |m| m.buf.split_to(n).freeze())
    }

    /// Drops the first `n` filled bytes, copied out by the caller (the
    /// WebSocket edge, whose codec keeps its own copy).
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.filled as usize);
        self.filled -= n as u32;
        if let Some(m) = self.mem.as_deref_mut() {
            bytes::Buf::advance(&mut m.buf, n);
        }
    }

    /// Gives the buffers back when nothing is pending (idle connections),
    /// and the spare in any case.
    pub(crate) fn shrink_if_idle(&mut self) {
        self.release_batch();
        if !self.has_unprocessed() {
            self.mem = None;
        } else if let Some(m) = self.mem.as_deref_mut() {
            m.spare = None;
        }
    }

    /// Whether it holds buffers.
    #[cfg(test)]
    fn holds_memory(&self) -> bool {
        self.mem.is_some()
    }
}

/// Makes `b` (keeping its `b.len()` bytes) span at least `size` bytes of its
/// own allocation again, without allocating, if nothing else references
/// that allocation and it is at most four times `size`: a buffer the
/// adaptive size has halved twice is given back, not kept (once only would
/// make a busy connection whose reads hover around one size reallocate
/// every other read). Returns whether it did.
fn reuse(b: &mut BytesMut, size: usize) -> bool {
    if !b.try_reclaim(size.saturating_sub(b.len())) {
        return false;
    }
    let cap = b.capacity();
    if cap > size.saturating_mul(4) {
        return false;
    }
    // SAFETY: `cap <= capacity()`, and every byte of the allocation is
    // initialised: each `ReadBuf` allocation comes from `BytesMut::zeroed`
    // (a `Vec` whose length is its capacity), and since then its bytes have
    // only been overwritten with received data or moved within it by
    // `try_reclaim`; nothing de-initialises memory.
    unsafe { b.set_len(cap) };
    true
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

    /// Fills `rb` with `n` bytes of `byte` (one read) and returns them as
    /// one frame.
    fn read_frame(rb: &mut ReadBuf, n: usize, byte: u8) -> Bytes {
        let room = rb.unfilled(n);
        room[..n].fill(byte);
        rb.advance(n);
        rb.take(n)
    }

    #[test]
    fn allocations_are_reused_once_their_frames_are_gone() {
        let mut rb = ReadBuf::new(MIN_BUF);
        let start = rb.unfilled(0).as_ptr();
        // Frames taken and dropped: the buffer starts over in place.
        drop(read_frame(&mut rb, MIN_BUF, 1));
        assert_eq!(rb.unfilled(0).as_ptr(), start);
        // A frame still queued somewhere keeps its bytes: the next read
        // goes to a second allocation, and the first becomes the spare.
        let queued = read_frame(&mut rb, MIN_BUF, 2);
        let second = rb.unfilled(0).as_ptr();
        assert_ne!(second, start);
        let queued2 = read_frame(&mut rb, MIN_BUF, 3);
        // Both allocations are referenced: a third one.
        let third = rb.unfilled(0).as_ptr();
        assert!(third != start && third != second);
        assert!(queued.iter().all(|&b| b == 2) && queued.len() == MIN_BUF);
        assert!(queued2.iter().all(|&b| b == 3) && queued2.len() == MIN_BUF);
        // The spare (the second allocation) comes back once its frame is
        // gone, while the current (third) one is still referenced.
        drop(queued2);
        let _held = read_frame(&mut rb, MIN_BUF, 4);
        assert_eq!(rb.unfilled(0).as_ptr(), second);
        // A partial frame moves along with the buffer it is read into.
        rb.unfilled(0)[..3].copy_from_slice(b"abc");
        rb.advance(3);
        let room = rb.unfilled(2 * MIN_BUF).len();
        assert!(room >= 2 * MIN_BUF);
        assert_eq!(rb.filled(), b"abc");
        rb.take(3);
        rb.shrink_if_idle();
        assert!(!rb.holds_memory());
    }

    #[test]
    fn an_idle_shrink_drops_the_spare_but_keeps_unprocessed_bytes() {
        let mut rb = ReadBuf::new(MIN_BUF);
        // A frame still queued keeps the first allocation: the next read
        // goes to a second one, and the first becomes the spare.
        let queued = read_frame(&mut rb, MIN_BUF, 7);
        let first = queued.as_ptr();
        let second = rb.unfilled(0).as_ptr();
        assert_ne!(second, first);
        rb.unfilled(0)[..3].copy_from_slice(b"par");
        rb.advance(3);
        // The spare is the first allocation: its bytes start where the
        // queued frame ends (the frame was split off its front).
        let spare = rb.mem.as_deref().and_then(|m| m.spare.as_ref());
        assert!(spare.is_some_and(|s| s.as_ptr() == first.wrapping_add(MIN_BUF)));
        // Part of a frame is waiting for the rest: the buffer holding it
        // stays, the spare goes.
        rb.shrink_if_idle();
        assert!(rb.holds_memory());
        assert!(rb.mem.as_deref().is_some_and(|m| m.spare.is_none()));
        assert_eq!(rb.filled(), b"par");
        // The rest arrives in the same buffer, and the frame is whole.
        let room = rb.unfilled(0);
        assert_eq!(room.as_ptr(), second.wrapping_add(3));
        room[..3].copy_from_slice(b"tly");
        rb.advance(3);
        assert_eq!(&rb.take(6)[..], b"partly");
        // Nothing unprocessed: everything is given back, though a frame
        // taken from it is still queued (it holds its own reference).
        rb.shrink_if_idle();
        assert!(!rb.holds_memory());
        assert!(queued.iter().all(|&b| b == 7) && queued.len() == MIN_BUF);
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

    /// A frame on the wire: the prefix, then `body`.
    fn wire(body: &[u8]) -> Vec<u8> {
        let mut v = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// Lands `bytes` in `rb` as one read.
    fn land(rb: &mut ReadBuf, bytes: &[u8]) {
        let room = rb.unfilled(bytes.len());
        room[..bytes.len()].copy_from_slice(bytes);
        rb.advance(bytes.len());
    }

    /// The next frame's body as bytes, and the batch's start address.
    fn next(rb: &mut ReadBuf, max: u32) -> Result<Option<(Vec<u8>, usize)>, DecodeError> {
        Ok(rb
            .next_frame(max)?
            .map(|(batch, body)| (batch[body].to_vec(), batch.as_ptr() as usize)))
    }

    #[test]
    fn whole_frames_come_out_of_one_batch_in_order() {
        let mut rb = ReadBuf::new(64 * 1024);
        let mut bytes = [wire(b"one"), wire(b""), wire(b"three")].concat();
        let fourth = wire(b"fourth");
        bytes.extend_from_slice(&fourth[..5]);
        land(&mut rb, &bytes);
        let (one, at) = next(&mut rb, 100).unwrap().unwrap();
        assert_eq!(one, b"one");
        // Every frame of the read is a range of the same batch.
        assert_eq!(next(&mut rb, 100).unwrap(), Some((vec![], at)));
        assert_eq!(next(&mut rb, 100).unwrap(), Some((b"three".to_vec(), at)));
        // The partial fourth frame waits for the rest of it.
        assert_eq!(next(&mut rb, 100).unwrap(), None);
        assert!(rb.has_unprocessed());
        assert_eq!(rb.unprocessed(), &fourth[..5]);
        land(&mut rb, &fourth[5..]);
        assert_eq!(next(&mut rb, 100).unwrap().unwrap().0, b"fourth");
        assert_eq!(next(&mut rb, 100).unwrap(), None);
        assert!(!rb.has_unprocessed());
    }

    #[test]
    fn frames_not_handed_out_come_before_later_bytes() {
        let mut rb = ReadBuf::new(64 * 1024);
        land(&mut rb, &[wire(b"a"), wire(b"b")].concat());
        assert_eq!(next(&mut rb, 100).unwrap().unwrap().0, b"a");
        land(&mut rb, &wire(b"c"));
        assert_eq!(rb.unprocessed(), [wire(b"b"), wire(b"c")].concat());
        assert_eq!(next(&mut rb, 100).unwrap().unwrap().0, b"b");
        assert_eq!(next(&mut rb, 100).unwrap().unwrap().0, b"c");
        assert!(!rb.has_unprocessed());
    }

    #[test]
    fn each_frame_meets_the_limit_when_it_is_handed_out() {
        // A frame over the limit ends the batch and is refused when it
        // comes up, after the frames before it.
        let mut rb = ReadBuf::new(64 * 1024);
        land(&mut rb, &[wire(b"ok"), wire(&[7; 20])].concat());
        assert_eq!(next(&mut rb, 10).unwrap().unwrap().0, b"ok");
        assert_eq!(
            next(&mut rb, 10),
            Err(DecodeError::TooLarge { len: 20, max: 10 })
        );
        // A limit that grows (authentication) lets it through.
        assert_eq!(next(&mut rb, 100).unwrap().unwrap().0, vec![7; 20]);
        // One that shrinks refuses a frame already in the batch.
        let mut rb = ReadBuf::new(64 * 1024);
        land(&mut rb, &[wire(b"x"), wire(&[8; 20])].concat());
        assert_eq!(next(&mut rb, 100).unwrap().unwrap().0, b"x");
        assert_eq!(
            next(&mut rb, 10),
            Err(DecodeError::TooLarge { len: 20, max: 10 })
        );
    }

    #[test]
    fn a_used_up_batch_lets_its_allocation_be_reused() {
        let mut rb = ReadBuf::new(MIN_BUF);
        let start = rb.unfilled(0).as_ptr();
        land(&mut rb, &[wire(&[1; 500]), wire(&[2; 500])].concat());
        while next(&mut rb, 1000).unwrap().is_some() {}
        // The next read needs more room than is left: with every frame
        // handed out (and none kept), the buffer starts over in place.
        assert_eq!(rb.unfilled(600).as_ptr(), start);
    }
}
