//! Measures how the flush *rate* moves the tail of one durable append on this host, to choose the writer's
//! `--flush-gap-us` on numbers.
//!
//! `cargo run --release -p refbench-ledger --example sync_rate_probe -- DIR SECONDS ROUNDS SLOTS [ARRIVAL_RPS]`
//!
//! SLOTS is a comma-separated list of `<interval µs><z|a>`, e.g. `0a,1000a,1000z`. Each slot is one file taking
//! 256-byte appends, each followed by `fdatasync`, a new one starting no sooner than the interval after the previous
//! one started (0 = back to back): the writer's pacing. `z` overwrites a pre-written file (no metadata to commit),
//! `a` grows the file (a journal commit per flush), as the log does. Slots take turns for SECONDS at a time, ROUNDS
//! times, so host noise hits them alike.
//!
//! Per interval it prints flushes/s, flush latency p50/p99/p99.9, the share of time spent in flushes slower than
//! 2 ms and how many there were per second, and what a request arriving at ARRIVAL_RPS (default 8,300, evenly
//! spaced) would wait for: from its arrival to the end of the first flush that started after it. The appends run
//! pinned to CPU 0.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Pins the calling thread to `cpu` (best effort: a probe, not a server).
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Bytes pre-written for a `z` slot (its appends must fit).
const ZEROED_BYTES: u64 = 256 << 20;
const APPEND_BYTES: usize = 256;
const SLOW: f64 = 2e-3;

struct Slot {
    interval: Duration,
    zeroed: bool,
    file: File,
    pos: u64,
    /// (start, end) of each flush, seconds on this slot's own clock (its turns laid end to end).
    trace: Vec<(f64, f64)>,
    wall_s: f64,
}

fn pct(v: &[f64], q: f64) -> f64 {
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!(
            "usage: sync_rate_probe DIR SECONDS ROUNDS SLOTS [ARRIVAL_RPS]  (SLOTS: e.g. 0a,1000a,1000z)"
        );
        std::process::exit(2);
    }
    let dir = tempfile::Builder::new()
        .prefix("sync-rate-probe")
        .tempdir_in(&args[1])
        .expect("temporary directory in DIR");
    let secs: f64 = args[2].parse().expect("SECONDS");
    let rounds: usize = args[3].parse().expect("ROUNDS");
    let specs: Vec<(u64, bool)> = args[4]
        .split(',')
        .map(|s| {
            let (us, mode) = s.split_at(s.len().saturating_sub(1));
            let zeroed = match mode {
                "z" => true,
                "a" => false,
                _ => panic!("slot `{s}`: end it in z (pre-written) or a (appending)"),
            };
            (us.parse().expect("slot interval, µs"), zeroed)
        })
        .collect();
    let arrival_rps: f64 = args
        .get(5)
        .map_or(8300.0, |s| s.parse().expect("ARRIVAL_RPS"));
    pin(0);
    let mut slots: Vec<Slot> = specs
        .iter()
        .enumerate()
        .map(|(i, &(us, zeroed))| {
            let mut file = File::create(dir.path().join(format!("f{i}"))).expect("create");
            if zeroed {
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..(ZEROED_BYTES >> 20) {
                    file.write_all(&zeros).expect("write zeros");
                }
                file.sync_all().expect("sync zeros");
            }
            Slot {
                interval: Duration::from_micros(us),
                zeroed,
                file,
                pos: 0,
                trace: Vec::new(),
                wall_s: 0.0,
            }
        })
        .collect();
    let data = [0xA5u8; APPEND_BYTES];
    for _ in 0..rounds {
        for slot in &mut slots {
            let turn = Instant::now();
            let offset = slot.wall_s;
            let mut next = turn;
            while turn.elapsed().as_secs_f64() < secs {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                let start = Instant::now();
                slot.file.write_all_at(&data, slot.pos).expect("write");
                slot.file.sync_data().expect("fdatasync");
                let end = Instant::now();
                slot.pos += APPEND_BYTES as u64;
                assert!(
                    !slot.zeroed || slot.pos < ZEROED_BYTES,
                    "the pre-written file is full"
                );
                slot.trace.push((
                    offset + (start - turn).as_secs_f64(),
                    offset + (end - turn).as_secs_f64(),
                ));
                next = start + slot.interval;
            }
            slot.wall_s += turn.elapsed().as_secs_f64();
        }
    }
    println!("arrival_rps={arrival_rps}");
    println!(
        "slot flushes_per_s flush_us_p50 flush_us_p99 flush_us_p999 slow_time_share slow_per_s | wait_us_p50 wait_us_p99 wait_us_p999"
    );
    for slot in &slots {
        let mut lat: Vec<f64> = slot.trace.iter().map(|(s, e)| e - s).collect();
        lat.sort_by(f64::total_cmp);
        let slow: Vec<f64> = lat.iter().copied().filter(|l| *l > SLOW).collect();
        // Evenly spaced arrivals: each is acknowledged at the end of the first flush that starts after it.
        let mut wait = Vec::new();
        let mut j = 0;
        let mut t = 0.0;
        while j < slot.trace.len() {
            while j < slot.trace.len() && slot.trace[j].0 < t {
                j += 1;
            }
            if let Some(&(_, end)) = slot.trace.get(j) {
                wait.push(end - t);
            }
            t += 1.0 / arrival_rps;
        }
        wait.sort_by(f64::total_cmp);
        println!(
            "{}{} {:.0} {:.0} {:.0} {:.0} {:.4} {:.2} | {:.0} {:.0} {:.0}",
            slot.interval.as_micros(),
            if slot.zeroed { "z" } else { "a" },
            slot.trace.len() as f64 / slot.wall_s,
            pct(&lat, 0.5) * 1e6,
            pct(&lat, 0.99) * 1e6,
            pct(&lat, 0.999) * 1e6,
            slow.iter().sum::<f64>() / slot.wall_s,
            slow.len() as f64 / slot.wall_s,
            pct(&wait, 0.5) * 1e6,
            pct(&wait, 0.99) * 1e6,
            pct(&wait, 0.999) * 1e6,
        );
    }
}
