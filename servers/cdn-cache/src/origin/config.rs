//! What the origin serves: the configuration as written ([`OriginConfig`],
//! serde, `deny_unknown_fields`) and as validated once ([`ResolvedOrigin`]).

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::error::OriginError;

/// 1 KiB.
const KIB: u64 = 1024;
/// 1 MiB.
const MIB: u64 = 1024 * 1024;

/// Hard ceiling on `max_object_size_bytes` (1 GiB): bodies are streamed, but a
/// test that reads one whole must still fit in memory.
pub const MAX_OBJECT_SIZE_CEILING_BYTES: u64 = 1024 * MIB;
/// Most rules in a config; matching is a linear prefix scan per request.
pub const MAX_RULES: usize = 256;
/// Most injections active at once; scanned per request like the rules.
pub const MAX_INJECTIONS: usize = 64;
/// Most buckets in a size distribution.
pub const MAX_SIZE_BUCKETS: usize = 64;
/// Most `Vary` header names per rule (each adds a variant dimension).
pub const MAX_VARY_HEADERS: usize = 8;
/// Longest injected latency (fixed + jitter), milliseconds.
pub const MAX_LATENCY_MS: u64 = 60_000;
/// Longest finite hang, milliseconds (omit `hang_ms` to hang until the client
/// or the server's drain gives up).
pub const MAX_HANG_MS: u64 = 3_600_000;
/// Ceiling on `max_tracked_keys`, `max_versioned_keys` (memory bound).
pub const MAX_TABLE_KEYS: usize = 10_000_000;
/// Ceiling on `max_hangs`.
pub const MAX_HANGS_CEILING: usize = 1_000_000;
/// Smallest and largest body frame (`chunk_bytes`).
pub const CHUNK_BYTES_RANGE: (usize, usize) = (1024, 4 * 1024 * 1024);
/// Most `Expires` offset either way (one year), seconds.
pub const MAX_EXPIRES_OFFSET_S: i64 = 366 * 86_400;
/// Most segments per video in a `segments` rule.
pub const MAX_SEGMENTS: u32 = 1_000_000;

/// A size distribution, sampled once per key (deterministically from the seed
/// and the request target), so a key always has the same size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SizeDist {
    /// Every object has this size.
    Fixed {
        /// The size, bytes.
        size_bytes: u64,
    },
    /// A bucket is picked by weight, then a size uniformly in `[min, max]`.
    Buckets {
        /// The buckets (at least one, total weight > 0).
        buckets: Vec<SizeBucket>,
    },
}

/// One bucket of [`SizeDist::Buckets`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeBucket {
    /// Smallest size in the bucket, bytes.
    pub min_bytes: u64,
    /// Largest size in the bucket (inclusive), bytes.
    pub max_bytes: u64,
    /// Relative weight.
    pub weight: u32,
}

impl Default for SizeDist {
    /// A web-ish mix: mostly small objects, a long tail up to 1 MiB.
    fn default() -> Self {
        let b = |min_bytes, max_bytes, weight| SizeBucket {
            min_bytes,
            max_bytes,
            weight,
        };
        SizeDist::Buckets {
            buckets: vec![
                b(KIB, 4 * KIB, 50),
                b(4 * KIB, 64 * KIB, 30),
                b(64 * KIB, 256 * KIB, 15),
                b(256 * KIB, MIB, 5),
            ],
        }
    }
}

/// Which `ETag` a rule sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EtagMode {
    /// No `ETag`.
    None,
    /// A strong tag, `"0123456789abcdef"`.
    #[default]
    Strong,
    /// A weak tag, `W/"0123456789abcdef"`.
    Weak,
}

/// Response headers for every path under `prefix` (the first matching rule
/// wins, so put longer prefixes first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Path prefix, starting with `/`; `/` matches everything.
    pub prefix: String,
    /// `Cache-Control` value sent verbatim; `None` sends none.
    pub cache_control: Option<String>,
    /// Which `ETag`, if any.
    pub etag: EtagMode,
    /// Whether to send `Last-Modified` (and evaluate `If-Modified-Since`).
    pub last_modified: bool,
    /// Request header names the body varies on; sent as `Vary`, and each
    /// distinct (trimmed, lowercased) value gets a different body and ETag.
    pub vary: Vec<String>,
    /// `Expires` = response time + this many seconds (negative: already
    /// expired); `None` sends none.
    pub expires_in_s: Option<i64>,
    /// `Content-Type` value.
    pub content_type: String,
    /// Size distribution; `None` uses the config-wide [`OriginConfig::size`].
    pub size: Option<SizeDist>,
    /// Video segments: paths under the prefix must be `{id}/seg-{n}.ts` with
    /// `n < segments`, anything else is 404 (so a prefetcher sees the end).
    pub segments: Option<u32>,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            prefix: "/".to_string(),
            cache_control: Some("public, max-age=60".to_string()),
            etag: EtagMode::Strong,
            last_modified: true,
            vary: Vec::new(),
            expires_in_s: None,
            content_type: "application/octet-stream".to_string(),
            size: None,
            segments: None,
        }
    }
}

