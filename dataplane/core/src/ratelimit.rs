//! Token buckets for message and byte rates, one shard's rate limiters, and
//! how a tenant's rate is shared between shards.
//!
//! No clock: callers pass `now`. A bucket refills at `rate` tokens per second
//! up to `burst`. [`TokenBucket::check`] says whether `n` tokens are there or
//! how long until they will be, so a connection can stop reading exactly that
//! long (throttling by back-pressure: nothing is dropped); [`TokenBucket::take`]
//! then spends them.
//!
//! [`Rates`] holds one shard's buckets: per tenant and per principal with a
//! message or byte rate ([`RateKey`]), created on first use. A message is
//! admitted only when every bucket that applies to it has room; it then
//! takes from all of them, so a refused message costs nothing.
//!
//! A tenant-wide rate is split across shards: each shard's bucket refills at
//! `share × rate`, shares summing to 1. Every few hundred milliseconds
//! [`rebalance`] moves share towards the shards that used theirs and were
//! throttled, so the tenant's total stays at its rate however its
//! connections are spread. Shards report their use with [`Rates::report`]
//! and take new shares with [`Rates::set_shares`].

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::snapshot::{Identity, Quotas};
use crate::{PrincipalId, TenantId};

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second, holding at most `burst`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Changes the refill rate and burst from `now` on, keeping the tokens.
    pub fn set_rate(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(0.0);
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    /// The current refill rate.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Whether `n` tokens are available now, or how long until they are. A
    /// request larger than the burst passes once the bucket is full (it then
    /// runs into debt), so large messages are slowed, never refused.
    pub fn check(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = n.min(self.burst);
        if self.tokens >= need {
            return Ok(());
        }
        if self.rate <= 0.0 {
            return Err(Duration::from_secs(1));
        }
        let wait = (need - self.tokens) / self.rate;
        Err(Duration::from_secs_f64(wait.clamp(0.000_05, 1.0)))
    }

    /// Spends `n` tokens (after a successful [`check`](Self::check)).
    pub fn take(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// [`check`](Self::check) then [`take`](Self::take).
    pub fn try_take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.check(n, now)?;
        self.take(n);
        Ok(())
    }
}

/// What a rate limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A tenant's rate, over all its principals.
    Tenant(TenantId),
    /// One principal's own rate.
    Principal(PrincipalId),
}

/// Whether `q` names a message or byte rate.
pub fn has_rate(q: &Quotas) -> bool {
    q.messages_per_second > 0 || q.bytes_per_second > 0
}

/// Whether the tenant or the principal of `id` has a rate limit.
pub fn is_rate_limited(id: &Identity) -> bool {
    has_rate(&id.tenant.quotas) || has_rate(&id.principal.quotas)
}

/// One key's buckets on this shard.
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateUse {
    /// The share this shard had.
    pub share: f64,
    /// Messages granted, and the key's whole message rate (0: unlimited).
    pub msgs: (f64, f64),
    /// Bytes granted, and the key's whole byte rate (0: unlimited).
    pub bytes: (f64, f64),
    /// Whether a message had to wait.
    pub throttled: bool,
}

/// One shard's rate limiters.
#[derive(Debug)]
pub struct Rates {
    limiters: FxHashMap<RateKey, Limiter>,
    shares: FxHashMap<RateKey, f64>,
    default_share: f64,
}

