//! Trusted issuers (federation): other OAuth/OIDC issuers whose JWTs this issuer accepts as JWT bearer assertions
//! (RFC 7523 §2.1) and as token-exchange subject or actor tokens (RFC 8693), each with its verification keys.
//!
//! Keys come from the configuration (`jwks` inline) or are fetched ([`crate::fetch`]: loopback `http://` only):
//! at start, before the server announces it is ready, `<issuer>/.well-known/openid-configuration` is read, its
//! `issuer` must equal the configured one exactly (OIDC Discovery §4.3: otherwise a document could speak for another
//! issuer), then its `jwks_uri` is read. Afterwards the JWKS is refreshed
//! - every `jwks_max_age_s` in the background ([`TrustedIssuer::keep_fresh`], one task per issuer started by the server), and
//! - when a token names a `kid` the cached set lacks (the issuer rotated), at most once per
//!   `jwks_min_refresh_interval_s` per issuer, so tokens with made-up kids cannot turn this server into a fetch
//!   amplifier. The request waits for that refresh (bounded by [`crate::fetch::FETCH_TIMEOUT`]).
//!
//! A failed refresh keeps the old keys. The keys in use are an immutable `Arc<KeySet>` swapped under a lock held only
//! for the swap, so verification never waits for a fetch.
//!
//! Subjects from a trusted issuer are mapped (`subject`): `prefix` (default) makes `<alias>|<sub>` so that two
//! issuers' subjects can never collide with each other or with local ones; `keep` uses the foreign `sub` as is (only
//! when the issuers share one subject namespace).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::assertion::{
    ASYMMETRIC_ALGS, AssertionError, KeySet, Parsed, ReplayCache, TimeRules, check_audience,
    check_times, parse_alg, peek_kid_and_iss, required,
};
use crate::config::{Client, ConfigError, MAX_NAME_CHARS, invalid, validate_issuer, visible_ascii};
use crate::discovery::{OPENID_CONFIGURATION_PATH, TOKEN_PATH};
use crate::fetch::{self, FetchError};
use crate::form::Form;
use crate::grants::token_exchange::{ExchangePolicy, FilePolicy, resolve_policies};

/// Most trusted issuers (each is scanned by `iss` and may hold a background refresh).
pub const MAX_TRUSTED_ISSUERS: usize = 16;
/// Default background refresh period of a fetched JWKS, seconds.
pub const DEFAULT_JWKS_MAX_AGE_S: u64 = 300;
/// Bounds of `jwks_max_age_s`: at least 10 s (a tighter loop only loads the peer), at most a day.
pub const JWKS_MAX_AGE_RANGE_S: (u64, u64) = (10, 86_400);
/// Default least time between two unknown-`kid` refreshes of one issuer, seconds.
pub const DEFAULT_MIN_REFRESH_INTERVAL_S: u64 = 10;
/// Largest `jwks_min_refresh_interval_s`: an hour.
pub const MAX_MIN_REFRESH_INTERVAL_S: u64 = 3_600;
/// Default and largest `max_assertion_jtis` (entries of ~40 bytes).
pub const DEFAULT_MAX_ASSERTION_JTIS: usize = 100_000;
/// Largest `max_assertion_jtis`.
pub const MAX_ASSERTION_JTIS: usize = 10_000_000;
/// Longest issuer alias (it prefixes mapped subjects).
pub const MAX_ALIAS_CHARS: usize = 64;

/// One trusted issuer as written (`[[trusted_issuers]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTrustedIssuer {
    /// The issuer identifier, exactly as its tokens' `iss`.
    pub issuer: String,
    /// Short name used in mapped subjects (`<alias>|<sub>`); default: the issuer identifier.
    pub alias: Option<String>,
    /// Its JWK Set inline (a JSON string or a table); absent = fetched through its discovery document.
    pub jwks: Option<toml::Value>,
    /// `aud` values its tokens must carry (one of them) to be accepted here; default: this issuer's identifier and
    /// token endpoint.
    pub audience: Option<Vec<String>>,
    /// `prefix` (default: `<alias>|<sub>`) or `keep`.
    pub subject: Option<String>,
    /// Accepted `alg`s; default: every asymmetric one (`ES256`, `ES384`, `EdDSA`, `RS*`, `PS*`).
    pub algorithms: Option<Vec<String>>,
    /// Local clients that may present its tokens (JWT bearer assertions, token-exchange subjects and actors).
    pub clients: Vec<String>,
    /// Background JWKS refresh period of a fetched set, seconds (default 300).
    pub jwks_max_age_s: Option<u64>,
    /// Least time between two refreshes caused by an unknown `kid`, seconds (default 10).
    pub jwks_min_refresh_interval_s: Option<u64>,
}

