//! Cache keys: the primary key of a request and the secondary (variant) keys of `Vary`.
//!
//! The primary key is the scheme-less effective request URI, `host + path + query` (host lowercased, from the URI's
//! authority or the `Host` header), shared by GET and HEAD. Stored objects are keyed by a 64-bit foldhash of it with
//! a **fixed** seed, so every process (edge and shield, before and after a restart, and the disk tier) computes the
//! same number for the same key, and rendezvous hashing picks the same shield everywhere.
//!
//! A response with `Vary` is stored under a variant key: the hash of the primary key's hash plus each selecting
//! header's normalised request value (all field lines joined with ", ", trimmed, lowercased; absent = empty). The
//! primary key then holds a small [`VarySpec`] naming the selecting headers.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, PoisonError};

use http::header::{HOST, VARY};
use http::{HeaderMap, HeaderName, Uri};

/// The fixed hash seed ("refbench" in ASCII): changing it changes every key, in every tier and on disk.
pub const KEY_SEED: u64 = 0x7265_6662_656e_6368;

/// Most selecting headers a `Vary` may name before the response is treated as uncacheable.
pub const MAX_VARY_HEADERS: usize = 8;

/// Most variants tracked per primary key (purges remove them by this list); further variants are not stored.
pub const MAX_VARIANTS: usize = 64;

/// Hashes byte strings with the fixed seed; each part is terminated so `("ab","c")` and `("a","bc")` differ.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(KEY_SEED).build_hasher();
    for p in parts {
        h.write(p);
        h.write_u8(0xff);
    }
    h.finish()
}

/// A primary cache key: its text (for purges by prefix and for logs) and its hash (for the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// `host + path + query`, host lowercased.
    pub text: Box<str>,
    /// Byte offset of the path in `text` (the host's length).
    pub path_at: usize,
    /// [`hash_parts`] of the text.
    pub hash: u64,
}

impl CacheKey {
    /// Builds the key of a request target for `host` (empty if unknown).
    pub fn new(host: &str, path_and_query: &str) -> Self {
        let mut text = String::with_capacity(host.len() + path_and_query.len());
        text.push_str(host);
        text.make_ascii_lowercase();
        let path_at = text.len();
        text.push_str(path_and_query);
        let hash = hash_parts(&[text.as_bytes()]);
        CacheKey {
            text: text.into_boxed_str(),
            path_at,
            hash,
        }
    }

    /// The key of a request: host from the URI's authority, else the `Host` header.
    pub fn of_request(uri: &Uri, headers: &HeaderMap) -> Self {
        let host = match uri.authority() {
            Some(a) => a.as_str(),
            None => headers
                .get(HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        };
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        Self::new(host, pq)
    }

    /// The host part.
    pub fn host(&self) -> &str {
        &self.text[..self.path_at]
    }

    /// The path and query part.
    pub fn path(&self) -> &str {
        &self.text[self.path_at..]
    }
}

/// The selecting headers of a stored `Vary` response, plus the variant keys stored under it (for purges).
#[derive(Debug)]
pub struct VarySpec {
    /// Lowercase header names, in the response's order, deduplicated.
    pub names: Box<[HeaderName]>,
    /// Variant key hashes stored so far (at most [`MAX_VARIANTS`]).
    variants: Mutex<Vec<u64>>,
}

/// What a response's `Vary` says about caching it.
#[derive(Debug, PartialEq, Eq)]
pub enum VaryKind {
    /// No `Vary` (or only empty values): one object per primary key.
    None,
    /// These selecting headers.
    Headers(Vec<HeaderName>),
    /// `Vary: *`, an unparsable name, or too many names: never reuse, so never store.
    Uncacheable,
}

/// Parses the `Vary` of a response.
pub fn parse_vary(headers: &HeaderMap) -> VaryKind {
    let mut names: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(VARY) {
        let Ok(s) = v.to_str() else {
            return VaryKind::Uncacheable;
        };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return VaryKind::Uncacheable;
            }
            let Ok(n) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) else {
                return VaryKind::Uncacheable;
            };
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    match names.len() {
        0 => VaryKind::None,
        n if n > MAX_VARY_HEADERS => VaryKind::Uncacheable,
        _ => VaryKind::Headers(names),
    }
}

