//! The cdn-cache reference server (work in progress, issue 4).
//!
//! Layers, bottom up:
//! - [`evict`]: the byte-bounded memory tier's eviction policy, and the LRU it is measured against.
//! - [`origin`]: a synthetic origin for tests and benchmarks (sizes, cache headers, latency and failure injection,
//!   fetch counts per key).
//!
//! The cache tiers (edge and shield), coalescing, RFC 9111 rules, the disk tier, prefetch and purge come next.

pub mod evict;
pub mod origin;
