//! Byte and JSON forms of records, ids and results (`API.md`).
//!
//! Binary: 128-byte little-endian records, 16-byte ids, 16-byte results. Decoding a record never fails; it reports
//! whether the reserved bytes are zero and the state machine answers `reserved_field` otherwise, so a bad item
//! fails alone instead of failing the whole batch. Only the batch *length* is a request-level error
//! ([`CodecError`], mapped to 400/413 by [`CodecError::http_status`]).
//!
//! JSON (every shape is an object so that it can grow):
//! - create requests: `{"accounts":[AccountJson, ...]}` and `{"transfers":[TransferJson, ...]}`, 1..=8190 items;
//! - lookup requests: `{"ids":["1","2"]}`;
//! - lookup responses: `{"accounts":[...]}`, `{"transfers":[...]}`; account history:
//!   `{"transfers":[...],"next_after":"<timestamp>"|null}`;
//! - results: `{"results":[{"index":0,"result":"ok","timestamp":"1732..."}],"reason":"..."}` (`reason` only when
//!   the caller passes one, i.e. for a 422).
//!
//! In JSON, ids, amounts, balances, `user_data` and timestamps are decimal strings; `currency` is the three-letter
//! string (`""` means zero, allowed for post/void); `code` and `timeout_s` are numbers; `flags` is a list of names
//! from [`account_flags::NAMES`] / [`transfer_flags::NAMES`]. In requests every field but `id` may be omitted
//! (zero). Errors name the item and field, e.g. `transfers[3].amount: not a decimal u128 string`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::types::{
    Account, ID_BYTES, ItemResult, MAX_BATCH, RECORD_BYTES, RESULT_BYTES, ResultCode, Transfer,
    account_flags, transfer_flags,
};

/// A request body or payload that cannot be decoded; nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The batch has no items.
    #[error("empty batch")]
    Empty,
    /// The body length is not a multiple of the item size.
    #[error("body length {len} is not a multiple of {record} bytes")]
    NotMultiple {
        /// Body length in bytes.
        len: usize,
        /// Item size in bytes.
        record: usize,
    },
    /// The batch has more items than allowed.
    #[error("{n} items, at most {max} per batch")]
    TooMany {
        /// Items in the request.
        n: usize,
        /// The limit ([`MAX_BATCH`]).
        max: usize,
    },
    /// The body is not JSON or not of the expected shape.
    #[error("bad JSON: {0}")]
    Json(String),
    /// A JSON field has a bad value.
    #[error("{path}: {what}")]
    Field {
        /// Where, e.g. `transfers[3].amount`.
        path: String,
        /// What is wrong with it.
        what: String,
    },
    /// A binary result carries a code this version does not know.
    #[error("unknown result code {0}")]
    UnknownResultCode(u32),
    /// A binary result's reserved bytes are nonzero.
    #[error("result reserved bytes are nonzero")]
    ResultReserved,
}

impl CodecError {
    /// The HTTP status for this error: 413 for too many items, 400 for everything else.
    pub fn http_status(&self) -> u16 {
        match self {
            CodecError::TooMany { .. } => 413,
            _ => 400,
        }
    }

