//! The per-connection outbound queue.
//!
//! Frames are queued whole, one segment per frame: the frame's encoded
//! bytes (a control frame, or a `Message`'s prefix) are appended to one
//! contiguous `inline` buffer, and a `Message`'s payload is a range of the
//! shared [`Bytes`] it arrived in. A flush turns the queue into one vectored
//! write of up to [`MAX_IOVECS`] slices, so many frames leave in one syscall
//! and payloads are never copied. A segment is 16 bytes and holds no
//! reference count, so queuing a burst of small messages for many
//! subscribers writes little besides the prefixes.
//!
//! A queue holds each buffer its payloads lie in once per run of payloads
//! from it, not once per payload: the buffers are kept in `holds`, in
//! order, and a segment whose payload lies in a buffer other than the
//! previous segment's says so (`new_hold`); the payloads after it are
//! offsets into that buffer. So a read batch of many small messages
//! delivered to a subscriber costs one reference count on that batch's
//! shared header, not one per message (the header another core may be
//! counting on too). The buffer of the last `new_hold` segment written past
//! (the passed buffer, first in `holds`) stays until another is written
//! past or everything is written: at most one buffer beyond what the
//! queued payloads pin.
//!
//! Accounting: limits are checked against what the queue holds, not its
//! wire bytes, so a client that makes the server queue millions of 6-byte
//! Pongs pays for what they really take.
//! - [`Outbound::held`] is the memory: the capacity of the inline buffer,
//!   the segment ring and the hold ring, plus the payload bytes queued. A
//!   payload shares the receive buffer it arrived in, which is sized to
//!   what reads bring (`readbuf`), so what it pins beyond its length stays
//!   within a small factor. Memory limits (`max_pending_bytes`) are checked
//!   against [`Outbound::held_after`] a push, growth of the buffers
//!   included, so the queue never holds more than the limit; the metric
//!   reports `held`.
//! - [`Outbound::items`] is the cost of the frames queued: each frame's
//!   bytes plus [`SEG_COST`] of bookkeeping, and [`HOLD_COST`] more for a
//!   frame that holds a buffer. It goes down as soon as frames are written
//!   or dropped, so the drop-oldest policy and the end of a publisher stall
//!   use it (capacity is only given back when the queue empties).
//!
//! Invariants:
//! - every segment is one whole frame, at least one byte long;
//! - `pending` is the exact number of queued, unwritten bytes;
//! - `items` is the sum over the segments of their length plus
//!   [`SEG_COST`], plus [`HOLD_COST`] per buffer in `holds`
//!   (a partly written segment counts whole until it goes);
//! - the inline bytes of queued segments are `inline[inline_start..]`, in
//!   segment order;
//! - `holds` is the passed buffer (the last `new_hold` segment's written
//!   past) when `has_passed`, then one buffer per `new_hold` segment, in
//!   order; a segment's payload lies in the buffer of the last `new_hold`
//!   segment up to it, or, with none, in the passed buffer;
//! - `tail_at` and `tail_len` are the address and length of the buffer a
//!   payload pushed now would read from (the last in `holds`), `tail_len` 0
//!   when there is none;
//! - [`Outbound::drop_queued`] and [`Outbound::drop_oldest`] only ever drop
//!   whole frames not yet started, so the stream stays decodable when a
//!   slow consumer's backlog is discarded, and they keep the buffer that
//!   frames left behind them read from.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use arqonbus_proto::codec::{self, MessageTemplate};
use arqonbus_proto::v1::frame::Kind;
use bytes::Bytes;
use futures_lite::AsyncWrite;
use smallvec::SmallVec;

/// Most slices handed to one vectored write: Linux's limit (`UIO_MAXIOV`).
/// A small message takes two (prefix, payload), so a burst of them leaves
/// 512 messages per syscall.
pub(crate) const MAX_IOVECS: usize = 1024;

/// Inline bytes already written are compacted away past this size.
const COMPACT_AT: usize = 64 * 1024;

/// Capacity an emptied queue keeps; more is given back.
const IDLE_CAPACITY: usize = 16 * 1024;

/// Segment slots an emptied queue keeps.
const IDLE_SEGS: usize = 16;

/// Hold slots an emptied queue keeps.
const IDLE_HOLDS: usize = 4;

