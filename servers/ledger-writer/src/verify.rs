//! The audit: recompute every checksum and the hash chain from the first record, replay the whole history into a
//! fresh state machine, and check that every currency sums to zero. Shared by `GET /verify` and
//! `ledger-writer verify`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::log::{self, DurablePosition, hex};
use crate::state::{CurrencyTotals, Limits, State};
use crate::types::{RecordKind, currency_to_string};

/// Per-currency sums of a verified history.
#[derive(Debug, Clone, Serialize)]
pub struct CurrencyReport {
    /// Sum of all accounts' posted debits.
    pub debits_posted: String,
    /// Sum of all accounts' posted credits.
    pub credits_posted: String,
    /// Sum of all accounts' pending debits.
    pub debits_pending: String,
    /// Sum of all accounts' pending credits.
    pub credits_pending: String,
    /// Debits equal credits, posted and pending.
    pub balanced: bool,
    /// A sum passed `u128::MAX` (each balance is overflow-checked; their sum over accounts may wrap, and then
    /// `balanced` holds modulo 2^128 only).
    pub overflowed: bool,
}

impl CurrencyReport {
    /// The report form of a state's totals.
    pub fn from_totals(t: &CurrencyTotals) -> CurrencyReport {
        CurrencyReport {
            debits_posted: t.debits_posted.to_string(),
            credits_posted: t.credits_posted.to_string(),
            debits_pending: t.debits_pending.to_string(),
            credits_pending: t.credits_pending.to_string(),
            balanced: t.balanced(),
            overflowed: t.overflowed,
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyProblem {
    /// Segment file name, when the problem is in the log.
    pub segment: Option<String>,
    /// Byte offset in that segment.
    pub offset: Option<u64>,
    /// Record number.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

/// What `verify` reports (the JSON of `GET /verify`).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Every record checks out, the replay applied every item, and every currency balances.
    pub ok: bool,
    /// Records verified.
    pub records: u64,
    /// BLAKE3 of the last verified record, hex (zeros for an empty log).
    pub head_hash: String,
    /// Log bytes verified.
    pub bytes: u64,
    /// Accounts after replay.
    pub accounts: u64,
    /// Transfers after replay.
    pub transfers: u64,
    /// Per-currency sums after replay.
    pub currencies: BTreeMap<String, CurrencyReport>,
    /// Problems, in log order; empty when `ok`.
    pub errors: Vec<VerifyProblem>,
}

/// Memory left free beyond the audit's estimate (the process's other buffers, the host's other work).
pub const AUDIT_MEMORY_MARGIN_BYTES: u64 = 512 << 20;

/// Whether an audit fits in memory on this host: it replays the log into a second state, about as large as the one
/// the running server holds, so it needs roughly the server's resident memory again. Refusing beats the alternative
/// seen at 60 M transfers on a 24 GB host: the kernel killed the server, the ledger itself, mid-audit.
/// `Err` carries the reason for the client. Where `/proc` cannot be read (not Linux) the audit is allowed.
pub fn audit_fits_in_memory() -> Result<(), String> {
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| parse_statm_rss_pages(&s));
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_mem_available_kib(&s));
    // SAFETY: sysconf has no preconditions.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match (rss, available) {
        (Some(pages), Some(kib)) if page_bytes > 0 => {
            audit_memory_check(pages * page_bytes as u64, kib * 1024)
        }
        _ => Ok(()),
    }
}

