//! `arqonbus-perf placement`: the measurements of issue 9 (eBPF steering and
//! tenant homes), side by side in one run.
//!
//! It starts its own servers ([`Fleet`]), all pinned to the same CPUs, on
//! free loopback ports, and stops them when it ends (also on Ctrl-C).
//! ArqonBus runs in three steering *sides*:
//! - `kernel`: started without CAP_BPF (`setpriv`), so the steering program
//!   cannot load: the kernel's `SO_REUSEPORT` hash places connections, and a
//!   drain closes the listener (the behaviour before steering);
//! - `hash`: the program attached, `[steering] mode = "hash"`;
//! - `balance`: the program attached, `mode = "balance"` (the default).
//!
//! Each side's steering is checked on its `/metrics`
//! (`arqonbus_steering_active`) before anything is measured.
//!
//! The parts (`--only`):
//! 1. `spread`: connections per shard after `--connections` connects,
//!    max / mean, for a `spread` tenant (no move after authentication) and a
//!    `home` tenant (every connection moves to one shard: how many moved);
//! 2. `rate`: the connect storm (`connect-storm`) on each side, `spread` and
//!    `home` tenants;
//! 3. `drain`: a connect storm while shard 1 is drained and resumed
//!    (`arqonctl node drain 1`, `node resume 1`): failed connects;
//! 4. `tenants`: 8 tenants, each 1 publisher → 1 subscriber with its own
//!    credential, placed by the server (`home`, no harness placement),
//!    against nats-server with 8 accounts and with one; ArqonBus without
//!    the program and with `spread` tenants (connections where the kernel
//!    hashes them) beside them; request/reply at a fixed rate, ArqonBus's
//!    requester and responder placed by the server, against nats-server.
//!
//! Parts 1–3 start the three sides fresh every round; part 4 starts its
//! servers once. Every round runs the sides back to back in an order that
//! rotates from round to round (A B C, B C A, …). Tenants, principals and
//! credentials are created with `arqonctl`, as an operator would
//! ([`node`]). Results: `<out>/<date>-placement.{json,md}` ([`report`]),
//! with the command line that made them.

mod node;
mod report;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::node::{Ctl, Node};
use crate::compare::fleet::{self, Fleet, FleetConfig};
use crate::compare::{WorkDir, command_output, commit, ensure_nats, utc_now};
use crate::driver::{Proto, Target};
use crate::progress::Progress;
use crate::scenario::placement::{
    Action, DrainStormResult, DrainStormSpec, SpreadResult, SpreadSpec,
};
use crate::scenario::{
    self, ReqReplyResult, ReqReplySpec, ScenarioError, StormResult, StormSpec, ThroughputResult,
    ThroughputSpec,
};
use crate::stats::{CpuProbe, CpuUsage, busy_cores_now, client_bound, cores};

/// Tenants (and nats-server accounts) of the `tenants` part.
const TENANTS: usize = 8;

/// The shard drained and resumed in the `drain` part.
const DRAINED_SHARD: u32 = 1;

/// Before each run, the runner waits (at most [`QUIET_WAIT`]) until the
/// host's processes use fewer cores than this: another build on a shared
/// host would take the CPUs the servers are pinned to.
const QUIET_CORES: f64 = 0.5;

/// The longest wait for a quiet host before a run starts anyway.
const QUIET_WAIT: Duration = Duration::from_secs(30);

/// Other processes' cores above which a run counts as disturbed, and is
/// run again (at most [`REPEATS`] times).
pub(crate) const DISTURBED: f64 = 0.3;

/// How many times a disturbed run is repeated.
const REPEATS: usize = 2;

