//! Placement: where a server puts new connections, and what a drain costs
//! clients that are connecting at that moment.
//!
//! **Spread**: open `connections` connections from `threads` threads and
//! hold them all, then read each one's shard from its `Welcome` (ArqonBus
//! names the shard that serves the connection, after any move to its
//! tenant's home): connections per shard, and max / mean.
//!
//! **Drain storm**: `threads` threads connect (through the handshake) and
//! close, as fast as they can, for `duration`; at `drain_at` the runner's
//! `act(Action::Drain)` takes a shard out of service (`arqonctl node
//! drain`), at `resume_at` `act(Action::Resume)` puts it back. Every attempt
//! is recorded with its start time, its outcome (the shard that welcomed
//! it, or why it failed) and how long it took, and is counted in the phase
//! it started in: before the drain, while the drain command ran, drained,
//! while the resume command ran, after. The headline is failed attempts.
//! Attempts have a bounded connect and handshake
//! ([`Target::handshake_timeout`]), so the storm ends on time.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ScenarioError, distinct_errors};
use crate::driver::{Conn, DriverError, Role, Target};
use crate::progress::Progress;
use crate::stats::{Latency, Percentiles};

/// One spread run.
#[derive(Debug, Clone)]
pub(crate) struct SpreadSpec {
    /// Connections to open and hold.
    pub(crate) connections: usize,
    /// Threads opening them.
    pub(crate) threads: usize,
    /// The server's shards (a shard nobody landed on counts as 0).
    pub(crate) shards: usize,
}

/// Where the connections of a spread run landed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SpreadResult {
    /// Connections welcomed (and held until all were open).
    pub(crate) connections: u64,
    /// Connections that failed.
    pub(crate) failed: u64,
    /// Connections per shard, by the shard their `Welcome` named.
    pub(crate) per_shard: Vec<u64>,
    /// The fullest shard over the mean: the headline (1.0 is even).
    pub(crate) max_over_mean: f64,
    /// Seconds to open them all.
    pub(crate) secs: f64,
    /// Errors, distinct.
    pub(crate) errors: Vec<String>,
}

/// Connections per shard and max / mean, over `shards` shards.
pub(crate) fn max_over_mean(per_shard: &[u64]) -> f64 {
    let total: u64 = per_shard.iter().sum();
    let max = per_shard.iter().copied().max().unwrap_or(0);
    if total == 0 {
        return 0.0;
    }
    max as f64 * per_shard.len() as f64 / total as f64
}

/// Runs the spread scenario.
pub(crate) fn spread(
    t: &Target,
    spec: &SpreadSpec,
    progress: &Progress,
) -> Result<SpreadResult, ScenarioError> {
    let threads = spec.threads.max(1);
    let opened = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let t = t.clone();
            let opened = opened.clone();
            let n = spec.connections / threads + usize::from(i < spec.connections % threads);
            thread::spawn(move || {
                let mut conns = Vec::with_capacity(n);
                let mut errors = Vec::new();
                for _ in 0..n {
                    match Conn::open(&t, &Role::default()) {
                        Ok(c) => conns.push(c),
                        Err(e) => errors.push(e.to_string()),
                    }
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                (conns, errors)
            })
        })
        .collect();
    while handles.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(50));
        let n = opened.load(Ordering::Relaxed);
        progress.update(
            n as f64 / spec.connections.max(1) as f64,
            &format!("{n} connections open"),
        );
    }
    let mut conns = Vec::with_capacity(spec.connections);
    let mut errors = Vec::new();
    for h in handles {
        let (c, e) = h.join().map_err(|_| ScenarioError::Panicked)?;
        conns.extend(c);
        errors.extend(e);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut per_shard = vec![0u64; spec.shards.max(1)];
    for c in &conns {
        let s = c.shard().unwrap_or(0) as usize;
        if s >= per_shard.len() {
            per_shard.resize(s + 1, 0);
        }
        per_shard[s] += 1;
    }
    let connections = conns.len() as u64;
    for c in conns {
        c.close();
    }
    Ok(SpreadResult {
        connections,
        failed: errors.len() as u64,
        max_over_mean: max_over_mean(&per_shard),
        per_shard,
        secs,
        errors: distinct_errors(errors),
    })
}

