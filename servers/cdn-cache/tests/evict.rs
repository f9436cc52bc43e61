//! The memory tier's eviction policies: byte bounds, refusal, scan resistance, purge, the sharded wrapper, the Zipf
//! sampler and a small trace-driven comparison with LRU.

use std::collections::HashMap;
use std::sync::Arc;

use refbench_cdn::evict::trace::{SplitMix64, Trace, Zipf, simulate_kind};
use refbench_cdn::evict::{
    CacheConfig, Lru, MemoryPolicy, Policy, PolicyKind, S3Fifo, ShardCountError, Sharded, WTinyLfu,
};

/// Runs `check` against a fresh cache of every policy kind.
fn for_each_policy(config: CacheConfig, mut check: impl FnMut(&mut dyn Policy<Value = u64>)) {
    check(&mut Lru::<u64>::new(config));
    check(&mut S3Fifo::<u64>::new(config));
    check(&mut WTinyLfu::<u64>::new(config));
}

#[test]
fn byte_capacity_is_never_exceeded_and_every_byte_is_accounted_for() {
    let config = CacheConfig {
        capacity_bytes: 64 << 10,
        max_object_share: 0.25,
    };
    for_each_policy(config, |cache| {
        let mut rng = SplitMix64::new(99);
        // Bytes in (stored inserts) minus bytes out (evicted, replaced, removed) must equal what the cache holds.
        let mut sizes: HashMap<u64, u64> = HashMap::new();
        let (mut bytes_in, mut bytes_out) = (0_u64, 0_u64);
        for step in 0..20_000_u64 {
            let key = rng.below(400);
            match rng.below(10) {
                0..=4 => {
                    if let Some(&value) = cache.get(key) {
                        assert_eq!(value, key, "{}: wrong value for key {key}", cache.name());
                    }
                }
                5..=8 => {
                    let size = 1 + rng.below(20 << 10);
                    let evicted = cache.insert(key, key, size);
                    if evicted.replaced.is_some() {
                        bytes_out += sizes.remove(&key).expect("replaced a key we never stored");
                    }
                    for entry in &evicted.entries {
                        assert_eq!(
                            entry.value,
                            entry.key,
                            "{}: evicted value mismatch",
                            cache.name()
                        );
                        assert_eq!(
                            sizes.remove(&entry.key),
                            Some(entry.size_bytes),
                            "{}: evicted size",
                            cache.name()
                        );
                        bytes_out += entry.size_bytes;
                    }
                    if evicted.stored() {
                        bytes_in += size;
                        sizes.insert(key, size);
                    } else {
                        assert!(
                            cache.peek(key).is_none(),
                            "{}: refused value is stored",
                            cache.name()
                        );
                    }
                    assert!(
                        cache.used_bytes() <= cache.capacity_bytes(),
                        "{}: over capacity",
                        cache.name()
                    );
                }
                _ => {
                    if cache.remove(key).is_some() {
                        bytes_out += sizes.remove(&key).expect("removed a key we never stored");
                    }
                }
            }
            assert_eq!(
                cache.used_bytes(),
                bytes_in - bytes_out,
                "{}: byte accounting at step {step}",
                cache.name()
            );
            assert_eq!(
                cache.len(),
                sizes.len(),
                "{}: object count at step {step}",
                cache.name()
            );
            if step % 500 == 0 {
                cache.check_invariants();
            }
        }
        cache.check_invariants();
        cache.clear();
        assert!(cache.is_empty() && cache.used_bytes() == 0);
    });
}

#[test]
fn oversize_objects_are_refused() {
    for_each_policy(
        CacheConfig {
            capacity_bytes: 1_000,
            max_object_share: 0.125,
        },
        |cache| {
            let evicted = cache.insert(1, 1, 126);
            assert_eq!(
                evicted.refused,
                Some(1),
                "{}: over the object share",
                cache.name()
            );
            assert!(cache.peek(1).is_none() && cache.used_bytes() == 0);
            assert_eq!(
                cache.insert(2, 2, 5_000).refused,
                Some(2),
                "{}: over the capacity",
                cache.name()
            );
            assert!(
                cache.insert(3, 3, 125).stored(),
                "{}: at the object share",
                cache.name()
            );
            assert_eq!(cache.used_bytes(), 125);
        },
    );
    for_each_policy(
        CacheConfig {
            capacity_bytes: 1_000,
            max_object_share: 1.0,
        },
        |cache| {
            assert!(
                cache.insert(1, 1, 1_001).refused.is_some(),
                "{}: over the capacity",
                cache.name()
            );
            assert!(
                cache.insert(2, 2, 1_000).stored(),
                "{}: exactly the capacity",
                cache.name()
            );
        },
    );
    for_each_policy(
        CacheConfig {
            capacity_bytes: 0,
            max_object_share: 1.0,
        },
        |cache| {
            assert!(
                cache.insert(1, 1, 1).refused.is_some(),
                "{}: zero capacity stores nothing",
                cache.name()
            );
        },
    );
}

