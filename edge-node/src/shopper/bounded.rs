//! `BoundedMap`: a hash map with a fixed capacity that evicts its least recently inserted or
//! touched entry, the one bounded-memory building block of the shopper tables.
//!
//! Every entry carries a sequence number; an ordered index from sequence number to key gives
//! the oldest entry in `O(log n)`. Inserting or touching an entry gives it a fresh sequence
//! number, so the order is "least recently written first".

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A map of at most `capacity` entries; inserting a new key into a full map evicts the entry
/// written longest ago.
#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    entries: HashMap<K, Entry<V>>,
    order: BTreeMap<u64, K>,
    next_seq: u64,
    capacity: usize,
}

#[derive(Debug)]
struct Entry<V> {
    seq: u64,
    value: V,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// An empty map holding at most `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            capacity: capacity.max(1),
        }
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        debug_assert_eq!(self.entries.len(), self.order.len());
        self.entries.len()
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|entry| &entry.value)
    }

    /// The value under `key`, mutably, without changing its place in the eviction order.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|entry| &mut entry.value)
    }

    /// Stores `value` under `key` as the newest entry. Returns the entry evicted to make room,
    /// if the map was full and `key` was new.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        let seq = self.take_seq();
        if let Some(entry) = self.entries.get_mut(&key) {
            self.order.remove(&entry.seq);
            entry.seq = seq;
            entry.value = value;
            self.order.insert(seq, key);
            return None;
        }
        let evicted = if self.entries.len() >= self.capacity {
            self.pop_oldest()
        } else {
            None
        };
        self.order.insert(seq, key.clone());
        self.entries.insert(key, Entry { seq, value });
        debug_assert!(self.len() <= self.capacity);
        evicted
    }

    /// Removes the entry under `key`.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.order.remove(&entry.seq);
        Some(entry.value)
    }

    /// The entry written longest ago.
    pub(crate) fn oldest(&self) -> Option<(&K, &V)> {
        let (_, key) = self.order.first_key_value()?;
        self.entries.get(key).map(|entry| (key, &entry.value))
    }

    /// Removes and returns the entry written longest ago.
    pub(crate) fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (_, key) = self.order.pop_first()?;
        let entry = self.entries.remove(&key)?;
        Some((key, entry.value))
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        // 2^64 writes do not happen; saturating keeps the map consistent regardless.
        self.next_seq = self.next_seq.saturating_add(1);
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::BoundedMap;

    #[test]
    fn a_full_map_evicts_the_least_recently_written_entry() {
        let mut map = BoundedMap::new(2);
        assert_eq!(map.insert("a", 1), None);
        assert_eq!(map.insert("b", 2), None);
        // Rewriting "a" makes "b" the oldest.
        assert_eq!(map.insert("a", 10), None);
        assert_eq!(map.insert("c", 3), Some(("b", 2)));
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&"a"), Some(&10));
        assert_eq!(map.oldest(), Some((&"a", &10)));
        assert_eq!(map.remove(&"a"), Some(10));
        assert_eq!(map.pop_oldest(), Some(("c", 3)));
        assert_eq!(map.len(), 0);
        assert_eq!(map.pop_oldest(), None);
    }

    #[test]
    fn capacity_is_at_least_one() {
        let mut map = BoundedMap::new(0);
        assert_eq!(map.insert(1, ()), None);
        assert_eq!(map.insert(2, ()), Some((1, ())));
        if let Some(value) = map.get_mut(&2) {
            *value = ();
        }
        assert_eq!(map.len(), 1);
    }
}
