//! The resolved run plan: a profile validated once, with every default filled in. Everything downstream (the
//! coordinator, loader processes, results) reads this and never the raw profile, so a value is checked in one place.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

use crate::error::ProfileError;
use crate::ledger::wire::{MAX_BATCH, currency_code};
use crate::profile::{
    CdnSection, CdnTopologySection, LedgerSection, OidcSection, PhaseSection, Profile,
    RequestSection, SloSection,
};

/// Built-in systems profiles know (`cdn` is the whole topology: origin, shields, edges).
pub const BUILTIN_SYSTEMS: &[&str] = &["floor", "ledger", "cdn", "oidc"];

/// Longest phase we accept; longer soaks should be split into phases so results stay per-phase.
pub const MAX_PHASE_DURATION_S: f64 = 24.0 * 3600.0;
/// Most connections one phase may open.
pub const MAX_CONNECTIONS: usize = 50_000;
/// Highest arrival rate a phase may ask for.
pub const MAX_RATE_RPS: f64 = 10_000_000.0;
/// Default cap on all requests of a run.
pub const DEFAULT_MAX_REQUESTS: u64 = 100_000_000;
/// Largest request body a profile may define.
pub const MAX_REQUEST_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A validated profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// Profile name.
    pub name: String,
    /// Profile description.
    pub description: String,
    /// Run-wide limits.
    pub limits: Limits,
    /// Where processes run.
    pub placement: Placement,
    /// Floor measurement at run start, if enabled.
    pub calibration: Option<CalibrationPlan>,
    /// Targets in profile order (sorted by name).
    pub targets: Vec<TargetPlan>,
    /// Phases in run order, steps expanded.
    pub phases: Vec<PhasePlan>,
}

/// What stands in a published plan for a secret the profile gave.
pub const REDACTED: &str = "[redacted]";

impl Plan {
    /// The plan as results publish it: client secrets replaced by [`REDACTED`] (a result may be shared; the
    /// secret only has to reach the loader processes).
    pub fn redacted(&self) -> Plan {
        let mut p = self.clone();
        for ph in &mut p.phases {
            if let Some(o) = ph.oidc.as_mut() {
                o.client_secret = REDACTED.into();
                if o.password.is_some() {
                    o.password = Some(REDACTED.into());
                }
                if let Some((_, secret)) = o.subject_client.as_mut() {
                    *secret = REDACTED.into();
                }
            }
        }
        p
    }
}

/// Run-wide bounds; every loop in loadgen stops at one of these at the latest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Hard cap on the whole run.
    pub max_duration_s: f64,
    /// Hard cap on requests over all phases.
    pub max_requests: u64,
    /// Per-request timeout.
    pub request_timeout_ms: u64,
    /// Sent this long after the intended time = late.
    pub late_threshold_us: u64,
    /// Loader send-lag p99 above this makes the run invalid.
    pub max_send_lag_us_p99: u64,
    /// Loader CPU share of its core above this makes the run invalid.
    pub max_loader_cpu_ratio: f64,
}

/// Core placement of servers and loader processes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Placement {
    /// Cores for loader processes.
    pub loader_cpus: Vec<usize>,
    /// Cores for built-in servers.
    pub server_cpus: Vec<usize>,
    /// How many loader processes share each phase's load.
    pub loader_processes: usize,
}

/// The calibration recipe (kept in results so two runs can be checked to have used the same one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationPlan {
    /// Open-loop rate against the floor.
    pub rate_rps: f64,
    /// Duration.
    pub duration_s: f64,
    /// HTTP/1.1 connections.
    pub connections: usize,
}

/// What a target is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetKind {
    /// A server loadgen starts itself.
    Builtin {
        /// System name, e.g. `floor`.
        system: String,
        /// Extra server arguments.
        args: Vec<String>,
        /// `cdn`: the topology to start.
        #[serde(default)]
        cdn: Option<CdnTopology>,
    },
    /// A server somebody else runs.
    External {
        /// Base URL.
        url: String,
        /// Admin base URL for `/metrics`.
        admin_url: Option<String>,
        /// Admin base URL of the origin behind a CDN target.
        #[serde(default)]
        origin_admin_url: Option<String>,
        /// Processes on this host whose CPU and memory count as the server's.
        #[serde(default)]
        pids: Vec<u32>,
    },
}

/// Most edges or shields a built-in CDN topology may have.
pub const MAX_CDN_TIERS: usize = 16;

/// A validated `[targets.NAME.cdn]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CdnTopology {
    /// Edge tiers (load is spread over them).
    pub edges: usize,
    /// Shield tiers (0 = edges fetch from the origin).
    pub shields: usize,
    /// Extra origin arguments.
    pub origin_args: Vec<String>,
    /// Extra arguments of every shield.
    pub shield_args: Vec<String>,
    /// Extra arguments of every edge.
    pub edge_args: Vec<String>,
}

fn resolve_topology(f: &str, t: Option<&CdnTopologySection>) -> Result<CdnTopology, ProfileError> {
    let t = t.cloned().unwrap_or_default();
    let edges = t.edges.unwrap_or(2);
    if !(1..=MAX_CDN_TIERS).contains(&edges) {
        return Err(ProfileError::invalid(
            format!("{f}.edges"),
            format!("must be 1..={MAX_CDN_TIERS}, got {edges}"),
        ));
    }
    let shields = t.shields.unwrap_or(2);
    if shields > MAX_CDN_TIERS {
        return Err(ProfileError::invalid(
            format!("{f}.shields"),
            format!("must be 0..={MAX_CDN_TIERS}, got {shields}"),
        ));
    }
    // loadgen wires the tiers together itself; a second --upstream or --bind would silently rewire them.
    for (k, args) in [
        ("origin_args", &t.origin_args),
        ("shield_args", &t.shield_args),
        ("edge_args", &t.edge_args),
    ] {
        for a in args {
            let flag = a.split('=').next().unwrap_or("");
            if matches!(
                flag,
                "--upstream" | "--upstream-admin" | "--role" | "--bind" | "--admin-bind" | "--cpus"
            ) {
                return Err(ProfileError::invalid(
                    format!("{f}.{k}"),
                    format!("`{flag}` is set by loadgen for the topology; remove it"),
                ));
            }
        }
    }
    Ok(CdnTopology {
        edges,
        shields,
        origin_args: t.origin_args,
        shield_args: t.shield_args,
        edge_args: t.edge_args,
    })
}

/// What a CDN phase asks for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "workload", rename_all = "snake_case")]
pub enum CdnWorkload {
    /// Independent requests for keys drawn by Zipf popularity.
    Zipf {
        /// Key space (ranks 1..=keys).
        keys: u64,
        /// Skew (0 = uniform).
        zipf_exponent: f64,
    },
    /// Viewers: each lane picks a video by popularity and asks for its segments in order, then the next video.
    Video {
        /// Videos.
        videos: u64,
        /// Segments per video.
        segments: u32,
        /// Popularity skew of the videos.
        zipf_exponent: f64,
    },
    /// All requests of one period ask for the same key, new (cold) each period.
    Storm {
        /// Period length.
        period_ms: u64,
    },
}

impl CdnWorkload {
    /// The name a profile gives it (`workload = "..."`), also used in results.
    pub fn name(&self) -> &'static str {
        match self {
            CdnWorkload::Zipf { .. } => "zipf",
            CdnWorkload::Video { .. } => "video",
            CdnWorkload::Storm { .. } => "storm",
        }
    }
}

/// A validated `[phases.cdn]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CdnPlan {
    /// The request pattern.
    #[serde(flatten)]
    pub workload: CdnWorkload,
    /// Every path starts with this.
    pub path_prefix: String,
    /// Latency the origin adds to `path_prefix` during the phase.
    pub origin_latency_ms: Option<u64>,
    /// Seed of the key draws.
    pub seed: u64,
}

/// Most keys (or videos) a CDN phase may use.
pub const MAX_CDN_KEYS: u64 = 1_000_000_000;
/// Most storm periods (cold keys) one phase may have: each is checked at the origin afterwards.
pub const MAX_STORM_KEYS: f64 = 100_000.0;

