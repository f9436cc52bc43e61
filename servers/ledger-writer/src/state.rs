//! The deterministic double-entry state machine: applies create batches, expires pending transfers, replays the log
//! and snapshots itself.
//!
//! # Validation order
//!
//! Accounts, first failing check wins: `timestamp_must_be_zero`, `reserved_field` (reserved bytes or a nonzero
//! balance), `reserved_flag`, `id_must_not_be_zero`, `flags_are_mutually_exclusive` (both balance limits),
//! `currency_invalid`, `code_must_not_be_zero`, `exists` / `exists_with_different_fields` (user_data, currency, code
//! and flags compared), `capacity_exceeded`.
//!
//! Transfers: `timestamp_must_be_zero`, `reserved_field`, `reserved_flag`, `id_must_not_be_zero`,
//! `flags_are_mutually_exclusive` (more than one of pending/post/void); then for post/void `pending_id_required`,
//! `timeout_reserved_for_pending`, `accounts_must_be_different` (both given and equal), `currency_invalid` (given and
//! invalid); otherwise `pending_id_must_be_zero`, `timeout_reserved_for_pending`, `accounts_must_be_different`,
//! `currency_invalid`, `amount_must_not_be_zero`; then `code_must_not_be_zero`, `exists` /
//! `exists_with_different_fields`, `capacity_exceeded`. Then for a plain or pending transfer:
//! `debit_account_not_found`, `credit_account_not_found`, `currency_mismatch`, `overflow`, `exceeds_credits`,
//! `exceeds_debits`; for post/void: `pending_transfer_not_found`, `pending_transfer_not_pending`,
//! `pending_transfer_has_different_accounts`, `pending_transfer_has_different_currency`,
//! `pending_transfer_already_posted`, `pending_transfer_already_voided`, `pending_transfer_expired` (expired, or its
//! deadline is at or before this item's timestamp), `exceeds_pending_amount`, `overflow`.
//!
//! Every check runs before any mutation, so a failing item changes nothing; only earlier items of its linked chain
//! need undoing, which an undo log (old balances, created ids, old pending status) makes cheap.
//!
//! # Chains, idempotency, timestamps
//!
//! `exists` counts as success inside a chain, so resubmitting a committed chain answers `exists` for every item.
//! When a chain fails, every other item of it (including `exists` ones) answers `linked_event_failed`; a linked last
//! item answers `linked_event_chain_open`. Each applied item gets `max(now_ns, last_timestamp + 1)`; a rolled-back
//! chain gives its timestamps back, so replay (which only sees applied items) ends with the same `last_timestamp`.
//!
//! Idempotency compares what the client sent with what is stored. For post/void, zero accounts and currency match
//! the filled-in ones, and the amount matches when its effective value (zero = the pending amount) equals the stored
//! amount.
//!
//! Expiry does not take timestamps: a pending transfer whose deadline (`timestamp + timeout_s * 1e9`) is at or before
//! `now_ns` is released by [`State::expire`], and the log record carrying the ids must have a commit timestamp at or
//! after that `now_ns` (replay checks `deadline <= record timestamp`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use foldhash::fast::RandomState;

use crate::chunks::{Chunks, Frozen};
use crate::codec::{self, Records};
use crate::index::IdIndex;
use crate::types::{
    Account, ItemResult, RECORD_BYTES, RecordKind, ResultCode, Transfer, account_flags,
    currency_is_valid, transfer_flags,
};

/// Ids are client-chosen, so the maps are seeded per process (foldhash's `RandomState`) against collision floods.
type IdMap<V> = HashMap<u128, V, RandomState>;

const NS_PER_S: u64 = 1_000_000_000;
/// How many items ahead a batch prefetches the id index line a new transfer's id lands on: enough to cover a
/// memory access (~100 ns) while the items in between are applied (~100-200 ns each), few enough that the lines
/// are still cached when used.
const PREFETCH_AHEAD: usize = 4;
const SNAPSHOT_MAGIC: &[u8; 4] = b"RBLS";
const SNAPSHOT_VERSION: u32 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 32;

/// How many accounts and transfers the server keeps (everything is in memory); beyond them creates answer
/// `capacity_exceeded`. Replay and restore ignore the limits: the log is the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most accounts (clamped to `u32::MAX`).
    pub max_accounts: usize,
    /// Most transfers, posts and voids included (clamped to `u32::MAX`).
    pub max_transfers: usize,
}

impl Default for Limits {
    /// 10M accounts and 50M transfers: about 1.5 GB and 9 GB of memory at the limits.
    fn default() -> Limits {
        Limits {
            max_accounts: 10_000_000,
            max_transfers: 50_000_000,
        }
    }
}

/// Where a transfer created with the `pending` flag stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PendingStatus {
    /// Not a pending transfer (plain, post or void).
    None = 0,
    /// Reserved, waiting for post, void or expiry.
    Pending = 1,
    /// Posted (fully or partly).
    Posted = 2,
    /// Voided.
    Voided = 3,
    /// Expired (its timeout passed).
    Expired = 4,
}

impl PendingStatus {
    fn from_u8(b: u8) -> Option<PendingStatus> {
        match b {
            0 => Some(PendingStatus::None),
            1 => Some(PendingStatus::Pending),
            2 => Some(PendingStatus::Posted),
            3 => Some(PendingStatus::Voided),
            4 => Some(PendingStatus::Expired),
            _ => None,
        }
    }
}

/// Per-currency sums over all accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CurrencyTotals {
    /// Sum of `debits_posted`.
    pub debits_posted: u128,
    /// Sum of `credits_posted`.
    pub credits_posted: u128,
    /// Sum of `debits_pending`.
    pub debits_pending: u128,
    /// Sum of `credits_pending`.
    pub credits_pending: u128,
    /// A sum exceeded `u128::MAX` (the sums then wrap and are only meaningful modulo 2^128).
    pub overflowed: bool,
}

impl CurrencyTotals {
    /// Debits equal credits, posted and pending (the double-entry invariant).
    pub fn balanced(&self) -> bool {
        self.debits_posted == self.credits_posted && self.debits_pending == self.credits_pending
    }

    fn add(&mut self, a: &Account) {
        let mut overflowed = false;
        for (sum, v) in [
            (&mut self.debits_posted, a.debits_posted),
            (&mut self.credits_posted, a.credits_posted),
            (&mut self.debits_pending, a.debits_pending),
            (&mut self.credits_pending, a.credits_pending),
        ] {
            let (s, o) = sum.overflowing_add(v);
            *sum = s;
            overflowed |= o;
        }
        self.overflowed |= overflowed;
    }
}

