//! The `arqonbus doctor` command: loads the configuration, gathers the
//! facts ([`super::probe`]), evaluates them ([`super::evaluate`]) and prints
//! one line per check, or the report as JSON.
//!
//! Invariants: it changes nothing on the host and talks to no running node;
//! its exit code is the report's (0 ok, 1 warn, 2 fail), or
//! [`COULD_NOT_CHECK`] when the configuration or the profile is bad.

use std::io::Write as _;
use std::path::Path;

use super::{Needs, Profile, Report, evaluate, probe};
use crate::config::Config;

/// The exit code when the doctor could not check at all.
pub const COULD_NOT_CHECK: u8 = 3;

/// What a node configured by `config` asks of the host.
pub fn needs(config: &Config, profile: Option<Profile>) -> Needs {
    Needs {
        shards: config.server.shards,
        pin_cores: config.server.pin_cores,
        io_memory: config.server.io_memory as u64,
        max_connections_per_shard: u64::from(config.limits.max_connections_per_shard),
        steering_required: config.steering.required,
        profile,
        // Without the control plane, `control.cpus` is not used.
        control_cpus: if config.control.enabled {
            config.control.cpus.clone()
        } else {
            Vec::new()
        },
    }
}

/// Checks this host; `Err` is a message for a bad configuration or profile.
pub fn report(config: Option<&Path>, profile: Option<&str>) -> Result<Report, String> {
    let profile = profile
        .map(str::parse::<Profile>)
        .transpose()
        .map_err(|e| e.to_string())?;
    let config = match config {
        Some(path) => {
            let c = Config::load(path).map_err(|e| e.to_string())?;
            c.validate().map_err(|e| e.to_string())?;
            c
        }
        None => Config::default(),
    };
    let mut keys = vec!["net.core.somaxconn".to_owned()];
    if let Some(p) = profile {
        keys.extend(
            p.sysctls()
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(k, _)| k),
        );
    }
    let facts = probe::gather(&keys);
    Ok(evaluate(&facts, &needs(&config, profile)))
}

/// Runs the command; returns the process's exit code.
pub fn run(config: Option<&Path>, profile: Option<&str>, json: bool) -> u8 {
    let report = match report(config, profile) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("arqonbus doctor: {e}");
            return COULD_NOT_CHECK;
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|j| writeln!(out, "{j}"))
    } else {
        let mut r = Ok(());
        for c in &report.checks {
            r = r.and_then(|()| writeln!(out, "{c}"));
        }
        let profile = report
            .profile
            .map_or_else(|| "no profile".to_owned(), |p| format!("profile {p}"));
        r.and_then(|()| {
            writeln!(
                out,
                "{}: {} ({profile}; exit code {})",
                report.verdict,
                match report.verdict {
                    super::Verdict::Ok => "the host is ready",
                    super::Verdict::Warn => "the node runs, see the warnings",
                    super::Verdict::Fail => "the node will not run as configured",
                },
                report.exit_code()
            )
        })
    };
    if let Err(e) = written {
        eprintln!("arqonbus doctor: cannot write the report: {e}");
        return COULD_NOT_CHECK;
    }
    report.exit_code()
}
