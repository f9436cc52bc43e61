//! The disk tier: round trips, capacity, corruption, the bounded queue, purges, restarts and concurrency.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use refbench_cdn::disk::{
    DiskConfig, DiskError, DiskTier, HEADER_BYTES, SEGMENT_PREFIX, SEGMENT_SUFFIX,
};

/// Small segments so that eviction happens after a few dozen objects.
fn small_config(dir: &Path) -> DiskConfig {
    DiskConfig {
        dir: dir.to_path_buf(),
        capacity_bytes: 64 << 10,
        segment_bytes: 16 << 10,
        max_object_bytes: 8 << 10,
        max_meta_bytes: 256,
        max_entries: 10_000,
        max_meta_total_bytes: 1 << 20,
        queue_capacity: 1024,
        max_queue_bytes: 16 << 20,
        max_concurrent_reads: 64,
    }
}

/// A deterministic body: a function of the key and the length only, so any hit can be checked byte for byte.
fn body_of(key: u64, len: usize) -> Bytes {
    let seed = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|i| (seed.rotate_left((i % 64) as u32) as u8) ^ (i as u8))
        .collect::<Vec<u8>>()
        .into()
}

fn meta_of(key: u64) -> Vec<u8> {
    format!("meta/{key}").into_bytes()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(SEGMENT_PREFIX) && n.ends_with(SEGMENT_SUFFIX))
        })
        .collect();
    files.sort();
    files
}

fn assert_hit(tier: &DiskTier, key: u64, len: usize) {
    let hit = tier
        .get_blocking(key)
        .unwrap_or_else(|| panic!("key {key} missing"));
    assert_eq!(hit.meta, meta_of(key), "meta of key {key}");
    assert_eq!(hit.body, body_of(key, len), "body of key {key}");
}

#[test]
fn put_get_round_trip_is_byte_exact_before_and_after_the_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    let sizes = [0usize, 1, 100, 4095, 8 << 10];
    {
        // Pending objects are served from memory.
        let _paused = tier.pause_writes();
        for (i, &len) in sizes.iter().enumerate() {
            tier.put(i as u64, &meta_of(i as u64), &[body_of(i as u64, len)])
                .expect("put");
        }
        for (i, &len) in sizes.iter().enumerate() {
            assert_hit(&tier, i as u64, len);
        }
        assert_eq!(tier.stats().pending_entries, sizes.len());
    }
    tier.flush().expect("flush");
    let stats = tier.stats();
    assert_eq!(stats.pending_entries, 0);
    assert_eq!(stats.stored_entries, sizes.len());
    assert_eq!(stats.writes, sizes.len() as u64);
    for (i, &len) in sizes.iter().enumerate() {
        assert_hit(&tier, i as u64, len);
    }
    assert!(tier.get_blocking(999).is_none());
    let stats = tier.stats();
    assert_eq!(stats.hits, 2 * sizes.len() as u64);
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.corrupt_reads, 0);
    tier.close();
}

#[test]
fn chunked_and_large_bodies_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = DiskConfig {
        capacity_bytes: 4 << 20,
        segment_bytes: 1 << 20,
        max_object_bytes: 512 << 10,
        ..small_config(dir.path())
    };
    let tier = DiskTier::open(cfg).expect("open");
    // Above the 64 KiB coalescing threshold: written from the caller's chunks.
    let whole = body_of(7, 300 << 10);
    let chunks = [
        whole.slice(..1000),
        whole.slice(1000..200_000),
        whole.slice(200_000..),
    ];
    tier.put(7, &meta_of(7), &chunks).expect("put large");
    // Small, in several chunks: coalesced.
    let small = body_of(8, 5000);
    tier.put(8, &meta_of(8), &[small.slice(..10), small.slice(10..)])
        .expect("put small");
    assert_hit(&tier, 7, 300 << 10);
    tier.flush().expect("flush");
    assert_hit(&tier, 7, 300 << 10);
    assert_hit(&tier, 8, 5000);
    tier.close();
}

