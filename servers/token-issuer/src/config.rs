//! Configuration: the TOML file as written ([`FileConfig`], unknown keys refused), the embedded defaults
//! ([`DEFAULT_CONFIG_TOML`]) and the validated [`ResolvedConfig`] everything else uses. Every value is checked once,
//! in [`FileConfig::resolve`], with an error naming the field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::grants::{Grant, GrantSet};
use crate::keys::SigningAlg;
use crate::secret::{MAX_CLIENT_SECRET_CHARS, MIN_CLIENT_SECRET_CHARS, SecretHash, SecretHasher};

/// The configuration `token-issuer serve` uses without `--config`: test clients whose secrets are published right
/// here, so a server running it must stay on loopback (the default bind).
pub const DEFAULT_CONFIG_TOML: &str = r#"
signing_alg = "ES256"
access_token_lifetime_s = 300
id_token_lifetime_s = 300
refresh_token_lifetime_s = 86400
clock_leeway_s = 30
rotate_every_s = 0
jwks_max_age_s = 60
max_revoked_tokens = 1000000

# The benchmark's client: every scope, two resource servers, may introspect any token (it doubles as the resource
# server in tests).
[[clients]]
client_id = "bench-client"
client_secret = "bench-secret-0123456789abcdef"
grant_types = ["client_credentials"]
scopes = ["read", "write", "admin"]
default_scopes = ["read"]
audience = "https://api.refbench.test"
resources = ["https://api.refbench.test", "https://reports.refbench.test"]
introspect_any = true

# A second client: tests that a client cannot revoke (or see) another's tokens.
[[clients]]
client_id = "other-client"
client_secret = "other-secret-0123456789abcdef"
grant_types = ["client_credentials"]
scopes = ["read"]
default_scopes = ["read"]
audience = "https://api.refbench.test"

# A client with no grant at all: every token request is `unauthorized_client`.
[[clients]]
client_id = "no-grant-client"
client_secret = "no-grant-secret-0123456789abcdef"
grant_types = []
scopes = ["read"]
audience = "https://api.refbench.test"

# A confidential web application: authorization code with PKCE, refresh tokens, OpenID Connect.
[[clients]]
client_id = "web-app"
client_secret = "web-secret-0123456789abcdef"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["http://127.0.0.1/callback", "http://localhost/callback", "https://app.refbench.test/callback"]
scopes = ["openid", "profile", "email", "read", "write", "offline_access"]
default_scopes = ["openid"]
audience = "https://api.refbench.test"

# A public native application (no secret, RFC 8252): loopback redirect URIs, any port (RFC 8252 §7.3).
[[clients]]
client_id = "native-app"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["http://127.0.0.1/callback", "http://[::1]/callback"]
scopes = ["openid", "profile", "email", "read", "offline_access"]
default_scopes = ["openid"]
audience = "https://api.refbench.test"

# Token exchange (RFC 8693) without any network: it exchanges this issuer's own tokens (e.g. bench-client's) for
# tokens scoped to the reports API (see `exchange_policies` below). Federation with another issuer is opt-in through
# a config file with `[[trusted_issuers]]`.
[[clients]]
client_id = "exchange-client"
client_secret = "exchange-secret-0123456789abcdef"
grant_types = ["urn:ietf:params:oauth:grant-type:token-exchange"]
scopes = ["read", "write"]
audience = "https://reports.refbench.test"
resources = ["https://api.refbench.test"]

# `private_key_jwt` (RFC 7523 §2.2): the public half of a P-256 key whose private half is the test fixture
# `tests/fixtures/pkjwt-client.pkcs8.der` (published, like every secret here: loopback only).
[[clients]]
client_id = "pkjwt-client"
token_endpoint_auth_method = "private_key_jwt"
jwks = '{"keys":[{"kty":"EC","crv":"P-256","x":"ZvRjCSR4cKOa0_KiLyvh4bBUgXx0dOYW7oVEt5AMjGA","y":"p2v9EW83DwnQM1Eng0gQHwXIppVHat3C1xg3Zyl0e44","kid":"86UeO0-NOVpzv71rjJMDnDi0Z_xJoCKgoOSd9OqyCh0","alg":"ES256","use":"sig"}]}'
grant_types = ["client_credentials"]
scopes = ["read"]
default_scopes = ["read"]
audience = "https://api.refbench.test"

# Who may exchange which tokens for what (see API.md, token exchange).
[[exchange_policies]]
client_id = "exchange-client"
subjects_from = ["self"]
audiences = ["https://reports.refbench.test", "https://api.refbench.test"]
scopes = ["read", "write"]
may_act = true

[exchange_audiences]
reports = "https://reports.refbench.test"

