//! Where connections go, at run time: the steering program and the tenants'
//! home shards.
//!
//! [`PlacementBook`] is shared by every shard and the operator handle. It is
//! touched on connect, authentication, close and the shard's tick, never per
//! message:
//! - `loads`: each shard's open connections, one padded slot per shard,
//!   written only by its shard (relaxed: a load is advice, not a limit);
//! - `homes`: the [`HomeTable`] (decisions in `arqonbus-core`), behind a lock
//!   taken once per authentication and once per close of a homed connection;
//! - `draining`: the drain mask, shared with the steering program;
//! - `steering`: the SK_REUSEPORT program, when it is attached, behind a
//!   lock (map updates are syscalls, made by the operator handle and by each
//!   shard on its tick).
//!
//! Without the program (no CAP_BPF, or it failed to load) the kernel's hash
//! places connections and drains fall back to closing the listener; homes
//! work the same either way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use arqonbus_core::placement::{
    HomeTable, Placed, Rehome, SteeringConfig, SteeringMode, TenantPlacement, least_loaded,
};
use arqonbus_core::{ShardId, TenantId};
use arqonbus_ebpf::{Mode, Steering};

/// One shard's open connections, on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

/// The steering program and what it was told.
#[derive(Debug)]
pub(crate) struct SteeringState {
    /// The program, when attached.
    pub(crate) program: Option<Steering>,
    /// Why it is not attached.
    pub(crate) fallback: Option<String>,
    /// The steering in force.
    pub(crate) config: SteeringConfig,
    /// Whether `config` came from the control API (else the node's file).
    pub(crate) from_api: bool,
}

/// Placement state shared by the shards (see the module docs).
#[derive(Debug)]
pub(crate) struct PlacementBook {
    loads: Box<[Slot]>,
    homes: Mutex<HomeTable>,
    draining: AtomicU64,
    steering: Mutex<SteeringState>,
    /// Map updates that failed (the program keeps its last values).
    map_errors: AtomicU64,
    /// Tenants moved off a hot shard.
    rehomed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (each
    // update is one call), so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The program's affinity rules for a steering configuration.
pub(crate) fn rules(cfg: &SteeringConfig) -> Vec<(std::net::Ipv6Addr, u8, u32)> {
    cfg.affinity
        .iter()
        .map(|r| (r.network, r.len, u32::from(r.shard.0)))
        .collect()
}

/// The program's mode for a steering mode.
pub(crate) fn mode(m: SteeringMode) -> Mode {
    match m {
        SteeringMode::Hash => Mode::Hash,
        SteeringMode::Balance => Mode::Balance,
        SteeringMode::Cpu => Mode::Cpu,
        SteeringMode::Affinity => Mode::Affinity,
    }
}

impl PlacementBook {
    pub(crate) fn new(shards: usize, steering: SteeringState) -> Self {
        Self {
            loads: (0..shards).map(|_| Slot::default()).collect(),
            homes: Mutex::new(HomeTable::new()),
            draining: AtomicU64::new(0),
            steering: Mutex::new(steering),
            map_errors: AtomicU64::new(0),
            rehomed: AtomicU64::new(0),
        }
    }

    /// Every shard's open connections, now.
    fn loads(&self) -> smallvec::SmallVec<[u64; 16]> {
        self.loads
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .collect()
    }

    /// Where a connection of `tenant`, authenticated on `current`, belongs
    /// (counted there from now on).
    pub(crate) fn place(
        &self,
        tenant: TenantId,
        placement: TenantPlacement,
        current: ShardId,
    ) -> Placed {
        if self.loads.len() < 2 {
            return Placed::Stay;
        }
        let draining = self.draining.load(Ordering::Relaxed);
        let drained_here = draining & (1u64 << (current.index() & 63)) != 0;
        if placement == TenantPlacement::Spread && !drained_here {
            return Placed::Stay;
        }
        let loads = self.loads();
        if placement == TenantPlacement::Spread {
            // Accepted from a drained shard's queue: any other shard will do.
            let to = least_loaded(&loads, draining, current);
            return if to == current {
                Placed::Stay
            } else {
                Placed::MoveTo(to)
            };
        }
        lock(&self.homes).place(tenant, placement, current, &loads, draining)
    }

    /// Moves one tenant off a shard that runs hot (`HomeTable::rebalance`),
    /// if one does; the caller asks its connections there to reconnect.
    pub(crate) fn rebalance(&self, min_gap: u64) -> Option<Rehome> {
        if self.loads.len() < 2 {
            return None;
        }
        let loads = self.loads();
        let draining = self.draining.load(Ordering::Relaxed);
        let moved = lock(&self.homes).rebalance(&loads, draining, min_gap);
        if moved.is_some() {
            self.rehomed.fetch_add(1, Ordering::Relaxed);
        }
        moved
    }

    /// Tenants moved off a hot shard so far.
    pub(crate) fn rehomed(&self) -> u64 {
        self.rehomed.load(Ordering::Relaxed)
    }

    /// A connection of `tenant` on `shard` closed.
    pub(crate) fn closed(&self, tenant: TenantId, shard: ShardId) {
        if self.loads.len() >= 2 {
            lock(&self.homes).closed(tenant, shard);
        }
    }

    /// Shard `shard` now has `open` connections.
    pub(crate) fn set_open(&self, shard: ShardId, open: usize) {
        if let Some(s) = self.loads.get(shard.index()) {
            s.0.store(open as u64, Ordering::Relaxed);
        }
    }

    /// Marks a shard drained or not; true when the program now steers new
    /// connections away from it (else the caller closes its listener).
    pub(crate) fn set_draining(&self, shard: ShardId, draining: bool) -> bool {
        let bit = 1u64 << (shard.index() & 63);
        let mask = if draining {
            self.draining.fetch_or(bit, Ordering::Relaxed) | bit
        } else {
            self.draining.fetch_and(!bit, Ordering::Relaxed) & !bit
        };
        let mut st = lock(&self.steering);
        let Some(program) = st.program.as_mut() else {
            return false;
        };
        match program.set_draining(mask) {
            Ok(()) => true,
            Err(e) => {
                self.map_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, shard = %shard, "steering: cannot set the drain mask");
                false
            }
        }
    }

    /// The shard's tick: tells the program its load (open connections plus
    /// its accept queue), which also forgets connections the program
    /// counted that never completed.
    pub(crate) fn report_live(&self, shard: ShardId, live: u64) {
        let mut st = lock(&self.steering);
        if let Some(program) = st.program.as_mut()
            && let Err(e) = program.set_live(u32::from(shard.0), live)
        {
            self.map_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, shard = %shard, "steering: cannot set the load");
        }
    }

