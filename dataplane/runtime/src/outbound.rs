//! The per-connection outbound queue.
//!
//! Frames are queued as segments: small encoded parts (frame prefixes,
//! control frames) are appended to one contiguous `inline` buffer, and message
//! payloads are queued as the shared [`Bytes`] they arrived in. A flush turns
//! the queue into one vectored write of up to [`MAX_IOVECS`] slices, so many
//! frames leave in one syscall and payloads are never copied.
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
//! - `items` is the sum over queued segments of their length plus
//!   [`SEG_COST`] (a partly written segment counts whole until it goes);
//! - the inline bytes of queued segments are `inline[inline_start..]`, in
//!   segment order;
//! - [`Outbound::drop_queued`] only ever cuts at a frame boundary, so the
//!   stream stays decodable when a slow consumer's backlog is discarded.

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

#[derive(Debug)]
enum Data {
    Inline(usize),
    Payload(Bytes),
}

#[derive(Debug)]
struct Seg {
    data: Data,
    /// The segment's last byte is the last byte of a frame.
    frame_end: bool,
}

impl Seg {
    fn len(&self) -> usize {
        match &self.data {
            Data::Inline(n) => *n,
            Data::Payload(b) => b.len(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Outbound {
    inline: Vec<u8>,
    inline_start: usize,
    segs: VecDeque<Seg>,
    /// Bytes of the front segment already written.
    front_written: usize,
    /// Everything written so far ends on a frame boundary.
    at_boundary: bool,
    pending: usize,
    items: usize,
}

impl Outbound {
    pub(crate) fn new() -> Self {
        Self {
            at_boundary: true,
            ..Self::default()
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

    /// What queuing a `Message` of `frame_len` wire bytes adds to
    /// [`items`](Self::items) (its prefix and its payload, two segments).
    pub(crate) fn message_cost(frame_len: usize) -> usize {
        frame_len + 2 * SEG_COST
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
        if self.segs.is_empty() && self.inline.capacity() + self.segs.capacity() > 0 {
            self.inline = Vec::new();
            self.inline_start = 0;
            self.segs = VecDeque::new();
        }
    }

    /// Records `n` bytes just appended to `inline` as a segment. Segments are
    /// never merged, so [`drop_queued`](Self::drop_queued) can cut right
    /// after the frame in flight.
    fn push_inline(&mut self, n: usize, frame_end: bool) {
        if n == 0 {
            return;
        }
        self.pending += n;
        self.items += n + SEG_COST;
        self.segs.push_back(Seg {
            data: Data::Inline(n),
            frame_end,
        });
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

    /// Queues a `Message` for `sid`: its prefix inline, its payload shared.
    pub(crate) fn push_message(&mut self, template: &MessageTemplate, sid: u64, payload: &Bytes) {
        let before = self.inline.len();
        if template.write_prefix(sid, &mut self.inline).is_err() {
            self.inline.truncate(before);
            return;
        }
        self.push_inline(self.inline.len() - before, payload.is_empty());
        if !payload.is_empty() {
            self.pending += payload.len();
            self.items += payload.len() + SEG_COST;
            self.segs.push_back(Seg {
                data: Data::Payload(payload.clone()),
                frame_end: true,
            });
        }
    }

    /// Discards queued frames that have not started to leave. The frame
    /// partly written (if any) is kept whole, so the stream stays valid.
    pub(crate) fn drop_queued(&mut self) {
        let keep = if self.front_written == 0 && self.at_boundary {
            0
        } else {
            self.segs
                .iter()
                .position(|s| s.frame_end)
                .map_or(self.segs.len(), |i| i + 1)
        };
        let kept_inline: usize = self
            .segs
            .iter()
            .take(keep)
            .filter_map(|s| match s.data {
                Data::Inline(n) => Some(n),
                Data::Payload(_) => None,
            })
            .sum();
        self.segs.truncate(keep);
        self.inline.truncate(self.inline_start + kept_inline);
        self.pending = self.segs.iter().map(Seg::len).sum::<usize>() - self.front_written;
        self.items = self.segs.iter().map(|s| s.len() + SEG_COST).sum();
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
            match self.segs.iter().position(|s| s.frame_end) {
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
            if let Data::Inline(n) = seg.data {
                frame_inline += n;
            }
            end += 1;
            if seg.frame_end {
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
        // Inline bytes of the kept in-flight segments come first in `inline`.
        let keep_inline: usize = self
            .segs
            .iter()
            .take(first)
            .filter_map(|s| match s.data {
                Data::Inline(n) => Some(n),
                Data::Payload(_) => None,
            })
            .sum();
        let from = self.inline_start + keep_inline;
        self.inline.drain(from..from + inline_cut);
        self.segs.drain(first..cut);
        self.pending -= freed;
        self.items -= freed + freed_segs * SEG_COST;
        frames
    }

    /// Marks `n` bytes as written.
    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let Some(front) = self.segs.front() else {
                break;
            };
            let left = front.len() - self.front_written;
            if n < left {
                self.front_written += n;
                return;
            }
            n -= left;
            self.front_written = 0;
            self.items -= front.len() + SEG_COST;
            self.at_boundary = front.frame_end;
            if let Data::Inline(len) = front.data {
                self.inline_start += len;
            }
            self.segs.pop_front();
        }
        if self.segs.is_empty() {
            self.inline.clear();
            self.inline_start = 0;
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
        for (i, seg) in self.segs.iter().enumerate() {
            if slices.len() == MAX_IOVECS {
                break;
            }
            let skip = if i == 0 { self.front_written } else { 0 };
            let bytes: &[u8] = match &seg.data {
                Data::Inline(n) => {
                    let s = &self.inline[inline_at..inline_at + n];
                    inline_at += n;
                    s
                }
                Data::Payload(b) => b,
            };
            slices.push(IoSlice::new(&bytes[skip..]));
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
            out.push_message(&t, i + 1, &payload);
            out.push_frame(&Kind::Ping(v1::Ping {}));
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
            .filter_map(|s| match &s.data {
                Data::Payload(b) => Some(b.len()),
                Data::Inline(_) => None,
            })
            .sum();
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
        let predicted = out.held_after(prefix, payload.len(), 2);
        out.push_message(&t, 9, &payload);
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
