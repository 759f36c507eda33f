//! Token buckets for message and byte rates.
//!
//! No clock: callers pass `now`. A bucket refills at `rate` tokens per second
//! up to `burst`; [`TokenBucket::try_take`] either takes the tokens or says how
//! long until they will be there, so a connection can stop reading exactly
//! that long (throttling by back-pressure: nothing is dropped). Tenant-wide
//! rates are split across shards by giving each shard's bucket a share of the
//! rate; [`TokenBucket::set_rate`] changes the share without losing tokens.

use std::time::{Duration, Instant};

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Tokens asked for since the last [`take_demand`](Self::take_demand).
    demand: f64,
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
            demand: 0.0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// Changes the refill rate (and burst) from `now` on.
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

    /// Takes `n` tokens, or returns how long until `n` will be available.
    /// A request larger than the burst is allowed once the bucket is full,
    /// leaving it in debt, so large messages are slowed, not refused.
    pub fn try_take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        self.demand += n;
        let need = n.min(self.burst);
        if self.tokens >= need {
            self.tokens -= n;
            return Ok(());
        }
        self.demand -= n; // asked again when retried
        if self.rate <= 0.0 {
            return Err(Duration::from_secs(1));
        }
        let wait = (need - self.tokens) / self.rate;
        Err(Duration::from_secs_f64(wait.clamp(0.000_05, 1.0)))
    }

    /// Tokens asked for since the last call (for rebalancing shares).
    pub fn take_demand(&mut self) -> f64 {
        std::mem::take(&mut self.demand)
    }
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
        let wait = b.try_take(1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-9, "{wait:?}");
        assert!(b.try_take(1.0, t0 + Duration::from_millis(10)).is_ok());
        // Over one simulated second, about `rate` tokens are granted.
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
    fn shares_change_without_losing_tokens_and_big_requests_pass() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        b.set_rate(1000.0, 5.0, t0);
        assert_eq!(b.rate(), 1000.0);
        assert!(b.try_take(50.0, t0).is_ok(), "larger than burst: allowed when full");
        assert!(b.try_take(1.0, t0).is_err(), "then in debt");
        assert!(b.take_demand() >= 50.0);
        assert_eq!(b.take_demand(), 0.0);
    }
}