/// How a trusted issuer's `sub` becomes a local subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectMapping {
    /// `<alias>|<sub>`.
    Prefix,
    /// The `sub` unchanged.
    Keep,
}

/// A trusted issuer, validated.
#[derive(Debug, Clone)]
pub struct TrustedIssuerConfig {
    /// The exact `iss`.
    pub issuer: String,
    /// The subject prefix.
    pub alias: String,
    /// Inline keys; `None` = fetched.
    pub inline_jwks: Option<Arc<KeySet>>,
    /// Accepted `aud` values; `None` = this issuer's identifier and token endpoint.
    pub audience: Option<Vec<String>>,
    /// Subject mapping.
    pub subject: SubjectMapping,
    /// Accepted algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Local clients that may present its tokens.
    pub clients: Vec<String>,
    /// Background refresh period, seconds.
    pub jwks_max_age_s: u64,
    /// Unknown-kid refresh rate limit, seconds.
    pub min_refresh_interval_s: u64,
}

/// The federation part of the configuration, validated.
#[derive(Debug, Clone, Default)]
pub struct FederationConfig {
    /// Trusted issuers.
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
    /// Token-exchange policies, one per client at most.
    pub policies: Vec<ExchangePolicy>,
    /// Logical audience names and the `aud` each stands for.
    pub audience_names: BTreeMap<String, String>,
    /// Replay cache bound.
    pub max_assertion_jtis: usize,
}

