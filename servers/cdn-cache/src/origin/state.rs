//! The origin's runtime tables: fetch counts per key and object versions.
//! Both are bounded; both are sharded mutexes so concurrent requests for
//! different keys rarely contend.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use super::error::OriginError;

/// Shards per table: a power of two comfortably above the core counts this
/// runs on, so two requests rarely wait for the same lock.
const SHARDS: usize = 32;

/// Most prefix bumps kept (each is scanned on every request).
pub const MAX_PREFIX_BUMPS: usize = 256;

/// Fixed-seed hasher: shard choice needs spread, not DoS resistance (keys come
/// from our own tests and load profiles).
type Hasher = foldhash::fast::FixedState;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a counter lock leaves consistent integers behind.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What happened to the requests of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeyCounts {
    /// Requests that reached the origin for this key (counted on arrival).
    pub fetches: u64,
    /// Of those, answered 2xx (full body).
    pub ok: u64,
    /// Answered 304 Not Modified.
    pub not_modified: u64,
    /// Answered 5xx or closed without an answer (injected failures).
    pub failed: u64,
}

/// How a request for a key ended, for [`FetchCounts::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    NotModified,
    Failed,
    Other,
}

/// Fetch counts per key (path and query, plus the variant for `Vary` rules).
///
/// These are not Prometheus labels: one series per key would grow the scrape
/// without bound and every benchmark with many keys would explode the
/// exporter's memory. Prometheus gets totals; per-key counts live here and are
/// read through the admin JSON endpoint.
#[derive(Debug)]
pub struct FetchCounts {
    shards: Vec<Mutex<HashMap<Box<str>, KeyCounts, Hasher>>>,
    hasher: Hasher,
    keys: AtomicUsize,
    max_keys: usize,
    overflow: AtomicU64,
    total: AtomicU64,
}

