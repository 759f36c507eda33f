//! The N×N mesh of SPSC rings between shards.
//!
//! Shard `i` owns a [`Producer`] towards every other shard and a [`Consumer`]
//! from every other shard (`rtrb` rings, lock-free, one writer and one reader
//! each). Everything that crosses cores is a [`PeerMsg`]: interest updates,
//! their acknowledgements, and message copies. Payloads are never copied:
//! they cross inside the publisher's read batch, or as [`Bytes`] for an
//! owned publish.
//!
//! Message copies cross in batches: a publish stages its copy on the link
//! ([`Link::stage`]), and the link seals what is staged into one ring entry
//! ([`PeerMsg::Deliver`]) at the end of the read batch, when
//! [`MAX_BATCH`] copies are staged, or before any other message is sent on
//! the link, so everything on one link stays in the order it was produced.
//! One ring slot, one allocation and one doorbell check per batch, not per
//! message.
//!
//! A copy of a publish borrowed from its read batch ([`Body::InBatch`])
//! carries its fields as offsets into that batch, and the ring entry holds
//! each batch once ([`Copies::batches`]): the publishing core takes one
//! reference count per batch and entry, not one per field and message, and
//! the receiving core slices what it queues itself. So, unless the
//! publishing core also delivers from that buffer, its count's cache line
//! is not passed between cores for every message.
//!
//! A full ring never drops anything: messages wait in the link's local
//! overflow queue, in order, and the sending shard stops reading from its
//! publishers while any overflow queue holds more than its bound of
//! message copies (back-pressure; a batch counts as its copies).

use std::collections::VecDeque;
use std::sync::Arc;

use std::ops::Range;

use arqonbus_core::router::{GroupKey, InterestUpdate};
use arqonbus_core::session::Publish;
use arqonbus_core::{ShardId, TenantId};
use bytes::Bytes;
use rtrb::{Consumer, Producer, PushError, RingBuffer};
use smallvec::SmallVec;

use crate::doorbell::Doorbell;

/// A message copy for another shard's subscribers.
#[derive(Debug)]
pub(crate) struct RemoteMessage {
    pub(crate) tenant: TenantId,
    pub(crate) body: Body,
    /// Queue groups the receiving shard must serve.
    pub(crate) groups: SmallVec<[GroupKey; 1]>,
    /// Set for a sampled message: its latency and its spans (boxed, so
    /// the unsampled majority carries one word).
    pub(crate) sample: Option<Box<Sample>>,
}

/// What a copy carries.
#[derive(Debug)]
pub(crate) enum Body {
    /// A publish borrowed from a read batch: its fields as offsets into
    /// `Copies::batches[batch]` (the subject was validated on the sending
    /// shard; an empty `reply` is none).
    InBatch {
        batch: u32,
        subject: Range<u32>,
        reply: Range<u32>,
        payload: Range<u32>,
    },
    /// Any other publish (headers, or held by a rate limit), owned.
    Owned(Box<Publish>),
}

/// The message copies of one ring entry and the read batches they lie in.
#[derive(Debug, Default)]
pub(crate) struct Copies {
    /// Each batch once, in the order copies first named it.
    pub(crate) batches: SmallVec<[Bytes; 2]>,
    /// The copies, in publish order.
    pub(crate) msgs: Vec<RemoteMessage>,
}

impl Copies {
    /// The index of `batch` in [`Copies::batches`], taking a reference
    /// count the first time a copy names it. Copies of one read batch are
    /// staged one after another, so the last one is the only candidate.
    pub(crate) fn hold(&mut self, batch: &Bytes) -> u32 {
        let same = |b: &Bytes| b.as_ptr() == batch.as_ptr() && b.len() == batch.len();
        if !self.batches.last().is_some_and(same) {
            self.batches.push(batch.clone());
        }
        // At most MAX_BATCH copies, so at most as many batches.
        u32::try_from(self.batches.len() - 1).unwrap_or(u32::MAX)
    }
}

/// A sampled message, one publish in `latency_sample_every`.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// When the publish was read, for the publish-to-deliver latency.
    pub(crate) at: std::time::Instant,
    /// Its `publish` span, the parent of each receiving shard's `deliver`
    /// (disabled, and free to clone, unless a subscriber wants it).
    pub(crate) span: tracing::Span,
}

