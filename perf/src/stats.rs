//! Measurement helpers: latency histograms, and CPU and steal accounting.
//!
//! Latency goes into an [`hdrhistogram`] in nanoseconds (3 significant
//! digits, up to 60 s) and is reported in microseconds. CPU comes from
//! `/proc`: the client (this process) and server processes from
//! `/proc/PID/stat`, one thread from `/proc/thread-self/stat`, and the
//! hypervisor's steal time from the `cpu` line of `/proc/stat`. Those are in
//! clock ticks (`USER_HZ`, 100 on Linux), so a one-second run measures CPU to
//! about 1 %.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Clock ticks per second in `/proc` (Linux's `USER_HZ`).
const TICKS_PER_SEC: f64 = 100.0;

/// Latency samples in nanoseconds.
#[derive(Debug, Clone)]
pub(crate) struct Latency(Histogram<u64>);

impl Latency {
    /// An empty histogram (1 ns .. 60 s, 3 significant digits).
    pub(crate) fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts; a failure here
        // would be a bug in this line, not a runtime condition.
        #[expect(clippy::expect_used, reason = "constant, valid bounds")]
        let h = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
        Self(h)
    }

    /// Records one sample (clamped into range).
    pub(crate) fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    /// Adds another histogram's samples.
    pub(crate) fn merge(&mut self, other: &Self) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Samples recorded.
    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    /// The usual percentiles, or `None` without samples.
    pub(crate) fn summary(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Some(Percentiles {
            count: self.0.len(),
            p50_us: us(self.0.value_at_quantile(0.50)),
            p90_us: us(self.0.value_at_quantile(0.90)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
            mean_us: self.0.mean() / 1e3,
        })
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Percentiles {
    /// Samples.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50_us: f64,
    /// 90th percentile.
    pub(crate) p90_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Largest sample.
    pub(crate) max_us: f64,
    /// Mean.
    pub(crate) mean_us: f64,
}

/// User + system clock ticks of a process (`/proc/PID/stat`) or of the
/// calling thread (`pid = None`).
fn ticks_of(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which may contain spaces, are after
    // the last ')'. utime and stime are fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks used so far by process `pid`.
pub(crate) fn process_ticks(pid: u32) -> Option<u64> {
    ticks_of(&format!("/proc/{pid}/stat"))
}

/// Resident set size of process `pid`, KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// How busy the calling thread has been since [`ThreadClock::start`].
#[derive(Debug)]
pub(crate) struct ThreadClock {
    wall: Instant,
    ticks: Option<u64>,
}

impl ThreadClock {
    /// Starts measuring the calling thread.
    pub(crate) fn start() -> Self {
        Self {
            wall: Instant::now(),
            ticks: ticks_of("/proc/thread-self/stat"),
        }
    }

    /// Fraction of one core the calling thread used since `start` (call it
    /// on the same thread).
    pub(crate) fn busy(&self) -> f64 {
        let (Some(t0), Some(t1)) = (self.ticks, ticks_of("/proc/thread-self/stat")) else {
            return 0.0;
        };
        let wall = self.wall.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (t1.saturating_sub(t0) as f64 / TICKS_PER_SEC) / wall
    }
}

/// The machine-wide `cpu` line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy)]
struct SystemTicks {
    /// Everything (idle and steal included).
    total: u64,
    /// Stolen by the hypervisor.
    steal: u64,
    /// Idle or waiting for I/O.
    idle: u64,
    /// Serving interrupts and softirqs (loopback TCP's receive path runs
    /// there, for client and server alike).
    irq: u64,
}

/// The machine-wide `cpu` line of `/proc/stat`.
fn system_ticks() -> Option<SystemTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest
    // time is already inside user.
    let total: u64 = fields.iter().take(8).sum();
    let steal = fields.get(7).copied().unwrap_or(0);
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(SystemTicks {
        total,
        steal,
        idle: field(3) + field(4),
        irq: field(5) + field(6),
    })
}

/// CPU ticks used so far by the kernel's own threads (children of
/// `kthreadd`, pid 2: `ksoftirqd`, kworkers, io_uring workers of no
/// process): loopback TCP's deferred softirqs run there.
fn kernel_thread_ticks() -> Option<u64> {
    let mut sum = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name: state, then the parent's pid.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = rest.split_ascii_whitespace().nth(1);
        if pid == 2 || ppid == Some("2") {
            sum += ticks_of(&format!("/proc/{pid}/stat")).unwrap_or(0);
        }
    }
    Some(sum)
}

/// CPU use over one run: client, servers, and the hypervisor's steal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CpuUsage {
    /// Wall-clock seconds measured.
    pub(crate) wall_secs: f64,
    /// Cores the client (this process) used on average.
    pub(crate) client_cores: f64,
    /// Cores the server process used on average.
    pub(crate) server_cores: f64,
    /// Share of all CPU time the hypervisor stole, percent.
    pub(crate) steal_pct: f64,
    /// The busiest client thread's share of one core (0..1).
    pub(crate) client_max_thread: f64,
    /// Cores the machine's processes kept busy on average (user and system
    /// time of every process; interrupts, softirqs and steal excluded).
    /// Minus client and server: what other processes took (on a shared
    /// host, a build running beside the run).
    #[serde(default)]
    pub(crate) machine_busy_cores: f64,
    /// Cores spent serving interrupts and softirqs (loopback TCP included).
    #[serde(default)]
    pub(crate) machine_irq_cores: f64,
    /// Cores the kernel's own threads used (`ksoftirqd` among them), part
    /// of `machine_busy_cores`.
    #[serde(default)]
    pub(crate) kernel_threads_cores: f64,
}

