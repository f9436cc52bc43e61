//! `loadgen compare`: a candidate result against a baseline, phase by phase. CPU figures are also shown divided by
//! each run's own floor calibration, which is how results from two machines are compared.

use std::fmt::Write as _;
use std::path::Path;

use crate::result::{PhaseResult, RunResult};

/// Reads a result file.
pub fn load(path: &Path) -> Result<RunResult, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a refbench result: {e}", path.display()))
}

fn server_cpu(p: &PhaseResult) -> Option<f64> {
    p.processes
        .iter()
        .find(|x| x.role == "server")
        .map(|x| x.cpu_us_per_request)
}

/// A phase's load model as one word: `closed`, or `open/<arrival>/<dispatch>` (results written before `dispatch`
/// existed used lanes).
fn load_of(p: &PhaseResult) -> String {
    match p.model.as_str() {
        "open" => format!(
            "open/{}/{}",
            p.arrival.as_deref().unwrap_or("fixed"),
            p.dispatch.as_deref().unwrap_or("lane")
        ),
        other => other.to_string(),
    }
}

fn pct(base: f64, cand: f64) -> String {
    if base > 0.0 {
        format!("{:+.1}%", (cand / base - 1.0) * 100.0)
    } else {
        "n/a".into()
    }
}

/// Compares two results; returns the table and whether any phase regressed beyond `max_regression_pct`.
pub fn compare(
    base: &RunResult,
    cand: &RunResult,
    max_regression_pct: Option<f64>,
) -> (String, bool) {
    let mut s = String::new();
    let mut regressed = false;
    let _ = writeln!(
        s,
        "baseline:  {} on {} ({}), commit {}",
        base.profile_name, base.host.cpu_model, base.host.hostname, base.git.commit
    );
    let _ = writeln!(
        s,
        "candidate: {} on {} ({}), commit {}",
        cand.profile_name, cand.host.cpu_model, cand.host.hostname, cand.git.commit
    );
    if !base.valid || !cand.valid {
        let _ = writeln!(
            s,
            "warning: at least one run is marked invalid; its figures may measure the loader"
        );
    }
    let floors = match (&base.calibration, &cand.calibration) {
        (Some(b), Some(c))
            if b.floor_cpu_us_per_request > 0.0 && c.floor_cpu_us_per_request > 0.0 =>
        {
            let _ = writeln!(
                s,
                "floor: {:.2} -> {:.2} cpu-us/req ({})",
                b.floor_cpu_us_per_request,
                c.floor_cpu_us_per_request,
                pct(b.floor_cpu_us_per_request, c.floor_cpu_us_per_request)
            );
            Some((b.floor_cpu_us_per_request, c.floor_cpu_us_per_request))
        }
        _ => None,
    };
    let _ = writeln!(
        s,
        "{:<22} {:>20} {:>20} {:>20} {:>22}",
        "phase", "p50_us", "p99_us", "srv_cpu_us/req", "srv_cpu/floor"
    );
    for bp in &base.phases {
        let Some(cp) = cand.phases.iter().find(|p| p.name == bp.name) else {
            let _ = writeln!(s, "{:<22} missing in candidate", bp.name);
            continue;
        };
        if load_of(bp) != load_of(cp) {
            let _ = writeln!(
                s,
                "  note {}: the load differs ({} -> {}): its latencies measure different things",
                bp.name,
                load_of(bp),
                load_of(cp)
            );
        }
        let cell = |b: f64, c: f64| format!("{b:.0}->{c:.0} {}", pct(b, c));
        let p99 = cell(bp.latency_us.p99 as f64, cp.latency_us.p99 as f64);
        let (cpu_cell, norm_cell, cpu_change) = match (server_cpu(bp), server_cpu(cp)) {
            (Some(b), Some(c)) => {
                let raw = format!("{b:.2}->{c:.2} {}", pct(b, c));
                match floors {
                    Some((fb, fc)) => {
                        let (nb, nc) = (b / fb, c / fc);
                        (
                            raw,
                            format!("{nb:.2}x->{nc:.2}x {}", pct(nb, nc)),
                            Some(nc / nb - 1.0),
                        )
                    }
                    None => (raw, "-".into(), Some(c / b - 1.0)),
                }
            }
            _ => ("-".into(), "-".into(), None),
        };
        let _ = writeln!(
            s,
            "{:<22} {:>20} {:>20} {:>20} {:>22}",
            bp.name,
            cell(bp.latency_us.p50 as f64, cp.latency_us.p50 as f64),
            p99,
            cpu_cell,
            norm_cell
        );
        if let Some(limit) = max_regression_pct {
            let lat_change = if bp.latency_us.p99 > 0 {
                cp.latency_us.p99 as f64 / bp.latency_us.p99 as f64 - 1.0
            } else {
                0.0
            };
            for (what, change) in [
                ("p99 latency", Some(lat_change)),
                ("server cpu per request", cpu_change),
            ] {
                if let Some(ch) = change
                    && ch * 100.0 > limit
                {
                    regressed = true;
                    let _ = writeln!(
                        s,
                        "  REGRESSION {}: {what} {:+.1}% (limit {limit}%)",
                        bp.name,
                        ch * 100.0
                    );
                }
            }
        }
    }
    (s, regressed)
}

/// Loads and compares two files.
pub fn compare_files(
    base: &Path,
    cand: &Path,
    max_regression_pct: Option<f64>,
) -> Result<(String, bool), String> {
    Ok(compare(&load(base)?, &load(cand)?, max_regression_pct))
}