/// What the runner does to the server during a drain storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Take the shard out of service.
    Drain,
    /// Put it back.
    Resume,
}

/// One drain storm.
#[derive(Debug, Clone)]
pub(crate) struct DrainStormSpec {
    /// Client threads connecting and closing.
    pub(crate) threads: usize,
    /// How long the storm lasts.
    pub(crate) duration: Duration,
    /// When (from the start) the shard is drained.
    pub(crate) drain_at: Duration,
    /// When it is resumed.
    pub(crate) resume_at: Duration,
    /// The shard drained.
    pub(crate) shard: u32,
    /// The server's shards.
    pub(crate) shards: usize,
}

/// The phases of a drain storm, in order.
pub(crate) const PHASES: [&str; 5] = ["before", "draining", "drained", "resuming", "after"];

/// Attempts that started in one phase of a drain storm.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Phase {
    /// Connects attempted.
    pub(crate) attempts: u64,
    /// Connects that failed.
    pub(crate) failed: u64,
    /// Welcomed connections per shard.
    pub(crate) per_shard: Vec<u64>,
}

/// What a drain storm measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DrainStormResult {
    /// The shard drained and resumed.
    pub(crate) shard: u32,
    /// Connects attempted.
    pub(crate) attempts: u64,
    /// Connects that failed: the headline.
    pub(crate) failed: u64,
    /// Failures by kind (`reset`, `refused`, `closed by server: …`, …).
    pub(crate) failures: BTreeMap<String, u64>,
    /// Completed connections per second.
    pub(crate) conns_per_sec: f64,
    /// Connect + handshake time of the successful attempts.
    pub(crate) handshake: Option<Percentiles>,
    /// Attempts by the phase they started in ([`PHASES`]).
    pub(crate) phases: BTreeMap<String, Phase>,
    /// Seconds from the start: drain issued, drain done, resume issued,
    /// resume done.
    pub(crate) marks_secs: [f64; 4],
    /// Errors of the drain and resume commands themselves.
    pub(crate) action_errors: Vec<String>,
    /// Attempt errors, distinct.
    pub(crate) errors: Vec<String>,
}

/// One attempt of a drain storm.
#[derive(Debug)]
struct Attempt {
    /// Nanoseconds from the storm's start to the attempt's start.
    at_ns: u64,
    outcome: Result<u32, (String, String)>,
    took_ns: u64,
}

