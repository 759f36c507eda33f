//! The per-connection outbound queue.
//!
//! Frames are queued as segments: small encoded parts (frame prefixes,
//! control frames) are appended to one contiguous `inline` buffer, and message
//! payloads are queued as ranges of the shared [`Bytes`] they arrived in. A
//! flush turns the queue into one vectored write of up to [`MAX_IOVECS`]
//! slices, so many frames leave in one syscall and payloads are never copied.
//!
//! A queue holds each buffer its payloads lie in once per run of payloads
//! from it, not once per payload: a `Hold` segment keeps the buffer (a
//! publisher's read batch, usually) and the payload segments after it are
//! offsets into it. So a read batch of many small messages delivered to a
//! subscriber costs one reference count on that batch's shared header, not
//! one per message (the header another core may be counting on too). A
//! payload that is a whole buffer of its own (an owned message's) is queued
//! as that `Bytes`, as one segment. The buffer of the last `Hold` written
//! past (`passed`) stays until another `Hold` is written past or everything
//! is written: at most one buffer beyond what the queued payloads pin.
//!
//! Accounting: limits are checked against what the queue holds, not its
//! wire bytes, so a client that makes the server queue millions of 6-byte
//! Pongs pays for what they really take.
//! - [`Outbound::held`] is the memory: the inline buffer's and the segment
//!   ring's capacity plus the payload bytes queued. A payload shares the
//!   receive buffer it arrived in, which is sized to what reads bring
//!   (`readbuf`), so what it pins beyond its length stays within a small
//!   factor. Memory limits (`max_pending_bytes`) are checked against
//!   [`Outbound::held_after`] a push, growth of the buffers included, so
//!   the queue never holds more than the limit; the metric reports `held`.
//! - [`Outbound::items`] is the cost of the frames queued: each segment's
//!   bytes plus [`SEG_COST`] of bookkeeping. It goes down as soon as frames
//!   are written or dropped, so the drop-oldest policy and the end of a
//!   publisher stall use it (capacity is only given back when the queue
//!   empties).
//!
//! Invariants:
//! - `pending` is the exact number of queued, unwritten bytes;
//! - `items` is the sum over the segments in `segs` of their length plus
//!   [`SEG_COST`] (a partly written segment counts whole until it goes);
//! - the inline bytes of queued segments are `inline[inline_start..]`, in
//!   segment order;
//! - every `Held` segment lies in the buffer of the last `Hold` before it
//!   in `segs`, or, with none before it, in `passed` (the buffer of the
//!   last `Hold` written past);
//! - `tail_at` and `tail_len` are the address and length of the buffer a
//!   payload pushed now would read from (the last `Hold`'s in `segs`, or
//!   else `passed`), `tail_len` 0 when there is none;
//! - [`Outbound::drop_queued`] and [`Outbound::drop_oldest`] only ever cut
//!   at a frame boundary, so the stream stays decodable when a slow
//!   consumer's backlog is discarded, and they keep the `Hold` that segments
//!   left behind them read from.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use arqonbus_proto::codec::{self, MessageTemplate};
use arqonbus_proto::v1::frame::Kind;
use bytes::Bytes;
use futures_lite::AsyncWrite;
use smallvec::SmallVec;

/// Most slices handed to one vectored write (Linux allows 1024).
pub(crate) const MAX_IOVECS: usize = 512;

/// Inline bytes already written are compacted away past this size.
const COMPACT_AT: usize = 64 * 1024;

/// Capacity an emptied queue keeps; more is given back.
const IDLE_CAPACITY: usize = 16 * 1024;

/// Segment slots an emptied queue keeps.
const IDLE_SEGS: usize = 16;

/// What one queued segment costs beyond its bytes: its slot in the
/// segment ring.
pub(crate) const SEG_COST: usize = std::mem::size_of::<Seg>();

/// A queued segment. A payload is always the end of its frame, a `Hold`
/// never is, and an inline segment says.
#[derive(Debug)]
enum Seg {
    /// The next `len` bytes of `inline`.
    Inline { len: usize, frame_end: bool },
    /// A payload that is a whole buffer of its own.
    Payload(Bytes),
    /// Keeps the buffer the `Held` segments after it (up to the next
    /// `Hold`) lie in. No bytes of its own.
    Hold(Bytes),
    /// Bytes `start..start + len` of the last `Hold`'s buffer before it.
    Held { start: u32, len: u32 },
}

impl Seg {
    #[inline]
    fn len(&self) -> usize {
        match self {
            Self::Inline { len, .. } => *len,
            Self::Payload(b) => b.len(),
            Self::Hold(_) => 0,
            Self::Held { len, .. } => *len as usize,
        }
    }

