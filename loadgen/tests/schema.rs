//! `result.json` against `results/schema.json`: a real run of the binary must validate, and the schema must refuse
//! results that drifted (a field removed, an unknown field added), so it is known not to be vacuous.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use refbench_loadgen::hist::{self, Summary};
use refbench_loadgen::host::{Git, Host};
use refbench_loadgen::plan::{self, CdnWorkload, Env};
use refbench_loadgen::procs::Sampled;
use refbench_loadgen::profile::Profile;
use refbench_loadgen::result::{
    CdnPrefetch, CdnResult, CdnStorm, LedgerLinked, LedgerResult, LedgerServerVerify,
    LedgerTransfers, LedgerTwoPhase, LedgerVerification, OidcResult, OidcRotation, PhaseResult,
    ProcessResult, Requests, RunResult, SCHEMA_VERSION, SloCheck, SloReport, TargetInfo,
    TargetProcess, WarmupSummary,
};
use serde_json::{Value, json};

/// A tiny run: built-in floor, 1 s calibration, a short warm-up, one open and one closed phase. The loader limits
/// are relaxed because the test machine is shared: this test checks the format and the accounting, not timing.
const TINY_PROFILE: &str = r#"
name = "schema-test"
description = "Tiny run for loadgen/tests/schema.rs"

[run]
max_duration_s = 90
max_send_lag_us_p99 = 60_000_000
max_loader_cpu_ratio = 1.0

[calibration]
rate_rps = 200
duration_s = 1
connections = 2

[targets.floor]
builtin = "floor"

[slo]
latency_us_p99 = 30_000_000
error_ratio = 0.01

[[phases]]
name = "warm"
target = "floor"
warmup = true
model = "open"
rate_rps = 100
duration_s = 0.5
connections = 2

[[phases]]
name = "open-fixed"
target = "floor"
model = "open"
rate_rps = 200
duration_s = 1.5
connections = 2

[phases.slo]
achieved_ratio_min = 0.5

[[phases]]
name = "closed"
target = "floor"
model = "closed"
connections = 2
think_time_ms = 2
duration_s = 1.5
"#;

/// Longest the tiny run may take before the test gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen sits in the workspace")
        .to_path_buf()
}

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let path = workspace_root().join("results/schema.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).expect("results/schema.json is JSON")
    })
}

fn validator() -> jsonschema::Validator {
    jsonschema::meta::validate(schema())
        .unwrap_or_else(|e| panic!("results/schema.json is not a valid JSON Schema: {e}"));
    jsonschema::draft202012::new(schema()).expect("results/schema.json compiles")
}

/// Every schema violation of `instance`, as `instance-path: message`.
fn violations(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Output of the one real run shared by the tests of this file: (exit code, stderr, result.json).
struct RealRun {
    code: Option<i32>,
    stderr: String,
    result: Option<Value>,
}

fn real_run() -> &'static RealRun {
    static RUN: OnceLock<RealRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("tiny.toml");
        std::fs::write(&profile, TINY_PROFILE).expect("write profile");
        let out = dir.path().join("out");
        let stdout_path = dir.path().join("stdout.txt");
        let stderr_path = dir.path().join("stderr.txt");
        let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .arg("run")
            .arg(&profile)
            .arg("--out")
            .arg(&out)
            .arg("--quiet")
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("start loadgen");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for loadgen") {
                break status;
            }
            if started.elapsed() > RUN_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("loadgen run did not finish within {RUN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default()
            + &std::fs::read_to_string(&stdout_path).unwrap_or_default();
        let result = std::fs::read_to_string(out.join("result.json"))
            .ok()
            .map(|t| serde_json::from_str(&t).expect("result.json is JSON"));
        RealRun {
            code: status.code(),
            stderr,
            result,
        }
    })
}

fn real_result() -> &'static Value {
    let run = real_run();
    assert_eq!(
        run.code,
        Some(0),
        "loadgen run failed; its output:\n{}",
        run.stderr
    );
    run.result
        .as_ref()
        .unwrap_or_else(|| panic!("no result.json written; output:\n{}", run.stderr))
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x["name"].as_str().expect("name is a string"))
        .collect()
}

