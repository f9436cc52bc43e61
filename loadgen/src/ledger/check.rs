//! The coordinator's side of the ledger scenario, over blocking HTTP/1.1 (it runs between phases, not under load):
//! creating the scenario's accounts, looking up their balances before and after a phase, comparing the change with
//! what the loaders expect, and the server's own `GET /verify`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::ledger::model::{ACCOUNT_CODE, Delta, account_id};
use crate::ledger::wire::{
    Account, ID_BYTES, ItemResult, MAX_BATCH, RECORD_BYTES, RESULT_BYTES, currency_code,
    result_name,
};
use crate::plan::{HttpUrl, LedgerPlan};
use crate::procs;
use crate::result::LedgerServerVerify;

/// Largest response the coordinator reads from a ledger (a full lookup batch is ~1 MiB).
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// Where the ledger is.
#[derive(Debug, Clone)]
pub struct LedgerTarget {
    addr: SocketAddr,
    host: String,
    prefix: String,
    timeout: Duration,
}

impl LedgerTarget {
    /// The ledger at `url` (resolved to `addr`); `timeout` bounds each request.
    pub fn new(url: &str, addr: SocketAddr, timeout: Duration) -> Result<LedgerTarget, String> {
        let u = HttpUrl::parse(url)?;
        Ok(LedgerTarget {
            addr,
            host: format!("{}:{}", u.host, u.port),
            prefix: u.prefix,
            timeout,
        })
    }

    fn post(&self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        procs::http_request(
            self.addr,
            &self.host,
            "POST",
            &format!("{}{path}", self.prefix),
            Some("application/octet-stream"),
            body,
            self.timeout,
            MAX_RESPONSE_BYTES,
        )
        .map_err(|e| format!("POST {path}: {e}"))
    }
}

/// The account record of scenario account `index`.
pub fn scenario_account(plan: &LedgerPlan, index: u32) -> Account {
    let c = &plan.currencies[index as usize % plan.currencies.len()];
    let currency = currency_code(c).expect("validated in plan");
    Account {
        id: account_id(currency, index),
        currency,
        code: ACCOUNT_CODE,
        ..Account::default()
    }
}

/// Creates the scenario's accounts (`exists` is fine: a later phase or run uses the same ids). Returns how many
/// were created now.
pub fn create_accounts(t: &LedgerTarget, plan: &LedgerPlan) -> Result<u64, String> {
    let mut created = 0;
    let mut body = Vec::with_capacity(MAX_BATCH * RECORD_BYTES);
    let mut rec = [0u8; RECORD_BYTES];
    for start in (0..plan.accounts).step_by(MAX_BATCH) {
        let end = (start + MAX_BATCH as u32).min(plan.accounts);
        body.clear();
        for i in start..end {
            scenario_account(plan, i).encode_into(&mut rec);
            body.extend_from_slice(&rec);
        }
        let (status, resp) = t.post("/accounts", &body)?;
        let n = (end - start) as usize;
        if !matches!(status, 200 | 422) || resp.len() != n * RESULT_BYTES {
            return Err(format!(
                "POST /accounts answered {status} with {} bytes: {}",
                resp.len(),
                String::from_utf8_lossy(&resp[..resp.len().min(200)])
            ));
        }
        for (j, r) in resp.chunks_exact(RESULT_BYTES).enumerate() {
            let r = ItemResult::decode(r);
            match r.code {
                0 => created += 1,
                3 => {}
                code => {
                    return Err(format!(
                        "creating account {:#x} failed: {}",
                        scenario_account(plan, start + j as u32).id,
                        result_name(code)
                    ));
                }
            }
        }
    }
    Ok(created)
}

/// Balances of every scenario account (`None` when the ledger does not know it), by account index, in record order
/// (`[debits_pending, debits_posted, credits_pending, credits_posted]`).
pub type Balances = Vec<Option<[u128; 4]>>;

