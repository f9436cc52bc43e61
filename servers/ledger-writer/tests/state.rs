//! State machine tests through the public API: every result code, two-phase transfers, linked chains,
//! idempotency, a randomized workload checked for balance, replay determinism and snapshots.

use std::collections::BTreeSet;

use refbench_ledger::codec::{self, Records};
use refbench_ledger::state::{Limits, PendingStatus, ReplayError, SnapshotError, State};
use refbench_ledger::types::{
    Account, ItemResult, RECORD_BYTES, RecordKind, ResultCode as R, Transfer, account_flags as AF,
    currency_from_str, transfer_flags as TF,
};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * S;

fn usd() -> u32 {
    currency_from_str("USD").unwrap()
}

fn eur() -> u32 {
    currency_from_str("EUR").unwrap()
}

fn acct(id: u128, flags: u16) -> Account {
    Account {
        id,
        currency: usd(),
        code: 1,
        flags,
        ..Default::default()
    }
}

fn xfer(id: u128, dr: u128, cr: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: dr,
        credit_account_id: cr,
        amount,
        currency: usd(),
        code: 1,
        ..Default::default()
    }
}

fn pending(id: u128, dr: u128, cr: u128, amount: u128, timeout_s: u32) -> Transfer {
    Transfer {
        flags: TF::PENDING,
        timeout_s,
        ..xfer(id, dr, cr, amount)
    }
}

/// A post (or void, with `flag`) naming only the pending id, as TigerBeetle clients usually send it.
fn resolve(id: u128, pending_id: u128, amount: u128, flag: u16) -> Transfer {
    Transfer {
        id,
        pending_id,
        amount,
        flags: flag,
        code: 1,
        ..Default::default()
    }
}

fn codes(rs: &[ItemResult]) -> Vec<R> {
    rs.iter().map(|r| r.code).collect()
}

/// Records every applied payload so tests can replay it.
struct Harness {
    state: State,
    log: Vec<(RecordKind, u64, Vec<u8>)>,
    now: u64,
    seen: BTreeSet<R>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Harness {
        Harness {
            state: State::new(limits),
            log: Vec::new(),
            now: T0,
            seen: BTreeSet::new(),
        }
    }

    fn accounts(&mut self, items: &[Account]) -> Vec<R> {
        let mut applied = Vec::new();
        let rs = self.state.create_accounts(items, self.now, &mut applied);
        self.finish(RecordKind::Accounts, &rs, applied)
    }

    fn transfers(&mut self, items: &[Transfer]) -> Vec<R> {
        let mut applied = Vec::new();
        let rs = self.state.create_transfers(items, self.now, &mut applied);
        self.finish(RecordKind::Transfers, &rs, applied)
    }

    fn finish(&mut self, kind: RecordKind, rs: &[ItemResult], applied: Vec<u8>) -> Vec<R> {
        let applied_n = rs.iter().filter(|r| r.code == R::Ok).count();
        assert_eq!(
            applied.len(),
            applied_n * RECORD_BYTES,
            "payload holds exactly the applied items"
        );
        for r in rs {
            assert_eq!(r.timestamp != 0, r.code.is_success(), "{r:?}");
        }
        if !applied.is_empty() {
            self.log.push((kind, self.now, applied));
        }
        self.seen.extend(rs.iter().map(|r| r.code));
        codes(rs)
    }

    fn expire(&mut self) -> usize {
        let mut payload = Vec::new();
        let n = self.state.expire(self.now, &mut payload);
        assert_eq!(payload.len(), n * 16);
        if n > 0 {
            self.log.push((RecordKind::Expiries, self.now, payload));
        }
        n
    }

    fn balances(&self, id: u128) -> [u128; 4] {
        let a = self.state.account(id).unwrap();
        [
            a.debits_pending,
            a.debits_posted,
            a.credits_pending,
            a.credits_posted,
        ]
    }

    fn replayed(&self) -> State {
        let mut fresh = State::new(Limits::default());
        for (kind, ts, payload) in &self.log {
            fresh.replay(*kind, *ts, payload).unwrap();
        }
        fresh
    }
}

fn snap(s: &State) -> Vec<u8> {
    let mut out = Vec::new();
    s.snapshot(&mut out);
    out
}