#[test]
fn real_run_matches_schema_and_accounts_for_every_request() {
    let r = real_result();
    let errors = violations(&validator(), r);
    assert!(
        errors.is_empty(),
        "result.json does not match results/schema.json:\n{}",
        errors.join("\n")
    );

    // The shape serde reads back is the one `loadgen compare` needs.
    let typed: RunResult =
        serde_json::from_value(r.clone()).expect("result.json reads back as RunResult");
    assert_eq!(typed.schema_version, SCHEMA_VERSION);

    assert_eq!(r["valid"], json!(true), "invalid: {}", r["invalid_reasons"]);
    assert_eq!(r["invalid_reasons"], json!([]));
    assert_eq!(r["profile_name"], json!("schema-test"));
    assert_eq!(r["slo"]["passed"], json!(true), "slo: {}", r["slo"]);
    // Two measured phases × (p99, error ratio) + the open phase's achieved ratio.
    assert_eq!(r["slo"]["checks"].as_array().expect("array").len(), 5);

    let cal = &r["calibration"];
    assert!(cal.is_object(), "calibration missing: {cal}");
    assert!(cal["requests"].as_u64().expect("u64") > 0, "{cal}");
    assert!(
        cal["floor_cpu_us_per_request"].as_f64().expect("f64") > 0.0,
        "the floor's CPU time was not measured: {cal}"
    );

    // The warm-up ran but is not measured.
    assert_eq!(names(&r["phases"]), ["open-fixed", "closed"]);
    assert_eq!(names(&r["warmup_phases"]), ["warm"]);
    assert!(r["warmup_phases"][0]["ok"].as_u64().expect("u64") > 0);
    assert_eq!(
        names(&r["profile"]["phases"]),
        ["warm", "open-fixed", "closed"]
    );
    assert_eq!(r["profile"]["phases"][0]["warmup"], json!(true));

    for p in r["phases"].as_array().expect("array") {
        let name = p["name"].as_str().expect("name");
        let req = &p["requests"];
        let total = req["total"].as_u64().expect("u64");
        assert!(req["ok"].as_u64().expect("u64") > 0, "{name}: {req}");
        assert_eq!(
            req["ok"].as_u64().expect("u64") + req["failed"].as_u64().expect("u64"),
            total,
            "{name}: {req}"
        );
        assert_eq!(p["goose_requests"].as_u64(), Some(total), "{name}");

        let hist = hist::decode(p["histogram_hdr_v2"].as_str().expect("string"))
            .unwrap_or_else(|e| panic!("{name}: latency histogram does not decode: {e}"));
        assert_eq!(
            hist.len(),
            total,
            "{name}: histogram count vs requests.total"
        );
        assert_eq!(p["latency_us"]["count"].as_u64(), Some(total), "{name}");
        assert_eq!(
            p["latency_us"]["p99"].as_u64(),
            Some(Summary::of(&hist).p99)
        );
        let service = hist::decode(p["service_time_histogram_hdr_v2"].as_str().expect("string"))
            .unwrap_or_else(|e| panic!("{name}: service histogram does not decode: {e}"));
        assert_eq!(service.len(), total, "{name}: service histogram count");

        let procs = p["processes"].as_array().expect("array");
        let roles: Vec<&str> = procs
            .iter()
            .map(|x| x["role"].as_str().expect("role"))
            .collect();
        assert_eq!(
            roles.iter().filter(|r| **r == "server").count(),
            1,
            "{name}: {roles:?}"
        );
        assert!(roles.contains(&"loader"), "{name}: {roles:?}");
        for x in procs {
            assert!(
                x["rss_bytes_peak"].as_u64().expect("u64") > 0,
                "{name}: {x}"
            );
        }
        assert!(
            p["server_cpu_floor_ratio"].is_number(),
            "{name}: built-in target with calibration must have a floor ratio"
        );
    }
    let open = &r["phases"][0];
    assert_eq!(open["model"], json!("open"));
    assert_eq!(open["offered_rate_rps"], json!(200.0));
    assert_eq!(open["arrival"], json!("fixed"));
    let closed = &r["phases"][1];
    assert_eq!(closed["model"], json!("closed"));
    assert_eq!(closed["offered_rate_rps"], Value::Null);
    assert_eq!(closed["arrival"], Value::Null);
    assert_eq!(closed["send_lag_us"]["count"], json!(0));
}

