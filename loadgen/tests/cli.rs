//! Command-line behaviour of the real `loadgen` binary: exit codes and messages for good and bad profiles, the
//! loopback rule, `compare` and `--help`. Nothing here sends load: every `run` below is refused before it starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use refbench_loadgen::hist::{self, Summary};
use refbench_loadgen::host::{Git, Host};
use refbench_loadgen::plan::{self, Env};
use refbench_loadgen::procs::Sampled;
use refbench_loadgen::profile::Profile;
use refbench_loadgen::result::{
    Calibration, PhaseResult, ProcessResult, Requests, RunResult, SCHEMA_VERSION, SloReport,
};

/// A valid profile the cases below break one key at a time.
const BASE: &str = r#"name = "cli-test"

[run]
max_duration_s = 60

[calibration]
enabled = false

[targets.floor]
builtin = "floor"

[[phases]]
name = "p0"
target = "floor"
model = "open"
rate_rps = 100
duration_s = 1
"#;

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("start loadgen")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write file");
    p
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Asserts exit code 2 and that stderr contains every one of `needles`.
fn assert_refused(what: &str, out: &Output, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: expected exit 2; stderr:\n{stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "{what}: stderr does not mention `{n}`:\n{stderr}"
        );
    }
}

#[test]
fn validate_accepts_every_shipped_profile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("profiles/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the shipped profiles, found {files:?}"
    );
    for f in files {
        // A profile may name a built-in this build does not have yet (the ledger profile was written before the
        // ledger server could be started by loadgen): such targets are validated as external loopback URLs.
        let profile = Profile::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let mut args = vec!["validate".to_string(), path_str(&f).to_string()];
        for (name, t) in &profile.targets {
            if t.builtin
                .as_deref()
                .is_some_and(|b| !plan::BUILTIN_SYSTEMS.contains(&b))
            {
                args.push("--target".into());
                args.push(format!("{name}=http://127.0.0.1:1"));
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = loadgen(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            f.display(),
            text(&out.stderr)
        );
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not the plan JSON: {e}", f.display()));
        assert!(plan["name"].is_string() && plan["phases"].is_array());
        assert!(text(&out.stderr).contains("is valid"));
    }
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "top level",
            format!("bogus_top_key = 1\n{BASE}"),
            "bogus_top_key",
        ),
        (
            "[run]",
            BASE.replace("[run]\n", "[run]\nbogus_run_key = 1\n"),
            "bogus_run_key",
        ),
        (
            "[[phases]]",
            format!("{BASE}bogus_phase_key = 1\n"),
            "bogus_phase_key",
        ),
        (
            "[phases.ledger]",
            format!("{BASE}[phases.ledger]\nbogus_ledger_key = 1\n"),
            "bogus_ledger_key",
        ),
        (
            "[targets.floor]",
            BASE.replace(
                "builtin = \"floor\"\n",
                "builtin = \"floor\"\nbogus_target_key = 1\n",
            ),
            "bogus_target_key",
        ),
    ];
    for (i, (what, profile, key)) in cases.iter().enumerate() {
        assert_ne!(profile, BASE, "{what}: the edit did not apply");
        let p = write(dir.path(), &format!("unknown{i}.toml"), profile);
        assert_refused(what, &loadgen(&["validate", path_str(&p)]), &[key]);
    }
}

