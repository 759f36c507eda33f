//! Presence: who is on a subject, join and leave events, and the query.
//!
//! A **member** is a subscription whose pattern is a literal subject and
//! whose connection asked to be listed (`PresenceTrack{sid, metadata}`,
//! [specs/presence.md](../../../specs/presence.md)). It is listed with its
//! client id (the member connection's `Welcome.session_id`), client kind,
//! client name and a small [`Metadata`] map, and leaves when the
//! subscription ends: unsubscribe, permission change, or the connection
//! closing for any reason (goodbye or not: the runtime calls
//! [`Presence::close`] from the one place every connection ends).
//! A **watch** (`PresenceWatch{watch_id, subject}`) receives a
//! [`PresenceEvent`] for every join and leave on its subject.
//!
//! Across shards, deltas are broadcast: each shard owns its own
//! connections' memberships ([`Presence::track`], [`Presence::untrack`],
//! [`Presence::close`] return [`Delta`]s for every peer) and keeps a replica
//! of the other shards' ([`Presence::apply`]), so a query is answered
//! from the asking shard alone, and each shard turns every delta, its own or
//! a peer's, into events for its own watchers. Deltas travel on the rings
//! that carry messages, so a member's join reaches every shard before its
//! leave.
//!
//! Invariants (unit tests below):
//! - everything is per tenant: no call names or returns another tenant's
//!   members;
//! - a subject holds at most `limits.per_subject` members and a tenant at
//!   most `limits.per_tenant`, counted over all shards as this shard's
//!   replica sees them; past either bound a track is refused with
//!   [`PresenceError::SubjectFull`] or [`PresenceError::TenantFull`] and
//!   nothing changes. Two shards admitting at the same moment can overshoot
//!   by at most one member per other shard; a replica never refuses a
//!   peer's delta, so all shards agree;
//! - a connection holds at most `limits.watches_per_conn` watches;
//! - after [`Presence::close`] nothing of the connection is left on its
//!   shard, and the deltas it returns remove it from every replica;
//! - no I/O, no clock, no allocation per message (presence changes only
//!   with subscriptions).

use std::sync::Arc;

use arqonbus_proto::v1::{ClientKind, ErrorCode};
use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::ids::{ConnId, Sid, TenantId};
use crate::subject::Subject;

/// Most metadata entries per member.
pub const MAX_META_ENTRIES: usize = 8;
/// Longest metadata key, bytes.
pub const MAX_META_KEY: usize = 32;
/// Longest metadata value, bytes.
pub const MAX_META_VALUE: usize = 128;
/// Most metadata bytes (keys and values) per member.
pub const MAX_META_BYTES: usize = 1024;

/// How much presence a shard keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Members of one subject, over all shards.
    pub per_subject: u32,
    /// Members of one tenant (all its subjects), over all shards.
    pub per_tenant: u32,
    /// Watches of one connection.
    pub watches_per_conn: u32,
    /// Members one query answer lists (the answer says when it is cut).
    pub query_max: u32,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        Self {
            per_subject: 1_000,
            per_tenant: 100_000,
            watches_per_conn: 256,
            query_max: 1_000,
        }
    }
}

/// Why a metadata map is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// More than [`MAX_META_ENTRIES`] entries.
    #[error("at most 8 metadata entries")]
    TooMany,
    /// A key empty, longer than [`MAX_META_KEY`], or not printable ASCII
    /// without spaces.
    #[error("metadata keys are 1..=32 printable ASCII bytes without spaces")]
    Key,
    /// A value longer than [`MAX_META_VALUE`].
    #[error("metadata values are at most 128 bytes")]
    Value,
    /// More than [`MAX_META_BYTES`] in all.
    #[error("at most 1024 metadata bytes in all")]
    TooLarge,
    /// The same key twice.
    #[error("duplicate metadata key")]
    Duplicate,
}

/// A member's metadata: a few short key/value pairs the client sets,
/// sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(Box<[(Box<str>, Box<str>)]>);

