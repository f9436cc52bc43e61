//! The ledger-writer's per-batch CPU path without I/O: decode + validate + apply a binary batch in the state machine,
//! then checksum (CRC32C) and chain (BLAKE3) the resulting log payload — everything a group commit does besides the
//! `write` and `fdatasync`. Throughput is in transfers, so criterion prints time per transfer.
//!
//! Each sample starts from a fresh state holding only the accounts, so the transfer maps grow within a sample only
//! (as they do in a live server's first seconds); ids are never reused, so every transfer takes the insert path.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use refbench_ledger::codec;
use refbench_ledger::state::{Limits, State};
use refbench_ledger::types::{Account, Transfer, currency_from_str};

const T0_NS: u64 = 1_700_000_000_000_000_000;

fn state_with_accounts(accounts: u128) -> State {
    let usd = currency_from_str("USD").expect("USD");
    let mut s = State::new(Limits::default());
    let mut applied = Vec::new();
    let all: Vec<Account> = (1..=accounts)
        .map(|id| Account {
            id,
            currency: usd,
            code: 1,
            ..Default::default()
        })
        .collect();
    for chunk in all.chunks(8190) {
        let r = s.create_accounts(chunk, T0_NS, &mut applied);
        assert!(r.iter().all(|r| r.code.is_success()));
    }
    s
}

/// A binary batch of `n` plain transfers with ids from `first_id`, between pseudo-random distinct accounts.
fn batch(first_id: u128, n: usize, accounts: u128, seed: &mut u64) -> Vec<u8> {
    let usd = currency_from_str("USD").expect("USD");
    let mut out = Vec::with_capacity(n * 128);
    for i in 0..n {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let dr = u128::from(*seed >> 33) % accounts + 1;
        let cr = (dr % accounts) + 1;
        codec::encode_transfer(
            &Transfer {
                id: first_id + i as u128,
                debit_account_id: dr,
                credit_account_id: cr,
                amount: 1 + u128::from(*seed & 0xffff),
                currency: usd,
                code: 1,
                ..Default::default()
            },
            &mut out,
        );
    }
    out
}

fn ledger(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for (accounts, batch_size) in [(10_000u128, 8190usize), (10_000, 100), (1_000_000, 8190)] {
        g.throughput(Throughput::Elements(batch_size as u64));
        let name = format!("apply_checksum_chain_a{accounts}");
        let base = state_with_accounts(accounts);
        g.bench_function(BenchmarkId::new(name, format!("b{batch_size}")), |b| {
            b.iter_custom(|iters| {
                let mut s = State::restore(&snapshot(&base), Limits::default()).expect("restore");
                let mut seed = 7u64;
                let bodies: Vec<Vec<u8>> = (0..iters)
                    .map(|k| {
                        batch(
                            1 + u128::from(k) * batch_size as u128,
                            batch_size,
                            accounts,
                            &mut seed,
                        )
                    })
                    .collect();
                let mut payload = Vec::with_capacity(batch_size * 128);
                let mut prev = [0u8; 32];
                let started = Instant::now();
                for (k, body) in bodies.iter().enumerate() {
                    payload.clear();
                    let recs = codec::decode_batch_records(body).expect("valid batch");
                    let results = s.create_transfers_records(
                        recs,
                        T0_NS + k as u64 * 1_000_000,
                        &mut payload,
                    );
                    debug_assert!(results.iter().all(|r| r.code.is_success()));
                    let crc = crc32c::crc32c(&payload);
                    let mut h = blake3::Hasher::new();
                    h.update(&prev);
                    h.update(&crc.to_le_bytes());
                    h.update(&payload);
                    prev = *h.finalize().as_bytes();
                    black_box(&results);
                }
                let elapsed = started.elapsed();
                black_box(prev);
                elapsed
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ledger_log");
    let payload = vec![0xa5u8; 8190 * 128];
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("crc32c_1mib", |b| {
        b.iter(|| crc32c::crc32c(black_box(&payload)))
    });
    g.bench_function("blake3_1mib", |b| {
        b.iter(|| blake3::hash(black_box(&payload)))
    });
    g.finish();
}

fn snapshot(s: &State) -> Vec<u8> {
    let mut out = Vec::new();
    s.snapshot(&mut out);
    out
}

criterion_group!(benches, ledger);
criterion_main!(benches);