/// What one queued frame costs beyond its bytes: its slot in the segment
/// ring.
pub(crate) const SEG_COST: usize = std::mem::size_of::<Seg>();

/// What holding a buffer costs beyond the payload bytes: its slot in the
/// hold ring.
pub(crate) const HOLD_COST: usize = std::mem::size_of::<Bytes>();

/// One queued frame: `inline` bytes of the inline buffer, then `len` bytes
/// at `start` of the buffer its payload lies in (none when `len` is 0).
#[derive(Debug, Clone, Copy)]
struct Seg {
    inline: u32,
    start: u32,
    len: u32,
    /// The payload lies in the next buffer of `holds`, which the segments
    /// after this one read from too.
    new_hold: bool,
}

impl Seg {
    #[inline]
    fn len(&self) -> usize {
        self.inline as usize + self.len as usize
    }

    /// What the segment adds to `items`.
    #[inline]
    fn cost(&self) -> usize {
        self.len() + SEG_COST + if self.new_hold { HOLD_COST } else { 0 }
    }
}

#[derive(Debug)]
pub(crate) struct Outbound {
    inline: Vec<u8>,
    inline_start: usize,
    segs: VecDeque<Seg>,
    /// The passed buffer (when `has_passed`), then the buffers `new_hold`
    /// segments read from, in segment order.
    holds: VecDeque<Bytes>,
    pending: usize,
    items: usize,
    /// Bytes of the first unwritten segment already written.
    front_written: u32,
    /// The length of the buffer payloads pushed now read from (0: none).
    tail_len: u32,
    /// That buffer's address (compared, never read through).
    tail_at: usize,
    /// `holds` starts with the buffer of the last `new_hold` segment
    /// written past, which the segments before the first `new_hold` one in
    /// `segs` read from.
    has_passed: bool,
}

impl Default for Outbound {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbound {
    pub(crate) fn new() -> Self {
        Self {
            inline: Vec::new(),
            inline_start: 0,
            segs: VecDeque::new(),
            holds: VecDeque::new(),
            pending: 0,
            items: 0,
            front_written: 0,
            tail_len: 0,
            tail_at: 0,
            has_passed: false,
        }
    }

    /// Queued bytes not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Memory the queue holds (see the module docs): what memory limits
    /// such as `max_pending_bytes` are checked against.
    pub(crate) fn held(&self) -> usize {
        let inline_queued = self.inline.len() - self.inline_start;
        let payloads = self.items
            - self.segs.len() * SEG_COST
            - self.queued_holds() * HOLD_COST
            - inline_queued;
        self.capacities() + payloads
    }

    /// The buffers in `holds` that queued segments bring (all but the
    /// passed one).
    fn queued_holds(&self) -> usize {
        self.holds.len() - usize::from(self.has_passed)
    }

    /// The capacity of the queue's three buffers, in bytes.
    fn capacities(&self) -> usize {
        self.inline.capacity() + self.segs.capacity() * SEG_COST + self.holds.capacity() * HOLD_COST
    }

    /// The cost of the frames queued: their bytes plus their bookkeeping
    /// (see the module docs).
    pub(crate) fn items(&self) -> usize {
        self.items
    }

    /// At most what queuing a `Message` of `frame_len` wire bytes adds to
    /// [`items`](Self::items): its bytes, its segment and a hold for its
    /// payload's buffer.
    pub(crate) fn message_cost(frame_len: usize) -> usize {
        frame_len + SEG_COST + HOLD_COST
    }

    /// [`held`](Self::held) after queuing one frame of `inline` encoded
    /// bytes and `payload` shared bytes, counting the growth of the buffers
    /// it would cause (a `Vec` or `VecDeque` that is full doubles): an upper
    /// bound. Checking a limit against this, not against `held`, makes it a
    /// bound on memory: no push goes over it.
    pub(crate) fn held_after(&self, inline: usize, payload: usize) -> usize {
        let grown = |len: usize, cap: usize, add: usize, min: usize| {
            if len + add > cap {
                (cap * 2).max(len + add).max(min)
            } else {
                cap
            }
        };
        let inline_cap = grown(self.inline.len(), self.inline.capacity(), inline, 8);
        let segs_cap = grown(self.segs.len(), self.segs.capacity(), 1, 4);
        let holds_cap = grown(
            self.holds.len(),
            self.holds.capacity(),
            usize::from(payload > 0),
            4,
        );
        self.held() - self.capacities()
            + inline_cap
            + segs_cap * SEG_COST
            + holds_cap * HOLD_COST
            + payload
    }

