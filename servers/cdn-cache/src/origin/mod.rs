//! A synthetic origin for the cache's tests and benchmarks.
//!
//! Every object is generated, never stored: its body is a seeded stream
//! derived from (seed, path and query, variant, version), its size is drawn
//! once per key from a seeded distribution, and its validators follow from
//! the same inputs. So a test can recompute what the origin sent
//! ([`describe_object`], [`expected_body`], [`OriginApp::describe`]) and check
//! a cache byte for byte. Bodies are streamed in `chunk_bytes` frames
//! (64 KiB by default), so large objects are never built whole and a hang
//! mid-body is a real stall on the wire.
//!
//! # Objects
//!
//! - **Identity**: the request target (path and query). A `size=N` query
//!   parameter overrides the size (when `allow_size_query`, the default);
//!   it is part of the target, so each size is its own object.
//! - **Size**: the matching rule's `size`, else the config's `size`; default a
//!   bucket mix 1–4 KiB (50), 4–64 KiB (30), 64–256 KiB (15), 256 KiB–1 MiB (5).
//!   Never above `max_object_size_bytes` (default 64 MiB).
//! - **Version**: starts at 0; bumps (per object or per prefix, through the
//!   admin port) change the body, the ETag and `Last-Modified`
//!   (`last_modified_base_unix_s + version` seconds).
//! - **Variants**: for a rule with `vary`, each distinct request value of
//!   those headers (trimmed, lowercased, absent = "") is its own body and
//!   ETag, and its own fetch-count key: `"{target} {name}={value}"`.
//!
//! # Default rules (first matching prefix wins)
//!
//! | prefix       | Cache-Control                                  | validators          | other                     |
//! |--------------|------------------------------------------------|---------------------|---------------------------|
//! | `/static/`   | `public, max-age=86400, immutable`             | strong ETag, LM     |                           |
//! | `/nostore/`  | `no-store`                                     | none                |                           |
//! | `/private/`  | `private, max-age=60`                          | strong ETag         |                           |
//! | `/vary/`     | `public, max-age=60`                           | strong ETag, LM     | `Vary: accept-encoding`   |
//! | `/swr/`      | `public, max-age=1, stale-while-revalidate=30` | strong ETag, LM     |                           |
//! | `/sie/`      | `public, max-age=1, stale-if-error=600`        | strong ETag, LM     |                           |
//! | `/smaxage/`  | `public, max-age=5, s-maxage=60`               | strong ETag, LM     |                           |
//! | `/nocache/`  | `no-cache`                                     | strong ETag, LM     |                           |
//! | `/weak/`     | `public, max-age=60`                           | weak ETag, LM       |                           |
//! | `/expires/`  | none                                           | strong ETag, LM     | `Expires: now + 60 s`     |
//! | `/video/`    | `public, max-age=3600`                         | strong ETag, LM     | `{id}/seg-{0..100}.ts` only (else 404), 256 KiB, `video/mp2t` |
//! | `/`          | `public, max-age=60`                           | strong ETag, LM     |                           |
//!
//! Every object response also carries `x-origin-key` (its fetch-count key)
//! and `x-origin-version`.
//!
//! # Requests
//!
//! GET and HEAD only (others: 405 with `Allow: GET, HEAD`; purging is the
//! cache's business, not the origin's). A request body is refused (400).
//! Conditionals per RFC 9110 §13.2.2: `If-Match` (strong comparison, 412),
//! `If-None-Match` (weak comparison, 304), and only without it
//! `If-Modified-Since` (304 when `Last-Modified` is not later; IMF-fixdate
//! only, other date forms are ignored). 304s carry Cache-Control, ETag,
//! Last-Modified, Vary and Expires. Oversized heads are refused by hyper
//! (431) under the listener's `max_header_bytes`.
//!
//! # Injections (per prefix, first match wins, switchable at runtime)
//!
//! Applied after the fetch is counted, in this order: latency
//! (`latency_fixed_ms` + seeded uniform `0..=latency_jitter_ms`) before the
//! head; `close_connection` (no response at all); `fail_share` of requests get
//! `fail_status` (1.0 = "origin down" at the HTTP level); `hang_after_bytes`
//! sends the head and that many body bytes, then stalls for `hang_ms` (or
//! until the client leaves or the drain cuts it); at most `max_hangs` hang at
//! once, beyond that the body is aborted at the hang point. Separately, the
//! main listener can be stopped (the port refuses connections) and restarted
//! on the same port.
//!
//! # Admin port
//!
//! The control routes share the admin listener with `/metrics` and
//! `/healthz`, so they keep working while the main port is down. Responses
//! are JSON; query values are percent-decoded (`%20` for the space in a
//! variant key).
//!
//! | route | what |
//! |-------|------|
//! | `GET /fetches?key=K` | `{"key","fetches","ok","not_modified","failed"}` for one exact key |
//! | `GET /fetches?path=P` | the same summed over `P` and all its variants |
//! | `GET /fetches[?top=N]` | `{"total","tracked_keys","overflow","top":[..]}`, N ≤ 10 000, default 20 |
//! | `DELETE /fetches` | reset all counts |
//! | `GET /version?key=P` | `{"key","version"}` |
//! | `POST /version?key=P` / `?prefix=/p/` | bump one object / everything under a prefix |
//! | `GET /inject`, `PUT /inject` (one object or a list), `DELETE /inject` | read, replace, clear the injections |
//! | `GET /listener`, `POST /listener?state=down\|up` | stop / restart the main listener |
//! | `GET /config` | the configuration served |
//!
//! Prometheus (`/metrics`): `cdn_origin_requests_total{status}` (status code,
//! or `closed`), `cdn_origin_bytes_total`, `cdn_origin_injected_failures_total`,
//! `cdn_origin_injected_latency_total`, `cdn_origin_hangs_active`,
//! `cdn_origin_hangs_over_cap_total`, `cdn_origin_fetch_keys_overflow_total`.
//! Per-key counts are deliberately not labels (see [`FetchCounts`]). Metrics
//! are process-global: two origins in one process share them; the fetch
//! counts are per origin. The admin listener is served by `serve_http`, so
//! its connections count in `http_connections_*` too.

