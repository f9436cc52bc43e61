//! The revocation set: the `jti`s of revoked access tokens, each kept until the token would have expired anyway
//! (its `exp` plus the clock leeway), after which verification refuses it on its own.
//!
//! Bounded: at most `max_entries` ids (config `max_revoked_tokens`, default 1,000,000, about 40 MB), in an
//! [`ExpiringSet`]: expired entries are swept when the set is full; if none has expired yet the revocation is
//! refused (the endpoint answers 503 `temporarily_unavailable`, which RFC 7009 §2.2.1 tells clients to retry).

use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest;

use crate::expiring::ExpiringSet;

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

/// Revoked token ids with their expiry (see the module docs). Key: the first 16 bytes of SHA-256(jti) (fixed size
/// whatever the jti; collisions are ~2^-64 at a billion entries).
#[derive(Debug)]
pub struct Revocations {
    inner: Mutex<ExpiringSet>,
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
            inner: Mutex::new(ExpiringSet::new(max_entries)),
        }
    }

    /// Records `jti` as revoked until `until_s`.
    pub fn revoke(&self, jti: &str, until_s: u64, now_s: u64) -> Result<(), RevocationFull> {
        if until_s <= now_s {
            return Ok(()); // already expired: verification refuses it without us
        }
        self.set()
            .keep(key(jti), until_s, now_s)
            .map_err(|f| RevocationFull {
                entries: f.entries,
                retry_after_s: f.retry_after_s,
            })
    }

    /// Whether `jti` is revoked at `now_s`.
    pub fn is_revoked(&self, jti: &str, now_s: u64) -> bool {
        self.set().live(key(jti), now_s)
    }

    /// Drops expired entries; returns how many.
    pub fn sweep(&self, now_s: u64) -> usize {
        self.set().sweep(now_s)
    }

    /// Entries held (expired ones included until a sweep).
    pub fn len(&self) -> usize {
        self.set().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set(&self) -> std::sync::MutexGuard<'_, ExpiringSet> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
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
