//! The error type shared by all plumbing in this crate.

use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong while setting a server up or running it.
#[derive(Debug, thiserror::Error)]
pub enum CommonError {
    /// Binding a TCP listener failed (port in use, permission, bad address).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },

    /// Generating a certificate or key failed.
    #[error("tls: {0}")]
    Tls(String),

    /// Any other I/O failure; `what` says what we were doing.
    #[error("{what}: {source}")]
    Io {
        /// What was being attempted, e.g. "write /tmp/x/cert.pem".
        what: String,
        /// The OS error.
        source: io::Error,
    },

    /// Setting the CPU affinity mask failed or named a CPU that does not exist.
    #[error("cannot pin to cpus {cpus:?}: {source}")]
    Affinity {
        /// The requested CPU indices.
        cpus: Vec<usize>,
        /// The OS error (or `InvalidInput` for an index out of range).
        source: io::Error,
    },

    /// Installing the global metrics recorder failed.
    #[error("metrics: {0}")]
    Metrics(String),

    /// A signal handler could not be registered.
    #[error("cannot register handler for {signal}: {source}")]
    Signal {
        /// The signal name, e.g. "SIGTERM".
        signal: &'static str,
        /// The OS error.
        source: io::Error,
    },
}
