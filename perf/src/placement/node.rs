//! The ArqonBus nodes of the placement measurements, and how they are
//! managed: `arqonctl` (tenants, principals, credentials, drain and
//! resume) and `/metrics` (whether the steering program is attached, open
//! connections, connections moved to their home shard).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Side, Tenancy};
use crate::compare::fleet::{self, ArqonSpec, Endpoint, Fleet, FleetConfig};
use crate::driver::{Proto, Target};

/// How long an `arqonctl` call may take.
const CTL_TIMEOUT: &str = "10s";

/// How long a node may take to close every connection of a run.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `arqonctl` against one node.
#[derive(Debug)]
pub(super) struct Ctl<'a> {
    pub(super) bin: &'a Path,
    pub(super) admin: &'a fleet::Admin,
}

impl Ctl<'_> {
    /// One command with `--json`: its document.
    pub(super) fn run(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new(self.bin)
            .arg("--server")
            .arg(format!("https://{}", self.admin.control))
            .arg("--data-dir")
            .arg(&self.admin.data_dir)
            .args(["--json", "--timeout", CTL_TIMEOUT])
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "arqonctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("arqonctl {}: not JSON: {e}", args.join(" ")))
    }

    /// Waits until the control API answers.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.run(&["node", "status"]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Creates tenant `name` with `placement`, a principal and a bearer
    /// credential: the token.
    fn tenant(&self, name: &str, placement: Tenancy) -> Result<String, String> {
        self.run(&["tenants", "create", name, "--placement", placement.as_str()])?;
        let principal = self.run(&["principals", "create", "--tenant", name, "load"])?;
        // `arqonctl --json` gives ids as strings (older versions: numbers).
        let id = principal
            .get("id")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .ok_or("principals create: no id")?;
        let issued = self.run(&["credentials", "issue", "--principal", &id.to_string()])?;
        issued
            .get("token")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "credentials issue: no token".into())
    }
}

/// `GET /metrics` of a node.
fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    let limit = Some(Duration::from_secs(5));
    let _ = s.set_read_timeout(limit);
    let _ = s.set_write_timeout(limit);
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    Ok(body)
}

/// The sum of a metric over its label sets, `None` if it is absent.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// An ArqonBus node of one side, with its tenants' credentials.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) side: Side,
    pub(super) endpoint: Endpoint,
    pub(super) admin: fleet::Admin,
    /// Credentials by tenancy (`spread`/`home`, one tenant each), or the
    /// `tenants` part's credentials, one per tenant.
    pub(super) spread: Vec<String>,
    pub(super) home: Vec<String>,
}

impl Node {
    pub(super) fn start(
        fleet: &mut Fleet,
        cfg: &FleetConfig,
        ctl_bin: &Path,
        side: Side,
        tenants: &[(String, Tenancy)],
    ) -> Result<Self, String> {
        let (mode, program, without_bpf) = side.steering();
        let spec = ArqonSpec {
            name: side.name().to_owned(),
            steering_mode: mode.map(str::to_owned),
            without_bpf,
            ..ArqonSpec::default()
        };
        let endpoint = fleet.arqonbus_with(cfg, &spec).map_err(|e| e.to_string())?;
        let admin = endpoint
            .admin
            .clone()
            .ok_or("an ArqonBus endpoint without its admin addresses")?;
        // The program attaches before the listeners accept; the metric says
        // whether it did.
        let text = scrape(admin.metrics)?;
        let active = metric_sum(&text, "arqonbus_steering_active").ok_or_else(|| {
            format!(
                "{}: /metrics has no arqonbus_steering_active (an arqonbus without steering?)",
                side.name()
            )
        })?;
        if (active > 0.0) != program {
            return Err(format!(
                "{}: steering program {} but this side needs it {} (log: {}/{}.log){}",
                side.name(),
                if active > 0.0 {
                    "attached"
                } else {
                    "not attached"
                },
                if program { "attached" } else { "absent" },
                fleet.dir().display(),
                side.name(),
                if program {
                    "; loading it needs CAP_BPF: run as root"
                } else {
                    ""
                }
            ));
        }
        let ctl = Ctl {
            bin: ctl_bin,
            admin: &admin,
        };
        ctl.wait_ready()?;
        let mut node = Self {
            side,
            endpoint,
            admin: admin.clone(),
            spread: Vec::new(),
            home: Vec::new(),
        };
        for (name, tenancy) in tenants {
            let token = ctl.tenant(name, *tenancy)?;
            match tenancy {
                Tenancy::Spread => node.spread.push(token),
                Tenancy::Home => node.home.push(token),
            }
        }
        Ok(node)
    }

    pub(super) fn target(&self, credential: &str) -> Result<Target, String> {
        Target::new(
            Proto::Native,
            &self.endpoint.url,
            None,
            credential.to_owned(),
        )
        .map_err(|e| e.to_string())
    }

    pub(super) fn credential(&self, tenancy: Tenancy) -> Result<&str, String> {
        match tenancy {
            Tenancy::Spread => self.spread.first(),
            Tenancy::Home => self.home.first(),
        }
        .map(String::as_str)
        .ok_or_else(|| format!("{}: no {} tenant", self.side.name(), tenancy.as_str()))
    }

    /// Connections moved to their home so far.
    pub(super) fn moved(&self) -> Option<u64> {
        scrape(self.admin.metrics)
            .ok()
            .and_then(|t| metric_sum(&t, "arqonbus_moved_out_total"))
            .map(|v| v as u64)
    }

    /// Waits until the node has no open connection, then one steering tick
    /// more, so `balance` starts the next run from zero everywhere.
    pub(super) fn wait_idle(&self) -> Result<(), String> {
        let deadline = Instant::now() + IDLE_TIMEOUT;
        loop {
            let open = scrape(self.admin.metrics)
                .ok()
                .and_then(|t| metric_sum(&t, "arqonbus_connections"));
            if open == Some(0.0) {
                std::thread::sleep(Duration::from_millis(600));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: still {open:?} connections open after {} s",
                    self.side.name(),
                    IDLE_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP x\narqonbus_connections{shard=\"0\"} 3\narqonbus_connections{shard=\"1\"} 4\narqonbus_connections_total 9\narqonbus_steering_active 1\n";
        assert_eq!(metric_sum(text, "arqonbus_connections"), Some(7.0));
        assert_eq!(metric_sum(text, "arqonbus_steering_active"), Some(1.0));
        assert_eq!(metric_sum(text, "arqonbus_missing"), None);
    }
}