impl FederationConfig {
    /// Validates the federation sections; errors name the field.
    pub fn resolve(
        issuers: Vec<FileTrustedIssuer>,
        policies: Vec<FilePolicy>,
        audience_names: BTreeMap<String, String>,
        max_assertion_jtis: Option<usize>,
        clients: &[Arc<Client>],
    ) -> Result<FederationConfig, ConfigError> {
        let max_assertion_jtis = max_assertion_jtis.unwrap_or(DEFAULT_MAX_ASSERTION_JTIS);
        if !(1..=MAX_ASSERTION_JTIS).contains(&max_assertion_jtis) {
            return Err(invalid(
                "max_assertion_jtis",
                format!("must be between 1 and {MAX_ASSERTION_JTIS}, got {max_assertion_jtis}"),
            ));
        }
        if issuers.len() > MAX_TRUSTED_ISSUERS {
            return Err(invalid(
                "trusted_issuers",
                format!("at most {MAX_TRUSTED_ISSUERS}, got {}", issuers.len()),
            ));
        }
        let mut seen = HashSet::new();
        let mut trusted = Vec::with_capacity(issuers.len());
        for (i, t) in issuers.into_iter().enumerate() {
            let f = |name: &str| format!("trusted_issuers[{i}].{name}");
            validate_issuer(&t.issuer).map_err(|r| invalid(f("issuer"), r))?;
            if !seen.insert(t.issuer.clone()) {
                return Err(invalid(
                    f("issuer"),
                    format!("{:?} is listed twice", t.issuer),
                ));
            }
            let explicit_alias = t.alias.is_some();
            let alias = t.alias.clone().unwrap_or_else(|| t.issuer.clone());
            if !visible_ascii(&alias) || alias.contains('|') || alias.len() > MAX_NAME_CHARS {
                return Err(invalid(
                    f("alias"),
                    "must be visible ASCII without '|', at most 256 characters",
                ));
            }
            // The default alias (the issuer URL) may be longer; an explicit one is a short name.
            if explicit_alias && alias.len() > MAX_ALIAS_CHARS {
                return Err(invalid(
                    f("alias"),
                    format!("at most {MAX_ALIAS_CHARS} characters"),
                ));
            }
            let inline_jwks = match &t.jwks {
                None => {
                    // Checked now so a config that could never fetch fails at start with the reason.
                    fetch::parse_loopback_url(&t.issuer).map_err(|e| {
                        invalid(
                            f("jwks"),
                            format!("absent, so the keys would be fetched, but {e}"),
                        )
                    })?;
                    None
                }
                Some(v) => Some(Arc::new(
                    crate::private_key_jwt::client_jwks(v).map_err(|r| invalid(f("jwks"), r))?,
                )),
            };
            if let Some(aud) = &t.audience {
                if aud.is_empty() || aud.len() > 16 {
                    return Err(invalid(f("audience"), "1 to 16 values"));
                }
                for (j, a) in aud.iter().enumerate() {
                    if !crate::config::is_resource_uri(a) {
                        return Err(invalid(
                            format!("trusted_issuers[{i}].audience[{j}]"),
                            format!("must be an absolute URI: {a:?}"),
                        ));
                    }
                }
            }
            let subject = match t.subject.as_deref() {
                None | Some("prefix") => SubjectMapping::Prefix,
                Some("keep") => SubjectMapping::Keep,
                Some(other) => {
                    return Err(invalid(
                        f("subject"),
                        format!("{other:?}: use \"prefix\" or \"keep\""),
                    ));
                }
            };
            let algorithms = match &t.algorithms {
                None => ASYMMETRIC_ALGS.to_vec(),
                Some(names) => {
                    let mut v = Vec::with_capacity(names.len());
                    for (j, n) in names.iter().enumerate() {
                        v.push(parse_alg(n).ok_or_else(|| {
                            invalid(
                                format!("trusted_issuers[{i}].algorithms[{j}]"),
                                format!("{n:?} is not an asymmetric JWS algorithm (none and HS* are refused)"),
                            )
                        })?);
                    }
                    if v.is_empty() {
                        return Err(invalid(f("algorithms"), "must not be empty"));
                    }
                    v
                }
            };
            if t.clients.is_empty() {
                return Err(invalid(
                    f("clients"),
                    "name at least one local client that may use its tokens",
                ));
            }
            for (j, c) in t.clients.iter().enumerate() {
                if !clients.iter().any(|k| &k.id == c) {
                    return Err(invalid(
                        format!("trusted_issuers[{i}].clients[{j}]"),
                        format!("no client {c:?} is configured"),
                    ));
                }
            }
            let jwks_max_age_s = t.jwks_max_age_s.unwrap_or(DEFAULT_JWKS_MAX_AGE_S);
            let (lo, hi) = JWKS_MAX_AGE_RANGE_S;
            if !(lo..=hi).contains(&jwks_max_age_s) {
                return Err(invalid(
                    f("jwks_max_age_s"),
                    format!("must be between {lo} and {hi}, got {jwks_max_age_s}"),
                ));
            }
            let min_refresh_interval_s = t
                .jwks_min_refresh_interval_s
                .unwrap_or(DEFAULT_MIN_REFRESH_INTERVAL_S);
            if min_refresh_interval_s > MAX_MIN_REFRESH_INTERVAL_S {
                return Err(invalid(
                    f("jwks_min_refresh_interval_s"),
                    format!("at most {MAX_MIN_REFRESH_INTERVAL_S}, got {min_refresh_interval_s}"),
                ));
            }
            trusted.push(TrustedIssuerConfig {
                issuer: t.issuer,
                alias,
                inline_jwks,
                audience: t.audience,
                subject,
                algorithms,
                clients: t.clients,
                jwks_max_age_s,
                min_refresh_interval_s,
            });
        }
        for (name, aud) in &audience_names {
            if !crate::config::is_scope_token(name) {
                return Err(invalid(
                    format!("exchange_audiences.{name}"),
                    "the name must be a token without spaces or quotes",
                ));
            }
            if !crate::config::is_resource_uri(aud) {
                return Err(invalid(
                    format!("exchange_audiences.{name}"),
                    format!("must be an absolute URI: {aud:?}"),
                ));
            }
        }
        if audience_names.len() > 64 {
            return Err(invalid("exchange_audiences", "at most 64 names"));
        }
        let policies = resolve_policies(policies, clients, &trusted, &audience_names)?;
        Ok(FederationConfig {
            trusted_issuers: trusted,
            policies,
            audience_names,
            max_assertion_jtis,
        })
    }
}

/// Why a trusted issuer's keys could not be fetched at start.
#[derive(Debug, thiserror::Error)]
#[error("trusted issuer {issuer}: {source}")]
pub struct TrustError {
    /// The configured issuer.
    pub issuer: String,
    /// The fetch or document error.
    pub source: FetchError,
}

