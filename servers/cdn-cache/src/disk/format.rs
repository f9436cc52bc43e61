//! The on-disk record: a 24-byte header, the caller's metadata, the body; CRC32C over all of it.
//!
//! ```text
//! offset size field
//!      0    4 magic "RBDC"
//!      4    2 version (1), little-endian like every integer here
//!      6    2 meta_len_bytes
//!      8    4 body_len_bytes
//!     12    8 key
//!     20    4 crc32c over bytes 0..20, then the metadata, then the body
//!     24      metadata, then body
//! ```
//!
//! The key and both lengths are inside the checksum and are compared with the index on every read, so a record that
//! is torn, bit-flipped, or read at a stale offset is rejected (reported as corrupt, never served).

use std::ops::Range;

use bytes::Bytes;

/// The first four bytes of every record.
pub(crate) const MAGIC: [u8; 4] = *b"RBDC";
/// The record format version this code writes and reads.
pub(crate) const VERSION: u16 = 1;
/// Size of a record header.
pub const HEADER_BYTES: u64 = 24;
/// Offset of the CRC field (everything before it is checksummed, then the payload).
const CRC_AT: usize = 20;

/// Why a record read back from disk was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Corrupt {
    /// Fewer bytes than a header, or lengths that disagree with the bytes read.
    Length,
    /// The magic or version is wrong.
    Magic,
    /// The record holds another key than the index says.
    Key,
    /// The CRC32C does not match.
    Crc,
}

/// Encodes the header of a record holding `meta` and the concatenation of `body`.
///
/// The caller guarantees `meta.len() <= u16::MAX` and a body length below 4 GiB (both enforced by
/// [`super::DiskConfig::validate`] limits and checked again in `put`).
pub(crate) fn encode_header(key: u64, meta: &[u8], body: &[Bytes]) -> [u8; HEADER_BYTES as usize] {
    let body_len: usize = body.iter().map(Bytes::len).sum();
    let mut header = [0u8; HEADER_BYTES as usize];
    header[0..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&VERSION.to_le_bytes());
    // Truncation cannot happen: the lengths are checked in `put` (see the doc above).
    header[6..8].copy_from_slice(&(meta.len() as u16).to_le_bytes());
    header[8..12].copy_from_slice(&(body_len as u32).to_le_bytes());
    header[12..20].copy_from_slice(&key.to_le_bytes());
    let mut crc = crc32c::crc32c(&header[..CRC_AT]);
    crc = crc32c::crc32c_append(crc, meta);
    for part in body {
        crc = crc32c::crc32c_append(crc, part);
    }
    header[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a whole record read back from disk and returns the ranges of its metadata and body.
pub(crate) fn decode(record: &[u8], key: u64) -> Result<(Range<usize>, Range<usize>), Corrupt> {
    let header_len = HEADER_BYTES as usize;
    if record.len() < header_len {
        return Err(Corrupt::Length);
    }
    if record[0..4] != MAGIC || u16::from_le_bytes([record[4], record[5]]) != VERSION {
        return Err(Corrupt::Magic);
    }
    let meta_len = usize::from(u16::from_le_bytes([record[6], record[7]]));
    let body_len = u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
    if header_len + meta_len + body_len != record.len() {
        return Err(Corrupt::Length);
    }
    let mut key_bytes = [0u8; 8];
    key_bytes.copy_from_slice(&record[12..20]);
    if u64::from_le_bytes(key_bytes) != key {
        return Err(Corrupt::Key);
    }
    let stored = u32::from_le_bytes([record[20], record[21], record[22], record[23]]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&record[..CRC_AT]), &record[header_len..]);
    if crc != stored {
        return Err(Corrupt::Crc);
    }
    let meta_end = header_len + meta_len;
    Ok((header_len..meta_end, meta_end..record.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: u64, meta: &[u8], body: &[Bytes]) -> Vec<u8> {
        let mut out = encode_header(key, meta, body).to_vec();
        out.extend_from_slice(meta);
        for part in body {
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn round_trip_with_split_body() {
        let body = [Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        let rec = record(42, b"meta", &body);
        let (meta, body) = decode(&rec, 42).expect("valid record");
        assert_eq!(&rec[meta], b"meta");
        assert_eq!(&rec[body], b"hello world");
    }

    #[test]
    fn empty_meta_and_body() {
        let rec = record(7, b"", &[]);
        assert_eq!(rec.len() as u64, HEADER_BYTES);
        let (meta, body) = decode(&rec, 7).expect("valid record");
        assert!(meta.is_empty() && body.is_empty());
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let rec = record(9, b"m", &[Bytes::from_static(b"body bytes")]);
        for byte in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode(&bad, 9).is_err(),
                    "flip of bit {bit} in byte {byte} not detected"
                );
            }
        }
    }

    #[test]
    fn wrong_key_and_short_reads_are_rejected() {
        let rec = record(1, b"m", &[Bytes::from_static(b"b")]);
        assert_eq!(decode(&rec, 2), Err(Corrupt::Key));
        assert_eq!(decode(&rec[..rec.len() - 1], 1), Err(Corrupt::Length));
        assert_eq!(decode(&rec[..10], 1), Err(Corrupt::Length));
    }
}
