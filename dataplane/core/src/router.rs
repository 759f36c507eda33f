//! Per-shard routing: who gets a message, here and on other shards.
//!
//! A [`Router`] belongs to one shard. It owns that shard's subscriptions and a
//! replica of every other shard's *interest* (which patterns and queue groups
//! have subscribers there). Both live in one [`SubjectIndex`] per tenant, so a
//! publish costs one trie walk and the walk can never cross tenants.
//!
//! A local publish, and a copy from another shard that carries no queue-group
//! assignment, first looks its subject up in the tenant's route cache (the
//! matched subscriptions of a subject seen before, forgotten on any change to
//! the tenant's index; see [`TenantRoutes`]): a hit costs one hash of the
//! subject instead of a hash per token.
//!
//! Invariants:
//! - a subscription belongs to exactly one tenant, connection and sid;
//! - a [`RoutePlan`] names each local subscription at most once and each
//!   remote shard at most once: a message crosses to another shard as one copy
//!   however many subscribers it has there;
//! - a queue group is identified by (pattern, group name) across all shards; a
//!   message matching it is assigned to exactly one member, chosen uniformly
//!   among all members: the origin shard picks a shard weighted by member
//!   count, that shard picks the member;
//! - interest is propagated as [`InterestUpdate`]s carrying absolute counts,
//!   so applying the latest update for a key is enough (idempotent).
//!
//! No I/O, no clock. Randomness comes from a seeded generator so tests and the
//! simulated harness are deterministic.

use rustc_hash::FxHashMap;
use slab::Slab;
use smallvec::SmallVec;

use crate::ids::{ConnId, ShardId, Sid, TenantId};
use crate::index::{Slot, SubjectIndex};
use crate::subject::{Pattern, QueueGroup, SubjectRef};

/// Most shards one process may run: interest is a 64-bit shard mask.
pub const MAX_SHARDS: usize = 64;

/// A queue group, as named between shards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// The pattern its members subscribed with.
    pub pattern: Pattern,
    /// The group's name.
    pub queue: QueueGroup,
}

/// A change of one shard's interest, sent to every other shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestUpdate {
    /// The tenant whose namespace changed.
    pub tenant: TenantId,
    /// The pattern.
    pub pattern: Pattern,
    /// The queue group, or `None` for plain subscriptions.
    pub queue: Option<QueueGroup>,
    /// Subscriptions the sending shard now holds for this key. For plain
    /// subscriptions only 0 and "not 0" are sent.
    pub count: u32,
}

/// Handle of a local subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubKey(usize);

/// One message for one local subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The subscription.
    pub sub: SubKey,
    /// Its connection.
    pub conn: ConnId,
    /// Its client-chosen id.
    pub sid: Sid,
}

/// One copy of a message for another shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCopy {
    /// The shard.
    pub shard: ShardId,
    /// Queue groups the shard must serve with this copy (one member each).
    /// Its plain subscribers always get the message.
    pub groups: SmallVec<[GroupKey; 1]>,
}

/// Where the message being routed came from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A client of this shard.
    Local {
        /// The publishing connection.
        conn: ConnId,
        /// Whether it receives its own messages.
        echo: bool,
    },
    /// Another shard, which assigned these queue groups to this shard.
    Remote {
        /// Groups this shard must serve.
        groups: &'a [GroupKey],
    },
}

/// The result of routing one message. Reuse one per shard: [`Router::route`]
/// clears it, so after warm-up routing allocates nothing.
#[derive(Debug, Default)]
pub struct RoutePlan {
    /// Local deliveries.
    pub local: Vec<Delivery>,
    /// Copies for other shards.
    pub remote: Vec<RemoteCopy>,
    /// Interest changes caused by subscriptions that reached their message
    /// limit while routing; to be sent to every other shard.
    pub interest: Vec<InterestUpdate>,
    /// Queue groups assigned to this shard that had no member left (a
    /// subscriber left while the message was between shards).
    pub missed_groups: u32,
    /// Subscriptions that reached their `Unsubscribe{after_messages}` limit
    /// while routing, and are gone.
    pub expired: Vec<(ConnId, Sid)>,
}

