//! What a loader lane sends to a ledger and what it expects the ledger to hold afterwards.
//!
//! Transfer ids are `nonce << 64 | worker << 48 | lane << 32 | k` with a random nonce per phase and a per-lane
//! counter `k` (1, 2, ...), so ids are unique across the run and a lane's ids are dense. The fields of a new
//! transfer are a pure function of the lane's seed and `k` ([`LedgerConfig::new_transfer`]), so an acknowledged
//! transfer is remembered as one bit (an [`AckBitmap`] over `k`) and its fields are recomputed when it is verified;
//! only posts and voids, whose target depends on what was acknowledged when, are kept whole ([`LaneLedger`]).
//!
//! Expected balances follow `API.md`: a pending transfer reserves its amount (`*_pending`), a post moves the posted
//! amount to `*_posted` and releases the whole reservation, a void releases it. With a pending timeout, a pending
//! that is never resolved (left in the queue, or its post/void refused) is expected to expire, which releases it
//! too: the coordinator compares balances only after the timeout has passed.
//!
//! Linked chains are checked from the responses: a chain applies all or nothing, and a chain sent with an item
//! the ledger must refuse (amount zero) applies nothing. Every per-lane collection is
//! bounded: the two-phase queue by [`PENDING_QUEUE_CAP`], the in-doubt list by [`IN_DOUBT_CAP`] (a lane stops
//! sending rather than forget an in-doubt transfer), the counter by `u32`.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::ledger::wire::{
    ItemResult, MAX_BATCH, RECORD_BYTES, RESULT_BYTES, RESULT_EXISTS, RESULT_LINKED_EVENT_FAILED,
    RESULT_NAMES, RESULT_OK, Transfer, currency_code, result_name, transfer_flags,
};
use crate::plan::{HttpUrl, LedgerPlan};
use crate::result::LedgerLinked;
use crate::schedule::mix_seed;
use crate::zipf::Zipf;

/// Tag in the top bits of every scenario account id.
pub const ACCOUNT_ID_TAG: u128 = 0xACC;
/// Chart-of-accounts code of scenario accounts.
pub const ACCOUNT_CODE: u16 = 1;
/// Code of scenario transfers.
pub const TRANSFER_CODE: u16 = 1;
/// Acknowledged pendings a lane keeps waiting for their post or void; when full, the lane resolves before it
/// creates more.
pub const PENDING_QUEUE_CAP: usize = 65_536;
/// In-doubt transfers (timeouts, broken connections) a lane remembers; a lane that would exceed it stops sending.
pub const IN_DOUBT_CAP: usize = 65_536;
/// Largest response body a ledger lane reads (results of a full batch, or an error document).
pub const MAX_LEDGER_RESPONSE_BYTES: usize = MAX_BATCH * RECORD_BYTES + 64 * 1024;
/// Most mismatch examples a report carries.
pub const MAX_EXAMPLES: usize = 10;

/// Id of account `index` (its currency is part of the id, so a phase with other currencies never collides).
pub fn account_id(currency: u32, index: u32) -> u128 {
    (ACCOUNT_ID_TAG << 112) | (u128::from(currency) << 64) | (u128::from(index) + 1)
}

/// Balance changes of one account: `[debits_pending, debits_posted, credits_pending, credits_posted]`, the order of
/// the account record.
pub type Delta = [i128; 4];

/// Index of each field in a [`Delta`].
pub mod delta {
    /// `debits_pending`.
    pub const DEBITS_PENDING: usize = 0;
    /// `debits_posted`.
    pub const DEBITS_POSTED: usize = 1;
    /// `credits_pending`.
    pub const CREDITS_PENDING: usize = 2;
    /// `credits_posted`.
    pub const CREDITS_POSTED: usize = 3;
}

/// The phase's ledger set-up as a loader sees it: immutable, shared by the lanes of one loader process.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// The validated profile section.
    pub plan: LedgerPlan,
    currency_codes: Vec<u32>,
    zipfs: Vec<Zipf>,
    nonce: u64,
    worker: u16,
    /// Probability that a slot resolves a queued pending: with r the two-phase ratio, r/(1+r) balances creation.
    p_resolve: f64,
    /// `POST {prefix}/transfers HTTP/1.1 ... content-length: ` up to (excluding) the length.
    head_prefix: String,
    lookup_head_prefix: String,
}

/// The fields of a new (not post/void) transfer, recomputable from the lane seed and `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewTransfer {
    /// Currency index.
    pub currency: u16,
    /// Debit account index.
    pub debit: u32,
    /// Credit account index.
    pub credit: u32,
    /// Amount.
    pub amount: u64,
    /// Created pending.
    pub pending: bool,
}

/// What an item of a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A transfer posted at once.
    Single,
    /// A reservation.
    Pending,
    /// Posts the pending transfer `pending_k` (of the same lane); `full` sends amount 0.
    Post {
        /// Counter of the pending transfer.
        pending_k: u32,
        /// Sent with amount 0 (the whole reservation).
        full: bool,
        /// Sent with debit, credit and currency zero (the ledger takes them from the pending).
        bare: bool,
    },
    /// Voids the pending transfer `pending_k`.
    Void {
        /// Counter of the pending transfer.
        pending_k: u32,
        /// Sent with debit, credit and currency zero.
        bare: bool,
    },
    /// A new transfer sent with amount zero: the ledger must refuse it (`amount_must_not_be_zero`), and with it
    /// the whole linked chain it is part of.
    Doomed,
}

/// One transfer a lane sent, with everything needed to update and check balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// Counter (the low 32 bits of the id).
    pub k: u32,
    /// Kind.
    pub kind: ItemKind,
    /// Currency index.
    pub currency: u16,
    /// Debit account index.
    pub debit: u32,
    /// Credit account index.
    pub credit: u32,
    /// Amount moved: the transfer's amount; for a post the posted amount; for a void the reserved amount.
    pub amount: u64,
    /// Post/void: the reserved amount of the pending transfer; otherwise equal to `amount`.
    pub pending_amount: u64,
    /// Sent with the `linked` flag: chained to the next item of its batch.
    pub linked: bool,
}

impl Item {
    /// The pending transfer a post or void resolves, as it was queued.
    fn resolved_pending(&self) -> Option<Item> {
        match self.kind {
            ItemKind::Post { pending_k, .. } | ItemKind::Void { pending_k, .. } => Some(Item {
                k: pending_k,
                kind: ItemKind::Pending,
                amount: self.pending_amount,
                linked: false,
                ..*self
            }),
            _ => None,
        }
    }
}

