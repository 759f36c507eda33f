//! Counters of the control plane, readable by the server's metrics exporter.
//!
//! Plain atomics, `Relaxed`: each counter is independent and only ever
//! increases; readers want a recent value, not a consistent cut. RPC
//! latencies go to a histogram under a mutex (control calls are rare).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use arqonbus_core::metrics::latency_histogram;
use hdrhistogram::Histogram;

/// How an RPC ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RpcOutcome {
    /// Answered OK.
    Ok,
    /// Refused because of the request.
    ClientError,
    /// Failed because of the server.
    ServerError,
}

impl RpcOutcome {
    /// Classifies a gRPC status code.
    pub(crate) fn of(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::Ok => Self::Ok,
            Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss
            | Code::DeadlineExceeded => Self::ServerError,
            _ => Self::ClientError,
        }
    }
}

/// Live counters.
#[derive(Debug)]
pub struct Metrics {
    rpc_ok: AtomicU64,
    rpc_client_errors: AtomicU64,
    rpc_server_errors: AtomicU64,
    auth_failures: AtomicU64,
    snapshots_published: AtomicU64,
    snapshots_refusing: AtomicU64,
    rpc_latency: Mutex<Histogram<u64>>,
    applies_confirmed: AtomicU64,
    applies_unconfirmed: AtomicU64,
    apply_latency: Mutex<Histogram<u64>>,
}

/// How snapshot pushes to the shards went (`Publisher`): a separate copy so
/// [`MetricsSnapshot`] keeps its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyMetrics {
    /// Pushes every shard confirmed in time.
    pub confirmed: u64,
    /// Pushes some shard did not confirm in time (the RPC failed with
    /// UNAVAILABLE naming them).
    pub unconfirmed: u64,
    /// How long a push waited for the shards, µs (both outcomes).
    pub latency: Histogram<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rpc_ok: AtomicU64::new(0),
            rpc_client_errors: AtomicU64::new(0),
            rpc_server_errors: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            snapshots_published: AtomicU64::new(0),
            snapshots_refusing: AtomicU64::new(0),
            rpc_latency: Mutex::new(latency_histogram()),
            applies_confirmed: AtomicU64::new(0),
            applies_unconfirmed: AtomicU64::new(0),
            apply_latency: Mutex::new(latency_histogram()),
        }
    }
}

/// A copy of the counters.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// RPCs answered OK.
    pub rpc_ok: u64,
    /// RPCs refused for the caller's mistake: a bad argument, a missing or
    /// existing record, a stale version (authentication failures excluded).
    pub rpc_client_errors: u64,
    /// RPCs that failed on our side: the store unavailable or failing, an
    /// internal error, a deadline passed. The availability SLI counts these.
    pub rpc_server_errors: u64,
    /// Requests refused for a missing or wrong admin credential.
    pub auth_failures: u64,
    /// Snapshots pushed (refusing ones included).
    pub snapshots_published: u64,
    /// Snapshots pushed that refuse new sessions (fail closed).
    pub snapshots_refusing: u64,
    /// How long control RPCs took, µs.
    pub rpc_latency: Histogram<u64>,
}

impl Metrics {
    pub(crate) fn inc_rpc(&self, outcome: RpcOutcome, elapsed_us: u64) {
        let c = match outcome {
            RpcOutcome::Ok => &self.rpc_ok,
            RpcOutcome::ClientError => &self.rpc_client_errors,
            RpcOutcome::ServerError => &self.rpc_server_errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .rpc_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(elapsed_us.max(1));
    }

    pub(crate) fn inc_auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn inc_published(&self) {
        self.snapshots_published.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn inc_refusing(&self) {
        self.snapshots_refusing.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_apply(&self, took: std::time::Duration, confirmed: bool) {
        let c = if confirmed {
            &self.applies_confirmed
        } else {
            &self.applies_unconfirmed
        };
        c.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ = self
            .apply_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(us.max(1));
    }

    /// How snapshot pushes went.
    pub fn apply_metrics(&self) -> ApplyMetrics {
        ApplyMetrics {
            confirmed: self.applies_confirmed.load(Ordering::Relaxed),
            unconfirmed: self.applies_unconfirmed.load(Ordering::Relaxed),
            latency: self
                .apply_latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            rpc_ok: self.rpc_ok.load(Ordering::Relaxed),
            rpc_client_errors: self.rpc_client_errors.load(Ordering::Relaxed),
            rpc_server_errors: self.rpc_server_errors.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            snapshots_published: self.snapshots_published.load(Ordering::Relaxed),
            snapshots_refusing: self.snapshots_refusing.load(Ordering::Relaxed),
            rpc_latency: self
                .rpc_latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn outcomes_split_client_mistakes_from_server_faults() {
        let m = Metrics::default();
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::Unavailable,
            Code::Internal,
        ] {
            m.inc_rpc(RpcOutcome::of(code), 10);
        }
        let s = m.snapshot();
        assert_eq!(
            (s.rpc_ok, s.rpc_client_errors, s.rpc_server_errors),
            (1, 3, 2)
        );
        assert_eq!(s.rpc_latency.len(), 6);
    }
}