/// Everything shards say to each other.
#[derive(Debug)]
pub(crate) enum PeerMsg {
    /// The sender's interest changed; `seq` increases per sender.
    Interest { seq: u64, update: InterestUpdate },
    /// The sender applied the receiver's interest updates up to `seq`.
    InterestAck { seq: u64 },
    /// A `Ping` on the sender after message copies crossed: numbered like
    /// an interest update and acknowledged the same way, so its `Pong`
    /// waits until every copy sent before it was routed here.
    Mark { seq: u64 },
    /// Messages for the receiver's subscribers, in the order they were
    /// published (at most [`MAX_BATCH`]).
    Deliver(Copies),
    /// A subscriber of `tenant` with the stall-publisher policy is full:
    /// pause the tenant's publishers until `until` (or `Unstall`).
    Stall {
        tenant: TenantId,
        until: std::time::Instant,
    },
    /// The stalled subscriber caught up.
    Unstall { tenant: TenantId },
}

/// Most message copies one ring entry carries.
pub(crate) const MAX_BATCH: usize = 64;

/// Message copies `msg` carries (1 for anything else: it weighs as one).
fn weight(msg: &PeerMsg) -> usize {
    match msg {
        PeerMsg::Deliver(copies) => copies.msgs.len(),
        _ => 1,
    }
}

/// One direction of one shard pair, seen from the sending shard.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) peer: ShardId,
    tx: Producer<PeerMsg>,
    /// Copies staged since the last seal, in publish order.
    staged: Copies,
    overflow: VecDeque<PeerMsg>,
    /// The weight of `overflow` (message copies).
    overflow_weight: usize,
    doorbell: Arc<Doorbell>,
    /// Pushed since the peer's doorbell was last rung.
    unsignalled: bool,
    /// Copies were sealed since the last [`Link::take_crossed`].
    crossed: bool,
}

impl Link {
    fn new(peer: ShardId, tx: Producer<PeerMsg>, doorbell: Arc<Doorbell>) -> Self {
        Self {
            peer,
            tx,
            staged: Copies::default(),
            overflow: VecDeque::new(),
            overflow_weight: 0,
            doorbell,
            unsignalled: false,
            crossed: false,
        }
    }

    /// Whether message copies went (or are staged) to the peer since the
    /// last call.
    pub(crate) fn take_crossed(&mut self) -> bool {
        let crossed = self.crossed || !self.staged.msgs.is_empty();
        self.crossed = false;
        crossed
    }

    /// The index to name `batch` by in the next staged copy
    /// ([`Body::InBatch`]); stage that copy before anything else.
    pub(crate) fn hold(&mut self, batch: &Bytes) -> u32 {
        self.staged.hold(batch)
    }

    /// Stages a message copy for the peer; it leaves with the next seal.
    /// Returns the copies that had to wait in the overflow queue (a seal
    /// forced by a full batch, with the ring full).
    pub(crate) fn stage(&mut self, m: RemoteMessage) -> usize {
        self.staged.msgs.push(m);
        if self.staged.msgs.len() >= MAX_BATCH {
            self.seal()
        } else {
            0
        }
    }

    /// Sends the staged copies as one ring entry. Returns the copies that
    /// had to wait in the overflow queue (the ring was full).
    fn seal(&mut self) -> usize {
        if self.staged.msgs.is_empty() {
            return 0;
        }
        // The batch's buffer goes to the peer (freed there); the next one
        // starts at the size this one reached.
        let fresh = Copies {
            batches: SmallVec::new(),
            msgs: Vec::with_capacity(self.staged.msgs.len()),
        };
        let copies = std::mem::replace(&mut self.staged, fresh);
        let n = copies.msgs.len();
        self.crossed = true;
        if self.push(PeerMsg::Deliver(copies)) {
            0
        } else {
            n
        }
    }

    /// Queues `msg` for the peer after anything staged. Returns false when
    /// it had to wait in the overflow queue (the ring was full).
    pub(crate) fn send(&mut self, msg: PeerMsg) -> bool {
        self.seal();
        self.push(msg)
    }

