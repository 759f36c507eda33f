//! The write side: encoded frames waiting for the socket.
//!
//! Small frames are appended to one contiguous buffer so that many of them go
//! out in one `write`. A large publish payload is not copied: its frame prefix
//! is appended, and the payload [`Bytes`] is queued as its own chunk for a
//! vectored write. Invariant: the bytes yielded by [`OutQueue::slices`], in
//! order, are exactly the frames pushed, in order.

use std::collections::VecDeque;
use std::io::IoSlice;

use arqonbus_proto::codec::{self, EncodeError};
use arqonbus_proto::v1::{self, frame::Kind};
use bytes::{Buf, Bytes, BytesMut};

/// Payloads at least this large are written from their own buffer.
const LARGE_PAYLOAD: usize = 16 * 1024;
/// Most buffers handed to one vectored write.
pub(crate) const MAX_SLICES: usize = 64;

/// A publish, validated and ready to encode.
#[derive(Clone)]
pub(crate) struct Outgoing {
    pub(crate) subject: Bytes,
    pub(crate) reply: Bytes,
    pub(crate) headers: Vec<v1::Header>,
    pub(crate) payload: Bytes,
    /// Reconnect-buffer permits this publish holds until it is encoded.
    pub(crate) permits: u32,
}

/// Frames waiting to be written.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    /// Sealed chunks, written before `tail`.
    chunks: VecDeque<Bytes>,
    /// Small frames accumulate here.
    tail: BytesMut,
    /// Total bytes queued.
    len: usize,
}

impl OutQueue {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Bytes queued.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one control frame.
    pub(crate) fn push_frame(&mut self, kind: &Kind) -> Result<(), EncodeError> {
        let before = self.tail.len();
        codec::encode(kind, &mut self.tail)?;
        self.len += self.tail.len() - before;
        Ok(())
    }

    /// Appends one `Publish` frame, copying the payload only when it is small.
    pub(crate) fn push_publish(&mut self, p: &Outgoing) -> Result<(), EncodeError> {
        let before = self.tail.len();
        codec::write_publish_prefix(
            &p.subject,
            &p.reply,
            &p.headers,
            p.payload.len(),
            &mut self.tail,
        )?;
        self.len += self.tail.len() - before;
        if p.payload.len() >= LARGE_PAYLOAD {
            self.seal();
            self.chunks.push_back(p.payload.clone());
        } else {
            self.tail.extend_from_slice(&p.payload);
        }
        self.len += p.payload.len();
        Ok(())
    }

    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
    }

    /// Fills `dst` with the queued bytes, in order; returns how many slices
    /// were filled.
    pub(crate) fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let pieces = self
            .chunks
            .iter()
            .map(|c| &c[..])
            .chain(std::iter::once(&self.tail[..]))
            .filter(|c| !c.is_empty());
        for (slot, piece) in dst.iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes (they were written).
    pub(crate) fn advance(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                let take = n.min(self.tail.len());
                self.tail.advance(take);
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut OutQueue, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !q.is_empty() {
            let mut slots = [IoSlice::new(&[]); MAX_SLICES];
            let n = q.slices(&mut slots);
            let mut wrote = 0;
            for s in &slots[..n] {
                let take = (step - wrote).min(s.len());
                out.extend_from_slice(&s[..take]);
                wrote += take;
                if wrote == step {
                    break;
                }
            }
            q.advance(wrote);
        }
        out
    }

    fn publish(payload_len: usize) -> Outgoing {
        Outgoing {
            subject: Bytes::from_static(b"a.b"),
            reply: Bytes::from_static(b"r"),
            headers: vec![v1::Header {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
            }],
            payload: Bytes::from(vec![7u8; payload_len]),
            permits: 0,
        }
    }

    fn expected(p: &Outgoing) -> Vec<u8> {
        let mut v = Vec::new();
        codec::encode(
            &Kind::Publish(v1::Publish {
                subject: p.subject.clone(),
                reply: p.reply.clone(),
                headers: p.headers.clone(),
                seq: 0,
                payload: p.payload.clone(),
            }),
            &mut v,
        )
        .unwrap();
        v
    }

    #[test]
    fn queued_bytes_equal_the_codec_encoding_in_order() {
        for step in [1, 3, 1000, usize::MAX] {
            let mut q = OutQueue::new();
            let small = publish(10);
            let large = publish(LARGE_PAYLOAD + 5);
            let mut want = Vec::new();
            q.push_frame(&Kind::Ping(v1::Ping {})).unwrap();
            codec::encode(&Kind::Ping(v1::Ping {}), &mut want).unwrap();
            for p in [&small, &large, &small, &large, &large] {
                q.push_publish(p).unwrap();
                want.extend(expected(p));
            }
            q.push_frame(&Kind::Pong(v1::Pong {})).unwrap();
            codec::encode(&Kind::Pong(v1::Pong {}), &mut want).unwrap();
            assert_eq!(q.len(), want.len());
            assert_eq!(drain(&mut q, step), want, "step {step}");
            assert_eq!(q.len(), 0);
        }
    }

    #[test]
    fn large_payloads_are_not_copied() {
        let mut q = OutQueue::new();
        let large = publish(LARGE_PAYLOAD);
        q.push_publish(&large).unwrap();
        let mut slots = [IoSlice::new(&[]); MAX_SLICES];
        let n = q.slices(&mut slots);
        assert_eq!(n, 2);
        assert_eq!(slots[1].as_ptr(), large.payload.as_ptr());
    }
}
