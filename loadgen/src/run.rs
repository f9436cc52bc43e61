//! The coordinator of `loadgen run`: starts targets, calibrates against the floor, runs each phase with loader
//! processes, samples CPU and memory, scrapes server counters, merges histograms exactly, checks the loader and the
//! SLOs, and writes `result.json`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cdn::{self as cdnmod, CdnTotals, OriginProbe};
use crate::error::{ProfileError, RunError};
use crate::hist::{self, Summary};
use crate::host::{Git, Host};
use crate::ledger::check::{self, Balances, LedgerTarget};
use crate::oidc::{self as oidcmod, OidcEndpoints, OidcTotals};
use crate::plan::{
    self, Arrival, CalibrationPlan, CdnPlan, CdnTopology, CdnWorkload, Dispatch, Env, HttpUrl,
    HttpVersion, LedgerPlan, LoadModel, OidcFlow, OidcPlan, PhasePlan, Plan, RequestPlan,
    TargetKind,
};
use crate::procs::{self, Sampler, ServerProc, WorkerLine};
use crate::profile::{Profile, SloSection, TargetSection};
use crate::result::{
    Calibration, CdnPrefetch, CdnResult, CdnStorm, LedgerLinked, LedgerResult, LedgerTransfers,
    LedgerTwoPhase, LedgerVerification, OidcResult, OidcRotation, PhaseResult, ProcessResult,
    Requests, RunResult, SCHEMA_VERSION, SloCheck, SloReport, TargetInfo, TargetProcess,
    WarmupSummary,
};
use crate::worker::{Progress, WorkerReport, WorkerSpec, verify_budget_s};

/// Everything `loadgen run` was asked.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Profile file.
    pub profile: PathBuf,
    /// Output folder; default `results/runs/<time>-<profile>`.
    pub out_dir: Option<PathBuf>,
    /// `name=url` replacements of profile targets.
    pub target_overrides: Vec<(String, String)>,
    /// Permit non-loopback targets.
    pub allow_remote: bool,
    /// No live progress lines.
    pub quiet: bool,
}

/// Why a run did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// Bad profile or options.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The run itself failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// A finished run.
#[derive(Debug)]
pub struct Finished {
    /// The result.
    pub result: RunResult,
    /// Where `result.json` was written.
    pub out_dir: PathBuf,
}

impl Finished {
    /// 1 the target failed a correctness check (whatever else happened), 2 the run is invalid, 1 an SLO failed,
    /// 0 otherwise.
    pub fn exit_code(&self) -> i32 {
        if !self.result.correctness_failures.is_empty() {
            1
        } else if !self.result.valid {
            2
        } else if !self.result.slo.passed {
            1
        } else {
            0
        }
    }
}

/// Loads a profile, applies `--target` overrides and the loopback rule, and validates it.
pub fn load_plan(opts: &RunOptions) -> Result<Plan, ProfileError> {
    let mut profile = Profile::load(&opts.profile)?;
    for (name, url) in &opts.target_overrides {
        if !profile.targets.contains_key(name) {
            return Err(ProfileError::invalid(
                format!("--target {name}"),
                format!(
                    "no target `{name}` in the profile (defined: {})",
                    profile.target_names()
                ),
            ));
        }
        profile.targets.insert(
            name.clone(),
            TargetSection {
                builtin: None,
                url: Some(url.clone()),
                args: Vec::new(),
                admin_url: None,
                origin_admin_url: None,
                pids: Vec::new(),
                cdn: None,
            },
        );
    }
    let plan = plan::resolve(&profile, Env::detect())?;
    check_loopback(&plan, opts.allow_remote)?;
    Ok(plan)
}

