//! `arqonbus-perf`: load scenarios against a running server.
//!
//! Every scenario prints one JSON object on stdout (machine-readable, one
//! line) and a human summary on stderr. Scenarios are bounded by message or
//! connection counts and stop by themselves; they only talk to the address
//! given, which is loopback in every documented command.
#![allow(clippy::print_stdout, reason = "printing results is the point")]
#![allow(
    clippy::cast_precision_loss,
    reason = "rates and averages over counts far below 2^52"
)]

mod native;

use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use arqonbus_proto::v1::{self, frame::Kind};
use bytes::Bytes;
use clap::{Parser, Subcommand};

use crate::native::{Conn, DriverError, TAG_MESSAGE, TAG_PONG, Target};

#[derive(Debug, Parser)]
#[command(name = "arqonbus-perf", about = "ArqonBus load generator")]
struct Cli {
    /// Server URL (tcp:// or tls://).
    #[arg(long, global = true, default_value = "tcp://127.0.0.1:7420")]
    server: String,
    /// CA certificate for tls:// URLs.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// File holding the credential.
    #[arg(long, global = true)]
    credential_file: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// One publisher, one subscriber: messages per second.
    Pubsub {
        /// Payload size, bytes.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Messages to send.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
    },
    /// Open idle connections and report the server's RSS growth.
    Idle {
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// The server's process id (its /proc/PID/status is read).
        #[arg(long)]
        server_pid: u32,
    },
}

fn credential(path: Option<&PathBuf>) -> Result<String, String> {
    let path = path.ok_or("--credential-file is required")?;
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn wait_pong(c: &mut Conn) -> Result<(), DriverError> {
    c.send(&Kind::Ping(v1::Ping {}))?;
    c.scan(|tag, _| tag != TAG_PONG)
}

fn pubsub(target: &Target, size: usize, count: u64) -> Result<String, DriverError> {
    let mut sub = Conn::open(target)?;
    sub.send(&Kind::Subscribe(v1::Subscribe {
        sid: 1,
        pattern: Bytes::from_static(b"perf.pubsub"),
        queue_group: Bytes::new(),
    }))?;
    wait_pong(&mut sub)?;
    let mut publ = Conn::open(target)?;
    let shards = (publ.welcome.shard, sub.welcome.shard);

    let receiver = thread::spawn(move || -> Result<Instant, DriverError> {
        let mut got = 0u64;
        sub.scan(|tag, _| {
            if tag == TAG_MESSAGE {
                got += 1;
            }
            got < count
        })
        .map_err(|e| DriverError::Protocol(format!("subscriber after {got} messages: {e}")))?;
        Ok(Instant::now())
    });

    let payload = vec![0x5a_u8; size];
    let (batch, per) = native::publish_batch(b"perf.pubsub", &payload)?;
    let frame_len = batch.len() / per;
    let start = Instant::now();
    let mut left = count;
    while left > 0 {
        let n = left.min(per as u64) as usize;
        publ.write_all(&batch[..n * frame_len])?;
        left -= n as u64;
    }
    wait_pong(&mut publ)?;
    let done = receiver
        .join()
        .map_err(|_| DriverError::Protocol("receiver panicked".into()))??;
    let secs = done.duration_since(start).as_secs_f64();
    let rate = count as f64 / secs;
    eprintln!(
        "pubsub: {count} x {size} B in {secs:.3} s = {rate:.0} msgs/s ({:.1} MB/s); publisher on shard {}, subscriber on shard {}",
        rate * size as f64 / 1e6,
        shards.0,
        shards.1
    );
    Ok(format!(
        "{{\"scenario\":\"pubsub\",\"size\":{size},\"count\":{count},\"secs\":{secs:.6},\"msgs_per_sec\":{rate:.1},\"pub_shard\":{},\"sub_shard\":{}}}",
        shards.0, shards.1
    ))
}

fn rss_kib(pid: u32) -> Result<u64, DriverError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| DriverError::Protocol("no VmRSS".into()))
}

fn idle(target: &Target, connections: usize, pid: u32) -> Result<String, DriverError> {
    // One connection first, so one-off allocations are not counted.
    let warm = Conn::open(target)?;
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(target)?);
    }
    let open_secs = started.elapsed().as_secs_f64();
    // Let the server settle: every connection has been welcomed already, so
    // this only lets freed handshake buffers be returned.
    thread::sleep(Duration::from_millis(200));
    let after = rss_kib(pid)?;
    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / connections as f64;
    eprintln!(
        "idle: {connections} connections opened in {open_secs:.2} s; server RSS {before} KiB -> {after} KiB = {per_conn:.0} bytes per connection"
    );
    drop(conns);
    drop(warm);
    Ok(format!(
        "{{\"scenario\":\"idle\",\"connections\":{connections},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"bytes_per_connection\":{per_conn:.0},\"connect_secs\":{open_secs:.3}}}"
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = || -> Result<String, String> {
        let cred = credential(cli.credential_file.as_ref())?;
        let target =
            Target::parse(&cli.server, cli.ca.as_deref(), cred).map_err(|e| e.to_string())?;
        match cli.scenario {
            Scenario::Pubsub { size, count } => pubsub(&target, size, count),
            Scenario::Idle {
                connections,
                server_pid,
            } => idle(&target, connections, server_pid),
        }
        .map_err(|e| e.to_string())
    };
    match run() {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("arqonbus-perf: {e}");
            ExitCode::FAILURE
        }
    }
}