/// Looks up every scenario account.
pub fn lookup_balances(t: &LedgerTarget, plan: &LedgerPlan) -> Result<Balances, String> {
    let mut out: Balances = Vec::with_capacity(plan.accounts as usize);
    let mut body = Vec::with_capacity(MAX_BATCH * ID_BYTES);
    for start in (0..plan.accounts).step_by(MAX_BATCH) {
        let end = (start + MAX_BATCH as u32).min(plan.accounts);
        body.clear();
        for i in start..end {
            body.extend_from_slice(&scenario_account(plan, i).id.to_le_bytes());
        }
        let (status, resp) = t.post("/accounts/lookup", &body)?;
        if status != 200 || resp.len() % RECORD_BYTES != 0 {
            return Err(format!(
                "POST /accounts/lookup answered {status} with {} bytes",
                resp.len()
            ));
        }
        let mut found = resp
            .chunks_exact(RECORD_BYTES)
            .map(Account::decode)
            .peekable();
        for i in start..end {
            let id = scenario_account(plan, i).id;
            match found.peek() {
                Some(a) if a.id == id => {
                    let a = found.next().expect("peeked");
                    out.push(Some([
                        a.debits_pending,
                        a.debits_posted,
                        a.credits_pending,
                        a.credits_posted,
                    ]));
                }
                _ => out.push(None),
            }
        }
        if found.next().is_some() {
            return Err(
                "POST /accounts/lookup answered accounts not asked for, or out of order".into(),
            );
        }
    }
    Ok(out)
}

/// The comparison of a phase's balance changes with the loaders' expectation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalanceCheck {
    /// Accounts compared.
    pub accounts_checked: u64,
    /// Accounts the ledger did not know before or after the phase.
    pub missing_accounts: u64,
    /// Accounts whose change differs from the expected one.
    pub balance_mismatches: u64,
    /// Per currency: the changes of the scenario accounts sum to zero (credits − debits, posted and pending).
    pub currencies_balanced: BTreeMap<String, bool>,
    /// Up to ten examples.
    pub examples: Vec<String>,
}

/// Compares after − before with `expected` (dense, by account index) for every scenario account.
pub fn check_balances(
    plan: &LedgerPlan,
    before: &Balances,
    after: &Balances,
    expected: &[Delta],
) -> BalanceCheck {
    let mut c = BalanceCheck::default();
    let cn = plan.currencies.len();
    // Per currency: Σ (credits − debits) over pending and posted.
    let mut sums = vec![[0i128; 2]; cn];
    let example = |c: &mut BalanceCheck, e: String| {
        if c.examples.len() < 10 {
            c.examples.push(e);
        }
    };
    for i in 0..plan.accounts as usize {
        c.accounts_checked += 1;
        let (Some(b), Some(a)) = (
            before.get(i).copied().flatten(),
            after.get(i).copied().flatten(),
        ) else {
            c.missing_accounts += 1;
            example(
                &mut c,
                format!("account index {i}: not found by the ledger"),
            );
            continue;
        };
        let mut actual = [0i128; 4];
        let mut overflow = false;
        for f in 0..4 {
            match (i128::try_from(a[f]), i128::try_from(b[f])) {
                (Ok(x), Ok(y)) => actual[f] = x - y,
                _ => overflow = true,
            }
        }
        let want = expected.get(i).copied().unwrap_or([0; 4]);
        if overflow || actual != want {
            c.balance_mismatches += 1;
            example(
                &mut c,
                format!(
                    "account {:#x}: change [debits_pending, debits_posted, credits_pending, credits_posted] = {actual:?}, the loaders expected {want:?}",
                    scenario_account(plan, i as u32).id
                ),
            );
        }
        let s = &mut sums[i % cn];
        s[0] += actual[2] - actual[0];
        s[1] += actual[3] - actual[1];
    }
    for (k, name) in plan.currencies.iter().enumerate() {
        let ok = sums[k] == [0, 0];
        if !ok {
            example(
                &mut c,
                format!(
                    "{name}: the changes do not sum to zero (pending {}, posted {})",
                    sums[k][0], sums[k][1]
                ),
            );
        }
        c.currencies_balanced.insert(name.clone(), ok);
    }
    c
}

/// Adds loader deltas (sparse, by account index) into a dense vector of `accounts`.
pub fn sum_deltas<'a>(
    accounts: u32,
    reports: impl IntoIterator<Item = &'a [(u32, Delta)]>,
) -> Result<Vec<Delta>, String> {
    let mut out = vec![[0i128; 4]; accounts as usize];
    for deltas in reports {
        for (i, d) in deltas {
            let slot = out
                .get_mut(*i as usize)
                .ok_or_else(|| format!("a loader reported account index {i} of {accounts}"))?;
            for f in 0..4 {
                slot[f] += d[f];
            }
        }
    }
    Ok(out)
}

