//! The token-issuer reference server: the core of an OAuth 2.0 / OpenID Connect token issuer (see `API.md`).
//!
//! Layers, bottom up:
//! - [`clock`]: the injected notion of "now" (system or manual, for tests).
//! - [`config`]: the TOML file as written, the embedded test defaults and the validated configuration.
//! - [`secret`]: client secrets as HMAC-SHA256 under a pepper, compared in constant time; the admin token.
//! - [`keys`]: signing keys (ES256 default, EdDSA) and the key ring with `next`, `current` and `retired` states,
//!   rotation and the prebuilt JWKS.
//! - [`token`] and [`verify`]: minting RFC 9068 access tokens; verifying them (a pure function).
//! - [`form`], [`client_auth`], [`oauth`]: strict form bodies, `client_secret_basic` / `client_secret_post`, and
//!   RFC 6749 §5.2 error answers.
//! - [`grants`]: the [`grants::Grant`] enum and one module per grant: `client_credentials`, `authorization_code`
//!   (PKCE `S256`), `refresh_token` (rotation, reuse detection revoking the family), `jwt_bearer` (RFC 7523) and
//!   `token_exchange` (RFC 8693, `act`, policies).
//! - [`password`]: argon2id user passwords, verified on the blocking pool with a bound in flight; [`store`]: the
//!   bounded, expiring maps of the user flows; [`authorize`]: `/authorize`, the login form and `/login`, sessions and
//!   codes; [`id_token`]: user access tokens and ID tokens (`at_hash`); [`userinfo`]: `/userinfo`.
//! - [`assertion`]: verifying JWTs signed by others (asymmetric `alg` allow-list, JWK Sets, time and audience
//!   rules) and the bounded `jti` replay cache; [`private_key_jwt`]: client authentication by signed assertion.
//! - [`fetch`]: bounded loopback-only HTTP GETs; [`trust`]: trusted issuers (inline or fetched JWKS with refresh),
//!   subject mapping, exchange policies (federation).
//! - [`revoke`]: the bounded revocation set; [`discovery`]: the discovery document; [`metrics`].
//! - [`app`]: the HTTP service ([`app()`] builds it, [`OidcApp::handle`] answers without a socket);
//!   [`server`]: flags, start-up and serving ([`run`], [`start`]).
//!
//! Cryptography comes from maintained crates, never written here: aws-lc-rs for key generation, ECDSA P-256 and
//! Ed25519 signing, HMAC-SHA256, SHA-256, randomness and constant-time comparison; `jsonwebtoken` (on aws-lc-rs) for
//! JWS parsing and signature verification and for the JWK/JWKS types. Tokens are signed with each key's cached,
//! parsed aws-lc-rs key pair rather than `jsonwebtoken::encode`, which parses the PKCS#8 document (with a key
//! consistency check) again for every token.
//!
//! # Client secrets
//!
//! A client secret is stored only as HMAC-SHA256(pepper, secret): the pepper is a 256-bit key held by the server
//! (random per process, or from `--secret-pepper-file`) and never stored with the hashes. A presented secret is
//! hashed the same way and compared with [`aws_lc_rs::constant_time`], so the comparison leaks neither where the
//! first differing byte is nor (both sides being 32-byte digests) the secret's length.
//!
//! That is sound for client secrets because they are generated, not chosen: at least 128 bits of entropy (the
//! config refuses secrets shorter than 22 characters, the length of 128 random bits in base64url). Recovering such a
//! secret from its hash means searching 2^128 candidates: even a leaked hash together with the pepper, at a
//! trillion HMACs per second, needs ~10^19 years, so making each guess slower gains nothing. Without the pepper a
//! leaked hash cannot even be tested offline. Password hashing functions (bcrypt, scrypt, argon2id) exist for the
//! opposite case: human passwords have maybe 20–40 bits of entropy, so an attacker with a hash can try the likely
//! ones, and only a deliberately slow, memory-hard function (tens of milliseconds and megabytes per guess) makes that
//! search expensive. Paying that cost on every token request would cap an issuer at tens of requests per second per
//! core for no gain in security, which is why OAuth servers treat client secrets like API keys. User passwords
//! ([`config::User`], checked at `/login`) are the low-entropy case and are hashed with argon2id ([`password`]).

pub mod app;
pub mod assertion;
pub mod authorize;
pub mod client_auth;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod error;
pub mod expiring;
pub mod fetch;
pub mod form;
pub mod grants;
pub mod id_token;
pub mod keys;
pub mod metrics;
pub mod oauth;
pub mod password;
pub mod private_key_jwt;
pub mod revoke;
pub mod secret;
pub mod server;
pub mod store;
pub mod token;
pub mod trust;
pub mod userinfo;
pub mod verify;

pub use app::{Inactive, Issuer, MAX_FORM_BODY_BYTES, OidcApp, app};
pub use clock::Clock;
pub use config::{FileConfig, ResolvedConfig};
pub use error::OidcError;
pub use keys::{KeyRing, SigningAlg};
pub use server::{SYSTEM, ServeArgs, ServePlan, Started, derive_issuer, run, start};
pub use verify::{AccessClaims, Expected, VerifyError, verify_access_token};
