//! `ledger-writer`: see the library docs.
fn main() {}
