//! Length-delimited framing for [`Frame`](crate::v1::Frame).
//!
//! Wire form: `u32` big-endian body length `N`, then `N` bytes of an encoded
//! `Frame`. The decoder reads the prefix, rejects `N > max_frame` before
//! buffering the body, and only then decodes. Decoding a body held in
//! [`Bytes`] slices `bytes` fields (subjects, payloads) out of it, no copies;
//! [`decode_in`] goes further for the common publish and borrows its fields
//! from the read batch ([`PublishView`]), counting nothing until a field is
//! kept.
//!
//! For fan-out the server does not build a `Message` per subscriber: a
//! [`MessageTemplate`] encodes everything except the subscription id and the
//! payload once, and [`MessageTemplate::write_prefix`] emits the few bytes that
//! differ per subscriber. The payload then follows as its own buffer (a
//! vectored write). The bytes produced are identical to prost's encoding of the
//! same `Frame`; the golden-vector tests hold both to that.

use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::v1::{Frame, Header, frame::Kind};

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why bytes could not be turned into a frame. Small and allocation-free: it
/// sits on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces a frame larger than the receiver accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced body length.
        len: u32,
        /// The receiver's maximum.
        max: u32,
    },
    /// The body is not a valid protobuf `Frame`.
    #[error("frame body is not a valid arqonbus.v1.Frame")]
    Malformed,
    /// The body decoded but carries no frame kind this version knows.
    #[error("frame carries no known kind")]
    UnknownKind,
    /// The body holds more than one top-level field (two kinds, or one kind
    /// twice): a `Frame` carries exactly one kind, and which one a peer acts
    /// on must not depend on its decoder.
    #[error("frame carries more than one field; a frame holds exactly one kind")]
    SeveralKinds,
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The frame does not fit the 32-bit length prefix.
    #[error("frame of {0} bytes does not fit the length prefix")]
    TooLarge(usize),
}

/// Looks at the front of `buf`. Returns the total length (prefix included) of
/// the first frame when all of it is present, `None` when more bytes are
/// needed, and an error as soon as the prefix exceeds `max_frame`, before any
/// body byte is needed.
pub fn frame_len(buf: &[u8], max_frame: u32) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    if len > max_frame {
        return Err(DecodeError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let total = LEN_PREFIX + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Decodes one frame body (the bytes after the prefix).
///
/// A `Publish` without headers in canonical form (what every encoder
/// writes) is decoded by [`publish_fast`]; anything else goes to prost, which
/// decides. Both give the same result for every input the fast path takes.
pub fn decode_body(body: Bytes) -> Result<Kind, DecodeError> {
    if let Some(view) = publish_fast(&body, 0..body.len()) {
        return Ok(Kind::Publish(view.to_owned()));
    }
    decode_slow(body)
}

/// A frame decoded by [`decode_in`]: the common publish borrowed from its
/// read batch, anything else owned.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A `Publish` the fast path took, its fields still in the batch.
    Publish(PublishView<'a>),
    /// Every other frame (a `Publish` with headers included).
    Frame(Kind),
}

/// A `Publish` decoded in place: its fields are slices of the read batch,
/// and nothing is counted or copied until a field must outlive the batch
/// ([`to_owned`](Self::to_owned), or [`share`] of one field). Its `Debug`
/// shows the subjects and sizes only: the batch may hold other frames
/// (a `Connect` and its credential) and the payload is never logged.
#[derive(Clone, Copy)]
pub struct PublishView<'a> {
    /// The read batch every field lies in.
    pub batch: &'a Bytes,
    /// `Publish.subject`, not yet validated.
    pub subject: &'a [u8],
    /// `Publish.reply` (empty: none).
    pub reply: &'a [u8],
    /// `Publish.seq`.
    pub seq: u64,
    /// `Publish.payload`.
    pub payload: &'a [u8],
}

impl std::fmt::Debug for PublishView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishView")
            .field("subject", &self.subject.escape_ascii().to_string())
            .field("reply", &self.reply.escape_ascii().to_string())
            .field("seq", &self.seq)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

impl PublishView<'_> {
    /// The same message as prost decodes it: each non-empty field a slice
    /// of the batch (one reference count each).
    #[inline]
    pub fn to_owned(&self) -> crate::v1::Publish {
        crate::v1::Publish {
            subject: share(self.batch, self.subject),
            reply: share(self.batch, self.reply),
            headers: Vec::new(),
            seq: self.seq,
            payload: share(self.batch, self.payload),
        }
    }
}

