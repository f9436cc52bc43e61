//! The adapter end to end against a real PostgreSQL: HTTP in, result codes and balances out.
//!
//! Needs `PG_LEDGER_TEST_PG` (a libpq conninfo of a database the test may write to; scripts/peer-postgres.sh
//! --test sets it); without it the test says so and passes vacuously. Ids carry a per-run nonce, so the test can run
//! again on the same database.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, watch};

use crate::wire::{Account, ID, RECORD, RESULT, Transfer, currency_code, transfer_flags as F};

const LINKED: u16 = 1;
const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 2;

struct Http {
    addr: SocketAddr,
}

impl Http {
    fn request(&self, method: &str, path: &str, ct: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut resp = Vec::new();
        s.take(16 << 20).read_to_end(&mut resp).unwrap();
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response head")
            + 4;
        let head = String::from_utf8_lossy(&resp[..split]).to_string();
        let status = head[9..12].parse().unwrap();
        (status, resp[split..].to_vec())
    }

    fn post(&self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.request("POST", path, "application/octet-stream", body)
    }

    fn accounts(&self, items: &[Account]) -> (u16, Vec<(u32, u64)>) {
        let mut body = Vec::new();
        for a in items {
            a.encode(&mut body);
        }
        let (st, b) = self.post("/accounts", &body);
        (st, results(&b, items.len()))
    }

    fn transfers(&self, items: &[Transfer]) -> (u16, Vec<(u32, u64)>) {
        let mut body = Vec::new();
        for t in items {
            t.encode(&mut body);
        }
        let (st, b) = self.post("/transfers", &body);
        (st, results(&b, items.len()))
    }

    fn codes(&self, items: &[Transfer]) -> Vec<u32> {
        self.transfers(items).1.into_iter().map(|r| r.0).collect()
    }

    fn lookup_accounts(&self, ids: &[u128]) -> Vec<Account> {
        let body: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let (st, b) = self.post("/accounts/lookup", &body);
        assert_eq!(st, 200);
        b.chunks_exact(RECORD).map(Account::decode).collect()
    }

    fn lookup_transfers(&self, ids: &[u128]) -> Vec<Transfer> {
        let body: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let (st, b) = self.post("/transfers/lookup", &body);
        assert_eq!(st, 200);
        b.chunks_exact(RECORD).map(Transfer::decode).collect()
    }

    fn balances(&self, id: u128) -> [u128; 4] {
        let a = self.lookup_accounts(&[id]);
        assert_eq!(a.len(), 1, "account {id:#x} not found");
        [
            a[0].debits_pending,
            a[0].debits_posted,
            a[0].credits_pending,
            a[0].credits_posted,
        ]
    }
}

fn results(b: &[u8], n: usize) -> Vec<(u32, u64)> {
    assert_eq!(
        b.len(),
        n * RESULT,
        "one 16-byte result per item: {}",
        String::from_utf8_lossy(b)
    );
    b.chunks_exact(RESULT)
        .map(|r| {
            (
                u32::from_le_bytes(r[0..4].try_into().unwrap()),
                u64::from_le_bytes(r[8..16].try_into().unwrap()),
            )
        })
        .collect()
}

