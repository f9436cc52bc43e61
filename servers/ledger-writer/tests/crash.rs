//! The crash test: `kill -9` under load, restart, verify — cycle after cycle on one data directory.
//!
//! Each cycle restarts `ledger-writer serve` on the same directory (small checkpoint interval, so checkpoints are
//! taken under load and restarts resume from them), checks everything the previous cycles were told against what
//! the restarted server holds, then drives concurrent load from several connections (single transfers, batches of
//! 1..=200 with linked chains — some meant to fail — two-phase pending + post/void, resubmissions of acknowledged
//! ids) and SIGKILLs the server after a random 50–400 ms. Between cycles `ledger-writer verify` audits the files
//! the killed server left (clean, or at most a torn tail).
//!
//! The model: a transfer is *applied* when its acknowledged result was `ok`, or when it was in doubt (request
//! sent, no complete response) and is present after the restart; it is *absent* when its acknowledged result was
//! a failure, or it was in doubt and is not present. Every applied transfer must be present with the fields sent
//! (and the acknowledged timestamp), every absent one missing, every account's four balances equal to the sums
//! over applied transfers, and the server's transfer and pending counts equal the model's.
//!
//! `REFBENCH_CRASH_CYCLES` (default 20) sets the cycles, `REFBENCH_CRASH_SEED` the base seed (cycle `k` uses
//! `seed + k`). The last line printed is `CRASH_TALLY {json}`.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Accounts 1..=12 are USD, 13..=20 EUR.
const ACCOUNTS: u128 = 20;
const USD_ACCOUNTS: u128 = 12;
/// An account id that never exists (makes a linked chain fail).
const MISSING_ACCOUNT: u128 = 999_999;
/// Connections driving load.
const CONNS: usize = 4;
/// Small segments (2 MiB; the minimum is one full batch record) so segments roll during the test.
const SEGMENT_BYTES: &str = "2097152";
/// A checkpoint every 2 MiB of log: several per run, restarts resume from them.
const CHECKPOINT_EVERY_BYTES: &str = "2097152";

fn serve_args() -> [&'static str; 4] {
    [
        "--segment-bytes",
        SEGMENT_BYTES,
        "--checkpoint-every-bytes",
        CHECKPOINT_EVERY_BYTES,
    ]
}

fn account_currency(id: u128) -> u32 {
    if id <= USD_ACCOUNTS { USD } else { EUR }
}

/// A transfer as sent and the form the server must store (post/void filled in from the pending transfer).
#[derive(Debug, Clone, Copy)]
struct Sent {
    sent: Tr,
    stored: Tr,
}

/// One connection's share of a cycle.
struct ConnInput {
    index: usize,
    seed: u64,
    /// Ids of this connection's new transfers start here.
    id_base: u128,
    /// Applied pending transfers (stored form) this connection may post or void.
    open_pendings: Vec<Tr>,
    /// Acknowledged transfers (as sent, with their timestamp) to resubmit.
    resubmit_pool: Vec<(Tr, u64)>,
}

#[derive(Default)]
struct ConnOutput {
    /// Acknowledged items: what was sent, the result code and timestamp.
    acked: Vec<(Sent, u32, u64)>,
    /// Items of requests that got no complete response.
    in_doubt: Vec<Sent>,
    /// Pending transfers not posted or voided (stored form).
    open_pendings: Vec<Tr>,
    /// Resubmitted items that answered `exists` with the original timestamp.
    resubmits_ok: u64,
    requests: u64,
    errors: Vec<String>,
}

fn plain(rng: &mut Rng, id: u128, flags: u16) -> Sent {
    let usd = rng.pct(70);
    let (lo, hi) = if usd {
        (1, USD_ACCOUNTS)
    } else {
        (USD_ACCOUNTS + 1, ACCOUNTS)
    };
    let debit = rng.range(lo as u64, hi as u64) as u128;
    let mut credit = rng.range(lo as u64, hi as u64 - 1) as u128;
    if credit >= debit {
        credit += 1;
    }
    let t = Tr {
        id,
        debit,
        credit,
        amount: rng.range(1, 1000) as u128,
        user_data: rng.next_u64() as u128,
        currency: account_currency(debit),
        code: 1 + (rng.next_u64() % 5) as u16,
        flags,
        ..Tr::default()
    };
    Sent { sent: t, stored: t }
}