/// `GET /verify`: the server's own check of its log and balances.
pub fn server_verify(t: &LedgerTarget) -> Result<LedgerServerVerify, String> {
    let (status, body) = procs::http_request(
        t.addr,
        &t.host,
        "GET",
        &format!("{}/verify", t.prefix),
        None,
        b"",
        t.timeout.max(Duration::from_secs(120)),
        MAX_RESPONSE_BYTES,
    )
    .map_err(|e| format!("GET /verify: {e}"))?;
    if status != 200 {
        return Err(format!(
            "GET /verify answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    parse_verify(&body)
}

/// Reads the verify report of `API.md`.
pub fn parse_verify(body: &[u8]) -> Result<LedgerServerVerify, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("GET /verify: not JSON: {e}"))?;
    let ok = v["ok"].as_bool().ok_or("GET /verify: no boolean `ok`")?;
    let records = v["records"].as_u64().ok_or("GET /verify: no `records`")?;
    let head_hash = v["head_hash"].as_str().unwrap_or_default().to_string();
    let mut balanced = BTreeMap::new();
    if let Some(cur) = v["currencies"].as_object() {
        for (name, c) in cur {
            balanced.insert(
                name.clone(),
                c["balanced"]
                    .as_bool()
                    .ok_or_else(|| format!("GET /verify: currency {name} has no `balanced`"))?,
            );
        }
    }
    let errors = v["errors"].as_array().map_or(0, Vec::len) as u64;
    Ok(LedgerServerVerify {
        ok,
        records,
        head_hash,
        balanced,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> LedgerPlan {
        LedgerPlan {
            accounts: 4,
            currencies: vec!["USD".into(), "EUR".into()],
            batch_size: 1,
            zipf_exponent: 1.0,
            two_phase_ratio: 0.0,
            void_ratio: 0.1,
            bare_resolve_ratio: 0.0,
            pending_timeout_s: 0,
            linked_ratio: 0.0,
            linked_chain_max: 4,
            linked_fail_ratio: 0.1,
            amount_max: 10,
            verify: true,
            seed: 1,
        }
    }

    #[test]
    fn balances_compare_with_expectation_and_sum_to_zero() {
        let p = plan();
        let before: Balances = vec![
            Some([0, 5, 0, 0]),
            Some([0; 4]),
            Some([0, 0, 0, 5]),
            Some([0; 4]),
        ];
        // USD accounts 0 and 2: 7 moved from 0 to 2, 3 reserved from 2 to 0.
        let after: Balances = vec![
            Some([0, 12, 3, 0]),
            Some([0; 4]),
            Some([3, 0, 0, 12]),
            Some([0; 4]),
        ];
        let expected = sum_deltas(4, [&[(0, [0, 7, 3, 0])][..], &[(2, [3, 0, 0, 7])][..]]).unwrap();
        let c = check_balances(&p, &before, &after, &expected);
        assert_eq!(c.balance_mismatches, 0, "{:?}", c.examples);
        assert_eq!(c.accounts_checked, 4);
        assert!(c.currencies_balanced.values().all(|&b| b));

        // The ledger lost 1 unit of a credit: a mismatch, and USD no longer sums to zero.
        let mut broken = after.clone();
        broken[2] = Some([3, 0, 0, 11]);
        let c = check_balances(&p, &before, &broken, &expected);
        assert_eq!(c.balance_mismatches, 1);
        assert!(!c.currencies_balanced["USD"]);
        assert!(c.currencies_balanced["EUR"]);

        let mut missing = after;
        missing[3] = None;
        assert_eq!(
            check_balances(&p, &before, &missing, &expected).missing_accounts,
            1
        );
        assert!(sum_deltas(4, [&[(9, [0; 4])][..]]).is_err());
    }

    #[test]
    fn verify_report_parses() {
        let v = parse_verify(
            br#"{"ok":true,"records":12,"head_hash":"ab12","accounts":4,"transfers":8,
                "currencies":{"USD":{"debits_posted":"1","credits_posted":"1","debits_pending":"0","credits_pending":"0","balanced":true}},
                "errors":[]}"#,
        )
        .unwrap();
        assert!(v.ok);
        assert_eq!(v.records, 12);
        assert_eq!(v.head_hash, "ab12");
        assert!(v.balanced["USD"]);
        assert!(parse_verify(b"{}").is_err());
    }

    #[test]
    fn scenario_accounts_alternate_currencies() {
        let p = plan();
        assert_eq!(
            scenario_account(&p, 0).currency,
            currency_code("USD").unwrap()
        );
        assert_eq!(
            scenario_account(&p, 3).currency,
            currency_code("EUR").unwrap()
        );
        assert_eq!(scenario_account(&p, 3).code, ACCOUNT_CODE);
    }
}
