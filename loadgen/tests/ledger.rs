//! The ledger scenario end to end through the real `loadgen` binary against a small in-memory fake ledger written
//! here (hyper on 127.0.0.1:0, just enough of `servers/ledger-writer/API.md`): a correct ledger passes every check,
//! a ledger that stalls some requests past the timeout still passes (in-doubt transfers are resolved by lookup),
//! and a ledger that silently drops every 100th acknowledged transfer fails the run with exit code 1. The same
//! profile also runs once against the real built-in ledger server (`builtin = "ledger"`).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use refbench_loadgen::ledger::wire::{
    Account, ItemResult, RECORD_BYTES, Transfer, currency_name, transfer_flags,
};
use refbench_loadgen::result::RunResult;
use serde_json::Value;

/// How the fake ledger misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Correct,
    /// Applies every request, but answers every 40th transfer request only after a stall longer than the loader's
    /// request timeout.
    Stall,
    /// Answers `ok` for every 100th applicable transfer but neither stores nor applies it.
    DropEvery100,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingState {
    Pending,
    Posted,
    Voided,
}

#[derive(Default)]
struct Ledger {
    accounts: HashMap<u128, Account>,
    transfers: HashMap<u128, Transfer>,
    pending: HashMap<u128, PendingState>,
    clock: u64,
    records: u64,
    applicable: u64,
    transfer_requests: u64,
}

const OK: u32 = 0;
const EXISTS: u32 = 3;