/// The default rule table; see the module docs for the table in prose.
pub fn default_rules() -> Vec<Rule> {
    let rule = |prefix: &str, cc: Option<&str>| Rule {
        prefix: prefix.to_string(),
        cache_control: cc.map(str::to_string),
        ..Rule::default()
    };
    vec![
        rule("/static/", Some("public, max-age=86400, immutable")),
        Rule {
            etag: EtagMode::None,
            last_modified: false,
            ..rule("/nostore/", Some("no-store"))
        },
        Rule {
            last_modified: false,
            ..rule("/private/", Some("private, max-age=60"))
        },
        Rule {
            vary: vec!["accept-encoding".to_string()],
            ..rule("/vary/", Some("public, max-age=60"))
        },
        rule(
            "/swr/",
            Some("public, max-age=1, stale-while-revalidate=30"),
        ),
        rule("/sie/", Some("public, max-age=1, stale-if-error=600")),
        rule("/smaxage/", Some("public, max-age=5, s-maxage=60")),
        rule("/nocache/", Some("no-cache")),
        Rule {
            etag: EtagMode::Weak,
            ..rule("/weak/", Some("public, max-age=60"))
        },
        Rule {
            expires_in_s: Some(60),
            ..rule("/expires/", None)
        },
        Rule {
            content_type: "video/mp2t".to_string(),
            size: Some(SizeDist::Fixed {
                size_bytes: 256 * KIB,
            }),
            segments: Some(100),
            ..rule("/video/", Some("public, max-age=3600"))
        },
        rule("/", Some("public, max-age=60")),
    ]
}

/// Latency, failures and hangs for requests under `prefix` (first match wins;
/// `""` or `/` matches everything). Switchable at runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Injection {
    /// Path prefix this applies to.
    pub prefix: String,
    /// Fixed delay before the response head, milliseconds.
    pub latency_fixed_ms: u64,
    /// Extra delay drawn uniformly from `0..=latency_jitter_ms` (seeded by the
    /// request index), milliseconds.
    pub latency_jitter_ms: u64,
    /// Share of requests answered with `fail_status` (0 = none, 1 = all:
    /// "origin down" at the HTTP level). Drawn per request from the seed.
    pub fail_share: f64,
    /// The 5xx status of injected failures.
    pub fail_status: u16,
    /// Close the connection without any response (hyper drops it): an origin
    /// that crashed mid-request, as a client sees it.
    pub close_connection: bool,
    /// Send the head and this many body bytes, then stall. Objects no larger
    /// than this are sent whole (there is nothing left to hold back).
    pub hang_after_bytes: Option<u64>,
    /// How long to stall before sending the rest; `None` stalls until the
    /// client goes away or the server's drain cuts the connection.
    pub hang_ms: Option<u64>,
}

impl Default for Injection {
    fn default() -> Self {
        Injection {
            prefix: String::new(),
            latency_fixed_ms: 0,
            latency_jitter_ms: 0,
            fail_share: 0.0,
            fail_status: 503,
            close_connection: false,
            hang_after_bytes: None,
            hang_ms: None,
        }
    }
}