impl LedgerConfig {
    /// Configuration for loader `worker` of a phase with id nonce `nonce` against `base`.
    pub fn new(plan: &LedgerPlan, nonce: u64, worker: usize, base: &HttpUrl) -> LedgerConfig {
        let c = plan.currencies.len() as u32;
        let currency_codes = plan
            .currencies
            .iter()
            .map(|s| currency_code(s).expect("validated in plan"))
            .collect();
        let zipfs = (0..c)
            .map(|ci| {
                Zipf::new(
                    u64::from(accounts_in(plan.accounts, c, ci)),
                    plan.zipf_exponent,
                )
            })
            .collect();
        let authority = base.authority();
        let head = |path: &str| {
            format!(
                "POST {}{path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/octet-stream\r\ncontent-length: ",
                base.prefix
            )
        };
        let r = plan.two_phase_ratio;
        LedgerConfig {
            plan: plan.clone(),
            currency_codes,
            zipfs,
            nonce: nonce.max(1),
            worker: u16::try_from(worker).expect("at most 64 loader processes"),
            p_resolve: r / (1.0 + r),
            head_prefix: head("/transfers"),
            lookup_head_prefix: head("/transfers/lookup"),
        }
    }

    /// Id of transfer `k` of local lane `lane`.
    pub fn transfer_id(&self, lane: u16, k: u32) -> u128 {
        (u128::from(self.nonce) << 64)
            | (u128::from(self.worker) << 48)
            | (u128::from(lane) << 32)
            | u128::from(k)
    }

    /// Currency code of currency index `c`.
    pub fn currency(&self, c: u16) -> u32 {
        self.currency_codes[c as usize]
    }

    /// Id of account index `i`.
    pub fn account(&self, i: u32) -> u128 {
        let c = (i as usize) % self.currency_codes.len();
        account_id(self.currency_codes[c], i)
    }

    /// A complete `POST /transfers/lookup` request for `ids` (16 bytes each, already encoded).
    pub fn lookup_request(&self, ids: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.lookup_head_prefix.as_bytes());
        out.extend_from_slice(format!("{}\r\n\r\n", ids.len()).as_bytes());
        out.extend_from_slice(ids);
    }

    /// The new transfer at counter `k` of the lane seeded `lane_seed` (a pure function: verification recomputes it).
    pub fn new_transfer(&self, lane_seed: u64, k: u32) -> NewTransfer {
        let mut rng = SmallRng::seed_from_u64(mix_seed(lane_seed, u64::from(k)));
        let cn = self.currency_codes.len() as u32;
        let c = rng.random_range(0..cn);
        let z = &self.zipfs[c as usize];
        let debit = z.sample(&mut rng);
        let mut credit = z.sample(&mut rng);
        // Never the same account: redraw a bounded number of times, then take the next rank.
        let mut tries = 0;
        while credit == debit && tries < 32 {
            credit = z.sample(&mut rng);
            tries += 1;
        }
        if credit == debit {
            credit = debit % z.n() + 1;
        }
        let amount = rng.random_range(1..=self.plan.amount_max);
        let pending =
            self.plan.two_phase_ratio > 0.0 && rng.random::<f64>() < self.plan.two_phase_ratio;
        let index = |rank: u64| c + (rank as u32 - 1) * cn;
        NewTransfer {
            currency: c as u16,
            debit: index(debit),
            credit: index(credit),
            amount,
            pending,
        }
    }

    /// The record sent for `item` of lane `lane`.
    pub fn request_record(&self, lane: u16, item: &Item) -> Transfer {
        let mut t = self.stored_record(lane, item);
        match item.kind {
            ItemKind::Post { full: true, .. } | ItemKind::Void { .. } => t.amount = 0,
            _ => {}
        }
        if let ItemKind::Post { bare: true, .. } | ItemKind::Void { bare: true, .. } = item.kind {
            t.debit_account_id = 0;
            t.credit_account_id = 0;
            t.currency = 0;
        }
        t
    }

    /// The record the ledger must hold for `item` once it is applied (timestamp left zero).
    pub fn stored_record(&self, lane: u16, item: &Item) -> Transfer {
        let (flags, pending_id) = match item.kind {
            ItemKind::Single | ItemKind::Doomed => (0, 0),
            ItemKind::Pending => (transfer_flags::PENDING, 0),
            ItemKind::Post { pending_k, .. } => (
                transfer_flags::POST_PENDING_TRANSFER,
                self.transfer_id(lane, pending_k),
            ),
            ItemKind::Void { pending_k, .. } => (
                transfer_flags::VOID_PENDING_TRANSFER,
                self.transfer_id(lane, pending_k),
            ),
        };
        let linked = if item.linked {
            transfer_flags::LINKED
        } else {
            0
        };
        Transfer {
            id: self.transfer_id(lane, item.k),
            debit_account_id: self.account(item.debit),
            credit_account_id: self.account(item.credit),
            amount: match item.kind {
                ItemKind::Doomed => 0,
                _ => u128::from(item.amount),
            },
            pending_id,
            user_data: 0,
            timeout_s: match item.kind {
                ItemKind::Pending => self.plan.pending_timeout_s,
                _ => 0,
            },
            currency: self.currency(item.currency),
            code: TRANSFER_CODE,
            flags: flags | linked,
            timestamp: 0,
        }
    }
}

/// Accounts of currency index `c` among `accounts` spread round-robin over `currencies`.
pub fn accounts_in(accounts: u32, currencies: u32, c: u32) -> u32 {
    (accounts - c).div_ceil(currencies)
}

/// Applies an applied item's effect to `deltas` (indexed by account).
pub fn apply(deltas: &mut [Delta], item: &Item) {
    use delta::*;
    let a = i128::from(item.amount);
    let p = i128::from(item.pending_amount);
    let (d, c) = (item.debit as usize, item.credit as usize);
    match item.kind {
        ItemKind::Single => {
            deltas[d][DEBITS_POSTED] += a;
            deltas[c][CREDITS_POSTED] += a;
        }
        ItemKind::Pending => {
            deltas[d][DEBITS_PENDING] += a;
            deltas[c][CREDITS_PENDING] += a;
        }
        ItemKind::Post { .. } => {
            deltas[d][DEBITS_PENDING] -= p;
            deltas[d][DEBITS_POSTED] += a;
            deltas[c][CREDITS_PENDING] -= p;
            deltas[c][CREDITS_POSTED] += a;
        }
        ItemKind::Void { .. } => {
            deltas[d][DEBITS_PENDING] -= p;
            deltas[c][CREDITS_PENDING] -= p;
        }
        // Never applied by a correct ledger (and never counted as applied: see `LaneLedger::on_outcome`).
        ItemKind::Doomed => {}
    }
}