    fn field(path: impl Into<String>, what: impl Into<String>) -> CodecError {
        CodecError::Field {
            path: path.into(),
            what: what.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Binary.

/// The id of an account or transfer record (its first 16 bytes), without decoding the rest.
#[inline]
pub fn record_id(b: &[u8; RECORD_BYTES]) -> u128 {
    u128_at(b, 0)
}

#[inline(always)]
fn u128_at(b: &[u8; RECORD_BYTES], o: usize) -> u128 {
    u128::from_le_bytes(b[o..o + 16].try_into().unwrap())
}

#[inline(always)]
fn u64_at(b: &[u8; RECORD_BYTES], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[inline(always)]
fn u32_at(b: &[u8; RECORD_BYTES], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

#[inline(always)]
fn u16_at(b: &[u8; RECORD_BYTES], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}

/// Decodes an account record; the flag is true when the reserved bytes (112..128) are zero.
#[inline]
pub fn decode_account(b: &[u8; RECORD_BYTES]) -> (Account, bool) {
    let a = Account {
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
    };
    (a, u128_at(b, 112) == 0)
}

/// Decodes a transfer record; the flag is true when the reserved bytes (108..112, 120..128) are zero.
#[inline]
pub fn decode_transfer(b: &[u8; RECORD_BYTES]) -> (Transfer, bool) {
    let t = Transfer {
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
    };
    (t, u32_at(b, 108) == 0 && u64_at(b, 120) == 0)
}

/// The 128-byte record of an account.
#[inline]
pub fn account_bytes(a: &Account) -> [u8; RECORD_BYTES] {
    let mut b = [0u8; RECORD_BYTES];
    b[0..16].copy_from_slice(&a.id.to_le_bytes());
    b[16..32].copy_from_slice(&a.debits_pending.to_le_bytes());
    b[32..48].copy_from_slice(&a.debits_posted.to_le_bytes());
    b[48..64].copy_from_slice(&a.credits_pending.to_le_bytes());
    b[64..80].copy_from_slice(&a.credits_posted.to_le_bytes());
    b[80..96].copy_from_slice(&a.user_data.to_le_bytes());
    b[96..100].copy_from_slice(&a.currency.to_le_bytes());
    b[100..102].copy_from_slice(&a.code.to_le_bytes());
    b[102..104].copy_from_slice(&a.flags.to_le_bytes());
    b[104..112].copy_from_slice(&a.timestamp.to_le_bytes());
    b
}

/// The 128-byte record of a transfer.
#[inline]
pub fn transfer_bytes(t: &Transfer) -> [u8; RECORD_BYTES] {
    let mut b = [0u8; RECORD_BYTES];
    b[0..16].copy_from_slice(&t.id.to_le_bytes());
    b[16..32].copy_from_slice(&t.debit_account_id.to_le_bytes());
    b[32..48].copy_from_slice(&t.credit_account_id.to_le_bytes());
    b[48..64].copy_from_slice(&t.amount.to_le_bytes());
    b[64..80].copy_from_slice(&t.pending_id.to_le_bytes());
    b[80..96].copy_from_slice(&t.user_data.to_le_bytes());
    b[96..100].copy_from_slice(&t.timeout_s.to_le_bytes());
    b[100..104].copy_from_slice(&t.currency.to_le_bytes());
    b[104..106].copy_from_slice(&t.code.to_le_bytes());
    b[106..108].copy_from_slice(&t.flags.to_le_bytes());
    b[112..120].copy_from_slice(&t.timestamp.to_le_bytes());
    b
}

/// Appends an account's 128-byte record to `out`.
#[inline]
pub fn encode_account(a: &Account, out: &mut Vec<u8>) {
    out.extend_from_slice(&account_bytes(a));
}

/// Appends a transfer's 128-byte record to `out`.
#[inline]
pub fn encode_transfer(t: &Transfer, out: &mut Vec<u8>) {
    out.extend_from_slice(&transfer_bytes(t));
}

/// Appends a 16-byte result (`u32 code`, `u32` zero, `u64 timestamp`) to `out`.
#[inline]
pub fn encode_result(r: &ItemResult, out: &mut Vec<u8>) {
    let mut b = [0u8; RESULT_BYTES];
    b[0..4].copy_from_slice(&(r.code as u32).to_le_bytes());
    b[8..16].copy_from_slice(&r.timestamp.to_le_bytes());
    out.extend_from_slice(&b);
}

/// Appends every result, in order (the binary response body of a create request).
pub fn encode_results(results: &[ItemResult], out: &mut Vec<u8>) {
    out.reserve(results.len() * RESULT_BYTES);
    for r in results {
        encode_result(r, out);
    }
}

/// Decodes a 16-byte result.
pub fn decode_result(b: &[u8; RESULT_BYTES]) -> Result<ItemResult, CodecError> {
    let code = u32::from_le_bytes(b[0..4].try_into().unwrap());
    if b[4..8] != [0; 4] {
        return Err(CodecError::ResultReserved);
    }
    let code = ResultCode::from_u32(code).ok_or(CodecError::UnknownResultCode(code))?;
    Ok(ItemResult {
        code,
        timestamp: u64::from_le_bytes(b[8..16].try_into().unwrap()),
    })
}

/// Decodes a whole binary results body.
pub fn decode_results(body: &[u8]) -> Result<Vec<ItemResult>, CodecError> {
    check_len(body.len(), RESULT_BYTES, usize::MAX)?;
    body.chunks_exact(RESULT_BYTES)
        .map(|c| decode_result(c.try_into().unwrap()))
        .collect()
}

/// Appends a 16-byte id.
#[inline]
pub fn encode_id(id: u128, out: &mut Vec<u8>) {
    out.extend_from_slice(&id.to_le_bytes());
}

/// Checks a body of `len` bytes holds 1..=`max` items of `item` bytes; returns the item count.
fn check_len(len: usize, item: usize, max: usize) -> Result<usize, CodecError> {
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len % item != 0 {
        return Err(CodecError::NotMultiple { len, record: item });
    }
    let n = len / item;
    if n > max {
        return Err(CodecError::TooMany { n, max });
    }
    Ok(n)
}

/// A length-checked run of 128-byte records borrowed from a body or log payload (no copy).
#[derive(Debug, Clone, Copy)]
pub struct Records<'a> {
    bytes: &'a [u8],
}

impl<'a> Records<'a> {
    /// Wraps `bytes` of any record count (including zero), as found in a log payload.
    pub fn new(bytes: &'a [u8]) -> Result<Records<'a>, CodecError> {
        if bytes.len() % RECORD_BYTES != 0 {
            return Err(CodecError::NotMultiple {
                len: bytes.len(),
                record: RECORD_BYTES,
            });
        }
        Ok(Records { bytes })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.bytes.len() / RECORD_BYTES
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Record `i` (panics if out of range).
    #[inline]
    pub fn get(&self, i: usize) -> &'a [u8; RECORD_BYTES] {
        self.bytes[i * RECORD_BYTES..(i + 1) * RECORD_BYTES]
            .try_into()
            .unwrap()
    }

    /// The records in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8; RECORD_BYTES]> + 'a {
        self.bytes
            .chunks_exact(RECORD_BYTES)
            .map(|c| c.try_into().unwrap())
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Validates a binary create-request body: a nonzero multiple of 128 bytes, at most [`MAX_BATCH`] records.
pub fn decode_batch_records(body: &[u8]) -> Result<Records<'_>, CodecError> {
    check_len(body.len(), RECORD_BYTES, MAX_BATCH)?;
    Ok(Records { bytes: body })
}

/// Decodes a binary lookup-request body: 1..=[`MAX_BATCH`] 16-byte ids.
pub fn decode_batch_ids(body: &[u8]) -> Result<Vec<u128>, CodecError> {
    check_len(body.len(), ID_BYTES, MAX_BATCH)?;
    Ok(body
        .chunks_exact(ID_BYTES)
        .map(|c| u128::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// Decodes a binary account batch into accounts and their reserved-bytes-zero flags.
pub fn decode_batch_accounts(body: &[u8]) -> Result<Vec<(Account, bool)>, CodecError> {
    Ok(decode_batch_records(body)?
        .iter()
        .map(decode_account)
        .collect())
}

/// Decodes a binary transfer batch into transfers and their reserved-bytes-zero flags.
pub fn decode_batch_transfers(body: &[u8]) -> Result<Vec<(Transfer, bool)>, CodecError> {
    Ok(decode_batch_records(body)?
        .iter()
        .map(decode_transfer)
        .collect())
}

// ---------------------------------------------------------------------------------------------------------------
// JSON.

fn zero_string() -> String {
    "0".to_string()
}

/// Parses a decimal `u128` strictly: ASCII digits only (no sign, no spaces, not empty).
pub fn parse_u128_decimal(s: &str) -> Option<u128> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_dec(s: &str, path: &str, field: &str) -> Result<u128, CodecError> {
    parse_u128_decimal(s)
        .ok_or_else(|| CodecError::field(format!("{path}.{field}"), "not a decimal u128 string"))
}

fn parse_ts(s: &str, path: &str) -> Result<u64, CodecError> {
    parse_u128_decimal(s)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| CodecError::field(format!("{path}.timestamp"), "not a decimal u64 string"))
}

/// JSON currency: `""` is zero; three ASCII bytes are taken as they are (the state machine decides whether they are a
/// valid currency, so `"usd"` is an item failing with `currency_invalid`, not a malformed request).
fn parse_currency(s: &str, path: &str) -> Result<u32, CodecError> {
    let b = s.as_bytes();
    match b.len() {
        0 => Ok(0),
        3 if b.iter().all(|c| c.is_ascii_graphic()) => {
            Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
        }
        _ => Err(CodecError::field(
            format!("{path}.currency"),
            "not a three-letter currency",
        )),
    }
}

fn currency_json(c: u32) -> String {
    let b = c.to_le_bytes();
    if b[3] == 0 && b[..3].iter().all(|c| c.is_ascii_graphic()) {
        b[..3].iter().map(|&x| x as char).collect()
    } else {
        String::new()
    }
}

fn parse_flags(names: &[String], table: &[(u16, &str)], path: &str) -> Result<u16, CodecError> {
    let mut flags = 0;
    for name in names {
        let bit = table.iter().find(|(_, n)| n == name).map(|(b, _)| *b);
        flags |= bit.ok_or_else(|| {
            CodecError::field(format!("{path}.flags"), format!("unknown flag {name:?}"))
        })?;
    }
    Ok(flags)
}

fn flag_names(flags: u16, table: &[(u16, &str)]) -> Vec<String> {
    table
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// An account in JSON (see the module docs for the conventions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountJson {
    /// Decimal id.
    pub id: String,
    /// Decimal balance.
    #[serde(default = "zero_string")]
    pub debits_pending: String,
    /// Decimal balance.
    #[serde(default = "zero_string")]
    pub debits_posted: String,
    /// Decimal balance.
    #[serde(default = "zero_string")]
    pub credits_pending: String,
    /// Decimal balance.
    #[serde(default = "zero_string")]
    pub credits_posted: String,
    /// Decimal opaque data.
    #[serde(default = "zero_string")]
    pub user_data: String,
    /// Three-letter currency.
    #[serde(default)]
    pub currency: String,
    /// Chart-of-accounts code.
    #[serde(default)]
    pub code: u16,
    /// Flag names.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Decimal timestamp (ns).
    #[serde(default = "zero_string")]
    pub timestamp: String,
}

impl From<&Account> for AccountJson {
    fn from(a: &Account) -> AccountJson {
        AccountJson {
            id: a.id.to_string(),
            debits_pending: a.debits_pending.to_string(),
            debits_posted: a.debits_posted.to_string(),
            credits_pending: a.credits_pending.to_string(),
            credits_posted: a.credits_posted.to_string(),
            user_data: a.user_data.to_string(),
            currency: currency_json(a.currency),
            code: a.code,
            flags: flag_names(a.flags, account_flags::NAMES),
            timestamp: a.timestamp.to_string(),
        }
    }
}

impl AccountJson {
    /// Converts to an account; `path` (e.g. `accounts[3]`) prefixes error paths.
    pub fn to_account(&self, path: &str) -> Result<Account, CodecError> {
        Ok(Account {
            id: parse_dec(&self.id, path, "id")?,
            debits_pending: parse_dec(&self.debits_pending, path, "debits_pending")?,
            debits_posted: parse_dec(&self.debits_posted, path, "debits_posted")?,
            credits_pending: parse_dec(&self.credits_pending, path, "credits_pending")?,
            credits_posted: parse_dec(&self.credits_posted, path, "credits_posted")?,
            user_data: parse_dec(&self.user_data, path, "user_data")?,
            currency: parse_currency(&self.currency, path)?,
            code: self.code,
            flags: parse_flags(&self.flags, account_flags::NAMES, path)?,
            timestamp: parse_ts(&self.timestamp, path)?,
        })
    }
}

/// A transfer in JSON (see the module docs for the conventions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferJson {
    /// Decimal id.
    pub id: String,
    /// Decimal account id.
    #[serde(default = "zero_string")]
    pub debit_account_id: String,
    /// Decimal account id.
    #[serde(default = "zero_string")]
    pub credit_account_id: String,
    /// Decimal amount.
    #[serde(default = "zero_string")]
    pub amount: String,
    /// Decimal id of the pending transfer (post/void).
    #[serde(default = "zero_string")]
    pub pending_id: String,
    /// Decimal opaque data.
    #[serde(default = "zero_string")]
    pub user_data: String,
    /// Pending timeout in seconds.
    #[serde(default)]
    pub timeout_s: u32,
    /// Three-letter currency (`""` for zero).
    #[serde(default)]
    pub currency: String,
    /// Transfer code.
    #[serde(default)]
    pub code: u16,
    /// Flag names.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Decimal timestamp (ns).
    #[serde(default = "zero_string")]
    pub timestamp: String,
}

impl From<&Transfer> for TransferJson {
    fn from(t: &Transfer) -> TransferJson {
        TransferJson {
            id: t.id.to_string(),
            debit_account_id: t.debit_account_id.to_string(),
            credit_account_id: t.credit_account_id.to_string(),
            amount: t.amount.to_string(),
            pending_id: t.pending_id.to_string(),
            user_data: t.user_data.to_string(),
            timeout_s: t.timeout_s,
            currency: currency_json(t.currency),
            code: t.code,
            flags: flag_names(t.flags, transfer_flags::NAMES),
            timestamp: t.timestamp.to_string(),
        }
    }
}

impl TransferJson {
    /// Converts to a transfer; `path` (e.g. `transfers[3]`) prefixes error paths.
    pub fn to_transfer(&self, path: &str) -> Result<Transfer, CodecError> {
        Ok(Transfer {
            id: parse_dec(&self.id, path, "id")?,
            debit_account_id: parse_dec(&self.debit_account_id, path, "debit_account_id")?,
            credit_account_id: parse_dec(&self.credit_account_id, path, "credit_account_id")?,
            amount: parse_dec(&self.amount, path, "amount")?,
            pending_id: parse_dec(&self.pending_id, path, "pending_id")?,
            user_data: parse_dec(&self.user_data, path, "user_data")?,
            timeout_s: self.timeout_s,
            currency: parse_currency(&self.currency, path)?,
            code: self.code,
            flags: parse_flags(&self.flags, transfer_flags::NAMES, path)?,
            timestamp: parse_ts(&self.timestamp, path)?,
        })
    }
}

/// The JSON type each field must have, to name the field when serde's own message does not.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    U16,
    U32,
    StrList,
}

const ACCOUNT_FIELDS: &[(&str, Kind)] = &[
    ("id", Kind::Str),
    ("debits_pending", Kind::Str),
    ("debits_posted", Kind::Str),
    ("credits_pending", Kind::Str),
    ("credits_posted", Kind::Str),
    ("user_data", Kind::Str),
    ("currency", Kind::Str),
    ("code", Kind::U16),
    ("flags", Kind::StrList),
    ("timestamp", Kind::Str),
];

const TRANSFER_FIELDS: &[(&str, Kind)] = &[
    ("id", Kind::Str),
    ("debit_account_id", Kind::Str),
    ("credit_account_id", Kind::Str),
    ("amount", Kind::Str),
    ("pending_id", Kind::Str),
    ("user_data", Kind::Str),
    ("timeout_s", Kind::U32),
    ("currency", Kind::Str),
    ("code", Kind::U16),
    ("flags", Kind::StrList),
    ("timestamp", Kind::Str),
];

/// Turns a serde error on one item into an error naming the field (only on the error path, so the common path
/// stays a plain derived deserialize).
fn diagnose(
    item: &Value,
    fields: &[(&str, Kind)],
    path: &str,
    err: serde_json::Error,
) -> CodecError {
    let Some(obj) = item.as_object() else {
        return CodecError::field(path, "not an object");
    };
    for (k, v) in obj {
        let Some((_, kind)) = fields.iter().find(|(n, _)| n == k) else {
            return CodecError::field(format!("{path}.{k}"), "unknown field");
        };
        let ok = match kind {
            Kind::Str => v.is_string(),
            Kind::U16 => v.as_u64().is_some_and(|n| n <= u16::MAX as u64),
            Kind::U32 => v.as_u64().is_some_and(|n| n <= u32::MAX as u64),
            Kind::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        };
        if !ok {
            let what = match kind {
                Kind::Str => "not a string",
                Kind::U16 => "not an integer in 0..=65535",
                Kind::U32 => "not an integer in 0..=4294967295",
                Kind::StrList => "not a list of strings",
            };
            return CodecError::field(format!("{path}.{k}"), what);
        }
    }
    if !obj.contains_key("id") {
        return CodecError::field(format!("{path}.id"), "missing");
    }
    CodecError::field(path, err.to_string())
}

/// Parses `{"<key>":[...]}` with 1..=`MAX_BATCH` elements and returns the elements.
fn batch_array(body: &[u8], key: &str) -> Result<Vec<Value>, CodecError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| CodecError::Json(e.to_string()))?;
    let shape = || CodecError::Json(format!("expected an object {{\"{key}\":[...]}}"));
    let Value::Object(mut obj) = v else {
        return Err(shape());
    };
    if obj.len() != 1 {
        return Err(shape());
    }
    let Some(Value::Array(items)) = obj.remove(key) else {
        return Err(shape());
    };
    check_len(items.len(), 1, MAX_BATCH)?;
    Ok(items)
}

/// Decodes a JSON create-accounts request `{"accounts":[...]}`.
pub fn accounts_from_json(body: &[u8]) -> Result<Vec<Account>, CodecError> {
    let items = batch_array(body, "accounts")?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("accounts[{i}]");
        let j =
            AccountJson::deserialize(item).map_err(|e| diagnose(item, ACCOUNT_FIELDS, &path, e))?;
        out.push(j.to_account(&path)?);
    }
    Ok(out)
}

/// Decodes a JSON create-transfers request `{"transfers":[...]}`.
pub fn transfers_from_json(body: &[u8]) -> Result<Vec<Transfer>, CodecError> {
    let items = batch_array(body, "transfers")?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("transfers[{i}]");
        let j = TransferJson::deserialize(item)
            .map_err(|e| diagnose(item, TRANSFER_FIELDS, &path, e))?;
        out.push(j.to_transfer(&path)?);
    }
    Ok(out)
}

/// Decodes a JSON lookup request `{"ids":["1","2"]}` (1..=[`MAX_BATCH`] ids).
pub fn ids_from_json(body: &[u8]) -> Result<Vec<u128>, CodecError> {
    let items = batch_array(body, "ids")?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .and_then(parse_u128_decimal)
                .ok_or_else(|| CodecError::field(format!("ids[{i}]"), "not a decimal u128 string"))
        })
        .collect()
}

