//! The CDN scenario end to end, as a user runs it: `loadgen run` starts a whole topology (origin, two shields, two
//! edges), sends Zipf, video and storm load, and reports hits, origin fetches, prefetch and the storm's
//! one-fetch-per-cold-key check in a `result.json` that matches the schema. The check must be able to fail: against
//! an origin with no cache in front, every cold key is fetched many times and the run exits 1.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

mod common;

use common::{RELAXED, f, phase, run, schema_violations, u};

#[test]
fn topology_run_reports_hits_origin_fetches_prefetch_and_a_clean_storm() {
    let profile = format!(
        r#"name = "cdn-test"
{RELAXED}
[targets.cdn]
builtin = "cdn"
[targets.cdn.cdn]
origin_args = ["--size-bytes", "2048"]
edge_args = ["--prefetch-segments", "2"]

[[phases]]
name = "fill"
target = "cdn"
warmup = true
model = "open"
rate_rps = 300
duration_s = 2
connections = 4
[phases.cdn]
keys = 40
zipf_exponent = 0.0

[[phases]]
name = "zipf"
target = "cdn"
model = "open"
rate_rps = 300
duration_s = 2
connections = 4
[phases.cdn]
keys = 40
zipf_exponent = 0.0

[[phases]]
name = "video"
target = "cdn"
model = "closed"
# Time for the prefetch of the next segments to land before the viewer asks (a loaded CI host is slow).
think_time_ms = 50
duration_s = 3
connections = 2
[phases.cdn]
workload = "video"
keys = 3
segments = 20

[[phases]]
name = "storm"
target = "cdn"
model = "open"
rate_rps = 400
duration_s = 2
connections = 16
[phases.cdn]
workload = "storm"
storm_period_ms = 200
origin_latency_ms = 40
"#
    );
    let (code, output, result) = run(&profile);
    let result = result.unwrap_or_else(|| panic!("no result.json; output:\n{output}"));
    assert_eq!(code, Some(0), "output:\n{output}");
    assert_eq!(schema_violations(&result), Vec::<String>::new());
    assert_eq!(result["correctness_failures"], serde_json::json!([]));

    // Five server processes, each measured.
    let servers: Vec<&Value> = phase(&result, "zipf")["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "server")
        .collect();
    let mut names: Vec<&str> = servers
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "cdn/edge-0",
            "cdn/edge-1",
            "cdn/origin",
            "cdn/shield-0",
            "cdn/shield-1"
        ]
    );
    assert!(
        servers
            .iter()
            .filter(|p| p["name"].as_str().unwrap().contains("edge"))
            .all(|p| f(&p["cpu_seconds"]) > 0.0),
        "both edges served load: {servers:?}"
    );

    // Every key was fetched during the fill; afterwards nearly everything is a hit, and what the caches call hits
    // and what the origin counts agree.
    let z = &phase(&result, "zipf")["cdn"];
    let responses = u(&z["responses"]);
    assert_eq!(responses, u(&phase(&result, "zipf")["requests"]["total"]));
    assert_eq!(u(&z["with_cache_status"]), responses);
    assert!(f(&z["hit_ratio"]) > 0.9, "{z}");
    let hits = u(&z["edge_hits"]) + u(&z["upper_hits"]);
    assert!(
        u(&z["origin_fetches"]) <= responses - hits,
        "the origin cannot have answered a request a cache hit: {z}"
    );
    assert!(u(&z["bytes"]) >= 2048 * responses);

    // The edges prefetched segments and some were used.
    let v = &phase(&result, "video")["cdn"];
    let outcomes = &v["prefetch"]["outcomes"];
    assert!(u(&outcomes["issued"]) > 0, "{v}");
    assert!(u(&outcomes["used"]) > 0, "{v}");
    assert!(f(&v["edge_hit_ratio"]) > 0.5, "{v}");

    // The storm: each cold key was asked for many times and fetched from the origin once.
    let s = &phase(&result, "storm")["cdn"]["storm"];
    assert!(u(&s["keys"]) >= 5, "{s}");
    assert_eq!(u(&s["keys_checked"]), u(&s["keys"]));
    assert_eq!(u(&s["max_fetches_per_key"]), 1, "{s}");
    assert_eq!(u(&s["keys_fetched_more_than_once"]), 0);
    assert!(f(&s["responses_per_key"]) > 10.0, "{s}");
}

/// A `loadgen serve cdn origin` child.
struct Origin {
    child: Child,
    http: String,
    admin: String,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_origin() -> Origin {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["serve", "cdn", "origin", "--size-bytes", "1024"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start origin");
    let line = BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .next()
        .expect("a ready line")
        .expect("read");
    let ready: Value = serde_json::from_str(line.strip_prefix("REFBENCH_READY ").expect("ready"))
        .expect("ready JSON");
    Origin {
        http: ready["listeners"]["http"].as_str().unwrap().to_string(),
        admin: ready["listeners"]["admin"].as_str().unwrap().to_string(),
        child,
    }
}

#[test]
fn a_storm_straight_at_the_origin_fails_the_coalescing_check() {
    let origin = start_origin();
    let profile = format!(
        r#"name = "no-cache"
{RELAXED}
[targets.bare]
url = "http://{http}"
origin_admin_url = "http://{admin}"
pids = [{pid}]

[[phases]]
name = "storm"
target = "bare"
model = "open"
rate_rps = 300
duration_s = 1
connections = 16
[phases.cdn]
workload = "storm"
storm_period_ms = 250
origin_latency_ms = 30
"#,
        http = origin.http,
        admin = origin.admin,
        pid = origin.child.id(),
    );
    let (code, output, result) = run(&profile);
    let result = result.unwrap_or_else(|| panic!("no result.json; output:\n{output}"));
    assert_eq!(
        code,
        Some(1),
        "a failed correctness check exits 1:\n{output}"
    );
    assert_eq!(schema_violations(&result), Vec::<String>::new());
    let failures = result["correctness_failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().unwrap().contains("fetched")
                && f.as_str().unwrap().contains("times")),
        "{failures:?}"
    );
    let p = phase(&result, "storm");
    let s = &p["cdn"]["storm"];
    assert!(u(&s["max_fetches_per_key"]) > 1, "{s}");
    assert!(u(&s["keys_fetched_more_than_once"]) > 0);
    // No Cache-Status from a bare origin: no hit ratios, but the origin's own counts.
    assert!(p["cdn"]["hit_ratio"].is_null());
    assert_eq!(u(&p["cdn"]["origin_fetches"]), u(&p["cdn"]["responses"]));
    // The listed pid is measured as the server.
    let server: Vec<&Value> = p["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["role"] == "server")
        .collect();
    assert_eq!(server.len(), 1);
    assert_eq!(u(&server[0]["pid"]), u64::from(origin.child.id()));
    assert!(f(&server[0]["cpu_seconds"]) > 0.0);
}
