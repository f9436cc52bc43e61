//! Seeded synthetic traces and the trace-driven hit-ratio simulation.
//!
//! A trace is `keys` objects, each with a size drawn once from [`SIZE_BUCKETS`], and `requests` object ids drawn
//! independently from a Zipf distribution over popularity ranks (the independent reference model). Sizes are
//! independent of popularity, so the per-exponent traces share one working set. Everything is derived from one `u64`
//! seed through [`SplitMix64`], whose output is fixed by its definition (unlike `rand::StdRng`, which may change
//! between `rand` versions), so a committed hit ratio can be reproduced exactly.

use std::time::Instant;

use super::{CacheConfig, Lru, Policy, PolicyKind, S3Fifo, WTinyLfu, mix64};

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast generator whose sequence is fully determined by the seed.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// A uniform `f64` in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1_u64 << 53) as f64)
    }

    /// A uniform integer in [0, bound) (`bound > 0`), by multiply-shift (bias below 2^-32 for the bounds used here).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// Zipf over ranks 0..n: P(rank r) = (r + 1)^-s / H(n, s), sampled by inverse CDF (binary search in a table of n
/// cumulative probabilities; exact for any exponent s >= 0, including s = 1 where closed-form approximations break).
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
    exponent: f64,
}

impl Zipf {
    /// The distribution over `n >= 1` ranks with exponent `exponent >= 0`.
    pub fn new(n: usize, exponent: f64) -> Self {
        assert!(n >= 1, "Zipf needs at least one rank");
        assert!(
            exponent >= 0.0 && exponent.is_finite(),
            "Zipf exponent must be finite and >= 0"
        );
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0_f64;
        for rank in 0..n {
            total += ((rank + 1) as f64).powf(-exponent);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        // Rounding must not leave a gap at the top: u < 1 always finds a rank.
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Self { cdf, exponent }
    }

    /// Number of ranks.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Always false (a Zipf has at least one rank); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The exponent.
    pub fn exponent(&self) -> f64 {
        self.exponent
    }

    /// The exact probability of a 0-based rank.
    pub fn probability(&self, rank: usize) -> f64 {
        if rank == 0 {
            self.cdf[0]
        } else {
            self.cdf[rank] - self.cdf[rank - 1]
        }
    }

    /// Draws a 0-based rank.
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// Object-size mix: (lower bound in bytes, weight in percent); a size is uniform in [bound, 2 × bound), so objects
/// span 512 B .. 1 MiB, most small, most bytes in the large ones (mean ≈ 68 KiB), a rough CDN mix of icons, HTML,
/// scripts, images and media segments.
pub const SIZE_BUCKETS: [(u64, u32); 6] = [
    (512, 30),
    (2 << 10, 20),
    (8 << 10, 20),
    (32 << 10, 15),
    (128 << 10, 10),
    (512 << 10, 5),
];

/// A one-line description of [`SIZE_BUCKETS`] for reports.
pub fn size_distribution_description() -> String {
    let buckets: Vec<String> = SIZE_BUCKETS
        .iter()
        .map(|&(low, weight)| format!("{weight}% [{low}, {}) B", 2 * low))
        .collect();
    format!(
        "per-key size drawn once, uniform within a bucket: {}",
        buckets.join(", ")
    )
}

/// Draws one object size from [`SIZE_BUCKETS`].
pub fn draw_size_bytes(rng: &mut SplitMix64) -> u64 {
    let total: u32 = SIZE_BUCKETS.iter().map(|&(_, weight)| weight).sum();
    let mut pick = rng.below(u64::from(total)) as u32;
    for &(low, weight) in &SIZE_BUCKETS {
        if pick < weight {
            return low + rng.below(low);
        }
        pick -= weight;
    }
    unreachable!("weights cover the whole range")
}

/// A generated trace: object ids in request order, plus each object's key hash and size.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Object ids (0..keys) in request order; id = popularity rank (0 the most popular).
    pub requests: Vec<u32>,
    /// The 64-bit key hash of each object id, as the server would compute it.
    pub key_hashes: Vec<u64>,
    /// The size of each object id.
    pub sizes_bytes: Vec<u64>,
    /// Sum of all object sizes: the working set that cache sizes are a percentage of.
    pub working_set_bytes: u64,
}

impl Trace {
    /// A trace of `requests` Zipf(`exponent`) requests over `keys` objects. Sizes and key hashes depend on `seed`
    /// only (so every exponent sees the same objects); the request order depends on `seed` and `exponent`.
    pub fn generate(keys: u32, requests: usize, exponent: f64, seed: u64) -> Self {
        assert!(keys >= 1, "a trace needs at least one key");
        let mut size_rng = SplitMix64::new(seed ^ 0x5153_495a_4553_0001);
        let sizes_bytes: Vec<u64> = (0..keys).map(|_| draw_size_bytes(&mut size_rng)).collect();
        let key_salt = mix64(seed ^ 0x4b45_5953_0000_0002);
        let key_hashes: Vec<u64> = (0..keys)
            .map(|id| mix64(u64::from(id) ^ key_salt))
            .collect();
        let zipf = Zipf::new(keys as usize, exponent);
        let mut request_rng = SplitMix64::new(seed ^ mix64(exponent.to_bits()));
        let requests = (0..requests)
            .map(|_| zipf.sample(&mut request_rng) as u32)
            .collect();
        Self {
            requests,
            key_hashes,
            working_set_bytes: sizes_bytes.iter().sum(),
            sizes_bytes,
        }
    }