/// A trusted issuer at run time: its configuration and current keys.
#[derive(Debug)]
pub struct TrustedIssuer {
    /// The configuration.
    pub cfg: TrustedIssuerConfig,
    keys: RwLock<Arc<KeySet>>,
    jwks_uri: RwLock<Option<String>>,
    /// When the last unknown-kid refresh started (the rate limit).
    last_kid_refresh: Mutex<Option<Instant>>,
    /// Serializes fetches of this issuer so a burst of unknown kids makes one request.
    fetching: tokio::sync::Mutex<()>,
}

impl TrustedIssuer {
    fn new(cfg: TrustedIssuerConfig) -> TrustedIssuer {
        let keys = cfg.inline_jwks.clone().unwrap_or_default();
        TrustedIssuer {
            cfg,
            keys: RwLock::new(keys),
            jwks_uri: RwLock::new(None),
            last_kid_refresh: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The keys in use.
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether the keys are fetched (not inline).
    pub fn is_fetched(&self) -> bool {
        self.cfg.inline_jwks.is_none()
    }

    /// The local subject for this issuer's `sub`.
    pub fn map_subject(&self, sub: &str) -> String {
        match self.cfg.subject {
            SubjectMapping::Prefix => format!("{}|{sub}", self.cfg.alias),
            SubjectMapping::Keep => sub.to_string(),
        }
    }

    /// Whether `client_id` may present this issuer's tokens.
    pub fn allows_client(&self, client_id: &str) -> bool {
        self.cfg.clients.iter().any(|c| c == client_id)
    }

    /// Fetches the discovery document (once: the `jwks_uri` is kept) and the JWKS, and swaps the keys in.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let _one_at_a_time = self.fetching.lock().await;
        let known_uri = self
            .jwks_uri
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let jwks_uri = match known_uri {
            Some(u) => u,
            None => {
                let url = format!("{}{OPENID_CONFIGURATION_PATH}", self.cfg.issuer);
                let body = fetch::get(&url).await?;
                #[derive(Deserialize)]
                struct Doc {
                    issuer: String,
                    jwks_uri: Option<String>,
                }
                let doc: Doc = serde_json::from_slice(&body).map_err(|e| FetchError::Document {
                    url: url.clone(),
                    reason: format!("not a discovery document: {e}"),
                })?;
                if doc.issuer != self.cfg.issuer {
                    return Err(FetchError::Document {
                        url,
                        reason: format!(
                            "its issuer {:?} is not the configured {:?} (OIDC Discovery §4.3 requires them equal)",
                            doc.issuer, self.cfg.issuer
                        ),
                    });
                }
                let uri = doc.jwks_uri.ok_or_else(|| FetchError::Document {
                    url: url.clone(),
                    reason: "no jwks_uri".into(),
                })?;
                // The same loopback rule applies to where the keys come from.
                fetch::parse_loopback_url(&uri)?;
                *self
                    .jwks_uri
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(uri.clone());
                uri
            }
        };
        let body = fetch::get(&jwks_uri).await?;
        let set = KeySet::from_json(&body, false).map_err(|reason| FetchError::Document {
            url: jwks_uri,
            reason,
        })?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        Ok(())
    }

    /// Refreshes the keys every `jwks_max_age_s` until `shutdown` (a fetched issuer only); failures keep the old
    /// keys and are reported.
    pub async fn keep_fresh(self: Arc<Self>, mut shutdown: refbench_common::shutdown::Shutdown) {
        let period = Duration::from_secs(self.cfg.jwks_max_age_s);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh().await {
                        eprintln!(
                            "token-issuer: scheduled JWKS refresh of trusted issuer {} failed, keeping the old keys: {e}",
                            self.cfg.issuer
                        );
                    }
                }
            }
        }
    }

    /// Refreshes because a token named `kid`, which the cached set lacks, unless another unknown-kid refresh
    /// started less than `jwks_min_refresh_interval_s` ago. Failures keep the old keys (and are reported).
    pub async fn refresh_for_unknown_kid(&self, kid: &str) {
        if !self.is_fetched() || self.keys().has_kid(kid) {
            return;
        }
        let limited = {
            let mut last = self
                .last_kid_refresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let interval = Duration::from_secs(self.cfg.min_refresh_interval_s);
            let limited = last.is_some_and(|t| t.elapsed() < interval);
            if !limited {
                *last = Some(Instant::now());
            }
            limited
        };
        if limited {
            // A refresh that started a moment ago (another request's) may still bring the key: wait for it to end,
            // which takes at most two fetch timeouts, rather than refuse a token that is about to verify.
            drop(self.fetching.lock().await);
            return;
        }
        if let Err(e) = self.refresh().await {
            eprintln!(
                "token-issuer: JWKS refresh of trusted issuer {} failed, keeping the old keys: {e}",
                self.cfg.issuer
            );
        }
    }
}

