//! The ledger server's error type.

use std::path::PathBuf;

use refbench_common::CommonError;

/// Everything that can stop the ledger server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A command-line value is out of range or inconsistent with another.
    #[error("{flag}: {reason}")]
    InvalidArg {
        /// The flag at fault, e.g. "--segment-bytes".
        flag: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// Shared plumbing failed: binding, pinning, metrics, signals, accept.
    #[error(transparent)]
    Common(#[from] CommonError),

    /// The data directory could not be created or used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The log could not be opened or recovered.
    #[error("log: {0}")]
    Log(#[from] crate::log::LogError),

    /// A checkpoint could not be read.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),

    /// A checkpoint's snapshot could not be restored.
    #[error("checkpoint {path}: {reason}")]
    Snapshot {
        /// The checkpoint file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// Replaying the log failed: the log and this build's state machine disagree.
    #[error("replay of record {seq}: {reason}")]
    Replay {
        /// The record.
        seq: u64,
        /// What failed.
        reason: String,
    },

    /// The tokio runtime or a thread could not be started.
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
}

impl LedgerError {
    pub(crate) fn invalid(flag: &'static str, reason: impl Into<String>) -> Self {
        LedgerError::InvalidArg {
            flag,
            reason: reason.into(),
        }
    }
}