/// Refuses targets off this machine unless `allow_remote`.
pub fn check_loopback(plan: &Plan, allow_remote: bool) -> Result<(), ProfileError> {
    if allow_remote {
        return Ok(());
    }
    for t in &plan.targets {
        if let TargetKind::External {
            url,
            admin_url,
            origin_admin_url,
            ..
        } = &t.kind
        {
            for (field, u) in [
                ("url", Some(url)),
                ("admin_url", admin_url.as_ref()),
                ("origin_admin_url", origin_admin_url.as_ref()),
            ] {
                let Some(u) = u else { continue };
                let parsed = HttpUrl::parse(u)
                    .map_err(|e| ProfileError::invalid(format!("targets.{}.{field}", t.name), e))?;
                if !plan::is_loopback_host(&parsed.host, parsed.port) {
                    return Err(ProfileError::invalid(
                        format!("targets.{}.{field}", t.name),
                        format!(
                            "{u} is not a loopback address; pass --allow-remote to load a remote target"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn unix_now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `YYYYMMDDTHHMMSSZ` for folder names (UTC, no time-zone crate needed).
pub fn utc_stamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// A target ready to be loaded.
struct LiveTarget {
    name: String,
    url: String,
    addr: SocketAddr,
    /// Every address the load is spread over (a CDN's edges); empty means `addr` alone.
    addrs: Vec<SocketAddr>,
    /// Admin listeners scraped around each phase: (label in `server_metrics`, address, host header).
    admins: Vec<(String, SocketAddr, String)>,
    /// Servers loadgen started, in start order (a CDN: origin, shields, edges), with their labels.
    servers: Vec<(String, ServerProc)>,
    /// Processes somebody else started whose CPU and memory count as the server's: (label, pid).
    external_pids: Vec<(String, u32)>,
    /// The origin behind a CDN target, when loadgen can reach its admin port.
    origin: Option<OriginProbe>,
    /// A built-in issuer: the secret of its key-rotation endpoint.
    rotate: Option<oidcmod::RotateAuth>,
}

impl LiveTarget {
    fn info(&self) -> TargetInfo {
        // The process that answers the target's URL: the first edge of a CDN, the only server otherwise.
        let front = self.servers.last().map(|(_, s)| s);
        TargetInfo {
            name: self.name.clone(),
            kind: if self.servers.is_empty() {
                "external"
            } else {
                "builtin"
            }
            .into(),
            system: front.map(|s| s.system.clone()),
            url: self.url.clone(),
            pid: front.map(ServerProc::pid),
            processes: self
                .server_pids()
                .into_iter()
                .map(|(name, pid)| TargetProcess { name, pid })
                .collect(),
        }
    }

    /// Every process whose CPU counts as this target's: (label, pid).
    fn server_pids(&self) -> Vec<(String, u32)> {
        self.servers
            .iter()
            .map(|(l, s)| (l.clone(), s.pid()))
            .chain(self.external_pids.iter().cloned())
            .collect()
    }

    fn scrape(&self) -> BTreeMap<String, BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        for (label, addr, host) in &self.admins {
            if let Ok((200, body)) =
                procs::http_get(*addr, host, "/metrics", Duration::from_secs(3))
            {
                out.insert(label.clone(), procs::parse_prometheus(&body));
            }
        }
        out
    }

    fn stop(self) {
        // Front tiers first, so no tier is left forwarding to one already gone.
        for (_, s) in self.servers.into_iter().rev() {
            s.stop(Duration::from_secs(5));
        }
    }
}

struct Ctx<'a> {
    plan: &'a Plan,
    exe: PathBuf,
    out_dir: PathBuf,
    quiet: bool,
    started: Instant,
    requests_sent: u64,
}

impl Ctx<'_> {
    fn deadline_left(&self) -> f64 {
        self.plan.limits.max_duration_s - self.started.elapsed().as_secs_f64()
    }
}

/// Starts one built-in server process (`loadgen serve <serve...> <args...>`) and returns it with its `http` and
/// `admin` addresses.
fn start_server(
    ctx: &Ctx<'_>,
    label: &str,
    serve: &str,
    args: &[String],
) -> Result<(ServerProc, SocketAddr, Option<SocketAddr>), RunError> {
    let log = procs::log_path(&ctx.out_dir, &format!("server-{}", label.replace('/', "-")));
    let server = procs::start_builtin(
        &ctx.exe,
        label,
        serve,
        args,
        &ctx.plan.placement.server_cpus,
        &log,
        Duration::from_secs(30),
    )?;
    let http = *server
        .ready
        .listeners
        .get("http")
        .ok_or_else(|| RunError::ServerNotReady {
            target: label.into(),
            reason: "it announced no `http` listener".into(),
        })?;
    let admin = server.ready.listeners.get("admin").copied();
    Ok((server, http, admin))
}

/// Starts a CDN topology: the origin, then the shields in front of it, then the edges in front of the shields.
fn start_cdn(ctx: &Ctx<'_>, name: &str, topo: &CdnTopology) -> Result<LiveTarget, RunError> {
    let mut servers = Vec::new();
    let mut admins = Vec::new();
    let label = |role: &str| format!("{name}/{role}");
    let url_of = |a: SocketAddr| format!("http://{a}");
    let (origin, origin_http, origin_admin) =
        start_server(ctx, &label("origin"), "cdn origin", &topo.origin_args)?;
    servers.push((label("origin"), origin));
    if let Some(a) = origin_admin {
        admins.push((label("origin"), a, a.to_string()));
    }
    let mut shield_http = Vec::new();
    let mut shield_admin = Vec::new();
    for i in 0..topo.shields {
        let mut args = vec![
            "--role".to_string(),
            "shield".into(),
            "--upstream".into(),
            url_of(origin_http),
            "--name".into(),
            format!("refbench-shield-{i}"),
        ];
        args.extend(topo.shield_args.iter().cloned());
        let l = label(&format!("shield-{i}"));
        let (proc_, http, admin) = start_server(ctx, &l, "cdn cache", &args)?;
        servers.push((l.clone(), proc_));
        shield_http.push(url_of(http));
        if let Some(a) = admin {
            admins.push((l, a, a.to_string()));
            shield_admin.push(url_of(a));
        }
    }
    let mut edge_addrs = Vec::new();
    for i in 0..topo.edges {
        let upstreams = if shield_http.is_empty() {
            url_of(origin_http)
        } else {
            shield_http.join(",")
        };
        let mut args = vec![
            "--role".to_string(),
            "edge".into(),
            "--upstream".into(),
            upstreams,
            "--name".into(),
            format!("refbench-edge-{i}"),
        ];
        // Purges at an edge reach every shield before they are acknowledged.
        if !shield_admin.is_empty() && shield_admin.len() == shield_http.len() {
            args.extend(["--upstream-admin".to_string(), shield_admin.join(",")]);
        }
        args.extend(topo.edge_args.iter().cloned());
        let l = label(&format!("edge-{i}"));
        let (proc_, http, admin) = start_server(ctx, &l, "cdn cache", &args)?;
        servers.push((l.clone(), proc_));
        edge_addrs.push(http);
        if let Some(a) = admin {
            admins.push((l, a, a.to_string()));
        }
    }
    Ok(LiveTarget {
        name: name.into(),
        url: url_of(edge_addrs[0]),
        addr: edge_addrs[0],
        addrs: edge_addrs,
        admins,
        servers,
        external_pids: Vec::new(),
        origin: origin_admin.map(|a| {
            OriginProbe::new(a, Duration::from_millis(ctx.plan.limits.request_timeout_ms))
        }),
        rotate: None,
    })
}

/// Starts every target some phase uses, and the targets those name (`{url:NAME}` in their arguments, an OIDC
/// phase's subject issuer) before them, with each `{url:NAME}` replaced by that target's base URL.
fn start_targets(ctx: &Ctx<'_>, plan: &Plan) -> Result<BTreeMap<String, LiveTarget>, RunError> {
    let mut used: std::collections::BTreeSet<&str> = plan
        .phases
        .iter()
        .flat_map(|p| {
            std::iter::once(p.target.as_str())
                .chain(p.oidc.as_ref().and_then(|o| o.subject_target.as_deref()))
        })
        .collect();
    for t in &plan.targets {
        if used.contains(t.name.as_str()) {
            for d in t.kind.depends_on() {
                if let Some(dt) = plan.targets.iter().find(|x| x.name == d) {
                    used.insert(dt.name.as_str());
                }
            }
        }
    }
    let mut live: BTreeMap<String, LiveTarget> = BTreeMap::new();
    // Targets that name no other first (validation keeps references one level deep).
    let (first, second): (Vec<_>, Vec<_>) = plan
        .targets
        .iter()
        .filter(|t| used.contains(t.name.as_str()))
        .partition(|t| t.kind.depends_on().is_empty());
    for t in first.into_iter().chain(second) {
        let kind = match &t.kind {
            TargetKind::Builtin { system, args, cdn } => TargetKind::Builtin {
                system: system.clone(),
                args: args
                    .iter()
                    .map(|a| {
                        crate::plan::substitute_urls(a, |n| live.get(n).map(|l| l.url.clone()))
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        RunError::io(format!("target {}", t.name), std::io::Error::other(e))
                    })?,
                cdn: cdn.clone(),
            },
            k => k.clone(),
        };
        let started = start_target(ctx, &t.name, &kind)?;
        live.insert(t.name.clone(), started);
    }
    Ok(live)
}

fn start_target(ctx: &Ctx<'_>, name: &str, kind: &TargetKind) -> Result<LiveTarget, RunError> {
    match kind {
        TargetKind::Builtin {
            cdn: Some(topo), ..
        } => start_cdn(ctx, name, topo),
        TargetKind::Builtin { system, args, .. } => {
            // A built-in issuer gets a fresh admin secret, so loadgen (and only loadgen) can rotate its keys.
            let rotate =
                if system == "oidc" && !args.iter().any(|a| a.starts_with("--admin-token-file")) {
                    Some(
                        oidcmod::RotateAuth::new()
                            .map_err(|e| RunError::io("create the issuer's admin secret", e))?,
                    )
                } else {
                    None
                };
            let mut args = args.clone();
            if let Some(r) = &rotate {
                args.push("--admin-token-file".into());
                args.push(r.file.path().display().to_string());
            }
            let (server, http, admin) = start_server(ctx, name, system, &args)?;
            Ok(LiveTarget {
                name: name.into(),
                url: format!("http://{http}"),
                addr: http,
                addrs: Vec::new(),
                admins: admin
                    .map(|a| (name.to_string(), a, a.to_string()))
                    .into_iter()
                    .collect(),
                servers: vec![(name.to_string(), server)],
                external_pids: Vec::new(),
                origin: None,
                rotate,
            })
        }
        TargetKind::External {
            url,
            admin_url,
            origin_admin_url,
            pids,
        } => {
            let u = HttpUrl::parse(url)
                .map_err(|e| RunError::io(format!("target {name}"), std::io::Error::other(e)))?;
            let addr = procs::resolve_addr(&u.host, u.port)
                .map_err(|e| RunError::io(format!("target {name}"), std::io::Error::other(e)))?;
            let admin = match admin_url {
                Some(a) => {
                    let au = HttpUrl::parse(a)
                        .map_err(|e| RunError::io("admin url", std::io::Error::other(e)))?;
                    let aa = procs::resolve_addr(&au.host, au.port)
                        .map_err(|e| RunError::io("admin url", std::io::Error::other(e)))?;
                    Some((name.to_string(), aa, format!("{}:{}", au.host, au.port)))
                }
                None => None,
            };
            let origin = match origin_admin_url {
                Some(o) => Some(
                    OriginProbe::from_url(
                        o,
                        Duration::from_millis(ctx.plan.limits.request_timeout_ms),
                    )
                    .map_err(|e| RunError::io("origin admin url", std::io::Error::other(e)))?,
                ),
                None => None,
            };
            for &pid in pids {
                if procs::process_cpu_seconds(pid).is_none() {
                    return Err(RunError::io(
                        format!("targets.{name}.pids"),
                        std::io::Error::other(format!("no process {pid} on this host")),
                    ));
                }
            }
            let mut admins: Vec<_> = admin.into_iter().collect();
            if let Some(o) = &origin {
                let (a, host) = o.admin();
                admins.push((format!("{name}/origin"), a, host));
            }
            Ok(LiveTarget {
                name: name.into(),
                url: url.clone(),
                addr,
                addrs: Vec::new(),
                admins,
                servers: Vec::new(),
                external_pids: pids
                    .iter()
                    .map(|p| (format!("{name}/pid-{p}"), *p))
                    .collect(),
                origin,
                rotate: None,
            })
        }
    }
}

/// Merged outcome of one phase's loader processes.
struct PhaseRun {
    reports: Vec<WorkerReport>,
    /// Each server process: (label, pid, CPU seconds over the phase).
    servers: Vec<(String, u32, f64)>,
    sampled: BTreeMap<u32, procs::Sampled>,
    worker_pids: Vec<u32>,
    metrics_before: BTreeMap<String, BTreeMap<String, f64>>,
    metrics_after: BTreeMap<String, BTreeMap<String, f64>>,
    goose_reports: Vec<String>,
    /// CDN phases: the nonce in this phase's storm keys.
    cdn_nonce: u64,
    /// OIDC phases: the key rotations asked for (offset into the phase, outcome).
    rotations: Vec<(f64, Result<(), String>)>,
}

/// CPU seconds of every listed process, or `None` when one of them cannot be read.
fn cpu_of(pids: &[(String, u32)]) -> Option<Vec<f64>> {
    pids.iter()
        .map(|(_, p)| procs::process_cpu_seconds(*p))
        .collect()
}

fn split(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

fn run_phase(
    ctx: &mut Ctx<'_>,
    phase: &PhasePlan,
    target: &LiveTarget,
    label: &str,
    oidc_endpoints: Option<&OidcEndpoints>,
) -> Result<PhaseRun, RunError> {
    let plan = ctx.plan;
    let workers = plan.placement.loader_processes.min(phase.users).max(1);
    let remaining = plan.limits.max_requests.saturating_sub(ctx.requests_sent);
    let phase_cap = phase.max_requests.min(remaining).max(1);
    let ledger_nonce = if phase.ledger.is_some() {
        rand::random::<u64>() | 1
    } else {
        0
    };
    let cdn_nonce = if phase.cdn.is_some() {
        rand::random::<u64>() | 1
    } else {
        0
    };
    let start_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        + 700_000_000;
    let server_pids = target.server_pids();
    let metrics_before = target.scrape();
    let server_cpu_before = cpu_of(&server_pids);

    let goose_dir = ctx.out_dir.join("goose");
    let (tx, rx) = procs::worker_channel();
    let mut children = Vec::with_capacity(workers);
    let mut lane_offset = 0;
    let mut goose_reports = Vec::new();
    for w in 0..workers {
        let lanes = split(phase.users, workers, w);
        let connections = match phase.http {
            HttpVersion::Http1 => lanes,
            HttpVersion::Http2 => split(phase.connections, workers, w).clamp(1, lanes),
        };
        let report_base = goose_dir.join(format!("{}-w{w}", phase.name.replace(['/', '@'], "_")));
        goose_reports.push(format!("{}.html", report_base.display()));
        let spec = WorkerSpec {
            worker_index: w,
            phase: phase.clone(),
            lane_offset,
            lanes,
            total_lanes: phase.users,
            connections,
            target_addr: target.addr,
            target_addrs: target.addrs.clone(),
            target_url: target.url.clone(),
            start_unix_ns,
            cpus: vec![plan.placement.loader_cpus[w % plan.placement.loader_cpus.len()]],
            goose_report_base: Some(report_base),
            limits: plan.limits.clone(),
            max_requests: (phase_cap as u128 * lanes as u128).div_ceil(phase.users as u128) as u64,
            ledger_nonce,
            cdn_nonce,
            oidc_endpoints: oidc_endpoints.cloned(),
        };
        lane_offset += lanes;
        let json = serde_json::to_string(&spec).expect("plain data serializes");
        let log = procs::log_path(
            &ctx.out_dir,
            &format!("loader-{}-w{w}", phase.name.replace(['/', '@'], "_")),
        );
        children.push(procs::start_worker(&ctx.exe, w, &json, &log, tx.clone())?);
    }
    drop(tx);
    let worker_pids: Vec<u32> = children.iter().map(|c| c.child.id()).collect();
    let mut pids = worker_pids.clone();
    pids.extend(server_pids.iter().map(|(_, p)| *p));
    let sampler = Sampler::start(pids);

    let verify_s = verify_budget_s(phase);
    let hard_stop = Instant::now()
        + Duration::from_secs_f64(
            phase.duration_s + plan.limits.request_timeout_ms as f64 / 1000.0 + 35.0 + verify_s,
        );
    let mut reports: Vec<Option<WorkerReport>> = vec![None; workers];
    let mut eof = vec![false; workers];
    // Per second: (loaders reported, ok, failed, worst loader p50, worst loader p99). The live line shows the worst
    // loader's percentiles, not an exact merge: it is a view, and merging histograms every second cost the loaders'
    // core enough to show in p99.9. result.json holds the exact merge.
    let mut pending: BTreeMap<u64, (usize, u64, u64, u64, u64)> = BTreeMap::new();
    let total_cpu = |c: &Option<Vec<f64>>| c.as_ref().map(|v| v.iter().sum::<f64>());
    let mut last_cpu = (Instant::now(), total_cpu(&server_cpu_before));
    let mut failure: Option<RunError> = None;
    // Key rotations the phase asks for, as instants on this process's clock (the phase starts at start_unix_ns).
    let phase_start = Instant::now()
        + Duration::from_nanos(
            start_unix_ns.saturating_sub(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            ),
        );
    let mut rotations: std::collections::VecDeque<Instant> = phase
        .oidc
        .iter()
        .flat_map(|o| o.rotate_at_s.iter())
        .map(|&t| phase_start + Duration::from_secs_f64(t))
        .collect();
    let mut rotated = Vec::new();
    while eof.iter().any(|e| !e) {
        if let Some(&due) = rotations.front()
            && Instant::now() >= due
        {
            rotations.pop_front();
            let at_s = Instant::now()
                .saturating_duration_since(phase_start)
                .as_secs_f64();
            let outcome = match &target.rotate {
                Some(r) => oidcmod::rotate(
                    target.addr,
                    &HttpUrl::parse(&target.url)
                        .map(|u| u.authority())
                        .unwrap_or_default(),
                    &r.token,
                    Duration::from_secs(5),
                ),
                None => Err("loadgen holds no admin secret for this target".into()),
            };
            if !ctx.quiet {
                match &outcome {
                    Ok(()) => eprintln!("[{label}] rotated the signing key at t={at_s:.2}s"),
                    Err(e) => eprintln!("[{label}] KEY ROTATION FAILED at t={at_s:.2}s: {e}"),
                }
            }
            rotated.push((at_s, outcome));
        }
        let left = hard_stop.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failure = Some(RunError::Loader {
                index: eof.iter().position(|e| !e).unwrap_or(0),
                reason: "did not finish before the phase's hard stop".into(),
            });
            break;
        }
        let next_rotation = rotations.front().map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        });
        match rx.recv_timeout(left.min(Duration::from_millis(500)).min(next_rotation)) {
            Ok(WorkerLine::Progress(_, json)) => {
                let Ok(p) = serde_json::from_str::<Progress>(&json) else {
                    continue;
                };
                // Full intervals end on whole seconds; a final partial one belongs to the second it falls in.
                let sec = (p.elapsed_s - 1e-3).ceil().max(0.0) as u64;
                let entry = pending.entry(sec).or_insert((0, 0, 0, 0, 0));
                entry.0 += 1;
                entry.1 += p.ok;
                entry.2 += p.failed;
                entry.3 = entry.3.max(p.p50_us);
                entry.4 = entry.4.max(p.p99_us);
                // Print each second once every loader has reported it.
                while let Some((&s, e)) = pending.first_key_value() {
                    if e.0 < workers {
                        break;
                    }
                    let (_, ok, failed, p50, p99) = pending.pop_first().expect("present").1;
                    let now = Instant::now();
                    let cpu_now = total_cpu(&cpu_of(&server_pids));
                    let cpu_pct = match (last_cpu.1, cpu_now) {
                        (Some(a), Some(b)) => format!(
                            "{:.0}%",
                            (b - a) / now.duration_since(last_cpu.0).as_secs_f64() * 100.0
                        ),
                        _ => "-".into(),
                    };
                    last_cpu = (now, cpu_now);
                    // The loaders' last interval after the phase end only holds stragglers: not worth a line.
                    if !ctx.quiet && (s as f64 <= phase.duration_s.ceil() || ok + failed > 0) {
                        eprintln!(
                            "[{label}] t={s:>3}s rate={:>8} rps p50={p50:>7}us p99={p99:>8}us errors={failed} server_cpu={cpu_pct}",
                            ok + failed,
                        );
                    }
                }
            }
            Ok(WorkerLine::Report(i, json)) => match serde_json::from_str::<WorkerReport>(&json) {
                Ok(r) => reports[i] = Some(r),
                Err(e) => {
                    failure = Some(RunError::Loader {
                        index: i,
                        reason: format!("unreadable report: {e}"),
                    })
                }
            },
            Ok(WorkerLine::Eof(i)) => eof[i] = true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    for mut c in children {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match c.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() && failure.is_none() {
                        failure = Some(RunError::Loader {
                            index: c.index,
                            reason: format!("exited with {status}; see logs/"),
                        });
                    }
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = c.child.kill();
                    let _ = c.child.wait();
                    break;
                }
            }
        }
    }
    let server_cpu_after = cpu_of(&server_pids);
    let sampled = sampler.finish();
    let metrics_after = target.scrape();
    if let Some(e) = failure {
        return Err(e);
    }
    let reports: Vec<WorkerReport> = reports
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.ok_or(RunError::Loader {
                index: i,
                reason: "sent no report".into(),
            })
        })
        .collect::<Result<_, _>>()?;
    ctx.requests_sent += reports.iter().map(|r| r.ok + r.failed).sum::<u64>();
    Ok(PhaseRun {
        reports,
        servers: match (server_cpu_before, server_cpu_after) {
            (Some(b), Some(a)) => server_pids
                .iter()
                .zip(b.iter().zip(&a))
                .map(|((l, p), (b, a))| (l.clone(), *p, (a - b).max(0.0)))
                .collect(),
            _ => Vec::new(),
        },
        sampled,
        worker_pids,
        metrics_before,
        metrics_after,
        goose_reports,
        cdn_nonce,
        rotations: rotated,
    })
}

