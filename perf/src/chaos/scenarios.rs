//! The chaos scenarios, each against the running node, each bounded in time
//! and count, each returning what it measured ([`Scenario`]).
//!
//! Clients connect from three loopback sources: ordinary traffic from
//! 127.0.0.1, authentication floods from 127.0.0.3 (so login throttling of
//! the flooder never touches the other scenarios) and the valid logins
//! measured beside a flood from 127.0.0.2.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arqonbus_proto::v1::{self, frame::Kind};
use bytes::Bytes;
use serde::Serialize;

use super::node::{Ctl, Node};
use super::wire::{self, LoginError};
use super::{ChaosError, Plan};
use crate::driver::{Conn, Proto, Role, Target};
use crate::progress::Progress;
use crate::scenario::{self, ReqReplySpec, StormSpec};
use crate::stats::Latency;

/// Where floods of wrong credentials come from.
const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Where the valid logins measured beside them come from.
const VALID_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// What one scenario did and measured.
#[derive(Debug, Default, Serialize)]
pub(super) struct Scenario {
    /// Its name.
    pub(super) name: &'static str,
    /// The load held, in words.
    pub(super) load: String,
    /// Wall time, seconds.
    pub(super) seconds: f64,
    /// Faults injected (kill -9, damaged files, a full disk).
    pub(super) faults_injected: u64,
    /// Faults after which the node came back and served traffic again.
    pub(super) faults_survived: u64,
    /// Control writes acknowledged.
    pub(super) acked_writes: u64,
    /// Acknowledged control writes missing afterwards.
    pub(super) acked_lost: u64,
    /// The node's peak RSS during the scenario, MiB.
    pub(super) peak_rss_mib: f64,
    /// Named figures.
    pub(super) figures: BTreeMap<&'static str, f64>,
    /// What makes the suite fail (lost acknowledged writes).
    pub(super) failures: Vec<String>,
    /// Observations that do not fail it.
    pub(super) notes: Vec<String>,
}

impl Scenario {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    fn figure(&mut self, key: &'static str, value: f64) {
        self.figures.insert(key, (value * 1000.0).round() / 1000.0);
    }
}

fn target(node: &Node, credential: &str) -> Result<Target, ChaosError> {
    Target::new(Proto::Native, &node.url(), None, credential.to_owned())
        .map_err(|e| ChaosError::Setup(e.to_string()))
}

fn ms(d: Duration) -> u64 {
    d.as_nanos() as u64
}

fn p(l: &Latency, f: impl Fn(&crate::stats::Percentiles) -> f64) -> f64 {
    l.summary().map_or(0.0, |s| f(&s) / 1000.0)
}

/// A healthy client's round trip: connect, log in, Ping/Pong.
fn probe(node: &Node, credential: &str, source: Option<Ipv4Addr>) -> Result<Duration, LoginError> {
    let t0 = Instant::now();
    let mut s = wire::connect(node.addr, source, Duration::from_secs(5))?;
    wire::login(&mut s, credential)?;
    wire::ping(&mut s)?;
    Ok(t0.elapsed())
}

/// Connect storm: `storm_connections` connects, handshakes and closes from
/// 4 threads, as fast as they go.
pub(super) fn storm(node: &Node, plan: &Plan, token: &str) -> Result<Scenario, ChaosError> {
    let mut sc = Scenario::new("connection storm");
    let t = target(node, token)?;
    let spec = StormSpec {
        connections: plan.storm_connections,
        threads: 4,
    };
    let progress = Progress::standalone("storm");
    let started = Instant::now();
    let r = scenario::conns::storm(&t, &spec, &progress)
        .map_err(|e| ChaosError::Setup(e.to_string()))?;
    progress.finish();
    sc.seconds = started.elapsed().as_secs_f64();
    sc.load = format!(
        "{} connects + handshakes + closes from 4 threads",
        plan.storm_connections
    );
    sc.figure("connections_ok", r.connections as f64);
    sc.figure("connections_failed", r.failed as f64);
    sc.figure("connections_per_sec", r.conns_per_sec);
    if let Some(h) = &r.handshake {
        sc.figure("handshake_p99_ms", h.p99_us / 1000.0);
    }
    sc.notes.extend(r.errors);
    Ok(sc)
}

/// Control-frame flood: `ping_conns` authenticated connections write Pings
/// as fast as they can and never read, for `flood_secs`; a healthy client
/// probes the node every 200 ms meanwhile.
#[allow(
    clippy::unnecessary_wraps,
    reason = "every scenario has the same signature (the suite runs them from one table)"
)]
pub(super) fn ping_flood(node: &Node, plan: &Plan, token: &str) -> Result<Scenario, ChaosError> {
    let mut sc = Scenario::new("ping flood");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(plan.flood_secs);
    let chunk: Vec<u8> = wire::encode(&Kind::Ping(v1::Ping {})).repeat(64 * 1024 / 6);
    let chunk = Arc::new(chunk);
    let flooders: Vec<_> = (0..plan.ping_conns)
        .map(|_| {
            let (addr, token, chunk) = (node.addr, token.to_owned(), chunk.clone());
            thread::spawn(move || -> (u64, bool, Option<String>) {
                let mut s = match wire::connect(addr, None, Duration::from_secs(1)) {
                    Ok(s) => s,
                    Err(e) => return (0, false, Some(e.to_string())),
                };
                if let Err(e) = wire::login(&mut s, &token) {
                    return (0, false, Some(e.to_string()));
                }
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    match std::io::Write::write_all(&mut s, &chunk) {
                        Ok(()) => sent += chunk.len() as u64,
                        // Blocked for a second: the node stopped reading us.
                        Err(_) => return (sent, true, None),
                    }
                }
                (sent, false, None)
            })
        })
        .collect();
    let mut probes = Latency::new();
    let mut probe_failures = Vec::new();
    while Instant::now() < deadline {
        match probe(node, token, None) {
            Ok(d) => probes.record(ms(d)),
            Err(e) => probe_failures.push(e.to_string()),
        }
        thread::sleep(Duration::from_millis(200));
    }
    let (mut bytes, mut blocked) = (0u64, 0u64);
    for f in flooders {
        if let Ok((sent, was_blocked, err)) = f.join() {
            bytes += sent;
            blocked += u64::from(was_blocked);
            sc.notes.extend(err);
        }
    }
    sc.seconds = started.elapsed().as_secs_f64();
    sc.load = format!(
        "{} connections writing Pings without reading for {:.0} s, a probe every 200 ms",
        plan.ping_conns, plan.flood_secs
    );
    sc.figure("ping_mib_written", bytes as f64 / 1_048_576.0);
    sc.figure("flooders_stopped_by_backpressure", blocked as f64);
    sc.figure("probes_ok", probes.len() as f64);
    sc.figure("probes_failed", probe_failures.len() as f64);
    sc.figure("probe_p99_ms", p(&probes, |s| s.p99_us));
    sc.notes.extend(scenario::distinct_errors(probe_failures));
    Ok(sc)
}

