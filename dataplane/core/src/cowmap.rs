//! A hash map whose clones share their storage until they change.
//!
//! [`CowMap`] spreads its entries over [`PARTS`] parts, each behind an
//! `Arc`. Cloning the map clones the part pointers, not the entries; changing
//! an entry copies only the part it lives in, and only while another clone
//! still shares that part. A configuration snapshot built from the previous
//! one therefore costs what changed between them, not what they hold, and
//! dropping the previous one frees only the parts it no longer shares.
//!
//! Invariants: an entry lives in the part its key's hash picks (bits that
//! the parts' own tables do not use to place or tag entries); `len` is the
//! number of entries over all parts; an empty part is `None`.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

/// How many parts a map has: enough that a part of a 100,000-entry map
/// holds about 1,500 entries, few enough that a clone is a small copy.
pub const PARTS: usize = 64;

/// A hash map that shares its parts with its clones (see the module
/// documentation).
#[derive(Clone)]
pub struct CowMap<K, V> {
    parts: Vec<Option<Arc<FxHashMap<K, V>>>>,
    len: usize,
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        Self {
            parts: vec![None; PARTS],
            len: 0,
        }
    }
}

impl<K, V> std::fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CowMap")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The part `key` lives in. The parts' tables place an entry by the low
/// bits of the same hash and tag it with the top 7, so the part is taken
/// from bits 32 to 37, which neither uses until a part holds 2^32 entries.
fn part_of<K: Hash>(key: &K) -> usize {
    let h = FxBuildHasher.hash_one(key);
    // Lossless: the value is below PARTS.
    ((h >> 32) as usize) % PARTS
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.parts[part_of(key)].as_ref()?.get(key)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets `key`'s value; returns the one it replaces. Copies the key's
    /// part first if another clone shares it.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let part = self.parts[part_of(&key)].get_or_insert_with(Arc::default);
        let old = Arc::make_mut(part).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`; returns its value. Copies the key's part first if
    /// another clone shares it (and the key is there).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = &mut self.parts[part_of(key)];
        let part = slot.as_mut()?;
        if !part.contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(part).remove(key);
        if part.is_empty() {
            *slot = None;
        }
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.parts.iter().flatten().flat_map(|p| p.iter())
    }

    /// How many parts this map shares with `other` (the same `Arc`, or
    /// both empty), for tests and measurements.
    pub fn parts_shared_with(&self, other: &Self) -> usize {
        self.parts
            .iter()
            .zip(&other.parts)
            .filter(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_change_copies_one_part_and_leaves_the_clone_as_it_was() {
        let mut a = CowMap::default();
        for k in 0..10_000_u64 {
            a.insert(k, k * 2);
        }
        let before = a.clone();
        assert_eq!(a.parts_shared_with(&before), PARTS);
        a.insert(7, 0);
        a.remove(&8);
        let touched = usize::from(part_of(&7_u64) != part_of(&8_u64)) + 1;
        assert_eq!(a.parts_shared_with(&before), PARTS - touched);
        assert_eq!((a.get(&7), before.get(&7)), (Some(&0), Some(&14)));
        assert_eq!((a.get(&8), before.get(&8)), (None, Some(&16)));
        assert_eq!((a.len(), before.len()), (9_999, 10_000));
        // Removing what is not there copies nothing.
        let b = a.clone();
        assert_eq!(a.remove(&8), None);
        assert_eq!(a.parts_shared_with(&b), PARTS);
    }

    #[test]
    fn sequential_ids_spread_over_every_part() {
        let mut counts = [0_usize; PARTS];
        for k in 0..64_000_u64 {
            counts[part_of(&k)] += 1;
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(
            min.is_some_and(|m| *m > 500) && max.is_some_and(|m| *m < 1_500),
            "{counts:?}"
        );
    }

    proptest! {
        /// Any sequence of inserts and removes, with clones taken along
        /// the way, leaves the map and every clone equal to a `HashMap`
        /// that saw the same operations up to that clone.
        #[test]
        fn behaves_as_a_hash_map_and_clones_stay_put(
            ops in proptest::collection::vec((any::<bool>(), 0_u16..300, any::<u8>()), 0..400),
        ) {
            let mut map = CowMap::default();
            let mut model = HashMap::new();
            let mut clones = Vec::new();
            for (i, (insert, k, v)) in ops.into_iter().enumerate() {
                if insert {
                    prop_assert_eq!(map.insert(k, v), model.insert(k, v));
                } else {
                    prop_assert_eq!(map.remove(&k), model.remove(&k));
                }
                if i % 37 == 0 {
                    clones.push((map.clone(), model.clone()));
                }
            }
            clones.push((map, model));
            for (map, model) in clones {
                prop_assert_eq!(map.len(), model.len());
                let got: HashMap<u16, u8> = map.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(got, model);
            }
        }
    }
}