/// The decision of [`audit_fits_in_memory`]: the audit needs `server_rss_bytes` plus
/// [`AUDIT_MEMORY_MARGIN_BYTES`] out of `available_bytes`.
pub fn audit_memory_check(server_rss_bytes: u64, available_bytes: u64) -> Result<(), String> {
    let need = server_rss_bytes.saturating_add(AUDIT_MEMORY_MARGIN_BYTES);
    if need <= available_bytes {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(format!(
        "the audit replays the log into a second state and needs about {:.1} GiB, but the host has {:.1} GiB \
         available; run `ledger-writer verify --data-dir DIR` on a copy of the data directory, or on a host with more \
         memory",
        gib(need),
        gib(available_bytes)
    ))
}

/// Resident pages, the second field of `/proc/self/statm`.
fn parse_statm_rss_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// `MemAvailable:` of `/proc/meminfo`, in KiB.
fn parse_mem_available_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Verifies the ledger in `data_dir` up to the writer's durable position `upto` (`None` = everything on disk, when no
/// writer runs). Read-only: safe while a server appends.
pub fn verify_dir(data_dir: &Path, upto: Option<&DurablePosition>) -> VerifyReport {
    // The audit replays into an unbounded state: limits protect a live server, not a read of what it wrote.
    let mut state = State::new(Limits {
        max_accounts: usize::MAX,
        max_transfers: usize::MAX,
    });
    let mut replay_errors: Vec<VerifyProblem> = Vec::new();
    let log_report = log::verify(&data_dir.join("log"), upto, |rec| {
        if !replay_errors.is_empty() {
            return;
        }
        let Some(kind) = RecordKind::from_u16(rec.kind) else {
            replay_errors.push(VerifyProblem {
                segment: None,
                offset: None,
                seq: Some(rec.seq),
                what: format!("unknown record kind {}", rec.kind),
            });
            return;
        };
        if let Err(e) = state.replay(kind, rec.timestamp_ns, rec.payload) {
            replay_errors.push(VerifyProblem {
                segment: None,
                offset: None,
                seq: Some(rec.seq),
                what: format!("replay: {e}"),
            });
        }
    });
    let mut errors: Vec<VerifyProblem> = log_report
        .errors
        .iter()
        .map(|p| VerifyProblem {
            segment: Some(p.segment.clone()),
            offset: Some(p.offset),
            seq: Some(p.seq),
            what: p.what.clone(),
        })
        .collect();
    errors.extend(replay_errors);
    let mut currencies = BTreeMap::new();
    for (c, t) in state.totals() {
        let balanced = t.balanced();
        if !balanced {
            errors.push(VerifyProblem {
                segment: None,
                offset: None,
                seq: None,
                what: format!(
                    "currency {} does not sum to zero",
                    currency_to_string(c).unwrap_or_else(|| c.to_string())
                ),
            });
        }
        currencies.insert(
            currency_to_string(c).unwrap_or_else(|| c.to_string()),
            CurrencyReport::from_totals(&t),
        );
    }
    let counts = state.counts();
    VerifyReport {
        ok: errors.is_empty(),
        records: log_report.records,
        head_hash: hex(&log_report.head_hash),
        bytes: log_report.bytes,
        accounts: counts.accounts as u64,
        transfers: counts.transfers as u64,
        currencies,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_is_refused_when_a_second_state_would_not_fit() {
        let gib = 1u64 << 30;
        assert!(audit_memory_check(gib, 2 * gib).is_ok());
        assert!(audit_memory_check(0, AUDIT_MEMORY_MARGIN_BYTES).is_ok());
        let why = audit_memory_check(12 * gib, 11 * gib).expect_err("12 GiB state, 11 GiB free");
        assert!(
            why.contains("12.5 GiB") && why.contains("11.0 GiB"),
            "{why}"
        );
        assert!(
            audit_memory_check(u64::MAX, u64::MAX - 1).is_err(),
            "no overflow"
        );
    }

    #[test]
    fn proc_files_parse() {
        assert_eq!(parse_statm_rss_pages("1000 250 30 1 0 400 0\n"), Some(250));
        assert_eq!(parse_statm_rss_pages("1000"), None);
        let meminfo = "MemTotal:       24684092 kB\nMemFree:        22601720 kB\nMemAvailable:   23891504 kB\n";
        assert_eq!(parse_mem_available_kib(meminfo), Some(23_891_504));
        assert_eq!(parse_mem_available_kib("MemTotal: 1 kB\n"), None);
        // On this (Linux) host both files exist, and a small test process fits.
        assert!(audit_fits_in_memory().is_ok());
    }
}