    /// Gives back all the queue's memory when nothing is queued: called
    /// when the connection parks, so an idle connection holds no buffer.
    pub(crate) fn release_if_empty(&mut self) {
        self.clear_written();
        if self.segs.is_empty() && self.capacities() > 0 {
            self.inline = Vec::new();
            self.inline_start = 0;
            self.segs = VecDeque::new();
            self.holds = VecDeque::new();
        }
    }

    /// Appends a frame's segment, keeping `pending` and `items`.
    #[inline]
    fn push_seg(&mut self, seg: Seg) {
        self.pending += seg.len();
        self.items += seg.cost();
        self.segs.push_back(seg);
    }

    /// Queues a whole frame, encoded inline.
    pub(crate) fn push_frame(&mut self, kind: &Kind) {
        let before = self.inline.len();
        let encoded = codec::encode(kind, &mut self.inline)
            .ok()
            .and_then(|()| u32::try_from(self.inline.len() - before).ok());
        match encoded {
            Some(inline) if inline > 0 => self.push_seg(Seg {
                inline,
                start: 0,
                len: 0,
                new_hold: false,
            }),
            // Control frames are tiny; a frame too large for the prefix is
            // a bug, and sending half of it would corrupt the stream.
            _ => self.inline.truncate(before),
        }
    }

    /// Where `part` lies in the buffer a payload pushed now would read
    /// from (the last in `holds`), if it does.
    #[inline]
    fn in_tail(&self, part: &[u8]) -> Option<u32> {
        let at = (part.as_ptr() as usize).checked_sub(self.tail_at)?;
        let end = at.checked_add(part.len())?;
        // `at` fits: `end <= tail_len`, a `u32`.
        (end <= self.tail_len as usize).then_some(at as u32)
    }

    /// Queues a `Message` for `sid`: its prefix inline, its payload (`part`
    /// of `owner`: the read batch it arrived in, or an owned message's
    /// payload) shared. A payload in the buffer the last one was queued
    /// from is an offset into it (no reference count); one from another
    /// buffer holds that buffer.
    pub(crate) fn push_message(
        &mut self,
        template: &MessageTemplate,
        sid: u64,
        owner: &Bytes,
        part: &[u8],
    ) {
        let before = self.inline.len();
        // The frame's length fits a `u32` (the encoder checks it), so do
        // the prefix's and the payload's.
        let prefix = template
            .write_prefix(sid, &mut self.inline)
            .ok()
            .and_then(|()| u32::try_from(self.inline.len() - before).ok());
        let (Some(inline), Ok(len)) = (prefix, u32::try_from(part.len())) else {
            self.inline.truncate(before);
            return;
        };
        if len == 0 {
            self.push_seg(Seg {
                inline,
                start: 0,
                len,
                new_hold: false,
            });
            return;
        }
        if let Some(start) = self.in_tail(part) {
            self.push_seg(Seg {
                inline,
                start,
                len,
                new_hold: false,
            });
            return;
        }
        let (buf, start) = match codec::range_in(owner, part) {
            Some(r) if u32::try_from(owner.len()).is_ok() => (owner.clone(), r.start),
            // Offsets into a buffer this long would not fit: hold the part.
            Some(r) => (owner.slice(r), 0),
            // Never the case for what the shard hands in (see `codec::share`).
            None => (Bytes::copy_from_slice(part), 0),
        };
        (self.tail_at, self.tail_len) = tail_of(Some(&buf));
        self.holds.push_back(buf);
        self.push_seg(Seg {
            inline,
            // Within a buffer at most `u32::MAX` long.
            start: start as u32,
            len,
            new_hold: true,
        });
    }

    /// Once every byte is written, drops the passed buffer: nothing reads
    /// it.
    fn clear_written(&mut self) {
        if self.pending > 0 {
            return;
        }
        // Every segment is at least a byte: none is left.
        self.segs.clear();
        self.holds.clear();
        self.items = 0;
        self.front_written = 0;
        self.has_passed = false;
        (self.tail_at, self.tail_len) = tail_of(None);
        self.inline.clear();
        self.inline_start = 0;
    }