    /// Puts a re-bound listener back in the program's socket map.
    pub(crate) fn replace_socket(&self, shard: ShardId, fd: std::os::fd::BorrowedFd<'_>) {
        let mut st = lock(&self.steering);
        if let Some(program) = st.program.as_mut()
            && let Err(e) = program.replace_socket(u32::from(shard.0), fd)
        {
            self.map_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, shard = %shard, "steering: cannot replace the listener");
        }
    }

    /// Gives the listener group to another process's program (an upgrade
    /// hand-over): ours is dropped without detaching theirs, and placement
    /// falls back to what that program decides.
    pub(crate) fn release_steering(&self) {
        let mut st = lock(&self.steering);
        if let Some(mut program) = st.program.take() {
            program.forget_group();
            st.fallback = Some("handed over to another process".into());
        }
    }

    /// Attaches our program to the group again (a failed hand-over).
    pub(crate) fn reattach_steering(&self) {
        let mut st = lock(&self.steering);
        if let Some(program) = st.program.as_mut() {
            match program.reattach() {
                Ok(()) => tracing::info!("steering program attached again"),
                Err(e) => {
                    self.map_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "steering: cannot attach the program again; the kernel's hash places connections");
                }
            }
        }
    }

    /// The steering state, locked (the operator handle reads and updates it).
    pub(crate) fn steering(&self) -> MutexGuard<'_, SteeringState> {
        lock(&self.steering)
    }

    /// Map updates that failed so far.
    pub(crate) fn map_errors(&self) -> u64 {
        self.map_errors.load(Ordering::Relaxed)
    }

    /// Counts a failed map update made by the operator handle.
    pub(crate) fn count_map_error(&self) {
        self.map_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The drain mask.
    pub(crate) fn draining(&self) -> u64 {
        self.draining.load(Ordering::Relaxed)
    }
}