/// Applies the expiry of the reservation behind `item`: a pending, or the pending a post or void was meant to
/// resolve (the ledger releases it when its timeout passes).
pub fn expire(deltas: &mut [Delta], item: &Item) {
    use delta::*;
    let p = i128::from(item.pending_amount);
    deltas[item.debit as usize][DEBITS_PENDING] -= p;
    deltas[item.credit as usize][CREDITS_PENDING] -= p;
}

/// One bit per counter value: which transfers of a lane were acknowledged.
#[derive(Debug, Clone, Default)]
pub struct AckBitmap {
    words: Vec<u64>,
    count: u64,
}

impl AckBitmap {
    /// Marks `k`.
    pub fn set(&mut self, k: u32) {
        let w = (k / 64) as usize;
        if w >= self.words.len() {
            // Counters grow by one per transfer, so this grows like a Vec: amortized O(1), at most 512 MiB for u32.
            self.words.resize((w + 1).max(self.words.len() * 2), 0);
        }
        let bit = 1u64 << (k % 64);
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            self.count += 1;
        }
    }

    /// True when `k` is marked.
    pub fn contains(&self, k: u32) -> bool {
        self.words
            .get((k / 64) as usize)
            .is_some_and(|w| w & (1 << (k % 64)) != 0)
    }

    /// Marked counters.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when nothing is marked.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Marked counters, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }
}

/// Transfer-level counts of one loader (the lanes add into it after every response).
#[derive(Debug, Clone)]
pub struct LedgerTotals {
    /// Transfers sent (items of requests that were written).
    pub sent: u64,
    /// Items by result code (index = code).
    pub by_code: [u64; RESULT_NAMES.len()],
    /// Items that failed without a per-item result (`http_NNN`, `unknown`, ...).
    pub other_failures: BTreeMap<String, u64>,
    /// Items whose outcome is unknown (timeout, broken connection, unreadable response).
    pub in_doubt: u64,
    /// Pending transfers acknowledged.
    pub pending_created: u64,
    /// Posts acknowledged.
    pub posted: u64,
    /// Voids acknowledged.
    pub voided: u64,
    /// Acknowledged pendings left unresolved because the lane's queue was full.
    pub pending_unqueued: u64,
    /// Acknowledged pendings expected to expire (with a pending timeout: never resolved, or their post or void
    /// was refused).
    pub pending_expiring: u64,
    /// Linked chains answered, by outcome.
    pub linked: LedgerLinked,
    /// Up to [`MAX_EXAMPLES`] violated chains, described.
    pub chain_examples: Vec<String>,
    /// Lanes that stopped early (counter exhausted or in-doubt list full).
    pub lanes_stopped: u64,
    /// Expected balance changes, by account index.
    pub deltas: Vec<Delta>,
}

impl LedgerTotals {
    /// Empty totals for `accounts` accounts.
    pub fn new(accounts: u32) -> LedgerTotals {
        LedgerTotals {
            sent: 0,
            by_code: [0; RESULT_NAMES.len()],
            other_failures: BTreeMap::new(),
            in_doubt: 0,
            pending_created: 0,
            posted: 0,
            voided: 0,
            pending_unqueued: 0,
            pending_expiring: 0,
            linked: LedgerLinked::default(),
            chain_examples: Vec::new(),
            lanes_stopped: 0,
            deltas: vec![[0; 4]; accounts as usize],
        }
    }

    fn count_code(&mut self, code: u32, n: u64) {
        match self.by_code.get_mut(code as usize) {
            Some(c) => *c += n,
            None => {
                *self
                    .other_failures
                    .entry(format!("code_{code}"))
                    .or_insert(0) += n
            }
        }
    }

    /// Failed items by result name (`ok` and `exists` excluded).
    pub fn failed_by_code(&self) -> BTreeMap<String, u64> {
        let mut m = self.other_failures.clone();
        for (code, &n) in self.by_code.iter().enumerate() {
            if n > 0 && code as u32 != RESULT_OK && code as u32 != RESULT_EXISTS {
                m.insert(result_name(code as u32).to_string(), n);
            }
        }
        m
    }

    /// The nonzero deltas, by account index.
    pub fn touched(&self) -> Vec<(u32, Delta)> {
        self.deltas
            .iter()
            .enumerate()
            .filter(|(_, d)| d.iter().any(|&v| v != 0))
            .map(|(i, d)| (i as u32, *d))
            .collect()
    }
}

/// How a batch request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome<'a> {
    /// A response with this status and body.
    Response(u16, &'a [u8]),
    /// No usable response: the items may or may not have been applied.
    InDoubt,
}

/// One lane's generator and memory.
#[derive(Debug)]
pub struct LaneLedger {
    /// Local lane index (part of the ids).
    pub lane: u16,
    /// Seed of the new-transfer fields.
    pub seed: u64,
    rng: SmallRng,
    next_k: u32,
    queue: VecDeque<Item>,
    inflight: Vec<Item>,
    /// The whole request: head and `batch_size` records (rewritten per send).
    pub request: Vec<u8>,
    head_len: usize,
    /// The last response body.
    pub response: Vec<u8>,
    /// Acknowledged transfers (`ok` or `exists`).
    pub acked: AckBitmap,
    /// Acknowledged posts and voids, ascending by `k` (their fields depend on the queue, so they are kept whole).
    pub resolutions: Vec<Item>,
    /// Acknowledged transfers sent with the `linked` flag (chains depend on the lane's draws, not only on `k`).
    pub linked_acked: AckBitmap,
    /// Transfers whose outcome is unknown.
    pub in_doubt: Vec<Item>,
}

impl LaneLedger {
    /// A lane: `lane` is the local lane index, `global_lane` seeds it.
    pub fn new(cfg: &LedgerConfig, lane: usize, global_lane: usize) -> LaneLedger {
        let batch = cfg.plan.batch_size as usize;
        let body_len = batch * RECORD_BYTES;
        let mut request = format!("{}{body_len}\r\n\r\n", cfg.head_prefix).into_bytes();
        let head_len = request.len();
        request.resize(head_len + body_len, 0);
        let seed = mix_seed(cfg.plan.seed ^ 0x1ED6_E500, global_lane as u64);
        LaneLedger {
            lane: u16::try_from(lane).expect("HTTP/1.1 lanes are at most 50000 per phase"),
            seed,
            rng: SmallRng::seed_from_u64(mix_seed(seed, u64::MAX)),
            next_k: 1,
            queue: VecDeque::new(),
            inflight: Vec::with_capacity(batch),
            request,
            head_len,
            response: Vec::with_capacity(batch * RESULT_BYTES),
            acked: AckBitmap::default(),
            resolutions: Vec::new(),
            linked_acked: AckBitmap::default(),
            in_doubt: Vec::new(),
        }
    }

