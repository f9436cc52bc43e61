//! The CDN scenario: `GET`s of generated paths against a cache (the built-in topology or anybody's CDN), with hits
//! read from each response's `Cache-Status` (RFC 9211) and origin fetches from the origin's own counters.
//!
//! - Worker side: [`CdnConfig`] (per loader process) and [`CdnLane`] (per lane) build the next request in place, so
//!   a send allocates nothing; [`CdnTotals`] counts responses by cache class and bytes.
//! - Coordinator side: [`OriginProbe`] reads the origin's `/metrics` before and after a phase, sets and clears the
//!   phase's origin latency, and checks every storm key's origin fetch count (exactly one is the coalescing
//!   guarantee: concurrent misses for one key, across every edge and shield, cause one origin fetch).
//!
//! Workloads:
//! - `zipf`: every request draws a key rank by Zipf popularity: `{prefix}k{rank}`.
//! - `video`: each lane is a viewer that plays a video's segments in order, `{prefix}v{rank}/seg-{n}.ts`, then
//!   picks the next video by popularity. Its first video starts at a random segment (the viewer joined mid-way),
//!   so lanes are not in lock-step.
//! - `storm`: time is cut into periods; every request of a period asks for the same key, which no earlier request
//!   of the run asked for: `{prefix}{nonce}-{period}`. With `origin_latency_ms` the origin holds each fetch open,
//!   so every request of the window lands on a cold key in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::client::Exchange;
use crate::h1::CacheClass;
use crate::plan::{CdnPlan, CdnWorkload, HttpUrl};
use crate::procs;
use crate::schedule::mix_seed;
use crate::zipf::Zipf;

/// Most storm keys whose origin fetch counts are checked after a phase (evenly spread over the phase).
pub const MAX_STORM_KEYS_CHECKED: usize = 10_000;
/// The origin's counter of answered requests (one per fetch, by status).
const ORIGIN_REQUESTS: &str = "cdn_origin_requests_total";
/// The origin's counter of body bytes sent.
const ORIGIN_BYTES: &str = "cdn_origin_bytes_total";
/// The caches' prefetch counter (by tier and outcome).
const PREFETCH: &str = "cdn_cache_prefetch_total";

/// What every lane of one loader process shares.
#[derive(Debug, Clone)]
pub struct CdnConfig {
    /// The validated scenario.
    pub plan: CdnPlan,
    /// `GET {base}{path_prefix}`: the target URL's path prefix and the scenario's.
    path_head: String,
    /// ` HTTP/1.1\r\nHost: ...\r\n\r\n`.
    tail: Vec<u8>,
    /// Distinguishes this run's storm keys from every earlier run's (an external cache may still hold those).
    nonce: u64,
    zipf: Option<Zipf>,
}

impl CdnConfig {
    /// The scenario against `base`; `nonce` is the phase's (the same in every loader process).
    pub fn new(plan: &CdnPlan, base: &HttpUrl, nonce: u64) -> CdnConfig {
        let host = base.authority();
        let zipf = match plan.workload {
            CdnWorkload::Zipf {
                keys,
                zipf_exponent,
            } => Some(Zipf::new(keys, zipf_exponent)),
            CdnWorkload::Video {
                videos,
                zipf_exponent,
                ..
            } => Some(Zipf::new(videos, zipf_exponent)),
            CdnWorkload::Storm { .. } => None,
        };
        CdnConfig {
            plan: plan.clone(),
            path_head: format!("GET {}{}", base.prefix, plan.path_prefix),
            tail: format!(" HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            nonce,
            zipf,
        }
    }

    /// The origin-side path of storm key `period` (what the origin counts fetches under).
    pub fn storm_path(base_prefix: &str, plan: &CdnPlan, nonce: u64, period: u64) -> String {
        format!("{base_prefix}{}{nonce:x}-{period}", plan.path_prefix)
    }
}

/// One lane's generator.
#[derive(Debug)]
pub struct CdnLane {
    rng: SmallRng,
    /// The serialized request of the current send.
    pub request: Vec<u8>,
    video: u64,
    segment: u32,
}

impl CdnLane {
    /// Lane `global` of the phase (seeded from the scenario's seed and the lane).
    pub fn new(cfg: &CdnConfig, global: usize) -> CdnLane {
        let mut lane = CdnLane {
            rng: SmallRng::seed_from_u64(mix_seed(cfg.plan.seed ^ 0xCD17, global as u64)),
            request: Vec::with_capacity(256),
            video: 0,
            segment: 0,
        };
        if let (CdnWorkload::Video { segments, .. }, Some(z)) = (cfg.plan.workload, &cfg.zipf) {
            lane.video = z.sample(&mut lane.rng);
            lane.segment = rand::Rng::random_range(&mut lane.rng, 0..segments);
        }
        lane
    }

