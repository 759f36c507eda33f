//! The node the chaos suite attacks: one release `arqonbus` process on
//! loopback, plaintext, with its control API and metrics on free ports,
//! killed with SIGKILL and started again on the same data directory and
//! ports; `arqonctl` calls against it; its RSS, watched the whole time.
//!
//! Invariants: the node is only ever spawned from the runner's main thread
//! (`PR_SET_PDEATHSIG` follows the spawning thread), so it dies with the
//! runner; its stdout and stderr go to one log file, appended across
//! restarts, which [`Node::panics`] searches; an exit the suite did not
//! cause is recorded ([`Node::unexpected_exits`]), never hidden by a
//! restart.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::ChaosError;
use crate::stats::rss_kib;

/// How long a (re)started node may take to serve clients and the control
/// API.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an `arqonctl` call may take.
const CTL_TIMEOUT: &str = "10s";

/// How long the node may take to stop after SIGTERM (its lame duck is
/// configured to 500 ms).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What to start.
#[derive(Debug, Clone)]
pub(super) struct NodeSpec {
    /// The `arqonbus` binary (release).
    pub(super) arqonbus: PathBuf,
    /// The `arqonctl` binary.
    pub(super) arqonctl: PathBuf,
    /// Scratch directory: data directory, configuration, log.
    pub(super) dir: PathBuf,
    /// Shards.
    pub(super) shards: usize,
}

/// Runs `arqonctl` against the node (cheap to clone into writer threads).
#[derive(Debug, Clone)]
pub(super) struct Ctl {
    bin: PathBuf,
    control: SocketAddr,
    data_dir: PathBuf,
}