/// A failure's kind, for counting: the I/O error kind, or what the server
/// said.
fn kind_of(e: &DriverError) -> String {
    match e {
        DriverError::Io(io) => match io.kind() {
            io::ErrorKind::ConnectionReset => "reset".into(),
            io::ErrorKind::ConnectionRefused => "refused".into(),
            io::ErrorKind::BrokenPipe => "broken pipe".into(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
            io::ErrorKind::UnexpectedEof => "closed before the handshake".into(),
            other => format!("i/o: {other:?}"),
        },
        DriverError::Closed(why) => format!("closed by server: {why}"),
        DriverError::Tls(_) => "tls".into(),
        DriverError::Protocol(_) => "protocol".into(),
    }
}

/// Runs a drain storm against `t`; `act` drains and resumes the shard.
pub(crate) fn drain_storm(
    t: &Target,
    spec: &DrainStormSpec,
    mut act: impl FnMut(Action) -> Result<(), String>,
    progress: &Progress,
) -> Result<DrainStormResult, ScenarioError> {
    let threads = spec.threads.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (t, stop, done) = (t.clone(), stop.clone(), done.clone());
            thread::spawn(move || {
                let mut attempts = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let at_ns = t0.duration_since(started).as_nanos() as u64;
                    let outcome = match Conn::open(&t, &Role::default()) {
                        Ok(c) => {
                            let shard = c.shard().unwrap_or(0);
                            c.close();
                            Ok(shard)
                        }
                        Err(e) => Err((kind_of(&e), e.to_string())),
                    };
                    attempts.push(Attempt {
                        at_ns,
                        outcome,
                        took_ns: t0.elapsed().as_nanos() as u64,
                    });
                    done.fetch_add(1, Ordering::Relaxed);
                }
                attempts
            })
        })
        .collect();

    let mut marks = [0.0f64; 4];
    let mut action_errors = Vec::new();
    let since = |i: Instant| i.duration_since(started).as_secs_f64();
    for (at, action, first) in [
        (spec.drain_at, Action::Drain, 0),
        (spec.resume_at, Action::Resume, 2),
    ] {
        let when = started + at;
        while Instant::now() < when {
            thread::sleep(
                when.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            );
            let n = done.load(Ordering::Relaxed);
            progress.update(
                started.elapsed().as_secs_f64() / spec.duration.as_secs_f64().max(1e-3),
                &format!("{n} connects"),
            );
        }
        marks[first] = since(Instant::now());
        if let Err(e) = act(action) {
            action_errors.push(format!("{action:?}: {e}"));
        }
        marks[first + 1] = since(Instant::now());
    }
    let end = started + spec.duration;
    while Instant::now() < end {
        thread::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
        progress.update(
            started.elapsed().as_secs_f64() / spec.duration.as_secs_f64().max(1e-3),
            &format!("{} connects", done.load(Ordering::Relaxed)),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    for h in handles {
        attempts.extend(h.join().map_err(|_| ScenarioError::Panicked)?);
    }
    let secs = started.elapsed().as_secs_f64();

    let phase_of = |at_ns: u64| {
        let at = at_ns as f64 / 1e9;
        PHASES[marks.iter().filter(|&&m| at >= m).count()]
    };
    let mut phases: BTreeMap<String, Phase> = PHASES
        .iter()
        .map(|p| {
            (
                (*p).to_owned(),
                Phase {
                    per_shard: vec![0; spec.shards.max(1)],
                    ..Phase::default()
                },
            )
        })
        .collect();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut lat = Latency::new();
    let mut ok = 0u64;
    for a in &attempts {
        let Some(phase) = phases.get_mut(phase_of(a.at_ns)) else {
            continue;
        };
        phase.attempts += 1;
        match &a.outcome {
            Ok(shard) => {
                ok += 1;
                lat.record(a.took_ns);
                let s = *shard as usize;
                if s >= phase.per_shard.len() {
                    phase.per_shard.resize(s + 1, 0);
                }
                phase.per_shard[s] += 1;
            }
            Err((kind, text)) => {
                phase.failed += 1;
                *failures.entry(kind.clone()).or_default() += 1;
                errors.push(text.clone());
            }
        }
    }
    Ok(DrainStormResult {
        shard: spec.shard,
        attempts: attempts.len() as u64,
        failed: attempts.len() as u64 - ok,
        failures,
        conns_per_sec: ok as f64 / secs.max(1e-9),
        handshake: lat.summary(),
        phases,
        marks_secs: marks,
        action_errors,
        errors: distinct_errors(errors),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_over_mean_is_one_when_even() {
        assert!((max_over_mean(&[500, 500]) - 1.0).abs() < 1e-12);
        assert!((max_over_mean(&[510, 490]) - 1.02).abs() < 1e-12);
        assert!((max_over_mean(&[1000, 0]) - 2.0).abs() < 1e-12);
        assert!(max_over_mean(&[0, 0]).abs() < 1e-12);
    }

    #[test]
    fn failures_are_counted_by_kind() {
        let reset = DriverError::Io(io::ErrorKind::ConnectionReset.into());
        assert_eq!(kind_of(&reset), "reset");
        let closed = DriverError::Closed("refused: shutting down".into());
        assert_eq!(kind_of(&closed), "closed by server: refused: shutting down");
    }
}
