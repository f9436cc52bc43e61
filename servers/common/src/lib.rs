//! Shared plumbing for every refbench reference server.
//!
//! Each server binary does the same dance: pin CPUs, build a runtime, bind
//! listeners on ephemeral ports, install the metrics recorder, announce its
//! addresses on stdout, serve until SIGTERM/SIGINT, then drain. Keeping that in
//! one crate means every server pays the same per-request plumbing cost, so
//! differences between servers are differences in the servers themselves.
//!
//! Modules:
//! - [`announce`]: the `REFBENCH_READY {json}` stdout line a parent process reads.
//! - [`shutdown`]: a cloneable shutdown signal plus SIGTERM/SIGINT wiring.
//! - [`bind`]: TCP binding with errors that name the address.
//! - [`admin`]: `/metrics` (Prometheus) and `/healthz`.
//! - [`http`]: the HTTP/1.1 + HTTP/2 (h2c) accept loop with limits and graceful drain.
//! - [`h1`]: a lean HTTP/1.1 accept loop with a fast path answered from the request head (h2c handed to hyper).
//! - [`tls`]: self-signed certificates for TLS-speaking servers.
//! - [`cpu`]: CPU affinity and timer slack.
//! - [`timer`]: sub-millisecond sleeps from any runtime (a shared timer thread).
//! - [`pacer`]: sub-millisecond sleeps driven by a timerfd on the caller's own runtime (no thread hop).
//! - [`runtime`]: the server runtime (current-thread for one thread, multi-thread otherwise).

pub mod admin;
pub mod announce;
pub mod bind;
pub mod cpu;
pub mod error;
pub mod h1;
pub mod http;
pub mod pacer;
pub mod reaper;
pub mod runtime;
pub mod shutdown;
pub mod timer;
pub mod tls;

pub use error::CommonError;