    /// Fills `request` with the next batch; false when the lane must stop (ids exhausted, or the in-doubt list
    /// could not take another batch).
    pub fn build(&mut self, cfg: &LedgerConfig) -> bool {
        let batch = cfg.plan.batch_size as usize;
        if u64::from(self.next_k) + batch as u64 >= u64::from(u32::MAX)
            || self.in_doubt.len() + batch > IN_DOUBT_CAP
        {
            return false;
        }
        self.inflight.clear();
        let plan = &cfg.plan;
        // Items of the current linked chain still to build (this one included), and the countdown value at which
        // the chain's doomed item comes (0: none).
        let (mut chain_left, mut doomed_at) = (0u32, 0u32);
        for slot in 0..batch {
            let k = self.next_k;
            self.next_k += 1;
            // Never at slot 0, so a request whose chain fails still applies its first item (and answers 200).
            if chain_left == 0
                && slot > 0
                && plan.linked_ratio > 0.0
                && self.rng.random::<f64>() < plan.linked_ratio
            {
                let room = (batch - slot) as u32;
                if room >= 2 {
                    chain_left = self.rng.random_range(2..=plan.linked_chain_max).min(room);
                    doomed_at = if self.rng.random::<f64>() < plan.linked_fail_ratio {
                        self.rng.random_range(1..=chain_left)
                    } else {
                        0
                    };
                }
            }
            let linked = chain_left > 1;
            let doomed = chain_left > 0 && chain_left == doomed_at;
            chain_left = chain_left.saturating_sub(1);
            let resolve = !doomed
                && !self.queue.is_empty()
                && (self.queue.len() >= PENDING_QUEUE_CAP
                    || self.rng.random::<f64>() < cfg.p_resolve);
            let item = if resolve {
                let p = self.queue.pop_front().expect("non-empty");
                let bare = plan.bare_resolve_ratio > 0.0
                    && self.rng.random::<f64>() < plan.bare_resolve_ratio;
                if self.rng.random::<f64>() < cfg.plan.void_ratio {
                    Item {
                        k,
                        kind: ItemKind::Void {
                            pending_k: p.k,
                            bare,
                        },
                        amount: p.amount,
                        pending_amount: p.amount,
                        linked,
                        ..p
                    }
                } else {
                    let full = p.amount < 2 || self.rng.random::<bool>();
                    let amount = if full {
                        p.amount
                    } else {
                        self.rng.random_range(1..p.amount)
                    };
                    Item {
                        k,
                        kind: ItemKind::Post {
                            pending_k: p.k,
                            full,
                            bare,
                        },
                        amount,
                        pending_amount: p.amount,
                        linked,
                        ..p
                    }
                }
            } else {
                let n = cfg.new_transfer(self.seed, k);
                Item {
                    k,
                    kind: if doomed {
                        ItemKind::Doomed
                    } else if n.pending {
                        ItemKind::Pending
                    } else {
                        ItemKind::Single
                    },
                    currency: n.currency,
                    debit: n.debit,
                    credit: n.credit,
                    amount: n.amount,
                    pending_amount: n.amount,
                    linked,
                }
            };
            let at = self.head_len + slot * RECORD_BYTES;
            cfg.request_record(self.lane, &item)
                .encode_into(&mut self.request[at..at + RECORD_BYTES]);
            self.inflight.push(item);
        }
        debug_assert_eq!(chain_left, 0, "chains end inside their batch");
        true
    }

    /// Accounts for the response (or its absence) to the batch `build` made.
    pub fn on_outcome(
        &mut self,
        cfg: &LedgerConfig,
        totals: &mut LedgerTotals,
        outcome: BatchOutcome<'_>,
    ) {
        let n = self.inflight.len();
        totals.sent += n as u64;
        match outcome {
            BatchOutcome::Response(200 | 422, body) if body.len() == n * RESULT_BYTES => {
                // Index loop: the batch buffer is reused, never moved out (no allocation per response).
                // The current chain: first index, items applied, whether it carries a doomed item.
                let (mut start, mut applied, mut doomed) = (0, 0, false);
                for i in 0..n {
                    let item = self.inflight[i];
                    let r = ItemResult::decode(&body[i * RESULT_BYTES..(i + 1) * RESULT_BYTES]);
                    totals.count_code(r.code, 1);
                    if r.applied() {
                        applied += 1;
                        self.applied(cfg, totals, item);
                    } else {
                        self.refused(cfg, totals, item, r.code);
                    }
                    doomed |= item.kind == ItemKind::Doomed;
                    if !item.linked {
                        self.chain_answered(cfg, totals, start..i + 1, applied, doomed, body);
                        (start, applied, doomed) = (i + 1, 0, false);
                    }
                }
            }
            // The API says these change nothing.
            BatchOutcome::Response(status @ (400 | 404 | 405 | 413 | 415 | 503), _) => {
                *totals
                    .other_failures
                    .entry(format!("http_{status}"))
                    .or_insert(0) += n as u64;
            }
            BatchOutcome::Response(..) | BatchOutcome::InDoubt => {
                totals.in_doubt += n as u64;
                // A doomed item cannot have been applied by a correct ledger: nothing to look up.
                self.in_doubt.extend(
                    self.inflight
                        .iter()
                        .filter(|it| it.kind != ItemKind::Doomed),
                );
            }
        }
        self.inflight.clear();
    }

    fn applied(&mut self, cfg: &LedgerConfig, totals: &mut LedgerTotals, item: Item) {
        self.acked.set(item.k);
        if item.linked {
            self.linked_acked.set(item.k);
        }
        apply(&mut totals.deltas, &item);
        match item.kind {
            // A chain-breaking item the ledger applied: `chain_answered` reports it.
            ItemKind::Single | ItemKind::Doomed => {}
            ItemKind::Pending => {
                totals.pending_created += 1;
                if self.queue.len() < PENDING_QUEUE_CAP {
                    self.queue.push_back(item);
                } else {
                    totals.pending_unqueued += 1;
                    if cfg.plan.pending_timeout_s > 0 {
                        expire(&mut totals.deltas, &item);
                        totals.pending_expiring += 1;
                    }
                }
            }
            ItemKind::Post { .. } => {
                totals.posted += 1;
                self.resolutions.push(item);
            }
            ItemKind::Void { .. } => {
                totals.voided += 1;
                self.resolutions.push(item);
            }
        }
    }

    /// A refused item: a post or void refused only because its chain failed leaves its pending pending, so it goes
    /// back to the queue; any other refused post or void leaves it reserved until it expires (with a timeout) or
    /// for good. Refused posts and voids are not retried.
    fn refused(&mut self, cfg: &LedgerConfig, totals: &mut LedgerTotals, item: Item, code: u32) {
        let Some(pending) = item.resolved_pending() else {
            return;
        };
        if code == RESULT_LINKED_EVENT_FAILED && self.queue.len() < PENDING_QUEUE_CAP {
            self.queue.push_back(pending);
        } else if cfg.plan.pending_timeout_s > 0 {
            expire(&mut totals.deltas, &pending);
            totals.pending_expiring += 1;
        }
    }

