//! Load profiles: the TOML a person writes, parsed strictly (unknown keys are refused), then validated once into a
//! [`Plan`](crate::plan::Plan). Nothing outside this module and `plan` looks at raw profile values.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ProfileError;

/// A whole load profile as written in TOML.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name, used in result folder names.
    pub name: String,
    /// Free text shown in reports.
    #[serde(default)]
    pub description: String,
    /// Run-wide limits and placement.
    #[serde(default)]
    pub run: RunSection,
    /// The short floor measurement taken at the start of every run.
    #[serde(default)]
    pub calibration: CalibrationSection,
    /// Named targets: built-in servers that loadgen starts, or external URLs.
    pub targets: BTreeMap<String, TargetSection>,
    /// Phases, run in order.
    pub phases: Vec<PhaseSection>,
    /// SLOs applied to every measured phase (a phase may override them).
    #[serde(default)]
    pub slo: SloSection,
}

/// `[run]`: limits that bound the whole run, and where processes run.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Hard cap on the whole run's wall time, calibration and server start included.
    pub max_duration_s: Option<f64>,
    /// Hard cap on requests over all phases.
    pub max_requests: Option<u64>,
    /// Cores the loader processes are pinned to (one loader process per core by default).
    pub loader_cpus: Option<Vec<usize>>,
    /// Cores the built-in servers are pinned to.
    pub server_cpus: Option<Vec<usize>>,
    /// Number of loader processes; defaults to the number of loader cores.
    pub loader_processes: Option<usize>,
    /// Per-request timeout.
    pub request_timeout_ms: Option<u64>,
    /// A request sent this long after its intended time counts as late.
    pub late_threshold_us: Option<u64>,
    /// The run is invalid when the loader's own send lag p99 exceeds this.
    pub max_send_lag_us_p99: Option<u64>,
    /// The run is invalid when a loader process uses more than this share of its core.
    pub max_loader_cpu_ratio: Option<f64>,
}

/// `[calibration]`: the floor measurement at the start of a run.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSection {
    /// Off only for runs that must be as short as possible; results then carry no calibration.
    pub enabled: Option<bool>,
    /// Open-loop arrival rate against the floor server.
    pub rate_rps: Option<f64>,
    /// How long the calibration load runs.
    pub duration_s: Option<f64>,
    /// HTTP/1.1 keep-alive connections.
    pub connections: Option<usize>,
}

/// `[targets.NAME]`: exactly one of `builtin` or `url`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// A built-in server loadgen starts as a child process on loopback (`floor`).
    pub builtin: Option<String>,
    /// An already running server's base URL (`http://127.0.0.1:8080`).
    pub url: Option<String>,
    /// Extra command-line arguments for a built-in server (`["--delay-fixed-us", "500"]`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Admin base URL of an external target, for `/metrics` scraping.
    pub admin_url: Option<String>,
    /// External CDN targets: admin base URL of the origin behind them (a `loadgen serve cdn origin`), from whose
    /// `/metrics` and `/fetches` CDN phases count origin fetches.
    pub origin_admin_url: Option<String>,
    /// External targets on this host: process ids whose CPU time and memory count as the server's.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// `builtin = "cdn"`: the topology loadgen starts (origin, shields, edges).
    pub cdn: Option<CdnTopologySection>,
}

/// `[targets.NAME.cdn]`: the shape of a built-in CDN topology. Loadgen starts one synthetic origin, `shields`
/// shield tiers in front of it and `edges` edge tiers in front of those (each edge spreads its misses over every
/// shield by rendezvous hashing); load is spread over the edges.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CdnTopologySection {
    /// Edge tiers the load is spread over (default 2).
    pub edges: Option<usize>,
    /// Shield tiers between the edges and the origin (default 2; 0 = edges go straight to the origin).
    pub shields: Option<usize>,
    /// Extra arguments for the origin (`loadgen serve cdn origin --help`).
    #[serde(default)]
    pub origin_args: Vec<String>,
    /// Extra arguments for every shield (`loadgen serve cdn cache --help`).
    #[serde(default)]
    pub shield_args: Vec<String>,
    /// Extra arguments for every edge.
    #[serde(default)]
    pub edge_args: Vec<String>,
}

