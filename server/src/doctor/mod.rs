//! `arqonbus doctor`: the host checked against what a node needs and what a
//! tuning profile sets.
//!
//! This module owns the verdicts and nothing else: [`evaluate`] is a pure
//! function from [`Facts`] (what [`probe`] read off the host) and [`Needs`]
//! (what the configuration and the chosen [`Profile`] ask for) to one
//! [`Check`] per subject, in a fixed order. It reads no file and calls no
//! system call, so every verdict is unit-tested from invented facts.
//!
//! Invariants: a check whose fact could not be read is a warning that says
//! so, never an `ok`; every `warn` and `fail` carries a fix; the exit code
//! ([`Report::exit_code`]) is 0 when every check is ok, 1 when the worst is
//! a warning, 2 when one fails (3, "could not check", is the caller's, for
//! an unreadable configuration or an unknown profile).

pub mod command;
pub mod probe;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// glommio's floor for locked memory (its io_uring rings), bytes.
pub const GLOMMIO_MEMLOCK: u64 = 512 * 1024;
/// The oldest kernel glommio 0.9 runs on.
pub const MIN_KERNEL: (u32, u32) = (5, 8);
/// The kernel that added `tcp_migrate_req` (connections queued on a drained
/// shard move to the others).
pub const MIGRATE_KERNEL: (u32, u32) = (5, 14);
/// Each shard listens with this backlog (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u64 = 4096;
/// Descriptors a node holds besides its connections (listeners, io_uring,
/// doorbells, store, control and metrics).
const FIXED_FILES: u64 = 64;
/// `CAP_BPF`: capability bit number.
pub const CAP_BPF: u32 = 39;
/// `CAP_PERFMON`: capability bit number. With `CAP_BPF` alone the verifier
/// also checks speculative paths and refuses the steering program ("the
/// sequence of 8193 jumps is too complex", Linux 6.18, seen here).
pub const CAP_PERFMON: u32 = 38;

/// A tuning profile under `tuning/profiles/`, embedded in the binary so the
/// doctor checks exactly what the package installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Request/reply and small messages: busy polling, NIC IRQs off the
    /// shards' CPUs.
    Latency,
    /// Large messages: bigger socket buffers, NIC queues aligned with shards.
    Throughput,
    /// Many idle clients and connect storms: small buffers, deep SYN queue.
    Connections,
}

impl Profile {
    /// Every profile, for messages.
    pub const ALL: [Profile; 3] = [Profile::Latency, Profile::Throughput, Profile::Connections];

    /// The profile's name (its file is `tuning/profiles/<name>.conf`).
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Latency => "latency",
            Profile::Throughput => "throughput",
            Profile::Connections => "connections",
        }
    }

    /// The profile's sysctl file, as installed.
    pub fn text(self) -> &'static str {
        match self {
            Profile::Latency => include_str!("../../../tuning/profiles/latency.conf"),
            Profile::Throughput => include_str!("../../../tuning/profiles/throughput.conf"),
            Profile::Connections => include_str!("../../../tuning/profiles/connections.conf"),
        }
    }

    /// The profile's sysctls, in file order.
    pub fn sysctls(self) -> Result<Vec<(String, String)>, DoctorError> {
        parse_sysctl_conf(self.text())
    }

    /// Where the NIC's IRQs should be relative to the shards' CPUs.
    pub fn irq_layout(self) -> IrqLayout {
        match self {
            Profile::Latency => IrqLayout::OffShards,
            Profile::Throughput => IrqLayout::OnShards,
            Profile::Connections => IrqLayout::Any,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Profile {
    type Err = DoctorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| DoctorError::UnknownProfile(s.to_owned()))
    }
}

/// Where a profile wants the NIC's interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqLayout {
    /// On CPUs without a shard (softirq work does not preempt a shard).
    OffShards,
    /// Only on the shards' CPUs (receive queue i on shard i's CPU).
    OnShards,
    /// Anywhere.
    Any,
}

/// Why the doctor could not check.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// `--profile` named no profile.
    #[error("unknown profile {0:?}: expected latency, throughput or connections")]
    UnknownProfile(String),
    /// A profile file has a line that is not `key = value`.
    #[error("profile line {line}: {text:?} is not `key = value`")]
    ProfileSyntax {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// Parses a sysctl.d file: `key = value` lines, `#` and `;` comments.
pub fn parse_sysctl_conf(text: &str) -> Result<Vec<(String, String)>, DoctorError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let syntax = || DoctorError::ProfileSyntax {
            line: i + 1,
            text: raw.to_owned(),
        };
        let (key, value) = line.split_once('=').ok_or_else(syntax)?;
        let (key, value) = (key.trim().trim_start_matches('-'), value.trim());
        if key.is_empty() || value.is_empty() {
            return Err(syntax());
        }
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// A resource limit as `/proc/self/limits` shows it; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// The soft limit (what applies).
    pub soft: Option<u64>,
    /// The hard limit (how far the process may raise it).
    pub hard: Option<u64>,
}

