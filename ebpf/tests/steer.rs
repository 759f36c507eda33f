//! The steering program on real sockets: each policy, drain, fallbacks, errors and detach.
//!
//! Every test builds its own `SO_REUSEPORT` group of listeners on a loopback address and port
//! 0, attaches the real program and counts which listener accepts each connection. Loading
//! needs `CAP_BPF`: without it each test prints `SKIPPED: needs CAP_BPF (run as root)` to
//! stderr and returns (CI runs as root), except `without_cap_bpf_attach_is_a_permission_error`,
//! which checks that very refusal. Accepts are bounded: nonblocking listeners and `poll` with a
//! timeout, no sleeps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: the helpers fail the test"
)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};

use arqonbus_ebpf::{MAX_AFFINITY_RULES, MAX_SHARDS, Mode, SteerError, Steering};
use socket2::{Domain, Protocol, Socket, Type};

const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// `n` listeners of one `SO_REUSEPORT` group on `ip`, port chosen by the kernel.
struct Group {
    listeners: Vec<TcpListener>,
    addr: SocketAddr,
}

impl Group {
    fn new(n: usize, ip: IpAddr) -> io::Result<Self> {
        let first = reuseport_listener(SocketAddr::new(ip, 0))?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(reuseport_listener(addr)?);
        }
        Ok(Self { listeners, addr })
    }

    fn v4(n: usize) -> Self {
        Self::new(n, LOCALHOST).expect("listeners on 127.0.0.1")
    }

    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.listeners.iter().map(AsFd::as_fd).collect()
    }

    /// Connects (from `from`, if given) and returns the index of the listener that accepted.
    fn place(&self, from: Option<IpAddr>) -> usize {
        let _client = connect(self.addr, from);
        let all: Vec<usize> = (0..self.listeners.len()).collect();
        let (index, _server) = self
            .accept_from(&all, ACCEPT_TIMEOUT)
            .expect("a listener accepts the connection");
        index
    }

    /// `count` connections; how many each listener accepted.
    fn spread(&self, count: usize, from: Option<IpAddr>) -> Vec<usize> {
        let mut per_listener = vec![0; self.listeners.len()];
        for _ in 0..count {
            per_listener[self.place(from)] += 1;
        }
        per_listener
    }

    /// Accepts one connection from any of the listeners `which`, waiting at most `timeout`.
    fn accept_from(&self, which: &[usize], timeout: Duration) -> Option<(usize, TcpStream)> {
        let deadline = Instant::now() + timeout;
        loop {
            for &i in which {
                match self.listeners[i].accept() {
                    Ok((stream, _)) => return Some((i, stream)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("accept on listener {i}: {e}"),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds: Vec<libc::pollfd> = which
                .iter()
                .map(|&i| libc::pollfd {
                    fd: self.listeners[i].as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a live, writable array of `fds.len()` pollfd structs.
            let rc = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    left.as_millis().min(60_000) as libc::c_int,
                )
            };
            assert!(rc >= 0, "poll: {}", io::Error::last_os_error());
        }
    }
}

fn connect(to: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))
        .expect("client socket");
    if let Some(ip) = from {
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .expect("bind the client's source address");
    }
    socket.connect(&to.into()).expect("connect");
    socket.into()
}

/// Attaches the program, or prints why the test is skipped (no CAP_BPF) and returns None.
fn attach_or_skip(group: &Group, mode: Mode) -> Option<Steering> {
    match Steering::attach(&group.fds(), mode) {
        Ok(steering) => Some(steering),
        Err(e) if e.is_permission_denied() => {
            eprintln!("SKIPPED: needs CAP_BPF (run as root): {e}");
            None
        }
        Err(e) => panic!("attach: {e}"),
    }
}

fn max_over_mean(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    let mean = total as f64 / counts.len() as f64;
    *counts.iter().max().expect("at least one shard") as f64 / mean
}

/// Pins the calling thread on one CPU for the guard's life.
struct Pinned {
    saved: libc::cpu_set_t,
}

