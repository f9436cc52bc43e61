//! The ledger wire format of `servers/ledger-writer/API.md` (every integer little-endian; 128-byte records, 16-byte
//! ids and results), the stateless checks in the API's order, and the `numeric` codec for u128 amounts.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use uuid::Uuid;

pub const RECORD: usize = 128;
pub const ID: usize = 16;
pub const RESULT: usize = 16;
pub const MAX_BATCH: usize = 8190;

/// Result codes used here (the rest come from the SQL functions).
pub mod code {
    pub const OK: u32 = 0;
    pub const EXISTS: u32 = 3;
    pub const ID_MUST_NOT_BE_ZERO: u32 = 5;
    pub const RESERVED_FIELD: u32 = 6;
    pub const RESERVED_FLAG: u32 = 7;
    pub const FLAGS_ARE_MUTUALLY_EXCLUSIVE: u32 = 8;
    pub const CURRENCY_INVALID: u32 = 9;
    pub const CODE_MUST_NOT_BE_ZERO: u32 = 10;
    pub const ACCOUNTS_MUST_BE_DIFFERENT: u32 = 13;
    pub const AMOUNT_MUST_NOT_BE_ZERO: u32 = 15;
    pub const PENDING_ID_MUST_BE_ZERO: u32 = 16;
    pub const PENDING_ID_REQUIRED: u32 = 17;
    pub const TIMEOUT_RESERVED_FOR_PENDING: u32 = 26;
    pub const TIMESTAMP_MUST_BE_ZERO: u32 = 30;
}

/// Result names by code, for the 422 `reason`.
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

pub fn u128_at(b: &[u8], o: usize) -> u128 {
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

/// A u128 id as a uuid whose bytes are the id's big-endian bytes: uuid order is numeric order.
pub fn id_uuid(v: u128) -> Uuid {
    Uuid::from_u128(v)
}

/// `USD` → `0x00445355`, if three ASCII capitals.
pub fn currency_code(s: &str) -> Option<u32> {
    let b = s.as_bytes();
    (b.len() == 3 && b.iter().all(u8::is_ascii_uppercase))
        .then(|| u32::from_le_bytes([b[0], b[1], b[2], 0]))
}

/// The three letters of a valid currency code.
pub fn currency_str(c: u32) -> Option<String> {
    let b = c.to_le_bytes();
    (b[3] == 0 && b[..3].iter().all(u8::is_ascii_uppercase))
        .then(|| String::from_utf8_lossy(&b[..3]).into_owned())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Account {
    pub id: u128,
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub user_data: u128,
    pub currency: u32,
    pub code: u16,
    pub flags: u16,
    pub timestamp: u64,
    pub reserved_zero: bool,
}

impl Account {
    pub fn decode(b: &[u8]) -> Account {
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
            reserved_zero: b[112..128].iter().all(|&x| x == 0),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.id,
            self.debits_pending,
            self.debits_posted,
            self.credits_pending,
            self.credits_posted,
            self.user_data,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.currency.to_le_bytes());
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&[0; 16]);
    }

    /// The checks that need no state, in the ledger server's order; 0 when they pass.
    pub fn precheck(&self) -> u32 {
        const ALL: u16 = 0b111;
        const LIMITS: u16 = 0b110;
        if self.timestamp != 0 {
            return code::TIMESTAMP_MUST_BE_ZERO;
        }
        if !self.reserved_zero
            || self.debits_pending != 0
            || self.debits_posted != 0
            || self.credits_pending != 0
            || self.credits_posted != 0
        {
            return code::RESERVED_FIELD;
        }
        if self.flags & !ALL != 0 {
            return code::RESERVED_FLAG;
        }
        if self.id == 0 || self.id == u128::MAX {
            return code::ID_MUST_NOT_BE_ZERO;
        }
        if self.flags & LIMITS == LIMITS {
            return code::FLAGS_ARE_MUTUALLY_EXCLUSIVE;
        }
        if currency_str(self.currency).is_none() {
            return code::CURRENCY_INVALID;
        }
        if self.code == 0 {
            return code::CODE_MUST_NOT_BE_ZERO;
        }
        0
    }
}

#[allow(dead_code)]
pub mod transfer_flags {
    pub const LINKED: u16 = 1;
    pub const PENDING: u16 = 2;
    pub const POST: u16 = 4;
    pub const VOID: u16 = 8;
    pub const ALL: u16 = 0b1111;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    pub id: u128,
    pub debit_account_id: u128,
    pub credit_account_id: u128,
    pub amount: u128,
    pub pending_id: u128,
    pub user_data: u128,
    pub timeout_s: u32,
    pub currency: u32,
    pub code: u16,
    pub flags: u16,
    pub timestamp: u64,
    pub reserved_zero: bool,
}