    /// Finds the tail buffer again after segments went (rare paths only).
    fn find_tail(&mut self) {
        (self.tail_at, self.tail_len) = tail_of(self.holds.back());
    }

    /// Segments at the front that stay whatever is dropped: the frame
    /// partly written, if any.
    fn in_flight(&self) -> usize {
        usize::from(self.front_written > 0)
    }

    /// Discards queued frames that have not started to leave. The frame
    /// partly written (if any) is kept whole, so the stream stays valid.
    pub(crate) fn drop_queued(&mut self) {
        let keep = self.in_flight();
        let kept_inline: usize = self.segs.iter().take(keep).map(|s| s.inline as usize).sum();
        let kept_holds = usize::from(self.has_passed)
            + self.segs.iter().take(keep).filter(|s| s.new_hold).count();
        self.segs.truncate(keep);
        self.holds.truncate(kept_holds);
        self.inline.truncate(self.inline_start + kept_inline);
        self.pending = self.segs.iter().map(Seg::len).sum::<usize>() - self.front_written as usize;
        self.items = self.segs.iter().map(Seg::cost).sum();
        self.find_tail();
        self.clear_written();
    }

    /// Drops whole queued frames, oldest first (never the frame in flight),
    /// until at least `bytes` of [`items`](Self::items) are freed or
    /// nothing more can go. Returns the number of frames dropped.
    pub(crate) fn drop_oldest(&mut self, bytes: usize) -> usize {
        let first = self.in_flight();
        let mut freed = 0usize;
        let mut freed_bytes = 0usize;
        let mut inline_cut = 0usize;
        let mut holds_cut = 0usize;
        let mut cut = first;
        // Frames after the cut that read from the last buffer dropped keep
        // it (the first of them then brings it): that buffer is not freed.
        let kept_hold =
            |cut: usize, holds_cut: usize| holds_cut > 0 && self.reads_earlier_buffer(cut);
        while freed
            - if kept_hold(cut, holds_cut) {
                HOLD_COST
            } else {
                0
            }
            < bytes
        {
            let Some(seg) = self.segs.get(cut) else {
                break;
            };
            freed += seg.cost();
            freed_bytes += seg.len();
            inline_cut += seg.inline as usize;
            holds_cut += usize::from(seg.new_hold);
            cut += 1;
        }
        let frames = cut - first;
        if frames == 0 {
            return 0;
        }
        let first_hold = usize::from(self.has_passed)
            + self.segs.iter().take(first).filter(|s| s.new_hold).count();
        let mut holds_end = first_hold + holds_cut;
        if kept_hold(cut, holds_cut) {
            holds_end -= 1;
            freed -= HOLD_COST;
            if let Some(next) = self.segs.get_mut(cut) {
                next.new_hold = true;
            }
        }
        self.holds.drain(first_hold..holds_end);
        self.segs.drain(first..cut);
        // Inline bytes of the frame in flight come first in `inline`.
        let keep_inline: usize = self
            .segs
            .iter()
            .take(first)
            .map(|s| s.inline as usize)
            .sum();
        let from = self.inline_start + keep_inline;
        self.inline.drain(from..from + inline_cut);
        self.pending -= freed_bytes;
        self.items -= freed;
        self.find_tail();
        self.clear_written();
        frames
    }

    /// Whether a payload from segment `at` on reads from the buffer before
    /// it (before the next `new_hold` segment).
    fn reads_earlier_buffer(&self, at: usize) -> bool {
        self.segs
            .range(at.min(self.segs.len())..)
            .take_while(|s| !s.new_hold)
            .any(|s| s.len > 0)
    }

