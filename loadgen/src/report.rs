//! The console summary printed at the end of `loadgen run`.

use std::fmt::Write as _;

use crate::result::RunResult;

/// A fixed-width table of every measured phase, then the calibration, validity and SLO verdicts.
pub fn summary(r: &RunResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<22} {:>6} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "phase",
        "model",
        "offered",
        "achieved",
        "ok",
        "failed",
        "late",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "srv_cpu_us",
        "ldr_cpu_us"
    );
    for p in &r.phases {
        let cpu = |role: &str| {
            let v: Vec<f64> = p
                .processes
                .iter()
                .filter(|x| x.role == role)
                .map(|x| x.cpu_us_per_request)
                .collect();
            if v.is_empty() {
                "-".to_string()
            } else if role == "loader" {
                // Per-request loader cost over all loader processes = sum of cpu / sum of requests.
                let cpu: f64 = p
                    .processes
                    .iter()
                    .filter(|x| x.role == role)
                    .map(|x| x.cpu_seconds)
                    .sum();
                format!("{:.2}", cpu * 1e6 / p.requests.total.max(1) as f64)
            } else {
                format!("{:.2}", v[0])
            }
        };
        let _ = writeln!(
            s,
            "{:<22} {:>6} {:>9} {:>9.0} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
            truncate(&p.name, 22),
            p.model,
            p.offered_rate_rps.map_or("-".into(), |o| format!("{o:.0}")),
            p.achieved_rate_rps,
            p.requests.ok,
            p.requests.failed,
            p.requests.late,
            p.latency_us.p50,
            p.latency_us.p90,
            p.latency_us.p99,
            p.latency_us.p999,
            p.latency_us.max,
            cpu("server"),
            cpu("loader"),
        );
    }
    if let Some(c) = &r.calibration {
        let _ = writeln!(
            s,
            "calibration: floor {:.2} cpu-us/req, loader {:.2} cpu-us/req at {:.0} rps ({} requests, p99 {} us)",
            c.floor_cpu_us_per_request,
            c.loader_cpu_us_per_request,
            c.achieved_rate_rps,
            c.requests,
            c.latency_us.p99
        );
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    if r.valid {
        let _ = writeln!(s, "run: valid");
    } else {
        let _ = writeln!(s, "run: INVALID");
        for reason in &r.invalid_reasons {
            let _ = writeln!(s, "  - {reason}");
        }
    }
    if r.slo.checks.is_empty() {
        let _ = writeln!(s, "slo: none defined");
    } else {
        let failed: Vec<_> = r.slo.checks.iter().filter(|c| !c.passed).collect();
        let _ = writeln!(
            s,
            "slo: {} of {} checks passed",
            r.slo.checks.len() - failed.len(),
            r.slo.checks.len()
        );
        for c in failed {
            let _ = writeln!(
                s,
                "  - FAILED {} {}: {:.3} ({} {:.3})",
                c.phase, c.metric, c.actual, c.bound, c.limit
            );
        }
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('~')).collect()
    }
}
