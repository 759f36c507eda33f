//! What the placement measurements write: every run (JSON) and a Markdown
//! summary, medians over rounds, ratios between the sides of one run, and
//! the goals with whether each is met.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{DISTURBED, Measured, Part, Run, Settings, Side, Tenancy};
use crate::scenario::placement::PHASES;
use crate::stats::Percentiles;

/// Where and how the results were made.
#[derive(Debug, Serialize)]
pub(crate) struct Meta {
    pub(crate) date: String,
    pub(crate) commit: String,
    /// The command line that made these results.
    pub(crate) command: String,
    pub(crate) host_cores: usize,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run started.
    pub(crate) load_average_before: String,
    /// `net.ipv4.tcp_migrate_req` (1: the kernel moves a closed listener's
    /// queue to another listener of its group instead of resetting it).
    pub(crate) tcp_migrate_req: String,
    pub(crate) nats_server_version: String,
    pub(crate) arqonbus_binary: String,
    pub(crate) settings: Settings,
    pub(crate) elapsed_secs: f64,
    pub(crate) truncated: bool,
    pub(crate) notes: Vec<String>,
}

/// The JSON file.
#[derive(Debug, Serialize)]
pub(crate) struct Results<'a> {
    pub(crate) meta: &'a Meta,
    pub(crate) runs: &'a [Run],
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), f)
}

fn count(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The runs of `part` by `side` (and tenancy, size) that produced numbers.
fn runs_of(
    runs: &[Run],
    part: Part,
    side: Side,
    tenancy: Option<Tenancy>,
    size: Option<usize>,
) -> impl Iterator<Item = &Run> {
    runs.iter().filter(move |r| {
        !r.superseded
            && r.part == part
            && r.side == side
            && (tenancy.is_none() || r.tenancy == tenancy)
            && r.size == size
            && r.outcome.is_some()
    })
}

/// Picks one percentile.
type Pick = fn(&Percentiles) -> f64;

/// One goal: what it asks, what was measured, whether it is met.
struct Goal {
    what: String,
    measured: String,
    met: Option<bool>,
}

/// The Markdown summary.
pub(crate) fn markdown(meta: &Meta, all: &[Run]) -> String {
    let s = &meta.settings;
    // Runs another process disturbed were run again; the tables use the
    // repeats.
    let kept: Vec<Run> = all.iter().filter(|r| !r.superseded).cloned().collect();
    let runs = &kept[..];
    let mut md = String::new();
    let mut goals: Vec<Goal> = Vec::new();
    let _ = writeln!(
        md,
        "# Placement (issue 9) — {} (commit {})\n",
        meta.date, meta.commit
    );
    let _ = writeln!(
        md,
        "Command: `{}`. {} round(s); in each, the sides run back to back in an order that rotates \
         from round to round; figures are medians over rounds unless said. Host: {} cores, shared \
         by the servers (pinned to CPUs {:?} with taskset) and this load generator; ArqonBus {} \
         shards, plaintext. Load average before: {}. `net.ipv4.tcp_migrate_req` = {}. {}; {:.0} s \
         in all.{}{}\n",
        meta.command,
        s.rounds,
        meta.host_cores,
        s.server_cpus,
        s.shards,
        meta.load_average_before,
        meta.tcp_migrate_req,
        meta.nats_server_version,
        meta.elapsed_secs,
        if meta.truncated {
            " **The budget cut this run short.**"
        } else {
            ""
        },
        if s.smoke {
            " **Smoke run: tiny counts, the numbers mean nothing.**"
        } else {
            ""
        }
    );
    md.push_str(
        "ArqonBus sides: **kernel** = started without CAP_BPF (`setpriv`), steering program not \
         attached (`arqonbus_steering_active 0`): the kernel's `SO_REUSEPORT` hash, and drain closes \
         the listener (the behaviour before steering); **hash** = program attached, `[steering] mode = \
         \"hash\"`; **balance** = program attached, `mode = \"balance\"` (the default). Tenants are \
         created with `arqonctl tenants create --placement spread|home`.\n\n",
    );
    if s.parts.contains(&Part::Spread) {
        spread_section(&mut md, &mut goals, s, runs);
    }
    if s.parts.contains(&Part::Rate) {
        rate_section(&mut md, &mut goals, s, runs);
    }
    if s.parts.contains(&Part::Drain) {
        drain_section(&mut md, &mut goals, s, runs);
    }
    if s.parts.contains(&Part::Tenants) {
        tenants_section(&mut md, &mut goals, s, runs);
    }
    md.push_str("## Goals\n\n| goal | measured | met |\n|---|---|---|\n");
    for g in &goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {} | {met} |", g.what, g.measured);
    }
    let bound = runs.iter().filter(|r| r.client_bound.is_some()).count();
    let failed: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("round {} {:?} {}: {e}", r.round + 1, r.part, r.side.label()))
        })
        .collect();
    let steal = median(&runs.iter().map(|r| r.cpu.steal_pct).collect::<Vec<_>>());
    let _ = writeln!(
        md,
        "\nSteal: median {} % of all CPU time over the runs. Client-bound runs (a client thread \
         ≥ 90 % of a core, or the machine saturated with the client using more than the server): \
         {bound} of {}.",
        fmt_opt(steal, |v| format!("{v:.1}")),
        runs.len()
    );
    let _ = write!(
        md,
        "\nOther processes on the host (process time used by neither this load generator, nor \
         the server under test, nor the kernel's threads; before each run the runner waited, at most {} s, until the host's \
         processes used under {} cores, {:.0} s in all), in cores, median / max over the runs, and \
         runs where they took over {DISTURBED} cores:",
        super::QUIET_WAIT.as_secs(),
        super::QUIET_CORES,
        all.iter().map(|r| r.waited_secs).sum::<f64>()
    );
    for part in &s.parts {
        let other: Vec<f64> = runs
            .iter()
            .filter(|r| r.part == *part)
            .map(|r| r.cpu.other_cores())
            .collect();
        let max = other.iter().copied().fold(0.0, f64::max);
        let disturbed = other.iter().filter(|&&o| o > DISTURBED).count();
        let _ = write!(
            md,
            " {part:?} {} / {max:.2}, {disturbed} of {} still disturbed;",
            fmt_opt(median(&other), |v| format!("{v:.2}")),
            other.len()
        );
    }
    md.pop();
    let _ = writeln!(
        md,
        ". Runs disturbed beyond {DISTURBED} cores were run again (at most twice; the tables use \
         the last attempt, the JSON keeps every one): {} superseded.",
        all.len() - runs.len()
    );
    if !failed.is_empty() {
        let _ = writeln!(md, "\nFailed runs: {}.", failed.join("; "));
    }
    for n in &meta.notes {
        let _ = writeln!(md, "\nNote: {n}.");
    }
    md
}

