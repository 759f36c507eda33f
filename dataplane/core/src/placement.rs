//! Placement: which shard a connection belongs on.
//!
//! Two decisions place a connection, both made here without I/O or a clock:
//! - **Steering**, at SYN time, by the kernel running our SK_REUSEPORT
//!   program (`arqonbus-ebpf`): a [`SteeringMode`] picks the listener, a
//!   drained shard is skipped, and [`AffinityRule`]s map client prefixes to
//!   shards. The program cannot know a tenant.
//! - **Tenant home**, after authentication: a tenant whose
//!   [`TenantPlacement`] is `Home` (the default) or `Pinned` has one home
//!   shard, and a connection authenticated elsewhere is handed to it before
//!   its `Welcome`, so a small tenant's traffic never crosses cores.
//!   [`HomeTable`] keeps the homes: sticky while the tenant has connections,
//!   chosen least-loaded (among shards not drained) when it has none, and
//!   moved off a shard that runs hot ([`HomeTable::rebalance`]): the whole
//!   tenant gets a new home and its connections there are asked to
//!   reconnect, so it is never split.
//!
//! Invariants: a shard index is always checked against the node's shard
//! count before it is used; a connection is moved at most once.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use rustc_hash::FxHashMap;

use crate::ids::{ShardId, TenantId};

/// How the SK_REUSEPORT program picks a shard for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SteeringMode {
    /// The kernel's 4-tuple hash (what happens without the program).
    Hash,
    /// The shard with the fewest live connections.
    #[default]
    Balance,
    /// The shard pinned on the CPU that handled the SYN (NIC queues and
    /// IRQs aligned with the shards); `Balance` when that CPU has none.
    Cpu,
    /// The shard an [`AffinityRule`] maps the client's address to;
    /// `Balance` when no rule matches.
    Affinity,
}

impl SteeringMode {
    /// Every mode, in wire order.
    pub const ALL: [Self; 4] = [Self::Hash, Self::Balance, Self::Cpu, Self::Affinity];

    /// The configuration and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hash => "hash",
            Self::Balance => "balance",
            Self::Cpu => "cpu",
            Self::Affinity => "affinity",
        }
    }
}

impl fmt::Display for SteeringMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a placement setting was refused. Each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Not one of `hash`, `balance`, `cpu`, `affinity`.
    #[error("steering.mode: unknown mode {0:?} (hash, balance, cpu or affinity)")]
    UnknownMode(String),
    /// Not `home`, `spread` or `shard:N`.
    #[error("placement: unknown placement {0:?} (home, spread or shard:N)")]
    UnknownPlacement(String),
    /// A shard index the node does not have.
    #[error("{field}: shard {shard} does not exist (this node has {shards})")]
    NoSuchShard {
        /// The field that named it.
        field: &'static str,
        /// The shard named.
        shard: u32,
        /// The node's shard count.
        shards: usize,
    },
    /// Not `ADDRESS/LEN` with a valid address and length.
    #[error("affinity.prefix: {0:?} is not an address/length prefix")]
    BadPrefix(String),
    /// More rules than the program's map holds.
    #[error("affinity: {rules} rules exceed the limit of {max}")]
    TooManyRules {
        /// Rules given.
        rules: usize,
        /// The map's size.
        max: usize,
    },
}

impl FromStr for SteeringMode {
    type Err = PlacementError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| PlacementError::UnknownMode(s.to_owned()))
    }
}

/// Where a tenant's connections live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TenantPlacement {
    /// One home shard, chosen least-loaded; connections authenticated
    /// elsewhere move there. For tenants that fit one core (most).
    #[default]
    Home,
    /// Wherever steering put them (a tenant larger than one core).
    Spread,
    /// One home shard chosen by the operator.
    Pinned(ShardId),
}

