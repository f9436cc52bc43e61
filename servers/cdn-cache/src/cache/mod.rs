//! The cache tier: one server, configured as an **edge** or a **shield**, in front of one or more upstreams.
//!
//! An edge sends its misses to one of several shields chosen by rendezvous hashing of the cache key
//! ([`upstream`](Upstreams)), so each object is fetched from the origin through one shield only; a shield's
//! upstream is the origin. Both roles run the same code; the role only names the tier (`Cache-Status`, metrics,
//! the readiness line).
//!
//! Layers:
//! - [`CacheKey`], [`VarySpec`]: primary keys (`host + path + query`, fixed-seed foldhash) and `Vary` variants.
//! - `policy`: RFC 9111 decisions through `http-cache-semantics` (storability, freshness, `Age`, request
//!   directives, 304 merge), plus RFC 5861 `stale-while-revalidate` / `stale-if-error`, precomputed per object so
//!   a plain hit is two comparisons.
//! - [`Store`]: the memory tier (S3-FIFO from [`crate::evict`], sharded, byte-bounded), the key index and purge log;
//!   the [`LowerTier`] trait is the seam for the disk tier (evicted objects go down, misses look there first).
//! - `coalesce`: one upstream fetch per key at a time; waiters are streamed the body as it arrives; a failed fetch
//!   is retried by a new leader; bodies that fail or stall are never stored and never presented as complete.
//! - [`Upstreams`]: hyper's pooled HTTP/1.1 client with connect, head and idle-body timeouts.
//! - `lower`: the disk tier ([`crate::disk::DiskTier`]) as the [`LowerTier`]: evicted entries are encoded into a
//!   record (head, policy inputs, freshness, body), a memory miss looks there inside the coalesced fetch, a hit is
//!   promoted back into memory and served with `Cache-Status: ...; hit; detail=disk`; records that do not decode
//!   are misses, never served. Opened by [`start`] when `disk_dir` is set (`--disk-dir`, `--disk-bytes`).
//! - `prefetch`: predictive prefetch of sequential objects (`--prefetch-segments K`, off by default): a client GET
//!   of `.../seg-{n}.{ext}` under a `--prefetch-prefix` fetches `seg-{n+1}` ..= `seg-{n+K}` in the background
//!   through the coalesced fetch path (bounded by `--prefetch-max-inflight`), and counts how many prefetched
//!   objects clients used before they left memory (`cdn_cache_prefetch_total{tier,outcome}`, `/stats`).
//! - [`CacheApp`]: the handler; [`CacheAdmin`]: purges (by key, by prefix, all; also applied to the disk tier and,
//!   with `--upstream-admin`, to every upstream tier first), stats, `/metrics`, `/healthz`.
//!
//! Every response carries `Cache-Status` (RFC 9211, see [`Status`]); hits carry `Age`.
//!
//! Metrics (Prometheus, label `tier` = the `Cache-Status` name): `cdn_cache_requests_total{outcome}` (hit,
//! stale_while_revalidate, stale_if_error, miss, revalidated, collapsed, pass, error), `cdn_cache_stored_total`,
//! `cdn_cache_not_stored_total`, `cdn_cache_upstream_fetches_total{result}`, `cdn_cache_bytes_served_total`,
//! `cdn_cache_bytes_fetched_total`, `cdn_cache_upstream_fetch_seconds`, `cdn_cache_prefetch_total{outcome}` (issued,
//! stored, not_stored, used, evicted_unused, skipped_cached, skipped_inflight, dropped_full, failed, cancelled), and
//! the disk tier's `cdn_cache_disk_*`.
//!
//! Limits: memory bytes (the store), objects larger than `max_object_bytes` are streamed through and not stored
//! (and a body without `Content-Length` that grows past it fails), fetches in flight (`max_inflight_keys`; beyond
//! it requests go upstream uncoalesced), waits (`coalesce_timeout_ms`, then 504), upstream connect / head / idle
//! body timeouts, request bodies forwarded for unsafe methods (`max_request_body_bytes`), prefetches
//! (`prefetch_segments` ≤ [`MAX_PREFETCH_SEGMENTS`] per request, `prefetch_max_inflight` at once, beyond it dropped),
//! and the shared HTTP listener limits (connections, header bytes: oversized heads get 431).
//!
//! The data port is served by `refbench_common::h1` (HTTP/1.1 by hand, h2c through hyper): a plain fresh hit is
//! answered from the request head alone by the tier's `FastPath` impl, everything else goes through
//! [`CacheApp::handle`].

mod app;
mod coalesce;
mod error;
mod key;
mod lower;
mod policy;
mod prefetch;
mod purge;
mod status;
mod store;
mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use refbench_common::CommonError;
use refbench_common::admin::{Upkeep, metrics_handle};
use refbench_common::announce::{Ready, announce};
use refbench_common::bind::{DEFAULT_BIND, bind_tcp};
use refbench_common::cpu::{ProcessArgs, pin_to_cpus};
use refbench_common::h1::serve_h1;
use refbench_common::http::{Limits, serve_http};
use refbench_common::shutdown::{self, Shutdown};
use tokio::task::JoinHandle;

