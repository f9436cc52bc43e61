//! The OIDC scenario end to end, as a user runs it: `loadgen run` starts the built-in token-issuer, asks it for
//! client_credentials tokens (client_secret_basic, then client_secret_post with a scope and a resource) while
//! rotating its signing key twice, and verifies every token against the JWKS a relying party would have held; then
//! introspects one token across a rotation (it must stay active). The
//! check must be able to fail: a relying party that re-reads the JWKS less often than the keys rotate meets tokens
//! signed by keys it has never seen, and the run exits 1.

mod common;

use common::{RELAXED, phase, run, schema_violations, u};

fn profile(name: &str, jwks_refresh_ms: u64, rotations: &str) -> String {
    format!(
        r#"name = "{name}"
{RELAXED}
[targets.oidc]
builtin = "oidc"

[slo]
error_ratio = 0.0

[[phases]]
name = "basic"
target = "oidc"
model = "open"
rate_rps = 300
duration_s = 3
connections = 4
[phases.oidc]
verify_every = 1
jwks_refresh_ms = {jwks_refresh_ms}
rotate_at_s = {rotations}

[[phases]]
name = "post"
target = "oidc"
model = "open"
rate_rps = 200
duration_s = 1
connections = 2
[phases.oidc]
auth = "post"
scope = "write read"
resource = "https://reports.refbench.test"
verify_every = 2

[[phases]]
name = "introspect"
target = "oidc"
model = "open"
rate_rps = 300
duration_s = 1.5
connections = 2
[phases.oidc]
flow = "introspect"
rotate_at_s = [0.5]
"#
    )
}

#[test]
fn tokens_verify_against_the_jwks_across_key_rotations() {
    let (code, output, result) = run(&profile("oidc-test", 200, "[1.0, 2.0]"));
    let result = result.unwrap_or_else(|| panic!("no result.json:\n{output}"));
    assert_eq!(
        code,
        Some(0),
        "{output}\n{:#}",
        result["correctness_failures"]
    );
    let violations = schema_violations(&result);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The default client's secret is never published in a result.
    assert!(
        !result.to_string().contains("bench-secret"),
        "the client secret leaked"
    );

    let basic = &phase(&result, "basic")["oidc"];
    assert_eq!(basic["flow"], "client_credentials");
    let tokens = u(&basic["tokens"]);
    assert!(tokens > 500, "{basic:#}");
    assert_eq!(u(&basic["sampled"]), tokens, "{basic:#}");
    assert_eq!(u(&basic["verified"]), tokens, "{basic:#}");
    assert_eq!(
        basic["verification_failures"],
        serde_json::json!({}),
        "{basic:#}"
    );
    assert_eq!(u(&basic["malformed_responses"]), 0);
    let rotations = basic["rotations"].as_array().expect("rotations");
    assert_eq!(rotations.len(), 2, "{basic:#}");
    assert!(rotations.iter().all(|r| r["ok"] == true), "{basic:#}");
    assert!(u(&basic["jwks_reads"]) >= 10, "{basic:#}");
    // Two rotations: the issuer signed with three keys, and published each before it signed.
    let rotated = &phase(&result, "basic")["server_metrics"]["oidc"];
    assert!(
        rotated
            .as_object()
            .expect("the issuer's counters")
            .iter()
            .any(|(k, v)| k.starts_with("oidc_key_rotations_total") && v.as_f64() == Some(2.0)),
        "{rotated:#}"
    );

    let post = &phase(&result, "post")["oidc"];
    assert!(u(&post["tokens"]) > 100, "{post:#}");
    assert_eq!(u(&post["verified"]), u(&post["sampled"]), "{post:#}");
    assert!(u(&post["sampled"]) > 50, "{post:#}");
    assert_eq!(
        post["verification_failures"],
        serde_json::json!({}),
        "{post:#}"
    );

    // One token obtained before the phase stays active through a rotation.
    let intro = &phase(&result, "introspect")["oidc"];
    assert_eq!(intro["flow"], "introspect");
    assert!(u(&intro["introspected_active"]) > 300, "{intro:#}");
    assert_eq!(u(&intro["introspected_inactive"]), 0, "{intro:#}");
    assert_eq!(u(&intro["malformed_responses"]), 0, "{intro:#}");
    assert_eq!(u(&intro["tokens"]), 0, "{intro:#}");
    assert_eq!(intro["rotations"][0]["ok"], true, "{intro:#}");
}

#[test]
fn a_relying_party_that_reads_the_jwks_too_rarely_fails_the_check() {
    // One JWKS read before the phase and none after it until the phase ends: the first rotation promotes the key
    // that read already held, the second a key published after it.
    let (code, output, result) = run(&profile("oidc-stale-rp", 60_000, "[1.0, 2.0]"));
    let result = result.unwrap_or_else(|| panic!("no result.json:\n{output}"));
    assert_eq!(code, Some(1), "{output}");
    let basic = &phase(&result, "basic")["oidc"];
    let failed = u(&basic["verification_failures"]["kid_not_prepublished"]);
    assert!(failed > 50, "{basic:#}");
    assert_eq!(
        u(&basic["verified"]) + failed,
        u(&basic["sampled"]),
        "{basic:#}"
    );
    let failures = result["correctness_failures"].as_array().expect("failures");
    assert!(
        failures.iter().any(|f| f
            .as_str()
            .is_some_and(|f| f.contains("kid_not_prepublished"))),
        "{failures:?}"
    );
}
