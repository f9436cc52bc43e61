//! A loader process: runs one phase's share of load with Goose on a `current_thread` runtime and reports exact
//! histograms to the coordinator.
//!
//! Each Goose user owns one lane and runs a single transaction (iterations = 1) that loops over the lane's whole
//! schedule. Every request is recorded twice: into our HdrHistograms (exact, mergeable across processes) and into
//! Goose with `record_custom_request_duration` (Goose's report). Latency is timed from the *intended* send time,
//! so a stalled server shows up in the tail instead of silently slowing the load (no coordinated omission).
//!
//! Protocol: the spec arrives as one JSON document on stdin; progress lines (`REFBENCH_PROGRESS {json}`) and the
//! final report (`REFBENCH_WORKER {json}`) go to stdout. Anything else on stdout (Goose's own prints) is ignored by
//! the coordinator.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use goose::config::GooseConfiguration;
use goose::goose::{Scenario, Transaction, TransactionFunction};
use goose::prelude::GooseUser;
use goose::{GooseAttack, client::GooseClientBuilder};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::cdn::{CdnConfig, CdnLane, CdnTotals};
use crate::client::{self, ClientError, Conn, Template};
use crate::error::RunError;
use crate::hist;
use crate::ledger::model::{
    BatchOutcome, Item, ItemKind, LaneLedger, LedgerConfig, LedgerTotals, LedgerWorkerReport,
    MAX_LEDGER_RESPONSE_BYTES, TransferChecks, apply, expire, match_lookup,
};
use crate::ledger::wire::{ID_BYTES, MAX_BATCH, Transfer};
use crate::oidc::{
    self as oidcmod, JwksWatcher, LaneOidc, OidcConfig, OidcEndpoints, OidcTotals, Sample,
};
use crate::pacer::Pacer;
use crate::plan::{Dispatch, HttpUrl, HttpVersion, Limits, LoadModel, OidcFlow, PhasePlan};
use crate::schedule::{LaneSchedule, MixPicker, mix_seed};

/// Prefix of progress lines on a loader's stdout.
pub const PROGRESS_PREFIX: &str = "REFBENCH_PROGRESS ";
/// Prefix of the final report line on a loader's stdout.
pub const REPORT_PREFIX: &str = "REFBENCH_WORKER ";
/// Extra time a loader of a ledger phase may take after the phase to verify what it sent.
pub const LEDGER_VERIFY_BUDGET_S: f64 = 120.0;
/// Extra time a loader of an OIDC phase may take after the phase to verify its sampled tokens (an ES256
/// verification costs well under a millisecond; 100,000 samples fit).
pub const OIDC_VERIFY_BUDGET_S: f64 = 60.0;

/// What the coordinator tells one loader process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Index of this loader among the phase's loaders.
    pub worker_index: usize,
    /// The phase (rates are the whole phase's; this worker carries `lanes / total_lanes` of it).
    pub phase: PhasePlan,
    /// Global index of this worker's first lane.
    pub lane_offset: usize,
    /// Lanes this worker runs.
    pub lanes: usize,
    /// Lanes over all workers.
    pub total_lanes: usize,
    /// TCP connections this worker opens (lanes are spread over them).
    pub connections: usize,
    /// Target address.
    pub target_addr: SocketAddr,
    /// Several addresses of one target (a CDN's edges): lane `i` of the phase uses `target_addrs[i % len]`. Empty
    /// means `target_addr` alone.
    #[serde(default)]
    pub target_addrs: Vec<SocketAddr>,
    /// Target base URL (host header, path prefix).
    pub target_url: String,
    /// Phase start, nanoseconds since the Unix epoch (the same instant for every worker).
    pub start_unix_ns: u64,
    /// Cores to pin to.
    pub cpus: Vec<usize>,
    /// Base path (without extension) for Goose's HTML and Markdown reports.
    pub goose_report_base: Option<PathBuf>,
    /// Run limits.
    pub limits: Limits,
    /// This worker's share of the phase's request cap.
    pub max_requests: u64,
    /// Ledger phases: the high 64 bits of every transfer id of this phase (random per phase and run, nonzero).
    #[serde(default)]
    pub ledger_nonce: u64,
    /// CDN phases: makes this phase's storm keys unlike any earlier run's (the same in every loader process).
    #[serde(default)]
    pub cdn_nonce: u64,
    /// OIDC phases: the issuer's endpoints, read from its discovery document by the coordinator.
    #[serde(default)]
    pub oidc_endpoints: Option<OidcEndpoints>,
}

impl WorkerSpec {
    /// The address phase-wide lane (or connection) `i` talks to.
    pub fn addr_for(&self, i: usize) -> SocketAddr {
        if self.target_addrs.is_empty() {
            self.target_addr
        } else {
            self.target_addrs[i % self.target_addrs.len()]
        }
    }
}

/// One second of progress from one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// Worker index.
    pub worker_index: usize,
    /// Seconds since the phase start.
    pub elapsed_s: f64,
    /// Successful responses in the interval.
    pub ok: u64,
    /// Failed requests in the interval.
    pub failed: u64,
    /// Interval latency p50 (2 significant digits: a live view; `result.json` holds the exact figures).
    pub p50_us: u64,
    /// Interval latency p99.
    pub p99_us: u64,
}