/// A result built from the library's own types, covering what the tiny run does not: no calibration, an external
/// target (no server process), HTTP/2, Poisson arrivals, a failed SLO, null host fields.
fn synthetic_result() -> RunResult {
    let profile = Profile::parse(
        r#"
name = "synthetic"
[calibration]
enabled = false
[targets.ext]
url = "http://127.0.0.1:9/api"
admin_url = "http://127.0.0.1:10"
origin_admin_url = "http://127.0.0.1:11"
pids = [4242]
[targets.edge]
builtin = "cdn"
[targets.edge.cdn]
edges = 1
shields = 0
origin_args = ["--size-bytes", "1024"]
[targets.floor]
builtin = "floor"
args = ["--delay-fixed-us", "500"]
[slo]
latency_us_p99 = 1000
[[phases]]
name = "warm"
target = "ext"
warmup = true
model = "closed"
duration_s = 1
[[phases]]
name = "steps"
target = "ext"
model = "open"
arrival = "poisson"
dispatch = "pool"
http = "2"
connections = 2
users = 8
steps_rps = [100, 200]
duration_s = 2
[[phases.requests]]
method = "POST"
path = "/echo"
body = "{}"
headers = { content-type = "application/json" }
[[phases]]
name = "ledger"
target = "ext"
model = "open"
rate_rps = 100
duration_s = 1
connections = 2
[phases.ledger]
accounts = 100
currencies = ["USD", "EUR"]
batch_size = 4
two_phase_ratio = 0.5
[[phases]]
name = "storm"
target = "edge"
model = "open"
rate_rps = 100
duration_s = 1
[phases.cdn]
workload = "storm"
origin_latency_ms = 50
[[phases]]
name = "video"
target = "ext"
model = "closed"
duration_s = 1
[phases.cdn]
workload = "video"
keys = 10
[[phases]]
name = "tokens"
target = "ext"
model = "open"
rate_rps = 100
duration_s = 4
[phases.oidc]
client_id = "c1"
client_secret = "do-not-publish-me"
scope = "read"
rotate_at_s = [2.0]
"#,
        "synthetic",
    )
    .expect("synthetic profile parses");
    let plan = plan::resolve(&profile, Env::cores(2)).expect("synthetic plan");
    let mut h = hist::new_histogram();
    for v in [120, 250, 900, 15_000] {
        hist::record(&mut h, v);
    }
    let summary = Summary::of(&h);
    let encoded = hist::encode(&h).expect("encode");
    let sampled = Sampled {
        samples: 10,
        rss_bytes_start: 3 << 20,
        rss_bytes_end: 2 << 20,
        rss_bytes_peak: 3 << 20,
        cpu_percent_peak: 12.5,
    };
    let phases: Vec<PhaseResult> = plan
        .phases
        .iter()
        .filter(|p| !p.warmup)
        .map(|p| PhaseResult {
            name: p.name.clone(),
            target: p.target.clone(),
            model: p.model_name().into(),
            http: "2".into(),
            arrival: p.offered_rate_rps().map(|_| "poisson".into()),
            dispatch: p.offered_rate_rps().map(|_| "pool".into()),
            duration_s: p.duration_s,
            connections: p.connections,
            users: p.users,
            loader_processes: 1,
            offered_rate_rps: p.offered_rate_rps(),
            achieved_rate_rps: 2.0,
            requests: Requests {
                total: 4,
                ok: 3,
                failed: 1,
                late: 0,
                timeouts: 1,
            },
            status_codes: BTreeMap::from([("200".to_string(), 3)]),
            errors: BTreeMap::from([("timeout".to_string(), 1)]),
            latency_us: summary,
            service_time_us: summary,
            send_lag_us: Summary::default(),
            histogram_hdr_v2: encoded.clone(),
            service_time_histogram_hdr_v2: encoded.clone(),
            bytes_received: 6,
            goose_requests: 4,
            processes: vec![ProcessResult::new(
                "loader", "loader-0", 4242, 0.002, 2.0, 4, &sampled,
            )],
            server_cpu_floor_ratio: None,
            server_metrics: BTreeMap::from([(
                "ext".to_string(),
                BTreeMap::from([("requests_total".to_string(), 4.0)]),
            )]),
            goose_reports: vec!["goose/steps-w0.html".into()],
            ledger: p.ledger.as_ref().map(|l| LedgerResult {
                batch_size: l.batch_size,
                accounts: l.accounts,
                currencies: l.currencies.clone(),
                accounts_created: 100,
                transfers: LedgerTransfers {
                    sent: 16,
                    ok: 12,
                    exists: 0,
                    failed: 2,
                    in_doubt: 2,
                },
                failed_by_code: BTreeMap::from([("exceeds_credits".to_string(), 2)]),
                transfers_per_s: 12.0,
                two_phase: LedgerTwoPhase {
                    pending_created: 4,
                    posted: 2,
                    voided: 1,
                    pending_unqueued: 0,
                    pending_expiring: 1,
                },
                linked: LedgerLinked {
                    chains: 3,
                    applied: 1,
                    failed: 2,
                    doomed: 1,
                    violations: 0,
                },
                verification: Some(LedgerVerification {
                    passed: false,
                    acked: 12,
                    verified_present: 11,
                    missing: 1,
                    in_doubt: 2,
                    in_doubt_applied: 1,
                    accounts_checked: 100,
                    balance_mismatches: 2,
                    currencies_balanced: BTreeMap::from([
                        ("EUR".to_string(), true),
                        ("USD".to_string(), false),
                    ]),
                    server_verify: Some(LedgerServerVerify {
                        ok: true,
                        records: 20,
                        head_hash: "00ff".into(),
                        balanced: BTreeMap::from([("USD".to_string(), true)]),
                        errors: 0,
                    }),
                    failures: vec!["1 of 12 acknowledged transfers are missing".into()],
                    ..LedgerVerification::default()
                }),
            }),
            cdn: p.cdn.as_ref().map(|c| CdnResult {
                workload: match c.workload {
                    CdnWorkload::Storm { .. } => "storm".into(),
                    _ => "video".into(),
                },
                responses: 4,
                with_cache_status: 0,
                edge_hits: 0,
                upper_hits: 0,
                edge_hit_ratio: None,
                edge_byte_hit_ratio: None,
                hit_ratio: None,
                byte_hit_ratio: None,
                bytes: 6,
                origin_fetches: Some(1),
                origin_bytes: Some(1024),
                offload_ratio: Some(0.75),
                byte_offload_ratio: None,
                storm: matches!(c.workload, CdnWorkload::Storm { .. }).then_some(CdnStorm {
                    keys: 5,
                    keys_checked: 5,
                    max_fetches_per_key: 1,
                    keys_fetched_more_than_once: 0,
                    responses_per_key: 0.8,
                }),
                prefetch: Some(CdnPrefetch {
                    outcomes: BTreeMap::from([("used".to_string(), 3), ("issued".to_string(), 4)]),
                    precision: Some(1.0),
                }),
            }),
            oidc: p.oidc.as_ref().map(|o| OidcResult {
                flow: o.flow.name().into(),
                issuer: "http://127.0.0.1:9".into(),
                tokens: 4,
                tokens_per_s: 1.0,
                malformed_responses: 0,
                sampled: 2,
                verified: 1,
                verification_failures: BTreeMap::from([("kid_not_prepublished".to_string(), 1)]),
                sample_overflow: 0,
                jwks_reads: 5,
                jwks_read_failures: 0,
                introspected_active: 0,
                introspected_inactive: 0,
                http_requests: 8,
                flow_failures: BTreeMap::from([("state_mismatch".to_string(), 1)]),
                refresh_chain_restarts: 0,
                rotations: vec![OidcRotation {
                    at_s: 2.01,
                    ok: true,
                    error: None,
                }],
            }),
        })
        .collect();
    let checks: Vec<SloCheck> = phases
        .iter()
        .map(|p| SloCheck {
            phase: p.name.clone(),
            metric: "latency_us_p99".into(),
            bound: "max".into(),
            limit: 1000.0,
            actual: p.latency_us.p99 as f64,
            passed: false,
        })
        .collect();
    RunResult {
        schema_version: SCHEMA_VERSION,
        refbench_version: "0.1.0".into(),
        profile_name: plan.name.clone(),
        started_at_unix_s: 1_795_833_045.25,
        duration_s: 7.5,
        valid: false,
        invalid_reasons: vec!["phase `steps@100rps`: something".into()],
        warnings: vec![],
        slo: SloReport {
            passed: false,
            checks,
        },
        host: Host {
            cpu_model: "unknown".into(),
            logical_cpus: 2,
            physical_cpus: None,
            available_cpus: 2,
            memory_bytes: 0,
            kernel: "unknown".into(),
            os: "unknown".into(),
            virtualization: None,
            hostname: "unknown".into(),
            rustc: "rustc 1.85.0".into(),
            build_profile: "debug".into(),
        },
        git: Git {
            commit: "unknown".into(),
            dirty: true,
        },
        calibration: None,
        profile: plan.redacted(),
        targets: vec![TargetInfo {
            name: "ext".into(),
            kind: "external".into(),
            system: None,
            url: "http://127.0.0.1:9/api".into(),
            pid: None,
            processes: vec![TargetProcess {
                name: "ext/pid-4242".into(),
                pid: 4242,
            }],
        }],
        phases,
        warmup_phases: vec![WarmupSummary {
            name: "warm".into(),
            ok: 10,
            failed: 0,
        }],
        correctness_failures: vec![
            "phase `ledger`: 1 of 12 acknowledged transfers are missing".into(),
        ],
    }
}