mod admin;
mod app;
mod body;
mod config;
mod error;
mod object;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use refbench_common::CommonError;
use refbench_common::admin::metrics_handle;
use refbench_common::announce::{Ready, announce};
use refbench_common::bind::{DEFAULT_BIND, bind_tcp};
use refbench_common::cpu::{ProcessArgs, pin_to_cpus};
use refbench_common::http::{Limits, serve_http};
use refbench_common::shutdown::{self, Shutdown};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use admin::{
    AdminFuture, DEFAULT_TOP_KEYS, MAX_ADMIN_BODY_BYTES, MAX_TOP_KEYS, OriginAdmin,
    origin_admin_limits,
};
pub use app::{
    Object, OriginApp, OriginFuture, Rejection, X_ORIGIN_KEY, X_ORIGIN_VERSION, app,
    describe_object, expected_body, fetch_key,
};
pub use body::OriginBody;
pub use config::{
    CHUNK_BYTES_RANGE, EtagMode, Injection, MAX_EXPIRES_OFFSET_S, MAX_HANG_MS, MAX_HANGS_CEILING,
    MAX_INJECTIONS, MAX_LATENCY_MS, MAX_OBJECT_SIZE_CEILING_BYTES, MAX_RULES, MAX_SEGMENTS,
    MAX_SIZE_BUCKETS, MAX_TABLE_KEYS, MAX_VARY_HEADERS, OriginConfig, ResolvedOrigin, Rule,
    SizeBucket, SizeDist, default_rules, validate_injections,
};
pub use error::{BodyAborted, ConnectionClosed, OriginError};
pub use object::{EntityTag, EtagCondition, body_bytes, fill_body, fmt_http_date, parse_http_date};
pub use state::{FetchCounts, KeyCounts, MAX_PREFIX_BUMPS};

/// The `system` name in the readiness line.
pub const SYSTEM: &str = "cdn-origin";

