//! The upstream client: HTTP/1.1 keep-alive connections to one or more upstreams (shields or the origin), chosen
//! per key by rendezvous hashing.
//!
//! Rendezvous (highest-random-weight) hashing: each upstream gets a score `mix(key_hash, upstream_seed)` and the
//! highest wins. Every edge computes the same ranking for a key (fixed seeds, see [`super::key`]), so each object
//! is fetched through one shield only; removing a shield moves only the keys it owned. A retry after a failure
//! goes to the next upstream in the key's ranking.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::error::FetchError;
use super::key::hash_parts;

/// Boxed error of request bodies sent upstream.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The request body type sent upstream (empty for fetches, the client's body for passed-through methods).
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long an idle pooled connection is kept: long enough to span the gaps of a benchmark's quiet phases, short
/// enough that a restarted upstream does not leave many dead sockets behind.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One upstream.
#[derive(Debug, Clone)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Rendezvous seed: the hash of the authority.
    seed: u64,
}

/// The upstreams of a tier and the client that reaches them.
#[derive(Debug, Clone)]
pub struct Upstreams {
    client: Client<HttpConnector, UpstreamBody>,
    targets: Box<[Target]>,
    head_timeout: Duration,
}

/// Mixes two 64-bit values (SplitMix64's finaliser over their xor): the rendezvous score.
fn score(key_hash: u64, seed: u64) -> u64 {
    let mut x = key_hash ^ seed;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Upstreams {
    /// A client for `urls` (validated: `http` scheme, an authority, no path).
    pub fn new(
        urls: &[Uri],
        connect_timeout: Duration,
        head_timeout: Duration,
        max_idle_per_upstream: usize,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        // No pool timer: with one, hyper-util keeps an interval on the serving runtime while any upstream
        // connection is idle, so every `epoll_wait` of a hit-serving tier arms a kernel timer (see
        // `refbench_common::reaper`). Without it, idle connections past the timeout are dropped when the pool is
        // next asked for one, and at most `max_idle_per_upstream` of them wait that long.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle_per_upstream)
            .build(connector);
        let targets = urls
            .iter()
            .filter_map(|u| {
                let authority = u.authority()?.clone();
                Some(Target {
                    scheme: u.scheme().cloned().unwrap_or(Scheme::HTTP),
                    seed: hash_parts(&[authority.as_str().as_bytes()]),
                    authority,
                })
            })
            .collect();
        Upstreams {
            client,
            targets,
            head_timeout,
        }
    }

    /// Number of upstreams.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when there are none (never, after validation).
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The index of the upstream for `key_hash` on try `attempt` (0 = the owner, 1 = the runner-up, ...).
    pub fn pick(&self, key_hash: u64, attempt: usize) -> usize {
        let n = self.targets.len();
        if n <= 1 {
            return 0;
        }
        let mut ranked: Vec<(u64, usize)> = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (score(key_hash, t.seed), i))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked[attempt % n].1
    }

    /// The authority of upstream `idx` (for errors and logs).
    pub fn authority(&self, idx: usize) -> &str {
        self.targets.get(idx).map_or("", |t| t.authority.as_str())
    }

    /// Sends `req` (its URI's path and query are kept) to upstream `idx` and waits for the response head, at most
    /// the head timeout.
    pub async fn send(
        &self,
        idx: usize,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, FetchError> {
        let Some(t) = self.targets.get(idx) else {
            return Err(FetchError::Upstream {
                upstream: String::new(),
                reason: "no upstream configured".into(),
            });
        };
        let err = |reason: String| FetchError::Upstream {
            upstream: t.authority.to_string(),
            reason,
        };
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(t.scheme.clone())
            .authority(t.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| err(format!("bad upstream URI: {e}")))?;
        *req.uri_mut() = uri;
        match tokio::time::timeout(self.head_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                // The legacy client's Display is terse ("client error (Connect)"); the source says why.
                let mut reason = e.to_string();
                let mut src = e.source();
                while let Some(s) = src {
                    reason.push_str(": ");
                    reason.push_str(&s.to_string());
                    src = s.source();
                }
                Err(err(reason))
            }
            Err(_) => Err(err(format!(
                "no response head within {} ms",
                self.head_timeout.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn rendezvous_spreads_and_is_stable() {
        let urls: Vec<Uri> = [
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ]
        .iter()
        .map(|u| u.parse().unwrap())
        .collect();
        let u = Upstreams::new(&urls, Duration::from_secs(1), Duration::from_secs(1), 4);
        let mut counts = [0usize; 3];
        for k in 0..3000u64 {
            let h = hash_parts(&[&k.to_le_bytes()]);
            let first = u.pick(h, 0);
            assert_eq!(first, u.pick(h, 0));
            assert_ne!(first, u.pick(h, 1));
            counts[first] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "{counts:?}");
        }
        // Dropping an upstream moves only its keys.
        let two = Upstreams::new(
            &urls[..2],
            Duration::from_secs(1),
            Duration::from_secs(1),
            4,
        );
        for k in 0..1000u64 {
            let h = hash_parts(&[&k.to_le_bytes()]);
            let owner = u.pick(h, 0);
            if owner < 2 {
                assert_eq!(two.pick(h, 0), owner);
            }
        }
    }
}
