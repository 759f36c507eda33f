//! Scenarios: what load is offered and what is measured.
//!
//! Every scenario takes a [`Target`] (any driver), is bounded in time and
//! count, and returns an [`Outcome`] that serializes to JSON. Subjects are
//! unique per run, so runs never see each other's traffic.
//!
//! - [`throughput`]: publishers write as fast as the server takes it for a
//!   fixed duration; subscribers count deliveries (publish only, 1→1,
//!   fan-out, N→N, queue group);
//! - [`reqreply`]: open-loop request/reply at a fixed offered rate, latency
//!   from the scheduled send time (corrected for coordinated omission);
//! - [`conns`]: idle connections and server RSS, and the connect storm;
//! - [`placement`]: where new connections land (connections per shard), and
//!   a connect storm while a shard is drained and resumed.

pub(crate) mod conns;
pub(crate) mod placement;
pub(crate) mod reqreply;
pub(crate) mod throughput;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::driver::DriverError;
use crate::stats::Percentiles;

pub(crate) use conns::{IdleResult, IdleSpec, StormResult, StormSpec};
pub(crate) use reqreply::{ReqReplyResult, ReqReplySpec};
pub(crate) use throughput::{Shape, ThroughputResult, ThroughputSpec};

/// Why a scenario could not produce a result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScenarioError {
    /// Setting up connections failed (server down, refused, bad handshake).
    #[error("setup: {0}")]
    Setup(#[from] DriverError),
    /// A client thread panicked (a bug in this tool).
    #[error("client thread panicked")]
    Panicked,
    /// Something needed for the measurement is missing (e.g. server RSS).
    #[error("measurement: {0}")]
    Measure(String),
}

/// What a scenario measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// A throughput scenario.
    Throughput(ThroughputResult),
    /// Request/reply latency.
    ReqReply(ReqReplyResult),
    /// Idle connections.
    Idle(IdleResult),
    /// Connect storm.
    Storm(StormResult),
}

impl Outcome {
    /// The headline number, and its unit.
    pub(crate) fn headline(&self) -> (f64, &'static str) {
        match self {
            Self::Throughput(t) => (t.msgs_per_sec, "msgs/s"),
            Self::ReqReply(r) => (r.latency.as_ref().map_or(0.0, |p| p.p50_us), "µs p50"),
            Self::Idle(i) => (i.bytes_per_connection, "B/conn"),
            Self::Storm(s) => (s.conns_per_sec, "conns/s"),
        }
    }

    /// Latency percentiles, if measured.
    pub(crate) fn latency(&self) -> Option<&Percentiles> {
        match self {
            Self::Throughput(t) => t.latency.as_ref(),
            Self::ReqReply(r) => r.latency.as_ref(),
            Self::Idle(_) => None,
            Self::Storm(s) => s.handshake.as_ref(),
        }
    }

    /// Errors the run met (the run still produced numbers).
    pub(crate) fn errors(&self) -> &[String] {
        match self {
            Self::Throughput(t) => &t.errors,
            Self::ReqReply(r) => &r.errors,
            Self::Idle(_) => &[],
            Self::Storm(s) => &s.errors,
        }
    }

    /// The busiest client thread's share of a core.
    pub(crate) fn client_max_thread(&self) -> f64 {
        match self {
            Self::Throughput(t) => t.client_max_thread,
            Self::ReqReply(r) => r.client_max_thread,
            Self::Idle(_) | Self::Storm(_) => 0.0,
        }
    }
}

/// A fresh token for subject names, unique within this process.
pub(crate) fn run_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "r{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Distinct error strings, at most a few, with a count of the rest.
pub(crate) fn distinct_errors(errors: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut more = 0;
    for e in errors {
        if out.contains(&e) {
            continue;
        }
        if out.len() < 4 {
            out.push(e);
        } else {
            more += 1;
        }
    }
    if more > 0 {
        out.push(format!("… and {more} other errors"));
    }
    out
}
