//! The memory tier's storage: objects, `Vary` specs and pass markers in a [`Sharded`] S3-FIFO, plus the key index
//! and purge log that make purges exact.
//!
//! - **Lookups** take one shard lock (inside [`Sharded`]) and clone an `Arc` out: no allocation, no other lock.
//! - **Stores, removals and purges** also take the index lock, one `Mutex` for the whole store. Stores happen once
//!   per completed upstream fetch, so the lock is cold; holding it across "check the purge log, insert, fix the
//!   index" is what makes a purge exact: a fetch that started before a purge (its `purge_seq` is older) can never
//!   store its result after the purge has been acknowledged.
//! - **The index** maps each primary key's text to its path offset (a `BTreeMap`), so a purge by prefix is a range
//!   scan when the host is given, a full scan otherwise; variants are found through their [`VarySpec`].
//! - **Evicted objects** are handed to the [`LowerTier`] seam (the disk tier), under the index lock; purges remove
//!   from the lower tier under the same lock, before they are logged.
//! - **Prefetched objects** leaving the memory tier (evicted, replaced, purged) while still unused are counted
//!   `evicted_unused` here, the one place every departure passes (see `cache::prefetch`).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_cache_semantics::CachePolicy;

use super::key::{CacheKey, VarySpec, hash_parts};
use super::policy::{Directives, Freshness};
use super::prefetch::{Counts, Outcome, PrefetchMark};
use crate::evict::{CacheConfig, MemoryPolicy, ShardCountError, Sharded};

/// Purges remembered for in-flight fetches; a fetch older than the oldest remembered purge does not store.
pub const PURGE_LOG_LEN: usize = 4096;

/// A stored response: head, body chunks, and the policy that decides its reuse.
#[derive(Debug)]
pub struct Entry {
    /// The primary key's text (`host + path + query`).
    pub key: Box<str>,
    /// Byte offset of the path in `key` (the host's length), for purges of objects only a lower tier holds.
    pub path_at: usize,
    /// Whether this is a `Vary` variant (stored under a variant hash, not the primary hash).
    pub variant: bool,
    /// Response status.
    pub status: StatusCode,
    /// Response headers as stored (hop-by-hop fields and `Age` removed; `Content-Length` set).
    pub headers: HeaderMap,
    /// Body, in the frames it arrived in (shared, never copied when served).
    pub body: Box<[Bytes]>,
    /// Sum of the body frames' lengths.
    pub body_bytes: u64,
    /// The RFC 9111 policy (request and response as received).
    pub policy: CachePolicy,
    /// Response `Cache-Control` directives.
    pub directives: Directives,
    /// Precomputed freshness.
    pub freshness: Freshness,
    /// Set when a prefetch stored this object: its first client use, or its departure unused, is counted once.
    /// `None` for everything else (and for copies read back from a lower tier: see `cache::prefetch`).
    pub prefetch: Option<Arc<PrefetchMark>>,
    /// The HTTP/1.1 status line and stored header fields as sent on the hit fast path (everything but `Age`,
    /// `Cache-Status` and, when the response has none, `Date`, which change per response), built at the first
    /// such hit: serving a hit is then one copy instead of a walk over the `HeaderMap`.
    pub wire_head: std::sync::OnceLock<WireHead>,
}

/// See [`Entry::wire_head`].
#[derive(Debug)]
pub struct WireHead {
    /// Status line and header fields, each ending in CRLF.
    pub bytes: Bytes,
    /// Whether the stored fields include `Date` (else each response gets the current one).
    pub has_date: bool,
    /// `cache-status: ` and this tier's hit member up to its `ttl=` value (with the upstream's members first), the
    /// part of `Cache-Status` that is the same for every hit on this object.
    pub hit_status_prefix: Bytes,
}

