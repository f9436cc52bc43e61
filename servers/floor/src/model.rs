//! The injected-latency models: a per-request delay and periodic stalls.

use std::time::{Duration, Instant};

use crate::FloorError;

/// The exponential part of a delay is capped at this many means.
///
/// Without a cap a single draw is bounded only by the 53-bit uniform (about
/// 36.7 means); capping at 20 means makes the worst single delay a documented
/// number while changing the distribution only beyond its
/// `1 - e^-20 ≈ 1 - 2.1e-9` quantile.
pub const EXP_CAP_MEANS: f64 = 20.0;

/// Largest accepted fixed delay or exponential mean (60 s), so a typo cannot
/// park requests (and their connection slots) for hours.
pub const MAX_DELAY_US: u64 = 60_000_000;

/// Largest accepted stall period (1 hour).
pub const MAX_STALL_EVERY_MS: u64 = 3_600_000;

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Per-request injected delay: `fixed_us` plus an exponential draw with mean
/// `exp_mean_us`.
///
/// Counter-based: the k-th request's draw depends only on `(seed, k)`, so a
/// test can recompute exactly the delays a server handed out for requests
/// `0..N`, whatever order they arrived or completed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayModel {
    /// Constant part of every delay, microseconds.
    pub fixed_us: u64,
    /// Mean of the exponential part, microseconds; 0 disables it.
    pub exp_mean_us: u64,
    /// Seed of the deterministic draw sequence.
    pub seed: u64,
}

impl DelayModel {
    /// The k-th request's delay: `fixed + min(-ln(u), EXP_CAP_MEANS) * mean`,
    /// where `u` in (0, 1] comes from the top 53 bits of the k-th output of
    /// SplitMix64 seeded with `seed` (output k = mix(seed + (k+1)·γ)).
    /// Nanosecond resolution; saturates instead of overflowing.
    pub fn delay_for(&self, k: u64) -> Duration {
        let fixed_ns = self.fixed_us.saturating_mul(1_000);
        if self.exp_mean_us == 0 {
            return Duration::from_nanos(fixed_ns);
        }
        let x = splitmix64_mix(
            self.seed
                .wrapping_add(k.wrapping_add(1).wrapping_mul(GAMMA)),
        );
        // (x >> 11) + 1 is in 1..=2^53, so u is in (0, 1] and ln(u) is finite.
        let u = ((x >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let e = (-u.ln()).min(EXP_CAP_MEANS);
        let exp_ns = (e * self.exp_mean_us as f64 * 1_000.0).round() as u64;
        Duration::from_nanos(fixed_ns.saturating_add(exp_ns))
    }

    /// Theoretical q-quantile of the delay in microseconds:
    /// `fixed + min(-ln(1-q), EXP_CAP_MEANS) * mean`. `q` is clamped to
    /// [0, 1]; `q = 1` gives the cap.
    pub fn quantile_us(&self, q: f64) -> f64 {
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // ln_1p keeps precision for small q; for q = 1 it is -inf -> capped.
        let e = (-(-q).ln_1p()).min(EXP_CAP_MEANS);
        self.fixed_us as f64 + e * self.exp_mean_us as f64
    }

    /// Theoretical mean delay in microseconds, accounting for the cap:
    /// `fixed + mean·(1 - e^-cap)`.
    pub fn mean_us(&self) -> f64 {
        self.fixed_us as f64 + self.exp_mean_us as f64 * (1.0 - (-EXP_CAP_MEANS).exp())
    }

    /// Checks the bounds; errors name the command-line flag.
    pub fn validate(&self) -> Result<(), FloorError> {
        if self.fixed_us > MAX_DELAY_US {
            return Err(FloorError::invalid(
                "--delay-fixed-us",
                format!(
                    "must be at most {MAX_DELAY_US} (60 s), got {}",
                    self.fixed_us
                ),
            ));
        }
        if self.exp_mean_us > MAX_DELAY_US {
            return Err(FloorError::invalid(
                "--delay-exp-mean-us",
                format!(
                    "must be at most {MAX_DELAY_US} (60 s), got {}",
                    self.exp_mean_us
                ),
            ));
        }
        Ok(())
    }
}

/// SplitMix64's output function (Steele, Lea, Flood 2014).
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Periodic stalls: time since server start is cut into periods of
/// `every_ms`; the last `hold_ms` of each period is a stall window. A response
/// that becomes ready inside a window is held until the window (and so the
/// period) ends — like a GC pause or a stop-the-world flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallModel {
    /// Length of the stall window at the end of each period, milliseconds.
    pub hold_ms: u64,
    /// Period length, milliseconds; must be greater than `hold_ms`.
    pub every_ms: u64,
}

impl StallModel {
    /// Checks `0 < every_ms <= MAX_STALL_EVERY_MS` and `hold_ms < every_ms`;
    /// errors name the command-line flag.
    pub fn validate(&self) -> Result<(), FloorError> {
        if self.every_ms == 0 {
            return Err(FloorError::invalid("--stall-every-ms", "must be positive"));
        }
        if self.every_ms > MAX_STALL_EVERY_MS {
            return Err(FloorError::invalid(
                "--stall-every-ms",
                format!(
                    "must be at most {MAX_STALL_EVERY_MS} (1 h), got {}",
                    self.every_ms
                ),
            ));
        }
        if self.hold_ms >= self.every_ms {
            return Err(FloorError::invalid(
                "--stall-hold-ms",
                format!(
                    "must be less than --stall-every-ms ({} >= {}): a stall must leave part of each period serving",
                    self.hold_ms, self.every_ms
                ),
            ));
        }
        Ok(())
    }

