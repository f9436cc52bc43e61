//! `result.json`: the record of one run. Its shape is fixed by `results/schema.json` (checked by a test against real
//! output); bump [`SCHEMA_VERSION`] on any incompatible change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::Summary;
use crate::host::{Git, Host};
use crate::plan::Plan;
use crate::procs::Sampled;

/// Version of the result format.
pub const SCHEMA_VERSION: u32 = 1;

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Format version.
    pub schema_version: u32,
    /// Version of refbench that produced it.
    pub refbench_version: String,
    /// Profile name.
    pub profile_name: String,
    /// Start, seconds since the Unix epoch.
    pub started_at_unix_s: f64,
    /// Wall time of the whole run.
    pub duration_s: f64,
    /// False when the measurement cannot be trusted (e.g. the loader was the bottleneck).
    pub valid: bool,
    /// Why the run is invalid, one line each.
    pub invalid_reasons: Vec<String>,
    /// Things worth knowing that do not invalidate the run.
    pub warnings: Vec<String>,
    /// SLO verdicts.
    pub slo: SloReport,
    /// Machine fingerprint.
    pub host: Host,
    /// Source tree.
    pub git: Git,
    /// The floor measurement taken at the start of the run.
    pub calibration: Option<Calibration>,
    /// The resolved profile.
    pub profile: Plan,
    /// Targets as run.
    pub targets: Vec<TargetInfo>,
    /// Measured phases.
    pub phases: Vec<PhaseResult>,
    /// Warm-up phases (run, not measured).
    pub warmup_phases: Vec<WarmupSummary>,
    /// Correctness failures of the target found by the ledger scenario's checks (any makes the exit code 1).
    #[serde(default)]
    pub correctness_failures: Vec<String>,
}

/// SLO outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SloReport {
    /// True when every check passed.
    pub passed: bool,
    /// Every check made.
    pub checks: Vec<SloCheck>,
}

/// One SLO comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SloCheck {
    /// Phase checked.
    pub phase: String,
    /// Metric name, as in the profile.
    pub metric: String,
    /// `max` or `min`.
    pub bound: String,
    /// The limit.
    pub limit: f64,
    /// The measured value.
    pub actual: f64,
    /// Verdict.
    pub passed: bool,
}

/// The floor calibration of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    /// CPU the floor server spent per request: the calibration unit.
    pub floor_cpu_us_per_request: f64,
    /// CPU the loader spent per request against the floor.
    pub loader_cpu_us_per_request: f64,
    /// Offered rate.
    pub rate_rps: f64,
    /// Achieved rate.
    pub achieved_rate_rps: f64,
    /// Length.
    pub duration_s: f64,
    /// Connections.
    pub connections: usize,
    /// Requests completed.
    pub requests: u64,
    /// Latency against the floor.
    pub latency_us: Summary,
    /// True when the calibration's own loader checks passed.
    pub valid: bool,
}

/// A target as run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Name.
    pub name: String,
    /// `builtin` or `external`.
    pub kind: String,
    /// Built-in system name.
    pub system: Option<String>,
    /// Base URL used.
    pub url: String,
    /// Server pid, for built-ins (a CDN: the first edge's).
    pub pid: Option<u32>,
    /// Every process counted as the target's (a CDN's origin, shields and edges; an external target's `pids`).
    #[serde(default)]
    pub processes: Vec<TargetProcess>,
}

/// One process of a target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetProcess {
    /// Label, as in `phases[].processes[].name` (`cdn/edge-0`).
    pub name: String,
    /// Process id.
    pub pid: u32,
}

/// Request counts of a phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Requests {
    /// All requests sent.
    pub total: u64,
    /// Status < 400.
    pub ok: u64,
    /// Errors and status ≥ 400.
    pub failed: u64,
    /// Sent later than the late threshold after the intended time.
    pub late: u64,
    /// Timed out.
    pub timeouts: u64,
}

/// Cost of one process over a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessResult {
    /// `server` or `loader`.
    pub role: String,
    /// Target name or `loader-N`.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// CPU time used during the phase.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per completed request, µs.
    pub cpu_us_per_request: f64,
    /// CPU time over wall time (1.0 = one core busy).
    pub cpu_cores_used: f64,
    /// Peak RSS.
    pub rss_bytes_peak: u64,
    /// RSS at the first sample.
    pub rss_bytes_start: u64,
    /// RSS at the last sample.
    pub rss_bytes_end: u64,
    /// End − start RSS (negative when memory was returned).
    pub rss_growth_bytes: i64,
    /// Resource samples taken (≥ 4 per second).
    pub samples: u64,
}