# Test users for /login; their passwords are hashed with argon2id at start and the plaintext dropped.
[[users]]
username = "alice"
password = "alice-password"
sub = "user-alice"
name = "Alice Example"
email = "alice@refbench.test"

[[users]]
username = "bob"
password = "bob-password"
sub = "user-bob"
name = "Bob Example"
email = "bob@refbench.test"
"#;

/// Largest access or ID token lifetime: one day. Longer-lived bearer tokens are what refresh tokens are for.
pub const MAX_TOKEN_LIFETIME_S: u64 = 86_400;
/// Largest refresh token lifetime: 90 days.
pub const MAX_REFRESH_LIFETIME_S: u64 = 90 * 86_400;
/// Largest clock-skew leeway accepted in verification: five minutes.
pub const MAX_CLOCK_LEEWAY_S: u64 = 300;
/// Largest key rotation period: 30 days.
pub const MAX_ROTATE_EVERY_S: u64 = 30 * 86_400;
/// Largest `Cache-Control: max-age` of the JWKS: one day.
pub const MAX_JWKS_MAX_AGE_S: u64 = 86_400;
/// Largest revocation set (entries of ~40 bytes: 16-byte key, 8-byte expiry, table overhead).
pub const MAX_REVOKED_TOKENS: usize = 10_000_000;
/// Most clients in one config (they are all held in memory and hashed at start).
pub const MAX_CLIENTS: usize = 10_000;
/// Most users in one config.
pub const MAX_USERS: usize = 10_000;
/// Most scopes a client may be allowed (scope checks scan the list).
pub const MAX_SCOPES_PER_CLIENT: usize = 64;
/// Most resource indicators a client may be allowed.
pub const MAX_RESOURCES_PER_CLIENT: usize = 16;
/// Longest client id, username, scope token, audience or resource URI.
pub const MAX_NAME_CHARS: usize = 256;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped key (the message names the key and the line).
    #[error("config {path}: {message}")]
    Parse {
        /// The file, or `<embedded defaults>`.
        path: PathBuf,
        /// toml's message: line, column, key.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config {field}: {reason}")]
    Invalid {
        /// The field, e.g. `clients[1].scopes[0]` or `rotate_every_s`.
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The TOML file as written. Absent scalars take the defaults of [`DEFAULT_CONFIG_TOML`]; `clients` and `users`
/// replace the embedded ones entirely.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The issuer identifier (`iss`, discovery's `issuer`); default: `http://<bound address>`.
    pub issuer: Option<String>,
    /// `ES256` (default) or `EdDSA`.
    pub signing_alg: Option<SigningAlg>,
    /// Access token lifetime, seconds.
    pub access_token_lifetime_s: Option<u64>,
    /// ID token lifetime, seconds.
    pub id_token_lifetime_s: Option<u64>,
    /// Refresh token lifetime, seconds (refresh tokens are opaque and not signed by the ring's keys).
    pub refresh_token_lifetime_s: Option<u64>,
    /// Clock skew tolerated when verifying `exp`, `nbf` and `iat`, seconds.
    pub clock_leeway_s: Option<u64>,
    /// Key rotation period, seconds; 0 = only on demand.
    pub rotate_every_s: Option<u64>,
    /// `Cache-Control: max-age` of the JWKS, seconds.
    pub jwks_max_age_s: Option<u64>,
    /// Most revoked tokens remembered at once.
    pub max_revoked_tokens: Option<usize>,
    /// Registered clients.
    pub clients: Option<Vec<FileClient>>,
    /// Users who can log in at `/login`.
    pub users: Option<Vec<FileUser>>,
    /// `[password_hashing]`: argon2id cost of user passwords (see [`crate::password`]).
    pub password_hashing: Option<crate::password::PasswordHashingFile>,
    /// `[authorization]`: limits of the authorization-code flow's stores (see [`crate::authorize`]).
    pub authorization: Option<crate::authorize::AuthorizationFile>,
    /// Other issuers whose JWTs are accepted as JWT bearer assertions and token-exchange subjects (federation).
    pub trusted_issuers: Option<Vec<crate::trust::FileTrustedIssuer>>,
    /// Who may exchange which tokens for what (RFC 8693).
    pub exchange_policies: Option<Vec<crate::grants::token_exchange::FilePolicy>>,
    /// Logical names of the token-exchange `audience` parameter (RFC 8693 §2.1) and the `aud` each stands for.
    pub exchange_audiences: Option<std::collections::BTreeMap<String, String>>,
    /// Most assertion `jti`s remembered at once against replay (`private_key_jwt`, JWT bearer).
    pub max_assertion_jtis: Option<usize>,
}

/// One client as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClient {
    /// The client id (RFC 6749 §2.2): visible ASCII.
    pub client_id: String,
    /// The secret in plaintext: hashed at start under the server's pepper, then dropped. For tests and benches.
    pub client_secret: Option<String>,
    /// The secret as HMAC-SHA256(pepper, secret), unpadded base64url, from `token-issuer hash-secret`; needs the
    /// same pepper (`--secret-pepper-file`).
    pub client_secret_hmac: Option<String>,
    /// Grants the client may use; default `["client_credentials"]`.
    pub grant_types: Option<Vec<String>>,
    /// `client_secret_basic`, `client_secret_post`, `none` (a public client: no secret, authorization code with
    /// PKCE and refresh tokens only) or `private_key_jwt` (with `jwks`, no secret). Absent: both secret methods with
    /// a secret, `private_key_jwt` with `jwks`.
    pub token_endpoint_auth_method: Option<String>,
    /// Redirect URIs registered for the authorization code flow (compared as exact strings).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Scopes the client may be granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Scopes granted when a request has no `scope` (RFC 6749 §3.3); empty = such a request is `invalid_scope`.
    #[serde(default)]
    pub default_scopes: Vec<String>,
    /// The `aud` of tokens requested without a `resource`.
    pub audience: String,
    /// Resource indicators (RFC 8707) the client may ask for; the audience is always allowed.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Whether the client may introspect tokens issued to other clients (a resource server); otherwise it sees
    /// only its own (RFC 7662 §4).
    #[serde(default)]
    pub introspect_any: bool,
    /// The client's public keys for `private_key_jwt`: a JWK Set as a JSON string or a TOML table.
    pub jwks: Option<toml::Value>,
}