    fn push(&mut self, msg: PeerMsg) -> bool {
        if self.overflow.is_empty() {
            match self.tx.push(msg) {
                Ok(()) => {
                    self.unsignalled = true;
                    return true;
                }
                Err(PushError::Full(msg)) => self.wait(msg),
            }
        } else {
            self.wait(msg);
        }
        false
    }

    fn wait(&mut self, msg: PeerMsg) {
        self.overflow_weight += weight(&msg);
        self.overflow.push_back(msg);
    }

    /// Seals what is staged, moves overflow into the ring while it has
    /// room, and rings the peer's doorbell if anything was pushed since the
    /// last ring. Returns the copies the seal had to leave waiting.
    pub(crate) fn flush(&mut self) -> usize {
        let waiting = self.seal();
        while let Some(msg) = self.overflow.pop_front() {
            let w = weight(&msg);
            match self.tx.push(msg) {
                Ok(()) => {
                    self.overflow_weight -= w;
                    self.unsignalled = true;
                }
                Err(PushError::Full(msg)) => {
                    self.overflow.push_front(msg);
                    break;
                }
            }
        }
        if self.unsignalled {
            self.unsignalled = false;
            self.doorbell.ring();
        }
        waiting
    }

    /// Message copies (and other messages) waiting because the ring was
    /// full.
    pub(crate) fn overflow_len(&self) -> usize {
        self.overflow_weight
    }

    /// Ring slots in use (an occupancy gauge).
    pub(crate) fn ring_used(&self) -> usize {
        self.tx.buffer().capacity() - self.tx.slots()
    }
}

/// The receiving end of one shard pair.
#[derive(Debug)]
pub(crate) struct Inbox {
    pub(crate) peer: ShardId,
    pub(crate) rx: Consumer<PeerMsg>,
}

/// What one shard takes from the mesh when it starts.
#[derive(Debug)]
pub(crate) struct ShardMesh {
    pub(crate) links: Vec<Link>,
    pub(crate) inboxes: Vec<Inbox>,
}