    /// Checks the answered chain `range` of the in-flight batch (a lone item is not a chain): all or nothing, and
    /// nothing when it carries a doomed item.
    fn chain_answered(
        &self,
        cfg: &LedgerConfig,
        totals: &mut LedgerTotals,
        range: std::ops::Range<usize>,
        applied: usize,
        doomed: bool,
        body: &[u8],
    ) {
        let len = range.len();
        if len < 2 {
            return;
        }
        let linked = &mut totals.linked;
        linked.chains += 1;
        linked.doomed += u64::from(doomed);
        let whole = applied == len && !doomed;
        if whole {
            linked.applied += 1;
        } else if applied == 0 {
            linked.failed += 1;
        } else {
            linked.violations += 1;
            if totals.chain_examples.len() < MAX_EXAMPLES {
                let items: Vec<String> = range
                    .map(|i| {
                        let it = &self.inflight[i];
                        let r = ItemResult::decode(&body[i * RESULT_BYTES..(i + 1) * RESULT_BYTES]);
                        format!(
                            "{:#x} {:?}: {}",
                            cfg.transfer_id(self.lane, it.k),
                            it.kind,
                            result_name(r.code)
                        )
                    })
                    .collect();
                totals.chain_examples.push(format!(
                    "linked chain applied {applied} of {len} items{}: {}",
                    if doomed {
                        " although it carried an amount-zero item"
                    } else {
                        ""
                    },
                    items.join(", ")
                ));
            }
        }
    }

    /// With a pending timeout: every pending still queued is left to expire (call once, after the lane's last
    /// response).
    pub fn abandon_queue(&mut self, cfg: &LedgerConfig, totals: &mut LedgerTotals) {
        if cfg.plan.pending_timeout_s == 0 {
            return;
        }
        for p in self.queue.drain(..) {
            expire(&mut totals.deltas, &p);
            totals.pending_expiring += 1;
        }
    }

    /// The item at acknowledged counter `k`: a kept post/void, or the recomputed new transfer.
    pub fn acked_item(&self, cfg: &LedgerConfig, k: u32) -> Item {
        if let Ok(i) = self.resolutions.binary_search_by_key(&k, |it| it.k) {
            return self.resolutions[i];
        }
        let n = cfg.new_transfer(self.seed, k);
        Item {
            k,
            kind: if n.pending {
                ItemKind::Pending
            } else {
                ItemKind::Single
            },
            currency: n.currency,
            debit: n.debit,
            credit: n.credit,
            amount: n.amount,
            pending_amount: n.amount,
            linked: self.linked_acked.contains(k),
        }
    }
}

/// A loader's ledger figures, sent to the coordinator in its report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerWorkerReport {
    /// Transfers sent.
    pub sent: u64,
    /// Applied.
    pub ok: u64,
    /// Applied before (same id and fields).
    pub exists: u64,
    /// Refused (per-item code or whole-batch HTTP error).
    pub failed: u64,
    /// Outcome unknown.
    pub in_doubt: u64,
    /// Failed transfers by result name.
    pub failed_by_code: BTreeMap<String, u64>,
    /// Pending transfers acknowledged.
    pub pending_created: u64,
    /// Posts acknowledged.
    pub posted: u64,
    /// Voids acknowledged.
    pub voided: u64,
    /// Pendings left reserved because a lane's queue was full.
    pub pending_unqueued: u64,
    /// Pendings expected to expire.
    pub pending_expiring: u64,
    /// Linked chains answered, by outcome.
    pub linked: LedgerLinked,
    /// Examples of violated chains.
    pub chain_examples: Vec<String>,
    /// Lanes that stopped early.
    pub lanes_stopped: u64,
    /// Lookup checks of the acknowledged and in-doubt transfers (none when `verify = false`).
    pub checks: Option<TransferChecks>,
    /// Expected balance changes of the touched accounts (in-doubt transfers found applied included).
    pub deltas: Vec<(u32, Delta)>,
}

impl LedgerWorkerReport {
    /// The report of `totals` (taken after verification, so in-doubt transfers found applied are in the deltas).
    pub fn new(totals: &LedgerTotals, checks: Option<TransferChecks>) -> LedgerWorkerReport {
        let failed_by_code = totals.failed_by_code();
        LedgerWorkerReport {
            sent: totals.sent,
            ok: totals.by_code[RESULT_OK as usize],
            exists: totals.by_code[RESULT_EXISTS as usize],
            failed: failed_by_code.values().sum(),
            in_doubt: totals.in_doubt,
            failed_by_code,
            pending_created: totals.pending_created,
            posted: totals.posted,
            voided: totals.voided,
            pending_unqueued: totals.pending_unqueued,
            pending_expiring: totals.pending_expiring,
            linked: totals.linked.clone(),
            chain_examples: totals.chain_examples.clone(),
            lanes_stopped: totals.lanes_stopped,
            checks,
            deltas: totals.touched(),
        }
    }
}

/// Verification figures of one loader (or, summed, of a phase).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransferChecks {
    /// Acknowledged transfers looked up.
    pub acked: u64,
    /// Of those, found with the fields sent.
    pub verified_present: u64,
    /// Acknowledged but not found.
    pub missing: u64,
    /// Found (acknowledged or in doubt) with other fields than sent.
    pub field_mismatches: u64,
    /// In-doubt transfers looked up.
    pub in_doubt: u64,
    /// Of those, found: they were applied (and count in the expected balances).
    pub in_doubt_applied: u64,
    /// Lookups that failed (the check is then incomplete).
    pub lookup_errors: u64,
    /// Up to ten examples of what went wrong.
    pub examples: Vec<String>,
}

impl TransferChecks {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &TransferChecks) {
        self.acked += other.acked;
        self.verified_present += other.verified_present;
        self.missing += other.missing;
        self.field_mismatches += other.field_mismatches;
        self.in_doubt += other.in_doubt;
        self.in_doubt_applied += other.in_doubt_applied;
        self.lookup_errors += other.lookup_errors;
        for e in &other.examples {
            self.example(e.clone());
        }
    }

    /// Keeps `e` if there is room.
    pub fn example(&mut self, e: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(e);
        }
    }

    /// True when every acknowledged transfer was found as sent and nothing failed.
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.field_mismatches == 0 && self.lookup_errors == 0
    }
}