impl Metadata {
    /// Validates and copies `entries`.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, MetadataError> {
        let mut out: Vec<(Box<str>, Box<str>)> = Vec::new();
        let mut bytes = 0usize;
        for (k, v) in entries {
            if out.len() == MAX_META_ENTRIES {
                return Err(MetadataError::TooMany);
            }
            if k.is_empty() || k.len() > MAX_META_KEY || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(MetadataError::Key);
            }
            if v.len() > MAX_META_VALUE {
                return Err(MetadataError::Value);
            }
            bytes += k.len() + v.len();
            if bytes > MAX_META_BYTES {
                return Err(MetadataError::TooLarge);
            }
            out.push((k.into(), v.into()));
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if out.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(MetadataError::Duplicate);
        }
        Ok(Self(out.into_boxed_slice()))
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

/// What others see of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member connection's `Welcome.session_id` (unique on the server
    /// while it lives).
    pub client_id: u64,
    /// Human, device or agent, as its `Connect` said.
    pub kind: ClientKind,
    /// Its `Connect.client_name`.
    pub name: Arc<str>,
    /// What it set when it asked to be listed.
    pub metadata: Metadata,
}

impl Member {
    /// The member as `PresenceReply` and `PresenceEvent` carry it.
    pub fn to_wire(&self) -> arqonbus_proto::v1::PresenceMember {
        arqonbus_proto::v1::PresenceMember {
            client_id: self.client_id,
            client_kind: self.kind.into(),
            client_name: self.name.to_string(),
            metadata: self
                .metadata
                .entries()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// At most the bytes this member takes in a `PresenceReply`
    /// (`v1::PresenceMember` with its field key and length, every varint
    /// counted at its longest), so an answer can be cut to fit a frame.
    pub fn wire_bound(&self) -> usize {
        // Key + length of the member, client id, kind, name's key + length.
        const FIXED: usize = 4 + 11 + 3 + 4;
        // Per metadata entry: the map entry's key + length, and each of its
        // key and value fields' key + length.
        const PER_ENTRY: usize = 4 + 4 + 4;
        FIXED
            + self.name.len()
            + self
                .metadata
                .entries()
                .map(|(k, v)| PER_ENTRY + k.len() + v.len())
                .sum::<usize>()
    }
}

/// One membership: a subscription of a connection (unique server-wide, the
/// connection id carries its shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    /// The connection.
    pub conn: ConnId,
    /// Its subscription.
    pub sid: Sid,
}

/// A change a shard sends every peer so their replicas follow.
#[derive(Debug, Clone)]
pub enum Delta {
    /// A member joined `subject`.
    Join {
        /// Its tenant.
        tenant: TenantId,
        /// The subject (a copy of its own, pinning no receive buffer).
        subject: Bytes,
        /// Which membership.
        key: MemberKey,
        /// What others see.
        member: Arc<Member>,
    },
    /// A member left `subject`.
    Leave {
        /// Its tenant.
        tenant: TenantId,
        /// The subject.
        subject: Bytes,
        /// Which membership.
        key: MemberKey,
    },
}

/// Join or leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Listed from now on.
    Join,
    /// No longer listed.
    Leave,
}

/// An event for one of this shard's watches.
#[derive(Debug, Clone)]
pub struct PresenceEvent {
    /// The watching connection.
    pub conn: ConnId,
    /// Its watch id.
    pub watch: u64,
    /// Join or leave.
    pub action: Action,
    /// The subject.
    pub subject: Bytes,
    /// Who.
    pub member: Arc<Member>,
}

/// Why a presence request is refused. None closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The subject already lists `limit` members.
    #[error("presence: the subject lists its maximum of {limit} members")]
    SubjectFull {
        /// The bound.
        limit: u32,
    },
    /// The tenant already lists `limit` members.
    #[error("presence: the tenant lists its maximum of {limit} members")]
    TenantFull {
        /// The bound.
        limit: u32,
    },
    /// The connection already holds `limit` watches.
    #[error("presence: at most {limit} watches per connection")]
    TooManyWatches {
        /// The bound.
        limit: u32,
    },
    /// The subscription is already listed.
    #[error("presence: the subscription is already listed")]
    AlreadyTracked,
    /// The watch id is 0 or in use.
    #[error("presence: watch id is 0 or in use")]
    InvalidWatch,
    /// No watch has this id.
    #[error("presence: no such watch")]
    UnknownWatch,
    /// The metadata breaks its limits.
    #[error("presence: {0}")]
    Metadata(#[from] MetadataError),
}

