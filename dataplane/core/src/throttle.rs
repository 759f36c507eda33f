//! Login throttling: which `Connect` attempts a shard refuses, before it
//! checks their credential, because their source or the principal they name
//! failed to authenticate too often.
//!
//! [`AuthThrottle`] keeps two fixed-size tables of failure scores, one keyed
//! by source address (IPv4 address, or IPv6 /64 prefix: one host usually
//! owns a whole /64) and one by the principal a signed token's claims name
//! (bearer tokens name nobody until they match). A failed authentication
//! adds 1 to the score of its source and of its claimed principal; scores
//! decay linearly (`decay_per_sec`), so a source may fail `burst` times at
//! once and then about `decay_per_sec` times a second for ever.
//!
//! Before a credential is checked, [`AuthThrottle::check`] refuses the
//! attempt when
//! - its source's score is at `source_burst` or above (an attempt refused
//!   this way adds to the score too, capped at twice the burst, so a source
//!   that keeps flooding stays refused and is free again at most
//!   `burst / decay` seconds (10 s by default) after it stops), or
//! - the principal it names is at `principal_burst` or above **and** its
//!   source has failed recently (score ≥ 1). A principal under attack is
//!   thus never locked out for its owners, who log in from sources that did
//!   not fail; an attacker spreading guesses over many sources gets one
//!   failure per source while the principal's score is high.
//!
//! Invariants:
//! - bounded memory: both tables are allocated once, at construction, with
//!   `buckets × WAYS` slots, and never grow; a new key takes the slot of
//!   its bucket with the lowest decayed score (a free slot first);
//! - only failures insert: a valid login from a source that never failed
//!   reads one bucket and changes nothing, so it costs the same under a
//!   flood from elsewhere;
//! - no I/O, no clock, no randomness: callers pass `now` and the seed that
//!   keys the table hash (so a remote peer cannot aim its keys at one
//!   bucket to evict others);
//! - nothing here holds or returns the credential: an [`Attempt`] keeps only
//!   the source key and the claimed principal's ids.
//!
//! One shard owns one `AuthThrottle` for the connections it accepts. The
//! bound is per shard: a source whose connections are spread over `n`
//! shards gets up to `n × burst` failures at once, still a constant, and no
//! state crosses cores (see `specs/threat-model.md`, login throttling).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::auth::{self, SIGNED_PREFIX};

/// Slots per bucket.
pub const WAYS: usize = 4;

/// The throttle's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleConfig {
    /// Failures a source may have before its attempts are refused.
    pub source_burst: f32,
    /// How fast a source's failures are forgiven, per second.
    pub source_decay_per_sec: f32,
    /// Failures naming one principal before attempts naming it from
    /// sources that failed are refused.
    pub principal_burst: f32,
    /// How fast a principal's failures are forgiven, per second.
    pub principal_decay_per_sec: f32,
    /// Buckets per table (rounded up to a power of two, at least 1).
    pub buckets: usize,
}

impl Default for ThrottleConfig {
    /// 10 failures per source, forgiven at 1 a second; 20 per principal,
    /// forgiven at 2 a second; 256 buckets of 4 slots (1,024 sources and
    /// 1,024 principals per shard, about 80 KiB).
    fn default() -> Self {
        Self {
            source_burst: 10.0,
            source_decay_per_sec: 1.0,
            principal_burst: 20.0,
            principal_decay_per_sec: 2.0,
            buckets: 256,
        }
    }
}

/// Where an attempt came from, as the throttle keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey([u8; 16]);

impl SourceKey {
    /// The key of `ip`: an IPv4 address (IPv4-mapped IPv6 included) whole,
    /// an IPv6 address by its /64 prefix.
    pub fn of(ip: IpAddr) -> Self {
        let mut key = [0u8; 16];
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                key[0] = 4;
                key[1..5].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                key[0] = 6;
                key[1..9].copy_from_slice(&v6.octets()[..8]);
            }
        }
        Self(key)
    }

    fn words(&self) -> [u64; 2] {
        let (a, b) = self.0.split_at(8);
        [
            u64::from_le_bytes(a.try_into().unwrap_or_default()),
            u64::from_le_bytes(b.try_into().unwrap_or_default()),
        ]
    }
}