impl Ledger {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        1_700_000_000_000_000_000 + self.clock
    }

    fn create_account(&mut self, mut a: Account) -> ItemResult {
        let code = match self.accounts.get(&a.id) {
            Some(old)
                if old.currency == a.currency && old.code == a.code && old.flags == a.flags =>
            {
                return ItemResult {
                    code: EXISTS,
                    timestamp: old.timestamp,
                };
            }
            Some(_) => 4,
            None if a.id == 0 || a.id == u128::MAX => 5,
            None if a.code == 0 => 10,
            None => {
                a.timestamp = self.tick();
                self.accounts.insert(a.id, a);
                return ItemResult {
                    code: OK,
                    timestamp: a.timestamp,
                };
            }
        };
        ItemResult { code, timestamp: 0 }
    }

    fn create_transfer(&mut self, mut t: Transfer, mode: Mode) -> ItemResult {
        let fail = |code| ItemResult { code, timestamp: 0 };
        if let Some(old) = self.transfers.get(&t.id) {
            return ItemResult {
                code: EXISTS,
                timestamp: old.timestamp,
            };
        }
        let post = t.flags & transfer_flags::POST_PENDING_TRANSFER != 0;
        let void = t.flags & transfer_flags::VOID_PENDING_TRANSFER != 0;
        let (debit, credit, amount, pending_amount) = if post || void {
            let Some(p) = self.transfers.get(&t.pending_id).copied() else {
                return fail(18);
            };
            match self.pending.get(&p.id) {
                None => return fail(19),
                Some(PendingState::Posted) => return fail(23),
                Some(PendingState::Voided) => return fail(24),
                Some(PendingState::Pending) => {}
            }
            if (t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id)
                || (t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id)
            {
                return fail(20);
            }
            let amount = if void {
                if t.amount != 0 && t.amount != p.amount {
                    return fail(22);
                }
                p.amount
            } else if t.amount == 0 {
                p.amount
            } else if t.amount > p.amount {
                return fail(22);
            } else {
                t.amount
            };
            (p.debit_account_id, p.credit_account_id, amount, p.amount)
        } else {
            if t.amount == 0 {
                return fail(15);
            }
            (t.debit_account_id, t.credit_account_id, t.amount, t.amount)
        };
        let (Some(d), Some(c)) = (self.accounts.get(&debit), self.accounts.get(&credit)) else {
            return fail(11);
        };
        if debit == credit {
            return fail(13);
        }
        if d.currency != c.currency || (t.currency != 0 && t.currency != d.currency) {
            return fail(14);
        }
        self.applicable += 1;
        let timestamp = self.tick();
        if mode == Mode::DropEvery100 && self.applicable % 100 == 0 {
            return ItemResult {
                code: OK,
                timestamp,
            };
        }
        let pending = t.flags & transfer_flags::PENDING != 0;
        {
            let d = self.accounts.get_mut(&debit).expect("checked");
            if pending {
                d.debits_pending += amount;
            } else if post || void {
                d.debits_pending -= pending_amount;
                if post {
                    d.debits_posted += amount;
                }
            } else {
                d.debits_posted += amount;
            }
        }
        {
            let c = self.accounts.get_mut(&credit).expect("checked");
            if pending {
                c.credits_pending += amount;
            } else if post || void {
                c.credits_pending -= pending_amount;
                if post {
                    c.credits_posted += amount;
                }
            } else {
                c.credits_posted += amount;
            }
        }
        if pending {
            self.pending.insert(t.id, PendingState::Pending);
        }
        if post || void {
            self.pending.insert(
                t.pending_id,
                if post {
                    PendingState::Posted
                } else {
                    PendingState::Voided
                },
            );
        }
        t.debit_account_id = debit;
        t.credit_account_id = credit;
        t.amount = amount;
        t.currency = self.accounts[&debit].currency;
        t.timestamp = timestamp;
        self.transfers.insert(t.id, t);
        ItemResult {
            code: OK,
            timestamp,
        }
    }

    fn verify(&self) -> Value {
        let mut cur: BTreeMap<String, [u128; 4]> = BTreeMap::new();
        for a in self.accounts.values() {
            let s = cur.entry(currency_name(a.currency)).or_default();
            s[0] += a.debits_pending;
            s[1] += a.debits_posted;
            s[2] += a.credits_pending;
            s[3] += a.credits_posted;
        }
        let currencies: serde_json::Map<String, Value> = cur
            .into_iter()
            .map(|(k, s)| {
                (
                    k,
                    serde_json::json!({
                        "debits_pending": s[0].to_string(), "debits_posted": s[1].to_string(),
                        "credits_pending": s[2].to_string(), "credits_posted": s[3].to_string(),
                        "balanced": s[0] == s[2] && s[1] == s[3],
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "ok": true, "records": self.records, "head_hash": format!("{:064x}", self.clock),
            "accounts": self.accounts.len(), "transfers": self.transfers.len(),
            "currencies": currencies, "errors": [],
        })
    }
}

struct Fake {
    ledger: Mutex<Ledger>,
    mode: Mode,
}

fn records(body: &[u8], size: usize) -> Option<std::slice::ChunksExact<'_, u8>> {
    (!body.is_empty() && body.len() % size == 0).then(|| body.chunks_exact(size))
}

async fn handle(
    fake: Arc<Fake>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = |status: u16, body: Vec<u8>| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(body)))
            .expect("response"))
    };
    let mut stall = false;
    let (status, out) = {
        let mut l = fake.ledger.lock().unwrap();
        match (method.as_str(), path.as_str()) {
            ("POST", "/accounts") | ("POST", "/transfers") => {
                let Some(items) = records(&body, RECORD_BYTES) else {
                    return reply(400, b"{\"error\":\"malformed\"}".to_vec());
                };
                let mut out = Vec::new();
                let mut applied = false;
                let mut all_exist = true;
                for r in items {
                    let res = if path == "/accounts" {
                        l.create_account(Account::decode(r))
                    } else {
                        l.create_transfer(Transfer::decode(r), fake.mode)
                    };
                    applied |= res.code == OK;
                    all_exist &= res.code == EXISTS;
                    res.encode_into(&mut out);
                }
                if applied {
                    l.records += 1;
                }
                if path == "/transfers" {
                    l.transfer_requests += 1;
                    stall = fake.mode == Mode::Stall && l.transfer_requests % 40 == 0;
                }
                (if applied || all_exist { 200 } else { 422 }, out)
            }
            ("POST", "/accounts/lookup") | ("POST", "/transfers/lookup") => {
                let Some(ids) = records(&body, 16) else {
                    return reply(400, b"{\"error\":\"malformed\"}".to_vec());
                };
                let mut out = Vec::new();
                let mut rec = [0u8; RECORD_BYTES];
                for id in ids {
                    let id = u128::from_le_bytes(id.try_into().unwrap());
                    if path == "/accounts/lookup" {
                        if let Some(a) = l.accounts.get(&id) {
                            a.encode_into(&mut rec);
                            out.extend_from_slice(&rec);
                        }
                    } else if let Some(t) = l.transfers.get(&id) {
                        t.encode_into(&mut rec);
                        out.extend_from_slice(&rec);
                    }
                }
                (200, out)
            }
            ("GET", "/verify") => (200, serde_json::to_vec(&l.verify()).unwrap()),
            _ => (404, b"{\"error\":\"not found\"}".to_vec()),
        }
    };
    if stall {
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    reply(status, out)
}