#[test]
fn capacity_is_never_exceeded_and_the_oldest_segment_goes_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_config(dir.path());
    let tier = DiskTier::open(cfg.clone()).expect("open");
    let len = 1000;
    let record_bytes = HEADER_BYTES as usize + meta_of(0).len() + len;
    let count = 300u64; // ~300 KB through a 64 KiB tier
    for key in 0..count {
        tier.put(key, &meta_of(key), &[body_of(key, len)])
            .expect("put");
        tier.flush().expect("flush");
        let stats = tier.stats();
        assert!(
            stats.used_bytes <= cfg.capacity_bytes,
            "used {} > capacity {} after key {key}",
            stats.used_bytes,
            cfg.capacity_bytes
        );
        let on_disk: u64 = segment_files(dir.path())
            .iter()
            .map(|p| std::fs::metadata(p).expect("stat").len())
            .sum();
        assert!(on_disk <= cfg.capacity_bytes, "{on_disk} bytes on disk");
        assert!(stats.segments as u64 <= cfg.capacity_bytes / cfg.segment_bytes + 1);
    }
    let stats = tier.stats();
    assert!(stats.evicted_segments > 0, "{stats:?}");
    assert!(stats.used_bytes > cfg.capacity_bytes / 2, "{stats:?}");
    // FIFO: the first keys are gone (index and reads), the last ones are all there.
    for key in 0..10 {
        assert!(!tier.contains(key), "key {key} survived eviction");
        assert!(tier.get_blocking(key).is_none());
    }
    let per_segment = cfg.segment_bytes as usize / record_bytes;
    for key in count - per_segment as u64..count {
        assert_hit(&tier, key, len);
    }
    // The index holds exactly the keys still on disk.
    let present = (0..count).filter(|&k| tier.contains(k)).count();
    assert_eq!(present, stats.stored_entries);
    assert!(present * record_bytes <= cfg.capacity_bytes as usize);
    tier.close();
}

#[test]
fn a_key_rewritten_into_a_newer_segment_survives_eviction_of_the_old_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    tier.put(1000, b"v1", &[body_of(1, 1000)]).expect("v1");
    for key in 0..20 {
        tier.put(key, &meta_of(key), &[body_of(key, 1000)])
            .expect("put");
    }
    tier.put(1000, b"v2", &[body_of(2, 1000)]).expect("v2");
    for key in 20..65 {
        tier.put(key, &meta_of(key), &[body_of(key, 1000)])
            .expect("put");
    }
    tier.flush().expect("flush");
    let stats = tier.stats();
    assert!(stats.evicted_segments >= 1, "{stats:?}");
    assert!(!tier.contains(0), "the first segment was evicted");
    let hit = tier.get_blocking(1000).expect("v2 survives");
    assert_eq!(&hit.meta[..], b"v2");
    assert_eq!(hit.body, body_of(2, 1000));
    tier.close();
}

#[test]
fn entry_limit_evicts_whole_segments_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = DiskConfig {
        max_entries: 20,
        ..small_config(dir.path())
    };
    let tier = DiskTier::open(cfg).expect("open");
    for key in 0..100 {
        tier.put(key, &meta_of(key), &[body_of(key, 10)])
            .expect("put");
    }
    tier.flush().expect("flush");
    let stats = tier.stats();
    assert!(stats.stored_entries <= 20, "{stats:?}");
    assert!(stats.evicted_segments > 0, "{stats:?}");
    assert_hit(&tier, 99, 10);
    tier.close();
}

#[test]
fn a_bit_flip_is_a_counted_miss_never_wrong_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    let len = 500;
    tier.put(1, &meta_of(1), &[body_of(1, len)]).expect("put");
    tier.put(2, &meta_of(2), &[body_of(2, len)]).expect("put");
    tier.flush().expect("flush");

    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).expect("read segment");
    // Key 1's record is first: flip one bit in the middle of its body.
    let at = HEADER_BYTES as usize + meta_of(1).len() + len / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&files[0], &bytes).expect("write segment");

    assert!(tier.get_blocking(1).is_none(), "corrupt record served");
    let stats = tier.stats();
    assert_eq!(stats.corrupt_reads, 1);
    assert_eq!(stats.misses, 1);
    // The key is dropped: the next lookup misses without reading.
    assert!(!tier.contains(1));
    assert!(tier.get_blocking(1).is_none());
    assert_eq!(tier.stats().corrupt_reads, 1);
    // The neighbour is intact.
    assert_hit(&tier, 2, len);
    tier.close();
}

#[test]
fn a_truncated_segment_is_a_counted_miss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    tier.put(1, &meta_of(1), &[body_of(1, 100)]).expect("put");
    tier.put(2, &meta_of(2), &[body_of(2, 100)]).expect("put");
    tier.flush().expect("flush");
    let files = segment_files(dir.path());
    // Cut into the second record: its read comes back short.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .expect("open segment");
    let first_record = HEADER_BYTES + meta_of(1).len() as u64 + 100;
    file.set_len(first_record + 10).expect("truncate");
    assert_hit(&tier, 1, 100);
    assert!(tier.get_blocking(2).is_none());
    let stats = tier.stats();
    assert_eq!(stats.io_errors, 1, "{stats:?}");
    assert!(stats.last_io_error.is_some());
    assert!(!tier.contains(2));
    tier.close();
}