/// The principal a credential claims to be, before it is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimedPrincipal {
    /// The claimed tenant id.
    pub tenant: u64,
    /// The claimed principal id.
    pub principal: u64,
}

impl ClaimedPrincipal {
    /// The principal named by a signed token's claims; `None` for bearer
    /// tokens and for anything that does not parse. Nothing is verified.
    pub fn of(credential: &str) -> Option<Self> {
        if !credential.starts_with(SIGNED_PREFIX) {
            return None;
        }
        let (claims, _, _) = auth::parse_signed(credential).ok()?;
        Some(Self {
            tenant: claims.tenant_id,
            principal: claims.principal_id,
        })
    }

    fn words(&self) -> [u64; 2] {
        [self.tenant, self.principal]
    }
}

/// One `Connect` attempt the throttle let through, kept until its outcome
/// is known. Holds no part of the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Its source, when the transport knows one.
    pub source: Option<SourceKey>,
    /// The principal its credential claims, for signed tokens.
    pub principal: Option<ClaimedPrincipal>,
}

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    /// Its source failed too often.
    Source,
    /// The principal it names failed too often, and so did its source.
    Principal,
}

impl ThrottleReason {
    /// For logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Principal => "principal",
        }
    }
}

/// The throttle's answer before a credential is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check the credential; report a failure with [`AuthThrottle::failed`].
    Go(Attempt),
    /// Refuse without checking the credential.
    Refuse {
        /// Why.
        reason: ThrottleReason,
        /// When an attempt from this source may pass again if it sends
        /// nothing meanwhile (at least 1 ms).
        retry_after: Duration,
        /// What was refused (to log, without the credential).
        attempt: Attempt,
        /// The first refusal of this source's streak: worth a warning; the
        /// rest of a flood only counts.
        first: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: [u64; 2],
    score: f32,
    at: Instant,
}

impl Slot {
    /// The score at `now`, decayed at `decay` per second.
    fn score_at(&self, now: Instant, decay: f32) -> f32 {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "seconds since the last failure; f32 precision is plenty"
        )]
        let dt = now.saturating_duration_since(self.at).as_secs_f64() as f32;
        (self.score - dt * decay).max(0.0)
    }
}

/// A fixed-size, set-associative table of decaying scores.
#[derive(Debug)]
struct DecayTable {
    slots: Vec<Option<Slot>>,
    mask: usize,
    seed: u64,
    burst: f32,
    decay: f32,
}

/// The splitmix64 finaliser: a cheap, well-mixing bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DecayTable {
    fn new(buckets: usize, seed: u64, burst: f32, decay: f32) -> Self {
        let buckets = buckets.max(1).next_power_of_two();
        Self {
            slots: vec![None; buckets * WAYS],
            mask: buckets - 1,
            seed,
            burst: burst.max(1.0),
            decay: decay.max(0.0),
        }
    }

    fn bucket(&self, key: [u64; 2]) -> std::ops::Range<usize> {
        let h = mix(mix(self.seed ^ key[0]) ^ key[1]);
        #[allow(
            clippy::cast_possible_truncation,
            reason = "only the low bits select a bucket"
        )]
        let b = (h as usize) & self.mask;
        b * WAYS..(b + 1) * WAYS
    }

    /// The decayed score of `key` (0 when absent).
    fn score(&self, key: [u64; 2], now: Instant) -> f32 {
        self.slots[self.bucket(key)]
            .iter()
            .flatten()
            .find(|s| s.key == key)
            .map_or(0.0, |s| s.score_at(now, self.decay))
    }

    /// Adds one failure to `key`, capped at twice the burst; inserts it,
    /// evicting the lowest score of its bucket, when absent.
    fn add(&mut self, key: [u64; 2], now: Instant) {
        let decay = self.decay;
        let cap = 2.0 * self.burst;
        let range = self.bucket(key);
        let bucket = &mut self.slots[range];
        if let Some(slot) = bucket.iter_mut().flatten().find(|s| s.key == key) {
            slot.score = (slot.score_at(now, decay) + 1.0).min(cap);
            slot.at = now;
            return;
        }
        let victim = bucket
            .iter_mut()
            .min_by(|a, b| {
                let sa = a.map_or(-1.0, |s| s.score_at(now, decay));
                let sb = b.map_or(-1.0, |s| s.score_at(now, decay));
                sa.total_cmp(&sb)
            })
            .map(|v| {
                *v = Some(Slot {
                    key,
                    score: 1.0,
                    at: now,
                });
            });
        debug_assert!(victim.is_some(), "a bucket has WAYS > 0 slots");
    }

    /// How long until `score` falls below the burst.
    fn wait(&self, score: f32) -> Duration {
        if self.decay <= 0.0 {
            return Duration::from_secs(3600);
        }
        let secs = ((score - self.burst).max(0.0) / self.decay).max(0.001);
        Duration::try_from_secs_f32(secs).unwrap_or(Duration::from_secs(3600))
    }

    /// Slots holding a score above zero at `now` (for tests and gauges).
    fn live(&self, now: Instant) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.score_at(now, self.decay) > 0.0)
            .count()
    }
}

