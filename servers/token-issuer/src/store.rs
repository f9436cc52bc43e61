//! A bounded, expiring map for the server-side state of the user flows (pending authorization requests, sessions,
//! authorization codes, refresh tokens and their families).
//!
//! Keys are 32 bytes: the SHA-256 of an opaque token, so a memory dump or a timing side channel on the map never
//! reveals a usable token. Every store has a maximum size; an insert into a full store first drops expired entries
//! and otherwise fails with [`StoreFull`] (the endpoints answer 503 with `Retry-After`) rather than growing or
//! evicting live state, which would silently log users out or break codes in flight.
//!
//! Pruning is incremental: entries are queued in insertion order, and each insert looks at a few queue heads
//! ([`PRUNE_PER_INSERT`]), dropping those that have expired. Within one store entries share a lifetime, so insertion
//! order is expiry order and the heads are the first to expire; an entry whose expiry was extended is moved to the
//! back when it reaches the head. No request ever pays for a sweep of the whole map, and lookups check expiry
//! themselves, so a not-yet-pruned entry is never served.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use aws_lc_rs::{digest, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Queue heads examined per insert: enough to keep up with one expiry per insert, with slack.
pub const PRUNE_PER_INSERT: usize = 4;

/// Random bytes in an opaque token (codes, sessions, refresh tokens, pending request ids): 256 bits.
pub const OPAQUE_TOKEN_BYTES: usize = 32;

/// A store key: SHA-256 of the token.
pub type Key = [u8; 32];

/// The store is full of live entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {what} store holds its maximum of {entries} live entries; retry after {retry_after_s} s"
)]
pub struct StoreFull {
    /// Which store.
    pub what: &'static str,
    /// Entries held.
    pub entries: usize,
    /// Seconds until the oldest entry expires.
    pub retry_after_s: u64,
}

/// Why a fresh opaque token could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpaqueError {
    /// The system CSPRNG failed.
    #[error("the system random generator failed")]
    Random,
}

/// A fresh 256-bit random token, unpadded base64url (43 characters), and its store key.
pub fn new_opaque_token() -> Result<(String, Key), OpaqueError> {
    let mut raw = [0u8; OPAQUE_TOKEN_BYTES];
    rand::fill(&mut raw).map_err(|_| OpaqueError::Random)?;
    let token = URL_SAFE_NO_PAD.encode(raw);
    let key = key_of(&token);
    Ok((token, key))
}

