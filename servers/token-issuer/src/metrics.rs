//! The issuer's Prometheus metrics, resolved once so a request only bumps atomics. Every label set is fixed (grant
//! names, OAuth error codes), so the series count is bounded.
//!
//! - `oidc_grants_total{grant}`: tokens issued, by grant.
//! - `oidc_failures_total{reason}`: OAuth error answers, by `error` code.
//! - `oidc_sign_seconds`: time to sign one token (claims serialization included).
//! - `oidc_key_rotations_total`, `oidc_published_keys`: rotations done, keys in the JWKS.
//! - `oidc_introspections_total{active}`, `oidc_revocations_total`, `oidc_revoked_tokens`.
//! - `oidc_logins_total{result}` (`ok`, `failed`), `oidc_sessions` (sessions held, set at each login; expired ones count until pruned),
//!   `oidc_codes_issued_total`, `oidc_code_reuse_total`, `oidc_refresh_reuse_total` (reuse detections, each
//!   revoking a grant), `oidc_authorize_errors_total` (errors redirected to a client).

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::grants::Grant;
use crate::oauth::ErrorCode;

/// Metric handles of one issuer.
#[derive(Clone)]
pub struct OidcMetrics {
    grants: Vec<Counter>,
    failures: Vec<Counter>,
    /// `oidc_sign_seconds`.
    pub sign_seconds: Histogram,
    /// `oidc_key_rotations_total`.
    pub key_rotations: Counter,
    /// `oidc_published_keys`.
    pub published_keys: Gauge,
    /// `oidc_introspections_total{active="true"}`.
    pub introspections_active: Counter,
    /// `oidc_introspections_total{active="false"}`.
    pub introspections_inactive: Counter,
    /// `oidc_revocations_total`: tokens revoked (valid ones; unknown tokens are not counted).
    pub revocations: Counter,
    /// `oidc_revoked_tokens`: entries in the revocation set.
    pub revoked_tokens: Gauge,
    /// `oidc_logins_total{result="ok"}`.
    pub logins_ok: Counter,
    /// `oidc_logins_total{result="failed"}`: wrong password or unknown user.
    pub logins_failed: Counter,
    /// `oidc_sessions`.
    pub sessions: Gauge,
    /// `oidc_codes_issued_total`.
    pub codes_issued: Counter,
    /// `oidc_code_reuse_total`.
    pub codes_reused: Counter,
    /// `oidc_refresh_reuse_total`.
    pub refresh_reuse: Counter,
    authorize_errors: Counter,
}

impl std::fmt::Debug for OidcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OidcMetrics")
    }
}

impl OidcMetrics {
    /// Registers every series (install the recorder first, or they go nowhere).
    pub fn new() -> OidcMetrics {
        OidcMetrics {
            grants: Grant::ALL
                .iter()
                .map(|g| counter!("oidc_grants_total", "grant" => g.as_str()))
                .collect(),
            failures: ErrorCode::ALL
                .iter()
                .map(|c| counter!("oidc_failures_total", "reason" => c.as_str()))
                .collect(),
            sign_seconds: histogram!("oidc_sign_seconds"),
            key_rotations: counter!("oidc_key_rotations_total"),
            published_keys: gauge!("oidc_published_keys"),
            introspections_active: counter!("oidc_introspections_total", "active" => "true"),
            introspections_inactive: counter!("oidc_introspections_total", "active" => "false"),
            revocations: counter!("oidc_revocations_total"),
            revoked_tokens: gauge!("oidc_revoked_tokens"),
            logins_ok: counter!("oidc_logins_total", "result" => "ok"),
            logins_failed: counter!("oidc_logins_total", "result" => "failed"),
            sessions: gauge!("oidc_sessions"),
            codes_issued: counter!("oidc_codes_issued_total"),
            codes_reused: counter!("oidc_code_reuse_total"),
            refresh_reuse: counter!("oidc_refresh_reuse_total"),
            authorize_errors: counter!("oidc_authorize_errors_total"),
        }
    }

    /// Counts one issued token.
    pub fn grant(&self, g: Grant) {
        if let Some(c) = self.grants.get(g as usize) {
            c.increment(1);
        }
    }

    /// Counts one error redirected from `/authorize`.
    pub fn authorize_error(&self) {
        self.authorize_errors.increment(1);
    }

    /// Counts one error answer.
    pub fn failure(&self, code: ErrorCode) {
        if let Some(c) = self.failures.get(code.index()) {
            c.increment(1);
        }
    }
}

impl Default for OidcMetrics {
    fn default() -> Self {
        Self::new()
    }
}