impl Injection {
    /// Checks ranges; `field` prefixes the error's field name.
    pub fn validate(&self, field: &str) -> Result<(), OriginError> {
        if !(self.prefix.is_empty() || self.prefix.starts_with('/')) {
            return Err(OriginError::invalid(
                format!("{field}.prefix"),
                format!("must be empty or start with '/', got {:?}", self.prefix),
            ));
        }
        let latency = self.latency_fixed_ms.saturating_add(self.latency_jitter_ms);
        if latency > MAX_LATENCY_MS {
            return Err(OriginError::invalid(
                format!("{field}.latency_fixed_ms"),
                format!("fixed + jitter must be at most {MAX_LATENCY_MS} ms, got {latency}"),
            ));
        }
        if !(0.0..=1.0).contains(&self.fail_share) {
            return Err(OriginError::invalid(
                format!("{field}.fail_share"),
                format!("must be between 0 and 1, got {}", self.fail_share),
            ));
        }
        if !(500..=599).contains(&self.fail_status) {
            return Err(OriginError::invalid(
                format!("{field}.fail_status"),
                format!("must be a 5xx status, got {}", self.fail_status),
            ));
        }
        if let Some(ms) = self.hang_ms
            && ms > MAX_HANG_MS
        {
            return Err(OriginError::invalid(
                format!("{field}.hang_ms"),
                format!("must be at most {MAX_HANG_MS}, got {ms} (omit it to hang until cut)"),
            ));
        }
        if self.hang_ms.is_some() && self.hang_after_bytes.is_none() {
            return Err(OriginError::invalid(
                format!("{field}.hang_ms"),
                "needs hang_after_bytes as well",
            ));
        }
        Ok(())
    }

    /// Whether `path` is under this injection's prefix.
    pub fn applies_to(&self, path: &str) -> bool {
        path.starts_with(&self.prefix)
    }
}

/// Checks a whole injection list (length and each entry).
pub fn validate_injections(list: &[Injection], field: &str) -> Result<(), OriginError> {
    if list.len() > MAX_INJECTIONS {
        return Err(OriginError::invalid(
            field,
            format!("at most {MAX_INJECTIONS} entries, got {}", list.len()),
        ));
    }
    for (i, inj) in list.iter().enumerate() {
        inj.validate(&format!("{field}[{i}]"))?;
    }
    Ok(())
}

/// The origin's configuration as written (JSON via `--config`, or built in
/// code). Validate with [`OriginConfig::resolve`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Seed of bodies, sizes, latency jitter and failure draws.
    pub seed: u64,
    /// Largest object served (from any distribution or `?size=`), bytes.
    pub max_object_size_bytes: u64,
    /// The size distribution of rules without their own.
    pub size: SizeDist,
    /// Whether a `size=N` query parameter overrides the size (for tests; the
    /// query is part of the cache key, so each size is its own object).
    pub allow_size_query: bool,
    /// `Last-Modified` of version 0, seconds since the Unix epoch; version `v`
    /// is this plus `v` seconds, so a bump is always a later date and the
    /// value is reproducible (default 2023-11-14T22:13:20Z).
    pub last_modified_base_unix_s: u64,
    /// Per-path header rules, first matching prefix wins; a path no rule
    /// matches is 404.
    pub rules: Vec<Rule>,
    /// Injections active from the start (first matching prefix wins).
    pub injections: Vec<Injection>,
    /// Most keys whose fetches are counted individually; fetches of further
    /// keys are counted in an overflow total only.
    pub max_tracked_keys: usize,
    /// Most objects with a bumped version (prefix bumps are separate).
    pub max_versioned_keys: usize,
    /// Most responses hanging at once; beyond it the body is aborted at the
    /// hang point instead (still a broken response, but no held resources).
    pub max_hangs: usize,
    /// Body frame size, bytes: bodies are generated and sent in frames of this
    /// size, never built whole.
    pub chunk_bytes: usize,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            seed: 1,
            max_object_size_bytes: 64 * MIB,
            size: SizeDist::default(),
            allow_size_query: true,
            last_modified_base_unix_s: 1_700_000_000,
            rules: default_rules(),
            injections: Vec::new(),
            max_tracked_keys: 100_000,
            max_versioned_keys: 100_000,
            max_hangs: 1024,
            chunk_bytes: 64 * 1024,
        }
    }
}

/// A validated size distribution: cumulative weights for one draw per key.
#[derive(Debug, Clone)]
pub(crate) enum ResolvedSize {
    Fixed(u64),
    /// (cumulative weight, min, max); the last cumulative weight is the total.
    Buckets(Vec<(u64, u64, u64)>),
}

impl ResolvedSize {
    /// The size for a key whose hash is `h`.
    pub(crate) fn sample(&self, h: u64) -> u64 {
        match self {
            ResolvedSize::Fixed(n) => *n,
            ResolvedSize::Buckets(b) => {
                let total = b.last().map_or(1, |x| x.0);
                let pick = h % total;
                let (_, min, max) = b
                    .iter()
                    .find(|(cum, _, _)| pick < *cum)
                    .copied()
                    .unwrap_or((0, 0, 0));
                let span = max - min + 1;
                min + super::object::mix64(h ^ 0x5151) % span
            }
        }
    }
}

