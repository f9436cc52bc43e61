//! The cdn-cache reference server (work in progress, issue 4).
//!
//! Layers, bottom up:
//! - [`evict`]: the byte-bounded memory tier's eviction policy (S3-FIFO), and W-TinyLFU and LRU it is measured against.
//! - [`cache`]: the cache tier itself (edge or shield): keys, RFC 9111 rules, request coalescing, the memory tier
//!   store (with the disk tier under it), upstream fetches with rendezvous hashing over shields, purges (propagated
//!   to shields) and `Cache-Status`.
//! - [`disk`]: the disk tier: a byte-bounded, log-structured segment cache for what the memory tier evicts
//!   (CRC32C-checked reads, FIFO eviction by segment, a bounded write queue, cold start).
//! - [`origin`]: a synthetic origin for tests and benchmarks (sizes, cache headers, latency and failure injection,
//!   fetch counts per key).
//!
//! The disk tier sits under the memory tier through the `cache::LowerTier` seam (`--disk-dir`, `--disk-bytes`), and
//! an edge given its shields' admin addresses (`--upstream-admin`) purges them first and acknowledges a purge only
//! when every tier did.
//!
//! Predictive prefetch of sequential objects (`--prefetch-segments`, off by default) fetches the segments after a
//! requested `seg-{n}` through the coalesced fetch path and reports its precision (`cache` module docs).
//!
//! Not yet: `loadgen serve cdn` and the loadgen scenario, and the peers (nginx, Varnish).

pub mod cache;
pub mod disk;
pub mod evict;
pub mod origin;
mod query;
