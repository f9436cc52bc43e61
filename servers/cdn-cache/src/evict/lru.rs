//! Exact byte-bounded LRU: the baseline the memory tier's policy is measured against.

use super::list::{List, Slab};
use super::{CacheConfig, Evicted, EvictedEntry, KeyMap, Policy, new_key_map};

const QUEUE_LRU: u8 = 0;

/// Least-recently-used eviction, bounded by the sum of object sizes.
///
/// A hit moves the object to the head; an insert evicts from the tail until the new object fits.
#[derive(Debug)]
pub struct Lru<V> {
    config: CacheConfig,
    max_object_bytes: u64,
    map: KeyMap,
    slab: Slab<V>,
    list: List,
}

impl<V> Lru<V> {
    /// An empty LRU of `capacity_bytes` with the default maximum object share.
    pub fn with_capacity_bytes(capacity_bytes: u64) -> Self {
        <Self as Policy>::new(CacheConfig::with_capacity_bytes(capacity_bytes))
    }

    fn debug_check(&self) {
        debug_assert!(
            self.list.bytes <= self.config.capacity_bytes,
            "LRU over capacity"
        );
        debug_assert_eq!(self.map.len(), self.list.len, "map and list disagree");
    }
}

impl<V> Policy for Lru<V> {
    type Value = V;

    fn new(config: CacheConfig) -> Self {
        Self {
            config,
            max_object_bytes: config.max_object_bytes(),
            map: new_key_map(),
            slab: Slab::new(),
            list: List::new(),
        }
    }

    fn name(&self) -> &'static str {
        "lru"
    }

    fn get(&mut self, key: u64) -> Option<&V> {
        let idx = *self.map.get(&key)?;
        self.slab.move_to_front(&mut self.list, idx);
        Some(self.slab.value(idx))
    }

    fn peek(&self, key: u64) -> Option<&V> {
        self.map.get(&key).map(|&idx| self.slab.value(idx))
    }

    fn insert(&mut self, key: u64, value: V, size_bytes: u64) -> Evicted<V> {
        let mut out = Evicted::none();
        out.replaced = self.remove(key);
        if size_bytes > self.max_object_bytes || size_bytes > self.config.capacity_bytes {
            out.refused = Some(value);
            return out;
        }
        while self.list.bytes + size_bytes > self.config.capacity_bytes {
            let Some(victim) = self.slab.pop_back(&mut self.list) else {
                break;
            };
            let (victim_key, victim_value, victim_size) = self.slab.release(victim);
            self.map.remove(&victim_key);
            out.entries.push(EvictedEntry {
                key: victim_key,
                value: victim_value,
                size_bytes: victim_size,
            });
        }
        let idx = self.slab.alloc(key, value, size_bytes, QUEUE_LRU);
        self.slab.push_front(&mut self.list, idx);
        self.map.insert(key, idx);
        assert!(
            self.list.bytes <= self.config.capacity_bytes,
            "LRU over capacity after insert"
        );
        self.debug_check();
        out
    }

    fn remove(&mut self, key: u64) -> Option<V> {
        let idx = self.map.remove(&key)?;
        self.slab.unlink(&mut self.list, idx);
        let (_, value, _) = self.slab.release(idx);
        self.debug_check();
        Some(value)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.slab.clear();
        self.list = List::new();
    }

    fn len(&self) -> usize {
        self.list.len
    }

    fn used_bytes(&self) -> u64 {
        self.list.bytes
    }

    fn capacity_bytes(&self) -> u64 {
        self.config.capacity_bytes
    }

    fn check_invariants(&self) {
        self.slab.check_list(&self.list, QUEUE_LRU);
        assert_eq!(self.map.len(), self.list.len, "map and list disagree");
        assert!(
            self.list.bytes <= self.config.capacity_bytes,
            "over capacity"
        );
        for (&key, &idx) in &self.map {
            assert_eq!(self.slab.node(idx).key, key, "map points at the wrong node");
        }
    }
}