impl Pinned {
    fn allowed() -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is plain bits; zeroed is a valid (empty) set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable cpu_set_t of the size given; 0 = this thread.
        let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
        assert_eq!(rc, 0, "sched_getaffinity: {}", io::Error::last_os_error());
        set
    }

    /// The CPUs this thread may run on.
    fn cpus() -> Vec<u32> {
        let set = Self::allowed();
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| {
                // SAFETY: `cpu` < CPU_SETSIZE, the set's size.
                unsafe { libc::CPU_ISSET(cpu, &set) }
            })
            .map(|cpu| cpu as u32)
            .collect()
    }

    fn on(cpu: u32) -> Self {
        let saved = Self::allowed();
        // SAFETY: as above.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        assert!((cpu as usize) < libc::CPU_SETSIZE as usize);
        // SAFETY: `cpu` < CPU_SETSIZE, the set's size.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size given; 0 = this thread.
        let rc =
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
        assert_eq!(rc, 0, "sched_setaffinity: {}", io::Error::last_os_error());
        Self { saved }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: `saved` is the valid set read before pinning.
        unsafe {
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const self.saved);
        }
    }
}

fn mapped(v4: Ipv4Addr) -> Ipv6Addr {
    v4.to_ipv6_mapped()
}

#[test]
fn balance_spreads_1000_connects_evenly_over_4_listeners() {
    let group = Group::v4(4);
    let Some(steering) = attach_or_skip(&group, Mode::Balance) else {
        return;
    };
    let counts = group.spread(1000, None);
    let ratio = max_over_mean(&counts);
    eprintln!("balance: 1000 connects per listener {counts:?}, max/mean {ratio:.3}");
    assert!(ratio <= 1.01, "max/mean {ratio} over 1.01: {counts:?}");
    for (shard, &count) in counts.iter().enumerate() {
        assert_eq!(steering.placed(shard as u32).unwrap(), count as u64);
    }
    let counters = steering.counters().unwrap();
    assert_eq!(counters.selected, 1000);
    assert_eq!(counters.fallback_no_socket, 0);
    assert_eq!(counters.fallback_all_drained, 0);
}

#[test]
fn a_drained_shard_gets_no_new_connection_and_still_serves_its_queue() {
    let group = Group::v4(3);
    let Some(mut steering) = attach_or_skip(&group, Mode::Balance) else {
        return;
    };
    // Equal loads: the first connection goes to shard 0 and waits in its accept queue.
    let mut queued_client = connect(group.addr, None);
    assert_eq!(steering.placed(0).unwrap(), 1);

    steering.set_draining(0b001).unwrap();
    let mut others = [0usize; 3];
    for _ in 0..40 {
        let _client = connect(group.addr, None);
        let (index, _server) = group
            .accept_from(&[1, 2], ACCEPT_TIMEOUT)
            .expect("a non-drained listener accepts");
        others[index] += 1;
    }
    assert_eq!(others, [0, 20, 20]);
    assert_eq!(
        steering.placed(0).unwrap(),
        1,
        "nothing new for the drained shard"
    );

    // The drained listener is still open and its queued connection is served.
    let (index, mut server) = group
        .accept_from(&[0], ACCEPT_TIMEOUT)
        .expect("the drained listener accepts its queued connection");
    assert_eq!(index, 0);
    queued_client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.set_nonblocking(false).unwrap();
    server.set_read_timeout(Some(ACCEPT_TIMEOUT)).unwrap();
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert!(
        group.accept_from(&[0], Duration::ZERO).is_none(),
        "exactly one connection was queued on the drained shard"
    );

    // Resume: shard 0 has the smallest load again.
    steering.set_draining(0).unwrap();
    assert_eq!(group.place(None), 0);
    let counters = steering.counters().unwrap();
    assert_eq!(counters.selected, 42);
    assert_eq!(
        counters.fallback_no_socket + counters.fallback_all_drained,
        0
    );
}