fn synthetic_value() -> Value {
    serde_json::to_value(synthetic_result()).expect("serializes")
}

/// Applies `edit` to a copy of `base` and returns the violations of the copy.
fn violations_after(
    v: &jsonschema::Validator,
    base: &Value,
    edit: impl FnOnce(&mut Value),
) -> Vec<String> {
    let mut doc = base.clone();
    edit(&mut doc);
    violations(v, &doc)
}

fn remove(doc: &mut Value, pointer: &str, key: &str) {
    let obj = doc
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {pointer}"));
    assert!(obj.remove(key).is_some(), "no `{key}` at {pointer}");
}

fn insert(doc: &mut Value, pointer: &str, key: &str, value: Value) {
    doc.pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {pointer}"))
        .insert(key.into(), value);
}

/// An edit of a result document.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn schema_accepts_serde_output_and_rejects_drift() {
    let v = validator();
    let base = synthetic_value();
    let errors = violations(&v, &base);
    assert!(
        errors.is_empty(),
        "a RunResult serialized by serde does not match the schema:\n{}",
        errors.join("\n")
    );
    assert!(base["calibration"].is_null() && base["phases"].as_array().unwrap().len() == 6);
    assert!(base["phases"][5]["oidc"].is_object() && base["phases"][4]["oidc"].is_null());
    assert_eq!(
        base["profile"]["phases"][6]["oidc"]["client_secret"],
        json!("[redacted]")
    );
    assert!(!base.to_string().contains("do-not-publish-me"));
    assert!(base["phases"][0]["ledger"].is_null() && base["phases"][2]["ledger"].is_object());
    assert!(base["phases"][3]["cdn"]["storm"].is_object() && base["phases"][4]["cdn"].is_object());

    // (what, where the error must be reported, edit)
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "top-level field removed",
            "",
            Box::new(|d| remove(d, "", "invalid_reasons")),
        ),
        (
            "phase field removed",
            "/phases/0/requests",
            Box::new(|d| remove(d, "/phases/0/requests", "late")),
        ),
        (
            "process field removed",
            "/phases/1/processes/0",
            Box::new(|d| remove(d, "/phases/1/processes/0", "rss_bytes_peak")),
        ),
        (
            "host field removed",
            "/host",
            Box::new(|d| remove(d, "/host", "kernel")),
        ),
        (
            "unknown top-level field",
            "",
            Box::new(|d| insert(d, "", "extra", json!(1))),
        ),
        (
            "unknown summary field",
            "/phases/0/latency_us",
            Box::new(|d| insert(d, "/phases/0/latency_us", "p95", json!(1))),
        ),
        (
            "unknown git field",
            "/git",
            Box::new(|d| insert(d, "/git", "branch", json!("main"))),
        ),
        (
            "wrong type",
            "/phases/0/requests/ok",
            Box::new(|d| d["phases"][0]["requests"]["ok"] = json!("3")),
        ),
        (
            "closed phase with an offered rate",
            "/phases/0/offered_rate_rps",
            Box::new(|d| {
                d["phases"][0]["model"] = json!("closed");
                d["phases"][0]["arrival"] = Value::Null;
            }),
        ),
        (
            "valid with invalid reasons",
            "/invalid_reasons",
            Box::new(|d| d["valid"] = json!(true)),
        ),
        (
            "slo passed with a failed check",
            "/slo/checks/0/passed",
            Box::new(|d| d["slo"]["passed"] = json!(true)),
        ),
        (
            "cdn field removed",
            "/phases/3/cdn",
            Box::new(|d| remove(d, "/phases/3/cdn", "offload_ratio")),
        ),
        (
            "storm field removed",
            "/phases/3/cdn",
            Box::new(|d| remove(d, "/phases/3/cdn/storm", "max_fetches_per_key")),
        ),
        (
            "unknown cdn workload",
            "/phases/4/cdn",
            Box::new(|d| d["phases"][4]["cdn"]["workload"] = json!("scan")),
        ),
        (
            "cdn plan without its period",
            "/profile/phases/4/cdn",
            Box::new(|d| remove(d, "/profile/phases/4/cdn", "period_ms")),
        ),
        (
            "oidc field removed",
            "/phases/5/oidc",
            Box::new(|d| remove(d, "/phases/5/oidc", "verification_failures")),
        ),
        (
            "unknown oidc flow",
            "/phases/5/oidc",
            Box::new(|d| d["phases"][5]["oidc"]["flow"] = json!("implicit")),
        ),
        (
            "rotation without its outcome",
            "/phases/5/oidc",
            Box::new(|d| remove(d, "/phases/5/oidc/rotations/0", "ok")),
        ),
        (
            "client secret published",
            "/profile/phases/5/oidc",
            Box::new(|d| {
                d["profile"]["phases"][5]["oidc"]["client_secret"] = json!("do-not-publish-me")
            }),
        ),
        (
            "user password published",
            "/profile/phases/5/oidc",
            Box::new(|d| d["profile"]["phases"][5]["oidc"]["password"] = json!("hunter2")),
        ),
        (
            "target process without its pid",
            "/targets/0/processes/0",
            Box::new(|d| remove(d, "/targets/0/processes/0", "pid")),
        ),
        (
            "ledger field removed",
            // Nullable objects are `anyOf`: the violation is reported where the `anyOf` is.
            "/phases/2/ledger",
            Box::new(|d| remove(d, "/phases/2/ledger/verification", "balance_mismatches")),
        ),
        (
            "unknown ledger field",
            "/phases/2/ledger",
            Box::new(|d| insert(d, "/phases/2/ledger/transfers", "lost", json!(1))),
        ),
        (
            "ledger plan field removed",
            "/profile/phases/3/ledger",
            Box::new(|d| remove(d, "/profile/phases/3/ledger", "batch_size")),
        ),
        (
            "server verify without its hash",
            "/phases/2/ledger",
            Box::new(|d| {
                remove(
                    d,
                    "/phases/2/ledger/verification/server_verify",
                    "head_hash",
                )
            }),
        ),
        (
            "ledger verification passed with a missing transfer",
            "/phases/2/ledger",
            Box::new(|d| {
                d["phases"][2]["ledger"]["verification"]["passed"] = json!(true);
                d["phases"][2]["ledger"]["verification"]["failures"] = json!([]);
            }),
        ),
        (
            "correctness failures removed",
            "",
            Box::new(|d| remove(d, "", "correctness_failures")),
        ),
        (
            "other schema version",
            "/schema_version",
            Box::new(|d| d["schema_version"] = json!(2)),
        ),
    ];
    for (what, at, edit) in cases {
        let errors = violations_after(&v, &base, edit);
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{at}: "))),
            "{what}: expected a violation at `{at}`, got {errors:?}"
        );
    }

    // Calibration, when present, must carry the floor figure.
    let real_like = {
        let mut d = base.clone();
        d["calibration"] = json!({
            "floor_cpu_us_per_request": 90.5, "loader_cpu_us_per_request": 150.0, "rate_rps": 200.0,
            "achieved_rate_rps": 199.0, "duration_s": 1.0, "connections": 2, "requests": 200,
            "latency_us": d["phases"][0]["latency_us"].clone(), "valid": true
        });
        d
    };
    assert_eq!(violations(&v, &real_like), Vec::<String>::new());
    let errors = violations_after(&v, &real_like, |d| {
        remove(d, "/calibration", "floor_cpu_us_per_request")
    });
    assert!(
        !errors.is_empty(),
        "calibration without its floor figure accepted"
    );
}

#[test]
fn schema_rejects_drift_of_the_real_result() {
    let v = validator();
    let r = real_result();
    assert!(
        violations_after(&v, r, |d| remove(
            d,
            "/calibration",
            "floor_cpu_us_per_request"
        ))
        .iter()
        .any(|e| e.starts_with("/calibration: "))
    );
    assert!(
        violations_after(&v, r, |d| remove(d, "/phases/1", "service_time_us"))
            .iter()
            .any(|e| e.starts_with("/phases/1: "))
    );
    assert!(
        violations_after(&v, r, |d| insert(
            d,
            "/phases/0/processes/1",
            "gpu",
            json!(0)
        ))
        .iter()
        .any(|e| e.starts_with("/phases/0/processes/1: "))
    );
    assert!(
        !violations_after(&v, r, |d| insert(d, "/profile/phases/0", "extra", json!(0))).is_empty()
    );
}
