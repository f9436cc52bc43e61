//! The disk tier under the memory tier: [`LowerTier`] for [`DiskTier`].
//!
//! An evicted [`Entry`] goes down as one disk record: the metadata blob below, then the body (one buffer). A miss
//! in memory looks here (inside the coalesced fetch, so once per key, and only for plain requests without
//! `Authorization`); a fresh hit is decoded, re-inserted into the memory tier (promotion) and served with
//! `Cache-Status: ...; hit; detail=disk`; a stale one with validators is revalidated upstream
//! (`fwd=stale; fwd-status=304; detail=disk` when the origin confirms it), one without is refetched. The disk copy
//! is left in place (the next eviction of the key replaces it, otherwise it ages out with its segment).
//!
//! Purges reach the disk through [`LowerTier::remove`] (keys the memory tier knew) and [`LowerTier::purge`]
//! (a scan of the disk index by key text, for objects only the disk holds), both before the purge is answered.
//!
//! # Metadata (version 1, integers little-endian)
//! ```text
//! u8 version | u8 flags (bit 0: variant) | u16 path_at | u16 key_len | key text
//! u16 status | u64 received_unix_ms | u64 age_at_store_ms | u64 fresh_for_ms | u64 swr_ms | u64 sie_ms
//! u64 body_bytes | u16 header count | per header: u16 name_len, name, u16 value_len, value
//! ```
//! The key comes first so a purge can match it without decoding the rest. `http-cache-semantics` is built without
//! serde, so the policy is stored as its inputs (status, headers, receive time, age) and rebuilt on decode; the
//! precomputed [`Freshness`] is stored as durations and re-anchored on the monotonic clock. The receive time is a
//! wall-clock reading, which is fine because the disk tier is never read across a restart (it starts cold).
//!
//! # Integrity
//! The disk tier already rejects records whose CRC32C, key or lengths disagree. On top of that, a blob that does
//! not decode (bad version, truncated, trailing bytes, invalid status or header, a key whose hash is not the
//! record's key, a body length that disagrees, a receive time in the future) is a miss: counted in
//! `cdn_cache_disk_decode_failures_total`, the record removed, never served.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::key::hash_parts;
use super::policy::{Directives, Freshness, rebuild_policy};
use super::store::{Entry, LowerTier, PurgeRule};
use crate::disk::DiskTier;

/// The metadata format this code writes and reads.
const META_VERSION: u8 = 1;
/// Flag bit: the entry is a `Vary` variant (stored under a variant hash).
const FLAG_VARIANT: u8 = 1;
/// Fixed part before the key text.
const KEY_AT: usize = 6;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn put_u16(out: &mut Vec<u8>, v: usize) -> Option<()> {
    out.put_u16_le(u16::try_from(v).ok()?);
    Some(())
}

/// Encodes everything of `e` but the body; `None` when a field does not fit the format (a key or header over
/// 64 KiB, more than 65535 headers): such an object is simply not written.
pub(crate) fn encode_meta(e: &Entry, now: Instant, wall: SystemTime) -> Option<Vec<u8>> {
    let key = e.key.as_bytes();
    let path_at = e.path_at;
    let headers_len: usize = e
        .headers
        .iter()
        .map(|(n, v)| 4 + n.as_str().len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(KEY_AT + key.len() + 54 + headers_len);
    out.put_u8(META_VERSION);
    out.put_u8(if e.variant { FLAG_VARIANT } else { 0 });
    put_u16(&mut out, path_at)?;
    put_u16(&mut out, key.len())?;
    out.put_slice(key);
    out.put_u16_le(e.status.as_u16());
    let resident = e.freshness.resident(now);
    let received = wall
        .checked_sub(resident)?
        .duration_since(UNIX_EPOCH)
        .ok()?;
    out.put_u64_le(millis(received));
    out.put_u64_le(millis(e.freshness.age_at_store));
    out.put_u64_le(millis(e.freshness.fresh_for));
    out.put_u64_le(millis(e.freshness.stale_while_revalidate));
    out.put_u64_le(millis(e.freshness.stale_if_error));
    out.put_u64_le(e.body_bytes);
    put_u16(&mut out, e.headers.len())?;
    for (n, v) in &e.headers {
        put_u16(&mut out, n.as_str().len())?;
        out.put_slice(n.as_str().as_bytes());
        put_u16(&mut out, v.len())?;
        out.put_slice(v.as_bytes());
    }
    Some(out)
}

/// A bounds-checked reader over the metadata blob.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn ms(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(self.u64()?))
    }
}