use crate::disk::{
    DiskConfig, DiskTier, MAX_SEGMENT_BYTES, MAX_SEGMENTS_PER_CAPACITY, MIN_SEGMENT_BYTES,
};

pub use app::{
    CacheApp, CacheBody, CacheFuture, FetchStream, MAX_ATTEMPTS, app, app_with_lower_tier,
};
pub use error::{CacheError, FetchError};
pub use key::{
    CacheKey, KEY_SEED, MAX_VARIANTS, MAX_VARY_HEADERS, VaryKind, VarySpec, hash_parts, parse_vary,
    variant_hash,
};
pub use policy::{Directives, Freshness, MAX_STALE_WINDOW};
pub use prefetch::{
    DEFAULT_PREFETCH_MAX_INFLIGHT, MAX_EXT_LEN, MAX_PREFETCH_INFLIGHT, MAX_PREFETCH_PREFIX_LEN,
    MAX_PREFETCH_PREFIXES, MAX_PREFETCH_SEGMENTS, MAX_SEGMENT_DIGITS, Outcome as PrefetchOutcome,
    PREFETCH_HEADER, PrefetchConfig, PrefetchMark,
};
pub use purge::{CacheAdmin, cache_admin_limits};
pub use status::{CACHE_STATUS, Fwd, Status};
pub use store::{Entry, LowerTier, NotStored, PURGE_LOG_LEN, PassMarker, PurgeRule, Store, Stored};
pub use upstream::{BoxError, UpstreamBody, Upstreams};

const MIB: u64 = 1024 * 1024;

/// Most upstreams (shields) per tier.
pub const MAX_UPSTREAMS: usize = 64;
/// Limits of `--threads` and `--max-connections`, shared by every server.
pub use refbench_common::cpu::{MAX_CONNECTIONS, MAX_THREADS};
/// Largest memory tier, bytes (1 TiB).
pub const MAX_MEMORY_BYTES: u64 = 1024 * 1024 * MIB;
/// Smallest memory tier, bytes.
pub const MIN_MEMORY_BYTES: u64 = MIB;
/// Most fetches in flight accepted by `max_inflight_keys`.
pub const MAX_INFLIGHT_KEYS: usize = 1_000_000;
/// Longest timeout accepted anywhere, milliseconds (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Largest request body forwarded for unsafe methods, bytes.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Smallest disk tier, bytes.
pub const MIN_DISK_BYTES: u64 = MIB;
/// Largest disk tier, bytes (256 GiB: [`MAX_SEGMENTS_PER_CAPACITY`] segments of [`MAX_SEGMENT_BYTES`]).
pub const MAX_DISK_BYTES: u64 = MAX_SEGMENTS_PER_CAPACITY * MAX_SEGMENT_BYTES;
/// Default disk tier capacity, bytes (1 GiB).
pub const DEFAULT_DISK_BYTES: u64 = 1024 * MIB;

/// Which tier this is. Both behave the same; the role names the tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Faces clients; misses go to shields (or straight to the origin).
    Edge,
    /// Faces edges; misses go to the origin.
    Shield,
}

impl Role {
    /// `edge` or `shield`.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Shield => "shield",
        }
    }

    /// The `system` of the readiness line: `cdn-edge` or `cdn-shield`.
    pub const fn system(self) -> &'static str {
        match self {
            Role::Edge => "cdn-edge",
            Role::Shield => "cdn-shield",
        }
    }
}

/// A tier's cache configuration as written (built in code, or from [`CacheArgs`]); validate with
/// [`TierConfig::resolve`].
#[derive(Debug, Clone, PartialEq)]
pub struct TierConfig {
    /// Edge or shield.
    pub role: Role,
    /// The `Cache-Status` member name (an sf-token); default `refbench-{role}`.
    pub name: Option<String>,
    /// Upstream base URLs (`http://host:port`), one or more; several = rendezvous hashing over them.
    pub upstreams: Vec<String>,
    /// Memory tier capacity, bytes.
    pub memory_bytes: u64,
    /// Memory tier shards (a power of two).
    pub shards: usize,
    /// Largest object stored, bytes (at most one shard's capacity); larger ones are streamed through.
    pub max_object_bytes: u64,
    /// How long a request waits for another request's fetch before answering 504, milliseconds.
    pub coalesce_timeout_ms: u64,
    /// Most fetches in flight; beyond it requests go upstream uncoalesced.
    pub max_inflight_keys: usize,
    /// Upstream connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Upstream response-head timeout (after connecting), milliseconds.
    pub upstream_timeout_ms: u64,
    /// Longest gap between two upstream body frames before the fetch fails, milliseconds.
    pub upstream_read_timeout_ms: u64,
    /// Idle pooled connections kept per upstream.
    pub max_idle_per_upstream: usize,
    /// How long a "hit-for-pass" marker (response not shareable) sends a key straight upstream, milliseconds
    /// (0 disables markers).
    pub pass_marker_ttl_ms: u64,
    /// Largest request body forwarded for unsafe methods, bytes.
    pub max_request_body_bytes: usize,
    /// The disk tier's directory (owned by the tier: old segments there are deleted); `None` = no disk tier.
    pub disk_dir: Option<PathBuf>,
    /// The disk tier's capacity, bytes (used only with `disk_dir`).
    pub disk_bytes: u64,
    /// Admin base URLs of the upstreams (`http://host:port`, same order as `upstreams`); when given, a purge here
    /// is first applied to every one of them. Empty = purges stay local.
    pub upstream_admins: Vec<String>,
    /// Segments fetched ahead of a client GET of `.../seg-{n}.{ext}` under a prefetch prefix (0 = no prefetch).
    pub prefetch_segments: usize,
    /// Path prefixes whose segments are prefetched (each starting with `/`).
    pub prefetch_prefixes: Vec<String>,
    /// Most prefetches in flight; beyond it new ones are dropped (counted), never queued.
    pub prefetch_max_inflight: usize,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            role: Role::Edge,
            name: None,
            upstreams: Vec::new(),
            memory_bytes: 256 * MIB,
            shards: 16,
            max_object_bytes: 2 * MIB,
            coalesce_timeout_ms: 5_000,
            max_inflight_keys: 10_000,
            connect_timeout_ms: 1_000,
            upstream_timeout_ms: 10_000,
            upstream_read_timeout_ms: 10_000,
            max_idle_per_upstream: 256,
            pass_marker_ttl_ms: 5_000,
            max_request_body_bytes: MIB as usize,
            disk_dir: None,
            disk_bytes: DEFAULT_DISK_BYTES,
            upstream_admins: Vec::new(),
            prefetch_segments: 0,
            prefetch_prefixes: vec!["/video/".to_string()],
            prefetch_max_inflight: DEFAULT_PREFETCH_MAX_INFLIGHT,
        }
    }
}

