//! [`InstantCell`]: a `Cell<Option<Instant>>` in 8 bytes instead of 16.
//!
//! Every connection's shared state holds optional instants (its lame-duck
//! close, the start of a stall), and its size decides its allocator size
//! class, so they are kept as nanoseconds after one
//! process-wide base instant, plus one (0: none). The base is taken before
//! the shards start ([`init`]), so every instant stored is at or after it;
//! one before it would be stored as the base itself. 2^64 ns is 584 years:
//! no instant a running process meets is out of range. Reading an empty
//! cell is a load and a compare; converting costs a few dozen
//! instructions, so the hot path's per-batch deadline stays a plain
//! `Cell<Option<Instant>>`.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Takes the base instant now, if not taken yet (a runtime starting calls
/// it before any instant is stored).
pub(crate) fn init() {
    base();
}

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// An optional instant, with `Cell<Option<Instant>>`'s `get` and `set`.
#[derive(Debug, Default)]
pub(crate) struct InstantCell(Cell<u64>);

impl InstantCell {
    pub(crate) const fn none() -> Self {
        Self(Cell::new(0))
    }

    pub(crate) fn get(&self) -> Option<Instant> {
        match self.0.get() {
            0 => None,
            n => Some(base() + Duration::from_nanos(n - 1)),
        }
    }

    pub(crate) fn set(&self, at: Option<Instant>) {
        self.0.set(at.map_or(0, |t| {
            let nanos = t.saturating_duration_since(base()).as_nanos();
            u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_come_back_exactly() {
        init();
        let cell = InstantCell::none();
        assert_eq!(cell.get(), None);
        let now = Instant::now();
        for at in [
            now,
            now + Duration::from_nanos(1),
            now + Duration::from_secs(86_400 * 365),
        ] {
            cell.set(Some(at));
            assert_eq!(cell.get(), Some(at));
        }
        cell.set(None);
        assert_eq!(cell.get(), None);
        // The base itself is not "none".
        cell.set(Some(base()));
        assert_eq!(cell.get(), Some(base()));
        assert_eq!(std::mem::size_of::<InstantCell>(), 8);
    }
}
