//! Accounts, transfers, flags, currencies and result codes: the ledger's vocabulary (see `API.md`).
//!
//! Everything here is plain data; the byte and JSON forms live in [`crate::codec`], the rules in [`crate::state`].

/// Size of one account or transfer record on the wire and on disk.
pub const RECORD_BYTES: usize = 128;
/// Size of one id in a lookup request body and in an expiry log payload.
pub const ID_BYTES: usize = 16;
/// Size of one per-item result on the wire.
pub const RESULT_BYTES: usize = 16;
/// Most items one batch request may carry.
pub const MAX_BATCH: usize = 8190;

/// An account: balances are kept by the server, the other fields are chosen by the client at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Account {
    /// Client-chosen id: nonzero and not `u128::MAX`.
    pub id: u128,
    /// Sum of the pending (reserved, not yet posted) debits.
    pub debits_pending: u128,
    /// Sum of the posted debits.
    pub debits_posted: u128,
    /// Sum of the pending credits.
    pub credits_pending: u128,
    /// Sum of the posted credits.
    pub credits_posted: u128,
    /// Opaque client data.
    pub user_data: u128,
    /// Currency code, see [`currency_from_str`].
    pub currency: u32,
    /// Chart-of-accounts code, nonzero.
    pub code: u16,
    /// Bits of [`account_flags`].
    pub flags: u16,
    /// Commit timestamp in ns since the Unix epoch (zero in a create request).
    pub timestamp: u64,
}

/// A transfer: moves `amount` from `debit_account_id` to `credit_account_id`, immediately or in two phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfer {
    /// Client-chosen id: nonzero and not `u128::MAX`.
    pub id: u128,
    /// The account debited.
    pub debit_account_id: u128,
    /// The account credited.
    pub credit_account_id: u128,
    /// Minor units moved (for post/void: see `API.md`).
    pub amount: u128,
    /// For post/void: the pending transfer's id; otherwise zero.
    pub pending_id: u128,
    /// Opaque client data.
    pub user_data: u128,
    /// Pending only: seconds until the reservation expires (0 = never).
    pub timeout_s: u32,
    /// Currency code; must equal both accounts' currency.
    pub currency: u32,
    /// Nonzero transfer code.
    pub code: u16,
    /// Bits of [`transfer_flags`].
    pub flags: u16,
    /// Commit timestamp in ns since the Unix epoch (zero in a create request).
    pub timestamp: u64,
}

impl Transfer {
    /// Whether this transfer posts or voids a pending transfer.
    pub fn is_post_or_void(&self) -> bool {
        self.flags & (transfer_flags::POST_PENDING_TRANSFER | transfer_flags::VOID_PENDING_TRANSFER)
            != 0
    }
}

/// Account flag bits.
pub mod account_flags {
    /// Chain this item to the next one of the batch (all-or-nothing).
    pub const LINKED: u16 = 1 << 0;
    /// Refuse a debit that would make `debits_pending + debits_posted > credits_posted`.
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1 << 1;
    /// Refuse a credit that would make `credits_pending + credits_posted > debits_posted`.
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 1 << 2;
    /// Every defined bit; the others are reserved.
    pub const ALL: u16 = LINKED | DEBITS_MUST_NOT_EXCEED_CREDITS | CREDITS_MUST_NOT_EXCEED_DEBITS;
    /// The JSON name of each bit, in bit order.
    pub const NAMES: &[(u16, &str)] = &[
        (LINKED, "linked"),
        (
            DEBITS_MUST_NOT_EXCEED_CREDITS,
            "debits_must_not_exceed_credits",
        ),
        (
            CREDITS_MUST_NOT_EXCEED_DEBITS,
            "credits_must_not_exceed_debits",
        ),
    ];
}

/// Transfer flag bits.
pub mod transfer_flags {
    /// Chain this item to the next one of the batch (all-or-nothing).
    pub const LINKED: u16 = 1 << 0;
    /// Reserve the amount (first phase of a two-phase transfer).
    pub const PENDING: u16 = 1 << 1;
    /// Post (all or part of) a pending transfer.
    pub const POST_PENDING_TRANSFER: u16 = 1 << 2;
    /// Release a pending transfer's reservation.
    pub const VOID_PENDING_TRANSFER: u16 = 1 << 3;
    /// Every defined bit; the others are reserved.
    pub const ALL: u16 = LINKED | PENDING | POST_PENDING_TRANSFER | VOID_PENDING_TRANSFER;
    /// The JSON name of each bit, in bit order.
    pub const NAMES: &[(u16, &str)] = &[
        (LINKED, "linked"),
        (PENDING, "pending"),
        (POST_PENDING_TRANSFER, "post_pending_transfer"),
        (VOID_PENDING_TRANSFER, "void_pending_transfer"),
    ];
}