/// A key hit a few times, then a scan of 1 000 distinct one-hit wonders 10 × the cache size: the scan-resistant
/// policies keep the hot key, and LRU (which the scan flushes completely) loses it, so the scenario discriminates.
#[test]
fn a_hot_key_survives_a_scan_of_one_hit_wonders() {
    const OBJECT_BYTES: u64 = 1 << 10;
    const HOT: u64 = 7;
    let config = CacheConfig {
        capacity_bytes: 100 * OBJECT_BYTES,
        max_object_share: 0.125,
    };
    let mut survived = HashMap::new();
    for_each_policy(config, |cache| {
        let _ = cache.get(HOT);
        assert!(cache.insert(HOT, HOT, OBJECT_BYTES).stored());
        for _ in 0..3 {
            assert!(cache.get(HOT).is_some());
        }
        for key in 1_000..2_000 {
            // A read-through cache: a miss, then the insert.
            assert!(cache.get(key).is_none());
            let _ = cache.insert(key, key, OBJECT_BYTES);
        }
        cache.check_invariants();
        survived.insert(cache.name(), cache.peek(HOT).is_some());
    });
    assert!(
        !survived["lru"],
        "LRU should lose the hot key to the scan (else the test proves nothing)"
    );
    assert!(survived["s3fifo"], "S3-FIFO lost the hot key to a scan");
    assert!(survived["wtinylfu"], "W-TinyLFU lost the hot key to a scan");
}

#[test]
fn remove_purges_from_every_queue() {
    const OBJECT_BYTES: u64 = 100;
    for_each_policy(
        CacheConfig {
            capacity_bytes: 10 * OBJECT_BYTES,
            max_object_share: 0.125,
        },
        |cache| {
            assert!(cache.insert(1, 10, OBJECT_BYTES).stored());
            assert_eq!(cache.remove(1), Some(10), "{}", cache.name());
            assert_eq!(cache.remove(1), None, "{}: removed twice", cache.name());
            assert!(cache.get(1).is_none() && cache.is_empty() && cache.used_bytes() == 0);
            // Populate every queue: hit keys (promoted to main / protected), then churn, then purge them all.
            for key in 0..30 {
                let _ = cache.insert(key, key, OBJECT_BYTES);
                if key % 3 == 0 {
                    let _ = cache.get(key);
                    let _ = cache.get(key);
                }
            }
            let stored: Vec<u64> = (0..30).filter(|&key| cache.peek(key).is_some()).collect();
            assert!(!stored.is_empty());
            for key in stored {
                assert_eq!(cache.remove(key), Some(key), "{}", cache.name());
                cache.check_invariants();
            }
            assert!(
                cache.is_empty() && cache.used_bytes() == 0,
                "{}: not empty after purging",
                cache.name()
            );
            // Still usable afterwards.
            assert!(cache.insert(99, 99, OBJECT_BYTES).stored());
            assert_eq!(cache.get(99), Some(&99));
        },
    );
}

#[test]
fn insert_replaces_and_returns_the_old_value() {
    for_each_policy(
        CacheConfig {
            capacity_bytes: 1_000,
            max_object_share: 0.5,
        },
        |cache| {
            assert!(cache.insert(5, 1, 100).stored());
            let evicted = cache.insert(5, 2, 300);
            assert_eq!(evicted.replaced, Some(1), "{}", cache.name());
            assert_eq!(cache.peek(5), Some(&2));
            assert_eq!(
                (cache.len(), cache.used_bytes()),
                (1, 300),
                "{}: old size not released",
                cache.name()
            );
        },
    );
}

