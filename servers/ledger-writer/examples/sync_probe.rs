//! Measures the latency of one durable log append on this host, by method, so the writer's I/O path is chosen on
//! numbers rather than folklore. Methods run interleaved in rounds so host noise hits them alike.
//!
//! `cargo run --release -p refbench-ledger --example sync_probe -- [DIR] [OPS_PER_ROUND] [ROUNDS] [BYTES]`
//!
//! Beside the appends, a watcher thread pinned to the last CPU (the appends run pinned to CPU 0) sleeps 500 us at a
//! time and counts wake-ups more than 5 ms late. It does no I/O, so its stalls are the host freezing the whole VM
//! while a flush is serviced; it runs once idle first, for comparison.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

const FILE_BYTES: u64 = 64 << 20;
const BLOCK: usize = 4096;

#[derive(Clone, Copy, Debug)]
enum Method {
    /// Append to a growing file, then fdatasync (size changes: a journal commit every time).
    AppendFdatasync,
    /// fallocate'd (unwritten extents), overwrite in place, fdatasync (extent conversion: a journal commit).
    FallocateFdatasync,
    /// Pre-written zeros (initialised extents), overwrite in place, fdatasync (data + cache flush only).
    ZeroedFdatasync,
    /// Pre-written zeros, O_DSYNC buffered pwrite.
    ZeroedOdsync,
    /// Pre-written zeros, O_DIRECT|O_DSYNC, 4 KiB-aligned pwrite of the block holding the tail.
    ZeroedDirectDsync,
}

struct Target {
    method: Method,
    file: File,
    pos: u64,
    buf: AlignedBlock,
    lat_ns: Vec<u64>,
}

#[repr(C, align(4096))]
struct AlignedBlock([u8; BLOCK * 4]);

fn zeroed_file(path: &std::path::Path) -> File {
    let mut f = File::create(path).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(FILE_BYTES >> 20) {
        f.write_all(&zeros).unwrap();
    }
    f.sync_all().unwrap();
    f
}

fn open(dir: &std::path::Path, method: Method) -> File {
    let path = dir.join(format!("{method:?}"));
    let _ = std::fs::remove_file(&path);
    match method {
        Method::AppendFdatasync => File::create(&path).unwrap(),
        Method::FallocateFdatasync => {
            let f = File::create(&path).unwrap();
            // SAFETY: valid fd, plain fallocate.
            let rc = unsafe {
                libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, FILE_BYTES as i64)
            };
            assert_eq!(rc, 0);
            f.sync_all().unwrap();
            f
        }
        Method::ZeroedFdatasync => zeroed_file(&path),
        Method::ZeroedOdsync => {
            drop(zeroed_file(&path));
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DSYNC)
                .open(&path)
                .unwrap()
        }
        Method::ZeroedDirectDsync => {
            drop(zeroed_file(&path));
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DSYNC | libc::O_DIRECT)
                .open(&path)
                .unwrap()
        }
    }
}

impl Target {
    fn append(&mut self, bytes: usize) {
        let start = Instant::now();
        match self.method {
            Method::ZeroedDirectDsync => {
                // Rewrite every 4 KiB block the new bytes touch, from the block holding the old tail.
                let first = self.pos / BLOCK as u64 * BLOCK as u64;
                let end = self.pos + bytes as u64;
                let len = (end - first).next_multiple_of(BLOCK as u64) as usize;
                let off = (self.pos - first) as usize;
                self.buf.0[off..off + bytes].fill(0xA5);
                self.file.write_all_at(&self.buf.0[..len], first).unwrap();
                // Keep the partial tail block at the front for the next write.
                let tail_first = end / BLOCK as u64 * BLOCK as u64;
                let shift = (tail_first - first) as usize;
                self.buf.0.copy_within(shift..shift + BLOCK, 0);
            }
            _ => {
                let data = [0xA5u8; BLOCK * 4];
                self.file.write_all_at(&data[..bytes], self.pos).unwrap();
                if !matches!(self.method, Method::ZeroedOdsync) {
                    self.file.sync_data().unwrap();
                }
            }
        }
        self.lat_ns.push(start.elapsed().as_nanos() as u64);
        self.pos += bytes as u64;
    }
}

