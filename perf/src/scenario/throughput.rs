//! Throughput: publishers write for a fixed time, subscribers count.
//!
//! Every publisher has its own subject and thread, and writes pre-encoded
//! 64 KiB batches until `duration` has passed (or `max_messages` were sent),
//! then waits for the server to have taken everything (a Ping/Pong barrier;
//! the raw relay: its close). Each subject has `fanout` plain subscribers,
//! or `queue` members of one queue group. Subscribers stop when they have
//! every message their publisher sent, or `drain` after the publishers
//! finished (then the run is marked incomplete).
//!
//! The rate is deliveries per second from the first publisher's first
//! write to the last delivery. For publish only (no subscribers) it is the
//! rate at which the server took messages, barrier included. One message per
//! batch carries a send-time stamp, so the run also yields an end-to-end
//! latency histogram under saturation (queueing included; the unloaded
//! latency is what request/reply measures).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ScenarioError, distinct_errors, run_id};
use crate::driver::{Conn, Ev, Role, Target, epoch, now_ns};
use crate::progress::Progress;
use crate::stats::{Latency, Percentiles, ThreadClock};

/// The throughput shapes of the comparison suite.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Shape {
    /// One publisher, no subscriber.
    PubOnly,
    /// One publisher, one subscriber.
    OneToOne,
    /// One publisher, eight subscribers.
    Fanout8,
    /// One publisher, 64 subscribers.
    Fanout64,
    /// Eight publishers, each with its own subscriber and subject.
    NToN,
    /// One publisher, a queue group of eight members.
    Queue8,
}

impl Shape {
    /// Every shape, in report order.
    pub(crate) const ALL: [Self; 6] = [
        Self::PubOnly,
        Self::OneToOne,
        Self::Fanout8,
        Self::Fanout64,
        Self::NToN,
        Self::Queue8,
    ];

    /// (publishers, subscribers per subject, queue members per subject).
    pub(crate) fn counts(self) -> (usize, usize, usize) {
        match self {
            Self::PubOnly => (1, 0, 0),
            Self::OneToOne => (1, 1, 0),
            Self::Fanout8 => (1, 8, 0),
            Self::Fanout64 => (1, 64, 0),
            Self::NToN => (8, 1, 0),
            Self::Queue8 => (1, 0, 8),
        }
    }
}

/// One throughput run.
#[derive(Debug, Clone)]
pub(crate) struct ThroughputSpec {
    /// Publishers (one subject each).
    pub(crate) publishers: usize,
    /// Plain subscribers per subject.
    pub(crate) fanout: usize,
    /// Queue-group members per subject (used instead of `fanout` when > 0).
    pub(crate) queue: usize,
    /// Payload bytes.
    pub(crate) size: usize,
    /// How long publishers write.
    pub(crate) duration: Duration,
    /// Stop earlier after this many messages per publisher.
    pub(crate) max_messages: Option<u64>,
    /// Publish with one header (HPUB for NATS).
    pub(crate) headers: bool,
    /// How long subscribers may take, after the publishers finished, to
    /// receive the rest.
    pub(crate) drain: Duration,
    /// One credential per publisher and its subscribers (publisher `i`
    /// uses entry `i` modulo the length): each pair its own tenant or
    /// account. Empty: every connection uses the target's.
    pub(crate) credentials: Vec<String>,
}

impl ThroughputSpec {
    /// The spec for a suite shape.
    pub(crate) fn of(shape: Shape, size: usize, duration: Duration) -> Self {
        let (publishers, fanout, queue) = shape.counts();
        Self {
            publishers,
            fanout,
            queue,
            size,
            duration,
            max_messages: None,
            headers: false,
            drain: Duration::from_secs(5).max(duration * 2),
            credentials: Vec::new(),
        }
    }

    /// The target publisher `i` and its subscribers connect to.
    fn target_of(&self, t: &Target, i: usize) -> Target {
        if self.credentials.is_empty() {
            t.clone()
        } else {
            t.with_credential(&self.credentials[i % self.credentials.len()])
        }
    }
}

/// What a throughput run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ThroughputResult {
    /// Publishers.
    pub(crate) publishers: usize,
    /// Subscribers in total.
    pub(crate) subscribers: usize,
    /// Queue group members per subject (0: plain subscribers).
    pub(crate) queue_members: usize,
    /// Payload bytes.
    pub(crate) size: usize,
    /// Messages published.
    pub(crate) sent: u64,
    /// Messages the subscribers should have received.
    pub(crate) expected: u64,
    /// Messages the subscribers received.
    pub(crate) delivered: u64,
    /// Seconds from the first write to the last publisher's barrier.
    pub(crate) publish_secs: f64,
    /// Seconds from the first write to the last delivery.
    pub(crate) secs: f64,
    /// Messages published per second.
    pub(crate) publish_rate: f64,
    /// Deliveries per second (publish rate for publish only): the headline.
    pub(crate) msgs_per_sec: f64,
    /// Payload megabytes (10^6) delivered per second.
    pub(crate) payload_mb_per_sec: f64,
    /// Every expected message arrived and no connection failed.
    pub(crate) complete: bool,
    /// Publish-to-delivery latency of stamped messages (one per batch).
    pub(crate) latency: Option<Percentiles>,
    /// The busiest client thread's share of one core.
    pub(crate) client_max_thread: f64,
    /// Connection errors (e.g. a slow-consumer cut), distinct.
    pub(crate) errors: Vec<String>,
}

