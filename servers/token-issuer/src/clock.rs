//! The issuer's notion of "now", in whole seconds since the Unix epoch (the unit of JWT `NumericDate` claims).
//!
//! Everything time-dependent (token `iat`/`exp`, verification, key retirement, revocation expiry) reads a [`Clock`]
//! instead of the system time directly, so tests can move time forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in seconds since the Unix epoch.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's wall clock (what the server runs on).
    #[default]
    System,
    /// A clock that only moves when told to (tests); clones share the same time.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at `start_s`.
    pub fn manual(start_s: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(start_s)))
    }

    /// Now, in seconds since the Unix epoch. A system clock set before 1970 reads as 0.
    pub fn now_s(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward by `by_s` seconds; a system clock is not affected.
    pub fn advance(&self, by_s: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(by_s, Ordering::Relaxed);
        }
    }

    /// Sets a manual clock to `to_s` (backwards too, to test not-yet-valid tokens); a system clock is not affected.
    pub fn set(&self, to_s: u64) {
        if let Clock::Manual(t) = self {
            t.store(to_s, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = Clock::manual(1_000);
        let d = c.clone();
        assert_eq!(c.now_s(), 1_000);
        d.advance(5);
        assert_eq!(c.now_s(), 1_005);
        c.set(10);
        assert_eq!(d.now_s(), 10);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(Clock::System.now_s() > 1_577_836_800);
    }
}