impl PresenceError {
    /// The protocol's error code for it (not fatal).
    pub fn code(self) -> ErrorCode {
        match self {
            Self::SubjectFull { .. } | Self::TenantFull { .. } | Self::TooManyWatches { .. } => {
                ErrorCode::PresenceLimitExceeded
            }
            Self::AlreadyTracked | Self::InvalidWatch => ErrorCode::InvalidSid,
            Self::UnknownWatch => ErrorCode::UnknownSid,
            Self::Metadata(_) => ErrorCode::InvalidHeaders,
        }
    }
}

#[derive(Debug, Default)]
struct SubjectPresence {
    members: FxHashMap<MemberKey, Arc<Member>>,
    /// This shard's watches of the subject.
    watchers: Vec<(ConnId, u64)>,
}

impl SubjectPresence {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.watchers.is_empty()
    }
}

#[derive(Debug, Default)]
struct TenantPresence {
    subjects: FxHashMap<Bytes, SubjectPresence>,
    /// Members over all shards.
    members: u32,
}

#[derive(Debug)]
struct ConnPresence {
    tenant: TenantId,
    tracked: Vec<(Sid, Bytes)>,
    watches: Vec<(u64, Bytes)>,
}

/// Figures for the presence gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceGauges {
    /// Subjects with members or watches.
    pub subjects: u64,
    /// Members over all shards, as this shard's replica sees them.
    pub members: u64,
    /// Members on this shard's own connections.
    pub local_members: u64,
    /// This shard's watches.
    pub watches: u64,
}

/// One shard's presence: its connections' memberships and watches, and its
/// replica of the other shards' memberships.
#[derive(Debug, Default)]
pub struct Presence {
    limits: PresenceLimits,
    tenants: FxHashMap<TenantId, TenantPresence>,
    conns: FxHashMap<ConnId, ConnPresence>,
    local_members: u64,
}

impl Presence {
    /// Empty, with `limits`.
    pub fn new(limits: PresenceLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// New limits (a configuration change); what is listed stays.
    pub fn set_limits(&mut self, limits: PresenceLimits) {
        self.limits = limits;
    }

    /// Lists subscription `sid` of `conn` (a connection of this shard) as a
    /// member of `subject`. On success `deltas` gets one [`Delta::Join`] for
    /// every peer and `events` one event per local watch of the subject.
    #[allow(clippy::too_many_arguments, reason = "one membership's parts")]
    pub fn track(
        &mut self,
        tenant: TenantId,
        subject: &Subject,
        conn: ConnId,
        sid: Sid,
        member: Arc<Member>,
        deltas: &mut Vec<Delta>,
        events: &mut Vec<PresenceEvent>,
    ) -> Result<(), PresenceError> {
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.tracked.iter().any(|(s, _)| *s == sid))
        {
            return Err(PresenceError::AlreadyTracked);
        }
        let limits = self.limits;
        let t = self.tenants.entry(tenant).or_default();
        if t.members >= limits.per_tenant {
            return Err(PresenceError::TenantFull {
                limit: limits.per_tenant,
            });
        }
        let full = t
            .subjects
            .get(subject.as_bytes())
            .is_some_and(|s| s.members.len() >= limits.per_subject as usize);
        if full {
            return Err(PresenceError::SubjectFull {
                limit: limits.per_subject,
            });
        }
        let subject = Bytes::copy_from_slice(subject.as_bytes());
        let key = MemberKey { conn, sid };
        Self::insert(t, &subject, key, &member, events);
        self.local_members += 1;
        self.conns
            .entry(conn)
            .or_insert_with(|| ConnPresence {
                tenant,
                tracked: Vec::new(),
                watches: Vec::new(),
            })
            .tracked
            .push((sid, subject.clone()));
        deltas.push(Delta::Join {
            tenant,
            subject,
            key,
            member,
        });
        Ok(())
    }

    fn insert(
        t: &mut TenantPresence,
        subject: &Bytes,
        key: MemberKey,
        member: &Arc<Member>,
        events: &mut Vec<PresenceEvent>,
    ) {
        let s = t.subjects.entry(subject.clone()).or_default();
        if s.members.insert(key, member.clone()).is_none() {
            t.members += 1;
        }
        for &(conn, watch) in &s.watchers {
            events.push(PresenceEvent {
                conn,
                watch,
                action: Action::Join,
                subject: subject.clone(),
                member: member.clone(),
            });
        }
    }

