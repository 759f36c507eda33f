//! `arqonbus-perf`: load scenarios against ArqonBus, nats-server and the raw
//! relay, and the side-by-side comparison runner.
//!
//! One scenario run prints one JSON object on stdout (machine-readable, one
//! line) and a human summary on stderr, with a progress bar while it runs.
//! `compare` starts the servers itself, runs the whole suite and writes
//! `perf/results/<date>.{json,md}` and SVG charts. `placement` runs the
//! steering and tenant-placement measurements and writes
//! `perf/results/<date>-placement.{json,md}`. `control-writes` measures
//! admin writes on a node with many tenants and the data plane's latency
//! while they stream (`perf/results/<date>-control-writes/`). `chaos` runs the
//! chaos and flood suite (`perf/results/<date>-chaos/`). `relay` runs the raw relay
//! server. Everything is bounded by time and count, and only talks to
//! the addresses given (loopback in every documented command).
//!
//! # Layout
//! - [`driver`]: lean blocking clients for the three protocols;
//! - [`scenario`]: throughput, request/reply, idle and connect-storm runs;
//! - [`relay`]: the raw relay server (the host's ceiling);
//! - [`compare`]: the runner (processes, rounds, report, charts);
//! - [`placement`]: the placement measurements (steering sides, drain,
//!   tenants placed by the server);
//! - [`control_writes`]: control writes at scale, beside request/reply;
//! - [`chaos`]: the chaos and flood suite (kill -9, floods, quotas);
//! - [`stats`], [`progress`]: histograms, CPU accounting, the progress bar.
#![allow(clippy::print_stdout, reason = "printing results is the point")]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "rates, averages and fractions over counts far below 2^52"
)]

mod chaos;
mod compare;
mod control_writes;
mod driver;
mod placement;
mod progress;
mod relay;
mod scenario;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::driver::{Placement, Proto, Target};
use crate::progress::Progress;
use crate::scenario::{IdleSpec, Outcome, ReqReplySpec, ScenarioError, StormSpec, ThroughputSpec};
use crate::stats::{CpuProbe, CpuUsage};

#[derive(Debug, Parser)]
#[command(
    name = "arqonbus-perf",
    about = "ArqonBus load generator and comparison runner"
)]
struct Cli {
    /// Protocol of the server under test.
    #[arg(long, global = true, value_enum, default_value_t = Proto::Native)]
    driver: Proto,
    /// Server URL: tcp://HOST:PORT or tls://HOST:PORT.
    #[arg(long, global = true, default_value = "tcp://127.0.0.1:7420")]
    server: String,
    /// CA certificate for tls:// URLs.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// File holding the credential (ArqonBus).
    #[arg(long, global = true)]
    credential_file: Option<PathBuf>,
    /// The server's process id: its CPU is reported (and `idle` reads its RSS).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// ArqonBus with several shards: put each publisher (requester) on the
    /// same shard as its first subscriber (responder), on another, or
    /// wherever the kernel hashes it.
    #[arg(long, global = true, value_enum, default_value_t = Placement::Any)]
    placement: Placement,
    #[command(subcommand)]
    command: Command,
}

