//! Helpers shared by the end-to-end scenario tests: run `loadgen run` on a profile and read what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Loader limits relaxed: the test machine is shared and this checks counts and checks, not timing.
pub const RELAXED: &str = r#"
[run]
max_send_lag_us_p99 = 10_000_000
max_loader_cpu_ratio = 1.0
request_timeout_ms = 10_000
[calibration]
enabled = false
"#;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen sits in the workspace")
        .to_path_buf()
}

/// Runs `loadgen run` on `profile`; returns the exit code, its output and result.json (if written).
pub fn run(profile: &str) -> (Option<i32>, String, Option<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.toml");
    std::fs::write(&path, profile).expect("write profile");
    let out = dir.path().join("out");
    let log = dir.path().join("log.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("run")
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.path().join("err.txt")).expect("log"))
        .spawn()
        .expect("start loadgen");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen run did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("err.txt")).unwrap_or_default();
    let result = std::fs::read_to_string(out.join("result.json"))
        .ok()
        .map(|t| serde_json::from_str(&t).expect("result.json is JSON"));
    (status.code(), output, result)
}

pub fn schema_violations(result: &Value) -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join("results/schema.json"))
        .expect("read results/schema.json");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    let v = jsonschema::draft202012::new(&schema).expect("schema compiles");
    v.iter_errors(result)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

pub fn phase<'a>(result: &'a Value, name: &str) -> &'a Value {
    result["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no phase {name}"))
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

pub fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}