/// Compares a lookup response (`found`: the found records, in request order) with what was expected for the
/// requested ids. Returns, per expected record, whether it was found, and counts mismatches into `checks`.
pub fn match_lookup(
    expected: &[Transfer],
    found: &[u8],
    checks: &mut TransferChecks,
) -> Result<Vec<bool>, String> {
    if found.len() % RECORD_BYTES != 0 {
        return Err(format!(
            "lookup answered {} bytes, not a multiple of {RECORD_BYTES}",
            found.len()
        ));
    }
    let mut records = found
        .chunks_exact(RECORD_BYTES)
        .map(Transfer::decode)
        .peekable();
    let mut present = Vec::with_capacity(expected.len());
    for e in expected {
        match records.peek() {
            Some(r) if r.id == e.id => {
                let r = records.next().expect("peeked");
                let same = Transfer { timestamp: 0, ..r } == *e && r.timestamp != 0;
                if !same {
                    checks.field_mismatches += 1;
                    checks.example(format!(
                        "transfer {:#x}: sent {e:?}, the ledger holds {r:?}",
                        e.id
                    ));
                }
                present.push(true);
            }
            _ => present.push(false),
        }
    }
    if records.next().is_some() {
        return Err("lookup answered records that were not asked for (or out of order)".into());
    }
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(two_phase_ratio: f64, batch_size: u32) -> LedgerPlan {
        LedgerPlan {
            accounts: 100,
            currencies: vec!["USD".into(), "EUR".into()],
            batch_size,
            zipf_exponent: 1.0,
            two_phase_ratio,
            void_ratio: 0.3,
            bare_resolve_ratio: 0.0,
            pending_timeout_s: 0,
            linked_ratio: 0.0,
            linked_chain_max: 4,
            linked_fail_ratio: 0.1,
            amount_max: 1000,
            verify: true,
            seed: 7,
        }
    }

    fn cfg(two_phase_ratio: f64, batch_size: u32) -> LedgerConfig {
        LedgerConfig::new(
            &plan(two_phase_ratio, batch_size),
            0xABCD,
            3,
            &HttpUrl::parse("http://127.0.0.1:8080/api").unwrap(),
        )
    }

    fn ok_results(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..n {
            ItemResult {
                code: RESULT_OK,
                timestamp: 1,
            }
            .encode_into(&mut v);
        }
        v
    }

    #[test]
    fn ids_and_accounts_are_distinct_and_tagged() {
        let c = cfg(0.0, 1);
        assert_eq!(c.transfer_id(5, 9) >> 64, 0xABCD);
        assert_eq!((c.transfer_id(5, 9) >> 48) & 0xFFFF, 3);
        assert_eq!((c.transfer_id(5, 9) >> 32) & 0xFFFF, 5);
        assert_eq!(c.transfer_id(5, 9) as u32, 9);
        let usd = currency_code("USD").unwrap();
        assert_eq!(c.account(0), account_id(usd, 0));
        assert_eq!(c.account(0) >> 112, ACCOUNT_ID_TAG);
        assert_ne!(c.account(1), account_id(usd, 1), "odd accounts are EUR");
        assert_eq!(accounts_in(101, 2, 0), 51);
        assert_eq!(accounts_in(101, 2, 1), 50);
    }

    #[test]
    fn new_transfers_are_reproducible_and_well_formed() {
        let c = cfg(0.5, 1);
        let mut pending = 0;
        let mut hot = 0;
        for k in 1..20_000 {
            let t = c.new_transfer(42, k);
            assert_eq!(t, c.new_transfer(42, k), "a pure function of (seed, k)");
            assert_ne!(t.debit, t.credit);
            assert!(t.debit < 100 && t.credit < 100);
            // Both accounts have the transfer's currency (index = account % currencies).
            assert_eq!(t.debit % 2, u32::from(t.currency));
            assert_eq!(t.credit % 2, u32::from(t.currency));
            assert!((1..=1000).contains(&t.amount));
            pending += u32::from(t.pending);
            hot += u32::from(t.debit < 2);
        }
        assert!((9_000..11_000).contains(&pending), "{pending}");
        // Zipf s=1 over 50 accounts: rank 1 has 1/H(50) ≈ 22 % of the draws.
        assert!((3_900..4_900).contains(&hot), "{hot}");
    }

    #[test]
    fn delta_model_follows_the_api() {
        let mut d = vec![[0i128; 4]; 4];
        let pending = Item {
            k: 1,
            kind: ItemKind::Pending,
            currency: 0,
            debit: 0,
            credit: 2,
            amount: 100,
            pending_amount: 100,
            linked: false,
        };
        apply(&mut d, &pending);
        assert_eq!(d[0], [100, 0, 0, 0]);
        assert_eq!(d[2], [0, 0, 100, 0]);
        // Partial post: 30 posted, the other 70 released.
        apply(
            &mut d,
            &Item {
                k: 2,
                kind: ItemKind::Post {
                    pending_k: 1,
                    full: false,
                    bare: false,
                },
                amount: 30,
                ..pending
            },
        );
        assert_eq!(d[0], [0, 30, 0, 0]);
        assert_eq!(d[2], [0, 0, 0, 30]);
        // A second pending, voided.
        apply(&mut d, &Item { k: 3, ..pending });
        apply(
            &mut d,
            &Item {
                k: 4,
                kind: ItemKind::Void {
                    pending_k: 3,
                    bare: true,
                },
                ..pending
            },
        );
        assert_eq!(d[0], [0, 30, 0, 0]);
        // Full post and a single transfer.
        apply(&mut d, &Item { k: 5, ..pending });
        apply(
            &mut d,
            &Item {
                k: 6,
                kind: ItemKind::Post {
                    pending_k: 5,
                    full: true,
                    bare: false,
                },
                ..pending
            },
        );
        apply(
            &mut d,
            &Item {
                k: 7,
                kind: ItemKind::Single,
                debit: 2,
                credit: 0,
                amount: 5,
                pending_amount: 5,
                ..pending
            },
        );
        assert_eq!(d[0], [0, 130, 0, 5]);
        assert_eq!(d[2], [0, 5, 0, 130]);
    }

    #[test]
    fn lane_batches_two_phase_and_in_doubt() {
        let c = cfg(1.0, 8);
        let mut lane = LaneLedger::new(&c, 2, 7);
        let mut totals = LedgerTotals::new(100);
        let mut posts_with_zero_amount = 0;
        for round in 0..200 {
            assert!(lane.build(&c));
            let body = &lane.request[lane.head_len..];
            assert_eq!(body.len(), 8 * RECORD_BYTES);
            for (slot, rec) in body.chunks_exact(RECORD_BYTES).enumerate() {
                let t = Transfer::decode(rec);
                let item = lane.inflight[slot];
                assert_eq!(t.id, c.transfer_id(2, item.k));
                assert_eq!(t.code, TRANSFER_CODE);
                match item.kind {
                    ItemKind::Post { full, .. } => {
                        assert_eq!(t.flags, transfer_flags::POST_PENDING_TRANSFER);
                        assert_ne!(t.pending_id, 0);
                        posts_with_zero_amount += u32::from(full && t.amount == 0);
                    }
                    ItemKind::Void { .. } => assert_eq!((t.flags, t.amount), (8, 0)),
                    ItemKind::Pending => assert_eq!(t.flags, transfer_flags::PENDING),
                    ItemKind::Single => assert_eq!(t.flags, 0),
                    ItemKind::Doomed => panic!("no chains in this stream"),
                }
            }
            let outcome = if round == 50 {
                BatchOutcome::InDoubt
            } else {
                BatchOutcome::Response(200, &ok_results(8))
            };
            let results = ok_results(8);
            let outcome = match outcome {
                BatchOutcome::Response(s, _) => BatchOutcome::Response(s, &results),
                o => o,
            };
            lane.on_outcome(&c, &mut totals, outcome);
        }
        assert_eq!(totals.sent, 1600);
        assert_eq!(totals.in_doubt, 8);
        assert_eq!(lane.in_doubt.len(), 8);
        assert_eq!(lane.acked.len(), 1592);
        assert!(totals.pending_created > 300, "{}", totals.pending_created);
        assert!(totals.posted > 100 && totals.voided > 30);
        assert!(posts_with_zero_amount > 0);
        // Every post/void resolves an acknowledged pending of this lane, once.
        let mut resolved = std::collections::HashSet::new();
        for r in &lane.resolutions {
            let (ItemKind::Post { pending_k, .. } | ItemKind::Void { pending_k, .. }) = r.kind
            else {
                panic!("not a resolution")
            };
            assert!(lane.acked.contains(pending_k));
            assert!(resolved.insert(pending_k));
            assert!(pending_k < r.k);
            assert!(r.amount <= r.pending_amount);
        }
        // Recomputing acknowledged items gives what was sent, and the totals match a replay.
        let mut replay = vec![[0i128; 4]; 100];
        for k in lane.acked.iter() {
            apply(&mut replay, &lane.acked_item(&c, k));
        }
        assert_eq!(replay, totals.deltas);
        // Money is conserved per currency: pending and posted credits equal debits.
        for cur in 0..2u32 {
            let mut sum = [0i128; 4];
            for (i, d) in totals.deltas.iter().enumerate() {
                if i as u32 % 2 == cur {
                    for f in 0..4 {
                        sum[f] += d[f];
                    }
                }
            }
            assert_eq!(sum[0], sum[2]);
            assert_eq!(sum[1], sum[3]);
        }
    }

    #[test]
    fn failed_items_are_counted_by_name() {
        let c = cfg(0.0, 3);
        let mut lane = LaneLedger::new(&c, 0, 0);
        let mut totals = LedgerTotals::new(100);
        assert!(lane.build(&c));
        let mut body = Vec::new();
        for code in [0, 11, 1] {
            ItemResult { code, timestamp: 0 }.encode_into(&mut body);
        }
        lane.on_outcome(&c, &mut totals, BatchOutcome::Response(200, &body));
        assert!(lane.build(&c));
        lane.on_outcome(&c, &mut totals, BatchOutcome::Response(503, b"{}"));
        assert!(lane.build(&c));
        lane.on_outcome(&c, &mut totals, BatchOutcome::Response(200, b"short"));
        let f = totals.failed_by_code();
        assert_eq!(f["debit_account_not_found"], 1);
        assert_eq!(f["linked_event_failed"], 1);
        assert_eq!(f["http_503"], 3);
        assert_eq!(
            totals.in_doubt, 3,
            "an unreadable 200 leaves its items in doubt"
        );
        assert_eq!(lane.acked.len(), 1);
        assert_eq!(totals.sent, 9);
    }

    #[test]
    fn lookup_matching_finds_missing_and_changed() {
        let c = cfg(0.0, 1);
        let lane = LaneLedger::new(&c, 0, 0);
        let expected: Vec<Transfer> = (1..=4)
            .map(|k| c.stored_record(0, &lane.acked_item(&c, k)))
            .collect();
        let mut found = Vec::new();
        let mut rec = [0u8; RECORD_BYTES];
        // 1 as sent, 2 missing, 3 with another amount, 4 as sent.
        for (i, e) in expected.iter().enumerate() {
            let mut t = Transfer { timestamp: 5, ..*e };
            match i {
                1 => continue,
                2 => t.amount += 1,
                _ => {}
            }
            t.encode_into(&mut rec);
            found.extend_from_slice(&rec);
        }
        let mut checks = TransferChecks::default();
        let present = match_lookup(&expected, &found, &mut checks).unwrap();
        assert_eq!(present, vec![true, false, true, true]);
        assert_eq!(checks.field_mismatches, 1);
        assert_eq!(checks.examples.len(), 1);
        // A zero timestamp is a mismatch too (the ledger sets it).
        let mut zero_ts = Vec::new();
        expected[0].encode_into(&mut rec);
        zero_ts.extend_from_slice(&rec);
        let mut checks = TransferChecks::default();
        match_lookup(&expected[..1], &zero_ts, &mut checks).unwrap();
        assert_eq!(checks.field_mismatches, 1);
        assert!(match_lookup(&expected[..1], &found[..10], &mut checks).is_err());
    }

    /// Results a correct ledger gives `items`: a chain with a doomed item fails whole (the doomed item with
    /// `amount_must_not_be_zero`, the others `linked_event_failed`); `refuse(item)` may refuse other items with a
    /// code, which fails their chain the same way. With `chains_atomic = false` the "ledger" ignores `linked`.
    fn answer(
        items: &[Item],
        chains_atomic: bool,
        refuse: impl Fn(&Item) -> Option<u32>,
    ) -> Vec<u8> {
        let own = |it: &Item| {
            if it.kind == ItemKind::Doomed {
                Some(15)
            } else {
                refuse(it)
            }
        };
        let mut codes = vec![RESULT_OK; items.len()];
        let mut start = 0;
        for (i, it) in items.iter().enumerate() {
            if it.linked {
                continue;
            }
            let chain = start..i + 1;
            start = i + 1;
            if !chains_atomic {
                for j in chain {
                    codes[j] = own(&items[j]).unwrap_or(RESULT_OK);
                }
                continue;
            }
            if let Some(bad) = chain.clone().find(|&j| own(&items[j]).is_some()) {
                for j in chain {
                    codes[j] = RESULT_LINKED_EVENT_FAILED;
                }
                codes[bad] = own(&items[bad]).expect("found");
            }
        }
        let mut v = Vec::new();
        for code in codes {
            ItemResult {
                code,
                timestamp: u64::from(code == RESULT_OK),
            }
            .encode_into(&mut v);
        }
        v
    }

    fn pending_sums(totals: &LedgerTotals) -> (i128, i128) {
        totals.deltas.iter().fold((0, 0), |(d, c), x| {
            (d + x[delta::DEBITS_PENDING], c + x[delta::CREDITS_PENDING])
        })
    }

    #[test]
    fn chains_stay_inside_batches_and_are_checked_whole() {
        let plan = LedgerPlan {
            linked_ratio: 0.4,
            linked_chain_max: 5,
            linked_fail_ratio: 0.3,
            ..plan(0.5, 8)
        };
        let c = LedgerConfig::new(&plan, 1, 0, &HttpUrl::parse("http://127.0.0.1:1").unwrap());
        let mut lane = LaneLedger::new(&c, 0, 0);
        let mut totals = LedgerTotals::new(100);
        let (mut doomed_sent, mut linked_sent) = (0, 0);
        for _ in 0..300 {
            assert!(lane.build(&c));
            let items = lane.inflight.clone();
            assert!(!items[0].linked, "slot 0 never starts a chain");
            assert!(!items[7].linked, "a chain never crosses the batch end");
            for (slot, (it, rec)) in items
                .iter()
                .zip(lane.request[lane.head_len..].chunks_exact(RECORD_BYTES))
                .enumerate()
            {
                let t = Transfer::decode(rec);
                assert_eq!(t.flags & transfer_flags::LINKED != 0, it.linked);
                linked_sent += u32::from(it.linked);
                if it.kind == ItemKind::Doomed {
                    doomed_sent += 1;
                    assert_eq!(t.amount, 0);
                    assert!(slot > 0, "slot 0 is never part of a chain");
                    assert!(
                        it.linked || items[slot - 1].linked,
                        "doomed items sit in chains"
                    );
                }
            }
            let body = answer(&items, true, |_| None);
            lane.on_outcome(&c, &mut totals, BatchOutcome::Response(200, &body));
        }
        assert!(
            linked_sent > 300 && doomed_sent > 30,
            "{linked_sent} {doomed_sent}"
        );
        assert_eq!(totals.linked.doomed, doomed_sent);
        assert_eq!(totals.linked.violations, 0);
        // Only doomed chains fail here, and every chain is counted once.
        assert_eq!(totals.linked.failed, totals.linked.doomed);
        assert_eq!(
            totals.linked.chains,
            totals.linked.applied + totals.linked.failed
        );
        // Posts and voids refused with their chain went back to the queue and were resolved later: every acked
        // pending is resolved once at most, and the replay of acknowledged items gives the totals.
        let mut replay = vec![[0i128; 4]; 100];
        for k in lane.acked.iter() {
            let it = lane.acked_item(&c, k);
            assert_ne!(it.kind, ItemKind::Doomed);
            apply(&mut replay, &it);
            // Recomputed records carry the linked flag they were sent with.
            let sent = c.stored_record(0, &it);
            assert_eq!(
                sent.flags & transfer_flags::LINKED != 0,
                lane.linked_acked.contains(k)
            );
        }
        assert_eq!(replay, totals.deltas);

        // A ledger that ignores `linked` applies the rest of a doomed chain: every doomed chain is a violation.
        let mut lane = LaneLedger::new(&c, 0, 0);
        let mut totals = LedgerTotals::new(100);
        for _ in 0..300 {
            assert!(lane.build(&c));
            let body = answer(&lane.inflight.clone(), false, |_| None);
            lane.on_outcome(&c, &mut totals, BatchOutcome::Response(200, &body));
        }
        assert!(totals.linked.doomed > 10);
        assert_eq!(totals.linked.violations, totals.linked.doomed);
        assert!(!totals.chain_examples.is_empty());
        assert!(totals.chain_examples[0].contains("amount_must_not_be_zero"));
    }

    #[test]
    fn bare_resolutions_and_expiring_pendings() {
        let plan = LedgerPlan {
            bare_resolve_ratio: 1.0,
            pending_timeout_s: 5,
            ..plan(1.0, 8)
        };
        let c = LedgerConfig::new(&plan, 1, 0, &HttpUrl::parse("http://127.0.0.1:1").unwrap());
        let mut lane = LaneLedger::new(&c, 0, 0);
        let mut totals = LedgerTotals::new(100);
        let mut resolutions = 0;
        for round in 0..200 {
            assert!(lane.build(&c));
            let items = lane.inflight.clone();
            for (it, rec) in items
                .iter()
                .zip(lane.request[lane.head_len..].chunks_exact(RECORD_BYTES))
            {
                let t = Transfer::decode(rec);
                match it.kind {
                    ItemKind::Post { bare, .. } | ItemKind::Void { bare, .. } => {
                        assert!(bare);
                        assert_eq!(
                            (t.debit_account_id, t.credit_account_id, t.currency),
                            (0, 0, 0)
                        );
                        // The stored record carries the pending's accounts and currency.
                        let stored = c.stored_record(0, it);
                        assert_ne!(stored.debit_account_id, 0);
                        assert_ne!(stored.currency, 0);
                        resolutions += 1;
                    }
                    ItemKind::Pending => assert_eq!(t.timeout_s, 5),
                    _ => assert_eq!(t.timeout_s, 0),
                }
            }
            // Every third post arrives after its pending expired.
            let body = answer(&items, true, |it| {
                matches!(it.kind, ItemKind::Post { .. } if it.k % 3 == 0).then_some(25)
            });
            let outcome = if round == 100 {
                BatchOutcome::InDoubt
            } else {
                BatchOutcome::Response(200, &body)
            };
            lane.on_outcome(&c, &mut totals, outcome);
        }
        assert!(resolutions > 200, "{resolutions}");
        assert!(totals.by_code[25] > 20);
        // Before the end, some reservations are still held; once the queue is left to expire and the in-doubt
        // batch is settled (here: not applied, so its posts' pendings expire), nothing stays reserved.
        assert_ne!(pending_sums(&totals), (0, 0));
        lane.abandon_queue(&c, &mut totals);
        for it in &lane.in_doubt {
            if matches!(it.kind, ItemKind::Post { .. } | ItemKind::Void { .. }) {
                expire(&mut totals.deltas, it);
            }
        }
        assert_eq!(pending_sums(&totals), (0, 0));
        assert!(totals.pending_expiring > totals.by_code[25]);
    }

    #[test]
    fn bitmap_iterates_in_order() {
        let mut b = AckBitmap::default();
        for k in [1, 63, 64, 65, 1000, 1000] {
            b.set(k);
        }
        assert_eq!(b.len(), 5);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![1, 63, 64, 65, 1000]);
        assert!(b.contains(64) && !b.contains(2) && !b.contains(99_999));
    }
}