/// Options shared by throughput scenarios.
#[derive(Debug, Clone, Args)]
struct Load {
    /// Payload size, bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// How long publishers write, seconds.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Stop earlier after this many messages per publisher.
    #[arg(long)]
    count: Option<u64>,
    /// Publish with one header (HPUB for NATS).
    #[arg(long)]
    headers: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One publisher, one subscriber.
    #[command(alias = "one-to-one")]
    Pubsub(Load),
    /// One publisher, no subscriber: how fast the server takes messages.
    PubOnly(Load),
    /// One publisher, N subscribers of the same subject.
    Fanout {
        /// Subscribers.
        #[arg(long, default_value_t = 8)]
        subs: usize,
        #[command(flatten)]
        load: Load,
    },
    /// N publishers, each with its own subject and subscriber.
    NToN {
        /// Publisher/subscriber pairs.
        #[arg(long, default_value_t = 8)]
        pairs: usize,
        /// A file with one credential per line: pair i connects with line
        /// i (modulo the lines), e.g. one tenant per pair. ArqonBus: bearer
        /// tokens; NATS: `user:password`.
        #[arg(long, value_name = "FILE")]
        pair_credentials: Option<PathBuf>,
        #[command(flatten)]
        load: Load,
    },
    /// One publisher, a queue group of N members.
    Queue {
        /// Members.
        #[arg(long, default_value_t = 8)]
        members: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Request/reply latency at a fixed offered rate (open loop).
    ReqReply {
        /// Payload size, bytes (at least 8).
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Requests per second.
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        /// Seconds of requests.
        #[arg(long, default_value_t = 2.0)]
        duration: f64,
    },
    /// Open idle connections and report the server's RSS growth per
    /// connection over the second half of them (run it on a freshly started
    /// server; needs --server-pid).
    Idle {
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
    },
    /// Open and close connections as fast as possible (handshake included).
    ConnectStorm {
        /// Connections in total.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Client threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Run the raw relay server (the host's ceiling) until stopped.
    Relay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7430")]
        listen: SocketAddr,
        /// Pin the relay's thread to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Start nats-server, ArqonBus and the raw relay, run the suite side by
    /// side, and write the results, table and charts.
    Compare(compare::CompareArgs),
    /// Placement: connections per shard, connect rate and a drain during a
    /// connect storm with the steering program and without, and 8 tenants
    /// placed by the server against nats-server (starts its own servers).
    Placement(placement::PlacementArgs),
    /// Control writes with 10,000 tenants and 100,000 principals: writes/s
    /// and latency, and request/reply latency with writes streaming and
    /// without (starts its own server).
    ControlWrites(control_writes::ControlWritesArgs),
    /// The chaos and flood suite: storms, floods, slow consumers, a 10x
    /// quota flood beside a healthy tenant, kill -9 cycles during control
    /// writes; fails on a lost acknowledged write, a panic or unbounded
    /// memory (starts its own server; --smoke for CI).
    Chaos(chaos::ChaosArgs),
}

fn credential(path: Option<&PathBuf>, proto: Proto) -> Result<String, String> {
    match (path, proto) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("{}: {e}", path.display())),
        (None, Proto::Native | Proto::Ws) => {
            Err("--credential-file is required for ArqonBus".into())
        }
        (None, _) => Ok(String::new()),
    }
}

fn throughput_spec(load: &Load, publishers: usize, fanout: usize, queue: usize) -> ThroughputSpec {
    let duration = Duration::from_secs_f64(load.duration.max(0.0));
    ThroughputSpec {
        publishers,
        fanout,
        queue,
        size: load.size,
        duration,
        max_messages: load.count,
        headers: load.headers,
        drain: Duration::from_secs(5).max(duration * 2),
        credentials: Vec::new(),
    }
}

#[derive(Serialize)]
struct Report<'a> {
    scenario: &'a str,
    driver: Proto,
    server: &'a str,
    result: &'a Outcome,
    cpu: &'a CpuUsage,
}

