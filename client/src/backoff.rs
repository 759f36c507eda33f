//! The reconnect policy: exponential backoff with jitter.
//!
//! Invariants: the delay before attempt `n` (0-based) lies in
//! `[base/2, base]` where `base = min(max_delay, initial_delay * 2^n)`
//! ("equal jitter"): never zero, never above `max_delay`, and spread out so
//! that many clients cut off at once do not reconnect in lockstep. The
//! computation is pure; the caller supplies the randomness.

use std::time::Duration;

/// How the client reconnects after losing its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    initial_delay: Duration,
    max_delay: Duration,
    max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    /// 50 ms initial delay, 5 s maximum, unlimited attempts.
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// The default policy (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Never reconnect: the first lost connection closes the client.
    pub fn disabled() -> Self {
        Self {
            max_attempts: Some(0),
            ..Self::default()
        }
    }

    /// The delay before the first attempt (doubled for each further one).
    /// Zero is raised to one millisecond.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay.max(Duration::from_millis(1));
        self
    }

    /// The longest delay between two attempts.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay.max(Duration::from_millis(1));
        self
    }

    /// Give up (and close the client) after this many failed attempts in a
    /// row. `None` (the default) retries forever.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The configured attempt limit.
    pub fn attempt_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The delay before attempt `attempt` (0-based), given a uniformly random
    /// `random`.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let base = self
            .initial_delay
            .saturating_mul(factor)
            .min(self.max_delay);
        let base_nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        let half = base_nanos / 2;
        let spread = base_nanos - half;
        let jitter = if spread == u64::MAX {
            random
        } else {
            random % (spread + 1)
        };
        Duration::from_nanos(half + jitter)
    }

    /// Whether attempt `attempt` (0-based) may be made.
    pub(crate) fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt < max)
    }
}

/// A uniformly random `u64` for jitter; falls back to the largest value (no
/// jitter, full delay) if the OS has no randomness to give.
pub(crate) fn jitter_seed() -> u64 {
    getrandom::u64().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANDOMS: [u64; 6] = [0, 1, 12_345, u64::MAX / 2, u64::MAX - 1, u64::MAX];

    #[test]
    fn delays_stay_within_equal_jitter_bounds() {
        let p = ReconnectPolicy::default();
        for attempt in 0..64 {
            let base = Duration::from_millis(50)
                .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
                .min(Duration::from_secs(5));
            for r in RANDOMS {
                let d = p.delay(attempt, r);
                assert!(d >= base / 2, "attempt {attempt}: {d:?} < {:?}", base / 2);
                assert!(d <= base, "attempt {attempt}: {d:?} > {base:?}");
                assert!(d <= Duration::from_secs(5));
                assert!(d > Duration::ZERO);
            }
        }
    }

    #[test]
    fn first_delay_is_around_the_initial_delay_and_growth_is_capped() {
        let p = ReconnectPolicy::default();
        assert_eq!(p.delay(0, 0), Duration::from_millis(25));
        let top = p.delay(0, u64::MAX);
        assert!(top >= Duration::from_millis(25) && top <= Duration::from_millis(50));
        assert_eq!(p.delay(1, 0), Duration::from_millis(50));
        assert_eq!(p.delay(30, 0), Duration::from_millis(2500));
        assert_eq!(p.delay(u32::MAX, 0), Duration::from_millis(2500));
    }

    #[test]
    fn attempt_limits() {
        assert!(ReconnectPolicy::default().allows(u32::MAX - 1));
        assert!(!ReconnectPolicy::disabled().allows(0));
        let three = ReconnectPolicy::new().max_attempts(Some(3));
        assert!(three.allows(2));
        assert!(!three.allows(3));
    }

    #[test]
    fn zero_and_inverted_settings_are_tamed() {
        let p = ReconnectPolicy::new()
            .initial_delay(Duration::ZERO)
            .max_delay(Duration::ZERO);
        assert!(p.delay(0, u64::MAX) <= Duration::from_millis(1));
        let inverted = ReconnectPolicy::new()
            .initial_delay(Duration::from_secs(10))
            .max_delay(Duration::from_secs(1));
        for r in RANDOMS {
            assert!(inverted.delay(0, r) <= Duration::from_secs(1));
        }
    }
}
