//! Quotas that span shards.
//!
//! - **Counts** (connections, subscriptions per tenant and per principal):
//!   one [`Usage`] of atomics per tenant and per principal, shared by all
//!   shards through the [`QuotaBook`]. They change only when a connection
//!   opens or closes or a subscription is added or removed, never per
//!   message, so the message path stays free of shared state. A connection
//!   looks its counters up once (under a mutex) and keeps them in [`Holds`].
//! - **Rates** (messages and bytes per second): per-shard token buckets
//!   ([`Rates`]), each refilling at this shard's share of the tenant's (or
//!   principal's) rate. The data plane's rebalancer moves shares between
//!   shards from their reports (`arqonbus_core::ratelimit::rebalance`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arqonbus_core::ratelimit::TokenBucket;
use arqonbus_core::snapshot::{Identity, Quotas};
use arqonbus_core::{PrincipalId, TenantId};
use rustc_hash::FxHashMap;

/// Live counts of one tenant or principal, across all shards.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    connections: AtomicU32,
    subscriptions: AtomicU32,
}

/// Takes one unit of `counter` if that stays within `limit` (0: no limit).
fn acquire(counter: &AtomicU32, limit: u32) -> bool {
    // Relaxed: the counter is its own synchronisation; no other memory is
    // published through it.
    let before = counter.fetch_add(1, Ordering::Relaxed);
    if limit != 0 && before >= limit {
        counter.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

fn release(counter: &AtomicU32, n: u32) {
    if n > 0 {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Every tenant's and principal's [`Usage`].
#[derive(Debug, Default)]
pub(crate) struct QuotaBook {
    tenants: Mutex<FxHashMap<TenantId, Arc<Usage>>>,
    principals: Mutex<FxHashMap<PrincipalId, Arc<Usage>>>,
}

impl QuotaBook {
    /// The counters of `id`'s tenant and principal.
    pub(crate) fn holds(&self, id: &Identity) -> Holds {
        let tenant = self
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.tenant.id)
            .or_default()
            .clone();
        let principal = self
            .principals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.principal.id)
            .or_default()
            .clone();
        Holds { tenant, principal }
    }
}

/// A connection's handle on its tenant's and principal's counters.
#[derive(Debug)]
pub(crate) struct Holds {
    tenant: Arc<Usage>,
    principal: Arc<Usage>,
}

impl Holds {
    /// Counts a new connection, unless a limit is reached.
    pub(crate) fn connect(&self, id: &Identity) -> bool {
        if !acquire(&self.tenant.connections, id.tenant.quotas.max_connections) {
            return false;
        }
        if !acquire(
            &self.principal.connections,
            id.principal.quotas.max_connections,
        ) {
            release(&self.tenant.connections, 1);
            return false;
        }
        true
    }

    /// Counts a new subscription, unless a limit is reached.
    pub(crate) fn subscribe(&self, id: &Identity) -> bool {
        if !acquire(
            &self.tenant.subscriptions,
            id.tenant.quotas.max_subscriptions,
        ) {
            return false;
        }
        if !acquire(
            &self.principal.subscriptions,
            id.principal.quotas.max_subscriptions,
        ) {
            release(&self.tenant.subscriptions, 1);
            return false;
        }
        true
    }

    /// Gives back `n` subscriptions.
    pub(crate) fn unsubscribe(&self, n: u32) {
        release(&self.tenant.subscriptions, n);
        release(&self.principal.subscriptions, n);
    }

    /// Gives back the connection.
    pub(crate) fn disconnect(&self) {
        release(&self.tenant.connections, 1);
        release(&self.principal.connections, 1);
    }
}

/// What a rate limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RateKey {
    Tenant(TenantId),
    Principal(PrincipalId),
}

#[derive(Debug)]
struct Limiter {
    msgs: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    msg_rate: f64,
    byte_rate: f64,
    share: f64,
    granted_msgs: f64,
    granted_bytes: f64,
    throttled: bool,
}

/// Burst: a tenth of a second at the shard's share of the rate.
fn burst(rate: f64) -> f64 {
    (rate * 0.1).max(1.0)
}

impl Limiter {
    fn new(q: &Quotas, share: f64, now: Instant) -> Self {
        let msg_rate = q.messages_per_second as f64;
        let byte_rate = q.bytes_per_second as f64;
        let bucket = |rate: f64| {
            (rate > 0.0).then(|| TokenBucket::new(rate * share, burst(rate * share), now))
        };
        Self {
            msgs: bucket(msg_rate),
            bytes: bucket(byte_rate),
            msg_rate,
            byte_rate,
            share,
            granted_msgs: 0.0,
            granted_bytes: 0.0,
            throttled: false,
        }
    }

    fn check(&mut self, bytes: f64, now: Instant) -> Result<(), Duration> {
        let m = self.msgs.as_mut().map_or(Ok(()), |b| b.check(1.0, now));
        let b = self.bytes.as_mut().map_or(Ok(()), |b| b.check(bytes, now));
        match (m, b) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(w), _) | (_, Err(w)) => Err(w),
        }
    }

    fn take(&mut self, bytes: f64) {
        if let Some(b) = self.msgs.as_mut() {
            b.take(1.0);
        }
        if let Some(b) = self.bytes.as_mut() {
            b.take(bytes);
        }
        self.granted_msgs += 1.0;
        self.granted_bytes += bytes;
    }

    fn set_share(&mut self, share: f64, now: Instant) {
        self.share = share;
        if let Some(b) = self.msgs.as_mut() {
            let r = self.msg_rate * share;
            b.set_rate(r, burst(r), now);
        }
        if let Some(b) = self.bytes.as_mut() {
            let r = self.byte_rate * share;
            b.set_rate(r, burst(r), now);
        }
    }
}