/// Messages counted for the subscribers of one publisher's stream.
#[derive(Debug)]
struct Tally {
    got: AtomicU64,
    /// `u64::MAX` until the publisher has finished.
    expected: AtomicU64,
}

impl Tally {
    fn new() -> Self {
        Self {
            got: AtomicU64::new(0),
            expected: AtomicU64::new(u64::MAX),
        }
    }

    fn done(&self) -> bool {
        self.got.load(Ordering::Relaxed) >= self.expected.load(Ordering::Relaxed)
    }
}

/// When subscribers must give up: ns since [`epoch`], 0 = not yet known.
#[derive(Debug, Default)]
struct Deadline(AtomicU64);

impl Deadline {
    fn set(&self, at: Instant) {
        let ns = at.saturating_duration_since(epoch()).as_nanos() as u64;
        self.0.store(ns.max(1), Ordering::Relaxed);
    }

    fn passed(&self) -> bool {
        let d = self.0.load(Ordering::Relaxed);
        d != 0 && now_ns() > d
    }
}

#[derive(Debug)]
struct SubReport {
    got: u64,
    last: Option<Instant>,
    latency: Latency,
    error: Option<String>,
    busy: f64,
}

fn subscriber(mut conn: Conn, tally: &Tally, deadline: &Deadline, stamped: bool) -> SubReport {
    let clock = ThreadClock::start();
    let mut r = SubReport {
        got: 0,
        last: None,
        latency: Latency::new(),
        error: None,
        busy: 0.0,
    };
    loop {
        let mut n = 0u64;
        let lat = &mut r.latency;
        let drained = conn.drain(|ev| {
            if let Ev::Msg { tail } = ev {
                n += 1;
                if stamped && tail != 0 {
                    lat.record(now_ns().saturating_sub(tail));
                }
            }
        });
        if n > 0 {
            r.got += n;
            r.last = Some(Instant::now());
            tally.got.fetch_add(n, Ordering::Relaxed);
        }
        if let Err(e) = drained {
            r.error = Some(e.to_string());
            break;
        }
        if tally.done() || deadline.passed() {
            break;
        }
        if let Err(e) = conn.fill() {
            r.error = Some(e.to_string());
            break;
        }
    }
    r.busy = clock.busy();
    conn.close();
    r
}

#[derive(Debug)]
struct PubReport {
    sent: u64,
    start: Instant,
    finished: Instant,
    error: Option<String>,
    busy: f64,
}

fn publisher(
    mut conn: Conn,
    mut batch: crate::driver::Batch,
    spec: &ThroughputSpec,
    go: &Barrier,
    sent_so_far: &AtomicU64,
) -> PubReport {
    let stamped = spec.size >= 8;
    go.wait();
    let clock = ThreadClock::start();
    let start = Instant::now();
    let stop_at = start + spec.duration;
    let limit = spec.max_messages.unwrap_or(u64::MAX);
    let mut sent = 0u64;
    let mut error = None;
    while sent < limit {
        let n = (limit - sent).min(batch.per as u64) as usize;
        if stamped {
            batch.stamp(now_ns());
        }
        if let Err(e) = conn.write_all(batch.frames(n)) {
            error = Some(e.to_string());
            break;
        }
        sent += n as u64;
        sent_so_far.fetch_add(n as u64, Ordering::Relaxed);
        if Instant::now() >= stop_at {
            break;
        }
    }
    if error.is_none()
        && let Err(e) = conn.finish()
    {
        error = Some(format!("publisher barrier: {e}"));
    }
    let finished = Instant::now();
    let busy = clock.busy();
    conn.close();
    PubReport {
        sent,
        start,
        finished,
        error,
        busy,
    }
}