    /// The segment's last byte is the last byte of a frame.
    #[inline]
    fn frame_end(&self) -> bool {
        match self {
            Self::Inline { frame_end, .. } => *frame_end,
            Self::Payload(_) | Self::Held { .. } => true,
            Self::Hold(_) => false,
        }
    }

    #[inline]
    fn is_hold(&self) -> bool {
        matches!(self, Self::Hold(_))
    }

    #[inline]
    fn inline_len(&self) -> usize {
        match self {
            Self::Inline { len, .. } => *len,
            _ => 0,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Outbound {
    inline: Vec<u8>,
    inline_start: usize,
    segs: VecDeque<Seg>,
    pending: usize,
    items: usize,
    /// Bytes of the first unwritten segment already written.
    front_written: u32,
    /// The length of the buffer payloads pushed now read from (0: none).
    tail_len: u32,
    /// That buffer's address (compared, never read through).
    tail_at: usize,
    /// Everything written so far ends on a frame boundary.
    at_boundary: bool,
    /// The buffer of the last `Hold` written past, which `Held` segments
    /// before the first `Hold` in `segs` read from.
    passed: Option<Bytes>,
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
            pending: 0,
            items: 0,
            front_written: 0,
            tail_len: 0,
            tail_at: 0,
            at_boundary: true,
            passed: None,
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
        let payloads = self.items - self.segs.len() * SEG_COST - inline_queued;
        self.inline.capacity() + self.segs.capacity() * SEG_COST + payloads
    }

    /// The cost of the frames queued: their bytes plus [`SEG_COST`] per
    /// segment (see the module docs).
    pub(crate) fn items(&self) -> usize {
        self.items
    }

    /// At most what queuing a `Message` of `frame_len` wire bytes adds to
    /// [`items`](Self::items): its prefix, its payload and a `Hold` for the
    /// payload's buffer, three segments.
    pub(crate) fn message_cost(frame_len: usize) -> usize {
        frame_len + MESSAGE_SEGS * SEG_COST
    }

    /// [`held`](Self::held) after queuing `inline` more inline bytes,
    /// `payload` more payload bytes and `segs` more segments, counting the
    /// growth of the buffers it would cause (a `Vec` or `VecDeque` that is
    /// full doubles): an upper bound. Checking a limit against this, not
    /// against `held`, makes it a bound on memory: no push goes over it.
    pub(crate) fn held_after(&self, inline: usize, payload: usize, segs: usize) -> usize {
        let inline_cap = if self.inline.len() + inline > self.inline.capacity() {
            (self.inline.capacity() * 2)
                .max(self.inline.len() + inline)
                .max(8)
        } else {
            self.inline.capacity()
        };
        let segs_cap = if self.segs.len() + segs > self.segs.capacity() {
            (self.segs.capacity() * 2)
                .max(self.segs.len() + segs)
                .max(4)
        } else {
            self.segs.capacity()
        };
        self.held() - self.inline.capacity() - self.segs.capacity() * SEG_COST
            + inline_cap
            + segs_cap * SEG_COST
            + payload
    }

    /// Gives back all the queue's memory when nothing is queued: called
    /// when the connection parks, so an idle connection holds no buffer.
    pub(crate) fn release_if_empty(&mut self) {
        self.clear_written();
        if self.segs.is_empty() && self.inline.capacity() + self.segs.capacity() > 0 {
            self.inline = Vec::new();
            self.inline_start = 0;
            self.segs = VecDeque::new();
        }
    }

    /// Appends a segment, keeping `items`.
    #[inline]
    fn push_seg(&mut self, seg: Seg) {
        self.items += seg.len() + SEG_COST;
        self.segs.push_back(seg);
    }

    /// Records `n` bytes just appended to `inline` as a segment. Segments are
    /// never merged, so [`drop_queued`](Self::drop_queued) can cut right
    /// after the frame in flight.
    #[inline]
    fn push_inline(&mut self, n: usize, frame_end: bool) {
        if n == 0 {
            return;
        }
        self.pending += n;
        self.push_seg(Seg::Inline { len: n, frame_end });
    }

    /// Queues a whole frame, encoded inline.
    pub(crate) fn push_frame(&mut self, kind: &Kind) {
        let before = self.inline.len();
        if codec::encode(kind, &mut self.inline).is_err() {
            // Control frames are tiny; a frame too large for the prefix is a
            // bug, and sending half of it would corrupt the stream.
            self.inline.truncate(before);
            return;
        }
        self.push_inline(self.inline.len() - before, true);
    }

    /// Where `part` lies in the buffer a payload pushed now would read
    /// from (the last `Hold`'s, or else the one passed), if it does.
    #[inline]
    fn in_tail(&self, part: &[u8]) -> Option<(u32, u32)> {
        let at = (part.as_ptr() as usize).checked_sub(self.tail_at)?;
        let end = at.checked_add(part.len())?;
        // Both fit: `end <= tail_len`, a `u32`.
        (end <= self.tail_len as usize).then_some((at as u32, part.len() as u32))
    }

    /// The buffer payloads pushed now read from, found from the segments:
    /// the last `Hold`'s, or else the one passed.
    fn last_hold(&self) -> Option<&Bytes> {
        self.segs
            .iter()
            .rev()
            .find_map(|s| match s {
                Seg::Hold(b) => Some(b),
                _ => None,
            })
            .or(self.passed.as_ref())
    }

    /// Queues a `Message` for `sid`: its prefix inline, its payload (`part`
    /// of `owner`: the read batch it arrived in, or an owned message's
    /// payload) shared. A payload in the buffer the last one was queued
    /// from is an offset into it (no reference count); one from another
    /// buffer holds that buffer first.
    pub(crate) fn push_message(
        &mut self,
        template: &MessageTemplate,
        sid: u64,
        owner: &Bytes,
        part: &[u8],
    ) {
        let before = self.inline.len();
        if template.write_prefix(sid, &mut self.inline).is_err() {
            self.inline.truncate(before);
            return;
        }
        self.push_inline(self.inline.len() - before, part.is_empty());
        if part.is_empty() {
            return;
        }
        self.pending += part.len();
        if let Some((start, len)) = self.in_tail(part) {
            self.push_seg(Seg::Held { start, len });
            return;
        }
        match codec::range_in(owner, part) {
            Some(r) if r.len() == owner.len() => {
                self.push_seg(Seg::Payload(owner.clone()));
            }
            Some(r) => match u32::try_from(owner.len()) {
                // The offsets fit too: they are within the owner.
                Ok(_) => {
                    (self.tail_at, self.tail_len) = tail_of(Some(owner));
                    self.push_seg(Seg::Hold(owner.clone()));
                    self.push_seg(Seg::Held {
                        start: r.start as u32,
                        len: r.len() as u32,
                    });
                }
                Err(_) => self.push_seg(Seg::Payload(owner.slice(r))),
            },
            // Never the case for what the shard hands in (see `codec::share`).
            None => self.push_seg(Seg::Payload(Bytes::copy_from_slice(part))),
        }
    }

    /// Once every byte is written, drops the `Hold`s left (the one passed,
    /// or one a drop left with nothing after it): nothing reads them.
    fn clear_written(&mut self) {
        if self.pending > 0 {
            return;
        }
        // Only zero-length segments are left: `items` is their slots.
        self.segs.clear();
        self.items = 0;
        self.front_written = 0;
        self.passed = None;
        (self.tail_at, self.tail_len) = tail_of(None);
        self.inline.clear();
        self.inline_start = 0;
    }

    /// Finds the tail buffer again after segments went (rare paths only).
    fn find_tail(&mut self) {
        (self.tail_at, self.tail_len) = tail_of(self.last_hold());
    }

    /// Discards queued frames that have not started to leave. The frame
    /// partly written (if any) is kept whole, so the stream stays valid.
    pub(crate) fn drop_queued(&mut self) {
        let keep = if self.front_written == 0 && self.at_boundary {
            0
        } else {
            self.segs
                .iter()
                .position(Seg::frame_end)
                .map_or(self.segs.len(), |i| i + 1)
        };
        let kept_inline: usize = self.segs.iter().take(keep).map(Seg::inline_len).sum();
        self.segs.truncate(keep);
        self.inline.truncate(self.inline_start + kept_inline);
        self.pending = self.segs.iter().map(Seg::len).sum::<usize>() - self.front_written as usize;
        self.items = self.segs.iter().map(|s| s.len() + SEG_COST).sum();
        self.find_tail();
        self.clear_written();
    }

    /// Drops whole queued frames, oldest first (never the frame in flight),
    /// until at least `bytes` of [`items`](Self::items) are freed or
    /// nothing more can go. Returns the number of frames dropped.
    pub(crate) fn drop_oldest(&mut self, bytes: usize) -> usize {
        // Segments of the frame in flight stay: they start the queue and end
        // at the first frame boundary.
        let first = if self.front_written == 0 && self.at_boundary {
            0
        } else {
            match self.segs.iter().position(Seg::frame_end) {
                Some(i) => i + 1,
                None => return 0,
            }
        };
        let mut freed = 0usize;
        let mut frames = 0usize;
        let mut cut = first;
        let mut inline_cut = 0usize;
        let mut end = first;
        let mut frame_bytes = 0usize;
        let mut frame_inline = 0usize;
        let mut frame_segs = 0usize;
        let mut freed_segs = 0usize;
        while freed + freed_segs * SEG_COST < bytes && end < self.segs.len() {
            let seg = &self.segs[end];
            frame_bytes += seg.len();
            frame_segs += 1;
            frame_inline += seg.inline_len();
            end += 1;
            if seg.frame_end() {
                freed += frame_bytes;
                freed_segs += frame_segs;
                inline_cut += frame_inline;
                frames += 1;
                cut = end;
                frame_bytes = 0;
                frame_inline = 0;
                frame_segs = 0;
            }
        }
        if frames == 0 {
            return 0;
        }
        // The last `Hold` among the dropped segments stays (moved to the
        // front of the range) when segments after them may read from it.
        let kept_hold = if cut < self.segs.len() {
            (first..cut).rev().find(|&i| self.segs[i].is_hold())
        } else {
            None
        };
        if let Some(i) = kept_hold {
            self.segs.swap(first, i);
            freed_segs -= 1;
            self.segs.drain(first + 1..cut);
        } else {
            self.segs.drain(first..cut);
        }
        // Inline bytes of the kept in-flight segments come first in `inline`.
        let keep_inline: usize = self.segs.iter().take(first).map(Seg::inline_len).sum();
        let from = self.inline_start + keep_inline;
        self.inline.drain(from..from + inline_cut);
        self.pending -= freed;
        self.items -= freed + freed_segs * SEG_COST;
        self.find_tail();
        self.clear_written();
        frames
    }

    /// Marks `n` bytes as written.
    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while let Some(seg) = self.segs.front() {
            let left = seg.len() - self.front_written as usize;
            if n < left {
                // `left` fits: it is at most one segment's length.
                self.front_written += n as u32;
                break;
            }
            n -= left;
            self.front_written = 0;
            self.items -= seg.len() + SEG_COST;
            if !seg.is_hold() {
                self.at_boundary = seg.frame_end();
            }
            self.inline_start += seg.inline_len();
            if let Some(Seg::Hold(buf)) = self.segs.pop_front() {
                // The payloads after it read from it until the next `Hold`.
                self.passed = Some(buf);
            }
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
        let mut hold: &[u8] = self.passed.as_deref().unwrap_or_default();
        let mut skip = self.front_written as usize;
        for seg in &self.segs {
            if slices.len() == MAX_IOVECS {
                break;
            }
            let bytes: &[u8] = match seg {
                Seg::Inline { len: n, .. } => {
                    let s = &self.inline[inline_at..inline_at + n];
                    inline_at += n;
                    s
                }
                Seg::Payload(b) => b,
                Seg::Hold(b) => {
                    hold = b;
                    continue;
                }
                Seg::Held { start, len } => {
                    let (start, len) = (*start as usize, *len as usize);
                    &hold[start..start + len]
                }
            };
            slices.push(IoSlice::new(&bytes[skip..]));
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

/// Segments a `Message` can take: its prefix, its payload, and a `Hold`.
pub(crate) const MESSAGE_SEGS: usize = 3;

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
        let holds = out.segs.iter().filter(|s| s.is_hold()).count();
        let payloads = out
            .segs
            .iter()
            .filter(|s| matches!(s, Seg::Payload(_)))
            .count();
        assert_eq!((holds, payloads), (1, 0));
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

    /// `items` is the queued bytes plus `SEG_COST` per segment, and `held`
    /// the capacities plus the payload bytes, through pushes, partial
    /// writes, drop-oldest and drop-queued.
    fn check_held(out: &Outbound) {
        let want: usize = out.segs.iter().map(|s| s.len() + SEG_COST).sum();
        assert_eq!(out.items(), want);
        let payloads: usize = out
            .segs
            .iter()
            .filter(|s| matches!(s, Seg::Payload(_) | Seg::Held { .. }))
            .map(Seg::len)
            .sum();
        // Every `Held` lies in the last `Hold` before it, or the one passed.
        let mut hold: Option<&Bytes> = out.passed.as_ref();
        for s in &out.segs {
            match s {
                Seg::Hold(b) => hold = Some(b),
                Seg::Held { start, len } => {
                    let b = hold.expect("a Held segment without a Hold before it");
                    assert!((*start + *len) as usize <= b.len());
                }
                _ => {}
            }
        }
        assert_eq!(tail_of(out.last_hold()), (out.tail_at, out.tail_len));

        assert_eq!(
            out.held(),
            out.inline.capacity() + out.segs.capacity() * SEG_COST + payloads
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
            let predicted = out.held_after(wire.len(), 0, 1);
            out.push_frame(&pong);
            assert!(out.held() <= predicted, "{} > {predicted}", out.held());
        }
        let payload = Bytes::from(vec![1u8; 300]);
        let mut t = MessageTemplate::new();
        t.prepare(b"a.b", b"", &[], 0, payload.len());
        let prefix = t.frame_len(9) - payload.len();
        let predicted = out.held_after(prefix, payload.len(), MESSAGE_SEGS);
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
        assert!(out.held() <= IDLE_CAPACITY + IDLE_SEGS * SEG_COST);
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