impl RoutePlan {
    /// Empties the plan. What has a destructor is cleared only when not
    /// empty: clearing an empty `Vec` of such items still calls the
    /// (empty) drop glue, and most routes leave those two empty.
    #[inline]
    fn clear(&mut self) {
        self.local.clear();
        if !self.remote.is_empty() {
            self.remote.clear();
        }
        if !self.interest.is_empty() {
            self.interest.clear();
        }
        self.missed_groups = 0;
        self.expired.clear();
    }

    /// True when nobody, here or elsewhere, gets the message.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }

    fn remote_entry(&mut self, shard: ShardId) -> &mut RemoteCopy {
        let pos = if let Some(p) = self.remote.iter().position(|r| r.shard == shard) {
            p
        } else {
            self.remote.push(RemoteCopy {
                shard,
                groups: SmallVec::new(),
            });
            self.remote.len() - 1
        };
        &mut self.remote[pos]
    }
}

/// Why a subscribe or unsubscribe was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The sid is 0 or already used on the connection.
    #[error("subscription id is 0 or already in use")]
    InvalidSid,
    /// The connection holds its maximum number of subscriptions.
    #[error("the connection holds its maximum of {0} subscriptions")]
    TooMany(u32),
    /// No subscription with that sid on the connection.
    #[error("no subscription with that id")]
    UnknownSid,
}

#[derive(Debug)]
struct LocalSub {
    tenant: TenantId,
    conn: ConnId,
    sid: Sid,
    pattern: Pattern,
    queue: Option<QueueGroup>,
    /// Messages left before an `Unsubscribe{after_messages}` takes effect.
    remaining: Option<u64>,
}

#[derive(Debug)]
struct Group {
    name: QueueGroup,
    local: Vec<SubKey>,
    remote: SmallVec<[(ShardId, u32); 2]>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }
}

#[derive(Debug, Default)]
struct PatternSlot {
    /// Set when the slot is created; `None` only transiently.
    pattern: Option<Pattern>,
    plain: Vec<SubKey>,
    remote_plain: u64,
    groups: Vec<Group>,
}

impl Slot for PatternSlot {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.remote_plain == 0 && self.groups.is_empty()
    }
}

impl PatternSlot {
    fn group_mut(&mut self, name: &QueueGroup) -> &mut Group {
        let pos = if let Some(p) = self.groups.iter().position(|g| &g.name == name) {
            p
        } else {
            self.groups.push(Group {
                name: name.clone(),
                local: Vec::new(),
                remote: SmallVec::new(),
            });
            self.groups.len() - 1
        };
        &mut self.groups[pos]
    }
}

/// A small, fast, seedable generator (xorshift64*) for queue-member choice.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`; `n` must be > 0.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Most subjects one shard's route caches remember, all tenants together;
/// past it every cache starts over. A tenant publishing to ever new
/// subjects pays a walk and an insert per publish, and the caches hold at
/// most this many subjects (each at most `max_subject_len` bytes) per shard.
pub const ROUTE_CACHE_SUBJECTS: usize = 4096;

/// A publish route remembered for one subject: the matched slots' plain
/// local subscriptions, in walk order, and their remote interest.
#[derive(Debug)]
struct CachedRoute {
    subs: SmallVec<[SubKey; 4]>,
    remote_plain: u64,
}

/// One tenant's index and its route cache.
///
/// Invariant: every cached route is what a walk of `index` gives now. The
/// index is only reachable mutably through [`TenantRoutes::index_mut`],
/// which empties the cache, so no change to a subscription or to remote
/// interest can leave a stale route behind. Only subjects whose matched
/// slots have no queue groups are cached (a group's member is chosen per
/// message).
#[derive(Debug, Default)]
struct TenantRoutes {
    index: SubjectIndex<PatternSlot>,
    cache: FxHashMap<Box<[u8]>, CachedRoute>,
}

impl TenantRoutes {
    /// The index, for changes: forgets every cached route.
    fn index_mut(&mut self) -> &mut SubjectIndex<PatternSlot> {
        self.cache.clear();
        &mut self.index
    }
}