/// A post or void of the applied pending transfer `p` (stored form).
fn resolve(rng: &mut Rng, id: u128, p: &Tr) -> Sent {
    let post = rng.pct(60);
    let amount = if post {
        match rng.range(0, 2) {
            0 => 0,
            1 => p.amount,
            _ => (p.amount / 2).max(1),
        }
    } else if rng.pct(50) {
        0
    } else {
        p.amount
    };
    let filled = rng.pct(50);
    let sent = Tr {
        id,
        debit: if filled { p.debit } else { 0 },
        credit: if filled { p.credit } else { 0 },
        amount,
        pending_id: p.id,
        user_data: rng.next_u64() as u128,
        currency: if filled { p.currency } else { 0 },
        code: if post { 7 } else { 8 },
        flags: if post { POST } else { VOID },
        ..Tr::default()
    };
    let stored = Tr {
        debit: p.debit,
        credit: p.credit,
        currency: p.currency,
        amount: if post && amount != 0 {
            amount
        } else {
            p.amount
        },
        ..sent
    };
    Sent { sent, stored }
}

/// Drives one connection until it fails (the kill); never panics, errors go to the output.
async fn drive(
    server: std::net::SocketAddr,
    input: ConnInput,
    killed: Arc<AtomicBool>,
) -> ConnOutput {
    let mut out = ConnOutput {
        open_pendings: input.open_pendings,
        ..ConnOutput::default()
    };
    let mut rng = Rng::new(input.seed);
    let mut next_id = input.id_base;
    let mut pool = input.resubmit_pool;
    let mut conn = match Conn::connect(server).await {
        Ok(c) => c,
        Err(e) => {
            if !killed.load(Ordering::SeqCst) {
                out.errors
                    .push(format!("conn {}: {e} before the kill", input.index));
            }
            return out;
        }
    };
    // Bounded: the kill comes within 400 ms; this only guards against a server that never dies.
    while out.requests < 1_000_000 {
        out.requests += 1;
        let roll = rng.range(0, 99);
        if roll < 12 && !pool.is_empty() {
            // Resubmit acknowledged transfers: every one must answer `exists` with its original timestamp.
            let n = rng.range(1, 50.min(pool.len() as u64)) as usize;
            let batch: Vec<(Tr, u64)> = (0..n).map(|_| *rng.pick(&pool)).collect();
            let trs: Vec<Tr> = batch.iter().map(|b| b.0).collect();
            match conn.try_create_transfers(&trs).await {
                Ok((status, results)) => {
                    for ((t, ts), (code, got_ts)) in batch.iter().zip(&results) {
                        if *code != EXISTS || got_ts != ts {
                            out.errors.push(format!(
                                "resubmitted transfer {} answered code {code} ts {got_ts}, want exists ({EXISTS}) ts {ts}",
                                t.id
                            ));
                        }
                    }
                    if status != 200 {
                        out.errors
                            .push(format!("all-exists batch answered {status}, want 200"));
                    }
                    out.resubmits_ok += n as u64;
                }
                Err(e) => {
                    if !killed.load(Ordering::SeqCst) {
                        out.errors
                            .push(format!("request failed before the kill: {e}"));
                    }
                    break;
                }
            }
            continue;
        }
        // Build a batch with its expected per-item codes.
        let mut items: Vec<Sent> = Vec::new();
        let mut expect: Vec<u32> = Vec::new();
        let mut new_id = || {
            next_id += 1;
            next_id
        };
        if roll < 35 {
            // A single transfer.
            items.push(plain(&mut rng, new_id(), 0));
            expect.push(OK);
        } else if roll < 45 {
            // Two-phase: a single pending transfer (no timeout: expiry has its own test).
            items.push(plain(&mut rng, new_id(), PENDING));
            expect.push(OK);
        } else if roll < 60 && !out.open_pendings.is_empty() {
            // Post or void some of this connection's applied pending transfers.
            let n = rng.range(1, 20.min(out.open_pendings.len() as u64));
            for _ in 0..n {
                let i = (rng.next_u64() % out.open_pendings.len() as u64) as usize;
                let p = out.open_pendings.swap_remove(i);
                items.push(resolve(&mut rng, new_id(), &p));
                expect.push(OK);
            }
        } else {
            // A batch of 1..=200: plain and pending transfers, linked chains (a fifth of them failing).
            let size = rng.range(1, 200) as usize;
            while items.len() < size {
                if rng.pct(8) && size - items.len() >= 2 {
                    let len = rng.range(2, 4.min((size - items.len()) as u64)) as usize;
                    let fail = rng.pct(20);
                    for k in 0..len {
                        let last = k + 1 == len;
                        let mut s = plain(&mut rng, new_id(), if last { 0 } else { LINKED });
                        if fail && last {
                            s.sent.debit = MISSING_ACCOUNT;
                            s.stored = s.sent;
                        }
                        items.push(s);
                        expect.push(match (fail, last) {
                            (false, _) => OK,
                            (true, false) => LINKED_EVENT_FAILED,
                            (true, true) => DEBIT_ACCOUNT_NOT_FOUND,
                        });
                    }
                } else {
                    let flags = if rng.pct(10) { PENDING } else { 0 };
                    items.push(plain(&mut rng, new_id(), flags));
                    expect.push(OK);
                }
            }
        }
        let trs: Vec<Tr> = items.iter().map(|s| s.sent).collect();
        match conn.try_create_transfers(&trs).await {
            Ok((status, results)) => {
                let want_status = if expect.contains(&OK) { 200 } else { 422 };
                if status != want_status {
                    out.errors.push(format!(
                        "batch of {} answered {status}, want {want_status}",
                        items.len()
                    ));
                }
                for ((s, want), (code, ts)) in items.iter().zip(&expect).zip(&results) {
                    if code != want {
                        out.errors.push(format!(
                            "transfer {} ({:?}) answered code {code}, want {want}",
                            s.sent.id, s.sent
                        ));
                    }
                    if (*code == OK) != (*ts != 0) {
                        out.errors.push(format!(
                            "transfer {} answered code {code} with timestamp {ts}",
                            s.sent.id
                        ));
                    }
                    if *code == OK {
                        if s.sent.flags & PENDING != 0 {
                            out.open_pendings.push(s.stored);
                        }
                        // A linked item alone would end its batch inside a chain; resubmit unlinked ones.
                        if s.sent.flags & LINKED == 0 {
                            pool.push((s.sent, *ts));
                        }
                    }
                    out.acked.push((*s, *code, *ts));
                }
            }
            Err(e) => {
                if !killed.load(Ordering::SeqCst) {
                    out.errors
                        .push(format!("request failed before the kill: {e}"));
                }
                out.in_doubt.extend(items);
                break;
            }
        }
    }
    out
}