#[test]
fn a_vanished_directory_drops_writes_without_failing_the_caller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("disk");
    let tier = DiskTier::open(small_config(&sub)).expect("open");
    std::fs::remove_dir_all(&sub).expect("remove dir");
    tier.put(1, &meta_of(1), &[body_of(1, 100)])
        .expect("put only queues");
    tier.flush().expect("flush");
    let stats = tier.stats();
    assert_eq!(stats.writes, 0);
    assert_eq!(stats.dropped_writes, 1);
    assert!(stats.io_errors >= 1);
    assert!(
        stats
            .last_io_error
            .as_deref()
            .is_some_and(|e| e.contains("create")),
        "{stats:?}"
    );
    assert!(tier.get_blocking(1).is_none());
    tier.close();
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = DiskConfig {
        queue_capacity: 2,
        ..small_config(dir.path())
    };
    let tier = DiskTier::open(cfg).expect("open");
    let mut accepted = Vec::new();
    let mut full = 0;
    {
        let _paused = tier.pause_writes();
        let started = Instant::now();
        for key in 0..10u64 {
            match tier.put(key, &meta_of(key), &[body_of(key, 100)]) {
                Ok(()) => accepted.push(key),
                Err(DiskError::QueueFull) => full += 1,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(2), "put blocked");
        // Two queued, plus at most one the writer took off the queue before stopping at the gate.
        assert!((2..=3).contains(&accepted.len()), "{accepted:?}");
        assert_eq!(full, 10 - accepted.len());
        assert_eq!(tier.stats().dropped_writes, full as u64);
    }
    tier.flush().expect("flush");
    for &key in &accepted {
        assert_hit(&tier, key, 100);
    }
    tier.close();
}

#[test]
fn the_byte_bound_of_the_queue_drops_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = DiskConfig {
        max_queue_bytes: 20 << 10,
        ..small_config(dir.path())
    };
    let tier = DiskTier::open(cfg).expect("open");
    let _paused = tier.pause_writes();
    tier.put(1, b"", &[body_of(1, 8 << 10)]).expect("first");
    tier.put(2, b"", &[body_of(2, 8 << 10)]).expect("second");
    assert!(matches!(
        tier.put(3, b"", &[body_of(3, 8 << 10)]),
        Err(DiskError::QueueFull)
    ));
    assert_eq!(tier.stats().pending_bytes, 16 << 10);
}

#[test]
fn remove_and_predicate_purge_cover_stored_and_pending_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    let meta = |key: u64| {
        if key % 2 == 0 {
            format!("/a/{key}").into_bytes()
        } else {
            format!("/b/{key}").into_bytes()
        }
    };
    for key in 0..10 {
        tier.put(key, &meta(key), &[body_of(key, 50)]).expect("put");
    }
    tier.flush().expect("flush");
    let paused = tier.pause_writes();
    for key in 10..20 {
        tier.put(key, &meta(key), &[body_of(key, 50)]).expect("put");
    }
    assert!(tier.remove(3));
    assert!(!tier.remove(3));
    assert!(tier.remove(13), "a pending object can be removed");
    let purged = tier.remove_if(|_, meta| meta.starts_with(b"/a/"));
    assert_eq!(purged, 10);
    drop(paused);
    tier.flush().expect("flush");
    for key in 0..20 {
        let hit = tier.get_blocking(key);
        if key % 2 == 0 || key == 3 || key == 13 {
            assert!(hit.is_none(), "purged key {key} served");
        } else {
            let hit = hit.unwrap_or_else(|| panic!("key {key} lost"));
            assert_eq!(hit.body, body_of(key, 50));
        }
    }
    assert_eq!(tier.stats().stored_entries, 8);
    tier.close();
}

#[test]
fn a_write_removed_before_the_writer_runs_is_not_resurrected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    {
        let _paused = tier.pause_writes();
        tier.put(5, &meta_of(5), &[body_of(5, 10)]).expect("put");
        assert!(tier.remove(5));
        // A replaced pending write must not resurrect the older version either.
        tier.put(6, b"v1", &[Bytes::from_static(b"old")])
            .expect("put v1");
        tier.put(6, b"v2", &[Bytes::from_static(b"new")])
            .expect("put v2");
    }
    tier.flush().expect("flush");
    assert!(tier.get_blocking(5).is_none());
    let hit = tier.get_blocking(6).expect("v2");
    assert_eq!((&hit.meta[..], &hit.body[..]), (&b"v2"[..], &b"new"[..]));
    // Neither the removed object nor the replaced version was written.
    assert_eq!(tier.stats().writes, 1);
    tier.close();
}