#[test]
fn hash_mode_uses_the_kernel_hash_and_skips_drained_shards() {
    let group = Group::v4(4);
    let Some(mut steering) = attach_or_skip(&group, Mode::Hash) else {
        return;
    };
    let plain = group.spread(200, None);
    eprintln!("hash, nothing drained: {plain:?}");
    assert!(plain.iter().filter(|&&n| n > 0).count() >= 2, "{plain:?}");
    assert_eq!(
        steering.counters().unwrap().selected,
        0,
        "nothing drained: the kernel's own hash decides"
    );

    steering.set_draining(0b0110).unwrap();
    let drained = group.spread(200, None);
    eprintln!("hash, shards 1 and 2 drained: {drained:?}");
    assert_eq!(drained[1] + drained[2], 0, "{drained:?}");
    assert!(drained[0] > 0 && drained[3] > 0, "{drained:?}");
    assert_eq!(steering.counters().unwrap().selected, 200);

    steering.set_draining(0b1111).unwrap();
    let all = group.spread(20, None);
    assert_eq!(
        all.iter().sum::<usize>(),
        20,
        "the kernel hash still places them"
    );
    let counters = steering.counters().unwrap();
    assert_eq!(counters.fallback_all_drained, 20);
    assert_eq!(counters.selected, 200);
}

#[test]
fn affinity_sends_a_client_prefix_to_its_shard_and_balances_the_rest() {
    let group = Group::v4(3);
    let Some(mut steering) = attach_or_skip(&group, Mode::Affinity) else {
        return;
    };
    let gateway = Ipv4Addr::new(127, 0, 0, 2);
    steering.set_affinity(&[(mapped(gateway), 128, 2)]).unwrap();
    assert_eq!(group.spread(20, Some(IpAddr::V4(gateway))), [0, 0, 20]);
    // Others balance: shards 0 and 1 catch up with shard 2's 20.
    assert_eq!(group.spread(30, None), [15, 15, 0]);
    assert_eq!(steering.counters().unwrap().affinity_hits, 20);

    // Longest prefix wins: 127.0.0.0/8 -> 1, 127.0.0.2/32 -> 2.
    steering
        .set_affinity(&[
            (mapped(Ipv4Addr::new(127, 0, 0, 0)), 96 + 8, 1),
            (mapped(gateway), 128, 2),
        ])
        .unwrap();
    assert_eq!(group.place(Some(IpAddr::V4(gateway))), 2);
    assert_eq!(
        group.place(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))),
        1
    );

    // A drained affinity shard falls back to balance (shard 0: 15 against 16 and 21).
    steering.set_draining(0b100).unwrap();
    assert_eq!(group.place(Some(IpAddr::V4(gateway))), 0);
    steering.set_draining(0).unwrap();

    // Replacing the rules removes the old ones.
    steering.set_affinity(&[]).unwrap();
    let before = steering.counters().unwrap().affinity_hits;
    group.spread(5, Some(IpAddr::V4(gateway)));
    assert_eq!(steering.counters().unwrap().affinity_hits, before);
}

#[test]
fn affinity_matches_ipv6_clients() {
    let Ok(group) = Group::new(2, IpAddr::V6(Ipv6Addr::LOCALHOST)) else {
        eprintln!("SKIPPED: no IPv6 loopback (::1) on this host");
        return;
    };
    let Some(mut steering) = attach_or_skip(&group, Mode::Affinity) else {
        return;
    };
    steering
        .set_affinity(&[(Ipv6Addr::LOCALHOST, 128, 1)])
        .unwrap();
    assert_eq!(group.spread(10, None), [0, 10]);
    assert_eq!(steering.counters().unwrap().affinity_hits, 10);
}