/// Merged figures of a phase.
struct Merged {
    latency: hdrhistogram::Histogram<u64>,
    service: hdrhistogram::Histogram<u64>,
    send_lag: hdrhistogram::Histogram<u64>,
    requests: Requests,
    wall_s: f64,
}

fn merge_reports(reports: &[WorkerReport]) -> Result<Merged, RunError> {
    let mut latency = hist::new_histogram();
    let mut service = hist::new_histogram();
    let mut send_lag = hist::new_histogram();
    let mut requests = Requests::default();
    let mut first = f64::MAX;
    let mut last: f64 = 0.0;
    for r in reports {
        hist::merge(&mut latency, &hist::decode(&r.latency_hdr_v2)?)?;
        hist::merge(&mut service, &hist::decode(&r.service_hdr_v2)?)?;
        hist::merge(&mut send_lag, &hist::decode(&r.send_lag_hdr_v2)?)?;
        requests.ok += r.ok;
        requests.failed += r.failed;
        requests.late += r.late;
        requests.timeouts += r.timeouts;
        if r.ok + r.failed > 0 {
            first = first.min(r.first_send_s);
            last = last.max(r.last_done_s);
        }
    }
    requests.total = requests.ok + requests.failed;
    Ok(Merged {
        latency,
        service,
        send_lag,
        requests,
        wall_s: if first <= last { last } else { 0.0 },
    })
}