impl Entry {
    /// [`Entry::wire_head`], built if needed; `tier` is the name in this tier's `Cache-Status` member.
    pub fn wire_head(&self, tier: &str) -> &WireHead {
        self.wire_head.get_or_init(|| {
            let mut b = Vec::with_capacity(64 + self.headers.len() * 48);
            b.extend_from_slice(b"HTTP/1.1 ");
            b.extend_from_slice(self.status.as_str().as_bytes());
            b.push(b' ');
            b.extend_from_slice(
                self.status
                    .canonical_reason()
                    .unwrap_or("Unknown")
                    .as_bytes(),
            );
            b.extend_from_slice(b"\r\n");
            for (n, v) in &self.headers {
                if n != super::status::CACHE_STATUS && n != http::header::AGE {
                    b.extend_from_slice(n.as_str().as_bytes());
                    b.extend_from_slice(b": ");
                    b.extend_from_slice(v.as_bytes());
                    b.extend_from_slice(b"\r\n");
                }
            }
            let mut prefix = String::from("cache-status: ");
            let hit = super::status::Status {
                hit: true,
                ..super::status::Status::default()
            };
            hit.write_to(
                tier,
                self.headers.get(super::status::CACHE_STATUS),
                &mut prefix,
            );
            prefix.push_str("; ttl=");
            WireHead {
                bytes: Bytes::from(b),
                has_date: self.headers.contains_key(http::header::DATE),
                hit_status_prefix: Bytes::from(prefix),
            }
        })
    }

    /// The size charged to the byte-bounded policy: body, header bytes three times (the policy keeps its own
    /// copy, and hits build the serialized [`Entry::wire_head`]) and a fixed overhead per object.
    pub fn size_bytes(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        self.body_bytes + 3 * headers as u64 + 512 + self.key.len() as u64
    }
}

/// A "hit-for-pass" marker: the last response for this key could not be shared (private, no-store, too large), so
/// requests go straight upstream, uncoalesced, until `until` instead of queueing behind each other.
#[derive(Debug)]
pub struct PassMarker {
    /// The primary key's text.
    pub key: Box<str>,
    /// When the marker stops applying.
    pub until: Instant,
    /// Why (for `Cache-Status; detail=`).
    pub reason: &'static str,
}

/// What the store holds under one hash.
#[derive(Debug, Clone)]
pub enum Stored {
    /// A response (under the primary hash, or under a variant hash).
    Object(Arc<Entry>),
    /// The selecting headers of the primary key's responses (and the key text); the responses are under variant
    /// hashes.
    Vary(Arc<VarySpec>, Arc<str>),
    /// Send requests for this key upstream without coalescing.
    Pass(Arc<PassMarker>),
}

impl Stored {
    /// The primary key's text, when stored under the primary hash.
    fn primary_text(&self) -> Option<&str> {
        match self {
            Stored::Object(e) if !e.variant => Some(&e.key),
            Stored::Object(_) => None,
            Stored::Vary(_, key) => Some(key),
            Stored::Pass(m) => Some(&m.key),
        }
    }
}

/// What a purge removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRule {
    /// Only keys of this host (lowercase); `None` = every host.
    pub host: Option<String>,
    /// The path (and query) to match.
    pub path: String,
    /// Match every key whose path starts with `path` (else only the exact path).
    pub prefix: bool,
}

impl PurgeRule {
    /// Whether the rule covers a primary key text `host + path` whose path starts at `path_at`.
    pub fn matches(&self, key_text: &str, path_at: usize) -> bool {
        let Some((host, path)) = key_text.split_at_checked(path_at) else {
            return false;
        };
        if let Some(h) = &self.host
            && h != host
        {
            return false;
        }
        if self.prefix {
            path.starts_with(&self.path)
        } else {
            path == self.path
        }
    }

    /// The rule for exactly one key.
    pub fn exact(key: &CacheKey) -> Self {
        PurgeRule {
            host: Some(key.host().to_string()),
            path: key.path().to_string(),
            prefix: false,
        }
    }
}

/// Where the memory tier hands evicted objects and where a miss may look before going upstream: the seam for the
/// disk tier (`crate::disk::DiskTier` implements it, see `cache::lower`). `offer` and `remove` are called with the
/// store's index lock held (so a purge cannot slip between an eviction and its hand-down): they must queue work,
/// never block on I/O.
pub trait LowerTier: Send + Sync + std::fmt::Debug + 'static {
    /// An object the memory tier evicted; the lower tier may keep it.
    fn offer(&self, key_hash: u64, entry: Arc<Entry>);
    /// A lookup after a memory miss, before the upstream fetch (inside the coalesced fetch, so once per key).
    fn lookup(
        &self,
        key_hash: u64,
    ) -> Pin<Box<dyn Future<Output = Option<Arc<Entry>>> + Send + '_>>;
    /// Forget a key (purge, invalidation); must take effect before any later `lookup` returns.
    fn remove(&self, key_hash: u64);
    /// Forget every object `rule` covers, including ones the memory tier no longer knows (evicted objects and
    /// variants whose `Vary` spec was evicted); must take effect before any later `lookup` returns. Returns how
    /// many objects were removed. The default keeps nothing to purge.
    fn purge(&self, rule: &PurgeRule) -> usize {
        let _ = rule;
        0
    }
    /// Whether the key is stored (or queued to be) here, without reading it: a cheap check for prefetches, which
    /// skip what the tier already holds. The default says no (the prefetch then finds it inside the fetch).
    fn contains(&self, key_hash: u64) -> bool {
        let _ = key_hash;
        false
    }
    /// The `Cache-Status` detail of a hit from this tier (an sf-token).
    fn name(&self) -> &'static str {
        "lower-tier"
    }
}