/// A worker's final account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Worker index.
    pub worker_index: usize,
    /// Responses with a status below 400.
    pub ok: u64,
    /// Failed requests (status ≥ 400, errors, timeouts).
    pub failed: u64,
    /// Requests sent later than the late threshold after their intended time.
    pub late: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Response body bytes received.
    pub bytes_received: u64,
    /// Responses by status code.
    pub status_codes: BTreeMap<u16, u64>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latency from the intended send (open) or actual send (closed), µs.
    pub latency_hdr_v2: String,
    /// Service time from the actual send, µs.
    pub service_hdr_v2: String,
    /// The loader's own scheduling lag (actual send − the moment it could send), µs; open model only.
    pub send_lag_hdr_v2: String,
    /// Offset of the first send from the phase start.
    pub first_send_s: f64,
    /// Offset of the last completion from the phase start.
    pub last_done_s: f64,
    /// CPU time this process used between the phase start and its last completion (getrusage).
    pub cpu_seconds: f64,
    /// Wall time of that window.
    pub wall_seconds: f64,
    /// Requests Goose counted (a cross-check of the two recording paths).
    pub goose_requests: u64,
    /// Ledger phases: transfer counts, verification and expected balance changes.
    #[serde(default)]
    pub ledger: Option<LedgerWorkerReport>,
    /// CDN phases: responses by cache class, bytes, storm keys answered.
    #[serde(default)]
    pub cdn: Option<CdnTotals>,
    /// OIDC phases: tokens received and the verification of the sampled ones.
    #[serde(default)]
    pub oidc: Option<OidcTotals>,
}

struct Stats {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    send_lag: Histogram<u64>,
    interval_latency: Histogram<u64>,
    interval_ok: u64,
    interval_failed: u64,
    ok: u64,
    failed: u64,
    late: u64,
    timeouts: u64,
    bytes: u64,
    status_codes: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    first_send: Option<Instant>,
    last_done: Option<Instant>,
    ledger: Option<LedgerTotals>,
    cdn: Option<CdnTotals>,
    oidc: Option<OidcTotals>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency: hist::new_histogram(),
            service: hist::new_histogram(),
            send_lag: hist::new_histogram(),
            // Progress is computed on the loader's only thread once a second; a 2-digit histogram keeps that (and
            // its reset) to a few microseconds. Encoding a full 3-digit histogram there showed up in p99.9.
            interval_latency: Histogram::new_with_bounds(hist::LOWEST_US, hist::HIGHEST_US, 2)
                .expect("static bounds are valid"),
            interval_ok: 0,
            interval_failed: 0,
            ok: 0,
            failed: 0,
            late: 0,
            timeouts: 0,
            bytes: 0,
            status_codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            first_send: None,
            last_done: None,
            ledger: None,
            cdn: None,
            oidc: None,
        }
    }
}

struct Lane {
    conn: Option<Conn>,
    /// Where this lane (re)connects.
    addr: SocketAddr,
    cdn: Option<CdnLane>,
    schedule: Option<LaneSchedule>,
    rng: SmallRng,
    ledger: Option<LaneLedger>,
    oidc: Option<LaneOidc>,
}

struct Shared {
    spec: WorkerSpec,
    start: Instant,
    end: Instant,
    templates: Vec<Template>,
    pacer: Pacer,
    /// `dispatch = "pool"`: this process's one arrival stream; an idle lane takes the next arrival.
    pool: Option<Mutex<LaneSchedule>>,
    picker: MixPicker,
    lanes: Vec<Mutex<Option<Lane>>>,
    next_lane: AtomicUsize,
    active_lanes: AtomicUsize,
    sent: AtomicU64,
    stats: Mutex<Stats>,
    cpu_start: Mutex<Option<f64>>,
    cpu_end: Mutex<Option<(f64, Instant)>>,
    done: AtomicBool,
    /// Wakes the progress loop as soon as the last lane finishes, so a phase does not idle to the next tick.
    finished: tokio::sync::Notify,
    /// Ledger phases: the generator's shared configuration.
    ledger: Option<LedgerConfig>,
    /// Ledger lanes handed back when they finish, for verification.
    ledger_lanes: Mutex<Vec<LaneLedger>>,
    /// CDN phases: the path generator's shared configuration.
    cdn: Option<CdnConfig>,
    /// OIDC phases: the token request and the sampling rule.
    oidc: Option<OidcConfig>,
    /// OIDC phases: tokens kept for verification after the phase (at most `max_verified`).
    oidc_samples: Mutex<Vec<Sample>>,
}

/// CPU seconds (user + system) this process has used.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the pointer is to a live local.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn unix_ns_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Converts a Unix-epoch instant into this process's monotonic clock.
fn instant_from_unix_ns(ns: u64) -> Instant {
    let now_ns = unix_ns_now();
    let now = Instant::now();
    if ns >= now_ns {
        now + Duration::from_nanos(ns - now_ns)
    } else {
        now.checked_sub(Duration::from_nanos(now_ns - ns))
            .unwrap_or(now)
    }
}