/// `[[phases]]`: one stretch of load with one model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSection {
    /// Unique phase name.
    pub name: String,
    /// Target name from `[targets]`.
    pub target: String,
    /// Warm-up phases run but are left out of results and SLOs.
    #[serde(default)]
    pub warmup: bool,
    /// `open` (arrival rate) or `closed` (fixed users).
    pub model: String,
    /// Phase length.
    pub duration_s: f64,
    /// Open model: arrival rate at the phase start.
    pub rate_rps: Option<f64>,
    /// Open model: ramp linearly from `rate_rps` to this rate over the phase.
    pub ramp_to_rps: Option<f64>,
    /// Open model: a staircase; expands into one measured phase per step of `duration_s` each.
    pub steps_rps: Option<Vec<f64>>,
    /// Open model: `fixed` spacing or `poisson` arrivals.
    pub arrival: Option<String>,
    /// Open model: `lane` (each lane keeps its own share of the arrivals, as wrk2's connections do) or `pool` (one
    /// arrival stream per loader, each arrival sent by whichever lane is idle, as a client's connection pool does).
    pub dispatch: Option<String>,
    /// Seed for arrivals and the request mix.
    pub seed: Option<u64>,
    /// TCP connections (open and closed).
    pub connections: Option<usize>,
    /// Closed model: concurrent users; HTTP/2: lanes over the connections. Defaults to `connections`.
    pub users: Option<usize>,
    /// Closed model: pause between a response and the user's next request.
    pub think_time_ms: Option<f64>,
    /// `1.1` or `2`.
    pub http: Option<String>,
    /// Per-phase cap on requests.
    pub max_requests: Option<u64>,
    /// The request mix.
    pub requests: Option<Vec<RequestSection>>,
    /// SLO overrides for this phase.
    pub slo: Option<SloSection>,
    /// The ledger scenario: transfers against a ledger-writer target instead of the request mix.
    pub ledger: Option<LedgerSection>,
    /// The CDN scenario: generated object requests against a cache instead of the request mix.
    pub cdn: Option<CdnSection>,
    /// The OIDC scenario: token requests against an OAuth 2.0 / OpenID Connect issuer instead of the request mix.
    pub oidc: Option<OidcSection>,
}

/// `[phases.oidc]`: the OIDC scenario. Every request asks the issuer's token endpoint for a token; a sample of the
/// tokens is verified against the issuer's published JWKS (found through its discovery document), as a relying
/// party would, and every failure is counted.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// `client_credentials` (default), `introspect`, `authorization_code` (with PKCE, as a logged-in user),
    /// `refresh_token` (each lane keeps a rotating refresh token) or `token_exchange` (RFC 8693: one subject token,
    /// obtained before the phase, exchanged by every request).
    pub flow: Option<String>,
    /// The client (default: the built-in issuer's load-test client, `bench-client`).
    pub client_id: Option<String>,
    /// Its secret (default: the built-in issuer's secret for `bench-client`).
    pub client_secret: Option<String>,
    /// Client authentication: `basic` (client_secret_basic, default) or `post` (client_secret_post).
    pub auth: Option<String>,
    /// The `scope` parameter (default: none, the client's default scopes).
    pub scope: Option<String>,
    /// The `resource` parameter (RFC 8707), asking for a token for that audience.
    pub resource: Option<String>,
    /// authorization_code and refresh_token flows: the user who logs in once before the phase (default: the
    /// built-in issuer's test user `alice`).
    pub username: Option<String>,
    /// That user's password (default: the built-in test user's).
    pub password: Option<String>,
    /// authorization_code and refresh_token flows: the registered redirect URI (default: the built-in `web-app`
    /// client's `http://127.0.0.1/callback`). Nothing listens there: loadgen reads the code from the redirect.
    pub redirect_uri: Option<String>,
    /// token_exchange: the target whose issuer mints the subject token (default: the phase's own target). With
    /// another target this is federation: Org A's token exchanged at Org B.
    pub subject_target: Option<String>,
    /// token_exchange: the client that obtains the subject token (client_credentials) at the subject issuer
    /// (default: the built-in `bench-client`).
    pub subject_client_id: Option<String>,
    /// Its secret (default: the built-in `bench-client`'s).
    pub subject_client_secret: Option<String>,
    /// token_exchange: the `resource` asked for with the subject token (the audience the exchanging issuer
    /// accepts).
    pub subject_resource: Option<String>,
    /// token_exchange: the RFC 8693 `audience` parameter (a logical name the exchanging issuer maps).
    pub audience: Option<String>,
    /// Verify one token in this many against the JWKS (default 20; 0 = verify none).
    pub verify_every: Option<u64>,
    /// Most tokens one loader process keeps for verification (default 5000).
    pub max_verified: Option<u64>,
    /// How often each loader process re-reads the JWKS during the phase, as a caching relying party would
    /// (default 1000 ms). A token must verify against the newest JWKS read before it was issued.
    pub jwks_refresh_ms: Option<u64>,
    /// Offsets into the phase (seconds) at which loadgen rotates the issuer's signing key through its admin
    /// port (`POST /admin/rotate`); needs a built-in target or an `admin_url`.
    #[serde(default)]
    pub rotate_at_s: Vec<f64>,
}