/// `arqonbus-perf placement` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PlacementArgs {
    /// Parts to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "spread,rate,drain,tenants"
    )]
    only: Vec<Part>,
    /// Rounds (each runs every side of every part once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Tiny counts, one round: checks that every part produces numbers.
    #[arg(long)]
    smoke: bool,
    /// `spread`: connections opened and held per run.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// `rate`: connections per connect storm.
    #[arg(long, default_value_t = 3000)]
    storm_connections: usize,
    /// `rate`: client threads of the connect storm.
    #[arg(long, default_value_t = 4)]
    storm_threads: usize,
    /// `rate`: connect storms per side and tenant in each round (the sides
    /// alternate between them).
    #[arg(long, default_value_t = 3)]
    rate_repeats: usize,
    /// `drain`: client threads connecting and closing.
    #[arg(long, default_value_t = 16)]
    drain_threads: usize,
    /// `drain`: seconds of the storm (drain at 1/3, resume at 2/3).
    #[arg(long, default_value_t = 3.0)]
    drain_secs: f64,
    /// `tenants`: payload sizes, bytes.
    #[arg(long, value_delimiter = ',', default_value = "16,128")]
    sizes: Vec<usize>,
    /// `tenants`: seconds publishers write per run.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// `tenants`: request/reply offered rate, requests per second.
    #[arg(long, default_value_t = 5000.0)]
    rr_rate: f64,
    /// `tenants`: request/reply seconds per run.
    #[arg(long, default_value_t = 2.0)]
    rr_duration: f64,
    /// `tenants`: request/reply payload, bytes.
    #[arg(long, default_value_t = 128)]
    rr_size: usize,
    /// CPUs every server is pinned to.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    cpus: Vec<usize>,
    /// ArqonBus shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// The arqonbus binary (default: next to this one).
    #[arg(long)]
    arqonbus: Option<PathBuf>,
    /// The arqonctl binary (default: next to this one).
    #[arg(long)]
    arqonctl: Option<PathBuf>,
    /// The nats-server binary; installed with apt-get if missing.
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Do not try to install nats-server.
    #[arg(long)]
    no_install: bool,
    /// Where results go (default perf/results; target/perf-smoke with --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stop starting runs after this many minutes.
    #[arg(long, default_value_t = 10.0)]
    budget_mins: f64,
    /// Keep the servers' data directories and logs.
    #[arg(long)]
    keep_logs: bool,
}

/// One part of the measurements.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Part {
    /// Connections per shard after N connects.
    Spread,
    /// Connect rate with the program and without.
    Rate,
    /// A connect storm while a shard is drained and resumed.
    Drain,
    /// 8 tenants × 1→1, and request/reply, placed by the server.
    Tenants,
}

/// Who served a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Side {
    /// ArqonBus without the steering program (no CAP_BPF): the kernel's hash.
    Kernel,
    /// ArqonBus, program attached, mode `hash`.
    Hash,
    /// ArqonBus, program attached, mode `balance`.
    Balance,
    /// ArqonBus, program attached (`balance`), tenants `home`.
    Placed,
    /// ArqonBus without the program, tenants `spread`: before steering.
    KernelSpread,
    /// nats-server, one account per tenant.
    Nats8,
    /// nats-server, every tenant in one account.
    Nats1,
}

impl Side {
    /// The name in tables.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Kernel => "kernel (no program)",
            Self::Hash => "program, hash",
            Self::Balance => "program, balance",
            Self::Placed => "ArqonBus, placed by the server (home)",
            Self::KernelSpread => "ArqonBus, kernel hash (spread, before)",
            Self::Nats8 => "nats-server, 8 accounts",
            Self::Nats1 => "nats-server, 1 account",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Hash => "hash",
            Self::Balance => "balance",
            Self::Placed => "placed",
            Self::KernelSpread => "kernel-spread",
            Self::Nats8 | Self::Nats1 => "nats",
        }
    }

    /// `[steering] mode`, whether the program must be attached, and whether
    /// the node starts without CAP_BPF.
    fn steering(self) -> (Option<&'static str>, bool, bool) {
        match self {
            Self::Kernel | Self::KernelSpread => (None, false, true),
            Self::Hash => (Some("hash"), true, false),
            Self::Balance | Self::Placed => (Some("balance"), true, false),
            Self::Nats8 | Self::Nats1 => (None, false, false),
        }
    }
}

/// A tenant's placement, as created with `arqonctl tenants create
/// --placement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Tenancy {
    /// Stays where steering put it.
    Spread,
    /// Moves to its tenant's home shard after authentication.
    Home,
}

