//! The revocation set: the `jti`s of revoked access tokens, each kept until the token would have expired anyway
//! (its `exp` plus the clock leeway), after which verification refuses it on its own.
//!
//! Bounded: at most `max_entries` ids (config `max_revoked_tokens`, default 1,000,000, about 40 MB). Expired
//! entries are swept when the set is full; if none has expired yet the revocation is refused (the endpoint answers
//! 503 `temporarily_unavailable`, which RFC 7009 §2.2.1 tells clients to retry), and the refusal costs O(1) because
//! the earliest expiry in the set is tracked: a sweep that could free nothing is never run.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest;

/// The set is full and nothing in it has expired yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the revocation set holds {entries} tokens, none expired yet; retry after {retry_after_s} s"
)]
pub struct RevocationFull {
    /// Entries held.
    pub entries: usize,
    /// Seconds until the earliest entry expires.
    pub retry_after_s: u64,
}

struct Inner {
    /// Key: the first 16 bytes of SHA-256(jti) (fixed size whatever the jti; collisions are ~2^-64 at a billion
    /// entries). Value: until when it is kept.
    until_s: HashMap<u128, u64>,
    /// The smallest value in `until_s` (`u64::MAX` when empty): no sweep before then can free anything.
    earliest_s: u64,
}

/// Revoked token ids with their expiry (see the module docs).
pub struct Revocations {
    inner: Mutex<Inner>,
    max_entries: usize,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

fn key(jti: &str) -> u128 {
    let d = digest::digest(&digest::SHA256, jti.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    u128::from_le_bytes(k)
}

impl Revocations {
    /// An empty set holding at most `max_entries` ids.
    pub fn new(max_entries: usize) -> Revocations {
        Revocations {
            inner: Mutex::new(Inner {
                until_s: HashMap::new(),
                earliest_s: u64::MAX,
            }),
            max_entries: max_entries.max(1),
        }
    }

    /// Records `jti` as revoked until `until_s`.
    pub fn revoke(&self, jti: &str, until_s: u64, now_s: u64) -> Result<(), RevocationFull> {
        if until_s <= now_s {
            return Ok(()); // already expired: verification refuses it without us
        }
        let k = key(jti);
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !g.until_s.contains_key(&k) && g.until_s.len() >= self.max_entries {
            if now_s >= g.earliest_s {
                Self::sweep_locked(&mut g, now_s);
            }
            if g.until_s.len() >= self.max_entries {
                return Err(RevocationFull {
                    entries: g.until_s.len(),
                    retry_after_s: g.earliest_s.saturating_sub(now_s).max(1),
                });
            }
        }
        let e = g.until_s.entry(k).or_insert(until_s);
        *e = (*e).max(until_s);
        g.earliest_s = g.earliest_s.min(until_s);
        Ok(())
    }

    /// Whether `jti` is revoked at `now_s`.
    pub fn is_revoked(&self, jti: &str, now_s: u64) -> bool {
        let k = key(jti);
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.until_s.get(&k).is_some_and(|&u| now_s < u)
    }

    /// Drops expired entries; returns how many.
    pub fn sweep(&self, now_s: u64) -> usize {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Self::sweep_locked(&mut g, now_s)
    }

    fn sweep_locked(g: &mut Inner, now_s: u64) -> usize {
        let before = g.until_s.len();
        g.until_s.retain(|_, u| now_s < *u);
        g.earliest_s = g.until_s.values().copied().min().unwrap_or(u64::MAX);
        before - g.until_s.len()
    }

    /// Entries held (expired ones included until a sweep).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .until_s
            .len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_until_expiry() {
        let r = Revocations::new(10);
        r.revoke("a", 100, 10).unwrap();
        assert!(r.is_revoked("a", 99));
        assert!(!r.is_revoked("a", 100));
        assert!(!r.is_revoked("b", 50));
        // Already expired: nothing to remember.
        r.revoke("c", 10, 10).unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn full_set_sweeps_expired_entries_or_refuses() {
        let r = Revocations::new(2);
        r.revoke("a", 100, 0).unwrap();
        r.revoke("b", 200, 0).unwrap();
        // Revoking one already held is fine when full.
        r.revoke("a", 100, 0).unwrap();
        let full = r.revoke("c", 300, 50).unwrap_err();
        assert_eq!(
            full,
            RevocationFull {
                entries: 2,
                retry_after_s: 50
            }
        );
        // At 100 "a" has expired: the sweep makes room.
        r.revoke("c", 300, 100).unwrap();
        assert!(r.is_revoked("b", 100) && r.is_revoked("c", 100));
        assert!(!r.is_revoked("a", 100));
        assert_eq!(r.len(), 2);
        assert_eq!(r.sweep(250), 1);
        assert_eq!(r.len(), 1);
    }
}
