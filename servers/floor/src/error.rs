//! The floor server's error type.

use refbench_common::CommonError;

/// Everything that can stop the floor server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// A command-line value is out of range or inconsistent with another.
    #[error("{flag}: {reason}")]
    InvalidArg {
        /// The flag at fault, e.g. "--stall-hold-ms".
        flag: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// Shared plumbing failed: binding, pinning, metrics, signals, accept.
    #[error(transparent)]
    Common(#[from] CommonError),

    /// The tokio runtime could not be built (usually: cannot spawn threads).
    #[error("cannot build the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),

    /// The timerfd behind delayed responses could not be created.
    #[error("cannot create the delay timer: {0}")]
    Timer(#[source] std::io::Error),

    /// A listener's bound address could not be read back.
    #[error("cannot read the bound address of the {listener} listener: {source}")]
    LocalAddr {
        /// Which listener: "http" or "admin".
        listener: &'static str,
        /// The OS error.
        source: std::io::Error,
    },

    /// The realized holds could not be written to `--holds-out`.
    #[error("cannot write the realized holds to {path}: {reason}")]
    HoldsOut {
        /// The `--holds-out` path.
        path: std::path::PathBuf,
        /// The serialization or I/O error.
        reason: String,
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

impl FloorError {
    pub(crate) fn invalid(flag: &'static str, reason: impl Into<String>) -> Self {
        FloorError::InvalidArg {
            flag,
            reason: reason.into(),
        }
    }
}