/// Limits of `--threads` and `--max-connections`, shared by every server.
pub use refbench_common::cpu::{MAX_CONNECTIONS, MAX_THREADS};

/// How long in-flight responses get when the main listener stops or the
/// server shuts down; short, because hanging bodies never finish by themselves.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// How often, and how many times, a restart retries binding the old port
/// (a connection in the old listener's backlog may hold it for a moment).
const REBIND_RETRY: (Duration, u32) = (Duration::from_millis(20), 100);

/// Command-line options of the origin (`loadgen serve cdn origin ...`);
/// flatten into a clap `Parser`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct OriginArgs {
    /// Address of the origin's HTTP listener (HTTP/1.1 and h2c).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// Address of the admin listener (/metrics, /healthz and the control routes).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub admin_bind: SocketAddr,

    /// JSON file holding an origin configuration (rules, sizes, injections);
    /// unknown keys are refused. The flags below override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Seed of bodies, sizes and injected draws.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Give every object without a rule-specific size this fixed size, bytes.
    #[arg(long, value_name = "N")]
    pub size_bytes: Option<u64>,

    /// Largest object served, bytes.
    #[arg(long, value_name = "N")]
    pub max_object_size_bytes: Option<u64>,

    /// Fixed latency before every response head, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_fixed_ms: u64,

    /// Extra uniform random latency 0..=MS per response (seeded), milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_jitter_ms: u64,

    /// Share of requests answered with --fail-status, 0..=1.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub fail_share: f64,

    /// Status of injected failures (5xx).
    #[arg(long, value_name = "CODE", default_value_t = 503)]
    pub fail_status: u16,

    /// --threads, --cpus, --max-connections.
    #[command(flatten)]
    pub process: ProcessArgs,
}

impl Default for OriginArgs {
    /// The same values as the command-line defaults.
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            origin: OriginArgs,
        }
        Wrapper::try_parse_from(["cdn-origin"])
            .expect("defaults of OriginArgs parse")
            .origin
    }
}

/// Where to listen and how to run (everything in [`OriginArgs`] besides the
/// [`OriginConfig`]).
#[derive(Debug, Clone)]
pub struct OriginPlan {
    /// HTTP listener address.
    pub bind: SocketAddr,
    /// Admin listener address.
    pub admin_bind: SocketAddr,
    /// Runtime threads (1 = current_thread).
    pub threads: usize,
    /// Cores to pin to; empty = no pinning. Sorted, deduplicated.
    pub cpus: Vec<usize>,
    /// Limits for the HTTP listener.
    pub limits: Limits,
}

impl Default for OriginPlan {
    fn default() -> Self {
        OriginPlan {
            bind: DEFAULT_BIND.parse().expect("DEFAULT_BIND parses"),
            admin_bind: DEFAULT_BIND.parse().expect("DEFAULT_BIND parses"),
            threads: 1,
            cpus: Vec::new(),
            limits: Limits {
                // GET/HEAD only: request bodies are refused, never read.
                max_body_bytes: 0,
                drain_timeout: DRAIN_TIMEOUT,
                ..Limits::default()
            },
        }
    }
}

