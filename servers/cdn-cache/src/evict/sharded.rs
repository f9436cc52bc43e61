//! The thread-safe memory tier: N independent shards, each a policy behind a `std::sync::Mutex`.
//!
//! Why sharded: every policy here mutates shared state on a hit (a frequency bit, a list move, a sketch counter), so
//! a single lock would serialise every request of every worker thread. With the key's hash picking one of N shards,
//! two requests contend only when they land on the same shard, which for N ≥ 4 × threads is rare.
//!
//! Why a plain `Mutex` (not `RwLock`, not lock-free): reads are writes here (a hit updates policy state), so a
//! read-write lock buys nothing; the critical sections are a hash lookup plus a few index writes (tens of ns, no
//! allocation and no I/O inside; evicted values are handed back and dropped or written to disk *after* the lock is
//! released), so an uncontended futex-based `Mutex` costs about as much as an atomic and never parks for long.
//!
//! Cost of sharding: the capacity is split evenly, so each shard evicts on its own and the whole behaves like N
//! caches of 1/N the size; with a good hash and many objects per shard the hit ratio is within noise of one cache
//! (the largest object a shard accepts is also 1/N as large, see [`super::CacheConfig::max_object_share`]).

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{CacheConfig, Evicted, Policy};

/// A shard count that is not a power of two between 1 and 65 536.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shard count must be a power of two between 1 and 65536, got {0}")]
pub struct ShardCountError(pub usize);

/// N shards of a policy `P`, chosen by the top bits of the key hash.
#[derive(Debug)]
pub struct Sharded<P> {
    shards: Box<[Mutex<P>]>,
    /// log2(shard count); the shard is the key's top `shard_bits` bits (the policies' maps rehash the key, so using
    /// the same bits for both costs nothing in spread).
    shard_bits: u32,
    capacity_bytes: u64,
}

impl<P: Policy> Sharded<P> {
    /// `shards` shards (a power of two) sharing `config.capacity_bytes` evenly; the remainder of the division
    /// (fewer than `shards` bytes) is not used.
    pub fn new(shards: usize, config: CacheConfig) -> Result<Self, ShardCountError> {
        if !shards.is_power_of_two() || shards > 1 << 16 {
            return Err(ShardCountError(shards));
        }
        let per_shard_bytes = config.capacity_bytes / shards as u64;
        let shard_config = CacheConfig {
            capacity_bytes: per_shard_bytes,
            ..config
        };
        let shards: Box<[Mutex<P>]> = (0..shards)
            .map(|_| Mutex::new(P::new(shard_config)))
            .collect();
        Ok(Self {
            shard_bits: shards.len().trailing_zeros(),
            capacity_bytes: per_shard_bytes * shards.len() as u64,
            shards,
        })
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard index for a key.
    pub fn shard_of(&self, key: u64) -> usize {
        if self.shard_bits == 0 {
            0
        } else {
            (key >> (64 - self.shard_bits)) as usize
        }
    }

    /// Locks a shard. A poisoned shard (a panic while it was locked, which only a bug can cause) may have broken
    /// queues, so it is emptied and reused rather than trusted or left to fail every later request: a cache may
    /// always forget.
    fn lock(&self, shard: usize) -> MutexGuard<'_, P> {
        self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned: PoisonError<MutexGuard<'_, P>>| {
                let mut guard = poisoned.into_inner();
                guard.clear();
                self.shards[shard].clear_poison();
                guard
            })
    }

    /// Looks a key up (recording the access) and clones the value out of the lock; cheap for `Arc` values.
    pub fn get(&self, key: u64) -> Option<P::Value>
    where
        P::Value: Clone,
    {
        self.lock(self.shard_of(key)).get(key).cloned()
    }

    /// Looks a key up (recording the access) and maps the value while the shard is locked; keep `f` short.
    pub fn get_with<R>(&self, key: u64, f: impl FnOnce(&P::Value) -> R) -> Option<R> {
        self.lock(self.shard_of(key)).get(key).map(f)
    }

    /// Stores a value; what comes back is owned by the caller (for the disk tier) and is dropped outside the lock.
    pub fn insert(&self, key: u64, value: P::Value, size_bytes: u64) -> Evicted<P::Value> {
        self.lock(self.shard_of(key)).insert(key, value, size_bytes)
    }

    /// Stores a value expected to be requested soon (see [`Policy::insert_expected`]).
    pub fn insert_expected(&self, key: u64, value: P::Value, size_bytes: u64) -> Evicted<P::Value> {
        self.lock(self.shard_of(key))
            .insert_expected(key, value, size_bytes)
    }

    /// Removes a key (purge).
    pub fn remove(&self, key: u64) -> Option<P::Value> {
        self.lock(self.shard_of(key)).remove(key)
    }

    /// True when the key is stored (no access recorded).
    pub fn contains(&self, key: u64) -> bool {
        self.lock(self.shard_of(key)).peek(key).is_some()
    }

    /// Objects stored, summed over shards (each shard locked in turn, so not a snapshot under concurrent writes).
    pub fn len(&self) -> usize {
        (0..self.shards.len())
            .map(|shard| self.lock(shard).len())
            .sum()
    }

    /// True when no shard holds anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes stored, summed over shards (not a snapshot under concurrent writes).
    pub fn used_bytes(&self) -> u64 {
        (0..self.shards.len())
            .map(|shard| self.lock(shard).used_bytes())
            .sum()
    }

    /// Total capacity (the per-shard capacity times the shard count).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Empties every shard.
    pub fn clear(&self) {
        for shard in 0..self.shards.len() {
            self.lock(shard).clear();
        }
    }

    /// Runs every shard's invariant check; O(n), for tests.
    pub fn check_invariants(&self) {
        for shard in 0..self.shards.len() {
            self.lock(shard).check_invariants();
        }
    }
}
