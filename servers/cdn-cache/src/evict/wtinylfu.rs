//! W-TinyLFU, byte-bounded: "TinyLFU: A Highly Efficient Cache Admission Policy" (Einziger, Friedman, Manes), as
//! used by Caffeine, with a fixed window.
//!
//! New objects enter a small LRU window (1 % of the bytes), which gives recency bursts a chance. When the window is
//! over its share, its tail becomes a candidate for the main space and has to beat the main space's victim (the tail
//! of the probation segment) on estimated access frequency; the loser is evicted. Frequencies come from a count-min
//! sketch of 4-bit-style saturating counters that sees every access, hit or miss, and is halved periodically so that
//! old popularity fades. The main space is a segmented LRU: a hit in probation promotes to protected (80 % of the main
//! space), protected overflow is demoted back to probation. One-hit wonders lose admission, so a scan cannot flush
//! the hot set.
//!
//! Differences from Caffeine, on purpose: the window share is fixed (no hill climbing: the traces here are
//! stationary), there is no doorkeeper, and ties go to the incumbent without Caffeine's random admission of warm
//! candidates (that defends against hash flooding; keys here are already server-side hashes).

use super::list::{List, Slab};
use super::{CacheConfig, Evicted, EvictedEntry, KeyMap, Policy, mix64, new_key_map};

const QUEUE_WINDOW: u8 = 0;
const QUEUE_PROBATION: u8 = 1;
const QUEUE_PROTECTED: u8 = 2;
/// Share of the bytes for the LRU window (Caffeine's starting point).
pub const DEFAULT_WINDOW_SHARE: f64 = 0.01;
/// Share of the main space for the protected segment (Caffeine's).
pub const DEFAULT_PROTECTED_SHARE: f64 = 0.80;

/// W-TinyLFU eviction (LRU window + frequency-sketch admission + SLRU main), bounded by the sum of object sizes.
#[derive(Debug)]
pub struct WTinyLfu<V> {
    config: CacheConfig,
    max_object_bytes: u64,
    window_target_bytes: u64,
    protected_target_bytes: u64,
    map: KeyMap,
    slab: Slab<V>,
    window: List,
    probation: List,
    protected: List,
    sketch: FrequencySketch,
}

impl<V> WTinyLfu<V> {
    /// An empty cache of `capacity_bytes` with the default shares.
    pub fn with_capacity_bytes(capacity_bytes: u64) -> Self {
        <Self as Policy>::new(CacheConfig::with_capacity_bytes(capacity_bytes))
    }

    /// An empty cache with explicit window share (of the capacity) and protected share (of the main space); for
    /// tuning experiments.
    pub fn with_tuning(config: CacheConfig, window_share: f64, protected_share: f64) -> Self {
        let capacity = config.capacity_bytes as f64;
        let window_target_bytes = (capacity * window_share.clamp(0.0, 1.0)) as u64;
        let main_bytes = config.capacity_bytes.saturating_sub(window_target_bytes);
        let protected_target_bytes = ((main_bytes as f64) * protected_share.clamp(0.0, 1.0)) as u64;
        Self {
            config,
            max_object_bytes: config.max_object_bytes(),
            window_target_bytes,
            protected_target_bytes,
            map: new_key_map(),
            slab: Slab::new(),
            window: List::new(),
            probation: List::new(),
            protected: List::new(),
            sketch: FrequencySketch::new(64),
        }
    }

    fn used(&self) -> u64 {
        self.window.bytes + self.probation.bytes + self.protected.bytes
    }

    /// Unlinks a node from whichever segment holds it.
    fn unlink_node(&mut self, idx: u32) {
        match self.slab.node(idx).queue {
            QUEUE_WINDOW => self.slab.unlink(&mut self.window, idx),
            QUEUE_PROBATION => self.slab.unlink(&mut self.probation, idx),
            _ => self.slab.unlink(&mut self.protected, idx),
        }
    }

    /// Evicts an unlinked node.
    fn evict_node(&mut self, idx: u32, out: &mut Vec<EvictedEntry<V>>) {
        let (key, value, size_bytes) = self.slab.release(idx);
        self.map.remove(&key);
        out.push(EvictedEntry {
            key,
            value,
            size_bytes,
        });
    }

    /// The main space's next victim: probation's tail, else protected's.
    fn main_victim(&self) -> Option<u32> {
        if !self.probation.is_empty() {
            Some(self.probation.tail)
        } else if !self.protected.is_empty() {
            Some(self.protected.tail)
        } else {
            None
        }
    }

