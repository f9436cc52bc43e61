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