impl TenantPlacement {
    /// Checks a pinned shard exists on a node of `shards` shards.
    pub fn validate(self, shards: usize) -> Result<(), PlacementError> {
        match self {
            Self::Pinned(s) if s.index() >= shards => Err(PlacementError::NoSuchShard {
                field: "placement.shard",
                shard: u32::from(s.0),
                shards,
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for TenantPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Home => f.write_str("home"),
            Self::Spread => f.write_str("spread"),
            Self::Pinned(s) => write!(f, "shard:{s}"),
        }
    }
}

impl FromStr for TenantPlacement {
    type Err = PlacementError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "home" => Ok(Self::Home),
            "spread" => Ok(Self::Spread),
            _ => s
                .strip_prefix("shard:")
                .and_then(|n| n.parse::<u16>().ok())
                .map(|n| Self::Pinned(ShardId(n)))
                .ok_or_else(|| PlacementError::UnknownPlacement(s.to_owned())),
        }
    }
}

/// Client addresses in `prefix` (an IPv4 address is matched as its
/// IPv4-mapped IPv6 form, `::ffff:a.b.c.d`) go to `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AffinityRule {
    /// The network, IPv6 or IPv4-mapped, host bits cleared.
    pub network: Ipv6Addr,
    /// Prefix length over the 128-bit form (IPv4 `/n` is `96 + n`).
    pub len: u8,
    /// Where matching connections go.
    pub shard: ShardId,
}

/// Most affinity rules the steering program's map holds.
pub const MAX_AFFINITY_RULES: usize = 4096;

impl AffinityRule {
    /// Parses `ADDRESS/LEN` (IPv4 or IPv6; a bare address is a host).
    pub fn parse(prefix: &str, shard: ShardId) -> Result<Self, PlacementError> {
        let bad = || PlacementError::BadPrefix(prefix.to_owned());
        let (addr, len) = match prefix.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (prefix, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let (v6, len) = match addr {
            IpAddr::V4(v4) => {
                let len = len.unwrap_or(32);
                if len > 32 {
                    return Err(bad());
                }
                (v4.to_ipv6_mapped(), 96 + len)
            }
            IpAddr::V6(v6) => {
                let len = len.unwrap_or(128);
                if len > 128 {
                    return Err(bad());
                }
                (v6, len)
            }
        };
        Ok(Self {
            network: Ipv6Addr::from_bits(mask(v6.to_bits(), len)),
            len,
            shard,
        })
    }

    /// Whether `addr` is in this rule's network.
    pub fn matches(&self, addr: IpAddr) -> bool {
        let bits = match addr {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        mask(bits, self.len) == self.network.to_bits()
    }
}

fn mask(bits: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(len.min(128))))
    }
}

impl fmt::Display for AffinityRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.network.to_ipv4_mapped() {
            Some(v4) if self.len >= 96 => write!(f, "{v4}/{}", self.len - 96),
            _ => write!(f, "{}/{}", self.network, self.len),
        }
    }
}

/// The steering settings a node runs with (part of the snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SteeringConfig {
    /// The mode.
    pub mode: SteeringMode,
    /// Prefix rules for [`SteeringMode::Affinity`], most specific wins.
    pub affinity: Vec<AffinityRule>,
}

impl SteeringConfig {
    /// Checks every shard named exists and the rules fit the map.
    pub fn validate(&self, shards: usize) -> Result<(), PlacementError> {
        if self.affinity.len() > MAX_AFFINITY_RULES {
            return Err(PlacementError::TooManyRules {
                rules: self.affinity.len(),
                max: MAX_AFFINITY_RULES,
            });
        }
        for r in &self.affinity {
            if r.shard.index() >= shards {
                return Err(PlacementError::NoSuchShard {
                    field: "affinity.shard",
                    shard: u32::from(r.shard.0),
                    shards,
                });
            }
        }
        Ok(())
    }