    /// Builds the next request into [`CdnLane::request`]. `offset_s` is the send's intended time from the phase
    /// start (storm periods follow it). Returns the storm period the request asks for.
    pub fn next(&mut self, cfg: &CdnConfig, offset_s: f64) -> Option<u64> {
        self.request.clear();
        self.request.extend_from_slice(cfg.path_head.as_bytes());
        // Writes into a Vec cannot fail.
        let storm = match (cfg.plan.workload, &cfg.zipf) {
            (CdnWorkload::Zipf { .. }, Some(z)) => {
                let _ = write!(self.request, "k{}", z.sample(&mut self.rng));
                None
            }
            (CdnWorkload::Video { segments, .. }, Some(z)) => {
                let _ = write!(self.request, "v{}/seg-{}.ts", self.video, self.segment);
                self.segment += 1;
                if self.segment >= segments {
                    self.video = z.sample(&mut self.rng);
                    self.segment = 0;
                }
                None
            }
            (CdnWorkload::Storm { period_ms }, _) => {
                let period = (offset_s.max(0.0) * 1000.0 / period_ms as f64) as u64;
                let _ = write!(self.request, "{:x}-{period}", cfg.nonce);
                Some(period)
            }
            _ => unreachable!("zipf and video configs always hold a sampler"),
        };
        self.request.extend_from_slice(&cfg.tail);
        storm
    }
}

/// One loader process's CDN counts (merged by plain addition in the coordinator).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CdnTotals {
    /// Responses (any status).
    pub responses: u64,
    /// Responses that carried a `Cache-Status`.
    pub with_cache_status: u64,
    /// Served by the cache that answered (the edge).
    pub edge_hits: u64,
    /// Served by a cache further up (a shield) without an origin fetch.
    pub upper_hits: u64,
    /// Body bytes of all responses.
    pub bytes: u64,
    /// Body bytes of edge hits.
    pub edge_hit_bytes: u64,
    /// Body bytes of upper-tier hits.
    pub upper_hit_bytes: u64,
    /// Storm periods that got at least one successful response.
    pub storm_periods: BTreeSet<u64>,
}

impl CdnTotals {
    /// Counts one response.
    pub fn record(&mut self, x: &Exchange, storm: Option<u64>) {
        self.responses += 1;
        self.bytes += x.body_bytes;
        match x.cache {
            CacheClass::Unknown => {}
            CacheClass::EdgeHit => {
                self.with_cache_status += 1;
                self.edge_hits += 1;
                self.edge_hit_bytes += x.body_bytes;
            }
            CacheClass::UpperHit => {
                self.with_cache_status += 1;
                self.upper_hits += 1;
                self.upper_hit_bytes += x.body_bytes;
            }
            CacheClass::Miss => self.with_cache_status += 1,
        }
        if let Some(p) = storm
            && x.status.is_success()
        {
            self.storm_periods.insert(p);
        }
    }

    /// Adds another process's counts.
    pub fn merge(&mut self, o: &CdnTotals) {
        self.responses += o.responses;
        self.with_cache_status += o.with_cache_status;
        self.edge_hits += o.edge_hits;
        self.upper_hits += o.upper_hits;
        self.bytes += o.bytes;
        self.edge_hit_bytes += o.edge_hit_bytes;
        self.upper_hit_bytes += o.upper_hit_bytes;
        self.storm_periods.extend(&o.storm_periods);
    }
}