impl Tenancy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Spread => "spread",
            Self::Home => "home",
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Measured {
    /// Connections per shard.
    Spread(SpreadResult),
    /// A connect storm.
    Storm(StormResult),
    /// A connect storm with a drain and a resume.
    Drain(DrainStormResult),
    /// N→N throughput.
    Throughput(ThroughputResult),
    /// Request/reply latency.
    ReqReply(ReqReplyResult),
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Run {
    /// The part.
    pub(crate) part: Part,
    /// Round (0-based).
    pub(crate) round: usize,
    /// Position of the side in the round's order.
    pub(crate) order: usize,
    /// Who served it.
    pub(crate) side: Side,
    /// The ArqonBus tenant's placement, where it applies.
    pub(crate) tenancy: Option<Tenancy>,
    /// Payload bytes, where it applies.
    pub(crate) size: Option<usize>,
    /// What it measured; `None` if it failed.
    pub(crate) outcome: Option<Measured>,
    /// Connections moved to their home shard during the run
    /// (`arqonbus_moved_out_total`), where read.
    pub(crate) moved: Option<u64>,
    /// Why it failed.
    pub(crate) error: Option<String>,
    /// CPU over the run.
    pub(crate) cpu: CpuUsage,
    /// Why the client looks like the bottleneck, if it does.
    pub(crate) client_bound: Option<String>,
    /// Seconds the run waited for the host to be quiet before it started.
    pub(crate) waited_secs: f64,
    /// Other processes took more than [`DISTURBED`] cores during this run,
    /// so it was run again; tables use the repeat.
    pub(crate) superseded: bool,
}

/// The settings after `--smoke`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub(crate) parts: Vec<Part>,
    pub(crate) smoke: bool,
    pub(crate) rounds: usize,
    pub(crate) connections: usize,
    pub(crate) storm_connections: usize,
    pub(crate) storm_threads: usize,
    pub(crate) rate_repeats: usize,
    pub(crate) drain_threads: usize,
    pub(crate) drain_secs: f64,
    pub(crate) drained_shard: u32,
    pub(crate) sizes: Vec<usize>,
    pub(crate) duration_secs: f64,
    pub(crate) pairs: usize,
    pub(crate) rr_rate: f64,
    pub(crate) rr_duration_secs: f64,
    pub(crate) rr_size: usize,
    pub(crate) server_cpus: Vec<usize>,
    pub(crate) shards: usize,
    pub(crate) budget_secs: f64,
}

impl PlacementArgs {
    fn settings(&self) -> Result<Settings, String> {
        if self.shards < 2 {
            return Err("placement needs at least 2 shards (--shards)".into());
        }
        if self.only.is_empty() || self.sizes.is_empty() || self.cpus.is_empty() {
            return Err("--only, --sizes and --cpus need at least one value".into());
        }
        let mut parts = self.only.clone();
        parts.sort_unstable();
        parts.dedup();
        let mut s = Settings {
            parts,
            smoke: self.smoke,
            rounds: self.rounds.max(1),
            connections: self.connections,
            storm_connections: self.storm_connections,
            storm_threads: self.storm_threads.max(1),
            rate_repeats: self.rate_repeats.max(1),
            drain_threads: self.drain_threads.max(1),
            drain_secs: self.drain_secs.max(0.3),
            drained_shard: DRAINED_SHARD,
            sizes: self.sizes.clone(),
            duration_secs: self.duration,
            pairs: TENANTS,
            rr_rate: self.rr_rate,
            rr_duration_secs: self.rr_duration,
            rr_size: self.rr_size.max(8),
            server_cpus: self.cpus.clone(),
            shards: self.shards,
            budget_secs: self.budget_mins * 60.0,
        };
        if self.smoke {
            s.rounds = 1;
            s.connections = 100;
            s.storm_connections = 200;
            s.rate_repeats = 1;
            s.drain_secs = 1.0;
            s.duration_secs = 0.2;
            s.rr_rate = 1000.0;
            s.rr_duration_secs = 0.2;
            s.budget_secs = s.budget_secs.min(240.0);
        }
        Ok(s)
    }
}

fn rotated<T: Copy>(items: &[T], round: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = round % v.len();
        v.rotate_left(k);
    }
    v
}

/// Everything a run of the placement measurements keeps.
struct Runner<'a> {
    s: &'a Settings,
    started: Instant,
    runs: Vec<Run>,
    notes: Vec<String>,
    truncated: bool,
    progress: Progress,
    machine: usize,
}

/// A run about to happen.
#[derive(Debug, Clone, Copy)]
struct Slot {
    part: Part,
    round: usize,
    order: usize,
    side: Side,
    tenancy: Option<Tenancy>,
    size: Option<usize>,
}