#[test]
fn bad_values_are_refused_with_the_field_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let second_phase =
        "\n[[phases]]\nname = \"p1\"\ntarget = \"floor\"\nmodel = \"closed\"\nduration_s = 1\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "negative rate",
            BASE.replace("rate_rps = 100", "rate_rps = -5"),
            "phases[0].rate_rps",
        ),
        (
            "unknown model",
            BASE.replace("model = \"open\"", "model = \"foo\""),
            "phases[0].model",
        ),
        (
            "unknown target",
            BASE.replace("target = \"floor\"", "target = \"nosuch\""),
            "phases[0].target",
        ),
        ("http 3", format!("{BASE}http = \"3\"\n"), "phases[0].http"),
        (
            "users != connections with http 1.1",
            format!("{BASE}connections = 2\nusers = 4\n"),
            "phases[0].users",
        ),
        (
            "duplicate phase names",
            format!("{BASE}{}", second_phase.replace("\"p1\"", "\"p0\"")),
            "phases[1].name",
        ),
        (
            "second phase bad",
            format!("{BASE}{second_phase}think_time_ms = -1\n"),
            "phases[1].think_time_ms",
        ),
        (
            "unknown builtin system",
            BASE.replace("builtin = \"floor\"", "builtin = \"nginx\""),
            "targets.floor.builtin",
        ),
        (
            "ledger batch too large",
            format!("{BASE}[phases.ledger]\nbatch_size = 8191\n"),
            "phases[0].ledger.batch_size",
        ),
        (
            "ledger bad currency",
            format!("{BASE}[phases.ledger]\ncurrencies = [\"USD\", \"eur\"]\n"),
            "phases[0].ledger.currencies[1]",
        ),
        (
            "ledger ratio above 1",
            format!("{BASE}[phases.ledger]\ntwo_phase_ratio = 1.5\n"),
            "phases[0].ledger.two_phase_ratio",
        ),
        (
            "ledger chains in batches too small for them",
            format!("{BASE}[phases.ledger]\nbatch_size = 2\nlinked_ratio = 0.1\n"),
            "phases[0].ledger.linked_ratio",
        ),
        (
            "ledger chain too long",
            format!("{BASE}[phases.ledger]\nbatch_size = 50\nlinked_chain_max = 17\n"),
            "phases[0].ledger.linked_chain_max",
        ),
        (
            "ledger pending timeout too long",
            format!("{BASE}[phases.ledger]\npending_timeout_s = 61\n"),
            "phases[0].ledger.pending_timeout_s",
        ),
        (
            "ledger bare ratio above 1",
            format!("{BASE}[phases.ledger]\nbare_resolve_ratio = 2\n"),
            "phases[0].ledger.bare_resolve_ratio",
        ),
        (
            "ledger too few accounts",
            format!("{BASE}[phases.ledger]\naccounts = 3\ncurrencies = [\"USD\", \"EUR\"]\n"),
            "phases[0].ledger.accounts",
        ),
        (
            "ledger over HTTP/2",
            format!("{BASE}http = \"2\"\n[phases.ledger]\n"),
            "phases[0].http",
        ),
        (
            "ledger with a request mix",
            format!("{BASE}[[phases.requests]]\npath = \"/\"\n[phases.ledger]\n"),
            "phases[0].requests",
        ),
        (
            "run shorter than its phases",
            BASE.replace("max_duration_s = 60", "max_duration_s = 0.5"),
            "run.max_duration_s",
        ),
    ];
    for (i, (what, profile, field)) in cases.iter().enumerate() {
        assert_ne!(profile, BASE, "{what}: the edit did not apply");
        let p = write(dir.path(), &format!("bad{i}.toml"), profile);
        assert_refused(what, &loadgen(&["validate", path_str(&p)]), &[field]);
        // `run` refuses the same profile the same way, before doing anything.
        if i == 0 {
            let out_dir = dir.path().join("never");
            let out = loadgen(&["run", path_str(&p), "--out", path_str(&out_dir), "-q"]);
            assert_refused(what, &out, &[field]);
            assert!(!out_dir.exists(), "a refused run created its output folder");
        }
    }
}

/// `loadgen run PROFILE --out OUT -q --target TARGET`.
fn run_with_target(profile: &Path, out_dir: &Path, target: &str) -> Output {
    loadgen(&[
        "run",
        path_str(profile),
        "--out",
        path_str(out_dir),
        "-q",
        "--target",
        target,
    ])
}

