//! `icount`: deterministic instruction counts of the hot paths, under
//! callgrind, checked against committed thresholds.
//!
//! This host has no hardware performance counters and noisy wall time, so
//! CI compares instruction counts, which do not depend on the load on the
//! machine. For each workload this binary runs itself under
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect=*icount_measure*`: setup is not counted, only the
//! measured loop, and the count divided by the iterations is the cost of one
//! operation (see `arqonbus_benches` for what an operation is).
//!
//! - `icount run NAME ITERS`: runs one workload (what valgrind executes);
//! - `icount measure`: prints instructions per operation of every workload;
//! - `icount check`: fails if any count exceeds `thresholds.toml`;
//! - `icount update`: rewrites `thresholds.toml` with the counts + headroom.
//!
//! Counts depend on the compiler and the build profile: run it with
//! `--release` (as CI does) and refresh the thresholds on a toolchain bump.
#![allow(
    clippy::print_stdout,
    reason = "a command-line tool: its report is its output"
)]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "instruction counts far below 2^52"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use arqonbus_benches::{NAMES, icount_measure, ops_per_run, workload};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

/// Measured iterations per workload (after a warm-up of the same size).
const ITERS: u64 = 2_000;

#[derive(Debug, Parser)]
#[command(
    name = "icount",
    about = "Instruction counts of the hot paths (callgrind)"
)]
struct Cli {
    /// The thresholds file.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/thresholds.toml"))]
    thresholds: PathBuf,
    /// The valgrind binary.
    #[arg(long, default_value = "valgrind")]
    valgrind: PathBuf,
    /// Only these workloads (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one workload ITERS times (under callgrind).
    Run {
        /// Workload name.
        name: String,
        /// Measured iterations.
        iters: u64,
    },
    /// Print instructions per operation of every workload.
    Measure,
    /// Fail when a workload's count exceeds its threshold.
    Check,
    /// Rewrite the thresholds file: measured count plus `headroom`.
    Update {
        /// Headroom over the measured count (0.10 = 10 %).
        #[arg(long, default_value_t = 0.10)]
        headroom: f64,
    },
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
enum IcountError {
    /// Building or running a workload failed.
    #[error(transparent)]
    Workload(#[from] arqonbus_benches::WorkloadError),
    /// valgrind could not be run, or failed.
    #[error("valgrind: {0}")]
    Valgrind(String),
    /// The callgrind output had no total.
    #[error("no `totals:` or `summary:` line in {0}")]
    NoTotal(String),
    /// Reading or writing files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The thresholds file does not parse.
    #[error("{path}: {reason}")]
    Thresholds {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Counts over their thresholds, or workloads without one.
    #[error("{0}")]
    Failed(String),
}

/// `thresholds.toml`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Thresholds {
    /// Instructions per operation allowed, per workload.
    instructions: BTreeMap<String, u64>,
}

fn run_workload(name: &str, iters: u64) -> Result<(), IcountError> {
    let mut w = workload(name)?;
    // Warm-up outside the counted function: first-use allocations (plan
    // vectors, queue capacity) are not part of an operation's cost.
    for _ in 0..iters {
        std::hint::black_box(w.run());
    }
    std::hint::black_box(icount_measure(&mut w, iters));
    Ok(())
}

/// Parses the instruction total from a callgrind output file.
fn parse_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Instructions per operation of `name`, under callgrind.
fn measure_one(valgrind: &Path, name: &str) -> Result<f64, IcountError> {
    let exe = std::env::current_exe().map_err(|source| IcountError::Io {
        path: "current executable".into(),
        source,
    })?;
    let out = std::env::temp_dir().join(format!("icount-{}-{name}.out", std::process::id()));
    let status = Command::new(valgrind)
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no")
        .arg("--toggle-collect=*icount_measure*")
        .arg("--dump-line=no")
        .arg("--compress-strings=no")
        .arg(&exe)
        .args(["run", name, &ITERS.to_string()])
        .output()
        .map_err(|e| IcountError::Valgrind(format!("cannot run {}: {e}", valgrind.display())))?;
    if !status.status.success() {
        return Err(IcountError::Valgrind(format!(
            "{name} failed: {}",
            String::from_utf8_lossy(&status.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        )));
    }
    let text = std::fs::read_to_string(&out).map_err(|source| IcountError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let _ = std::fs::remove_file(&out);
    let total =
        parse_total(&text).ok_or_else(|| IcountError::NoTotal(out.display().to_string()))?;
    if total == 0 {
        return Err(IcountError::Valgrind(format!(
            "{name}: nothing counted (was icount_measure inlined or renamed?)"
        )));
    }
    Ok(total as f64 / (ITERS * ops_per_run(name)) as f64)
}

fn selected(only: &[String]) -> Vec<&'static str> {
    NAMES
        .iter()
        .copied()
        .filter(|n| only.is_empty() || only.iter().any(|o| o == n))
        .collect()
}

fn measure_all(cli: &Cli) -> Result<Vec<(&'static str, f64)>, IcountError> {
    selected(&cli.only)
        .into_iter()
        .map(|name| {
            let per_op = measure_one(&cli.valgrind, name)?;
            eprintln!("  {name:<24} {per_op:>12.1} instructions/op");
            Ok((name, per_op))
        })
        .collect()
}

fn load(path: &Path) -> Result<Thresholds, IcountError> {
    let text = std::fs::read_to_string(path).map_err(|source| IcountError::Io {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| IcountError::Thresholds {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn check(cli: &Cli) -> Result<(), IcountError> {
    let thresholds = load(&cli.thresholds)?;
    let counts = measure_all(cli)?;
    let mut failures = Vec::new();
    println!(
        "{:<24} {:>14} {:>14} {:>8}",
        "workload", "instr/op", "threshold", "used"
    );
    for (name, per_op) in &counts {
        match thresholds.instructions.get(*name) {
            Some(&max) => {
                let used = 100.0 * per_op / max as f64;
                let verdict = if *per_op > max as f64 { "  OVER" } else { "" };
                println!("{name:<24} {per_op:>14.1} {max:>14} {used:>7.1}%{verdict}");
                if *per_op > max as f64 {
                    failures.push(format!("{name}: {per_op:.1} > {max}"));
                }
            }
            None => failures.push(format!(
                "{name}: no threshold in {}",
                cli.thresholds.display()
            )),
        }
    }
    if failures.is_empty() {
        println!("{} passed, 0 failed", counts.len());
        Ok(())
    } else {
        println!(
            "{} passed, {} failed",
            counts.len() - failures.len().min(counts.len()),
            failures.len()
        );
        Err(IcountError::Failed(format!(
            "instruction counts over threshold: {}",
            failures.join("; ")
        )))
    }
}

fn update(cli: &Cli, headroom: f64) -> Result<(), IcountError> {
    let mut thresholds = load(&cli.thresholds).unwrap_or_default();
    for (name, per_op) in measure_all(cli)? {
        thresholds
            .instructions
            .insert(name.to_owned(), (per_op * (1.0 + headroom)).ceil() as u64);
    }
    let body = toml::to_string(&thresholds).map_err(|e| IcountError::Thresholds {
        path: cli.thresholds.display().to_string(),
        reason: e.to_string(),
    })?;
    let text = format!(
        "# Instructions per operation allowed for each hot-path workload (see\n\
         # benches/src/lib.rs), measured under callgrind with a release build, plus\n\
         # {:.0} % headroom. CI fails when a count goes over.\n\
         # Refresh after an intended change or a toolchain bump:\n\
         #   cargo run --release --locked -p arqonbus-benches --bin icount -- update\n\n{body}",
        headroom * 100.0
    );
    std::fs::write(&cli.thresholds, text).map_err(|source| IcountError::Io {
        path: cli.thresholds.display().to_string(),
        source,
    })?;
    println!("wrote {}", cli.thresholds.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Run { name, iters } => run_workload(name, *iters),
        Cmd::Measure => measure_all(&cli).map(|counts| {
            for (name, per_op) in counts {
                println!("{name:<24} {per_op:>12.1}");
            }
        }),
        Cmd::Check => check(&cli),
        Cmd::Update { headroom } => update(&cli, *headroom),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("icount: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_parsed() {
        let out = "events: Ir\nfn=(1) main\n0 3\nsummary: 12345\ntotals: 12345\n";
        assert_eq!(parse_total(out), Some(12_345));
        assert_eq!(parse_total("events: Ir\n"), None);
    }

    #[test]
    fn the_committed_thresholds_cover_every_workload() {
        let t = load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/thresholds.toml"
        )))
        .unwrap();
        for name in NAMES {
            assert!(
                t.instructions.contains_key(*name),
                "no threshold for {name}"
            );
        }
    }
}