fn resolve_cdn(
    f: &str,
    c: &CdnSection,
    phase_seed: u64,
    duration_s: f64,
) -> Result<CdnPlan, ProfileError> {
    let workload = c.workload.as_deref().unwrap_or("zipf");
    let only = |k: &str, set: bool, for_: &str| -> Result<(), ProfileError> {
        if set {
            Err(ProfileError::invalid(
                format!("{f}.{k}"),
                format!("only for workload = {for_}"),
            ))
        } else {
            Ok(())
        }
    };
    let exponent = || -> Result<f64, ProfileError> {
        let e = c.zipf_exponent.unwrap_or(1.0);
        if e.is_finite() && (0.0..=10.0).contains(&e) {
            Ok(e)
        } else {
            Err(ProfileError::invalid(
                format!("{f}.zipf_exponent"),
                format!("must be within 0..=10 (0 = uniform), got {e}"),
            ))
        }
    };
    let keys = |default: u64| -> Result<u64, ProfileError> {
        let k = c.keys.unwrap_or(default);
        if (1..=MAX_CDN_KEYS).contains(&k) {
            Ok(k)
        } else {
            Err(ProfileError::invalid(
                format!("{f}.keys"),
                format!("must be 1..={MAX_CDN_KEYS}, got {k}"),
            ))
        }
    };
    let (workload, default_prefix) = match workload {
        "zipf" => {
            only("segments", c.segments.is_some(), "\"video\"")?;
            only("storm_period_ms", c.storm_period_ms.is_some(), "\"storm\"")?;
            (
                CdnWorkload::Zipf {
                    keys: keys(10_000)?,
                    zipf_exponent: exponent()?,
                },
                "/static/",
            )
        }
        "video" => {
            only("storm_period_ms", c.storm_period_ms.is_some(), "\"storm\"")?;
            let segments = c.segments.unwrap_or(100);
            if !(1..=1_000_000).contains(&segments) {
                return Err(ProfileError::invalid(
                    format!("{f}.segments"),
                    format!("must be 1..=1000000, got {segments}"),
                ));
            }
            (
                CdnWorkload::Video {
                    videos: keys(100)?,
                    segments,
                    zipf_exponent: exponent()?,
                },
                "/video/",
            )
        }
        "storm" => {
            for (k, set) in [
                ("keys", c.keys.is_some()),
                ("zipf_exponent", c.zipf_exponent.is_some()),
                ("segments", c.segments.is_some()),
            ] {
                only(k, set, "\"zipf\" or \"video\"")?;
            }
            let period_ms = c.storm_period_ms.unwrap_or(200);
            if !(1..=3_600_000).contains(&period_ms) {
                return Err(ProfileError::invalid(
                    format!("{f}.storm_period_ms"),
                    format!("must be 1..=3600000, got {period_ms}"),
                ));
            }
            if duration_s * 1000.0 / period_ms as f64 > MAX_STORM_KEYS {
                return Err(ProfileError::invalid(
                    format!("{f}.storm_period_ms"),
                    format!(
                        "{period_ms} ms over {duration_s} s makes more than {MAX_STORM_KEYS} cold keys; use a longer period"
                    ),
                ));
            }
            (CdnWorkload::Storm { period_ms }, "/static/storm-")
        }
        other => {
            return Err(ProfileError::invalid(
                format!("{f}.workload"),
                format!("`{other}`: use \"zipf\", \"video\" or \"storm\""),
            ));
        }
    };
    let path_prefix = c
        .path_prefix
        .clone()
        .unwrap_or_else(|| default_prefix.to_string());
    if !path_prefix.starts_with('/')
        || path_prefix.len() > 256
        || !path_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%'))
    {
        return Err(ProfileError::invalid(
            format!("{f}.path_prefix"),
            format!(
                "`{path_prefix}` must start with '/', be at most 256 printable ASCII characters and hold no '?', '#' or '%'"
            ),
        ));
    }
    if let Some(ms) = c.origin_latency_ms
        && ms > 60_000
    {
        return Err(ProfileError::invalid(
            format!("{f}.origin_latency_ms"),
            format!("must be at most 60000, got {ms}"),
        ));
    }
    Ok(CdnPlan {
        workload,
        path_prefix,
        origin_latency_ms: c.origin_latency_ms,
        seed: c.seed.unwrap_or(phase_seed),
    })
}

/// A named target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetPlan {
    /// Name used by phases.
    pub name: String,
    /// Built-in or external.
    #[serde(flatten)]
    pub kind: TargetKind,
}

/// Load model of a phase.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum LoadModel {
    /// Arrivals at a rate, independent of responses; latency timed from the intended send.
    Open {
        /// Rate at the phase start.
        rate_rps: f64,
        /// Rate at the phase end (equal to `rate_rps` when constant).
        end_rate_rps: f64,
        /// Spacing of arrivals.
        arrival: Arrival,
        /// Which lane sends an arrival. Results written before this field existed were all `lane`.
        #[serde(default)]
        dispatch: Dispatch,
    },
    /// A fixed number of users, each sending its next request after the previous response (and think time).
    Closed {
        /// Pause between a response and the next request.
        think_time_ms: f64,
    },
}

/// Arrival process of the open model.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Evenly spaced.
    Fixed,
    /// Exponential gaps (seeded).
    Poisson,
}

/// A profile value picked by name from `choices`; absent means the first. Refused with the field and the choices.
fn one_of<T: Copy>(
    field: String,
    given: Option<&str>,
    choices: &[(&str, T)],
) -> Result<T, ProfileError> {
    let Some(name) = given else {
        return Ok(choices[0].1);
    };
    match choices.iter().find(|(n, _)| *n == name) {
        Some((_, v)) => Ok(*v),
        None => {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            Err(ProfileError::invalid(
                field,
                format!("`{name}`: use {}", names.join(" or ")),
            ))
        }
    }
}

/// How the open model's arrivals are handed to lanes.
///
/// Why both: with `lane`, an arrival whose lane still waits for its previous response waits too, even when other
/// connections are idle, and that wait is counted (latency runs from the intended send). With Poisson arrivals a
/// lane's next arrival often comes soon (at 256 lanes and 28,000 requests/s, 5 % of a lane's gaps are under 0.5 ms),
/// so the loader's own lane assignment adds to the tail (`tests/instrument.rs`: against a server that holds every
/// response 3 ms, 10 % of lane arrivals were late and the p99 was 7.4 ms; with `pool`, 1 in 3,200 and 3.3 ms).
/// `pool` waits only when every lane is busy, a real limit of the loader's concurrency, counted the same way.
/// `lane` stays the default so that results keep their meaning across versions, and is wrk2's model.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Dispatch {
    /// Each lane gets its own arrival stream (the phase's rate split evenly) and sends only on its connection.
    #[default]
    Lane,
    /// One arrival stream per loader process; the next arrival goes to whichever lane is idle first.
    Pool,
}

impl Dispatch {
    /// The profile and result spelling.
    pub fn name(self) -> &'static str {
        match self {
            Dispatch::Lane => "lane",
            Dispatch::Pool => "pool",
        }
    }
}

/// HTTP version spoken to the target.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1 keep-alive: one request in flight per connection.
    #[serde(rename = "1.1")]
    Http1,
    /// HTTP/2 prior knowledge (cleartext): many lanes share a connection.
    #[serde(rename = "2")]
    Http2,
}

/// One request of the mix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestPlan {
    /// Name in reports.
    pub name: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Weight in the mix.
    pub weight: u32,
    /// Body.
    pub body: String,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
}

impl RequestPlan {
    /// `GET /`, the default mix.
    pub fn get_root() -> RequestPlan {
        RequestPlan {
            name: "GET /".into(),
            method: "GET".into(),
            path: "/".into(),
            weight: 1,
            body: String::new(),
            headers: BTreeMap::new(),
        }
    }
}

/// A validated phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhasePlan {
    /// Unique name.
    pub name: String,
    /// Target name.
    pub target: String,
    /// Excluded from results and SLOs.
    pub warmup: bool,
    /// Load model.
    pub load: LoadModel,
    /// Length.
    pub duration_s: f64,
    /// TCP connections.
    pub connections: usize,
    /// Lanes (closed: users; open: independent arrival streams), spread over the connections.
    pub users: usize,
    /// HTTP version.
    pub http: HttpVersion,
    /// Seed.
    pub seed: u64,
    /// Cap on this phase's requests.
    pub max_requests: u64,
    /// Request mix.
    pub requests: Vec<RequestPlan>,
    /// SLOs that apply to this phase.
    pub slo: SloSection,
    /// The ledger scenario, when the phase runs it (then `requests` only describes `POST /transfers`).
    #[serde(default)]
    pub ledger: Option<LedgerPlan>,
    /// The CDN scenario, when the phase runs it (then `requests` only describes the generated `GET`s).
    #[serde(default)]
    pub cdn: Option<CdnPlan>,
    /// The OIDC scenario, when the phase runs it (then `requests` only describes `POST {token endpoint}`).
    #[serde(default)]
    pub oidc: Option<OidcPlan>,
}