impl FetchCounts {
    pub(crate) fn new(max_keys: usize) -> Self {
        FetchCounts {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Hasher::with_seed(0))))
                .collect(),
            hasher: Hasher::with_seed(0),
            keys: AtomicUsize::new(0),
            max_keys,
            overflow: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<Box<str>, KeyCounts, Hasher>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Counts an arriving request; false when the key could not be tracked
    /// (table full: the fetch is in the overflow total instead).
    pub(crate) fn arrive(&self, key: &str) -> bool {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut m = lock(self.shard(key));
        if let Some(c) = m.get_mut(key) {
            c.fetches += 1;
            return true;
        }
        // Reserve a slot first so concurrent inserts in other shards cannot
        // overshoot the cap.
        if self
            .keys
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_err()
        {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        m.insert(
            key.into(),
            KeyCounts {
                fetches: 1,
                ..KeyCounts::default()
            },
        );
        true
    }

    /// Records how a tracked request ended.
    pub(crate) fn finish(&self, key: &str, outcome: Outcome) {
        if let Some(c) = lock(self.shard(key)).get_mut(key) {
            match outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::NotModified => c.not_modified += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::Other => {}
            }
        }
    }

    /// The counts of one exact key (zeros if never fetched).
    pub fn get(&self, key: &str) -> KeyCounts {
        lock(self.shard(key)).get(key).copied().unwrap_or_default()
    }

    /// The sum over `target` and all its variants (keys `target` and
    /// `target <variant>`). Scans the table: for tests, not hot paths.
    pub fn for_target(&self, target: &str) -> KeyCounts {
        let mut sum = KeyCounts::default();
        for s in &self.shards {
            for (k, c) in lock(s).iter() {
                let hit = k
                    .strip_prefix(target)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '));
                if hit {
                    sum.fetches += c.fetches;
                    sum.ok += c.ok;
                    sum.not_modified += c.not_modified;
                    sum.failed += c.failed;
                }
            }
        }
        sum
    }

    /// The `n` keys with the most fetches, most first (ties by key).
    pub fn top(&self, n: usize) -> Vec<(String, KeyCounts)> {
        let mut all: Vec<(String, KeyCounts)> = Vec::new();
        for s in &self.shards {
            all.extend(lock(s).iter().map(|(k, c)| (k.to_string(), *c)));
        }
        all.sort_by(|a, b| b.1.fetches.cmp(&a.1.fetches).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Keys tracked individually.
    pub fn tracked_keys(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// Fetches of keys that found the table full.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// All fetches counted since the start (or the last reset).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Forgets every count (tests reset between phases).
    pub fn reset(&self) {
        for s in &self.shards {
            let mut m = lock(s);
            self.keys.fetch_sub(m.len(), Ordering::Relaxed);
            m.clear();
        }
        self.overflow.store(0, Ordering::Relaxed);
        self.total.store(0, Ordering::Relaxed);
    }
}

/// Object versions: per exact object (path and query) plus per-prefix bumps.
/// An object's version is its own bumps plus those of every prefix it is
/// under; version 0 is the start.
#[derive(Debug)]
pub(crate) struct Versions {
    shards: Vec<Mutex<HashMap<Box<str>, u64, Hasher>>>,
    hasher: Hasher,
    keys: AtomicUsize,
    max_keys: usize,
    prefixes: Mutex<Vec<(String, u64)>>,
    /// Lets the hot path skip the prefix lock while nothing was bumped.
    any_prefix: std::sync::atomic::AtomicBool,
}

impl Versions {
    pub(crate) fn new(max_keys: usize) -> Self {
        Versions {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Hasher::with_seed(1))))
                .collect(),
            hasher: Hasher::with_seed(1),
            keys: AtomicUsize::new(0),
            max_keys,
            prefixes: Mutex::new(Vec::new()),
            any_prefix: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<Box<str>, u64, Hasher>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub(crate) fn get(&self, target: &str) -> u64 {
        let own = lock(self.shard(target)).get(target).copied().unwrap_or(0);
        if !self.any_prefix.load(Ordering::Acquire) {
            return own;
        }
        lock(&self.prefixes)
            .iter()
            .filter(|(p, _)| target.starts_with(p.as_str()))
            .fold(own, |v, (_, n)| v + n)
    }

    /// Bumps one object; returns its new version.
    pub(crate) fn bump(&self, target: &str) -> Result<u64, OriginError> {
        {
            let mut m = lock(self.shard(target));
            if let Some(v) = m.get_mut(target) {
                *v += 1;
            } else {
                if self
                    .keys
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < self.max_keys).then_some(n + 1)
                    })
                    .is_err()
                {
                    return Err(OriginError::Full {
                        table: "versioned keys",
                        limit: self.max_keys,
                    });
                }
                m.insert(target.into(), 1);
            }
        }
        Ok(self.get(target))
    }

    /// Bumps every object under `prefix`; returns that prefix's bump count.
    pub(crate) fn bump_prefix(&self, prefix: &str) -> Result<u64, OriginError> {
        let mut p = lock(&self.prefixes);
        let n = if let Some((_, n)) = p.iter_mut().find(|(q, _)| q == prefix) {
            *n += 1;
            *n
        } else {
            if p.len() >= MAX_PREFIX_BUMPS {
                return Err(OriginError::Full {
                    table: "prefix bumps",
                    limit: MAX_PREFIX_BUMPS,
                });
            }
            p.push((prefix.to_string(), 1));
            1
        };
        self.any_prefix.store(true, Ordering::Release);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded() {
        let c = FetchCounts::new(2);
        assert!(c.arrive("/a"));
        assert!(c.arrive("/a"));
        assert!(c.arrive("/b accept-encoding=gzip"));
        assert!(!c.arrive("/c"));
        c.finish("/a", Outcome::Ok);
        c.finish("/c", Outcome::Ok);
        assert_eq!(c.get("/a").fetches, 2);
        assert_eq!(c.get("/a").ok, 1);
        assert_eq!(c.get("/c"), KeyCounts::default());
        assert_eq!(c.for_target("/b").fetches, 1);
        assert_eq!(c.for_target("/").fetches, 0);
        assert_eq!((c.tracked_keys(), c.overflow(), c.total()), (2, 1, 4));
        assert_eq!(c.top(1)[0].0, "/a");
        c.reset();
        assert_eq!((c.tracked_keys(), c.overflow(), c.total()), (0, 0, 0));
        assert!(c.arrive("/c"));
    }

    #[test]
    fn versions_add_prefix_bumps() {
        let v = Versions::new(1);
        assert_eq!(v.get("/static/a"), 0);
        assert_eq!(v.bump("/static/a").unwrap(), 1);
        assert!(v.bump("/static/b").is_err());
        v.bump_prefix("/static/").unwrap();
        assert_eq!(v.get("/static/a"), 2);
        assert_eq!(v.get("/static/b"), 1);
        assert_eq!(v.get("/other"), 0);
    }
}