/// How many of each thing the state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Accounts.
    pub accounts: usize,
    /// Transfers (posts and voids included).
    pub transfers: usize,
    /// Pending transfers still reserved.
    pub pending: usize,
}

/// A log payload that does not apply cleanly: the log and this code disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The payload length is not a multiple of the item size.
    #[error("{kind:?} payload of {len} bytes is not a multiple of {item} bytes")]
    Length {
        /// Record kind.
        kind: RecordKind,
        /// Payload length.
        len: usize,
        /// Item size.
        item: usize,
    },
    /// An item's timestamp is not after the state's last timestamp.
    #[error("item {index}: timestamp {timestamp_ns} is not after {last_ns}")]
    Timestamp {
        /// Item position in the payload.
        index: usize,
        /// The item's timestamp.
        timestamp_ns: u64,
        /// The state's last timestamp.
        last_ns: u64,
    },
    /// An item did not apply `ok`.
    #[error("item {index} (id {id}): {code}")]
    Rejected {
        /// Item position in the payload.
        index: usize,
        /// Item id.
        id: u128,
        /// What the state machine answered.
        code: ResultCode,
    },
    /// An item applied but its stored form differs from the logged record.
    #[error("item {index} (id {id}): stored form differs from the log")]
    Mismatch {
        /// Item position in the payload.
        index: usize,
        /// Item id.
        id: u128,
    },
    /// An expiry names a transfer that cannot expire at the record's timestamp.
    #[error("expiry {index} (id {id}): {what}")]
    Expiry {
        /// Item position in the payload.
        index: usize,
        /// Transfer id.
        id: u128,
        /// Why it cannot expire.
        what: &'static str,
    },
}