impl VarySpec {
    /// A spec for these selecting headers.
    pub fn new(names: Vec<HeaderName>) -> Self {
        VarySpec {
            names: names.into_boxed_slice(),
            variants: Mutex::new(Vec::new()),
        }
    }

    /// Whether `names` is exactly this spec's list.
    pub fn same_names(&self, names: &[HeaderName]) -> bool {
        *self.names == *names
    }

    /// The variant key of a request with `headers` under `primary`.
    pub fn variant_hash(&self, primary: u64, headers: &HeaderMap) -> u64 {
        variant_hash(primary, &self.names, headers)
    }

    /// Records a stored variant; false when the list is full (the variant must not be stored).
    pub fn register(&self, variant: u64) -> bool {
        let mut v = self.variants.lock().unwrap_or_else(PoisonError::into_inner);
        if v.contains(&variant) {
            return true;
        }
        if v.len() >= MAX_VARIANTS {
            return false;
        }
        v.push(variant);
        true
    }

    /// The variants recorded so far.
    pub fn variants(&self) -> Vec<u64> {
        self.variants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Approximate memory held, bytes (for the byte-bounded store).
    pub fn size_bytes(&self) -> u64 {
        let names: usize = self.names.iter().map(|n| n.as_str().len() + 32).sum();
        (names + MAX_VARIANTS * 8 + 64) as u64
    }
}

/// The variant key of a request with `headers` for selecting headers `names` under `primary`.
pub fn variant_hash(primary: u64, names: &[HeaderName], headers: &HeaderMap) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(KEY_SEED).build_hasher();
    h.write_u64(primary);
    let mut value = String::new();
    for name in names {
        h.write(name.as_str().as_bytes());
        h.write_u8(0xff);
        normalised_value(headers, name, &mut value);
        h.write(value.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

/// A selecting header's value as compared for `Vary`: all field lines joined with ", ", trimmed, lowercased
/// (the synthetic origin normalises the same way, so one origin variant is one cache variant).
fn normalised_value(headers: &HeaderMap, name: &HeaderName, out: &mut String) {
    out.clear();
    for (i, v) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    let trimmed = out.trim().to_ascii_lowercase();
    out.clear();
    out.push_str(&trimmed);
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn keys_are_stable_and_host_insensitive_to_case() {
        let a = CacheKey::new("Example.COM", "/a?b=1");
        let b = CacheKey::new("example.com", "/a?b=1");
        assert_eq!(a, b);
        assert_eq!(a.text.as_ref(), "example.com/a?b=1");
        assert_eq!(a.host(), "example.com");
        assert_eq!(a.path(), "/a?b=1");
        // Fixed seed: the same on every run and in every process.
        assert_eq!(a.hash, hash_parts(&[b"example.com/a?b=1"]));
        assert_ne!(a.hash, CacheKey::new("example.com", "/a?b=2").hash);
    }

    #[test]
    fn vary_parsing_and_variants() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_vary(&h), VaryKind::None);
        h.insert(
            VARY,
            HeaderValue::from_static("Accept-Encoding, accept-encoding"),
        );
        let VaryKind::Headers(names) = parse_vary(&h) else {
            panic!("headers");
        };
        assert_eq!(names.len(), 1);
        h.insert(VARY, HeaderValue::from_static("*"));
        assert_eq!(parse_vary(&h), VaryKind::Uncacheable);

        let spec = VarySpec::new(names);
        let mut gz = HeaderMap::new();
        gz.insert("accept-encoding", HeaderValue::from_static(" GZIP "));
        let mut gz2 = HeaderMap::new();
        gz2.insert("accept-encoding", HeaderValue::from_static("gzip"));
        let none = HeaderMap::new();
        assert_eq!(spec.variant_hash(1, &gz), spec.variant_hash(1, &gz2));
        assert_ne!(spec.variant_hash(1, &gz), spec.variant_hash(1, &none));
        assert_ne!(spec.variant_hash(1, &gz), spec.variant_hash(2, &gz));
        assert!(spec.register(5));
        assert!(spec.register(5));
        assert_eq!(spec.variants(), vec![5]);
    }
}
