//! refbench's load generator: profiles → resolved plan → loader processes (Goose on `current_thread` runtimes with
//! lean hyper clients) → exact merged HdrHistograms, CPU/RSS costs and SLO verdicts in `result.json`.
//!
//! See `ARCHITECTURE.md` at the repository root for the bird's-eye view.

pub mod cdn;
pub mod cli;
pub mod client;
pub mod compare;
pub mod error;
pub mod h1;
pub mod hist;
pub mod host;
pub mod ledger;
pub mod oidc;
pub mod plan;
pub mod procs;
pub mod profile;
pub mod report;
pub mod result;
pub mod run;
pub mod schedule;
pub mod worker;
pub mod zipf;

/// The timerfd pacer lives in `refbench_common` so servers that inject delays share it.
pub use refbench_common::pacer;