    /// A candidate leaving the window (unlinked) enters probation if there is room or once it has out-scored enough
    /// victims to make room; otherwise it is evicted.
    fn admit(&mut self, candidate: u32, out: &mut Vec<EvictedEntry<V>>) {
        let candidate_size = self.slab.node(candidate).size_bytes;
        let candidate_freq = self.sketch.estimate(self.slab.node(candidate).key);
        while self.used() + candidate_size > self.config.capacity_bytes {
            let Some(victim) = self.main_victim() else {
                break;
            };
            if candidate_freq > self.sketch.estimate(self.slab.node(victim).key) {
                self.unlink_node(victim);
                self.evict_node(victim, out);
            } else {
                self.evict_node(candidate, out);
                return;
            }
        }
        self.slab.node_mut(candidate).queue = QUEUE_PROBATION;
        self.slab.push_front(&mut self.probation, candidate);
    }

    fn demote_protected_overflow(&mut self) {
        while self.protected.bytes > self.protected_target_bytes {
            let Some(idx) = self.slab.pop_back(&mut self.protected) else {
                break;
            };
            self.slab.node_mut(idx).queue = QUEUE_PROBATION;
            self.slab.push_front(&mut self.probation, idx);
        }
    }

    fn debug_check(&self) {
        debug_assert!(
            self.used() <= self.config.capacity_bytes,
            "W-TinyLFU over capacity"
        );
        debug_assert_eq!(
            self.map.len(),
            self.window.len + self.probation.len + self.protected.len,
            "map and segments disagree"
        );
    }
}

impl<V> Policy for WTinyLfu<V> {
    type Value = V;

    fn new(config: CacheConfig) -> Self {
        Self::with_tuning(config, DEFAULT_WINDOW_SHARE, DEFAULT_PROTECTED_SHARE)
    }

    fn name(&self) -> &'static str {
        "wtinylfu"
    }

    fn get(&mut self, key: u64) -> Option<&V> {
        // Misses count too: the sketch must know how popular a key is before it is ever admitted.
        self.sketch.increment(key);
        let idx = *self.map.get(&key)?;
        match self.slab.node(idx).queue {
            QUEUE_WINDOW => self.slab.move_to_front(&mut self.window, idx),
            QUEUE_PROBATION => {
                self.slab.unlink(&mut self.probation, idx);
                self.slab.node_mut(idx).queue = QUEUE_PROTECTED;
                self.slab.push_front(&mut self.protected, idx);
                self.demote_protected_overflow();
            }
            _ => self.slab.move_to_front(&mut self.protected, idx),
        }
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
        // The sketch is sized to the number of objects, which a byte bound does not fix in advance: grow it when the
        // cache outgrows it, carrying over the counts of the cached keys (forgetting them would let a scan evict the
        // hot set right after a resize). Doubling makes this O(1) amortised.
        if self.sketch.needs_growth(self.map.len() + 1) {
            let mut grown = FrequencySketch::new(2 * (self.map.len() + 1));
            for &cached in self.map.keys() {
                grown.raise_to(cached, self.sketch.estimate(cached));
            }
            self.sketch = grown;
        }
        let idx = self.slab.alloc(key, value, size_bytes, QUEUE_WINDOW);
        self.slab.push_front(&mut self.window, idx);
        self.map.insert(key, idx);
        while self.window.bytes > self.window_target_bytes {
            let Some(candidate) = self.slab.pop_back(&mut self.window) else {
                break;
            };
            self.admit(candidate, &mut out.entries);
        }
        // Safety net (not reached with a window share below 1): evict main, then window, tails.
        while self.used() > self.config.capacity_bytes {
            let victim = if let Some(victim) = self.main_victim() {
                self.unlink_node(victim);
                victim
            } else if let Some(victim) = self.slab.pop_back(&mut self.window) {
                victim
            } else {
                break;
            };
            self.evict_node(victim, &mut out.entries);
        }
        if !self.map.contains_key(&key) {
            // The new object lost admission at once (it was larger than the window and less popular than the
            // victims): report it as refused rather than evicted, since it was never really stored.
            if let Some(pos) = out.entries.iter().rposition(|entry| entry.key == key) {
                out.refused = Some(out.entries.swap_remove(pos).value);
            }
        }
        assert!(
            self.used() <= self.config.capacity_bytes,
            "W-TinyLFU over capacity after insert"
        );
        self.debug_check();
        out
    }

    fn remove(&mut self, key: u64) -> Option<V> {
        let idx = self.map.remove(&key)?;
        self.unlink_node(idx);
        let (_, value, _) = self.slab.release(idx);
        self.debug_check();
        Some(value)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.slab.clear();
        self.window = List::new();
        self.probation = List::new();
        self.protected = List::new();
        self.sketch = FrequencySketch::new(64);
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn used_bytes(&self) -> u64 {
        self.used()
    }

    fn capacity_bytes(&self) -> u64 {
        self.config.capacity_bytes
    }

    fn check_invariants(&self) {
        self.slab.check_list(&self.window, QUEUE_WINDOW);
        self.slab.check_list(&self.probation, QUEUE_PROBATION);
        self.slab.check_list(&self.protected, QUEUE_PROTECTED);
        assert_eq!(
            self.map.len(),
            self.window.len + self.probation.len + self.protected.len,
            "map and segments"
        );
        assert!(self.used() <= self.config.capacity_bytes, "over capacity");
        assert!(
            self.window.bytes <= self.window_target_bytes,
            "window over its share"
        );
        assert!(
            self.protected.bytes <= self.protected_target_bytes,
            "protected over its share"
        );
        for (&key, &idx) in &self.map {
            assert_eq!(self.slab.node(idx).key, key, "map points at the wrong node");
        }
    }
}

