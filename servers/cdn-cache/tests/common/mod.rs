//! What the cache-tier integration tests share: a real synthetic origin and real tiers on `127.0.0.1:0` (each
//! stopped when its value drops), a plain HTTP/1.1 client on a fresh connection per request, and the response as
//! the tests look at it.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use refbench_cdn::cache::{self, CacheKey, Role, TierConfig, TierPlan};
use refbench_cdn::origin::{self, Injection, OriginConfig, OriginPlan};
use refbench_common::shutdown::{self, ShutdownTrigger};
use tokio::net::TcpStream;

/// Bounds hangs on a shared 2-core host; never a speed measurement.
pub const PROMPT: Duration = Duration::from_secs(10);

/// Every request names this host (unless a test says otherwise), so every tier computes the same keys whatever
/// port it listens on.
pub const HOST: &str = "cdn.test";

/// A running synthetic origin.
pub struct Origin {
    pub started: origin::Started,
    _trigger: ShutdownTrigger,
}

impl Origin {
    pub fn url(&self) -> String {
        format!("http://{}", self.started.http_addr)
    }
    pub fn fetches(&self, key: &str) -> u64 {
        self.started.app.fetches().get(key).fetches
    }
    pub fn total_fetches(&self) -> u64 {
        self.started.app.fetches().total()
    }
    pub fn inject(&self, list: Vec<Injection>) {
        self.started.app.set_injections(list).unwrap();
    }
    /// The exact body the origin serves for `target` (with these request headers) at its current version.
    pub fn expected(&self, target: &str, headers: &HeaderMap) -> Bytes {
        let version = self.started.app.version(target);
        origin::expected_body(self.started.app.config(), target, headers, version)
    }
}

pub async fn start_origin(cfg: OriginConfig) -> Origin {
    let (trigger, shutdown) = shutdown::channel();
    let started = origin::start(cfg.resolve().unwrap(), &OriginPlan::default(), shutdown)
        .await
        .unwrap();
    Origin {
        started,
        _trigger: trigger,
    }
}

/// A running cache tier.
pub struct Tier {
    pub started: cache::Started,
    _trigger: ShutdownTrigger,
}

impl Tier {
    pub fn http(&self) -> SocketAddr {
        self.started.http_addr
    }
    pub fn admin(&self) -> SocketAddr {
        self.started.admin_addr
    }
    pub fn url(&self) -> String {
        format!("http://{}", self.started.http_addr)
    }
    pub fn stored_at(&self, host: &str, path: &str) -> bool {
        self.started
            .app
            .store()
            .contains(CacheKey::new(host, path).hash)
    }
    pub fn stored(&self, path: &str) -> bool {
        self.stored_at(HOST, path)
    }
}

/// A tier with room for the tests' objects: 64 MiB in 4 shards, objects up to 4 MiB, a 2 s body-read timeout.
pub fn tier_config(role: Role, upstreams: Vec<String>) -> TierConfig {
    TierConfig {
        role,
        upstreams,
        memory_bytes: 64 * 1024 * 1024,
        shards: 4,
        max_object_bytes: 4 * 1024 * 1024,
        upstream_read_timeout_ms: 2_000,
        ..TierConfig::default()
    }
}

pub async fn start_tier(cfg: TierConfig) -> Tier {
    start_tier_with(cfg, TierPlan::default()).await
}

pub async fn start_tier_with(cfg: TierConfig, plan: TierPlan) -> Tier {
    let (trigger, shutdown) = shutdown::channel();
    let started = cache::start(cfg.resolve().unwrap(), &plan, shutdown)
        .await
        .unwrap();
    Tier {
        started,
        _trigger: trigger,
    }
}

/// One request on a fresh HTTP/1.1 connection naming `host`; the response head within [`PROMPT`].
pub async fn send(
    addr: SocketAddr,
    method: Method,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<hyper::Response<Incoming>, hyper::Error> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", host);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(body)).unwrap();
    tokio::time::timeout(PROMPT, tx.send_request(req))
        .await
        .expect("response head in time")
}

/// A whole response.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
    /// The whole `Cache-Status` value.
    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }
    /// The last `Cache-Status` member of the tier named `tier` (its own, when it answered).
    pub fn status_of(&self, tier: &str) -> String {
        let v = self.cache_status();
        v.split(", ")
            .filter(|m| m.starts_with(tier))
            .last()
            .unwrap_or_else(|| panic!("no {tier} member in {v:?}"))
            .to_string()
    }
    /// An edge hit (a single-tier test: the edge is the only member).
    pub fn hit(&self) -> bool {
        self.cache_status().starts_with("refbench-edge; hit")
    }
}

/// Reads the whole body of `r` within [`PROMPT`].
pub async fn read(r: hyper::Response<Incoming>) -> Got {
    let status = r.status();
    let headers = r.headers().clone();
    let body = tokio::time::timeout(PROMPT, r.into_body().collect())
        .await
        .expect("body in time")
        .expect("whole body")
        .to_bytes();
    Got {
        status,
        headers,
        body,
    }
}