/// One network interface and its interrupts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nic {
    /// Its name, e.g. `eth0`.
    pub name: String,
    /// Its receive/transmit IRQs and the CPUs each may run on.
    pub irqs: Vec<(u32, Vec<usize>)>,
    /// Per receive queue, the CPUs RPS hands packets to (empty: RPS off).
    pub rps: Vec<(String, Vec<usize>)>,
}

/// What the probe read off the host. `None` (or `Err`) is "could not read".
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// `uname -r`.
    pub kernel_release: Option<String>,
    /// `kernel.io_uring_disabled` (0, 1 or 2; absent before Linux 6.6).
    pub io_uring_disabled: Option<u8>,
    /// Whether `io_uring_setup` worked for this process (the error otherwise).
    pub io_uring_probe: Option<Result<(), String>>,
    /// `RLIMIT_MEMLOCK`, bytes.
    pub memlock: Option<Limit>,
    /// `RLIMIT_NOFILE`.
    pub nofile: Option<Limit>,
    /// The effective capability set (`CapEff`).
    pub cap_eff: Option<u64>,
    /// The effective user id.
    pub euid: Option<u32>,
    /// `/sys/kernel/mm/transparent_hugepage/enabled` (the selected word).
    pub thp_enabled: Option<String>,
    /// `/sys/kernel/mm/transparent_hugepage/defrag` (the selected word).
    pub thp_defrag: Option<String>,
    /// sysctl key to its value (`None`: absent or unreadable).
    pub sysctls: BTreeMap<String, Option<String>>,
    /// The CPUs this process may run on.
    pub cpus: Vec<usize>,
    /// Network interfaces other than loopback (and virtual ones without a
    /// device).
    pub nics: Vec<Nic>,
    /// The current clock source.
    pub clocksource: Option<String>,
}

/// What the node, as configured, asks of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Shards configured (`server.shards`, 0 for one per CPU).
    pub shards: usize,
    /// Whether shards are pinned to CPUs `0..shards`.
    pub pin_cores: bool,
    /// Locked memory per shard (`server.io_memory`), bytes.
    pub io_memory: u64,
    /// Connections allowed per shard.
    pub max_connections_per_shard: u64,
    /// `steering.required`: no CAP_BPF is then a failed start.
    pub steering_required: bool,
    /// The profile to check, if any.
    pub profile: Option<Profile>,
    /// `control.cpus`: where the control plane's threads run (empty: any
    /// CPU).
    pub control_cpus: Vec<usize>,
}

/// A check's verdict; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// The node runs, but not as well as it could, or a fact is unknown.
    Warn,
    /// The node will not start, or will not run as configured.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `io_uring`, `sysctl net.core.somaxconn`.
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it (always set for warn and fail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        verdict: Verdict,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            verdict,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::bad(Verdict::Warn, name, detail, fix)
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::bad(Verdict::Fail, name, detail, fix)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4}  {}: {}", self.verdict, self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, " -> fix: {fix}")?;
        }
        Ok(())
    }
}

/// Every check, and the worst verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The profile checked, if any.
    pub profile: Option<Profile>,
    /// The worst verdict.
    pub verdict: Verdict,
    /// One entry per check, in a fixed order.
    pub checks: Vec<Check>,
}

impl Report {
    /// 0 all ok, 1 at worst a warning, 2 a failure.
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            Verdict::Ok => 0,
            Verdict::Warn => 1,
            Verdict::Fail => 2,
        }
    }
}

/// Parses `5.15.0-91-generic` into (5, 15).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Parses a CPU list (`0-3,8,10-11`) as in `smp_affinity_list`.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    Some(out)
}

/// Parses a CPU mask (`rps_cpus`: hex words separated by commas, the
/// lowest CPUs last) into CPU numbers.
pub fn parse_cpu_mask(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for (word_index, word) in text.trim().rsplit(',').enumerate() {
        let bits = u32::from_str_radix(word.trim(), 16).ok()?;
        for bit in 0..32 {
            if bits & (1 << bit) != 0 {
                out.push(word_index * 32 + bit);
            }
        }
    }
    out.sort_unstable();
    Some(out)
}

/// Parses the soft and hard columns of one `/proc/self/limits` row.
pub fn parse_limits(text: &str, row: &str) -> Option<Limit> {
    let line = text.lines().find(|l| l.starts_with(row))?;
    let mut cols = line[row.len()..].split_whitespace();
    let value = |s: &str| -> Option<Option<u64>> {
        if s == "unlimited" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    Some(Limit {
        soft: value(cols.next()?)?,
        hard: value(cols.next()?)?,
    })
}

/// The bracketed word of a sysfs choice (`always [madvise] never`).
pub fn selected_word(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_owned())
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes / 1024)
}

fn limit_text(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string())
}