#[test]
fn a_replaced_stored_object_is_never_served_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    tier.put(1, b"v1", &[Bytes::from_static(b"old")])
        .expect("put");
    tier.flush().expect("flush");
    let _paused = tier.pause_writes();
    // Too large: refused, and the old version is gone too.
    assert!(tier.put(1, b"v2", &[body_of(1, (8 << 10) + 1)]).is_err());
    assert!(tier.get_blocking(1).is_none());
}

#[test]
fn take_removes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    tier.put(1, &meta_of(1), &[body_of(1, 64)]).expect("put");
    tier.flush().expect("flush");
    let hit = tier.take_blocking(1).expect("taken");
    assert_eq!(hit.body, body_of(1, 64));
    assert!(tier.take_blocking(1).is_none());
    assert!(tier.get_blocking(1).is_none());
    tier.close();
}

#[test]
fn reopening_starts_cold_so_purged_objects_never_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    for key in 0..50 {
        tier.put(key, &meta_of(key), &[body_of(key, 300)])
            .expect("put");
    }
    tier.flush().expect("flush");
    assert_eq!(tier.remove_if(|key, _| key < 25), 25);
    assert!(!segment_files(dir.path()).is_empty());
    // A second tier on the same directory is refused while the first lives.
    assert!(matches!(
        DiskTier::open(small_config(dir.path())),
        Err(DiskError::Locked { .. })
    ));
    tier.close();
    assert!(
        segment_files(dir.path()).is_empty(),
        "close deletes segments"
    );

    // Segments left behind by a crashed process are deleted too; other files are left alone.
    std::fs::write(
        dir.path()
            .join(format!("{SEGMENT_PREFIX}00000000000000ff{SEGMENT_SUFFIX}")),
        b"junk",
    )
    .expect("stale segment");
    std::fs::write(dir.path().join("notes.txt"), b"keep").expect("other file");
    let tier = DiskTier::open(small_config(dir.path())).expect("reopen");
    assert!(segment_files(dir.path()).is_empty());
    assert!(dir.path().join("notes.txt").exists());
    for key in 0..50 {
        assert!(tier.get_blocking(key).is_none(), "key {key} after restart");
    }
    assert_eq!(tier.stats().used_bytes, 0);
    tier.close();
}

#[test]
fn dropping_the_last_handle_stops_the_writer_and_unlocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    tier.put(1, b"", &[body_of(1, 10)]).expect("put");
    drop(tier);
    // The writer exits on its own; the directory unlocks when it has.
    let deadline = Instant::now() + Duration::from_secs(5);
    let tier = loop {
        match DiskTier::open(small_config(dir.path())) {
            Ok(tier) => break tier,
            Err(DiskError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(other) => panic!("reopen: {other}"),
        }
    };
    assert!(tier.get_blocking(1).is_none());
    tier.close();
}

#[test]
fn oversize_objects_and_metadata_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = small_config(dir.path());
    let tier = DiskTier::open(cfg.clone()).expect("open");
    let too_big = body_of(1, cfg.max_object_bytes as usize + 1);
    assert!(matches!(
        tier.put(1, b"", &[too_big.slice(..100), too_big.slice(100..)]),
        Err(DiskError::ObjectTooLarge { size_bytes, max_bytes })
            if size_bytes == cfg.max_object_bytes + 1 && max_bytes == cfg.max_object_bytes
    ));
    assert!(matches!(
        tier.put(2, &vec![0u8; cfg.max_meta_bytes + 1], &[]),
        Err(DiskError::MetaTooLarge { .. })
    ));
    tier.put(
        3,
        &vec![7u8; cfg.max_meta_bytes],
        &[body_of(3, cfg.max_object_bytes as usize)],
    )
    .expect("the largest object fits");
    tier.flush().expect("flush");
    assert_eq!(
        tier.get_blocking(3).expect("hit").body.len() as u64,
        cfg.max_object_bytes
    );
    assert_eq!(tier.stats().dropped_writes, 2);
    tier.close();
}