    /// Distinct objects requested and their total size (the part of the working set the trace actually touches).
    pub fn touched(&self) -> (usize, u64) {
        let mut seen = vec![false; self.sizes_bytes.len()];
        let (mut objects, mut bytes) = (0, 0);
        for &id in &self.requests {
            if !std::mem::replace(&mut seen[id as usize], true) {
                objects += 1;
                bytes += self.sizes_bytes[id as usize];
            }
        }
        (objects, bytes)
    }
}

/// What one simulation measured (after the warm-up).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimOutcome {
    /// Requests counted (the trace minus the warm-up).
    pub measured_requests: u64,
    /// Counted requests that hit.
    pub hits: u64,
    /// Bytes of the counted requests.
    pub requested_bytes: u64,
    /// Bytes of the counted requests that hit.
    pub hit_bytes: u64,
    /// Objects evicted over the whole trace (warm-up included).
    pub evicted_objects: u64,
    /// Inserts refused over the whole trace (too large or not admitted at once).
    pub refused_inserts: u64,
    /// Wall time of the whole trace (get, plus insert on a miss), in ns per request; noisy, a side figure only.
    pub ns_per_request: f64,
}

impl SimOutcome {
    /// Hits / requests.
    pub fn object_hit_ratio(&self) -> f64 {
        ratio(self.hits, self.measured_requests)
    }

    /// Hit bytes / requested bytes.
    pub fn byte_hit_ratio(&self) -> f64 {
        ratio(self.hit_bytes, self.requested_bytes)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Replays a trace as a read-through cache would: `get`, and on a miss `insert` the object. The first
/// `warmup_requests` requests fill the cache but are not counted.
pub fn simulate<P: Policy<Value = ()>>(
    policy: &mut P,
    trace: &Trace,
    warmup_requests: usize,
) -> SimOutcome {
    let mut outcome = SimOutcome {
        measured_requests: 0,
        hits: 0,
        requested_bytes: 0,
        hit_bytes: 0,
        evicted_objects: 0,
        refused_inserts: 0,
        ns_per_request: 0.0,
    };
    let started = Instant::now();
    for (i, &id) in trace.requests.iter().enumerate() {
        let key = trace.key_hashes[id as usize];
        let size_bytes = trace.sizes_bytes[id as usize];
        let hit = policy.get(key).is_some();
        if i >= warmup_requests {
            outcome.measured_requests += 1;
            outcome.requested_bytes += size_bytes;
            if hit {
                outcome.hits += 1;
                outcome.hit_bytes += size_bytes;
            }
        }
        if !hit {
            let evicted = policy.insert(key, (), size_bytes);
            outcome.evicted_objects += evicted.entries.len() as u64;
            outcome.refused_inserts += u64::from(!evicted.stored());
        }
    }
    let elapsed_ns = started.elapsed().as_nanos() as f64;
    outcome.ns_per_request = elapsed_ns / trace.requests.len().max(1) as f64;
    outcome
}

/// [`simulate`] with a fresh policy of the given kind and configuration.
pub fn simulate_kind(
    kind: PolicyKind,
    config: CacheConfig,
    trace: &Trace,
    warmup_requests: usize,
) -> SimOutcome {
    match kind {
        PolicyKind::Lru => simulate(&mut Lru::<()>::new(config), trace, warmup_requests),
        PolicyKind::S3Fifo => simulate(&mut S3Fifo::<()>::new(config), trace, warmup_requests),
        PolicyKind::WTinyLfu => simulate(&mut WTinyLfu::<()>::new(config), trace, warmup_requests),
    }
}

#[cfg(test)]
mod tests {
    use super::{SIZE_BUCKETS, SplitMix64, Trace, draw_size_bytes};

    #[test]
    fn sizes_stay_in_range_and_use_every_bucket() {
        let mut rng = SplitMix64::new(1);
        let mut per_bucket = [0_u32; SIZE_BUCKETS.len()];
        for _ in 0..20_000 {
            let size = draw_size_bytes(&mut rng);
            let bucket = SIZE_BUCKETS
                .iter()
                .position(|&(low, _)| size >= low && size < 2 * low);
            per_bucket[bucket.expect("size outside every bucket")] += 1;
        }
        for (count, &(_, weight)) in per_bucket.iter().zip(&SIZE_BUCKETS) {
            let share = f64::from(*count) / 20_000.0 * 100.0;
            assert!(
                (share - f64::from(weight)).abs() < 1.5,
                "bucket share {share}% vs {weight}%"
            );
        }
    }

    #[test]
    fn traces_are_deterministic() {
        let a = Trace::generate(1_000, 5_000, 1.0, 7);
        let b = Trace::generate(1_000, 5_000, 1.0, 7);
        assert_eq!(a.requests, b.requests);
        assert_eq!(a.sizes_bytes, b.sizes_bytes);
        let c = Trace::generate(1_000, 5_000, 0.8, 7);
        assert_eq!(
            a.sizes_bytes, c.sizes_bytes,
            "sizes depend on the seed only"
        );
        assert_ne!(a.requests, c.requests);
    }
}
