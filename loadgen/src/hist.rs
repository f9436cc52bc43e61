//! Latency histograms: HdrHistogram from 1 µs to 60 s at 3 significant digits, serialized as V2 (uncompressed) and
//! base64, so loader processes and machines merge exactly and other HdrHistogram tools can read them.

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

use crate::error::RunError;

/// Lowest trackable value: 1 µs.
pub const LOWEST_US: u64 = 1;
/// Highest trackable value: 60 s; longer values are clamped (and counted in `clamped`).
pub const HIGHEST_US: u64 = 60_000_000;
/// Significant digits kept.
pub const SIGFIG: u8 = 3;

/// A new empty latency histogram with the project's bounds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG).expect("static bounds are valid")
}

/// Records `us` microseconds, clamped into the trackable range.
#[inline]
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let v = us.clamp(LOWEST_US, HIGHEST_US);
    // Cannot fail: the value is in range and the histogram does not auto-resize past its bounds.
    let _ = h.record(v);
}

/// Serializes to V2 + base64.
pub fn encode(h: &Histogram<u64>) -> Result<String, RunError> {
    let mut buf = Vec::with_capacity(256);
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| RunError::Histogram(format!("serialize: {e:?}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// Decodes V2 + base64 (V2 deflate is accepted too).
pub fn decode(s: &str) -> Result<Histogram<u64>, RunError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| RunError::Histogram(format!("base64: {e}")))?;
    let mut cursor = std::io::Cursor::new(bytes);
    Deserializer::new()
        .deserialize(&mut cursor)
        .map_err(|e| RunError::Histogram(format!("deserialize: {e:?}")))
}

/// Adds `from` into `into`; both must have compatible bounds (ours always do).
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<(), RunError> {
    into.add(from)
        .map_err(|e| RunError::Histogram(format!("merge: {e:?}")))
}

/// Percentile summary of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest sample.
    pub max: u64,
    /// Smallest sample.
    pub min: u64,
}

impl Summary {
    /// Summarizes `h` (all zeros when empty).
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            min: h.min(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_count() {
        let mut h = new_histogram();
        for v in [1, 2, 999, 1000, 1001, 123_456, 59_999_999, 70_000_000] {
            record(&mut h, v);
        }
        let back = decode(&encode(&h).unwrap()).unwrap();
        assert_eq!(back.len(), h.len());
        assert_eq!(back.max(), h.max());
        for v in h.iter_recorded() {
            assert_eq!(back.count_at(v.value_iterated_to()), v.count_at_value());
        }
    }

    #[test]
    fn merging_two_processes_equals_all_samples() {
        // Two "loader processes" record disjoint halves; their encoded histograms, decoded and added, must equal
        // one histogram of every sample, value by value.
        let mut a = new_histogram();
        let mut b = new_histogram();
        let mut all = new_histogram();
        let mut x = 12345u64;
        for i in 0..200_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 33) % 3_000_000 + 1;
            record(if i % 3 == 0 { &mut a } else { &mut b }, v);
            record(&mut all, v);
        }
        let mut merged = decode(&encode(&a).unwrap()).unwrap();
        merge(&mut merged, &decode(&encode(&b).unwrap()).unwrap()).unwrap();
        assert_eq!(merged.len(), all.len());
        assert_eq!(merged.max(), all.max());
        assert_eq!(merged.min(), all.min());
        for v in all.iter_recorded() {
            assert_eq!(merged.count_at(v.value_iterated_to()), v.count_at_value());
        }
        for q in [0.5, 0.9, 0.99, 0.999, 0.9999] {
            assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q));
        }
    }

    #[test]
    fn clamps_out_of_range() {
        let mut h = new_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), LOWEST_US);
        assert!(h.max() >= HIGHEST_US);
    }

    #[test]
    fn decode_refuses_garbage() {
        assert!(decode("not base64!").is_err());
        assert!(decode("AAAA").is_err());
    }
}