/// One shard's subscriptions and its view of the other shards' interest.
#[derive(Debug)]
pub struct Router {
    me: ShardId,
    tenants: FxHashMap<TenantId, TenantRoutes>,
    /// Routes inserted into the caches since they were last all emptied
    /// (an upper bound on what they hold: emptying one tenant's cache does
    /// not lower it).
    cached: usize,
    subs: Slab<LocalSub>,
    /// Subscriptions with a delivery limit (`remaining` set): routing
    /// counts deliveries only while there are any.
    limited: usize,
    conns: FxHashMap<ConnId, FxHashMap<Sid, SubKey>>,
    rng: Rng,
}

fn shard_bit(shard: ShardId) -> u64 {
    1u64 << (shard.index() % MAX_SHARDS)
}

impl Router {
    /// A router for shard `me`; `seed` drives queue-member choice.
    pub fn new(me: ShardId, seed: u64) -> Self {
        Self {
            me,
            tenants: FxHashMap::default(),
            cached: 0,
            subs: Slab::new(),
            limited: 0,
            conns: FxHashMap::default(),
            rng: Rng::new(seed),
        }
    }

    /// Local subscriptions held.
    pub fn local_subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// Number of subscriptions held by `conn`.
    pub fn subscription_count(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, FxHashMap::len)
    }

    /// The subscriptions of `conn`: sid and pattern.
    pub fn subscriptions_of(&self, conn: ConnId) -> Vec<(Sid, Pattern)> {
        self.conns.get(&conn).map_or_else(Vec::new, |subs| {
            subs.iter()
                .filter_map(|(sid, key)| self.subs.get(key.0).map(|s| (*sid, s.pattern.clone())))
                .collect()
        })
    }

    /// Adds a subscription. Interest changes to broadcast go to `out`.
    #[allow(
        clippy::too_many_arguments,
        reason = "each argument is one field of the subscription"
    )]
    pub fn subscribe(
        &mut self,
        tenant: TenantId,
        conn: ConnId,
        sid: Sid,
        pattern: Pattern,
        queue: Option<QueueGroup>,
        max_subscriptions: u32,
        out: &mut Vec<InterestUpdate>,
    ) -> Result<(), SubscriptionError> {
        if sid.0 == 0 {
            return Err(SubscriptionError::InvalidSid);
        }
        let of_conn = self.conns.entry(conn).or_default();
        if of_conn.contains_key(&sid) {
            return Err(SubscriptionError::InvalidSid);
        }
        if of_conn.len() >= max_subscriptions as usize {
            return Err(SubscriptionError::TooMany(max_subscriptions));
        }
        let key = SubKey(self.subs.insert(LocalSub {
            tenant,
            conn,
            sid,
            pattern: pattern.clone(),
            queue: queue.clone(),
            remaining: None,
        }));
        of_conn.insert(sid, key);

        let slot = self
            .tenants
            .entry(tenant)
            .or_default()
            .index_mut()
            .slot_mut(&pattern);
        slot.pattern.get_or_insert_with(|| pattern.clone());
        match queue {
            None => {
                slot.plain.push(key);
                if slot.plain.len() == 1 {
                    out.push(InterestUpdate {
                        tenant,
                        pattern,
                        queue: None,
                        count: 1,
                    });
                }
            }
            Some(q) => {
                let group = slot.group_mut(&q);
                group.local.push(key);
                out.push(InterestUpdate {
                    tenant,
                    pattern,
                    count: group.local.len() as u32,
                    queue: Some(q),
                });
            }
        }
        Ok(())
    }

    /// Removes `conn`'s subscription `sid` now (`after == 0`) or after `after`
    /// more deliveries.
    pub fn unsubscribe(
        &mut self,
        conn: ConnId,
        sid: Sid,
        after: u64,
        out: &mut Vec<InterestUpdate>,
    ) -> Result<(), SubscriptionError> {
        let key = self
            .conns
            .get(&conn)
            .and_then(|m| m.get(&sid))
            .copied()
            .ok_or(SubscriptionError::UnknownSid)?;
        if after == 0 {
            self.remove_sub(key, out);
        } else if let Some(sub) = self.subs.get_mut(key.0)
            && sub.remaining.replace(after).is_none()
        {
            self.limited += 1;
        }
        Ok(())
    }

    /// Removes every subscription of `conn` (it closed).
    pub fn remove_conn(&mut self, conn: ConnId, out: &mut Vec<InterestUpdate>) {
        let Some(subs) = self.conns.remove(&conn) else {
            return;
        };
        for key in subs.into_values() {
            self.remove_sub(key, out);
        }
    }

    fn remove_sub(&mut self, key: SubKey, out: &mut Vec<InterestUpdate>) {
        if !self.subs.contains(key.0) {
            return;
        }
        let sub = self.subs.remove(key.0);
        if sub.remaining.is_some() {
            self.limited -= 1;
        }
        if let Some(of_conn) = self.conns.get_mut(&sub.conn) {
            of_conn.remove(&sub.sid);
            if of_conn.is_empty() {
                self.conns.remove(&sub.conn);
            }
        }
        let Some(routes) = self.tenants.get_mut(&sub.tenant) else {
            return;
        };
        let index = routes.index_mut();
        if let Some(slot) = index.get_mut(&sub.pattern) {
            match &sub.queue {
                None => {
                    slot.plain.retain(|k| *k != key);
                    if slot.plain.is_empty() {
                        out.push(InterestUpdate {
                            tenant: sub.tenant,
                            pattern: sub.pattern.clone(),
                            queue: None,
                            count: 0,
                        });
                    }
                }
                Some(q) => {
                    if let Some(pos) = slot.groups.iter().position(|g| &g.name == q) {
                        let group = &mut slot.groups[pos];
                        group.local.retain(|k| *k != key);
                        out.push(InterestUpdate {
                            tenant: sub.tenant,
                            pattern: sub.pattern.clone(),
                            queue: Some(q.clone()),
                            count: group.local.len() as u32,
                        });
                        if group.is_empty() {
                            slot.groups.swap_remove(pos);
                        }
                    }
                }
            }
        }
        index.remove_if_empty(&sub.pattern);
        if index.is_empty() {
            self.tenants.remove(&sub.tenant);
        }
    }

    /// Applies another shard's interest change.
    pub fn apply_interest(&mut self, from: ShardId, update: &InterestUpdate) {
        if from == self.me {
            return;
        }
        let index = self.tenants.entry(update.tenant).or_default().index_mut();
        match (&update.queue, update.count) {
            (None, 0) => {
                if let Some(slot) = index.get_mut(&update.pattern) {
                    slot.remote_plain &= !shard_bit(from);
                }
            }
            (None, _) => {
                let slot = index.slot_mut(&update.pattern);
                slot.pattern.get_or_insert_with(|| update.pattern.clone());
                slot.remote_plain |= shard_bit(from);
            }
            (Some(q), 0) => {
                if let Some(slot) = index.get_mut(&update.pattern)
                    && let Some(pos) = slot.groups.iter().position(|g| &g.name == q)
                {
                    let group = &mut slot.groups[pos];
                    group.remote.retain(|(s, _)| *s != from);
                    if group.is_empty() {
                        slot.groups.swap_remove(pos);
                    }
                }
            }
            (Some(q), n) => {
                let slot = index.slot_mut(&update.pattern);
                slot.pattern.get_or_insert_with(|| update.pattern.clone());
                let group = slot.group_mut(q);
                match group.remote.iter_mut().find(|(s, _)| *s == from) {
                    Some(entry) => entry.1 = n,
                    None => group.remote.push((from, n)),
                }
            }
        }
        index.remove_if_empty(&update.pattern);
        if index.is_empty() {
            self.tenants.remove(&update.tenant);
        }
    }

    /// Routes a message on `subject` of `tenant` into `plan`.
    pub fn route<'s>(
        &mut self,
        tenant: TenantId,
        subject: impl Into<SubjectRef<'s>>,
        origin: Origin<'_>,
        plan: &mut RoutePlan,
    ) {
        let subject = subject.into();
        plan.clear();
        let Self {
            tenants,
            cached,
            subs,
            rng,
            ..
        } = self;
        if *cached >= ROUTE_CACHE_SUBJECTS {
            for t in tenants.values_mut() {
                t.cache = FxHashMap::default();
            }
            *cached = 0;
        }
        let Some(routes) = tenants.get_mut(&tenant) else {
            if let Origin::Remote { groups } = origin {
                plan.missed_groups = groups.len() as u32;
            }
            return;
        };
        let mut remote_plain = 0u64;
        // Routes are cached for local publishes and for copies from other
        // shards that carry no queue-group assignment: what such a copy
        // gets is every plain subscription matching, which is what a cached
        // route holds. `exclude` is a no-echo publisher's own connection.
        let (local, exclude) = match origin {
            Origin::Local { conn, echo } => (true, (!echo).then_some(conn)),
            Origin::Remote { .. } => (false, None),
        };
        let cached_origin = match origin {
            Origin::Local { .. } => true,
            Origin::Remote { groups } => groups.is_empty(),
        };
        if cached_origin {
            if let Some(hit) = routes.cache.get(subject.as_bytes()) {
                for &key in &hit.subs {
                    let sub = &subs[key.0];
                    if exclude != Some(sub.conn) {
                        plan.local.push(Delivery {
                            sub: key,
                            conn: sub.conn,
                            sid: sub.sid,
                        });
                    }
                }
                remote_plain = hit.remote_plain;
            } else {
                // Walk, noting what a cached route needs.
                let mut matched: SmallVec<[SubKey; 4]> = SmallVec::new();
                let mut cacheable = true;
                routes.index.for_each_match(subject, |slot| {
                    for &key in &slot.plain {
                        let sub = &subs[key.0];
                        matched.push(key);
                        if exclude != Some(sub.conn) {
                            plan.local.push(Delivery {
                                sub: key,
                                conn: sub.conn,
                                sid: sub.sid,
                            });
                        }
                    }
                    remote_plain |= slot.remote_plain;
                    cacheable &= slot.groups.is_empty();
                    // A copy from another shard was assigned no group here.
                    if local {
                        for group in &slot.groups {
                            choose_member(slot, group, subs, exclude, rng, plan);
                        }
                    }
                });
                if cacheable {
                    *cached += 1;
                    routes.cache.insert(
                        subject.as_bytes().into(),
                        CachedRoute {
                            subs: matched,
                            remote_plain,
                        },
                    );
                }
            }
            // A copy is never forwarded again.
            if !local {
                remote_plain = 0;
            }
        }
        let index = &routes.index;
        if let Origin::Remote { groups } = origin
            && !groups.is_empty()
        {
            index.for_each_match(subject, |slot| {
                for &key in &slot.plain {
                    let sub = &subs[key.0];
                    plan.local.push(Delivery {
                        sub: key,
                        conn: sub.conn,
                        sid: sub.sid,
                    });
                }
                for group in &slot.groups {
                    let assigned = groups.iter().any(|g| {
                        g.queue == group.name && Some(&g.pattern) == slot.pattern.as_ref()
                    });
                    if !assigned {
                        continue;
                    }
                    if group.local.is_empty() {
                        plan.missed_groups += 1;
                    } else {
                        let key = group.local[rng.below(group.local.len() as u64) as usize];
                        let sub = &subs[key.0];
                        plan.local.push(Delivery {
                            sub: key,
                            conn: sub.conn,
                            sid: sub.sid,
                        });
                    }
                }
            });
        }
        // Groups assigned to us that no longer exist here at all.
        if let Origin::Remote { groups } = origin {
            for g in groups {
                if index
                    .get(&g.pattern)
                    .is_none_or(|s| !s.groups.iter().any(|x| x.name == g.queue))
                {
                    plan.missed_groups += 1;
                }
            }
        }
        while remote_plain != 0 {
            let bit = remote_plain.trailing_zeros();
            remote_plain &= remote_plain - 1;
            plan.remote_entry(ShardId(bit as u16));
        }
        self.expire_limited(plan);
    }

    /// Routes to `conn`'s own subscriptions matching `subject` only. Used to
    /// answer a request that had no responders.
    pub fn route_to_conn<'s>(
        &mut self,
        tenant: TenantId,
        subject: impl Into<SubjectRef<'s>>,
        conn: ConnId,
        plan: &mut RoutePlan,
    ) {
        let subject = subject.into();
        plan.clear();
        let Some(routes) = self.tenants.get(&tenant) else {
            return;
        };
        let index = &routes.index;
        let subs = &self.subs;
        index.for_each_match(subject, |slot| {
            let own = slot
                .plain
                .iter()
                .chain(slot.groups.iter().flat_map(|g| g.local.iter()));
            for &key in own {
                let sub = &subs[key.0];
                if sub.conn == conn {
                    plan.local.push(Delivery {
                        sub: key,
                        conn,
                        sid: sub.sid,
                    });
                }
            }
        });
        self.expire_limited(plan);
    }

    /// Counts deliveries against `Unsubscribe{after_messages}` limits and
    /// removes subscriptions that reached them.
    #[inline]
    fn expire_limited(&mut self, plan: &mut RoutePlan) {
        if self.limited != 0 {
            self.count_limited(plan);
        }
    }

    /// [`Self::expire_limited`]'s work, out of line: most routes have none.
    #[inline(never)]
    fn count_limited(&mut self, plan: &mut RoutePlan) {
        for i in 0..plan.local.len() {
            let key = plan.local[i].sub;
            let Some(sub) = self.subs.get_mut(key.0) else {
                continue;
            };
            if let Some(left) = sub.remaining.as_mut() {
                *left -= 1;
                if *left == 0 {
                    plan.expired.push((sub.conn, sub.sid));
                    self.remove_sub(key, &mut plan.interest);
                }
            }
        }
    }
}