    fn remove(
        &mut self,
        tenant: TenantId,
        subject: &Bytes,
        key: MemberKey,
        events: &mut Vec<PresenceEvent>,
    ) {
        let Some(t) = self.tenants.get_mut(&tenant) else {
            return;
        };
        let Some(s) = t.subjects.get_mut(subject) else {
            return;
        };
        let Some(member) = s.members.remove(&key) else {
            return;
        };
        t.members = t.members.saturating_sub(1);
        for &(conn, watch) in &s.watchers {
            events.push(PresenceEvent {
                conn,
                watch,
                action: Action::Leave,
                subject: subject.clone(),
                member: member.clone(),
            });
        }
        if s.is_empty() {
            t.subjects.remove(subject);
        }
        if t.subjects.is_empty() {
            self.tenants.remove(&tenant);
        }
    }

    /// Subscription `sid` of `conn` ended: if it was listed, it leaves
    /// (one [`Delta::Leave`] for the peers, events for local watches).
    /// Returns whether it was listed.
    pub fn untrack(
        &mut self,
        conn: ConnId,
        sid: Sid,
        deltas: &mut Vec<Delta>,
        events: &mut Vec<PresenceEvent>,
    ) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Some(i) = c.tracked.iter().position(|(s, _)| *s == sid) else {
            return false;
        };
        let (_, subject) = c.tracked.swap_remove(i);
        let tenant = c.tenant;
        if c.tracked.is_empty() && c.watches.is_empty() {
            self.conns.remove(&conn);
        }
        let key = MemberKey { conn, sid };
        self.remove(tenant, &subject, key, events);
        self.local_members = self.local_members.saturating_sub(1);
        deltas.push(Delta::Leave {
            tenant,
            subject,
            key,
        });
        true
    }

    /// Starts watch `watch` of `conn` on `subject` (the caller checked the
    /// principal may see it, `Permissions::may_see_presence`).
    pub fn watch(
        &mut self,
        tenant: TenantId,
        subject: &Subject,
        conn: ConnId,
        watch: u64,
    ) -> Result<(), PresenceError> {
        let c = self.conns.entry(conn).or_insert_with(|| ConnPresence {
            tenant,
            tracked: Vec::new(),
            watches: Vec::new(),
        });
        let refused = if watch == 0 || c.watches.iter().any(|(w, _)| *w == watch) {
            Some(PresenceError::InvalidWatch)
        } else if c.watches.len() >= self.limits.watches_per_conn as usize {
            Some(PresenceError::TooManyWatches {
                limit: self.limits.watches_per_conn,
            })
        } else {
            None
        };
        if let Some(e) = refused {
            if c.tracked.is_empty() && c.watches.is_empty() {
                self.conns.remove(&conn);
            }
            return Err(e);
        }
        let subject = Bytes::copy_from_slice(subject.as_bytes());
        c.watches.push((watch, subject.clone()));
        self.tenants
            .entry(tenant)
            .or_default()
            .subjects
            .entry(subject)
            .or_default()
            .watchers
            .push((conn, watch));
        Ok(())
    }

    /// Stops watch `watch` of `conn`.
    pub fn unwatch(&mut self, conn: ConnId, watch: u64) -> Result<(), PresenceError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(PresenceError::UnknownWatch)?;
        let i = c
            .watches
            .iter()
            .position(|(w, _)| *w == watch)
            .ok_or(PresenceError::UnknownWatch)?;
        let (_, subject) = c.watches.swap_remove(i);
        let tenant = c.tenant;
        if c.tracked.is_empty() && c.watches.is_empty() {
            self.conns.remove(&conn);
        }
        self.drop_watcher(tenant, &subject, conn, watch);
        Ok(())
    }

    /// Stops the watches of `conn` whose subject `may_see` no longer allows
    /// (its permissions changed); returns their ids, in the order they
    /// started.
    pub fn revoke_watches(&mut self, conn: ConnId, may_see: impl Fn(&Subject) -> bool) -> Vec<u64> {
        let Some(c) = self.conns.get(&conn) else {
            return Vec::new();
        };
        let revoked: Vec<u64> = c
            .watches
            .iter()
            .filter(|(_, subject)| {
                // Checked when the watch started; a subject that no longer
                // parses is refused too.
                Subject::parse(subject.clone(), usize::MAX).map_or(true, |s| !may_see(&s))
            })
            .map(|(w, _)| *w)
            .collect();
        for &w in &revoked {
            let _ = self.unwatch(conn, w);
        }
        revoked
    }

    fn drop_watcher(&mut self, tenant: TenantId, subject: &Bytes, conn: ConnId, watch: u64) {
        let Some(t) = self.tenants.get_mut(&tenant) else {
            return;
        };
        let Some(s) = t.subjects.get_mut(subject) else {
            return;
        };
        s.watchers.retain(|&(c, w)| (c, w) != (conn, watch));
        if s.is_empty() {
            t.subjects.remove(subject);
        }
        if t.subjects.is_empty() {
            self.tenants.remove(&tenant);
        }
    }

    /// `conn` closed, with a goodbye or without: every membership leaves
    /// (deltas and local events) and its watches stop. Nothing of it is left.
    pub fn close(
        &mut self,
        conn: ConnId,
        deltas: &mut Vec<Delta>,
        events: &mut Vec<PresenceEvent>,
    ) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for (watch, subject) in &c.watches {
            self.drop_watcher(c.tenant, subject, conn, *watch);
        }
        for (sid, subject) in c.tracked {
            let key = MemberKey { conn, sid };
            self.remove(c.tenant, &subject, key, events);
            self.local_members = self.local_members.saturating_sub(1);
            deltas.push(Delta::Leave {
                tenant: c.tenant,
                subject,
                key,
            });
        }
    }

    /// Applies a peer's delta to the replica (never refused, so every shard
    /// agrees) and returns events for this shard's watches.
    pub fn apply(&mut self, delta: &Delta, events: &mut Vec<PresenceEvent>) {
        match delta {
            Delta::Join {
                tenant,
                subject,
                key,
                member,
            } => {
                let t = self.tenants.entry(*tenant).or_default();
                Self::insert(t, subject, *key, member, events);
            }
            Delta::Leave {
                tenant,
                subject,
                key,
            } => self.remove(*tenant, subject, *key, events),
        }
    }

    /// The members of `subject` in `tenant` (the caller checked
    /// [`may_see`]), ordered by client id then subscription: at most
    /// `limits.query_max`, and no more than fit `max_bytes` by
    /// [`Member::wire_bound`] (the answer must fit a frame the client
    /// accepts). Returns whether the list was cut.
    pub fn query(
        &self,
        tenant: TenantId,
        subject: &Subject,
        max_bytes: usize,
        out: &mut Vec<Arc<Member>>,
    ) -> bool {
        let Some(s) = self
            .tenants
            .get(&tenant)
            .and_then(|t| t.subjects.get(subject.as_bytes()))
        else {
            return false;
        };
        let mut keys: Vec<(&MemberKey, &Arc<Member>)> = s.members.iter().collect();
        keys.sort_unstable_by_key(|(k, m)| (m.client_id, k.sid));
        let max = self.limits.query_max as usize;
        let mut room = max_bytes;
        for (_, m) in keys.iter().take(max) {
            let Some(left) = room.checked_sub(m.wire_bound()) else {
                return true;
            };
            room = left;
            out.push(Arc::clone(m));
        }
        keys.len() > max
    }

    /// Figures for the gauges.
    pub fn gauges(&self) -> PresenceGauges {
        let mut g = PresenceGauges {
            local_members: self.local_members,
            ..PresenceGauges::default()
        };
        for t in self.tenants.values() {
            g.subjects += t.subjects.len() as u64;
            g.members += u64::from(t.members);
            for s in t.subjects.values() {
                g.watches += s.watchers.len() as u64;
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(s: &str) -> Subject {
        Subject::parse(Bytes::copy_from_slice(s.as_bytes()), 256).unwrap()
    }

    fn member(id: u64, kind: ClientKind) -> Arc<Member> {
        Arc::new(Member {
            client_id: id,
            kind,
            name: format!("c{id}").into(),
            metadata: Metadata::parse([("role", "viewer")]).unwrap(),
        })
    }

    const T: TenantId = TenantId(1);
    const U: TenantId = TenantId(2);

    fn conn(shard: u8, n: u32) -> ConnId {
        ConnId((u64::from(shard) << 56) | u64::from(n))
    }

    fn ids(p: &Presence, tenant: TenantId, s: &str) -> Vec<u64> {
        let mut out = Vec::new();
        p.query(tenant, &subject(s), usize::MAX, &mut out);
        out.iter().map(|m| m.client_id).collect()
    }

    #[test]
    fn metadata_is_small_and_checked() {
        let m = Metadata::parse([("b", "2"), ("a", "1")]).unwrap();
        assert_eq!(m.entries().collect::<Vec<_>>(), [("a", "1"), ("b", "2")]);
        let nine: Vec<(String, String)> = (0..9).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(
            Metadata::parse(nine.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            Err(MetadataError::TooMany)
        );
        assert_eq!(Metadata::parse([("", "v")]), Err(MetadataError::Key));
        assert_eq!(Metadata::parse([("a b", "v")]), Err(MetadataError::Key));
        let long_key = "k".repeat(33);
        assert_eq!(
            Metadata::parse([(long_key.as_str(), "v")]),
            Err(MetadataError::Key)
        );
        let long = "v".repeat(129);
        assert_eq!(
            Metadata::parse([("a", long.as_str())]),
            Err(MetadataError::Value)
        );
        let big: Vec<(String, String)> = (0..8)
            .map(|i| (format!("key{i}"), "v".repeat(128)))
            .collect();
        assert_eq!(
            Metadata::parse(big.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            Err(MetadataError::TooLarge)
        );
        assert_eq!(
            Metadata::parse([("a", "1"), ("a", "2")]),
            Err(MetadataError::Duplicate)
        );
    }

    /// A permission change stops exactly the watches no longer allowed;
    /// those stopped hear nothing more.
    #[test]
    fn revoked_watches_stop_and_hear_nothing_more() {
        let mut p = Presence::new(PresenceLimits::default());
        let (mut d, mut e) = (Vec::new(), Vec::new());
        let watcher = conn(0, 1);
        p.watch(T, &subject("rooms.secret"), watcher, 1).unwrap();
        p.watch(T, &subject("rooms.lobby"), watcher, 2).unwrap();
        p.watch(T, &subject("rooms.secret"), watcher, 3).unwrap();
        let revoked = p.revoke_watches(watcher, |s| s.as_bytes() != b"rooms.secret");
        assert_eq!(revoked, [1, 3]);
        assert!(p.revoke_watches(watcher, |_| true).is_empty());
        assert!(p.revoke_watches(conn(0, 9), |_| false).is_empty());
        for room in ["rooms.secret", "rooms.lobby"] {
            p.track(
                T,
                &subject(room),
                conn(0, 2),
                Sid(if room == "rooms.lobby" { 1 } else { 2 }),
                member(2, ClientKind::Human),
                &mut d,
                &mut e,
            )
            .unwrap();
        }
        assert_eq!(
            e.iter().map(|ev| ev.watch).collect::<Vec<_>>(),
            [2],
            "only the lobby watch is left"
        );
        assert_eq!(p.gauges().watches, 1);
    }

    #[test]
    fn join_is_listed_and_watchers_hear_join_and_leave() {
        let mut p = Presence::new(PresenceLimits::default());
        let (mut d, mut e) = (Vec::new(), Vec::new());
        let watcher = conn(0, 1);
        p.watch(T, &subject("room.1"), watcher, 7).unwrap();
        p.track(
            T,
            &subject("room.1"),
            conn(0, 2),
            Sid(3),
            member(2, ClientKind::Human),
            &mut d,
            &mut e,
        )
        .unwrap();
        assert_eq!(ids(&p, T, "room.1"), [2]);
        assert!(matches!(&d[..], [Delta::Join { key, .. }] if key.sid == Sid(3)));
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].conn, e[0].watch, e[0].action),
            (watcher, 7, Action::Join)
        );
        assert_eq!(e[0].member.kind, ClientKind::Human);
        // The same subscription cannot be listed twice.
        assert_eq!(
            p.track(
                T,
                &subject("room.1"),
                conn(0, 2),
                Sid(3),
                member(2, ClientKind::Human),
                &mut d,
                &mut e
            ),
            Err(PresenceError::AlreadyTracked)
        );
        d.clear();
        e.clear();
        assert!(p.untrack(conn(0, 2), Sid(3), &mut d, &mut e));
        assert!(!p.untrack(conn(0, 2), Sid(3), &mut d, &mut e));
        assert!(matches!(&d[..], [Delta::Leave { .. }]));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].action, Action::Leave);
        assert!(ids(&p, T, "room.1").is_empty());
    }

    #[test]
    fn tenants_never_see_each_other() {
        let mut p = Presence::new(PresenceLimits::default());
        let (mut d, mut e) = (Vec::new(), Vec::new());
        p.watch(U, &subject("room"), conn(0, 9), 1).unwrap();
        p.track(
            T,
            &subject("room"),
            conn(0, 1),
            Sid(1),
            member(1, ClientKind::Agent),
            &mut d,
            &mut e,
        )
        .unwrap();
        assert!(e.is_empty(), "tenant U's watcher heard tenant T");
        assert!(ids(&p, U, "room").is_empty());
        assert_eq!(ids(&p, T, "room"), [1]);
    }

    #[test]
    fn replicas_follow_deltas_and_watchers_on_each_shard_hear_them() {
        // Shard 0 owns the member; shard 1 holds a replica and a watcher.
        let (mut s0, mut s1) = (
            Presence::new(PresenceLimits::default()),
            Presence::new(PresenceLimits::default()),
        );
        let (mut d, mut e) = (Vec::new(), Vec::new());
        s1.watch(T, &subject("room"), conn(1, 1), 5).unwrap();
        s0.track(
            T,
            &subject("room"),
            conn(0, 1),
            Sid(1),
            member(10, ClientKind::Device),
            &mut d,
            &mut e,
        )
        .unwrap();
        assert!(e.is_empty());
        for delta in &d {
            s1.apply(delta, &mut e);
        }
        assert_eq!(ids(&s1, T, "room"), [10]);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].conn, e[0].action), (conn(1, 1), Action::Join));
        // The member's connection drops without a goodbye.
        d.clear();
        e.clear();
        s0.close(conn(0, 1), &mut d, &mut e);
        for delta in &d {
            s1.apply(delta, &mut e);
        }
        assert!(ids(&s0, T, "room").is_empty());
        assert!(ids(&s1, T, "room").is_empty());
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].action, Action::Leave);
        assert_eq!(s0.gauges(), PresenceGauges::default());
        assert_eq!(s1.gauges().watches, 1);
    }

    #[test]
    fn close_leaves_every_subject_and_stops_watches() {
        let mut p = Presence::new(PresenceLimits::default());
        let (mut d, mut e) = (Vec::new(), Vec::new());
        let c = conn(0, 1);
        for (i, s) in ["a", "b", "c"].into_iter().enumerate() {
            p.track(
                T,
                &subject(s),
                c,
                Sid(i as u64 + 1),
                member(1, ClientKind::Agent),
                &mut d,
                &mut e,
            )
            .unwrap();
        }
        p.watch(T, &subject("a"), c, 1).unwrap();
        d.clear();
        p.close(c, &mut d, &mut e);
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|x| matches!(x, Delta::Leave { .. })));
        assert_eq!(p.gauges(), PresenceGauges::default());
        assert!(p.tenants.is_empty() && p.conns.is_empty());
    }

    #[test]
    fn bounds_per_subject_and_per_tenant_refuse_cleanly() {
        let limits = PresenceLimits {
            per_subject: 2,
            per_tenant: 3,
            watches_per_conn: 1,
            query_max: 10,
        };
        let mut p = Presence::new(limits);
        let (mut d, mut e) = (Vec::new(), Vec::new());
        let mut track = |p: &mut Presence, s: &str, n: u32| {
            p.track(
                T,
                &subject(s),
                conn(0, n),
                Sid(1),
                member(u64::from(n), ClientKind::Human),
                &mut d,
                &mut e,
            )
        };
        track(&mut p, "x", 1).unwrap();
        track(&mut p, "x", 2).unwrap();
        assert_eq!(
            track(&mut p, "x", 3),
            Err(PresenceError::SubjectFull { limit: 2 })
        );
        track(&mut p, "y", 3).unwrap();
        assert_eq!(
            track(&mut p, "z", 4),
            Err(PresenceError::TenantFull { limit: 3 })
        );
        assert_eq!(p.gauges().members, 3);
        assert_eq!(
            PresenceError::SubjectFull { limit: 2 }.code(),
            ErrorCode::PresenceLimitExceeded
        );
        // Another tenant has its own bound.
        p.track(
            U,
            &subject("z"),
            conn(0, 9),
            Sid(1),
            member(9, ClientKind::Human),
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .unwrap();
        // Watches per connection.
        p.watch(T, &subject("x"), conn(0, 5), 1).unwrap();
        assert_eq!(
            p.watch(T, &subject("y"), conn(0, 5), 2),
            Err(PresenceError::TooManyWatches { limit: 1 })
        );
        assert_eq!(
            p.watch(T, &subject("y"), conn(0, 6), 0),
            Err(PresenceError::InvalidWatch)
        );
        assert_eq!(p.unwatch(conn(0, 6), 1), Err(PresenceError::UnknownWatch));
        p.unwatch(conn(0, 5), 1).unwrap();
    }

    #[test]
    fn a_replica_never_refuses_so_shards_agree() {
        let limits = PresenceLimits {
            per_subject: 1,
            ..PresenceLimits::default()
        };
        let (mut s0, mut s1) = (Presence::new(limits), Presence::new(limits));
        let (mut d0, mut d1, mut e) = (Vec::new(), Vec::new(), Vec::new());
        // Both shards admit one member at the same moment.
        s0.track(
            T,
            &subject("x"),
            conn(0, 1),
            Sid(1),
            member(1, ClientKind::Human),
            &mut d0,
            &mut e,
        )
        .unwrap();
        s1.track(
            T,
            &subject("x"),
            conn(1, 1),
            Sid(1),
            member(2, ClientKind::Human),
            &mut d1,
            &mut e,
        )
        .unwrap();
        for d in &d0 {
            s1.apply(d, &mut e);
        }
        for d in &d1 {
            s0.apply(d, &mut e);
        }
        assert_eq!(ids(&s0, T, "x"), [1, 2]);
        assert_eq!(ids(&s1, T, "x"), [1, 2]);
        // Now both see the bound: a third is refused on either shard.
        assert!(matches!(
            s0.track(
                T,
                &subject("x"),
                conn(0, 2),
                Sid(1),
                member(3, ClientKind::Human),
                &mut d0,
                &mut e
            ),
            Err(PresenceError::SubjectFull { .. })
        ));
    }

    #[test]
    fn queries_are_ordered_and_cut_at_the_bound() {
        let limits = PresenceLimits {
            query_max: 2,
            ..PresenceLimits::default()
        };
        let mut p = Presence::new(limits);
        for n in [3u32, 1, 2] {
            p.track(
                T,
                &subject("x"),
                conn(0, n),
                Sid(1),
                member(u64::from(n), ClientKind::Human),
                &mut Vec::new(),
                &mut Vec::new(),
            )
            .unwrap();
        }
        let mut out = Vec::new();
        assert!(p.query(T, &subject("x"), usize::MAX, &mut out));
        assert_eq!(out.iter().map(|m| m.client_id).collect::<Vec<_>>(), [1, 2]);
        // An answer is also cut to the bytes a frame may carry.
        let one = out[0].wire_bound();
        out.clear();
        assert!(p.query(T, &subject("x"), one + one / 2, &mut out));
        assert_eq!(out.iter().map(|m| m.client_id).collect::<Vec<_>>(), [1]);
        out.clear();
        assert!(!p.query(T, &subject("nobody"), usize::MAX, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_members_wire_bound_is_never_below_its_encoding() {
        use prost::Message as _;
        // The most metadata a member may carry: every entry, 1 KiB in all.
        let keys: Vec<String> = (0..MAX_META_ENTRIES).map(|i| format!("k{i}")).collect();
        let value = "v".repeat(MAX_META_BYTES / MAX_META_ENTRIES - 2);
        let metas = [
            Metadata::parse([]).unwrap(),
            Metadata::parse([("role", "viewer")]).unwrap(),
            Metadata::parse(keys.iter().map(|k| (k.as_str(), value.as_str()))).unwrap(),
        ];
        for (i, metadata) in metas.into_iter().enumerate() {
            let m = Member {
                client_id: u64::MAX,
                kind: ClientKind::Agent,
                name: "n".repeat(64 * i).into(),
                metadata,
            };
            let frame = arqonbus_proto::v1::PresenceReply {
                members: vec![m.to_wire()],
                ..arqonbus_proto::v1::PresenceReply::default()
            };
            assert!(frame.encoded_len() <= m.wire_bound(), "{i}");
        }
    }
}