/// Pins the calling thread to `cpu` (best effort: a probe, not a server).
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Sleeps 500 us at a time until `stop`, pinned to `cpu`; returns (wake-ups, those later than 5 ms, their total).
fn watch(cpu: usize, stop: &std::sync::atomic::AtomicBool) -> (u64, u64, std::time::Duration) {
    pin(cpu);
    let (mut n, mut late, mut late_total) = (0u64, 0u64, std::time::Duration::ZERO);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        std::thread::sleep(std::time::Duration::from_micros(500));
        let d = t.elapsed();
        n += 1;
        if d > std::time::Duration::from_millis(5) {
            late += 1;
            late_total += d;
        }
    }
    (n, late, late_total)
}

fn watched<R>(cpu: usize, f: impl FnOnce() -> R) -> (R, (u64, u64, std::time::Duration)) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let w = s.spawn(|| watch(cpu, &stop));
        let r = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (r, w.join().expect("watcher"))
    })
}

fn pct(v: &[u64], p: f64) -> u64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).cloned().unwrap_or_else(|| ".".into()));
    let ops: usize = args.get(2).map_or(500, |s| s.parse().unwrap());
    let rounds: usize = args.get(3).map_or(6, |s| s.parse().unwrap());
    let bytes: usize = args.get(4).map_or(256, |s| s.parse().unwrap());
    assert!(bytes <= BLOCK * 3);
    let dir = tempfile::Builder::new()
        .prefix("sync-probe")
        .tempdir_in(dir)
        .unwrap();
    let methods = [
        Method::AppendFdatasync,
        Method::FallocateFdatasync,
        Method::ZeroedFdatasync,
        Method::ZeroedOdsync,
        Method::ZeroedDirectDsync,
    ];
    let mut targets: Vec<Target> = methods
        .iter()
        .map(|&m| Target {
            method: m,
            file: open(dir.path(), m),
            pos: 0,
            buf: AlignedBlock([0; BLOCK * 4]),
            lat_ns: vec![],
        })
        .collect();
    assert!((ops * rounds * bytes) as u64 + BLOCK as u64 * 2 < FILE_BYTES);
    let watcher_cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    pin(0);
    let started = Instant::now();
    let ((), busy) = watched(watcher_cpu, || {
        for _ in 0..rounds {
            for t in &mut targets {
                for _ in 0..ops {
                    t.append(bytes);
                }
            }
        }
    });
    let busy_s = started.elapsed();
    let ((), idle) = watched(watcher_cpu, || {
        std::thread::sleep(busy_s.min(std::time::Duration::from_secs(10)))
    });
    println!(
        "{bytes} B per append, {} appends per method, interleaved in {rounds} rounds",
        ops * rounds
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>12}",
        "method", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us", "stall_share"
    );
    // Share of wall time spent inside appends slower than 1 ms: requests arriving then wait for the stall, so it bounds
    // the share of requests a group-commit server can answer fast.
    for t in &mut targets {
        t.lat_ns.sort_unstable();
        let v = &t.lat_ns;
        let mean = v.iter().sum::<u64>() / v.len() as u64;
        let total: u64 = v.iter().sum();
        let stalled: u64 = v.iter().filter(|&&x| x > 1_000_000).sum();
        println!(
            "{:<22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>11.3}%",
            format!("{:?}", t.method),
            pct(v, 0.5) / 1000,
            pct(v, 0.9) / 1000,
            pct(v, 0.99) / 1000,
            pct(v, 0.999) / 1000,
            v[v.len() - 1] / 1000,
            mean / 1000,
            stalled as f64 * 100.0 / total as f64
        );
    }
    for (what, (n, late, total), over) in [
        ("while appending", busy, busy_s),
        ("idle", idle, busy_s.min(std::time::Duration::from_secs(10))),
    ] {
        println!(
            "watcher on cpu {watcher_cpu}, {what}: {late} of {n} wake-ups over 5 ms late, {:.0} ms in {:.1} s ({:.2} %)",
            total.as_secs_f64() * 1e3,
            over.as_secs_f64(),
            total.as_secs_f64() * 100.0 / over.as_secs_f64()
        );
    }
}