/// Picks one member of `group` uniformly among all members on all shards,
/// leaving out `exclude` (a `no_echo` publisher's own subscriptions).
fn choose_member(
    slot: &PatternSlot,
    group: &Group,
    subs: &Slab<LocalSub>,
    exclude: Option<ConnId>,
    rng: &mut Rng,
    plan: &mut RoutePlan,
) {
    let eligible = |key: &&SubKey| exclude.is_none_or(|c| subs[key.0].conn != c);
    let local = match exclude {
        None => group.local.len() as u64,
        Some(_) => group.local.iter().filter(eligible).count() as u64,
    };
    let remote: u64 = group.remote.iter().map(|(_, n)| u64::from(*n)).sum();
    if local + remote == 0 {
        return;
    }
    let mut pick = rng.below(local + remote);
    if pick < local {
        let key = match exclude {
            None => Some(group.local[pick as usize]),
            Some(_) => group
                .local
                .iter()
                .filter(eligible)
                .nth(pick as usize)
                .copied(),
        };
        if let Some(key) = key {
            let sub = &subs[key.0];
            plan.local.push(Delivery {
                sub: key,
                conn: sub.conn,
                sid: sub.sid,
            });
        }
        return;
    }
    pick -= local;
    for &(shard, n) in &group.remote {
        if pick < u64::from(n) {
            if let Some(pattern) = &slot.pattern {
                plan.remote_entry(shard).groups.push(GroupKey {
                    pattern: pattern.clone(),
                    queue: group.name.clone(),
                });
            }
            return;
        }
        pick -= u64::from(n);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::subject::Subject;

    #[test]
    fn the_route_caches_stay_bounded() {
        let mut r = Router::new(ShardId(0), 1);
        let mut out = Vec::new();
        for t in 1..=3 {
            let any =
                Pattern::parse(Bytes::from_static(b"s.>"), 256).unwrap_or_else(|e| panic!("{e}"));
            r.subscribe(TenantId(t), ConnId(t), Sid(1), any, None, 10, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut plan = RoutePlan::default();
        for i in 0..3 * ROUTE_CACHE_SUBJECTS {
            let subject = Subject::parse(Bytes::from(format!("s.{i}")), 256)
                .unwrap_or_else(|e| panic!("{e}"));
            let origin = Origin::Local {
                conn: ConnId(2),
                echo: true,
            };
            let tenant = TenantId(i as u64 % 3 + 1);
            r.route(tenant, &subject, origin, &mut plan);
            assert_eq!(plan.local.len(), 1);
            let held: usize = r.tenants.values().map(|t| t.cache.len()).sum();
            assert!(
                (1..=ROUTE_CACHE_SUBJECTS).contains(&held),
                "{held} routes cached"
            );
        }
    }
}