/// What a shard tells the rebalancer about one key for the last window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateUse {
    pub(crate) share: f64,
    /// Messages granted, and the key's whole message rate (0: unlimited).
    pub(crate) msgs: (f64, f64),
    /// Bytes granted, and the key's whole byte rate (0: unlimited).
    pub(crate) bytes: (f64, f64),
    pub(crate) throttled: bool,
}

/// One shard's rate limiters.
#[derive(Debug)]
pub(crate) struct Rates {
    limiters: FxHashMap<RateKey, Limiter>,
    shares: FxHashMap<RateKey, f64>,
    default_share: f64,
}

impl Rates {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            limiters: FxHashMap::default(),
            shares: FxHashMap::default(),
            default_share: 1.0 / shards.max(1) as f64,
        }
    }

    fn limiter(&mut self, key: RateKey, q: &Quotas, now: Instant) -> &mut Limiter {
        let share = self.shares.get(&key).copied().unwrap_or(self.default_share);
        self.limiters
            .entry(key)
            .or_insert_with(|| Limiter::new(q, share, now))
    }

    /// Admits one message of `bytes` from `id`, or says how long to wait.
    pub(crate) fn admit(
        &mut self,
        id: &Identity,
        bytes: usize,
        now: Instant,
    ) -> Result<(), Duration> {
        let keys = [
            (RateKey::Tenant(id.tenant.id), &id.tenant.quotas),
            (RateKey::Principal(id.principal.id), &id.principal.quotas),
        ];
        let bytes = bytes as f64;
        let mut wait = None::<Duration>;
        for (key, q) in keys {
            if q.messages_per_second == 0 && q.bytes_per_second == 0 {
                continue;
            }
            let limiter = self.limiter(key, q, now);
            if let Err(w) = limiter.check(bytes, now) {
                limiter.throttled = true;
                wait = Some(wait.map_or(w, |x| x.max(w)));
            }
        }
        if let Some(w) = wait {
            return Err(w);
        }
        for (key, q) in keys {
            if q.messages_per_second == 0 && q.bytes_per_second == 0 {
                continue;
            }
            self.limiter(key, q, now).take(bytes);
        }
        Ok(())
    }

    /// Forgets every limiter (quotas may have changed); shares are kept.
    pub(crate) fn reset(&mut self) {
        self.limiters.clear();
    }

    /// This window's use per key; counters restart.
    pub(crate) fn report(&mut self) -> Vec<(RateKey, RateUse)> {
        self.limiters
            .iter_mut()
            .map(|(k, l)| {
                let r = RateUse {
                    share: l.share,
                    msgs: (l.granted_msgs, l.msg_rate),
                    bytes: (l.granted_bytes, l.byte_rate),
                    throttled: l.throttled,
                };
                l.granted_msgs = 0.0;
                l.granted_bytes = 0.0;
                l.throttled = false;
                (*k, r)
            })
            .collect()
    }

    /// New shares from the rebalancer.
    pub(crate) fn set_shares(&mut self, shares: &FxHashMap<RateKey, f64>, now: Instant) {
        for (key, share) in shares {
            self.shares.insert(*key, *share);
            if let Some(l) = self.limiters.get_mut(key) {
                l.set_share(*share, now);
            }
        }
    }
}
