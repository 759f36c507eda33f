//! `arqonbus-perf chaos`: the standing chaos and flood suite.
//!
//! Starts the release `arqonbus` itself (plaintext, 2 shards, loopback,
//! free ports), then runs, one after another: a connection storm, a Ping
//! flood from clients that never read, slow consumers, a 10× quota flood by
//! one tenant while another measures its request/reply p99, an
//! authentication flood beside timed valid logins from another source
//! address, kill -9 cycles during control writes and traffic, take-overs
//! (`serve --take-over`) under a connect storm and SDK pub/sub, rounds of
//! store damage each restored from an online backup, rounds of CA-key and
//! admin-credential damage each recovered as the refusal says, and (root only, a
//! second node on a 4 MiB tmpfs) a full disk freed again ([`scenarios`];
//! `--only` picks some). It reports the load held, the faults survived, the
//! acknowledged control writes lost, the peak RSS and the healthy tenant's
//! p99, and **fails** (exit 1) on any lost acknowledged write, any
//! `panicked` in the node's output, any exit of the node nobody asked for,
//! or a peak RSS above `--rss-bound-mib`.
//!
//! Invariants: everything talks to 127.0.0.x only; every scenario is bounded
//! in time and count (`--smoke` fits in about 2 minutes on 2 cores,
//! `--duration S` sets the flood length of the longer form); the node is
//! stopped (and killed if need be) when the run ends, also on error.
//!
//! Not covered yet: see `NOT_COVERED` (listed in every report).

mod node;
mod scenarios;
mod wire;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use self::node::{Node, NodeSpec, RssWatch};
use self::scenarios::Scenario;

/// Why the suite could not run (as opposed to a failed verdict).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChaosError {
    /// Files, binaries, the node's start or a tenant's creation.
    #[error("setup: {0}")]
    Setup(String),
    /// Local I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// `arqonbus-perf chaos`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChaosArgs {
    /// CI's bounded form: short floods, few kills (about 2 minutes on 2
    /// cores). Writes to target/chaos-smoke/ unless --out says otherwise.
    #[arg(long)]
    smoke: bool,
    /// Seconds of each flood in the longer form (kill -9 cycles: one per 2
    /// seconds of it, at least 5).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Fail when the node's RSS ever exceeds this many MiB.
    #[arg(long, default_value_t = 1024.0)]
    rss_bound_mib: f64,
    /// The `arqonbus` binary (default: next to this one).
    #[arg(long)]
    arqonbus: Option<PathBuf>,
    /// The `arqonctl` binary (default: next to this one).
    #[arg(long)]
    arqonctl: Option<PathBuf>,
    /// Where the report goes (default: perf/results/<date>-chaos/, or
    /// target/chaos-smoke/ with --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the scratch directory (data directory and the node's log).
    #[arg(long)]
    keep: bool,
    /// Run only these scenarios (repeatable): storm, ping-flood,
    /// slow-consumers, quota-flood, auth-flood, kill9, upgrade,
    /// store-damage, key-damage, disk-full.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    only: Vec<String>,
}

/// The scenarios' names for `--only`, in the order they run.
const SCENARIOS: [&str; 10] = [
    "storm",
    "ping-flood",
    "slow-consumers",
    "quota-flood",
    "auth-flood",
    "kill9",
    "upgrade",
    "store-damage",
    "key-damage",
    "disk-full",
];

/// How big each scenario is.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Plan {
    /// Seconds of each flood.
    pub(super) flood_secs: f64,
    /// kill -9 cycles.
    pub(super) kills: u32,
    /// Connections of the storm.
    pub(super) storm_connections: usize,
    /// Connections flooding Pings.
    pub(super) ping_conns: usize,
    /// Threads sending wrong credentials.
    pub(super) auth_threads: usize,
    /// Subscribers that never read.
    pub(super) slow_subs: usize,
    /// The noisy tenant's messages/s quota.
    pub(super) quota_rate: u64,
    /// The healthy tenant's request rate.
    pub(super) rr_rate: f64,
    /// `serve --take-over` replacements of the node under load.
    pub(super) take_overs: u32,
    /// Store damage rounds (overwrite, truncate, delete in turn), and as
    /// many rounds of CA-key and admin-credential damage.
    pub(super) damage_rounds: u32,
}

impl Plan {
    fn of(args: &ChaosArgs) -> Self {
        if args.smoke {
            return Self {
                flood_secs: 4.0,
                kills: 3,
                storm_connections: 500,
                ping_conns: 8,
                auth_threads: 2,
                slow_subs: 8,
                quota_rate: 1000,
                rr_rate: 500.0,
                take_overs: 2,
                damage_rounds: 3,
            };
        }
        let secs = args.duration.clamp(2.0, 600.0);
        Self {
            flood_secs: secs,
            kills: ((secs / 2.0) as u32).max(5),
            storm_connections: (secs * 250.0) as usize,
            ping_conns: 32,
            auth_threads: 4,
            slow_subs: 32,
            quota_rate: 1000,
            rr_rate: 1000.0,
            take_overs: ((secs / 4.0) as u32).max(2),
            damage_rounds: 6,
        }
    }
}