impl ProcessResult {
    /// Builds the figures for one process.
    pub fn new(
        role: &str,
        name: &str,
        pid: u32,
        cpu_seconds: f64,
        wall_s: f64,
        requests: u64,
        s: &Sampled,
    ) -> Self {
        ProcessResult {
            role: role.into(),
            name: name.into(),
            pid,
            cpu_seconds,
            cpu_us_per_request: if requests > 0 {
                cpu_seconds * 1e6 / requests as f64
            } else {
                0.0
            },
            cpu_cores_used: if wall_s > 0.0 {
                cpu_seconds / wall_s
            } else {
                0.0
            },
            rss_bytes_peak: s.rss_bytes_peak,
            rss_bytes_start: s.rss_bytes_start,
            rss_bytes_end: s.rss_bytes_end,
            rss_growth_bytes: s.rss_bytes_end as i64 - s.rss_bytes_start as i64,
            samples: s.samples,
        }
    }
}

/// One measured phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    /// Name.
    pub name: String,
    /// Target name.
    pub target: String,
    /// `open` or `closed`.
    pub model: String,
    /// `1.1` or `2`.
    pub http: String,
    /// `fixed` or `poisson` (open model).
    pub arrival: Option<String>,
    /// `lane` or `pool` (open model; see `plan::Dispatch`). Results written before it existed were all `lane`.
    #[serde(default)]
    pub dispatch: Option<String>,
    /// Planned length.
    pub duration_s: f64,
    /// Connections.
    pub connections: usize,
    /// Lanes / users.
    pub users: usize,
    /// Loader processes.
    pub loader_processes: usize,
    /// Mean offered rate (open model).
    pub offered_rate_rps: Option<f64>,
    /// Completed requests per second over the phase.
    pub achieved_rate_rps: f64,
    /// Counts.
    pub requests: Requests,
    /// Responses by status.
    pub status_codes: BTreeMap<String, u64>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latency from the intended send (open) or the send (closed).
    pub latency_us: Summary,
    /// Time from the actual send to the end of the response.
    pub service_time_us: Summary,
    /// The loader's own lag between "could send" and "sent" (open model).
    pub send_lag_us: Summary,
    /// Latency histogram, HdrHistogram V2 + base64.
    pub histogram_hdr_v2: String,
    /// Service-time histogram, HdrHistogram V2 + base64.
    pub service_time_histogram_hdr_v2: String,
    /// Response bytes received.
    pub bytes_received: u64,
    /// Requests Goose recorded (must equal `requests.total`).
    pub goose_requests: u64,
    /// Server and loader costs.
    pub processes: Vec<ProcessResult>,
    /// Server CPU per request over the calibration floor's (needs calibration and a built-in target).
    pub server_cpu_floor_ratio: Option<f64>,
    /// By target, each server series: a counter's change over the phase, a level's (gauge, quantile) value at its end.
    pub server_metrics: BTreeMap<String, BTreeMap<String, f64>>,
    /// Goose's reports for this phase.
    pub goose_reports: Vec<String>,
    /// Transfer-level figures and invariant checks of a ledger phase; null for other phases.
    #[serde(default)]
    pub ledger: Option<LedgerResult>,
    /// Cache figures of a CDN phase; null for other phases.
    #[serde(default)]
    pub cdn: Option<CdnResult>,
    /// Token figures and verification of an OIDC phase; null for other phases.
    #[serde(default)]
    pub oidc: Option<OidcResult>,
}

