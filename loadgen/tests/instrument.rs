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

/// Every reported percentile up to p99.9 matches the injected delays, within what the loopback path itself adds.
///
/// "Injected" is checked against two references:
/// - the *nominal* delays, reproduced exactly: the floor draws the k-th request's delay from a counter-based
///   generator, so the first N delays are known from the seed and the server's request count;
/// - the *realized* delays: what the server actually held each response for, timer lateness included, as the floor
///   writes them with `--holds-out`.
///
/// Three checks per attempt:
/// - **Never under-report.** Every request's latency (intended send to response) contains its realized hold, so at
///   every quantile the reported latency is at least the realized hold's (histogram precision aside). This is what
///   coordinated omission, dropped samples or a smoothed tail would break, and host noise cannot help it pass.
/// - **Body within 3 % + 150 µs.** p50 and p90 lie within 3 % + 150 µs of both references: a coarse timer, a late
///   pacer or queueing inside the loader shows here.
/// - **Tail within the path.** p99 and p99.9 exceed the realized hold by at most what the loopback path costs at the
///   same quantile (3 % + 100 µs on top). The path is measured in the same attempt by a phase just before, at the
///   same rate and connections, against a floor that holds each response 1 µs, so it goes through the same timer and
///   write path. (The sum of two quantiles bounds the sum's quantile when the two move together, as hold and path do
///   when a stall hits both.) On this shared 2-vCPU VM a busy loop sees a vCPU frozen for 3-4 ms about once a
///   second, so the path's p99 is 140-300 µs and its p99.9 is those freezes, 2-4 ms: at p99 this check still holds
///   the loader to a few hundred µs, at p99.9 it only bounds it by the host. A fixed tolerance failed whole CI runs
///   in a noisy spell; the tail's real guard is the first check, which no noise can help pass.
///
/// The rate (4,000/s, 40,000 samples) keeps p99.9 statistically stable and the cores from idling between requests:
/// on this VM an idle core takes tens of microseconds to wake, which would be measured (correctly) as latency of
/// the loopback path, not of the delay.
#[test]
fn known_latency_percentiles_match_injected_delays() {
    if cfg!(debug_assertions) {
        // An unoptimized loader and server add 100+ µs of their own per request; the check is about the design,
        // so it runs in the README's test command (`cargo test --workspace --release`), as CI does.
        eprintln!("known-latency check skipped: run the tests with --release");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let model = DelayModel {
        fixed_us: 1000,
        exp_mean_us: 500,
        seed: 7,
    };
    // Host noise only ever adds latency, and on this shared 2-vCPU VM it reaches p99.9 in many 10-second windows:
    // another tenant's flush freezes both vCPUs for milliseconds, the server's timer fires late (the floor counts
    // releases more than 1 ms late), the loader sends late (it counts sends more than 250 µs late here). A
    // systematic error of the instrument (a late pacer, a coarse timer, coordinated omission, queueing in the
    // loader, a smoothed tail) is in every attempt, so the check passes when one attempt is within tolerance at
    // every percentile; every attempt is printed with its disturbance counts, so a failure shows whether the host
    // or the instrument is to blame. Noise comes in spells (in one noisy hour only 1 attempt in 6 was clean of
    // loader stalls), hence up to 15 attempts with a pause between them: at most about 4.5 minutes, usually one
    // or two attempts. Set KNOWN_LATENCY_ALL_ATTEMPTS to run all of them and see how often this host spoils one.
    const ATTEMPTS: u32 = 15;
    let mut report = String::new();
    let mut passed = false;
    let mut last_injected_median = 0.0;
    for attempt in 1..=ATTEMPTS {
        let holds_path = dir.join(format!("holds-{attempt}.hdr"));
        let run = run_profile(
            &dir,
            &format!("known-{attempt}"),
            &format!(
                r#"
name = "known-latency"
[calibration]
enabled = false
[run]
max_duration_s = 60
late_threshold_us = 250
[targets.delay]
builtin = "floor"
args = ["--delay-fixed-us", "{}", "--delay-exp-mean-us", "{}", "--seed", "{}", "--holds-out", "{}"]
[targets.path]
builtin = "floor"
args = ["--delay-fixed-us", "1"]
[[phases]]
name = "path"
target = "path"
model = "open"
rate_rps = 4000
duration_s = 4
connections = 64
[[phases]]
name = "steady"
target = "delay"
model = "open"
rate_rps = 4000
duration_s = 10
connections = 64
"#,
                model.fixed_us,
                model.exp_mean_us,
                model.seed,
                holds_path.display()
            ),
        );
        if run.code != 0 {
            // The loader's self-check marked this attempt untrustworthy (e.g. send lag over its bound).
            report.push_str(&format!(
                "attempt {attempt}: exit {}, invalid: {:?}\n",
                run.code, run.result.invalid_reasons
            ));
            assert_eq!(
                run.code, 2,
                "only an invalid measurement may end otherwise: {}",
                run.stderr
            );
            std::thread::sleep(std::time::Duration::from_secs(2));
            continue;
        }
        let p = phase(&run.result, "steady");
        let server = &p.server_metrics["delay"];
        let n = server["floor_requests_total"] as u64;
        assert_eq!(
            n, p.requests.total,
            "server and loader disagree on the request count"
        );
        assert!(n >= 36_000, "only {n} requests");
        let realized =
            hist::decode(&std::fs::read_to_string(&holds_path).unwrap_or_else(|e| {
                panic!("the floor's --holds-out {}: {e}", holds_path.display())
            }))
            .unwrap();
        assert_eq!(realized.len(), n, "one realized hold per request");
        let late_releases = server
            .get("floor_release_late_over_1ms_total")
            .copied()
            .unwrap_or(0.0) as u64;
        let late_sends = p.requests.late;
        let path = hist::decode(&phase(&run.result, "path").histogram_hdr_v2).unwrap();
        report.push_str(&format!(
            "attempt {attempt}: {n} requests; sends >250 us late {late_sends} (send lag p99 {} us, p99.9 {} us); \
             server releases >1 ms late {late_releases}; path p50 {} us, p99 {} us, p99.9 {} us\n",
            p.send_lag_us.p99,
            p.send_lag_us.p999,
            path.value_at_quantile(0.5),
            path.value_at_quantile(0.99),
            path.value_at_quantile(0.999),
        ));
        let mut injected: Vec<u64> = (0..n)
            .map(|k| model.delay_for(k).as_micros() as u64)
            .collect();
        injected.sort_unstable();
        let q_of =
            |q: f64| injected[((q * n as f64).ceil() as usize).clamp(1, injected.len()) - 1] as f64;
        last_injected_median = q_of(0.5);
        let lat = hist::decode(&p.histogram_hdr_v2).unwrap();
        let mut ok = true;
        for q in [0.5, 0.9, 0.99, 0.999] {
            let got = lat.value_at_quantile(q) as f64;
            let nominal = q_of(q);
            let real = realized.value_at_quantile(q) as f64;
            // Both histograms keep 3 significant digits: two values of one true quantile differ by up to 0.2 %.
            let floor = real * 0.998 - 1.0;
            let (verdict, ok_q) = if q < 0.99 {
                let tol_nominal = 0.03 * nominal + 150.0;
                let tol_real = 0.03 * real + 150.0;
                let ok_q =
                    got >= floor && (got - nominal).abs() <= tol_nominal && got - real <= tol_real;
                (
                    format!(
                        "nominal {nominal:.0} us, error {:+.0} (tolerance {tol_nominal:.0}); realized {real:.0} us, \
                         error {:+.0} (tolerance {:.0} below, {tol_real:.0} above)",
                        got - nominal,
                        got - real,
                        real - floor,
                    ),
                    ok_q,
                )
            } else {
                let path_q = path.value_at_quantile(q) as f64;
                let ceiling = real + path_q + 0.03 * real + 100.0;
                (
                    format!(
                        "nominal {nominal:.0} us (for information); realized {real:.0} us, error {:+.0} \
                         (allowed {:.0} below, {:.0} above: path {path_q:.0} + 3 % + 100)",
                        got - real,
                        real - floor,
                        ceiling - real,
                    ),
                    got >= floor && got <= ceiling,
                )
            };
            report.push_str(&format!(
                "  q={q}: reported {got:.0} us; {verdict}{}\n",
                if ok_q { "" } else { "  <-- OUT" }
            ));
            ok &= ok_q;
        }
        if ok && std::env::var_os("KNOWN_LATENCY_ALL_ATTEMPTS").is_none() {
            passed = true;
            break;
        }
        passed |= ok;
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    eprintln!("{report}");
    assert!(
        passed,
        "no attempt within tolerance at every percentile:\n{report}"
    );
    // And the theoretical distribution agrees with what was injected (the generator is what the docs say).
    let median_theory = model.quantile_us(0.5);
    assert!(
        (last_injected_median - median_theory).abs() < 0.03 * median_theory,
        "median {last_injected_median} vs {median_theory}"
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

/// An open phase's `dispatch`: with `lane`, an arrival due while its own lane still waits for a response waits too
/// (and is counted late), though other connections are idle; with `pool`, an idle lane sends it on time. The floor
/// holds every response 3 ms; 16 lanes at 800/s Poisson are 2.4 busy on average, so a pool almost never runs out,
/// while a lane's next arrival (50/s) comes within 1.5 ms of its send 7 % of the time.
#[test]
fn pool_dispatch_sends_on_an_idle_lane_where_lanes_wait_for_their_own() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let phase_toml = |name: &str, dispatch: &str| {
        format!(
            r#"
[[phases]]
name = "{name}"
target = "slow"
model = "open"
arrival = "poisson"
dispatch = "{dispatch}"
rate_rps = 800
duration_s = 4
connections = 16
"#
        )
    };
    let toml = format!(
        r#"
name = "dispatch"
[calibration]
enabled = false
[run]
late_threshold_us = 1500
[targets.slow]
builtin = "floor"
args = ["--delay-fixed-us", "3000"]
{}{}"#,
        phase_toml("lane", "lane"),
        phase_toml("pool", "pool")
    );
    let run = run_profile(&dir, "dispatch", &toml);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lane = phase(&run.result, "lane");
    let pool = phase(&run.result, "pool");
    eprintln!(
        "lane: late {} of {}, p50 {} p99 {}; pool: late {} of {}, p50 {} p99 {}",
        lane.requests.late,
        lane.requests.total,
        lane.latency_us.p50,
        lane.latency_us.p99,
        pool.requests.late,
        pool.requests.total,
        pool.latency_us.p50,
        pool.latency_us.p99
    );
    assert_eq!(
        (lane.dispatch.as_deref(), pool.dispatch.as_deref()),
        (Some("lane"), Some("pool"))
    );
    for p in [lane, pool] {
        assert!(p.requests.total > 2_800, "{}: {}", p.name, p.requests.total);
    }
    // Lanes: about 7 % of arrivals wait more than 1.5 ms for their own lane.
    assert!(
        lane.requests.late * 100 > lane.requests.total * 3,
        "lane dispatch: {} late of {}",
        lane.requests.late,
        lane.requests.total
    );
    // Pool: only the host's own lag makes an arrival late.
    assert!(
        pool.requests.late * 100 < pool.requests.total,
        "pool dispatch: {} late of {}",
        pool.requests.late,
        pool.requests.total
    );
    assert!(
        pool.latency_us.p99 < lane.latency_us.p99,
        "pool p99 {} us, lane p99 {} us",
        pool.latency_us.p99,
        lane.latency_us.p99
    );
}