/// Count-min sketch with 4 rows of saturating counters (0..=15) and periodic halving ("reset" in TinyLFU): after
/// `10 × width` additions every counter is halved, so the estimate tracks recent popularity, and the 15 cap means
/// the sketch only needs to tell "rare" from "popular", as in Caffeine.
#[derive(Debug)]
struct FrequencySketch {
    /// 4 rows of `width` counters, row-major.
    table: Vec<u8>,
    width_mask: usize,
    additions: u64,
    sample_size: u64,
}

const SKETCH_ROWS: usize = 4;
const SKETCH_MAX: u8 = 15;

impl FrequencySketch {
    fn new(min_width: usize) -> Self {
        let width = min_width.max(16).next_power_of_two();
        Self {
            table: vec![0; SKETCH_ROWS * width],
            width_mask: width - 1,
            additions: 0,
            sample_size: 10 * width as u64,
        }
    }

    fn width(&self) -> usize {
        self.width_mask + 1
    }

    /// True when the sketch holds fewer counters per row than there are objects.
    fn needs_growth(&self, entries: usize) -> bool {
        entries > self.width()
    }

    /// Raises a key's counters to at least `count` (carrying an estimate into a grown sketch).
    fn raise_to(&mut self, key: u64, count: u8) {
        for slot in self.slots(key) {
            self.table[slot] = self.table[slot].max(count.min(SKETCH_MAX));
        }
    }

    /// Counter positions by double hashing: two independent mixes of the key give the four rows' columns.
    fn slots(&self, key: u64) -> [usize; SKETCH_ROWS] {
        let h1 = mix64(key);
        let h2 = mix64(key ^ 0x9e37_79b9_7f4a_7c15) | 1;
        let width = self.width();
        let mut slots = [0; SKETCH_ROWS];
        for (row, slot) in slots.iter_mut().enumerate() {
            let column =
                (h1.wrapping_add((row as u64).wrapping_mul(h2)) as usize) & self.width_mask;
            *slot = row * width + column;
        }
        slots
    }

    fn estimate(&self, key: u64) -> u8 {
        self.slots(key)
            .iter()
            .map(|&slot| self.table[slot])
            .min()
            .unwrap_or(0)
    }

    /// Conservative update: only the counters at the current minimum grow, which cuts over-estimation from collisions.
    fn increment(&mut self, key: u64) {
        let slots = self.slots(key);
        let min = slots
            .iter()
            .map(|&slot| self.table[slot])
            .min()
            .unwrap_or(0);
        if min >= SKETCH_MAX {
            return;
        }
        for slot in slots {
            if self.table[slot] == min {
                self.table[slot] = min + 1;
            }
        }
        self.additions += 1;
        if self.additions >= self.sample_size {
            for counter in &mut self.table {
                *counter >>= 1;
            }
            self.additions /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrequencySketch;

    #[test]
    fn sketch_counts_and_ages() {
        let mut sketch = FrequencySketch::new(1024);
        for _ in 0..5 {
            sketch.increment(42);
        }
        assert_eq!(sketch.estimate(42), 5);
        assert!(
            sketch.estimate(43) <= 1,
            "an unseen key should estimate near zero"
        );
        for _ in 0..100 {
            sketch.increment(7);
        }
        assert_eq!(sketch.estimate(7), 15, "counters saturate at 15");
        // Enough distinct additions to trigger a halving.
        let before = sketch.estimate(42);
        for key in 1_000..1_000 + 10 * 1024 {
            sketch.increment(key);
        }
        assert!(
            sketch.estimate(42) < before,
            "halving should age old counts"
        );
    }
}