/// One user as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUser {
    /// Login name.
    pub username: String,
    /// Password, for test users only: hashed at load with argon2id (human passwords are low-entropy, unlike client
    /// secrets) and dropped.
    pub password: Option<String>,
    /// The password as an argon2id PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`), instead of `password`.
    pub password_hash: Option<String>,
    /// Subject identifier (`sub`); default: the username.
    pub sub: Option<String>,
    /// Display name (`name` claim).
    pub name: Option<String>,
    /// Email (`email` claim).
    pub email: Option<String>,
}

/// A registered client, validated.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client id.
    pub id: String,
    /// The stored secret hash; `None` for a public client.
    pub secret: Option<SecretHash>,
    /// The one authentication method configured; `None` = `client_secret_basic` or `client_secret_post`.
    pub auth_method: Option<crate::client_auth::AuthMethod>,
    /// Registered redirect URIs (exact match; loopback any-port for public clients, see [`crate::authorize`]).
    pub redirect_uris: Vec<String>,
    /// Allowed grants.
    pub grants: GrantSet,
    /// Allowed scopes.
    pub scopes: Vec<String>,
    /// The granted scope (space-separated) when the request has none; empty = refuse.
    pub default_scope: String,
    /// `aud` without a `resource` parameter.
    pub audience: String,
    /// Allowed resource indicators (the audience included).
    pub resources: Vec<String>,
    /// May introspect other clients' tokens.
    pub introspect_any: bool,
    /// The public keys of a `private_key_jwt` client (then `secret` is `None`).
    pub jwks: Option<Arc<crate::assertion::KeySet>>,
}

impl Client {
    /// Whether `scope` is allowed.
    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Whether `resource` is allowed.
    pub fn allows_resource(&self, resource: &str) -> bool {
        self.resources.iter().any(|r| r == resource)
    }
}

/// A user, validated.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub username: String,
    /// The argon2id PHC string of the password.
    pub password_hash: Arc<str>,
    /// Subject identifier.
    pub sub: String,
    /// Display name.
    pub name: Option<String>,
    /// Email.
    pub email: Option<String>,
}

/// Token lifetimes, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Access tokens.
    pub access_s: u64,
    /// ID tokens.
    pub id_s: u64,
    /// Refresh tokens (opaque, never signed by the key ring).
    pub refresh_s: u64,
}

impl Lifetimes {
    /// The longest lifetime of a token the key ring signs (access and ID tokens): how long a retired key must stay
    /// published.
    pub fn max_signed_s(&self) -> u64 {
        self.access_s.max(self.id_s)
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// The issuer identifier, if given (otherwise derived from the bound address at start).
    pub issuer: Option<String>,
    /// The signing algorithm of every key.
    pub signing_alg: SigningAlg,
    /// Token lifetimes.
    pub lifetimes: Lifetimes,
    /// Clock skew tolerated in verification, seconds.
    pub clock_leeway_s: u64,
    /// Scheduled rotation period; `None` = on demand only.
    pub rotate_every_s: Option<u64>,
    /// JWKS `max-age`, seconds.
    pub jwks_max_age_s: u64,
    /// Revocation set bound.
    pub max_revoked_tokens: usize,
    /// Clients, each `Arc` so a request holds one without copying.
    pub clients: Vec<Arc<Client>>,
    /// Users.
    pub users: Vec<User>,
    /// Hashes presented secrets (holds the pepper).
    pub hasher: SecretHasher,
    /// argon2id cost of user passwords and the bound on checks in flight.
    pub password_params: crate::password::PasswordParams,
    /// Limits of the authorization-code flow.
    pub authorization: crate::authorize::AuthorizationLimits,
    /// Trusted issuers, exchange policies and the replay bound.
    pub federation: crate::trust::FederationConfig,
}

impl FileConfig {
    /// The embedded defaults.
    pub fn embedded() -> FileConfig {
        FileConfig::parse(DEFAULT_CONFIG_TOML, Path::new("<embedded defaults>"))
            .expect("the embedded config parses (tested)")
    }

