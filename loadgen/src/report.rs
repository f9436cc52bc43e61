//! The console summary printed at the end of `loadgen run`.

use std::fmt::Write as _;

use crate::result::RunResult;

/// A fixed-width table of every measured phase, then the calibration, validity and SLO verdicts.
pub fn summary(r: &RunResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<22} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
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
                // A target of several processes (a CDN topology) costs what all of them spent.
                format!("{:.2}", v.iter().sum::<f64>())
            }
        };
        let _ = writeln!(
            s,
            "{:<22} {:>9} {:>9} {:>9.0} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
            truncate(&p.name, 22),
            // A pool's open phase is marked: its waits are not comparable with a lane's (see `plan::Dispatch`).
            match p.dispatch.as_deref() {
                Some("pool") => format!("{}/pool", p.model),
                _ => p.model.clone(),
            },
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
    let ledger: Vec<_> = r
        .phases
        .iter()
        .filter_map(|p| p.ledger.as_ref().map(|l| (p, l)))
        .collect();
    if !ledger.is_empty() {
        let _ = writeln!(
            s,
            "\n{:<22} {:>5} {:>11} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  verified",
            "ledger phase",
            "batch",
            "transfers/s",
            "ok",
            "failed",
            "in_doubt",
            "pending",
            "posted",
            "voided",
        );
        for (p, l) in ledger {
            let verified = match &l.verification {
                None => "off".to_string(),
                Some(v) if v.passed => {
                    format!("ok ({} acked, {} accounts)", v.acked, v.accounts_checked)
                }
                Some(v) => format!(
                    "FAILED ({} missing, {} changed, {} balance mismatches)",
                    v.missing, v.field_mismatches, v.balance_mismatches
                ),
            };
            let _ = writeln!(
                s,
                "{:<22} {:>5} {:>11.0} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  {verified}",
                truncate(&p.name, 22),
                l.batch_size,
                l.transfers_per_s,
                l.transfers.ok,
                l.transfers.failed,
                l.transfers.in_doubt,
                l.two_phase.pending_created,
                l.two_phase.posted,
                l.two_phase.voided,
            );
            if l.linked.chains > 0 || l.two_phase.pending_expiring > 0 {
                let _ = writeln!(
                    s,
                    "{:<22} chains {} (applied {}, refused {}, with a refused item {}, applied in part {}); pendings left to expire {}",
                    "",
                    l.linked.chains,
                    l.linked.applied,
                    l.linked.failed,
                    l.linked.doomed,
                    l.linked.violations,
                    l.two_phase.pending_expiring,
                );
            }
        }
    }
    let cdn: Vec<_> = r
        .phases
        .iter()
        .filter_map(|p| p.cdn.as_ref().map(|c| (p, c)))
        .collect();
    if !cdn.is_empty() {
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
        let _ = writeln!(
            s,
            "\n{:<22} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}  check",
            "cdn phase",
            "workload",
            "edge_hit",
            "hit",
            "byte_hit",
            "offload",
            "b_offload",
            "origin_req",
            "prefetch",
        );
        for (p, c) in cdn {
            let check = match &c.storm {
                None => String::new(),
                Some(st) if st.keys_fetched_more_than_once == 0 => format!(
                    "ok: {} cold keys, {:.0} requests each, max {} origin fetch per key",
                    st.keys, st.responses_per_key, st.max_fetches_per_key
                ),
                Some(st) => format!(
                    "FAILED: {} of {} cold keys fetched more than once (max {})",
                    st.keys_fetched_more_than_once, st.keys_checked, st.max_fetches_per_key
                ),
            };
            let _ = writeln!(
                s,
                "{:<22} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}  {check}",
                truncate(&p.name, 22),
                c.workload,
                pct(c.edge_hit_ratio),
                pct(c.hit_ratio),
                pct(c.byte_hit_ratio),
                pct(c.offload_ratio),
                pct(c.byte_offload_ratio),
                c.origin_fetches.map_or("-".to_string(), |f| f.to_string()),
                pct(c.prefetch.as_ref().and_then(|p| p.precision)),
            );
        }
    }
    let oidc: Vec<_> = r
        .phases
        .iter()
        .filter_map(|p| p.oidc.as_ref().map(|o| (p, o)))
        .collect();
    if !oidc.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<22} {:>18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  check",
            "oidc phase",
            "flow",
            "tokens",
            "tokens/s",
            "sampled",
            "verified",
            "active",
            "rotations"
        );
        for (p, o) in oidc {
            let failed: u64 = o.verification_failures.values().sum::<u64>()
                + o.malformed_responses
                + o.introspected_inactive
                + o.flow_failures.values().sum::<u64>()
                + o.rotations.iter().filter(|x| !x.ok).count() as u64;
            let check = if failed == 0 {
                "ok".to_string()
            } else {
                format!("FAILED: {failed} (see correctness)")
            };
            let _ = writeln!(
                s,
                "{:<22} {:>18} {:>9} {:>9.0} {:>9} {:>9} {:>9} {:>9}  {check}",
                truncate(&p.name, 22),
                o.flow,
                o.tokens,
                o.tokens_per_s,
                o.sampled,
                o.verified,
                o.introspected_active,
                o.rotations.len(),
            );
        }
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
    if !r.correctness_failures.is_empty() {
        let _ = writeln!(s, "correctness: FAILED (the target broke an invariant)");
        for f in &r.correctness_failures {
            let _ = writeln!(s, "  - {f}");
        }
    } else {
        let ledger = r
            .phases
            .iter()
            .any(|p| p.ledger.as_ref().is_some_and(|l| l.verification.is_some()));
        let storm = r
            .phases
            .iter()
            .any(|p| p.cdn.as_ref().is_some_and(|c| c.storm.is_some()));
        let oidc = r.phases.iter().any(|p| p.oidc.is_some());
        let checks: Vec<&str> = [
            (ledger, "every ledger check"),
            (storm, "every storm's one-fetch-per-key check"),
            (oidc, "every OIDC token check"),
        ]
        .into_iter()
        .filter_map(|(ran, what)| ran.then_some(what))
        .collect();
        if let Some((last, rest)) = checks.split_last() {
            let what = if rest.is_empty() {
                last.to_string()
            } else {
                format!("{} and {last}", rest.join(", "))
            };
            let _ = writeln!(s, "correctness: {what} passed");
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
