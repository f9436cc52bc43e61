//! S3-FIFO, byte-bounded: "FIFO queues are all you need for cache eviction" (Yang et al., SOSP 2023).
//!
//! New objects enter a small FIFO (10 % of the bytes). When the small queue is over its share, its tail is either
//! promoted to the main FIFO (if it was hit while in the small queue) or evicted, leaving its key in a ghost queue.
//! Most objects in CDN traces are requested once; they pass through the small queue only and never displace the main
//! queue, which is what makes the policy scan-resistant. A miss on a key still in the ghost queue goes straight to
//! main (it was evicted too early). The main FIFO evicts from its tail, but an object with a non-zero 2-bit frequency
//! is reinserted at the head with its frequency decremented (lazy promotion, CLOCK-like), so hits cost only a counter
//! update and no list operation.

use std::collections::{HashMap, VecDeque};

use super::list::{List, Slab};
use super::{CacheConfig, Evicted, EvictedEntry, KeyMap, Policy, new_key_map};

const QUEUE_SMALL: u8 = 0;
const QUEUE_MAIN: u8 = 1;
/// Frequencies saturate at 3 (2 bits), as in the paper: enough to tell "hot" from "was hit once".
const MAX_FREQ: u8 = 3;
/// Share of the bytes for the small queue (the paper's 10 %).
pub const DEFAULT_SMALL_SHARE: f64 = 0.10;

/// S3-FIFO eviction (small FIFO + main FIFO with frequencies + ghost keys), bounded by the sum of object sizes.
#[derive(Debug)]
pub struct S3Fifo<V> {
    config: CacheConfig,
    max_object_bytes: u64,
    small_target_bytes: u64,
    main_target_bytes: u64,
    /// Hits needed in the small queue to be promoted to main instead of evicted.
    promote_threshold: u8,
    map: KeyMap,
    slab: Slab<V>,
    small: List,
    main: List,
    ghost: Ghost,
}

impl<V> S3Fifo<V> {
    /// An empty cache of `capacity_bytes` with the default shares.
    pub fn with_capacity_bytes(capacity_bytes: u64) -> Self {
        <Self as Policy>::new(CacheConfig::with_capacity_bytes(capacity_bytes))
    }

    /// An empty cache with an explicit small-queue share (0..1) and promotion threshold (hits while in the small
    /// queue, 1..=3); for tuning experiments.
    pub fn with_tuning(config: CacheConfig, small_share: f64, promote_threshold: u8) -> Self {
        let small_target_bytes =
            ((config.capacity_bytes as f64) * small_share.clamp(0.0, 1.0)) as u64;
        let main_target_bytes =
            config.capacity_bytes - small_target_bytes.min(config.capacity_bytes);
        Self {
            config,
            max_object_bytes: config.max_object_bytes(),
            small_target_bytes,
            main_target_bytes,
            promote_threshold: promote_threshold.clamp(1, MAX_FREQ),
            map: new_key_map(),
            slab: Slab::new(),
            small: List::new(),
            main: List::new(),
            // The paper sizes the ghost queue like the main queue; in bytes here, so that a few large evictions do not
            // forget many small keys.
            ghost: Ghost::new(main_target_bytes),
        }
    }

    fn used(&self) -> u64 {
        self.small.bytes + self.main.bytes
    }

    /// Frees at least one object (or promotes, when the small queue only holds hit objects; the caller loops).
    fn evict_one(&mut self, out: &mut Vec<EvictedEntry<V>>) {
        if !self.small.is_empty()
            && (self.small.bytes >= self.small_target_bytes || self.main.is_empty())
        {
            self.evict_small(out);
        } else {
            self.evict_main(out);
        }
    }

    fn evict_small(&mut self, out: &mut Vec<EvictedEntry<V>>) {
        while let Some(idx) = self.slab.pop_back(&mut self.small) {
            let node = self.slab.node_mut(idx);
            if node.freq >= self.promote_threshold {
                node.freq = 0;
                node.queue = QUEUE_MAIN;
                self.slab.push_front(&mut self.main, idx);
                if self.main.bytes > self.main_target_bytes {
                    self.evict_main(out);
                    return;
                }
            } else {
                let (key, value, size_bytes) = self.slab.release(idx);
                self.map.remove(&key);
                self.ghost.insert(key, size_bytes);
                out.push(EvictedEntry {
                    key,
                    value,
                    size_bytes,
                });
                return;
            }
        }
    }

