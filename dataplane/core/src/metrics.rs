//! What a shard measures, as plain data handed to whoever scrapes it.
//!
//! Shards keep these with plain integers and shard-local histograms (no
//! atomics, no sharing on the hot path). A scrape asks each shard for a
//! [`ShardMetrics`] copy; the control plane merges the copies and renders
//! them. Per-tenant figures are kept per shard too and merged on scrape,
//! where the number of tenant labels is capped.

use hdrhistogram::Histogram;

use crate::ids::TenantId;
use crate::stats::ShardStats;

/// Highest error code number counted individually.
pub const MAX_ERROR_CODE: usize = 31;

/// `Error` frames sent, by code number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCounts(pub [u64; MAX_ERROR_CODE + 1]);

impl Default for ErrorCounts {
    fn default() -> Self {
        Self([0; MAX_ERROR_CODE + 1])
    }
}

impl ErrorCounts {
    /// Counts one error with `code` (codes past the table count as 0).
    pub fn count(&mut self, code: i32) {
        let i = usize::try_from(code)
            .ok()
            .filter(|i| *i <= MAX_ERROR_CODE)
            .unwrap_or(0);
        self.0[i] += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

/// One tenant's figures on one shard (or merged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantStats {
    /// Messages its clients published.
    pub msgs_in: u64,
    /// Payload bytes its clients published.
    pub bytes_in: u64,
    /// Messages delivered to its clients.
    pub msgs_out: u64,
    /// Payload bytes delivered to its clients.
    pub bytes_out: u64,
    /// Gauge: its open connections.
    pub connections: u64,
    /// Its subscribers cut as slow consumers.
    pub slow_consumers: u64,
    /// Quota rejections: connections or subscriptions over a quota,
    /// publishes and subscriptions refused by a policy, rate-limit waits.
    pub quota_rejections: u64,
}

impl TenantStats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Self) {
        self.msgs_in += other.msgs_in;
        self.bytes_in += other.bytes_in;
        self.msgs_out += other.msgs_out;
        self.bytes_out += other.bytes_out;
        self.connections += other.connections;
        self.slow_consumers += other.slow_consumers;
        self.quota_rejections += other.quota_rejections;
    }
}

/// The configuration every latency histogram copies, built on first use
/// (when the first shard or the control plane starts).
#[allow(
    clippy::expect_used,
    reason = "constant bounds that hdrhistogram accepts; runs once, at start-up"
)]
static LATENCY: std::sync::LazyLock<Histogram<u64>> = std::sync::LazyLock::new(|| {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
});

/// A new, empty latency histogram: microseconds, 1 µs to 1 min, 3
/// significant digits. Infallible, so scrapes may make them too.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_from(&LATENCY)
}

/// Everything one shard measured, copied out for a scrape.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    /// The shard.
    pub shard: u16,
    /// Its counters and gauges.
    pub stats: ShardStats,
    /// `Error` frames sent, by code.
    pub errors: ErrorCounts,
    /// Per-tenant figures.
    pub tenants: Vec<(TenantId, TenantStats)>,
    /// Gauge: memory held by the queues of frames for clients (their bytes
    /// plus per-frame bookkeeping), all connections together.
    pub outbound_bytes: u64,
    /// Sampled publish-to-deliver time inside the server, µs.
    pub deliver_latency: Histogram<u64>,
    /// Accept to `Welcome`, µs (TLS handshake and authentication).
    pub handshake_latency: Histogram<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_tenants_merge() {
        let mut e = ErrorCounts::default();
        e.count(14);
        e.count(99);
        e.count(-1);
        let mut f = ErrorCounts::default();
        f.merge(&e);
        f.merge(&e);
        assert_eq!(f.0[14], 2);
        assert_eq!(f.0[0], 4, "out-of-table codes count as 0");
        let mut t = TenantStats {
            msgs_in: 1,
            ..TenantStats::default()
        };
        t.merge(&TenantStats {
            msgs_in: 2,
            bytes_out: 5,
            ..TenantStats::default()
        });
        assert_eq!((t.msgs_in, t.bytes_out), (3, 5));
        let mut h = latency_histogram();
        h.record(250).unwrap();
        assert_eq!(h.len(), 1);
    }
}