fn emit(prefix: &str, value: &impl Serialize) {
    let line = serde_json::to_string(value).expect("plain data serializes");
    let mut out = std::io::stdout().lock();
    // A closed stdout means the coordinator is gone; nothing useful is left to do with the error.
    let _ = writeln!(out, "{prefix}{line}");
    let _ = out.flush();
}

/// Entry point of `loadgen worker`: reads the spec from stdin, runs, prints the report.
pub fn run_from_stdin() -> Result<(), RunError> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
        .map_err(|e| RunError::io("read worker spec from stdin", e))?;
    let spec: WorkerSpec = serde_json::from_str(&text)
        .map_err(|e| RunError::io("parse worker spec", std::io::Error::other(e)))?;
    let report = run(spec)?;
    emit(REPORT_PREFIX, &report);
    Ok(())
}

/// Extra time a loader may take after the phase to verify what it received.
pub fn verify_budget_s(phase: &PhasePlan) -> f64 {
    match (&phase.ledger, &phase.oidc) {
        (Some(l), _) if l.verify => LEDGER_VERIFY_BUDGET_S,
        (_, Some(o)) if o.verify_every > 0 => OIDC_VERIFY_BUDGET_S,
        _ => 0.0,
    }
}

/// Runs one worker to completion (pins, builds a `current_thread` runtime, runs Goose).
pub fn run(spec: WorkerSpec) -> Result<WorkerReport, RunError> {
    refbench_common::cpu::pin_to_cpus(&spec.cpus)
        .map_err(|e| RunError::io("pin loader", std::io::Error::other(e.to_string())))?;
    refbench_common::cpu::set_timer_slack_ns(1);
    // A hard stop in case anything hangs: the phase, one request timeout and a margin.
    let verify_s = verify_budget_s(&spec.phase);
    let deadline_s =
        spec.phase.duration_s + spec.limits.request_timeout_ms as f64 / 1000.0 + 30.0 + verify_s;
    let start_in_s = (spec.start_unix_ns.saturating_sub(unix_ns_now())) as f64 / 1e9;
    let watchdog = Duration::from_secs_f64(deadline_s + start_in_s.min(60.0));
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(watchdog);
            eprintln!("loader watchdog: phase overran its hard limit, exiting");
            std::process::exit(4);
        })
        .map_err(|e| RunError::io("spawn watchdog", e))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::io("build runtime", e))?;
    rt.block_on(run_async(spec))
}