    fn evict_main(&mut self, out: &mut Vec<EvictedEntry<V>>) {
        // Terminates: every reinsertion decrements a frequency, so after at most MAX_FREQ laps a node is evicted.
        while let Some(idx) = self.slab.pop_back(&mut self.main) {
            let node = self.slab.node_mut(idx);
            if node.freq > 0 {
                node.freq -= 1;
                self.slab.push_front(&mut self.main, idx);
            } else {
                let (key, value, size_bytes) = self.slab.release(idx);
                self.map.remove(&key);
                out.push(EvictedEntry {
                    key,
                    value,
                    size_bytes,
                });
                return;
            }
        }
    }

    /// Removes a key and reports whether it was in the main queue.
    fn remove_entry(&mut self, key: u64) -> Option<(V, bool)> {
        let idx = self.map.remove(&key)?;
        let in_main = self.slab.node(idx).queue == QUEUE_MAIN;
        if in_main {
            self.slab.unlink(&mut self.main, idx);
        } else {
            self.slab.unlink(&mut self.small, idx);
        }
        let (_, value, _) = self.slab.release(idx);
        Some((value, in_main))
    }

    fn debug_check(&self) {
        debug_assert!(
            self.used() <= self.config.capacity_bytes,
            "S3-FIFO over capacity"
        );
        debug_assert_eq!(
            self.map.len(),
            self.small.len + self.main.len,
            "map and queues disagree"
        );
        debug_assert!(
            self.ghost.bytes <= self.ghost.limit_bytes,
            "ghost over its limit"
        );
    }
}

impl<V> Policy for S3Fifo<V> {
    type Value = V;

    fn new(config: CacheConfig) -> Self {
        Self::with_tuning(config, DEFAULT_SMALL_SHARE, 1)
    }

    fn name(&self) -> &'static str {
        "s3fifo"
    }

    fn get(&mut self, key: u64) -> Option<&V> {
        let idx = *self.map.get(&key)?;
        let node = self.slab.node_mut(idx);
        node.freq = (node.freq + 1).min(MAX_FREQ);
        Some(self.slab.value(idx))
    }

    fn peek(&self, key: u64) -> Option<&V> {
        self.map.get(&key).map(|&idx| self.slab.value(idx))
    }

    fn insert(&mut self, key: u64, value: V, size_bytes: u64) -> Evicted<V> {
        let mut out = Evicted::none();
        let mut to_main = false;
        if let Some((old, in_main)) = self.remove_entry(key) {
            out.replaced = Some(old);
            to_main = in_main;
        }
        if size_bytes > self.max_object_bytes || size_bytes > self.config.capacity_bytes {
            out.refused = Some(value);
            return out;
        }
        // A key remembered by the ghost queue was evicted from the small queue too early: skip the filter.
        to_main |= self.ghost.take(key);
        // Evict before linking, so the new object can never be its own victim.
        while self.used() + size_bytes > self.config.capacity_bytes && !self.map.is_empty() {
            self.evict_one(&mut out.entries);
        }
        let (queue, list) = if to_main {
            (QUEUE_MAIN, &mut self.main)
        } else {
            (QUEUE_SMALL, &mut self.small)
        };
        let idx = self.slab.alloc(key, value, size_bytes, queue);
        self.slab.push_front(list, idx);
        self.map.insert(key, idx);
        assert!(
            self.used() <= self.config.capacity_bytes,
            "S3-FIFO over capacity after insert"
        );
        self.debug_check();
        out
    }

    /// Inserts as usual, then gives the object the frequency one access would: when it reaches the small queue's
    /// tail still unused it moves to the main queue instead of out (it gets the main queue's longer residence to be
    /// used in), and there it is evicted like any object nobody asked for. Prefetched video segments were evicted
    /// from the small queue (10 % of memory) before the viewer reached them.
    fn insert_expected(&mut self, key: u64, value: V, size_bytes: u64) -> Evicted<V> {
        let out = self.insert(key, value, size_bytes);
        if let Some(&idx) = self.map.get(&key) {
            let node = self.slab.node_mut(idx);
            node.freq = node.freq.max(self.promote_threshold).min(MAX_FREQ);
        }
        out
    }

    fn remove(&mut self, key: u64) -> Option<V> {
        let removed = self.remove_entry(key).map(|(value, _)| value);
        self.debug_check();
        removed
    }

    fn clear(&mut self) {
        self.map.clear();
        self.slab.clear();
        self.small = List::new();
        self.main = List::new();
        self.ghost = Ghost::new(self.main_target_bytes);
    }

    fn len(&self) -> usize {
        self.small.len + self.main.len
    }

    fn used_bytes(&self) -> u64 {
        self.used()
    }

    fn capacity_bytes(&self) -> u64 {
        self.config.capacity_bytes
    }

    fn check_invariants(&self) {
        self.slab.check_list(&self.small, QUEUE_SMALL);
        self.slab.check_list(&self.main, QUEUE_MAIN);
        assert_eq!(
            self.map.len(),
            self.small.len + self.main.len,
            "map and queues disagree"
        );
        assert!(self.used() <= self.config.capacity_bytes, "over capacity");
        for (&key, &idx) in &self.map {
            assert_eq!(self.slab.node(idx).key, key, "map points at the wrong node");
            assert!(
                !self.ghost.map.contains_key(&key),
                "key both cached and in the ghost queue"
            );
        }
        self.ghost.check();
    }
}