/// Whether two byte strings are equal: `a == b`, with the short lengths a
/// subject has compared as two overlapping words inline rather than by a
/// call to `memcmp` (the publish path compares each subject with the last
/// one the shard's memo and its message template saw). A unit test and a
/// proptest hold it to `==`.
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    #[inline]
    fn ends<const N: usize>(a: &[u8], b: &[u8]) -> bool {
        a.first_chunk::<N>() == b.first_chunk::<N>() && a.last_chunk::<N>() == b.last_chunk::<N>()
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Longest first: most subjects are 16 bytes or more.
    if n >= 16 {
        if n <= 32 { ends::<16>(a, b) } else { a == b }
    } else if n >= 8 {
        ends::<8>(a, b)
    } else if n >= 4 {
        ends::<4>(a, b)
    } else {
        // 0 to 3 bytes: the first, middle and last cover them all.
        a.first() == b.first() && a.get(n / 2) == b.get(n / 2) && a.last() == b.last()
    }
}

/// Where `part` lies in `buf`, as a range of it: `Some(0..0)` when `part` is
/// empty, `None` when it is not within `buf`.
#[inline]
pub fn range_in(buf: &[u8], part: &[u8]) -> Option<Range<usize>> {
    if part.is_empty() {
        return Some(0..0);
    }
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let end = start.checked_add(part.len()).filter(|&e| e <= buf.len())?;
    Some(start..end)
}

/// `part` of `buf` as [`Bytes`]: a slice of `buf` (one reference count) when
/// `part` lies within it, empty without a count when it is empty, and a
/// copy otherwise (never the case for what this module hands out).
#[inline]
pub fn share(buf: &Bytes, part: &[u8]) -> Bytes {
    if part.is_empty() {
        return Bytes::new();
    }
    match range_in(buf, part) {
        Some(range) => buf.slice(range),
        None => Bytes::copy_from_slice(part),
    }
}

/// Decodes the frame body at `body` in `buf` (a read batch of several
/// frames). The common publish comes back as a [`PublishView`] borrowing
/// the batch; everything else as [`decode_body`] gives it. A range outside
/// `buf` is [`DecodeError::Malformed`].
#[inline]
pub fn decode_in(buf: &Bytes, body: Range<usize>) -> Result<Decoded<'_>, DecodeError> {
    if let Some(view) = publish_fast(buf, body.clone()) {
        return Ok(Decoded::Publish(view));
    }
    if buf.get(body.clone()).is_none() {
        return Err(DecodeError::Malformed);
    }
    decode_slow(buf.slice(body)).map(Decoded::Frame)
}

/// Everything the fast path does not take: prost decides.
fn decode_slow(body: Bytes) -> Result<Kind, DecodeError> {
    if several_fields(&body) {
        return Err(DecodeError::SeveralKinds);
    }
    Frame::decode(body)
        .map_err(|_| DecodeError::Malformed)?
        .kind
        .ok_or(DecodeError::UnknownKind)
}

/// `Frame` field 3 (`publish`), length-delimited.
const KEY_FRAME_PUBLISH: u8 = 3 << 3 | 2;
/// `Publish` fields `subject` (1), `reply` (2) and `payload` (15),
/// length-delimited, and `seq` (4), a varint; each key is one byte.
const KEY_SUBJECT: u8 = 1 << 3 | 2;
const KEY_REPLY: u8 = 2 << 3 | 2;
const KEY_SEQ: u8 = 4 << 3;
const KEY_PAYLOAD: u8 = 15 << 3 | 2;