/// The key text and its path offset, without decoding the rest (for purges).
fn meta_key(meta: &[u8]) -> Option<(&str, usize)> {
    let mut r = Reader(meta);
    if r.u8()? != META_VERSION {
        return None;
    }
    let _flags = r.u8()?;
    let path_at = usize::from(r.u16()?);
    let len = usize::from(r.u16()?);
    let key = std::str::from_utf8(r.take(len)?).ok()?;
    key.is_char_boundary(path_at).then_some((key, path_at))
}

/// Decodes a record back into an entry; `None` for anything inconsistent (see the module docs).
pub(crate) fn decode(
    key_hash: u64,
    meta: &[u8],
    body: Bytes,
    now: Instant,
    wall: SystemTime,
) -> Option<Entry> {
    let (key, path_at) = meta_key(meta)?;
    let mut r = Reader(meta);
    r.take(KEY_AT)?;
    let flags = meta[1];
    let variant = flags & FLAG_VARIANT != 0;
    r.take(key.len())?;
    if flags & !FLAG_VARIANT != 0 || (!variant && hash_parts(&[key.as_bytes()]) != key_hash) {
        return None;
    }
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let received = UNIX_EPOCH.checked_add(r.ms()?)?;
    let age_at_store = r.ms()?;
    let fresh_for = r.ms()?;
    let stale_while_revalidate = r.ms()?;
    let stale_if_error = r.ms()?;
    let body_bytes = r.u64()?;
    if body_bytes != body.len() as u64 {
        return None;
    }
    let count = r.u16()?;
    let mut headers = HeaderMap::with_capacity(usize::from(count));
    for _ in 0..count {
        let n = usize::from(r.u16()?);
        let name = HeaderName::from_bytes(r.take(n)?).ok()?;
        let n = usize::from(r.u16()?);
        let value = HeaderValue::from_bytes(r.take(n)?).ok()?;
        headers.append(name, value);
    }
    if !r.0.is_empty() {
        return None;
    }
    if let Some(cl) = headers.get(CONTENT_LENGTH)
        && cl.to_str().ok()?.trim().parse::<u64>().ok()? != body_bytes
    {
        return None;
    }
    // A receive time in the future cannot be placed on the monotonic clock: refuse rather than guess an age.
    let resident = wall.duration_since(received).ok()?;
    let stored_at = now.checked_sub(resident)?;
    let (host, path) = key.split_at_checked(path_at)?;
    // The crate adds the time since `received` itself: the `Age` it needs is the one at receipt.
    let policy = rebuild_policy(
        host,
        path,
        status,
        &headers,
        age_at_store.as_secs(),
        received,
    )?;
    let directives = Directives::parse(&headers);
    let body: Box<[Bytes]> = if body.is_empty() {
        Box::new([])
    } else {
        Box::new([body])
    };
    Some(Entry {
        key: key.into(),
        path_at,
        variant,
        status,
        headers,
        body,
        body_bytes,
        policy,
        directives,
        freshness: Freshness {
            stored_at,
            age_at_store,
            fresh_for,
            stale_while_revalidate,
            stale_if_error,
        },
        // A prefetch mark does not survive the trip down: see `cache::prefetch`.
        prefetch: None,
        wire_head: std::sync::OnceLock::new(),
    })
}