/// What an OIDC phase measured: tokens issued, and how the sampled ones fared against the published JWKS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OidcResult {
    /// `client_credentials`, `introspect`, `authorization_code` or `refresh_token`.
    pub flow: String,
    /// The issuer the tokens must name (`iss`), from its discovery document.
    pub issuer: String,
    /// Status-200 responses that carried a Bearer `access_token`.
    pub tokens: u64,
    /// tokens / phase wall time.
    pub tokens_per_s: f64,
    /// Status-200 responses without a usable token (each one is a correctness failure).
    pub malformed_responses: u64,
    /// Tokens verified after the phase: one in `verify_every`, at most `max_verified` per loader process.
    pub sampled: u64,
    /// Sampled tokens that passed every check.
    pub verified: u64,
    /// Sampled tokens that failed, by the first check they failed (each one is a correctness failure).
    pub verification_failures: BTreeMap<String, u64>,
    /// Tokens left unsampled because the sample was full.
    pub sample_overflow: u64,
    /// JWKS reads by the loaders during the phase, and failed reads.
    pub jwks_reads: u64,
    /// Failed JWKS reads.
    pub jwks_read_failures: u64,
    /// Introspection phases: answers saying the token is active.
    pub introspected_active: u64,
    /// Introspection phases: answers saying it is not (each is a correctness failure: the token is valid).
    pub introspected_inactive: u64,
    /// HTTP exchanges the loaders sent: one per request, except the authorization code flow (two: `/authorize`
    /// and `/token`) and a refresh chain's restart (a code flow). The phase's `requests`, rate and latency count
    /// flows.
    #[serde(default)]
    pub http_requests: u64,
    /// User flows that failed a protocol check, by the check (each one is a correctness failure).
    #[serde(default)]
    pub flow_failures: BTreeMap<String, u64>,
    /// Refresh flow: chains started again (through the code flow) after a transport error left a lane's
    /// refresh token in doubt.
    #[serde(default)]
    pub refresh_chain_restarts: u64,
    /// Key rotations loadgen asked for during the phase.
    pub rotations: Vec<OidcRotation>,
}

/// One key rotation during a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OidcRotation {
    /// Offset into the phase.
    pub at_s: f64,
    /// The issuer acknowledged it.
    pub ok: bool,
    /// Why not, when it failed.
    pub error: Option<String>,
}

/// What a CDN phase measured: hits as the responses' `Cache-Status` told them, origin work as the origin counted it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CdnResult {
    /// `zipf`, `video` or `storm`.
    pub workload: String,
    /// Responses received (any status).
    pub responses: u64,
    /// Responses that carried a `Cache-Status` header (hit ratios below are null when none did).
    pub with_cache_status: u64,
    /// Responses the answering cache (the edge) had: `hit` on the last `Cache-Status` member.
    pub edge_hits: u64,
    /// Responses a cache further up had (`hit` on an earlier member).
    pub upper_hits: u64,
    /// edge_hits / responses.
    pub edge_hit_ratio: Option<f64>,
    /// Edge-hit body bytes / all body bytes.
    pub edge_byte_hit_ratio: Option<f64>,
    /// (edge_hits + upper_hits) / responses: answered without the origin, as the caches report it.
    pub hit_ratio: Option<f64>,
    /// The same by body bytes.
    pub byte_hit_ratio: Option<f64>,
    /// Response body bytes.
    pub bytes: u64,
    /// Requests the origin answered during the phase (null when loadgen cannot read the origin's counters).
    pub origin_fetches: Option<u64>,
    /// Body bytes the origin sent during the phase.
    pub origin_bytes: Option<u64>,
    /// 1 − origin_fetches / responses: the tier-neutral hit ratio, also for caches without `Cache-Status`.
    pub offload_ratio: Option<f64>,
    /// 1 − origin_bytes / bytes.
    pub byte_offload_ratio: Option<f64>,
    /// Storm phases: the coalescing check.
    pub storm: Option<CdnStorm>,
    /// Prefetch counts of all cache tiers (from their `cdn_cache_prefetch_total`), when they prefetch.
    pub prefetch: Option<CdnPrefetch>,
}

/// The coalescing check of a storm phase: every cold key must have been fetched from the origin exactly once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CdnStorm {
    /// Cold keys that got at least one successful response.
    pub keys: u64,
    /// Keys whose origin fetch count was read (at most 10,000, evenly spread).
    pub keys_checked: u64,
    /// Largest origin fetch count of one key.
    pub max_fetches_per_key: u64,
    /// Keys fetched more than once (each one is a correctness failure).
    pub keys_fetched_more_than_once: u64,
    /// Mean responses per cold key: how many requests piled onto each.
    pub responses_per_key: f64,
}

/// Prefetch figures of a phase, summed over the tiers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CdnPrefetch {
    /// Counts by outcome (`issued`, `stored`, `used`, `evicted_unused`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// used / (used + evicted_unused): the share of prefetched objects a client asked for before they left memory.
    pub precision: Option<f64>,
}