#[derive(Debug, Default)]
struct Index {
    /// Primary key texts stored (objects, vary specs, pass markers), with their path offsets.
    keys: BTreeMap<Box<str>, usize>,
    /// Recent purges: (sequence number, rule).
    log: VecDeque<(u64, PurgeRule)>,
}

/// The memory tier.
#[derive(Debug)]
pub struct Store {
    mem: Sharded<MemoryPolicy<Stored>>,
    index: Mutex<Index>,
    /// Sequence number of the last purge; fetches remember it when they start.
    purge_seq: AtomicU64,
    lower: Option<Arc<dyn LowerTier>>,
    /// Where prefetched objects leaving unused are counted (`None`: nothing is ever prefetched into this store).
    prefetch: Option<Arc<Counts>>,
}

/// Why [`Store::insert`] did not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// A purge covering the key happened after the fetch started.
    Purged,
    /// The eviction policy refused it (too large for a shard, or not admitted).
    Refused,
}

impl Store {
    /// A store of `capacity_bytes` in `shards` shards (a power of two), refusing objects over `max_object_bytes`
    /// (capped at one shard's capacity).
    pub fn new(
        capacity_bytes: u64,
        shards: usize,
        max_object_bytes: u64,
        lower: Option<Arc<dyn LowerTier>>,
    ) -> Result<Self, ShardCountError> {
        let per_shard = (capacity_bytes / shards.max(1) as u64).max(1);
        let share = (max_object_bytes as f64 / per_shard as f64).clamp(0.0, 1.0);
        let mem = Sharded::new(
            shards,
            CacheConfig {
                capacity_bytes,
                max_object_share: share,
            },
        )?;
        Ok(Store {
            mem,
            index: Mutex::new(Index::default()),
            purge_seq: AtomicU64::new(0),
            lower,
            prefetch: None,
        })
    }

    /// Counts prefetched objects that leave this store unused in `counts`.
    pub(crate) fn with_prefetch_counts(mut self, counts: Arc<Counts>) -> Self {
        self.prefetch = Some(counts);
        self
    }