/// Loader checks: a loader that was itself the bottleneck makes the measurement invalid.
fn loader_checks(
    plan: &Plan,
    phase: &PhasePlan,
    reports: &[WorkerReport],
    send_lag: &Summary,
) -> Vec<String> {
    let mut reasons = Vec::new();
    for r in reports {
        if r.wall_seconds > 0.5 {
            let ratio = r.cpu_seconds / r.wall_seconds;
            if ratio > plan.limits.max_loader_cpu_ratio {
                reasons.push(format!(
                    "phase `{}`: loader process {} used {:.0}% of its core (limit {:.0}%): the loader, not the target, may be the bottleneck",
                    phase.name,
                    r.worker_index,
                    ratio * 100.0,
                    plan.limits.max_loader_cpu_ratio * 100.0
                ));
            }
        }
    }
    if matches!(phase.load, LoadModel::Open { .. })
        && send_lag.count > 0
        && send_lag.p99 > plan.limits.max_send_lag_us_p99
    {
        reasons.push(format!(
            "phase `{}`: the loader's own send lag p99 is {} us (limit {} us): it could not keep the schedule",
            phase.name, send_lag.p99, plan.limits.max_send_lag_us_p99
        ));
    }
    reasons
}

/// Late sends below the self-check's bound still leave a mark on the far tail: each one's latency includes the
/// loader's own stall (timed from the intended send, as it must be). When they are more than 0.05 % of the phase
/// (half of p99.9's share), the percentiles above `100 - 2 × late %` may be the loader's and not the target's;
/// say so, with the figure, rather than let a p99.9 stand unqualified. Open-loop phases only: a closed loop has
/// no intended send times.
fn late_send_warning(phase: &str, late_threshold_us: u64, requests: &Requests) -> Option<String> {
    if requests.total == 0 {
        return None;
    }
    let late_share = requests.late as f64 / requests.total as f64;
    if late_share <= 0.0005 {
        return None;
    }
    Some(format!(
        "phase `{}`: {} sends ({:.2}%) left more than {} us after their intended time; percentiles above p{:.2} may reflect the loader's stalls, not the target",
        phase,
        requests.late,
        late_share * 100.0,
        late_threshold_us,
        (100.0 * (1.0 - 2.0 * late_share)).max(0.0)
    ))
}

/// What a phase did to each server series: a counter's change over the phase, a level's value at its end.
///
/// Counters are told by the Prometheus naming convention every refbench server follows: `_total`, and a summary's
/// `_sum` and `_count`. Everything else is a level, a gauge (`ledger_flush_gap_seconds`) or a summary quantile
/// (`ledger_fsync_seconds{quantile="0.99"}`): the difference of two levels means nothing, and of two quantiles of
/// rolling windows it came out negative.
fn metric_deltas(
    before: Option<&BTreeMap<String, f64>>,
    after: Option<&BTreeMap<String, f64>>,
) -> BTreeMap<String, f64> {
    let (Some(b), Some(a)) = (before, after) else {
        return BTreeMap::new();
    };
    a.iter()
        .map(|(k, v)| {
            let v = if is_counter_series(k) {
                v - b.get(k).copied().unwrap_or(0.0)
            } else {
                *v
            };
            (k.clone(), v)
        })
        .collect()
}

/// Whether a series (`name{labels}`) counts up: see [`metric_deltas`].
fn is_counter_series(series: &str) -> bool {
    let name = series.split('{').next().unwrap_or(series);
    !series.contains("quantile=\"")
        && (name.ends_with("_total") || name.ends_with("_sum") || name.ends_with("_count"))
}

fn slo_checks(phase: &PhaseResult, slo: &SloSection) -> Vec<SloCheck> {
    let mut out = Vec::new();
    let l = &phase.latency_us;
    let mut max_check = |metric: &str, limit: Option<f64>, actual: f64| {
        if let Some(limit) = limit {
            out.push(SloCheck {
                phase: phase.name.clone(),
                metric: metric.into(),
                bound: "max".into(),
                limit,
                actual,
                passed: actual <= limit,
            });
        }
    };
    max_check("latency_us_p50", slo.latency_us_p50, l.p50 as f64);
    max_check("latency_us_p90", slo.latency_us_p90, l.p90 as f64);
    max_check("latency_us_p99", slo.latency_us_p99, l.p99 as f64);
    max_check("latency_us_p999", slo.latency_us_p999, l.p999 as f64);
    max_check("latency_us_max", slo.latency_us_max, l.max as f64);
    let total = phase.requests.total.max(1) as f64;
    max_check(
        "error_ratio",
        slo.error_ratio,
        phase.requests.failed as f64 / total,
    );
    if let (Some(limit), Some(offered)) = (slo.achieved_ratio_min, phase.offered_rate_rps) {
        let actual = phase.achieved_rate_rps / offered;
        out.push(SloCheck {
            phase: phase.name.clone(),
            metric: "achieved_ratio_min".into(),
            bound: "min".into(),
            limit,
            actual,
            passed: actual >= limit,
        });
    }
    out
}

fn calibration_phase(c: &CalibrationPlan) -> PhasePlan {
    PhasePlan {
        name: "calibration".into(),
        target: "floor".into(),
        warmup: false,
        load: LoadModel::Open {
            rate_rps: c.rate_rps,
            end_rate_rps: c.rate_rps,
            arrival: Arrival::Fixed,
            dispatch: Dispatch::Lane,
        },
        duration_s: c.duration_s,
        connections: c.connections,
        users: c.connections,
        http: HttpVersion::Http1,
        seed: 1,
        max_requests: (c.rate_rps * c.duration_s * 1.1) as u64 + 1000,
        requests: vec![RequestPlan::get_root()],
        slo: SloSection::default(),
        ledger: None,
        cdn: None,
        oidc: None,
    }
}

fn run_calibration(
    ctx: &mut Ctx<'_>,
    c: &CalibrationPlan,
) -> Result<(Calibration, Vec<String>), RunError> {
    let floor = start_target(
        ctx,
        "calibration-floor",
        &TargetKind::Builtin {
            system: "floor".into(),
            args: Vec::new(),
            cdn: None,
        },
    )?;
    let phase = calibration_phase(c);
    let run = run_phase(ctx, &phase, &floor, "calibration", None);
    floor.stop();
    let run = run?;
    let merged = merge_reports(&run.reports)?;
    let requests = merged.requests.total.max(1);
    let loader_cpu: f64 = run.reports.iter().map(|r| r.cpu_seconds).sum();
    let lag = Summary::of(&merged.send_lag);
    let reasons = loader_checks(ctx.plan, &phase, &run.reports, &lag);
    Ok((
        Calibration {
            floor_cpu_us_per_request: run.servers.iter().map(|s| s.2).sum::<f64>() * 1e6
                / requests as f64,
            loader_cpu_us_per_request: loader_cpu * 1e6 / requests as f64,
            rate_rps: c.rate_rps,
            achieved_rate_rps: if merged.wall_s > 0.0 {
                merged.requests.total as f64 / merged.wall_s.max(c.duration_s)
            } else {
                0.0
            },
            duration_s: c.duration_s,
            connections: c.connections,
            requests: merged.requests.total,
            latency_us: Summary::of(&merged.latency),
            valid: reasons.is_empty(),
        },
        reasons,
    ))
}