#[test]
fn remote_targets_are_refused_before_any_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "base.toml", BASE);
    // 10.1.2.3 is never contacted: the refusal happens while the plan is checked, before any process starts.
    let out_dir = dir.path().join("out");
    let out = run_with_target(&p, &out_dir, "floor=http://10.1.2.3:80");
    assert_refused(
        "remote --target",
        &out,
        &["--allow-remote", "targets.floor.url", "10.1.2.3"],
    );
    assert!(
        !out_dir.exists(),
        "the refused run got as far as creating its output folder"
    );

    // `validate` applies the same rule, and --allow-remote lifts it (validate sends nothing either way).
    let out = loadgen(&[
        "validate",
        path_str(&p),
        "--target",
        "floor=http://10.1.2.3:80",
    ]);
    assert_refused("validate remote --target", &out, &["--allow-remote"]);
    let out = loadgen(&[
        "validate",
        path_str(&p),
        "--target",
        "floor=http://10.1.2.3:80",
        "--allow-remote",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A remote admin URL is refused too.
    let admin = write(
        dir.path(),
        "admin.toml",
        &BASE.replace(
            "builtin = \"floor\"",
            "url = \"http://127.0.0.1:1\"\nadmin_url = \"http://10.1.2.3:9000\"",
        ),
    );
    let out = loadgen(&["validate", path_str(&admin)]);
    assert_refused(
        "remote admin_url",
        &out,
        &["--allow-remote", "targets.floor.admin_url"],
    );

    // Loopback in any spelling is fine.
    for url in ["http://127.0.0.1:1", "http://[::1]:1", "http://localhost:1"] {
        let out = loadgen(&[
            "validate",
            path_str(&p),
            "--target",
            &format!("floor={url}"),
        ]);
        assert_eq!(out.status.code(), Some(0), "{url}: {}", text(&out.stderr));
    }
}

#[test]
fn unknown_override_target_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "base.toml", BASE);
    let out_dir = dir.path().join("out");
    let out = run_with_target(&p, &out_dir, "nosuch=http://127.0.0.1:1");
    assert_refused("--target nosuch", &out, &["nosuch", "floor"]);
    assert!(!out_dir.exists());

    let out = loadgen(&["validate", path_str(&p), "--target", "no-equals-sign"]);
    assert_refused("--target without =", &out, &["NAME=URL"]);
    let out = loadgen(&["validate", path_str(&dir.path().join("missing.toml"))]);
    assert_refused("missing profile", &out, &["missing.toml"]);
}

/// A small but complete result, built from the library's types.
fn result(p99_us: u64) -> RunResult {
    let profile = Profile::parse(BASE, "base").expect("base parses");
    let plan = plan::resolve(&profile, Env::cores(2)).expect("base resolves");
    let mut h = hist::new_histogram();
    for i in 0..100 {
        hist::record(&mut h, if i < 95 { 100 } else { p99_us });
    }
    let summary = Summary::of(&h);
    let sampled = Sampled {
        samples: 5,
        rss_bytes_start: 1 << 20,
        rss_bytes_end: 1 << 20,
        rss_bytes_peak: 1 << 20,
        cpu_percent_peak: 5.0,
    };
    let phase = PhaseResult {
        name: "p0".into(),
        target: "floor".into(),
        model: "open".into(),
        http: "1.1".into(),
        arrival: Some("fixed".into()),
        dispatch: Some("lane".into()),
        duration_s: 1.0,
        connections: 8,
        users: 8,
        loader_processes: 1,
        offered_rate_rps: Some(100.0),
        achieved_rate_rps: 100.0,
        requests: Requests {
            total: 100,
            ok: 100,
            ..Requests::default()
        },
        status_codes: BTreeMap::from([("200".to_string(), 100)]),
        errors: BTreeMap::new(),
        latency_us: summary,
        service_time_us: summary,
        send_lag_us: summary,
        histogram_hdr_v2: hist::encode(&h).expect("encode"),
        service_time_histogram_hdr_v2: hist::encode(&h).expect("encode"),
        bytes_received: 200,
        goose_requests: 100,
        processes: vec![
            ProcessResult::new("server", "floor", 10, 0.01, 1.0, 100, &sampled),
            ProcessResult::new("loader", "loader-0", 11, 0.02, 1.0, 100, &sampled),
        ],
        server_cpu_floor_ratio: Some(1.0),
        server_metrics: BTreeMap::new(),
        goose_reports: vec![],
        ledger: None,
        cdn: None,
        oidc: None,
    };
    RunResult {
        schema_version: SCHEMA_VERSION,
        refbench_version: "0.1.0".into(),
        profile_name: "cli-test".into(),
        started_at_unix_s: 1.0e9,
        duration_s: 3.0,
        valid: true,
        invalid_reasons: vec![],
        warnings: vec![],
        slo: SloReport::default(),
        host: Host {
            cpu_model: "test cpu".into(),
            logical_cpus: 2,
            physical_cpus: Some(2),
            available_cpus: 2,
            memory_bytes: 1 << 30,
            kernel: "6.0".into(),
            os: "test".into(),
            virtualization: None,
            hostname: "test".into(),
            rustc: "rustc".into(),
            build_profile: "release".into(),
        },
        git: Git {
            commit: "unknown".into(),
            dirty: false,
        },
        calibration: Some(Calibration {
            floor_cpu_us_per_request: 100.0,
            loader_cpu_us_per_request: 200.0,
            rate_rps: 200.0,
            achieved_rate_rps: 200.0,
            duration_s: 1.0,
            connections: 2,
            requests: 200,
            latency_us: summary,
            valid: true,
        }),
        profile: plan,
        targets: vec![],
        phases: vec![phase],
        warmup_phases: vec![],
        correctness_failures: vec![],
    }
}