/// Accounts 1, 2 (USD), 3 (EUR), 4 (USD, debits must not exceed credits), 5 (USD, credits must not exceed debits).
fn setup() -> Harness {
    let mut h = Harness::new();
    let accounts = [
        acct(1, 0),
        acct(2, 0),
        Account {
            currency: eur(),
            ..acct(3, 0)
        },
        acct(4, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        acct(5, AF::CREDITS_MUST_NOT_EXCEED_DEBITS),
    ];
    assert_eq!(h.accounts(&accounts), vec![R::Ok; 5]);
    h
}

#[test]
fn every_result_code_is_reachable() {
    let mut h = setup();
    // Accounts.
    assert_eq!(
        h.accounts(&[Account {
            timestamp: 1,
            ..acct(10, 0)
        }]),
        [R::TimestampMustBeZero]
    );
    assert_eq!(
        h.accounts(&[Account {
            credits_posted: 1,
            ..acct(10, 0)
        }]),
        [R::ReservedField]
    );
    assert_eq!(h.accounts(&[acct(10, 1 << 3)]), [R::ReservedFlag]);
    assert_eq!(
        h.accounts(&[acct(0, 0), acct(u128::MAX, 0)]),
        [R::IdMustNotBeZero; 2]
    );
    let both = AF::DEBITS_MUST_NOT_EXCEED_CREDITS | AF::CREDITS_MUST_NOT_EXCEED_DEBITS;
    assert_eq!(
        h.accounts(&[acct(10, both)]),
        [R::FlagsAreMutuallyExclusive]
    );
    assert_eq!(
        h.accounts(&[Account {
            currency: 0,
            ..acct(10, 0)
        }]),
        [R::CurrencyInvalid]
    );
    assert_eq!(
        h.accounts(&[Account {
            code: 0,
            ..acct(10, 0)
        }]),
        [R::CodeMustNotBeZero]
    );
    assert_eq!(h.accounts(&[acct(1, 0)]), [R::Exists]);
    assert_eq!(
        h.accounts(&[Account {
            user_data: 9,
            ..acct(1, 0)
        }]),
        [R::ExistsWithDifferentFields]
    );
    assert_eq!(
        h.accounts(&[acct(10, AF::LINKED), acct(11, AF::LINKED)]),
        [R::LinkedEventFailed, R::LinkedEventChainOpen]
    );
    assert_eq!(
        h.accounts(&[acct(10, AF::LINKED), acct(0, 0)]),
        [R::LinkedEventFailed, R::IdMustNotBeZero]
    );

    // Transfers: static checks.
    assert_eq!(
        h.transfers(&[Transfer {
            timestamp: 5,
            ..xfer(100, 1, 2, 1)
        }]),
        [R::TimestampMustBeZero]
    );
    assert_eq!(
        h.transfers(&[Transfer {
            flags: 1 << 4,
            ..xfer(100, 1, 2, 1)
        }]),
        [R::ReservedFlag]
    );
    assert_eq!(h.transfers(&[xfer(0, 1, 2, 1)]), [R::IdMustNotBeZero]);
    assert_eq!(
        h.transfers(&[Transfer {
            flags: TF::PENDING | TF::POST_PENDING_TRANSFER,
            ..xfer(100, 1, 2, 1)
        }]),
        [R::FlagsAreMutuallyExclusive]
    );
    assert_eq!(
        h.transfers(&[resolve(100, 0, 0, TF::POST_PENDING_TRANSFER)]),
        [R::PendingIdRequired]
    );
    assert_eq!(
        h.transfers(&[Transfer {
            pending_id: 7,
            ..xfer(100, 1, 2, 1)
        }]),
        [R::PendingIdMustBeZero]
    );
    assert_eq!(
        h.transfers(&[Transfer {
            timeout_s: 5,
            ..xfer(100, 1, 2, 1)
        }]),
        [R::TimeoutReservedForPending]
    );
    assert_eq!(
        h.transfers(&[xfer(100, 1, 1, 1)]),
        [R::AccountsMustBeDifferent]
    );
    assert_eq!(
        h.transfers(&[Transfer {
            currency: 7,
            ..xfer(100, 1, 2, 1)
        }]),
        [R::CurrencyInvalid]
    );
    assert_eq!(h.transfers(&[xfer(100, 1, 2, 0)]), [R::AmountMustNotBeZero]);
    assert_eq!(
        h.transfers(&[Transfer {
            code: 0,
            ..xfer(100, 1, 2, 1)
        }]),
        [R::CodeMustNotBeZero]
    );
    // Reserved bytes only exist in the binary form.
    let mut rec = codec::transfer_bytes(&xfer(100, 1, 2, 1));
    rec[121] = 1;
    let mut applied = Vec::new();
    let rs = h
        .state
        .create_transfers_records(Records::new(&rec).unwrap(), h.now, &mut applied);
    assert_eq!(codes(&rs), [R::ReservedField]);
    h.seen.insert(R::ReservedField);

    // Transfers: against the state.
    assert_eq!(
        h.transfers(&[xfer(100, 9, 2, 1)]),
        [R::DebitAccountNotFound]
    );
    assert_eq!(
        h.transfers(&[xfer(100, 1, 9, 1)]),
        [R::CreditAccountNotFound]
    );
    assert_eq!(h.transfers(&[xfer(100, 1, 3, 1)]), [R::CurrencyMismatch]);
    assert_eq!(
        h.transfers(&[Transfer {
            currency: eur(),
            ..xfer(100, 1, 2, 1)
        }]),
        [R::CurrencyMismatch]
    );
    assert_eq!(h.transfers(&[xfer(100, 4, 2, 1)]), [R::ExceedsCredits]);
    assert_eq!(h.transfers(&[xfer(100, 1, 5, 1)]), [R::ExceedsDebits]);
    assert_eq!(h.transfers(&[xfer(100, 1, 2, u128::MAX)]), [R::Ok]);
    assert_eq!(h.transfers(&[xfer(101, 1, 2, 1)]), [R::Overflow]);
    assert_eq!(h.transfers(&[xfer(100, 1, 2, u128::MAX)]), [R::Exists]);
    assert_eq!(
        h.transfers(&[xfer(100, 1, 2, 5)]),
        [R::ExistsWithDifferentFields]
    );

    // Two-phase failures.
    assert_eq!(
        h.transfers(&[resolve(200, 999, 0, TF::POST_PENDING_TRANSFER)]),
        [R::PendingTransferNotFound]
    );
    assert_eq!(
        h.transfers(&[resolve(200, 100, 0, TF::POST_PENDING_TRANSFER)]),
        [R::PendingTransferNotPending]
    );
    assert_eq!(
        h.transfers(&[pending(150, 2, 1, 10, 0), pending(151, 2, 1, 10, 1)]),
        [R::Ok, R::Ok]
    );
    let mut wrong = resolve(200, 150, 0, TF::POST_PENDING_TRANSFER);
    wrong.debit_account_id = 5;
    assert_eq!(
        h.transfers(&[wrong]),
        [R::PendingTransferHasDifferentAccounts]
    );
    wrong.debit_account_id = 0;
    wrong.currency = eur();
    assert_eq!(
        h.transfers(&[wrong]),
        [R::PendingTransferHasDifferentCurrency]
    );
    assert_eq!(
        h.transfers(&[resolve(200, 150, 11, TF::POST_PENDING_TRANSFER)]),
        [R::ExceedsPendingAmount]
    );
    assert_eq!(
        h.transfers(&[resolve(200, 150, 9, TF::VOID_PENDING_TRANSFER)]),
        [R::ExceedsPendingAmount]
    );
    assert_eq!(
        h.transfers(&[resolve(200, 150, 0, TF::POST_PENDING_TRANSFER)]),
        [R::Ok]
    );
    assert_eq!(
        h.transfers(&[resolve(201, 150, 0, TF::POST_PENDING_TRANSFER)]),
        [R::PendingTransferAlreadyPosted]
    );
    assert_eq!(
        h.transfers(&[
            pending(152, 2, 1, 10, 0),
            resolve(202, 152, 0, TF::VOID_PENDING_TRANSFER)
        ]),
        [R::Ok; 2]
    );
    assert_eq!(
        h.transfers(&[resolve(203, 152, 0, TF::POST_PENDING_TRANSFER)]),
        [R::PendingTransferAlreadyVoided]
    );
    h.now += 2 * S;
    assert_eq!(
        h.transfers(&[resolve(204, 151, 0, TF::POST_PENDING_TRANSFER)]),
        [R::PendingTransferExpired]
    );

    let mut small = Harness::with_limits(Limits {
        max_accounts: 2,
        max_transfers: 1,
    });
    assert_eq!(
        small.accounts(&[acct(1, 0), acct(2, 0), acct(3, 0)]),
        [R::Ok, R::Ok, R::CapacityExceeded]
    );
    assert_eq!(
        small.transfers(&[xfer(1, 1, 2, 1), xfer(2, 1, 2, 1)]),
        [R::Ok, R::CapacityExceeded]
    );
    h.seen.extend(small.seen);

    let missing: Vec<R> = R::ALL
        .iter()
        .copied()
        .filter(|c| !h.seen.contains(c))
        .collect();
    assert!(missing.is_empty(), "not reached: {missing:?}");
    h.state.check_invariants().unwrap();
    assert_eq!(snap(&h.replayed()), snap(&h.state));
}

#[test]
fn two_phase_post_void_and_expiry() {
    let mut h = setup();
    // Full post with amount 0.
    assert_eq!(h.transfers(&[pending(10, 1, 2, 100, 0)]), [R::Ok]);
    assert_eq!(h.balances(1), [100, 0, 0, 0]);
    assert_eq!(h.balances(2), [0, 0, 100, 0]);
    assert_eq!(h.state.counts().pending, 1);
    assert_eq!(
        h.transfers(&[resolve(11, 10, 0, TF::POST_PENDING_TRANSFER)]),
        [R::Ok]
    );
    assert_eq!(
        (h.balances(1), h.balances(2)),
        ([0, 100, 0, 0], [0, 0, 0, 100])
    );
    let stored = h.state.transfer(11).unwrap();
    assert_eq!(
        (
            stored.debit_account_id,
            stored.credit_account_id,
            stored.amount,
            stored.currency
        ),
        (1, 2, 100, usd())
    );
    assert_eq!(h.state.pending_status(10), Some(PendingStatus::Posted));
    assert_eq!(
        h.transfers(&[resolve(12, 10, 0, TF::POST_PENDING_TRANSFER)]),
        [R::PendingTransferAlreadyPosted]
    );
    assert_eq!(
        h.transfers(&[resolve(12, 10, 0, TF::VOID_PENDING_TRANSFER)]),
        [R::PendingTransferAlreadyPosted]
    );

    // Partial post releases the rest of the reservation.
    assert_eq!(
        h.transfers(&[
            pending(20, 1, 2, 100, 0),
            resolve(21, 20, 30, TF::POST_PENDING_TRANSFER)
        ]),
        [R::Ok; 2]
    );
    assert_eq!(
        (h.balances(1), h.balances(2)),
        ([0, 130, 0, 0], [0, 0, 0, 130])
    );
    assert_eq!(h.state.transfer(21).unwrap().amount, 30);

    // Void with the explicit amount; the stored void carries the pending amount.
    assert_eq!(
        h.transfers(&[
            pending(30, 1, 2, 50, 0),
            resolve(31, 30, 50, TF::VOID_PENDING_TRANSFER)
        ]),
        [R::Ok; 2]
    );
    assert_eq!(
        (h.balances(1), h.balances(2)),
        ([0, 130, 0, 0], [0, 0, 0, 130])
    );
    assert_eq!(h.state.transfer(31).unwrap().amount, 50);
    assert_eq!(h.state.pending_status(30), Some(PendingStatus::Voided));

    // Expiry: the deadline is timestamp + timeout.
    assert_eq!(
        h.transfers(&[pending(40, 1, 2, 7, 10), pending(41, 1, 2, 8, 20)]),
        [R::Ok; 2]
    );
    let ts40 = h.state.transfer(40).unwrap().timestamp;
    assert_eq!(h.state.next_expiry_ns(), Some(ts40 + 10 * S));
    h.now = ts40 + 10 * S - 1;
    assert_eq!(h.expire(), 0);
    h.now = ts40 + 10 * S;
    // Past the deadline but not yet expired: refused all the same.
    assert_eq!(
        h.transfers(&[resolve(42, 40, 0, TF::POST_PENDING_TRANSFER)]),
        [R::PendingTransferExpired]
    );
    assert_eq!(h.expire(), 1);
    assert_eq!(h.state.pending_status(40), Some(PendingStatus::Expired));
    assert_eq!(h.balances(1), [8, 130, 0, 0]);
    assert_eq!(
        h.transfers(&[resolve(42, 40, 0, TF::VOID_PENDING_TRANSFER)]),
        [R::PendingTransferExpired]
    );
    // Posting 41 in time removes it from the expiry index.
    assert_eq!(
        h.transfers(&[resolve(43, 41, 0, TF::POST_PENDING_TRANSFER)]),
        [R::Ok]
    );
    assert_eq!(h.state.next_expiry_ns(), None);
    h.now += 100 * S;
    assert_eq!(h.expire(), 0);
    assert_eq!(h.state.counts().pending, 0);
    assert_eq!(
        (h.balances(1), h.balances(2)),
        ([0, 138, 0, 0], [0, 0, 0, 138])
    );

    // Balance limits count pending debits: account 4 may spend only what it was credited.
    assert_eq!(
        h.transfers(&[xfer(50, 1, 4, 10), pending(51, 4, 2, 6, 0)]),
        [R::Ok; 2]
    );
    assert_eq!(h.transfers(&[xfer(52, 4, 2, 5)]), [R::ExceedsCredits]);
    assert_eq!(h.transfers(&[xfer(52, 4, 2, 4)]), [R::Ok]);

    h.state.check_invariants().unwrap();
    assert_eq!(snap(&h.replayed()), snap(&h.state));
}

#[test]
fn linked_chain_rolls_back() {
    let mut h = setup();
    let linked = |t: Transfer| Transfer {
        flags: t.flags | TF::LINKED,
        ..t
    };
    assert_eq!(
        h.transfers(&[linked(xfer(1, 1, 2, 10)), xfer(99, 2, 1, 10)]),
        [R::Ok; 2]
    );
    let before = snap(&h.state);
    let last_ts = h.state.last_timestamp();
    let batch = [
        xfer(2, 1, 2, 5),                // independent, applies
        linked(xfer(3, 2, 1, 3)),        // chain start
        linked(pending(4, 1, 2, 4, 60)), // pending with a timeout inside the chain
        linked(resolve(5, 4, 0, TF::POST_PENDING_TRANSFER)),
        linked(xfer(1, 1, 2, 10)), // exists (same flags too): does not break the chain
        xfer(6, 1, 9, 1),          // chain end: fails
        xfer(7, 2, 1, 1),          // independent, applies
    ];
    assert_eq!(
        h.transfers(&batch),
        [
            R::Ok,
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::CreditAccountNotFound,
            R::Ok
        ]
    );
    for id in [3, 4, 5, 6] {
        assert_eq!(h.state.transfer(id), None, "{id} rolled back");
    }
    assert_eq!(h.state.next_expiry_ns(), None);
    assert_eq!(
        h.state.counts(),
        refbench_ledger::state::Counts {
            accounts: 5,
            transfers: 4,
            pending: 0
        }
    );
    assert_eq!(
        (h.balances(1), h.balances(2)),
        ([0, 15, 0, 11], [0, 11, 0, 15])
    );
    // Timestamps stay dense over applied items: the rolled-back ones were given back.
    assert_eq!(
        h.state.transfer(7).unwrap().timestamp,
        h.state.transfer(2).unwrap().timestamp + 1
    );
    assert!(h.state.transfer(2).unwrap().timestamp > last_ts);
    assert_ne!(snap(&h.state), before);

    // A chain whose last item is linked is open: nothing of it applies.
    assert_eq!(
        h.transfers(&[
            xfer(8, 1, 2, 1),
            linked(xfer(9, 1, 2, 1)),
            linked(xfer(10, 1, 2, 1))
        ]),
        [R::Ok, R::LinkedEventFailed, R::LinkedEventChainOpen]
    );
    assert_eq!(h.state.transfer(9), None);
    // A successful chain applies entirely, and resubmitting it answers exists everywhere.
    let chain = [
        linked(xfer(11, 1, 2, 1)),
        linked(pending(12, 1, 2, 2, 0)),
        resolve(13, 12, 0, TF::VOID_PENDING_TRANSFER),
    ];
    assert_eq!(h.transfers(&chain), [R::Ok; 3]);
    assert_eq!(h.transfers(&chain), [R::Exists; 3]);
    // Accounts chain: a failing account takes the created ones with it.
    assert_eq!(
        h.accounts(&[acct(20, AF::LINKED), acct(21, AF::LINKED), acct(0, 0)]),
        [
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::IdMustNotBeZero
        ]
    );
    assert_eq!(h.state.account(20), None);
    assert_eq!(h.accounts(&[acct(20, AF::LINKED), acct(21, 0)]), [R::Ok; 2]);
    h.state.check_invariants().unwrap();
    assert_eq!(snap(&h.replayed()), snap(&h.state));
}

#[test]
fn idempotency_both_ways() {
    let mut h = setup();
    let rs = {
        let mut applied = Vec::new();
        h.state
            .create_transfers(&[xfer(1, 1, 2, 10)], h.now, &mut applied)
    };
    let ts = rs[0].timestamp;
    let mut applied = Vec::new();
    let again = h
        .state
        .create_transfers(&[xfer(1, 1, 2, 10)], h.now + S, &mut applied);
    assert_eq!(
        again[0],
        ItemResult {
            code: R::Exists,
            timestamp: ts
        }
    );
    assert!(applied.is_empty());
    for changed in [
        Transfer {
            user_data: 1,
            ..xfer(1, 1, 2, 10)
        },
        Transfer {
            code: 2,
            ..xfer(1, 1, 2, 10)
        },
        xfer(1, 2, 1, 10),
        Transfer {
            flags: TF::PENDING,
            ..xfer(1, 1, 2, 10)
        },
    ] {
        assert_eq!(h.transfers(&[changed]), [R::ExistsWithDifferentFields]);
    }
    // A failed id is evaluated afresh.
    assert_eq!(h.transfers(&[xfer(2, 1, 9, 1)]), [R::CreditAccountNotFound]);
    assert_eq!(h.transfers(&[xfer(2, 1, 2, 1)]), [R::Ok]);
    // Duplicates inside one batch: the second sees the first.
    assert_eq!(
        h.transfers(&[xfer(3, 1, 2, 1), xfer(3, 1, 2, 1), xfer(3, 1, 2, 2)]),
        [R::Ok, R::Exists, R::ExistsWithDifferentFields]
    );

    // Post resubmission: zero accounts/currency/amount match the filled-in stored values.
    assert_eq!(
        h.transfers(&[
            pending(10, 1, 2, 100, 0),
            resolve(11, 10, 0, TF::POST_PENDING_TRANSFER)
        ]),
        [R::Ok; 2]
    );
    let full = Transfer {
        debit_account_id: 1,
        credit_account_id: 2,
        currency: usd(),
        ..resolve(11, 10, 100, TF::POST_PENDING_TRANSFER)
    };
    assert_eq!(
        h.transfers(&[resolve(11, 10, 0, TF::POST_PENDING_TRANSFER), full]),
        [R::Exists; 2]
    );
    assert_eq!(
        h.transfers(&[resolve(11, 10, 99, TF::POST_PENDING_TRANSFER)]),
        [R::ExistsWithDifferentFields]
    );
    assert_eq!(
        h.transfers(&[resolve(11, 10, 0, TF::VOID_PENDING_TRANSFER)]),
        [R::ExistsWithDifferentFields]
    );
    assert_eq!(
        h.transfers(&[Transfer {
            debit_account_id: 2,
            ..resolve(11, 10, 0, TF::POST_PENDING_TRANSFER)
        }]),
        [R::ExistsWithDifferentFields]
    );
    // Partial post: amount 0 would mean the whole amount, which differs.
    assert_eq!(
        h.transfers(&[
            pending(20, 1, 2, 100, 0),
            resolve(21, 20, 40, TF::POST_PENDING_TRANSFER)
        ]),
        [R::Ok; 2]
    );
    assert_eq!(
        h.transfers(&[resolve(21, 20, 40, TF::POST_PENDING_TRANSFER)]),
        [R::Exists]
    );
    assert_eq!(
        h.transfers(&[resolve(21, 20, 0, TF::POST_PENDING_TRANSFER)]),
        [R::ExistsWithDifferentFields]
    );
    // Void: 0 and the pending amount are the same request.
    assert_eq!(
        h.transfers(&[
            pending(30, 1, 2, 100, 0),
            resolve(31, 30, 0, TF::VOID_PENDING_TRANSFER)
        ]),
        [R::Ok; 2]
    );
    assert_eq!(
        h.transfers(&[resolve(31, 30, 100, TF::VOID_PENDING_TRANSFER)]),
        [R::Exists]
    );
    // Accounts.
    assert_eq!(
        h.accounts(&[
            acct(1, 0),
            Account {
                code: 2,
                ..acct(1, 0)
            },
            acct(1, AF::LINKED)
        ]),
        [
            R::Exists,
            R::ExistsWithDifferentFields,
            R::LinkedEventChainOpen
        ]
    );
    assert_eq!(h.state.account(1).unwrap().timestamp, T0);
    h.state.check_invariants().unwrap();
}

#[test]
fn timestamps_strictly_increase() {
    let mut h = setup();
    // The clock going backwards does not reorder commits.
    h.now = T0 - 10 * S;
    assert_eq!(
        h.transfers(&[xfer(1, 1, 2, 1), xfer(2, 1, 2, 1)]),
        [R::Ok; 2]
    );
    let (a, b) = (
        h.state.transfer(1).unwrap().timestamp,
        h.state.transfer(2).unwrap().timestamp,
    );
    assert!(a > T0 && b == a + 1 && h.state.last_timestamp() == b);
    h.now = T0 + 100 * S;
    assert_eq!(h.transfers(&[xfer(3, 1, 2, 1)]), [R::Ok]);
    assert_eq!(h.state.transfer(3).unwrap().timestamp, T0 + 100 * S);
}

#[test]
fn account_history_pages() {
    let mut h = setup();
    let batch: Vec<Transfer> = (1..=25)
        .map(|i| {
            if i % 2 == 0 {
                xfer(i, 1, 2, 1)
            } else {
                xfer(i, 2, 1, 1)
            }
        })
        .collect();
    assert_eq!(h.transfers(&batch), vec![R::Ok; 25]);
    assert_eq!(
        h.transfers(&[Transfer {
            currency: eur(),
            ..xfer(100, 3, 3, 1)
        }]),
        [R::AccountsMustBeDifferent]
    );
    let mut after = 0;
    let mut got = Vec::new();
    loop {
        let (page, next) = h.state.account_transfers(1, after, 10);
        got.extend(page.iter().map(|t| t.id));
        match next {
            Some(n) => {
                assert_eq!(page.len(), 10);
                after = n;
            }
            None => break,
        }
    }
    assert_eq!(got, (1..=25).collect::<Vec<_>>());
    assert_eq!(h.state.account_transfers(3, 0, 10), (vec![], None));
    assert_eq!(h.state.account_transfers(99, 0, 10), (vec![], None));
    let (page, next) = h.state.account_transfers(2, 0, 25);
    assert_eq!((page.len(), next), (25, None));
    // Lookups in request order, missing ids skipped.
    let mut out = Vec::new();
    assert_eq!(h.state.lookup_transfers(&[3, 999, 1], &mut out), 2);
    assert_eq!(
        codec::decode_transfer(out[..128].try_into().unwrap()).0.id,
        3
    );
    out.clear();
    assert_eq!(h.state.lookup_accounts(&[2, 1, 42], &mut out), 2);
    let a2 = codec::decode_account(out[..128].try_into().unwrap()).0;
    assert_eq!((a2.id, a2.debits_posted, a2.credits_posted), (2, 13, 12));
}

/// splitmix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random workload: mostly valid items, with bad ones, chains, two-phase transfers, expiries and resubmissions.
fn random_workload(seed: u64, batches: usize) -> Harness {
    let mut r = Rng(seed);
    let mut h = Harness::new();
    let currencies = [usd(), eur(), currency_from_str("JPY").unwrap()];
    let n_accounts = 60u128;
    let mut accounts = Vec::new();
    for id in 1..=n_accounts {
        let flags = match r.below(6) {
            0 => AF::DEBITS_MUST_NOT_EXCEED_CREDITS,
            1 => AF::CREDITS_MUST_NOT_EXCEED_DEBITS,
            _ => 0,
        };
        accounts.push(Account {
            currency: currencies[(id % 3) as usize],
            ..acct(id, flags)
        });
    }
    for chunk in accounts.chunks(17) {
        h.accounts(chunk);
    }
    let mut next_id = 1000u128;
    let mut pendings: Vec<u128> = Vec::new();
    for _ in 0..batches {
        h.now += r.below(3 * S);
        if r.below(4) == 0 {
            h.expire();
        }
        let n = 1 + r.below(40) as usize;
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let dr = 1 + r.below(n_accounts as u64 + 2) as u128; // sometimes unknown
            let same_currency = |x: u128| (x % 3) == (dr % 3);
            let mut cr = 1 + r.below(n_accounts as u64) as u128;
            if r.below(10) != 0 {
                while !same_currency(cr) || cr == dr {
                    cr = 1 + r.below(n_accounts as u64) as u128;
                }
            }
            let amount = match r.below(20) {
                0 => 0,
                1 => u128::MAX / 2,
                _ => 1 + r.below(1000) as u128,
            };
            let id = if r.below(15) == 0 && next_id > 1000 {
                1000 + r.below((next_id - 1000) as u64) as u128
            } else {
                next_id += 1;
                next_id
            };
            let mut t = xfer(id, dr, cr, amount);
            t.currency = currencies[(dr % 3) as usize];
            match r.below(8) {
                0 | 1 => {
                    t.flags = TF::PENDING;
                    t.timeout_s = r.below(4) as u32;
                    pendings.push(id);
                }
                2 | 3 if !pendings.is_empty() => {
                    let p = pendings[r.below(pendings.len() as u64) as usize];
                    let flag = if r.below(2) == 0 {
                        TF::POST_PENDING_TRANSFER
                    } else {
                        TF::VOID_PENDING_TRANSFER
                    };
                    t = resolve(
                        id,
                        p,
                        if r.below(2) == 0 {
                            0
                        } else {
                            r.below(600) as u128
                        },
                        flag,
                    );
                }
                _ => {}
            }
            if r.below(5) == 0 {
                t.flags |= TF::LINKED;
            }
            batch.push(t);
        }
        h.transfers(&batch);
        if r.below(10) == 0 {
            // A client retry of the whole batch: `exists` for what applied, failures evaluated afresh.
            h.transfers(&batch);
        }
        for (_, totals) in h.state.totals() {
            assert!(totals.balanced(), "{totals:?}");
        }
    }
    h
}