/// Runs one throughput scenario against `t`.
pub(crate) fn run(
    t: &Target,
    spec: &ThroughputSpec,
    progress: &Progress,
) -> Result<ThroughputResult, ScenarioError> {
    let id = run_id();
    let subjects: Vec<String> = (0..spec.publishers)
        .map(|i| format!("perf.{id}.s{i}"))
        .collect();
    let group = format!("q{id}");

    // Subscribers first, each in effect on the whole server before any
    // publisher starts. `tallies[i]` are publisher i's; `anchors[i]` is the
    // shard of its first subscriber, which the publisher is placed against.
    let mut subs: Vec<(Conn, Arc<Tally>)> = Vec::new();
    let mut tallies: Vec<Vec<Arc<Tally>>> = Vec::new();
    let mut anchors: Vec<Option<u32>> = Vec::new();
    for (i, subject) in subjects.iter().enumerate() {
        let t = &spec.target_of(t, i);
        let first = subs.len();
        let mut mine = Vec::new();
        if spec.queue > 0 {
            let tally = Arc::new(Tally::new());
            for _ in 0..spec.queue {
                let role = Role {
                    subscribe: Some(subject),
                    queue: Some(&group),
                    ..Role::default()
                };
                subs.push((Conn::open(t, &role)?, tally.clone()));
            }
            mine.push(tally);
        } else {
            for _ in 0..spec.fanout {
                let tally = Arc::new(Tally::new());
                let role = Role {
                    subscribe: Some(subject),
                    ..Role::default()
                };
                subs.push((Conn::open(t, &role)?, tally.clone()));
                mine.push(tally);
            }
        }
        tallies.push(mine);
        anchors.push(subs.get(first).and_then(|(c, _)| c.shard()));
    }
    let mut pubs = Vec::new();
    for (i, (subject, anchor)) in subjects.iter().zip(&anchors).enumerate() {
        let t = &spec.target_of(t, i);
        let role = Role {
            publish: Some(subject),
            ..Role::default()
        };
        let conn = Conn::open_near(t, &role, *anchor)?;
        pubs.push((conn, t.publish_batch(subject, spec.size, spec.headers)?));
    }
    let subscribers = subs.len();

    let deadline = Arc::new(Deadline::default());
    let go = Arc::new(Barrier::new(pubs.len() + 1));
    let sent_so_far = Arc::new(AtomicU64::new(0));
    let stamped = spec.size >= 8;
    let sub_threads: Vec<_> = subs
        .into_iter()
        .map(|(conn, tally)| {
            let deadline = deadline.clone();
            thread::spawn(move || subscriber(conn, &tally, &deadline, stamped))
        })
        .collect();
    let pub_threads: Vec<_> = pubs
        .into_iter()
        .map(|(conn, batch)| {
            let (spec, go, sent) = (spec.clone(), go.clone(), sent_so_far.clone());
            thread::spawn(move || publisher(conn, batch, &spec, &go, &sent))
        })
        .collect();
    go.wait();
    let started = Instant::now();
    let delivered_now = || -> u64 {
        tallies
            .iter()
            .flatten()
            .map(|t| t.got.load(Ordering::Relaxed))
            .sum()
    };
    while pub_threads.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(100));
        let secs = started.elapsed().as_secs_f64();
        progress.update(
            secs / spec.duration.as_secs_f64().max(1e-3),
            &format!(
                "{:.0} sent/s, {:.0} delivered/s",
                sent_so_far.load(Ordering::Relaxed) as f64 / secs,
                delivered_now() as f64 / secs
            ),
        );
    }
    let mut pub_reports = Vec::with_capacity(pub_threads.len());
    for h in pub_threads {
        pub_reports.push(h.join().map_err(|_| ScenarioError::Panicked)?);
    }
    for (report, mine) in pub_reports.iter().zip(&tallies) {
        for tally in mine {
            tally.expected.store(report.sent, Ordering::Relaxed);
        }
    }
    deadline.set(Instant::now() + spec.drain);
    let mut sub_reports = Vec::with_capacity(sub_threads.len());
    for h in sub_threads {
        sub_reports.push(h.join().map_err(|_| ScenarioError::Panicked)?);
    }

    let start = pub_reports.iter().map(|p| p.start).min().unwrap_or(started);
    let pub_end = pub_reports
        .iter()
        .map(|p| p.finished)
        .max()
        .unwrap_or(start);
    let sent: u64 = pub_reports.iter().map(|p| p.sent).sum();
    let expected: u64 = pub_reports
        .iter()
        .zip(&tallies)
        .map(|(p, mine)| p.sent * mine.len() as u64)
        .sum();
    let delivered: u64 = sub_reports.iter().map(|s| s.got).sum();
    let last = sub_reports.iter().filter_map(|s| s.last).max();
    let publish_secs = pub_end.duration_since(start).as_secs_f64().max(1e-9);
    let secs = last
        .map_or(publish_secs, |l| l.duration_since(start).as_secs_f64())
        .max(1e-9);
    let publish_rate = sent as f64 / publish_secs;
    let msgs_per_sec = if subscribers == 0 {
        publish_rate
    } else {
        delivered as f64 / secs
    };
    let mut latency = Latency::new();
    for s in &sub_reports {
        latency.merge(&s.latency);
    }
    let errors = distinct_errors(
        pub_reports
            .iter()
            .filter_map(|p| p.error.clone())
            .chain(sub_reports.iter().filter_map(|s| s.error.clone())),
    );
    let client_max_thread = pub_reports
        .iter()
        .map(|p| p.busy)
        .chain(sub_reports.iter().map(|s| s.busy))
        .fold(0.0, f64::max);
    Ok(ThroughputResult {
        publishers: spec.publishers,
        subscribers,
        queue_members: spec.queue,
        size: spec.size,
        sent,
        expected,
        delivered,
        publish_secs,
        secs,
        publish_rate,
        msgs_per_sec,
        payload_mb_per_sec: msgs_per_sec * spec.size as f64 / 1e6,
        complete: errors.is_empty() && delivered == expected,
        latency: latency.summary(),
        client_max_thread,
        errors,
    })
}
