//! The floor reference server.
//!
//! A minimal hyper HTTP/1.1 + HTTP/2 (h2c) server that answers every request
//! with 200 and a tiny body. It serves two purposes:
//!
//! - **The floor**: the least CPU any HTTP server can spend per request on
//!   this host. Every load-generator run measures it and expresses the other
//!   servers' costs in floor units, so its request path stays as lean as
//!   `refbench_common::http::serve_http` allows: no allocation beyond hyper's,
//!   no clock reads, no boxed futures.
//! - **A known-latency server** for checking the load generator: with
//!   [`DelayModel`] each response is delayed by a reproducible amount, and
//!   with [`StallModel`] responses are held during periodic stall windows, so
//!   the latency distribution the generator reports can be compared with the
//!   one injected.
//!
//! Programmatic use: [`app`] (no socket), [`start`] (in-process, on the
//! caller's runtime) or [`run`] (the whole binary: pin, runtime, announce,
//! serve until SIGTERM/SIGINT).

mod app;
mod error;
mod model;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use refbench_common::admin::{metrics_handle, serve_admin};
use refbench_common::announce::{Ready, announce};
use refbench_common::bind::{DEFAULT_BIND, bind_tcp};
use refbench_common::cpu::{ProcessArgs, pin_to_cpus};
use refbench_common::http::{Limits, serve_http};
use refbench_common::shutdown::{self, Shutdown};
use tokio::task::JoinHandle;

pub use app::{
    DEFAULT_MAX_REQUEST_BODY_BYTES, FloorApp, FloorConfig, FloorFuture, MAX_BODY_BYTES, app,
};
pub use error::FloorError;
pub use model::{DelayModel, EXP_CAP_MEANS, MAX_DELAY_US, MAX_STALL_EVERY_MS, StallModel};

/// The `system` name in the readiness line.
pub const SYSTEM: &str = "floor";

/// Limits of `--threads` and `--max-connections`, shared by every server.
pub use refbench_common::cpu::{MAX_CONNECTIONS, MAX_THREADS};

/// Largest accepted `--max-request-body-bytes` (64 MiB).
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Command-line options of `refbench-floor`; flatten into a clap `Parser`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    /// Address of the benchmarked HTTP listener (HTTP/1.1 and h2c).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// Address of the admin listener (/metrics, /healthz).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub admin_bind: SocketAddr,

    /// Response body size in bytes: 2 sends "ok", other sizes repeat 'x'.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub body_bytes: usize,

    /// Fixed delay added to every response, microseconds.
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub delay_fixed_us: u64,

    /// Mean of an exponential delay added to every response, microseconds.
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub delay_exp_mean_us: u64,

    /// Seed of the deterministic delay sequence.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,

    /// Length of the stall window at the end of each period, milliseconds.
    #[arg(long, value_name = "MS", requires = "stall_every_ms")]
    pub stall_hold_ms: Option<u64>,

    /// Stall period, milliseconds (counted from server start).
    #[arg(long, value_name = "MS", requires = "stall_hold_ms")]
    pub stall_every_ms: Option<u64>,

    /// --threads, --cpus, --max-connections.
    #[command(flatten)]
    pub process: ProcessArgs,

    /// Largest request body read (and discarded); larger ones get 413.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_REQUEST_BODY_BYTES)]
    pub max_request_body_bytes: usize,

    /// After shutdown, write every delayed or stalled response's realized hold (arrival to release, µs) to this
    /// file as an HdrHistogram (V2, base64, 1 µs to 60 s at 3 digits: loadgen's format). This is the delay the
    /// server actually injected, timer lateness included, to check a load generator against.
    #[arg(long, value_name = "PATH")]
    pub holds_out: Option<PathBuf>,
}

impl Default for ServeArgs {
    /// The same values as the command-line defaults.
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Wrapper::try_parse_from(["refbench-floor"])
            .expect("defaults of ServeArgs parse")
            .serve
    }
}