#[test]
fn randomized_workload_balances_and_replays_exactly() {
    for seed in 1..=4 {
        let h = random_workload(seed, 300);
        let counts = h.state.counts();
        assert!(counts.transfers > 1000, "{counts:?}");
        // The workload reaches the interesting paths, not only `ok`.
        for code in [
            R::LinkedEventFailed,
            R::Exists,
            R::ExistsWithDifferentFields,
            R::PendingTransferAlreadyPosted,
            R::PendingTransferAlreadyVoided,
            R::PendingTransferExpired,
            R::ExceedsPendingAmount,
            R::ExceedsCredits,
            R::ExceedsDebits,
            R::Overflow,
            R::DebitAccountNotFound,
            R::CurrencyMismatch,
        ] {
            assert!(h.seen.contains(&code), "seed {seed}: {code} not reached");
        }
        assert!(h.log.iter().any(|(k, _, _)| *k == RecordKind::Expiries));
        h.state.check_invariants().unwrap();
        for (_, totals) in h.state.totals() {
            assert!(totals.balanced());
            assert!(totals.debits_posted > 0);
        }
        // Replay into a fresh state (with different hash seeds) rebuilds exactly the same state.
        let original = snap(&h.state);
        let replayed = h.replayed();
        assert_eq!(snap(&replayed), original);
        assert_eq!(replayed.last_timestamp(), h.state.last_timestamp());
        assert_eq!(replayed.next_expiry_ns(), h.state.next_expiry_ns());
        // Snapshot round trip.
        let restored = State::restore(&original, Limits::default()).unwrap();
        assert_eq!(snap(&restored), original);
        assert_eq!(restored.counts(), h.state.counts());
        assert_eq!(
            restored.account_transfers(7, 0, 50),
            h.state.account_transfers(7, 0, 50)
        );
        // The same workload again gives the same bytes: nothing depends on hash seeds or the wall clock.
        assert_eq!(snap(&random_workload(seed, 300).state), original);
    }
}