impl CpuUsage {
    /// Cores other processes took: process time used by neither the
    /// client, nor the server, nor the kernel's threads.
    pub(crate) fn other_cores(&self) -> f64 {
        (self.machine_busy_cores
            - self.client_cores
            - self.server_cores
            - self.kernel_threads_cores)
            .max(0.0)
    }
}

/// A CPU snapshot to diff at the end of a run.
#[derive(Debug)]
pub(crate) struct CpuProbe {
    wall: Instant,
    client: Option<u64>,
    server_pid: Option<u32>,
    server: Option<u64>,
    system: Option<SystemTicks>,
    kernel_threads: Option<u64>,
}

impl CpuProbe {
    /// Snapshots now.
    pub(crate) fn start(server_pid: Option<u32>) -> Self {
        Self {
            wall: Instant::now(),
            client: process_ticks(std::process::id()),
            server_pid,
            server: server_pid.and_then(process_ticks),
            system: system_ticks(),
            kernel_threads: kernel_thread_ticks(),
        }
    }

    /// Usage since `start`; `client_max_thread` comes from the scenario.
    pub(crate) fn finish(&self, client_max_thread: f64) -> CpuUsage {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let cores = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => (b.saturating_sub(a) as f64 / TICKS_PER_SEC) / wall,
            _ => 0.0,
        };
        let (steal_pct, machine_busy_cores, machine_irq_cores) = match (self.system, system_ticks())
        {
            (Some(a), Some(b)) if b.total > a.total => {
                let total = (b.total - a.total) as f64;
                let steal = b.steal.saturating_sub(a.steal) as f64;
                let idle = b.idle.saturating_sub(a.idle) as f64;
                let irq = b.irq.saturating_sub(a.irq) as f64;
                let cores = |ticks: f64| ticks.max(0.0) / TICKS_PER_SEC / wall;
                (
                    100.0 * steal / total,
                    cores(total - steal - idle - irq),
                    cores(irq),
                )
            }
            _ => (0.0, 0.0, 0.0),
        };
        CpuUsage {
            wall_secs: wall,
            client_cores: cores(self.client, process_ticks(std::process::id())),
            server_cores: cores(self.server, self.server_pid.and_then(process_ticks)),
            steal_pct,
            client_max_thread,
            machine_busy_cores,
            machine_irq_cores,
            kernel_threads_cores: cores(self.kernel_threads, kernel_thread_ticks()),
        }
    }
}

/// Cores the host's processes keep busy right now, measured over
/// `window` (interrupts, softirqs and steal excluded).
pub(crate) fn busy_cores_now(window: std::time::Duration) -> Option<f64> {
    let a = system_ticks()?;
    std::thread::sleep(window);
    let b = system_ticks()?;
    let busy = |t: SystemTicks| t.total - t.steal - t.idle - t.irq;
    Some(busy(b).saturating_sub(busy(a)) as f64 / TICKS_PER_SEC / window.as_secs_f64())
}

/// Cores this process may run on.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The host's CPU model and kernel release, for reports: ratios against
/// nats-server moved with the host (one KVM host's AMD EPYC gave 1→1 16 B
/// 1.6–1.8× where an earlier host gave 2.3–2.5×, the same builds).
pub(crate) fn host() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
    format!("{model}, {} cores, Linux {kernel}", cores())
}

/// Why a round looks client-bound, if it does: a client thread was pegged
/// (it, not the server, set the pace), or the machine was saturated and the
/// client used more of it than the server.
pub(crate) fn client_bound(cpu: &CpuUsage, machine_cores: usize) -> Option<String> {
    if cpu.client_max_thread >= 0.9 {
        return Some(format!(
            "a client thread used {:.0} % of a core",
            cpu.client_max_thread * 100.0
        ));
    }
    let capacity = machine_cores as f64 * (1.0 - cpu.steal_pct / 100.0);
    if cpu.client_cores + cpu.server_cores >= 0.9 * capacity && cpu.client_cores > cpu.server_cores
    {
        return Some(format!(
            "machine saturated and the client used more CPU ({:.2} cores) than the server ({:.2})",
            cpu.client_cores, cpu.server_cores
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut l = Latency::new();
        for us in 1..=1000u64 {
            l.record(us * 1000);
        }
        let p = l.summary().unwrap();
        assert_eq!(p.count, 1000);
        assert!((p.p50_us - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_us - 1000.0).abs() < 1.0, "{p:?}");
        assert!(Latency::new().summary().is_none());
    }

    #[test]
    fn proc_readings_work_here() {
        assert!(process_ticks(std::process::id()).is_some());
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(system_ticks().is_some());
        assert!(kernel_thread_ticks().is_some());
        let c = ThreadClock::start();
        assert!(c.busy() >= 0.0);
    }

    #[test]
    fn bottleneck_rules() {
        let pegged = CpuUsage {
            client_max_thread: 0.97,
            ..CpuUsage::default()
        };
        assert!(client_bound(&pegged, 2).is_some());
        let server_bound = CpuUsage {
            client_cores: 0.6,
            server_cores: 1.3,
            client_max_thread: 0.5,
            ..CpuUsage::default()
        };
        assert!(client_bound(&server_bound, 2).is_none());
        let client_heavy = CpuUsage {
            client_cores: 1.2,
            server_cores: 0.7,
            client_max_thread: 0.3,
            ..CpuUsage::default()
        };
        assert!(client_bound(&client_heavy, 2).is_some());
    }
}