/// The hot path's decoder: a body (`body` in `buf`) that is exactly one
/// `Frame.publish` whose fields are `subject`, `reply`, `seq` and
/// `payload`, each at most once and in field order. Returns `None` for
/// anything else (headers, another kind, unknown or repeated fields, a
/// truncated or overlong length, a range outside `buf`), leaving the verdict
/// to prost. The fields are borrowed from `buf`: nothing is counted.
#[expect(
    clippy::inline_always,
    reason = "measured when added: inlined, decode_body's callgrind count was 440 instructions, not 474"
)]
#[inline(always)]
fn publish_fast(buf: &Bytes, body: Range<usize>) -> Option<PublishView<'_>> {
    let b = buf.get(body)?;
    if b.first() != Some(&KEY_FRAME_PUBLISH) {
        return None;
    }
    let (len, n) = short_varint(&b[1..])?;
    let mut pos = 1 + n;
    if pos.checked_add(len)? != b.len() {
        return None;
    }
    let empty: &[u8] = &[];
    let (mut subject, mut reply, mut payload) = (empty, empty, empty);
    let mut seq = 0;
    let mut last = 0u8;
    while pos < b.len() {
        let key = b[pos];
        if key <= last || !matches!(key, KEY_SUBJECT | KEY_REPLY | KEY_SEQ | KEY_PAYLOAD) {
            return None;
        }
        last = key;
        if key == KEY_SEQ {
            let mut rest = &b[pos + 1..];
            let before = rest.len();
            seq = prost::encoding::decode_varint(&mut rest).ok()?;
            pos += 1 + before - rest.len();
            continue;
        }
        let (len, n) = short_varint(&b[pos + 1..])?;
        let start = pos + 1 + n;
        let end = start.checked_add(len)?;
        let field = b.get(start..end)?;
        match key {
            KEY_SUBJECT => subject = field,
            KEY_REPLY => reply = field,
            _ => payload = field,
        }
        pos = end;
    }
    Some(PublishView {
        batch: buf,
        subject,
        reply,
        seq,
        payload,
    })
}

/// Whether `b` holds more than its first top-level field. `false` when the
/// first field does not parse: prost gives the verdict on that.
fn several_fields(mut b: &[u8]) -> bool {
    use prost::encoding::decode_varint;
    let Ok(key) = decode_varint(&mut b) else {
        return false;
    };
    let skip = match key & 7 {
        0 => match decode_varint(&mut b) {
            Ok(_) => 0,
            Err(_) => return false,
        },
        1 => 8,
        2 => match decode_varint(&mut b).map(usize::try_from) {
            Ok(Ok(len)) => len,
            _ => return false,
        },
        5 => 4,
        _ => return false,
    };
    b.len() > skip
}

/// A varint of at most four bytes (values below 2^28, more than any frame
/// may hold) and its length; `None` for a longer or truncated one.
fn short_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in b.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Splits the first whole frame off `buf` and decodes it; `Ok(None)` when
/// `buf` holds only part of a frame. Convenient for clients; the server
/// manages its own buffers with [`frame_len`] and [`decode_body`].
pub fn decode(buf: &mut BytesMut, max_frame: u32) -> Result<Option<Kind>, DecodeError> {
    let Some(total) = frame_len(buf, max_frame)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(total).freeze();
    frame.advance(LEN_PREFIX);
    decode_body(frame).map(Some)
}

/// The encoded size of `kind` on the wire, prefix included.
pub fn encoded_len(kind: &Kind) -> usize {
    LEN_PREFIX + kind.encoded_len()
}

/// Appends `kind` as one frame (prefix and body) to `dst`.
pub fn encode(kind: &Kind, dst: &mut impl BufMut) -> Result<(), EncodeError> {
    let len = kind.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| EncodeError::TooLarge(len))?;
    dst.put_u32(prefix);
    kind.encode(dst);
    Ok(())
}

/// Field numbers shared by the hand-written encoders below. They must match
/// `client.proto`; the golden tests fail if they drift.
mod tags {
    pub(super) const FRAME_PUBLISH: u32 = 3;
    pub(super) const FRAME_MESSAGE: u32 = 6;
    pub(super) const PUBLISH_SUBJECT: u32 = 1;
    pub(super) const PUBLISH_REPLY: u32 = 2;
    pub(super) const PUBLISH_HEADERS: u32 = 3;
    pub(super) const MESSAGE_SID: u32 = 1;
    pub(super) const MESSAGE_SUBJECT: u32 = 2;
    pub(super) const MESSAGE_REPLY: u32 = 3;
    pub(super) const MESSAGE_HEADERS: u32 = 4;
    pub(super) const MESSAGE_STATUS: u32 = 5;
    pub(super) const PAYLOAD: u32 = 15;
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

fn put_bytes_field(tag: u32, value: &[u8], dst: &mut impl BufMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, dst);
        encode_varint(value.len() as u64, dst);
        dst.put_slice(value);
    }
}