/// Everything the test knows across cycles.
#[derive(Default)]
struct Model {
    /// Applied transfers (stored form, with the timestamp when known).
    applied: HashMap<u128, Tr>,
    /// Ids that must not exist.
    absent: HashSet<u128>,
    /// Applied pending transfers no request has tried to post or void yet.
    open_pendings: Vec<Tr>,
    /// Acknowledged-ok transfers as sent, with timestamps (for resubmission).
    acked_sent: Vec<(Tr, u64)>,
    /// This cycle's acknowledged ok ids, failed ids and in-doubt items, checked in full after the restart.
    last_acked: Vec<u128>,
    last_failed: Vec<u128>,
    last_in_doubt: Vec<Sent>,
    /// Tallies.
    acked: u64,
    acked_failed: u64,
    in_doubt_applied: u64,
    in_doubt_absent: u64,
    resubmits: u64,
    records: u64,
}

impl Model {
    /// Expected balances: [debits_pending, debits_posted, credits_pending, credits_posted] per account.
    fn balances(&self) -> HashMap<u128, [i128; 4]> {
        let mut b: HashMap<u128, [i128; 4]> = (1..=ACCOUNTS).map(|id| (id, [0; 4])).collect();
        for t in self.applied.values() {
            let (d, c) = (t.debit, t.credit);
            if t.flags & (POST | VOID) != 0 {
                let p = self.applied[&t.pending_id];
                let pa = p.amount as i128;
                b.get_mut(&d).expect("debit")[0] -= pa;
                b.get_mut(&c).expect("credit")[2] -= pa;
                if t.flags & POST != 0 {
                    b.get_mut(&d).expect("debit")[1] += t.amount as i128;
                    b.get_mut(&c).expect("credit")[3] += t.amount as i128;
                }
            } else if t.flags & PENDING != 0 {
                b.get_mut(&d).expect("debit")[0] += t.amount as i128;
                b.get_mut(&c).expect("credit")[2] += t.amount as i128;
            } else {
                b.get_mut(&d).expect("debit")[1] += t.amount as i128;
                b.get_mut(&c).expect("credit")[3] += t.amount as i128;
            }
        }
        b
    }