/// The shards the node will run, and on which CPUs.
fn shard_cpus(facts: &Facts, needs: &Needs) -> (usize, Vec<usize>) {
    let cpu_count = facts.cpus.len().max(1);
    let shards = if needs.shards == 0 {
        cpu_count.min(64)
    } else {
        needs.shards
    };
    // Shard i runs on CPU i modulo the CPUs it may use (see `pin_cores`).
    let mut cpus: Vec<usize> = if facts.cpus.is_empty() {
        Vec::new()
    } else {
        (0..shards)
            .map(|i| facts.cpus[i % facts.cpus.len()])
            .collect()
    };
    cpus.sort_unstable();
    cpus.dedup();
    (shards, cpus)
}

/// Every verdict for these facts and needs, in a fixed order.
pub fn evaluate(facts: &Facts, needs: &Needs) -> Report {
    let mut checks = vec![
        check_privileges(facts),
        check_kernel(facts),
        check_io_uring(facts),
        check_memlock(facts, needs),
        check_nofile(facts, needs),
        check_cap_bpf(facts, needs),
        check_thp(facts, needs),
        check_clocksource(facts),
        check_cpus(facts, needs),
    ];
    checks.extend(check_sysctls(facts, needs));
    checks.extend(check_nics(facts, needs));
    let verdict = checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Ok);
    Report {
        profile: needs.profile,
        verdict,
        checks,
    }
}

fn has_cap(facts: &Facts, bit: u32) -> Option<bool> {
    facts.cap_eff.map(|c| c & (1 << bit) != 0)
}

fn check_privileges(facts: &Facts) -> Check {
    let name = "privileges";
    match (facts.euid, has_cap(facts, CAP_BPF)) {
        (Some(0), _) => Check::ok(
            name,
            "running as root: limits and capabilities are checked as the service would have them only if the service also runs as root",
        ),
        (Some(uid), Some(true)) => Check::ok(name, format!("uid {uid} with CAP_BPF")),
        (Some(uid), _) => Check::warn(
            name,
            format!(
                "running unprivileged (uid {uid}, no CAP_BPF): the capability and limit checks below describe this shell, not the service"
            ),
            "run it as the service does: `sudo -u arqonbus arqonbus doctor` for limits, `sudo arqonbus doctor` for the rest",
        ),
        (None, _) => Check::warn(
            name,
            "could not read the process's user id",
            "run on Linux with /proc mounted",
        ),
    }
}