/// A validated rule with its header values built once.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedRule {
    pub(crate) prefix: String,
    pub(crate) cache_control: Option<HeaderValue>,
    pub(crate) etag: EtagMode,
    pub(crate) last_modified: bool,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) vary_value: Option<HeaderValue>,
    pub(crate) expires_in_s: Option<i64>,
    pub(crate) content_type: HeaderValue,
    pub(crate) size: Option<ResolvedSize>,
    pub(crate) segments: Option<u32>,
}

/// The origin configuration after validation: what [`super::app()`] runs.
#[derive(Debug, Clone)]
pub struct ResolvedOrigin {
    pub(crate) config: OriginConfig,
    pub(crate) rules: Vec<ResolvedRule>,
    pub(crate) size: ResolvedSize,
}

impl ResolvedOrigin {
    /// The configuration this was resolved from.
    pub fn config(&self) -> &OriginConfig {
        &self.config
    }
}

fn resolve_size(dist: &SizeDist, max: u64, field: &str) -> Result<ResolvedSize, OriginError> {
    match dist {
        SizeDist::Fixed { size_bytes } => {
            if *size_bytes > max {
                return Err(OriginError::invalid(
                    format!("{field}.size_bytes"),
                    format!("must be at most max_object_size_bytes ({max}), got {size_bytes}"),
                ));
            }
            Ok(ResolvedSize::Fixed(*size_bytes))
        }
        SizeDist::Buckets { buckets } => {
            if buckets.is_empty() || buckets.len() > MAX_SIZE_BUCKETS {
                return Err(OriginError::invalid(
                    format!("{field}.buckets"),
                    format!(
                        "needs 1 to {MAX_SIZE_BUCKETS} buckets, got {}",
                        buckets.len()
                    ),
                ));
            }
            let mut cum = 0u64;
            let mut out = Vec::with_capacity(buckets.len());
            for (i, b) in buckets.iter().enumerate() {
                let f = format!("{field}.buckets[{i}]");
                if b.min_bytes > b.max_bytes {
                    return Err(OriginError::invalid(
                        format!("{f}.min_bytes"),
                        format!("{} is above max_bytes {}", b.min_bytes, b.max_bytes),
                    ));
                }
                if b.max_bytes > max {
                    return Err(OriginError::invalid(
                        format!("{f}.max_bytes"),
                        format!(
                            "must be at most max_object_size_bytes ({max}), got {}",
                            b.max_bytes
                        ),
                    ));
                }
                if b.weight == 0 {
                    return Err(OriginError::invalid(
                        format!("{f}.weight"),
                        "must be positive",
                    ));
                }
                cum += u64::from(b.weight);
                out.push((cum, b.min_bytes, b.max_bytes));
            }
            Ok(ResolvedSize::Buckets(out))
        }
    }
}

