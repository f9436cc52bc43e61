//! Checks of the instrument itself, end to end through the real `loadgen` binary and the real floor server:
//! known latency, coordinated omission, a loader that cannot keep up, and exact merging across loader processes.
//!
//! These tests put real load on the machine, so they run one at a time (a file-wide lock) and each is bounded in
//! time and request count by its profile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use refbench_floor::DelayModel;
use refbench_loadgen::hist;
use refbench_loadgen::result::{PhaseResult, RunResult};

static SERIAL: Mutex<()> = Mutex::new(());

struct Run {
    code: i32,
    result: RunResult,
    stderr: String,
}

fn run_profile(dir: &Path, name: &str, toml: &str) -> Run {
    let profile = dir.join(format!("{name}.toml"));
    std::fs::write(&profile, toml).unwrap();
    let out = dir.join(name);
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("run")
        .arg(&profile)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .output()
        .expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let text = std::fs::read_to_string(out.join("result.json"))
        .unwrap_or_else(|e| panic!("no result.json ({e}); stderr:\n{stderr}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        result: serde_json::from_str(&text).expect("result parses"),
        stderr,
    }
}

fn phase<'a>(r: &'a RunResult, name: &str) -> &'a PhaseResult {
    r.phases
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("phase {name} missing"))
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "refbench-instrument-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// Every reported percentile up to p99.9 lies within 3 % + 150 µs of the injected delays' percentile. The injected
/// delays are reproduced exactly: the floor draws the k-th request's delay from a counter-based generator, so the
/// first N delays are known from the seed and the server's request count.
#[test]
fn known_latency_percentiles_match_injected_delays() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let model = DelayModel {
        fixed_us: 1000,
        exp_mean_us: 500,
        seed: 7,
    };
    let run = run_profile(
        &dir,
        "known",
        &format!(
            r#"
name = "known-latency"
[calibration]
enabled = false
[run]
max_duration_s = 60
[targets.delay]
builtin = "floor"
args = ["--delay-fixed-us", "{}", "--delay-exp-mean-us", "{}", "--seed", "{}"]
[[phases]]
name = "steady"
target = "delay"
model = "open"
rate_rps = 500
duration_s = 20
connections = 16
"#,
            model.fixed_us, model.exp_mean_us, model.seed
        ),
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let p = phase(&run.result, "steady");
    let n = p.server_metrics["delay"]["floor_requests_total"] as u64;
    assert_eq!(
        n, p.requests.total,
        "server and loader disagree on the request count"
    );
    assert!(n >= 9_000, "only {n} requests");
    let mut injected: Vec<u64> = (0..n)
        .map(|k| model.delay_for(k).as_micros() as u64)
        .collect();
    injected.sort_unstable();
    let q_of =
        |q: f64| injected[((q * n as f64).ceil() as usize).clamp(1, injected.len()) - 1] as f64;
    let lat = hist::decode(&p.histogram_hdr_v2).unwrap();
    let mut report = String::new();
    let mut ok = true;
    for q in [0.5, 0.9, 0.99, 0.999] {
        let want = q_of(q);
        let got = lat.value_at_quantile(q) as f64;
        let tol = 0.03 * want + 150.0;
        report.push_str(&format!(
            "q={q}: injected {want:.0} us, reported {got:.0} us, tolerance {tol:.0} us\n"
        ));
        ok &= (got - want).abs() <= tol;
    }
    eprintln!("{report}");
    assert!(ok, "percentiles outside tolerance:\n{report}");
    // And the theoretical distribution agrees with what was injected (the generator is what the docs say).
    let median_theory = model.quantile_us(0.5);
    assert!(
        (q_of(0.5) - median_theory).abs() < 0.03 * median_theory,
        "median {} vs {median_theory}",
        q_of(0.5)
    );
}

/// With the server stalling 300 ms of every 1000 ms, an open-loop run at a fixed rate shows the stall in its p99;
/// a closed-loop run of the same server, timed from the actual send, hides it below p99 (coordinated omission).
#[test]
fn coordinated_omission_stall_is_visible_in_open_loop_only() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let run = run_profile(
        &dir,
        "stall",
        r#"
name = "stall"
[calibration]
enabled = false
[targets.stall]
builtin = "floor"
args = ["--stall-hold-ms", "300", "--stall-every-ms", "1000"]
[[phases]]
name = "open"
target = "stall"
model = "open"
rate_rps = 200
duration_s = 4
connections = 4
[[phases]]
name = "closed"
target = "stall"
model = "closed"
connections = 4
think_time_ms = 2
duration_s = 4
"#,
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let open = phase(&run.result, "open");
    let closed = phase(&run.result, "closed");
    eprintln!(
        "open p50 {} p99 {} late {}; closed p50 {} p99 {} max {}",
        open.latency_us.p50,
        open.latency_us.p99,
        open.requests.late,
        closed.latency_us.p50,
        closed.latency_us.p99,
        closed.latency_us.max
    );
    // About 30 % of arrivals land in a stall window and wait up to 300 ms: p99 is near 300 ms.
    assert!(
        open.latency_us.p99 >= 200_000,
        "open p99 {} us hides the stall",
        open.latency_us.p99
    );
    assert!(
        open.requests.late > open.requests.total / 10,
        "stalled arrivals must be counted late"
    );
    // Closed loop: only one request per user is stuck per stall, far below 1 % of requests.
    assert!(
        closed.latency_us.p99 < 50_000,
        "closed p99 {} us",
        closed.latency_us.p99
    );
    assert!(
        closed.latency_us.max >= 200_000,
        "the stall still shows in the closed max"
    );
}

/// A rate far above what one loader process can send makes the run invalid (exit 2), with the reason given.
#[test]
fn unsustainable_profile_is_marked_invalid() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let run = run_profile(
        &dir,
        "overload",
        r#"
name = "overload"
[calibration]
enabled = false
[run]
loader_processes = 1
max_requests = 2_000_000
[targets.floor]
builtin = "floor"
[[phases]]
name = "too-fast"
target = "floor"
model = "open"
rate_rps = 400000
duration_s = 3
connections = 16
max_requests = 1_300_000
"#,
    );
    assert_eq!(
        run.code, 2,
        "an invalid run exits 2; stderr: {}",
        run.stderr
    );
    assert!(!run.result.valid);
    assert!(
        run.result
            .invalid_reasons
            .iter()
            .any(|r| r.contains("loader")),
        "reasons: {:?}",
        run.result.invalid_reasons
    );
}

/// Two loader processes' histograms merge into exactly the phase's histogram: the count equals the requests of
/// both, and each process's share is visible in the process list.
#[test]
fn two_loader_processes_merge_exactly() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let run = run_profile(
        &dir,
        "two",
        r#"
name = "two-loaders"
[calibration]
enabled = false
[run]
loader_processes = 2
[targets.floor]
builtin = "floor"
[[phases]]
name = "split"
target = "floor"
model = "open"
arrival = "poisson"
rate_rps = 1000
duration_s = 3
connections = 8
"#,
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let p = phase(&run.result, "split");
    assert_eq!(p.loader_processes, 2);
    let loaders: Vec<_> = p.processes.iter().filter(|x| x.role == "loader").collect();
    assert_eq!(loaders.len(), 2);
    let h = hist::decode(&p.histogram_hdr_v2).unwrap();
    assert_eq!(h.len(), p.requests.total);
    let s = hist::decode(&p.service_time_histogram_hdr_v2).unwrap();
    assert_eq!(s.len(), p.requests.total);
    assert!(p.requests.total > 2_000, "{}", p.requests.total);
}