#[test]
fn restored_state_keeps_working_like_the_original() {
    let mut h = random_workload(9, 100);
    let mut restored = State::restore(&snap(&h.state), Limits::default()).unwrap();
    let mut tail = random_workload(10, 30).log;
    tail.retain(|(k, _, _)| *k == RecordKind::Transfers);
    let now = h.now + 5 * S;
    // Feed the same client batches (the stored forms of another run, timestamps cleared) to both.
    for (_, _, payload) in tail {
        let items: Vec<Transfer> = Records::new(&payload)
            .unwrap()
            .iter()
            .map(|b| Transfer {
                timestamp: 0,
                ..codec::decode_transfer(b).0
            })
            .collect();
        let (mut a1, mut a2) = (Vec::new(), Vec::new());
        let r1 = h.state.create_transfers(&items, now, &mut a1);
        let r2 = restored.create_transfers(&items, now, &mut a2);
        assert_eq!((r1, a1), (r2, a2));
        let (mut e1, mut e2) = (Vec::new(), Vec::new());
        assert_eq!(
            h.state.expire(now + 10 * S, &mut e1),
            restored.expire(now + 10 * S, &mut e2)
        );
        assert_eq!(e1, e2);
    }
    assert_eq!(snap(&h.state), snap(&restored));
    h.now = now;
}