fn check_kernel(facts: &Facts) -> Check {
    let name = "kernel";
    let Some(release) = &facts.kernel_release else {
        return Check::warn(
            name,
            "could not read the kernel release",
            "check /proc/sys/kernel/osrelease",
        );
    };
    match kernel_version(release) {
        Some(v) if v < MIN_KERNEL => Check::fail(
            name,
            format!(
                "Linux {release}: glommio needs {}.{} or later",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            "upgrade the kernel",
        ),
        Some(v) if v < MIGRATE_KERNEL => Check::warn(
            name,
            format!(
                "Linux {release}: before {}.{}, connections queued on a drained shard are reset (no tcp_migrate_req)",
                MIGRATE_KERNEL.0, MIGRATE_KERNEL.1
            ),
            "upgrade to Linux 5.14 or later",
        ),
        Some(_) => Check::ok(name, format!("Linux {release}")),
        None => Check::warn(
            name,
            format!("cannot read a version in {release:?}"),
            "check `uname -r`",
        ),
    }
}

fn check_io_uring(facts: &Facts) -> Check {
    let name = "io_uring";
    let disabled = match facts.io_uring_disabled {
        Some(0) | None => None,
        Some(1) => Some("kernel.io_uring_disabled = 1 (only the io_uring_group may use it)"),
        Some(_) => Some("kernel.io_uring_disabled = 2 (io_uring is off for everyone)"),
    };
    match (&facts.io_uring_probe, disabled) {
        (Some(Ok(())), None) => Check::ok(name, "io_uring_setup works"),
        (Some(Ok(())), Some(why)) => Check::warn(
            name,
            format!(
                "io_uring_setup works for this process, but {why}: the service user may be refused"
            ),
            "sysctl -w kernel.io_uring_disabled=0 (and in /etc/sysctl.d/), or add the service user to kernel.io_uring_group",
        ),
        (Some(Err(e)), why) => Check::fail(
            name,
            format!(
                "io_uring_setup failed ({e}){}: no shard can start",
                why.map_or(String::new(), |w| format!("; {w}"))
            ),
            "sysctl -w kernel.io_uring_disabled=0 (and in /etc/sysctl.d/); a kernel built without CONFIG_IO_URING cannot run ArqonBus",
        ),
        (None, _) => Check::warn(name, "io_uring was not probed", "run on Linux"),
    }
}

fn check_memlock(facts: &Facts, needs: &Needs) -> Check {
    let name = "RLIMIT_MEMLOCK";
    let (shards, _) = shard_cpus(facts, needs);
    let need = GLOMMIO_MEMLOCK.max(needs.io_memory.saturating_mul(shards as u64));
    match facts.memlock {
        None => Check::warn(
            name,
            "could not read the locked-memory limit",
            "check `ulimit -l`",
        ),
        Some(Limit { soft: None, .. }) => Check::ok(name, "unlimited"),
        Some(Limit {
            soft: Some(have),
            hard,
        }) if have < need => Check::fail(
            name,
            format!(
                "{} locked memory, {} shards need {} (server.io_memory {} each, glommio at least {})",
                kib(have),
                shards,
                kib(need),
                kib(needs.io_memory),
                kib(GLOMMIO_MEMLOCK)
            ),
            format!(
                "LimitMEMLOCK={need} in the unit (deploy/arqonbus.service), or `ulimit -l {}` (hard limit {})",
                need.div_ceil(1024),
                limit_text(hard)
            ),
        ),
        Some(Limit {
            soft: Some(have), ..
        }) => Check::ok(
            name,
            format!("{}, {shards} shards need {}", kib(have), kib(need)),
        ),
    }
}

fn check_nofile(facts: &Facts, needs: &Needs) -> Check {
    let name = "RLIMIT_NOFILE";
    let (shards, _) = shard_cpus(facts, needs);
    let full = needs
        .max_connections_per_shard
        .saturating_mul(shards as u64)
        .saturating_add(FIXED_FILES);
    let floor = FIXED_FILES + 8 * shards as u64;
    match facts.nofile.and_then(|l| l.soft.map(|s| (s, l.hard))) {
        None if facts.nofile.is_some() => Check::ok(name, "unlimited"),
        None => Check::warn(
            name,
            "could not read the open-files limit",
            "check `ulimit -n`",
        ),
        Some((have, _)) if have < floor => Check::fail(
            name,
            format!("{have} open files: {shards} shards need at least {floor} to start"),
            format!("LimitNOFILE={full} in the unit, or `ulimit -n {full}`"),
        ),
        Some((have, hard)) if have < full => Check::warn(
            name,
            format!(
                "{have} open files: about {} connections fit, the configuration allows {} ({} per shard x {shards})",
                have - FIXED_FILES.min(have),
                full - FIXED_FILES,
                needs.max_connections_per_shard
            ),
            format!(
                "LimitNOFILE={full} in the unit (hard limit now {}), or lower limits.max_connections_per_shard",
                limit_text(hard)
            ),
        ),
        Some((have, _)) => Check::ok(
            name,
            format!(
                "{have} open files for up to {} connections",
                full - FIXED_FILES
            ),
        ),
    }
}

fn check_cap_bpf(facts: &Facts, needs: &Needs) -> Check {
    let name = "CAP_BPF";
    let verdict = if needs.steering_required {
        Verdict::Fail
    } else {
        Verdict::Warn
    };
    let fix = "AmbientCapabilities=CAP_BPF CAP_PERFMON in the unit (deploy/arqonbus.service), or run as root";
    match (has_cap(facts, CAP_BPF), has_cap(facts, CAP_PERFMON)) {
        (Some(true), Some(true)) => Check::ok(
            name,
            "CAP_BPF and CAP_PERFMON: the steering program can be loaded",
        ),
        (Some(bpf), Some(_)) => {
            let missing = if bpf {
                "no CAP_PERFMON (the verifier refuses the program with CAP_BPF alone)"
            } else {
                "no CAP_BPF"
            };
            Check::bad(
                verdict,
                name,
                if needs.steering_required {
                    format!("{missing} and steering.required = true: the node refuses to start")
                } else {
                    format!(
                        "{missing}: the node starts, warns once, and the kernel's hash places connections (no balance, no drain steering)"
                    )
                },
                fix,
            )
        }
        _ => Check::warn(
            name,
            "could not read the process's capabilities",
            "check CapEff in /proc/self/status",
        ),
    }
}

fn check_thp(facts: &Facts, needs: &Needs) -> Check {
    let name = "transparent huge pages";
    let (Some(enabled), defrag) = (&facts.thp_enabled, &facts.thp_defrag) else {
        return Check::ok(name, "not available on this kernel");
    };
    let defrag = defrag.as_deref().unwrap_or("unknown");
    let stalls = matches!(defrag, "always");
    if stalls && needs.profile == Some(Profile::Latency) {
        return Check::warn(
            name,
            format!("enabled [{enabled}], defrag [{defrag}]: a page fault may stall on compaction"),
            "echo madvise > /sys/kernel/mm/transparent_hugepage/defrag",
        );
    }
    // The node's allocator opts out of THP itself (mimalloc `no_thp`).
    Check::ok(
        name,
        format!("enabled [{enabled}], defrag [{defrag}]; the node's allocator does not use them"),
    )
}

fn check_clocksource(facts: &Facts) -> Check {
    let name = "clock source";
    match facts.clocksource.as_deref() {
        Some(c @ ("tsc" | "kvm-clock" | "arch_sys_counter" | "hyperv_clocksource_tsc_page")) => {
            Check::ok(name, format!("{c} (read without a system call)"))
        }
        Some(c) => Check::warn(
            name,
            format!(
                "{c}: every clock read is a system call (timers and latency samples cost more)"
            ),
            "use tsc if available: see /sys/devices/system/clocksource/clocksource0/available_clocksource, boot with clocksource=tsc",
        ),
        None => Check::warn(
            name,
            "could not read the clock source",
            "check /sys/devices/system/clocksource/clocksource0/current_clocksource",
        ),
    }
}

fn check_cpus(facts: &Facts, needs: &Needs) -> Check {
    let name = "CPUs and shards";
    if facts.cpus.is_empty() {
        return Check::warn(
            name,
            "could not read the CPUs this process may use",
            "check `taskset -p $$`",
        );
    }
    // A node that will not start comes before any advice.
    if let Some(c) = needs.control_cpus.iter().find(|c| !facts.cpus.contains(c)) {
        return Check::fail(
            name,
            format!(
                "control.cpus names CPU {c}, which this process may not use: the node will not start"
            ),
            "[control] cpus = CPUs listed by `taskset -p $$`",
        );
    }
    let cpus = facts.cpus.len();
    let (shards, _) = shard_cpus(facts, needs);
    if shards > cpus {
        return Check::warn(
            name,
            format!("{shards} shards on {cpus} CPUs: shards share cores and wait for each other"),
            format!("[server] shards = {cpus} or fewer"),
        );
    }
    if needs.profile == Some(Profile::Latency) && shards >= cpus && cpus > 1 {
        return Check::warn(
            name,
            format!(
                "{shards} shards on {cpus} CPUs: no CPU is left for the NIC's interrupts and the control runtime"
            ),
            format!(
                "[server] shards = {} (the latency profile's layout)",
                cpus - 1
            ),
        );
    }
    let (_, on_shards) = shard_cpus(facts, needs);
    let shared: Vec<usize> = needs
        .control_cpus
        .iter()
        .copied()
        .filter(|c| needs.pin_cores && on_shards.contains(c))
        .collect();
    if !shared.is_empty() {
        return Check::warn(
            name,
            format!(
                "control.cpus shares CPUs {shared:?} with shards: control writes take time from their messages"
            ),
            "[control] cpus = CPUs no shard is pinned to (the latency profile's layout)",
        );
    }
    if needs.profile == Some(Profile::Latency) && needs.control_cpus.is_empty() {
        let free: Vec<usize> = facts
            .cpus
            .iter()
            .copied()
            .filter(|c| !on_shards.contains(c))
            .collect();
        return Check::warn(
            name,
            "the control plane may run on the shards' CPUs: control writes then take time from their messages",
            format!("[control] cpus = {free:?} (the latency profile's layout)"),
        );
    }
    let pinned = if needs.pin_cores {
        "pinned"
    } else {
        "not pinned"
    };
    let control = if needs.control_cpus.is_empty() {
        String::new()
    } else {
        format!(", control plane on CPUs {:?}", needs.control_cpus)
    };
    Check::ok(
        name,
        format!("{shards} shards ({pinned}) on {cpus} CPUs{control}"),
    )
}

/// Compares sysctl values word by word (`4096 131072 6291456` has tabs).
fn same_value(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

fn check_sysctls(facts: &Facts, needs: &Needs) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(profile) = needs.profile else {
        // Without a profile, only what the node itself relies on.
        let name = "sysctl net.core.somaxconn";
        let have = facts
            .sysctls
            .get("net.core.somaxconn")
            .and_then(|v| v.as_deref())
            .and_then(|v| v.trim().parse::<u64>().ok());
        out.push(match have {
            Some(v) if v < LISTEN_BACKLOG => Check::warn(
                name,
                format!("{v}: each shard's accept queue is capped below its backlog of {LISTEN_BACKLOG}; a connect storm overflows it"),
                format!("sysctl -w net.core.somaxconn={LISTEN_BACKLOG}, or apply a profile (tuning/README.md)"),
            ),
            Some(v) => Check::ok(name, v.to_string()),
            None => Check::warn(name, "could not read it", "check `sysctl net.core.somaxconn`"),
        });
        return out;
    };
    let wanted = match profile.sysctls() {
        Ok(w) => w,
        Err(e) => {
            out.push(Check::fail(
                format!("profile {profile}"),
                e.to_string(),
                "reinstall the package",
            ));
            return out;
        }
    };
    let conf = format!("/usr/share/arqonbus/tuning/profiles/{profile}.conf");
    for (key, want) in wanted {
        let name = format!("sysctl {key}");
        out.push(match facts.sysctls.get(&key).and_then(Clone::clone) {
            Some(have) if same_value(&have, &want) => Check::ok(name, want),
            Some(have) => Check::warn(
                name,
                format!(
                    "{} (profile {profile}: {want})",
                    have.split_whitespace().collect::<Vec<_>>().join(" ")
                ),
                format!("arqonbus-tune apply {profile} (or `sysctl -p {conf}`)"),
            ),
            None => Check::warn(
                name,
                format!("absent or unreadable on this kernel (profile {profile}: {want})"),
                format!("an older kernel lacks it; leave it out of your copy of {conf}"),
            ),
        });
    }
    out
}

fn check_nics(facts: &Facts, needs: &Needs) -> Vec<Check> {
    if facts.nics.is_empty() {
        return vec![Check::ok(
            "NIC IRQ and RPS affinity",
            "loopback only: no NIC to align",
        )];
    }
    let (_, shard_cpus) = shard_cpus(facts, needs);
    let layout = needs.profile.map_or(IrqLayout::Any, Profile::irq_layout);
    let mut out = Vec::new();
    for nic in &facts.nics {
        let name = format!("NIC {} IRQ affinity", nic.name);
        let on_shards: Vec<u32> = nic
            .irqs
            .iter()
            .filter(|(_, cpus)| cpus.iter().any(|c| shard_cpus.contains(c)))
            .map(|(irq, _)| *irq)
            .collect();
        let off_shards: Vec<u32> = nic
            .irqs
            .iter()
            .filter(|(_, cpus)| cpus.iter().any(|c| !shard_cpus.contains(c)))
            .map(|(irq, _)| *irq)
            .collect();
        let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
        let shard_list = shard_cpus
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        out.push(if nic.irqs.is_empty() {
            Check::ok(name, "no IRQ found for it (virtual device)")
        } else {
            match layout {
                IrqLayout::OffShards if !on_shards.is_empty() => Check::warn(
                    name,
                    format!("IRQs {} may run on the shards' CPUs ({shard_list}): softirq work preempts a shard", list(&on_shards)),
                    "echo <a CPU without a shard> > /proc/irq/<irq>/smp_affinity_list for each (and stop irqbalance moving them)",
                ),
                IrqLayout::OnShards if !off_shards.is_empty() => Check::warn(
                    name,
                    format!("IRQs {} may run on CPUs without a shard (shards on {shard_list}): steering mode cpu cannot keep a connection on one core", list(&off_shards)),
                    "echo i > /proc/irq/<irq of queue i>/smp_affinity_list, one queue per shard CPU (tuning/README.md)",
                ),
                _ => Check::ok(name, format!("{} IRQs", nic.irqs.len())),
            }
        });
        let rps_name = format!("NIC {} RPS", nic.name);
        let rps_on: Vec<&str> = nic
            .rps
            .iter()
            .filter(|(_, cpus)| !cpus.is_empty())
            .map(|(q, _)| q.as_str())
            .collect();
        out.push(match layout {
            IrqLayout::OnShards | IrqLayout::OffShards if !rps_on.is_empty() => Check::warn(
                rps_name,
                format!(
                    "RPS is on for {}: packets are handed to another CPU after the IRQ",
                    rps_on.join(", ")
                ),
                format!(
                    "echo 0 > /sys/class/net/{}/queues/<rx-N>/rps_cpus",
                    nic.name
                ),
            ),
            _ if rps_on.is_empty() => Check::ok(rps_name, "off"),
            _ => Check::ok(rps_name, format!("on for {}", rps_on.join(", "))),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn good() -> Facts {
        let mut sysctls = BTreeMap::new();
        sysctls.insert("net.core.somaxconn".to_owned(), Some("4096".to_owned()));
        Facts {
            kernel_release: Some("6.8.0-45-generic".into()),
            io_uring_disabled: Some(0),
            io_uring_probe: Some(Ok(())),
            memlock: Some(Limit {
                soft: Some(8 << 20),
                hard: Some(8 << 20),
            }),
            nofile: Some(Limit {
                soft: Some(1 << 20),
                hard: Some(1 << 20),
            }),
            cap_eff: Some(1 << CAP_BPF | 1 << CAP_PERFMON),
            euid: Some(998),
            thp_enabled: Some("madvise".into()),
            thp_defrag: Some("madvise".into()),
            sysctls,
            cpus: vec![0, 1, 2, 3],
            nics: Vec::new(),
            clocksource: Some("tsc".into()),
        }
    }

    fn needs() -> Needs {
        Needs {
            shards: 0,
            pin_cores: true,
            io_memory: 128 * 1024,
            max_connections_per_shard: 65_536,
            steering_required: false,
            profile: None,
            control_cpus: Vec::new(),
        }
    }

    fn find<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn a_good_host_is_all_ok_and_exits_zero() {
        let r = evaluate(&good(), &needs());
        assert_eq!(r.verdict, Verdict::Ok, "{:#?}", r.checks);
        assert_eq!(r.exit_code(), 0);
        assert!(r.checks.iter().all(|c| c.fix.is_none()));
        assert!(
            find(&r, "NIC IRQ and RPS affinity")
                .detail
                .contains("loopback only")
        );
    }

    #[test]
    fn io_uring_off_fails_and_names_the_sysctl() {
        let mut f = good();
        f.io_uring_disabled = Some(2);
        f.io_uring_probe = Some(Err("Operation not permitted (os error 1)".into()));
        let r = evaluate(&f, &needs());
        let c = find(&r, "io_uring");
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.detail.contains("io_uring_disabled = 2"), "{c}");
        assert!(
            c.fix
                .as_deref()
                .unwrap()
                .contains("kernel.io_uring_disabled=0")
        );
        assert_eq!(r.exit_code(), 2);
        // Group-restricted but usable here: a warning.
        f.io_uring_disabled = Some(1);
        f.io_uring_probe = Some(Ok(()));
        assert_eq!(
            find(&evaluate(&f, &needs()), "io_uring").verdict,
            Verdict::Warn
        );
    }

    #[test]
    fn old_kernels_fail_or_warn() {
        let mut f = good();
        f.kernel_release = Some("5.4.0-150-generic".into());
        assert_eq!(
            find(&evaluate(&f, &needs()), "kernel").verdict,
            Verdict::Fail
        );
        f.kernel_release = Some("5.10.0".into());
        assert_eq!(
            find(&evaluate(&f, &needs()), "kernel").verdict,
            Verdict::Warn
        );
        assert_eq!(kernel_version("6.18.44-fc-v1098"), Some((6, 18)));
    }

    #[test]
    fn locked_memory_below_glommio_or_the_shards_fails() {
        let mut f = good();
        f.memlock = Some(Limit {
            soft: Some(64 * 1024),
            hard: Some(64 * 1024),
        });
        let r = evaluate(&f, &needs());
        let c = find(&r, "RLIMIT_MEMLOCK");
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.fix.as_deref().unwrap().contains("LimitMEMLOCK=524288"),
            "{c}"
        );
        // 4 shards x 16 MiB need 64 MiB.
        let mut n = needs();
        n.io_memory = 16 << 20;
        assert_eq!(
            find(&evaluate(&good(), &n), "RLIMIT_MEMLOCK").verdict,
            Verdict::Fail
        );
        f.memlock = Some(Limit {
            soft: None,
            hard: None,
        });
        assert_eq!(
            find(&evaluate(&f, &n), "RLIMIT_MEMLOCK").verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn open_files_below_the_connection_limit_warn_and_tiny_limits_fail() {
        let mut f = good();
        f.nofile = Some(Limit {
            soft: Some(1024),
            hard: Some(4096),
        });
        let c = find(&evaluate(&f, &needs()), "RLIMIT_NOFILE").clone();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.fix.unwrap().contains("LimitNOFILE=262208"));
        f.nofile = Some(Limit {
            soft: Some(32),
            hard: Some(32),
        });
        assert_eq!(
            find(&evaluate(&f, &needs()), "RLIMIT_NOFILE").verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn no_cap_bpf_warns_unless_steering_is_required() {
        let mut f = good();
        f.cap_eff = Some(0);
        let r = evaluate(&f, &needs());
        assert_eq!(find(&r, "CAP_BPF").verdict, Verdict::Warn);
        assert_eq!(find(&r, "privileges").verdict, Verdict::Warn);
        assert_eq!(r.exit_code(), 1);
        let mut n = needs();
        n.steering_required = true;
        assert_eq!(find(&evaluate(&f, &n), "CAP_BPF").verdict, Verdict::Fail);
        // CAP_BPF without CAP_PERFMON is not enough for this program.
        f.cap_eff = Some(1 << CAP_BPF);
        let c = find(&evaluate(&f, &needs()), "CAP_BPF").clone();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.detail.contains("no CAP_PERFMON"), "{c}");
        assert!(c.fix.unwrap().contains("CAP_BPF CAP_PERFMON"));
    }

    #[test]
    fn profile_sysctls_are_compared_word_by_word() {
        let mut f = good();
        let n = Needs {
            profile: Some(Profile::Connections),
            ..needs()
        };
        for (k, v) in Profile::Connections.sysctls().unwrap() {
            f.sysctls.insert(k, Some(v.replace(' ', "\t")));
        }
        let r = evaluate(&f, &n);
        assert!(
            r.checks
                .iter()
                .filter(|c| c.name.starts_with("sysctl "))
                .all(|c| c.verdict == Verdict::Ok),
            "{:#?}",
            r.checks
        );
        f.sysctls
            .insert("net.ipv4.tcp_max_syn_backlog".into(), Some("128".into()));
        f.sysctls.insert("net.ipv4.tcp_migrate_req".into(), None);
        let r = evaluate(&f, &n);
        let c = find(&r, "sysctl net.ipv4.tcp_max_syn_backlog");
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.detail.contains("128 (profile connections: 4096)"), "{c}");
        assert!(
            find(&r, "sysctl net.ipv4.tcp_migrate_req")
                .detail
                .contains("absent")
        );
    }

    #[test]
    fn every_profile_file_parses_and_names_known_keys() {
        for p in Profile::ALL {
            let keys = p.sysctls().unwrap();
            assert!(!keys.is_empty());
            assert!(
                keys.iter()
                    .all(|(k, _)| k.starts_with("net.") || k.starts_with("fs."))
            );
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
        }
        assert!(matches!(
            "fast".parse::<Profile>(),
            Err(DoctorError::UnknownProfile(_))
        ));
        assert!(parse_sysctl_conf("net.core.somaxconn 4096\n").is_err());
        assert_eq!(
            parse_sysctl_conf("# c\n; c\n-net.a = 1 2\n").unwrap(),
            vec![("net.a".to_owned(), "1 2".to_owned())]
        );
    }

    #[test]
    fn irqs_are_checked_against_the_profile_layout() {
        let mut f = good();
        f.nics = vec![Nic {
            name: "eth0".into(),
            irqs: vec![(38, vec![1]), (39, vec![3])],
            rps: vec![("rx-0".into(), vec![])],
        }];
        // Latency: 3 shards on CPUs 0-2; IRQ 38 on CPU 1 is on a shard.
        let n = Needs {
            shards: 3,
            profile: Some(Profile::Latency),
            ..needs()
        };
        let r = evaluate(&f, &n);
        let c = find(&r, "NIC eth0 IRQ affinity");
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.detail.contains("IRQs 38 "), "{c}");
        assert_eq!(find(&r, "NIC eth0 RPS").verdict, Verdict::Ok);
        // Throughput: 4 shards on every CPU: all IRQs are on shards.
        let n = Needs {
            profile: Some(Profile::Throughput),
            ..needs()
        };
        f.nics[0].rps = vec![("rx-0".into(), vec![2])];
        let r = evaluate(&f, &n);
        assert_eq!(find(&r, "NIC eth0 IRQ affinity").verdict, Verdict::Ok);
        assert_eq!(find(&r, "NIC eth0 RPS").verdict, Verdict::Warn);
    }

    #[test]
    fn latency_wants_a_cpu_without_a_shard() {
        let n = Needs {
            profile: Some(Profile::Latency),
            ..needs()
        };
        let c = find(&evaluate(&good(), &n), "CPUs and shards").clone();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.fix.unwrap().contains("shards = 3"));
        let n = Needs {
            shards: 8,
            ..needs()
        };
        assert_eq!(
            find(&evaluate(&good(), &n), "CPUs and shards").verdict,
            Verdict::Warn
        );
    }

    #[test]
    fn control_cpus_must_exist_and_should_be_free_of_shards() {
        let shards_on_three = Needs {
            shards: 3,
            ..needs()
        };
        let cases = [
            (vec![3], Verdict::Ok),
            (vec![2, 3], Verdict::Warn),
            (vec![7], Verdict::Fail),
        ];
        for (control_cpus, verdict) in cases {
            let n = Needs {
                control_cpus: control_cpus.clone(),
                ..shards_on_three.clone()
            };
            let c = find(&evaluate(&good(), &n), "CPUs and shards").clone();
            assert_eq!(c.verdict, verdict, "{control_cpus:?}: {}", c.detail);
        }
        // Unpinned shards may run anywhere: nothing to compare with.
        let n = Needs {
            control_cpus: vec![0],
            pin_cores: false,
            ..shards_on_three.clone()
        };
        assert_eq!(
            find(&evaluate(&good(), &n), "CPUs and shards").verdict,
            Verdict::Ok
        );
        // A node that will not start is a failure even where advice applies.
        let n = Needs {
            profile: Some(Profile::Latency),
            shards: 4,
            control_cpus: vec![7],
            ..needs()
        };
        assert_eq!(
            find(&evaluate(&good(), &n), "CPUs and shards").verdict,
            Verdict::Fail
        );
        // The latency profile asks for the control plane's CPU.
        let latency = Needs {
            profile: Some(Profile::Latency),
            ..shards_on_three
        };
        let c = find(&evaluate(&good(), &latency), "CPUs and shards").clone();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.fix.unwrap().contains("cpus = [3]"));
        let n = Needs {
            control_cpus: vec![3],
            ..latency
        };
        assert_eq!(
            find(&evaluate(&good(), &n), "CPUs and shards").verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn unknown_facts_are_warnings_never_ok() {
        let r = evaluate(&Facts::default(), &needs());
        for name in [
            "kernel",
            "io_uring",
            "RLIMIT_MEMLOCK",
            "RLIMIT_NOFILE",
            "CAP_BPF",
            "clock source",
            "CPUs and shards",
        ] {
            assert_eq!(find(&r, name).verdict, Verdict::Warn, "{name}");
        }
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_cpu_list("0-2,5\n"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_mask("00000000,00000003"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_mask("1,0"), Some(vec![32]));
        assert_eq!(parse_cpu_mask("0"), Some(vec![]));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            20000                20000                files     \nMax locked memory         unlimited            unlimited            bytes     \n";
        assert_eq!(
            parse_limits(limits, "Max open files"),
            Some(Limit {
                soft: Some(20_000),
                hard: Some(20_000)
            })
        );
        assert_eq!(
            parse_limits(limits, "Max locked memory"),
            Some(Limit {
                soft: None,
                hard: None
            })
        );
        assert_eq!(
            selected_word("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
    }

    #[test]
    fn lines_and_json_carry_the_fix() {
        let mut f = good();
        f.clocksource = Some("hpet".into());
        let r = evaluate(&f, &needs());
        let line = find(&r, "clock source").to_string();
        assert!(line.starts_with("warn  clock source: hpet"), "{line}");
        assert!(line.contains("-> fix: "));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["verdict"], "warn");
        assert!(
            json["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "clock source" && c["fix"].is_string())
        );
    }
}