/// Encodes a JSON lookup request `{"ids":[...]}`.
pub fn ids_to_json(ids: &[u128]) -> Vec<u8> {
    let ids: Vec<String> = ids.iter().map(u128::to_string).collect();
    serde_json::to_vec(&serde_json::json!({ "ids": ids })).expect("JSON of strings")
}

/// Encodes `{"accounts":[...]}` (a create request or a lookup response).
pub fn accounts_to_json(accounts: &[Account]) -> Vec<u8> {
    let items: Vec<AccountJson> = accounts.iter().map(AccountJson::from).collect();
    serde_json::to_vec(&serde_json::json!({ "accounts": items })).expect("JSON of strings")
}

/// Encodes `{"transfers":[...]}` (a create request or a lookup response).
pub fn transfers_to_json(transfers: &[Transfer]) -> Vec<u8> {
    let items: Vec<TransferJson> = transfers.iter().map(TransferJson::from).collect();
    serde_json::to_vec(&serde_json::json!({ "transfers": items })).expect("JSON of strings")
}

/// Encodes one account (`GET /accounts/{id}`).
pub fn account_to_json(a: &Account) -> Vec<u8> {
    serde_json::to_vec(&AccountJson::from(a)).expect("JSON of strings")
}

/// Encodes one transfer (`GET /transfers/{id}`).
pub fn transfer_to_json(t: &Transfer) -> Vec<u8> {
    serde_json::to_vec(&TransferJson::from(t)).expect("JSON of strings")
}

