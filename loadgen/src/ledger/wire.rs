//! The ledger-writer wire format (`servers/ledger-writer/API.md`), written independently of the server crate:
//! loadgen speaks only wire protocols. Every integer is little-endian; records are 128 bytes, per-item results 16.

/// Size of one account or transfer record.
pub const RECORD_BYTES: usize = 128;
/// Size of one id in a lookup request body.
pub const ID_BYTES: usize = 16;
/// Size of one per-item result.
pub const RESULT_BYTES: usize = 16;
/// Most items one batch request may carry.
pub const MAX_BATCH: usize = 8190;

/// Transfer flag bits.
pub mod transfer_flags {
    /// Chained to the next item.
    pub const LINKED: u16 = 1 << 0;
    /// Created pending (a reservation).
    pub const PENDING: u16 = 1 << 1;
    /// Posts a pending transfer.
    pub const POST_PENDING_TRANSFER: u16 = 1 << 2;
    /// Voids a pending transfer.
    pub const VOID_PENDING_TRANSFER: u16 = 1 << 3;
}

/// Result codes, indexed by their `u32` value.
pub const RESULT_NAMES: [&str; 32] = [
    "ok",
    "linked_event_failed",
    "linked_event_chain_open",
    "exists",
    "exists_with_different_fields",
    "id_must_not_be_zero",
    "reserved_field",
    "reserved_flag",
    "flags_are_mutually_exclusive",
    "currency_invalid",
    "code_must_not_be_zero",
    "debit_account_not_found",
    "credit_account_not_found",
    "accounts_must_be_different",
    "currency_mismatch",
    "amount_must_not_be_zero",
    "pending_id_must_be_zero",
    "pending_id_required",
    "pending_transfer_not_found",
    "pending_transfer_not_pending",
    "pending_transfer_has_different_accounts",
    "pending_transfer_has_different_currency",
    "exceeds_pending_amount",
    "pending_transfer_already_posted",
    "pending_transfer_already_voided",
    "pending_transfer_expired",
    "timeout_reserved_for_pending",
    "exceeds_credits",
    "exceeds_debits",
    "overflow",
    "timestamp_must_be_zero",
    "capacity_exceeded",
];

/// Result code `ok`: applied.
pub const RESULT_OK: u32 = 0;
/// Result code `linked_event_failed`: another item of the linked chain failed.
pub const RESULT_LINKED_EVENT_FAILED: u32 = 1;
/// Result code `exists`: the same id with the same fields was applied before.
pub const RESULT_EXISTS: u32 = 3;

/// The name of a result code (`unknown` for codes the API does not define).
pub fn result_name(code: u32) -> &'static str {
    RESULT_NAMES
        .get(code as usize)
        .copied()
        .unwrap_or("unknown")
}

/// `USD` → `0x00445355`; `None` unless exactly three ASCII capital letters.
pub fn currency_code(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    (b.len() == 3 && b.iter().all(u8::is_ascii_uppercase))
        .then(|| u32::from_le_bytes([b[0], b[1], b[2], 0]))
}

/// `0x00445355` → `USD` (other values as hex).
pub fn currency_name(code: u32) -> String {
    let b = code.to_le_bytes();
    if b[3] == 0 && b[..3].iter().all(u8::is_ascii_uppercase) {
        String::from_utf8_lossy(&b[..3]).into_owned()
    } else {
        format!("{code:#010x}")
    }
}

fn put_u128(out: &mut [u8], o: usize, v: u128) {
    out[o..o + 16].copy_from_slice(&v.to_le_bytes());
}