#[test]
fn replay_rejects_a_log_that_disagrees() {
    let h = setup_with_pending();
    let mut s = State::new(Limits::default());
    let (kind, ts, payload) = &h.log[0];
    s.replay(*kind, *ts, payload).unwrap();
    // The same record twice: timestamps must move forward.
    assert!(matches!(
        s.replay(*kind, *ts, payload),
        Err(ReplayError::Timestamp { index: 0, .. })
    ));
    // Odd lengths.
    assert!(matches!(
        s.replay(RecordKind::Expiries, 0, &[0; 15]),
        Err(ReplayError::Length { .. })
    ));
    // A transfer naming an unknown account.
    let mut bad = codec::transfer_bytes(&Transfer {
        timestamp: T0 + S,
        ..xfer(77, 1, 99, 5)
    })
    .to_vec();
    assert!(matches!(
        s.replay(RecordKind::Transfers, 0, &bad),
        Err(ReplayError::Rejected {
            index: 0,
            id: 77,
            code: R::CreditAccountNotFound
        })
    ));
    // A post whose logged amount is not what the state would store is a mismatch... here the log claims a void of
    // 3 while the pending amount is 10.
    let mut s2 = State::new(Limits::default());
    for (k, t, p) in &h.log {
        s2.replay(*k, *t, p).unwrap();
    }
    let void = Transfer {
        debit_account_id: 1,
        credit_account_id: 2,
        currency: usd(),
        timestamp: s2.last_timestamp() + 1,
        ..resolve(78, 10, 3, TF::VOID_PENDING_TRANSFER)
    };
    bad = codec::transfer_bytes(&void).to_vec();
    assert!(matches!(
        s2.replay(RecordKind::Transfers, 0, &bad),
        Err(ReplayError::Rejected {
            code: R::ExceedsPendingAmount,
            ..
        })
    ));
    let post = Transfer {
        amount: 0,
        flags: TF::POST_PENDING_TRANSFER,
        ..void
    };
    bad = codec::transfer_bytes(&post).to_vec();
    assert!(matches!(
        s2.replay(RecordKind::Transfers, 0, &bad),
        Err(ReplayError::Mismatch { id: 78, .. })
    ));
    // Expiries: unknown id, no timeout, deadline in the future.
    let id = |x: u128| x.to_le_bytes().to_vec();
    assert!(matches!(
        s2.replay(RecordKind::Expiries, u64::MAX, &id(999)),
        Err(ReplayError::Expiry { .. })
    ));
    assert!(matches!(
        s2.replay(RecordKind::Expiries, u64::MAX, &id(10)),
        Err(ReplayError::Expiry { .. })
    ));
    assert!(matches!(
        s2.replay(RecordKind::Expiries, T0, &id(11)),
        Err(ReplayError::Expiry { .. })
    ));
    s2.replay(RecordKind::Expiries, u64::MAX, &id(11)).unwrap();
    assert_eq!(s2.pending_status(11), Some(PendingStatus::Expired));
    assert!(matches!(
        s2.replay(RecordKind::Expiries, u64::MAX, &id(11)),
        Err(ReplayError::Expiry { .. })
    ));
    s2.check_invariants().unwrap();
}