#[test]
fn cpu_mode_sends_connections_to_the_shard_pinned_on_the_syn_cpu() {
    let group = Group::v4(3);
    let Some(mut steering) = attach_or_skip(&group, Mode::Cpu) else {
        return;
    };
    let cpus = Pinned::cpus();
    let cpu = *cpus.last().expect("this thread may run somewhere");
    let _pinned = Pinned::on(cpu);
    steering.set_cpus(&[(cpu, 2)]).unwrap();
    assert_eq!(group.spread(20, None), [0, 0, 20]);
    assert_eq!(steering.counters().unwrap().cpu_hits, 20);

    // Drained: balance among the others.
    steering.set_draining(0b100).unwrap();
    assert_eq!(group.spread(20, None), [10, 10, 0]);
    steering.set_draining(0).unwrap();

    // A shard pinned on another CPU only: this CPU balances.
    if let Some(&other) = cpus.iter().find(|&&c| c != cpu) {
        steering.set_cpus(&[(other, 2)]).unwrap();
        assert_eq!(group.spread(20, None), [10, 10, 0]);
    } else {
        eprintln!("one CPU allowed: not checking a shard pinned on another CPU");
    }
    assert_eq!(steering.counters().unwrap().cpu_hits, 20);
}

#[test]
fn an_empty_slot_falls_back_to_the_kernel_hash_until_the_socket_is_put_back() {
    let mut group = Group::v4(3);
    let Some(mut steering) = attach_or_skip(&group, Mode::Balance) else {
        return;
    };
    // Closing shard 0's listener empties its slot; balance keeps choosing it (load 0).
    drop(group.listeners.remove(0));
    let counts = group.spread(10, None);
    assert_eq!(
        counts.iter().sum::<usize>(),
        10,
        "the kernel hash placed them all"
    );
    let counters = steering.counters().unwrap();
    assert_eq!(counters.fallback_no_socket, 10);
    assert_eq!(counters.selected, 0);
    assert_eq!(steering.placed(0).unwrap(), 0);

    // A new listener joins the group; once put back in slot 0 the program selects it again
    // (all loads are 0: one connection each, shard 0 first).
    let relisten = reuseport_listener(group.addr).unwrap();
    steering.replace_socket(0, relisten.as_fd()).unwrap();
    group.listeners.insert(0, relisten);
    assert_eq!(group.place(None), 0);
    assert_eq!(group.spread(2, None), [0, 1, 1]);
    let counters = steering.counters().unwrap();
    assert_eq!(counters.selected, 3);
    assert_eq!(counters.fallback_no_socket, 10);
}