/// One shard's login throttle (see the module documentation).
#[derive(Debug)]
pub struct AuthThrottle {
    sources: DecayTable,
    principals: DecayTable,
}

impl AuthThrottle {
    /// A throttle with `config`; `seed` keys the table hash (pass a random
    /// value per process).
    pub fn new(config: ThrottleConfig, seed: u64) -> Self {
        Self {
            sources: DecayTable::new(
                config.buckets,
                seed,
                config.source_burst,
                config.source_decay_per_sec,
            ),
            principals: DecayTable::new(
                config.buckets,
                mix(seed ^ 0x5052_494e_4349_5041),
                config.principal_burst,
                config.principal_decay_per_sec,
            ),
        }
    }

    /// Whether a `Connect` from `source` presenting `credential` may be
    /// checked at `now`. The credential is only looked at for the principal
    /// a signed token claims.
    pub fn check(&mut self, source: Option<IpAddr>, credential: &str, now: Instant) -> Verdict {
        let attempt = Attempt {
            source: source.map(SourceKey::of),
            principal: ClaimedPrincipal::of(credential),
        };
        let source_score = attempt
            .source
            .map_or(0.0, |s| self.sources.score(s.words(), now));
        if source_score >= self.sources.burst {
            if let Some(s) = attempt.source {
                self.sources.add(s.words(), now);
            }
            return Verdict::Refuse {
                reason: ThrottleReason::Source,
                retry_after: self.sources.wait(source_score + 1.0),
                attempt,
                first: source_score < self.sources.burst + 1.0,
            };
        }
        if let Some(p) = attempt.principal
            && source_score >= 1.0
        {
            let principal_score = self.principals.score(p.words(), now);
            if principal_score >= self.principals.burst {
                return Verdict::Refuse {
                    reason: ThrottleReason::Principal,
                    retry_after: self
                        .sources
                        .wait(self.sources.burst + source_score - 1.0)
                        .max(Duration::from_millis(1)),
                    attempt,
                    first: principal_score < self.principals.burst + 1.0,
                };
            }
        }
        Verdict::Go(attempt)
    }

    /// Records that `attempt` failed to authenticate at `now`.
    pub fn failed(&mut self, attempt: &Attempt, now: Instant) {
        if let Some(s) = attempt.source {
            self.sources.add(s.words(), now);
        }
        if let Some(p) = attempt.principal {
            self.principals.add(p.words(), now);
        }
    }

    /// Sources and principals with a failure not yet forgiven at `now`.
    pub fn tracked(&self, now: Instant) -> (usize, usize) {
        (self.sources.live(now), self.principals.live(now))
    }