#[test]
fn adapter_end_to_end() {
    let Ok(conninfo) = std::env::var("PG_LEDGER_TEST_PG") else {
        eprintln!(
            "adapter_end_to_end: PG_LEDGER_TEST_PG is not set; skipped (scripts/peer-postgres.sh --test runs it)"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = Arc::new(crate::db::pool(&conninfo, 4, Duration::from_secs(10)).unwrap());
    rt.block_on(db.init(true)).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    rt.spawn(crate::serve(
        listener,
        db.clone(),
        Arc::new(Semaphore::new(64)),
        stop_rx,
        false,
    ));
    let h = Http { addr };

    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64 as u128;
    let id = |k: u128| (nonce << 64) | (0x7E57 << 32) | k;
    let usd = currency_code("USD").unwrap();
    let eur = currency_code("EUR").unwrap();
    let acct = |k: u128, currency: u32, flags: u16| Account {
        id: id(k),
        currency,
        code: 1,
        flags,
        reserved_zero: true,
        ..Account::default()
    };
    let (a, b, c, e, f, g) = (id(1), id(2), id(3), id(4), id(5), id(6));
    let xfer = |k: u128, debit: u128, credit: u128, amount: u128, flags: u16| Transfer {
        id: id(1000 + k),
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        currency: usd,
        code: 1,
        flags,
        reserved_zero: true,
        ..Transfer::default()
    };
    let resolve = |k: u128, pending: u128, amount: u128, flags: u16| Transfer {
        id: id(1000 + k),
        pending_id: id(1000 + pending),
        amount,
        code: 1,
        flags,
        reserved_zero: true,
        ..Transfer::default()
    };

    // Accounts: A may not debit more than its credits.
    let accounts = [
        acct(1, usd, DEBITS_MUST_NOT_EXCEED_CREDITS),
        acct(2, usd, 0),
        acct(3, usd, 0),
        acct(4, eur, 0),
        acct(5, usd, 0),
        acct(6, usd, 0),
    ];
    let (st, r) = h.accounts(&accounts);
    assert_eq!(st, 200);
    assert!(r.iter().all(|&(code, ts)| code == 0 && ts > 0), "{r:?}");
    // Resubmitted: exists with the original timestamp; with other fields: exists_with_different_fields.
    let (st, r2) = h.accounts(&[
        accounts[0],
        Account {
            code: 2,
            ..accounts[1]
        },
        Account {
            id: 0,
            ..accounts[2]
        },
    ]);
    assert_eq!(st, 422, "nothing applied and something failed");
    assert_eq!(r2.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(r2[0].1, r[0].1);

    // A plain transfer B → A, then A may spend up to 100.
    let (st, r) = h.transfers(&[xfer(1, b, a, 100, 0)]);
    assert_eq!((st, r[0].0), (200, 0));
    let t1_ts = r[0].1;
    assert_eq!(
        h.codes(&[xfer(2, a, b, 150, 0)]),
        vec![27],
        "exceeds_credits"
    );
    let (st, _) = h.transfers(&[xfer(2, a, b, 150, 0)]);
    assert_eq!(st, 422, "nothing applied, something failed");
    assert_eq!(h.codes(&[xfer(2, a, b, 60, 0)]), vec![0]);
    // Resubmission: exists, original timestamp.
    let (st, r) = h.transfers(&[xfer(1, b, a, 100, 0)]);
    assert_eq!((st, r[0]), (200, (3, t1_ts)));
    assert_eq!(h.codes(&[xfer(1, b, a, 101, 0)]), vec![4]);

    // A linked chain whose second item fails applies nothing.
    let before = h.balances(c);
    assert_eq!(
        h.codes(&[xfer(3, b, c, 10, LINKED), xfer(4, c, id(99), 10, 0)]),
        vec![1, 12]
    );
    assert_eq!(h.balances(c), before);
    assert!(
        h.lookup_transfers(&[id(1003)]).is_empty(),
        "the failed chain stored nothing"
    );
    // ... and a chain that holds applies entirely; a batch ending inside a chain fails it.
    assert_eq!(
        h.codes(&[xfer(5, b, c, 5, LINKED), xfer(6, c, b, 3, 0)]),
        vec![0, 0]
    );
    assert_eq!(
        h.codes(&[xfer(7, b, c, 5, 0), xfer(8, b, c, 5, LINKED)]),
        vec![0, 2]
    );

    // Stateless and state checks.
    assert_eq!(
        h.codes(&[Transfer {
            currency: eur,
            ..xfer(9, b, e, 1, 0)
        }]),
        vec![14],
        "currency_mismatch"
    );
    assert_eq!(h.codes(&[xfer(10, b, b, 1, 0)]), vec![13]);
    assert_eq!(h.codes(&[xfer(11, id(98), b, 1, 0)]), vec![11]);
    assert_eq!(h.codes(&[xfer(12, b, c, 0, 0)]), vec![15]);

    // Two-phase: reserve 50, post 20 (the rest is released), then it is already posted.
    let c0 = h.balances(c);
    let b0 = h.balances(b);
    assert_eq!(h.codes(&[xfer(20, b, c, 50, F::PENDING)]), vec![0]);
    assert_eq!(h.balances(c)[2], c0[2] + 50, "credits_pending reserved");
    assert_eq!(
        h.codes(&[resolve(21, 20, 51, F::POST)]),
        vec![22],
        "exceeds_pending_amount"
    );
    assert_eq!(h.codes(&[resolve(21, 20, 20, F::POST)]), vec![0]);
    assert_eq!(h.balances(c), [c0[0], c0[1], c0[2], c0[3] + 20]);
    assert_eq!(h.balances(b), [b0[0], b0[1] + 20, b0[2], b0[3]]);
    assert_eq!(
        h.codes(&[resolve(22, 20, 0, F::POST)]),
        vec![23],
        "already posted"
    );
    assert_eq!(h.codes(&[resolve(22, 20, 0, F::VOID)]), vec![23]);
    let stored = h.lookup_transfers(&[id(1021)]);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (
            stored[0].debit_account_id,
            stored[0].credit_account_id,
            stored[0].amount,
            stored[0].currency
        ),
        (b, c, 20, usd),
        "a post stores the filled-in accounts, currency and posted amount"
    );
    // Reserve 30, void it (amount 0), then posting it says voided; an unknown pending is not found.
    assert_eq!(h.codes(&[xfer(23, b, c, 30, F::PENDING)]), vec![0]);
    assert_eq!(h.codes(&[resolve(24, 23, 0, F::VOID)]), vec![0]);
    assert_eq!(h.codes(&[resolve(25, 23, 0, F::POST)]), vec![24]);
    assert_eq!(h.codes(&[resolve(26, 97, 0, F::POST)]), vec![18]);
    assert_eq!(
        h.codes(&[resolve(27, 1, 0, F::POST)]),
        vec![19],
        "not a pending transfer"
    );
    // In one batch: reserve, post in full (amount 0), and post again.
    assert_eq!(
        h.codes(&[
            xfer(30, b, c, 7, F::PENDING),
            resolve(31, 30, 0, F::POST),
            resolve(32, 30, 0, F::POST)
        ]),
        vec![0, 0, 23]
    );
    assert_eq!(h.lookup_transfers(&[id(1031)])[0].amount, 7);
    // A linked chain undoes a post: the reservation is back, so it can be voided afterwards.
    assert_eq!(h.codes(&[xfer(33, b, c, 9, F::PENDING)]), vec![0]);
    assert_eq!(
        h.codes(&[resolve(34, 33, 0, F::POST | LINKED), xfer(35, b, b, 1, 0)]),
        vec![1, 13]
    );
    assert_eq!(h.codes(&[resolve(36, 33, 0, F::VOID)]), vec![0]);
    assert_eq!(h.balances(b)[0], b0[0], "every reservation resolved");
    assert_eq!(h.balances(c)[2], c0[2]);

    // A reservation with a 1 s timeout: after the deadline a post answers expired, and the sweeper releases it.
    let b1 = h.balances(b);
    assert_eq!(
        h.codes(&[Transfer {
            timeout_s: 1,
            ..xfer(37, b, c, 4, F::PENDING)
        }]),
        vec![0]
    );
    assert_eq!(h.balances(b)[0], b1[0] + 4);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        h.codes(&[resolve(38, 37, 0, F::POST)]),
        vec![25],
        "pending_transfer_expired"
    );
    assert!(rt.block_on(db.expire()).unwrap() >= 1);
    assert_eq!(h.balances(b), b1, "the expired reservation is released");
    assert_eq!(h.codes(&[resolve(39, 37, 0, F::VOID)]), vec![25]);

    // Overflow at u128::MAX.
    assert_eq!(h.codes(&[xfer(40, f, g, u128::MAX - 1, 0)]), vec![0]);
    assert_eq!(h.codes(&[xfer(41, f, g, 2, 0)]), vec![29]);
    assert_eq!(h.balances(g)[3], u128::MAX - 1);

    // Lookups skip unknown ids and keep the request order.
    let found = h.lookup_accounts(&[c, id(96), a]);
    assert_eq!(found.iter().map(|x| x.id).collect::<Vec<_>>(), vec![c, a]);

    // Protocol errors.
    assert_eq!(
        h.request(
            "POST",
            "/transfers",
            "application/json",
            b"{\"transfers\":[]}"
        )
        .0,
        415
    );
    assert_eq!(h.post("/transfers", &[0u8; 100]).0, 400);
    assert_eq!(h.post("/accounts/lookup", &[0u8; ID - 1]).0, 400);
    assert_eq!(h.request("GET", "/nope", "", b"").0, 404);

    // The database's own check: per currency debits = credits, and balances = the transfers' sums.
    let (st, body) = h.request("GET", "/verify", "", b"");
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["currencies"]["USD"]["balanced"], true, "{v}");
    assert!(v["records"].as_u64().is_some());
    let (st, body) = h.request("GET", "/status", "", b"");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));

    let _ = stop_tx.send(true);
    eprintln!("adapter_end_to_end: passed against {addr}");
}