/// Transfer-level figures of a ledger phase (`requests` counts HTTP requests, i.e. batches).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerResult {
    /// Transfers per request.
    pub batch_size: u32,
    /// Scenario accounts.
    pub accounts: u32,
    /// Currencies.
    pub currencies: Vec<String>,
    /// Accounts created before this phase (the others existed already).
    pub accounts_created: u64,
    /// Transfer counts.
    pub transfers: LedgerTransfers,
    /// Failed transfers by result code name (or `http_NNN` when the whole batch was refused).
    pub failed_by_code: BTreeMap<String, u64>,
    /// Applied (`ok`) transfers per second over the phase.
    pub transfers_per_s: f64,
    /// Two-phase transfers.
    pub two_phase: LedgerTwoPhase,
    /// Linked chains (all zero when the phase sends none).
    pub linked: LedgerLinked,
    /// Invariant checks; null when `verify = false`.
    pub verification: Option<LedgerVerification>,
}

/// Transfer counts of a ledger phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerTransfers {
    /// Transfers in requests that were written (`ok + exists + failed + in_doubt`).
    pub sent: u64,
    /// Applied.
    pub ok: u64,
    /// Applied before (same id, same fields).
    pub exists: u64,
    /// Refused, with a result code or a whole-batch HTTP error.
    pub failed: u64,
    /// Outcome unknown (timeout, broken connection, unreadable response).
    pub in_doubt: u64,
}

/// Two-phase transfer counts of a ledger phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerTwoPhase {
    /// Pending transfers acknowledged.
    pub pending_created: u64,
    /// Posts acknowledged.
    pub posted: u64,
    /// Voids acknowledged.
    pub voided: u64,
    /// Pendings left reserved because a lane's queue was full.
    pub pending_unqueued: u64,
    /// Pendings expected to expire (with `pending_timeout_s`: never resolved, or their post or void was refused);
    /// the balances were compared after their timeout.
    pub pending_expiring: u64,
}

/// Linked-chain counts of a ledger phase, from the per-item results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerLinked {
    /// Chains answered (two items or more).
    pub chains: u64,
    /// Of those, applied whole.
    pub applied: u64,
    /// Of those, refused whole.
    pub failed: u64,
    /// Chains sent with one item the ledger must refuse (amount zero): each must be refused whole.
    pub doomed: u64,
    /// Chains the ledger applied in part, or applied although they carried a refused item (must be 0).
    pub violations: u64,
}

impl LedgerLinked {
    /// Adds `other` (another loader's counts) into `self`.
    pub fn add(&mut self, other: &LedgerLinked) {
        self.chains += other.chains;
        self.applied += other.applied;
        self.failed += other.failed;
        self.doomed += other.doomed;
        self.violations += other.violations;
    }
}

/// The invariant checks of a ledger phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerVerification {
    /// True when every check below holds.
    pub passed: bool,
    /// Acknowledged transfers looked up.
    pub acked: u64,
    /// Of those, found exactly once with the fields sent.
    pub verified_present: u64,
    /// Acknowledged but not found.
    pub missing: u64,
    /// Found with other fields than sent.
    pub field_mismatches: u64,
    /// In-doubt transfers looked up.
    pub in_doubt: u64,
    /// Of those, found (applied; counted in the expected balances).
    pub in_doubt_applied: u64,
    /// Lookups that failed.
    pub lookup_errors: u64,
    /// Scenario accounts whose balances were compared.
    pub accounts_checked: u64,
    /// Scenario accounts the ledger did not return.
    pub missing_accounts: u64,
    /// Accounts whose change over the phase differs from what the loaders sent.
    pub balance_mismatches: u64,
    /// Per currency: the scenario accounts' changes sum to zero.
    pub currencies_balanced: BTreeMap<String, bool>,
    /// The server's `GET /verify` at the end of the run (null when not called or it failed).
    pub server_verify: Option<LedgerServerVerify>,
    /// What failed, one line each (up to a few examples per kind).
    pub failures: Vec<String>,
}

/// The ledger's own verify report (`GET /verify`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerServerVerify {
    /// The server found its log and balances consistent.
    pub ok: bool,
    /// Log records.
    pub records: u64,
    /// BLAKE3 of the last log record (hex).
    pub head_hash: String,
    /// Per currency: balances sum to zero.
    pub balanced: BTreeMap<String, bool>,
    /// Errors the server listed.
    pub errors: u64,
}

/// A warm-up phase's counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmupSummary {
    /// Name.
    pub name: String,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub failed: u64,
}