impl Transfer {
    pub fn decode(b: &[u8]) -> Transfer {
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
            reserved_zero: b[108..112].iter().all(|&x| x == 0)
                && b[120..128].iter().all(|&x| x == 0),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.id,
            self.debit_account_id,
            self.credit_account_id,
            self.amount,
            self.pending_id,
            self.user_data,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.timeout_s.to_le_bytes());
        out.extend_from_slice(&self.currency.to_le_bytes());
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
    }

    pub fn is_post_or_void(&self) -> bool {
        self.flags & (transfer_flags::POST | transfer_flags::VOID) != 0
    }

    /// The checks that need no state, in the ledger server's order; 0 when they pass.
    pub fn precheck(&self) -> u32 {
        use transfer_flags as F;
        if self.timestamp != 0 {
            return code::TIMESTAMP_MUST_BE_ZERO;
        }
        if !self.reserved_zero {
            return code::RESERVED_FIELD;
        }
        if self.flags & !F::ALL != 0 {
            return code::RESERVED_FLAG;
        }
        if self.id == 0 || self.id == u128::MAX {
            return code::ID_MUST_NOT_BE_ZERO;
        }
        if (self.flags & (F::PENDING | F::POST | F::VOID)).count_ones() > 1 {
            return code::FLAGS_ARE_MUTUALLY_EXCLUSIVE;
        }
        if self.is_post_or_void() {
            if self.pending_id == 0 {
                return code::PENDING_ID_REQUIRED;
            }
            if self.timeout_s != 0 {
                return code::TIMEOUT_RESERVED_FOR_PENDING;
            }
            if self.debit_account_id != 0 && self.debit_account_id == self.credit_account_id {
                return code::ACCOUNTS_MUST_BE_DIFFERENT;
            }
            if self.currency != 0 && currency_str(self.currency).is_none() {
                return code::CURRENCY_INVALID;
            }
        } else {
            if self.pending_id != 0 {
                return code::PENDING_ID_MUST_BE_ZERO;
            }
            if self.timeout_s != 0 && self.flags & F::PENDING == 0 {
                return code::TIMEOUT_RESERVED_FOR_PENDING;
            }
            if self.debit_account_id != 0 && self.debit_account_id == self.credit_account_id {
                return code::ACCOUNTS_MUST_BE_DIFFERENT;
            }
            if currency_str(self.currency).is_none() {
                return code::CURRENCY_INVALID;
            }
            if self.amount == 0 {
                return code::AMOUNT_MUST_NOT_BE_ZERO;
            }
        }
        if self.code == 0 {
            return code::CODE_MUST_NOT_BE_ZERO;
        }
        0
    }
}

/// One 16-byte per-item result.
pub fn put_result(out: &mut Vec<u8>, code: u32, timestamp: u64) {
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
}

/// A u128 as PostgreSQL `numeric`, in the binary protocol (no text parsing on either side).
///
/// Binary `numeric`: i16 ndigits, i16 weight, u16 sign, u16 dscale, then ndigits base-10000 digits, most
/// significant first; value = Σ digit[k] · 10000^(weight − k).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Num(pub u128);

const NBASE: u128 = 10_000;