fn scenario(cli: &Cli) -> Result<String, String> {
    let cred = credential(cli.credential_file.as_ref(), cli.driver)?;
    let mut target =
        Target::new(cli.driver, &cli.server, cli.ca.as_deref(), cred).map_err(|e| e.to_string())?;
    target.placement = cli.placement;
    let name = match &cli.command {
        Command::Pubsub(_) => "pubsub",
        Command::PubOnly(_) => "pub-only",
        Command::Fanout { .. } => "fanout",
        Command::NToN { .. } => "n-to-n",
        Command::Queue { .. } => "queue",
        Command::ReqReply { .. } => "req-reply",
        Command::Idle { .. } => "idle",
        Command::ConnectStorm { .. } => "connect-storm",
        Command::Relay { .. }
        | Command::Compare(_)
        | Command::Placement(_)
        | Command::ControlWrites(_)
        | Command::Chaos(_) => {
            return Err("not a scenario".into());
        }
    };
    let progress = Progress::standalone(name);
    let probe = CpuProbe::start(cli.server_pid);
    let outcome: Result<Outcome, ScenarioError> = match &cli.command {
        Command::Pubsub(l) => {
            scenario::throughput::run(&target, &throughput_spec(l, 1, 1, 0), &progress)
                .map(Outcome::Throughput)
        }
        Command::PubOnly(l) => {
            scenario::throughput::run(&target, &throughput_spec(l, 1, 0, 0), &progress)
                .map(Outcome::Throughput)
        }
        Command::Fanout { subs, load } => {
            scenario::throughput::run(&target, &throughput_spec(load, 1, *subs, 0), &progress)
                .map(Outcome::Throughput)
        }
        Command::NToN {
            pairs,
            pair_credentials,
            load,
        } => {
            let mut spec = throughput_spec(load, *pairs, 1, 0);
            if let Some(file) = pair_credentials {
                spec.credentials = std::fs::read_to_string(file)
                    .map_err(|e| format!("{}: {e}", file.display()))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                if spec.credentials.is_empty() {
                    return Err(format!("{}: no credential in it", file.display()));
                }
            }
            scenario::throughput::run(&target, &spec, &progress).map(Outcome::Throughput)
        }
        Command::Queue { members, load } => {
            scenario::throughput::run(&target, &throughput_spec(load, 1, 0, *members), &progress)
                .map(Outcome::Throughput)
        }
        Command::ReqReply {
            size,
            rate,
            duration,
        } => {
            let spec = ReqReplySpec {
                size: *size,
                rate: *rate,
                duration: Duration::from_secs_f64(duration.max(0.0)),
                drain: Duration::from_secs(5),
            };
            scenario::reqreply::run(&target, &spec, &progress).map(Outcome::ReqReply)
        }
        Command::Idle { connections } => {
            let pid = cli
                .server_pid
                .ok_or("idle needs --server-pid (the server's process id)")?;
            let spec = IdleSpec {
                connections: *connections,
                server_pid: pid,
                settle: Duration::from_millis(200),
            };
            scenario::conns::idle(&target, &spec, &progress).map(Outcome::Idle)
        }
        Command::ConnectStorm {
            connections,
            threads,
        } => {
            let spec = StormSpec {
                connections: *connections,
                threads: *threads,
            };
            scenario::conns::storm(&target, &spec, &progress).map(Outcome::Storm)
        }
        Command::Relay { .. }
        | Command::Compare(_)
        | Command::Placement(_)
        | Command::ControlWrites(_)
        | Command::Chaos(_) => {
            return Err("not a scenario".into());
        }
    };
    progress.finish();
    let outcome = outcome.map_err(|e| e.to_string())?;
    let cpu = probe.finish(outcome.client_max_thread());
    let (value, unit) = outcome.headline();
    eprintln!(
        "{name} ({:?}, {}): {value:.1} {unit}; client {:.2} cores, server {:.2} cores, steal {:.1} %{}",
        cli.driver,
        cli.server,
        cpu.client_cores,
        cpu.server_cores,
        cpu.steal_pct,
        outcome
            .latency()
            .map(|p| format!(
                "; latency p50 {:.0} µs p99 {:.0} µs max {:.0} µs",
                p.p50_us, p.p99_us, p.max_us
            ))
            .unwrap_or_default()
    );
    for e in outcome.errors() {
        eprintln!("  error: {e}");
    }
    serde_json::to_string(&Report {
        scenario: name,
        driver: cli.driver,
        server: &cli.server,
        result: &outcome,
        cpu: &cpu,
    })
    .map_err(|e| e.to_string())
}

/// Raises this process's open-file limit to its hard limit (10,000 idle
/// connections need it; servers started by `compare` inherit it).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the `rlimit` we own; no
    // other memory is involved.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_fd_limit();
    let result = match &cli.command {
        Command::Relay { listen, cpu } => relay::serve(*listen, *cpu, |addr| {
            eprintln!("raw relay listening on {addr}");
        })
        .map(|()| None)
        .map_err(|e| e.to_string()),
        Command::Compare(args) => compare::run(args).map(|()| None),
        Command::Placement(args) => placement::run(args).map(|()| None),
        Command::ControlWrites(args) => control_writes::run(args).map(|()| None),
        Command::Chaos(args) => chaos::run(args).and_then(|passed| {
            if passed {
                Ok(None)
            } else {
                Err("chaos: FAIL (see the report above)".into())
            }
        }),
        _ => scenario(&cli).map(Some),
    };
    match result {
        Ok(Some(json)) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arqonbus-perf: {e}");
            ExitCode::FAILURE
        }
    }
}