async fn run_async(spec: WorkerSpec) -> Result<WorkerReport, RunError> {
    let base = HttpUrl::parse(&spec.target_url).map_err(RunError::Goose)?;
    let templates = spec
        .phase
        .requests
        .iter()
        .map(|r| Template::new(&base, r, spec.phase.http))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RunError::Goose)?;
    let picker = MixPicker::new(
        &spec
            .phase
            .requests
            .iter()
            .map(|r| r.weight)
            .collect::<Vec<_>>(),
    );
    let timeout = Duration::from_millis(spec.limits.request_timeout_ms);
    let ledger = spec
        .phase
        .ledger
        .as_ref()
        .map(|l| LedgerConfig::new(l, spec.ledger_nonce, spec.worker_index, &base));
    if ledger.is_some() && spec.phase.http != HttpVersion::Http1 {
        return Err(RunError::Goose(
            "the ledger scenario speaks HTTP/1.1 only".into(),
        ));
    }
    let cdn = spec
        .phase
        .cdn
        .as_ref()
        .map(|c| CdnConfig::new(c, &base, spec.cdn_nonce));
    if cdn.is_some() && spec.phase.http != HttpVersion::Http1 {
        return Err(RunError::Goose(
            "the CDN scenario speaks HTTP/1.1 only".into(),
        ));
    }
    let oidc = match (&spec.phase.oidc, &spec.oidc_endpoints) {
        (None, _) => None,
        (Some(o), Some(e)) => Some(OidcConfig::new(o, &base, e.clone())),
        (Some(_), None) => {
            return Err(RunError::Goose(
                "an OIDC phase needs the issuer's endpoints from the coordinator".into(),
            ));
        }
    };
    // The relying party's view of the JWKS, read before the phase and then every refresh period.
    let jwks = oidc.as_ref().filter(|c| c.plan.verify_every > 0).map(|c| {
        JwksWatcher::start(
            &c.endpoints,
            Duration::from_millis(c.plan.jwks_refresh_ms),
            timeout,
        )
    });

    // Connections are opened before the phase starts so the handshake is not part of the first latencies.
    let mut conns = Vec::with_capacity(spec.connections);
    for c in 0..spec.connections {
        match client::connect(
            spec.addr_for(spec.lane_offset + c),
            spec.phase.http,
            timeout,
        )
        .await
        {
            Ok(c) => conns.push(Some(c)),
            // A lane whose connection failed retries on its first send and counts the failure there.
            Err(_) => conns.push(None),
        }
    }
    let mut lanes = Vec::with_capacity(spec.lanes);
    for local in 0..spec.lanes {
        let global = spec.lane_offset + local;
        // HTTP/1.1: one connection per lane (validated); HTTP/2: lanes share connections round-robin.
        let slot = &mut conns[local % spec.connections];
        let conn = match slot.as_ref().and_then(Conn::share) {
            Some(shared) => Some(shared),
            None => slot.take(),
        };
        let schedule = match spec.phase.load {
            LoadModel::Open {
                rate_rps,
                end_rate_rps,
                arrival,
                dispatch: Dispatch::Lane,
            } => Some(LaneSchedule::new(
                rate_rps,
                end_rate_rps,
                spec.phase.duration_s,
                arrival,
                global,
                spec.total_lanes,
                spec.phase.seed,
            )),
            LoadModel::Open {
                dispatch: Dispatch::Pool,
                ..
            }
            | LoadModel::Closed { .. } => None,
        };
        lanes.push(Mutex::new(Some(Lane {
            conn,
            addr: spec.addr_for(spec.lane_offset + local % spec.connections),
            cdn: cdn.as_ref().map(|c| CdnLane::new(c, global)),
            schedule,
            rng: SmallRng::seed_from_u64(mix_seed(spec.phase.seed ^ 0xA5A5, global as u64)),
            ledger: ledger.as_ref().map(|c| LaneLedger::new(c, local, global)),
            oidc: oidc.as_ref().map(|_| LaneOidc::default()),
        })));
    }
    drop(conns);
    // Refresh phases: every lane gets its first refresh token before the phase (not part of the measurement).
    if let Some(cfg) = oidc
        .as_ref()
        .filter(|c| c.plan.flow == OidcFlow::RefreshToken)
    {
        for slot in &lanes {
            // Out of its slot for the await (nothing else touches lanes before the phase).
            let Some(mut lane) = slot.lock().expect("not poisoned").take() else {
                continue;
            };
            if let (Some(conn), Some(lo)) = (lane.conn.as_mut(), lane.oidc.as_mut()) {
                tokio::time::timeout(timeout, lo.prepare(conn, cfg, &mut lane.rng))
                    .await
                    .map_err(|_| RunError::Goose("timed out obtaining a refresh token".into()))?
                    .map_err(RunError::Goose)?;
            }
            // A lane without a connection starts its chain on its first send (counted as a restart).
            *slot.lock().expect("not poisoned") = Some(lane);
        }
    }

    let start = instant_from_unix_ns(spec.start_unix_ns);
    let end = start + Duration::from_secs_f64(spec.phase.duration_s);
    let pool = match spec.phase.load {
        LoadModel::Open {
            rate_rps,
            end_rate_rps,
            arrival,
            dispatch: Dispatch::Pool,
        } => Some(Mutex::new(LaneSchedule::block(
            rate_rps,
            end_rate_rps,
            spec.phase.duration_s,
            arrival,
            spec.lane_offset..spec.lane_offset + spec.lanes,
            spec.total_lanes,
            LaneSchedule::pool_seed(spec.phase.seed, spec.lane_offset),
        ))),
        _ => None,
    };
    let pacer = Pacer::start().map_err(|e| RunError::io("create pacing timer", e))?;
    let mut stats = Stats::new();
    stats.ledger = ledger.as_ref().map(|c| LedgerTotals::new(c.plan.accounts));
    stats.cdn = cdn.as_ref().map(|_| CdnTotals::default());
    stats.oidc = oidc.as_ref().map(|_| OidcTotals::default());
    let shared = Arc::new(Shared {
        pacer,
        pool,
        start,
        end,
        templates,
        picker,
        next_lane: AtomicUsize::new(0),
        active_lanes: AtomicUsize::new(spec.lanes),
        sent: AtomicU64::new(0),
        stats: Mutex::new(stats),
        cpu_start: Mutex::new(None),
        cpu_end: Mutex::new(None),
        done: AtomicBool::new(false),
        finished: tokio::sync::Notify::new(),
        ledger,
        ledger_lanes: Mutex::new(Vec::new()),
        cdn,
        oidc,
        oidc_samples: Mutex::new(Vec::new()),
        lanes,
        spec,
    });

    // CPU is measured from the phase start, not from process start, so exec and connection set-up are excluded.
    {
        let s = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(s.start.into()).await;
            *s.cpu_start.lock().expect("not poisoned") = Some(process_cpu_seconds());
        });
    }
    let progress = tokio::spawn(progress_loop(shared.clone()));

    let goose_requests = run_goose(shared.clone()).await?;
    shared.done.store(true, Ordering::Release);
    shared.finished.notify_one();
    let _ = progress.await;

    // Ledger: verify what was sent (after the CPU window closed, so it is not part of the loader's cost).
    let ledger_report = match &shared.ledger {
        None => None,
        Some(cfg) => {
            let mut lanes = std::mem::take(&mut *shared.ledger_lanes.lock().expect("not poisoned"));
            let mut totals = shared
                .stats
                .lock()
                .expect("not poisoned")
                .ledger
                .take()
                .expect("ledger phases keep totals");
            for lane in &mut lanes {
                lane.abandon_queue(cfg, &mut totals);
            }
            let checks = if cfg.plan.verify {
                Some(verify_ledger(&shared.spec, cfg, &lanes, &mut totals).await)
            } else {
                None
            };
            Some(LedgerWorkerReport::new(&totals, checks))
        }
    };

    // OIDC: verify the sampled tokens (after the CPU window closed, like the ledger's checks).
    let oidc_report = match (&shared.oidc, jwks) {
        (None, _) => None,
        (Some(_), None) => shared.stats.lock().expect("not poisoned").oidc.clone(),
        (Some(cfg), Some(watcher)) => {
            let snapshots = watcher.finish();
            let after_at = Instant::now();
            let after = oidcmod::read_jwks(&cfg.endpoints, timeout);
            let samples = std::mem::take(&mut *shared.oidc_samples.lock().expect("not poisoned"));
            let mut totals = shared
                .stats
                .lock()
                .expect("not poisoned")
                .oidc
                .take()
                .unwrap_or_default();
            oidcmod::verify_samples(
                cfg,
                &samples,
                &snapshots,
                after.as_ref().map(|a| (after_at, a)),
                &mut totals,
            );
            Some(totals)
        }
    };

    let stats = shared.stats.lock().expect("not poisoned");
    let cpu_start = shared
        .cpu_start
        .lock()
        .expect("not poisoned")
        .unwrap_or(0.0);
    let (cpu_end, end_at) = shared
        .cpu_end
        .lock()
        .expect("not poisoned")
        .unwrap_or((process_cpu_seconds(), Instant::now()));
    let offset =
        |t: Option<Instant>| t.map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    Ok(WorkerReport {
        worker_index: shared.spec.worker_index,
        ok: stats.ok,
        failed: stats.failed,
        late: stats.late,
        timeouts: stats.timeouts,
        bytes_received: stats.bytes,
        status_codes: stats.status_codes.clone(),
        errors: stats.errors.clone(),
        latency_hdr_v2: hist::encode(&stats.latency)?,
        service_hdr_v2: hist::encode(&stats.service)?,
        send_lag_hdr_v2: hist::encode(&stats.send_lag)?,
        first_send_s: offset(stats.first_send),
        last_done_s: offset(stats.last_done),
        cpu_seconds: (cpu_end - cpu_start).max(0.0),
        wall_seconds: end_at.saturating_duration_since(start).as_secs_f64(),
        goose_requests,
        ledger: ledger_report,
        cdn: stats.cdn.clone(),
        oidc: oidc_report,
    })
}