    /// Marks `n` bytes as written.
    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while let Some(seg) = self.segs.front() {
            let left = seg.len() - self.front_written as usize;
            if n < left {
                // `n` fits: it is less than one segment's length.
                self.front_written += n as u32;
                break;
            }
            n -= left;
            self.front_written = 0;
            self.items -= seg.cost();
            self.inline_start += seg.inline as usize;
            if seg.new_hold {
                // The payloads after it read from its buffer (now the
                // passed one) until the next `new_hold` segment.
                if self.has_passed {
                    self.holds.pop_front();
                }
                self.has_passed = true;
            }
            self.segs.pop_front();
        }
        // Once empty, `clear_written` has emptied `inline` too.
        self.clear_written();
        if self.segs.is_empty() {
            // An idle connection should not keep a burst's worth of memory.
            if self.inline.capacity() > IDLE_CAPACITY {
                self.inline.shrink_to(IDLE_CAPACITY);
            }
            // Like the inline bytes: a burst's worth is given back, a
            // batch's worth is kept for the next batch (a connection that
            // parks gives back everything, `release_if_empty`).
            if self.segs.capacity() * SEG_COST > IDLE_CAPACITY {
                self.segs.shrink_to(IDLE_SEGS);
            }
            if self.holds.capacity() * HOLD_COST > IDLE_CAPACITY {
                self.holds.shrink_to(IDLE_HOLDS);
            }
        } else if self.inline_start > COMPACT_AT && self.inline_start * 2 > self.inline.len() {
            self.inline.drain(..self.inline_start);
            self.inline_start = 0;
        }
    }

    /// Writes as much as the socket takes. `Ready(Ok(n))` with `n > 0` means
    /// progress; `Pending` means the socket is full and `cx` will be woken.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> Poll<io::Result<usize>> {
        if self.pending == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut slices: SmallVec<[IoSlice<'_>; 64]> = SmallVec::new();
        let mut inline_at = self.inline_start;
        let mut holds = self.holds.iter();
        let mut hold: &[u8] = if self.has_passed {
            holds.next().map_or(&[], |b| b)
        } else {
            &[]
        };
        let mut skip = self.front_written as usize;
        for seg in &self.segs {
            if slices.len() + 2 > MAX_IOVECS {
                break;
            }
            if seg.new_hold {
                hold = holds.next().map_or(&[], |b| b);
            }
            let end = inline_at + seg.inline as usize;
            let start = seg.start as usize;
            let (Some(prefix), Some(payload)) = (
                self.inline.get(inline_at..end),
                hold.get(start..start + seg.len as usize),
            ) else {
                // The invariants say this cannot be: end the connection
                // rather than send a corrupt stream.
                return Poll::Ready(Err(io::ErrorKind::InvalidData.into()));
            };
            inline_at = end;
            if skip < prefix.len() {
                slices.push(IoSlice::new(&prefix[skip..]));
                skip = 0;
            } else {
                skip -= prefix.len();
            }
            if !payload.is_empty() {
                slices.push(IoSlice::new(&payload[skip..]));
            }
            skip = 0;
        }
        let n = match Pin::new(io).poll_write_vectored(cx, &slices) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        drop(slices);
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.advance(n);
        Poll::Ready(Ok(n))
    }
}

/// The tail fields for `buf` (at most `u32::MAX` long: `push_message`
/// holds no longer one), or for none.
fn tail_of(buf: Option<&Bytes>) -> (usize, u32) {
    buf.map_or((0, 0), |b| (b.as_ptr() as usize, b.len() as u32))
}

#[cfg(test)]
mod tests {
    use arqonbus_proto::v1;
    use bytes::BytesMut;

    use super::*;