/// Defines [`ResultCode`] and its name table from one list, so names and numbers cannot drift apart.
macro_rules! result_codes {
    ($($(#[$doc:meta])* $variant:ident = $n:literal => $name:literal,)*) => {
        /// Per-item outcome of a create request (`API.md`, "Result codes").
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum ResultCode {
            $($(#[$doc])* $variant = $n,)*
        }

        impl ResultCode {
            /// Every code, in numeric order (index = number).
            pub const ALL: &'static [ResultCode] = &[$(ResultCode::$variant,)*];

            /// The snake_case name used in JSON.
            pub fn name(self) -> &'static str {
                match self {
                    $(ResultCode::$variant => $name,)*
                }
            }

            /// The code with this number, if defined.
            pub fn from_u32(n: u32) -> Option<ResultCode> {
                match n {
                    $($n => Some(ResultCode::$variant),)*
                    _ => None,
                }
            }

            /// The code with this JSON name, if defined.
            pub fn from_name(name: &str) -> Option<ResultCode> {
                match name {
                    $($name => Some(ResultCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

result_codes! {
    /// Applied.
    Ok = 0 => "ok",
    /// Another item of its linked chain failed.
    LinkedEventFailed = 1 => "linked_event_failed",
    /// The batch ended inside a linked chain.
    LinkedEventChainOpen = 2 => "linked_event_chain_open",
    /// Same id and fields already applied; carries the original timestamp.
    Exists = 3 => "exists",
    /// Same id already used for different fields.
    ExistsWithDifferentFields = 4 => "exists_with_different_fields",
    /// Id is 0 or `u128::MAX`.
    IdMustNotBeZero = 5 => "id_must_not_be_zero",
    /// A reserved field or a server-set balance is nonzero.
    ReservedField = 6 => "reserved_field",
    /// An undefined flag bit is set.
    ReservedFlag = 7 => "reserved_flag",
    /// Flags that exclude each other are both set.
    FlagsAreMutuallyExclusive = 8 => "flags_are_mutually_exclusive",
    /// Currency is not three ASCII capital letters.
    CurrencyInvalid = 9 => "currency_invalid",
    /// Code is zero.
    CodeMustNotBeZero = 10 => "code_must_not_be_zero",
    /// The debit account does not exist.
    DebitAccountNotFound = 11 => "debit_account_not_found",
    /// The credit account does not exist.
    CreditAccountNotFound = 12 => "credit_account_not_found",
    /// Debit and credit account are the same.
    AccountsMustBeDifferent = 13 => "accounts_must_be_different",
    /// Transfer and account currencies differ.
    CurrencyMismatch = 14 => "currency_mismatch",
    /// Amount is zero where it must not be.
    AmountMustNotBeZero = 15 => "amount_must_not_be_zero",
    /// `pending_id` set on a transfer that is not a post/void.
    PendingIdMustBeZero = 16 => "pending_id_must_be_zero",
    /// Post/void without `pending_id`.
    PendingIdRequired = 17 => "pending_id_required",
    /// `pending_id` names no transfer.
    PendingTransferNotFound = 18 => "pending_transfer_not_found",
    /// `pending_id` names a transfer not created pending.
    PendingTransferNotPending = 19 => "pending_transfer_not_pending",
    /// Post/void accounts differ from the pending transfer's.
    PendingTransferHasDifferentAccounts = 20 => "pending_transfer_has_different_accounts",
    /// Post/void currency differs from the pending transfer's.
    PendingTransferHasDifferentCurrency = 21 => "pending_transfer_has_different_currency",
    /// Post above the reserved amount, or void amount not the reserved amount.
    ExceedsPendingAmount = 22 => "exceeds_pending_amount",
    /// The pending transfer was already posted.
    PendingTransferAlreadyPosted = 23 => "pending_transfer_already_posted",
    /// The pending transfer was already voided.
    PendingTransferAlreadyVoided = 24 => "pending_transfer_already_voided",
    /// The pending transfer expired (or is past its deadline).
    PendingTransferExpired = 25 => "pending_transfer_expired",
    /// `timeout_s` set on a transfer that is not pending.
    TimeoutReservedForPending = 26 => "timeout_reserved_for_pending",
    /// The debit account's `debits_must_not_exceed_credits` would break.
    ExceedsCredits = 27 => "exceeds_credits",
    /// The credit account's `credits_must_not_exceed_debits` would break.
    ExceedsDebits = 28 => "exceeds_debits",
    /// A balance (or pending + posted) would exceed `u128::MAX`.
    Overflow = 29 => "overflow",
    /// The client set `timestamp`.
    TimestampMustBeZero = 30 => "timestamp_must_be_zero",
    /// The configured account or transfer limit is reached.
    CapacityExceeded = 31 => "capacity_exceeded",
}

impl ResultCode {
    /// `ok` or `exists`: the id is applied after this item (now or earlier).
    pub fn is_success(self) -> bool {
        matches!(self, ResultCode::Ok | ResultCode::Exists)
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One item's outcome: the code and, for `ok` and `exists`, the stored record's timestamp (zero otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemResult {
    /// What happened.
    pub code: ResultCode,
    /// The stored record's commit timestamp (ns) for `ok`/`exists`, else zero.
    pub timestamp: u64,
}

impl ItemResult {
    /// A failed item (timestamp zero).
    pub fn failed(code: ResultCode) -> ItemResult {
        ItemResult { code, timestamp: 0 }
    }
}

/// How a whole batch went, which decides the HTTP status (`API.md`, "Status codes of the batch endpoints").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// At least one item was applied: `200`.
    Applied,
    /// Every item answered `exists`: `200`.
    AllExist,
    /// Nothing applied and something failed: `422` with this reason (the first failure that is not
    /// `linked_event_failed`, since that one only points at another item).
    Rejected(ResultCode),
}

/// Classifies a batch's results (an empty slice counts as all-exist; batches are never empty).
pub fn batch_outcome(results: &[ItemResult]) -> BatchOutcome {
    if results.iter().any(|r| r.code == ResultCode::Ok) {
        return BatchOutcome::Applied;
    }
    let mut fallback = None;
    for r in results {
        match r.code {
            ResultCode::Ok | ResultCode::Exists => {}
            ResultCode::LinkedEventFailed => fallback = fallback.or(Some(r.code)),
            code => return BatchOutcome::Rejected(code),
        }
    }
    fallback.map_or(BatchOutcome::AllExist, BatchOutcome::Rejected)
}

/// The kind of a log record (`API.md`, "On-disk format").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RecordKind {
    /// Payload: applied account records.
    Accounts = 1,
    /// Payload: applied transfer records.
    Transfers = 2,
    /// Payload: 16-byte ids of pending transfers that expired.
    Expiries = 3,
}

impl RecordKind {
    /// The kind with this number, if defined.
    pub fn from_u16(n: u16) -> Option<RecordKind> {
        match n {
            1 => Some(RecordKind::Accounts),
            2 => Some(RecordKind::Transfers),
            3 => Some(RecordKind::Expiries),
            _ => None,
        }
    }

    /// Size of one payload item: a record or an id.
    pub fn item_bytes(self) -> usize {
        match self {
            RecordKind::Accounts | RecordKind::Transfers => RECORD_BYTES,
            RecordKind::Expiries => ID_BYTES,
        }
    }
}

/// Encodes a three-capital-letter currency (`"USD"` → `0x00445355`); `None` for anything else.
pub fn currency_from_str(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    if b.len() != 3 {
        return None;
    }
    let c = u32::from_le_bytes([b[0], b[1], b[2], 0]);
    currency_is_valid(c).then_some(c)
}

/// Decodes a valid currency code to its three letters; `None` if it is not valid.
pub fn currency_to_string(c: u32) -> Option<String> {
    if !currency_is_valid(c) {
        return None;
    }
    let b = c.to_le_bytes();
    Some(b[..3].iter().map(|&x| x as char).collect())
}

/// Whether `c` is three ASCII capital letters followed by a zero byte.
pub fn currency_is_valid(c: u32) -> bool {
    let b = c.to_le_bytes();
    b[3] == 0 && b[..3].iter().all(u8::is_ascii_uppercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_are_dense_and_round_trip() {
        assert_eq!(ResultCode::ALL.len(), 32);
        for (i, &c) in ResultCode::ALL.iter().enumerate() {
            assert_eq!(c as u32, i as u32);
            assert_eq!(ResultCode::from_u32(i as u32), Some(c));
            assert_eq!(ResultCode::from_name(c.name()), Some(c));
        }
        assert_eq!(ResultCode::from_u32(32), None);
        assert_eq!(ResultCode::from_name("nope"), None);
        assert_eq!(ResultCode::CapacityExceeded as u32, 31);
        assert_eq!(
            ResultCode::TimestampMustBeZero.name(),
            "timestamp_must_be_zero"
        );
        assert!(ResultCode::Exists.is_success() && ResultCode::Ok.is_success());
        assert!(!ResultCode::LinkedEventFailed.is_success());
    }

    #[test]
    fn currencies() {
        assert_eq!(currency_from_str("USD"), Some(0x0044_5355));
        assert_eq!(currency_to_string(0x0044_5355).as_deref(), Some("USD"));
        for bad in ["usd", "US", "USDX", "U$D", ""] {
            assert_eq!(currency_from_str(bad), None, "{bad}");
        }
        assert!(!currency_is_valid(0));
        assert!(!currency_is_valid(0x4144_5355));
        assert_eq!(currency_to_string(0), None);
    }

    #[test]
    fn outcomes() {
        let r = |c| ItemResult::failed(c);
        assert_eq!(
            batch_outcome(&[r(ResultCode::Exists), r(ResultCode::Ok)]),
            BatchOutcome::Applied
        );
        assert_eq!(
            batch_outcome(&[r(ResultCode::Exists)]),
            BatchOutcome::AllExist
        );
        assert_eq!(
            batch_outcome(&[
                r(ResultCode::LinkedEventFailed),
                r(ResultCode::DebitAccountNotFound)
            ]),
            BatchOutcome::Rejected(ResultCode::DebitAccountNotFound)
        );
        assert_eq!(
            batch_outcome(&[r(ResultCode::Exists), r(ResultCode::LinkedEventFailed)]),
            BatchOutcome::Rejected(ResultCode::LinkedEventFailed)
        );
        assert_eq!(RecordKind::from_u16(3), Some(RecordKind::Expiries));
        assert_eq!(RecordKind::from_u16(0), None);
    }
}