fn setup_with_pending() -> Harness {
    let mut h = setup();
    assert_eq!(
        h.transfers(&[pending(10, 1, 2, 10, 0), pending(11, 1, 2, 20, 5)]),
        [R::Ok; 2]
    );
    h
}

#[test]
fn snapshot_rejects_garbage_without_panicking() {
    let h = random_workload(3, 40);
    let good = snap(&h.state);
    let limits = Limits::default();
    assert!(matches!(
        State::restore(&[], limits),
        Err(SnapshotError::Truncated { len: 0 })
    ));
    assert!(matches!(
        State::restore(b"nonsense nonsense nonsense nonsense", limits),
        Err(SnapshotError::BadMagic)
    ));
    let mut v = good.clone();
    v[4] = 9;
    assert!(matches!(
        State::restore(&v, limits),
        Err(SnapshotError::Version(9))
    ));
    assert!(matches!(
        State::restore(&good[..good.len() - 1], limits),
        Err(SnapshotError::Length { .. })
    ));
    let mut v = good.clone();
    v[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        State::restore(&v, limits),
        Err(SnapshotError::Length { .. })
    ));
    // A tampered balance (account 0's credits_posted low byte) no longer matches the transfers.
    let mut v = good.clone();
    v[32 + 64] ^= 1;
    assert!(matches!(
        State::restore(&v, limits),
        Err(SnapshotError::Inconsistent(_))
    ));
    // A duplicated account id.
    let mut v = good.clone();
    let (first, second) = (32..48, 160..176);
    let id0 = v[first].to_vec();
    v[second].copy_from_slice(&id0);
    assert!(matches!(
        State::restore(&v, limits),
        Err(SnapshotError::Account { index: 1, .. })
    ));
    // Random corruption: never a panic; a restored state always passes its own invariants.
    let mut r = Rng(42);
    let mut rejected = 0;
    for _ in 0..3000 {
        let mut v = good.clone();
        for _ in 0..1 + r.below(3) {
            let i = r.below(v.len() as u64) as usize;
            v[i] ^= 1 << r.below(8);
        }
        if r.below(10) == 0 {
            v.truncate(r.below(v.len() as u64) as usize);
        }
        match State::restore(&v, limits) {
            Ok(s) => s.check_invariants().unwrap(),
            Err(_) => rejected += 1,
        }
    }
    assert!(rejected > 1000, "{rejected}");
    let s = State::restore(&snap(&State::new(limits)), limits).unwrap();
    assert_eq!(s.counts(), Default::default());
}