/// Runs a profile end to end and writes `result.json` (and Goose's reports) into the output folder.
pub fn run(opts: &RunOptions) -> Result<Finished, LoadgenError> {
    let plan = load_plan(opts)?;
    let started_at = unix_now_s();
    let out_dir = opts.out_dir.clone().unwrap_or_else(|| {
        PathBuf::from("results/runs").join(format!(
            "{}-{}",
            utc_stamp(started_at as u64),
            plan.name
        ))
    });
    for d in [out_dir.clone(), out_dir.join("logs"), out_dir.join("goose")] {
        std::fs::create_dir_all(&d).map_err(|source| RunError::Write {
            path: d.clone(),
            source,
        })?;
    }
    // The coordinator wakes at least 5 times a second (sampling, progress); keep it off the loader cores so those
    // wake-ups never preempt a loader in the middle of its schedule. Children set their own affinity.
    if let Err(e) = refbench_common::cpu::pin_to_cpus(&plan.placement.server_cpus) {
        eprintln!("warning: cannot pin the coordinator to the server cores: {e}");
    }
    let exe = std::env::current_exe().map_err(|e| RunError::io("find own executable", e))?;
    let mut ctx = Ctx {
        plan: &plan,
        exe,
        out_dir: out_dir.clone(),
        quiet: opts.quiet,
        started: Instant::now(),
        requests_sent: 0,
    };
    let host = Host::detect();
    let git = Git::detect();
    let mut invalid_reasons = Vec::new();
    let mut warnings = Vec::new();
    if host.build_profile == "debug" {
        warnings.push(
            "loadgen is a debug build: loader CPU figures are not representative (use --release)"
                .into(),
        );
    }
    if plan
        .placement
        .loader_cpus
        .iter()
        .any(|c| plan.placement.server_cpus.contains(c))
    {
        warnings.push("loader and server cores overlap: they compete for CPU".into());
    }

    let calibration = match &plan.calibration {
        Some(c) => {
            let (cal, reasons) = run_calibration(&mut ctx, c)?;
            for r in reasons {
                warnings.push(format!("calibration: {r}"));
            }
            Some(cal)
        }
        None => None,
    };

    let mut live = start_targets(&ctx, &plan)?;

    let mut phases = Vec::new();
    let mut warmups = Vec::new();
    let mut checks = Vec::new();
    let mut correctness_failures: Vec<String> = Vec::new();
    let mut verified_targets: std::collections::BTreeSet<String> = Default::default();
    for phase in &plan.phases {
        if ctx.deadline_left() < phase.duration_s {
            invalid_reasons.push(format!(
                "run.max_duration_s reached before phase `{}`; it and the rest were not run",
                phase.name
            ));
            break;
        }
        let target = &live[&phase.target];
        let label = if phase.warmup {
            format!("{} (warm-up)", phase.name)
        } else {
            phase.name.clone()
        };
        let prepared = match &phase.ledger {
            Some(l) => Some(ledger_prepare(&plan, l, target)?),
            None => None,
        };
        if let Some(c) = &phase.cdn {
            cdn_prepare(c, target)?;
        }
        let oidc_endpoints = match &phase.oidc {
            Some(o) => {
                let subject = o.subject_target.as_ref().map_or(target, |name| &live[name]);
                Some(oidc_prepare(
                    o,
                    target,
                    subject,
                    plan.limits.request_timeout_ms,
                    phase.duration_s,
                )?)
            }
            None => None,
        };
        let run = run_phase(&mut ctx, phase, target, &label, oidc_endpoints.as_ref());
        if let (Some(c), Some(origin)) = (&phase.cdn, &target.origin)
            && c.origin_latency_ms.is_some()
            && let Err(e) = origin.clear_injections()
        {
            warnings.push(format!(
                "phase `{}`: could not clear the origin's latency: {e}",
                phase.name
            ));
        }
        let run = run?;
        let merged = merge_reports(&run.reports)?;
        let cdn = match &phase.cdn {
            Some(c) => {
                let (result, failures, notes) = cdn_finish(c, target, &run);
                for f in &failures {
                    if !opts.quiet {
                        eprintln!("[{label}] CDN CHECK FAILED: {f}");
                    }
                    correctness_failures.push(format!("phase `{}`: {f}", phase.name));
                }
                warnings.extend(
                    notes
                        .into_iter()
                        .map(|n| format!("phase `{}`: {n}", phase.name)),
                );
                Some(result)
            }
            None => None,
        };
        let oidc = match (&phase.oidc, &oidc_endpoints) {
            (Some(o), Some(e)) => {
                let (result, failures) =
                    oidc_finish(o, e, &run, merged.wall_s.max(phase.duration_s));
                for f in &failures {
                    if !opts.quiet {
                        eprintln!("[{label}] OIDC CHECK FAILED: {f}");
                    }
                    correctness_failures.push(format!("phase `{}`: {f}", phase.name));
                }
                Some(result)
            }
            _ => None,
        };
        let ledger = match (&phase.ledger, prepared) {
            (Some(l), Some(prep)) => {
                let (result, failures, notes) = ledger_finish(
                    phase,
                    l,
                    target,
                    prep,
                    &run.reports,
                    merged.wall_s.max(phase.duration_s),
                )?;
                for f in &failures {
                    if !opts.quiet {
                        eprintln!("[{label}] LEDGER CHECK FAILED: {f}");
                    }
                    correctness_failures.push(format!("phase `{}`: {f}", phase.name));
                }
                warnings.extend(notes);
                if result.verification.is_some() {
                    verified_targets.insert(phase.target.clone());
                }
                Some(result)
            }
            _ => None,
        };
        if phase.warmup {
            warmups.push(WarmupSummary {
                name: phase.name.clone(),
                ok: merged.requests.ok,
                failed: merged.requests.failed,
            });
            continue;
        }
        let lag = Summary::of(&merged.send_lag);
        invalid_reasons.extend(loader_checks(&plan, phase, &run.reports, &lag));
        if matches!(phase.load, LoadModel::Open { .. }) {
            warnings.extend(late_send_warning(
                &phase.name,
                plan.limits.late_threshold_us,
                &merged.requests,
            ));
        }
        let goose_requests: u64 = run.reports.iter().map(|r| r.goose_requests).sum();
        if goose_requests != merged.requests.total {
            warnings.push(format!(
                "phase `{}`: Goose recorded {goose_requests} requests, loadgen {}",
                phase.name, merged.requests.total
            ));
        }
        let wall_s = merged.wall_s.max(phase.duration_s);
        let total = merged.requests.total;
        let mut processes = Vec::new();
        for (label, pid, cpu) in &run.servers {
            let s = run.sampled.get(pid).cloned().unwrap_or_default();
            processes.push(ProcessResult::new(
                "server", label, *pid, *cpu, wall_s, total, &s,
            ));
        }
        for (r, pid) in run.reports.iter().zip(&run.worker_pids) {
            let s = run.sampled.get(pid).cloned().unwrap_or_default();
            processes.push(ProcessResult::new(
                "loader",
                &format!("loader-{}", r.worker_index),
                *pid,
                r.cpu_seconds,
                r.wall_seconds,
                r.ok + r.failed,
                &s,
            ));
        }
        // A target of several processes (a CDN topology) costs what all of them spent per request.
        let server_cpu_us_per_request: Option<f64> = processes
            .iter()
            .filter(|p| p.role == "server")
            .map(|p| p.cpu_us_per_request)
            .reduce(|a, b| a + b);
        let server_cpu_floor_ratio = match (&calibration, server_cpu_us_per_request) {
            (Some(c), Some(s)) if c.floor_cpu_us_per_request > 0.0 => {
                Some(s / c.floor_cpu_us_per_request)
            }
            _ => None,
        };
        let mut status_codes = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for r in &run.reports {
            for (k, v) in &r.status_codes {
                *status_codes.entry(k.to_string()).or_insert(0) += v;
            }
            for (k, v) in &r.errors {
                *errors.entry(k.clone()).or_insert(0) += v;
            }
        }
        let mut server_metrics = BTreeMap::new();
        for (label, after) in &run.metrics_after {
            let deltas = metric_deltas(run.metrics_before.get(label), Some(after));
            if !deltas.is_empty() {
                server_metrics.insert(label.clone(), deltas);
            }
        }
        let result = PhaseResult {
            name: phase.name.clone(),
            target: phase.target.clone(),
            model: phase.model_name().into(),
            http: match phase.http {
                HttpVersion::Http1 => "1.1",
                HttpVersion::Http2 => "2",
            }
            .into(),
            arrival: match phase.load {
                LoadModel::Open {
                    arrival: Arrival::Fixed,
                    ..
                } => Some("fixed".into()),
                LoadModel::Open {
                    arrival: Arrival::Poisson,
                    ..
                } => Some("poisson".into()),
                LoadModel::Closed { .. } => None,
            },
            dispatch: match phase.load {
                LoadModel::Open { dispatch, .. } => Some(dispatch.name().into()),
                LoadModel::Closed { .. } => None,
            },
            duration_s: phase.duration_s,
            connections: phase.connections,
            users: phase.users,
            loader_processes: run.reports.len(),
            offered_rate_rps: phase.offered_rate_rps(),
            achieved_rate_rps: total as f64 / wall_s,
            requests: merged.requests.clone(),
            status_codes,
            errors,
            latency_us: Summary::of(&merged.latency),
            service_time_us: Summary::of(&merged.service),
            send_lag_us: lag,
            histogram_hdr_v2: hist::encode(&merged.latency)?,
            service_time_histogram_hdr_v2: hist::encode(&merged.service)?,
            bytes_received: run.reports.iter().map(|r| r.bytes_received).sum(),
            goose_requests,
            processes,
            server_cpu_floor_ratio,
            server_metrics,
            goose_reports: run.goose_reports.clone(),
            ledger,
            cdn,
            oidc,
        };
        checks.extend(slo_checks(&result, &phase.slo));
        phases.push(result);
    }

    // Once per run and ledger target: the server's own check of its log and balances.
    for name in &verified_targets {
        let t = &live[name];
        let outcome = ledger_target(t, plan.limits.request_timeout_ms)
            .and_then(|lt| check::server_verify(&lt).map_err(|reason| ledger_err(t, reason)));
        match outcome {
            Ok(v) => {
                let mut problems = Vec::new();
                if !v.ok {
                    problems.push(format!(
                        "GET /verify reports ok = false ({} errors)",
                        v.errors
                    ));
                }
                for (cur, balanced) in &v.balanced {
                    if !balanced {
                        problems.push(format!("GET /verify reports {cur} unbalanced"));
                    }
                }
                for p in problems {
                    if !opts.quiet {
                        eprintln!("[{name}] LEDGER CHECK FAILED: {p}");
                    }
                    correctness_failures.push(format!("target `{name}`: {p}"));
                }
                for p in phases.iter_mut().filter(|p| &p.target == name) {
                    if let Some(ver) = p.ledger.as_mut().and_then(|l| l.verification.as_mut()) {
                        ver.server_verify = Some(v.clone());
                    }
                }
            }
            Err(e) => {
                let p = format!("GET /verify could not be checked: {e}");
                if !opts.quiet {
                    eprintln!("[{name}] LEDGER CHECK FAILED: {p}");
                }
                correctness_failures.push(format!("target `{name}`: {p}"));
            }
        }
    }

    let targets: Vec<TargetInfo> = live.values().map(LiveTarget::info).collect();
    for (_, t) in std::mem::take(&mut live) {
        t.stop();
    }
    let slo = SloReport {
        passed: checks.iter().all(|c| c.passed),
        checks,
    };
    let result = RunResult {
        schema_version: SCHEMA_VERSION,
        refbench_version: env!("CARGO_PKG_VERSION").into(),
        profile_name: plan.name.clone(),
        started_at_unix_s: started_at,
        duration_s: ctx.started.elapsed().as_secs_f64(),
        valid: invalid_reasons.is_empty(),
        invalid_reasons,
        warnings,
        slo,
        host,
        git,
        calibration,
        profile: plan.redacted(),
        targets,
        phases,
        warmup_phases: warmups,
        correctness_failures,
    };
    write_result(&out_dir, &result)?;
    Ok(Finished { result, out_dir })
}