/// Authentication flood: `auth_threads` threads from 127.0.0.3 log in with a
/// wrong credential as fast as they can for `flood_secs`, while valid logins
/// from 127.0.0.2 are timed every 100 ms.
#[allow(
    clippy::unnecessary_wraps,
    reason = "every scenario has the same signature (the suite runs them from one table)"
)]
pub(super) fn auth_flood(node: &Node, plan: &Plan, token: &str) -> Result<Scenario, ChaosError> {
    let mut sc = Scenario::new("authentication flood");
    let failures_before = node.metric("arqonbus_auth_failures_total").unwrap_or(0.0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(plan.flood_secs);
    let attackers: Vec<_> = (0..plan.auth_threads)
        .map(|_| {
            let addr = node.addr;
            thread::spawn(move || {
                let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
                while Instant::now() < deadline {
                    let outcome =
                        match wire::connect(addr, Some(FLOOD_SOURCE), Duration::from_secs(2)) {
                            Ok(mut s) => match wire::login(&mut s, "abt_chaos-wrong-credential") {
                                Ok(_) => "ACCEPTED".to_owned(),
                                Err(LoginError::Refused(code)) => code,
                                Err(LoginError::Io(e)) => format!("io: {}", e.kind()),
                                Err(LoginError::Protocol(_)) => "protocol".to_owned(),
                            },
                            Err(e) => format!("connect: {}", e.kind()),
                        };
                    *by_outcome.entry(outcome).or_default() += 1;
                }
                by_outcome
            })
        })
        .collect();
    let mut valid = Latency::new();
    let mut valid_failures = Vec::new();
    while Instant::now() < deadline {
        match probe(node, token, Some(VALID_SOURCE)) {
            Ok(d) => valid.record(ms(d)),
            Err(e) => valid_failures.push(e.to_string()),
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for a in attackers {
        if let Ok(o) = a.join() {
            for (k, v) in o {
                *outcomes.entry(k).or_default() += v;
            }
        }
    }
    sc.seconds = started.elapsed().as_secs_f64();
    let attempts: u64 = outcomes.values().sum();
    let get = |k: &str| outcomes.get(k).copied().unwrap_or(0) as f64;
    sc.load = format!(
        "{} threads logging in with a wrong credential from {FLOOD_SOURCE} for {:.0} s; a valid login from {VALID_SOURCE} every 100 ms",
        plan.auth_threads, plan.flood_secs
    );
    sc.figure("wrong_attempts", attempts as f64);
    sc.figure(
        "wrong_attempts_per_sec",
        attempts as f64 / sc.seconds.max(1e-9),
    );
    sc.figure(
        "refused_authentication_failed",
        get("AUTHENTICATION_FAILED"),
    );
    sc.figure("refused_auth_throttled", get("AUTH_THROTTLED"));
    sc.figure(
        "server_auth_failures",
        node.metric("arqonbus_auth_failures_total").unwrap_or(0.0) - failures_before,
    );
    sc.figure("valid_logins_ok", valid.len() as f64);
    sc.figure("valid_logins_failed", valid_failures.len() as f64);
    sc.figure("valid_login_p50_ms", p(&valid, |s| s.p50_us));
    sc.figure("valid_login_p99_ms", p(&valid, |s| s.p99_us));
    if get("ACCEPTED") > 0.0 {
        sc.failures.push(format!(
            "{} wrong credentials were accepted",
            get("ACCEPTED")
        ));
    }
    sc.notes
        .push(format!("outcomes of the wrong logins: {outcomes:?}"));
    sc.notes.extend(scenario::distinct_errors(valid_failures));
    Ok(sc)
}

/// Slow consumers: `slow_subs` subscribers of one subject never read while a
/// publisher writes 1 KiB messages to it as fast as it can for
/// `flood_secs`.
pub(super) fn slow_consumers(
    node: &Node,
    plan: &Plan,
    token: &str,
    probe_token: &str,
) -> Result<Scenario, ChaosError> {
    let mut sc = Scenario::new("slow consumers");
    let cut_before = node.metric("arqonbus_slow_consumers_total").unwrap_or(0.0);
    let subject = "chaos.slow";
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..plan.slow_subs {
        let mut s = wire::connect(node.addr, None, Duration::from_secs(5))
            .map_err(|e| ChaosError::Setup(format!("slow subscriber: {e}")))?;
        wire::login(&mut s, token)
            .map_err(|e| ChaosError::Setup(format!("slow subscriber: {e}")))?;
        std::io::Write::write_all(
            &mut s,
            &wire::encode(&Kind::Subscribe(v1::Subscribe {
                sid: 1,
                pattern: Bytes::from_static(subject.as_bytes()),
                queue_group: Bytes::new(),
            })),
        )
        .map_err(|e| ChaosError::Setup(format!("slow subscriber: {e}")))?;
        wire::ping(&mut s).map_err(|e| ChaosError::Setup(format!("slow subscriber: {e}")))?;
        held.push(s);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(plan.flood_secs);
    let mut t = target(node, token)?;
    t.handshake_timeout = Some(Duration::from_secs(2));
    let publisher = thread::spawn(move || -> (u64, Vec<String>) {
        let mut written = 0u64;
        let mut errors = Vec::new();
        let Ok(mut batch) = t.publish_batch("chaos.slow", 1024, false) else {
            return (0, vec!["cannot encode".into()]);
        };
        while Instant::now() < deadline {
            let mut c = match Conn::open(&t, &Role::default()) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e.to_string());
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            while Instant::now() < deadline {
                if let Err(e) = c.write_all(batch.frames(batch.per)) {
                    errors.push(e.to_string());
                    break;
                }
                written += (batch.per * 1024) as u64;
            }
        }
        (written, errors)
    });
    let mut probes = Latency::new();
    let mut probe_failures = Vec::new();
    while Instant::now() < deadline {
        match probe(node, probe_token, None) {
            Ok(d) => probes.record(ms(d)),
            Err(e) => probe_failures.push(e.to_string()),
        }
        thread::sleep(Duration::from_millis(200));
    }
    let (written, errors) = publisher.join().unwrap_or_default();
    drop(held);
    sc.seconds = started.elapsed().as_secs_f64();
    sc.load = format!(
        "{} subscribers that never read; one publisher writing 1 KiB messages for {:.0} s",
        plan.slow_subs, plan.flood_secs
    );
    sc.figure("published_mib", written as f64 / 1_048_576.0);
    sc.figure(
        "slow_consumers_cut",
        node.metric("arqonbus_slow_consumers_total").unwrap_or(0.0) - cut_before,
    );
    sc.figure("probes_ok", probes.len() as f64);
    sc.figure("probes_failed", probe_failures.len() as f64);
    sc.figure("probe_p99_ms", p(&probes, |s| s.p99_us));
    sc.notes.extend(scenario::distinct_errors(errors));
    sc.notes.extend(scenario::distinct_errors(probe_failures));
    Ok(sc)
}

/// 10× quota flood: tenant `noisy` (messages/s quota `quota_rate`) offers
/// ten times its quota for `flood_secs` while tenant `healthy` runs
/// request/reply at `rr_rate`; the healthy p99 is measured alone first.
pub(super) fn quota_flood(
    node: &Node,
    plan: &Plan,
    healthy: &str,
    noisy: &str,
) -> Result<Scenario, ChaosError> {
    let mut sc = Scenario::new("10x quota flood");
    let th = target(node, healthy)?;
    let rr = |secs: f64, label: &str| -> Result<scenario::ReqReplyResult, ChaosError> {
        let progress = Progress::standalone(label);
        let r = scenario::reqreply::run(
            &th,
            &ReqReplySpec {
                size: 128,
                rate: plan.rr_rate,
                duration: Duration::from_secs_f64(secs),
                drain: Duration::from_secs(5),
            },
            &progress,
        )
        .map_err(|e| ChaosError::Setup(e.to_string()));
        progress.finish();
        r
    };
    let baseline = rr((plan.flood_secs / 2.0).max(2.0), "rr alone")?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(plan.flood_secs) + Duration::from_secs(1);
    let mut tn = target(node, noisy)?;
    tn.handshake_timeout = Some(Duration::from_secs(2));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (tn, delivered, stop) = (tn.clone(), delivered.clone(), stop.clone());
        thread::spawn(move || {
            let Ok(mut sub) = Conn::open(
                &tn,
                &Role {
                    subscribe: Some("noisy.x"),
                    ..Role::default()
                },
            ) else {
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                if sub.fill().is_err() {
                    return;
                }
                let _ = sub.drain(|ev| {
                    if let crate::driver::Ev::Msg { .. } = ev {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })
    };
    let publishers = 2usize;
    let per_pub = plan.quota_rate as f64 * 10.0 / publishers as f64;
    let offered = Arc::new(AtomicU64::new(0));
    let pubs: Vec<_> = (0..publishers)
        .map(|_| {
            let (tn, offered) = (tn.clone(), offered.clone());
            thread::spawn(move || {
                let Ok(frame) = tn.publish_frame("noisy.x", "", &[0u8; 128], false) else {
                    return;
                };
                let t0 = Instant::now();
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    let Ok(mut c) = Conn::open(&tn, &Role::default()) else {
                        thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    while Instant::now() < deadline {
                        let due = (t0.elapsed().as_secs_f64() * per_pub) as u64;
                        let n = due.saturating_sub(sent).min(512) as usize;
                        if n == 0 {
                            thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        if c.write_all(&frame.bytes.repeat(n)).is_err() {
                            break;
                        }
                        sent += n as u64;
                        offered.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let flooded = rr(plan.flood_secs, "rr + flood")?;
    for p in pubs {
        let _ = p.join();
    }
    let flood_secs = started.elapsed().as_secs_f64();
    // Let the noisy subscriber take what was admitted, then stop it.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _ = counter.join();
    sc.seconds = flood_secs;
    sc.load = format!(
        "tenant noisy (quota {} msg/s) offering 10x its quota from {publishers} publishers for {:.0} s; tenant healthy: request/reply at {:.0}/s",
        plan.quota_rate, plan.flood_secs, plan.rr_rate
    );
    let lat = |r: &scenario::ReqReplyResult, f: fn(&crate::stats::Percentiles) -> f64| {
        r.latency.as_ref().map_or(0.0, |l| f(l) / 1000.0)
    };
    sc.figure("noisy_quota_per_sec", plan.quota_rate as f64);
    sc.figure(
        "noisy_written_per_sec",
        offered.load(Ordering::Relaxed) as f64 / flood_secs.max(1e-9),
    );
    sc.figure(
        "noisy_delivered_per_sec",
        delivered.load(Ordering::Relaxed) as f64 / flood_secs.max(1e-9),
    );
    sc.figure("healthy_p50_ms_alone", lat(&baseline, |l| l.p50_us));
    sc.figure("healthy_p99_ms_alone", lat(&baseline, |l| l.p99_us));
    sc.figure("healthy_p50_ms_flood", lat(&flooded, |l| l.p50_us));
    sc.figure("healthy_p99_ms_flood", lat(&flooded, |l| l.p99_us));
    sc.figure("healthy_replies_flood", flooded.received as f64);
    sc.figure("healthy_requests_flood", flooded.sent as f64);
    sc.notes.extend(baseline.errors);
    sc.notes.extend(flooded.errors);
    Ok(sc)
}

/// Publishes and receives on one subject of the bootstrap tenant until
/// stopped, reconnecting whenever the node goes away.
fn traffic(t: &Target, stop: &AtomicBool, received: &AtomicU64) {
    let subject = "chaos.k9";
    while !stop.load(Ordering::Relaxed) {
        let sub = Conn::open(
            t,
            &Role {
                subscribe: Some(subject),
                ..Role::default()
            },
        );
        let publ = Conn::open(t, &Role::default());
        let (Ok(mut sub), Ok(mut publ)) = (sub, publ) else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Ok(frame) = t.publish_frame(subject, "", &[1u8; 64], false) else {
            return;
        };
        let ten = frame.bytes.repeat(10);
        while !stop.load(Ordering::Relaxed) {
            if publ.write_all(&ten).is_err() || sub.fill().is_err() {
                break;
            }
            let ok = sub.drain(|ev| {
                if let crate::driver::Ev::Msg { .. } = ev {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            });
            if ok.is_err() {
                break;
            }
        }
        sub.close();
        publ.close();
    }
}

/// Creates tenants `prefix-N` one after another until stopped; returns the
/// names whose creation was acknowledged.
fn writer(ctl: &Ctl, prefix: &str, stop: &AtomicBool, acked: &Mutex<Vec<String>>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("{prefix}-{n}");
        n += 1;
        if ctl.run(&["tenants", "create", &name]).is_ok() {
            if let Ok(mut a) = acked.lock() {
                a.push(name);
            }
        } else {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// kill -9 loop: `kills` times, kill the node while tenants are being
/// created and traffic flows, start it again, and check that every
/// acknowledged creation is still there and that traffic resumes.
pub(super) fn kill9(node: &mut Node, plan: &Plan, token: &str) -> Result<Scenario, ChaosError> {
    let mut sc = Scenario::new("kill -9 during control writes and traffic");
    let started = Instant::now();
    let stop_traffic = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (t, stop, received) = (target(node, token)?, stop_traffic.clone(), received.clone());
        thread::spawn(move || traffic(&t, &stop, &received))
    };
    let mut acked_total = 0u64;
    for i in 0..plan.kills {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let w = {
            let (ctl, stop, acked) = (node.ctl.clone(), stop.clone(), acked.clone());
            let prefix = format!("k9-{i}");
            thread::spawn(move || writer(&ctl, &prefix, &stop, &acked))
        };
        // Kill at a different point of the write stream each time.
        let window = Duration::from_millis(600 + 170 * u64::from(i % 5));
        thread::sleep(window);
        node.kill9();
        sc.faults_injected += 1;
        let restarted = node.restart();
        stop.store(true, Ordering::Relaxed);
        let _ = w.join();
        if let Err(e) = restarted {
            sc.failures
                .push(format!("kill {i}: the node did not come back: {e}"));
            break;
        }
        let acked: Vec<String> = acked.lock().map(|a| a.clone()).unwrap_or_default();
        acked_total += acked.len() as u64;
        let present = match tenant_names(&node.ctl) {
            Ok(names) => names,
            Err(e) => {
                sc.failures
                    .push(format!("kill {i}: cannot list tenants: {e}"));
                continue;
            }
        };
        let lost: Vec<&String> = acked.iter().filter(|n| !present.contains(*n)).collect();
        if !lost.is_empty() {
            sc.acked_lost += lost.len() as u64;
            sc.failures.push(format!(
                "kill {i}: {} acknowledged tenants missing after restart, e.g. {:?}",
                lost.len(),
                lost.iter().take(3).collect::<Vec<_>>()
            ));
        }
        // Traffic resumes: the subscriber receives again within 10 s.
        let before = received.load(Ordering::Relaxed);
        let resume_deadline = Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::Relaxed) == before && Instant::now() < resume_deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if received.load(Ordering::Relaxed) > before {
            sc.faults_survived += 1;
        } else {
            sc.notes
                .push(format!("kill {i}: traffic did not resume within 10 s"));
        }
    }
    stop_traffic.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    sc.acked_writes = acked_total;
    sc.seconds = started.elapsed().as_secs_f64();
    sc.load = format!(
        "{} kill -9 + restart cycles while tenants are created one after another (arqonctl) and 64 B messages flow",
        plan.kills
    );
    sc.figure("messages_received", received.load(Ordering::Relaxed) as f64);
    Ok(sc)
}

/// The subject of the upgrade scenario's steady traffic.
const UPGRADE_SUBJECT: &str = "chaos.upgrade";

/// What the upgrade scenario's subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    unique: HashSet<u64>,
    duplicates: u64,
    longest_gap: Duration,
}

/// Zero-downtime upgrade under load: an SDK publisher (1,000 numbered
/// messages/s, republishing what it buffered while reconnecting) and an SDK
/// subscriber, plus 4 threads of connect + login + Ping + close, while
/// `arqonbus serve --take-over` replaces the node `plan.take_overs` times
/// (an upgrade, then a rollback). Reports failed connects (goal 0), the
/// longest gap the subscriber saw, and the messages it never got.
pub(super) fn upgrade(node: &mut Node, plan: &Plan, token: &str) -> Result<Scenario, ChaosError> {
    use arqonbus_client::{Client, ConnectOptions};
    use futures_lite::StreamExt as _;

    let mut sc = Scenario::new("zero-downtime upgrade under load");
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let options = || {
        ConnectOptions::new()
            .url(node.url())
            .credential(token)
            .name("chaos-upgrade")
    };
    let setup = |e: arqonbus_client::Error| ChaosError::Setup(format!("SDK client: {e}"));
    let subscriber = rt.block_on(Client::connect(options())).map_err(setup)?;
    let publisher = rt.block_on(Client::connect(options())).map_err(setup)?;
    let mut sub = rt
        .block_on(subscriber.subscribe(UPGRADE_SUBJECT))
        .map_err(setup)?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let receiver = rt.spawn({
        let seen = seen.clone();
        async move {
            let mut last = Instant::now();
            while let Some(m) = sub.next().await {
                let now = Instant::now();
                let Ok(bytes) = <[u8; 8]>::try_from(&m.payload[..]) else {
                    continue;
                };
                if let Ok(mut s) = seen.lock() {
                    s.longest_gap = s.longest_gap.max(now.saturating_duration_since(last));
                    if !s.unique.insert(u64::from_be_bytes(bytes)) {
                        s.duplicates += 1;
                    }
                }
                last = now;
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let publish_errors = Arc::new(AtomicU64::new(0));
    let sender = rt.spawn({
        let (stop, errors, publisher) = (stop.clone(), publish_errors.clone(), publisher.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if publisher
                    .publish(UPGRADE_SUBJECT, seq.to_be_bytes().to_vec())
                    .await
                    .is_err()
                {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
            }
            seq
        }
    });
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let stormers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, token) = (node.addr, token.to_owned());
            let (stop, ok, failed, errors) =
                (stop.clone(), ok.clone(), failed.clone(), errors.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let attempt = (|| -> Result<(), LoginError> {
                        let mut s = wire::connect(addr, None, Duration::from_secs(5))?;
                        wire::login(&mut s, &token)?;
                        wire::ping(&mut s)
                    })();
                    match attempt {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            if let Ok(mut m) = errors.lock() {
                                *m.entry(e.to_string()).or_default() += 1;
                            }
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let mut result = Ok(());
    let (mut serving_max, mut exit_max) = (Duration::ZERO, Duration::ZERO);
    for n in 0..plan.take_overs {
        thread::sleep(Duration::from_secs(1));
        eprintln!("chaos: take-over {}", n + 1);
        match node.take_over() {
            Ok((serving, exit)) => {
                serving_max = serving_max.max(serving);
                exit_max = exit_max.max(exit);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for t in stormers {
        let _ = t.join();
    }
    let published = rt.block_on(sender).unwrap_or(0);
    // Everything the publisher still buffers reaches the subscriber.
    let settle = rt.block_on(async {
        let flushed = tokio::time::timeout(Duration::from_secs(10), publisher.flush()).await;
        let barrier = tokio::time::timeout(Duration::from_secs(10), subscriber.flush()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        publisher.close().await;
        subscriber.close().await;
        matches!((flushed, barrier), (Ok(Ok(())), Ok(Ok(()))))
    });
    let _ = rt.block_on(receiver);
    result?;
    let seen = seen
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    let received = seen.unique.len() as u64;
    sc.seconds = started.elapsed().as_secs_f64();
    sc.load = format!(
        "{} take-overs (`serve --take-over`, lame_duck_window_ms = 500) under an SDK publisher at 1,000 msg/s, an SDK subscriber, and 4 threads of connect + login + Ping + close",
        plan.take_overs
    );
    let failed = failed.load(Ordering::Relaxed);
    sc.figure("take_overs", f64::from(plan.take_overs));
    sc.figure("connects_ok", ok.load(Ordering::Relaxed) as f64);
    sc.figure("connects_failed", failed as f64);
    sc.figure(
        "new_node_serving_ms_max",
        serving_max.as_secs_f64() * 1000.0,
    );
    sc.figure("old_node_exit_ms_max", exit_max.as_secs_f64() * 1000.0);
    sc.figure("published", published as f64);
    sc.figure(
        "publish_errors",
        publish_errors.load(Ordering::Relaxed) as f64,
    );
    sc.figure("received", received as f64);
    sc.figure("lost", published.saturating_sub(received) as f64);
    sc.figure("duplicates", seen.duplicates as f64);
    sc.figure("longest_gap_ms", seen.longest_gap.as_secs_f64() * 1000.0);
    if failed > 0 {
        sc.failures.push(format!(
            "{failed} connects failed during the take-overs (goal 0)"
        ));
    }
    if !settle {
        sc.failures
            .push("the SDK clients did not flush after the take-overs".into());
    }
    if let Ok(errors) = errors.lock() {
        sc.notes
            .extend(errors.iter().map(|(e, n)| format!("{n} × {e}")));
    }
    Ok(sc)
}

/// The tenant names the node lists.
fn tenant_names(ctl: &Ctl) -> Result<HashSet<String>, String> {
    let v = ctl.run(&["tenants", "list"])?;
    Ok(v.get("tenants")
        .and_then(serde_json::Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t.get("name")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Creates tenants `prefix-0..n`; the names acknowledged.
fn create_tenants(ctl: &Ctl, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|name| ctl.run(&["tenants", "create", name]).is_ok())
        .collect()
}

/// A deterministic byte pattern (xorshift), for overwrites.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// How one round damages the stopped node's control store.
fn damage(store: &std::path::Path, round: u32) -> Result<&'static str, ChaosError> {
    match round % 3 {
        0 => {
            let mut bytes = std::fs::read(store)?;
            let len = bytes.len();
            if len > 4096 {
                // Anywhere but the first page, which redb checks on open.
                let seed = 0x9e37_79b9_u64.wrapping_mul(u64::from(round) + 1);
                let at = 4096 + (seed as usize % (len - 4096)).min(len.saturating_sub(8192));
                let end = (at + 4096).min(len);
                bytes[at..end].copy_from_slice(&noise(seed, end - at));
            }
            std::fs::write(store, bytes)?;
            Ok("4 KiB overwritten")
        }
        1 => {
            std::fs::write(store, b"")?;
            Ok("truncated to 0 bytes")
        }
        _ => {
            std::fs::remove_file(store)?;
            Ok("deleted")
        }
    }
}

/// Store damage: `plan.damage_rounds` times, stop the node, damage its
/// control store (4 KiB overwritten, truncated, deleted, in turn), start it:
/// it must refuse with a message naming `control.redb` and `arqonbus restore
/// --from`, or (an overwrite redb does not notice) serve; then restore the
/// online backup taken before and check that every tenant acknowledged
/// before the backup is there and that traffic flows.
pub(super) fn store_damage(
    node: &mut Node,
    plan: &Plan,
    token: &str,
) -> Result<Scenario, ChaosError> {
    let mut sc = Scenario::new("store damage and restore");
    let started = Instant::now();
    let before = create_tenants(&node.ctl, "dmg", 20);
    let backup = node.data_dir().with_file_name("chaos-backup.redb");
    let _ = std::fs::remove_file(&backup);
    node.ctl
        .run(&["backup", &backup.display().to_string()])
        .map_err(ChaosError::Setup)?;
    let after = create_tenants(&node.ctl, "dmg-after-backup", 5);
    sc.acked_writes = (before.len() + after.len()) as u64;
    let (mut refused, mut unnoticed, mut restored) = (0u32, 0u32, 0u32);
    for round in 0..plan.damage_rounds {
        node.stop();
        let how = damage(&node.store_file(), round)?;
        sc.faults_injected += 1;
        if let Some(output) = node.start_damaged()? {
            let names =
                output.contains("control.redb") && output.contains("arqonbus restore --from");
            if names && !output.contains("panicked") {
                refused += 1;
            } else {
                let last = output
                    .lines()
                    .last()
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect::<String>();
                sc.failures.push(format!(
                    "round {round} ({how}): the refusal does not name the file and the recovery: {last}"
                ));
            }
        } else {
            unnoticed += 1;
            sc.notes.push(format!(
                "round {round} ({how}): the node started; the damage missed what it reads"
            ));
        }
        if let Err(e) = node.restore(&backup) {
            sc.failures
                .push(format!("round {round}: restore failed: {e}"));
            break;
        }
        node.start_again()?;
        let present = tenant_names(&node.ctl).map_err(ChaosError::Setup)?;
        let lost: Vec<&String> = before.iter().filter(|n| !present.contains(*n)).collect();
        if lost.is_empty() {
            restored += 1;
            sc.faults_survived += 1;
        } else {
            sc.acked_lost += lost.len() as u64;
            sc.failures.push(format!(
                "round {round}: {} tenants acknowledged before the backup are missing after the restore",
                lost.len()
            ));
        }
        if let Err(e) = probe(node, token, None) {
            sc.failures
                .push(format!("round {round}: no session after the restore: {e}"));
        }
    }
    let _ = std::fs::remove_file(&backup);
    sc.seconds = started.elapsed().as_secs_f64();
    sc.load = format!(
        "{} rounds: stop, damage control.redb (4 KiB overwrite, truncation, deletion in turn), start, restore the online backup, start; {} tenants before the backup, {} after it",
        plan.damage_rounds,
        before.len(),
        after.len()
    );
    sc.figure("refused_naming_the_recovery", f64::from(refused));
    sc.figure("damage_unnoticed_node_served", f64::from(unnoticed));
    sc.figure("restored_and_serving", f64::from(restored));
    sc.notes.push(format!(
        "a restore returns the store to the backup: the {} tenants created after it are gone by design",
        after.len()
    ));
    Ok(sc)
}

/// The CA key, relative to the data directory.
const CA_KEY: &str = "tls/ca.key";
/// The CA certificate clients trust, relative to the data directory.
const CA_CERT: &str = "tls/ca.pem";
/// The server certificate, relative to the data directory.
const SERVER_CERT: &str = "tls/server.pem";
/// The server certificate's key, relative to the data directory.
const SERVER_KEY: &str = "tls/server.key";
/// The admin credential, relative to the data directory.
const ADMIN_TOKEN: &str = "credentials/admin.token";

/// How one round of [`key_damage`] damages its file.
#[derive(Debug, Clone, Copy)]
enum KeyDamage {
    Delete,
    Truncate,
    /// The same length of noise.
    Overwrite,
    /// A well-formed admin token that is not the node's.
    OtherToken,
}

/// What the node must do when it starts on the damage.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refuse, naming the file and this recovery.
    Refuse(&'static str),
    /// Serve, having re-issued the file from the CA.
    Reissue,
}

/// Rounds of [`key_damage`] for `damage_rounds` (the smoke's 3 give 5,
/// which damage each file once; a full run's 6 give 10, every damage).
fn key_rounds(damage_rounds: u32) -> u32 {
    damage_rounds * 5 / 3
}

/// What one round of [`key_damage`] does: the file, the damage, and what
/// the node must do about it.
fn key_round(round: u32) -> (&'static str, KeyDamage, Expect) {
    const NEW_ADMIN: Expect = Expect::Refuse("arqonbus admin rotate-token");
    const RESTORE: Expect = Expect::Refuse("restore it from a backup");
    match round % 10 {
        0 => (CA_KEY, KeyDamage::Delete, RESTORE),
        1 => (SERVER_CERT, KeyDamage::Overwrite, Expect::Reissue),
        2 => (CA_CERT, KeyDamage::Overwrite, RESTORE),
        3 => (ADMIN_TOKEN, KeyDamage::Truncate, NEW_ADMIN),
        4 => (SERVER_KEY, KeyDamage::Overwrite, Expect::Reissue),
        5 => (CA_KEY, KeyDamage::Overwrite, RESTORE),
        6 => (CA_CERT, KeyDamage::Delete, RESTORE),
        7 => (SERVER_CERT, KeyDamage::Delete, Expect::Reissue),
        8 => (ADMIN_TOKEN, KeyDamage::Delete, NEW_ADMIN),
        _ => (ADMIN_TOKEN, KeyDamage::OtherToken, NEW_ADMIN),
    }
}

/// Applies `damage` to `path`; returns it in words.
fn damage_key(
    path: &std::path::Path,
    damage: KeyDamage,
    seed: u64,
) -> std::io::Result<&'static str> {
    match damage {
        KeyDamage::Delete => std::fs::remove_file(path).map(|()| "deleted"),
        KeyDamage::Truncate => std::fs::write(path, b"").map(|()| "truncated"),
        KeyDamage::Overwrite => {
            let len = std::fs::metadata(path)?.len() as usize;
            std::fs::write(path, noise(seed, len)).map(|()| "overwritten with noise")
        }
        KeyDamage::OtherToken => std::fs::write(path, format!("abt_{}\n", "x".repeat(43)))
            .map(|()| "replaced by another token"),
    }
}

/// Key damage: stop the node, damage its CA key, CA certificate, server
/// certificate or key, or admin credential (deleted, truncated,
/// overwritten or replaced; see [`key_round`]), start it. On the CA or the
/// admin credential it must refuse, naming the file and its recovery, never
/// serve with a new CA or lock the operator out; a damaged server
/// certificate or key it must re-issue from the CA and serve. Then recover as the
/// refusal says (the CA files from the operator's copy; a new admin
/// credential with `arqonbus admin rotate-token`), start, and check that
/// the CA is the one clients already trust, the control API answers (over
/// TLS, verified with that CA), every tenant acknowledged before is there
/// and a session opens.
pub(super) fn key_damage(
    node: &mut Node,
    plan: &Plan,
    token: &str,
) -> Result<Scenario, ChaosError> {
    let mut sc =
        Scenario::new("CA, server certificate and key, admin credential damaged and recovered");
    let started = Instant::now();
    let before = create_tenants(&node.ctl, "keys", 10);
    sc.acked_writes = before.len() as u64;
    // The operator's copies of the CA.
    let ca_pem = std::fs::read(node.data_dir().join(CA_CERT))?;
    let ca_key = std::fs::read(node.data_dir().join(CA_KEY))?;
    let (mut refused, mut reissued, mut recovered) = (0u32, 0u32, 0u32);
    let rounds = key_rounds(plan.damage_rounds);
    for round in 0..rounds {
        let (file, damage, expect) = key_round(round);
        node.stop();
        let path = node.data_dir().join(file);
        let how = format!(
            "{file} {}",
            damage_key(&path, damage, u64::from(round) + 1)?
        );
        sc.faults_injected += 1;
        let outcome = node.start_damaged()?;
        let last = |output: &str| -> String {
            output
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect()
        };
        match (expect, outcome) {
            (Expect::Refuse(recovery), Some(output))
                if output.contains(file)
                    && output.contains(recovery)
                    && !output.contains("panicked") =>
            {
                refused += 1;
            }
            (Expect::Refuse(recovery), Some(output)) => sc.failures.push(format!(
                "round {round} ({how}): the refusal does not name the file and `{recovery}`: {}",
                last(&output)
            )),
            (Expect::Refuse(_), None) => sc
                .failures
                .push(format!("round {round} ({how}): the node started")),
            (Expect::Reissue, None) => {
                let pem = std::fs::read_to_string(&path).unwrap_or_default();
                if pem.starts_with("-----BEGIN ") {
                    reissued += 1;
                } else {
                    sc.failures.push(format!(
                        "round {round} ({how}): the node served without re-issuing {file}"
                    ));
                }
            }
            (Expect::Reissue, Some(output)) => sc.failures.push(format!(
                "round {round} ({how}): refused instead of re-issuing from the CA: {}",
                last(&output)
            )),
        }
        node.stop();
        let fixed = match file {
            CA_KEY => write_private(&path, &ca_key).map_err(|e| e.to_string()),
            CA_CERT => std::fs::write(&path, &ca_pem).map_err(|e| e.to_string()),
            ADMIN_TOKEN => node.rotate_admin_token().map(drop),
            _ => Ok(()),
        };
        if let Err(e) = fixed {
            sc.failures
                .push(format!("round {round} ({how}): recovery failed: {e}"));
            break;
        }
        node.start_again()?;
        let same_ca = std::fs::read(node.data_dir().join(CA_CERT))? == ca_pem;
        let present = tenant_names(&node.ctl);
        let session = probe(node, token, None);
        match (same_ca, present, session) {
            (true, Ok(present), Ok(_)) => {
                let lost = before.iter().filter(|n| !present.contains(*n)).count();
                if lost == 0 {
                    recovered += 1;
                    sc.faults_survived += 1;
                } else {
                    sc.acked_lost += lost as u64;
                    sc.failures.push(format!(
                        "round {round} ({how}): {lost} acknowledged tenants missing after the recovery"
                    ));
                }
            }
            (false, ..) => sc
                .failures
                .push(format!("round {round} ({how}): the node made a new CA")),
            (_, Err(e), _) => sc.failures.push(format!(
                "round {round} ({how}): no control API after the recovery: {e}"
            )),
            (_, _, Err(e)) => sc.failures.push(format!(
                "round {round} ({how}): no session after the recovery: {e}"
            )),
        }
    }
    sc.seconds = started.elapsed().as_secs_f64();
    sc.load = format!(
        "{rounds} rounds: stop, damage tls/ca.key, tls/ca.pem, tls/server.pem, tls/server.key or credentials/admin.token (deleted, truncated, overwritten with noise, replaced by another token, in turn), start, recover as the refusal says (a server certificate or key: re-issued by the node), start; {} tenants acknowledged before",
        before.len()
    );
    sc.figure("refused_naming_the_recovery", f64::from(refused));
    sc.figure("reissued_from_the_ca", f64::from(reissued));
    sc.figure("recovered_and_serving", f64::from(recovered));
    Ok(sc)
}

/// Writes a private file (mode 0600), as the node keeps its keys.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// Unmounts on drop, so a failed run leaves no mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Disk full: a second node whose data directory is a 4 MiB tmpfs (root
/// only; skipped with a note otherwise). Traffic flows; the disk is filled;
/// tenants are created until a write fails; meanwhile existing sessions
/// must keep delivering; the space is freed and writes must resume by
/// themselves (the store reopens), with every acknowledged tenant there.
pub(super) fn disk_full(spec: &super::node::NodeSpec) -> Result<Scenario, ChaosError> {
    let mut sc = Scenario::new("disk full, then freed");
    let started = Instant::now();
    std::fs::create_dir_all(spec.dir.join("data"))?;
    let data = spec.dir.join("data");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&data)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        sc.notes
            .push("skipped: mounting a 4 MiB tmpfs needs root".into());
        return Ok(sc);
    }
    let _mount = Mount(data.clone());
    let mut node = Node::start(spec.clone())?;
    let token = node.bootstrap_token()?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let flow = {
        let (t, stop, received) = (target(&node, &token)?, stop.clone(), received.clone());
        thread::spawn(move || traffic(&t, &stop, &received))
    };
    let mut acked = create_tenants(&node.ctl, "fits", 5);
    // Fill the disk, then write until the store refuses.
    let filler = data.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![0_u8; 16 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let mut refusal = None;
    for i in 0..500 {
        let name = format!("full-{i}");
        match node.ctl.run(&["tenants", "create", &name]) {
            Ok(_) => acked.push(name),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let Some(refusal) = refusal else {
        stop.store(true, Ordering::Relaxed);
        let _ = flow.join();
        sc.failures
            .push("500 writes fitted on a full 4 MiB disk".into());
        return Ok(sc);
    };
    sc.notes.push(format!(
        "the write on a full disk: {}",
        refusal.chars().take(200).collect::<String>()
    ));
    // Existing sessions go on from the last snapshot.
    let before = received.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(500));
    let while_full = received.load(Ordering::Relaxed) - before;
    if while_full == 0 {
        sc.failures
            .push("no message delivered while the disk was full".into());
    }
    // Freed: writes resume by themselves.
    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    let mut recovered = None;
    while freed.elapsed() < Duration::from_secs(30) {
        if node.ctl.run(&["tenants", "create", "after-free"]).is_ok() {
            recovered = Some(freed.elapsed());
            acked.push("after-free".into());
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = flow.join();
    match recovered {
        Some(d) => {
            sc.faults_survived = 1;
            sc.figure("writes_resumed_after_free_ms", d.as_secs_f64() * 1000.0);
        }
        None => sc
            .failures
            .push("writes did not resume within 30 s of freeing the disk".into()),
    }
    sc.faults_injected = 1;
    let present = tenant_names(&node.ctl).map_err(ChaosError::Setup)?;
    let lost = acked.iter().filter(|n| !present.contains(*n)).count();
    sc.acked_writes = acked.len() as u64;
    sc.acked_lost = lost as u64;
    if lost > 0 {
        sc.failures.push(format!(
            "{lost} acknowledged tenants missing after the disk was freed"
        ));
    }
    sc.figure("messages_delivered_while_full_500ms", while_full as f64);
    let panics = node.panics();
    sc.failures.extend(
        panics
            .iter()
            .map(|p| format!("panic in the node's output: {p}")),
    );
    node.stop();
    sc.failures.extend(
        node.unexpected_exits
            .iter()
            .map(|e| format!("node exit: {e}")),
    );
    sc.seconds = started.elapsed().as_secs_f64();
    sc.load = "a second node on a 4 MiB tmpfs: traffic, the disk filled, tenants created until a write fails, the space freed".into();
    Ok(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smoke's key-damage rounds damage each file once; a full run
    /// makes every damage in the list.
    #[test]
    fn key_rounds_cover_every_file_in_the_smoke_and_every_damage_in_full() {
        let files = |rounds: u32| -> std::collections::BTreeSet<&str> {
            (0..rounds).map(|r| key_round(r).0).collect()
        };
        let all = [CA_KEY, CA_CERT, SERVER_CERT, SERVER_KEY, ADMIN_TOKEN];
        assert_eq!(files(key_rounds(3)), all.into_iter().collect());
        let full: std::collections::BTreeSet<String> = (0..key_rounds(6))
            .map(|r| {
                let (file, damage, _) = key_round(r);
                format!("{file} {damage:?}")
            })
            .collect();
        assert_eq!(full.len(), 10, "{full:?}");
    }
}