    fn pending_count(&self) -> u64 {
        let resolved: HashSet<u128> = self
            .applied
            .values()
            .filter(|t| t.flags & (POST | VOID) != 0)
            .map(|t| t.pending_id)
            .collect();
        self.applied
            .values()
            .filter(|t| t.flags & PENDING != 0 && !resolved.contains(&t.id))
            .count() as u64
    }
}

fn same_fields(got: &Tr, want: &Tr) -> bool {
    Tr {
        timestamp: 0,
        ..*got
    } == Tr {
        timestamp: 0,
        ..*want
    }
}

/// After a restart: settles the in-doubt items and checks the whole model against the server.
async fn check(conn: &mut Conn, m: &mut Model, rng: &mut Rng, errors: &mut Vec<String>) {
    // In-doubt items: present (with the fields sent) or absent; either is fine, both are counted.
    let in_doubt = std::mem::take(&mut m.last_in_doubt);
    let ids: Vec<u128> = in_doubt.iter().map(|s| s.sent.id).collect();
    let found: HashMap<u128, Tr> = conn
        .lookup_transfers(&ids)
        .await
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    for s in &in_doubt {
        match found.get(&s.sent.id) {
            Some(got) => {
                if !same_fields(got, &s.stored) || got.timestamp == 0 {
                    errors.push(format!(
                        "in-doubt transfer {} stored as {got:?}, sent {:?} (expected stored form {:?})",
                        s.sent.id, s.sent, s.stored
                    ));
                }
                m.applied.insert(got.id, *got);
                if got.flags & PENDING != 0 {
                    m.open_pendings.push(*got);
                }
                m.in_doubt_applied += 1;
            }
            None => {
                m.absent.insert(s.sent.id);
                m.in_doubt_absent += 1;
            }
        }
    }
    // Every transfer acknowledged in the last cycle, plus a sample of older ones: present, same fields, same
    // timestamp.
    let mut want: Vec<u128> = std::mem::take(&mut m.last_acked);
    let all: Vec<u128> = m.applied.keys().copied().collect();
    for _ in 0..2000.min(all.len()) {
        want.push(*rng.pick(&all));
    }
    let got: HashMap<u128, Tr> = conn
        .lookup_transfers(&want)
        .await
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    for id in &want {
        let expect = &m.applied[id];
        match got.get(id) {
            None => errors.push(format!(
                "acknowledged transfer {id} is missing after the restart"
            )),
            Some(g) if !same_fields(g, expect) || g.timestamp != expect.timestamp => errors.push(
                format!("transfer {id} after the restart is {g:?}, want {expect:?}"),
            ),
            Some(_) => {}
        }
    }
    // Failed items and in-doubt-absent ones never appear.
    let mut gone: Vec<u128> = std::mem::take(&mut m.last_failed);
    let absent: Vec<u128> = m.absent.iter().copied().collect();
    for _ in 0..2000.min(absent.len()) {
        gone.push(*rng.pick(&absent));
    }
    for t in conn.lookup_transfers(&gone).await {
        errors.push(format!(
            "transfer {} exists but was never applied: {t:?}",
            t.id
        ));
    }
    // Balances, exactly.
    let want_bal = m.balances();
    let ids: Vec<u128> = (1..=ACCOUNTS).collect();
    let accounts = conn.lookup_accounts(&ids).await;
    if accounts.len() != ACCOUNTS as usize {
        errors.push(format!("{} of {ACCOUNTS} accounts found", accounts.len()));
    }
    for a in &accounts {
        let got = [
            a.debits_pending,
            a.debits_posted,
            a.credits_pending,
            a.credits_posted,
        ];
        let want = want_bal[&a.id];
        if want.iter().any(|&v| v < 0) || got.iter().zip(&want).any(|(g, w)| *g as i128 != *w) {
            errors.push(format!(
                "account {} balances [dp, dP, cp, cP] = {got:?}, the model says {want:?}",
                a.id
            ));
        }
        if a.currency != account_currency(a.id) || a.user_data != a.id * 7 || a.code != 1 {
            errors.push(format!("account {} fields changed: {a:?}", a.id));
        }
    }
    // Counts, currencies and the audit.
    let status = conn.status().await;
    let n = |k: &str| status[k].as_u64().unwrap_or(u64::MAX);
    if n("transfers") != m.applied.len() as u64 {
        errors.push(format!(
            "status says {} transfers, the model has {} applied",
            n("transfers"),
            m.applied.len()
        ));
    }
    if n("pending") != m.pending_count() {
        errors.push(format!(
            "status says {} pending, the model {}",
            n("pending"),
            m.pending_count()
        ));
    }
    if n("accounts") != ACCOUNTS as u64 {
        errors.push(format!("status says {} accounts", n("accounts")));
    }
    for (cur, c) in status["currencies"].as_object().into_iter().flatten() {
        if c["balanced"] != true || c["debits_posted"] != c["credits_posted"] {
            errors.push(format!("currency {cur} does not balance: {c}"));
        }
    }
    let v = conn.verify().await;
    let records = v["records"].as_u64().unwrap_or(0);
    if v["ok"] != true {
        errors.push(format!("GET /verify after the restart: {v}"));
    }
    if records < m.records {
        errors.push(format!(
            "GET /verify counts {records} records, fewer than the {} before",
            m.records
        ));
    }
    if v["records"] != status["records"] || v["head_hash"] != status["head_hash"] {
        errors.push(format!(
            "GET /verify ({} records, head {}) disagrees with GET /status ({} records, head {})",
            v["records"], v["head_hash"], status["records"], status["head_hash"]
        ));
    }
    m.records = records;
    // Resubmitting acknowledged transfers never applies them twice.
    if !m.acked_sent.is_empty() {
        let sample: Vec<(Tr, u64)> = (0..100.min(m.acked_sent.len()))
            .map(|_| *rng.pick(&m.acked_sent))
            .collect();
        let trs: Vec<Tr> = sample.iter().map(|s| s.0).collect();
        let (status, results) = conn.create_transfers(&trs).await;
        if status != 200 {
            errors.push(format!("resubmission answered {status}"));
        }
        for ((t, ts), (code, got)) in sample.iter().zip(results) {
            if code != EXISTS || got != *ts {
                errors.push(format!(
                    "resubmitted transfer {} answered {code} ts {got}, want exists ts {ts}",
                    t.id
                ));
            }
        }
        m.resubmits += sample.len() as u64;
    }
}