/// The federation state of one issuer: trusted issuers, exchange policies, the replay cache.
#[derive(Debug)]
pub struct Federation {
    issuers: Vec<Arc<TrustedIssuer>>,
    /// Token-exchange policies.
    pub policies: Vec<ExchangePolicy>,
    /// Logical audience names.
    pub audience_names: BTreeMap<String, String>,
    /// Seen assertion `jti`s (`private_key_jwt`, JWT bearer).
    pub replay: ReplayCache,
    /// This issuer's identifier (an accepted assertion `aud`).
    pub issuer: String,
    /// This issuer's token endpoint URL (the other accepted assertion `aud`).
    pub token_endpoint: String,
}

impl Federation {
    /// The state for `issuer` (no fetch yet: see [`Federation::fetch_at_start`]).
    pub fn new(cfg: FederationConfig, issuer: &str) -> Federation {
        Federation {
            issuers: cfg
                .trusted_issuers
                .into_iter()
                .map(|c| Arc::new(TrustedIssuer::new(c)))
                .collect(),
            policies: cfg.policies,
            audience_names: cfg.audience_names,
            replay: ReplayCache::new(cfg.max_assertion_jtis),
            issuer: issuer.to_string(),
            token_endpoint: format!("{issuer}{TOKEN_PATH}"),
        }
    }

    /// The trusted issuer whose identifier is `iss`.
    pub fn find(&self, iss: &str) -> Option<&Arc<TrustedIssuer>> {
        self.issuers.iter().find(|t| t.cfg.issuer == iss)
    }

    /// Every trusted issuer.
    pub fn issuers(&self) -> &[Arc<TrustedIssuer>] {
        &self.issuers
    }

    /// The policy of `client_id`.
    pub fn policy(&self, client_id: &str) -> Option<&ExchangePolicy> {
        self.policies.iter().find(|p| p.client_id == client_id)
    }

    /// The `aud` values a trusted issuer's token must carry one of.
    pub fn accepted_audiences<'a>(&'a self, t: &'a TrustedIssuer) -> Vec<&'a str> {
        match &t.cfg.audience {
            Some(v) => v.iter().map(String::as_str).collect(),
            None => vec![self.issuer.as_str(), self.token_endpoint.as_str()],
        }
    }

    /// Verifies a JWT of the trusted issuer `t`: signature with its keys and algorithms, `exp` (required; at most
    /// `max_lifetime_s` away when given), `nbf`/`iat`, `aud` (one of [`Federation::accepted_audiences`]) and `sub`
    /// (required). Returns `exp`.
    pub fn verify_from(
        &self,
        t: &TrustedIssuer,
        parsed: &Parsed<'_>,
        now_s: u64,
        leeway_s: u64,
        max_lifetime_s: Option<u64>,
    ) -> Result<u64, AssertionError> {
        parsed.verify(&t.keys(), &t.cfg.algorithms)?;
        let exp = check_times(
            &parsed.claims,
            TimeRules {
                now_s,
                leeway_s,
                max_lifetime_s,
            },
        )?;
        check_audience(&parsed.claims, &self.accepted_audiences(t))?;
        required(&parsed.claims.sub, "sub")?;
        Ok(exp)
    }