/// The store key of a presented token.
pub fn key_of(token: &str) -> Key {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

struct Entry<V> {
    value: V,
    expires_s: u64,
    seq: u64,
}

struct Inner<V> {
    map: HashMap<Key, Entry<V>>,
    /// (key, seq, the expiry when queued).
    order: VecDeque<(Key, u64, u64)>,
    next_seq: u64,
}

/// A bounded map from [`Key`] to `V` with a per-entry expiry (see the module docs).
pub struct TtlStore<V> {
    what: &'static str,
    inner: Mutex<Inner<V>>,
    max_entries: usize,
}

impl<V> std::fmt::Debug for TtlStore<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlStore")
            .field("what", &self.what)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl<V> TtlStore<V> {
    /// An empty store named `what` (in errors) holding at most `max_entries`.
    pub fn new(what: &'static str, max_entries: usize) -> TtlStore<V> {
        TtlStore {
            what,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                next_seq: 0,
            }),
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        // A panic while holding the lock leaves the map consistent (every mutation is a single map operation).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Inserts `value` under `key` until `expires_s`.
    pub fn insert(&self, key: Key, value: V, expires_s: u64, now_s: u64) -> Result<(), StoreFull> {
        let mut g = self.lock();
        prune(&mut g, now_s, PRUNE_PER_INSERT);
        if g.map.len() >= self.max_entries && !g.map.contains_key(&key) {
            // Full: drop every expired head (each queue entry is popped once, so this is amortized O(1)).
            prune(&mut g, now_s, usize::MAX);
            if g.map.len() >= self.max_entries {
                let oldest = g
                    .order
                    .front()
                    .and_then(|(k, _, _)| g.map.get(k))
                    .map_or(now_s + 1, |e| e.expires_s);
                return Err(StoreFull {
                    what: self.what,
                    entries: g.map.len(),
                    retry_after_s: oldest.saturating_sub(now_s).max(1),
                });
            }
        }
        let seq = g.next_seq;
        g.next_seq += 1;
        g.map.insert(
            key,
            Entry {
                value,
                expires_s,
                seq,
            },
        );
        g.order.push_back((key, seq, expires_s));
        // Entries removed early (a redeemed code) leave stale queue slots; compact when they dominate, which costs
        // O(n) once per n removals.
        if g.order.len() > 2 * self.max_entries + 64 {
            let Inner { map, order, .. } = &mut *g;
            order.retain(|(k, s, _)| map.get(k).is_some_and(|e| e.seq == *s));
        }
        Ok(())
    }

    /// Runs `f` on the live entry under `key` (with its expiry, which `f` may extend); `None` if absent or expired.
    pub fn with_mut<R>(
        &self,
        key: &Key,
        now_s: u64,
        f: impl FnOnce(&mut V, &mut u64) -> R,
    ) -> Option<R> {
        let mut g = self.lock();
        let e = g.map.get_mut(key)?;
        if e.expires_s <= now_s {
            return None;
        }
        Some(f(&mut e.value, &mut e.expires_s))
    }

    /// Removes and returns the live entry under `key`.
    pub fn remove(&self, key: &Key, now_s: u64) -> Option<V> {
        let mut g = self.lock();
        let e = g.map.remove(key)?;
        (e.expires_s > now_s).then_some(e.value)
    }

    /// Entries held (expired ones included until pruned).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Looks at up to `budget` queue heads: drops expired entries and stale slots, requeues extended entries, and stops
/// at the first live entry that is simply not due yet (everything behind it was queued later).
fn prune<V>(g: &mut Inner<V>, now_s: u64, budget: usize) {
    let Inner { map, order, .. } = g;
    for _ in 0..budget {
        let Some(&(k, seq, queued_expiry_s)) = order.front() else {
            return;
        };
        match map.get(&k) {
            Some(e) if e.seq == seq && e.expires_s > now_s => {
                if e.expires_s <= queued_expiry_s {
                    return;
                }
                // Extended since it was queued: its place is further back.
                let extended_s = e.expires_s;
                order.pop_front();
                order.push_back((k, seq, extended_s));
            }
            Some(e) if e.seq == seq => {
                map.remove(&k);
                order.pop_front();
            }
            _ => {
                order.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_a_full_store_refuses_until_one_does() {
        let s: TtlStore<u32> = TtlStore::new("test", 2);
        s.insert([1; 32], 1, 100, 0).unwrap();
        s.insert([2; 32], 2, 200, 0).unwrap();
        let full = s.insert([3; 32], 3, 300, 50).unwrap_err();
        assert_eq!(full.entries, 2);
        assert_eq!(full.retry_after_s, 50);
        assert_eq!(s.with_mut(&[1; 32], 99, |v, _| *v), Some(1));
        assert_eq!(s.with_mut(&[1; 32], 100, |v, _| *v), None);
        // At 100 the first has expired: the insert makes room.
        s.insert([3; 32], 3, 300, 100).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(&[2; 32], 150), Some(2));
        assert_eq!(s.remove(&[2; 32], 150), None);
        assert_eq!(
            s.remove(&[3; 32], 300),
            None,
            "expired entries are not returned"
        );
    }

    #[test]
    fn extended_entries_survive_pruning_past_their_first_expiry() {
        let s: TtlStore<u32> = TtlStore::new("test", 2);
        s.insert([1; 32], 1, 100, 0).unwrap();
        s.insert([2; 32], 2, 100, 0).unwrap();
        // Extend the first to 300.
        s.with_mut(&[1; 32], 50, |_, exp| *exp = 300).unwrap();
        // At 150 the second has expired and makes room; the first, extended, stays.
        s.insert([3; 32], 3, 250, 150).unwrap();
        assert_eq!(s.with_mut(&[1; 32], 150, |v, _| *v), Some(1));
        assert_eq!(s.with_mut(&[2; 32], 150, |v, _| *v), None);
        // Full of live entries: refused, with the time until the oldest queued one expires.
        let full = s.insert([4; 32], 4, 400, 160).unwrap_err();
        assert_eq!(full.entries, 2);
        assert!(full.retry_after_s >= 1);
        assert_eq!(s.with_mut(&[1; 32], 299, |v, _| *v), Some(1));
        assert_eq!(s.with_mut(&[1; 32], 300, |v, _| *v), None);
    }

    #[test]
    fn removed_entries_do_not_grow_the_queue_without_bound() {
        let s: TtlStore<u32> = TtlStore::new("test", 4);
        for i in 0..10_000u32 {
            let (_, k) = new_opaque_token().unwrap();
            s.insert(k, i, 1_000, 0).unwrap();
            assert_eq!(s.remove(&k, 0), Some(i));
        }
        assert!(s.lock().order.len() <= 2 * 4 + 64 + 1);
        assert!(s.is_empty());
    }

    #[test]
    fn opaque_tokens_are_43_base64url_characters() {
        let (a, ka) = new_opaque_token().unwrap();
        let (b, _) = new_opaque_token().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_eq!(key_of(&a), ka);
    }
}
