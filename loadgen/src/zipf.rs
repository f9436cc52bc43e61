//! A Zipf sampler over ranks `1..=n` with P(k) ∝ k^−s: rejection-inversion (W. Hörmann and G. Derflinger,
//! "Rejection-inversion to generate variates from monotone discrete distributions", 1996), as in Apache Commons RNG.
//! O(1) expected time per draw (a handful of `ln`/`exp`), no tables, no allocation; `s = 0` is uniform.

use rand::Rng;

/// Zipf distribution over `1..=n`.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    squeeze: f64,
}

impl Zipf {
    /// Ranks `1..=n` (n ≥ 1), exponent `s` ≥ 0 (finite).
    pub fn new(n: u64, s: f64) -> Zipf {
        assert!(n >= 1, "Zipf over an empty range");
        assert!(s.is_finite() && s >= 0.0, "Zipf exponent {s}");
        let mut z = Zipf {
            n,
            s,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            squeeze: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.squeeze = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// Number of ranks.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// A rank in `1..=n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        if self.s == 0.0 || self.n == 1 {
            return rng.random_range(1..=self.n);
        }
        // The loop ends with probability ≥ 1/2 per round; the cap only guards against a numeric pathology.
        for _ in 0..1000 {
            let u =
                self.h_integral_n + rng.random::<f64>() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = ((x + 0.5) as u64).clamp(1, self.n);
            let kf = k as f64;
            if kf - x <= self.squeeze || u >= self.h_integral(kf + 0.5) - self.h(kf) {
                return k;
            }
        }
        1
    }

    /// H(x) = ((x^(1−s)) − 1) / (1 − s), continuous at s = 1 (ln x).
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    /// h(x) = x^−s.
    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// ln(1 + x) / x, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (e^x − 1) / x, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn shares(n: u64, s: f64, draws: usize) -> Vec<f64> {
        let z = Zipf::new(n, s);
        let mut rng = SmallRng::seed_from_u64(11);
        let mut counts = vec![0u64; n as usize + 1];
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!((1..=n).contains(&k));
            counts[k as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn expected(n: u64, s: f64, k: u64) -> f64 {
        let norm: f64 = (1..=n).map(|i| (i as f64).powf(-s)).sum();
        (k as f64).powf(-s) / norm
    }

    #[test]
    fn matches_the_distribution() {
        for (n, s) in [(1000, 1.0), (100, 0.5), (50, 2.0), (10_000, 1.2)] {
            let got = shares(n, s, 400_000);
            for k in [1, 2, 3, 10, n.min(50)] {
                let e = expected(n, s, k);
                // 5 standard deviations of a binomial share, plus a little slack.
                let tol = 5.0 * (e * (1.0 - e) / 400_000.0).sqrt() + 1e-4;
                assert!(
                    (got[k as usize] - e).abs() < tol,
                    "n={n} s={s} k={k}: got {} expected {e}",
                    got[k as usize]
                );
            }
        }
    }

    #[test]
    fn zero_exponent_is_uniform_and_one_rank_works() {
        let got = shares(10, 0.0, 100_000);
        for share in &got[1..] {
            assert!((share - 0.1).abs() < 0.01, "{got:?}");
        }
        assert_eq!(shares(1, 1.0, 100)[1], 1.0);
    }
}