/// `n / d`, or `None` when `d` is 0.
pub fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// Sum of a counter's series (all label sets) in a scrape delta.
pub fn counter_sum(deltas: &BTreeMap<String, f64>, name: &str) -> f64 {
    deltas
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// Prefetch counts of one scrape delta by outcome (`issued`, `used`, `evicted_unused`, ...); empty when the caches
/// export no prefetch counter.
pub fn prefetch_outcomes(deltas: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in deltas {
        let Some(labels) = k.strip_prefix(PREFETCH).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let outcome = labels.split(',').find_map(|l| {
            l.trim()
                .strip_prefix("outcome=\"")
                .map(|o| o.trim_end_matches(['"', '}']).to_string())
        });
        if let Some(o) = outcome {
            *out.entry(o).or_insert(0.0) += v;
        }
    }
    out
}

/// Origin fetches and bytes of a phase from the origin's scrape delta.
pub fn origin_figures(deltas: &BTreeMap<String, f64>) -> (u64, u64) {
    (
        counter_sum(deltas, ORIGIN_REQUESTS).max(0.0).round() as u64,
        counter_sum(deltas, ORIGIN_BYTES).max(0.0).round() as u64,
    )
}

/// The origin's admin port, as the coordinator talks to it.
#[derive(Debug, Clone)]
pub struct OriginProbe {
    addr: SocketAddr,
    host: String,
    timeout: Duration,
}

impl OriginProbe {
    /// The origin admin at `addr`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> OriginProbe {
        OriginProbe {
            addr,
            host: addr.to_string(),
            timeout,
        }
    }

    /// From an admin base URL (`http://127.0.0.1:9091`).
    pub fn from_url(url: &str, timeout: Duration) -> Result<OriginProbe, String> {
        let u = HttpUrl::parse(url)?;
        let addr = procs::resolve_addr(&u.host, u.port)?;
        Ok(OriginProbe {
            addr,
            host: format!("{}:{}", u.host, u.port),
            timeout,
        })
    }

    /// Address and host header of the admin port (for the coordinator's per-phase scrapes).
    pub fn admin(&self) -> (SocketAddr, String) {
        (self.addr, self.host.clone())
    }

    /// The origin's counters.
    pub fn scrape(&self) -> Option<BTreeMap<String, f64>> {
        match procs::http_get(self.addr, &self.host, "/metrics", self.timeout) {
            Ok((200, body)) => Some(procs::parse_prometheus(&body)),
            _ => None,
        }
    }

    /// Makes the origin hold every response under `prefix` for `latency_ms` (replaces its injections).
    pub fn set_latency(&self, prefix: &str, latency_ms: u64) -> Result<(), String> {
        let body = serde_json::json!([{ "prefix": prefix, "latency_fixed_ms": latency_ms }]);
        self.send("PUT", "/inject", Some(body.to_string()))
    }

    /// Removes every injection.
    pub fn clear_injections(&self) -> Result<(), String> {
        self.send("DELETE", "/inject", None)
    }

    fn send(&self, method: &str, path: &str, json: Option<String>) -> Result<(), String> {
        let (status, body) = procs::http_request(
            self.addr,
            &self.host,
            method,
            path,
            json.as_ref().map(|_| "application/json"),
            json.as_deref().unwrap_or("").as_bytes(),
            self.timeout,
            1 << 20,
        )?;
        if status == 200 {
            Ok(())
        } else {
            Err(format!(
                "origin admin {method} {path}: {status} {}",
                String::from_utf8_lossy(&body)
            ))
        }
    }

    /// How often the origin was asked for `path` (its per-key fetch count).
    pub fn fetches(&self, path: &str) -> Result<u64, String> {
        let (status, body) = procs::http_get(
            self.addr,
            &self.host,
            &format!("/fetches?path={path}"),
            self.timeout,
        )?;
        if status != 200 {
            return Err(format!("origin admin GET /fetches: {status} {body}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("origin /fetches: {e}"))?;
        v.get("fetches")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("origin /fetches: no `fetches` in {body}"))
    }
}

/// Up to `max` of `items`, evenly spread (first and last included).
pub fn spread<T: Copy>(items: &[T], max: usize) -> Vec<T> {
    if items.len() <= max {
        return items.to_vec();
    }
    if max < 2 {
        return items.iter().take(max).copied().collect();
    }
    (0..max)
        .map(|i| items[i * (items.len() - 1) / (max - 1)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn plan(workload: CdnWorkload, prefix: &str) -> CdnPlan {
        CdnPlan {
            workload,
            path_prefix: prefix.into(),
            origin_latency_ms: None,
            seed: 7,
        }
    }

    fn base() -> HttpUrl {
        HttpUrl::parse("http://127.0.0.1:8080/base").unwrap()
    }

    fn path_of(req: &[u8]) -> String {
        let s = std::str::from_utf8(req).unwrap();
        assert!(
            s.ends_with(" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"),
            "{s}"
        );
        s.split(' ').nth(1).unwrap().to_string()
    }

    #[test]
    fn zipf_paths_are_skewed_ranks() {
        let cfg = CdnConfig::new(
            &plan(
                CdnWorkload::Zipf {
                    keys: 1000,
                    zipf_exponent: 1.2,
                },
                "/static/",
            ),
            &base(),
            1,
        );
        let mut lane = CdnLane::new(&cfg, 0);
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..10_000 {
            assert_eq!(lane.next(&cfg, 0.0), None);
            *counts.entry(path_of(&lane.request)).or_insert(0) += 1;
        }
        assert!(counts.keys().all(|p| p.starts_with("/base/static/k")));
        let top = counts["/base/static/k1"];
        let tenth = counts.get("/base/static/k10").copied().unwrap_or(0);
        assert!(top > 5 * tenth.max(1), "rank 1 {top}, rank 10 {tenth}");
    }

    #[test]
    fn video_viewers_play_segments_in_order_then_switch() {
        let cfg = CdnConfig::new(
            &plan(
                CdnWorkload::Video {
                    videos: 5,
                    segments: 4,
                    zipf_exponent: 0.0,
                },
                "/video/",
            ),
            &base(),
            1,
        );
        let mut lane = CdnLane::new(&cfg, 3);
        let mut seen = Vec::new();
        for _ in 0..12 {
            lane.next(&cfg, 0.0);
            seen.push(path_of(&lane.request));
        }
        let seg = |p: &str| -> (String, u32) {
            let (dir, file) = p.rsplit_once('/').unwrap();
            let n = file
                .strip_prefix("seg-")
                .unwrap()
                .strip_suffix(".ts")
                .unwrap();
            (dir.to_string(), n.parse().unwrap())
        };
        for w in seen.windows(2) {
            let (a, b) = (seg(&w[0]), seg(&w[1]));
            if b.1 == 0 {
                assert_eq!(a.1, 3, "a new video starts after the last segment: {w:?}");
            } else {
                assert_eq!((a.0.as_str(), a.1 + 1), (b.0.as_str(), b.1), "{w:?}");
            }
        }
        assert!(seen.iter().all(|p| p.starts_with("/base/video/v")));
    }

    #[test]
    fn storm_keys_follow_the_period_and_carry_the_nonce() {
        let p = plan(CdnWorkload::Storm { period_ms: 100 }, "/static/storm-");
        let cfg = CdnConfig::new(&p, &base(), 0xabc);
        let mut lane = CdnLane::new(&cfg, 0);
        assert_eq!(lane.next(&cfg, 0.05), Some(0));
        assert_eq!(path_of(&lane.request), "/base/static/storm-abc-0");
        assert_eq!(
            CdnConfig::storm_path("/base", &p, 0xabc, 0),
            "/base/static/storm-abc-0"
        );
        assert_eq!(lane.next(&cfg, 0.25), Some(2));
        assert_eq!(path_of(&lane.request), "/base/static/storm-abc-2");
    }

    #[test]
    fn totals_count_classes_bytes_and_ok_storm_periods() {
        let x = |status: u16, cache, body_bytes| Exchange {
            status: StatusCode::from_u16(status).unwrap(),
            body_bytes,
            cache,
        };
        let mut t = CdnTotals::default();
        t.record(&x(200, CacheClass::EdgeHit, 10), Some(1));
        t.record(&x(200, CacheClass::UpperHit, 20), Some(1));
        t.record(&x(200, CacheClass::Miss, 30), Some(2));
        t.record(&x(503, CacheClass::Unknown, 5), Some(3));
        let mut all = CdnTotals::default();
        all.merge(&t);
        all.merge(&t);
        assert_eq!(all.responses, 8);
        assert_eq!(all.with_cache_status, 6);
        assert_eq!((all.edge_hits, all.upper_hits), (2, 2));
        assert_eq!(
            (all.bytes, all.edge_hit_bytes, all.upper_hit_bytes),
            (130, 20, 40)
        );
        assert_eq!(all.storm_periods, BTreeSet::from([1, 2]));
    }

    #[test]
    fn scrape_helpers_sum_series_and_split_prefetch_outcomes() {
        let d = BTreeMap::from([
            ("cdn_origin_requests_total{status=\"200\"}".to_string(), 5.0),
            ("cdn_origin_requests_total{status=\"404\"}".to_string(), 2.0),
            ("cdn_origin_requests_total_other".to_string(), 100.0),
            ("cdn_origin_bytes_total".to_string(), 4096.0),
            (
                "cdn_cache_prefetch_total{tier=\"edge\",outcome=\"used\"}".to_string(),
                3.0,
            ),
            (
                "cdn_cache_prefetch_total{outcome=\"used\",tier=\"shield\"}".to_string(),
                1.0,
            ),
            (
                "cdn_cache_prefetch_total{tier=\"edge\",outcome=\"issued\"}".to_string(),
                6.0,
            ),
        ]);
        assert_eq!(origin_figures(&d), (7, 4096));
        let p = prefetch_outcomes(&d);
        assert_eq!(p["used"], 4.0);
        assert_eq!(p["issued"], 6.0);
        assert_eq!(spread(&[1, 2, 3, 4, 5], 3), vec![1, 3, 5]);
        assert_eq!(spread(&[1, 2], 10), vec![1, 2]);
    }
}