#[test]
fn set_live_lowers_a_shards_load() {
    let group = Group::v4(2);
    let Some(mut steering) = attach_or_skip(&group, Mode::Balance) else {
        return;
    };
    assert_eq!(group.spread(10, None), [5, 5]);
    // Shard 0's five connections closed: its load is 0, so it gets the next five.
    steering.set_live(0, 0).unwrap();
    assert_eq!(group.spread(5, None), [5, 0]);
    assert_eq!(steering.placed(0).unwrap(), 10);
    // More live connections than the program placed (some came by the kernel hash).
    steering.set_live(0, 50).unwrap();
    assert_eq!(group.spread(4, None), [0, 4]);
    steering.set_live(1, 0).unwrap();
    assert_eq!(group.place(None), 1);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let too_many: Vec<TcpListener> = Group::v4(MAX_SHARDS as usize + 1).listeners;
    let fds: Vec<BorrowedFd<'_>> = too_many.iter().map(AsFd::as_fd).collect();
    assert!(matches!(
        Steering::attach(&fds, Mode::Balance),
        Err(SteerError::ShardCount { count: 65 })
    ));

    let group = Group::v4(2);
    let Some(mut steering) = attach_or_skip(&group, Mode::Balance) else {
        return;
    };
    let rule = |i: usize| (mapped(Ipv4Addr::from(0x0a00_0000 + i as u32)), 128u8, 0u32);
    let rules: Vec<_> = (0..=MAX_AFFINITY_RULES).map(rule).collect();
    assert!(matches!(
        steering.set_affinity(&rules),
        Err(SteerError::TooManyRules { count: 4097 })
    ));
    // A full map, then a full map of other prefixes (stale ones go first).
    steering.set_affinity(&rules[..MAX_AFFINITY_RULES]).unwrap();
    let others: Vec<_> = (MAX_AFFINITY_RULES..2 * MAX_AFFINITY_RULES)
        .map(rule)
        .collect();
    steering.set_affinity(&others).unwrap();

    let err = steering
        .set_affinity(&[(Ipv6Addr::LOCALHOST, 128, 2)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            SteerError::NoSuchShard {
                shard: 2,
                shards: 2
            }
        ),
        "{err}"
    );
    assert!(matches!(
        steering.set_affinity(&[(Ipv6Addr::LOCALHOST, 129, 0)]),
        Err(SteerError::PrefixLength { len: 129 })
    ));
    assert!(matches!(
        steering.set_cpus(&[(0, 5)]),
        Err(SteerError::NoSuchShard { shard: 5, .. })
    ));
    assert!(matches!(
        steering.set_cpus(&[(4096, 0)]),
        Err(SteerError::NoSuchCpu { cpu: 4096 })
    ));
    assert!(matches!(
        steering.set_live(2, 0),
        Err(SteerError::NoSuchShard { shard: 2, .. })
    ));
    assert!(matches!(
        steering.placed(7),
        Err(SteerError::NoSuchShard { shard: 7, .. })
    ));
    assert!(matches!(
        steering.replace_socket(2, group.listeners[0].as_fd()),
        Err(SteerError::NoSuchShard { shard: 2, .. })
    ));
    assert!(matches!(
        steering.set_draining(0b100),
        Err(SteerError::NoSuchShard { shard: 2, .. })
    ));
    // A descriptor that is not a listening socket.
    let client = connect(group.addr, None);
    let err = steering.replace_socket(1, client.as_fd()).unwrap_err();
    assert!(matches!(err, SteerError::Map { map: "socks", .. }), "{err}");
}

#[test]
fn dropping_steering_detaches_the_program_from_the_group() {
    let group = Group::v4(4);
    let Some(mut steering) = attach_or_skip(&group, Mode::Cpu) else {
        return;
    };
    let cpu = *Pinned::cpus().last().expect("an allowed CPU");
    let _pinned = Pinned::on(cpu);
    steering.set_cpus(&[(cpu, 3)]).unwrap();
    assert_eq!(group.spread(10, None), [0, 0, 0, 10]);

    drop(steering);
    let after = group.spread(40, None);
    eprintln!("after drop, kernel hash: {after:?}");
    assert!(after[3] < 40, "the program still steers: {after:?}");

    // A new attach on the same group starts clean.
    let steering = Steering::attach(&group.fds(), Mode::Balance).unwrap();
    assert_eq!(group.spread(4, None), [1, 1, 1, 1]);
    assert_eq!(steering.counters().unwrap().selected, 4);
}

/// Run as an unprivileged user (the test re-executes itself as `nobody` when it runs as root),
/// attach must fail with a load error that says "permission denied".
#[test]
fn without_cap_bpf_attach_is_a_permission_error() {
    const CHILD: &str = "ARQONBUS_EBPF_UNPRIVILEGED_CHILD";
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || std::env::var_os(CHILD).is_some() {
        let group = Group::v4(2);
        let err = Steering::attach(&group.fds(), Mode::Balance).unwrap_err();
        eprintln!("unprivileged attach: {err}");
        assert!(matches!(err, SteerError::Load(_)), "{err}");
        assert!(err.is_permission_denied(), "{err}");
        return;
    }
    // A copy of this test binary `nobody` can reach wherever the checkout
    // lives (a clone under a 0700 directory, as `mktemp -d` makes, is not).
    let dir =
        std::env::temp_dir().join(format!("arqonbus-ebpf-unprivileged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(
        &dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let exe = dir.join("steer");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(
        &exe,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let output = std::process::Command::new(&exe)
        .args([
            "--exact",
            "without_cap_bpf_attach_is_a_permission_error",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "unprivileged child failed:\n{stdout}\n{stderr}"
    );
    eprint!("{stderr}");
}
