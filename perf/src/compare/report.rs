//! What a comparison records, and how it is summarized.
//!
//! Every run becomes a [`RunRecord`]: round, system, scenario, payload, the
//! scenario's [`Outcome`], CPU use (client, server, steal) and whether the
//! client rather than the server looked like the bottleneck. The summary
//! takes, per scenario, payload, metric and system, the median over rounds,
//! and the ratios ArqonBus / nats-server (each version run, and the faster
//! of two when both ran) and ArqonBus / raw relay. The
//! markdown table is that summary; the JSON file holds everything.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::fleet::System;
use crate::scenario::Outcome;
use crate::stats::CpuUsage;

/// A scenario of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Scenario {
    /// Idle connections (fresh server).
    Idle,
    /// Connect storm, plaintext.
    ConnectStorm,
    /// Connect storm, TLS.
    ConnectStormTls,
    /// Publish only.
    PubOnly,
    /// 1→1 (ArqonBus: as `--placement` says, cross-shard by default).
    OneToOne,
    /// 1→1, ArqonBus publisher on its subscriber's shard.
    OneToOneSameShard,
    /// 1→1 over TLS.
    OneToOneTls,
    /// Fan-out 1→8.
    Fanout8,
    /// Fan-out 1→64.
    Fanout64,
    /// N→N, 8 pairs.
    NToN,
    /// Queue group, 8 members.
    Queue8,
    /// Request/reply (ArqonBus: as `--placement` says).
    ReqReply,
    /// Request/reply, ArqonBus requester on its responder's shard.
    ReqReplySameShard,
}

impl Scenario {
    /// The name in tables and charts.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Idle => "idle connections",
            Self::ConnectStorm => "connect storm (plaintext)",
            Self::ConnectStormTls => "connect storm (TLS)",
            Self::PubOnly => "publish only",
            Self::OneToOne => "1→1",
            Self::OneToOneSameShard => "1→1, same shard",
            Self::OneToOneTls => "1→1 TLS",
            Self::Fanout8 => "fan-out 1→8",
            Self::Fanout64 => "fan-out 1→64",
            Self::NToN => "N→N (8 pairs)",
            Self::Queue8 => "queue group (8 members)",
            Self::ReqReply => "request/reply",
            Self::ReqReplySameShard => "request/reply, same shard",
        }
    }

    /// Whether a larger number is better for its metrics.
    fn higher_is_better(self) -> bool {
        !matches!(self, Self::Idle | Self::ReqReply | Self::ReqReplySameShard)
    }
}

/// One run of one scenario against one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    /// Round (0-based).
    pub(crate) round: usize,
    /// Position of this system in the round's order (0 = first).
    pub(crate) order: usize,
    /// The system.
    pub(crate) system: System,
    /// The scenario.
    pub(crate) scenario: Scenario,
    /// Payload bytes, where it applies.
    pub(crate) size: Option<usize>,
    /// What it measured; `None` if it failed.
    pub(crate) outcome: Option<Outcome>,
    /// Why it failed.
    pub(crate) error: Option<String>,
    /// CPU over the run.
    pub(crate) cpu: CpuUsage,
    /// Why the client looks like the bottleneck, if it does.
    pub(crate) client_bound: Option<String>,
}

/// The metrics a run contributes to the table.
pub(crate) fn metrics(outcome: &Outcome) -> Vec<(&'static str, f64)> {
    match outcome {
        Outcome::Throughput(t) => vec![("msgs/s", t.msgs_per_sec)],
        Outcome::ReqReply(r) => r.latency.as_ref().map_or_else(Vec::new, |p| {
            vec![
                ("p50 µs", p.p50_us),
                ("p90 µs", p.p90_us),
                ("p99 µs", p.p99_us),
                ("p99.9 µs", p.p999_us),
                ("max µs", p.max_us),
            ]
        }),
        Outcome::Idle(i) => vec![("RSS B/conn", i.bytes_per_connection)],
        Outcome::Storm(s) => vec![("conns/s", s.conns_per_sec)],
    }
}