/// The validated configuration a [`CacheApp`] runs.
#[derive(Debug, Clone)]
pub struct ResolvedTier {
    /// Edge or shield.
    pub role: Role,
    /// `Cache-Status` member name.
    pub name: String,
    /// Upstream base URLs.
    pub upstreams: Vec<Uri>,
    /// Memory tier capacity, bytes.
    pub memory_bytes: u64,
    /// Memory tier shards.
    pub shards: usize,
    /// Largest object stored, bytes.
    pub max_object_bytes: u64,
    /// Follower wait limit.
    pub coalesce_timeout: Duration,
    /// Most fetches in flight.
    pub max_inflight_keys: usize,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-head timeout.
    pub upstream_timeout: Duration,
    /// Upstream body idle timeout.
    pub upstream_read_timeout: Duration,
    /// Idle pooled connections per upstream.
    pub max_idle_per_upstream: usize,
    /// Hit-for-pass marker lifetime (zero: none).
    pub pass_marker_ttl: Duration,
    /// Largest forwarded request body, bytes.
    pub max_request_body_bytes: usize,
    /// The disk tier to open under the memory tier, if any.
    pub disk: Option<DiskConfig>,
    /// Upstream admin base URLs purges are propagated to (empty: none).
    pub upstream_admins: Vec<Uri>,
    /// Predictive prefetch (`segments == 0`: off).
    pub prefetch: PrefetchConfig,
}