    /// Parses TOML text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    /// Validates everything once, filling absent scalars from the embedded defaults. Plaintext secrets are hashed
    /// under `hasher`'s pepper; `pepper_given` says whether that pepper came from the operator (needed to accept
    /// `client_secret_hmac`, which was made under it) or is a random one of this process.
    pub fn resolve(
        self,
        hasher: SecretHasher,
        pepper_given: bool,
    ) -> Result<ResolvedConfig, ConfigError> {
        // One source of truth for the defaults: the embedded file (parsed once per start).
        let d = FileConfig::embedded();
        let pick = |v: Option<u64>, dv: Option<u64>| v.or(dv).unwrap_or(0);
        let lifetimes = Lifetimes {
            access_s: pick(self.access_token_lifetime_s, d.access_token_lifetime_s),
            id_s: pick(self.id_token_lifetime_s, d.id_token_lifetime_s),
            refresh_s: pick(self.refresh_token_lifetime_s, d.refresh_token_lifetime_s),
        };
        range(
            "access_token_lifetime_s",
            lifetimes.access_s,
            1,
            MAX_TOKEN_LIFETIME_S,
        )?;
        range(
            "id_token_lifetime_s",
            lifetimes.id_s,
            1,
            MAX_TOKEN_LIFETIME_S,
        )?;
        range(
            "refresh_token_lifetime_s",
            lifetimes.refresh_s,
            1,
            MAX_REFRESH_LIFETIME_S,
        )?;
        let clock_leeway_s = pick(self.clock_leeway_s, d.clock_leeway_s);
        range("clock_leeway_s", clock_leeway_s, 0, MAX_CLOCK_LEEWAY_S)?;
        let rotate = pick(self.rotate_every_s, d.rotate_every_s);
        range("rotate_every_s", rotate, 0, MAX_ROTATE_EVERY_S)?;
        let rotate_every_s = (rotate > 0).then_some(rotate);
        if let Some(every) = rotate_every_s {
            crate::keys::check_rotation_period(every, lifetimes.max_signed_s() + clock_leeway_s)
                .map_err(|reason| invalid("rotate_every_s", reason))?;
        }
        let jwks_max_age_s = pick(self.jwks_max_age_s, d.jwks_max_age_s);
        range("jwks_max_age_s", jwks_max_age_s, 0, MAX_JWKS_MAX_AGE_S)?;
        if let Some(every) = rotate_every_s {
            // A verifier must refetch the JWKS between two rotations to learn each new `next` key before it signs.
            if jwks_max_age_s > every {
                return Err(invalid(
                    "jwks_max_age_s",
                    format!(
                        "must not exceed rotate_every_s ({every}), or a verifier's cached JWKS can miss the key that \
                         starts signing at the next rotation; got {jwks_max_age_s}"
                    ),
                ));
            }
        }
        let max_revoked_tokens = self
            .max_revoked_tokens
            .or(d.max_revoked_tokens)
            .unwrap_or(1);
        range(
            "max_revoked_tokens",
            max_revoked_tokens as u64,
            1,
            MAX_REVOKED_TOKENS as u64,
        )?;
        let issuer = match self.issuer {
            Some(i) => {
                validate_issuer(&i).map_err(|r| invalid("issuer", r))?;
                Some(i)
            }
            None => None,
        };
        let signing_alg = self.signing_alg.or(d.signing_alg).unwrap_or_default();
        // Never the embedded test clients for a file: a file without clients is refused, not silently filled.
        let clients = self.clients.unwrap_or_default();
        let users = self.users.unwrap_or_default();
        let clients = resolve_clients(clients, &hasher, pepper_given)?;
        let password_params = self.password_hashing.unwrap_or_default().resolve()?;
        let authorization = self.authorization.unwrap_or_default().resolve()?;
        let users = resolve_users(users, &password_params)?;
        // A file without federation sections has none (never the embedded demo policy).
        let federation = crate::trust::FederationConfig::resolve(
            self.trusted_issuers.unwrap_or_default(),
            self.exchange_policies.unwrap_or_default(),
            self.exchange_audiences.unwrap_or_default(),
            self.max_assertion_jtis,
            &clients,
        )?;
        Ok(ResolvedConfig {
            issuer,
            signing_alg,
            lifetimes,
            clock_leeway_s,
            rotate_every_s,
            jwks_max_age_s,
            max_revoked_tokens,
            clients,
            users,
            hasher,
            password_params,
            authorization,
            federation,
        })
    }
}

fn range(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        Err(invalid(
            field,
            format!("must be between {lo} and {hi}, got {v}"),
        ))
    } else {
        Ok(())
    }
}