fn in_range(field: &str, v: usize, lo: usize, hi: usize) -> Result<(), OriginError> {
    if v < lo || v > hi {
        return Err(OriginError::invalid(
            field,
            format!("must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(())
}

impl OriginConfig {
    /// Validates everything once; errors name the field (e.g.
    /// `rules[3].vary[0]`).
    pub fn resolve(&self) -> Result<ResolvedOrigin, OriginError> {
        let max = self.max_object_size_bytes;
        if max == 0 || max > MAX_OBJECT_SIZE_CEILING_BYTES {
            return Err(OriginError::invalid(
                "max_object_size_bytes",
                format!("must be between 1 and {MAX_OBJECT_SIZE_CEILING_BYTES} (1 GiB), got {max}"),
            ));
        }
        in_range("max_tracked_keys", self.max_tracked_keys, 1, MAX_TABLE_KEYS)?;
        in_range(
            "max_versioned_keys",
            self.max_versioned_keys,
            1,
            MAX_TABLE_KEYS,
        )?;
        in_range("max_hangs", self.max_hangs, 0, MAX_HANGS_CEILING)?;
        in_range(
            "chunk_bytes",
            self.chunk_bytes,
            CHUNK_BYTES_RANGE.0,
            CHUNK_BYTES_RANGE.1,
        )?;
        // A timestamp past 9999 cannot be an IMF-fixdate; leave room for bumps.
        if self.last_modified_base_unix_s > 250_000_000_000 {
            return Err(OriginError::invalid(
                "last_modified_base_unix_s",
                "must be before the year 9000",
            ));
        }
        let size = resolve_size(&self.size, max, "size")?;
        if self.rules.is_empty() || self.rules.len() > MAX_RULES {
            return Err(OriginError::invalid(
                "rules",
                format!("needs 1 to {MAX_RULES} rules, got {}", self.rules.len()),
            ));
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            rules.push(resolve_rule(r, max, &format!("rules[{i}]"))?);
        }
        validate_injections(&self.injections, "injections")?;
        Ok(ResolvedOrigin {
            config: self.clone(),
            rules,
            size,
        })
    }
}

fn resolve_rule(r: &Rule, max: u64, field: &str) -> Result<ResolvedRule, OriginError> {
    if !r.prefix.starts_with('/') {
        return Err(OriginError::invalid(
            format!("{field}.prefix"),
            format!("must start with '/', got {:?}", r.prefix),
        ));
    }
    let header = |name: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| {
            OriginError::invalid(
                format!("{field}.{name}"),
                format!("not a valid header value: {v:?}"),
            )
        })
    };
    let cache_control = match &r.cache_control {
        Some(v) => Some(header("cache_control", v)?),
        None => None,
    };
    if r.vary.len() > MAX_VARY_HEADERS {
        return Err(OriginError::invalid(
            format!("{field}.vary"),
            format!("at most {MAX_VARY_HEADERS} names, got {}", r.vary.len()),
        ));
    }
    let mut vary = Vec::with_capacity(r.vary.len());
    for (j, name) in r.vary.iter().enumerate() {
        // "*" would mean "never reuse"; a cache test can use no-store for that.
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            OriginError::invalid(
                format!("{field}.vary[{j}]"),
                format!("not a header name: {name:?}"),
            )
        })?;
        if vary.contains(&n) {
            return Err(OriginError::invalid(
                format!("{field}.vary[{j}]"),
                format!("{name:?} is listed twice"),
            ));
        }
        vary.push(n);
    }
    let vary_value = if vary.is_empty() {
        None
    } else {
        let joined = vary
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Some(header("vary", &joined)?)
    };
    if let Some(s) = r.expires_in_s
        && s.abs() > MAX_EXPIRES_OFFSET_S
    {
        return Err(OriginError::invalid(
            format!("{field}.expires_in_s"),
            format!("must be within ±{MAX_EXPIRES_OFFSET_S} s, got {s}"),
        ));
    }
    let content_type = header("content_type", &r.content_type)?;
    let size = match &r.size {
        Some(d) => Some(resolve_size(d, max, &format!("{field}.size"))?),
        None => None,
    };
    if let Some(n) = r.segments
        && (n == 0 || n > MAX_SEGMENTS)
    {
        return Err(OriginError::invalid(
            format!("{field}.segments"),
            format!("must be between 1 and {MAX_SEGMENTS}, got {n}"),
        ));
    }
    Ok(ResolvedRule {
        prefix: r.prefix.clone(),
        cache_control,
        etag: r.etag,
        last_modified: r.last_modified,
        vary,
        vary_value,
        expires_in_s: r.expires_in_s,
        content_type,
        size,
        segments: r.segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        OriginConfig::default().resolve().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = OriginConfig::default();
        c.rules[3].vary = vec!["bad header".into()];
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.starts_with("rules[3].vary[0]:"), "{e}");

        let c = OriginConfig {
            size: SizeDist::Fixed {
                size_bytes: OriginConfig::default().max_object_size_bytes + 1,
            },
            ..OriginConfig::default()
        };
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.starts_with("size.size_bytes:"), "{e}");

        let c = OriginConfig {
            injections: vec![Injection {
                fail_share: 1.5,
                ..Injection::default()
            }],
            ..OriginConfig::default()
        };
        let e = c.resolve().unwrap_err().to_string();
        assert!(e.starts_with("injections[0].fail_share:"), "{e}");
    }

    #[test]
    fn json_refuses_unknown_keys() {
        let e = serde_json::from_str::<OriginConfig>(r#"{"sede": 3}"#).unwrap_err();
        assert!(e.to_string().contains("sede"), "{e}");
        let c: OriginConfig =
            serde_json::from_str(r#"{"seed": 3, "size": {"kind": "fixed", "size_bytes": 10}}"#)
                .unwrap();
        assert_eq!(c.seed, 3);
        assert_eq!(c.rules, default_rules());
    }

    #[test]
    fn buckets_stay_in_range() {
        let r = resolve_size(&SizeDist::default(), MIB, "size").unwrap();
        for h in 0..10_000u64 {
            let s = r.sample(super::super::object::mix64(h));
            assert!((KIB..=MIB).contains(&s), "{s}");
        }
    }
}