/// Starts the fake ledger on a runtime of its own; it lives until the test process exits.
fn start_fake(mode: Mode) -> (SocketAddr, Arc<Fake>) {
    let fake = Arc::new(Fake {
        ledger: Mutex::new(Ledger::default()),
        mode,
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let f = fake.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(f.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    (rx.recv().unwrap(), fake)
}

/// A short ledger profile: a warm-up, single transfers, batches with two-phase transfers over two currencies.
const PROFILE: &str = r#"
name = "ledger-test"

[run]
max_duration_s = 120
max_send_lag_us_p99 = 60_000_000
max_loader_cpu_ratio = 1.0
request_timeout_ms = 400
loader_processes = 2

[calibration]
enabled = false

[targets.ledger]
builtin = "ledger"

[[phases]]
name = "warm"
target = "ledger"
warmup = true
model = "open"
rate_rps = 100
duration_s = 0.5
connections = 2
[phases.ledger]
accounts = 200

[[phases]]
name = "single"
target = "ledger"
model = "open"
rate_rps = 300
duration_s = 1.5
connections = 4
[phases.ledger]
accounts = 200
zipf_exponent = 1.2

[[phases]]
name = "batched-two-phase"
target = "ledger"
model = "open"
arrival = "poisson"
rate_rps = 150
duration_s = 1.5
connections = 4
[phases.ledger]
accounts = 300
currencies = ["USD", "EUR", "JPY"]
batch_size = 20
two_phase_ratio = 0.5
void_ratio = 0.3
"#;

struct Outcome {
    code: i32,
    stderr: String,
    stdout: String,
    result: RunResult,
    raw: Value,
}

/// Runs `PROFILE` against the fake at `addr`, or against the built-in ledger server when `addr` is `None`.
fn run(dir: &Path, name: &str, addr: Option<SocketAddr>) -> Outcome {
    run_profile(dir, name, addr, PROFILE)
}

/// A phase that sends linked chains (some with an item the ledger must refuse), to append to [`PROFILE`].
const CHAINS_PHASE: &str = r#"
[[phases]]
name = "chains"
target = "ledger"
model = "open"
rate_rps = 100
duration_s = 1.5
connections = 4
[phases.ledger]
accounts = 200
batch_size = 20
two_phase_ratio = 0.5
linked_ratio = 0.3
linked_fail_ratio = 0.3
"#;

/// Bare posts and voids and pendings that expire (1 s), with chains, to append to [`PROFILE`].
const EXPIRY_PHASE: &str = r#"
[[phases]]
name = "bare-expiring"
target = "ledger"
model = "open"
rate_rps = 100
duration_s = 1.5
connections = 4
[phases.ledger]
accounts = 200
batch_size = 20
two_phase_ratio = 0.6
void_ratio = 0.3
bare_resolve_ratio = 0.5
pending_timeout_s = 1
linked_ratio = 0.2
linked_fail_ratio = 0.2
"#;

fn run_profile(dir: &Path, name: &str, addr: Option<SocketAddr>, text: &str) -> Outcome {
    let profile = dir.join(format!("{name}.toml"));
    std::fs::write(&profile, text).unwrap();
    let out = dir.join(name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.arg("run").arg(&profile).arg("--out").arg(&out);
    if let Some(addr) = addr {
        cmd.arg("--target").arg(format!("ledger=http://{addr}"));
    }
    let output = cmd.output().expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let text = std::fs::read_to_string(out.join("result.json"))
        .unwrap_or_else(|e| panic!("no result.json ({e}); stderr:\n{stderr}"));
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stderr,
        stdout,
        result: serde_json::from_str(&text).expect("result parses"),
        raw: serde_json::from_str(&text).expect("result is JSON"),
    }
}

fn schema_violations(doc: &Value) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let v = jsonschema::draft202012::new(&schema).expect("schema compiles");
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_correct_ledger_passes_every_check() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (addr, fake) = start_fake(Mode::Correct);
    let o = run(dir.path(), "correct", Some(addr));
    println!("{}", o.stdout);
    assert_eq!(
        o.code, 0,
        "stderr:\n{}\nstdout:\n{}\nfailures: {:?}",
        o.stderr, o.stdout, o.result.correctness_failures
    );
    assert!(o.result.correctness_failures.is_empty());
    assert_eq!(schema_violations(&o.raw), Vec::<String>::new());
    assert!(o.stdout.contains("transfers/s") && o.stdout.contains("every ledger check passed"));
    let mut total_ok = 0;
    for p in &o.result.phases {
        let l = p
            .ledger
            .as_ref()
            .expect("ledger phases carry ledger figures");
        let v = l.verification.as_ref().expect("verified");
        assert!(v.passed, "{}: {:?}", p.name, v.failures);
        assert_eq!(l.transfers.sent, l.batch_size as u64 * p.requests.total);
        assert_eq!(
            l.transfers.sent,
            l.transfers.ok + l.transfers.exists + l.transfers.failed + l.transfers.in_doubt
        );
        assert_eq!(l.transfers.failed, 0, "{:?}", l.failed_by_code);
        assert_eq!(v.acked, l.transfers.ok + l.transfers.exists);
        assert_eq!(v.verified_present, v.acked);
        assert_eq!(v.accounts_checked, l.accounts as u64);
        assert!(v.currencies_balanced.values().all(|&b| b));
        let sv = v.server_verify.as_ref().expect("GET /verify stored");
        assert!(sv.ok && sv.balanced.values().all(|&b| b) && sv.records > 0);
        assert!(l.transfers_per_s > 0.0);
        total_ok += l.transfers.ok;
    }
    let two = &o.result.phases[1].ledger.as_ref().unwrap();
    assert_eq!(two.batch_size, 20);
    assert!(two.two_phase.pending_created > 0 && two.two_phase.posted > 0);
    // Account ids carry the currency: only USD accounts below 200 existed (from the single-currency phases).
    let new = (0..300u64).filter(|i| !(i % 3 == 0 && *i < 200)).count() as u64;
    assert_eq!(two.accounts_created, new);
    assert_eq!(
        o.result.phases[0].ledger.as_ref().unwrap().accounts_created,
        0
    );
    // The fake holds every transfer the loaders acknowledged, plus the warm-up's.
    let held = fake.ledger.lock().unwrap().transfers.len() as u64;
    assert!(held >= total_ok, "{held} < {total_ok}");
}

#[test]
fn in_doubt_transfers_are_resolved_by_lookup() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (addr, _fake) = start_fake(Mode::Stall);
    let o = run(dir.path(), "stall", Some(addr));
    assert_eq!(
        o.code, 0,
        "stderr:\n{}\nfailures: {:?}",
        o.stderr, o.result.correctness_failures
    );
    let in_doubt: u64 = o
        .result
        .phases
        .iter()
        .map(|p| p.ledger.as_ref().unwrap().transfers.in_doubt)
        .sum();
    let applied: u64 = o
        .result
        .phases
        .iter()
        .map(|p| {
            p.ledger
                .as_ref()
                .unwrap()
                .verification
                .as_ref()
                .unwrap()
                .in_doubt_applied
        })
        .sum();
    assert!(in_doubt > 0, "the stalls must cause timeouts");
    assert_eq!(applied, in_doubt, "the fake applies every stalled request");
}

#[test]
fn a_ledger_that_drops_acknowledged_transfers_fails_the_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (addr, _fake) = start_fake(Mode::DropEvery100);
    let o = run(dir.path(), "broken", Some(addr));
    println!("{}\n{}", o.stdout, o.stderr);
    assert_eq!(o.code, 1, "stderr:\n{}", o.stderr);
    assert!(!o.result.correctness_failures.is_empty());
    assert_eq!(schema_violations(&o.raw), Vec::<String>::new());
    let v = o.result.phases[1]
        .ledger
        .as_ref()
        .unwrap()
        .verification
        .as_ref()
        .unwrap();
    assert!(!v.passed);
    assert!(v.missing > 0, "{v:?}");
    assert!(v.balance_mismatches > 0, "{v:?}");
    assert!(o.stderr.contains("LEDGER CHECK FAILED"), "{}", o.stderr);
    assert!(o.stdout.contains("correctness: FAILED"), "{}", o.stdout);
}