/// A snapshot that cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than the header.
    #[error("snapshot of {len} bytes is shorter than its header")]
    Truncated {
        /// Snapshot length.
        len: usize,
    },
    /// Not a state snapshot.
    #[error("bad snapshot magic")]
    BadMagic,
    /// Written by an unknown format version.
    #[error("unsupported snapshot version {0}")]
    Version(u32),
    /// The length does not match the counts in the header.
    #[error("snapshot length {actual} does not match its counts (expected {expected})")]
    Length {
        /// Length implied by the header.
        expected: u128,
        /// Actual length.
        actual: usize,
    },
    /// An account record is invalid.
    #[error("account {index}: {what}")]
    Account {
        /// Position in the snapshot.
        index: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A transfer record is invalid.
    #[error("transfer {index}: {what}")]
    Transfer {
        /// Position in the snapshot.
        index: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The records are each valid but do not add up (balances, pending status).
    #[error("inconsistent snapshot: {0}")]
    Inconsistent(String),
}

/// The account lives in the map entry itself: a transfer then costs one probe per account, not a probe plus a
/// jump into a separate array.
struct AccountEntry {
    account: Account,
    history: History,
}

/// How many of an account's newest transfer indexes stay inside its map entry.
const RECENT: usize = 8;

/// Indexes into `State::transfers` of the transfers touching an account, ascending (= timestamp order). The newest
/// few sit inline in the account's map entry, which a transfer touches anyway; they move to the heap eight at a
/// time, so a transfer rarely touches a second random cache line per account.
#[derive(Default)]
struct History {
    spilled: Vec<u32>,
    recent: [u32; RECENT],
    recent_len: u32,
}

impl History {
    #[inline]
    fn push(&mut self, index: u32) {
        if self.recent_len as usize == RECENT {
            self.spilled.extend_from_slice(&self.recent);
            self.recent_len = 0;
        }
        self.recent[self.recent_len as usize] = index;
        self.recent_len += 1;
    }

    fn pop(&mut self) -> Option<u32> {
        if self.recent_len > 0 {
            self.recent_len -= 1;
            Some(self.recent[self.recent_len as usize])
        } else {
            self.spilled.pop()
        }
    }

    fn len(&self) -> usize {
        self.spilled.len() + self.recent_len as usize
    }

    fn get(&self, k: usize) -> u32 {
        match k.checked_sub(self.spilled.len()) {
            None => self.spilled[k],
            Some(r) => self.recent[r],
        }
    }
}

/// One step to take back when a linked chain fails, newest first.
enum Undo {
    AccountCreated {
        id: u128,
    },
    TransferCreated,
    Balances {
        id: u128,
        old: [u128; 4],
    },
    /// A post/void moved this pending transfer out of `Pending`.
    Resolved {
        index: u32,
    },
}

#[derive(Clone, Copy)]
enum Mode {
    /// A client batch: timestamps from the clock, limits enforced.
    Live { now_ns: u64 },
    /// A logged item: its timestamp is given, limits ignored.
    Replay { timestamp_ns: u64 },
}

/// The ledger state (see the module docs for the rules).
pub struct State {
    limits: Limits,
    accounts: IdMap<AccountEntry>,
    /// Stored forms in commit order, so indexes ascend with timestamps. Chunked so a checkpoint can take a
    /// consistent copy without stalling the writer ([`State::freeze`]).
    transfers: Chunks<Transfer>,
    /// Parallel to `transfers`.
    status: Vec<PendingStatus>,
    transfer_index: IdIndex,
    /// `(deadline_ns, transfer index)` of every pending transfer with a timeout.
    expiries: BTreeSet<(u64, u32)>,
    pending_count: usize,
    last_timestamp_ns: u64,
    /// Kept across batches so a chain does not allocate.
    undo: Vec<Undo>,
}

/// A consistent copy of a [`State`] taken by [`State::freeze`], to be encoded off the writer thread.
#[derive(Debug, Clone)]
pub struct FrozenState {
    last_timestamp_ns: u64,
    /// In map order; [`FrozenState::encode`] sorts them by creation.
    accounts: Vec<Account>,
    transfers: Frozen<Transfer>,
    status: Vec<PendingStatus>,
}

impl FrozenState {
    /// Size of the encoded snapshot.
    pub fn encoded_len(&self) -> usize {
        SNAPSHOT_HEADER_BYTES
            + self.accounts.len() * RECORD_BYTES
            + self.transfers.len() * (RECORD_BYTES + 1)
    }

    /// Appends the snapshot bytes described at [`State::snapshot`].
    pub fn encode(mut self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        self.encode_pieces(usize::MAX, &mut |piece| {
            out.extend_from_slice(piece);
            Ok(())
        })
        .expect("appending to a Vec cannot fail");
    }

    /// Hands the bytes of [`FrozenState::encode`] to `sink` in pieces of about `piece_bytes` (at least one record
    /// each), so a checkpoint never holds the whole snapshot in memory: at 10 M transfers that is 1.3 GB of fresh
    /// pages the kernel must zero, which took a quarter of the server's core at 700k transfers/s. The same bytes
    /// on every call.
    pub fn encode_pieces(
        &mut self,
        piece_bytes: usize,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(piece_bytes.min(self.encoded_len()).max(4 * RECORD_BYTES));
        let mut spill = |buf: &mut Vec<u8>, force: bool| {
            if (force && !buf.is_empty()) || buf.len() >= piece_bytes {
                sink(buf)?;
                buf.clear();
            }
            Ok::<(), std::io::Error>(())
        };
        buf.extend_from_slice(SNAPSHOT_MAGIC);
        buf.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        buf.extend_from_slice(&self.last_timestamp_ns.to_le_bytes());
        buf.extend_from_slice(&(self.accounts.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(self.transfers.len() as u64).to_le_bytes());
        // Creation order (timestamps are unique), so the bytes do not depend on the map's seed.
        self.accounts.sort_unstable_by_key(|a| a.timestamp);
        for a in &self.accounts {
            codec::encode_account(a, &mut buf);
            spill(&mut buf, false)?;
        }
        for t in self.transfers.iter() {
            codec::encode_transfer(t, &mut buf);
            spill(&mut buf, false)?;
        }
        for statuses in self.status.chunks(piece_bytes.clamp(1, 1 << 20)) {
            buf.extend(statuses.iter().map(|&s| s as u8));
            spill(&mut buf, false)?;
        }
        spill(&mut buf, true)
    }
}

fn deadline_ns(t: &Transfer) -> u64 {
    t.timestamp.saturating_add(t.timeout_s as u64 * NS_PER_S)
}

fn balances(a: &Account) -> [u128; 4] {
    [
        a.debits_pending,
        a.debits_posted,
        a.credits_pending,
        a.credits_posted,
    ]
}

fn set_balances(a: &mut Account, b: [u128; 4]) {
    [
        a.debits_pending,
        a.debits_posted,
        a.credits_pending,
        a.credits_posted,
    ] = b;
}

fn ok(timestamp: u64) -> ItemResult {
    ItemResult {
        code: ResultCode::Ok,
        timestamp,
    }
}

use ResultCode as R;

impl State {
    /// An empty state.
    pub fn new(limits: Limits) -> State {
        let cap = u32::MAX as usize;
        State {
            limits: Limits {
                max_accounts: limits.max_accounts.min(cap),
                max_transfers: limits.max_transfers.min(cap),
            },
            accounts: IdMap::default(),
            transfers: Chunks::new(),
            status: Vec::new(),
            transfer_index: IdIndex::new(),
            expiries: BTreeSet::new(),
            pending_count: 0,
            last_timestamp_ns: 0,
            undo: Vec::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The timestamp of the last applied item (0 when empty).
    pub fn last_timestamp(&self) -> u64 {
        self.last_timestamp_ns
    }

    /// How many accounts, transfers and still-pending transfers there are.
    pub fn counts(&self) -> Counts {
        Counts {
            accounts: self.accounts.len(),
            transfers: self.transfers.len(),
            pending: self.pending_count,
        }
    }

    /// The account with this id, with its current balances.
    pub fn account(&self, id: u128) -> Option<Account> {
        self.accounts.get(&id).map(|e| e.account)
    }

    /// The stored transfer with this id.
    pub fn transfer(&self, id: u128) -> Option<Transfer> {
        self.transfer_index
            .get(id)
            .map(|i| self.transfers[i as usize])
    }

    /// Where the transfer with this id stands (`None` if unknown).
    pub fn pending_status(&self, id: u128) -> Option<PendingStatus> {
        self.transfer_index.get(id).map(|i| self.status[i as usize])
    }

    /// Appends the 128-byte records of the accounts found, in request order (missing ids skipped); returns how many.
    pub fn lookup_accounts(&self, ids: &[u128], out: &mut Vec<u8>) -> usize {
        let before = out.len();
        for a in ids.iter().filter_map(|&id| self.account(id)) {
            codec::encode_account(&a, out);
        }
        (out.len() - before) / RECORD_BYTES
    }

    /// Appends the 128-byte records of the transfers found, in request order; returns how many.
    pub fn lookup_transfers(&self, ids: &[u128], out: &mut Vec<u8>) -> usize {
        let before = out.len();
        for t in ids.iter().filter_map(|&id| self.transfer(id)) {
            codec::encode_transfer(&t, out);
        }
        (out.len() - before) / RECORD_BYTES
    }

    /// Up to `limit` transfers of the account (either side) with a timestamp after `after_ts`, in timestamp order,
    /// and the timestamp to pass as `after_ts` for the next page when there are more (empty for unknown accounts).
    pub fn account_transfers(
        &self,
        id: u128,
        after_ts: u64,
        limit: usize,
    ) -> (Vec<Transfer>, Option<u64>) {
        let Some(e) = self.accounts.get(&id) else {
            return (Vec::new(), None);
        };
        let history = &e.history;
        // Binary search for the first transfer after `after_ts`.
        let (mut lo, mut hi) = (0, history.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.transfers[history.get(mid) as usize].timestamp <= after_ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let end = lo.saturating_add(limit).min(history.len());
        let page: Vec<Transfer> = (lo..end)
            .map(|k| self.transfers[history.get(k) as usize])
            .collect();
        let next = if end < history.len() {
            page.last().map(|t| t.timestamp)
        } else {
            None
        };
        (page, next)
    }

    /// Per-currency sums of the balances.
    pub fn totals(&self) -> BTreeMap<u32, CurrencyTotals> {
        let mut totals: BTreeMap<u32, CurrencyTotals> = BTreeMap::new();
        for e in self.accounts.values() {
            totals
                .entry(e.account.currency)
                .or_default()
                .add(&e.account);
        }
        totals
    }

    /// When the next pending transfer expires, if any has a timeout.
    pub fn next_expiry_ns(&self) -> Option<u64> {
        self.expiries.first().map(|&(d, _)| d)
    }

    // -----------------------------------------------------------------------------------------------------------
    // Create batches.

    /// Applies a batch of accounts given as values (e.g. from JSON; reserved bytes count as zero). Appends the stored
    /// record of every applied item to `applied` (the log payload) and returns one result per item.
    pub fn create_accounts(
        &mut self,
        items: &[Account],
        now_ns: u64,
        applied: &mut Vec<u8>,
    ) -> Vec<ItemResult> {
        self.run_batch(
            items.len(),
            |i| (items[i], true),
            |_, _| {},
            Mode::Live { now_ns },
            applied,
            State::create_account,
        )
    }

    /// Applies a batch of binary account records (see [`State::create_accounts`]).
    pub fn create_accounts_records(
        &mut self,
        records: Records<'_>,
        now_ns: u64,
        applied: &mut Vec<u8>,
    ) -> Vec<ItemResult> {
        let get = |i| codec::decode_account(records.get(i));
        self.run_batch(
            records.len(),
            get,
            |_, _| {},
            Mode::Live { now_ns },
            applied,
            State::create_account,
        )
    }

    /// Applies a batch of transfers given as values (see [`State::create_accounts`]).
    pub fn create_transfers(
        &mut self,
        items: &[Transfer],
        now_ns: u64,
        applied: &mut Vec<u8>,
    ) -> Vec<ItemResult> {
        self.run_batch(
            items.len(),
            |i| (items[i], true),
            |s, i| s.transfer_index.prefetch(items[i].id),
            Mode::Live { now_ns },
            applied,
            State::create_transfer,
        )
    }

    /// Applies a batch of binary transfer records (see [`State::create_accounts`]).
    pub fn create_transfers_records(
        &mut self,
        records: Records<'_>,
        now_ns: u64,
        applied: &mut Vec<u8>,
    ) -> Vec<ItemResult> {
        let get = |i| codec::decode_transfer(records.get(i));
        self.run_batch(
            records.len(),
            get,
            |s, i| s.transfer_index.prefetch(codec::record_id(records.get(i))),
            Mode::Live { now_ns },
            applied,
            State::create_transfer,
        )
    }

    /// The linked-chain driver shared by accounts and transfers. `get(i)` yields item `i` and whether its reserved
    /// bytes are zero; `ahead(state, i)` is called [`PREFETCH_AHEAD`] items before item `i` is applied, to prefetch
    /// the memory it will touch.
    fn run_batch<T: Linked>(
        &mut self,
        n: usize,
        get: impl Fn(usize) -> (T, bool),
        ahead: impl Fn(&State, usize),
        mode: Mode,
        applied: &mut Vec<u8>,
        apply: fn(&mut State, &T, bool, Mode, bool, &mut Vec<u8>) -> ItemResult,
    ) -> Vec<ItemResult> {
        let mut results = Vec::with_capacity(n);
        // The open chain: its first item, whether it already failed, and what to roll back to.
        let mut chain: Option<usize> = None;
        let mut broken = false;
        let mut saved_ts = 0;
        let mut saved_len = 0;
        for i in 0..PREFETCH_AHEAD.min(n) {
            ahead(self, i);
        }
        for i in 0..n {
            if i + PREFETCH_AHEAD < n {
                ahead(self, i + PREFETCH_AHEAD);
            }
            let (item, reserved_ok) = get(i);
            let linked = item.linked();
            if chain.is_none() && linked {
                chain = Some(i);
                saved_ts = self.last_timestamp_ns;
                saved_len = applied.len();
                self.undo.clear();
            }
            let result = if linked && i + 1 == n {
                ItemResult::failed(R::LinkedEventChainOpen)
            } else if broken {
                ItemResult::failed(R::LinkedEventFailed)
            } else {
                apply(self, &item, reserved_ok, mode, chain.is_some(), applied)
            };
            results.push(result);
            if let Some(start) = chain {
                if !broken && !result.code.is_success() {
                    self.rollback();
                    self.last_timestamp_ns = saved_ts;
                    applied.truncate(saved_len);
                    for r in &mut results[start..i] {
                        *r = ItemResult::failed(R::LinkedEventFailed);
                    }
                    broken = true;
                }
                if !linked {
                    chain = None;
                    broken = false;
                    self.undo.clear();
                }
            }
        }
        results
    }

    fn rollback(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::AccountCreated { id } => {
                    self.accounts.remove(&id);
                }
                Undo::TransferCreated => {
                    let t = self.transfers.pop().expect("undo: transfer exists");
                    let status = self.status.pop().expect("undo: status exists");
                    let index = self.transfers.len() as u32;
                    self.transfer_index.remove(t.id);
                    for id in [t.debit_account_id, t.credit_account_id] {
                        let popped = self.accounts.get_mut(&id).and_then(|e| e.history.pop());
                        debug_assert_eq!(popped, Some(index));
                    }
                    if status == PendingStatus::Pending {
                        self.pending_count -= 1;
                        if t.timeout_s > 0 {
                            self.expiries.remove(&(deadline_ns(&t), index));
                        }
                    }
                }
                Undo::Balances { id, old } => {
                    if let Some(e) = self.accounts.get_mut(&id) {
                        set_balances(&mut e.account, old);
                    }
                }
                Undo::Resolved { index } => {
                    self.status[index as usize] = PendingStatus::Pending;
                    self.pending_count += 1;
                    let p = &self.transfers[index as usize];
                    if p.timeout_s > 0 {
                        self.expiries.insert((deadline_ns(p), index));
                    }
                }
            }
        }
    }

    /// The timestamp an item applied now gets.
    fn timestamp_for(&self, mode: Mode) -> u64 {
        match mode {
            Mode::Live { now_ns } => now_ns.max(self.last_timestamp_ns.saturating_add(1)),
            Mode::Replay { timestamp_ns } => timestamp_ns,
        }
    }

    fn at_capacity(&self, len: usize, limit: usize, mode: Mode) -> bool {
        match mode {
            Mode::Live { .. } => len >= limit,
            // Indexes are u32; the log cannot hold more than that either.
            Mode::Replay { .. } => len >= u32::MAX as usize,
        }
    }

    fn create_account(
        &mut self,
        a: &Account,
        reserved_ok: bool,
        mode: Mode,
        log_undo: bool,
        applied: &mut Vec<u8>,
    ) -> ItemResult {
        use account_flags as F;
        if a.timestamp != 0 {
            return ItemResult::failed(R::TimestampMustBeZero);
        }
        if !reserved_ok || balances(a) != [0; 4] {
            return ItemResult::failed(R::ReservedField);
        }
        if a.flags & !F::ALL != 0 {
            return ItemResult::failed(R::ReservedFlag);
        }
        if a.id == 0 || a.id == u128::MAX {
            return ItemResult::failed(R::IdMustNotBeZero);
        }
        let limits = F::DEBITS_MUST_NOT_EXCEED_CREDITS | F::CREDITS_MUST_NOT_EXCEED_DEBITS;
        if a.flags & limits == limits {
            return ItemResult::failed(R::FlagsAreMutuallyExclusive);
        }
        if !currency_is_valid(a.currency) {
            return ItemResult::failed(R::CurrencyInvalid);
        }
        if a.code == 0 {
            return ItemResult::failed(R::CodeMustNotBeZero);
        }
        if let Some(e) = self.accounts.get(&a.id) {
            let e = &e.account;
            let same = e.user_data == a.user_data
                && e.currency == a.currency
                && e.code == a.code
                && e.flags == a.flags;
            return if same {
                ok(e.timestamp).with_code(R::Exists)
            } else {
                ItemResult::failed(R::ExistsWithDifferentFields)
            };
        }
        if self.at_capacity(self.accounts.len(), self.limits.max_accounts, mode) {
            return ItemResult::failed(R::CapacityExceeded);
        }
        let ts = self.timestamp_for(mode);
        let stored = Account {
            timestamp: ts,
            ..*a
        };
        self.accounts.insert(
            a.id,
            AccountEntry {
                account: stored,
                history: History::default(),
            },
        );
        if log_undo {
            self.undo.push(Undo::AccountCreated { id: a.id });
        }
        codec::encode_account(&stored, applied);
        self.last_timestamp_ns = ts;
        ok(ts)
    }

    fn create_transfer(
        &mut self,
        t: &Transfer,
        reserved_ok: bool,
        mode: Mode,
        log_undo: bool,
        applied: &mut Vec<u8>,
    ) -> ItemResult {
        use transfer_flags as F;
        if t.timestamp != 0 {
            return ItemResult::failed(R::TimestampMustBeZero);
        }
        if !reserved_ok {
            return ItemResult::failed(R::ReservedField);
        }
        if t.flags & !F::ALL != 0 {
            return ItemResult::failed(R::ReservedFlag);
        }
        if t.id == 0 || t.id == u128::MAX {
            return ItemResult::failed(R::IdMustNotBeZero);
        }
        if (t.flags & (F::PENDING | F::POST_PENDING_TRANSFER | F::VOID_PENDING_TRANSFER))
            .count_ones()
            > 1
        {
            return ItemResult::failed(R::FlagsAreMutuallyExclusive);
        }
        let post_or_void = t.is_post_or_void();
        if post_or_void {
            if t.pending_id == 0 {
                return ItemResult::failed(R::PendingIdRequired);
            }
            if t.timeout_s != 0 {
                return ItemResult::failed(R::TimeoutReservedForPending);
            }
            if t.debit_account_id != 0 && t.debit_account_id == t.credit_account_id {
                return ItemResult::failed(R::AccountsMustBeDifferent);
            }
            if t.currency != 0 && !currency_is_valid(t.currency) {
                return ItemResult::failed(R::CurrencyInvalid);
            }
        } else {
            if t.pending_id != 0 {
                return ItemResult::failed(R::PendingIdMustBeZero);
            }
            if t.timeout_s != 0 && t.flags & F::PENDING == 0 {
                return ItemResult::failed(R::TimeoutReservedForPending);
            }
            // Two zero ids fall through to `debit_account_not_found`, which says more.
            if t.debit_account_id != 0 && t.debit_account_id == t.credit_account_id {
                return ItemResult::failed(R::AccountsMustBeDifferent);
            }
            if !currency_is_valid(t.currency) {
                return ItemResult::failed(R::CurrencyInvalid);
            }
            if t.amount == 0 {
                return ItemResult::failed(R::AmountMustNotBeZero);
            }
        }
        if t.code == 0 {
            return ItemResult::failed(R::CodeMustNotBeZero);
        }
        if let Some(i) = self.transfer_index.get(t.id) {
            let e = &self.transfers[i as usize];
            return if self.same_transfer(t, e) {
                ok(e.timestamp).with_code(R::Exists)
            } else {
                ItemResult::failed(R::ExistsWithDifferentFields)
            };
        }
        if self.at_capacity(self.transfers.len(), self.limits.max_transfers, mode) {
            return ItemResult::failed(R::CapacityExceeded);
        }
        if post_or_void {
            self.post_or_void(t, mode, log_undo, applied)
        } else {
            self.plain_or_pending(t, mode, log_undo, applied)
        }
    }

    /// Whether a resubmitted transfer `t` carries the same client fields as the stored `e`.
    fn same_transfer(&self, t: &Transfer, e: &Transfer) -> bool {
        if t.flags != e.flags
            || t.pending_id != e.pending_id
            || t.user_data != e.user_data
            || t.timeout_s != e.timeout_s
            || t.code != e.code
        {
            return false;
        }
        if !e.is_post_or_void() {
            return t.debit_account_id == e.debit_account_id
                && t.credit_account_id == e.credit_account_id
                && t.currency == e.currency
                && t.amount == e.amount;
        }
        let given_or_zero = |given: u128, stored: u128| given == 0 || given == stored;
        let amount = if t.amount != 0 {
            t.amount
        } else {
            // The stored post/void's pending transfer always exists: transfers are never removed.
            self.transfer(e.pending_id).map_or(0, |p| p.amount)
        };
        given_or_zero(t.debit_account_id, e.debit_account_id)
            && given_or_zero(t.credit_account_id, e.credit_account_id)
            && (t.currency == 0 || t.currency == e.currency)
            && amount == e.amount
    }

    fn plain_or_pending(
        &mut self,
        t: &Transfer,
        mode: Mode,
        log_undo: bool,
        applied: &mut Vec<u8>,
    ) -> ItemResult {
        let Some(d) = self.accounts.get(&t.debit_account_id).map(|e| e.account) else {
            return ItemResult::failed(R::DebitAccountNotFound);
        };
        let Some(c) = self.accounts.get(&t.credit_account_id).map(|e| e.account) else {
            return ItemResult::failed(R::CreditAccountNotFound);
        };
        if d.currency != t.currency || c.currency != t.currency {
            return ItemResult::failed(R::CurrencyMismatch);
        }
        let pending = t.flags & transfer_flags::PENDING != 0;
        let mut db = balances(&d);
        let mut cb = balances(&c);
        // [debits_pending, debits_posted, credits_pending, credits_posted]: pending lands in slot 0/2, posted 1/3.
        let (dslot, cslot) = if pending { (0, 2) } else { (1, 3) };
        let (Some(dn), Some(cn)) = (
            db[dslot].checked_add(t.amount),
            cb[cslot].checked_add(t.amount),
        ) else {
            return ItemResult::failed(R::Overflow);
        };
        db[dslot] = dn;
        cb[cslot] = cn;
        let (Some(d_debits), Some(c_credits)) =
            (db[0].checked_add(db[1]), cb[2].checked_add(cb[3]))
        else {
            return ItemResult::failed(R::Overflow);
        };
        if d.flags & account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS != 0 && d_debits > db[3] {
            return ItemResult::failed(R::ExceedsCredits);
        }
        if c.flags & account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS != 0 && c_credits > cb[1] {
            return ItemResult::failed(R::ExceedsDebits);
        }

        let ts = self.timestamp_for(mode);
        let index = self.transfers.len() as u32;
        let stored = Transfer {
            timestamp: ts,
            ..*t
        };
        if log_undo {
            self.undo.push(Undo::Balances {
                id: d.id,
                old: balances(&d),
            });
            self.undo.push(Undo::Balances {
                id: c.id,
                old: balances(&c),
            });
            self.undo.push(Undo::TransferCreated);
        }
        self.update_account(d.id, db, index);
        self.update_account(c.id, cb, index);
        self.transfers.push(stored);
        self.transfer_index.insert(t.id, index);
        if pending {
            self.status.push(PendingStatus::Pending);
            self.pending_count += 1;
            if t.timeout_s > 0 {
                self.expiries.insert((deadline_ns(&stored), index));
            }
        } else {
            self.status.push(PendingStatus::None);
        }
        codec::encode_transfer(&stored, applied);
        self.last_timestamp_ns = ts;
        ok(ts)
    }

    fn post_or_void(
        &mut self,
        t: &Transfer,
        mode: Mode,
        log_undo: bool,
        applied: &mut Vec<u8>,
    ) -> ItemResult {
        let Some(pi) = self.transfer_index.get(t.pending_id) else {
            return ItemResult::failed(R::PendingTransferNotFound);
        };
        let p = self.transfers[pi as usize];
        if p.flags & transfer_flags::PENDING == 0 {
            return ItemResult::failed(R::PendingTransferNotPending);
        }
        if (t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id)
            || (t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id)
        {
            return ItemResult::failed(R::PendingTransferHasDifferentAccounts);
        }
        if t.currency != 0 && t.currency != p.currency {
            return ItemResult::failed(R::PendingTransferHasDifferentCurrency);
        }
        match self.status[pi as usize] {
            PendingStatus::Pending => {}
            PendingStatus::Posted => return ItemResult::failed(R::PendingTransferAlreadyPosted),
            PendingStatus::Voided => return ItemResult::failed(R::PendingTransferAlreadyVoided),
            PendingStatus::Expired => return ItemResult::failed(R::PendingTransferExpired),
            PendingStatus::None => return ItemResult::failed(R::PendingTransferNotPending),
        }
        let ts = self.timestamp_for(mode);
        if p.timeout_s > 0 && deadline_ns(&p) <= ts {
            return ItemResult::failed(R::PendingTransferExpired);
        }
        let post = t.flags & transfer_flags::POST_PENDING_TRANSFER != 0;
        let amount = if post {
            if t.amount > p.amount {
                return ItemResult::failed(R::ExceedsPendingAmount);
            }
            if t.amount == 0 { p.amount } else { t.amount }
        } else {
            if t.amount != 0 && t.amount != p.amount {
                return ItemResult::failed(R::ExceedsPendingAmount);
            }
            p.amount
        };
        // The pending transfer's accounts exist: accounts are never removed.
        let (Some(d), Some(c)) = (
            self.account(p.debit_account_id),
            self.account(p.credit_account_id),
        ) else {
            debug_assert!(false, "a pending transfer's account is missing");
            return ItemResult::failed(R::DebitAccountNotFound);
        };
        let mut db = balances(&d);
        let mut cb = balances(&c);
        // The reservation is in the pending balances by construction; checked anyway so corruption cannot wrap.
        let (Some(dp), Some(cp)) = (db[0].checked_sub(p.amount), cb[2].checked_sub(p.amount))
        else {
            debug_assert!(false, "pending balance below a pending transfer's amount");
            return ItemResult::failed(R::Overflow);
        };
        db[0] = dp;
        cb[2] = cp;
        if post {
            let (Some(dn), Some(cn)) = (db[1].checked_add(amount), cb[3].checked_add(amount))
            else {
                return ItemResult::failed(R::Overflow);
            };
            db[1] = dn;
            cb[3] = cn;
        }

        let index = self.transfers.len() as u32;
        let stored = Transfer {
            debit_account_id: p.debit_account_id,
            credit_account_id: p.credit_account_id,
            currency: p.currency,
            amount,
            timestamp: ts,
            ..*t
        };
        if log_undo {
            self.undo.push(Undo::Balances {
                id: d.id,
                old: balances(&d),
            });
            self.undo.push(Undo::Balances {
                id: c.id,
                old: balances(&c),
            });
            self.undo.push(Undo::Resolved { index: pi });
            self.undo.push(Undo::TransferCreated);
        }
        self.status[pi as usize] = if post {
            PendingStatus::Posted
        } else {
            PendingStatus::Voided
        };
        self.pending_count -= 1;
        if p.timeout_s > 0 {
            self.expiries.remove(&(deadline_ns(&p), pi));
        }
        self.update_account(d.id, db, index);
        self.update_account(c.id, cb, index);
        self.transfers.push(stored);
        self.status.push(PendingStatus::None);
        self.transfer_index.insert(t.id, index);
        codec::encode_transfer(&stored, applied);
        self.last_timestamp_ns = ts;
        ok(ts)
    }

    /// Sets an account's balances and records transfer `index` in its history.
    #[inline]
    fn update_account(&mut self, id: u128, b: [u128; 4], index: u32) {
        let e = self.accounts.get_mut(&id).expect("account checked before");
        set_balances(&mut e.account, b);
        e.history.push(index);
    }

    // -----------------------------------------------------------------------------------------------------------
    // Expiry.

    /// Expires every pending transfer whose deadline is at or before `now_ns`, releasing its reservation, and appends
    /// each one's 16-byte id to `payload` (the expiries log record, to be written with a commit timestamp at or after
    /// `now_ns`). Returns how many expired.
    pub fn expire(&mut self, now_ns: u64, payload: &mut Vec<u8>) -> usize {
        let mut n = 0;
        while let Some(&(deadline, index)) = self.expiries.first() {
            if deadline > now_ns {
                break;
            }
            self.expiries.pop_first();
            self.release_expired(index);
            codec::encode_id(self.transfers[index as usize].id, payload);
            n += 1;
        }
        n
    }

    fn release_expired(&mut self, index: u32) {
        let p = self.transfers[index as usize];
        self.status[index as usize] = PendingStatus::Expired;
        self.pending_count -= 1;
        for (id, slot) in [(p.debit_account_id, 0), (p.credit_account_id, 2)] {
            let Some(e) = self.accounts.get_mut(&id) else {
                debug_assert!(false, "a pending transfer's account is missing");
                continue;
            };
            let a = &mut e.account;
            let mut b = balances(a);
            debug_assert!(b[slot] >= p.amount);
            b[slot] = b[slot].saturating_sub(p.amount);
            set_balances(a, b);
        }
    }

    // -----------------------------------------------------------------------------------------------------------
    // Replay.

    /// Applies one logged payload (the `applied` bytes of a create batch, or expired ids). Every item must apply
    /// `ok` and reproduce its logged record exactly; otherwise the log and this code disagree. On error the state
    /// holds the items before the failing one and should be discarded.
    pub fn replay(
        &mut self,
        kind: RecordKind,
        record_timestamp: u64,
        payload: &[u8],
    ) -> Result<(), ReplayError> {
        let item = kind.item_bytes();
        if payload.len() % item != 0 {
            return Err(ReplayError::Length {
                kind,
                len: payload.len(),
                item,
            });
        }
        let mut scratch = Vec::with_capacity(RECORD_BYTES);
        for (index, chunk) in payload.chunks_exact(item).enumerate() {
            match kind {
                RecordKind::Accounts | RecordKind::Transfers => {
                    let record: &[u8; RECORD_BYTES] =
                        chunk.try_into().expect("chunk of RECORD_BYTES");
                    let (id, timestamp_ns, code) = if kind == RecordKind::Accounts {
                        let (a, reserved_ok) = codec::decode_account(record);
                        self.replay_check_ts(index, a.timestamp)?;
                        let mode = Mode::Replay {
                            timestamp_ns: a.timestamp,
                        };
                        let a0 = Account { timestamp: 0, ..a };
                        scratch.clear();
                        (
                            a.id,
                            a.timestamp,
                            self.create_account(&a0, reserved_ok, mode, false, &mut scratch)
                                .code,
                        )
                    } else {
                        let (t, reserved_ok) = codec::decode_transfer(record);
                        self.replay_check_ts(index, t.timestamp)?;
                        let mode = Mode::Replay {
                            timestamp_ns: t.timestamp,
                        };
                        let t0 = Transfer { timestamp: 0, ..t };
                        scratch.clear();
                        (
                            t.id,
                            t.timestamp,
                            self.create_transfer(&t0, reserved_ok, mode, false, &mut scratch)
                                .code,
                        )
                    };
                    if code != R::Ok {
                        return Err(ReplayError::Rejected { index, id, code });
                    }
                    debug_assert_eq!(self.last_timestamp_ns, timestamp_ns);
                    if scratch.as_slice() != record.as_slice() {
                        return Err(ReplayError::Mismatch { index, id });
                    }
                }
                RecordKind::Expiries => {
                    let id = u128::from_le_bytes(chunk.try_into().expect("chunk of ID_BYTES"));
                    let err = |what| ReplayError::Expiry { index, id, what };
                    let i = self.transfer_index.get(id).ok_or(err("unknown transfer"))?;
                    if self.status[i as usize] != PendingStatus::Pending {
                        return Err(err("not pending"));
                    }
                    let p = &self.transfers[i as usize];
                    if p.timeout_s == 0 {
                        return Err(err("has no timeout"));
                    }
                    let deadline = deadline_ns(p);
                    if deadline > record_timestamp {
                        return Err(err("deadline after the record's timestamp"));
                    }
                    self.expiries.remove(&(deadline, i));
                    self.release_expired(i);
                }
            }
        }
        Ok(())
    }

    fn replay_check_ts(&self, index: usize, timestamp_ns: u64) -> Result<(), ReplayError> {
        if timestamp_ns <= self.last_timestamp_ns {
            return Err(ReplayError::Timestamp {
                index,
                timestamp_ns,
                last_ns: self.last_timestamp_ns,
            });
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------------------------
    // Snapshots and invariants.

    /// Appends a binary snapshot: `RBLS`, version u32, last timestamp u64, account count u64, transfer count u64,
    /// the accounts (128-byte records with current balances, creation order), the transfers (stored form, commit
    /// order), one [`PendingStatus`] byte per transfer. Histories and the expiry index are rebuilt on restore. The
    /// bytes depend only on the applied history, never on hash seeds. Same as `self.freeze().encode(out)`.
    pub fn snapshot(&self, out: &mut Vec<u8>) {
        self.freeze().encode(out);
    }

    /// Size of [`State::snapshot`]'s output, without building it.
    pub fn snapshot_len(&self) -> usize {
        SNAPSHOT_HEADER_BYTES
            + self.accounts.len() * RECORD_BYTES
            + self.transfers.len() * (RECORD_BYTES + 1)
    }

    /// A consistent copy of what a snapshot holds, cheap enough to take on the writer thread: sealed transfer
    /// chunks are shared, only accounts, the open chunk and the status bytes are copied. Encode it elsewhere.
    pub fn freeze(&self) -> FrozenState {
        FrozenState {
            last_timestamp_ns: self.last_timestamp_ns,
            accounts: self.accounts.values().map(|e| e.account).collect(),
            transfers: self.transfers.freeze(),
            status: self.status.clone(),
        }
    }

    /// Rebuilds a state from [`State::snapshot`] bytes, checking every record and that the balances equal what the
    /// transfers imply; rejects anything else with an error (never panics).
    pub fn restore(bytes: &[u8], limits: Limits) -> Result<State, SnapshotError> {
        if bytes.len() < SNAPSHOT_HEADER_BYTES {
            return Err(SnapshotError::Truncated { len: bytes.len() });
        }
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        if &bytes[0..4] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        let last_ts = u64_at(8);
        let (na, nt) = (u64_at(16), u64_at(24));
        let expected = SNAPSHOT_HEADER_BYTES as u128 + na as u128 * 128 + nt as u128 * 129;
        if expected != bytes.len() as u128 || na > u32::MAX as u64 || nt > u32::MAX as u64 {
            return Err(SnapshotError::Length {
                expected,
                actual: bytes.len(),
            });
        }
        let (na, nt) = (na as usize, nt as usize);
        let accounts_at = SNAPSHOT_HEADER_BYTES;
        let transfers_at = accounts_at + na * RECORD_BYTES;
        let status_at = transfers_at + nt * RECORD_BYTES;

        let mut s = State::new(limits);
        s.last_timestamp_ns = last_ts;
        s.accounts.reserve(na);
        let mut prev_ts = 0;
        for index in 0..na {
            let rec = bytes[accounts_at + index * RECORD_BYTES..][..RECORD_BYTES]
                .try_into()
                .expect("record");
            let (a, reserved_ok) = codec::decode_account(rec);
            let err = |what| SnapshotError::Account { index, what };
            let both = account_flags::DEBITS_MUST_NOT_EXCEED_CREDITS
                | account_flags::CREDITS_MUST_NOT_EXCEED_DEBITS;
            if !reserved_ok || a.flags & !account_flags::ALL != 0 || a.flags & both == both {
                return Err(err("reserved bytes or flags"));
            }
            if a.id == 0 || a.id == u128::MAX || !currency_is_valid(a.currency) || a.code == 0 {
                return Err(err("invalid id, currency or code"));
            }
            if a.timestamp <= prev_ts || a.timestamp > last_ts {
                return Err(err("timestamp out of order"));
            }
            prev_ts = a.timestamp;
            if s.accounts
                .insert(
                    a.id,
                    AccountEntry {
                        account: a,
                        history: History::default(),
                    },
                )
                .is_some()
            {
                return Err(err("duplicate id"));
            }
        }

        s.status.reserve_exact(nt);
        s.transfer_index.reserve(nt);
        prev_ts = 0;
        for index in 0..nt {
            let rec = bytes[transfers_at + index * RECORD_BYTES..][..RECORD_BYTES]
                .try_into()
                .expect("record");
            let (t, reserved_ok) = codec::decode_transfer(rec);
            let err = |what| SnapshotError::Transfer { index, what };
            let status = PendingStatus::from_u8(bytes[status_at + index])
                .ok_or(err("unknown pending status"))?;
            if !reserved_ok || t.flags & !transfer_flags::ALL != 0 {
                return Err(err("reserved bytes or flags"));
            }
            if t.id == 0 || t.id == u128::MAX || t.code == 0 {
                return Err(err("invalid id or code"));
            }
            if t.timestamp <= prev_ts || t.timestamp > last_ts {
                return Err(err("timestamp out of order"));
            }
            prev_ts = t.timestamp;
            let is_pending = t.flags & transfer_flags::PENDING != 0;
            if is_pending == (status == PendingStatus::None) {
                return Err(err("pending status does not match the flags"));
            }
            if status == PendingStatus::Expired && t.timeout_s == 0 {
                return Err(err("expired without a timeout"));
            }
            let (Some(d), Some(c)) = (
                s.account(t.debit_account_id),
                s.account(t.credit_account_id),
            ) else {
                return Err(err("unknown account"));
            };
            if d.id == c.id {
                return Err(err("same account on both sides"));
            }
            if d.currency != t.currency || c.currency != t.currency {
                return Err(err("currency differs from its accounts'"));
            }
            if t.is_post_or_void() {
                let resolved = if t.flags & transfer_flags::POST_PENDING_TRANSFER != 0 {
                    PendingStatus::Posted
                } else {
                    PendingStatus::Voided
                };
                let Some(pi) = s.transfer_index.get(t.pending_id) else {
                    return Err(err("unknown pending transfer"));
                };
                let p = &s.transfers[pi as usize];
                if s.status[pi as usize] != resolved
                    || p.debit_account_id != t.debit_account_id
                    || p.credit_account_id != t.credit_account_id
                    || t.amount > p.amount
                {
                    return Err(err("does not match its pending transfer"));
                }
            }
            if s.transfer_index.insert(t.id, index as u32).is_some() {
                return Err(err("duplicate id"));
            }
            for id in [d.id, c.id] {
                s.accounts
                    .get_mut(&id)
                    .expect("looked up above")
                    .history
                    .push(index as u32);
            }
            if status == PendingStatus::Pending {
                s.pending_count += 1;
                if t.timeout_s > 0 {
                    s.expiries.insert((deadline_ns(&t), index as u32));
                }
            }
            s.transfers.push(t);
            s.status.push(status);
        }
        s.check_invariants().map_err(SnapshotError::Inconsistent)?;
        Ok(s)
    }

    /// Recomputes every account's balances from the transfers and pending statuses and compares them with the
    /// stored ones, checks each currency balances and that each post/void resolves a distinct pending transfer.
    /// O(accounts + transfers); for tests, restore and verification, not the hot path.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut computed: HashMap<u128, [u128; 4], RandomState> =
            self.accounts.keys().map(|&id| (id, [0; 4])).collect();
        let mut resolved = vec![false; self.transfers.len()];
        let mut pending = 0;
        for (i, t) in self.transfers.iter().enumerate() {
            let status = self
                .status
                .get(i)
                .copied()
                .ok_or("status list shorter than transfers")?;
            if !computed.contains_key(&t.debit_account_id)
                || !computed.contains_key(&t.credit_account_id)
            {
                return Err(format!("transfer {}: unknown account", t.id));
            }
            let (dslot, cslot) = if t.is_post_or_void() {
                let pi = self
                    .transfer_index
                    .get(t.pending_id)
                    .ok_or(format!("transfer {}: no pending", t.id))?;
                let seen = resolved
                    .get_mut(pi as usize)
                    .ok_or("pending index out of range")?;
                if std::mem::replace(seen, true) {
                    return Err(format!(
                        "transfer {}: pending {} resolved twice",
                        t.id, t.pending_id
                    ));
                }
                if t.flags & transfer_flags::VOID_PENDING_TRANSFER != 0 {
                    continue;
                }
                (1, 3)
            } else if t.flags & transfer_flags::PENDING != 0 {
                if status != PendingStatus::Pending {
                    continue;
                }
                pending += 1;
                (0, 2)
            } else {
                (1, 3)
            };
            let overflow = || format!("transfer {}: balance overflow", t.id);
            for (id, slot) in [(t.debit_account_id, dslot), (t.credit_account_id, cslot)] {
                let b = &mut computed.get_mut(&id).expect("checked above")[slot];
                *b = b.checked_add(t.amount).ok_or_else(overflow)?;
            }
        }
        for (id, e) in &self.accounts {
            if Some(&balances(&e.account)) != computed.get(id) {
                return Err(format!(
                    "account {}: balances differ from its transfers",
                    e.account.id
                ));
            }
        }
        if pending != self.pending_count {
            return Err(format!(
                "{} pending transfers, counted {}",
                pending, self.pending_count
            ));
        }
        for (code, t) in self.totals() {
            // Sums wrap past u128::MAX (each balance is checked, their sum across accounts is not), and the
            // invariant holds modulo 2^128 all the same.
            if !t.balanced() {
                return Err(format!("currency {code:#x} does not balance"));
            }
        }
        Ok(())
    }
}

/// Items that can be chained with the `linked` flag (bit 0 for both kinds).
trait Linked: Copy {
    fn linked(&self) -> bool;
}

impl Linked for Account {
    fn linked(&self) -> bool {
        self.flags & account_flags::LINKED != 0
    }
}

impl Linked for Transfer {
    fn linked(&self) -> bool {
        self.flags & transfer_flags::LINKED != 0
    }
}

impl ItemResult {
    fn with_code(self, code: ResultCode) -> ItemResult {
        ItemResult { code, ..self }
    }
}