/// A quick cost figure for the report (run with `--release -- --ignored --nocapture`). Prints the median and the
/// best batch, since the host may be shared.
#[test]
#[ignore]
fn timing_simple_transfers() {
    for n_accounts in [1_000u128, 100_000] {
        let mut s = State::new(Limits::default());
        let accounts: Vec<Account> = (1..=n_accounts).map(|id| acct(id, 0)).collect();
        let mut applied = Vec::new();
        for c in accounts.chunks(8190) {
            s.create_accounts(c, T0, &mut applied);
        }
        let mut r = Rng(1);
        let mut body = Vec::with_capacity(8190 * 128);
        let mut next_id = 1u128;
        let mut per_batch = Vec::new();
        for _ in 0..250 {
            body.clear();
            for _ in 0..8190 {
                let dr = 1 + r.below(n_accounts as u64) as u128;
                let mut cr = 1 + r.below(n_accounts as u64) as u128;
                if cr == dr {
                    cr = dr % n_accounts + 1;
                }
                // Client ids are usually random (UUID-like), which is what the hash map sees.
                let id = (next_id.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)) | 1;
                codec::encode_transfer(&xfer(id, dr, cr, 1 + r.below(100) as u128), &mut body);
                next_id += 1;
            }
            applied.clear();
            let start = std::time::Instant::now();
            let rs = s.create_transfers_records(
                codec::decode_batch_records(&body).unwrap(),
                T0,
                &mut applied,
            );
            per_batch.push(start.elapsed().as_nanos() as f64 / 8190.0);
            assert!(rs.iter().all(|r| r.code == R::Ok));
        }
        let total: f64 = per_batch.iter().sum::<f64>() / per_batch.len() as f64;
        per_batch.sort_by(f64::total_cmp);
        println!(
            "{n_accounts} accounts, {} transfers: mean {total:.0} ns, median {:.0} ns, best batch {:.0} ns per transfer",
            s.counts().transfers,
            per_batch[per_batch.len() / 2],
            per_batch[0]
        );
        let t0 = std::time::Instant::now();
        let mut snap_bytes = Vec::new();
        s.snapshot(&mut snap_bytes);
        let t1 = std::time::Instant::now();
        let restored = State::restore(&snap_bytes, Limits::default()).unwrap();
        println!(
            "  snapshot {:?}, restore {:?} ({} MB)",
            t1 - t0,
            t1.elapsed(),
            snap_bytes.len() >> 20
        );
        assert_eq!(restored.counts(), s.counts());
    }
}