/// Encodes an account's history page: `{"transfers":[...],"next_after":"<timestamp>"|null}`.
pub fn account_transfers_to_json(transfers: &[Transfer], next_after: Option<u64>) -> Vec<u8> {
    let items: Vec<TransferJson> = transfers.iter().map(TransferJson::from).collect();
    let next = next_after.map(|t| t.to_string());
    serde_json::to_vec(&serde_json::json!({ "transfers": items, "next_after": next }))
        .expect("JSON of strings")
}

/// One item's result in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultJson {
    /// Position of the item in the request.
    pub index: usize,
    /// Result code name.
    pub result: String,
    /// Decimal timestamp ("0" for failures).
    pub timestamp: String,
}

/// A create request's JSON response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsJson {
    /// One per item, in order.
    pub results: Vec<ResultJson>,
    /// For a 422: the first failure's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Encodes `{"results":[...]}`, with `"reason"` when given.
pub fn results_to_json(results: &[ItemResult], reason: Option<ResultCode>) -> Vec<u8> {
    let json = ResultsJson {
        results: results
            .iter()
            .enumerate()
            .map(|(index, r)| ResultJson {
                index,
                result: r.code.name().to_string(),
                timestamp: r.timestamp.to_string(),
            })
            .collect(),
        reason: reason.map(|r| r.name().to_string()),
    };
    serde_json::to_vec(&json).expect("JSON of strings")
}

