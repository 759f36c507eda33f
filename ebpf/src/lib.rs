//! ArqonBus connection steering: the SK_REUSEPORT program and its loader.
//!
//! This crate owns the eBPF program that picks, for every incoming TCP connection, which shard's
//! listener of the node's `SO_REUSEPORT` group receives it, and the user-space side that loads
//! it, attaches it and writes its maps. The program is C (`src/steer.bpf.c`), compiled by
//! `ebpf/build.sh` into the committed object `steer.bpf.o`, which is embedded here at build time:
//! building ArqonBus needs no BPF toolchain, and CI rebuilds the object and fails on any drift.
//!
//! Policies ([`Mode`]): the kernel hash (`Hash`), the shard with the fewest live connections
//! (`Balance`), the shard pinned on the CPU that handled the SYN (`Cpu`) and a client prefix
//! mapped to a shard (`Affinity`); the last two fall back to `Balance`. A drain mask keeps new
//! connections away from some shards in every mode while their listeners stay open and their
//! accept queues are served.
//!
//! Invariants:
//! - slot `i` of the socket map holds shard `i`'s listener; the shard count is the number of
//!   listeners given to [`Steering::attach`] (1 to [`MAX_SHARDS`]) and never changes;
//! - a shard's load, as the program sees it, is `placed[i] - base[i]` (wrapping, read as signed,
//!   at least 0): the program adds one to `placed[i]` for every connection it sends to shard `i`,
//!   and [`Steering::set_live`] moves `base[i]` so that the difference is the shard's live
//!   connections;
//! - when the program cannot choose (an empty slot, every shard drained) the kernel hash
//!   decides: a connection is never dropped by the program;
//! - dropping [`Steering`] detaches the program from the group, so a data plane restarted in the
//!   same process starts from the kernel hash, unless [`Steering::forget_group`] gave the group
//!   to another process's program (an upgrade hand-over).
//!
//! What it is not: it knows nothing of tenants, sessions or the data plane's types (plain
//! integers and addresses only), runs no async runtime and takes no lock; the data plane keeps
//! one [`Steering`] behind its own mutex. Loading needs `CAP_BPF` (or root); without it
//! [`Steering::attach`] fails with [`SteerError::Load`] and
//! [`SteerError::is_permission_denied`] is true, and the caller keeps the kernel hash.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, MapError, PerCpuArray, ReusePortSockArray};
use aya::programs::{ProgramError, SkReuseport};
use aya::{Ebpf, EbpfError};
use thiserror::Error;

/// The compiled program (built by `ebpf/build.sh` from `src/steer.bpf.c`), 8-byte aligned as the
/// ELF parser requires.
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!("../steer.bpf.o");

/// Name of the program function in `steer.bpf.c`.
const PROGRAM: &str = "steer_connection";

/// Most shards (listeners) one group can have: the socket map's size and the drain mask's width.
pub const MAX_SHARDS: u32 = 64;
/// Size of the CPU → shard map: CPUs numbered from this on cannot be pinned.
pub const MAX_CPUS: u32 = 1024;
/// Most affinity rules (the LPM map's size).
pub const MAX_AFFINITY_RULES: usize = 4096;
/// The cpu map's value for "no shard pinned on this CPU".
const NO_SHARD: u32 = u32::MAX;

/// Steering policy, as the program reads it from its `settings` map.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The kernel's hash of the connection's addresses and ports; drained shards are skipped
    /// (the program then picks among the others by the same hash).
    Hash = 0,
    /// The non-drained shard with the smallest load (ties to the lowest shard).
    Balance = 1,
    /// The shard pinned on the CPU that handled the SYN ([`Steering::set_cpus`]), else `Balance`.
    Cpu = 2,
    /// The shard of the longest affinity prefix matching the client's address
    /// ([`Steering::set_affinity`]), else `Balance`.
    Affinity = 3,
}

