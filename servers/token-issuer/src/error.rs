//! The token issuer's error type: what can stop it from starting or running. Request-level failures are OAuth
//! answers ([`crate::oauth::OAuthError`]), never this.

use std::path::PathBuf;

use refbench_common::CommonError;

use crate::config::ConfigError;
use crate::keys::KeyError;

/// Everything that can stop the token issuer from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// A command-line value is out of range or inconsistent with another.
    #[error("{flag}: {reason}")]
    InvalidArg {
        /// The flag at fault, e.g. "--issuer".
        flag: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// A file named by a flag could not be read.
    #[error("{flag} {path}: {source}")]
    ReadFile {
        /// The flag, e.g. "--admin-token-file".
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The configuration file (or the embedded defaults) was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A signing key could not be generated or used.
    #[error("keys: {0}")]
    Key(#[from] KeyError),

    /// Shared plumbing failed: binding, pinning, metrics, signals, accept.
    #[error(transparent)]
    Common(#[from] CommonError),

    /// The tokio runtime could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What was being started.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },

    /// A listener's bound address could not be read back.
    #[error("cannot read the bound address of the {listener} listener: {source}")]
    LocalAddr {
        /// Which listener: "http" or "admin".
        listener: &'static str,
        /// The OS error.
        source: std::io::Error,
    },

    /// A serving task panicked or was cancelled.
    #[error("{task} task failed: {reason}")]
    Task {
        /// Which task.
        task: &'static str,
        /// The panic or cancellation message.
        reason: String,
    },

    /// A trusted issuer's discovery document or JWKS could not be fetched at start.
    #[error(transparent)]
    TrustedIssuer(#[from] crate::trust::TrustError),

    /// A document that always serializes did not (a bug).
    #[error("internal: {0}")]
    Internal(String),
}

impl OidcError {
    pub(crate) fn invalid(flag: &'static str, reason: impl Into<String>) -> Self {
        OidcError::InvalidArg {
            flag,
            reason: reason.into(),
        }
    }
}