/// The target URL's path prefix (`""` for none).
fn base_prefix(t: &LiveTarget) -> String {
    HttpUrl::parse(&t.url).map(|u| u.prefix).unwrap_or_default()
}

/// Before an OIDC phase: reads the issuer's discovery document; a phase that rotates keys needs an admin address.
fn oidc_prepare(
    o: &OidcPlan,
    t: &LiveTarget,
    subject: &LiveTarget,
    request_timeout_ms: u64,
    duration_s: f64,
) -> Result<OidcEndpoints, RunError> {
    let err =
        |reason: String| RunError::io(format!("target {}", t.name), std::io::Error::other(reason));
    if !o.rotate_at_s.is_empty() && t.rotate.is_none() {
        return Err(err(
            "the phase rotates keys (rotate_at_s), which needs a built-in issuer started without --admin-token-file (loadgen makes the admin secret itself)".into(),
        ));
    }
    let base = HttpUrl::parse(&t.url).map_err(err)?;
    let timeout = Duration::from_millis(request_timeout_ms).max(Duration::from_secs(5));
    let mut e = oidcmod::discover(&base, t.addr, timeout).map_err(err)?;
    if o.flow == OidcFlow::Introspect {
        if e.introspection_path.is_none() {
            return Err(err(
                "the issuer's discovery document names no introspection_endpoint".into(),
            ));
        }
        let (token, expires_in) =
            oidcmod::obtain_token(o, &base, t.addr, &e, timeout).map_err(err)?;
        // The token must outlive the phase, or late requests would rightly be told it is inactive.
        if (expires_in as f64) < duration_s + 5.0 {
            return Err(err(format!(
                "the issuer's access tokens live {expires_in} s, less than the introspection phase ({duration_s} s) and a margin"
            )));
        }
        e.subject_token = Some(token);
    }
    if o.flow == OidcFlow::TokenExchange {
        // The subject token: client_credentials at the subject issuer (another target for federation), asked for
        // the audience the exchanging issuer accepts. It must outlive the phase.
        let serr = |reason: String| {
            RunError::io(
                format!("subject issuer {}", subject.name),
                std::io::Error::other(reason),
            )
        };
        let sbase = HttpUrl::parse(&subject.url).map_err(serr)?;
        let se = oidcmod::discover(&sbase, subject.addr, timeout).map_err(serr)?;
        let (id, secret) = o.subject_client.clone().unwrap_or_default();
        let sp = OidcPlan {
            flow: OidcFlow::ClientCredentials,
            client_id: id,
            client_secret: secret,
            auth: crate::plan::OidcAuth::Basic,
            scope: None,
            resource: o.subject_resource.clone(),
            ..o.clone()
        };
        let (token, expires_in) =
            oidcmod::obtain_token(&sp, &sbase, subject.addr, &se, timeout).map_err(serr)?;
        if (expires_in as f64) < duration_s + 5.0 {
            return Err(serr(format!(
                "the subject issuer's access tokens live {expires_in} s, less than the exchange phase ({duration_s} s) and a margin"
            )));
        }
        e.subject_token = Some(token);
    }
    if o.flow.needs_user() {
        // One login for the whole phase: every flow then rides the session, as single sign-on does. The login
        // (a slow password hash by design) is outside the measurement.
        e.session_cookie = Some(oidcmod::login(o, &base, t.addr, &e, timeout).map_err(err)?);
    }
    Ok(e)
}

/// After an OIDC phase: merges the loaders' token counts and verification outcomes; every malformed response,
/// failed verification and failed rotation is a correctness failure.
fn oidc_finish(
    o: &OidcPlan,
    e: &OidcEndpoints,
    run: &PhaseRun,
    wall_s: f64,
) -> (OidcResult, Vec<String>) {
    let mut totals = OidcTotals::default();
    for r in &run.reports {
        if let Some(t) = &r.oidc {
            totals.merge(t);
        }
    }
    let mut failures = Vec::new();
    if totals.malformed_responses > 0 {
        failures.push(format!(
            "{} status-200 token responses carried no usable Bearer access_token",
            totals.malformed_responses
        ));
    }
    for (why, n) in &totals.failures {
        failures.push(format!("{n} sampled tokens failed verification: {why}"));
    }
    for (why, n) in &totals.flow_failures {
        failures.push(format!(
            "{n} {} flows failed a protocol check: {why}",
            o.flow.name()
        ));
    }
    if totals.introspected_inactive > 0 {
        failures.push(format!(
            "{} introspections called the phase's valid token inactive",
            totals.introspected_inactive
        ));
    }
    if o.flow == OidcFlow::Introspect && totals.introspected_active == 0 {
        failures.push("no introspection answered active".into());
    }
    if o.verify_every > 0 && totals.tokens > 0 && totals.sampled == 0 {
        failures.push("tokens were issued but none was sampled for verification".into());
    }
    let rotations = run
        .rotations
        .iter()
        .map(|(at_s, r)| OidcRotation {
            at_s: *at_s,
            ok: r.is_ok(),
            error: r.as_ref().err().cloned(),
        })
        .collect::<Vec<_>>();
    for r in rotations.iter().filter(|r| !r.ok) {
        failures.push(format!(
            "key rotation at {:.2}s failed: {}",
            r.at_s,
            r.error.as_deref().unwrap_or("")
        ));
    }
    if rotations.len() < o.rotate_at_s.len() {
        failures.push(format!(
            "{} of {} key rotations were not attempted (the phase ended first)",
            o.rotate_at_s.len() - rotations.len(),
            o.rotate_at_s.len()
        ));
    }
    let result = OidcResult {
        flow: o.flow.name().into(),
        issuer: e.issuer.clone(),
        tokens: totals.tokens,
        tokens_per_s: if wall_s > 0.0 {
            totals.tokens as f64 / wall_s
        } else {
            0.0
        },
        malformed_responses: totals.malformed_responses,
        sampled: totals.sampled,
        verified: totals.verified,
        verification_failures: totals.failures,
        sample_overflow: totals.sample_overflow,
        jwks_reads: totals.jwks_reads,
        jwks_read_failures: totals.jwks_read_failures,
        introspected_active: totals.introspected_active,
        introspected_inactive: totals.introspected_inactive,
        http_requests: totals.http_requests,
        flow_failures: totals.flow_failures,
        refresh_chain_restarts: totals.refresh_chain_restarts,
        rotations,
    };
    (result, failures)
}