fn put_headers(tag: u32, headers: &[Header], dst: &mut impl BufMut) {
    for h in headers {
        encode_key(tag, WireType::LengthDelimited, dst);
        encode_varint(h.encoded_len() as u64, dst);
        h.encode_raw(dst);
    }
}

fn headers_len(tag: u32, headers: &[Header]) -> usize {
    headers
        .iter()
        .map(|h| {
            let l = h.encoded_len();
            key_len(tag) + encoded_len_varint(l as u64) + l
        })
        .sum()
}

/// The payload field's key and length (nothing for an empty payload).
fn put_payload_len(payload_len: usize, dst: &mut impl BufMut) {
    if payload_len > 0 {
        encode_key(tags::PAYLOAD, WireType::LengthDelimited, dst);
        encode_varint(payload_len as u64, dst);
    }
}

/// Encodes a `Message` frame for many subscribers without re-encoding the
/// shared parts. Reuse one template per shard: [`MessageTemplate::prepare`]
/// overwrites it and allocates only when a message is larger than any before.
/// A plain message (no reply, headers or status) on the subject of the last
/// plain one keeps the encoded subject and rewrites only the payload length:
/// a publisher streaming on one subject pays for its subject once.
#[derive(Debug, Default)]
pub struct MessageTemplate {
    /// subject, reply, headers, status and the payload's key and length.
    common: Vec<u8>,
    payload_len: usize,
    /// When the last message was plain: the length of `common` before the
    /// payload's key (the encoded subject field alone).
    plain_head: Option<usize>,
}

impl MessageTemplate {
    /// An empty template; call [`prepare`](Self::prepare) before use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes the parts every subscriber shares.
    pub fn prepare(
        &mut self,
        subject: &[u8],
        reply: &[u8],
        headers: &[Header],
        status: i32,
        payload_len: usize,
    ) {
        let plain = reply.is_empty() && headers.is_empty() && status == 0;
        if plain
            && let Some(head) = self.plain_head
            && head == bytes_field_len(tags::MESSAGE_SUBJECT, subject.len())
            && self
                .common
                .get(head - subject.len()..head)
                .is_some_and(|s| same_bytes(s, subject))
        {
            // The same subject field (its key and length follow from the
            // length): only the payload part changes.
            if payload_len != self.payload_len {
                self.common.truncate(head);
                put_payload_len(payload_len, &mut self.common);
                self.payload_len = payload_len;
            }
            return;
        }
        let c = &mut self.common;
        c.clear();
        put_bytes_field(tags::MESSAGE_SUBJECT, subject, c);
        put_bytes_field(tags::MESSAGE_REPLY, reply, c);
        put_headers(tags::MESSAGE_HEADERS, headers, c);
        if status != 0 {
            encode_key(tags::MESSAGE_STATUS, WireType::Varint, c);
            // Negative enum values encode as 10-byte varints, as in prost.
            encode_varint(i64::from(status).cast_unsigned(), c);
        }
        self.plain_head = plain.then_some(c.len());
        put_payload_len(payload_len, c);
        self.payload_len = payload_len;
    }

    fn message_len(&self, sid: u64) -> usize {
        let sid_len = if sid == 0 {
            0
        } else {
            key_len(tags::MESSAGE_SID) + encoded_len_varint(sid)
        };
        sid_len + self.common.len() + self.payload_len
    }

    /// Total bytes on the wire for `sid`, prefix and payload included.
    pub fn frame_len(&self, sid: u64) -> usize {
        let m = self.message_len(sid);
        LEN_PREFIX + key_len(tags::FRAME_MESSAGE) + encoded_len_varint(m as u64) + m
    }

