//! The ledger-writer reference server: a durable double-entry ledger.
//!
//! Layers, bottom up:
//! - [`types`] and [`codec`]: accounts, transfers and result codes, and their 128-byte wire/disk form (see `API.md`).
//! - [`state`]: the deterministic state machine. It applies batches (validation, two-phase transfers, linked chains,
//!   idempotency, expiry) and replays the log to rebuild itself.
//! - [`log`] and [`checkpoint`]: the append-only, CRC32C-checksummed, BLAKE3 hash-chained log in segments, its
//!   recovery (torn tails truncated, damage reported with its position) and snapshots that bound restart time.
//! - [`writer`]: the single writer thread: applies groups of requests in order and acknowledges them after one
//!   `fdatasync` (group commit).
//! - [`api`]: the HTTP API (`API.md`); [`verify`]: the audit; [`server`]: options, recovery, serving.

pub mod api;
pub mod checkpoint;
pub mod chunks;
pub mod codec;
pub mod error;
pub mod index;
pub mod log;
pub mod metrics;
pub mod server;
pub mod state;
pub mod types;
pub mod verify;
pub mod writer;

pub use error::LedgerError;
pub use server::{DamagePolicy, ServeArgs, ServePlan, Started, open_ledger, run, start};
