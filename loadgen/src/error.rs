//! Error types of the loadgen library. The CLI maps them to exit code 2 (invalid input) with the message as is.

use std::path::PathBuf;

/// A profile that could not be read, parsed or validated.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The profile file could not be read.
    #[error("cannot read profile {path}: {source}")]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown key or a value of the wrong type.
    #[error("profile {origin}: {message}")]
    Toml {
        /// File name or other origin of the text.
        origin: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value parsed but is not acceptable; `field` is the dotted path of the key.
    #[error("profile field `{field}`: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `phases[1].rate_rps`.
        field: String,
        /// Why the value is refused.
        reason: String,
    },
}

impl ProfileError {
    /// Shorthand for [`ProfileError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ProfileError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Failures while running load (as opposed to bad input).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A child process (server or loader) could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Which process.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A built-in server did not announce its addresses in time or exited early.
    #[error("server `{target}` did not become ready: {reason}")]
    ServerNotReady {
        /// The target name.
        target: String,
        /// What happened instead.
        reason: String,
    },
    /// A loader process failed or sent no report.
    #[error("loader process {index} failed: {reason}")]
    Loader {
        /// Loader index.
        index: usize,
        /// What happened.
        reason: String,
    },
    /// Writing results failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A histogram could not be encoded or decoded.
    #[error("histogram: {0}")]
    Histogram(String),
    /// The ledger scenario could not set up or look up its accounts (not a finding about correctness).
    #[error("ledger target `{target}`: {reason}")]
    Ledger {
        /// Target name.
        target: String,
        /// What failed.
        reason: String,
    },
    /// Goose refused the configuration or failed.
    #[error("goose: {0}")]
    Goose(String),
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl RunError {
    /// Shorthand for [`RunError::Io`].
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RunError::Io {
            what: what.into(),
            source,
        }
    }
}
