//! The origin's error types.

use refbench_common::CommonError;

/// Everything that can stop the origin from starting or running, and every
/// configuration or control value it refuses.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// A configuration, flag or control value is out of range or inconsistent.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault, e.g. `rules[2].cache_control` or `--fail-share`.
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// The `--config` file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    ConfigFile {
        /// The path given.
        path: String,
        /// The I/O or JSON error.
        reason: String,
    },

    /// A bounded table is full (versioned keys, prefix bumps).
    #[error("{table} is full ({limit} entries)")]
    Full {
        /// Which table.
        table: &'static str,
        /// Its configured limit.
        limit: usize,
    },

    /// Shared plumbing failed: binding, pinning, metrics, signals, accept.
    #[error(transparent)]
    Common(#[from] CommonError),

    /// The tokio runtime could not be built (usually: cannot spawn threads).
    #[error("cannot build the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),

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
        /// Which task: "http" or "admin".
        task: &'static str,
        /// The panic or cancellation message.
        reason: String,
    },
}

impl OriginError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        OriginError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The service error of an origin told to close connections ("down" injection):
/// hyper drops the connection without writing a response, as a crashed or
/// restarting origin would.
#[derive(Debug, thiserror::Error)]
#[error("origin down (injected): closing the connection without a response")]
pub struct ConnectionClosed;

/// The body error of a response cut short: the hang cap was reached at the
/// hang point, so the body is aborted (hyper resets the stream / closes the
/// connection) instead of holding one more stalled response.
#[derive(Debug, thiserror::Error)]
#[error("body aborted at byte {at_bytes}: {reason}")]
pub struct BodyAborted {
    /// How many body bytes had been sent.
    pub at_bytes: u64,
    /// Why.
    pub reason: &'static str,
}