/// Builds the full mesh for `doorbells.len()` shards.
pub(crate) fn build(doorbells: &[Arc<Doorbell>], capacity: usize) -> Vec<ShardMesh> {
    let n = doorbells.len();
    let mut meshes: Vec<ShardMesh> = (0..n)
        .map(|_| ShardMesh {
            links: Vec::with_capacity(n.saturating_sub(1)),
            inboxes: Vec::with_capacity(n.saturating_sub(1)),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from == to {
                continue;
            }
            let (tx, rx) = RingBuffer::new(capacity);
            let (from_id, to_id) = (ShardId(from as u16), ShardId(to as u16));
            meshes[from]
                .links
                .push(Link::new(to_id, tx, doorbells[to].clone()));
            meshes[to].inboxes.push(Inbox { peer: from_id, rx });
        }
    }
    meshes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

    use arqonbus_core::router::InterestUpdate;
    use arqonbus_core::subject::{Pattern, Subject};
    use bytes::Bytes;

    use super::*;

    fn copy(n: u8) -> RemoteMessage {
        RemoteMessage {
            tenant: TenantId(1),
            body: Body::Owned(Box::new(Publish {
                subject: Subject::parse(Bytes::from_static(b"a.b"), 256).unwrap(),
                reply: None,
                headers: Vec::new(),
                payload: Bytes::from(vec![n]),
                seq: 0,
            })),
            groups: SmallVec::new(),
            sample: None,
        }
    }

    fn interest() -> PeerMsg {
        PeerMsg::Interest {
            seq: 1,
            update: InterestUpdate {
                tenant: TenantId(1),
                pattern: Pattern::parse(Bytes::from_static(b"a.>"), 256).unwrap(),
                queue: None,
                count: 1,
            },
        }
    }

    fn pair(capacity: usize) -> (Link, Consumer<PeerMsg>, std::os::fd::OwnedFd) {
        let (bell, rx_fd) = Doorbell::new().unwrap();
        let (tx, rx) = RingBuffer::new(capacity);
        (Link::new(ShardId(1), tx, Arc::new(bell)), rx, rx_fd)
    }

    /// The first payload byte of each copy in an entry.
    fn first_bytes(copies: &Copies) -> Vec<u8> {
        copies
            .msgs
            .iter()
            .map(|m| match &m.body {
                Body::Owned(p) => p.payload[0],
                Body::InBatch { batch, payload, .. } => {
                    copies.batches[*batch as usize][payload.start as usize]
                }
            })
            .collect()
    }

    /// What the peer pops: payload bytes of each batch, `None` for others.
    fn popped(rx: &mut Consumer<PeerMsg>) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        while let Ok(msg) = rx.pop() {
            out.push(match msg {
                PeerMsg::Deliver(copies) => Some(first_bytes(&copies)),
                _ => None,
            });
        }
        out
    }

    #[test]
    fn staged_copies_cross_as_one_entry_in_order_before_later_messages() {
        let (mut link, mut rx, _fd) = pair(16);
        for n in 0..3 {
            assert_eq!(link.stage(copy(n)), 0);
        }
        assert!(rx.is_empty(), "nothing crosses before a seal");
        assert!(link.send(interest()));
        link.stage(copy(3));
        assert_eq!(link.flush(), 0);
        assert_eq!(
            popped(&mut rx),
            vec![Some(vec![0, 1, 2]), None, Some(vec![3])]
        );
    }

    fn in_batch(batch: u32, at: u32) -> RemoteMessage {
        RemoteMessage {
            tenant: TenantId(1),
            body: Body::InBatch {
                batch,
                subject: 0..0,
                reply: 0..0,
                payload: at..at + 1,
            },
            groups: SmallVec::new(),
            sample: None,
        }
    }

    #[test]
    fn copies_hold_each_read_batch_once_in_their_entry() {
        let (mut link, mut rx, _fd) = pair(16);
        let first = Bytes::from(vec![1u8, 2, 3]);
        let second = Bytes::from(vec![7u8, 8]);
        for (batch, at) in [(&first, 0), (&first, 1), (&second, 1), (&first, 2)] {
            let index = link.hold(batch);
            link.stage(in_batch(index, at));
        }
        link.stage(copy(9));
        link.flush();
        let Ok(PeerMsg::Deliver(copies)) = rx.pop() else {
            panic!("one entry");
        };
        // `first` again after `second`: held a second time, never more
        // than once per run of copies.
        assert_eq!(copies.batches.len(), 3);
        let names: Vec<u32> = copies
            .msgs
            .iter()
            .filter_map(|m| match m.body {
                Body::InBatch { batch, .. } => Some(batch),
                Body::Owned(_) => None,
            })
            .collect();
        assert_eq!(names, [0, 0, 1, 2]);
        let entry = PeerMsg::Deliver(copies);
        assert_eq!(weight(&entry), 5);
        link.stage(copy(0));
        link.flush();
        assert_eq!(popped(&mut rx), vec![Some(vec![0])]);
        let PeerMsg::Deliver(copies) = entry else {
            unreachable!()
        };
        assert_eq!(first_bytes(&copies), [1, 2, 8, 3, 9]);
    }

    #[test]
    fn a_full_batch_is_sealed_at_once() {
        let (mut link, mut rx, _fd) = pair(16);
        for n in 0..MAX_BATCH {
            link.stage(copy(n as u8));
        }
        let got = popped(&mut rx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().map(Vec::len), Some(MAX_BATCH));
    }

    #[test]
    fn overflow_is_weighed_in_copies_and_keeps_the_order() {
        let (mut link, mut rx, _fd) = pair(1);
        link.stage(copy(0));
        assert_eq!(link.flush(), 0, "the ring had room");
        for n in 1..=5 {
            link.stage(copy(n));
        }
        assert_eq!(link.flush(), 5, "ring full: the batch waits");
        assert!(!link.send(interest()));
        assert_eq!(link.overflow_len(), 6);
        assert_eq!(popped(&mut rx), vec![Some(vec![0])]);
        link.flush();
        assert_eq!(link.overflow_len(), 1);
        assert_eq!(popped(&mut rx), vec![Some(vec![1, 2, 3, 4, 5])]);
        link.flush();
        assert_eq!(link.overflow_len(), 0);
        assert_eq!(popped(&mut rx), vec![None]);
    }
}