/// Decodes a JSON results body (indexes must be 0, 1, 2, ... in order); returns the results and the reason.
pub fn results_from_json(body: &[u8]) -> Result<(Vec<ItemResult>, Option<ResultCode>), CodecError> {
    let json: ResultsJson =
        serde_json::from_slice(body).map_err(|e| CodecError::Json(e.to_string()))?;
    let mut out = Vec::with_capacity(json.results.len());
    for (i, r) in json.results.iter().enumerate() {
        let path = format!("results[{i}]");
        if r.index != i {
            return Err(CodecError::field(format!("{path}.index"), "out of order"));
        }
        let code = ResultCode::from_name(&r.result)
            .ok_or_else(|| CodecError::field(format!("{path}.result"), "unknown result code"))?;
        out.push(ItemResult {
            code,
            timestamp: parse_ts(&r.timestamp, &path)?,
        });
    }
    let reason = match &json.reason {
        None => None,
        Some(n) => Some(
            ResultCode::from_name(n)
                .ok_or_else(|| CodecError::field("reason", "unknown result code"))?,
        ),
    };
    Ok((out, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic PRNG (splitmix64) so tests need no extra crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn u128(&mut self) -> u128 {
            ((self.next() as u128) << 64) | self.next() as u128
        }
    }

    fn random_account(r: &mut Rng) -> Account {
        Account {
            id: r.u128(),
            debits_pending: r.u128(),
            debits_posted: r.u128(),
            credits_pending: r.u128(),
            credits_posted: r.u128(),
            user_data: r.u128(),
            currency: crate::types::currency_from_str("EUR").unwrap(),
            code: r.next() as u16,
            flags: r.next() as u16 & account_flags::ALL,
            timestamp: r.next(),
        }
    }

    fn random_transfer(r: &mut Rng) -> Transfer {
        Transfer {
            id: r.u128(),
            debit_account_id: r.u128(),
            credit_account_id: r.u128(),
            amount: r.u128(),
            pending_id: r.u128(),
            user_data: r.u128(),
            timeout_s: r.next() as u32,
            currency: crate::types::currency_from_str("JPY").unwrap(),
            code: r.next() as u16,
            flags: r.next() as u16 & transfer_flags::ALL,
            timestamp: r.next(),
        }
    }

    #[test]
    fn binary_round_trips_and_layout() {
        let mut r = Rng(7);
        for _ in 0..100 {
            let a = random_account(&mut r);
            let mut out = Vec::new();
            encode_account(&a, &mut out);
            assert_eq!(out.len(), RECORD_BYTES);
            assert_eq!(
                decode_account(out.as_slice().try_into().unwrap()),
                (a, true)
            );
            let t = random_transfer(&mut r);
            let b = transfer_bytes(&t);
            assert_eq!(decode_transfer(&b), (t, true));
        }
        // Offsets from API.md.
        let t = Transfer {
            amount: 5,
            timeout_s: 9,
            currency: 0x0044_5355,
            code: 3,
            flags: 2,
            timestamp: 77,
            ..Default::default()
        };
        let b = transfer_bytes(&t);
        assert_eq!(b[48], 5);
        assert_eq!(b[96], 9);
        assert_eq!(&b[100..104], b"USD\0");
        assert_eq!(b[104], 3);
        assert_eq!(b[106], 2);
        assert_eq!(b[112], 77);
        let a = Account {
            currency: 0x0044_5355,
            code: 1,
            flags: 4,
            timestamp: 9,
            ..Default::default()
        };
        let b = account_bytes(&a);
        assert_eq!(&b[96..99], b"USD");
        assert_eq!((b[100], b[102], b[104]), (1, 4, 9));
    }

    #[test]
    fn reserved_bytes_are_reported() {
        let mut b = account_bytes(&Account::default());
        b[127] = 1;
        assert!(!decode_account(&b).1);
        for pos in [108, 111, 120, 127] {
            let mut b = transfer_bytes(&Transfer::default());
            b[pos] = 1;
            assert!(!decode_transfer(&b).1, "{pos}");
        }
    }

    #[test]
    fn results_round_trip() {
        let rs: Vec<ItemResult> = ResultCode::ALL
            .iter()
            .enumerate()
            .map(|(i, &code)| ItemResult {
                code,
                timestamp: i as u64 * 1000,
            })
            .collect();
        let mut out = Vec::new();
        encode_results(&rs, &mut out);
        assert_eq!(out.len(), rs.len() * RESULT_BYTES);
        assert_eq!(decode_results(&out).unwrap(), rs);
        let mut bad = out.clone();
        bad[0] = 99;
        assert_eq!(decode_results(&bad), Err(CodecError::UnknownResultCode(99)));
        let mut bad = out.clone();
        bad[5] = 1;
        assert_eq!(decode_results(&bad), Err(CodecError::ResultReserved));
        let (back, reason) =
            results_from_json(&results_to_json(&rs, Some(ResultCode::Overflow))).unwrap();
        assert_eq!((back, reason), (rs, Some(ResultCode::Overflow)));
    }

    #[test]
    fn batch_length_errors() {
        assert_eq!(decode_batch_records(&[]).unwrap_err(), CodecError::Empty);
        assert_eq!(
            decode_batch_records(&[0; 130]).unwrap_err(),
            CodecError::NotMultiple {
                len: 130,
                record: 128
            }
        );
        let big = vec![0; (MAX_BATCH + 1) * RECORD_BYTES];
        let e = decode_batch_records(&big).unwrap_err();
        assert_eq!(
            e,
            CodecError::TooMany {
                n: MAX_BATCH + 1,
                max: MAX_BATCH
            }
        );
        assert_eq!(e.http_status(), 413);
        assert_eq!(CodecError::Empty.http_status(), 400);
        assert_eq!(
            decode_batch_records(&big[..MAX_BATCH * RECORD_BYTES])
                .unwrap()
                .len(),
            MAX_BATCH
        );
        assert_eq!(
            decode_batch_ids(&[0; 17]).unwrap_err(),
            CodecError::NotMultiple {
                len: 17,
                record: 16
            }
        );
        let mut ids = Vec::new();
        encode_id(5, &mut ids);
        encode_id(u128::MAX, &mut ids);
        assert_eq!(decode_batch_ids(&ids).unwrap(), vec![5, u128::MAX]);
        assert!(Records::new(&[]).unwrap().is_empty());
        assert!(Records::new(&[0; 5]).is_err());
        assert_eq!(decode_batch_transfers(&[0; 256]).unwrap().len(), 2);
        assert_eq!(decode_batch_accounts(&[0; 128]).unwrap().len(), 1);
    }

    #[test]
    fn json_round_trips() {
        let mut r = Rng(11);
        let accounts: Vec<Account> = (0..5).map(|_| random_account(&mut r)).collect();
        assert_eq!(
            accounts_from_json(&accounts_to_json(&accounts)).unwrap(),
            accounts
        );
        let transfers: Vec<Transfer> = (0..5).map(|_| random_transfer(&mut r)).collect();
        assert_eq!(
            transfers_from_json(&transfers_to_json(&transfers)).unwrap(),
            transfers
        );
        assert_eq!(
            ids_from_json(&ids_to_json(&[1, u128::MAX])).unwrap(),
            vec![1, u128::MAX]
        );
        let one: TransferJson = serde_json::from_slice(&transfer_to_json(&transfers[0])).unwrap();
        assert_eq!(one.to_transfer("x").unwrap(), transfers[0]);
        let one: AccountJson = serde_json::from_slice(&account_to_json(&accounts[0])).unwrap();
        assert_eq!(one.to_account("x").unwrap(), accounts[0]);
        let page: Value =
            serde_json::from_slice(&account_transfers_to_json(&transfers[..1], None)).unwrap();
        assert!(page["next_after"].is_null());
        let page: Value =
            serde_json::from_slice(&account_transfers_to_json(&[], Some(12))).unwrap();
        assert_eq!(page["next_after"], "12");
    }

    #[test]
    fn json_minimal_and_readable() {
        let body = br#"{"transfers":[{"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"100",
            "currency":"USD","code":1,"flags":["linked","pending"],"timeout_s":30}]}"#;
        let t = &transfers_from_json(body).unwrap()[0];
        assert_eq!((t.id, t.amount, t.timeout_s, t.code), (7, 100, 30, 1));
        assert_eq!(t.flags, transfer_flags::LINKED | transfer_flags::PENDING);
        assert_eq!(t.currency, 0x0044_5355);
        assert_eq!((t.pending_id, t.user_data, t.timestamp), (0, 0, 0));
        // Lowercase currency is an item-level failure (state says currency_invalid), not a request error.
        let a = &accounts_from_json(br#"{"accounts":[{"id":"1","currency":"usd","code":1}]}"#)
            .unwrap()[0];
        assert!(!crate::types::currency_is_valid(a.currency));
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = |body: &str| {
            transfers_from_json(body.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(r#"{"transfers":[{"id":"1"},{"id":"2","amount":"-5"}]}"#),
            "transfers[1].amount: not a decimal u128 string"
        );
        assert_eq!(
            err(r#"{"transfers":[{"id":"1","amount":5}]}"#),
            "transfers[0].amount: not a string"
        );
        assert_eq!(
            err(r#"{"transfers":[{"id":"1","code":70000}]}"#),
            "transfers[0].code: not an integer in 0..=65535"
        );
        assert_eq!(
            err(r#"{"transfers":[{"id":"1","colour":"red"}]}"#),
            "transfers[0].colour: unknown field"
        );
        assert_eq!(
            err(r#"{"transfers":[{"amount":"1"}]}"#),
            "transfers[0].id: missing"
        );
        assert_eq!(
            err(r#"{"transfers":[{"id":"1","flags":["fast"]}]}"#),
            "transfers[0].flags: unknown flag \"fast\""
        );
        assert_eq!(
            err(r#"{"transfers":[{"id":"1","currency":"DOLLAR"}]}"#),
            "transfers[0].currency: not a three-letter currency"
        );
        assert_eq!(
            err(r#"{"transfers":[{"id":"1","timestamp":"99999999999999999999"}]}"#),
            "transfers[0].timestamp: not a decimal u64 string"
        );
        assert_eq!(err(r#"{"transfers":[5]}"#), "transfers[0]: not an object");
        assert_eq!(
            accounts_from_json(br#"{"accounts":[{"id":"+1"}]}"#)
                .unwrap_err()
                .to_string(),
            "accounts[0].id: not a decimal u128 string"
        );
        assert_eq!(
            transfers_from_json(br#"{"transfers":[]}"#).unwrap_err(),
            CodecError::Empty
        );
        assert!(matches!(
            transfers_from_json(b"{"),
            Err(CodecError::Json(_))
        ));
        assert!(matches!(
            transfers_from_json(br#"{"accounts":[]}"#),
            Err(CodecError::Json(_))
        ));
        assert!(matches!(
            transfers_from_json(br#"[{"id":"1"}]"#),
            Err(CodecError::Json(_))
        ));
        let many = format!(r#"{{"ids":[{}]}}"#, vec![r#""1""#; MAX_BATCH + 1].join(","));
        assert_eq!(
            ids_from_json(many.as_bytes()).unwrap_err().http_status(),
            413
        );
        assert_eq!(
            ids_from_json(br#"{"ids":["1","x"]}"#)
                .unwrap_err()
                .to_string(),
            "ids[1]: not a decimal u128 string"
        );
        assert_eq!(parse_u128_decimal(&u128::MAX.to_string()), Some(u128::MAX));
        assert_eq!(
            parse_u128_decimal("340282366920938463463374607431768211456"),
            None
        );
        assert_eq!(parse_u128_decimal(""), None);
    }
}