fn u128_at(b: &[u8], o: usize) -> u128 {
    u128::from_le_bytes(b[o..o + 16].try_into().expect("16 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}

/// An account record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Account {
    /// Client-chosen id.
    pub id: u128,
    /// Pending debits (server-set).
    pub debits_pending: u128,
    /// Posted debits (server-set).
    pub debits_posted: u128,
    /// Pending credits (server-set).
    pub credits_pending: u128,
    /// Posted credits (server-set).
    pub credits_posted: u128,
    /// Opaque.
    pub user_data: u128,
    /// Currency code ([`currency_code`]).
    pub currency: u32,
    /// Chart-of-accounts code, nonzero.
    pub code: u16,
    /// Account flags.
    pub flags: u16,
    /// Commit timestamp (server-set).
    pub timestamp: u64,
}

impl Account {
    /// Writes the 128-byte record into `out` (which must be exactly [`RECORD_BYTES`] long).
    pub fn encode_into(&self, out: &mut [u8]) {
        assert_eq!(out.len(), RECORD_BYTES);
        put_u128(out, 0, self.id);
        put_u128(out, 16, self.debits_pending);
        put_u128(out, 32, self.debits_posted);
        put_u128(out, 48, self.credits_pending);
        put_u128(out, 64, self.credits_posted);
        put_u128(out, 80, self.user_data);
        out[96..100].copy_from_slice(&self.currency.to_le_bytes());
        out[100..102].copy_from_slice(&self.code.to_le_bytes());
        out[102..104].copy_from_slice(&self.flags.to_le_bytes());
        out[104..112].copy_from_slice(&self.timestamp.to_le_bytes());
        out[112..128].fill(0);
    }

    /// Reads a record (`b` must be [`RECORD_BYTES`] long).
    pub fn decode(b: &[u8]) -> Account {
        assert_eq!(b.len(), RECORD_BYTES);
        Account {
            id: u128_at(b, 0),
            debits_pending: u128_at(b, 16),
            debits_posted: u128_at(b, 32),
            credits_pending: u128_at(b, 48),
            credits_posted: u128_at(b, 64),
            user_data: u128_at(b, 80),
            currency: u32_at(b, 96),
            code: u16_at(b, 100),
            flags: u16_at(b, 102),
            timestamp: u64_at(b, 104),
        }
    }
}

/// A transfer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfer {
    /// Client-chosen id.
    pub id: u128,
    /// Debited account.
    pub debit_account_id: u128,
    /// Credited account.
    pub credit_account_id: u128,
    /// Minor units.
    pub amount: u128,
    /// Post/void: the pending transfer's id.
    pub pending_id: u128,
    /// Opaque.
    pub user_data: u128,
    /// Pending only: reservation timeout (0 = never).
    pub timeout_s: u32,
    /// Currency code.
    pub currency: u32,
    /// Nonzero code.
    pub code: u16,
    /// [`transfer_flags`] bits.
    pub flags: u16,
    /// Commit timestamp (server-set).
    pub timestamp: u64,
}

impl Transfer {
    /// Writes the 128-byte record into `out` (which must be exactly [`RECORD_BYTES`] long).
    pub fn encode_into(&self, out: &mut [u8]) {
        assert_eq!(out.len(), RECORD_BYTES);
        put_u128(out, 0, self.id);
        put_u128(out, 16, self.debit_account_id);
        put_u128(out, 32, self.credit_account_id);
        put_u128(out, 48, self.amount);
        put_u128(out, 64, self.pending_id);
        put_u128(out, 80, self.user_data);
        out[96..100].copy_from_slice(&self.timeout_s.to_le_bytes());
        out[100..104].copy_from_slice(&self.currency.to_le_bytes());
        out[104..106].copy_from_slice(&self.code.to_le_bytes());
        out[106..108].copy_from_slice(&self.flags.to_le_bytes());
        out[108..112].fill(0);
        out[112..120].copy_from_slice(&self.timestamp.to_le_bytes());
        out[120..128].fill(0);
    }

    /// Reads a record (`b` must be [`RECORD_BYTES`] long).
    pub fn decode(b: &[u8]) -> Transfer {
        assert_eq!(b.len(), RECORD_BYTES);
        Transfer {
            id: u128_at(b, 0),
            debit_account_id: u128_at(b, 16),
            credit_account_id: u128_at(b, 32),
            amount: u128_at(b, 48),
            pending_id: u128_at(b, 64),
            user_data: u128_at(b, 80),
            timeout_s: u32_at(b, 96),
            currency: u32_at(b, 100),
            code: u16_at(b, 104),
            flags: u16_at(b, 106),
            timestamp: u64_at(b, 112),
        }
    }
}

/// One per-item result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemResult {
    /// Result code (see [`RESULT_NAMES`]).
    pub code: u32,
    /// The stored record's timestamp for `ok` and `exists`, else zero.
    pub timestamp: u64,
}