/// Everything [`ServeArgs`] says besides the [`FloorConfig`]: where to listen
/// and how to run.
#[derive(Debug, Clone)]
pub struct ServePlan {
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
    /// Where to write the realized holds after shutdown, if anywhere.
    pub holds_out: Option<PathBuf>,
}

impl Default for ServePlan {
    fn default() -> Self {
        let (_, plan) = ServeArgs::default()
            .resolve()
            .expect("default ServeArgs are valid");
        plan
    }
}

impl ServeArgs {
    /// Validates the flags and splits them into what to answer and how to
    /// serve. Errors name the offending flag.
    ///
    /// A delay is configured when either delay flag is non-zero; a stall when
    /// both stall flags are given and the hold is non-zero (a zero hold has no
    /// windows, so the lean path is kept).
    pub fn resolve(&self) -> Result<(FloorConfig, ServePlan), FloorError> {
        if self.body_bytes > MAX_BODY_BYTES {
            return Err(FloorError::invalid(
                "--body-bytes",
                format!(
                    "must be at most {MAX_BODY_BYTES} (16 MiB), got {}",
                    self.body_bytes
                ),
            ));
        }
        let delay = if self.delay_fixed_us > 0 || self.delay_exp_mean_us > 0 {
            let d = DelayModel {
                fixed_us: self.delay_fixed_us,
                exp_mean_us: self.delay_exp_mean_us,
                seed: self.seed,
            };
            d.validate()?;
            Some(d)
        } else {
            None
        };
        let stall = match (self.stall_hold_ms, self.stall_every_ms) {
            (None, None) => None,
            (Some(hold_ms), Some(every_ms)) => {
                let s = StallModel { hold_ms, every_ms };
                s.validate()?;
                (hold_ms > 0).then_some(s)
            }
            (Some(_), None) => {
                return Err(FloorError::invalid(
                    "--stall-hold-ms",
                    "needs --stall-every-ms as well",
                ));
            }
            (None, Some(_)) => {
                return Err(FloorError::invalid(
                    "--stall-every-ms",
                    "needs --stall-hold-ms as well",
                ));
            }
        };
        let process = self
            .process
            .validate()
            .map_err(|(flag, reason)| FloorError::invalid(flag, reason))?;
        let cpus = process.cpus;
        if self.max_request_body_bytes > MAX_REQUEST_BODY_BYTES {
            return Err(FloorError::invalid(
                "--max-request-body-bytes",
                format!(
                    "must be at most {MAX_REQUEST_BODY_BYTES} (64 MiB), got {}",
                    self.max_request_body_bytes
                ),
            ));
        }
        if self.holds_out.is_some() && delay.is_none() && stall.is_none() {
            return Err(FloorError::invalid(
                "--holds-out",
                "needs a delay (--delay-fixed-us / --delay-exp-mean-us) or a stall: the lean floor holds nothing",
            ));
        }
        let limits = Limits {
            max_connections: process.max_connections,
            max_body_bytes: self.max_request_body_bytes,
            ..Limits::default()
        };
        Ok((
            FloorConfig {
                body_bytes: self.body_bytes,
                delay,
                stall,
                record_holds: self.holds_out.is_some(),
            },
            ServePlan {
                bind: self.bind,
                admin_bind: self.admin_bind,
                threads: process.threads,
                cpus,
                limits,
                holds_out: self.holds_out.clone(),
            },
        ))
    }
}

/// A floor server running on the caller's runtime (see [`start`]).
#[derive(Debug)]
pub struct Started {
    /// Bound address of the HTTP listener.
    pub http_addr: SocketAddr,
    /// Bound address of the admin listener.
    pub admin_addr: SocketAddr,
    http: JoinHandle<Result<(), refbench_common::CommonError>>,
    admin: JoinHandle<Result<(), refbench_common::CommonError>>,
    app: FloorApp,
}