    /// A value left the memory tier (evicted, replaced or purged): a prefetched object nobody used is counted.
    /// Moving down to the disk tier counts as leaving: the mark does not travel (see `cache::prefetch`).
    fn departed(&self, value: &Stored) {
        if let Stored::Object(e) = value
            && let Some(mark) = &e.prefetch
            && mark.evict()
            && let Some(c) = &self.prefetch
        {
            c.count(Outcome::EvictedUnused);
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // The index holds plain data; a panic mid-update at worst leaves a stale key text (a purge no-op).
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks a hash up (recording the access for the eviction policy).
    pub fn get(&self, hash: u64) -> Option<Stored> {
        self.mem.get(hash)
    }

    /// The purge sequence number now; pass it to [`Store::insert`] for what a fetch started now brings back.
    pub fn purge_seq(&self) -> u64 {
        self.purge_seq.load(Ordering::Acquire)
    }

    /// The lower tier, if any.
    pub fn lower(&self) -> Option<&Arc<dyn LowerTier>> {
        self.lower.as_ref()
    }

    /// Stores `value` under `hash` unless a purge covering `key` happened after `since_seq`.
    pub fn insert(
        &self,
        hash: u64,
        key: &CacheKey,
        value: Stored,
        size_bytes: u64,
        since_seq: u64,
    ) -> Result<(), NotStored> {
        let stored = {
            let mut index = self.index();
            let current = self.purge_seq.load(Ordering::Acquire);
            if current != since_seq {
                let oldest_logged = index.log.front().map_or(u64::MAX, |(s, _)| *s);
                if oldest_logged > since_seq + 1 {
                    // Purges newer than the fetch were dropped from the log: we cannot tell, so do not store.
                    return Err(NotStored::Purged);
                }
                let purged = index
                    .log
                    .iter()
                    .any(|(s, rule)| *s > since_seq && rule.matches(&key.text, key.path_at));
                if purged {
                    return Err(NotStored::Purged);
                }
            }
            let primary = value.primary_text().is_some();
            // A prefetched object has not been asked for yet, but is expected to be: see `Policy::insert_expected`.
            let expected = matches!(&value, Stored::Object(e) if e.prefetch.is_some());
            let evicted = if expected {
                self.mem.insert_expected(hash, value, size_bytes)
            } else {
                self.mem.insert(hash, value, size_bytes)
            };
            for e in &evicted.entries {
                if let Some(text) = e.value.primary_text() {
                    index.keys.remove(text);
                }
                self.departed(&e.value);
            }
            if let Some(old) = &evicted.replaced {
                self.departed(old);
            }
            if evicted.stored() && primary {
                index.keys.insert(key.text.clone(), key.path_at);
            }
            let stored = evicted.stored();
            // Hand evicted objects down inside the lock (the lower tier only queues them): a purge that ran
            // between the eviction and the hand-down would miss the object in both tiers and the write would
            // bring it back after the purge was acknowledged.
            if let Some(lower) = &self.lower {
                for e in evicted.entries {
                    if let Stored::Object(entry) = e.value {
                        lower.offer(e.key, entry);
                    }
                }
            }
            stored
        };
        if stored {
            Ok(())
        } else {
            Err(NotStored::Refused)
        }
    }

    /// Removes everything a rule covers (objects, their variants, specs, markers), logs the purge so in-flight
    /// fetches that started earlier will not store, and returns how many primary keys were removed.
    pub fn purge(&self, rule: PurgeRule) -> usize {
        let mut removed_hashes = Vec::new();
        let mut index = self.index();
        let seq = self.purge_seq.load(Ordering::Acquire) + 1;
        let matching: Vec<Box<str>> = match &rule.host {
            Some(host) => {
                let start = format!("{host}{}", rule.path);
                index
                    .keys
                    .range::<str, _>((Bound::Included(start.as_str()), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(start.as_str()))
                    .filter(|(k, at)| rule.matches(k, **at))
                    .map(|(k, _)| k.clone())
                    .collect()
            }
            None => index
                .keys
                .iter()
                .filter(|(k, at)| rule.matches(k, **at))
                .map(|(k, _)| k.clone())
                .collect(),
        };
        for text in &matching {
            index.keys.remove(text);
            let hash = hash_parts(&[text.as_bytes()]);
            match self.mem.remove(hash) {
                Some(Stored::Vary(spec, _)) => {
                    for v in spec.variants() {
                        if let Some(old) = self.mem.remove(v) {
                            self.departed(&old);
                        }
                        removed_hashes.push(v);
                    }
                }
                Some(old) => self.departed(&old),
                None => {}
            }
            removed_hashes.push(hash);
        }
        // The log entry also covers keys the index does not know yet (a fetch in flight): it stops them storing.
        // The lower tier forgets the keys before the purge is logged and the lock released, so neither a
        // later lookup there nor an eviction racing with the purge can bring the old object back.
        if let Some(lower) = &self.lower {
            for h in &removed_hashes {
                lower.remove(*h);
            }
            lower.purge(&rule);
        }
        index.log.push_back((seq, rule));
        while index.log.len() > PURGE_LOG_LEN {
            index.log.pop_front();
        }
        self.purge_seq.store(seq, Ordering::Release);
        matching.len()
    }

    /// Drops everything (and logs a purge of every key); returns how many primary keys were known.
    pub fn clear(&self) -> usize {
        let n = self.purge(PurgeRule {
            host: None,
            path: String::new(),
            prefix: true,
        });
        // Orphaned variants (their spec evicted) are not in the index: clearing the shards catches them.
        self.mem.clear();
        n
    }

    /// Whether anything is stored under `hash` (no access recorded).
    pub fn contains(&self, hash: u64) -> bool {
        self.mem.contains(hash)
    }

    /// Objects stored (all kinds).
    pub fn len(&self) -> usize {
        self.mem.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }

    /// Bytes stored.
    pub fn used_bytes(&self) -> u64 {
        self.mem.used_bytes()
    }

    /// Capacity, bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.mem.capacity_bytes()
    }
}