impl Ctl {
    /// `arqonctl --json ARGS`: its document.
    pub(super) fn run(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new(&self.bin)
            .arg("--server")
            .arg(format!("https://{}", self.control))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--json", "--timeout", CTL_TIMEOUT])
            .args(args)
            .stdin(Stdio::null())
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
}

/// A running (or restarting) node.
#[derive(Debug)]
pub(super) struct Node {
    spec: NodeSpec,
    child: Option<Child>,
    /// Data-plane address (plaintext).
    pub(super) addr: SocketAddr,
    /// Its control API.
    pub(super) ctl: Ctl,
    metrics: SocketAddr,
    data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// The current process id (0 while down), for the RSS watcher.
    pub(super) pid: Arc<AtomicU32>,
    /// Exits nobody asked for: `start N: <status>`.
    pub(super) unexpected_exits: Vec<String>,
    starts: u32,
}

/// `N` distinct free loopback ports (held together while chosen).
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

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) only sends a signal to the process we started.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl Node {
    /// Writes the configuration and starts the node; returns once it
    /// serves clients and the control API answers.
    pub(super) fn start(spec: NodeSpec) -> Result<Self, ChaosError> {
        std::fs::create_dir_all(&spec.dir)?;
        let [port, control, metrics] = free_ports::<3>()?;
        let config = spec.dir.join("arqonbus.toml");
        // The lame duck is short so the final stop is quick; pinning is
        // off because the runner shares the cores.
        std::fs::write(
            &config,
            format!(
                "[server]\npin_cores = false\nlame_duck_window_ms = 500\n\n\
                 [control]\nlisten = \"127.0.0.1:{control}\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
            ),
        )?;
        let mut node = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ctl: Ctl {
                bin: spec.arqonctl.clone(),
                control: SocketAddr::from(([127, 0, 0, 1], control)),
                data_dir: spec.dir.join("data"),
            },
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
            data_dir: spec.dir.join("data"),
            log: spec.dir.join("arqonbus.log"),
            config,
            spec,
            child: None,
            pid: Arc::new(AtomicU32::new(0)),
            unexpected_exits: Vec::new(),
            starts: 0,
        };
        node.spawn()?;
        Ok(node)
    }

    /// `tcp://127.0.0.1:PORT`.
    pub(super) fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The bootstrap tenant's credential.
    pub(super) fn bootstrap_token(&self) -> Result<String, ChaosError> {
        let path = self.data_dir.join("credentials/bootstrap.token");
        Ok(std::fs::read_to_string(path)?.trim().to_owned())
    }

    fn spawn(&mut self) -> Result<(), ChaosError> {
        let child = self.launch(false)?;
        self.pid.store(child.id(), Ordering::SeqCst);
        self.child = Some(child);
        self.wait_ready()
    }

    /// An upgrade: starts `arqonbus serve --take-over` on the same
    /// configuration, waits until it serves (the control API names a new
    /// server id) and until the old process has moved its clients and
    /// exited (a non-zero exit, or none within [`STOP_GRACE`], is recorded
    /// as unexpected). Returns how long the new process took to serve and
    /// how long the old one took to exit after that.
    pub(super) fn take_over(&mut self) -> Result<(Duration, Duration), ChaosError> {
        let old_id = self.server_id()?;
        let Some(mut old) = self.child.take() else {
            return Err(ChaosError::Setup("take-over: no node to take over".into()));
        };
        let started = Instant::now();
        let new = match self.launch(true) {
            Ok(c) => c,
            Err(e) => {
                self.child = Some(old);
                return Err(e);
            }
        };
        self.pid.store(new.id(), Ordering::SeqCst);
        self.child = Some(new);
        let deadline = started + READY_TIMEOUT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let failed = match exited {
                Some(status) => Some(format!("exited ({status})")),
                None if self.server_id().is_ok_and(|id| id != old_id) => break,
                None if Instant::now() > deadline => Some(format!(
                    "did not serve within {} s",
                    READY_TIMEOUT.as_secs()
                )),
                None => None,
            };
            if let Some(why) = failed {
                // The old node serves on: it is the node again.
                if let Some(mut new) = self.child.replace(old) {
                    let _ = new.kill();
                    let _ = new.wait();
                }
                if let Some(c) = &self.child {
                    self.pid.store(c.id(), Ordering::SeqCst);
                }
                return Err(ChaosError::Setup(format!(
                    "the taking-over arqonbus {why}; log: {}",
                    self.log.display()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let serving = started.elapsed();
        let exit_deadline = Instant::now() + STOP_GRACE;
        loop {
            match old.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        self.unexpected_exits.push(format!(
                            "start {}: the old process ended its hand-over with {status}",
                            self.starts - 1
                        ));
                    }
                    break;
                }
                Ok(None) if Instant::now() < exit_deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    self.unexpected_exits.push(format!(
                        "start {}: the old process did not exit within {} s of the hand-over",
                        self.starts - 1,
                        STOP_GRACE.as_secs()
                    ));
                    let _ = old.kill();
                    let _ = old.wait();
                    break;
                }
            }
        }
        Ok((serving, started.elapsed().saturating_sub(serving)))
    }

    /// Starts the node on a data directory the caller damaged, expecting a
    /// refusal: `Ok(Some(output))` with what the process wrote when it
    /// exited by itself within [`READY_TIMEOUT`], `Ok(None)` when it served
    /// (the damage went unnoticed; the node runs). Stops the node first.
    pub(super) fn start_damaged(&mut self) -> Result<Option<String>, ChaosError> {
        self.stop();
        let from = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let mut child = self.launch(false)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(_status)) = child.try_wait() {
                let mut text = String::new();
                if let Ok(mut f) = File::open(&self.log) {
                    use std::io::{Seek as _, SeekFrom};
                    let _ = f.seek(SeekFrom::Start(from));
                    let _ = f.read_to_string(&mut text);
                }
                return Ok(Some(text));
            }
            if self.serving() {
                self.pid.store(child.id(), Ordering::SeqCst);
                self.child = Some(child);
                return Ok(None);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ChaosError::Setup(format!(
                    "arqonbus neither refused nor served a damaged store within {} s",
                    READY_TIMEOUT.as_secs()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `arqonbus restore --from BACKUP` on the stopped node's data
    /// directory: the command's output, or why it failed.
    pub(super) fn restore(&mut self, backup: &std::path::Path) -> Result<String, String> {
        self.offline(&["restore".as_ref(), "--from".as_ref(), backup.as_os_str()])
    }

    /// `arqonbus admin rotate-token` on the stopped node's data directory:
    /// the command's output, or why it failed.
    pub(super) fn rotate_admin_token(&mut self) -> Result<String, String> {
        self.offline(&["admin".as_ref(), "rotate-token".as_ref()])
    }

    /// Stops the node and runs `arqonbus ARGS --data-dir DIR` on its data
    /// directory: the command's output, or (it failed) its output as the
    /// error.
    fn offline(&mut self, args: &[&std::ffi::OsStr]) -> Result<String, String> {
        self.stop();
        let out = Command::new(&self.spec.arqonbus)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", self.spec.arqonbus.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text.trim().to_owned())
        } else {
            Err(text.trim().to_owned())
        }
    }

    /// Starts the stopped node again (after a restore).
    pub(super) fn start_again(&mut self) -> Result<(), ChaosError> {
        self.stop();
        self.spawn()
    }

    /// The control store's file.
    pub(super) fn store_file(&self) -> PathBuf {
        self.data_dir.join("control.redb")
    }

    /// The data directory.
    pub(super) fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// The server id the control API reports.
    fn server_id(&self) -> Result<String, ChaosError> {
        let status = self
            .ctl
            .run(&["node", "status"])
            .map_err(ChaosError::Setup)?;
        status
            .get("server_id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ChaosError::Setup("node status: no server_id".into()))
    }

    /// Starts the process (`--take-over` when asked); its output goes to
    /// the log.
    fn launch(&mut self, take_over: bool) -> Result<Child, ChaosError> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(log, "==== chaos: start {} ====", self.starts)?;
        let mut cmd = Command::new(&self.spec.arqonbus);
        cmd.args(["serve", "--plaintext", "--listen"])
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--shards")
            .arg(self.spec.shards.to_string())
            .arg("--config")
            .arg(&self.config)
            .args(take_over.then_some("--take-over"))
            .env("RUST_BACKTRACE", "1")
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
        cmd.spawn()
            .map_err(|e| ChaosError::Setup(format!("{}: {e}", self.spec.arqonbus.display())))
    }

    fn wait_ready(&mut self) -> Result<(), ChaosError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(ChaosError::Setup(format!(
                    "arqonbus exited while starting ({status}); log: {}",
                    self.log.display()
                )));
            }
            if self.serving() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Setup(format!(
                    "arqonbus not ready within {} s; log: {}",
                    READY_TIMEOUT.as_secs(),
                    self.log.display()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the node takes clients and answers its control API.
    fn serving(&self) -> bool {
        TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            && self.ctl.run(&["node", "status"]).is_ok()
    }

    /// Records an exit nobody asked for (a crash), if there was one.
    pub(super) fn check_alive(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.unexpected_exits.push(format!(
                    "start {}: exited by itself ({status})",
                    self.starts
                ));
                self.child = None;
                self.pid.store(0, Ordering::SeqCst);
                false
            }
            Err(_) => true,
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub(super) fn kill9(&mut self) {
        self.check_alive();
        if let Some(mut child) = self.child.take() {
            self.pid.store(0, Ordering::SeqCst);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same data directory and ports.
    pub(super) fn restart(&mut self) -> Result<(), ChaosError> {
        self.kill9();
        self.spawn()
    }

    /// SIGTERM (the lame duck), SIGKILL after a grace period; records a
    /// non-zero exit.
    pub(super) fn stop(&mut self) {
        self.check_alive();
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        self.unexpected_exits
                            .push(format!("start {}: stop ended with {status}", self.starts));
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.unexpected_exits.push(format!(
                        "start {}: did not stop within {} s of SIGTERM",
                        self.starts,
                        STOP_GRACE.as_secs()
                    ));
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    /// Lines of the log that report a panic (`panicked`), at most 20.
    pub(super) fn panics(&self) -> Vec<String> {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text.lines()
            .filter(|l| l.contains("panicked"))
            .take(20)
            .map(|l| l.chars().take(300).collect())
            .collect()
    }

    /// Creates tenant `name` (with `extra` flags), a principal and a bearer
    /// credential: the token.
    pub(super) fn tenant(&self, name: &str, extra: &[&str]) -> Result<String, String> {
        let mut args = vec!["tenants", "create", name];
        args.extend_from_slice(extra);
        self.ctl.run(&args)?;
        let tenant = format!("name:{name}");
        let principal = self
            .ctl
            .run(&["principals", "create", "--tenant", &tenant, "chaos"])?;
        let id = json_id(&principal, "id").ok_or("principals create: no id")?;
        let issued = self
            .ctl
            .run(&["credentials", "issue", "--principal", &id.to_string()])?;
        issued
            .get("token")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "credentials issue: no token".into())
    }

    /// The sum of a metric over its label sets (`None` when absent or the
    /// node does not answer).
    pub(super) fn metric(&self, name: &str) -> Option<f64> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2)).ok()?;
        let limit = Some(Duration::from_secs(5));
        let _ = s.set_read_timeout(limit);
        let _ = s.set_write_timeout(limit);
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let mut found = None;
        for line in body.lines() {
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
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An id in `arqonctl --json` output: a string of digits (or, from older
/// versions, a number).
pub(super) fn json_id(v: &serde_json::Value, key: &str) -> Option<u64> {
    let v = v.get(key)?;
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Samples the node's RSS every 100 ms: the peak over the whole suite and
/// over the current scenario.
#[derive(Debug)]
pub(super) struct RssWatch {
    peak_kib: Arc<AtomicU64>,
    window_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssWatch {
    pub(super) fn start(pid: Arc<AtomicU32>) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let window_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, window, stop) = (peak_kib.clone(), window_kib.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let pid = pid.load(Ordering::SeqCst);
                    if pid != 0
                        && let Some(kib) = rss_kib(pid)
                    {
                        peak.fetch_max(kib, Ordering::Relaxed);
                        window.fetch_max(kib, Ordering::Relaxed);
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            peak_kib,
            window_kib,
            stop,
            thread: Some(thread),
        }
    }

    /// The peak since the last call (a scenario's), MiB, and starts a new
    /// window.
    pub(super) fn take_window_mib(&self) -> f64 {
        self.window_kib.swap(0, Ordering::Relaxed) as f64 / 1024.0
    }

    /// The peak over everything so far, MiB.
    pub(super) fn peak_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