/// Checks an issuer identifier: `http` or `https`, a host, no query or fragment, no trailing slash (endpoint URLs are
/// the issuer plus a path). RFC 8414 §2 asks for `https`; plain `http` is accepted because benchmarks run on
/// loopback without TLS.
pub fn validate_issuer(issuer: &str) -> Result<(), String> {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .ok_or_else(|| format!("must start with https:// or http://, got {issuer:?}"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("has no host: {issuer:?}"));
    }
    if issuer.contains(['?', '#']) {
        return Err(format!("must have no query or fragment: {issuer:?}"));
    }
    if issuer.ends_with('/') {
        return Err(format!("must not end with '/': {issuer:?}"));
    }
    if issuer.len() > MAX_NAME_CHARS || issuer.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "must be at most {MAX_NAME_CHARS} visible ASCII characters: {issuer:?}"
        ));
    }
    Ok(())
}

/// Whether every character is visible ASCII (RFC 6749 VSCHAR without space): client ids, usernames.
pub(crate) fn visible_ascii(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Whether `s` is a scope token (RFC 6749 §3.3: `%x21 / %x23-5B / %x5D-7E`, i.e. no space, `"` or `\`).
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_CHARS
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Whether `s` can be a resource indicator (RFC 8707 §2): an absolute URI (a scheme, then ':') without a fragment.
pub fn is_resource_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut sb = scheme.bytes();
    let scheme_ok = sb.next().is_some_and(|b| b.is_ascii_alphabetic())
        && sb.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    scheme_ok
        && !rest.is_empty()
        && !s.contains('#')
        && s.len() <= MAX_NAME_CHARS
        && s.bytes().all(|b| b.is_ascii_graphic())
}

fn resolve_clients(
    clients: Vec<FileClient>,
    hasher: &SecretHasher,
    pepper_given: bool,
) -> Result<Vec<Arc<Client>>, ConfigError> {
    if clients.is_empty() {
        return Err(invalid("clients", "at least one client is required"));
    }
    if clients.len() > MAX_CLIENTS {
        return Err(invalid(
            "clients",
            format!("at most {MAX_CLIENTS} clients, got {}", clients.len()),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(clients.len());
    for (i, c) in clients.into_iter().enumerate() {
        let f = |name: &str| format!("clients[{i}].{name}");
        if !visible_ascii(&c.client_id) || c.client_id.len() > MAX_NAME_CHARS {
            return Err(invalid(
                f("client_id"),
                format!("must be 1 to {MAX_NAME_CHARS} visible ASCII characters"),
            ));
        }
        if !seen.insert(c.client_id.clone()) {
            return Err(invalid(
                f("client_id"),
                format!("{:?} is registered twice", c.client_id),
            ));
        }
        let auth_method = match c.token_endpoint_auth_method.as_deref() {
            None => None,
            Some(m) => Some(
                crate::client_auth::AuthMethod::ALL
                    .into_iter()
                    .find(|a| a.as_str() == m)
                    .ok_or_else(|| {
                        invalid(
                            f("token_endpoint_auth_method"),
                            format!("unknown method {m:?}: client_secret_basic, client_secret_post, none or private_key_jwt"),
                        )
                    })?,
            ),
        };
        let public = auth_method == Some(crate::client_auth::AuthMethod::None);
        let secret = match (c.client_secret, c.client_secret_hmac) {
            (Some(_), _) | (_, Some(_)) if public => {
                return Err(invalid(
                    f("client_secret"),
                    "a public client (token_endpoint_auth_method = \"none\") has no secret",
                ));
            }
            (None, None) if public => None,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    f("client_secret"),
                    "give client_secret or client_secret_hmac, not both",
                ));
            }
            (None, None) => None,
            (Some(s), None) => {
                let n = s.chars().count();
                if !(MIN_CLIENT_SECRET_CHARS..=MAX_CLIENT_SECRET_CHARS).contains(&n)
                    || s.chars().any(|c| !(' '..='~').contains(&c))
                {
                    return Err(invalid(
                        f("client_secret"),
                        format!(
                            "must be {MIN_CLIENT_SECRET_CHARS} to {MAX_CLIENT_SECRET_CHARS} printable ASCII \
                             characters (a generated secret of at least 128 bits), got {n} characters"
                        ),
                    ));
                }
                Some(hasher.hash(s.as_bytes()))
            }
            (None, Some(h)) => {
                if !pepper_given {
                    return Err(invalid(
                        f("client_secret_hmac"),
                        "needs the pepper it was made under: start with --secret-pepper-file",
                    ));
                }
                Some(
                    SecretHash::from_b64(&h)
                        .map_err(|e| invalid(f("client_secret_hmac"), e.to_string()))?,
                )
            }
        };
        let jwks = match c.jwks {
            None => None,
            Some(v) => Some(Arc::new(
                crate::private_key_jwt::client_jwks(&v).map_err(|r| invalid(f("jwks"), r))?,
            )),
        };
        crate::private_key_jwt::check_auth_method(
            c.token_endpoint_auth_method.as_deref(),
            secret.is_some(),
            jwks.is_some(),
        )
        .map_err(|(field, r)| invalid(f(field), r))?;
        let mut grants = GrantSet::default();
        let names = c
            .grant_types
            .unwrap_or_else(|| vec![Grant::ClientCredentials.as_str().to_string()]);
        for (j, g) in names.iter().enumerate() {
            let grant = Grant::from_param(g).ok_or_else(|| {
                let known: Vec<&str> = Grant::ALL.iter().map(|g| g.as_str()).collect();
                invalid(
                    format!("clients[{i}].grant_types[{j}]"),
                    format!("unknown or unimplemented grant {g:?} (implemented: {known:?})"),
                )
            })?;
            grants.insert(grant);
        }
        crate::authorize::check_client_flows(
            i,
            public,
            grants,
            c.introspect_any,
            &c.redirect_uris,
        )?;
        if c.scopes.len() > MAX_SCOPES_PER_CLIENT {
            return Err(invalid(
                f("scopes"),
                format!("at most {MAX_SCOPES_PER_CLIENT} scopes"),
            ));
        }
        for (j, s) in c.scopes.iter().enumerate() {
            if !is_scope_token(s) {
                return Err(invalid(
                    format!("clients[{i}].scopes[{j}]"),
                    format!("{s:?} is not a scope token (RFC 6749 §3.3: no space, '\"' or '\\')"),
                ));
            }
        }
        for (j, s) in c.default_scopes.iter().enumerate() {
            if !c.scopes.contains(s) {
                return Err(invalid(
                    format!("clients[{i}].default_scopes[{j}]"),
                    format!("{s:?} is not in this client's scopes"),
                ));
            }
        }
        if !is_resource_uri(&c.audience) {
            return Err(invalid(
                f("audience"),
                format!(
                    "must be an absolute URI without a fragment, at most {MAX_NAME_CHARS} characters: {:?}",
                    c.audience
                ),
            ));
        }
        if c.resources.len() > MAX_RESOURCES_PER_CLIENT {
            return Err(invalid(
                f("resources"),
                format!("at most {MAX_RESOURCES_PER_CLIENT} resources"),
            ));
        }
        for (j, r) in c.resources.iter().enumerate() {
            if !is_resource_uri(r) {
                return Err(invalid(
                    format!("clients[{i}].resources[{j}]"),
                    format!("must be an absolute URI without a fragment (RFC 8707): {r:?}"),
                ));
            }
        }
        let mut resources = c.resources;
        if !resources.contains(&c.audience) {
            resources.push(c.audience.clone());
        }
        let mut default_scope = String::new();
        for s in &c.default_scopes {
            if !default_scope.split(' ').any(|x| x == s) {
                if !default_scope.is_empty() {
                    default_scope.push(' ');
                }
                default_scope.push_str(s);
            }
        }
        out.push(Arc::new(Client {
            id: c.client_id,
            secret,
            auth_method,
            redirect_uris: c.redirect_uris,
            grants,
            scopes: c.scopes,
            default_scope,
            audience: c.audience,
            resources,
            introspect_any: c.introspect_any,
            jwks,
        }));
    }
    Ok(out)
}

fn resolve_users(
    users: Vec<FileUser>,
    params: &crate::password::PasswordParams,
) -> Result<Vec<User>, ConfigError> {
    if users.len() > MAX_USERS {
        return Err(invalid(
            "users",
            format!("at most {MAX_USERS} users, got {}", users.len()),
        ));
    }
    let mut names = HashSet::new();
    let mut subs = HashSet::new();
    let mut out = Vec::with_capacity(users.len());
    for (i, u) in users.into_iter().enumerate() {
        let f = |name: &str| format!("users[{i}].{name}");
        if !visible_ascii(&u.username) || u.username.len() > MAX_NAME_CHARS {
            return Err(invalid(
                f("username"),
                format!("must be 1 to {MAX_NAME_CHARS} visible ASCII characters"),
            ));
        }
        if !names.insert(u.username.clone()) {
            return Err(invalid(
                f("username"),
                format!("{:?} appears twice", u.username),
            ));
        }
        let password_hash: Arc<str> = match (u.password, u.password_hash) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    f("password"),
                    "give password or password_hash, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    f("password"),
                    "password or password_hash is required",
                ));
            }
            (Some(p), None) => {
                if p.is_empty() || p.len() > crate::password::MAX_PASSWORD_BYTES {
                    return Err(invalid(
                        f("password"),
                        format!("must be 1 to {} bytes", crate::password::MAX_PASSWORD_BYTES),
                    ));
                }
                crate::password::hash_password(&p, params)
                    .map_err(|e| invalid(f("password"), e.to_string()))?
                    .into()
            }
            (None, Some(h)) => {
                crate::password::check_phc(&h)
                    .map_err(|e| invalid(f("password_hash"), e.to_string()))?;
                h.into()
            }
        };
        let sub = u.sub.unwrap_or_else(|| u.username.clone());
        if !visible_ascii(&sub) || sub.len() > MAX_NAME_CHARS {
            return Err(invalid(
                f("sub"),
                format!("must be 1 to {MAX_NAME_CHARS} visible ASCII characters"),
            ));
        }
        if !subs.insert(sub.clone()) {
            return Err(invalid(f("sub"), format!("{sub:?} appears twice")));
        }
        out.push(User {
            username: u.username,
            password_hash,
            sub,
            name: u.name,
            email: u.email,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> SecretHasher {
        SecretHasher::new(&[1u8; 32])
    }

    fn resolve(text: &str) -> Result<ResolvedConfig, ConfigError> {
        FileConfig::parse(text, Path::new("t.toml"))?.resolve(hasher(), false)
    }

    const ONE_CLIENT: &str = r#"
[[clients]]
client_id = "c"
client_secret = "0123456789abcdefghijklmnop"
scopes = ["read"]
audience = "https://api.test"
"#;

    #[test]
    fn embedded_defaults_resolve() {
        let c = FileConfig::embedded().resolve(hasher(), false).unwrap();
        assert_eq!(c.signing_alg, SigningAlg::Es256);
        assert_eq!(c.lifetimes.access_s, 300);
        assert_eq!(c.rotate_every_s, None);
        assert_eq!(c.clients.len(), 7);
        assert!(
            c.clients[4].secret.is_none() && c.clients[4].jwks.is_none(),
            "native-app"
        );
        assert!(c.clients[3].grants.contains(Grant::AuthorizationCode));
        assert!(
            c.users[1]
                .password_hash
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert_eq!(c.clients[0].id, "bench-client");
        assert!(
            c.clients[6].jwks.is_some() && c.clients[6].secret.is_none(),
            "pkjwt-client"
        );
        assert_eq!(c.federation.policies.len(), 1);
        assert!(c.federation.trusted_issuers.is_empty());
        assert_eq!(c.clients[0].default_scope, "read");
        assert!(c.clients[0].allows_resource("https://api.refbench.test"));
        assert!(c.clients[0].grants.contains(Grant::ClientCredentials));
        assert!(!c.clients[2].grants.contains(Grant::ClientCredentials));
        assert_eq!(c.users[0].sub, "user-alice");
    }

    #[test]
    fn a_file_takes_scalar_defaults_and_replaces_clients() {
        let c = resolve(ONE_CLIENT).unwrap();
        assert_eq!(c.clients.len(), 1);
        assert_eq!(c.lifetimes.access_s, 300);
        assert!(c.users.is_empty());
        assert!(c.clients[0].allows_resource("https://api.test"));
    }

    fn err(text: &str) -> String {
        resolve(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&format!("bogus = 1\n{ONE_CLIENT}"));
        assert!(e.contains("bogus"), "{e}");
        let e = err(&ONE_CLIENT.replace("audience", "colour = 1\naudience"));
        assert!(e.contains("colour"), "{e}");
        let e = err(&format!("access_token_lifetime_s = 0\n{ONE_CLIENT}"));
        assert!(e.contains("access_token_lifetime_s"), "{e}");
        let e = err(&format!("signing_alg = \"HS256\"\n{ONE_CLIENT}"));
        assert!(e.contains("signing_alg") || e.contains("HS256"), "{e}");
        let e = err(&ONE_CLIENT.replace("0123456789abcdefghijklmnop", "short"));
        assert!(e.contains("clients[0].client_secret"), "{e}");
        let e = err(&ONE_CLIENT.replace("[\"read\"]", "[\"re ad\"]"));
        assert!(e.contains("clients[0].scopes[0]"), "{e}");
        let e = err(&ONE_CLIENT.replace("https://api.test", "api.test"));
        assert!(e.contains("clients[0].audience"), "{e}");
        let e = err(&format!("{ONE_CLIENT}grant_types = [\"password\"]\n"));
        assert!(e.contains("clients[0].grant_types[0]"), "{e}");
        let e = err(&format!(
            "{ONE_CLIENT}grant_types = [\"authorization_code\"]\n"
        ));
        assert!(e.contains("clients[0].redirect_uris"), "{e}");
        let e = err(&format!(
            "{ONE_CLIENT}token_endpoint_auth_method = \"none\"\n"
        ));
        assert!(e.contains("clients[0].client_secret"), "{e}");
        let e = err(&format!(
            "{ONE_CLIENT}token_endpoint_auth_method = \"private_key_jwt\"\n"
        ));
        assert!(e.contains("clients[0].jwks"), "{e}");
        let e = err(&format!(
            "{ONE_CLIENT}token_endpoint_auth_method = \"mtls\"\n"
        ));
        assert!(e.contains("clients[0].token_endpoint_auth_method"), "{e}");
        let e = err(&format!(
            "{ONE_CLIENT}[[users]]\nusername = \"u\"\npassword_hash = \"plain\"\n"
        ));
        assert!(e.contains("users[0].password_hash"), "{e}");
        let e = err(&format!("{ONE_CLIENT}[[users]]\nusername = \"u\"\n"));
        assert!(e.contains("users[0].password"), "{e}");
        let e = err(&format!("authorization.max_sessions = 0\n{ONE_CLIENT}"));
        assert!(e.contains("authorization.max_sessions"), "{e}");
        let e = err(&format!("{ONE_CLIENT}default_scopes = [\"write\"]\n"));
        assert!(e.contains("clients[0].default_scopes[0]"), "{e}");
        let e = err(&format!("{ONE_CLIENT}{ONE_CLIENT}"));
        assert!(e.contains("clients[1].client_id"), "{e}");
        let e = err(&format!(
            "{}client_secret_hmac = \"{}\"\n",
            ONE_CLIENT.replace("client_secret = \"0123456789abcdefghijklmnop\"\n", ""),
            hasher().hash(b"x").to_b64()
        ));
        assert!(e.contains("clients[0].client_secret_hmac"), "{e}");
        let e = err(&format!("issuer = \"http://x/\"\n{ONE_CLIENT}"));
        assert!(e.contains("issuer"), "{e}");
        let e = err("clients = []");
        assert!(e.contains("clients"), "{e}");
    }

    #[test]
    fn rotation_period_is_checked_against_the_published_key_bound() {
        // 300 s tokens + 30 s leeway rotated every second would publish hundreds of retired keys.
        let e = err(&format!("rotate_every_s = 1\n{ONE_CLIENT}"));
        assert!(e.contains("rotate_every_s"), "{e}");
        let e = err(&format!(
            "rotate_every_s = 600\njwks_max_age_s = 900\n{ONE_CLIENT}"
        ));
        assert!(e.contains("jwks_max_age_s"), "{e}");
        let c = resolve(&format!(
            "rotate_every_s = 600\njwks_max_age_s = 60\n{ONE_CLIENT}"
        ))
        .unwrap();
        assert_eq!(c.rotate_every_s, Some(600));
    }

    #[test]
    fn hmac_secrets_are_accepted_with_the_pepper() {
        let text = format!(
            "{}client_secret_hmac = \"{}\"\n",
            ONE_CLIENT.replace("client_secret = \"0123456789abcdefghijklmnop\"\n", ""),
            hasher().hash(b"0123456789abcdefghijklmnop").to_b64()
        );
        let c = FileConfig::parse(&text, Path::new("t"))
            .unwrap()
            .resolve(hasher(), true)
            .unwrap();
        assert!(
            c.hasher
                .verify(b"0123456789abcdefghijklmnop", c.clients[0].secret.as_ref())
        );
    }

    #[test]
    fn syntax_helpers() {
        assert!(is_scope_token("read:all"));
        assert!(!is_scope_token("a b"));
        assert!(!is_scope_token("a\"b"));
        assert!(!is_scope_token(""));
        assert!(is_resource_uri("https://api.test/x"));
        assert!(is_resource_uri("urn:example:api"));
        assert!(!is_resource_uri("https://api.test/#frag"));
        assert!(!is_resource_uri("/relative"));
        assert!(!is_resource_uri("1http://x"));
        assert!(validate_issuer("http://127.0.0.1:8080").is_ok());
        assert!(validate_issuer("https://id.test/realms/a").is_ok());
        assert!(validate_issuer("ftp://x").is_err());
        assert!(validate_issuer("https://x?y").is_err());
        assert!(validate_issuer("https://").is_err());
    }
}