impl LowerTier for DiskTier {
    fn offer(&self, key_hash: u64, entry: Arc<Entry>) {
        let Some(meta) = encode_meta(&entry, Instant::now(), SystemTime::now()) else {
            metrics::counter!("cdn_cache_disk_unencodable_total").increment(1);
            return;
        };
        // Refusals (too large, queue full, stopped) are counted by the disk tier; a cache may drop objects.
        let _ = self.put(key_hash, &meta, &entry.body);
    }

    fn lookup(
        &self,
        key_hash: u64,
    ) -> Pin<Box<dyn Future<Output = Option<Arc<Entry>>> + Send + '_>> {
        Box::pin(async move {
            let hit = self.get(key_hash).await?;
            match decode(
                key_hash,
                &hit.meta,
                hit.body,
                Instant::now(),
                SystemTime::now(),
            ) {
                Some(e) => Some(Arc::new(e)),
                None => {
                    metrics::counter!("cdn_cache_disk_decode_failures_total").increment(1);
                    // Never serve it, and do not pay for reading it again.
                    self.remove(key_hash);
                    None
                }
            }
        })
    }

    fn remove(&self, key_hash: u64) {
        DiskTier::remove(self, key_hash);
    }

    fn contains(&self, key_hash: u64) -> bool {
        DiskTier::contains(self, key_hash)
    }

    /// O(entries) under the disk index lock (lookups wait for it), but only a slice compare per entry.
    fn purge(&self, rule: &PurgeRule) -> usize {
        self.remove_if(|_, meta| match meta_key(meta) {
            Some((key, path_at)) => rule.matches(key, path_at),
            // Unreadable metadata could never be served anyway: drop it.
            None => true,
        })
    }

    fn name(&self) -> &'static str {
        "disk"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::{ReqView, decide};

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let uri: http::Uri = "/a/b?x=1".parse().unwrap();
        let req = HeaderMap::new();
        let mut res = HeaderMap::new();
        res.insert(
            "cache-control",
            HeaderValue::from_static("public, max-age=60"),
        );
        res.insert(CONTENT_LENGTH, HeaderValue::from(5u64));
        let now = Instant::now();
        let wall = SystemTime::now();
        let d = decide(
            &ReqView {
                uri: &uri,
                headers: &req,
            },
            StatusCode::OK,
            &res,
            wall,
            now,
        );
        let key = "cdn.test/a/b?x=1";
        let e = Entry {
            key: key.into(),
            path_at: 8,
            variant: false,
            status: StatusCode::OK,
            headers: res,
            body: Box::new([Bytes::from_static(b"hello")]),
            body_bytes: 5,
            policy: d.policy,
            directives: d.directives,
            freshness: d.freshness,
            prefetch: None,
            wire_head: std::sync::OnceLock::new(),
        };
        let hash = hash_parts(&[key.as_bytes()]);
        let meta = encode_meta(&e, now, wall).unwrap();
        let back = decode(hash, &meta, Bytes::from_static(b"hello"), now, wall).unwrap();
        assert_eq!(&*back.key, key);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.freshness.fresh_for, e.freshness.fresh_for);
        assert!(back.freshness.is_fresh(now));
        assert!(back.policy.age(wall) < Duration::from_secs(2));
        assert!(back.policy.time_to_live(wall) > Duration::from_secs(58));
        assert_eq!(meta_key(&meta), Some((key, 8)));
        // Wrong key hash, wrong body length, truncation, trailing bytes, future receive time: all refused.
        assert!(decode(hash ^ 1, &meta, Bytes::from_static(b"hello"), now, wall).is_none());
        assert!(decode(hash, &meta, Bytes::from_static(b"hell"), now, wall).is_none());
        assert!(
            decode(
                hash,
                &meta[..meta.len() - 1],
                Bytes::from_static(b"hello"),
                now,
                wall
            )
            .is_none()
        );
        let mut long = meta.clone();
        long.push(0);
        assert!(decode(hash, &long, Bytes::from_static(b"hello"), now, wall).is_none());
        let past = wall - Duration::from_secs(3600);
        assert!(decode(hash, &meta, Bytes::from_static(b"hello"), now, past).is_none());
    }
}