    /// When a response that is ready at `ready` may be sent: `ready` itself
    /// unless it falls in a stall window `[period_start + every - hold,
    /// period_start + every)`, then the end of that window. Times before
    /// `start`, and invalid models (`every_ms == 0`), are never held.
    pub fn release_at(&self, start: Instant, ready: Instant) -> Instant {
        if self.every_ms == 0 || self.hold_ms == 0 || ready <= start {
            return ready;
        }
        let every_ns = u128::from(self.every_ms) * 1_000_000;
        let hold_ns = u128::from(self.hold_ms.min(self.every_ms)) * 1_000_000;
        let elapsed_ns = (ready - start).as_nanos();
        let pos_ns = elapsed_ns % every_ns;
        if pos_ns < every_ns - hold_ns {
            return ready;
        }
        let wait_ns = every_ns - pos_ns;
        // wait_ns <= every_ns <= MAX_STALL_EVERY_MS-ish, far below u64::MAX ns
        // for any validated model; saturate for unvalidated ones.
        ready + Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(fixed_us: u64, exp_mean_us: u64, seed: u64) -> DelayModel {
        DelayModel {
            fixed_us,
            exp_mean_us,
            seed,
        }
    }

    #[test]
    fn splitmix_matches_reference_vector() {
        // First outputs of SplitMix64 seeded with 1234567 (reference values
        // from the public-domain C implementation).
        let mut state: u64 = 1234567;
        let mut next = || {
            state = state.wrapping_add(GAMMA);
            splitmix64_mix(state)
        };
        assert_eq!(next(), 6457827717110365317);
        assert_eq!(next(), 3203168211198807973);
        assert_eq!(next(), 9817491932198370423);
    }

    #[test]
    fn deterministic_and_counter_based() {
        let a = model(100, 500, 7);
        let b = model(100, 500, 7);
        let forward: Vec<_> = (0..1000).map(|k| a.delay_for(k)).collect();
        let backward: Vec<_> = (0..1000).rev().map(|k| b.delay_for(k)).collect();
        let mut backward = backward;
        backward.reverse();
        assert_eq!(
            forward, backward,
            "the k-th delay does not depend on call order"
        );
        let other_seed: Vec<_> = (0..1000).map(|k| model(100, 500, 8).delay_for(k)).collect();
        assert_ne!(forward, other_seed);
        // Distinct k give distinct draws (a broken mix would repeat).
        let mut sorted = forward.clone();
        sorted.sort();
        sorted.dedup();
        assert!(sorted.len() > 990, "only {} distinct delays", sorted.len());
    }

    #[test]
    fn distribution_sanity() {
        let m = model(200, 1000, 1);
        let n = 100_000u64;
        let mut sum_us = 0.0;
        let mut max = Duration::ZERO;
        let mut below_median = 0u64;
        let median = m.quantile_us(0.5);
        for k in 0..n {
            let d = m.delay_for(k);
            assert!(d >= Duration::from_micros(200), "k={k}: {d:?} below fixed");
            let us = d.as_nanos() as f64 / 1_000.0;
            sum_us += us;
            max = max.max(d);
            if us < median {
                below_median += 1;
            }
        }
        let mean = sum_us / n as f64;
        let want = m.mean_us();
        assert!(
            (mean - want).abs() / want < 0.02,
            "mean {mean} µs vs theoretical {want} µs"
        );
        let frac = below_median as f64 / n as f64;
        assert!(
            (frac - 0.5).abs() < 0.01,
            "{frac} of draws below the median"
        );
        let cap = Duration::from_micros(200 + 20 * 1000);
        assert!(max <= cap, "max {max:?} over the cap {cap:?}");
    }

    #[test]
    fn fixed_only_and_zero() {
        let m = model(1500, 0, 99);
        for k in [0, 1, u64::MAX] {
            assert_eq!(m.delay_for(k), Duration::from_micros(1500));
        }
        assert_eq!(model(0, 0, 0).delay_for(3), Duration::ZERO);
        assert_eq!(m.quantile_us(0.99), 1500.0);
    }

    #[test]
    fn quantiles() {
        let m = model(100, 1000, 1);
        assert_eq!(m.quantile_us(0.0), 100.0);
        let p50 = m.quantile_us(0.5);
        assert!((p50 - (100.0 + 1000.0 * std::f64::consts::LN_2)).abs() < 1e-9);
        let p99 = m.quantile_us(0.99);
        assert!((p99 - (100.0 + 1000.0 * 100f64.ln())).abs() < 1e-6);
        assert_eq!(m.quantile_us(1.0), 100.0 + 20.0 * 1000.0);
        assert_eq!(m.quantile_us(2.0), m.quantile_us(1.0));
        assert_eq!(m.quantile_us(-1.0), 100.0);
        assert_eq!(m.quantile_us(f64::NAN), 100.0);
        // Just below the cap's quantile the cap does not bind yet.
        let q = 1.0 - 1e-6;
        assert!((m.quantile_us(q) - (100.0 + 1000.0 * 1e6f64.ln())).abs() < 1e-3);
        assert!(p50 < p99 && p99 < m.quantile_us(1.0));
    }

    #[test]
    fn empirical_quantiles_match_theory() {
        let m = model(0, 500, 42);
        let mut v: Vec<f64> = (0..100_000)
            .map(|k| m.delay_for(k).as_nanos() as f64 / 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        for q in [0.5, 0.9, 0.99] {
            let got = v[(q * v.len() as f64) as usize];
            let want = m.quantile_us(q);
            assert!((got - want).abs() / want < 0.05, "q={q}: {got} vs {want}");
        }
    }

    #[test]
    fn delay_validation_names_flags() {
        let e = model(MAX_DELAY_US + 1, 0, 1).validate().unwrap_err();
        assert!(e.to_string().contains("--delay-fixed-us"), "{e}");
        let e = model(0, MAX_DELAY_US + 1, 1).validate().unwrap_err();
        assert!(e.to_string().contains("--delay-exp-mean-us"), "{e}");
        model(MAX_DELAY_US, MAX_DELAY_US, 1).validate().unwrap();
    }

    #[test]
    fn stall_release_math() {
        let s = StallModel {
            hold_ms: 30,
            every_ms: 100,
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let at_us = |us: u64| t0 + Duration::from_micros(us);
        // Serving part of the period: untouched.
        assert_eq!(s.release_at(t0, at(0)), at(0));
        assert_eq!(s.release_at(t0, at(69)), at(69));
        assert_eq!(s.release_at(t0, at_us(69_999)), at_us(69_999));
        // Window [70, 100) is held until 100.
        assert_eq!(s.release_at(t0, at(70)), at(100));
        assert_eq!(s.release_at(t0, at_us(85_500)), at(100));
        assert_eq!(s.release_at(t0, at_us(99_999)), at(100));
        // Next period starts serving again at 100.
        assert_eq!(s.release_at(t0, at(100)), at(100));
        assert_eq!(s.release_at(t0, at(150)), at(150));
        assert_eq!(s.release_at(t0, at(1_075)), at(1_100));
        // Before start: never held.
        assert_eq!(s.release_at(at(10), t0), t0);
        // Release is never before ready and never more than hold later.
        for us in (0..300_000).step_by(997) {
            let r = at_us(us);
            let rel = s.release_at(t0, r);
            assert!(rel >= r && rel - r <= Duration::from_millis(30));
        }
    }

    #[test]
    fn stall_validation() {
        let ok = StallModel {
            hold_ms: 99,
            every_ms: 100,
        };
        ok.validate().unwrap();
        let e = StallModel {
            hold_ms: 100,
            every_ms: 100,
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--stall-hold-ms"), "{e}");
        let e = StallModel {
            hold_ms: 0,
            every_ms: 0,
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--stall-every-ms"), "{e}");
        let e = StallModel {
            hold_ms: 1,
            every_ms: MAX_STALL_EVERY_MS + 1,
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--stall-every-ms"), "{e}");
        // Unvalidated nonsense never panics and never holds.
        let bad = StallModel {
            hold_ms: 5,
            every_ms: 0,
        };
        let t0 = Instant::now();
        assert_eq!(
            bad.release_at(t0, t0 + Duration::from_millis(3)),
            t0 + Duration::from_millis(3)
        );
    }
}