/// A checkpoint's frozen copy (taken on the writer thread, encoded elsewhere) must equal the snapshot at the moment it
/// was taken, even when the state then rolls a linked chain back across a sealed transfer chunk and moves on.
#[test]
fn frozen_copy_is_exact_across_chunk_boundaries_and_rollbacks() {
    use refbench_ledger::chunks::CHUNK_LEN;
    let mut h = setup();
    // Fill the transfer vector to one short of a full chunk, so the chain's first link seals it and the rollback
    // pops back into a sealed chunk.
    let batch = 8190;
    let mut next_id = 1_000u128;
    let fill = CHUNK_LEN - 1;
    while h.state.counts().transfers < fill {
        let n = batch.min(fill - h.state.counts().transfers);
        let items: Vec<Transfer> = (0..n as u128).map(|k| xfer(next_id + k, 1, 2, 1)).collect();
        next_id += n as u128;
        assert!(h.transfers(&items).iter().all(|&r| r == R::Ok));
    }
    let frozen = h.state.freeze();
    let at_freeze = snap(&h.state);
    // A chain whose first link fills (seals) the chunk and then fails: the rollback pops out of the sealed chunk.
    let linked = |t: Transfer| Transfer {
        flags: t.flags | TF::LINKED,
        ..t
    };
    let codes = h.transfers(&[linked(xfer(next_id, 1, 2, 5)), xfer(next_id + 1, 1, 99, 5)]);
    assert_eq!(codes, [R::LinkedEventFailed, R::CreditAccountNotFound]);
    assert_eq!(snap(&h.state), at_freeze, "the rollback restored the state");
    // Move on: resolve nothing, add more transfers in the next chunk.
    assert_eq!(h.transfers(&[xfer(next_id + 2, 2, 1, 7)]), [R::Ok]);
    assert_ne!(snap(&h.state), at_freeze);
    assert_eq!(frozen.encoded_len(), at_freeze.len());
    // In pieces (as checkpoints write it, twice), the same bytes: each piece at least one record, none far over.
    let mut frozen = frozen;
    for piece_bytes in [1, 1000, 1 << 20] {
        let mut pieces = Vec::new();
        frozen
            .encode_pieces(piece_bytes, &mut |p| {
                pieces.push(p.to_vec());
                Ok(())
            })
            .expect("encode");
        assert!(
            pieces
                .iter()
                .all(|p| !p.is_empty() && p.len() < piece_bytes.max(128) + 1024)
        );
        assert_eq!(pieces.concat(), at_freeze, "pieces of {piece_bytes} bytes");
    }
    let mut encoded = Vec::new();
    frozen.encode(&mut encoded);
    assert_eq!(
        encoded, at_freeze,
        "the frozen copy did not see later changes"
    );
    let restored = State::restore(&encoded, Limits::default()).expect("restore");
    assert_eq!(restored.counts().transfers, fill);
    assert_eq!(h.replayed().snapshot_len(), snap(&h.state).len());
}