/// Keys (with sizes) recently evicted from the small queue, FIFO, bounded in bytes.
///
/// A deque of entries plus a map key → (sequence, size): removing a key on a ghost hit only touches the map, and the
/// stale deque entry is skipped when it reaches the front (its sequence no longer matches).
#[derive(Debug)]
struct Ghost {
    queue: VecDeque<GhostEntry>,
    map: HashMap<u64, (u64, u64), foldhash::fast::RandomState>,
    bytes: u64,
    limit_bytes: u64,
    next_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct GhostEntry {
    key: u64,
    seq: u64,
}

impl Ghost {
    fn new(limit_bytes: u64) -> Self {
        Self {
            queue: VecDeque::new(),
            map: HashMap::with_hasher(foldhash::fast::RandomState::default()),
            bytes: 0,
            limit_bytes,
            next_seq: 0,
        }
    }

    fn insert(&mut self, key: u64, size_bytes: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some((_, old_size)) = self.map.insert(key, (seq, size_bytes)) {
            self.bytes -= old_size;
        }
        self.bytes += size_bytes;
        self.queue.push_back(GhostEntry { key, seq });
        // Stale entries (keys taken back by a ghost hit) are bounded too: the deque never grows past twice the live
        // entries (+ slack), so memory stays proportional to what is remembered.
        while self.bytes > self.limit_bytes || self.queue.len() > 2 * self.map.len() + 64 {
            let Some(front) = self.queue.pop_front() else {
                break;
            };
            if let Some(&(seq, size)) = self.map.get(&front.key)
                && seq == front.seq
            {
                self.map.remove(&front.key);
                self.bytes -= size;
            }
        }
    }

    /// Forgets a key; true when it was remembered.
    fn take(&mut self, key: u64) -> bool {
        match self.map.remove(&key) {
            Some((_, size)) => {
                self.bytes -= size;
                true
            }
            None => false,
        }
    }

    fn check(&self) {
        assert!(self.bytes <= self.limit_bytes, "ghost over its limit");
        assert_eq!(
            self.map.values().map(|&(_, size)| size).sum::<u64>(),
            self.bytes,
            "ghost byte accounting"
        );
        assert!(
            self.map.len() <= self.queue.len(),
            "ghost map has keys the deque lost"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{QUEUE_MAIN, QUEUE_SMALL, S3Fifo};
    use crate::evict::{CacheConfig, Policy};

    #[test]
    fn a_ghost_hit_goes_straight_to_main() {
        let mut cache = S3Fifo::<u64>::new(CacheConfig {
            capacity_bytes: 1_000,
            max_object_share: 0.125,
        });
        // Ten fit; the next five push keys 0..5 out (the ghost queue remembers up to the main queue's 900 bytes).
        for key in 0..15 {
            let _ = cache.insert(key, key, 100);
        }
        // Never hit: the first keys were filtered out by the small queue and left their keys in the ghost queue.
        assert!(cache.peek(0).is_none());
        assert!(cache.ghost.map.contains_key(&0));
        let _ = cache.insert(0, 0, 100);
        assert_eq!(
            cache.slab.node(cache.map[&0]).queue,
            QUEUE_MAIN,
            "ghost hit should skip the small queue"
        );
        assert!(
            !cache.ghost.map.contains_key(&0),
            "key both cached and ghosted"
        );
        let _ = cache.insert(100, 100, 100);
        assert_eq!(
            cache.slab.node(cache.map[&100]).queue,
            QUEUE_SMALL,
            "a new key starts in the small queue"
        );
        cache.check_invariants();
    }

    #[test]
    fn a_hit_in_the_small_queue_earns_promotion() {
        let mut cache = S3Fifo::<u64>::new(CacheConfig {
            capacity_bytes: 1_000,
            max_object_share: 0.125,
        });
        let _ = cache.insert(1, 1, 100);
        assert!(cache.get(1).is_some());
        for key in 10..30 {
            let _ = cache.insert(key, key, 100);
        }
        assert_eq!(cache.slab.node(cache.map[&1]).queue, QUEUE_MAIN);
        cache.check_invariants();
    }
}