impl Runner<'_> {
    /// False once the budget is spent or the run was interrupted.
    fn may_start(&mut self) -> bool {
        if fleet::interrupted() {
            // The signal handler stops the servers and ends the process.
            std::thread::sleep(Duration::from_secs(10));
            return false;
        }
        if self.started.elapsed().as_secs_f64() > self.s.budget_secs {
            if !self.truncated {
                self.notes.push(format!(
                    "budget of {:.0} s spent: the remaining runs were not started",
                    self.s.budget_secs
                ));
            }
            self.truncated = true;
            return false;
        }
        true
    }

    /// Runs `f` as the run `slot` against the server `pid`, and records it.
    fn record(
        &mut self,
        slot: Slot,
        pid: u32,
        moved: impl Fn() -> Option<u64>,
        f: impl Fn(&Progress) -> Result<Measured, ScenarioError>,
    ) {
        if !self.may_start() {
            return;
        }
        let label = format!(
            "round {}/{} {:?} {}{}{}",
            slot.round + 1,
            self.s.rounds,
            slot.part,
            slot.side.label(),
            slot.tenancy
                .map(|t| format!(", {} tenant", t.as_str()))
                .unwrap_or_default(),
            slot.size.map(|b| format!(", {b} B")).unwrap_or_default()
        );
        let run_progress = self.progress.run(&label);
        for attempt in 0..=REPEATS {
            let waited = Instant::now();
            // A smoke run's numbers mean nothing: it does not wait.
            while !self.s.smoke
                && waited.elapsed() < QUIET_WAIT
                && busy_cores_now(Duration::from_millis(100)).is_some_and(|b| b > QUIET_CORES)
            {
                run_progress.update(0.0, "waiting for the host to be quiet");
            }
            let waited_secs = waited.elapsed().as_secs_f64();
            let moved_before = moved();
            let probe = CpuProbe::start(Some(pid));
            let result = f(&run_progress);
            let max_thread = match &result {
                Ok(Measured::Throughput(t)) => t.client_max_thread,
                Ok(Measured::ReqReply(r)) => r.client_max_thread,
                _ => 0.0,
            };
            let cpu = probe.finish(max_thread);
            let moved = moved_before.zip(moved()).map(|(a, b)| b.saturating_sub(a));
            let bound = match &result {
                Ok(Measured::Throughput(_) | Measured::ReqReply(_)) => {
                    client_bound(&cpu, self.machine)
                }
                _ => None,
            };
            if let Err(e) = &result {
                self.progress.println(&format!("{label}: FAILED: {e}"));
            }
            // Another process took CPU the run needed: run it again (the
            // table uses the last attempt; the JSON keeps every one).
            let superseded = !self.s.smoke
                && attempt < REPEATS
                && result.is_ok()
                && cpu.other_cores() > DISTURBED
                && self.may_start();
            self.runs.push(Run {
                part: slot.part,
                round: slot.round,
                order: slot.order,
                side: slot.side,
                tenancy: slot.tenancy,
                size: slot.size,
                error: result.as_ref().err().map(ToString::to_string),
                outcome: result.ok(),
                moved,
                cpu,
                client_bound: bound,
                waited_secs,
                superseded,
            });
            if !superseded {
                break;
            }
        }
        self.progress.run_done();
    }
}