#[test]
fn configuration_errors_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = small_config(dir.path());
    let field_of = |cfg: DiskConfig| match cfg.validate() {
        Err(DiskError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(
        field_of(DiskConfig {
            segment_bytes: 100,
            ..base.clone()
        }),
        "segment_bytes"
    );
    assert_eq!(
        field_of(DiskConfig {
            capacity_bytes: base.segment_bytes,
            ..base.clone()
        }),
        "capacity_bytes"
    );
    assert_eq!(
        field_of(DiskConfig {
            capacity_bytes: base.segment_bytes * 1000,
            ..base.clone()
        }),
        "capacity_bytes"
    );
    assert_eq!(
        field_of(DiskConfig {
            max_object_bytes: base.segment_bytes,
            ..base.clone()
        }),
        "max_object_bytes"
    );
    assert_eq!(
        field_of(DiskConfig {
            max_meta_bytes: 70_000,
            ..base.clone()
        }),
        "max_meta_bytes"
    );
    assert_eq!(
        field_of(DiskConfig {
            max_entries: 0,
            ..base.clone()
        }),
        "max_entries"
    );
    assert_eq!(
        field_of(DiskConfig {
            max_meta_total_bytes: 1,
            ..base.clone()
        }),
        "max_meta_total_bytes"
    );
    assert_eq!(
        field_of(DiskConfig {
            queue_capacity: 0,
            ..base.clone()
        }),
        "queue_capacity"
    );
    assert_eq!(
        field_of(DiskConfig {
            max_queue_bytes: 10,
            ..base.clone()
        }),
        "max_queue_bytes"
    );
    assert_eq!(
        field_of(DiskConfig {
            max_concurrent_reads: 0,
            ..base.clone()
        }),
        "max_concurrent_reads"
    );
    assert!(matches!(
        DiskTier::open(DiskConfig {
            queue_capacity: 0,
            ..base
        }),
        Err(DiskError::Config {
            field: "queue_capacity",
            ..
        })
    ));
    // The defaults are valid, from tiny to large capacities.
    for capacity_bytes in [64 << 10, 100 << 20, 10 << 30] {
        DiskConfig::new(dir.path(), capacity_bytes)
            .validate()
            .expect("defaults");
    }
}

#[test]
fn concurrent_puts_and_gets_from_threads_never_see_wrong_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(small_config(dir.path())).expect("open");
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let tier = tier.clone();
            std::thread::spawn(move || {
                let mut hits = 0;
                for i in 0..500u64 {
                    let key = (i * 7 + t) % 64;
                    let len = (key as usize * 37) % 2000;
                    if i % 3 == 0 {
                        // Drops are allowed (queue full), wrong bytes are not.
                        let _ = tier.put(key, &meta_of(key), &[body_of(key, len)]);
                    } else if i % 17 == 0 {
                        tier.remove(key);
                    } else if let Some(hit) = tier.get_blocking(key) {
                        assert_eq!(hit.body, body_of(key, len), "key {key}");
                        assert_eq!(hit.meta, meta_of(key));
                        hits += 1;
                    }
                }
                hits
            })
        })
        .collect();
    let hits: u32 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert!(hits > 0);
    tier.flush().expect("flush");
    let stats = tier.stats();
    assert_eq!(stats.corrupt_reads, 0);
    assert!(stats.used_bytes <= tier.config().capacity_bytes);
    tier.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_async_gets_read_on_the_blocking_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(DiskConfig {
        capacity_bytes: 4 << 20,
        segment_bytes: 1 << 20,
        max_object_bytes: 64 << 10,
        ..small_config(dir.path())
    })
    .expect("open");
    for key in 0..100u64 {
        tier.put(key, &meta_of(key), &[body_of(key, 1000 + key as usize)])
            .expect("put");
    }
    let flusher = tier.clone();
    tokio::task::spawn_blocking(move || flusher.flush())
        .await
        .expect("join")
        .expect("flush");
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let tier = tier.clone();
            tokio::spawn(async move {
                let mut hits = 0u32;
                for i in 0..100u64 {
                    let key = (i + t * 13) % 120;
                    match tier.get(key).await {
                        Some(hit) => {
                            assert_eq!(hit.body, body_of(key, 1000 + key as usize));
                            hits += 1;
                        }
                        None => assert!(key >= 100, "key {key} missing"),
                    }
                }
                hits
            })
        })
        .collect();
    let mut hits = 0;
    for task in tasks {
        hits += task.await.expect("task");
    }
    let stats = tier.stats();
    assert_eq!(u64::from(hits), stats.hits);
    assert_eq!(stats.busy_reads, 0);
    assert!(tier.take(5).await.is_some());
    assert!(tier.get(5).await.is_none());
    tokio::task::spawn_blocking(move || tier.close())
        .await
        .expect("close");
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<DiskTier>();
}