/// One `POST /transfers/lookup`: up to three attempts on a fresh connection when one breaks (lookups are
/// idempotent). Leaves the found records in `resp`.
async fn lookup_transfers(
    spec: &WorkerSpec,
    cfg: &LedgerConfig,
    conn: &mut Option<Conn>,
    ids: &[u8],
    req: &mut Vec<u8>,
    resp: &mut Vec<u8>,
) -> Result<(), String> {
    let timeout =
        Duration::from_millis(spec.limits.request_timeout_ms).max(Duration::from_secs(10));
    cfg.lookup_request(ids, req);
    let mut last = String::new();
    for _ in 0..3 {
        if conn.as_ref().is_none_or(|c| !c.is_usable()) {
            *conn = client::connect(spec.target_addr, HttpVersion::Http1, timeout)
                .await
                .ok();
        }
        let Some(c) = conn.as_mut() else {
            last = "connect failed".into();
            continue;
        };
        match tokio::time::timeout(timeout, c.send_raw(req, resp, MAX_LEDGER_RESPONSE_BYTES)).await
        {
            Ok(Ok(x)) if x.status.as_u16() == 200 => return Ok(()),
            Ok(Ok(x)) => {
                last = format!(
                    "POST /transfers/lookup answered {}: {}",
                    x.status.as_u16(),
                    String::from_utf8_lossy(&resp[..resp.len().min(200)])
                );
                if x.status.as_u16() != 503 {
                    break;
                }
            }
            Ok(Err(e)) => {
                *conn = None;
                last = format!("POST /transfers/lookup: {e}");
            }
            Err(_) => {
                *conn = None;
                last = "POST /transfers/lookup: timeout".into();
            }
        }
    }
    Err(last)
}

/// Looks up `items` of `lane` (at most one batch) and counts what was found; returns which were present.
async fn check_items(
    spec: &WorkerSpec,
    cfg: &LedgerConfig,
    lane: &LaneLedger,
    items: &[Item],
    conn: &mut Option<Conn>,
    bufs: &mut (Vec<u8>, Vec<u8>, Vec<u8>, Vec<Transfer>),
    checks: &mut TransferChecks,
) -> Option<Vec<bool>> {
    let (ids, req, resp, expected) = bufs;
    ids.clear();
    expected.clear();
    for item in items {
        let t = cfg.stored_record(lane.lane, item);
        ids.extend_from_slice(&t.id.to_le_bytes());
        expected.push(t);
    }
    debug_assert_eq!(ids.len(), items.len() * ID_BYTES);
    let found = lookup_transfers(spec, cfg, conn, ids, req, resp)
        .await
        .and_then(|()| match_lookup(expected, resp, checks));
    match found {
        Ok(present) => Some(present),
        Err(e) => {
            checks.lookup_errors += items.len() as u64;
            checks.example(e);
            None
        }
    }
}