fn tally_line(
    cycles: u64,
    m: &Model,
    torn_recovery: u64,
    torn_verify: u64,
    ckpt: u64,
    dir: &Path,
) -> String {
    serde_json::json!({
        "cycles": cycles,
        "acked": m.acked,
        "acked_failed": m.acked_failed,
        "in_doubt_applied": m.in_doubt_applied,
        "in_doubt_not_applied": m.in_doubt_absent,
        "resubmitted_exists": m.resubmits,
        "torn_tails_recovered": torn_recovery,
        "torn_tails_seen_by_verify": torn_verify,
        "restarts_from_checkpoint": ckpt,
        "transfers": m.applied.len(),
        "records": m.records,
        "segments": segments(dir).len(),
        "failures": 0,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_kill9_cycles() {
    let cycles: u64 = std::env::var("REFBENCH_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let base_seed: u64 = std::env::var("REFBENCH_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1ed6);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let started = Instant::now();
    let mut m = Model::default();
    let (mut torn_recovery, mut torn_verify, mut ckpt_restarts) = (0u64, 0u64, 0u64);
    let first = Server::start(&dir, &serve_args());
    let mut http = first.http;
    let mut server = Some(first);
    {
        let mut conn = Conn::connect(http).await.expect("connect");
        let accounts: Vec<Acct> = (1..=ACCOUNTS)
            .map(|id| Acct::new(id, account_currency(id)))
            .collect();
        let (status, results) = conn.create_accounts(&accounts).await;
        assert_eq!(status, 200);
        assert!(results.iter().all(|r| r.0 == OK), "{results:?}");
    }
    for cycle in 0..=cycles {
        let seed = base_seed.wrapping_add(cycle);
        let mut rng = Rng::new(seed);
        let mut errors: Vec<String> = Vec::new();
        let ctx = format!(
            "cycle {cycle} of {cycles} (seed {seed}: rerun with REFBENCH_CRASH_SEED={base_seed} REFBENCH_CRASH_CYCLES={cycles})"
        );
        if cycle > 0 {
            // The restart after the kill.
            let s = Server::start(&dir, &serve_args());
            let line = s.recovery_line();
            http = s.http;
            server = Some(s);
            if line.contains("DROPPED: torn tail") {
                torn_recovery += 1;
            } else if line.contains("DROPPED") {
                errors.push(format!(
                    "recovery after kill -9 dropped more than a torn tail: {line}"
                ));
            }
            if !line.contains("checkpoint None") {
                ckpt_restarts += 1;
            }
            let mut conn = Conn::connect(http).await.expect("connect");
            check(&mut conn, &mut m, &mut rng, &mut errors).await;
            assert!(
                errors.is_empty(),
                "{ctx}: {} problems after the restart ({line}):\n{}",
                errors.len(),
                errors.join("\n")
            );
        }
        if cycle == cycles {
            break;
        }
        // Load, then kill -9 at a random moment.
        let killed = Arc::new(AtomicBool::new(false));
        let mut pendings = std::mem::take(&mut m.open_pendings);
        let mut tasks = Vec::new();
        for c in 0..CONNS {
            let share: Vec<Tr> = (0..pendings.len() / (CONNS - c))
                .map(|_| pendings.pop().expect("pending"))
                .collect();
            let pool: Vec<(Tr, u64)> = if m.acked_sent.is_empty() {
                Vec::new()
            } else {
                (0..200).map(|_| *rng.pick(&m.acked_sent)).collect()
            };
            let input = ConnInput {
                index: c,
                seed: seed.wrapping_mul(31).wrapping_add(c as u64 + 1),
                id_base: ((cycle as u128 + 1) << 48) | ((c as u128 + 1) << 40),
                open_pendings: share,
                resubmit_pool: pool,
            };
            tasks.push(tokio::spawn(drive(http, input, killed.clone())));
        }
        let delay = Duration::from_millis(rng.range(50, 400));
        tokio::time::sleep(delay).await;
        killed.store(true, Ordering::SeqCst);
        let _ = server.take().expect("server").kill9();
        for t in tasks {
            let out = tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .unwrap_or_else(|_| {
                    panic!("{ctx}: a load connection did not finish after the kill")
                })
                .expect("load task panicked");
            errors.extend(out.errors);
            m.resubmits += out.resubmits_ok;
            m.open_pendings.extend(out.open_pendings);
            for (s, code, ts) in out.acked {
                if code == OK {
                    m.applied.insert(
                        s.sent.id,
                        Tr {
                            timestamp: ts,
                            ..s.stored
                        },
                    );
                    if s.sent.flags & LINKED == 0 {
                        m.acked_sent.push((s.sent, ts));
                    }
                    m.last_acked.push(s.sent.id);
                    m.acked += 1;
                } else {
                    m.absent.insert(s.sent.id);
                    m.last_failed.push(s.sent.id);
                    m.acked_failed += 1;
                }
            }
            m.last_in_doubt.extend(out.in_doubt);
        }
        // The files the killed server left: clean, or a torn tail at the very end, never anything else.
        let (code, report) = verify_cli(&dir);
        if code != 0 {
            let errs = report["errors"].as_array().cloned().unwrap_or_default();
            let torn = code == 1
                && errs.len() == 1
                && errs[0]["what"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("torn tail"));
            if torn {
                torn_verify += 1;
            } else {
                errors.push(format!(
                    "ledger-writer verify after kill -9 exited {code}: {report}"
                ));
            }
        }
        assert!(
            errors.is_empty(),
            "{ctx}: {} problems under load (kill after {delay:?}):\n{}",
            errors.len(),
            errors.join("\n")
        );
        eprintln!(
            "cycle {cycle}: seed {seed}, kill after {delay:?}, {} acked, {} in doubt so far, {:.1} s",
            m.acked,
            m.last_in_doubt.len(),
            started.elapsed().as_secs_f64()
        );
    }
    // Finally: every applied transfer, in full, then a clean stop and a clean audit.
    let mut conn = Conn::connect(http).await.expect("connect");
    let ids: Vec<u128> = m.applied.keys().copied().collect();
    let got = conn.lookup_transfers(&ids).await;
    assert_eq!(got.len(), ids.len(), "final lookup: transfers missing");
    for g in &got {
        let want = &m.applied[&g.id];
        assert!(
            same_fields(g, want) && g.timestamp == want.timestamp,
            "final: transfer {} is {g:?}, want {want:?}",
            g.id
        );
    }
    drop(conn);
    server.take().expect("server").term();
    let (code, report) = verify_cli(&dir);
    assert_eq!(code, 0, "ledger-writer verify after a clean stop: {report}");
    assert_eq!(
        report["records"].as_u64(),
        Some(m.records.max(report["records"].as_u64().unwrap_or(0)))
    );
    assert!(
        m.acked > 0,
        "no transfer was acknowledged in {cycles} cycles"
    );
    println!(
        "CRASH_TALLY {}",
        tally_line(cycles, &m, torn_recovery, torn_verify, ckpt_restarts, &dir)
    );
    eprintln!(
        "crash test: {cycles} cycles in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