/// The program's counters, summed over CPUs, since [`Steering::attach`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections the program handed to the listener it chose.
    pub selected: u64,
    /// Choices that failed because the chosen slot had no socket (or a socket of another group):
    /// the kernel hash placed those connections.
    pub fallback_no_socket: u64,
    /// Connections that arrived while every shard was drained: the kernel hash placed them.
    pub fallback_all_drained: u64,
    /// Connections placed by an affinity rule.
    pub affinity_hits: u64,
    /// Connections placed by the CPU map.
    pub cpu_hits: u64,
}

/// Why the program could not be loaded (the source of [`SteerError::Load`]).
#[derive(Debug, Error)]
pub enum LoadFailure {
    /// Parsing the embedded object or creating its maps failed; without `CAP_BPF` this is
    /// `EPERM` at map creation.
    #[error(transparent)]
    Object(#[from] EbpfError),
    /// The kernel refused the program (the message carries the verifier's log), or the program
    /// is not an SK_REUSEPORT program.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The embedded object lacks a program or map this loader expects (a build mistake).
    #[error("the embedded object has no `{0}`")]
    Missing(&'static str),
}

/// Errors of the steering loader. Each says whether the host, the caller or a map failed.
#[derive(Debug, Error)]
pub enum SteerError {
    /// The program could not be loaded: no `CAP_BPF` (`EPERM`, see
    /// [`SteerError::is_permission_denied`]), the verifier rejected it, or the kernel lacks
    /// SK_REUSEPORT programs. A property of the host: retrying does not help; the caller keeps
    /// the kernel hash. The message includes the causes (and the verifier's log, if any).
    #[error("loading the steering program: {}", chain(.0))]
    Load(#[source] LoadFailure),
    /// Reading or writing one of the program's maps failed (for the socket map: the descriptor
    /// is not a bound or listening `SO_REUSEPORT` TCP socket).
    #[error("steering map `{map}`: {source}")]
    Map {
        /// The map's name in `steer.bpf.c`.
        map: &'static str,
        /// aya's error (it carries the syscall's `io::Error`).
        #[source]
        source: MapError,
    },
    /// Attaching the program to the listeners' group failed (the socket is not `SO_REUSEPORT`),
    /// or a listener could not be identified (`SO_COOKIE`).
    #[error("attaching the steering program to the SO_REUSEPORT group: {0}")]
    Attach(#[source] io::Error),
    /// More affinity rules than the map holds ([`MAX_AFFINITY_RULES`]). Caller error.
    #[error("{count} affinity rules; the map holds at most {MAX_AFFINITY_RULES}")]
    TooManyRules {
        /// The number of rules given.
        count: usize,
    },
    /// A shard index at or beyond the group's shard count. Caller error.
    #[error("shard {shard} does not exist (the group has {shards} shards)")]
    NoSuchShard {
        /// The shard named.
        shard: u32,
        /// The group's shard count.
        shards: u32,
    },
    /// A CPU number at or beyond the CPU map's size ([`MAX_CPUS`]). Caller error.
    #[error("cpu {cpu} is beyond the cpu map ({MAX_CPUS} CPUs)")]
    NoSuchCpu {
        /// The CPU named.
        cpu: u32,
    },
    /// An affinity prefix longer than 128 bits. Caller error.
    #[error("affinity prefix length {len} is over 128")]
    PrefixLength {
        /// The length given.
        len: u8,
    },
    /// [`Steering::attach`] was given no listener or more than [`MAX_SHARDS`]. Caller error.
    #[error("{count} listeners: steering takes 1 to {MAX_SHARDS}")]
    ShardCount {
        /// The number of listeners given.
        count: usize,
    },
}

impl SteerError {
    /// True when the kernel refused for lack of privilege (`EPERM`/`EACCES` anywhere in the
    /// causes): the process needs `CAP_BPF` (and `CAP_NET_ADMIN` on some kernels) or root.
    pub fn is_permission_denied(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<io::Error>()
                && io.kind() == io::ErrorKind::PermissionDenied
            {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

/// The error and its causes on one line.
fn chain(error: &LoadFailure) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.contains(&next_text) {
            text.push_str(": ");
            text.push_str(&next_text);
        }
        cause = next.source();
    }
    text
}

/// The `settings` map's one value; layout shared with `struct settings` in `steer.bpf.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    mode: u32,
    shards: u32,
    draining: u64,
}

// SAFETY: `Settings` is `repr(C)`, `Copy`, holds only integers and has no padding
// (4 + 4 + 8 bytes, 8-aligned), so every byte pattern is a valid value and its bytes are
// fully initialised.
unsafe impl aya::Pod for Settings {}

/// One listener of the group as given to [`Steering`]: its descriptor number and its socket
/// cookie, so that `Drop` can tell whether the number still names the same socket.
#[derive(Debug, Clone, Copy)]
struct Member {
    fd: RawFd,
    cookie: u64,
}

/// An affinity rule's key, canonical (host bits cleared).
type Prefix = ([u8; 16], u8);

/// The steering program loaded, attached to one `SO_REUSEPORT` group, and its maps.
///
/// Not `Sync`: the data plane keeps it behind a mutex. Dropping it detaches the program from
/// the group.
pub struct Steering {
    /// Keeps the program (and the object's bookkeeping) loaded.
    ebpf: Ebpf,
    socks: ReusePortSockArray<MapData>,
    settings: Array<MapData, Settings>,
    placed: Array<MapData, u64>,
    base: Array<MapData, u64>,
    cpu_shard: Array<MapData, u32>,
    affinity: LpmTrie<MapData, [u8; 16], u32>,
    counters: PerCpuArray<MapData, u64>,
    /// What `settings` holds.
    current: Settings,
    /// What `cpu_shard` holds, index = CPU.
    cpus: Vec<u32>,
    /// What `affinity` holds.
    rules: HashMap<Prefix, u32>,
    /// Slot i's listener, for `Drop`.
    members: Vec<Member>,
}

impl fmt::Debug for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steering")
            .field("settings", &self.current)
            .field("affinity_rules", &self.rules.len())
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, SteerError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(SteerError::Load(LoadFailure::Missing(name)))?;
    T::try_from(map).map_err(|source| SteerError::Map { map: name, source })
}

fn map_error(map: &'static str) -> impl FnOnce(MapError) -> SteerError {
    move |source| SteerError::Map { map, source }
}

/// The socket's cookie: a number unique to the socket for the life of the host.
fn socket_cookie(fd: RawFd) -> io::Result<u64> {
    const SO_COOKIE: libc::c_int = 57; // asm-generic; same on x86_64 and aarch64
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes for the duration of the call and `len`
    // is `cookie`'s size; an invalid `fd` makes the call fail, nothing else.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Why attaching failed: the socket option's own error when there is one.
fn attach_error(e: ProgramError) -> SteerError {
    match e {
        ProgramError::SkReuseportError(aya::programs::SkReuseportError::SetsockoptError {
            io_error,
            ..
        }) => SteerError::Attach(io_error),
        other => SteerError::Attach(io::Error::other(other)),
    }
}

/// The steering program in `ebpf`.
fn program(ebpf: &mut Ebpf) -> Result<&mut SkReuseport, SteerError> {
    ebpf.program_mut(PROGRAM)
        .ok_or(SteerError::Load(LoadFailure::Missing(PROGRAM)))?
        .try_into()
        .map_err(|e: ProgramError| SteerError::Load(e.into()))
}

/// Detaches whatever program the group of `fd` has.
fn detach_group(fd: RawFd) -> io::Result<()> {
    const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68; // asm-generic; same on x86_64 and aarch64
    let unused: libc::c_int = 0;
    // SAFETY: the option value points to a live `c_int` of the size given; the kernel only
    // reads it. An invalid `fd` makes the call fail.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_DETACH_REUSEPORT_BPF,
            std::ptr::from_ref(&unused).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `addr/len` with the bits after the prefix cleared.
fn canonical(addr: Ipv6Addr, len: u8) -> Prefix {
    let bits = u128::from(addr);
    let masked = if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(len)))
    };
    (masked.to_be_bytes(), len)
}

impl Steering {
    /// Loads the embedded program, puts `listeners[i]` in slot `i` (shard `i`), sets `mode`
    /// and the shard count (`listeners.len()`), and attaches the program to the listeners'
    /// `SO_REUSEPORT` group (through `listeners[0]`). Nothing is drained, no CPU is pinned, no
    /// affinity rule is set and every shard's load starts at 0.
    ///
    /// The listeners must be listening TCP sockets of one `SO_REUSEPORT` group (the kernel
    /// puts a TCP socket in its group at `listen`). If the group already has a program (another
    /// `Steering` still alive), this one replaces it, and whichever is dropped first detaches
    /// the group's program: keep one `Steering` per group.
    pub fn attach(listeners: &[BorrowedFd<'_>], mode: Mode) -> Result<Self, SteerError> {
        let count = listeners.len();
        let Some(first) = listeners.first() else {
            return Err(SteerError::ShardCount { count });
        };
        let shards = u32::try_from(count)
            .ok()
            .filter(|&n| n <= MAX_SHARDS)
            .ok_or(SteerError::ShardCount { count })?;

        let mut ebpf = Ebpf::load(PROGRAM_OBJECT).map_err(|e| SteerError::Load(e.into()))?;
        let mut steering = Self {
            socks: take(&mut ebpf, "socks")?,
            settings: take(&mut ebpf, "settings")?,
            placed: take(&mut ebpf, "placed")?,
            base: take(&mut ebpf, "base")?,
            cpu_shard: take(&mut ebpf, "cpu_shard")?,
            affinity: take(&mut ebpf, "affinity")?,
            counters: take(&mut ebpf, "counters")?,
            current: Settings {
                mode: mode as u32,
                shards,
                draining: 0,
            },
            cpus: vec![NO_SHARD; MAX_CPUS as usize],
            rules: HashMap::new(),
            members: Vec::with_capacity(count),
            ebpf,
        };

        for cpu in 0..MAX_CPUS {
            steering
                .cpu_shard
                .set(cpu, NO_SHARD, 0)
                .map_err(map_error("cpu_shard"))?;
        }
        steering
            .settings
            .set(0, steering.current, 0)
            .map_err(map_error("settings"))?;
        for (slot, listener) in (0..shards).zip(listeners) {
            let fd = listener.as_raw_fd();
            let cookie = socket_cookie(fd).map_err(SteerError::Attach)?;
            steering
                .socks
                .set(slot, &fd, 0)
                .map_err(map_error("socks"))?;
            steering.members.push(Member { fd, cookie });
        }

        let program = program(&mut steering.ebpf)?;
        program
            .load()
            .map_err(|e| SteerError::Load(LoadFailure::Program(e)))?;
        program.attach(first).map_err(attach_error)?;
        Ok(steering)
    }

    /// Attaches the program to the group again, through the first listener that is still the
    /// socket it was: after another process's program replaced it and was detached (an upgrade
    /// hand-over that failed), the group steers by these maps again.
    pub fn reattach(&mut self) -> Result<(), SteerError> {
        let Some(member) = self.live_members().next() else {
            return Err(SteerError::Attach(io::Error::from(io::ErrorKind::NotFound)));
        };
        let program = program(&mut self.ebpf)?;
        // SAFETY: `member.fd` is open and still the socket it was (same cookie, checked just
        // above); the borrow ends with this call.
        let fd = unsafe { BorrowedFd::borrow_raw(member.fd) };
        program.attach(fd).map_err(attach_error)
    }

    /// The listeners given to [`Steering::attach`] that are still the sockets they were
    /// (same cookie): the group can be reached through any of them.
    fn live_members(&self) -> impl Iterator<Item = Member> + '_ {
        self.members
            .iter()
            .filter(|m| socket_cookie(m.fd).is_ok_and(|c| c == m.cookie))
            .copied()
    }

    /// Gives the group up: another process's program steers it now (an upgrade hand-over),
    /// so dropping this one must not detach that program.
    pub fn forget_group(&mut self) {
        self.members.clear();
    }

    /// The group's shard count (the number of listeners given to [`Steering::attach`]).
    pub fn shards(&self) -> u32 {
        self.current.shards
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        match self.current.mode {
            0 => Mode::Hash,
            2 => Mode::Cpu,
            3 => Mode::Affinity,
            _ => Mode::Balance,
        }
    }

    fn check_shard(&self, shard: u32) -> Result<(), SteerError> {
        if shard < self.current.shards {
            Ok(())
        } else {
            Err(SteerError::NoSuchShard {
                shard,
                shards: self.current.shards,
            })
        }
    }

    fn write_settings(&mut self, next: Settings) -> Result<(), SteerError> {
        self.settings
            .set(0, next, 0)
            .map_err(map_error("settings"))?;
        self.current = next;
        Ok(())
    }

    /// Switches the policy for connections arriving from now on.
    pub fn set_mode(&mut self, mode: Mode) -> Result<(), SteerError> {
        self.write_settings(Settings {
            mode: mode as u32,
            ..self.current
        })
    }

    /// Sets which shards are drained (bit `i` = shard `i`): they receive no new connection in
    /// any mode while their listeners stay open. `0` resumes them all. A bit at or beyond the
    /// shard count is [`SteerError::NoSuchShard`].
    pub fn set_draining(&mut self, mask: u64) -> Result<(), SteerError> {
        let shards = self.current.shards;
        if shards < MAX_SHARDS && mask >> shards != 0 {
            return Err(SteerError::NoSuchShard {
                shard: shards + (mask >> shards).trailing_zeros(),
                shards,
            });
        }
        self.write_settings(Settings {
            draining: mask,
            ..self.current
        })
    }

    /// Replaces the CPU → shard map: each `(cpu, shard)` pins `shard` on `cpu`; CPUs not named
    /// have none. Validated before anything is written.
    pub fn set_cpus(&mut self, cpu_to_shard: &[(u32, u32)]) -> Result<(), SteerError> {
        let mut next = vec![NO_SHARD; MAX_CPUS as usize];
        for &(cpu, shard) in cpu_to_shard {
            self.check_shard(shard)?;
            let slot = next
                .get_mut(cpu as usize)
                .ok_or(SteerError::NoSuchCpu { cpu })?;
            *slot = shard;
        }
        for (cpu, (&want, have)) in (0..MAX_CPUS).zip(next.iter().zip(self.cpus.iter_mut())) {
            if want != *have {
                self.cpu_shard
                    .set(cpu, want, 0)
                    .map_err(map_error("cpu_shard"))?;
                *have = want;
            }
        }
        Ok(())
    }

    /// Replaces every affinity rule: `(network, len, shard)` sends clients whose address falls
    /// in `network/len` (over 128 bits; IPv4 as `::ffff:a.b.c.d`, length 96 + n) to `shard`,
    /// the longest matching prefix winning. Validated before anything is written; a prefix in
    /// both the old and new rules is overwritten in place, never removed in between.
    pub fn set_affinity(&mut self, rules: &[(Ipv6Addr, u8, u32)]) -> Result<(), SteerError> {
        if rules.len() > MAX_AFFINITY_RULES {
            return Err(SteerError::TooManyRules { count: rules.len() });
        }
        let mut next: HashMap<Prefix, u32> = HashMap::with_capacity(rules.len());
        for &(network, len, shard) in rules {
            if len > 128 {
                return Err(SteerError::PrefixLength { len });
            }
            self.check_shard(shard)?;
            next.insert(canonical(network, len), shard);
        }
        let stale: Vec<Prefix> = self
            .rules
            .keys()
            .filter(|prefix| !next.contains_key(*prefix))
            .copied()
            .collect();
        // Old and new together may not fit: then remove the stale ones first.
        let stale_first = next.len() + stale.len() > MAX_AFFINITY_RULES;
        if stale_first {
            self.remove_rules(&stale)?;
        }
        for (&(addr, len), &shard) in &next {
            if self.rules.get(&(addr, len)) != Some(&shard) {
                self.affinity
                    .insert(&Key::new(u32::from(len), addr), shard, 0)
                    .map_err(map_error("affinity"))?;
                self.rules.insert((addr, len), shard);
            }
        }
        if !stale_first {
            self.remove_rules(&stale)?;
        }
        Ok(())
    }

    fn remove_rules(&mut self, prefixes: &[Prefix]) -> Result<(), SteerError> {
        for &(addr, len) in prefixes {
            self.affinity
                .remove(&Key::new(u32::from(len), addr))
                .map_err(map_error("affinity"))?;
            self.rules.remove(&(addr, len));
        }
        Ok(())
    }

    /// Puts `listener` in `shard`'s slot, e.g. after the shard re-created its listener (a new
    /// socket joins the group but is not in the map until it is put back). The shard's load
    /// is unchanged.
    pub fn replace_socket(
        &mut self,
        shard: u32,
        listener: BorrowedFd<'_>,
    ) -> Result<(), SteerError> {
        self.check_shard(shard)?;
        let fd = listener.as_raw_fd();
        let cookie = socket_cookie(fd).map_err(SteerError::Attach)?;
        self.socks.set(shard, &fd, 0).map_err(map_error("socks"))?;
        if let Some(member) = self.members.get_mut(shard as usize) {
            *member = Member { fd, cookie };
        }
        Ok(())
    }

    /// Connections the program sent to `shard` so far.
    pub fn placed(&self, shard: u32) -> Result<u64, SteerError> {
        self.check_shard(shard)?;
        self.placed.get(&shard, 0).map_err(map_error("placed"))
    }

    /// Sets the shard's load to `live` (its open connections plus its accept queue):
    /// `base = placed - live`. A connection the program places between the read and the write
    /// is forgotten until the next call; the data plane calls this as its counts change.
    pub fn set_live(&mut self, shard: u32, live: u64) -> Result<(), SteerError> {
        let placed = self.placed(shard)?;
        self.base
            .set(shard, placed.wrapping_sub(live), 0)
            .map_err(map_error("base"))
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, SteerError> {
        let read = |index: u32| -> Result<u64, SteerError> {
            let values = self
                .counters
                .get(&index, 0)
                .map_err(map_error("counters"))?;
            Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
        };
        Ok(Counters {
            selected: read(0)?,
            fallback_no_socket: read(1)?,
            fallback_all_drained: read(2)?,
            affinity_hits: read(3)?,
            cpu_hits: read(4)?,
        })
    }
}

impl Drop for Steering {
    /// Detaches the program from the group through the first listener that is still the
    /// socket it was (same cookie). If none is, the group is gone or no longer ours: nothing
    /// to detach.
    fn drop(&mut self) {
        for member in self.live_members() {
            if detach_group(member.fd).is_ok() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_layout_matches_the_program() {
        assert_eq!(size_of::<Settings>(), 16);
        assert_eq!(std::mem::offset_of!(Settings, draining), 8);
    }

    #[test]
    fn canonical_prefix_clears_host_bits() {
        let addr: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        let (bytes, len) = canonical(addr, 96 + 8);
        assert_eq!(len, 104);
        assert_eq!(
            Ipv6Addr::from(bytes),
            "::ffff:10.0.0.0".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(canonical(addr, 0).0, [0; 16]);
        assert_eq!(canonical(addr, 128).0, addr.octets());
    }

    #[test]
    fn the_object_is_embedded_aligned() {
        assert_eq!(PROGRAM_OBJECT.as_ptr() as usize % 8, 0);
        assert_eq!(&PROGRAM_OBJECT[..4], b"\x7fELF");
    }

    #[test]
    fn steering_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Steering>();
        send::<SteerError>();
    }

    #[test]
    fn attach_without_listeners_is_a_shard_count_error() {
        assert!(matches!(
            Steering::attach(&[], Mode::Balance),
            Err(SteerError::ShardCount { count: 0 })
        ));
    }
}
