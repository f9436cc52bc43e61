//! The ledger's Prometheus metrics, resolved once so the hot path only bumps atomics.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::log::CommitStats;
use crate::types::{ItemResult, RecordKind, ResultCode};

/// Number of result codes (0..=31, see `API.md`).
const CODES: usize = 32;

/// Metric handles of one ledger server.
#[derive(Clone)]
pub struct LedgerMetrics {
    account_results: Vec<Counter>,
    transfer_results: Vec<Counter>,
    /// `ledger_batch_items`: items per create request.
    pub batch_items: Histogram,
    /// `ledger_group_jobs`: requests sharing one flush.
    pub group_jobs: Histogram,
    /// `ledger_fsync_seconds`: time in `fdatasync`.
    pub fsync_seconds: Histogram,
    /// `ledger_apply_seconds`: time applying one group before its flush.
    pub apply_seconds: Histogram,
    /// `ledger_job_queue_seconds`: from a request's job being queued to the writer applying it.
    pub job_queue_seconds: Histogram,
    /// `ledger_job_durable_seconds`: from a job being queued to its group being durable (its answer sent).
    pub job_durable_seconds: Histogram,
    /// `ledger_records_total`: log records written.
    pub records: Counter,
    /// `ledger_log_bytes_total`: log bytes written.
    pub log_bytes: Counter,
    /// `ledger_preallocated_bytes_total`: fill written ahead of the records (`--preallocate-bytes`).
    pub preallocated_bytes: Counter,
    /// `ledger_commits_total`: group flushes.
    pub commits: Counter,
    /// `ledger_flush_gap_seconds`: the gap the writer leaves between flushes now (`--flush-pacing`).
    pub flush_gap_seconds: Gauge,
    /// `ledger_expired_total`: pending transfers expired.
    pub expired: Counter,
    /// `ledger_checkpoints_total`: checkpoints written.
    pub checkpoints: Counter,
    /// `ledger_snapshot_seconds`: time the writer thread spent taking a checkpoint's consistent copy of the state
    /// (encoding and writing it happen on the checkpoint thread).
    pub snapshot_seconds: Histogram,
}

impl std::fmt::Debug for LedgerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerMetrics")
    }
}

impl LedgerMetrics {
    /// Registers every series (install the recorder first).
    pub fn new() -> LedgerMetrics {
        let per_code = |kind: &'static str| {
            (0..CODES as u32)
                .map(|c| {
                    let name = ResultCode::from_u32(c).map_or("unknown", ResultCode::name);
                    counter!("ledger_items_total", "kind" => kind, "result" => name)
                })
                .collect()
        };
        LedgerMetrics {
            account_results: per_code("account"),
            transfer_results: per_code("transfer"),
            batch_items: histogram!("ledger_batch_items"),
            group_jobs: histogram!("ledger_group_jobs"),
            fsync_seconds: histogram!("ledger_fsync_seconds"),
            apply_seconds: histogram!("ledger_apply_seconds"),
            job_queue_seconds: histogram!("ledger_job_queue_seconds"),
            job_durable_seconds: histogram!("ledger_job_durable_seconds"),
            records: counter!("ledger_records_total"),
            log_bytes: counter!("ledger_log_bytes_total"),
            preallocated_bytes: counter!("ledger_preallocated_bytes_total"),
            commits: counter!("ledger_commits_total"),
            flush_gap_seconds: gauge!("ledger_flush_gap_seconds"),
            expired: counter!("ledger_expired_total"),
            checkpoints: counter!("ledger_checkpoints_total"),
            snapshot_seconds: histogram!("ledger_snapshot_seconds"),
        }
    }

    /// Counts one create request's results by code.
    pub fn count_results(&self, kind: RecordKind, results: &[ItemResult]) {
        let per = match kind {
            RecordKind::Accounts => &self.account_results,
            _ => &self.transfer_results,
        };
        self.batch_items.record(results.len() as f64);
        // Runs of equal codes are the common case (a whole batch `ok`): one increment per run.
        let mut i = 0;
        while i < results.len() {
            let code = results[i].code;
            let mut j = i + 1;
            while j < results.len() && results[j].code == code {
                j += 1;
            }
            if let Some(c) = per.get(code as usize) {
                c.increment((j - i) as u64);
            }
            i = j;
        }
    }

    /// Records one group flush.
    pub fn observe_commit(&self, stats: &CommitStats, jobs: usize, applied_ns: u64) {
        self.group_jobs.record(jobs as f64);
        self.apply_seconds.record(applied_ns as f64 / 1e9);
        if stats.records > 0 {
            self.fsync_seconds.record(stats.fsync_ns as f64 / 1e9);
            self.records.increment(stats.records);
            self.log_bytes.increment(stats.bytes);
            self.preallocated_bytes.increment(stats.preallocated_bytes);
            self.commits.increment(1);
        }
    }
}

impl Default for LedgerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
