//! The doctor's fact gathering: reads `/proc` and `/sys` and makes one
//! `io_uring_setup` call, and nothing else.
//!
//! Invariants: it only reads (the io_uring it creates is closed at once),
//! needs no privilege, and never fails as a whole: a fact it cannot read is
//! left `None` (or empty) for [`super::evaluate`] to report. Its result
//! depends on the process it runs in (limits, capabilities, CPU affinity),
//! which is why the doctor should run as the service does.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::{Facts, Nic, parse_cpu_list, parse_cpu_mask, parse_limits, selected_word};

fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// A sysctl's value through `/proc/sys` (`net.core.somaxconn`).
fn sysctl(key: &str) -> Option<String> {
    read(Path::new("/proc/sys").join(key.replace('.', "/"))).map(|v| v.trim().to_owned())
}

/// A `Key:\tvalue` field of `/proc/self/status`.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// Tries `io_uring_setup(2)` with a two-entry ring and closes it.
fn io_uring_probe() -> Result<(), String> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    // `struct io_uring_params` is 120 bytes; zeroed asks for defaults.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes `params`, a live buffer of the
    // size the kernel expects, and takes no other pointer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            2u32,
            params.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let fd = i32::try_from(fd).map_err(|_| format!("io_uring_setup returned {fd}"))?;
    // SAFETY: the kernel just returned this descriptor, owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// The IRQs of a network device: its own MSI vectors, or its parent's (a
/// virtio NIC's vectors belong to the PCI function above it), without the
/// configuration vector.
fn nic_irqs(dev: &Path, interrupts: &str) -> Vec<(u32, Vec<usize>)> {
    let mut irqs: Vec<u32> = Vec::new();
    for dir in [dev.join("device/msi_irqs"), dev.join("device/../msi_irqs")] {
        if let Ok(entries) = fs::read_dir(&dir) {
            irqs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
            );
        }
        if !irqs.is_empty() {
            break;
        }
    }
    irqs.sort_unstable();
    irqs.retain(|irq| {
        let row = interrupts
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{irq}:")));
        !row.is_some_and(|l| l.trim_end().ends_with("-config"))
    });
    irqs.into_iter()
        .filter_map(|irq| {
            let cpus = parse_cpu_list(&read(format!("/proc/irq/{irq}/smp_affinity_list"))?)?;
            Some((irq, cpus))
        })
        .collect()
}

/// Network interfaces with a device behind them (not loopback, not
/// virtual ones such as bridges, veth or ifb).
fn nics() -> Vec<Nic> {
    let interrupts = read("/proc/interrupts").unwrap_or_default();
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dev = entry.path();
        if name == "lo" || !dev.join("device").exists() {
            continue;
        }
        let mut rps = Vec::new();
        if let Ok(queues) = fs::read_dir(dev.join("queues")) {
            for q in queues.filter_map(Result::ok) {
                let qname = q.file_name().to_string_lossy().into_owned();
                if !qname.starts_with("rx-") {
                    continue;
                }
                if let Some(cpus) = read(q.path().join("rps_cpus")).and_then(|m| parse_cpu_mask(&m))
                {
                    rps.push((qname, cpus));
                }
            }
        }
        rps.sort();
        out.push(Nic {
            irqs: nic_irqs(&dev, &interrupts),
            name,
            rps,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Reads every fact, with `keys` the sysctls to read.
pub fn gather(keys: &[String]) -> Facts {
    let status = read("/proc/self/status").unwrap_or_default();
    let limits = read("/proc/self/limits").unwrap_or_default();
    let sysctls: BTreeMap<String, Option<String>> =
        keys.iter().map(|k| (k.clone(), sysctl(k))).collect();
    let thp = "/sys/kernel/mm/transparent_hugepage";
    Facts {
        kernel_release: sysctl("kernel.osrelease"),
        io_uring_disabled: sysctl("kernel.io_uring_disabled").and_then(|v| v.parse().ok()),
        io_uring_probe: Some(io_uring_probe()),
        memlock: parse_limits(&limits, "Max locked memory"),
        nofile: parse_limits(&limits, "Max open files"),
        cap_eff: status_field(&status, "CapEff").and_then(|v| u64::from_str_radix(v, 16).ok()),
        euid: status_field(&status, "Uid")
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok()),
        thp_enabled: read(format!("{thp}/enabled")).and_then(|t| selected_word(&t)),
        thp_defrag: read(format!("{thp}/defrag")).and_then(|t| selected_word(&t)),
        sysctls,
        cpus: status_field(&status, "Cpus_allowed_list")
            .and_then(parse_cpu_list)
            .unwrap_or_default(),
        nics: nics(),
        clocksource: read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .map(|c| c.trim().to_owned()),
    }
}