/// The OIDC flows loadgen can drive.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OidcFlow {
    /// `grant_type=client_credentials` (RFC 6749 §4.4): one request, one access token.
    ClientCredentials,
    /// Token introspection (RFC 7662): every request asks the introspection endpoint about one access token that
    /// loadgen obtained (client_credentials) before the phase; it must stay active throughout, rotations included.
    Introspect,
    /// The authorization code flow with PKCE S256 (RFC 6749 §4.1, RFC 7636, OpenID Connect Core §3.1) for a user
    /// who logged in once before the phase (one session, as single sign-on gives): every arrival is one flow,
    /// `GET /authorize` (answered with a redirect carrying the code) then `POST /token`; an ID token comes back
    /// with the access token.
    AuthorizationCode,
    /// `grant_type=refresh_token` with rotation: each lane holds one refresh token (obtained through the
    /// authorization code flow before the phase) and every request trades it for a new one.
    RefreshToken,
    /// Token exchange (RFC 8693): every request exchanges one subject token (an access token obtained before the
    /// phase from the subject issuer, which may be another target: federation) for a token of the target issuer.
    TokenExchange,
}

impl OidcFlow {
    /// The name profiles and results use.
    pub fn name(self) -> &'static str {
        match self {
            OidcFlow::ClientCredentials => "client_credentials",
            OidcFlow::Introspect => "introspect",
            OidcFlow::AuthorizationCode => "authorization_code",
            OidcFlow::RefreshToken => "refresh_token",
            OidcFlow::TokenExchange => "token_exchange",
        }
    }

    /// Whether the flow acts for a logged-in user (and needs the issuer's login form before the phase).
    pub fn needs_user(self) -> bool {
        matches!(self, OidcFlow::AuthorizationCode | OidcFlow::RefreshToken)
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OidcAuth {
    /// `client_secret_basic`: HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post,
}

/// The built-in issuer's load-test client (registered by the embedded configuration of `loadgen serve oidc`;
/// `loadgen/tests/oidc_scenario.rs` fails if the two drift apart).
pub const OIDC_BUILTIN_CLIENT_ID: &str = "bench-client";
/// Its secret: a published test credential, for loopback benchmarks only.
pub const OIDC_BUILTIN_CLIENT_SECRET: &str = "bench-secret-0123456789abcdef";
/// The built-in issuer's confidential web client (authorization code and refresh token grants).
pub const OIDC_BUILTIN_WEB_CLIENT_ID: &str = "web-app";
/// Its secret (a published test credential).
pub const OIDC_BUILTIN_WEB_CLIENT_SECRET: &str = "web-secret-0123456789abcdef";
/// Its registered redirect URI.
pub const OIDC_BUILTIN_REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// The built-in issuer's test user.
pub const OIDC_BUILTIN_USERNAME: &str = "alice";
/// Its password (a published test credential).
pub const OIDC_BUILTIN_PASSWORD: &str = "alice-password";
/// Most tokens one loader process may keep for verification (each is about 1 KiB).
pub const MAX_OIDC_VERIFIED: u64 = 100_000;
/// Most key rotations one phase may ask for.
pub const MAX_OIDC_ROTATIONS: usize = 100;
/// Longest client id, secret, scope or resource a profile may give (bytes).
pub const MAX_OIDC_PARAM_BYTES: usize = 1024;

/// A validated `[phases.oidc]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OidcPlan {
    /// The flow.
    pub flow: OidcFlow,
    /// The client.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// Client authentication method.
    pub auth: OidcAuth,
    /// The `scope` parameter, if any.
    pub scope: Option<String>,
    /// The `resource` parameter, if any.
    pub resource: Option<String>,
    /// authorization_code / refresh_token: the user who logs in before the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Their password (published as `[redacted]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// authorization_code / refresh_token: the redirect URI the flow names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// token_exchange: the target whose issuer mints the subject token (`None`: the phase's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_target: Option<String>,
    /// token_exchange: the client that obtains the subject token, and its secret (published as `[redacted]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_client: Option<(String, String)>,
    /// token_exchange: the `resource` of the subject token request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_resource: Option<String>,
    /// token_exchange: the `audience` parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Verify one token in this many (0 = none).
    pub verify_every: u64,
    /// Most tokens one loader process keeps for verification.
    pub max_verified: u64,
    /// JWKS re-read period in each loader process.
    pub jwks_refresh_ms: u64,
    /// Key rotations, as offsets into the phase, ascending.
    pub rotate_at_s: Vec<f64>,
}