/// Before a CDN phase: makes the origin slow for the phase's paths when the phase asks for it.
fn cdn_prepare(c: &CdnPlan, t: &LiveTarget) -> Result<(), RunError> {
    let Some(ms) = c.origin_latency_ms else {
        return Ok(());
    };
    let origin = t.origin.as_ref().ok_or_else(|| RunError::ServerNotReady {
        target: t.name.clone(),
        reason: "origin_latency_ms needs the origin's admin port, and this target has none".into(),
    })?;
    origin
        .set_latency(&format!("{}{}", base_prefix(t), c.path_prefix), ms)
        .map_err(|reason| RunError::ServerNotReady {
            target: t.name.clone(),
            reason,
        })
}

/// After a CDN phase: merges the loaders' counts, reads the origin's and the caches' counters and, for a storm,
/// checks that every cold key was fetched from the origin exactly once. Returns the result, correctness failures
/// and notes.
fn cdn_finish(
    c: &CdnPlan,
    t: &LiveTarget,
    run: &PhaseRun,
) -> (CdnResult, Vec<String>, Vec<String>) {
    let mut totals = CdnTotals::default();
    for r in &run.reports {
        if let Some(c) = &r.cdn {
            totals.merge(c);
        }
    }
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let origin_label = format!("{}/origin", t.name);
    let origin = match (
        run.metrics_before.get(&origin_label),
        run.metrics_after.get(&origin_label),
    ) {
        (Some(b), Some(a)) => Some(cdnmod::origin_figures(&metric_deltas(Some(b), Some(a)))),
        _ => None,
    };
    let mut prefetch_deltas = BTreeMap::new();
    for (label, after) in &run.metrics_after {
        if *label == origin_label {
            continue;
        }
        for (k, v) in metric_deltas(run.metrics_before.get(label), Some(after)) {
            *prefetch_deltas.entry(k).or_insert(0.0) += v;
        }
    }
    let outcomes = cdnmod::prefetch_outcomes(&prefetch_deltas);
    let prefetch = (!outcomes.is_empty()).then(|| {
        let get = |k: &str| outcomes.get(k).copied().unwrap_or(0.0).max(0.0).round() as u64;
        let (used, wasted) = (get("used"), get("evicted_unused"));
        CdnPrefetch {
            precision: cdnmod::ratio(used, used + wasted),
            outcomes: outcomes
                .iter()
                .map(|(k, v)| (k.clone(), v.max(0.0).round() as u64))
                .collect(),
        }
    });
    let storm = match (c.workload, &t.origin) {
        (CdnWorkload::Storm { .. }, Some(origin)) => {
            let keys: Vec<u64> = totals.storm_periods.iter().copied().collect();
            let checked = cdnmod::spread(&keys, cdnmod::MAX_STORM_KEYS_CHECKED);
            let prefix = base_prefix(t);
            let mut max_fetches = 0;
            let mut more_than_once = 0;
            let mut unreadable = 0;
            for p in &checked {
                let path = cdnmod::CdnConfig::storm_path(&prefix, c, run.cdn_nonce, *p);
                match origin.fetches(&path) {
                    Ok(n) => {
                        max_fetches = max_fetches.max(n);
                        if n > 1 {
                            more_than_once += 1;
                            if more_than_once <= 5 {
                                failures.push(format!(
                                    "cold key {path} was fetched {n} times from the origin: concurrent misses must share one fetch"
                                ));
                            }
                        } else if n == 0 {
                            unreadable += 1;
                        }
                    }
                    Err(_) => unreadable += 1,
                }
            }
            if more_than_once > 5 {
                failures.push(format!(
                    "{more_than_once} of {} cold keys were fetched more than once",
                    checked.len()
                ));
            }
            if unreadable > 0 {
                notes.push(format!(
                    "the origin reported no fetch count for {unreadable} of {} storm keys (its per-key table may be full)",
                    checked.len()
                ));
            }
            Some(CdnStorm {
                keys: keys.len() as u64,
                keys_checked: checked.len() as u64,
                max_fetches_per_key: max_fetches,
                keys_fetched_more_than_once: more_than_once,
                responses_per_key: if keys.is_empty() {
                    0.0
                } else {
                    totals.responses as f64 / keys.len() as f64
                },
            })
        }
        (CdnWorkload::Storm { .. }, None) => {
            notes.push("no origin admin: the storm's one-fetch-per-key check was skipped".into());
            None
        }
        _ => None,
    };
    if totals.responses > 0 && totals.with_cache_status == 0 {
        notes.push(
            "no response carried Cache-Status: hit ratios come from the origin's counters only"
                .into(),
        );
    }
    let hits = totals.edge_hits + totals.upper_hits;
    let hit_bytes = totals.edge_hit_bytes + totals.upper_hit_bytes;
    let with_status = totals.with_cache_status > 0;
    let offload = |fetched: u64, all: u64| cdnmod::ratio(fetched, all).map(|r| 1.0 - r);
    let result = CdnResult {
        workload: c.workload.name().into(),
        responses: totals.responses,
        with_cache_status: totals.with_cache_status,
        edge_hits: totals.edge_hits,
        upper_hits: totals.upper_hits,
        edge_hit_ratio: cdnmod::ratio(totals.edge_hits, totals.responses).filter(|_| with_status),
        edge_byte_hit_ratio: cdnmod::ratio(totals.edge_hit_bytes, totals.bytes)
            .filter(|_| with_status),
        hit_ratio: cdnmod::ratio(hits, totals.responses).filter(|_| with_status),
        byte_hit_ratio: cdnmod::ratio(hit_bytes, totals.bytes).filter(|_| with_status),
        bytes: totals.bytes,
        origin_fetches: origin.map(|o| o.0),
        origin_bytes: origin.map(|o| o.1),
        offload_ratio: origin.and_then(|o| offload(o.0, totals.responses)),
        byte_offload_ratio: origin.and_then(|o| offload(o.1, totals.bytes)),
        storm,
        prefetch,
    };
    (result, failures, notes)
}

fn ledger_err(t: &LiveTarget, reason: impl Into<String>) -> RunError {
    RunError::Ledger {
        target: t.name.clone(),
        reason: reason.into(),
    }
}

fn ledger_target(t: &LiveTarget, request_timeout_ms: u64) -> Result<LedgerTarget, RunError> {
    LedgerTarget::new(
        &t.url,
        t.addr,
        Duration::from_millis(request_timeout_ms).max(Duration::from_secs(30)),
    )
    .map_err(|e| ledger_err(t, e))
}

/// A ledger phase's state between set-up and checks.
struct LedgerPrepared {
    target: LedgerTarget,
    created: u64,
    before: Option<Balances>,
}

/// Before a ledger phase (not measured): creates its accounts and, when verifying, records their balances.
fn ledger_prepare(
    plan: &Plan,
    l: &LedgerPlan,
    target: &LiveTarget,
) -> Result<LedgerPrepared, RunError> {
    let lt = ledger_target(target, plan.limits.request_timeout_ms)?;
    let created = check::create_accounts(&lt, l).map_err(|e| ledger_err(target, e))?;
    let before = if l.verify {
        Some(check::lookup_balances(&lt, l).map_err(|e| ledger_err(target, e))?)
    } else {
        None
    };
    Ok(LedgerPrepared {
        target: lt,
        created,
        before,
    })
}

