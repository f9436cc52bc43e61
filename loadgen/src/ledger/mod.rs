//! The ledger scenario: transfers against a ledger-writer target (`servers/ledger-writer/API.md`), spoken only
//! through the wire API, with its invariants checked afterwards.
//!
//! - [`wire`]: the 128-byte records and 16-byte results, encoded and decoded here (loadgen never links the server).
//! - [`model`]: what a loader lane sends and what it expects the ledger to hold: transfer generation, the
//!   two-phase queue, per-account deltas, acknowledged and in-doubt transfers, and their verification by lookup.
//! - [`check`]: the coordinator's side: account set-up, balance lookups before and after a phase, the comparison
//!   with the loaders' expected deltas, and `GET /verify`.

pub mod check;
pub mod model;
pub mod wire;