    /// Appends everything of the frame for `sid` that precedes the payload.
    /// The caller sends the payload bytes right after. Inline: it runs once
    /// per delivery, and whether thin LTO inlines it across crates changes
    /// with unrelated code (measured: 30 instructions per publish).
    #[inline]
    pub fn write_prefix(&self, sid: u64, dst: &mut impl BufMut) -> Result<(), EncodeError> {
        let m = self.message_len(sid);
        let body = key_len(tags::FRAME_MESSAGE) + encoded_len_varint(m as u64) + m;
        let prefix = u32::try_from(body).map_err(|_| EncodeError::TooLarge(body))?;
        // Assembled on the stack and appended in one call: this runs once
        // per delivery, and byte-at-a-time `BufMut` writes cost more than
        // the bytes.
        let mut head = [0u8; PREFIX_MAX];
        head[..LEN_PREFIX].copy_from_slice(&prefix.to_be_bytes());
        let mut n = LEN_PREFIX;
        n = put_varint(
            &mut head,
            n,
            key(tags::FRAME_MESSAGE, WireType::LengthDelimited),
        );
        n = put_varint(&mut head, n, m as u64);
        if sid != 0 {
            n = put_varint(&mut head, n, key(tags::MESSAGE_SID, WireType::Varint));
            n = put_varint(&mut head, n, sid);
        }
        dst.put_slice(&head[..n]);
        dst.put_slice(&self.common);
        Ok(())
    }
}

/// The most bytes before `common` in a `Message` frame: the length prefix,
/// two keys (at most 5 bytes each) and two varints (at most 10 each).
const PREFIX_MAX: usize = LEN_PREFIX + 2 * (5 + 10);

/// A field key's value (`tag << 3 | wire type`), as prost encodes it.
const fn key(tag: u32, wire: WireType) -> u64 {
    ((tag as u64) << 3) | wire as u64
}

/// Writes `v` as a protobuf varint at `buf[at..]`; returns the end.
/// `buf` has room: callers size it for the longest varint (10 bytes).
fn put_varint(buf: &mut [u8; PREFIX_MAX], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        buf[at] = (v as u8) | 0x80;
        v >>= 7;
        at += 1;
    }
    buf[at] = v as u8;
    at + 1
}