    /// The shard the most specific matching rule names (what the program's
    /// longest-prefix-match map answers), for tests and listings.
    pub fn affinity_for(&self, addr: IpAddr) -> Option<ShardId> {
        self.affinity
            .iter()
            .filter(|r| r.matches(addr))
            .max_by_key(|r| r.len)
            .map(|r| r.shard)
    }
}

/// What to do with a connection that has just authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Stay on this shard.
    Stay,
    /// Hand the connection to this shard before its `Welcome`.
    MoveTo(ShardId),
}

/// One tenant's home and how many of its connections are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Home {
    shard: ShardId,
    connections: u64,
    /// Chosen by the operator (`shard:N`): never moved by a rebalance.
    pinned: bool,
}

/// A tenant moved off a hot shard by [`HomeTable::rebalance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rehome {
    /// The tenant.
    pub tenant: TenantId,
    /// Its old home: its connections there are asked to reconnect.
    pub from: ShardId,
    /// Its new home.
    pub to: ShardId,
    /// Its connections on `from` when it moved.
    pub connections: u64,
}

/// When a shard counts as hot: its load is above `mean × HOT_NUM /
/// HOT_DEN` and at least `min_gap` above the least-loaded shard.
const HOT_NUM: u64 = 5;
const HOT_DEN: u64 = 4;

/// The tenants' home shards on one node. Shared by the shards behind a lock
/// taken once per authentication and once per close of a homed connection,
/// never per message.
#[derive(Debug, Default)]
pub struct HomeTable {
    homes: FxHashMap<TenantId, Home>,
}

impl HomeTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where a connection of `tenant` just authenticated on `current`
    /// belongs, and records it as open there. `loads[i]` is shard `i`'s live
    /// connections, `draining` has bit `i` set for each drained shard. The
    /// shard a connection is handed to does not ask again: a connection
    /// moves at most once.
    ///
    /// A `Home` tenant keeps its shard while it has connections; with none,
    /// the least-loaded shard not drained becomes its home (ties go to
    /// `current`, then the lowest index, so no move is made for nothing).
    /// A `Pinned` tenant's home is its shard unless that shard is drained.
    pub fn place(
        &mut self,
        tenant: TenantId,
        placement: TenantPlacement,
        current: ShardId,
        loads: &[u64],
        draining: u64,
    ) -> Placed {
        let drained = |s: ShardId| s.index() < 64 && draining & (1u64 << s.index()) != 0;
        let target = match placement {
            TenantPlacement::Spread => return Placed::Stay,
            TenantPlacement::Pinned(s) if s.index() < loads.len() && !drained(s) => s,
            TenantPlacement::Pinned(_) | TenantPlacement::Home => match self.homes.get(&tenant) {
                Some(h) if h.connections > 0 && !drained(h.shard) => h.shard,
                _ => least_loaded(loads, draining, current),
            },
        };
        let pinned = matches!(placement, TenantPlacement::Pinned(_));
        let home = self.homes.entry(tenant).or_insert(Home {
            shard: target,
            connections: 0,
            pinned,
        });
        if home.shard == target {
            home.connections += 1;
            home.pinned = pinned;
        } else if home.connections == 0 || drained(home.shard) {
            *home = Home {
                shard: target,
                connections: 1,
                pinned,
            };
        }
        if target == current {
            Placed::Stay
        } else {
            Placed::MoveTo(target)
        }
    }

    /// A connection of `tenant` that was counted on `shard` by
    /// [`place`](Self::place) closed (or was never taken by the target).
    pub fn closed(&mut self, tenant: TenantId, shard: ShardId) {
        if let Some(h) = self.homes.get_mut(&tenant)
            && h.shard == shard
        {
            h.connections = h.connections.saturating_sub(1);
            if h.connections == 0 {
                self.homes.remove(&tenant);
            }
        }
    }

    /// The tenant's current home, if it has connections.
    pub fn home_of(&self, tenant: TenantId) -> Option<ShardId> {
        self.homes.get(&tenant).map(|h| h.shard)
    }

    /// Moves one tenant off the busiest shard when it runs hot.
    ///
    /// `loads[i]` is shard `i`'s open connections. The busiest shard not
    /// drained is hot when its load is above 1.25 × the mean and at least
    /// `min_gap` above the least-loaded shard not drained. Then the
    /// unpinned tenant homed there whose connections come closest to half
    /// the gap without passing it (moving it narrows the gap and cannot
    /// overshoot, so two shards never trade a tenant back and forth) gets
    /// the least-loaded shard as its new home, with no connection counted
    /// yet. The caller asks its connections on the old home to reconnect;
    /// they land on the new one, so the tenant is moved whole, never
    /// split. `None` when nothing is hot or no tenant fits.
    pub fn rebalance(&mut self, loads: &[u64], draining: u64, min_gap: u64) -> Option<Rehome> {
        let open = |i: usize| i >= 64 || draining & (1u64 << i) == 0;
        let candidates: Vec<(usize, u64)> = loads
            .iter()
            .copied()
            .enumerate()
            .filter(|&(i, _)| open(i))
            .collect();
        if candidates.len() < 2 {
            return None;
        }
        let &(hot, max) = candidates
            .iter()
            .max_by_key(|&&(i, l)| (l, usize::MAX - i))?;
        let &(cold, min) = candidates.iter().min_by_key(|&&(i, l)| (l, i))?;
        let total: u64 = candidates.iter().map(|&(_, l)| l).sum();
        let n = candidates.len() as u64;
        let gap = max - min;
        // max > mean × 5/4, without division: max × n × 4 > total × 5.
        if gap < min_gap || max * n * HOT_DEN <= total * HOT_NUM {
            return None;
        }
        let hot = ShardId(hot as u16);
        let (tenant, home) = self
            .homes
            .iter_mut()
            .filter(|(_, h)| h.shard == hot && !h.pinned && h.connections > 0)
            .filter(|(_, h)| h.connections * 2 <= gap)
            .max_by_key(|(t, h)| (h.connections, std::cmp::Reverse(t.0)))?;
        let moved = Rehome {
            tenant: *tenant,
            from: hot,
            to: ShardId(cold as u16),
            connections: home.connections,
        };
        *home = Home {
            shard: moved.to,
            connections: 0,
            pinned: false,
        };
        Some(moved)
    }
}