#[test]
fn the_builtin_ledger_server_passes_every_check() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let profile = format!("{PROFILE}{CHAINS_PHASE}{EXPIRY_PHASE}");
    let o = run_profile(dir.path(), "builtin", None, &profile);
    assert_eq!(
        o.code, 0,
        "stderr:\n{}\nstdout:\n{}\nfailures: {:?}",
        o.stderr, o.stdout, o.result.correctness_failures
    );
    assert_eq!(schema_violations(&o.raw), Vec::<String>::new());
    assert_eq!(o.result.targets[0].system.as_deref(), Some("ledger"));
    for p in &o.result.phases {
        let l = p.ledger.as_ref().expect("ledger figures");
        let v = l.verification.as_ref().expect("verified");
        assert!(v.passed, "{}: {:?}", p.name, v.failures);
        assert_eq!(v.verified_present, v.acked);
        assert!(v.acked > 0);
        let sv = v.server_verify.as_ref().expect("GET /verify stored");
        assert!(sv.ok && !sv.head_hash.is_empty());
    }
    let phase = |name: &str| {
        let p = o
            .result
            .phases
            .iter()
            .find(|p| p.name == name)
            .expect("phase ran");
        p.ledger.clone().expect("ledger figures")
    };
    for name in ["chains", "bare-expiring"] {
        let l = phase(name).linked;
        assert!(l.chains > 0 && l.doomed > 0, "{name}: {l:?}");
        assert_eq!(l.violations, 0, "{name}: {l:?}");
        assert!(l.failed >= l.doomed && l.applied > 0, "{name}: {l:?}");
    }
    let expiring = phase("bare-expiring");
    assert!(
        expiring.two_phase.pending_expiring > 0,
        "{:?}",
        expiring.two_phase
    );
    assert!(expiring.two_phase.posted + expiring.two_phase.voided > 0);
}

#[test]
fn a_ledger_that_ignores_linked_chains_fails_the_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // The fake applies every valid item on its own: the rest of a chain with a refused item goes through.
    let (addr, _fake) = start_fake(Mode::Correct);
    let profile = format!("{PROFILE}{CHAINS_PHASE}");
    let o = run_profile(dir.path(), "unlinked", Some(addr), &profile);
    assert_eq!(o.code, 1, "stderr:\n{}", o.stderr);
    assert_eq!(schema_violations(&o.raw), Vec::<String>::new());
    let p = o.result.phases.iter().find(|p| p.name == "chains").unwrap();
    let l = &p.ledger.as_ref().unwrap().linked;
    assert!(l.doomed > 0 && l.violations == l.doomed, "{l:?}");
    assert!(
        o.result
            .correctness_failures
            .iter()
            .any(|f| f.contains("linked chains were applied in part")),
        "{:?}",
        o.result.correctness_failures
    );
    // The phases without chains still pass.
    for p in o.result.phases.iter().filter(|p| p.name != "chains") {
        assert!(
            p.ledger
                .as_ref()
                .unwrap()
                .verification
                .as_ref()
                .unwrap()
                .passed,
            "{}",
            p.name
        );
    }
}
