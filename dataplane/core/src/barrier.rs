//! The `Ping` barrier: a client's `Ping` is answered once every other shard
//! has applied the interest updates, and the marks, this shard sent before
//! it. The runtime sends a mark behind message copies that crossed to peers,
//! so a publisher's `Pong` also means its messages were routed there.
//!
//! A shard numbers each interest update it sends ([`Barrier::number`]);
//! every peer acknowledges the highest number it applied
//! ([`Barrier::applied`], sent back at the end of its batch with
//! [`Barrier::take_due`]). A `Ping` arriving when the last number sent is
//! `s` is answered as soon as every peer has acknowledged `s`
//! ([`Barrier::ping`], then [`Barrier::next_ready`] as acknowledgements
//! arrive through [`Barrier::acknowledged`]), so a client that subscribed
//! and then pinged knows its subscription is in force on every shard.
//! Pings are answered in the order they came.
//!
//! One per shard; no I/O: the shard sends the numbers and acknowledgements
//! over its rings and queues the `Pong`s.

use std::collections::VecDeque;

use crate::ids::{ConnId, ShardId};

/// One shard's side of the barrier.
#[derive(Debug)]
pub struct Barrier {
    me: ShardId,
    /// Number of the last interest update this shard sent.
    sent: u64,
    /// Highest of our updates each shard has applied (by index; ours unused).
    acked: Vec<u64>,
    /// Highest update from each shard we applied and not yet acknowledged.
    due: Vec<Option<u64>>,
    /// Pings waiting for the barrier: (number they wait for, connection).
    waiting: VecDeque<(u64, ConnId)>,
}

impl Barrier {
    /// Shard `me` of `shards`, nothing sent yet.
    pub fn new(me: ShardId, shards: usize) -> Self {
        Self {
            me,
            sent: 0,
            acked: vec![0; shards],
            due: vec![None; shards],
            waiting: VecDeque::new(),
        }
    }

    /// The number of the next interest update this shard sends.
    pub fn number(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }

    /// The lowest number every other shard has acknowledged (`u64::MAX`
    /// with no other shard).
    fn min_acked(&self) -> u64 {
        self.acked
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.me.index())
            .map(|(_, a)| *a)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// A `Ping` from `conn`: true when it may be answered now; otherwise it
    /// waits for the updates sent so far.
    pub fn ping(&mut self, conn: ConnId) -> bool {
        if self.sent <= self.min_acked() {
            return true;
        }
        self.waiting.push_back((self.sent, conn));
        false
    }

    /// This shard applied `from`'s update `seq`: acknowledge it.
    pub fn applied(&mut self, from: ShardId, seq: u64) {
        if let Some(slot) = self.due.get_mut(from.index()) {
            *slot = Some(seq);
        }
    }

    /// The acknowledgement due to `peer`, if one is (taken).
    pub fn take_due(&mut self, peer: ShardId) -> Option<u64> {
        self.due.get_mut(peer.index()).and_then(Option::take)
    }

    /// `from` has applied our updates up to `seq`.
    pub fn acknowledged(&mut self, from: ShardId, seq: u64) {
        if let Some(slot) = self.acked.get_mut(from.index()) {
            *slot = (*slot).max(seq);
        }
    }

    /// The next waiting `Ping` the barrier now lets through, in arrival
    /// order.
    pub fn next_ready(&mut self) -> Option<ConnId> {
        let min = self.min_acked();
        match self.waiting.front() {
            Some(&(seq, conn)) if seq <= min => {
                self.waiting.pop_front();
                Some(conn)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);

    #[test]
    fn given_one_shard_when_pinged_then_answered_at_once() {
        let mut b = Barrier::new(ShardId(0), 1);
        b.number();
        assert!(b.ping(A));
    }

    #[test]
    fn given_nothing_sent_when_pinged_then_answered_at_once() {
        let mut b = Barrier::new(ShardId(0), 3);
        assert!(b.ping(A));
    }

    #[test]
    fn given_an_update_not_yet_acknowledged_when_pinged_then_answered_once_every_peer_has_it() {
        let mut b = Barrier::new(ShardId(1), 3);
        assert_eq!(b.number(), 1);
        assert!(!b.ping(A));
        b.acknowledged(ShardId(0), 1);
        assert_eq!(b.next_ready(), None, "shard 2 has not acknowledged");
        b.acknowledged(ShardId(2), 1);
        assert_eq!(b.next_ready(), Some(A));
        assert_eq!(b.next_ready(), None);
    }

    #[test]
    fn given_pings_at_different_updates_then_each_waits_for_its_own_in_order() {
        let mut b = Barrier::new(ShardId(0), 2);
        b.number();
        assert!(!b.ping(A));
        b.number();
        assert!(!b.ping(B));
        b.acknowledged(ShardId(1), 1);
        assert_eq!(b.next_ready(), Some(A));
        assert_eq!(b.next_ready(), None);
        // An older acknowledgement arriving late changes nothing.
        b.acknowledged(ShardId(1), 2);
        b.acknowledged(ShardId(1), 1);
        assert_eq!(b.next_ready(), Some(B));
    }

    #[test]
    fn given_updates_applied_from_a_peer_then_the_highest_is_acknowledged_once() {
        let mut b = Barrier::new(ShardId(0), 3);
        b.applied(ShardId(2), 4);
        b.applied(ShardId(2), 5);
        assert_eq!(b.take_due(ShardId(1)), None);
        assert_eq!(b.take_due(ShardId(2)), Some(5));
        assert_eq!(b.take_due(ShardId(2)), None);
    }
}
