//! The N×N mesh of SPSC rings between shards.
//!
//! Shard `i` owns a [`Producer`] towards every other shard and a [`Consumer`]
//! from every other shard (`rtrb` rings, lock-free, one writer and one reader
//! each). Everything that crosses cores is a [`PeerMsg`]: interest updates,
//! their acknowledgements, and message copies. Payloads cross as [`Bytes`]
//! (a reference count, never a copy).
//!
//! A full ring never drops anything: messages wait in the link's local
//! overflow queue, in order, and the sending shard stops reading from its
//! publishers while any overflow queue is over its bound (back-pressure).

use std::collections::VecDeque;
use std::sync::Arc;

use arqonbus_core::router::{GroupKey, InterestUpdate};
use arqonbus_core::subject::Subject;
use arqonbus_core::{ShardId, TenantId};
use arqonbus_proto::v1::Header;
use bytes::Bytes;
use rtrb::{Consumer, Producer, PushError, RingBuffer};
use smallvec::SmallVec;

use crate::doorbell::Doorbell;

/// A message copy for another shard's subscribers.
#[derive(Debug)]
pub(crate) struct RemoteMessage {
    pub(crate) tenant: TenantId,
    pub(crate) subject: Subject,
    pub(crate) reply: Option<Subject>,
    pub(crate) headers: Vec<Header>,
    pub(crate) payload: Bytes,
    /// Queue groups the receiving shard must serve.
    pub(crate) groups: SmallVec<[GroupKey; 1]>,
    /// Set for a sampled message: its latency and its spans (boxed, so
    /// the unsampled majority carries one word).
    pub(crate) sample: Option<Box<Sample>>,
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
    /// A message for the receiver's subscribers.
    Deliver(Box<RemoteMessage>),
    /// A subscriber of `tenant` with the stall-publisher policy is full:
    /// pause the tenant's publishers until `until` (or `Unstall`).
    Stall {
        tenant: TenantId,
        until: std::time::Instant,
    },
    /// The stalled subscriber caught up.
    Unstall { tenant: TenantId },
}

/// One direction of one shard pair, seen from the sending shard.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) peer: ShardId,
    tx: Producer<PeerMsg>,
    overflow: VecDeque<PeerMsg>,
    doorbell: Arc<Doorbell>,
    /// Pushed since the peer's doorbell was last rung.
    unsignalled: bool,
}

impl Link {
    /// Queues `msg` for the peer. Returns false when it had to wait in the
    /// overflow queue (the ring was full).
    pub(crate) fn send(&mut self, msg: PeerMsg) -> bool {
        if self.overflow.is_empty() {
            match self.tx.push(msg) {
                Ok(()) => {
                    self.unsignalled = true;
                    return true;
                }
                Err(PushError::Full(msg)) => self.overflow.push_back(msg),
            }
        } else {
            self.overflow.push_back(msg);
        }
        false
    }

    /// Moves overflow into the ring while it has room, and rings the peer's
    /// doorbell if anything was pushed since the last ring.
    pub(crate) fn flush(&mut self) {
        while let Some(msg) = self.overflow.pop_front() {
            match self.tx.push(msg) {
                Ok(()) => self.unsignalled = true,
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
    }

    /// Messages waiting because the ring was full.
    pub(crate) fn overflow_len(&self) -> usize {
        self.overflow.len()
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
            meshes[from].links.push(Link {
                peer: to_id,
                tx,
                overflow: VecDeque::new(),
                doorbell: doorbells[to].clone(),
                unsignalled: false,
            });
            meshes[to].inboxes.push(Inbox { peer: from_id, rx });
        }
    }
    meshes
}