    /// The number of slots of each table: the most sources (and principals)
    /// ever tracked at once.
    pub fn capacity(&self) -> usize {
        self.sources.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use arqonbus_proto::v1::SignedTokenClaims;
    use ring::rand::SystemRandom;
    use ring::signature::Ed25519KeyPair;

    use super::*;

    const BAD: &str = "abt_wrong";

    /// A source as the runtime passes it (`None` when the transport knows
    /// no peer address).
    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    fn throttle() -> AuthThrottle {
        AuthThrottle::new(ThrottleConfig::default(), 0x1234)
    }

    /// Fails `n` attempts from `source` with `credential`, as a shard does:
    /// refused ones are not checked, so they are not reported as failures.
    fn fail(t: &mut AuthThrottle, source: Option<IpAddr>, credential: &str, n: u32, now: Instant) {
        for _ in 0..n {
            if let Verdict::Go(a) = t.check(source, credential, now) {
                t.failed(&a, now);
            }
        }
    }

    fn signed_token(tenant: u64, principal: u64) -> String {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        auth::sign_token(
            &SignedTokenClaims {
                tenant_id: tenant,
                principal_id: principal,
                credential_id: 9,
                issued_at_unix: 0,
                expires_at_unix: 100,
            },
            &key,
        )
    }

    fn refused(v: Verdict) -> Option<ThrottleReason> {
        match v {
            Verdict::Go(_) => None,
            Verdict::Refuse { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn a_flooding_source_is_refused_after_its_burst() {
        let mut t = throttle();
        let now = Instant::now();
        let attacker = ip("192.0.2.7");
        let (mut checked, mut first) = (0, 0);
        for _ in 0..300 {
            match t.check(attacker, BAD, now) {
                Verdict::Go(a) => {
                    checked += 1;
                    t.failed(&a, now);
                }
                Verdict::Refuse {
                    reason,
                    retry_after,
                    first: f,
                    ..
                } => {
                    assert_eq!(reason, ThrottleReason::Source);
                    assert!(retry_after >= Duration::from_millis(1));
                    first += u32::from(f);
                }
            }
        }
        assert_eq!(checked, 10, "exactly the burst is checked");
        assert_eq!(first, 1, "one refusal per streak is worth a warning");
        // Even its valid credential is refused while it floods.
        assert_eq!(
            refused(t.check(attacker, "abt_valid", now)),
            Some(ThrottleReason::Source)
        );
    }

    #[test]
    fn other_sources_are_not_slowed() {
        let mut t = throttle();
        let now = Instant::now();
        fail(&mut t, ip("192.0.2.7"), BAD, 300, now);
        assert_eq!(refused(t.check(ip("127.0.0.2"), "abt_valid", now)), None);
        assert_eq!(refused(t.check(ip("192.0.2.8"), BAD, now)), None);
        assert_eq!(refused(t.check(None, BAD, now)), None);
        // Checking a clean source inserted nothing.
        assert_eq!(t.tracked(now), (1, 0));
    }

    #[test]
    fn failures_are_forgiven_over_time() {
        let mut t = throttle();
        let t0 = Instant::now();
        let src = ip("198.51.100.1");
        fail(&mut t, src, BAD, 10, t0);
        assert!(refused(t.check(src, BAD, t0)).is_some());
        // The refused attempt raised the score to 11: 1.5 s later it is 9.5.
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(refused(t.check(src, BAD, later)), None);
        // A steady failure a second never trips it.
        let mut now = later;
        for _ in 0..100 {
            now += Duration::from_secs(1);
            let Verdict::Go(a) = t.check(src, BAD, now) else {
                panic!("a failure a second is allowed")
            };
            t.failed(&a, now);
        }
        // Fully forgiven after a long quiet spell.
        assert_eq!(t.tracked(now + Duration::from_secs(60)), (0, 0));
    }

    #[test]
    fn a_persistent_flood_stays_refused_but_the_penalty_is_capped() {
        let mut t = throttle();
        let t0 = Instant::now();
        let src = ip("203.0.113.5");
        let mut now = t0;
        for _ in 0..10_000 {
            now += Duration::from_millis(10);
            fail(&mut t, src, BAD, 1, now);
        }
        assert!(refused(t.check(src, BAD, now)).is_some());
        // Capped at 2 × burst = 20: free again within 11 s of stopping.
        assert_eq!(
            refused(t.check(src, BAD, now + Duration::from_secs(11))),
            None
        );
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::of(a), SourceKey::of(b));
        assert_ne!(SourceKey::of(a), SourceKey::of(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(
            SourceKey::of(mapped),
            SourceKey::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_ne!(
            SourceKey::of(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            SourceKey::of(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        );

        let mut t = throttle();
        let now = Instant::now();
        fail(&mut t, Some(a), BAD, 10, now);
        assert!(refused(t.check(Some(b), BAD, now)).is_some());
        assert_eq!(refused(t.check(Some(c), BAD, now)), None);
    }

    #[test]
    fn memory_is_bounded_by_the_table() {
        let mut t = AuthThrottle::new(
            ThrottleConfig {
                buckets: 16,
                ..ThrottleConfig::default()
            },
            7,
        );
        assert_eq!(t.capacity(), 64);
        let now = Instant::now();
        for i in 0..100_000u32 {
            let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i));
            fail(&mut t, Some(src), BAD, 1, now);
        }
        assert_eq!(t.tracked(now).0, 64, "never more than the slots");
        assert_eq!(t.sources.slots.len(), 64, "the table never grows");
    }

    #[test]
    fn a_new_key_evicts_the_lowest_score_of_its_bucket() {
        let mut t = AuthThrottle::new(
            ThrottleConfig {
                buckets: 1,
                ..ThrottleConfig::default()
            },
            1,
        );
        let now = Instant::now();
        let flooder = ip("192.0.2.1");
        fail(&mut t, flooder, BAD, 30, now);
        // One bucket of four slots: many one-off sources churn through the
        // other three slots but never evict the flooder's higher score.
        for i in 0..1000u32 {
            let src = IpAddr::V4(Ipv4Addr::from(0xc633_6400 | (i & 0xff)));
            fail(&mut t, Some(src), BAD, 1, now);
        }
        assert!(refused(t.check(flooder, BAD, now)).is_some());
    }

    #[test]
    fn a_principal_under_attack_is_not_locked_out_for_clean_sources() {
        let mut t = throttle();
        let now = Instant::now();
        let forged = signed_token(2, 5);
        assert_eq!(
            ClaimedPrincipal::of(&forged),
            Some(ClaimedPrincipal {
                tenant: 2,
                principal: 5
            })
        );
        // A distributed attack: 50 sources, 2 forged tokens each.
        for i in 0..50u32 {
            let src = Some(IpAddr::V4(Ipv4Addr::from(0xcb00_7100 | i)));
            fail(&mut t, src, &forged, 2, now);
        }
        // The principal is over its burst: a source that already failed
        // may not try it again, although its own budget is not spent...
        let dirty = Some(IpAddr::V4(Ipv4Addr::from(0xcb00_7100)));
        assert_eq!(
            refused(t.check(dirty, &forged, now)),
            Some(ThrottleReason::Principal)
        );
        // ...nor does the principal count against other principals...
        assert_eq!(refused(t.check(dirty, &signed_token(2, 6), now)), None);
        // ...and its owner, from a clean source, is let through.
        assert_eq!(refused(t.check(ip("10.9.9.9"), &forged, now)), None);
        assert_eq!(ClaimedPrincipal::of("abt_bearer"), None);
        assert_eq!(ClaimedPrincipal::of("abs_garbage"), None);
    }

    #[test]
    fn attempts_hold_no_part_of_the_credential() {
        let mut t = throttle();
        let secret = "abt_supersecretvalue";
        let Verdict::Go(a) = t.check(ip("192.0.2.1"), secret, Instant::now()) else {
            panic!("a first attempt passes")
        };
        assert!(!format!("{a:?}").contains("supersecret"));
    }
}