fn spread_section(md: &mut String, goals: &mut Vec<Goal>, s: &Settings, runs: &[Run]) {
    let _ = writeln!(
        md,
        "## 1. Connections per shard after {} connects\n\n{} connections opened from 4 threads and \
         held until all are open; each connection's shard is the one its `Welcome` names. A \
         `spread` tenant stays where steering put it; a `home` tenant's connections move to its \
         home shard after authentication (so max / mean is the shard count by design; *moved* \
         counts them). Max / mean: the fullest shard over the mean (1.000 = even).\n",
        s.connections, s.connections
    );
    md.push_str(
        "| side | tenant | max / mean (median) | worst run | per shard (median run) | moved (median) | every run |\n\
         |---|---|---:|---:|---|---:|---|\n",
    );
    let mut balance_spread = None;
    let mut kernel_spread = None;
    for tenancy in [Tenancy::Spread, Tenancy::Home] {
        for side in [Side::Kernel, Side::Hash, Side::Balance] {
            let rs: Vec<(&Run, f64, Vec<u64>)> =
                runs_of(runs, Part::Spread, side, Some(tenancy), None)
                    .filter_map(|r| match &r.outcome {
                        Some(Measured::Spread(x)) => {
                            Some((r, x.max_over_mean, x.per_shard.clone()))
                        }
                        _ => None,
                    })
                    .collect();
            if rs.is_empty() {
                continue;
            }
            let vals: Vec<f64> = rs.iter().map(|x| x.1).collect();
            let m = median(&vals);
            let worst = vals.iter().copied().fold(f64::NAN, f64::max);
            let mut sorted = rs.clone();
            sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
            let mid = &sorted[sorted.len() / 2].2;
            let moved = median(
                &rs.iter()
                    .filter_map(|x| x.0.moved.map(|m| m as f64))
                    .collect::<Vec<_>>(),
            );
            if tenancy == Tenancy::Spread {
                if side == Side::Balance {
                    balance_spread = Some((m, worst));
                } else if side == Side::Kernel {
                    kernel_spread = m;
                }
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {} | {} | {} |",
                side.label(),
                tenancy.as_str(),
                fmt_opt(m, |v| format!("{v:.3}")),
                worst,
                mid.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" / "),
                fmt_opt(moved, count),
                vals.iter()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    md.push('\n');
    goals.push(Goal {
        what: format!(
            "connections per shard after {} connects, `balance`: max / mean ≤ 1.01",
            count(s.connections as f64)
        ),
        measured: balance_spread.map_or_else(
            || "–".into(),
            |(m, w)| {
                format!(
                    "{} (worst run {w:.3}); kernel hash {}",
                    fmt_opt(m, |v| format!("{v:.3}")),
                    fmt_opt(kernel_spread, |v| format!("{v:.3}"))
                )
            },
        ),
        met: balance_spread.and_then(|(_, w)| (!w.is_nan()).then_some(w <= 1.01)),
    });
}

fn rate_section(md: &mut String, goals: &mut Vec<Goal>, s: &Settings, runs: &[Run]) {
    let _ = writeln!(
        md,
        "## 2. Connect rate with the program and without\n\nThe connect storm (`connect-storm`): {} \
         connections, each connect + handshake (`Connect` → `Welcome`) + close, from {} threads, \
         {} times per side and tenant in each round (sides alternated: A B C A B C …). \
         Connections per second, median of all those runs; ratios to the kernel side of the same \
         run.\n",
        s.storm_connections, s.storm_threads, s.rate_repeats
    );
    md.push_str(
        "| tenant | kernel | program, hash | program, balance | hash / kernel | balance / kernel | every run (kernel; hash; balance) |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    let mut goal = None;
    for tenancy in [Tenancy::Spread, Tenancy::Home] {
        let vals = |side| -> Vec<f64> {
            runs_of(runs, Part::Rate, side, Some(tenancy), None)
                .filter_map(|r| match &r.outcome {
                    Some(Measured::Storm(x)) => Some(x.conns_per_sec),
                    _ => None,
                })
                .collect()
        };
        let (k, h, b) = (vals(Side::Kernel), vals(Side::Hash), vals(Side::Balance));
        if k.is_empty() && h.is_empty() && b.is_empty() {
            continue;
        }
        let (mk, mh, mb) = (median(&k), median(&h), median(&b));
        let list = |v: &[f64]| v.iter().map(|x| count(*x)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {}; {}; {} |",
            tenancy.as_str(),
            fmt_opt(mk, count),
            fmt_opt(mh, count),
            fmt_opt(mb, count),
            fmt_opt(ratio(mh, mk), |v| format!("{v:.3}")),
            fmt_opt(ratio(mb, mk), |v| format!("{v:.3}")),
            list(&k),
            list(&h),
            list(&b)
        );
        if tenancy == Tenancy::Spread {
            goal = Some((ratio(mb, mk), ratio(mh, mk)));
        }
    }
    md.push('\n');
    let (b, h) = goal.unwrap_or((None, None));
    goals.push(Goal {
        what: "connect rate with the program ≥ 0.95× without (`spread` tenant)".into(),
        measured: format!(
            "balance {}×, hash {}×",
            fmt_opt(b, |v| format!("{v:.3}")),
            fmt_opt(h, |v| format!("{v:.3}"))
        ),
        met: b.map(|v| v >= 0.95),
    });
}

fn drain_section(md: &mut String, goals: &mut Vec<Goal>, s: &Settings, runs: &[Run]) {
    let _ = writeln!(
        md,
        "## 3. A connect storm while shard {} is drained and resumed\n\n{} threads connect \
         (through `Welcome`, a `spread` tenant) and close as fast as they can for {:.1} s; at 1/3 \
         `arqonctl node drain {}` runs, at 2/3 `arqonctl node resume {}`. A failed connect is any \
         attempt that did not reach its `Welcome` (connect and handshake bounded at 5 s). Sums over \
         all rounds; *new on shard {} while drained*: connections welcomed there that started \
         after the drain command returned and before the resume began.\n",
        s.drained_shard,
        s.drain_threads,
        s.drain_secs,
        s.drained_shard,
        s.drained_shard,
        s.drained_shard
    );
    md.push_str(
        "| side | connects | failed | failed per run | of which started while `node drain` ran | failures by kind | new on the drained shard while drained | handshake p99 / max (µs, median run) | conns/s (median) |\n\
         |---|---:|---:|---|---:|---|---:|---|---:|\n",
    );
    let mut failed_by_side = BTreeMap::new();
    for side in [Side::Kernel, Side::Hash, Side::Balance] {
        let rs: Vec<_> = runs_of(runs, Part::Drain, side, None, None)
            .filter_map(|r| match &r.outcome {
                Some(Measured::Drain(x)) => Some(x),
                _ => None,
            })
            .collect();
        if rs.is_empty() {
            continue;
        }
        let attempts: u64 = rs.iter().map(|x| x.attempts).sum();
        let failed: u64 = rs.iter().map(|x| x.failed).sum();
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for x in &rs {
            for (k, n) in &x.failures {
                *kinds.entry(k.as_str()).or_default() += n;
            }
        }
        let on_drained: u64 = rs
            .iter()
            .filter_map(|x| x.phases.get(PHASES[2]))
            .filter_map(|p| p.per_shard.get(s.drained_shard as usize))
            .sum();
        let in_drain: u64 = rs
            .iter()
            .filter_map(|x| x.phases.get(PHASES[1]))
            .map(|p| p.failed)
            .sum();
        let p99 = median(
            &rs.iter()
                .filter_map(|x| x.handshake.as_ref().map(|h| h.p99_us))
                .collect::<Vec<_>>(),
        );
        let max = median(
            &rs.iter()
                .filter_map(|x| x.handshake.as_ref().map(|h| h.max_us))
                .collect::<Vec<_>>(),
        );
        let rate = median(&rs.iter().map(|x| x.conns_per_sec).collect::<Vec<_>>());
        let action_errors: Vec<&String> = rs.iter().flat_map(|x| &x.action_errors).collect();
        failed_by_side.insert(side, (failed, attempts, rs.len()));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {in_drain} | {} | {} | {} / {} | {} |{}",
            side.label(),
            count(attempts as f64),
            failed,
            rs.iter()
                .map(|x| x.failed.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if kinds.is_empty() {
                "–".to_owned()
            } else {
                kinds
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            on_drained,
            fmt_opt(p99, count),
            fmt_opt(max, count),
            fmt_opt(rate, count),
            if action_errors.is_empty() {
                String::new()
            } else {
                format!(
                    " drain/resume errors: {}",
                    action_errors
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        );
    }
    md.push('\n');
    let show = |side| {
        failed_by_side.get(&side).map_or_else(
            || "–".to_owned(),
            |(f, a, n)| format!("{f} of {} in {n} runs", count(*a as f64)),
        )
    };
    goals.push(Goal {
        what: "connect storm while a shard is drained and resumed: 0 failed connects with steering"
            .into(),
        measured: format!(
            "balance {}; hash {}; kernel (listener closed) {}",
            show(Side::Balance),
            show(Side::Hash),
            show(Side::Kernel)
        ),
        met: failed_by_side.get(&Side::Balance).map(|(f, _, _)| *f == 0),
    });
}

fn tenants_section(md: &mut String, goals: &mut Vec<Goal>, s: &Settings, runs: &[Run]) {
    let _ = writeln!(
        md,
        "## 4. {} tenants, each 1 publisher → 1 subscriber, placed by the server\n\nN→N with {} \
         pairs, each pair with its own credential: on ArqonBus its own tenant (`arqonctl tenants \
         create tI --placement home`, no harness placement: the server puts each tenant's two \
         connections on its home shard), on nats-server its own account (`accounts` in its \
         configuration, one user each) or, for *1 account*, every pair as the same user. \
         *kernel hash (spread, before)*: ArqonBus without the program and tenants `spread`, i.e. \
         where the kernel hashes each connection (same or cross shard by chance), as before this \
         issue. Publishers write for {:.1} s; deliveries per second.\n",
        s.pairs, s.pairs, s.duration_secs
    );
    md.push_str(
        "| payload | ArqonBus placed | ArqonBus kernel hash | nats 8 accounts | nats 1 account | placed / nats 8 | placed / nats 1 | placed / kernel hash | incomplete, client-bound runs |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut worst: Option<(f64, String)> = None;
    let mut measured = Vec::new();
    for &size in &s.sizes {
        let med = |side| {
            median(
                &runs_of(runs, Part::Tenants, side, None, Some(size))
                    .filter_map(|r| match &r.outcome {
                        Some(Measured::Throughput(t)) => Some(t.msgs_per_sec),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let (p, k, n8, n1) = (
            med(Side::Placed),
            med(Side::KernelSpread),
            med(Side::Nats8),
            med(Side::Nats1),
        );
        let incomplete = runs
            .iter()
            .filter(|r| r.part == Part::Tenants && r.size == Some(size))
            .filter(|r| matches!(&r.outcome, Some(Measured::Throughput(t)) if !t.complete))
            .count();
        let bound: Vec<String> = runs
            .iter()
            .filter(|r| r.part == Part::Tenants && r.size == Some(size) && r.client_bound.is_some())
            .map(|r| r.side.name().to_owned())
            .collect();
        let (r8, r1) = (ratio(p, n8), ratio(p, n1));
        for (r, what) in [(r8, "8 accounts"), (r1, "1 account")] {
            if let Some(r) = r {
                measured.push(format!("{size} B vs {what} {r:.2}×"));
                if worst.as_ref().is_none_or(|(w, _)| r < *w) {
                    worst = Some((r, format!("{size} B vs {what}")));
                }
            }
        }
        let _ = writeln!(
            md,
            "| {size} B | {} | {} | {} | {} | {} | {} | {} | {incomplete}; {} |",
            fmt_opt(p, count),
            fmt_opt(k, count),
            fmt_opt(n8, count),
            fmt_opt(n1, count),
            fmt_opt(r8, |v| format!("{v:.2}")),
            fmt_opt(r1, |v| format!("{v:.2}")),
            fmt_opt(ratio(p, k), |v| format!("{v:.2}")),
            if bound.is_empty() {
                "0".to_owned()
            } else {
                format!("{} ({})", bound.len(), bound.join(", "))
            }
        );
    }
    goals.push(Goal {
        what: "8 tenants × 1→1 placed by the server, 16 B and 128 B: ≥ 2× nats-server (8 accounts or one)".into(),
        measured: if measured.is_empty() {
            "–".into()
        } else {
            measured.join(", ")
        },
        met: worst.as_ref().map(|(w, _)| *w >= 2.0),
    });

    let _ = writeln!(
        md,
        "\nRequest/reply, open loop at {:.0} requests/s for {:.1} s, {} B, latency from each \
         request's scheduled send time to its reply (corrected for coordinated omission). ArqonBus: \
         requester and responder of one `home` tenant, placed by the server (both on its home \
         shard); nats-server: one account.\n",
        s.rr_rate, s.rr_duration_secs, s.rr_size
    );
    md.push_str("| percentile | ArqonBus placed (µs) | nats-server (µs) | ArqonBus / nats |\n|---|---:|---:|---:|\n");
    let pct = |side, f: fn(&Percentiles) -> f64| {
        median(
            &runs_of(runs, Part::Tenants, side, None, None)
                .filter_map(|r| match &r.outcome {
                    Some(Measured::ReqReply(x)) => x.latency.as_ref().map(f),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )
    };
    let mut rr = Vec::new();
    let rows: [(&str, Pick); 5] = [
        ("p50", |p| p.p50_us),
        ("p90", |p| p.p90_us),
        ("p99", |p| p.p99_us),
        ("p99.9", |p| p.p999_us),
        ("max", |p| p.max_us),
    ];
    for (name, f) in rows {
        let (a, n) = (pct(Side::Placed, f), pct(Side::Nats1, f));
        let r = ratio(a, n);
        if name == "p50" || name == "p99" {
            rr.push((name, a, n, r));
        }
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} |",
            fmt_opt(a, |v| format!("{v:.0}")),
            fmt_opt(n, |v| format!("{v:.0}")),
            fmt_opt(r, |v| format!("{v:.2}"))
        );
    }
    md.push('\n');
    goals.push(Goal {
        what: "request/reply p50 and p99 with the server's placement ≤ 0.5× nats-server".into(),
        measured: rr
            .iter()
            .map(|(name, a, n, r)| {
                format!(
                    "{name} {} µs vs {} µs ({}×)",
                    fmt_opt(*a, |v| format!("{v:.0}")),
                    fmt_opt(*n, |v| format!("{v:.0}")),
                    fmt_opt(*r, |v| format!("{v:.2}"))
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        met: if rr.iter().all(|x| x.3.is_some()) && !rr.is_empty() {
            Some(rr.iter().all(|x| x.3.is_some_and(|r| r <= 0.5)))
        } else {
            None
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(count(1_234_567.4), "1,234,567");
        assert_eq!(count(999.0), "999");
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }
}