/// After a ledger phase: merges the loaders' figures and, when verifying, compares the balance changes with what
/// the loaders sent. Returns the result, the correctness failures and warnings.
fn ledger_finish(
    phase: &PhasePlan,
    l: &LedgerPlan,
    target: &LiveTarget,
    prep: LedgerPrepared,
    reports: &[WorkerReport],
    wall_s: f64,
) -> Result<(LedgerResult, Vec<String>, Vec<String>), RunError> {
    let mut transfers = LedgerTransfers::default();
    let mut two_phase = LedgerTwoPhase::default();
    let mut linked = LedgerLinked::default();
    let mut chain_examples = Vec::new();
    let mut failed_by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut checks = crate::ledger::model::TransferChecks::default();
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    let mut lanes_stopped = 0;
    let mut deltas = Vec::with_capacity(reports.len());
    for r in reports {
        let Some(w) = &r.ledger else {
            return Err(RunError::Loader {
                index: r.worker_index,
                reason: "its report of a ledger phase has no ledger figures".into(),
            });
        };
        transfers.sent += w.sent;
        transfers.ok += w.ok;
        transfers.exists += w.exists;
        transfers.failed += w.failed;
        transfers.in_doubt += w.in_doubt;
        two_phase.pending_created += w.pending_created;
        two_phase.posted += w.posted;
        two_phase.voided += w.voided;
        two_phase.pending_unqueued += w.pending_unqueued;
        two_phase.pending_expiring += w.pending_expiring;
        linked.add(&w.linked);
        chain_examples.extend(w.chain_examples.iter().cloned());
        lanes_stopped += w.lanes_stopped;
        for (k, v) in &w.failed_by_code {
            *failed_by_code.entry(k.clone()).or_insert(0) += v;
        }
        match &w.checks {
            Some(c) => checks.add(c),
            None if l.verify => {
                return Err(RunError::Loader {
                    index: r.worker_index,
                    reason: "it did not verify its ledger transfers".into(),
                });
            }
            None => {}
        }
        deltas.push(w.deltas.as_slice());
    }
    if lanes_stopped > 0 {
        notes.push(format!(
            "phase `{}`: {lanes_stopped} ledger lanes stopped early (transfer ids exhausted or too many in-doubt transfers)",
            phase.name
        ));
    }
    // Chains are checked from the responses, whether or not the phase verifies through lookups.
    if linked.violations > 0 {
        failures.push(format!(
            "{} of {} linked chains were applied in part (or despite a refused item)",
            linked.violations, linked.chains
        ));
        failures.extend(chain_examples.iter().take(3).map(|e| format!("e.g. {e}")));
    }
    let verification = if l.verify {
        if l.pending_timeout_s > 0 {
            // The last pending was created before the loaders reported; once its timeout has passed the ledger
            // releases it within its expiry timer's period (well under the extra second).
            std::thread::sleep(Duration::from_secs(u64::from(l.pending_timeout_s) + 1));
        }
        let after = check::lookup_balances(&prep.target, l).map_err(|e| ledger_err(target, e))?;
        let expected = check::sum_deltas(l.accounts, deltas).map_err(|e| ledger_err(target, e))?;
        let before = prep.before.as_ref().expect("looked up when verifying");
        let b = check::check_balances(l, before, &after, &expected);
        if checks.missing > 0 {
            failures.push(format!(
                "{} of {} acknowledged transfers are missing from the ledger",
                checks.missing, checks.acked
            ));
        }
        if checks.field_mismatches > 0 {
            failures.push(format!(
                "{} transfers are stored with other fields than sent",
                checks.field_mismatches
            ));
        }
        if checks.lookup_errors > 0 {
            failures.push(format!(
                "{} transfers could not be looked up",
                checks.lookup_errors
            ));
        }
        if b.missing_accounts > 0 {
            failures.push(format!(
                "{} scenario accounts are unknown to the ledger",
                b.missing_accounts
            ));
        }
        if b.balance_mismatches > 0 {
            failures.push(format!(
                "{} of {} accounts changed by other amounts than the acknowledged transfers imply",
                b.balance_mismatches, b.accounts_checked
            ));
        }
        for (cur, ok) in &b.currencies_balanced {
            if !ok {
                failures.push(format!(
                    "{cur}: the scenario accounts' balance changes do not sum to zero"
                ));
            }
        }
        if !failures.is_empty() {
            failures.extend(
                checks
                    .examples
                    .iter()
                    .chain(&b.examples)
                    .take(5)
                    .map(|e| format!("e.g. {e}")),
            );
        }
        Some(LedgerVerification {
            passed: failures.is_empty(),
            acked: checks.acked,
            verified_present: checks.verified_present,
            missing: checks.missing,
            field_mismatches: checks.field_mismatches,
            in_doubt: checks.in_doubt,
            in_doubt_applied: checks.in_doubt_applied,
            lookup_errors: checks.lookup_errors,
            accounts_checked: b.accounts_checked,
            missing_accounts: b.missing_accounts,
            balance_mismatches: b.balance_mismatches,
            currencies_balanced: b.currencies_balanced,
            server_verify: None,
            failures: failures.clone(),
        })
    } else {
        None
    };
    Ok((
        LedgerResult {
            batch_size: l.batch_size,
            accounts: l.accounts,
            currencies: l.currencies.clone(),
            accounts_created: prep.created,
            transfers_per_s: if wall_s > 0.0 {
                transfers.ok as f64 / wall_s
            } else {
                0.0
            },
            transfers,
            failed_by_code,
            two_phase,
            linked,
            verification,
        },
        failures,
        notes,
    ))
}

/// Writes `result.json` atomically (temp file + rename), so a reader never sees half a result.
pub fn write_result(out_dir: &Path, result: &RunResult) -> Result<(), RunError> {
    let path = out_dir.join("result.json");
    let tmp = out_dir.join("result.json.tmp");
    let json = serde_json::to_vec_pretty(result).expect("plain data serializes");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| RunError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_change_over_a_phase_and_levels_keep_their_end_value() {
        let scrape = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let before = scrape(&[
            ("ledger_records_total", 100.0),
            ("ledger_fsync_seconds_sum", 2.0),
            ("ledger_fsync_seconds_count", 50.0),
            ("ledger_fsync_seconds{quantile=\"0.99\"}", 0.004),
            ("ledger_flush_gap_seconds", 0.001),
            ("rejected_total{reason=\"x\"}", 1.0),
        ]);
        let after = scrape(&[
            ("ledger_records_total", 160.0),
            ("ledger_fsync_seconds_sum", 2.5),
            ("ledger_fsync_seconds_count", 80.0),
            ("ledger_fsync_seconds{quantile=\"0.99\"}", 0.0002),
            ("ledger_flush_gap_seconds", 0.0003),
            ("rejected_total{reason=\"x\"}", 4.0),
            ("http_connections_active", 256.0),
        ]);
        let d = metric_deltas(Some(&before), Some(&after));
        assert_eq!(d["ledger_records_total"], 60.0);
        assert_eq!(d["ledger_fsync_seconds_sum"], 0.5);
        assert_eq!(d["ledger_fsync_seconds_count"], 30.0);
        assert_eq!(d["rejected_total{reason=\"x\"}"], 3.0);
        assert_eq!(d["ledger_fsync_seconds{quantile=\"0.99\"}"], 0.0002);
        assert_eq!(d["ledger_flush_gap_seconds"], 0.0003);
        assert_eq!(d["http_connections_active"], 256.0);
        assert!(metric_deltas(None, Some(&after)).is_empty());
    }

    #[test]
    fn late_send_warning_names_the_share_and_the_trusted_percentile() {
        let counts = |late| Requests {
            total: 40_000,
            ok: 40_000,
            late,
            ..Requests::default()
        };
        // 20 of 40,000 is exactly 0.05 %: still fine.
        assert_eq!(late_send_warning("steady", 1000, &counts(20)), None);
        assert_eq!(
            late_send_warning("steady", 1000, &Requests::default()),
            None
        );
        let w = late_send_warning("steady", 1000, &counts(124)).unwrap();
        assert!(w.contains("phase `steady`: 124 sends (0.31%)"), "{w}");
        assert!(w.contains("more than 1000 us"), "{w}");
        assert!(w.contains("above p99.38"), "{w}");
    }

    #[test]
    fn utc_stamp_matches_known_dates() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_795_833_045), "20261128T023045Z");
    }

    #[test]
    fn split_spreads_remainder() {
        let parts: Vec<usize> = (0..3).map(|i| split(10, 3, i)).collect();
        assert_eq!(parts, vec![4, 3, 3]);
        assert_eq!(parts.iter().sum::<usize>(), 10);
    }
}