impl OriginArgs {
    /// Reads `--config` (if any), applies the flags, validates everything
    /// once. Errors name the flag or the config field.
    pub fn resolve(&self) -> Result<(ResolvedOrigin, OriginPlan), OriginError> {
        let mut cfg = match &self.config {
            None => OriginConfig::default(),
            Some(path) => {
                let file_err = |reason: String| OriginError::ConfigFile {
                    path: path.display().to_string(),
                    reason,
                };
                let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
                serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))?
            }
        };
        if let Some(seed) = self.seed {
            cfg.seed = seed;
        }
        if let Some(max) = self.max_object_size_bytes {
            cfg.max_object_size_bytes = max;
        }
        if let Some(size_bytes) = self.size_bytes {
            if size_bytes > cfg.max_object_size_bytes {
                return Err(OriginError::invalid(
                    "--size-bytes",
                    format!(
                        "must be at most the max object size ({}), got {size_bytes}",
                        cfg.max_object_size_bytes
                    ),
                ));
            }
            cfg.size = SizeDist::Fixed { size_bytes };
        }
        let global = Injection {
            prefix: String::new(),
            latency_fixed_ms: self.latency_fixed_ms,
            latency_jitter_ms: self.latency_jitter_ms,
            fail_share: self.fail_share,
            fail_status: self.fail_status,
            ..Injection::default()
        };
        let flag_err = |e: OriginError, flag: &str| match e {
            OriginError::Invalid { reason, .. } => OriginError::invalid(flag.to_string(), reason),
            other => other,
        };
        global.validate("flags").map_err(|e| {
            let flag = match &e {
                OriginError::Invalid { field, .. } if field.ends_with("fail_share") => {
                    "--fail-share"
                }
                OriginError::Invalid { field, .. } if field.ends_with("fail_status") => {
                    "--fail-status"
                }
                _ => "--latency-fixed-ms",
            };
            flag_err(e, flag)
        })?;
        if global
            != (Injection {
                prefix: String::new(),
                fail_status: self.fail_status,
                ..Injection::default()
            })
        {
            // After the file's injections: those are narrower (per prefix).
            cfg.injections.push(global);
        }
        let resolved = cfg.resolve()?;
        let process = self
            .process
            .validate()
            .map_err(|(flag, reason)| OriginError::invalid(flag, reason))?;
        let cpus = process.cpus;
        let mut plan = OriginPlan {
            bind: self.bind,
            admin_bind: self.admin_bind,
            threads: process.threads,
            cpus,
            ..OriginPlan::default()
        };
        plan.limits.max_connections = process.max_connections;
        Ok((resolved, plan))
    }
}

/// An origin running on the caller's runtime (see [`start`]).
#[derive(Debug)]
pub struct Started {
    /// Bound address of the HTTP listener (kept across listener restarts).
    pub http_addr: SocketAddr,
    /// Bound address of the admin listener.
    pub admin_addr: SocketAddr,
    /// The handler, for in-process tests (fetch counts, versions, injections).
    pub app: OriginApp,
    http: JoinHandle<Result<(), CommonError>>,
    admin: JoinHandle<Result<(), CommonError>>,
    upkeep: JoinHandle<()>,
}

impl Started {
    /// The readiness announcement for this server.
    pub fn ready(&self) -> Ready {
        let mut listeners = BTreeMap::new();
        listeners.insert("http".to_string(), self.http_addr);
        listeners.insert("admin".to_string(), self.admin_addr);
        Ready {
            system: SYSTEM.to_string(),
            pid: std::process::id(),
            listeners,
            tls_cert_pem: None,
        }
    }

    /// Waits until both listeners have stopped (after the shutdown fired and
    /// the drain finished).
    pub async fn join(self) -> Result<(), OriginError> {
        let http = flatten("http", self.http.await);
        let admin = flatten("admin", self.admin.await);
        let _ = self.upkeep.await;
        http.and(admin)
    }
}

fn flatten(
    task: &'static str,
    r: Result<Result<(), CommonError>, tokio::task::JoinError>,
) -> Result<(), OriginError> {
    match r {
        Ok(inner) => inner.map_err(OriginError::from),
        Err(e) => Err(OriginError::Task {
            task,
            reason: e.to_string(),
        }),
    }
}