    /// Fetches every fetched issuer's keys; the first failure names its issuer. Run before the server is ready.
    pub async fn fetch_at_start(&self) -> Result<(), TrustError> {
        for t in self.issuers.iter().filter(|t| t.is_fetched()) {
            t.refresh().await.map_err(|source| TrustError {
                issuer: t.cfg.issuer.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Before a JWT bearer or token-exchange request is verified: refreshes the keys of a trusted issuer whose
    /// token names an unknown `kid` (rate-limited). Costs one `grant_type` lookup for every other grant.
    pub async fn prepare(&self, form: &Form<'_>) {
        if self.issuers.is_empty() {
            return;
        }
        let tokens: [Option<&str>; 2] = match form.get("grant_type") {
            Some(crate::grants::jwt_bearer::GRANT_TYPE) => [form.get("assertion"), None],
            Some(crate::grants::token_exchange::GRANT_TYPE) => {
                [form.get("subject_token"), form.get("actor_token")]
            }
            _ => return,
        };
        for token in tokens.into_iter().flatten() {
            let Some((Some(kid), iss)) = peek_kid_and_iss(token) else {
                continue;
            };
            if let Some(t) = self.find(&iss) {
                t.refresh_for_unknown_kid(&kid).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::FileConfig;
    use crate::secret::SecretHasher;

    const BASE: &str = r#"
[[clients]]
client_id = "x"
client_secret = "0123456789abcdefghijklmnop"
grant_types = ["urn:ietf:params:oauth:grant-type:token-exchange"]
scopes = ["read"]
audience = "https://api.test"
"#;

    const JWK: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"ZvRjCSR4cKOa0_KiLyvh4bBUgXx0dOYW7oVEt5AMjGA","y":"p2v9EW83DwnQM1Eng0gQHwXIppVHat3C1xg3Zyl0e44"}]}"#;

    fn err(extra: &str) -> String {
        FileConfig::parse(&format!("{BASE}{extra}"), Path::new("t"))
            .and_then(|f| f.resolve(SecretHasher::new(&[1; 32]), false))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn federation_errors_name_the_field() {
        let trusted = |rest: &str| {
            format!(
                "[[trusted_issuers]]\nissuer = \"https://idp.test\"\njwks = '{JWK}'\nclients = [\"x\"]\n{rest}"
            )
        };
        let e = err(&trusted("colour = 1"));
        assert!(e.contains("colour"), "{e}");
        let e = err(&trusted("algorithms = [\"HS256\"]"));
        assert!(e.contains("trusted_issuers[0].algorithms[0]"), "{e}");
        let e = err(&trusted("subject = \"rename\""));
        assert!(e.contains("trusted_issuers[0].subject"), "{e}");
        let e = err(&trusted("jwks_max_age_s = 1"));
        assert!(e.contains("trusted_issuers[0].jwks_max_age_s"), "{e}");
        let e = err(&trusted("").replace("[\"x\"]", "[\"nobody\"]"));
        assert!(e.contains("trusted_issuers[0].clients[0]"), "{e}");
        let e = err(&trusted("").replace(JWK, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#));
        assert!(e.contains("trusted_issuers[0].jwks"), "{e}");
        // Without inline keys a non-loopback issuer cannot be fetched.
        let e = err("[[trusted_issuers]]\nissuer = \"http://idp.example\"\nclients = [\"x\"]\n");
        assert!(
            e.contains("trusted_issuers[0].jwks") && e.contains("loopback"),
            "{e}"
        );
        let policy = |subjects: &str, scopes: &str| {
            format!(
                "[[exchange_policies]]\nclient_id = \"x\"\nsubjects_from = [{subjects}]\naudiences = [\"https://b.test\"]\n\
                 scopes = [{scopes}]\n"
            )
        };
        let ok = policy("\"self\"", "\"read\"");
        let e = err(&format!(
            "{}{}",
            trusted(""),
            policy("\"https://unknown.test\"", "\"read\"")
        ));
        assert!(e.contains("exchange_policies[0].subjects_from[0]"), "{e}");
        let e = err(&policy("\"self\"", "\"admin\""));
        assert!(e.contains("exchange_policies[0].scopes[0]"), "{e}");
        let e = err(&format!("{ok}{ok}"));
        assert!(e.contains("exchange_policies[1].client_id"), "{e}");
        let e = err(&ok.replace("https://b.test", "no-such-name"));
        assert!(e.contains("exchange_policies[0].audiences[0]"), "{e}");
        // A client with keys for private_key_jwt must not also have a secret, and needs its keys.
        let e = err(&format!("jwks = '{JWK}'\n"));
        assert!(e.contains("clients[0].jwks"), "{e}");
        let e = err("token_endpoint_auth_method = \"private_key_jwt\"\n");
        assert!(e.contains("clients[0].jwks"), "{e}");
        let e = err("token_endpoint_auth_method = \"tls_client_auth\"\n");
        assert!(e.contains("clients[0].token_endpoint_auth_method"), "{e}");
    }
}