impl Started {
    /// The serving app (a cheap handle): its [`FloorApp::holds`] are live.
    pub fn app(&self) -> &FloorApp {
        &self.app
    }

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
    pub async fn join(self) -> Result<(), FloorError> {
        let http = flatten("http", self.http.await);
        let admin = flatten("admin", self.admin.await);
        http.and(admin)
    }
}

fn flatten(
    task: &'static str,
    r: Result<Result<(), refbench_common::CommonError>, tokio::task::JoinError>,
) -> Result<(), FloorError> {
    match r {
        Ok(inner) => inner.map_err(FloorError::from),
        Err(e) => Err(FloorError::Task {
            task,
            reason: e.to_string(),
        }),
    }
}

/// Binds both listeners and serves on the current tokio runtime until
/// `shutdown` fires. Installs the global Prometheus recorder (before building
/// the app, so its counters are live). Returns once both are listening.
pub async fn start(
    config: FloorConfig,
    plan: &ServePlan,
    shutdown: Shutdown,
) -> Result<Started, FloorError> {
    let handle = metrics_handle()?;
    let http = bind_tcp(plan.bind).await?;
    let admin = bind_tcp(plan.admin_bind).await?;
    let http_addr = http.local_addr().map_err(|source| FloorError::LocalAddr {
        listener: "http",
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| FloorError::LocalAddr {
        listener: "admin",
        source,
    })?;
    let mut floor = app(config).with_max_request_body_bytes(plan.limits.max_body_bytes);
    if !floor.is_lean() {
        // Delays and stalls wait on a timerfd driven by this runtime: precise, and no hop through a timer thread.
        let pacer = refbench_common::pacer::Pacer::start().map_err(FloorError::Timer)?;
        floor = floor.with_pacer(pacer);
    }
    let http = tokio::spawn(serve_http(
        http,
        floor.clone(),
        plan.limits.clone(),
        shutdown.clone(),
    ));
    let admin = tokio::spawn(serve_admin(admin, handle, shutdown));
    Ok(Started {
        http_addr,
        admin_addr,
        http,
        admin,
        app: floor,
    })
}

/// The whole server: validate, pin CPUs, build the runtime, bind, announce
/// `REFBENCH_READY` on stdout, serve until SIGTERM/SIGINT, drain, return.
pub fn run(args: ServeArgs) -> Result<(), FloorError> {
    let (config, plan) = args.resolve()?;
    // Before the runtime exists, so every thread it spawns inherits the mask.
    pin_to_cpus(&plan.cpus)?;
    let runtime = refbench_common::runtime::build(plan.threads, "refbench-floor")
        .map_err(FloorError::Runtime)?;
    let result = runtime.block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        // Handlers go in before the announce: the parent may signal us the
        // moment it reads the line.
        shutdown::trigger_on_signals(trigger)?;
        let started = start(config, &plan, shutdown).await?;
        announce(&started.ready());
        let app = started.app().clone();
        started.join().await?;
        // After the drain, so every answered request is in it.
        match (&plan.holds_out, app.holds()) {
            (Some(path), Some(holds)) => write_holds(path, &holds),
            _ => Ok(()),
        }
    });
    runtime.shutdown_timeout(refbench_common::runtime::SHUTDOWN_TIMEOUT);
    result
}

/// Writes `holds` as V2 + base64 to `path`, atomically (a temporary file beside it, then a rename), so a reader
/// never sees half a histogram.
pub fn write_holds(path: &Path, holds: &Histogram<u64>) -> Result<(), FloorError> {
    use base64::Engine as _;
    use hdrhistogram::serialization::{Serializer, V2Serializer};
    let fail = |reason: String| FloorError::HoldsOut {
        path: path.to_path_buf(),
        reason,
    };
    let mut buf = Vec::with_capacity(1024);
    V2Serializer::new()
        .serialize(holds, &mut buf)
        .map_err(|e| fail(format!("serialize: {e:?}")))?;
    let text = base64::engine::general_purpose::STANDARD.encode(buf) + "\n";
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))
}