/// Binds both listeners and serves on the current tokio runtime until
/// `shutdown` fires. Installs the global Prometheus recorder (before building
/// the app, so its counters are live). Returns once both are listening.
pub async fn start(
    cfg: ResolvedOrigin,
    plan: &OriginPlan,
    shutdown: Shutdown,
) -> Result<Started, OriginError> {
    let handle = metrics_handle()?;
    let http = bind_tcp(plan.bind).await?;
    let admin = bind_tcp(plan.admin_bind).await?;
    let http_addr = http.local_addr().map_err(|source| OriginError::LocalAddr {
        listener: "http",
        source,
    })?;
    let admin_addr = admin
        .local_addr()
        .map_err(|source| OriginError::LocalAddr {
            listener: "admin",
            source,
        })?;
    let origin = app(cfg);
    let http = tokio::spawn(serve_main(
        http,
        http_addr,
        origin.clone(),
        plan.limits.clone(),
        shutdown.clone(),
    ));
    let upkeep = tokio::spawn(admin::upkeep(handle.clone(), shutdown.clone()));
    let admin = tokio::spawn(serve_http(
        admin,
        OriginAdmin::new(origin.clone(), handle),
        origin_admin_limits(),
        shutdown,
    ));
    Ok(Started {
        http_addr,
        admin_addr,
        app: origin,
        http,
        admin,
        upkeep,
    })
}

/// Waits until the listening switch reads `on` (forever if its sender is
/// gone, which cannot happen while the app lives).
async fn switched(rx: &mut watch::Receiver<bool>, on: bool) {
    if rx.wait_for(|v| *v == on).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serves the main port, closing it while the app's listening switch is off
/// (connections are refused: a dead origin host) and rebinding the same
/// address when it is turned back on.
async fn serve_main(
    first: TcpListener,
    addr: SocketAddr,
    origin: OriginApp,
    limits: Limits,
    mut shutdown: Shutdown,
) -> Result<(), CommonError> {
    let mut switch = origin.listening_watch();
    let mut listener = Some(first);
    loop {
        if let Some(l) = listener.take() {
            let (trigger, serving) = shutdown::channel();
            let mut serve = std::pin::pin!(serve_http(l, origin.clone(), limits.clone(), serving));
            let stopping = tokio::select! {
                r = &mut serve => return r,
                () = shutdown.wait() => true,
                () = switched(&mut switch, false) => false,
            };
            // serve_http drops the listener first (the port refuses at once),
            // then drains in-flight responses for up to drain_timeout.
            trigger.trigger();
            serve.await?;
            if stopping {
                return Ok(());
            }
        }
        tokio::select! {
            () = shutdown.wait() => return Ok(()),
            () = switched(&mut switch, true) => {}
        }
        let mut tries = 0;
        listener = loop {
            match bind_tcp(addr).await {
                Ok(l) => break Some(l),
                Err(e) if tries >= REBIND_RETRY.1 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(REBIND_RETRY.0).await;
                }
            }
        };
    }
}

/// The whole origin: validate, pin CPUs, build the runtime, bind, announce
/// `REFBENCH_READY` on stdout, serve until SIGTERM/SIGINT, drain, return.
pub fn run(args: OriginArgs) -> Result<(), OriginError> {
    let (cfg, plan) = args.resolve()?;
    // Before the runtime exists, so every thread it spawns inherits the mask.
    pin_to_cpus(&plan.cpus)?;
    let runtime = refbench_common::runtime::build(plan.threads, "cdn-origin")
        .map_err(OriginError::Runtime)?;
    let result = runtime.block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        // Handlers go in before the announce: the parent may signal us the
        // moment it reads the line.
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
    use super::*;

    #[test]
    fn args_defaults_and_errors() {
        let (cfg, plan) = OriginArgs::default().resolve().unwrap();
        assert!(cfg.config().injections.is_empty());
        assert_eq!(plan.threads, 1);
        let bad = OriginArgs {
            fail_share: 2.0,
            ..OriginArgs::default()
        };
        let e = bad.resolve().unwrap_err().to_string();
        assert!(e.starts_with("--fail-share:"), "{e}");
        let bad = OriginArgs {
            fail_status: 404,
            ..OriginArgs::default()
        };
        let e = bad.resolve().unwrap_err().to_string();
        assert!(e.starts_with("--fail-status:"), "{e}");
        let ok = OriginArgs {
            latency_fixed_ms: 5,
            size_bytes: Some(10),
            ..OriginArgs::default()
        };
        let (cfg, _) = ok.resolve().unwrap();
        assert_eq!(cfg.config().injections.len(), 1);
        assert_eq!(cfg.config().size, SizeDist::Fixed { size_bytes: 10 });
    }
}