/// Looks up every acknowledged and in-doubt transfer of this loader's lanes: acknowledged ones must be present
/// with the fields sent; in-doubt ones found present were applied and join the expected balance changes.
async fn verify_ledger(
    spec: &WorkerSpec,
    cfg: &LedgerConfig,
    lanes: &[LaneLedger],
    totals: &mut LedgerTotals,
) -> TransferChecks {
    let mut checks = TransferChecks::default();
    // A request that timed out may still be queued in the server: give it up to one request timeout (at most 5 s)
    // to land before looking up, so an in-doubt transfer applied late is seen as applied.
    if lanes.iter().any(|l| !l.in_doubt.is_empty()) {
        let grace =
            Duration::from_millis(spec.limits.request_timeout_ms).min(Duration::from_secs(5));
        tokio::time::sleep(grace).await;
    }
    let mut conn: Option<Conn> = None;
    let mut bufs = (
        Vec::with_capacity(MAX_BATCH * ID_BYTES),
        Vec::new(),
        Vec::new(),
        Vec::with_capacity(MAX_BATCH),
    );
    let mut items: Vec<Item> = Vec::with_capacity(MAX_BATCH);
    for lane in lanes {
        let mut acked = lane.acked.iter();
        loop {
            items.clear();
            items.extend(
                acked
                    .by_ref()
                    .take(MAX_BATCH)
                    .map(|k| lane.acked_item(cfg, k)),
            );
            if items.is_empty() {
                break;
            }
            checks.acked += items.len() as u64;
            let mismatches_before = checks.field_mismatches;
            let Some(present) =
                check_items(spec, cfg, lane, &items, &mut conn, &mut bufs, &mut checks).await
            else {
                continue;
            };
            let found = present.iter().filter(|&&p| p).count() as u64;
            checks.verified_present += found - (checks.field_mismatches - mismatches_before);
            for (item, p) in items.iter().zip(&present) {
                if !p {
                    checks.missing += 1;
                    checks.example(format!(
                        "acknowledged transfer {:#x} ({:?}) is missing",
                        cfg.transfer_id(lane.lane, item.k),
                        item.kind
                    ));
                }
            }
        }
        for chunk in lane.in_doubt.chunks(MAX_BATCH) {
            checks.in_doubt += chunk.len() as u64;
            let Some(present) =
                check_items(spec, cfg, lane, chunk, &mut conn, &mut bufs, &mut checks).await
            else {
                continue;
            };
            for (item, p) in chunk.iter().zip(&present) {
                if *p {
                    checks.in_doubt_applied += 1;
                    apply(&mut totals.deltas, item);
                }
                // With a timeout, a pending whose fate is not known to the lane expires: an applied in-doubt
                // pending was never queued, and the pending of an in-doubt post or void that was not applied
                // stays unresolved.
                if cfg.plan.pending_timeout_s > 0 {
                    let left = match item.kind {
                        ItemKind::Pending => *p,
                        ItemKind::Post { .. } | ItemKind::Void { .. } => !*p,
                        ItemKind::Single | ItemKind::Doomed => false,
                    };
                    if left {
                        expire(&mut totals.deltas, item);
                        totals.pending_expiring += 1;
                    }
                }
            }
        }
    }
    checks
}

async fn run_goose(shared: Arc<Shared>) -> Result<u64, RunError> {
    let spec = &shared.spec;
    let mut config = GooseConfiguration::default();
    config.host = Some(spec.target_url.clone());
    config.users = Some(spec.lanes);
    // Start every user well before the phase's anchored start; pacing comes from the lane schedules, not Goose.
    config.increase_rate = Some(format!("{}", (spec.lanes * 20).max(200)));
    config.iterations = Some(1);
    config.quiet = 1;
    config.no_print_metrics = true;
    config.no_error_summary = true;
    config.no_telnet = true;
    config.no_websocket = true;
    config.no_autostart = false;
    config.no_granular_report = false;
    if let Some(base) = &spec.goose_report_base {
        config.report_file = vec![
            format!("{}.html", base.display()),
            format!("{}.md", base.display()),
        ];
    }

    let s = shared.clone();
    let function: TransactionFunction = Arc::new(move |user: &mut GooseUser| {
        let s = s.clone();
        Box::pin(async move { run_lane(s, user).await })
    });
    let scenario = Scenario::new(&shared.spec.phase.name)
        .register_transaction(Transaction::new(function).set_name("lane"));
    let metrics = GooseAttack::initialize_with_config(config)
        .map_err(|e| RunError::Goose(e.to_string()))?
        .set_client_builder_without_cookies(GooseClientBuilder::new().without_cookies())
        .map_err(|e| RunError::Goose(e.to_string()))?
        .register_scenario(scenario)
        .execute()
        .await
        .map_err(|e| RunError::Goose(e.to_string()))?;
    Ok(metrics
        .requests
        .values()
        .map(|r| r.success_count + r.fail_count)
        .sum::<usize>() as u64)
}