    /// A sink that takes at most `step` bytes per write, like a busy socket.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.step;
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(left);
                self.got.extend_from_slice(&b[..k]);
                n += k;
                left -= k;
                if left == 0 {
                    break;
                }
            }
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn drain(out: &mut Outbound, sink: &mut Trickle) {
        let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = Context::from_waker(&waker);
        while !out.is_empty() {
            let Poll::Ready(Ok(_)) = out.poll_write(&mut cx, sink) else {
                panic!("sink failed")
            };
        }
    }

    fn decode_all(bytes: &[u8]) -> Vec<Kind> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(k) = codec::decode(&mut buf, u32::MAX).unwrap() {
            frames.push(k);
        }
        assert!(buf.is_empty(), "trailing partial frame");
        frames
    }

    fn queue_messages(out: &mut Outbound, n: u64) {
        let mut t = MessageTemplate::new();
        for i in 0..n {
            let payload = Bytes::from(vec![i as u8; (i as usize * 7) % 50]);
            t.prepare(b"a.b", b"", &[], 0, payload.len());
            out.push_message(&t, i + 1, &payload, &payload);
            out.push_frame(&Kind::Ping(v1::Ping {}));
        }
    }

    /// The payload of message `i` in these tests.
    fn payload_of(i: u64) -> Vec<u8> {
        vec![i as u8; (i as usize * 7) % 50 + 1]
    }

    /// A read batch holding the payloads of messages `0..n` back to back.
    fn batch_of(n: u64) -> Bytes {
        Bytes::from((0..n).flat_map(payload_of).collect::<Vec<u8>>())
    }

    /// Queues a message (sid `i + 1`) and a Ping for each payload of
    /// `batch`, each message's payload borrowed from the batch, except
    /// every `owned_every`-th, which comes in a buffer of its own, and the
    /// one after it, from a second batch: so holds change along the queue.
    fn queue_batch(out: &mut Outbound, batch: &Bytes, owned_every: u64) {
        let other = Bytes::from(batch.to_vec());
        let mut t = MessageTemplate::new();
        let mut at = 0;
        let mut i = 0;
        while at < batch.len() {
            let len = payload_of(i).len();
            let part = &batch[at..at + len];
            t.prepare(b"a.b", b"", &[], 0, len);
            if i % owned_every == owned_every - 1 {
                let own = Bytes::copy_from_slice(part);
                out.push_message(&t, i + 1, &own, &own);
            } else if i % owned_every == 0 && i > 0 {
                out.push_message(&t, i + 1, &other, &other[at..at + len]);
            } else {
                out.push_message(&t, i + 1, batch, part);
            }
            out.push_frame(&Kind::Ping(v1::Ping {}));
            at += len;
            i += 1;
        }
    }

    /// The messages among `frames` as (sid, payload).
    fn messages(frames: &[Kind]) -> Vec<(u64, Vec<u8>)> {
        frames
            .iter()
            .filter_map(|k| match k {
                Kind::Message(m) => Some((m.sid, m.payload.to_vec())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn payloads_of_one_batch_are_held_once_and_let_go_when_written() {
        let batch = batch_of(100);
        let mut out = Outbound::new();
        queue_batch(&mut out, &batch, u64::MAX);
        assert_eq!((out.holds.len(), out.segs.len()), (1, 200));
        assert!(!batch.is_unique());
        check_held(&out);
        let mut sink = partly_written(&mut out, 13);
        check_held(&out);
        assert!(!batch.is_unique(), "released while still queued");
        sink.step = 4096;
        drain(&mut out, &mut sink);
        assert_eq!(messages(&decode_all(&sink.got)).len(), 100);
        check_held(&out);
        assert!(batch.is_unique(), "the queue still holds the batch");
        out.release_if_empty();
        assert_eq!(out.held(), 0);
    }

    #[test]
    fn payloads_from_changing_buffers_arrive_whole_and_in_order() {
        let batch = batch_of(60);
        let want: Vec<(u64, Vec<u8>)> = (0..60).map(|i| (i + 1, payload_of(i))).collect();
        for step in [1, 3, 17, 4096] {
            for owned_every in [2, 5, u64::MAX] {
                let mut out = Outbound::new();
                queue_batch(&mut out, &batch, owned_every);
                check_held(&out);
                let mut sink = Trickle {
                    got: Vec::new(),
                    step,
                    calls: 0,
                };
                let mut cx = Context::from_waker(std::task::Waker::noop());
                while !out.is_empty() {
                    let _ = out.poll_write(&mut cx, &mut sink);
                    check_held(&out);
                }
                assert_eq!(messages(&decode_all(&sink.got)), want, "step {step}");
                assert!(batch.is_unique(), "step {step}: the batch is still held");
            }
        }
    }

    #[test]
    fn dropping_frames_keeps_the_hold_later_payloads_read_from() {
        let batch = batch_of(60);
        for step in [0usize, 1, 7, 40] {
            for owned_every in [3, u64::MAX] {
                for bytes in [50, 400, 2000] {
                    let mut out = Outbound::new();
                    queue_batch(&mut out, &batch, owned_every);
                    let mut sink = partly_written(&mut out, step);
                    let dropped = out.drop_oldest(bytes);
                    assert!(dropped > 0);
                    check_held(&out);
                    sink.step = 4096;
                    drain(&mut out, &mut sink);
                    let got = messages(&decode_all(&sink.got));
                    // Whatever is left is whole and in order, ending with
                    // the newest message.
                    for (sid, payload) in &got {
                        assert_eq!(*payload, payload_of(sid - 1), "step {step}");
                    }
                    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
                    assert_eq!(got.last().map(|m| m.0), Some(60));
                    assert!(batch.is_unique());
                }
            }
            let mut out = Outbound::new();
            queue_batch(&mut out, &batch, 4);
            let mut sink = partly_written(&mut out, step);
            let mut written = BytesMut::from(&sink.got[..]);
            let mut already = Vec::new();
            while let Ok(Some(k)) = codec::decode(&mut written, u32::MAX) {
                already.push(k);
            }
            out.drop_queued();
            check_held(&out);
            sink.step = 4096;
            drain(&mut out, &mut sink);
            // What had left, and at most the message in flight.
            let got = messages(&decode_all(&sink.got));
            assert!(got.len() <= messages(&already).len() + 1, "step {step}");
            for (sid, payload) in &got {
                assert_eq!(*payload, payload_of(sid - 1), "step {step}");
            }
            assert!(batch.is_unique());
        }
    }

    #[test]
    fn everything_queued_arrives_in_order_whatever_the_write_sizes() {
        for step in [1, 3, 17, 4096] {
            let mut out = Outbound::new();
            queue_messages(&mut out, 40);
            let total = out.pending();
            let mut sink = Trickle {
                got: Vec::new(),
                step,
                calls: 0,
            };
            drain(&mut out, &mut sink);
            assert_eq!(sink.got.len(), total);
            let frames = decode_all(&sink.got);
            assert_eq!(frames.len(), 80);
            let Kind::Message(m) = &frames[2] else {
                panic!()
            };
            assert_eq!(m.sid, 2);
        }
    }

    /// `items` is the queued bytes plus `SEG_COST` per segment and
    /// `HOLD_COST` per hold, and `held` the capacities plus the payload
    /// bytes, through pushes, partial writes, drop-oldest and drop-queued.
    fn check_held(out: &Outbound) {
        let want: usize = out.segs.iter().map(Seg::cost).sum();
        assert_eq!(out.items(), want);
        assert_eq!(
            out.items(),
            out.segs.iter().map(|s| s.len() + SEG_COST).sum::<usize>()
                + out.queued_holds() * HOLD_COST
        );
        let payloads: usize = out.segs.iter().map(|s| s.len as usize).sum();
        // Every payload lies in the last hold up to it, or the one passed.
        let mut holds = out.holds.iter();
        let mut hold: Option<&Bytes> = out.has_passed.then(|| holds.next()).flatten();
        for s in &out.segs {
            assert!(s.len() > 0, "an empty segment");
            if s.new_hold {
                hold = Some(holds.next().expect("a new_hold segment without its buffer"));
            }
            if s.len > 0 {
                let b = hold.expect("a payload without a buffer");
                assert!((s.start + s.len) as usize <= b.len());
            }
        }
        assert!(holds.next().is_none(), "a buffer no segment brings");
        assert_eq!(tail_of(out.holds.back()), (out.tail_at, out.tail_len));
        assert_eq!(
            out.held(),
            out.inline.capacity()
                + out.segs.capacity() * SEG_COST
                + out.holds.capacity() * HOLD_COST
                + payloads
        );
        assert!(out.held() + out.pending() >= out.items());
    }

    #[test]
    fn the_memory_after_a_push_counts_the_growth_it_causes() {
        let mut out = Outbound::new();
        for _ in 0..100 {
            let pong = Kind::Pong(v1::Pong {});
            let mut wire = Vec::new();
            codec::encode(&pong, &mut wire).unwrap();
            let predicted = out.held_after(wire.len(), 0);
            out.push_frame(&pong);
            assert!(out.held() <= predicted, "{} > {predicted}", out.held());
        }
        let payload = Bytes::from(vec![1u8; 300]);
        let mut t = MessageTemplate::new();
        t.prepare(b"a.b", b"", &[], 0, payload.len());
        let prefix = t.frame_len(9) - payload.len();
        let predicted = out.held_after(prefix, payload.len());
        out.push_message(&t, 9, &payload, &payload);
        assert!(out.held() <= predicted, "{} > {predicted}", out.held());
    }

    #[test]
    fn held_memory_counts_each_frame_s_bookkeeping() {
        let mut out = Outbound::new();
        for _ in 0..1000 {
            out.push_frame(&Kind::Pong(v1::Pong {}));
        }
        // A Pong is a few bytes on the wire but a whole segment held.
        assert!(out.pending() <= 1000 * 8, "{}", out.pending());
        assert_eq!(out.items(), out.pending() + 1000 * SEG_COST);
        assert!(out.held() >= 1000 * (SEG_COST + 2));
        check_held(&out);
        queue_messages(&mut out, 40);
        check_held(&out);
        queue_batch(&mut out, &batch_of(40), 3);
        check_held(&out);
        let mut sink = Trickle {
            got: Vec::new(),
            step: 13,
            calls: 0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..50 {
            let _ = out.poll_write(&mut cx, &mut sink);
            check_held(&out);
        }
        out.drop_oldest(500);
        check_held(&out);
        out.drop_queued();
        check_held(&out);
        drain(&mut out, &mut sink);
        assert_eq!(out.items(), 0);
        assert!(out.held() <= IDLE_CAPACITY + IDLE_SEGS * SEG_COST + IDLE_HOLDS * HOLD_COST);
        out.release_if_empty();
        assert_eq!(out.held(), 0);
    }

    #[test]
    fn many_frames_leave_in_one_write() {
        let mut out = Outbound::new();
        queue_messages(&mut out, 100);
        let mut sink = Trickle {
            got: Vec::new(),
            step: usize::MAX,
            calls: 0,
        };
        drain(&mut out, &mut sink);
        assert_eq!(sink.calls, 1);
    }

    /// A sink taking `step` bytes per write, after one write into it (none
    /// when `step` is 0), so a frame may be in flight.
    fn partly_written(out: &mut Outbound, step: usize) -> Trickle {
        let mut sink = Trickle {
            got: Vec::new(),
            step,
            calls: 0,
        };
        if step > 0 {
            let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
                Poll::Ready(cx.waker().clone())
            }));
            let _ = out.poll_write(&mut Context::from_waker(&waker), &mut sink);
        }
        sink
    }

    #[test]
    fn dropping_the_oldest_frames_keeps_the_stream_valid() {
        for step in [0usize, 1, 7, 40] {
            let mut out = Outbound::new();
            queue_messages(&mut out, 30);
            let mut sink = partly_written(&mut out, step);
            let before = out.items();
            let dropped = out.drop_oldest(100);
            assert!(dropped > 0, "step {step}");
            assert!(before - out.items() >= 100, "step {step}");
            sink.step = usize::MAX;
            drain(&mut out, &mut sink);
            let frames = decode_all(&sink.got);
            assert_eq!(frames.len(), 60 - dropped, "step {step}");
            // What is left is the newest frames, in order.
            let Some(Kind::Ping(_)) = frames.last() else {
                panic!()
            };
        }
    }

    #[test]
    fn dropping_the_backlog_keeps_the_frame_in_flight_whole() {
        for step in [0usize, 1, 5, 13, 30] {
            let mut out = Outbound::new();
            queue_messages(&mut out, 20);
            let mut sink = partly_written(&mut out, step);
            let mut written = BytesMut::from(&sink.got[..]);
            let mut already = 0;
            while let Ok(Some(_)) = codec::decode(&mut written, u32::MAX) {
                already += 1;
            }
            out.drop_queued();
            out.push_frame(&Kind::Error(v1::Error {
                code: v1::ErrorCode::SlowConsumer.into(),
                close: true,
                ..Default::default()
            }));
            sink.step = usize::MAX;
            drain(&mut out, &mut sink);
            let frames = decode_all(&sink.got);
            assert!(matches!(frames.last(), Some(Kind::Error(_))), "step {step}");
            // What had left, at most the one frame in flight, and the error.
            assert!(
                frames.len() <= already + 2,
                "step {step}: backlog was not dropped"
            );
        }
    }
}