#[test]
fn compare_a_result_with_itself_and_with_a_regression() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.json");
    std::fs::write(&base, serde_json::to_vec(&result(1000)).unwrap()).unwrap();
    let worse = dir.path().join("worse.json");
    std::fs::write(&worse, serde_json::to_vec(&result(5000)).unwrap()).unwrap();

    let out = loadgen(&["compare", path_str(&base), path_str(&base)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("p0") && stdout.contains("+0.0%"),
        "{stdout}"
    );
    let out = loadgen(&[
        "compare",
        path_str(&base),
        path_str(&base),
        "--max-regression-pct",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // p99 from 1000 to 5000 µs is a regression beyond 10 %: exit 1.
    let out = loadgen(&[
        "compare",
        path_str(&base),
        path_str(&worse),
        "--max-regression-pct",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("REGRESSION p0: p99 latency"));

    // The same phase under a different dispatch (and a result from before `dispatch` existed, read as lane):
    // the comparison says the loads differ.
    let mut pooled = result(1000);
    pooled.phases[0].dispatch = Some("pool".into());
    let pooled_path = dir.path().join("pooled.json");
    std::fs::write(&pooled_path, serde_json::to_vec(&pooled).unwrap()).unwrap();
    let mut old = serde_json::to_value(result(1000)).unwrap();
    old["phases"][0].as_object_mut().unwrap().remove("dispatch");
    let old_path = dir.path().join("old.json");
    std::fs::write(&old_path, serde_json::to_vec(&old).unwrap()).unwrap();
    let out = loadgen(&["compare", path_str(&old_path), path_str(&pooled_path)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("the load differs (open/fixed/lane -> open/fixed/pool)"),
        "{}",
        text(&out.stdout)
    );
    let out = loadgen(&["compare", path_str(&old_path), path_str(&base)]);
    assert!(
        !text(&out.stdout).contains("the load differs"),
        "{}",
        text(&out.stdout)
    );

    let junk = write(dir.path(), "junk.json", "{\"not\": \"a result\"}");
    let out = loadgen(&["compare", path_str(&base), path_str(&junk)]);
    assert_refused("compare with junk", &out, &["not a refbench result"]);
}

#[test]
fn help_lists_the_subcommands() {
    let out = loadgen(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for c in ["run", "validate", "serve", "compare"] {
        assert!(commands.contains(&c), "`{c}` missing from --help:\n{help}");
    }
    assert!(
        !commands.contains(&"worker"),
        "the internal worker command is listed:\n{help}"
    );

    let out = loadgen(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
}