async fn progress_loop(shared: Arc<Shared>) {
    let mut tick = shared.start + Duration::from_secs(1);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(tick.into()) => {}
            () = shared.finished.notified() => {}
        }
        let done = shared.done.load(Ordering::Acquire);
        if done {
            // A final, partial interval: stamp it with the moment the phase's load ended.
            tick = Instant::now().max(shared.start).min(tick);
        }
        let p = {
            let mut st = shared.stats.lock().expect("not poisoned");
            let p = Progress {
                worker_index: shared.spec.worker_index,
                elapsed_s: tick.saturating_duration_since(shared.start).as_secs_f64(),
                ok: st.interval_ok,
                failed: st.interval_failed,
                p50_us: st.interval_latency.value_at_quantile(0.5),
                p99_us: st.interval_latency.value_at_quantile(0.99),
            };
            st.interval_ok = 0;
            st.interval_failed = 0;
            st.interval_latency.reset();
            p
        };
        emit(PROGRESS_PREFIX, &p);
        if done || tick > shared.end + Duration::from_secs(120) {
            return;
        }
        tick += Duration::from_secs(1);
    }
}

/// Runs one lane's whole schedule inside one Goose transaction.
async fn run_lane(
    shared: Arc<Shared>,
    user: &mut GooseUser,
) -> Result<(), Box<goose::goose::TransactionError>> {
    let index = shared.next_lane.fetch_add(1, Ordering::Relaxed);
    let Some(slot) = shared.lanes.get(index) else {
        return Ok(());
    };
    let Some(mut lane) = slot.lock().expect("not poisoned").take() else {
        return Ok(());
    };
    let spec = &shared.spec;
    let timeout = Duration::from_millis(spec.limits.request_timeout_ms);
    let late_threshold = Duration::from_micros(spec.limits.late_threshold_us);
    let think = match spec.phase.load {
        LoadModel::Closed { think_time_ms } if think_time_ms > 0.0 => {
            Some(Duration::from_secs_f64(think_time_ms / 1000.0))
        }
        _ => None,
    };
    let open = matches!(spec.phase.load, LoadModel::Open { .. });
    let mut prev_done = shared.start;
    if !open {
        shared.pacer.sleep_until(shared.start).await;
    }
    loop {
        if shared.sent.fetch_add(1, Ordering::Relaxed) >= spec.max_requests {
            break;
        }
        // A pool's lane takes the next arrival only now that it is idle, so an arrival waits for a lane only when
        // every lane is busy (or holds an earlier arrival, already due).
        let next = match (&shared.pool, lane.schedule.as_mut()) {
            (Some(pool), _) => Some(pool.lock().expect("not poisoned").next_offset_s()),
            (None, Some(sched)) => Some(sched.next_offset_s()),
            (None, None) => None,
        };
        let intended = match next {
            Some(Some(off)) => shared.start + Duration::from_secs_f64(off),
            Some(None) => break,
            None => {
                let now = Instant::now();
                if now >= shared.end {
                    break;
                }
                now
            }
        };
        if Instant::now() < intended {
            shared.pacer.sleep_until(intended).await;
        }
        let which = shared.picker.pick(&mut lane.rng);
        let template = &shared.templates[which];
        let send_at = Instant::now();
        if lane.conn.as_ref().is_none_or(|c| !c.is_usable()) {
            lane.conn = client::connect(lane.addr, spec.phase.http, timeout)
                .await
                .ok();
        }
        // Ledger lanes build a fresh batch per send (only once a connection is there, so a failed connect sends
        // nothing and leaves nothing in doubt).
        let mut built = false;
        let mut storm = None;
        let result = match (
            lane.conn.as_mut(),
            lane.ledger.as_mut(),
            shared.ledger.as_ref(),
        ) {
            (None, _, _) => Err(ClientError::Connect),
            (Some(conn), Some(lg), Some(cfg)) => {
                if !lg.build(cfg) {
                    if let Some(t) = shared.stats.lock().expect("not poisoned").ledger.as_mut() {
                        t.lanes_stopped += 1;
                    }
                    break;
                }
                built = true;
                match tokio::time::timeout(
                    timeout,
                    conn.send_raw(&lg.request, &mut lg.response, MAX_LEDGER_RESPONSE_BYTES),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Timeout),
                }
            }
            (Some(conn), _, _) if lane.oidc.is_some() => {
                let (Some(lo), Some(cfg)) = (lane.oidc.as_mut(), shared.oidc.as_ref()) else {
                    unreachable!("OIDC lanes exist only with an OIDC config");
                };
                match tokio::time::timeout(timeout, lo.send(conn, cfg, &mut lane.rng)).await {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Timeout),
                }
            }
            (Some(conn), _, _) if lane.cdn.is_some() => {
                let (Some(lane_gen), Some(cfg)) = (lane.cdn.as_mut(), shared.cdn.as_ref()) else {
                    unreachable!("CDN lanes exist only with a CDN config");
                };
                storm = lane_gen.next(
                    cfg,
                    intended
                        .saturating_duration_since(shared.start)
                        .as_secs_f64(),
                );
                match tokio::time::timeout(timeout, conn.send_h1(&lane_gen.request)).await {
                    Ok(r) => r,
                    Err(_) => Err(ClientError::Timeout),
                }
            }
            (Some(conn), _, _) => match tokio::time::timeout(timeout, conn.send(template)).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Timeout),
            },
        };
        let done = Instant::now();
        let latency = done.saturating_duration_since(if open { intended } else { send_at });
        let service = done.saturating_duration_since(send_at);
        // A user flow's failed protocol check (a wrong `state`, a refresh token not rotated) fails the send
        // whatever its status.
        let flow_failure = lane.oidc.as_ref().and_then(|lo| lo.failure);
        let (ok, status, err) = match &result {
            Ok(x) => (
                x.status.as_u16() < 400 && flow_failure.is_none(),
                Some(x.status.as_u16()),
                None,
            ),
            Err(e) => (false, None, Some(e.clone())),
        };
        if matches!(err, Some(ClientError::Timeout | ClientError::Io))
            && spec.phase.http == HttpVersion::Http1
        {
            // An HTTP/1.1 connection with an abandoned request cannot be reused.
            lane.conn = None;
        }
        {
            let mut st = shared.stats.lock().expect("not poisoned");
            let lat_us = latency.as_micros() as u64;
            hist::record(&mut st.latency, lat_us);
            hist::record(&mut st.interval_latency, lat_us);
            hist::record(&mut st.service, service.as_micros() as u64);
            if open {
                let could_send = intended.max(prev_done);
                hist::record(
                    &mut st.send_lag,
                    send_at.saturating_duration_since(could_send).as_micros() as u64,
                );
                if send_at.saturating_duration_since(intended) > late_threshold {
                    st.late += 1;
                }
            }
            st.first_send.get_or_insert(send_at);
            st.last_done = Some(done);
            match &result {
                Ok(x) => {
                    st.bytes += x.body_bytes;
                    if let Some(c) = st.cdn.as_mut() {
                        c.record(x, storm);
                    }
                    *st.status_codes.entry(x.status.as_u16()).or_insert(0) += 1;
                }
                Err(e) => {
                    if *e == ClientError::Timeout {
                        st.timeouts += 1;
                    }
                    *st.errors.entry(e.to_string()).or_insert(0) += 1;
                }
            }
            if let (Some(totals), Some(lo)) = (st.oidc.as_mut(), lane.oidc.as_ref()) {
                totals.http_requests += lo.exchanges;
                if let Some(why) = lo.failure {
                    totals.flow_fail(why);
                }
                if lo.restarted && result.is_ok() {
                    totals.refresh_chain_restarts += 1;
                }
            }
            if let (Some(totals), Some(lo), Some(cfg), Ok(x)) = (
                st.oidc.as_mut(),
                lane.oidc.as_mut(),
                shared.oidc.as_ref(),
                &result,
            ) && x.status.as_u16() == 200
                && lo.failure.is_none()
            {
                // Only sampled responses are parsed whole (the loader's CPU is part of the measurement); the others
                // are checked for the two members every token response has.
                if cfg.plan.flow == OidcFlow::Introspect {
                    match oidcmod::introspection_active(&lo.response) {
                        Some(true) => totals.introspected_active += 1,
                        Some(false) => totals.introspected_inactive += 1,
                        None => totals.malformed_responses += 1,
                    }
                } else if lo.take_sample(cfg.plan.verify_every) {
                    match oidcmod::token_response(&lo.response) {
                        Some(t) => {
                            totals.tokens += 1;
                            let mut samples = shared.oidc_samples.lock().expect("not poisoned");
                            if (samples.len() as u64) < cfg.plan.max_verified {
                                samples.push(Sample {
                                    token: t.access_token,
                                    sent: send_at,
                                    received: done,
                                    id_token: t.id_token,
                                    nonce: lo.nonce.clone(),
                                });
                                totals.sampled += 1;
                            } else {
                                totals.sample_overflow += 1;
                            }
                        }
                        None => totals.malformed_responses += 1,
                    }
                } else if oidcmod::looks_like_token_response(&lo.response) {
                    totals.tokens += 1;
                } else {
                    totals.malformed_responses += 1;
                }
            }
            if built && let (Some(totals), Some(lg)) = (st.ledger.as_mut(), lane.ledger.as_mut()) {
                let body = std::mem::take(&mut lg.response);
                let outcome = match &result {
                    Ok(x) => BatchOutcome::Response(x.status.as_u16(), &body),
                    Err(_) => BatchOutcome::InDoubt,
                };
                let cfg = shared.ledger.as_ref().expect("ledger lanes have a config");
                lg.on_outcome(cfg, totals, outcome);
                lg.response = body;
            }
            if ok {
                st.ok += 1;
                st.interval_ok += 1;
            } else {
                st.failed += 1;
                st.interval_failed += 1;
                if let Some(code) = status {
                    *st.errors.entry(format!("status_{code}")).or_insert(0) += 1;
                }
            }
        }
        let err_text = err.as_ref().map(ToString::to_string);
        user.record_custom_request_duration(
            &template.method_label,
            &template.name,
            latency,
            ok,
            status,
            err_text.as_deref(),
        )
        .await?;
        prev_done = done;
        if let Some(t) = think {
            shared.pacer.sleep_until(Instant::now() + t).await;
        }
    }
    if let Some(lg) = lane.ledger.take() {
        shared.ledger_lanes.lock().expect("not poisoned").push(lg);
    }
    if shared.active_lanes.fetch_sub(1, Ordering::AcqRel) == 1 {
        *shared.cpu_end.lock().expect("not poisoned") =
            Some((process_cpu_seconds(), Instant::now()));
    }
    Ok(())
}