fn range_u64(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), CacheError> {
    if v < lo || v > hi {
        return Err(CacheError::invalid(
            field,
            format!("must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(())
}

/// Parses a base URL `http://host:port` (no path, no query) for `field`.
fn base_url(field: &str, u: &str) -> Result<Uri, CacheError> {
    let uri: Uri = u
        .parse()
        .map_err(|e| CacheError::invalid(field, format!("not a URL: {u:?}: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(CacheError::invalid(
            field,
            format!("must be http://host:port (TLS upstreams are not supported), got {u:?}"),
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(CacheError::invalid(
            field,
            format!("must have no path or query, got {u:?}"),
        ));
    }
    Ok(uri)
}

/// The disk tier's configuration for `dir` and `capacity_bytes`: [`DiskConfig::new`]'s defaults, with segments
/// grown so that large capacities stay within [`MAX_SEGMENTS_PER_CAPACITY`] segments.
pub fn disk_config(dir: PathBuf, capacity_bytes: u64) -> DiskConfig {
    let mut c = DiskConfig::new(dir, capacity_bytes);
    c.segment_bytes = c
        .segment_bytes
        .max(capacity_bytes.div_ceil(MAX_SEGMENTS_PER_CAPACITY))
        .clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
    c
}

fn resolve_disk(dir: Option<&PathBuf>, bytes: u64) -> Result<Option<DiskConfig>, CacheError> {
    let Some(dir) = dir else { return Ok(None) };
    let text = dir.to_string_lossy();
    // `--disk-dir=` or `--disk-dir -x` would otherwise create a directory named "" or "-x" (or fail late).
    if text.trim().is_empty() || text.starts_with('-') {
        return Err(CacheError::invalid(
            "disk_dir",
            format!("needs a directory path (e.g. /var/cache/refbench-edge), got {text:?}"),
        ));
    }
    range_u64("disk_bytes", bytes, MIN_DISK_BYTES, MAX_DISK_BYTES)?;
    let cfg = disk_config(dir.clone(), bytes);
    cfg.validate().map_err(|e| match e {
        crate::disk::DiskError::Config {
            field: "dir",
            reason,
        } => CacheError::invalid("disk_dir", reason),
        other => CacheError::invalid("disk_bytes", other.to_string()),
    })?;
    Ok(Some(cfg))
}

/// Whether `s` is an RFC 8941 token (the `Cache-Status` member name).
fn is_sf_token(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '*')
        && chars.all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c))
}

impl TierConfig {
    /// Validates everything once; errors name the field.
    pub fn resolve(&self) -> Result<ResolvedTier, CacheError> {
        if self.upstreams.is_empty() || self.upstreams.len() > MAX_UPSTREAMS {
            return Err(CacheError::invalid(
                "upstreams",
                format!(
                    "needs 1 to {MAX_UPSTREAMS} upstream URLs, got {}",
                    self.upstreams.len()
                ),
            ));
        }
        let mut upstreams = Vec::with_capacity(self.upstreams.len());
        for (i, u) in self.upstreams.iter().enumerate() {
            let field = format!("upstreams[{i}]");
            let uri = base_url(&field, u)?;
            if upstreams.contains(&uri) {
                return Err(CacheError::invalid(
                    &field,
                    format!("{u:?} is listed twice"),
                ));
            }
            upstreams.push(uri);
        }
        if !self.upstream_admins.is_empty() && self.upstream_admins.len() != self.upstreams.len() {
            return Err(CacheError::invalid(
                "upstream_admins",
                format!(
                    "needs one admin URL per upstream, in the same order ({} upstreams), got {}",
                    self.upstreams.len(),
                    self.upstream_admins.len()
                ),
            ));
        }
        let mut upstream_admins = Vec::with_capacity(self.upstream_admins.len());
        for (i, u) in self.upstream_admins.iter().enumerate() {
            let field = format!("upstream_admins[{i}]");
            let uri = base_url(&field, u)?;
            if upstream_admins.contains(&uri) {
                return Err(CacheError::invalid(
                    &field,
                    format!("{u:?} is listed twice"),
                ));
            }
            upstream_admins.push(uri);
        }
        let disk = resolve_disk(self.disk_dir.as_ref(), self.disk_bytes)?;
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("refbench-{}", self.role.name()));
        if name.len() > 64 || !is_sf_token(&name) {
            return Err(CacheError::invalid(
                "name",
                format!(
                    "must be a token of at most 64 characters (letters, digits, -._:/), got {name:?}"
                ),
            ));
        }
        range_u64(
            "memory_bytes",
            self.memory_bytes,
            MIN_MEMORY_BYTES,
            MAX_MEMORY_BYTES,
        )?;
        if !self.shards.is_power_of_two() || self.shards > 1 << 16 {
            return Err(CacheError::invalid(
                "shards",
                format!(
                    "must be a power of two between 1 and 65536, got {}",
                    self.shards
                ),
            ));
        }
        let per_shard = self.memory_bytes / self.shards as u64;
        if per_shard < 64 * 1024 {
            return Err(CacheError::invalid(
                "shards",
                format!(
                    "{} shards leave {per_shard} bytes each; each needs at least 64 KiB",
                    self.shards
                ),
            ));
        }
        range_u64("max_object_bytes", self.max_object_bytes, 1, per_shard)?;
        range_u64(
            "coalesce_timeout_ms",
            self.coalesce_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        range_u64(
            "connect_timeout_ms",
            self.connect_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        range_u64(
            "upstream_timeout_ms",
            self.upstream_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        range_u64(
            "upstream_read_timeout_ms",
            self.upstream_read_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        range_u64(
            "pass_marker_ttl_ms",
            self.pass_marker_ttl_ms,
            0,
            MAX_TIMEOUT_MS,
        )?;
        range_u64(
            "max_inflight_keys",
            self.max_inflight_keys as u64,
            1,
            MAX_INFLIGHT_KEYS as u64,
        )?;
        range_u64(
            "max_idle_per_upstream",
            self.max_idle_per_upstream as u64,
            0,
            100_000,
        )?;
        range_u64(
            "max_request_body_bytes",
            self.max_request_body_bytes as u64,
            0,
            MAX_REQUEST_BODY_BYTES as u64,
        )?;
        let prefetch = self.resolve_prefetch()?;
        Ok(ResolvedTier {
            role: self.role,
            name,
            upstreams,
            memory_bytes: self.memory_bytes,
            shards: self.shards,
            max_object_bytes: self.max_object_bytes,
            coalesce_timeout: Duration::from_millis(self.coalesce_timeout_ms),
            max_inflight_keys: self.max_inflight_keys,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            upstream_timeout: Duration::from_millis(self.upstream_timeout_ms),
            upstream_read_timeout: Duration::from_millis(self.upstream_read_timeout_ms),
            max_idle_per_upstream: self.max_idle_per_upstream,
            pass_marker_ttl: Duration::from_millis(self.pass_marker_ttl_ms),
            max_request_body_bytes: self.max_request_body_bytes,
            disk,
            upstream_admins,
            prefetch,
        })
    }

    fn resolve_prefetch(&self) -> Result<PrefetchConfig, CacheError> {
        range_u64(
            "prefetch_segments",
            self.prefetch_segments as u64,
            0,
            MAX_PREFETCH_SEGMENTS as u64,
        )?;
        range_u64(
            "prefetch_max_inflight",
            self.prefetch_max_inflight as u64,
            1,
            MAX_PREFETCH_INFLIGHT as u64,
        )?;
        let prefixes = &self.prefetch_prefixes;
        if prefixes.len() > MAX_PREFETCH_PREFIXES {
            return Err(CacheError::invalid(
                "prefetch_prefixes",
                format!(
                    "at most {MAX_PREFETCH_PREFIXES} prefixes, got {}",
                    prefixes.len()
                ),
            ));
        }
        if self.prefetch_segments > 0 && prefixes.is_empty() {
            return Err(CacheError::invalid(
                "prefetch_prefixes",
                "prefetch needs at least one path prefix (e.g. /video/)",
            ));
        }
        for p in prefixes {
            if !p.starts_with('/') || p.len() > MAX_PREFETCH_PREFIX_LEN {
                return Err(CacheError::invalid(
                    "prefetch_prefixes",
                    format!(
                        "each prefix must start with '/' and be at most {MAX_PREFETCH_PREFIX_LEN} bytes, got {p:?}"
                    ),
                ));
            }
        }
        Ok(PrefetchConfig {
            segments: self.prefetch_segments,
            prefixes: prefixes.clone(),
            max_inflight: self.prefetch_max_inflight,
        })
    }
}

/// Command-line options of a cache tier (`loadgen serve cdn edge|shield ...`); flatten into a clap `Parser`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct CacheArgs {
    /// Which tier this is.
    #[arg(long, value_enum, default_value_t = Role::Edge)]
    pub role: Role,

    /// Upstream base URL(s), e.g. http://127.0.0.1:8081; several (comma-separated or repeated) are chosen per key
    /// by rendezvous hashing.
    #[arg(long, value_name = "URL", value_delimiter = ',', required = true)]
    pub upstream: Vec<String>,

    /// The Cache-Status member name (default refbench-{role}).
    #[arg(long, value_name = "TOKEN")]
    pub name: Option<String>,

    /// Address of the HTTP listener (HTTP/1.1 and h2c).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// Address of the admin listener (/metrics, /healthz, /purge, /stats).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub admin_bind: SocketAddr,

    /// Memory tier capacity, bytes.
    #[arg(long, value_name = "N", default_value_t = TierConfig::default().memory_bytes)]
    pub memory_bytes: u64,

    /// Memory tier shards (a power of two).
    #[arg(long, value_name = "N", default_value_t = TierConfig::default().shards)]
    pub shards: usize,

    /// Largest object stored, bytes (at most memory / shards); larger objects are streamed through. Default:
    /// 2 MiB, or memory / shards when that is smaller (so a small --memory-bytes alone is a valid setting).
    #[arg(long, value_name = "N")]
    pub max_object_bytes: Option<u64>,

    /// How long a request waits on another request's fetch, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = TierConfig::default().coalesce_timeout_ms)]
    pub coalesce_timeout_ms: u64,

    /// Most fetches in flight; beyond it requests go upstream uncoalesced.
    #[arg(long, value_name = "N", default_value_t = TierConfig::default().max_inflight_keys)]
    pub max_inflight_keys: usize,

    /// Upstream connect timeout, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = TierConfig::default().connect_timeout_ms)]
    pub connect_timeout_ms: u64,

    /// Upstream response-head timeout, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = TierConfig::default().upstream_timeout_ms)]
    pub upstream_timeout_ms: u64,

    /// Longest gap between upstream body frames, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = TierConfig::default().upstream_read_timeout_ms)]
    pub upstream_read_timeout_ms: u64,

    /// Idle pooled connections kept per upstream.
    #[arg(long, value_name = "N", default_value_t = TierConfig::default().max_idle_per_upstream)]
    pub max_idle_per_upstream: usize,

    /// How long a non-shareable response sends its key straight upstream, milliseconds (0 = never).
    #[arg(long, value_name = "MS", default_value_t = TierConfig::default().pass_marker_ttl_ms)]
    pub pass_marker_ttl_ms: u64,

    /// Largest request body forwarded for unsafe methods, bytes.
    #[arg(long, value_name = "N", default_value_t = TierConfig::default().max_request_body_bytes)]
    pub max_request_body_bytes: usize,

    /// Directory of the disk tier under the memory tier (created if missing; segment files there are deleted at
    /// start and at exit). Default: no disk tier.
    #[arg(long, value_name = "DIR")]
    pub disk_dir: Option<PathBuf>,

    /// Disk tier capacity, bytes (with --disk-dir).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DISK_BYTES)]
    pub disk_bytes: u64,

    /// Admin base URL of each upstream tier (repeat, or comma-separate; same order and count as --upstream): a
    /// purge here is applied to all of them first, and acknowledged only when all did.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub upstream_admin: Vec<String>,

    /// Segments to prefetch after a GET of `.../seg-{n}.{ext}` under a --prefetch-prefix: `seg-{n+1}` ..
    /// `seg-{n+K}` are fetched in the background unless stored or in flight (0 = off, at most 16).
    #[arg(long, value_name = "K", default_value_t = TierConfig::default().prefetch_segments)]
    pub prefetch_segments: usize,

    /// Path prefix whose segments are prefetched (repeat, or comma-separate).
    #[arg(
        long,
        value_name = "PREFIX",
        value_delimiter = ',',
        default_value = "/video/"
    )]
    pub prefetch_prefix: Vec<String>,

    /// Most prefetches in flight; beyond it new ones are dropped (counted), never queued.
    #[arg(long, value_name = "N", default_value_t = TierConfig::default().prefetch_max_inflight)]
    pub prefetch_max_inflight: usize,

    /// --threads, --cpus, --max-connections.
    #[command(flatten)]
    pub process: ProcessArgs,
}

/// Where to listen and how to run (everything in [`CacheArgs`] besides the [`TierConfig`]).
#[derive(Debug, Clone)]
pub struct TierPlan {
    /// HTTP listener address.
    pub bind: SocketAddr,
    /// Admin listener address.
    pub admin_bind: SocketAddr,
    /// Runtime threads (1 = current_thread).
    pub threads: usize,
    /// Cores to pin to; empty = no pinning.
    pub cpus: Vec<usize>,
    /// Limits of the HTTP listener.
    pub limits: Limits,
}

impl Default for TierPlan {
    fn default() -> Self {
        TierPlan {
            bind: DEFAULT_BIND.parse().expect("DEFAULT_BIND parses"),
            admin_bind: DEFAULT_BIND.parse().expect("DEFAULT_BIND parses"),
            threads: 1,
            cpus: Vec::new(),
            limits: Limits {
                drain_timeout: Duration::from_secs(2),
                ..Limits::default()
            },
        }
    }
}

impl CacheArgs {
    /// The configuration these flags describe (not validated).
    pub fn tier_config(&self) -> TierConfig {
        TierConfig {
            role: self.role,
            name: self.name.clone(),
            upstreams: self.upstream.clone(),
            memory_bytes: self.memory_bytes,
            shards: self.shards,
            max_object_bytes: self.max_object_bytes.unwrap_or_else(|| {
                let per_shard = self.memory_bytes / (self.shards.max(1) as u64);
                TierConfig::default().max_object_bytes.min(per_shard.max(1))
            }),
            coalesce_timeout_ms: self.coalesce_timeout_ms,
            max_inflight_keys: self.max_inflight_keys,
            connect_timeout_ms: self.connect_timeout_ms,
            upstream_timeout_ms: self.upstream_timeout_ms,
            upstream_read_timeout_ms: self.upstream_read_timeout_ms,
            max_idle_per_upstream: self.max_idle_per_upstream,
            pass_marker_ttl_ms: self.pass_marker_ttl_ms,
            max_request_body_bytes: self.max_request_body_bytes,
            disk_dir: self.disk_dir.clone(),
            disk_bytes: self.disk_bytes,
            upstream_admins: self.upstream_admin.clone(),
            prefetch_segments: self.prefetch_segments,
            prefetch_prefixes: self.prefetch_prefix.clone(),
            prefetch_max_inflight: self.prefetch_max_inflight,
        }
    }

    /// Validates everything once; errors name the flag.
    pub fn resolve(&self) -> Result<(ResolvedTier, TierPlan), CacheError> {
        let cfg = self.tier_config().resolve().map_err(|e| match e {
            CacheError::Invalid { field, reason } => {
                let base = field.split('[').next().unwrap_or(&field);
                let flag = if base == "upstreams" {
                    "--upstream".to_string()
                } else if base == "upstream_admins" {
                    "--upstream-admin".to_string()
                } else if base == "prefetch_prefixes" {
                    "--prefetch-prefix".to_string()
                } else {
                    format!("--{}", base.replace('_', "-"))
                };
                CacheError::Invalid {
                    field: flag,
                    reason,
                }
            }
            other => other,
        })?;
        let process = self
            .process
            .validate()
            .map_err(|(flag, reason)| CacheError::invalid(flag, reason))?;
        let cpus = process.cpus;
        let mut plan = TierPlan {
            bind: self.bind,
            admin_bind: self.admin_bind,
            threads: process.threads,
            cpus,
            ..TierPlan::default()
        };
        plan.limits.max_connections = process.max_connections;
        plan.limits.max_body_bytes = cfg.max_request_body_bytes;
        Ok((cfg, plan))
    }
}

/// A tier running on the caller's runtime (see [`start`]).
#[derive(Debug)]
pub struct Started {
    /// Bound address of the HTTP listener.
    pub http_addr: SocketAddr,
    /// Bound address of the admin listener.
    pub admin_addr: SocketAddr,
    /// The handler, for in-process tests (store, purges).
    pub app: CacheApp,
    /// The disk tier [`start`] opened from the configuration (closed, its segments deleted, by [`Started::join`]).
    pub disk: Option<DiskTier>,
    http: JoinHandle<Result<(), CommonError>>,
    admin: JoinHandle<Result<(), CommonError>>,
    upkeep: Upkeep,
}

impl Started {
    /// The readiness announcement for this server.
    pub fn ready(&self) -> Ready {
        let mut listeners = BTreeMap::new();
        listeners.insert("http".to_string(), self.http_addr);
        listeners.insert("admin".to_string(), self.admin_addr);
        Ready {
            system: self.app.config().role.system().to_string(),
            pid: std::process::id(),
            listeners,
            tls_cert_pem: None,
        }
    }

    /// Waits until both listeners have stopped (after the shutdown fired and the drain finished).
    pub async fn join(self) -> Result<(), CacheError> {
        let http = flatten("http", self.http.await);
        let admin = flatten("admin", self.admin.await);
        drop(self.upkeep);
        if let Some(disk) = self.disk {
            // Joins the writer thread and deletes the segments: blocking work, off the runtime's threads.
            let closed = tokio::task::spawn_blocking(move || disk.close()).await;
            if let Err(e) = closed {
                return http.and(admin).and(Err(CacheError::Task {
                    task: "disk close",
                    reason: e.to_string(),
                }));
            }
        }
        http.and(admin)
    }
}

fn flatten(
    task: &'static str,
    r: Result<Result<(), CommonError>, tokio::task::JoinError>,
) -> Result<(), CacheError> {
    match r {
        Ok(inner) => inner.map_err(CacheError::from),
        Err(e) => Err(CacheError::Task {
            task,
            reason: e.to_string(),
        }),
    }
}

/// Binds both listeners and serves on the current tokio runtime until `shutdown` fires. Installs the global
/// Prometheus recorder (before building the app, so its counters are live). Opens the disk tier when `cfg.disk`
/// is set. Returns once both are listening.
pub async fn start(
    cfg: ResolvedTier,
    plan: &TierPlan,
    shutdown: Shutdown,
) -> Result<Started, CacheError> {
    let Some(disk_cfg) = cfg.disk.clone() else {
        return start_with_lower_tier(cfg, plan, None, shutdown).await;
    };
    // Opening creates and scans the directory and spawns the writer: blocking, and done once.
    let disk = tokio::task::spawn_blocking(move || DiskTier::open(disk_cfg))
        .await
        .map_err(|e| CacheError::Task {
            task: "disk open",
            reason: e.to_string(),
        })?
        .map_err(|e| CacheError::invalid("disk_dir", e.to_string()))?;
    let lower: std::sync::Arc<dyn LowerTier> = std::sync::Arc::new(disk.clone());
    match start_with_lower_tier(cfg, plan, Some(lower), shutdown).await {
        Ok(mut started) => {
            started.disk = Some(disk);
            Ok(started)
        }
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || disk.close()).await;
            Err(e)
        }
    }
}

/// [`start`] with a given lower tier behind the memory tier (the disk tier's seam); `cfg.disk` is not opened
/// (the caller owns the lower tier and its lifetime).
pub async fn start_with_lower_tier(
    cfg: ResolvedTier,
    plan: &TierPlan,
    lower: Option<std::sync::Arc<dyn LowerTier>>,
    shutdown: Shutdown,
) -> Result<Started, CacheError> {
    let handle = metrics_handle()?;
    let http = bind_tcp(plan.bind).await?;
    let admin = bind_tcp(plan.admin_bind).await?;
    let local = |l: &tokio::net::TcpListener, listener| {
        l.local_addr()
            .map_err(|source| CacheError::LocalAddr { listener, source })
    };
    let http_addr = local(&http, "http")?;
    let admin_addr = local(&admin, "admin")?;
    let tier = app_with_lower_tier(cfg, lower);
    // Prefetch tasks stop when the tier does, not when their fetch would have ended.
    tier.core.prefetch.bind_shutdown(shutdown.clone());
    let http = tokio::spawn(serve_h1(
        http,
        tier.clone(),
        plan.limits.clone(),
        shutdown.clone(),
    ));
    // Histogram buckets rotate and idle series expire only when upkeep runs; on its own thread, so the serving
    // runtime has no timer pending while it waits for requests.
    let upkeep = Upkeep::start(handle.clone())?;
    let admin = tokio::spawn(serve_http(
        admin,
        CacheAdmin::new(tier.clone(), Some(handle)),
        cache_admin_limits(),
        shutdown,
    ));
    Ok(Started {
        http_addr,
        admin_addr,
        app: tier,
        disk: None,
        http,
        admin,
        upkeep,
    })
}

/// The whole tier: validate, pin CPUs, build the runtime, bind, announce `REFBENCH_READY` on stdout, serve until
/// SIGTERM/SIGINT, drain, return.
pub fn run(args: CacheArgs) -> Result<(), CacheError> {
    let (cfg, plan) = args.resolve()?;
    // Before the runtime exists, so every thread it spawns inherits the mask.
    pin_to_cpus(&plan.cpus)?;
    let runtime = refbench_common::runtime::build(plan.threads, cfg.role.system())
        .map_err(CacheError::Runtime)?;
    let result = runtime.block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        // Handlers go in before the announce: the parent may signal us the moment it reads the line.
        shutdown::trigger_on_signals(trigger)?;
        let started = start(cfg, &plan, shutdown).await?;
        announce(&started.ready());
        started.join().await
    });
    runtime.shutdown_timeout(refbench_common::runtime::SHUTDOWN_TIMEOUT);
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: CacheArgs,
    }

    fn parse(extra: &[&str]) -> CacheArgs {
        let mut argv = vec!["cdn-cache"];
        argv.extend_from_slice(extra);
        Wrapper::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn args_resolve_and_errors_name_the_flag() {
        let a = parse(&[
            "--upstream",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--role",
            "shield",
        ]);
        let (cfg, plan) = a.resolve().unwrap();
        assert_eq!(cfg.upstreams.len(), 2);
        assert_eq!(cfg.name, "refbench-shield");
        assert_eq!(plan.threads, 1);

        let e = parse(&["--upstream", "https://x:1"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--upstream:"), "{e}");
        let e = parse(&["--upstream", "http://x:1", "--shards", "3"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--shards:"), "{e}");
        let e = parse(&[
            "--upstream",
            "http://x:1",
            "--max-object-bytes",
            "999999999",
        ])
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--max-object-bytes:"), "{e}");
        let e = parse(&["--upstream", "http://x:1", "--name", "bad name"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--name:"), "{e}");
        assert!(
            Wrapper::try_parse_from(["cdn-cache"]).is_err(),
            "--upstream is required"
        );
    }

    #[test]
    fn disk_and_upstream_admin_flags_are_validated() {
        let (cfg, _) = parse(&["--upstream", "http://x:1"]).resolve().unwrap();
        assert!(cfg.disk.is_none() && cfg.upstream_admins.is_empty());
        let (cfg, _) = parse(&["--upstream", "http://x:1", "--disk-dir", "/tmp/d"])
            .resolve()
            .unwrap();
        let disk = cfg.disk.unwrap();
        assert_eq!(disk.capacity_bytes, DEFAULT_DISK_BYTES);
        disk.validate().unwrap();
        // The largest disk still validates (segments grow instead of multiplying).
        disk_config("/tmp/d".into(), MAX_DISK_BYTES)
            .validate()
            .unwrap();

        for bad in [&["--disk-dir", " "][..], &["--disk-dir=-x"]] {
            let mut argv = vec!["--upstream", "http://x:1"];
            argv.extend_from_slice(bad);
            let e = parse(&argv).resolve().unwrap_err().to_string();
            assert!(e.starts_with("--disk-dir: needs a directory path"), "{e}");
        }
        // No value, or an empty one: clap refuses before resolving ("a value is required for '--disk-dir <DIR>'").
        for bad in [&["--disk-dir"][..], &["--disk-dir="]] {
            let mut argv = vec!["cdn-cache", "--upstream", "http://x:1"];
            argv.extend_from_slice(bad);
            assert!(Wrapper::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let e = parse(&[
            "--upstream",
            "http://x:1",
            "--disk-dir",
            "/tmp/d",
            "--disk-bytes",
            "1000",
        ])
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--disk-bytes:"), "{e}");

        let (cfg, _) = parse(&[
            "--upstream",
            "http://x:1,http://x:2",
            "--upstream-admin",
            "http://x:11",
            "--upstream-admin",
            "http://x:12",
        ])
        .resolve()
        .unwrap();
        assert_eq!(cfg.upstream_admins.len(), 2);
        let e = parse(&[
            "--upstream",
            "http://x:1,http://x:2",
            "--upstream-admin",
            "http://x:11",
        ])
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--upstream-admin: needs one admin URL per upstream"),
            "{e}"
        );
        let e = parse(&[
            "--upstream",
            "http://x:1",
            "--upstream-admin",
            "http://x:11/purge",
        ])
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--upstream-admin:"), "{e}");
    }

    #[test]
    fn prefetch_flags_default_off_and_are_validated() {
        let (cfg, _) = parse(&["--upstream", "http://x:1"]).resolve().unwrap();
        assert_eq!(cfg.prefetch.segments, 0);
        assert_eq!(cfg.prefetch.prefixes, vec!["/video/".to_string()]);
        assert_eq!(cfg.prefetch.max_inflight, DEFAULT_PREFETCH_MAX_INFLIGHT);
        let (cfg, _) = parse(&[
            "--upstream",
            "http://x:1",
            "--prefetch-segments",
            "3",
            "--prefetch-prefix",
            "/video/,/hls/",
            "--prefetch-prefix",
            "/dash/",
            "--prefetch-max-inflight",
            "8",
        ])
        .resolve()
        .unwrap();
        assert_eq!(cfg.prefetch.segments, 3);
        assert_eq!(cfg.prefetch.prefixes, ["/video/", "/hls/", "/dash/"]);
        assert_eq!(cfg.prefetch.max_inflight, 8);

        for (bad, flag) in [
            (&["--prefetch-segments", "17"][..], "--prefetch-segments:"),
            (
                &["--prefetch-max-inflight", "0"],
                "--prefetch-max-inflight:",
            ),
            (&["--prefetch-prefix", "video/"], "--prefetch-prefix:"),
        ] {
            let mut argv = vec!["--upstream", "http://x:1"];
            argv.extend_from_slice(bad);
            let e = parse(&argv).resolve().unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
        let e = TierConfig {
            upstreams: vec!["http://x:1".into()],
            prefetch_segments: 2,
            prefetch_prefixes: Vec::new(),
            ..TierConfig::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("prefetch_prefixes:"), "{e}");
    }

    #[test]
    fn config_defaults_need_an_upstream() {
        let e = TierConfig::default().resolve().unwrap_err().to_string();
        assert!(e.starts_with("upstreams:"), "{e}");
        let cfg = TierConfig {
            upstreams: vec!["http://127.0.0.1:9".into()],
            ..TierConfig::default()
        };
        cfg.resolve().unwrap();
    }
}