/// The median over rounds of one metric for one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Cell {
    /// Median value.
    pub(crate) median: f64,
    /// Rounds with a value.
    pub(crate) rounds: usize,
    /// Rounds flagged client-bound.
    pub(crate) client_bound: usize,
    /// Rounds that lost messages or met connection errors.
    pub(crate) incomplete: usize,
    /// Median steal over those rounds, percent.
    pub(crate) steal_pct: f64,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SummaryRow {
    /// Scenario.
    pub(crate) scenario: Scenario,
    /// Payload bytes.
    pub(crate) size: Option<usize>,
    /// Metric name.
    pub(crate) metric: String,
    /// Per system.
    pub(crate) cells: BTreeMap<System, Cell>,
    /// ArqonBus / nats-server.
    pub(crate) vs_nats: Option<f64>,
    /// ArqonBus / nats-server (latest).
    #[serde(default)]
    pub(crate) vs_nats_latest: Option<f64>,
    /// ArqonBus / the faster of the two nats-servers in this row, when both
    /// ran: what the goals are held against.
    #[serde(default)]
    pub(crate) vs_faster_nats: Option<f64>,
    /// ArqonBus / raw relay.
    pub(crate) vs_relay: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

fn incomplete(o: &Outcome) -> bool {
    match o {
        Outcome::Throughput(t) => !t.complete,
        Outcome::ReqReply(r) => !r.complete,
        Outcome::Idle(_) => false,
        Outcome::Storm(s) => s.failed > 0,
    }
}

/// Medians and ratios per (scenario, payload, metric).
pub(crate) fn summarize(runs: &[RunRecord]) -> Vec<SummaryRow> {
    type Key = (Scenario, Option<usize>, &'static str);
    let mut values: BTreeMap<Key, BTreeMap<System, Vec<&RunRecord>>> = BTreeMap::new();
    let mut metric_order: Vec<Key> = Vec::new();
    for r in runs {
        let Some(o) = &r.outcome else { continue };
        for (metric, _) in metrics(o) {
            let key = (r.scenario, r.size, metric);
            if !metric_order.contains(&key) {
                metric_order.push(key);
            }
            values
                .entry(key)
                .or_default()
                .entry(r.system)
                .or_default()
                .push(r);
        }
    }
    metric_order.sort_by_key(|k| (k.0, k.1));
    metric_order
        .into_iter()
        .map(|key| {
            let (scenario, size, metric) = key;
            let mut cells = BTreeMap::new();
            for (system, recs) in values.remove(&key).unwrap_or_default() {
                let vals: Vec<f64> = recs
                    .iter()
                    .filter_map(|r| r.outcome.as_ref())
                    .filter_map(|o| metrics(o).into_iter().find(|(m, _)| *m == metric))
                    .map(|(_, v)| v)
                    .collect();
                cells.insert(
                    system,
                    Cell {
                        median: median(vals.clone()),
                        rounds: vals.len(),
                        client_bound: recs.iter().filter(|r| r.client_bound.is_some()).count(),
                        incomplete: recs
                            .iter()
                            .filter(|r| r.outcome.as_ref().is_some_and(incomplete))
                            .count(),
                        steal_pct: median(recs.iter().map(|r| r.cpu.steal_pct).collect()),
                    },
                );
            }
            let against = |b: f64| {
                let a = cells.get(&System::Arqonbus)?.median;
                (b > 0.0).then(|| a / b)
            };
            let ratio = |other: System| against(cells.get(&other)?.median);
            // The faster nats-server: more throughput, or less latency and
            // memory.
            let faster = match (cells.get(&System::Nats), cells.get(&System::NatsLatest)) {
                (Some(a), Some(b)) if scenario.higher_is_better() => {
                    against(a.median.max(b.median))
                }
                (Some(a), Some(b)) => against(a.median.min(b.median)),
                _ => None,
            };
            SummaryRow {
                scenario,
                size,
                metric: metric.to_owned(),
                vs_nats: ratio(System::Nats),
                vs_nats_latest: ratio(System::NatsLatest),
                vs_faster_nats: faster,
                vs_relay: ratio(System::Relay),
                cells,
            }
        })
        .collect()
}

/// A number with thousands grouped or a unit prefix, for tables.
pub(crate) fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1} k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Payload size as `16 B`, `1 KiB`.
pub(crate) fn size_label(size: Option<usize>) -> String {
    match size {
        None => "–".into(),
        Some(s) if s >= 1024 && s % 1024 == 0 => format!("{} KiB", s / 1024),
        Some(s) => format!("{s} B"),
    }
}

/// A ratio column of the table: whether it is shown, its title, its value.
type RatioColumn = (bool, &'static str, fn(&SummaryRow) -> Option<f64>);

/// The markdown table of `rows`.
pub(crate) fn markdown(rows: &[SummaryRow], systems: &[System]) -> String {
    let mut md = String::new();
    let _ = write!(md, "| scenario | payload | metric |");
    for s in systems {
        let _ = write!(md, " {} |", s.label());
    }
    let has = |s| systems.contains(&s);
    let both_nats = has(System::Nats) && has(System::NatsLatest);
    let columns: [RatioColumn; 4] = [
        (has(System::Nats), "ArqonBus / nats", |r| r.vs_nats),
        (has(System::NatsLatest), "ArqonBus / nats latest", |r| {
            r.vs_nats_latest
        }),
        (both_nats, "ArqonBus / faster nats", |r| r.vs_faster_nats),
        (has(System::Relay), "ArqonBus / raw", |r| r.vs_relay),
    ];
    for (_, title, _) in columns.iter().filter(|c| c.0) {
        let _ = write!(md, " {title} |");
    }
    md.push_str(" notes |\n|---|---|---|");
    for _ in systems {
        md.push_str("---:|");
    }
    for _ in columns.iter().filter(|c| c.0) {
        md.push_str("---:|");
    }
    md.push_str("---|\n");
    for row in rows {
        let _ = write!(
            md,
            "| {} | {} | {} |",
            row.scenario.label(),
            size_label(row.size),
            row.metric
        );
        let mut notes = Vec::new();
        for s in systems {
            match row.cells.get(s) {
                Some(c) => {
                    let _ = write!(md, " {} |", human(c.median));
                    if c.client_bound > 0 {
                        notes.push(format!(
                            "{}: client-bound {}/{}",
                            s.label(),
                            c.client_bound,
                            c.rounds
                        ));
                    }
                    if c.incomplete > 0 {
                        notes.push(format!(
                            "{}: incomplete {}/{}",
                            s.label(),
                            c.incomplete,
                            c.rounds
                        ));
                    }
                }
                None => md.push_str(" – |"),
            }
        }
        let ratio = |r: Option<f64>| r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"));
        for (_, _, value) in columns.iter().filter(|c| c.0) {
            let _ = write!(md, " {} |", ratio(value(row)));
        }
        let steal = median(row.cells.values().map(|c| c.steal_pct).collect());
        if steal >= 1.0 {
            notes.push(format!("steal {steal:.0} %"));
        }
        let _ = writeln!(md, " {} |", notes.join("; "));
    }
    let _ = write!(
        md,
        "\nMedians over rounds. Higher is better except for latency and RSS (lower is better: a ratio below 1 favours ArqonBus there). {}\n",
        if rows.iter().any(|r| !r.scenario.higher_is_better()) {
            "Latency is request/reply at a fixed offered rate, from the scheduled send time."
        } else {
            ""
        }
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{IdleResult, ThroughputResult};

    fn tp(rate: f64) -> Outcome {
        Outcome::Throughput(ThroughputResult {
            publishers: 1,
            subscribers: 1,
            queue_members: 0,
            size: 128,
            sent: 10,
            expected: 10,
            delivered: 10,
            publish_secs: 1.0,
            secs: 1.0,
            publish_rate: rate,
            msgs_per_sec: rate,
            payload_mb_per_sec: 0.0,
            complete: true,
            latency: None,
            client_max_thread: 0.5,
            errors: vec![],
        })
    }

    /// An idle run that measured `bytes` per connection.
    fn idle_outcome(bytes: f64) -> Outcome {
        Outcome::Idle(IdleResult {
            connections: 10,
            rss_before_kib: 1,
            rss_half_kib: 1,
            rss_after_kib: 2,
            bytes_per_connection: bytes,
            connect_secs: 0.1,
        })
    }

    fn rec(round: usize, system: System, o: Outcome) -> RunRecord {
        RunRecord {
            round,
            order: 0,
            system,
            scenario: Scenario::OneToOne,
            size: Some(128),
            outcome: Some(o),
            error: None,
            cpu: CpuUsage::default(),
            client_bound: None,
        }
    }

    #[test]
    fn medians_and_ratios() {
        let runs = vec![
            rec(0, System::Arqonbus, tp(300.0)),
            rec(1, System::Arqonbus, tp(100.0)),
            rec(2, System::Arqonbus, tp(200.0)),
            rec(0, System::Nats, tp(100.0)),
            rec(1, System::Nats, tp(100.0)),
            rec(0, System::Relay, tp(400.0)),
        ];
        let rows = summarize(&runs);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert!((r.cells[&System::Arqonbus].median - 200.0).abs() < 1e-9);
        assert!((r.vs_nats.unwrap() - 2.0).abs() < 1e-9);
        assert!((r.vs_relay.unwrap() - 0.5).abs() < 1e-9);
        let md = markdown(&rows, &[System::Arqonbus, System::Nats, System::Relay]);
        assert!(
            md.contains("| 1→1 | 128 B | msgs/s | 200 | 100 | 400 | 2.00× | 0.50× |"),
            "{md}"
        );
    }

    #[test]
    fn goals_hold_against_the_faster_nats_server() {
        let runs = vec![
            rec(0, System::Arqonbus, tp(300.0)),
            rec(0, System::Nats, tp(100.0)),
            rec(0, System::NatsLatest, tp(150.0)),
        ];
        let rows = summarize(&runs);
        let r = &rows[0];
        assert!((r.vs_nats.unwrap() - 3.0).abs() < 1e-9);
        assert!((r.vs_nats_latest.unwrap() - 2.0).abs() < 1e-9);
        assert!((r.vs_faster_nats.unwrap() - 2.0).abs() < 1e-9);
        let md = markdown(&rows, &[System::Arqonbus, System::Nats, System::NatsLatest]);
        assert!(
            md.contains("| 1→1 | 128 B | msgs/s | 300 | 100 | 150 | 3.00× | 2.00× | 2.00× |"),
            "{md}"
        );
        // Memory: the faster is the one that holds less.
        let idle = |system, bytes: f64| {
            let mut r = rec(0, system, tp(1.0));
            r.scenario = Scenario::Idle;
            r.size = None;
            r.outcome = Some(idle_outcome(bytes));
            r
        };
        let rows = summarize(&[
            idle(System::Arqonbus, 100.0),
            idle(System::Nats, 1000.0),
            idle(System::NatsLatest, 500.0),
        ]);
        assert!((rows[0].vs_faster_nats.unwrap() - 0.2).abs() < 1e-9);
    }

    #[test]
    fn idle_rows_have_their_own_metric() {
        let o = idle_outcome(102.4);
        assert_eq!(metrics(&o), vec![("RSS B/conn", 102.4)]);
        assert_eq!(size_label(Some(16384)), "16 KiB");
        assert_eq!(size_label(Some(128)), "128 B");
    }
}