/// Runs the placement measurements.
pub(crate) fn run(args: &PlacementArgs) -> Result<(), String> {
    let s = args.settings()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let arqonbus = args
        .arqonbus
        .clone()
        .unwrap_or_else(|| exe.with_file_name("arqonbus"));
    let arqonctl = args
        .arqonctl
        .clone()
        .unwrap_or_else(|| exe.with_file_name("arqonctl"));
    for (bin, pkg) in [(&arqonbus, "arqonbus"), (&arqonctl, "arqonbus-cli")] {
        if !bin.exists() {
            return Err(format!(
                "{} not found: cargo build --release --locked -p {pkg}",
                bin.display()
            ));
        }
    }
    let steering_parts = s.parts.iter().filter(|p| **p != Part::Tenants).count();
    let has = |p| u64::from(s.parts.contains(&p));
    let per_round = has(Part::Spread) * 6
        + has(Part::Rate) * 6 * s.rate_repeats as u64
        + has(Part::Drain) * 3
        + has(Part::Tenants) * (4 * s.sizes.len() as u64 + 2);
    let total = s.rounds as u64 * per_round;
    let progress = Progress::suite(total);
    let nats = if s.parts.contains(&Part::Tenants) {
        ensure_nats(&args.nats_server, args.no_install, &progress).map_err(|e| e.to_string())?
    } else {
        args.nats_server.clone()
    };
    fleet::install_signal_handler()?;
    let nats_version = if s.parts.contains(&Part::Tenants) {
        command_output(&nats.display().to_string(), &["--version"])
            .unwrap_or_else(|| "unknown".into())
    } else {
        "not run".into()
    };
    let cfg = FleetConfig {
        arqonbus: arqonbus.clone(),
        nats_latest: nats.clone(),
        nats,
        relay: exe,
        cpus: s.server_cpus.clone(),
        shards: s.shards,
        systems: Vec::new(),
        tls: false,
        default_placement: None,
    };
    let work = WorkDir::create(args.keep_logs).map_err(|e| e.to_string())?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut r = Runner {
        s: &s,
        started: Instant::now(),
        runs: Vec::new(),
        notes: Vec::new(),
        truncated: false,
        progress,
        machine: cores(),
    };
    if steering_parts > 0 {
        steering_rounds(&mut r, &cfg, &arqonctl, work.path())?;
    }
    if s.parts.contains(&Part::Tenants) && r.may_start() {
        tenants(&mut r, &cfg, &arqonctl, work.path())?;
    }
    r.progress.finish();

    let (date, time) = utc_now();
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if s.smoke {
            "target/perf-smoke"
        } else {
            "perf/results"
        })
    });
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let stem = if out.join(format!("{date}-placement.json")).exists() {
        format!("{date}-{time}-placement")
    } else {
        format!("{date}-placement")
    };
    let meta = report::Meta {
        date: format!("{date}T{time}Z"),
        commit: commit(),
        command: command_line(),
        host_cores: r.machine,
        load_average_before: load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        tcp_migrate_req: std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
            .map_or_else(|_| "unknown".into(), |v| v.trim().to_owned()),
        nats_server_version: nats_version,
        arqonbus_binary: arqonbus.display().to_string(),
        settings: s.clone(),
        elapsed_secs: r.started.elapsed().as_secs_f64(),
        truncated: r.truncated,
        notes: r.notes.clone(),
    };
    let json = serde_json::to_string_pretty(&report::Results {
        meta: &meta,
        runs: &r.runs,
    })
    .map_err(|e| e.to_string())?;
    let write = |name: String, body: &str| {
        std::fs::write(out.join(&name), body).map_err(|e| format!("{name}: {e}"))
    };
    write(format!("{stem}.json"), &json)?;
    let md = report::markdown(&meta, &r.runs);
    write(format!("{stem}.md"), &md)?;
    eprintln!(
        "{} runs in {:.0} s; results in {}/{stem}.{{json,md}}",
        r.runs.len(),
        r.started.elapsed().as_secs_f64(),
        out.display()
    );
    eprint!("{md}");
    let failed: Vec<String> = r
        .runs
        .iter()
        .filter_map(|run| {
            run.error.as_ref().map(|e| {
                format!(
                    "{:?} {} {}: {e}",
                    run.part,
                    run.side.label(),
                    run.size.map(|b| format!("{b} B")).unwrap_or_default()
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "{} run(s) failed: {}",
            failed.len(),
            failed.join("; ")
        ));
    }
    if r.truncated && s.smoke {
        return Err("smoke run ran out of time".into());
    }
    Ok(())
}

/// This process's command line, quoted for a shell where needed.
fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 {
                // The binary as the README names it.
                Path::new(&a).file_name().map_or(a.clone(), |n| {
                    format!("target/release/{}", n.to_string_lossy())
                })
            } else {
                a
            };
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./,:=".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parts 1–3: the three steering sides, fresh every round.
fn steering_rounds(
    r: &mut Runner<'_>,
    cfg: &FleetConfig,
    ctl: &Path,
    work: &Path,
) -> Result<(), String> {
    let s = r.s;
    let sides = [Side::Kernel, Side::Hash, Side::Balance];
    let tenants = [
        ("spread".to_owned(), Tenancy::Spread),
        ("homed".to_owned(), Tenancy::Home),
    ];
    for round in 0..s.rounds {
        if !r.may_start() {
            break;
        }
        let mut fleet = Fleet::empty(work, &format!("round-{round}")).map_err(|e| e.to_string())?;
        let nodes = sides
            .iter()
            .map(|&side| Node::start(&mut fleet, cfg, ctl, side, &tenants))
            .collect::<Result<Vec<_>, _>>()?;
        let order = rotated(&[0usize, 1, 2], round);
        if s.parts.contains(&Part::Spread) {
            for (pos, &i) in order.iter().enumerate() {
                for tenancy in [Tenancy::Spread, Tenancy::Home] {
                    let node = &nodes[i];
                    node.wait_idle()?;
                    let t = node.target(node.credential(tenancy)?)?;
                    let spec = SpreadSpec {
                        connections: s.connections,
                        threads: 4,
                        shards: s.shards,
                    };
                    r.record(
                        Slot {
                            part: Part::Spread,
                            round,
                            order: pos,
                            side: node.side,
                            tenancy: Some(tenancy),
                            size: None,
                        },
                        node.endpoint.pid,
                        || node.moved(),
                        |p| scenario::placement::spread(&t, &spec, p).map(Measured::Spread),
                    );
                }
            }
        }
        if s.parts.contains(&Part::Rate) {
            let alternated = (0..s.rate_repeats).flat_map(|_| order.iter().enumerate());
            for (pos, &i) in alternated {
                for tenancy in [Tenancy::Spread, Tenancy::Home] {
                    // No wait for the last run's connections to close: a
                    // storm's connections live for microseconds.
                    let node = &nodes[i];
                    let t = node.target(node.credential(tenancy)?)?;
                    let spec = StormSpec {
                        connections: s.storm_connections,
                        threads: s.storm_threads,
                    };
                    r.record(
                        Slot {
                            part: Part::Rate,
                            round,
                            order: pos,
                            side: node.side,
                            tenancy: Some(tenancy),
                            size: None,
                        },
                        node.endpoint.pid,
                        || node.moved(),
                        |p| scenario::conns::storm(&t, &spec, p).map(Measured::Storm),
                    );
                }
            }
        }
        if s.parts.contains(&Part::Drain) {
            for (pos, &i) in order.iter().enumerate() {
                let node = &nodes[i];
                node.wait_idle()?;
                let mut t = node.target(node.credential(Tenancy::Spread)?)?;
                t.handshake_timeout = Some(Duration::from_secs(5));
                let secs = s.drain_secs;
                let spec = DrainStormSpec {
                    threads: s.drain_threads,
                    duration: Duration::from_secs_f64(secs),
                    drain_at: Duration::from_secs_f64(secs / 3.0),
                    resume_at: Duration::from_secs_f64(secs * 2.0 / 3.0),
                    shard: s.drained_shard,
                    shards: s.shards,
                };
                let control = Ctl {
                    bin: ctl,
                    admin: &node.admin,
                };
                let shard = s.drained_shard.to_string();
                r.record(
                    Slot {
                        part: Part::Drain,
                        round,
                        order: pos,
                        side: node.side,
                        tenancy: Some(Tenancy::Spread),
                        size: None,
                    },
                    node.endpoint.pid,
                    || node.moved(),
                    |p| {
                        scenario::placement::drain_storm(
                            &t,
                            &spec,
                            |action| {
                                let verb = match action {
                                    Action::Drain => "drain",
                                    Action::Resume => "resume",
                                };
                                control.run(&["node", verb, &shard]).map(|_| ())
                            },
                            p,
                        )
                        .map(Measured::Drain)
                    },
                );
            }
        }
        fleet.stop();
    }
    Ok(())
}

/// The nats-server configuration of the `tenants` part: one account per
/// tenant, each with one user `uI` (password `pI`).
fn nats_accounts(n: usize) -> String {
    let mut c = String::from("accounts: {\n");
    for i in 1..=n {
        let _ = writeln!(
            c,
            "  A{i}: {{ users: [ {{ user: \"u{i}\", password: \"p{i}\" }} ] }}"
        );
    }
    c.push_str("}\n");
    c
}

/// Part 4: 8 tenants × 1→1 placed by the server, and request/reply.
fn tenants(r: &mut Runner<'_>, cfg: &FleetConfig, ctl: &Path, work: &Path) -> Result<(), String> {
    let s = r.s;
    let mut fleet = Fleet::empty(work, "tenants").map_err(|e| e.to_string())?;
    let names = |tenancy: Tenancy| {
        (1..=s.pairs)
            .map(|i| (format!("t{i}"), tenancy))
            .collect::<Vec<_>>()
    };
    let placed = Node::start(&mut fleet, cfg, ctl, Side::Placed, &names(Tenancy::Home))?;
    let kernel = Node::start(
        &mut fleet,
        cfg,
        ctl,
        Side::KernelSpread,
        &names(Tenancy::Spread),
    )?;
    let nats = fleet
        .nats_with_config(cfg, "nats", &nats_accounts(s.pairs))
        .map_err(|e| e.to_string())?;
    let nats_target =
        Target::new(Proto::Nats, &nats.url, None, String::new()).map_err(|e| e.to_string())?;
    let nats8: Vec<String> = (1..=s.pairs).map(|i| format!("u{i}:p{i}")).collect();
    let nats1 = vec!["u1:p1".to_owned()];
    let duration = Duration::from_secs_f64(s.duration_secs);
    let sides = [Side::Placed, Side::KernelSpread, Side::Nats8, Side::Nats1];
    for round in 0..s.rounds {
        let order = rotated(&sides, round);
        for &size in &s.sizes {
            for (pos, &side) in order.iter().enumerate() {
                let (target, creds, pid, node) = match side {
                    Side::Placed => (
                        placed.target("")?,
                        placed.home.clone(),
                        placed.endpoint.pid,
                        Some(&placed),
                    ),
                    Side::KernelSpread => (
                        kernel.target("")?,
                        kernel.spread.clone(),
                        kernel.endpoint.pid,
                        Some(&kernel),
                    ),
                    Side::Nats8 => (nats_target.clone(), nats8.clone(), nats.pid, None),
                    _ => (nats_target.clone(), nats1.clone(), nats.pid, None),
                };
                let mut spec = ThroughputSpec::of(crate::scenario::Shape::NToN, size, duration);
                spec.publishers = s.pairs;
                spec.credentials = creds;
                if s.smoke {
                    spec.drain = Duration::from_secs(5);
                }
                r.record(
                    Slot {
                        part: Part::Tenants,
                        round,
                        order: pos,
                        side,
                        tenancy: node.map(|n| {
                            if n.side == Side::Placed {
                                Tenancy::Home
                            } else {
                                Tenancy::Spread
                            }
                        }),
                        size: Some(size),
                    },
                    pid,
                    || node.and_then(Node::moved),
                    |p| scenario::throughput::run(&target, &spec, p).map(Measured::Throughput),
                );
            }
        }
        for (pos, side) in rotated(&[Side::Placed, Side::Nats1], round)
            .into_iter()
            .enumerate()
        {
            let (target, pid, node) = if side == Side::Placed {
                (
                    placed.target(placed.credential(Tenancy::Home)?)?,
                    placed.endpoint.pid,
                    Some(&placed),
                )
            } else {
                (nats_target.with_credential("u1:p1"), nats.pid, None)
            };
            let spec = ReqReplySpec {
                size: s.rr_size,
                rate: s.rr_rate,
                duration: Duration::from_secs_f64(s.rr_duration_secs),
                drain: Duration::from_secs(3),
            };
            r.record(
                Slot {
                    part: Part::Tenants,
                    round,
                    order: pos,
                    side,
                    tenancy: node.map(|_| Tenancy::Home),
                    size: None,
                },
                pid,
                || node.and_then(Node::moved),
                |p| scenario::reqreply::run(&target, &spec, p).map(Measured::ReqReply),
            );
        }
    }
    fleet.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_accounts_have_one_user_each() {
        let c = nats_accounts(2);
        assert!(c.contains("A1: { users: [ { user: \"u1\", password: \"p1\" } ] }"));
        assert!(c.contains("A2:"));
        assert!(!c.contains("A3:"));
    }

    #[test]
    fn smoke_settings_are_small() {
        let args = PlacementArgs {
            only: vec![Part::Tenants, Part::Spread, Part::Spread],
            rounds: 5,
            smoke: true,
            connections: 1000,
            storm_connections: 3000,
            storm_threads: 4,
            rate_repeats: 3,
            drain_threads: 16,
            drain_secs: 3.0,
            sizes: vec![16, 128],
            duration: 2.0,
            rr_rate: 5000.0,
            rr_duration: 2.0,
            rr_size: 128,
            cpus: vec![0, 1],
            shards: 2,
            arqonbus: None,
            arqonctl: None,
            nats_server: PathBuf::from("nats-server"),
            no_install: true,
            out: None,
            budget_mins: 10.0,
            keep_logs: false,
        };
        let s = args.settings().unwrap();
        assert_eq!(s.rounds, 1);
        assert_eq!(s.parts, [Part::Spread, Part::Tenants]);
        assert!(s.connections <= 100);
        let one = PlacementArgs { shards: 1, ..args };
        assert!(one.settings().is_err());
    }
}