fn resolve_oidc(f: &str, o: &OidcSection, duration_s: f64) -> Result<OidcPlan, ProfileError> {
    let flow = match o.flow.as_deref().unwrap_or("client_credentials") {
        "client_credentials" => OidcFlow::ClientCredentials,
        "introspect" => OidcFlow::Introspect,
        "authorization_code" => OidcFlow::AuthorizationCode,
        "refresh_token" => OidcFlow::RefreshToken,
        "token_exchange" => OidcFlow::TokenExchange,
        other => {
            return Err(ProfileError::invalid(
                format!("{f}.flow"),
                format!(
                    "`{other}`: use \"client_credentials\", \"introspect\", \"authorization_code\", \"refresh_token\" or \"token_exchange\""
                ),
            ));
        }
    };
    if flow != OidcFlow::TokenExchange {
        for (k, set) in [
            ("subject_target", o.subject_target.is_some()),
            ("subject_client_id", o.subject_client_id.is_some()),
            ("subject_client_secret", o.subject_client_secret.is_some()),
            ("subject_resource", o.subject_resource.is_some()),
            ("audience", o.audience.is_some()),
        ] {
            if set {
                return Err(ProfileError::invalid(
                    format!("{f}.{k}"),
                    "only for flow = \"token_exchange\"",
                ));
            }
        }
    }
    if !flow.needs_user() {
        for (k, set) in [
            ("username", o.username.is_some()),
            ("password", o.password.is_some()),
            ("redirect_uri", o.redirect_uri.is_some()),
        ] {
            if set {
                return Err(ProfileError::invalid(
                    format!("{f}.{k}"),
                    "only for flow = \"authorization_code\" or \"refresh_token\" (the flows with a user)",
                ));
            }
        }
    }
    if flow == OidcFlow::Introspect {
        // Introspection issues no tokens, so there is nothing to sample.
        for (k, set) in [
            ("verify_every", o.verify_every.is_some()),
            ("max_verified", o.max_verified.is_some()),
            ("jwks_refresh_ms", o.jwks_refresh_ms.is_some()),
        ] {
            if set {
                return Err(ProfileError::invalid(
                    format!("{f}.{k}"),
                    "only for flow = \"client_credentials\" (introspection issues no tokens to verify)",
                ));
            }
        }
    }
    let auth = match o.auth.as_deref().unwrap_or("basic") {
        "basic" => OidcAuth::Basic,
        "post" => OidcAuth::Post,
        other => {
            return Err(ProfileError::invalid(
                format!("{f}.auth"),
                format!(
                    "`{other}`: use \"basic\" (client_secret_basic) or \"post\" (client_secret_post)"
                ),
            ));
        }
    };
    let param = |k: &str, v: Option<&String>| -> Result<(), ProfileError> {
        match v {
            Some(v)
                if v.is_empty()
                    || v.len() > MAX_OIDC_PARAM_BYTES
                    || v.chars().any(char::is_control) =>
            {
                Err(ProfileError::invalid(
                    format!("{f}.{k}"),
                    format!("must be 1..={MAX_OIDC_PARAM_BYTES} bytes without control characters"),
                ))
            }
            _ => Ok(()),
        }
    };
    param("client_id", o.client_id.as_ref())?;
    param("client_secret", o.client_secret.as_ref())?;
    param("scope", o.scope.as_ref())?;
    param("resource", o.resource.as_ref())?;
    param("username", o.username.as_ref())?;
    param("password", o.password.as_ref())?;
    param("redirect_uri", o.redirect_uri.as_ref())?;
    param("subject_client_id", o.subject_client_id.as_ref())?;
    param("subject_client_secret", o.subject_client_secret.as_ref())?;
    param("subject_resource", o.subject_resource.as_ref())?;
    param("audience", o.audience.as_ref())?;
    let subject_client = match (&o.subject_client_id, &o.subject_client_secret) {
        _ if flow != OidcFlow::TokenExchange => None,
        (None, None) => Some((
            OIDC_BUILTIN_CLIENT_ID.to_string(),
            OIDC_BUILTIN_CLIENT_SECRET.to_string(),
        )),
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        (None, Some(_)) => {
            return Err(ProfileError::invalid(
                format!("{f}.subject_client_secret"),
                "give subject_client_id too",
            ));
        }
        (Some(_), None) => {
            return Err(ProfileError::invalid(
                format!("{f}.subject_client_secret"),
                "a subject_client_id needs its subject_client_secret",
            ));
        }
    };
    if let Some(r) = &o.redirect_uri
        && HttpUrl::parse(r).is_err()
    {
        return Err(ProfileError::invalid(
            format!("{f}.redirect_uri"),
            format!("`{r}` is not an http:// URL"),
        ));
    }
    if o.password.is_some() && o.username.is_none() {
        return Err(ProfileError::invalid(
            format!("{f}.password"),
            "give username too (the default password belongs to the default user)",
        ));
    }
    if o.client_secret.is_some() && o.client_id.is_none() {
        return Err(ProfileError::invalid(
            format!("{f}.client_secret"),
            "give client_id too (the default secret belongs to the default client)",
        ));
    }
    let (client_id, client_secret) = match (&o.client_id, &o.client_secret) {
        (None, _) if flow.needs_user() => (
            OIDC_BUILTIN_WEB_CLIENT_ID.to_string(),
            OIDC_BUILTIN_WEB_CLIENT_SECRET.to_string(),
        ),
        (None, _) => (
            OIDC_BUILTIN_CLIENT_ID.to_string(),
            OIDC_BUILTIN_CLIENT_SECRET.to_string(),
        ),
        (Some(id), Some(secret)) => (id.clone(), secret.clone()),
        (Some(_), None) => {
            return Err(ProfileError::invalid(
                format!("{f}.client_secret"),
                "a client_id needs its client_secret",
            ));
        }
    };
    let (username, password, redirect_uri) = if flow.needs_user() {
        let (u, p) = match (&o.username, &o.password) {
            (None, _) => (
                OIDC_BUILTIN_USERNAME.to_string(),
                OIDC_BUILTIN_PASSWORD.to_string(),
            ),
            (Some(u), Some(p)) => (u.clone(), p.clone()),
            (Some(_), None) => {
                return Err(ProfileError::invalid(
                    format!("{f}.password"),
                    "a username needs its password",
                ));
            }
        };
        let r = o
            .redirect_uri
            .clone()
            .unwrap_or_else(|| OIDC_BUILTIN_REDIRECT_URI.to_string());
        (Some(u), Some(p), Some(r))
    } else {
        (None, None, None)
    };
    // The user flows ask for an ID token (`openid`) by default; the refresh flow also for `offline_access`.
    let scope = match (flow, &o.scope) {
        (_, Some(s)) => Some(s.clone()),
        (OidcFlow::AuthorizationCode, None) => Some("openid profile".to_string()),
        (OidcFlow::RefreshToken, None) => Some("openid offline_access".to_string()),
        _ => None,
    };
    let verify_every = match flow {
        OidcFlow::Introspect => 0,
        _ => o.verify_every.unwrap_or(20),
    };
    let max_verified = o.max_verified.unwrap_or(5000);
    if max_verified > MAX_OIDC_VERIFIED {
        return Err(ProfileError::invalid(
            format!("{f}.max_verified"),
            format!("must be 0..={MAX_OIDC_VERIFIED}, got {max_verified}"),
        ));
    }
    let jwks_refresh_ms = o.jwks_refresh_ms.unwrap_or(1000);
    if !(100..=3_600_000).contains(&jwks_refresh_ms) {
        return Err(ProfileError::invalid(
            format!("{f}.jwks_refresh_ms"),
            format!("must be 100..=3600000, got {jwks_refresh_ms}"),
        ));
    }
    if o.rotate_at_s.len() > MAX_OIDC_ROTATIONS {
        return Err(ProfileError::invalid(
            format!("{f}.rotate_at_s"),
            format!("at most {MAX_OIDC_ROTATIONS} rotations per phase"),
        ));
    }
    for (k, &t) in o.rotate_at_s.iter().enumerate() {
        if !t.is_finite() || t <= 0.0 || t >= duration_s {
            return Err(ProfileError::invalid(
                format!("{f}.rotate_at_s[{k}]"),
                format!("must lie inside the phase (0 < t < {duration_s}), got {t}"),
            ));
        }
        if k > 0 && t <= o.rotate_at_s[k - 1] {
            return Err(ProfileError::invalid(
                format!("{f}.rotate_at_s[{k}]"),
                "rotations must be given in ascending order",
            ));
        }
    }
    Ok(OidcPlan {
        flow,
        client_id,
        client_secret,
        auth,
        scope,
        resource: o.resource.clone(),
        username,
        password,
        redirect_uri,
        subject_target: o.subject_target.clone(),
        subject_client,
        subject_resource: o.subject_resource.clone(),
        audience: o.audience.clone(),
        verify_every,
        max_verified,
        jwks_refresh_ms,
        rotate_at_s: o.rotate_at_s.clone(),
    })
}

/// The paths of the built-in issuer's token and introspection endpoints; an external issuer's come from its
/// discovery document.
pub const OIDC_TOKEN_PATH: &str = "/token";
/// See [`OIDC_TOKEN_PATH`].
pub const OIDC_INTROSPECT_PATH: &str = "/introspect";

/// The request an OIDC phase sends, as shown in the plan (the body is built from the scenario).
pub fn oidc_request(o: &OidcPlan) -> RequestPlan {
    let (name, path) = match o.flow {
        OidcFlow::ClientCredentials => ("POST token (client_credentials)", OIDC_TOKEN_PATH),
        OidcFlow::Introspect => ("POST introspect", OIDC_INTROSPECT_PATH),
        OidcFlow::AuthorizationCode => (
            "GET authorize + POST token (authorization_code)",
            OIDC_TOKEN_PATH,
        ),
        OidcFlow::RefreshToken => ("POST token (refresh_token)", OIDC_TOKEN_PATH),
        OidcFlow::TokenExchange => ("POST token (token_exchange)", OIDC_TOKEN_PATH),
    };
    RequestPlan {
        name: name.into(),
        method: "POST".into(),
        path: path.into(),
        weight: 1,
        body: String::new(),
        headers: BTreeMap::from([(
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )]),
    }
}

/// Most accounts a ledger phase may use.
pub const MAX_LEDGER_ACCOUNTS: u32 = 1_000_000;
/// Largest transfer amount a ledger phase may ask for (sums stay far from any overflow).
pub const MAX_LEDGER_AMOUNT: u64 = 1_000_000_000_000_000;
/// Most currencies a ledger phase may use.
pub const MAX_LEDGER_CURRENCIES: usize = 64;
/// Longest pending timeout a ledger phase may ask for: the balance check waits for it after the phase.
pub const MAX_LEDGER_PENDING_TIMEOUT_S: u32 = 60;
/// Longest linked chain a ledger phase sends.
pub const MAX_LEDGER_CHAIN: u32 = 16;
/// Extra wall time a ledger phase may take for account set-up and verification, on top of its duration.
pub const LEDGER_PHASE_OVERHEAD_S: f64 = 30.0;

/// A validated `[phases.ledger]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LedgerPlan {
    /// Accounts (at least two per currency).
    pub accounts: u32,
    /// Currencies; account `i` has `currencies[i % len]`.
    pub currencies: Vec<String>,
    /// Transfers per request.
    pub batch_size: u32,
    /// Zipf exponent of the account draw (0 = uniform).
    pub zipf_exponent: f64,
    /// Share of new transfers created pending.
    pub two_phase_ratio: f64,
    /// Share of pendings voided instead of posted.
    pub void_ratio: f64,
    /// Share of posts and voids sent with debit, credit and currency zero (the ledger fills them in).
    pub bare_resolve_ratio: f64,
    /// Seconds until a pending expires (0 = never).
    pub pending_timeout_s: u32,
    /// Share of batch slots (after the first) that start a linked chain.
    pub linked_ratio: f64,
    /// Longest linked chain.
    pub linked_chain_max: u32,
    /// Share of chains carrying one item the ledger must refuse.
    pub linked_fail_ratio: f64,
    /// Largest amount in minor units.
    pub amount_max: u64,
    /// Check the invariants after the phase.
    pub verify: bool,
    /// Seed of the transfer generator.
    pub seed: u64,
}