impl ToSql for Num {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let mut digits = [0i16; 10]; // u128::MAX has 39 decimal digits: 10 base-10000 digits
        let mut n = 0;
        let mut v = self.0;
        while v > 0 {
            digits[n] = (v % NBASE) as i16;
            v /= NBASE;
            n += 1;
        }
        // digits[0..n] least significant first; weight of the most significant is n − 1. Trailing zeros
        // (least significant) are dropped, as PostgreSQL does.
        let weight = n as i16 - 1;
        let mut low = 0;
        while low < n && digits[low] == 0 {
            low += 1;
        }
        let nd = n - low;
        out.put_i16(nd as i16);
        out.put_i16(if n == 0 { 0 } else { weight });
        out.put_u16(0);
        out.put_u16(0);
        for k in (low..n).rev() {
            out.put_i16(digits[k]);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Num {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Num, Box<dyn Error + Sync + Send>> {
        if raw.len() < 8 {
            return Err("numeric: short value".into());
        }
        let nd = i16::from_be_bytes([raw[0], raw[1]]);
        let weight = i16::from_be_bytes([raw[2], raw[3]]);
        let sign = u16::from_be_bytes([raw[4], raw[5]]);
        if sign != 0 {
            return Err("numeric: negative or NaN where a u128 was expected".into());
        }
        if nd < 0 || raw.len() != 8 + 2 * nd as usize {
            return Err("numeric: bad length".into());
        }
        let mut v: u128 = 0;
        let mut last_weight = weight as i32 + 1;
        for k in 0..nd as usize {
            let d = i16::from_be_bytes([raw[8 + 2 * k], raw[9 + 2 * k]]);
            if !(0..10_000).contains(&d) {
                return Err("numeric: bad digit".into());
            }
            let w = weight as i32 - k as i32;
            if w < 0 {
                if d != 0 {
                    return Err("numeric: not an integer".into());
                }
                continue;
            }
            v = v
                .checked_mul(NBASE)
                .and_then(|x| x.checked_add(d as u128))
                .ok_or("numeric: above u128::MAX")?;
            last_weight = w;
        }
        // Trailing zero digits that were left out.
        for _ in 0..last_weight.max(0) {
            v = v.checked_mul(NBASE).ok_or("numeric: above u128::MAX")?;
        }
        Ok(Num(v))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: u128) -> u128 {
        let mut b = BytesMut::new();
        Num(v).to_sql(&Type::NUMERIC, &mut b).unwrap();
        Num::from_sql(&Type::NUMERIC, &b).unwrap().0
    }

    #[test]
    fn numeric_roundtrips() {
        for v in [
            0,
            1,
            9_999,
            10_000,
            10_001,
            100_000_000,
            1_234_500_000_000,
            u64::MAX as u128,
            u128::MAX,
            u128::MAX - 1,
        ] {
            assert_eq!(roundtrip(v), v, "{v}");
        }
        // 10000 is one digit of weight 1.
        let mut b = BytesMut::new();
        Num(10_000).to_sql(&Type::NUMERIC, &mut b).unwrap();
        assert_eq!(&b[..], &[0, 1, 0, 1, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn prechecks_follow_the_api_order() {
        let usd = currency_code("USD").unwrap();
        let t = Transfer {
            id: 1,
            debit_account_id: 2,
            credit_account_id: 3,
            amount: 5,
            currency: usd,
            code: 1,
            reserved_zero: true,
            ..Transfer::default()
        };
        assert_eq!(t.precheck(), 0);
        assert_eq!(
            Transfer {
                timestamp: 1,
                id: 0,
                ..t
            }
            .precheck(),
            code::TIMESTAMP_MUST_BE_ZERO
        );
        assert_eq!(
            Transfer { amount: 0, ..t }.precheck(),
            code::AMOUNT_MUST_NOT_BE_ZERO
        );
        assert_eq!(
            Transfer {
                credit_account_id: 2,
                ..t
            }
            .precheck(),
            code::ACCOUNTS_MUST_BE_DIFFERENT
        );
        let post = Transfer {
            flags: transfer_flags::POST,
            amount: 0,
            pending_id: 9,
            currency: 0,
            ..t
        };
        assert_eq!(post.precheck(), 0);
        assert_eq!(
            Transfer {
                pending_id: 0,
                ..post
            }
            .precheck(),
            code::PENDING_ID_REQUIRED
        );
        assert_eq!(
            Transfer { flags: 6, ..t }.precheck(),
            code::FLAGS_ARE_MUTUALLY_EXCLUSIVE
        );
        assert_eq!(Transfer { flags: 16, ..t }.precheck(), code::RESERVED_FLAG);
        assert_eq!(
            Transfer { currency: 7, ..t }.precheck(),
            code::CURRENCY_INVALID
        );
    }

    #[test]
    fn records_roundtrip() {
        let t = Transfer {
            id: 1 << 100,
            debit_account_id: 2,
            credit_account_id: 3,
            amount: u128::MAX,
            pending_id: 4,
            user_data: 5,
            timeout_s: 6,
            currency: currency_code("EUR").unwrap(),
            code: 7,
            flags: 2,
            timestamp: 8,
            reserved_zero: true,
        };
        let mut b = Vec::new();
        t.encode(&mut b);
        assert_eq!(b.len(), RECORD);
        assert_eq!(Transfer::decode(&b), t);
        let a = Account {
            id: 9,
            credits_posted: 10,
            currency: t.currency,
            code: 1,
            timestamp: 3,
            reserved_zero: true,
            ..Account::default()
        };
        let mut b = Vec::new();
        a.encode(&mut b);
        assert_eq!(b.len(), RECORD);
        assert_eq!(Account::decode(&b), a);
    }
}
