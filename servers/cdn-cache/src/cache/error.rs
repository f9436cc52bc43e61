//! The cache tier's error types.

use refbench_common::CommonError;

/// Everything that can stop a cache tier from starting or running, and every configuration value it refuses.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A configuration value or flag is out of range or inconsistent.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field or flag at fault, e.g. `--upstream` or `max_object_bytes`.
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
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

impl CacheError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CacheError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why an upstream fetch did not produce a complete response. Sent to every request waiting on the fetch (as
/// text, in a 502/504 body or a `Cache-Status` detail), so it stays short and names the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No connection or no response head from the upstream (refused, reset, timed out).
    #[error("upstream {upstream}: {reason}")]
    Upstream {
        /// The upstream's authority.
        upstream: String,
        /// What went wrong.
        reason: String,
    },
    /// The response head arrived but the body failed or stalled before its end.
    #[error("upstream body failed after {at_bytes} bytes: {reason}")]
    Body {
        /// Body bytes received before the failure.
        at_bytes: u64,
        /// What went wrong.
        reason: String,
    },
    /// A body without `Content-Length` grew past the largest object this tier buffers.
    #[error("upstream body without Content-Length exceeds max_object_bytes ({limit})")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// A 304 answered a revalidation but did not match the stored response (RFC 9111 §4.3.4).
    #[error("304 does not match the stored response")]
    NotModifiedMismatch,
    /// The request waited longer than the coalescing timeout for another request's fetch.
    #[error("timed out after {timeout_ms} ms waiting for a coalesced fetch")]
    WaitTimeout {
        /// The configured timeout.
        timeout_ms: u64,
    },
}

impl FetchError {
    /// A short token for `Cache-Status; detail=...` (RFC 9211 sf-token characters only).
    pub fn detail(&self) -> &'static str {
        match self {
            FetchError::Upstream { .. } => "upstream-error",
            FetchError::Body { .. } => "body-error",
            FetchError::TooLarge { .. } => "too-large",
            FetchError::NotModifiedMismatch => "304-mismatch",
            FetchError::WaitTimeout { .. } => "coalesce-timeout",
        }
    }
}