/// The whole run, as written to `<out>/<time>.json`.
#[derive(Debug, Serialize)]
struct Report {
    command: String,
    date: String,
    verdict: &'static str,
    failures: Vec<String>,
    plan: Plan,
    rss_bound_mib: f64,
    peak_rss_mib: f64,
    acked_writes: u64,
    acked_lost: u64,
    faults_injected: u64,
    faults_survived: u64,
    healthy_p99_ms_alone: Option<f64>,
    healthy_p99_ms_flood: Option<f64>,
    panics: Vec<String>,
    unexpected_exits: Vec<String>,
    scenarios: Vec<Scenario>,
    not_covered: Vec<&'static str>,
    seconds: f64,
}

/// Faults this suite does not inject yet, and why (none today).
const NOT_COVERED: [&str; 0] = [];

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs the suite; `Err` when it could not run, `Ok(false)` when it ran and
/// failed.
pub(crate) fn run(args: &ChaosArgs) -> Result<bool, String> {
    let plan = Plan::of(args);
    let (date, time) = crate::compare::utc_now();
    let out = args.out.clone().unwrap_or_else(|| {
        if args.smoke {
            PathBuf::from("target/chaos-smoke")
        } else {
            PathBuf::from(format!("perf/results/{date}-chaos"))
        }
    });
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let scratch = std::env::temp_dir().join(format!("arqonbus-chaos-{}", std::process::id()));
    let spec = NodeSpec {
        arqonbus: args.arqonbus.clone().unwrap_or_else(|| sibling("arqonbus")),
        arqonctl: args.arqonctl.clone().unwrap_or_else(|| sibling("arqonctl")),
        dir: scratch.clone(),
        shards: 2,
    };
    let started = Instant::now();
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let result = suite(&spec, &plan, &wanted);
    let node_log = scratch.join("arqonbus.log");
    let (scenarios, peak_rss_mib, panics, unexpected_exits) = match result {
        Ok(r) => r,
        Err(e) => {
            return Err(format!(
                "{e} (the node's log: {}{})",
                node_log.display(),
                if args.keep { "" } else { ", kept" }
            ));
        }
    };
    let mut failures: Vec<String> = Vec::new();
    for s in &scenarios {
        failures.extend(s.failures.iter().map(|f| format!("{}: {f}", s.name)));
    }
    failures.extend(
        panics
            .iter()
            .map(|p| format!("panic in the node's output: {p}")),
    );
    failures.extend(unexpected_exits.iter().map(|e| format!("node exit: {e}")));
    if peak_rss_mib > args.rss_bound_mib {
        failures.push(format!(
            "peak RSS {peak_rss_mib:.0} MiB above the bound of {:.0} MiB",
            args.rss_bound_mib
        ));
    }
    let quota = scenarios.iter().find(|s| s.name == "10x quota flood");
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date: format!("{date} {time} UTC"),
        verdict: if failures.is_empty() { "PASS" } else { "FAIL" },
        plan,
        rss_bound_mib: args.rss_bound_mib,
        peak_rss_mib,
        acked_writes: scenarios.iter().map(|s| s.acked_writes).sum(),
        acked_lost: scenarios.iter().map(|s| s.acked_lost).sum(),
        faults_injected: scenarios.iter().map(|s| s.faults_injected).sum(),
        faults_survived: scenarios.iter().map(|s| s.faults_survived).sum(),
        healthy_p99_ms_alone: quota.and_then(|s| s.figures.get("healthy_p99_ms_alone").copied()),
        healthy_p99_ms_flood: quota.and_then(|s| s.figures.get("healthy_p99_ms_flood").copied()),
        panics,
        unexpected_exits,
        failures,
        scenarios,
        not_covered: NOT_COVERED.to_vec(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let md = markdown(&report);
    let base = out.join(format!("{date}-{time}-chaos"));
    if report.verdict != "PASS" {
        // The evidence goes next to the report: the log's last lines (it
        // can reach megabytes under a flood).
        let text = std::fs::read_to_string(&node_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(200)..].join("\n");
        let _ = std::fs::write(base.with_extension("node-tail.log"), tail);
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    write(&base.with_extension("json"), &json)?;
    write(&base.with_extension("md"), &md)?;
    eprintln!("{md}");
    eprintln!(
        "chaos: {} ({} and {})",
        report.verdict,
        base.with_extension("json").display(),
        base.with_extension("md").display()
    );
    Ok(report.verdict == "PASS")
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

type SuiteResult = (Vec<Scenario>, f64, Vec<String>, Vec<String>);

/// One scenario of the table the suite runs: its label and how to run it.
type Step<'a> = (
    &'a str,
    Box<dyn Fn(&Node) -> Result<Scenario, ChaosError> + 'a>,
);

/// A scenario that stops, restarts or replaces the node.
type Fault = fn(&mut Node, &Plan, &str) -> Result<Scenario, ChaosError>;

/// Starts the node, runs every scenario, stops the node.
fn suite(
    spec: &NodeSpec,
    plan: &Plan,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<SuiteResult, ChaosError> {
    let mut node = Node::start(spec.clone())?;
    let watch = RssWatch::start(node.pid.clone());
    let token = node.bootstrap_token()?;
    let tenant = |name: &str, extra: &[&str]| node.tenant(name, extra).map_err(ChaosError::Setup);
    let healthy = tenant("healthy", &[])?;
    let noisy = tenant(
        "noisy",
        &["--messages-per-second", &plan.quota_rate.to_string()],
    )?;
    let slow = tenant("slow", &[])?;
    let mut scenarios = Vec::new();
    let steps: Vec<Step<'_>> = vec![
        (
            "storm",
            Box::new(|n: &Node| scenarios::storm(n, plan, &token)),
        ),
        (
            "ping-flood",
            Box::new(|n: &Node| scenarios::ping_flood(n, plan, &token)),
        ),
        (
            "slow-consumers",
            Box::new(|n: &Node| scenarios::slow_consumers(n, plan, &slow, &token)),
        ),
        (
            "quota-flood",
            Box::new(|n: &Node| scenarios::quota_flood(n, plan, &healthy, &noisy)),
        ),
        (
            "auth-flood",
            Box::new(|n: &Node| scenarios::auth_flood(n, plan, &token)),
        ),
    ];
    for (label, step) in steps.iter().filter(|(label, _)| wanted(label)) {
        eprintln!("chaos: {label}");
        let _ = watch.take_window_mib();
        let mut sc = step(&node)?;
        sc.peak_rss_mib = watch.take_window_mib();
        if !node.check_alive() {
            sc.failures
                .push("the node exited during this scenario".into());
            node.restart()?;
        }
        scenarios.push(sc);
    }
    drop(steps);
    // Scenarios that stop, restart or replace the node.
    let faults: [(&str, Fault); 4] = [
        ("kill9", scenarios::kill9),
        ("upgrade", scenarios::upgrade),
        ("store-damage", scenarios::store_damage),
        ("key-damage", scenarios::key_damage),
    ];
    for (label, run) in faults.into_iter().filter(|(label, _)| wanted(label)) {
        eprintln!("chaos: {label}");
        let _ = watch.take_window_mib();
        let mut sc = run(&mut node, plan, &token)?;
        sc.peak_rss_mib = watch.take_window_mib();
        scenarios.push(sc);
    }
    node.stop();
    let peak = watch.peak_mib();
    drop(watch);
    if wanted("disk-full") {
        // A node of its own: its data directory is a small filesystem.
        eprintln!("chaos: disk-full");
        let mut own = spec.clone();
        own.dir = spec.dir.join("disk-full");
        scenarios.push(scenarios::disk_full(&own)?);
    }
    Ok((
        scenarios,
        peak,
        node.panics(),
        node.unexpected_exits.clone(),
    ))
}

/// The human report.
fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Chaos and flood suite: {}\n", r.verdict);
    let _ = writeln!(s, "`{}` ({}, {:.0} s)\n", r.command, r.date, r.seconds);
    let _ = writeln!(
        s,
        "| figure | value |\n|---|---|\n| acknowledged control writes | {} |\n| acknowledged writes lost | {} |\n| faults injected (kill -9, store and key damage, full disk) / survived | {} / {} |\n| peak RSS | {:.0} MiB (bound {:.0} MiB) |\n| healthy tenant p99 alone / under a 10x quota flood | {} / {} ms |\n| panics in the node's output | {} |\n| exits nobody asked for | {} |\n",
        r.acked_writes,
        r.acked_lost,
        r.faults_injected,
        r.faults_survived,
        r.peak_rss_mib,
        r.rss_bound_mib,
        r.healthy_p99_ms_alone
            .map_or("-".into(), |v| format!("{v:.2}")),
        r.healthy_p99_ms_flood
            .map_or("-".into(), |v| format!("{v:.2}")),
        r.panics.len(),
        r.unexpected_exits.len(),
    );
    for f in &r.failures {
        let _ = writeln!(s, "- **FAIL**: {f}");
    }
    for sc in &r.scenarios {
        let _ = writeln!(
            s,
            "\n## {}\n\n{} ({:.1} s, peak RSS {:.0} MiB)\n",
            sc.name, sc.load, sc.seconds, sc.peak_rss_mib
        );
        for (k, v) in &sc.figures {
            let _ = writeln!(s, "- {k}: {v}");
        }
        if sc.faults_injected > 0 {
            let _ = writeln!(
                s,
                "- faults injected / survived: {} / {}; acknowledged writes {} , lost {}",
                sc.faults_injected, sc.faults_survived, sc.acked_writes, sc.acked_lost
            );
        }
        for n in &sc.notes {
            let _ = writeln!(s, "- note: {}", n.replace('\n', " "));
        }
    }
    let _ = writeln!(s, "\n## Not covered yet\n");
    if r.not_covered.is_empty() {
        let _ = writeln!(
            s,
            "- nothing: every fault the suite is meant to inject is injected above"
        );
    }
    for n in &r.not_covered {
        let _ = writeln!(s, "- {n}");
    }
    s
}