fn resolve_ledger(f: &str, l: &LedgerSection, phase_seed: u64) -> Result<LedgerPlan, ProfileError> {
    let currencies = l.currencies.clone().unwrap_or_else(|| vec!["USD".into()]);
    if currencies.is_empty() || currencies.len() > MAX_LEDGER_CURRENCIES {
        return Err(ProfileError::invalid(
            format!("{f}.currencies"),
            format!("must list 1..={MAX_LEDGER_CURRENCIES} currencies"),
        ));
    }
    for (k, c) in currencies.iter().enumerate() {
        if currency_code(c).is_none() {
            return Err(ProfileError::invalid(
                format!("{f}.currencies[{k}]"),
                format!("`{c}` is not three ASCII capital letters"),
            ));
        }
        if currencies[..k].contains(c) {
            return Err(ProfileError::invalid(
                format!("{f}.currencies[{k}]"),
                format!("`{c}` is listed twice"),
            ));
        }
    }
    let accounts = l.accounts.unwrap_or(10_000);
    let min_accounts = 2 * currencies.len() as u32;
    if !(min_accounts..=MAX_LEDGER_ACCOUNTS).contains(&accounts) {
        return Err(ProfileError::invalid(
            format!("{f}.accounts"),
            format!(
                "must be {min_accounts}..={MAX_LEDGER_ACCOUNTS} (two accounts per currency at least), got {accounts}"
            ),
        ));
    }
    let batch_size = l.batch_size.unwrap_or(1);
    if batch_size == 0 || batch_size as usize > MAX_BATCH {
        return Err(ProfileError::invalid(
            format!("{f}.batch_size"),
            format!("must be 1..={MAX_BATCH}, got {batch_size}"),
        ));
    }
    let zipf_exponent = l.zipf_exponent.unwrap_or(1.0);
    if !zipf_exponent.is_finite() || !(0.0..=10.0).contains(&zipf_exponent) {
        return Err(ProfileError::invalid(
            format!("{f}.zipf_exponent"),
            format!("must be within 0..=10 (0 = uniform), got {zipf_exponent}"),
        ));
    }
    let ratio = |k: &str, v: Option<f64>, default: f64| -> Result<f64, ProfileError> {
        let v = v.unwrap_or(default);
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(ProfileError::invalid(
                format!("{f}.{k}"),
                format!("must be within 0..=1, got {v}"),
            ))
        }
    };
    let two_phase_ratio = ratio("two_phase_ratio", l.two_phase_ratio, 0.0)?;
    let void_ratio = ratio("void_ratio", l.void_ratio, 0.1)?;
    let bare_resolve_ratio = ratio("bare_resolve_ratio", l.bare_resolve_ratio, 0.0)?;
    let linked_ratio = ratio("linked_ratio", l.linked_ratio, 0.0)?;
    let linked_fail_ratio = ratio("linked_fail_ratio", l.linked_fail_ratio, 0.1)?;
    let pending_timeout_s = l.pending_timeout_s.unwrap_or(0);
    if pending_timeout_s > MAX_LEDGER_PENDING_TIMEOUT_S {
        return Err(ProfileError::invalid(
            format!("{f}.pending_timeout_s"),
            format!(
                "must be 0..={MAX_LEDGER_PENDING_TIMEOUT_S} (0 = never; the balance check waits this long after the phase), got {pending_timeout_s}"
            ),
        ));
    }
    let linked_chain_max = l.linked_chain_max.unwrap_or(4);
    if !(2..=MAX_LEDGER_CHAIN).contains(&linked_chain_max) {
        return Err(ProfileError::invalid(
            format!("{f}.linked_chain_max"),
            format!("must be 2..={MAX_LEDGER_CHAIN}, got {linked_chain_max}"),
        ));
    }
    if linked_ratio > 0.0 && batch_size < 3 {
        return Err(ProfileError::invalid(
            format!("{f}.linked_ratio"),
            format!(
                "needs batch_size >= 3 (a chain never starts at a batch's first slot), got batch_size {batch_size}"
            ),
        ));
    }
    let amount_max = l.amount_max.unwrap_or(10_000);
    if amount_max == 0 || amount_max > MAX_LEDGER_AMOUNT {
        return Err(ProfileError::invalid(
            format!("{f}.amount_max"),
            format!("must be 1..={MAX_LEDGER_AMOUNT}, got {amount_max}"),
        ));
    }
    Ok(LedgerPlan {
        accounts,
        currencies,
        batch_size,
        zipf_exponent,
        two_phase_ratio,
        void_ratio,
        bare_resolve_ratio,
        pending_timeout_s,
        linked_ratio,
        linked_chain_max,
        linked_fail_ratio,
        amount_max,
        verify: l.verify.unwrap_or(true),
        seed: l.seed.unwrap_or(phase_seed),
    })
}

/// The request a ledger phase sends, as shown in the plan (the bodies are generated per send).
pub fn ledger_request() -> RequestPlan {
    RequestPlan {
        name: "POST /transfers".into(),
        method: "POST".into(),
        path: "/transfers".into(),
        weight: 1,
        body: String::new(),
        headers: BTreeMap::from([(
            "content-type".to_string(),
            "application/octet-stream".to_string(),
        )]),
    }
}

/// The request a CDN phase sends, as shown in the plan (paths are generated per send).
pub fn cdn_request(c: &CdnPlan) -> RequestPlan {
    let kind = c.workload.name();
    RequestPlan {
        name: format!("GET {} ({kind})", c.path_prefix),
        method: "GET".into(),
        path: c.path_prefix.clone(),
        weight: 1,
        body: String::new(),
        headers: BTreeMap::new(),
    }
}

impl PhasePlan {
    /// Requests the phase is expected to send (open model), or `None` for closed.
    pub fn expected_requests(&self) -> Option<f64> {
        match self.load {
            LoadModel::Open {
                rate_rps,
                end_rate_rps,
                ..
            } => Some((rate_rps + end_rate_rps) / 2.0 * self.duration_s),
            LoadModel::Closed { .. } => None,
        }
    }

    /// Short name of the model.
    pub fn model_name(&self) -> &'static str {
        match self.load {
            LoadModel::Open { .. } => "open",
            LoadModel::Closed { .. } => "closed",
        }
    }

    /// Mean offered rate over the phase (open model).
    pub fn offered_rate_rps(&self) -> Option<f64> {
        match self.load {
            LoadModel::Open {
                rate_rps,
                end_rate_rps,
                ..
            } => Some((rate_rps + end_rate_rps) / 2.0),
            LoadModel::Closed { .. } => None,
        }
    }
}

/// Environment facts validation depends on, passed in so tests can vary them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// Core numbers this process may run on (its affinity mask), ascending.
    pub allowed_cpus: Vec<usize>,
}

impl Env {
    /// The real environment: the cores in this process's affinity mask (under `taskset -c 2,3` that is [2, 3]).
    pub fn detect() -> Env {
        let allowed = refbench_common::cpu::current_affinity().unwrap_or_default();
        if allowed.is_empty() {
            Env::cores(std::thread::available_parallelism().map_or(1, |n| n.get()))
        } else {
            Env {
                allowed_cpus: allowed,
            }
        }
    }

    /// Cores 0..n, for tests.
    pub fn cores(n: usize) -> Env {
        Env {
            allowed_cpus: (0..n.max(1)).collect(),
        }
    }
}

fn positive(field: &str, v: f64, max: f64) -> Result<f64, ProfileError> {
    if !v.is_finite() || v <= 0.0 {
        return Err(ProfileError::invalid(
            field,
            format!("must be a positive number, got {v}"),
        ));
    }
    if v > max {
        return Err(ProfileError::invalid(
            field,
            format!("must be at most {max}, got {v}"),
        ));
    }
    Ok(v)
}

