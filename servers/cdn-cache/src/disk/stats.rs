//! Counters: each is kept twice, in a per-tier atomic (for [`super::DiskTier::stats`] and tests, which cannot rely on
//! a process-wide recorder) and in the `metrics` facade (for `/metrics`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A counter mirrored to `metrics`.
#[derive(Debug)]
pub(crate) struct Count {
    local: AtomicU64,
    global: metrics::Counter,
}

impl Count {
    fn new(global: metrics::Counter) -> Self {
        Self {
            local: AtomicU64::new(0),
            global,
        }
    }

    pub(crate) fn add(&self, n: u64) {
        self.local.fetch_add(n, Ordering::Relaxed);
        self.global.increment(n);
    }

    pub(crate) fn inc(&self) {
        self.add(1);
    }

    pub(crate) fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

/// Every counter, gauge and histogram of one disk tier.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) hits: Count,
    pub(crate) misses: Count,
    pub(crate) writes: Count,
    pub(crate) dropped_writes: Count,
    pub(crate) corrupt_reads: Count,
    pub(crate) evicted_segments: Count,
    pub(crate) io_errors: Count,
    pub(crate) busy_reads: Count,
    pub(crate) used_bytes: metrics::Gauge,
    pub(crate) entries: metrics::Gauge,
    pub(crate) read_seconds: metrics::Histogram,
    pub(crate) write_seconds: metrics::Histogram,
    /// The last I/O error, for operators (the counters say how many; this says why).
    pub(crate) last_io_error: Mutex<Option<String>>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            hits: Count::new(metrics::counter!("cdn_disk_hits_total")),
            misses: Count::new(metrics::counter!("cdn_disk_misses_total")),
            writes: Count::new(metrics::counter!("cdn_disk_writes_total")),
            dropped_writes: Count::new(metrics::counter!("cdn_disk_dropped_writes_total")),
            corrupt_reads: Count::new(metrics::counter!("cdn_disk_corrupt_reads_total")),
            evicted_segments: Count::new(metrics::counter!("cdn_disk_evicted_segments_total")),
            io_errors: Count::new(metrics::counter!("cdn_disk_io_errors_total")),
            busy_reads: Count::new(metrics::counter!("cdn_disk_busy_reads_total")),
            used_bytes: metrics::gauge!("cdn_disk_used_bytes"),
            entries: metrics::gauge!("cdn_disk_entries"),
            read_seconds: metrics::histogram!("cdn_disk_read_seconds"),
            write_seconds: metrics::histogram!("cdn_disk_write_seconds"),
            last_io_error: Mutex::new(None),
        }
    }

    /// Counts an I/O error and remembers its message.
    pub(crate) fn io_error(&self, what: String) {
        self.io_errors.inc();
        let mut last = self
            .last_io_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last = Some(what);
    }

    /// The last I/O error message, if any.
    pub(crate) fn last_io_error(&self) -> Option<String> {
        self.last_io_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn record_read(&self, took: Duration) {
        self.read_seconds.record(took.as_secs_f64());
    }

    pub(crate) fn record_write(&self, took: Duration) {
        self.write_seconds.record(took.as_secs_f64());
    }
}
