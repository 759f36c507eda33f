//! Connections: what an idle connection costs the server, and how fast it
//! accepts new ones.
//!
//! **Idle**: open one connection (one-off allocations), read the server's
//! RSS, open `connections` more (each fully through its handshake), wait for
//! the server to settle, read RSS again: the growth per connection. Only
//! meaningful on a freshly started server: after load, the allocator holds
//! freed memory that new connections reuse, and the growth means nothing.
//!
//! **Connect storm**: `threads` threads open and close `connections`
//! connections as fast as they can, each through the protocol's handshake
//! (TLS included when the target is `tls://`, with no session resumption):
//! connections per second and the handshake latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ScenarioError, distinct_errors};
use crate::driver::{Conn, Role, Target};
use crate::progress::Progress;
use crate::stats::{Latency, Percentiles, rss_kib};

/// One idle-connections run.
#[derive(Debug, Clone)]
pub(crate) struct IdleSpec {
    /// Connections to open.
    pub(crate) connections: usize,
    /// The server's process id.
    pub(crate) server_pid: u32,
    /// Time between RSS samples while waiting for it to settle.
    pub(crate) settle: Duration,
}

/// What an idle run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IdleResult {
    /// Connections held open.
    pub(crate) connections: usize,
    /// Server RSS before, KiB.
    pub(crate) rss_before_kib: u64,
    /// Server RSS with the first half of the connections open, KiB.
    pub(crate) rss_half_kib: u64,
    /// Server RSS with every connection open, KiB.
    pub(crate) rss_after_kib: u64,
    /// RSS growth per connection over the second half, bytes: the
    /// headline. The first half absorbs what a server allocates or gives
    /// back once (allocator arenas, start-up memory returned to the OS),
    /// which a single before/after difference would spread over every
    /// connection or hide (RSS can fall while connections open).
    pub(crate) bytes_per_connection: f64,
    /// Seconds to open them all.
    pub(crate) connect_secs: f64,
}

/// Connections opened and closed before measuring.
const WARM_UP: usize = 1_000;
/// RSS samples that must agree (within [`STEADY_KIB`]) before a reading
/// counts, [`IdleSpec::settle`] apart.
const STEADY_SAMPLES: usize = 5;
/// How far steady samples may spread, KiB.
const STEADY_KIB: u64 = 64;
/// Longest wait for RSS to settle; the last sample counts after it.
const STEADY_WITHIN: Duration = Duration::from_secs(15);

/// Runs the idle scenario.
pub(crate) fn idle(
    t: &Target,
    spec: &IdleSpec,
    progress: &Progress,
) -> Result<IdleResult, ScenarioError> {
    // RSS once it stops moving: a server gives back start-up memory and
    // buffers freed after handshakes for a while.
    let steady = || {
        let deadline = Instant::now() + STEADY_WITHIN;
        let mut last = Vec::new();
        loop {
            let now = rss_kib(spec.server_pid).ok_or_else(|| {
                ScenarioError::Measure(format!("no RSS for process {}", spec.server_pid))
            })?;
            last.push(now);
            let window = &last[last.len().saturating_sub(STEADY_SAMPLES)..];
            let spread = window.iter().max().unwrap_or(&now) - window.iter().min().unwrap_or(&now);
            if (window.len() == STEADY_SAMPLES && spread < STEADY_KIB) || Instant::now() > deadline
            {
                return Ok::<u64, ScenarioError>(now);
            }
            thread::sleep(spec.settle);
        }
    };
    // Warm up: the first connections grow per-shard tables and allocator
    // arenas, and their churn lets the allocator give back start-up memory,
    // none of which belongs to a connection.
    let warm = Conn::open(t, &Role::default())?;
    for _ in 0..WARM_UP.min(spec.connections) {
        Conn::open(t, &Role::default())?.close();
    }
    let before = steady()?;
    let half = spec.connections / 2;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(spec.connections);
    let open_until = |n: usize, conns: &mut Vec<Conn>| -> Result<(), ScenarioError> {
        while conns.len() < n {
            let i = conns.len();
            conns.push(Conn::open(t, &Role::default())?);
            if i.is_multiple_of(500) {
                progress.update(
                    i as f64 / spec.connections as f64,
                    &format!("{i} connections open"),
                );
            }
        }
        Ok(())
    };
    open_until(half, &mut conns)?;
    let mut connect_secs = started.elapsed().as_secs_f64();
    let mid = steady()?;
    let second = Instant::now();
    open_until(spec.connections, &mut conns)?;
    connect_secs += second.elapsed().as_secs_f64();
    let after = steady()?;
    for c in conns {
        c.close();
    }
    warm.close();
    Ok(IdleResult {
        connections: spec.connections,
        rss_before_kib: before,
        rss_half_kib: mid,
        rss_after_kib: after,
        bytes_per_connection: (after.saturating_sub(mid) as f64 * 1024.0)
            / (spec.connections - half).max(1) as f64,
        connect_secs,
    })
}

/// One connect-storm run.
#[derive(Debug, Clone)]
pub(crate) struct StormSpec {
    /// Connections to open and close, in total.
    pub(crate) connections: usize,
    /// Client threads doing it.
    pub(crate) threads: usize,
}

/// What a connect storm measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StormResult {
    /// Connections completed (through the handshake).
    pub(crate) connections: u64,
    /// Connections that failed.
    pub(crate) failed: u64,
    /// TLS or plaintext.
    pub(crate) tls: bool,
    /// Completed connections per second: the headline.
    pub(crate) conns_per_sec: f64,
    /// Connect + handshake latency.
    pub(crate) handshake: Option<Percentiles>,
    /// Errors, distinct.
    pub(crate) errors: Vec<String>,
}

/// Runs the connect storm.
pub(crate) fn storm(
    t: &Target,
    spec: &StormSpec,
    progress: &Progress,
) -> Result<StormResult, ScenarioError> {
    let threads = spec.threads.max(1);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let t = t.clone();
            let done = done.clone();
            let n = spec.connections / threads + usize::from(i < spec.connections % threads);
            thread::spawn(move || {
                let mut lat = Latency::new();
                let mut errors = Vec::new();
                for _ in 0..n {
                    let t0 = Instant::now();
                    match Conn::open(&t, &Role::default()) {
                        Ok(c) => {
                            lat.record(t0.elapsed().as_nanos() as u64);
                            c.close();
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                (lat, errors, Instant::now())
            })
        })
        .collect();
    while handles.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(100));
        let n = done.load(Ordering::Relaxed);
        progress.update(
            n as f64 / spec.connections.max(1) as f64,
            &format!(
                "{n} connections, {:.0}/s",
                n as f64 / started.elapsed().as_secs_f64()
            ),
        );
    }
    let mut lat = Latency::new();
    let mut errors = Vec::new();
    let mut end = started;
    for h in handles {
        let (l, e, done_at) = h.join().map_err(|_| ScenarioError::Panicked)?;
        lat.merge(&l);
        errors.extend(e);
        end = end.max(done_at);
    }
    let secs = end.duration_since(started).as_secs_f64().max(1e-9);
    let ok = lat.len();
    Ok(StormResult {
        connections: ok,
        failed: errors.len() as u64,
        tls: t.is_tls(),
        conns_per_sec: ok as f64 / secs,
        handshake: lat.summary(),
        errors: distinct_errors(errors),
    })
}