/// `[phases.cdn]`: the CDN scenario. Every request is a `GET` of a generated path; hits are read from the
/// responses' `Cache-Status` (RFC 9211) and origin fetches from the origin's counters.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CdnSection {
    /// `zipf` (keys drawn by popularity), `video` (viewers play segments in order) or `storm` (every request
    /// of a period asks for the same cold key).
    pub workload: Option<String>,
    /// Paths start with this (default `/static/` for zipf, `/video/` for video, `/static/storm-` for storm).
    pub path_prefix: Option<String>,
    /// zipf: key space size (ranks 1..=keys, default 10000); video: number of videos (default 100).
    pub keys: Option<u64>,
    /// zipf and video: popularity skew (default 1.0; 0 = uniform).
    pub zipf_exponent: Option<f64>,
    /// video: segments per video (default 100, the synthetic origin's default).
    pub segments: Option<u32>,
    /// storm: how long one cold key is asked for before the next one (default 200).
    pub storm_period_ms: Option<u64>,
    /// Latency the origin adds to this phase's paths while it runs (needs an origin admin); makes a storm's
    /// fetch window long enough that many requests pile onto one cold key.
    pub origin_latency_ms: Option<u64>,
    /// Seed of the key draws (default: the phase's seed).
    pub seed: Option<u64>,
}

/// `[phases.ledger]`: the ledger scenario (see `servers/ledger-writer/API.md`). Loadgen creates the accounts before
/// the phase, sends `POST /transfers` batches at the phase's rate, and checks the ledger's invariants afterwards.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// Accounts the transfers move money between (default 10000, at most 1000000).
    pub accounts: Option<u32>,
    /// Currencies, three capital letters each (default `["USD"]`); account `i` has `currencies[i % len]`.
    pub currencies: Option<Vec<String>>,
    /// Transfers per `POST /transfers` request (1..=8190, default 1).
    pub batch_size: Option<u32>,
    /// Hot-account skew: accounts are drawn by Zipf with this exponent (default 1.0; 0 = uniform).
    pub zipf_exponent: Option<f64>,
    /// Share of new transfers created pending and later posted or voided (0..=1, default 0).
    pub two_phase_ratio: Option<f64>,
    /// Share of pending transfers voided instead of posted (0..=1, default 0.1).
    pub void_ratio: Option<f64>,
    /// Share of posts and voids sent bare: debit and credit account and currency zero, for the ledger to take from
    /// the pending transfer (0..=1, default 0).
    pub bare_resolve_ratio: Option<f64>,
    /// Seconds until a pending transfer expires (1..=60; default 0 = never). Pendings left unresolved, or whose post
    /// or void was refused, are expected to expire: the balance check waits this long (plus 1 s) after the phase.
    pub pending_timeout_s: Option<u32>,
    /// Share of batch slots that start a linked chain (0..=1, default 0; needs `batch_size` >= 3: a chain never
    /// starts at the first slot, so a request with a failing chain still applies something).
    pub linked_ratio: Option<f64>,
    /// Longest linked chain (2..=16, default 4); chains are 2..=this long, cut at the end of the batch.
    pub linked_chain_max: Option<u32>,
    /// Share of chains sent with one item the ledger must refuse (amount zero): the whole chain must fail
    /// (0..=1, default 0.1).
    pub linked_fail_ratio: Option<f64>,
    /// Largest transfer amount in minor units (default 10000).
    pub amount_max: Option<u64>,
    /// Check the invariants through the API after the phase (default true).
    pub verify: Option<bool>,
    /// Seed of the transfer generator (default: the phase's seed).
    pub seed: Option<u64>,
}

/// `[[phases.requests]]`: one entry of the request mix.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSection {
    /// Name shown in reports; defaults to `METHOD path`.
    pub name: Option<String>,
    /// HTTP method, default GET.
    pub method: Option<String>,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Relative weight in the mix, default 1.
    pub weight: Option<u32>,
    /// Request body.
    pub body: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `[slo]`: limits that decide the exit code.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SloSection {
    /// Upper bound on p50 latency (from intended send time).
    pub latency_us_p50: Option<f64>,
    /// Upper bound on p90 latency.
    pub latency_us_p90: Option<f64>,
    /// Upper bound on p99 latency.
    pub latency_us_p99: Option<f64>,
    /// Upper bound on p99.9 latency.
    pub latency_us_p999: Option<f64>,
    /// Upper bound on the largest latency.
    pub latency_us_max: Option<f64>,
    /// Upper bound on failed / all requests.
    pub error_ratio: Option<f64>,
    /// Lower bound on achieved / offered rate (open model).
    pub achieved_ratio_min: Option<f64>,
}

impl Profile {
    /// Parses profile text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        toml::from_str(text).map_err(|e| ProfileError::Toml {
            origin: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// The defined target names, comma-separated, for error messages.
    pub fn target_names(&self) -> String {
        self.targets.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Reads and parses a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Profile::parse(&text, &path.display().to_string())
    }
}