fn check_name(field: &str, name: &str) -> Result<(), ProfileError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ProfileError::invalid(
            field,
            format!("`{name}` must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// True when every address `host:port` resolves to is loopback.
pub fn is_loopback_host(host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// Parsed pieces of an `http://host:port/prefix` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host as written (brackets kept for IPv6).
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub prefix: String,
}

impl HttpUrl {
    /// `host[:port]` as a Host header carries it (the port left out when it is 80).
    pub fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Parses a plain-HTTP base URL; refuses anything else with a reason.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err("https targets are not supported yet: use http:// (h2 is spoken with prior knowledge)".into());
        } else {
            return Err(format!("`{url}` is not an http:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("`{url}` has no usable host"));
        }
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            let end = stripped
                .find(']')
                .ok_or_else(|| format!("`{url}`: unclosed '['"))?;
            let host = &authority[..end + 2];
            let after = &stripped[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("`{url}`: bad port `{p}`"))?,
                None if after.is_empty() => 80,
                None => return Err(format!("`{url}`: junk after host")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("`{url}`: bad port `{p}`"))?,
                ),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(format!("`{url}` has no host"));
        }
        if !host.starts_with('[') && host.contains(':') {
            return Err(format!(
                "`{url}`: an IPv6 address must be in brackets, e.g. http://[::1]:8080"
            ));
        }
        if port == 0 {
            return Err(format!("`{url}`: port 0 is not a destination"));
        }
        Ok(HttpUrl {
            host,
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn resolve_requests(
    field: &str,
    reqs: Option<&Vec<RequestSection>>,
) -> Result<Vec<RequestPlan>, ProfileError> {
    let Some(reqs) = reqs else {
        return Ok(vec![RequestPlan::get_root()]);
    };
    if reqs.is_empty() {
        return Err(ProfileError::invalid(
            field,
            "must list at least one request",
        ));
    }
    if reqs.len() > 1000 {
        return Err(ProfileError::invalid(
            field,
            "at most 1000 requests in a mix",
        ));
    }
    let mut out = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let method = r
            .method
            .clone()
            .unwrap_or_else(|| "GET".into())
            .to_ascii_uppercase();
        if !is_token(&method) {
            return Err(ProfileError::invalid(
                format!("{f}.method"),
                format!("`{method}` is not an HTTP method"),
            ));
        }
        if !r.path.starts_with('/')
            || r.path
                .chars()
                .any(|c| c.is_ascii_whitespace() || c.is_control())
        {
            return Err(ProfileError::invalid(
                format!("{f}.path"),
                format!(
                    "`{}` must start with '/' and contain no spaces or control characters",
                    r.path
                ),
            ));
        }
        let weight = r.weight.unwrap_or(1);
        if weight == 0 || weight > 1_000_000 {
            return Err(ProfileError::invalid(
                format!("{f}.weight"),
                "must be 1..=1000000",
            ));
        }
        let body = r.body.clone().unwrap_or_default();
        if body.len() > MAX_REQUEST_BODY_BYTES {
            return Err(ProfileError::invalid(
                format!("{f}.body"),
                "larger than 16 MiB",
            ));
        }
        for (k, v) in &r.headers {
            if !is_token(k) {
                return Err(ProfileError::invalid(
                    format!("{f}.headers"),
                    format!("`{k}` is not a header name"),
                ));
            }
            if http::HeaderValue::from_str(v).is_err() {
                return Err(ProfileError::invalid(
                    format!("{f}.headers.{k}"),
                    "not a valid header value",
                ));
            }
        }
        let name = r
            .name
            .clone()
            .unwrap_or_else(|| format!("{method} {}", r.path));
        if name.trim().is_empty() {
            return Err(ProfileError::invalid(
                format!("{f}.name"),
                "must not be empty",
            ));
        }
        out.push(RequestPlan {
            name,
            method,
            path: r.path.clone(),
            weight,
            body,
            headers: r.headers.clone(),
        });
    }
    Ok(out)
}

fn check_slo(field: &str, s: &SloSection) -> Result<(), ProfileError> {
    let lat = [
        ("latency_us_p50", s.latency_us_p50),
        ("latency_us_p90", s.latency_us_p90),
        ("latency_us_p99", s.latency_us_p99),
        ("latency_us_p999", s.latency_us_p999),
        ("latency_us_max", s.latency_us_max),
    ];
    for (k, v) in lat {
        if let Some(v) = v {
            positive(&format!("{field}.{k}"), v, 3.6e9)?;
        }
    }
    for (k, v) in [
        ("error_ratio", s.error_ratio),
        ("achieved_ratio_min", s.achieved_ratio_min),
    ] {
        if let Some(v) = v
            && !(0.0..=1.0).contains(&v)
        {
            return Err(ProfileError::invalid(
                format!("{field}.{k}"),
                format!("must be within 0..=1, got {v}"),
            ));
        }
    }
    Ok(())
}

fn merge_slo(base: &SloSection, over: Option<&SloSection>) -> SloSection {
    let Some(o) = over else { return base.clone() };
    SloSection {
        latency_us_p50: o.latency_us_p50.or(base.latency_us_p50),
        latency_us_p90: o.latency_us_p90.or(base.latency_us_p90),
        latency_us_p99: o.latency_us_p99.or(base.latency_us_p99),
        latency_us_p999: o.latency_us_p999.or(base.latency_us_p999),
        latency_us_max: o.latency_us_max.or(base.latency_us_max),
        error_ratio: o.error_ratio.or(base.error_ratio),
        achieved_ratio_min: o.achieved_ratio_min.or(base.achieved_ratio_min),
    }
}

fn check_cpus(field: &str, cpus: &[usize], env: &Env) -> Result<(), ProfileError> {
    if cpus.is_empty() {
        return Err(ProfileError::invalid(field, "must name at least one core"));
    }
    if let Some(c) = cpus.iter().find(|c| !env.allowed_cpus.contains(c)) {
        return Err(ProfileError::invalid(
            field,
            format!(
                "core {c} is not available to this process (allowed: {:?})",
                env.allowed_cpus
            ),
        ));
    }
    Ok(())
}

/// Expands `steps_rps` and validates one phase section into one or more phase plans.
fn resolve_phase(
    i: usize,
    p: &PhaseSection,
    profile: &Profile,
    default_slo: &SloSection,
) -> Result<Vec<PhasePlan>, ProfileError> {
    let f = format!("phases[{i}]");
    check_name(&format!("{f}.name"), &p.name)?;
    if !profile.targets.contains_key(&p.target) {
        return Err(ProfileError::invalid(
            format!("{f}.target"),
            format!(
                "unknown target `{}` (defined: {})",
                p.target,
                profile.target_names()
            ),
        ));
    }
    let duration_s = positive(
        &format!("{f}.duration_s"),
        p.duration_s,
        MAX_PHASE_DURATION_S,
    )?;
    let http = match p.http.as_deref().unwrap_or("1.1") {
        "1.1" => HttpVersion::Http1,
        "2" => HttpVersion::Http2,
        other => {
            return Err(ProfileError::invalid(
                format!("{f}.http"),
                format!("`{other}`: use \"1.1\" or \"2\""),
            ));
        }
    };
    let connections = p.connections.unwrap_or(8);
    if connections == 0 || connections > MAX_CONNECTIONS {
        return Err(ProfileError::invalid(
            format!("{f}.connections"),
            format!("must be 1..={MAX_CONNECTIONS}"),
        ));
    }
    let users = p.users.unwrap_or(connections);
    if users == 0 || users > MAX_CONNECTIONS * 100 {
        return Err(ProfileError::invalid(
            format!("{f}.users"),
            "must be 1..=5000000",
        ));
    }
    match http {
        HttpVersion::Http1 if users != connections => {
            return Err(ProfileError::invalid(
                format!("{f}.users"),
                "with http = \"1.1\" each user owns one connection: leave `users` out or make it equal to `connections`",
            ));
        }
        HttpVersion::Http2 if users < connections => {
            return Err(ProfileError::invalid(
                format!("{f}.users"),
                "must be at least `connections` with http = \"2\"",
            ));
        }
        _ => {}
    }
    let seed = p.seed.unwrap_or(0x5eed_0000 + i as u64);
    let ledger = match &p.ledger {
        None => None,
        Some(l) => {
            if http != HttpVersion::Http1 {
                return Err(ProfileError::invalid(
                    format!("{f}.http"),
                    "the ledger scenario speaks HTTP/1.1 only: leave `http` out or set it to \"1.1\"",
                ));
            }
            if p.requests.is_some() {
                return Err(ProfileError::invalid(
                    format!("{f}.requests"),
                    "a ledger phase generates its own requests (POST /transfers): remove [[phases.requests]]",
                ));
            }
            Some(resolve_ledger(&format!("{f}.ledger"), l, seed)?)
        }
    };
    let cdn = match &p.cdn {
        None => None,
        Some(c) => {
            if ledger.is_some() {
                return Err(ProfileError::invalid(
                    format!("{f}.cdn"),
                    "a phase runs one scenario: give [phases.ledger] or [phases.cdn], not both",
                ));
            }
            if http != HttpVersion::Http1 {
                return Err(ProfileError::invalid(
                    format!("{f}.http"),
                    "the CDN scenario speaks HTTP/1.1 only: leave `http` out or set it to \"1.1\"",
                ));
            }
            if p.requests.is_some() {
                return Err(ProfileError::invalid(
                    format!("{f}.requests"),
                    "a CDN phase generates its own requests: remove [[phases.requests]]",
                ));
            }
            Some(resolve_cdn(&format!("{f}.cdn"), c, seed, duration_s)?)
        }
    };
    let oidc = match &p.oidc {
        None => None,
        Some(o) => {
            if ledger.is_some() || cdn.is_some() {
                return Err(ProfileError::invalid(
                    format!("{f}.oidc"),
                    "a phase runs one scenario: give one of [phases.ledger], [phases.cdn] or [phases.oidc]",
                ));
            }
            if http != HttpVersion::Http1 {
                return Err(ProfileError::invalid(
                    format!("{f}.http"),
                    "the OIDC scenario speaks HTTP/1.1 only: leave `http` out or set it to \"1.1\"",
                ));
            }
            if p.requests.is_some() {
                return Err(ProfileError::invalid(
                    format!("{f}.requests"),
                    "an OIDC phase generates its own requests (POST to the token endpoint): remove [[phases.requests]]",
                ));
            }
            let plan = resolve_oidc(&format!("{f}.oidc"), o, duration_s)?;
            if let Some(st) = &plan.subject_target
                && !profile.targets.contains_key(st)
            {
                return Err(ProfileError::invalid(
                    format!("{f}.oidc.subject_target"),
                    format!("no target `{st}`"),
                ));
            }
            Some(plan)
        }
    };
    let requests = match (&ledger, &cdn, &oidc) {
        (Some(_), _, _) => vec![ledger_request()],
        (_, Some(c), _) => vec![cdn_request(c)],
        (_, _, Some(o)) => vec![oidc_request(o)],
        _ => resolve_requests(&format!("{f}.requests"), p.requests.as_ref())?,
    };
    if let Some(s) = &p.slo {
        check_slo(&format!("{f}.slo"), s)?;
    }
    let slo = merge_slo(default_slo, p.slo.as_ref());
    let mut loads: Vec<(String, LoadModel)> = Vec::new();
    match p.model.as_str() {
        "open" => {
            if p.think_time_ms.is_some() {
                return Err(ProfileError::invalid(
                    format!("{f}.think_time_ms"),
                    "only for model = \"closed\"",
                ));
            }
            let arrival = one_of(
                format!("{f}.arrival"),
                p.arrival.as_deref(),
                &[("fixed", Arrival::Fixed), ("poisson", Arrival::Poisson)],
            )?;
            let dispatch = one_of(
                format!("{f}.dispatch"),
                p.dispatch.as_deref(),
                &[("lane", Dispatch::Lane), ("pool", Dispatch::Pool)],
            )?;
            match (&p.steps_rps, p.rate_rps) {
                (Some(_), Some(_)) | (Some(_), None) if p.ramp_to_rps.is_some() => {
                    return Err(ProfileError::invalid(
                        format!("{f}.ramp_to_rps"),
                        "cannot be combined with steps_rps",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(ProfileError::invalid(
                        format!("{f}.steps_rps"),
                        "give either rate_rps or steps_rps",
                    ));
                }
                (Some(steps), None) => {
                    if steps.is_empty() || steps.len() > 100 {
                        return Err(ProfileError::invalid(
                            format!("{f}.steps_rps"),
                            "must have 1..=100 steps",
                        ));
                    }
                    for (k, &r) in steps.iter().enumerate() {
                        positive(&format!("{f}.steps_rps[{k}]"), r, MAX_RATE_RPS)?;
                        loads.push((
                            format!("{}@{}rps", p.name, r),
                            LoadModel::Open {
                                rate_rps: r,
                                end_rate_rps: r,
                                arrival,
                                dispatch,
                            },
                        ));
                    }
                }
                (None, Some(r)) => {
                    let r = positive(&format!("{f}.rate_rps"), r, MAX_RATE_RPS)?;
                    let end = match p.ramp_to_rps {
                        Some(e) => positive(&format!("{f}.ramp_to_rps"), e, MAX_RATE_RPS)?,
                        None => r,
                    };
                    loads.push((
                        p.name.clone(),
                        LoadModel::Open {
                            rate_rps: r,
                            end_rate_rps: end,
                            arrival,
                            dispatch,
                        },
                    ));
                }
                (None, None) => {
                    return Err(ProfileError::invalid(
                        format!("{f}.rate_rps"),
                        "an open-model phase needs rate_rps (or steps_rps)",
                    ));
                }
            }
        }
        "closed" => {
            for (k, present) in [
                ("rate_rps", p.rate_rps.is_some()),
                ("ramp_to_rps", p.ramp_to_rps.is_some()),
                ("steps_rps", p.steps_rps.is_some()),
                ("arrival", p.arrival.is_some()),
                ("dispatch", p.dispatch.is_some()),
            ] {
                if present {
                    return Err(ProfileError::invalid(
                        format!("{f}.{k}"),
                        "only for model = \"open\"",
                    ));
                }
            }
            let think = p.think_time_ms.unwrap_or(0.0);
            if !think.is_finite() || !(0.0..=600_000.0).contains(&think) {
                return Err(ProfileError::invalid(
                    format!("{f}.think_time_ms"),
                    "must be within 0..=600000",
                ));
            }
            loads.push((
                p.name.clone(),
                LoadModel::Closed {
                    think_time_ms: think,
                },
            ));
        }
        other => {
            return Err(ProfileError::invalid(
                format!("{f}.model"),
                format!("`{other}`: use \"open\" or \"closed\""),
            ));
        }
    }
    let mut out = Vec::new();
    for (name, load) in loads {
        let mut plan = PhasePlan {
            name,
            target: p.target.clone(),
            warmup: p.warmup,
            load,
            duration_s,
            connections,
            users,
            http,
            seed,
            max_requests: 0,
            requests: requests.clone(),
            slo: slo.clone(),
            ledger: ledger.clone(),
            cdn: cdn.clone(),
            oidc: oidc.clone(),
        };
        // Open phases get a cap a little above what they should send, so a runaway schedule stops by itself.
        let default_cap = plan
            .expected_requests()
            .map_or(DEFAULT_MAX_REQUESTS, |e| (e * 1.1) as u64 + 1000);
        plan.max_requests = match p.max_requests {
            Some(0) => {
                return Err(ProfileError::invalid(
                    format!("{f}.max_requests"),
                    "must be positive",
                ));
            }
            Some(m) => m,
            None => default_cap,
        };
        out.push(plan);
    }
    Ok(out)
}

/// The targets a built-in target's argument names with `{url:NAME}` (replaced by that target's base URL when
/// loadgen starts it: e.g. an issuer that trusts another issuer started in the same run). `Err` for an unclosed
/// or empty reference.
pub fn url_refs(arg: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(at) = rest.find("{url:") {
        let after = &rest[at + 5..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{arg}`: `{{url:` without its closing `}}`"))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err(format!("`{arg}`: `{{url:}}` names no target"));
        }
        out.push(name);
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// Replaces every `{url:NAME}` in `arg` with `url(NAME)`.
pub fn substitute_urls(arg: &str, url: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find("{url:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 5..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{arg}`: `{{url:` without its closing `}}`"))?;
        let name = &after[..end];
        out.push_str(&url(name).ok_or_else(|| format!("`{arg}`: target `{name}` is not running"))?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl TargetKind {
    /// The targets this one's arguments name with `{url:NAME}` (they start first).
    pub fn depends_on(&self) -> Vec<String> {
        match self {
            TargetKind::Builtin { args, .. } => args
                .iter()
                .flat_map(|a| url_refs(a).unwrap_or_default())
                .map(String::from)
                .collect(),
            TargetKind::External { .. } => Vec::new(),
        }
    }
}

/// Validates a profile into a plan.
pub fn resolve(profile: &Profile, env: Env) -> Result<Plan, ProfileError> {
    check_name("name", &profile.name)?;
    if profile.targets.is_empty() {
        return Err(ProfileError::invalid(
            "targets",
            "define at least one target",
        ));
    }
    let mut targets = Vec::new();
    for (name, t) in &profile.targets {
        let f = format!("targets.{name}");
        check_name(&f, name)?;
        let kind = match (&t.builtin, &t.url) {
            (Some(system), None) => {
                if !BUILTIN_SYSTEMS.contains(&system.as_str()) {
                    return Err(ProfileError::invalid(
                        format!("{f}.builtin"),
                        format!(
                            "unknown system `{system}` (known: {})",
                            BUILTIN_SYSTEMS.join(", ")
                        ),
                    ));
                }
                for (k, set) in [
                    ("admin_url", t.admin_url.is_some()),
                    ("origin_admin_url", t.origin_admin_url.is_some()),
                    ("pids", !t.pids.is_empty()),
                ] {
                    if set {
                        return Err(ProfileError::invalid(
                            format!("{f}.{k}"),
                            "only for url targets (loadgen knows its own servers)",
                        ));
                    }
                }
                let cdn = if system == "cdn" {
                    if !t.args.is_empty() {
                        return Err(ProfileError::invalid(
                            format!("{f}.args"),
                            "a cdn topology takes its arguments per tier: use [targets.NAME.cdn] origin_args, shield_args, edge_args",
                        ));
                    }
                    Some(resolve_topology(&format!("{f}.cdn"), t.cdn.as_ref())?)
                } else {
                    if t.cdn.is_some() {
                        return Err(ProfileError::invalid(
                            format!("{f}.cdn"),
                            "only for builtin = \"cdn\"",
                        ));
                    }
                    None
                };
                TargetKind::Builtin {
                    system: system.clone(),
                    args: t.args.clone(),
                    cdn,
                }
            }
            (None, Some(url)) => {
                HttpUrl::parse(url).map_err(|e| ProfileError::invalid(format!("{f}.url"), e))?;
                if let Some(a) = &t.admin_url {
                    HttpUrl::parse(a)
                        .map_err(|e| ProfileError::invalid(format!("{f}.admin_url"), e))?;
                }
                if let Some(a) = &t.origin_admin_url {
                    HttpUrl::parse(a)
                        .map_err(|e| ProfileError::invalid(format!("{f}.origin_admin_url"), e))?;
                }
                if !t.args.is_empty() {
                    return Err(ProfileError::invalid(
                        format!("{f}.args"),
                        "only for builtin targets",
                    ));
                }
                if t.cdn.is_some() {
                    return Err(ProfileError::invalid(
                        format!("{f}.cdn"),
                        "only for builtin = \"cdn\" (an external CDN is one url)",
                    ));
                }
                if t.pids.len() > 64 || t.pids.contains(&0) {
                    return Err(ProfileError::invalid(
                        format!("{f}.pids"),
                        "at most 64 process ids, none of them 0",
                    ));
                }
                TargetKind::External {
                    url: url.clone(),
                    admin_url: t.admin_url.clone(),
                    origin_admin_url: t.origin_admin_url.clone(),
                    pids: t.pids.clone(),
                }
            }
            _ => {
                return Err(ProfileError::invalid(
                    f,
                    "give exactly one of `builtin` or `url`",
                ));
            }
        };
        targets.push(TargetPlan {
            name: name.clone(),
            kind,
        });
    }
    // `{url:NAME}` references: to another target that references none itself (so start order is two levels and
    // no cycle can form).
    for t in &targets {
        let TargetKind::Builtin { args, .. } = &t.kind else {
            continue;
        };
        for (i, a) in args.iter().enumerate() {
            let f = format!("targets.{}.args[{i}]", t.name);
            for r in url_refs(a).map_err(|e| ProfileError::invalid(&f, e))? {
                let Some(dep) = targets.iter().find(|d| d.name == r) else {
                    return Err(ProfileError::invalid(
                        &f,
                        format!("`{{url:{r}}}` names no target"),
                    ));
                };
                if dep.name == t.name || !dep.kind.depends_on().is_empty() {
                    return Err(ProfileError::invalid(
                        &f,
                        format!(
                            "`{{url:{r}}}`: a target may name only another target that names none itself"
                        ),
                    ));
                }
            }
        }
    }

    check_slo("slo", &profile.slo)?;
    if profile.phases.is_empty() {
        return Err(ProfileError::invalid("phases", "define at least one phase"));
    }
    let mut phases: Vec<PhasePlan> = Vec::new();
    for (i, p) in profile.phases.iter().enumerate() {
        for plan in resolve_phase(i, p, profile, &profile.slo)? {
            if phases.iter().any(|q| q.name == plan.name) {
                return Err(ProfileError::invalid(
                    format!("phases[{i}].name"),
                    format!("`{}` is used twice", plan.name),
                ));
            }
            phases.push(plan);
        }
    }
    for (i, p) in profile.phases.iter().enumerate() {
        let wants_origin = p
            .cdn
            .as_ref()
            .is_some_and(|c| c.origin_latency_ms.is_some());
        let has_origin = targets.iter().any(|t| {
            t.name == p.target
                && match &t.kind {
                    TargetKind::Builtin { cdn, .. } => cdn.is_some(),
                    TargetKind::External {
                        origin_admin_url, ..
                    } => origin_admin_url.is_some(),
                }
        });
        if wants_origin && !has_origin {
            return Err(ProfileError::invalid(
                format!("phases[{i}].cdn.origin_latency_ms"),
                "needs an origin loadgen can control: a builtin = \"cdn\" target or a url target with origin_admin_url",
            ));
        }
    }
    if !phases.iter().any(|p| !p.warmup) {
        return Err(ProfileError::invalid(
            "phases",
            "every phase is a warm-up: nothing would be measured",
        ));
    }

    let run = &profile.run;
    let allowed = &env.allowed_cpus;
    let n = allowed.len();
    let (default_server, default_loader): (Vec<usize>, Vec<usize>) = if n >= 2 {
        (allowed[..n / 2].to_vec(), allowed[n / 2..].to_vec())
    } else {
        (allowed.clone(), allowed.clone())
    };
    let loader_cpus = run.loader_cpus.clone().unwrap_or(default_loader);
    let server_cpus = run.server_cpus.clone().unwrap_or(default_server);
    check_cpus("run.loader_cpus", &loader_cpus, &env)?;
    check_cpus("run.server_cpus", &server_cpus, &env)?;
    let loader_processes = run.loader_processes.unwrap_or(loader_cpus.len());
    if loader_processes == 0 || loader_processes > 64 {
        return Err(ProfileError::invalid(
            "run.loader_processes",
            "must be 1..=64",
        ));
    }

    let calibration = if profile.calibration.enabled.unwrap_or(true) {
        let c = &profile.calibration;
        let connections = c.connections.unwrap_or(4);
        if connections == 0 || connections > 1000 {
            return Err(ProfileError::invalid(
                "calibration.connections",
                "must be 1..=1000",
            ));
        }
        Some(CalibrationPlan {
            rate_rps: positive(
                "calibration.rate_rps",
                c.rate_rps.unwrap_or(4000.0),
                MAX_RATE_RPS,
            )?,
            duration_s: positive("calibration.duration_s", c.duration_s.unwrap_or(2.0), 600.0)?,
            connections,
        })
    } else {
        for (k, set) in [
            ("rate_rps", profile.calibration.rate_rps.is_some()),
            ("duration_s", profile.calibration.duration_s.is_some()),
            ("connections", profile.calibration.connections.is_some()),
        ] {
            if set {
                return Err(ProfileError::invalid(
                    format!("calibration.{k}"),
                    "set while calibration is disabled",
                ));
            }
        }
        None
    };

    let phase_time_s: f64 = phases.iter().map(|p| p.duration_s).sum::<f64>()
        + calibration.as_ref().map_or(0.0, |c| c.duration_s);
    // Allow for server start-up, loader start-up and draining in-flight requests at every phase end.
    let ledger_phases = phases.iter().filter(|p| p.ledger.is_some()).count();
    let default_max_duration_s = phase_time_s
        + 30.0
        + 5.0 * phases.len() as f64
        + LEDGER_PHASE_OVERHEAD_S * ledger_phases as f64;
    let max_duration_s = match run.max_duration_s {
        Some(d) => {
            let d = positive("run.max_duration_s", d, 7.0 * 24.0 * 3600.0)?;
            if d < phase_time_s {
                return Err(ProfileError::invalid(
                    "run.max_duration_s",
                    format!(
                        "{d} s is shorter than the phases and calibration together ({phase_time_s} s)"
                    ),
                ));
            }
            d
        }
        None => default_max_duration_s,
    };
    let max_requests = run.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS);
    if max_requests == 0 {
        return Err(ProfileError::invalid(
            "run.max_requests",
            "must be positive",
        ));
    }
    let expected: f64 = phases.iter().filter_map(PhasePlan::expected_requests).sum();
    if expected > max_requests as f64 {
        return Err(ProfileError::invalid(
            "run.max_requests",
            format!(
                "the open phases alone would send about {expected:.0} requests, above the cap of {max_requests}"
            ),
        ));
    }
    let request_timeout_ms = run.request_timeout_ms.unwrap_or(5_000);
    if request_timeout_ms == 0 || request_timeout_ms > 600_000 {
        return Err(ProfileError::invalid(
            "run.request_timeout_ms",
            "must be 1..=600000",
        ));
    }
    let late_threshold_us = run.late_threshold_us.unwrap_or(1_000);
    let max_send_lag_us_p99 = run.max_send_lag_us_p99.unwrap_or(2_000);
    if max_send_lag_us_p99 == 0 {
        return Err(ProfileError::invalid(
            "run.max_send_lag_us_p99",
            "must be positive",
        ));
    }
    let max_loader_cpu_ratio = run.max_loader_cpu_ratio.unwrap_or(0.9);
    if !(0.05..=1.0).contains(&max_loader_cpu_ratio) {
        return Err(ProfileError::invalid(
            "run.max_loader_cpu_ratio",
            "must be within 0.05..=1",
        ));
    }

    Ok(Plan {
        name: profile.name.clone(),
        description: profile.description.clone(),
        limits: Limits {
            max_duration_s,
            max_requests,
            request_timeout_ms,
            late_threshold_us,
            max_send_lag_us_p99,
            max_loader_cpu_ratio,
        },
        placement: Placement {
            loader_cpus,
            server_cpus,
            loader_processes,
        },
        calibration,
        targets,
        phases,
    })
}
