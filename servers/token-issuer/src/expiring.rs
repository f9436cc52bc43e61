//! A bounded set of 128-bit keys, each kept until a time in seconds: the revocation set ([`crate::revoke`]) and the
//! assertion replay cache ([`crate::assertion::ReplayCache`]) are both one of these behind a lock.
//!
//! At most `max_entries` keys. Expired entries are swept only when the set is full; if none has expired yet the
//! insert is refused with [`Full`], and the refusal costs O(1) because the earliest expiry held is tracked: a sweep
//! that could free nothing is never run.

use std::collections::HashMap;

/// The set is full and nothing in it has expired yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// Entries held.
    pub entries: usize,
    /// Seconds until the earliest entry expires (at least 1).
    pub retry_after_s: u64,
}

/// Keys with the time until which each is kept (see the module docs).
pub struct ExpiringSet {
    until_s: HashMap<u128, u64>,
    /// No greater than any value in `until_s` (`u64::MAX` when empty): no sweep before then can free anything. It
    /// may lag below the true minimum after a key's time is raised; that only makes a sweep run early.
    earliest_s: u64,
    max_entries: usize,
}

impl std::fmt::Debug for ExpiringSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the keys: a full set holds a million.
        f.debug_struct("ExpiringSet")
            .field("max_entries", &self.max_entries)
            .field("len", &self.until_s.len())
            .finish_non_exhaustive()
    }
}

impl ExpiringSet {
    /// An empty set holding at most `max_entries` keys (at least one).
    pub fn new(max_entries: usize) -> ExpiringSet {
        ExpiringSet {
            until_s: HashMap::new(),
            earliest_s: u64::MAX,
            max_entries: max_entries.max(1),
        }
    }

    /// Whether `key` is held and still kept at `now_s`.
    pub fn live(&self, key: u128, now_s: u64) -> bool {
        self.until_s.get(&key).is_some_and(|&u| now_s < u)
    }

    /// Keeps `key` until at least `until_s` (a key already held keeps the later of its two times). When the set is
    /// full, expired entries are swept first; if that frees nothing the key is refused.
    pub fn keep(&mut self, key: u128, until_s: u64, now_s: u64) -> Result<(), Full> {
        if !self.until_s.contains_key(&key) && self.until_s.len() >= self.max_entries {
            if now_s >= self.earliest_s {
                self.sweep(now_s);
            }
            if self.until_s.len() >= self.max_entries {
                return Err(Full {
                    entries: self.until_s.len(),
                    retry_after_s: self.earliest_s.saturating_sub(now_s).max(1),
                });
            }
        }
        let e = self.until_s.entry(key).or_insert(until_s);
        *e = (*e).max(until_s);
        self.earliest_s = self.earliest_s.min(until_s);
        debug_assert!(self.until_s.len() <= self.max_entries);
        Ok(())
    }

    /// Drops the entries expired at `now_s`; returns how many.
    pub fn sweep(&mut self, now_s: u64) -> usize {
        let before = self.until_s.len();
        self.until_s.retain(|_, u| now_s < *u);
        self.earliest_s = self.until_s.values().copied().min().unwrap_or(u64::MAX);
        before - self.until_s.len()
    }

    /// Entries held (expired ones included until a sweep).
    pub fn len(&self) -> usize {
        self.until_s.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.until_s.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_until_their_time_and_keep_the_later_one() {
        let mut s = ExpiringSet::new(4);
        s.keep(1, 100, 0).unwrap();
        assert!(s.live(1, 99) && !s.live(1, 100) && !s.live(2, 0));
        s.keep(1, 50, 0).unwrap();
        assert!(s.live(1, 99), "an earlier time does not shorten a key");
        s.keep(1, 150, 0).unwrap();
        assert!(s.live(1, 149));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_full_set_sweeps_only_when_something_expired() {
        let mut s = ExpiringSet::new(2);
        s.keep(1, 100, 0).unwrap();
        s.keep(2, 200, 0).unwrap();
        // A key already held is fine when full.
        s.keep(1, 100, 0).unwrap();
        assert_eq!(
            s.keep(3, 300, 50),
            Err(Full {
                entries: 2,
                retry_after_s: 50
            })
        );
        // At 100 key 1 has expired: the sweep makes room.
        s.keep(3, 300, 100).unwrap();
        assert!(!s.live(1, 100) && s.live(2, 100) && s.live(3, 100));
        assert_eq!(s.len(), 2);
        assert_eq!(s.sweep(250), 1);
        assert_eq!((s.len(), s.is_empty()), (1, false));
        assert_eq!(s.sweep(300), 1);
        assert!(s.is_empty());
        // Empty again: nothing is earliest, and the next refusal says so from the new entries.
        s.keep(4, 400, 300).unwrap();
        s.keep(5, 500, 300).unwrap();
        assert_eq!(s.keep(6, 600, 310).unwrap_err().retry_after_s, 90);
    }
}