/// Appends everything of a `Publish` frame that precedes its payload; the
/// caller sends `payload_len` payload bytes right after. Lets clients and load
/// generators publish with a vectored write, like the server's fan-out.
pub fn write_publish_prefix(
    subject: &[u8],
    reply: &[u8],
    headers: &[Header],
    payload_len: usize,
    dst: &mut impl BufMut,
) -> Result<(), EncodeError> {
    let m = bytes_field_len(tags::PUBLISH_SUBJECT, subject.len())
        + bytes_field_len(tags::PUBLISH_REPLY, reply.len())
        + headers_len(tags::PUBLISH_HEADERS, headers)
        + bytes_field_len(tags::PAYLOAD, payload_len);
    let body = key_len(tags::FRAME_PUBLISH) + encoded_len_varint(m as u64) + m;
    let prefix = u32::try_from(body).map_err(|_| EncodeError::TooLarge(body))?;
    dst.put_u32(prefix);
    encode_key(tags::FRAME_PUBLISH, WireType::LengthDelimited, dst);
    encode_varint(m as u64, dst);
    put_bytes_field(tags::PUBLISH_SUBJECT, subject, dst);
    put_bytes_field(tags::PUBLISH_REPLY, reply, dst);
    put_headers(tags::PUBLISH_HEADERS, headers, dst);
    if payload_len > 0 {
        encode_key(tags::PAYLOAD, WireType::LengthDelimited, dst);
        encode_varint(payload_len as u64, dst);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, MessageStatus};
    use proptest::prelude::*;

    fn header(k: &'static [u8], v: &'static [u8]) -> Header {
        Header {
            key: Bytes::from_static(k),
            value: Bytes::from_static(v),
        }
    }

    fn roundtrip(kind: &Kind) {
        let mut buf = BytesMut::new();
        encode(kind, &mut buf).unwrap();
        assert_eq!(buf.len(), encoded_len(kind));
        let decoded = decode(&mut buf, u32::MAX).unwrap().unwrap();
        assert_eq!(&decoded, kind);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_kind_round_trips() {
        roundtrip(&Kind::Connect(v1::Connect {
            protocol_version: 1,
            credential: "secret".into(),
            client_name: "n".into(),
            client_kind: v1::ClientKind::Agent.into(),
            client_version: "0.1".into(),
            no_echo: true,
        }));
        roundtrip(&Kind::Welcome(v1::Welcome {
            protocol_version: 1,
            protocol_minor: 0,
            server_id: "s".into(),
            session_id: 7,
            limits: Some(v1::Limits {
                max_payload: 1,
                max_frame: 2,
                max_subscriptions: 3,
                max_headers: 4,
                max_subject_len: 5,
                ping_interval_ms: 6,
                max_pending_bytes: 7,
            }),
            shard: 1,
            server_version: "0.1.0".into(),
            tenant: "t".into(),
        }));
        roundtrip(&Kind::Publish(v1::Publish {
            subject: Bytes::from_static(b"a.b"),
            reply: Bytes::from_static(b"r"),
            headers: vec![header(b"k", b"v")],
            seq: 0,
            payload: Bytes::from_static(b"hello"),
        }));
        roundtrip(&Kind::Subscribe(v1::Subscribe {
            sid: 1,
            pattern: Bytes::from_static(b"a.*"),
            queue_group: Bytes::from_static(b"q"),
        }));
        roundtrip(&Kind::Unsubscribe(v1::Unsubscribe {
            sid: 1,
            after_messages: 3,
        }));
        roundtrip(&Kind::Message(v1::Message {
            sid: 9,
            subject: Bytes::from_static(b"a.b"),
            reply: Bytes::new(),
            headers: vec![],
            status: MessageStatus::NoResponders.into(),
            payload: Bytes::new(),
        }));
        roundtrip(&Kind::Ping(v1::Ping {}));
        roundtrip(&Kind::Pong(v1::Pong {}));
        roundtrip(&Kind::Error(v1::Error {
            code: v1::ErrorCode::SlowConsumer.into(),
            message: "slow".into(),
            close: true,
            sid: 0,
            seq: 0,
        }));
    }

    #[test]
    fn length_is_checked_before_the_body_arrives() {
        let buf = 1_000_001u32.to_be_bytes();
        assert_eq!(
            frame_len(&buf, 1_000_000),
            Err(DecodeError::TooLarge {
                len: 1_000_001,
                max: 1_000_000
            })
        );
        assert_eq!(frame_len(&buf[..3], 10), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 5, 1, 2], 10), Ok(None));
    }

    #[test]
    fn truncated_garbage_and_empty_frames_are_errors() {
        // A frame whose body is cut inside the publish message.
        let mut whole = BytesMut::new();
        encode(
            &Kind::Publish(v1::Publish {
                subject: Bytes::from_static(b"a"),
                payload: Bytes::from_static(b"xyz"),
                ..Default::default()
            }),
            &mut whole,
        )
        .unwrap();
        let body = whole.split_off(LEN_PREFIX).freeze();
        assert_eq!(
            decode_body(body.slice(..body.len() - 1)),
            Err(DecodeError::Malformed)
        );
        assert_eq!(
            decode_body(Bytes::from_static(&[0xff, 0xff, 0xff])),
            Err(DecodeError::Malformed)
        );
        assert_eq!(decode_body(Bytes::new()), Err(DecodeError::UnknownKind));
        // An unknown field only: valid protobuf, no kind.
        assert_eq!(
            decode_body(Bytes::from_static(&[0xa0, 0x06, 0x01])),
            Err(DecodeError::UnknownKind)
        );
    }

    /// A frame holds exactly one kind. protobuf would act on the last of
    /// several (and merge one kind sent twice); the codec refuses instead.
    #[test]
    fn a_body_with_more_than_one_field_is_refused() {
        let ping = [0x3a, 0x00]; // field 7 (ping), empty
        let pong = [0x42, 0x00]; // field 8 (pong), empty
        assert_eq!(
            decode_body(Bytes::copy_from_slice(&ping)),
            Ok(Kind::Ping(v1::Ping {}))
        );
        for body in [
            [ping, pong].concat(),
            [pong, ping].concat(),
            [ping, ping].concat(),
            // A kind, then an unknown varint field 100.
            [&ping[..], &[0xa0, 0x06, 0x01]].concat(),
        ] {
            assert_eq!(
                decode_body(Bytes::from(body.clone())),
                Err(DecodeError::SeveralKinds),
                "{body:02x?}"
            );
        }
        // A publish (the hot path's shape) followed by a second kind.
        let mut whole = BytesMut::new();
        encode(
            &Kind::Publish(v1::Publish {
                subject: Bytes::from_static(b"a"),
                payload: Bytes::from_static(b"x"),
                ..Default::default()
            }),
            &mut whole,
        )
        .unwrap();
        let mut body = whole.split_off(LEN_PREFIX);
        body.extend_from_slice(&ping);
        assert_eq!(decode_body(body.freeze()), Err(DecodeError::SeveralKinds));
    }

    #[test]
    fn decoded_payload_shares_the_receive_buffer() {
        let mut buf = BytesMut::new();
        let payload = vec![7u8; 512];
        encode(
            &Kind::Publish(v1::Publish {
                subject: Bytes::from_static(b"a"),
                payload: Bytes::from(payload),
                ..Default::default()
            }),
            &mut buf,
        )
        .unwrap();
        let frozen = buf.freeze();
        let range = frozen.as_ptr_range();
        let Kind::Publish(p) = decode_body(frozen.slice(LEN_PREFIX..)).unwrap() else {
            panic!("not a publish");
        };
        assert!(range.contains(&p.payload.as_ptr()), "payload was copied");
        assert!(range.contains(&p.subject.as_ptr()), "subject was copied");
    }

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    /// `body` between `around.0` and `around.1`, as a frame sits in a read
    /// batch, and its range there.
    fn within(body: &[u8], around: &(Bytes, Bytes)) -> (Bytes, std::ops::Range<usize>) {
        let mut buf = around.0.to_vec();
        let start = buf.len();
        buf.extend_from_slice(body);
        let end = buf.len();
        buf.extend_from_slice(&around.1);
        (Bytes::from(buf), start..end)
    }

    fn arb_headers() -> impl Strategy<Value = Vec<Header>> {
        proptest::collection::vec(
            (arb_bytes(8), arb_bytes(8)).prop_map(|(key, value)| Header { key, value }),
            0..3,
        )
    }

    #[test]
    fn same_bytes_is_equality_at_every_length_and_position() {
        for n in 0..=70usize {
            let a: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            assert!(same_bytes(&a, &a.clone()), "len {n}");
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x20;
                assert!(!same_bytes(&a, &b), "len {n}, byte {i}");
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(
                !same_bytes(&a, &longer) && !same_bytes(&longer, &a),
                "len {n}"
            );
        }
    }

    proptest! {
        #[test]
        fn same_bytes_agrees_with_eq(
            a in proptest::collection::vec(any::<u8>(), 0..48),
            at in any::<proptest::sample::Index>(),
            flip in 0u8..3,
            longer in any::<bool>(),
        ) {
            let mut b = a.clone();
            if flip > 0 && !b.is_empty() {
                b[at.index(a.len())] ^= flip;
            }
            if longer {
                b.push(flip);
            }
            prop_assert_eq!(same_bytes(&a, &b), a == b);
            prop_assert_eq!(same_bytes(&b, &a), a == b);
        }

        #[test]
        fn template_matches_prost(
            sid in any::<u64>(),
            subject in arb_bytes(40),
            reply in arb_bytes(40),
            headers in arb_headers(),
            status in prop_oneof![Just(0i32), Just(1), any::<i32>()],
            payload in arb_bytes(300),
        ) {
            let mut t = MessageTemplate::new();
            t.prepare(&subject, &reply, &headers, status, payload.len());
            let mut fast = Vec::new();
            t.write_prefix(sid, &mut fast).unwrap();
            fast.extend_from_slice(&payload);
            prop_assert_eq!(fast.len(), t.frame_len(sid));

            let mut slow = Vec::new();
            encode(&Kind::Message(v1::Message { sid, subject, reply, headers, status, payload }), &mut slow).unwrap();
            prop_assert_eq!(hex::encode(fast), hex::encode(slow));
        }

        /// One template reused over a stream of messages (subjects,
        /// payload sizes and plain or not, repeating often) encodes each
        /// exactly as a fresh template does.
        #[test]
        fn a_reused_template_encodes_as_a_fresh_one(
            messages in proptest::collection::vec(
                (
                    prop_oneof![Just(&b"a.b"[..]), Just(&b"a.bc"[..]), Just(&b""[..]), Just(&[b'x'; 130][..])],
                    prop_oneof![Just(&b""[..]), Just(&b"_INBOX.1"[..])],
                    prop_oneof![Just(0i32), Just(3)],
                    prop_oneof![Just(0usize), Just(5), Just(200)],
                ),
                1..12,
            ),
        ) {
            let mut reused = MessageTemplate::new();
            for (subject, reply, status, payload_len) in messages {
                reused.prepare(subject, reply, &[], status, payload_len);
                let mut fresh = MessageTemplate::new();
                fresh.prepare(subject, reply, &[], status, payload_len);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                reused.write_prefix(7, &mut a).unwrap();
                fresh.write_prefix(7, &mut b).unwrap();
                prop_assert_eq!(a, b);
                prop_assert_eq!(reused.frame_len(7), fresh.frame_len(7));
            }
        }

        #[test]
        fn publish_prefix_matches_prost(
            subject in arb_bytes(40),
            reply in arb_bytes(40),
            headers in arb_headers(),
            payload in arb_bytes(300),
        ) {
            let mut fast = Vec::new();
            write_publish_prefix(&subject, &reply, &headers, payload.len(), &mut fast).unwrap();
            fast.extend_from_slice(&payload);
            let mut slow = Vec::new();
            encode(&Kind::Publish(v1::Publish { subject, reply, headers, seq: 0, payload }), &mut slow).unwrap();
            prop_assert_eq!(hex::encode(fast), hex::encode(slow));
        }

        #[test]
        fn publish_fast_path_decodes_what_prost_encodes(
            subject in arb_bytes(40),
            reply in arb_bytes(40),
            seq in prop_oneof![Just(0u64), any::<u64>()],
            payload in arb_bytes(300),
            around in (arb_bytes(8), arb_bytes(8)),
        ) {
            let publish = v1::Publish { subject, reply, headers: Vec::new(), seq, payload };
            let body = Frame { kind: Some(Kind::Publish(publish.clone())) }.encode_to_vec();
            let (buf, range) = within(&body, &around);
            let view = publish_fast(&buf, range.clone());
            prop_assert_eq!(view.map(|v| v.to_owned()), Some(publish.clone()));
            // Every field is borrowed from the batch: making it owned
            // counts a reference, it never copies.
            let within_buf = |f: &[u8]| {
                let start = buf.as_ptr() as usize;
                f.is_empty()
                    || (start <= f.as_ptr() as usize
                        && f.as_ptr() as usize + f.len() <= start + buf.len())
            };
            prop_assert!(view.is_some_and(|v| [v.subject, v.reply, v.payload].into_iter().all(within_buf)));
            prop_assert!(matches!(
                decode_in(&buf, range),
                Ok(Decoded::Publish(v)) if v.to_owned() == publish
            ));
        }

        /// Bodies built from publish-like fields with wrong, repeated,
        /// unordered and unknown keys and lengths off by one: whatever the
        /// fast path accepts, prost decodes to the same frame.
        #[test]
        fn publish_fast_path_agrees_with_prost(
            fields in proptest::collection::vec(
                (
                    prop_oneof![
                        Just(KEY_SUBJECT), Just(KEY_REPLY), Just(KEY_SEQ), Just(KEY_PAYLOAD),
                        Just(3u8 << 3 | 2), Just(KEY_FRAME_PUBLISH), any::<u8>()
                    ],
                    arb_bytes(20),
                    prop_oneof![4 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)],
                ),
                0..5,
            ),
            outer_skew in prop_oneof![4 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)],
            overlong in any::<bool>(),
            around in (arb_bytes(8), arb_bytes(8)),
        ) {
            let mut inner = Vec::new();
            for (key, value, skew) in &fields {
                inner.push(*key);
                let len = (value.len() as u64).saturating_add_signed(i64::from(*skew));
                if overlong {
                    // The same length in one more byte than needed.
                    encode_varint(len, &mut inner);
                    let last = inner.len() - 1;
                    inner[last] |= 0x80;
                    inner.push(0);
                } else {
                    encode_varint(len, &mut inner);
                }
                inner.extend_from_slice(value);
            }
            let mut body = vec![KEY_FRAME_PUBLISH];
            encode_varint((inner.len() as u64).saturating_add_signed(i64::from(outer_skew)), &mut body);
            body.extend_from_slice(&inner);
            // In the middle of a batch: bytes around the body never change
            // the fast path's verdict (it reads nothing outside its range).
            let (buf, range) = within(&body, &around);
            if let Some(fast) = publish_fast(&buf, range.clone()) {
                let slow = Frame::decode(Bytes::from(body)).map(|f| f.kind);
                prop_assert_eq!(slow, Ok(Some(Kind::Publish(fast.to_owned()))));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            // Either an error, a partial frame, or frames until the buffer is drained.
            while let Ok(Some(_)) = decode(&mut buf, 256) {}
        }
    }
}