/// The least-loaded shard not drained; ties prefer `current`, then the
/// lowest index. With every shard drained, `current`.
pub fn least_loaded(loads: &[u64], draining: u64, current: ShardId) -> ShardId {
    let mut best: Option<(u64, bool, usize)> = None;
    for (i, &load) in loads.iter().enumerate() {
        if i < 64 && draining & (1u64 << i) != 0 {
            continue;
        }
        // Smaller is better: load, then "not current", then index.
        let key = (load, i != current.index(), i);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    best.map_or(current, |(_, _, i)| ShardId(i as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: TenantId = TenantId(1);
    const T2: TenantId = TenantId(2);

    #[test]
    fn modes_and_placements_parse_and_print() {
        for m in SteeringMode::ALL {
            assert_eq!(m.as_str().parse::<SteeringMode>(), Ok(m));
        }
        assert_eq!(
            "round-robin".parse::<SteeringMode>(),
            Err(PlacementError::UnknownMode("round-robin".into()))
        );
        for p in [
            TenantPlacement::Home,
            TenantPlacement::Spread,
            TenantPlacement::Pinned(ShardId(3)),
        ] {
            assert_eq!(p.to_string().parse::<TenantPlacement>(), Ok(p));
        }
        assert!("shard:x".parse::<TenantPlacement>().is_err());
        assert!(TenantPlacement::Pinned(ShardId(2)).validate(2).is_err());
        assert!(TenantPlacement::Pinned(ShardId(1)).validate(2).is_ok());
    }

    #[test]
    fn affinity_prefixes_parse_match_and_validate() {
        let r = AffinityRule::parse("10.1.2.3/8", ShardId(1)).unwrap();
        assert_eq!(r.to_string(), "10.0.0.0/8");
        assert!(r.matches("10.200.0.1".parse().unwrap()));
        assert!(!r.matches("11.0.0.1".parse().unwrap()));
        let host = AffinityRule::parse("127.0.0.5", ShardId(0)).unwrap();
        assert_eq!(host.len, 128);
        let v6 = AffinityRule::parse("fd00::/8", ShardId(0)).unwrap();
        assert!(v6.matches("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "fd00::/129", "nope/8", "10.0.0.0/x"] {
            assert!(AffinityRule::parse(bad, ShardId(0)).is_err(), "{bad}");
        }
        let cfg = SteeringConfig {
            mode: SteeringMode::Affinity,
            affinity: vec![r, AffinityRule::parse("10.9.0.0/16", ShardId(0)).unwrap()],
        };
        // Most specific wins.
        assert_eq!(
            cfg.affinity_for("10.9.1.1".parse().unwrap()),
            Some(ShardId(0))
        );
        assert_eq!(
            cfg.affinity_for("10.8.1.1".parse().unwrap()),
            Some(ShardId(1))
        );
        assert_eq!(cfg.affinity_for("192.168.0.1".parse().unwrap()), None);
        assert!(cfg.validate(2).is_ok());
        assert!(matches!(
            cfg.validate(1),
            Err(PlacementError::NoSuchShard {
                field: "affinity.shard",
                shard: 1,
                shards: 1
            })
        ));
    }

    #[test]
    fn a_home_tenant_meets_on_one_shard() {
        let mut t = HomeTable::new();
        // First connection on shard 1 with shard 0 busier: home is shard 1.
        assert_eq!(
            t.place(T1, TenantPlacement::Home, ShardId(1), &[5, 3], 0),
            Placed::Stay
        );
        // The next ones, wherever they land, move there.
        assert_eq!(
            t.place(T1, TenantPlacement::Home, ShardId(0), &[5, 4], 0),
            Placed::MoveTo(ShardId(1))
        );
        assert_eq!(t.home_of(T1), Some(ShardId(1)));
        // Another tenant goes to the least-loaded shard.
        assert_eq!(
            t.place(T2, TenantPlacement::Home, ShardId(1), &[5, 9], 0),
            Placed::MoveTo(ShardId(0))
        );
        // Spread tenants stay where steering put them.
        assert_eq!(
            t.place(TenantId(3), TenantPlacement::Spread, ShardId(1), &[0, 9], 0),
            Placed::Stay
        );
    }

    #[test]
    fn a_home_is_forgotten_when_its_last_connection_closes() {
        let mut t = HomeTable::new();
        t.place(T1, TenantPlacement::Home, ShardId(0), &[0, 0], 0);
        t.place(T1, TenantPlacement::Home, ShardId(0), &[1, 0], 0);
        t.closed(T1, ShardId(0));
        assert_eq!(t.home_of(T1), Some(ShardId(0)));
        t.closed(T1, ShardId(0));
        assert_eq!(t.home_of(T1), None);
        // Re-chosen least-loaded.
        assert_eq!(
            t.place(T1, TenantPlacement::Home, ShardId(0), &[7, 2], 0),
            Placed::MoveTo(ShardId(1))
        );
    }

    #[test]
    fn a_hot_shard_gives_up_the_tenant_that_best_fits_half_the_gap() {
        let mut t = HomeTable::new();
        // Shard 0: tenant 1 with 30 connections, tenant 2 with 10, tenant 3
        // pinned with 20. Shard 1: tenant 4 with 4.
        let home = |t: &mut HomeTable, tenant, n, placement, shard: u16| {
            for _ in 0..n {
                let loads = [0, 0];
                let _ = t.place(TenantId(tenant), placement, ShardId(shard), &loads, 0);
            }
        };
        home(&mut t, 1, 30, TenantPlacement::Pinned(ShardId(0)), 0);
        // Tenant 1 was pinned while it connected; make it an ordinary home.
        t.homes.get_mut(&TenantId(1)).unwrap().pinned = false;
        home(&mut t, 2, 10, TenantPlacement::Pinned(ShardId(0)), 0);
        t.homes.get_mut(&TenantId(2)).unwrap().pinned = false;
        home(&mut t, 3, 20, TenantPlacement::Pinned(ShardId(0)), 0);
        home(&mut t, 4, 4, TenantPlacement::Pinned(ShardId(1)), 1);
        let loads = [60, 4];
        // Gap 56: tenant 1 (30) would overshoot, tenant 3 is pinned, so
        // tenant 2 (10) moves.
        let moved = t.rebalance(&loads, 0, 16).unwrap();
        assert_eq!(
            moved,
            Rehome {
                tenant: TenantId(2),
                from: ShardId(0),
                to: ShardId(1),
                connections: 10
            }
        );
        assert_eq!(t.home_of(TenantId(2)), Some(ShardId(1)));
        // Its connections reconnect and meet on the new home.
        assert_eq!(
            t.place(TenantId(2), TenantPlacement::Home, ShardId(0), &[50, 4], 0),
            Placed::MoveTo(ShardId(1))
        );
        // Closing an old connection on shard 0 does not touch the new home.
        t.closed(TenantId(2), ShardId(0));
        assert_eq!(t.home_of(TenantId(2)), Some(ShardId(1)));
    }

    #[test]
    fn balanced_or_small_gaps_move_nothing() {
        let mut t = HomeTable::new();
        for _ in 0..8 {
            t.place(T1, TenantPlacement::Home, ShardId(0), &[0, 0], 0);
        }
        // Within 1.25 × the mean.
        assert_eq!(t.rebalance(&[10, 9], 0, 1), None);
        // Hot, but the gap is under the minimum.
        assert_eq!(t.rebalance(&[40, 2], 0, 64), None);
        // Hot, but the only tenant (8 connections) is more than half the gap.
        assert_eq!(t.rebalance(&[12, 0], 0, 4), None);
        // A drained shard is neither hot nor a destination.
        assert_eq!(t.rebalance(&[100, 0], 0b10, 4), None);
        // One shard: nothing to do.
        assert_eq!(t.rebalance(&[100], 0, 4), None);
    }

    #[test]
    fn drained_shards_are_never_chosen() {
        let mut t = HomeTable::new();
        t.place(T1, TenantPlacement::Home, ShardId(0), &[0, 0], 0);
        // Shard 0 drained: the tenant's next connection goes to shard 1 and
        // becomes its home.
        assert_eq!(
            t.place(T1, TenantPlacement::Home, ShardId(0), &[1, 0], 0b01),
            Placed::MoveTo(ShardId(1))
        );
        assert_eq!(t.home_of(T1), Some(ShardId(1)));
        // Pinned to a drained shard: least loaded instead.
        assert_eq!(
            t.place(
                T2,
                TenantPlacement::Pinned(ShardId(1)),
                ShardId(1),
                &[0, 0],
                0b10
            ),
            Placed::MoveTo(ShardId(0))
        );
        // Pinned to an existing shard: there, wherever steering put it.
        assert_eq!(
            t.place(
                TenantId(9),
                TenantPlacement::Pinned(ShardId(1)),
                ShardId(0),
                &[0, 9],
                0
            ),
            Placed::MoveTo(ShardId(1))
        );
        assert_eq!(least_loaded(&[3, 3], 0b11, ShardId(1)), ShardId(1));
        assert_eq!(least_loaded(&[3, 3], 0, ShardId(1)), ShardId(1));
        assert_eq!(least_loaded(&[3, 3, 1], 0, ShardId(1)), ShardId(2));
    }
}