impl ItemResult {
    /// Reads a 16-byte result.
    pub fn decode(b: &[u8]) -> ItemResult {
        assert_eq!(b.len(), RESULT_BYTES);
        ItemResult {
            code: u32_at(b, 0),
            timestamp: u64_at(b, 8),
        }
    }

    /// Writes the 16-byte result (for test servers).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
    }

    /// True for `ok` and `exists`: the item is applied.
    pub fn applied(&self) -> bool {
        self.code == RESULT_OK || self.code == RESULT_EXISTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_matches_api_example() {
        assert_eq!(currency_code("USD"), Some(0x0044_5355));
        assert_eq!(currency_name(0x0044_5355), "USD");
        for bad in ["usd", "US", "USDX", "U$D", ""] {
            assert_eq!(currency_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn transfer_layout_matches_api() {
        let t = Transfer {
            id: 0x0102,
            debit_account_id: 3,
            credit_account_id: 4,
            amount: 5,
            pending_id: 6,
            user_data: 7,
            timeout_s: 8,
            currency: 0x0044_5355,
            code: 9,
            flags: transfer_flags::PENDING | transfer_flags::LINKED,
            timestamp: 0x1122_3344_5566_7788,
        };
        let mut b = [0xFFu8; RECORD_BYTES];
        t.encode_into(&mut b);
        assert_eq!(&b[0..3], &[0x02, 0x01, 0]);
        assert_eq!(b[16], 3);
        assert_eq!(b[32], 4);
        assert_eq!(b[48], 5);
        assert_eq!(b[64], 6);
        assert_eq!(b[80], 7);
        assert_eq!(&b[96..100], &8u32.to_le_bytes());
        assert_eq!(&b[100..104], b"USD\0");
        assert_eq!(&b[104..106], &9u16.to_le_bytes());
        assert_eq!(&b[106..108], &3u16.to_le_bytes());
        assert_eq!(&b[108..112], &[0; 4], "reserved");
        assert_eq!(&b[112..120], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[120..128], &[0; 8], "reserved");
        assert_eq!(Transfer::decode(&b), t);
        // Every byte of the 16-byte fields is little-endian.
        let big = Transfer {
            amount: u128::MAX - 1,
            ..Transfer::default()
        };
        big.encode_into(&mut b);
        assert_eq!(b[48], 0xFE);
        assert_eq!(&b[49..64], &[0xFF; 15]);
    }

    #[test]
    fn account_layout_matches_api() {
        let a = Account {
            id: 1,
            debits_pending: 2,
            debits_posted: 3,
            credits_pending: 4,
            credits_posted: 5,
            user_data: 6,
            currency: currency_code("EUR").unwrap(),
            code: 7,
            flags: 2,
            timestamp: 99,
        };
        let mut b = [0xAAu8; RECORD_BYTES];
        a.encode_into(&mut b);
        for (o, v) in [(0, 1), (16, 2), (32, 3), (48, 4), (64, 5), (80, 6)] {
            assert_eq!(b[o], v, "offset {o}");
        }
        assert_eq!(&b[96..100], b"EUR\0");
        assert_eq!(&b[100..102], &7u16.to_le_bytes());
        assert_eq!(&b[102..104], &2u16.to_le_bytes());
        assert_eq!(&b[104..112], &99u64.to_le_bytes());
        assert_eq!(&b[112..128], &[0; 16]);
        assert_eq!(Account::decode(&b), a);
    }

    #[test]
    fn results_and_names() {
        let mut v = Vec::new();
        ItemResult {
            code: 22,
            timestamp: 0,
        }
        .encode_into(&mut v);
        assert_eq!(v.len(), RESULT_BYTES);
        assert_eq!(&v[0..4], &22u32.to_le_bytes());
        let r = ItemResult::decode(&v);
        assert_eq!(result_name(r.code), "exceeds_pending_amount");
        assert_eq!(result_name(31), "capacity_exceeded");
        assert_eq!(result_name(32), "unknown");
        assert!(!r.applied());
        assert!(
            ItemResult {
                code: RESULT_EXISTS,
                timestamp: 1
            }
            .applied()
        );
    }
}
