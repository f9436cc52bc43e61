//! Arrival schedules of the open model, one per lane (a lane is one in-flight stream: an HTTP/1.1 connection or an
//! HTTP/2 stream slot). Lanes are independent, and the phase's rate is split evenly over them: the superposition of
//! evenly phased fixed-rate lanes is a fixed-rate stream, and of Poisson lanes a Poisson stream.
//!
//! Times come from the cumulative rate Λ(t) = r0·t + (r1 − r0)·t²/(2D) of a linear ramp (constant rate when
//! r0 = r1): arrival k is where Λ(t) reaches k + phase (fixed spacing) or the k-th sum of Exp(1) draws (Poisson, by
//! time rescaling). This is exact for ramps, where stepping by 1/r(t) drifts.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::plan::Arrival;

/// Mixes a seed with a lane index so lanes get independent streams.
pub fn mix_seed(seed: u64, lane: u64) -> u64 {
    // splitmix64 finalizer: adjacent inputs give unrelated outputs.
    let mut z = seed ^ lane.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One lane's arrivals as offsets (seconds) from the phase start.
#[derive(Debug)]
pub struct LaneSchedule {
    /// Coefficient a of Λ(t) = a·t² + b·t (per lane).
    a: f64,
    /// Coefficient b (per-lane start rate).
    b: f64,
    duration_s: f64,
    arrival: Arrival,
    /// Cumulative count of the next arrival.
    next_count: f64,
    rng: SmallRng,
}

impl LaneSchedule {
    /// Schedule for lane `lane` of `lanes`, for a phase ramping from `rate_rps` to `end_rate_rps` over `duration_s`.
    pub fn new(
        rate_rps: f64,
        end_rate_rps: f64,
        duration_s: f64,
        arrival: Arrival,
        lane: usize,
        lanes: usize,
        seed: u64,
    ) -> LaneSchedule {
        assert!(lanes > 0 && lane < lanes, "lane {lane} of {lanes}");
        LaneSchedule::block(
            rate_rps,
            end_rate_rps,
            duration_s,
            arrival,
            lane..lane + 1,
            lanes,
            mix_seed(seed, lane as u64),
        )
    }

    /// The seed of a pool's stream (see [`LaneSchedule::block`]): salted so the pool's draws are not those of lane
    /// `block_start`'s own stream.
    pub fn pool_seed(seed: u64, block_start: usize) -> u64 {
        mix_seed(seed ^ 0x706F_6F6C, block_start as u64)
    }

    /// One stream carrying the share of lanes `block` out of `lanes` (a single lane, or a loader process's lanes
    /// when they draw from a pool, seeded by [`LaneSchedule::pool_seed`]): its rate is the sum of theirs. Poisson:
    /// the superposition of their Poisson streams is one Poisson stream of the summed rate. Fixed: evenly spaced,
    /// phased by the block's start so that equal blocks interleave (block k of n starts k/n into its interval), as
    /// single lanes do.
    pub fn block(
        rate_rps: f64,
        end_rate_rps: f64,
        duration_s: f64,
        arrival: Arrival,
        block: std::ops::Range<usize>,
        lanes: usize,
        rng_seed: u64,
    ) -> LaneSchedule {
        assert!(
            !block.is_empty() && block.end <= lanes,
            "lanes {block:?} of {lanes}"
        );
        assert!(rate_rps > 0.0 && end_rate_rps > 0.0 && duration_s > 0.0);
        let share = block.len() as f64 / lanes as f64;
        let r0 = rate_rps * share;
        let r1 = end_rate_rps * share;
        let mut rng = SmallRng::seed_from_u64(rng_seed);
        let first = match arrival {
            // Blocks are phased evenly inside one interval, so together they are evenly spaced.
            Arrival::Fixed => block.start as f64 / lanes as f64,
            Arrival::Poisson => exp1(&mut rng),
        };
        LaneSchedule {
            a: (r1 - r0) / (2.0 * duration_s),
            b: r0,
            duration_s,
            arrival,
            next_count: first,
            rng,
        }
    }

    /// Inverse of Λ: the time at which the cumulative count reaches `c`, if within the phase.
    fn time_of(&self, c: f64) -> Option<f64> {
        let t = if self.a.abs() < 1e-12 {
            c / self.b
        } else {
            let disc = self.b * self.b + 4.0 * self.a * c;
            if disc < 0.0 {
                return None;
            }
            (disc.sqrt() - self.b) / (2.0 * self.a)
        };
        (t.is_finite() && t >= 0.0 && t < self.duration_s).then_some(t)
    }

    /// Offset in seconds of the next intended send, or `None` once the phase is over.
    pub fn next_offset_s(&mut self) -> Option<f64> {
        let t = self.time_of(self.next_count)?;
        self.next_count += match self.arrival {
            Arrival::Fixed => 1.0,
            Arrival::Poisson => exp1(&mut self.rng),
        };
        Some(t)
    }
}

/// A draw from Exp(1).
fn exp1(rng: &mut SmallRng) -> f64 {
    // 1 − u is in (0, 1], so ln is finite.
    let u: f64 = rng.random();
    -(1.0 - u).ln()
}

/// Picks requests from a weighted mix.
#[derive(Debug, Clone)]
pub struct MixPicker {
    cumulative: Vec<u64>,
}

impl MixPicker {
    /// Picker over these weights (all positive).
    pub fn new(weights: &[u32]) -> MixPicker {
        assert!(!weights.is_empty() && weights.iter().all(|&w| w > 0));
        let mut acc = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                acc += u64::from(w);
                acc
            })
            .collect();
        MixPicker { cumulative }
    }

    /// Index of the next request.
    pub fn pick(&self, rng: &mut SmallRng) -> usize {
        if self.cumulative.len() == 1 {
            return 0;
        }
        let total = *self.cumulative.last().expect("non-empty");
        let x = rng.random_range(0..total);
        self.cumulative.partition_point(|&c| c <= x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut s: LaneSchedule) -> Vec<f64> {
        let mut v = Vec::new();
        while let Some(t) = s.next_offset_s() {
            v.push(t);
            assert!(v.len() < 10_000_000, "schedule never ends");
        }
        v
    }

    #[test]
    fn fixed_lanes_interleave_evenly() {
        let lanes = 4;
        let mut times: Vec<f64> = (0..lanes)
            .flat_map(|l| {
                all(LaneSchedule::new(
                    1000.0,
                    1000.0,
                    1.0,
                    Arrival::Fixed,
                    l,
                    lanes,
                    7,
                ))
            })
            .collect();
        times.sort_by(f64::total_cmp);
        assert_eq!(times.len(), 1000);
        for w in times.windows(2) {
            assert!((w[1] - w[0] - 0.001).abs() < 1e-9, "gap {}", w[1] - w[0]);
        }
    }

    #[test]
    fn poisson_count_and_mean_gap() {
        let lanes = 8;
        let n: usize = (0..lanes)
            .map(|l| {
                all(LaneSchedule::new(
                    2000.0,
                    2000.0,
                    10.0,
                    Arrival::Poisson,
                    l,
                    lanes,
                    42,
                ))
                .len()
            })
            .sum();
        // 20,000 expected; Poisson sd ≈ 141.
        assert!((19_400..=20_600).contains(&n), "n = {n}");
    }

    #[test]
    fn pooled_blocks_carry_their_lanes_share_and_interleave() {
        // Three loader processes of 4, 4 and 2 lanes out of 10 at 1,000/s: each pool carries its lanes' share.
        // One second at 1,000/s of fixed arrivals for the pool of `block` out of `lanes`.
        let pool = |block: std::ops::Range<usize>, lanes: usize| {
            let seed = LaneSchedule::pool_seed(7, block.start);
            all(LaneSchedule::block(
                1000.0,
                1000.0,
                1.0,
                Arrival::Fixed,
                block,
                lanes,
                seed,
            ))
        };
        let per_block: Vec<Vec<f64>> = [0..4, 4..8, 8..10]
            .into_iter()
            .map(|b| pool(b, 10))
            .collect();
        assert_eq!(
            per_block.iter().map(Vec::len).collect::<Vec<_>>(),
            [400, 400, 200]
        );
        // Equal blocks (2 processes of 4 lanes out of 8) alternate: together evenly spaced at the phase rate.
        let mut two: Vec<f64> = [0..4, 4..8].into_iter().flat_map(|b| pool(b, 8)).collect();
        two.sort_by(f64::total_cmp);
        assert_eq!(two.len(), 1000);
        for w in two.windows(2) {
            assert!((w[1] - w[0] - 0.001).abs() < 1e-9, "gap {}", w[1] - w[0]);
        }
        // Poisson: the pool's count is its share of the rate, and its draws are not lane 0's own.
        let pool = all(LaneSchedule::block(
            2000.0,
            2000.0,
            10.0,
            Arrival::Poisson,
            0..8,
            16,
            LaneSchedule::pool_seed(42, 0),
        ));
        // 10,000 expected; Poisson sd = 100.
        assert!((9_600..=10_400).contains(&pool.len()), "n = {}", pool.len());
        let lane0 = all(LaneSchedule::new(
            2000.0,
            2000.0,
            10.0,
            Arrival::Poisson,
            0,
            16,
            42,
        ));
        assert_ne!(pool[0] * 8.0, lane0[0], "the pool reuses lane 0's draws");
    }

    #[test]
    fn ramp_sends_the_integral() {
        // 100 → 300 rps over 10 s: 2,000 requests, more of them late in the phase.
        let v = all(LaneSchedule::new(
            100.0,
            300.0,
            10.0,
            Arrival::Fixed,
            0,
            1,
            1,
        ));
        assert!((1999..=2000).contains(&v.len()), "{}", v.len());
        let first_half = v.iter().filter(|&&t| t < 5.0).count();
        // ∫0..5 (100 + 20t) dt = 750.
        assert!((749..=751).contains(&first_half), "{first_half}");
        let down = all(LaneSchedule::new(
            300.0,
            100.0,
            10.0,
            Arrival::Fixed,
            0,
            1,
            1,
        ));
        assert!((1999..=2000).contains(&down.len()), "{}", down.len());
    }

    #[test]
    fn same_seed_same_schedule() {
        let a = all(LaneSchedule::new(
            500.0,
            500.0,
            2.0,
            Arrival::Poisson,
            1,
            3,
            9,
        ));
        let b = all(LaneSchedule::new(
            500.0,
            500.0,
            2.0,
            Arrival::Poisson,
            1,
            3,
            9,
        ));
        let c = all(LaneSchedule::new(
            500.0,
            500.0,
            2.0,
            Arrival::Poisson,
            2,
            3,
            9,
        ));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn mix_follows_weights() {
        let p = MixPicker::new(&[1, 3]);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[p.pick(&mut rng)] += 1;
        }
        let share = f64::from(counts[1]) / 40_000.0;
        assert!((0.73..0.77).contains(&share), "{share}");
    }
}