#[test]
fn the_sharded_cache_works_from_several_threads() {
    assert_eq!(
        Sharded::<MemoryPolicy<u64>>::new(3, CacheConfig::with_capacity_bytes(1 << 20)).err(),
        Some(ShardCountError(3))
    );
    let cache: Sharded<MemoryPolicy<Arc<u64>>> =
        Sharded::new(8, CacheConfig::with_capacity_bytes(256 << 10)).expect("8 is a power of two");
    assert_eq!(
        (cache.shard_count(), cache.capacity_bytes()),
        (8, 256 << 10)
    );
    std::thread::scope(|scope| {
        for thread in 0..4_u64 {
            let cache = &cache;
            scope.spawn(move || {
                let mut rng = SplitMix64::new(thread);
                let zipf = Zipf::new(2_000, 1.0);
                for _ in 0..10_000 {
                    // Spread keys over the whole hash space so that every shard gets work.
                    let key = (zipf.sample(&mut rng) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    match rng.below(20) {
                        0 => {
                            let _ = cache.remove(key);
                        }
                        _ => match cache.get(key) {
                            Some(value) => {
                                assert_eq!(*value, key, "a shard returned another key's value")
                            }
                            None => {
                                let _ = cache.insert(key, Arc::new(key), 256 + rng.below(2_048));
                            }
                        },
                    }
                }
            });
        }
    });
    assert!(cache.used_bytes() <= cache.capacity_bytes());
    assert!(!cache.is_empty());
    cache.check_invariants();
    let key = 12_345_u64.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let _ = cache.insert(key, Arc::new(key), 100);
    assert!(cache.contains(key));
    assert_eq!(cache.get_with(key, |value| **value), Some(key));
    assert_eq!(cache.remove(key).as_deref(), Some(&key));
    cache.clear();
    assert!(cache.is_empty() && cache.used_bytes() == 0);
}

#[test]
fn zipf_top_ranks_match_the_theory() {
    const SAMPLES: u32 = 200_000;
    for exponent in [0.8, 1.0, 1.2] {
        let zipf = Zipf::new(1_000, exponent);
        let harmonic: f64 = (1..=1_000)
            .map(|rank| f64::from(rank).powf(-exponent))
            .sum();
        let mut counts = [0_u32; 5];
        let mut rng = SplitMix64::new(exponent.to_bits());
        for _ in 0..SAMPLES {
            if let Some(count) = counts.get_mut(zipf.sample(&mut rng)) {
                *count += 1;
            }
        }
        for (rank, &count) in counts.iter().enumerate() {
            let theory = (rank as f64 + 1.0).powf(-exponent) / harmonic;
            assert!(
                (zipf.probability(rank) - theory).abs() < 1e-12,
                "table probability of rank {rank}"
            );
            let observed = f64::from(count) / f64::from(SAMPLES);
            // Binomial standard deviation; 5 sigma keeps the (deterministic) test far from the edge.
            let sigma = (theory * (1.0 - theory) / f64::from(SAMPLES)).sqrt();
            assert!(
                (observed - theory).abs() < 5.0 * sigma,
                "zipf {exponent}: rank {rank} observed {observed:.5}, theory {theory:.5}"
            );
        }
    }
}

#[test]
fn on_a_small_zipf_trace_both_modern_policies_beat_lru() {
    let trace = Trace::generate(5_000, 100_000, 1.0, 1);
    let config = CacheConfig::with_capacity_bytes(trace.working_set_bytes / 50);
    let warmup = trace.requests.len() / 10;
    let lru = simulate_kind(PolicyKind::Lru, config, &trace, warmup).object_hit_ratio();
    for kind in [PolicyKind::S3Fifo, PolicyKind::WTinyLfu] {
        let ratio = simulate_kind(kind, config, &trace, warmup).object_hit_ratio();
        assert!(
            ratio > lru + 0.03,
            "{}: {ratio:.4} vs lru {lru:.4}",
            kind.name()
        );
    }
}

#[test]
fn an_expected_object_outlives_the_small_queue_churn_until_it_is_used() {
    // 100 objects of 1 KiB fit; the small queue holds ~10 of them. A prefetch (expected) and a plain insert of the
    // same size, then 30 one-off objects: the plain one is pushed out of the small queue, the expected one moves to
    // the main queue and is still there for its first use.
    let config = CacheConfig {
        capacity_bytes: 100 << 10,
        max_object_share: 0.25,
    };
    let mut cache = S3Fifo::<u64>::new(config);
    // Fill the main queue first (objects read twice while in the small queue are promoted), so that eviction runs.
    for k in 1_000..1_090 {
        assert!(cache.insert(k, k, 1 << 10).stored());
        cache.get(k);
    }
    assert!(cache.insert_expected(1, 1, 1 << 10).stored());
    assert!(cache.insert(2, 2, 1 << 10).stored());
    for k in 10..40 {
        assert!(cache.insert(k, k, 1 << 10).stored());
    }
    assert!(
        cache.peek(2).is_none(),
        "a plain one-off is evicted from the small queue"
    );
    assert_eq!(
        cache.get(1),
        Some(&1),
        "the expected object survived to its first use"
    );

    // The default for policies without an admission filter is a plain insert.
    let mut lru = Lru::<u64>::new(config);
    assert!(lru.insert_expected(7, 7, 1 << 10).stored());
    assert_eq!(lru.get(7), Some(&7));
}