impl Rates {
    /// No limiters yet; every key starts with an equal share of `shards`.
    pub fn new(shards: usize) -> Self {
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

    /// Admits one message of `bytes` from `id`, or says how long to wait
    /// (the longest wait of the tenant's and the principal's buckets).
    pub fn admit(&mut self, id: &Identity, bytes: usize, now: Instant) -> Result<(), Duration> {
        let keys = [
            (RateKey::Tenant(id.tenant.id), &id.tenant.quotas),
            (RateKey::Principal(id.principal.id), &id.principal.quotas),
        ];
        let bytes = bytes as f64;
        let mut wait = None::<Duration>;
        for (key, q) in keys {
            if !has_rate(q) {
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
            if !has_rate(q) {
                continue;
            }
            self.limiter(key, q, now).take(bytes);
        }
        Ok(())
    }

    /// Forgets every limiter (quotas may have changed); shares are kept.
    pub fn reset(&mut self) {
        self.limiters.clear();
    }

    /// This window's use per key; counters restart.
    pub fn report(&mut self) -> Vec<(RateKey, RateUse)> {
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
    pub fn set_shares(&mut self, shares: &FxHashMap<RateKey, f64>, now: Instant) {
        for (key, share) in shares {
            self.shares.insert(*key, *share);
            if let Some(l) = self.limiters.get_mut(key) {
                l.set_share(*share, now);
            }
        }
    }
}

/// What one shard reports about one rate-limited key for the last window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShareReport {
    /// The share it had.
    pub share: f64,
    /// Tokens it granted, as a fraction of the key's whole rate over the
    /// window (so 0.4 means "used 40 % of the tenant's rate").
    pub used: f64,
    /// Whether it had to throttle.
    pub throttled: bool,
}

/// Smallest share any shard keeps, so a shard where traffic starts is not
/// starved before the next rebalance.
pub const MIN_SHARE: f64 = 0.02;

/// New shares from one window's reports (one per shard, in shard order).
/// Throttled shards ask for half again what they had or used; others keep
/// what they used. Shares always sum to 1.
pub fn rebalance(reports: &[ShareReport]) -> Vec<f64> {
    let n = reports.len();
    if n == 0 {
        return Vec::new();
    }
    let wants: Vec<f64> = reports
        .iter()
        .map(|r| {
            let want = if r.throttled {
                r.used.max(r.share) * 1.5
            } else {
                r.used
            };
            want.max(MIN_SHARE)
        })
        .collect();
    let total: f64 = wants.iter().sum();
    if total <= 0.0 {
        return vec![1.0 / n as f64; n];
    }
    wants.iter().map(|w| w / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 10.0, t0);
        for _ in 0..10 {
            assert!(b.try_take(1.0, t0).is_ok());
        }
        let wait = b.check(1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-9, "{wait:?}");
        assert!(b.try_take(1.0, t0 + Duration::from_millis(10)).is_ok());
        let mut granted = 0;
        let mut t = t0 + Duration::from_millis(10);
        for _ in 0..1000 {
            t += Duration::from_millis(1);
            while b.try_take(1.0, t).is_ok() {
                granted += 1;
            }
        }
        assert!((99..=101).contains(&granted), "{granted}");
    }

    #[test]
    fn big_requests_pass_when_full_then_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        b.set_rate(1000.0, 5.0, t0);
        assert!((b.rate() - 1000.0).abs() < f64::EPSILON);
        assert!(
            b.try_take(50.0, t0).is_ok(),
            "larger than burst: allowed when full"
        );
        assert!(b.check(1.0, t0).is_err(), "then in debt");
    }

    /// Two shards share a tenant rate of 10 000 msg/s while the tenant's
    /// publishers move between them; rebalancing every 200 ms keeps the
    /// tenant's total within 10 % of its rate once it has had a window to
    /// adapt, and never far above it.
    #[test]
    fn a_tenant_rate_split_across_shards_holds_its_total() {
        const RATE: f64 = 10_000.0;
        const WINDOW_MS: u64 = 200;
        let t0 = Instant::now();
        let mut shares = [0.5, 0.5];
        let burst = |share: f64| (RATE * share * 0.1).max(1.0);
        let mut buckets = [
            TokenBucket::new(RATE * shares[0], burst(shares[0]), t0),
            TokenBucket::new(RATE * shares[1], burst(shares[1]), t0),
        ];
        // Offered load per shard, msg/s, per phase of 2 s.
        let phases: [[f64; 2]; 4] = [
            [50_000.0, 0.0],
            [50_000.0, 50_000.0],
            [0.0, 50_000.0],
            [30_000.0, 2_000.0],
        ];
        let mut t = t0;
        for (p, offered) in phases.iter().enumerate() {
            let mut per_second = Vec::new();
            for second in 0..2 {
                let mut granted_second = 0.0;
                for _window in 0..(1000 / WINDOW_MS) {
                    let mut granted = [0.0f64; 2];
                    let mut throttled = [false; 2];
                    // 1 ms steps; each shard tries its offered load.
                    for _ in 0..WINDOW_MS {
                        t += Duration::from_millis(1);
                        for s in 0..2 {
                            let mut want = offered[s] / 1000.0;
                            while want >= 1.0 {
                                if buckets[s].try_take(1.0, t).is_ok() {
                                    granted[s] += 1.0;
                                    want -= 1.0;
                                } else {
                                    throttled[s] = true;
                                    break;
                                }
                            }
                        }
                    }
                    granted_second += granted[0] + granted[1];
                    let window_tokens = RATE * WINDOW_MS as f64 / 1000.0;
                    let reports: Vec<ShareReport> = (0..2)
                        .map(|s| ShareReport {
                            share: shares[s],
                            used: granted[s] / window_tokens,
                            throttled: throttled[s],
                        })
                        .collect();
                    let next = rebalance(&reports);
                    for s in 0..2 {
                        shares[s] = next[s];
                        buckets[s].set_rate(RATE * shares[s], burst(shares[s]), t);
                    }
                    assert!((shares[0] + shares[1] - 1.0).abs() < 1e-9);
                }
                if second > 0 {
                    per_second.push(granted_second);
                }
            }
            let demand: f64 = offered.iter().sum();
            for total in per_second {
                assert!(total <= RATE * 1.1, "phase {p}: {total} over the rate");
                if demand >= RATE {
                    assert!(total >= RATE * 0.9, "phase {p}: {total} under the rate");
                }
            }
        }
    }
}
