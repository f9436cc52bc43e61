//! The OIDC user flows end to end: `loadgen run` starts the built-in token-issuer, logs the test user in once
//! through its login form, then runs the authorization code flow with PKCE (`/authorize` with the session, then
//! `/token`) while the signing key rotates, and a refresh-token phase in which every lane trades its refresh token
//! for a new one. Every sampled access token and ID token is verified against the JWKS. A wrong password must stop
//! the run before any load.

mod common;

use common::{RELAXED, phase, run, schema_violations, u};

fn profile(name: &str, password: &str) -> String {
    format!(
        r#"name = "{name}"
{RELAXED}
[targets.oidc]
builtin = "oidc"

[slo]
error_ratio = 0.0

[[phases]]
name = "code"
target = "oidc"
model = "open"
rate_rps = 150
duration_s = 2.5
connections = 4
[phases.oidc]
flow = "authorization_code"
username = "alice"
password = "{password}"
verify_every = 1
jwks_refresh_ms = 200
rotate_at_s = [1.2]

[[phases]]
name = "refresh"
target = "oidc"
model = "open"
rate_rps = 150
duration_s = 2
connections = 4
[phases.oidc]
flow = "refresh_token"
auth = "post"
verify_every = 3
"#
    )
}

#[test]
fn code_and_refresh_flows_verify_end_to_end() {
    let (code, output, result) = run(&profile("oidc-user-flows", "alice-password"));
    let result = result.unwrap_or_else(|| panic!("no result.json:\n{output}"));
    assert_eq!(
        code,
        Some(0),
        "{output}\n{:#}",
        result["correctness_failures"]
    );
    let violations = schema_violations(&result);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    let text = result.to_string();
    assert!(!text.contains("alice-password"), "the password leaked");
    assert!(!text.contains("web-secret"), "the client secret leaked");

    let c = &phase(&result, "code")["oidc"];
    assert_eq!(c["flow"], "authorization_code", "{c:#}");
    let flows = u(&c["tokens"]);
    assert!(flows > 250, "{c:#}");
    // Two exchanges per flow: /authorize, then /token.
    assert_eq!(u(&c["http_requests"]), 2 * flows, "{c:#}");
    assert_eq!(u(&c["sampled"]), flows, "{c:#}");
    assert_eq!(u(&c["verified"]), flows, "{c:#}");
    assert_eq!(c["flow_failures"], serde_json::json!({}), "{c:#}");
    assert_eq!(c["rotations"][0]["ok"], true, "{c:#}");

    let r = &phase(&result, "refresh")["oidc"];
    assert_eq!(r["flow"], "refresh_token", "{r:#}");
    let refreshed = u(&r["tokens"]);
    assert!(refreshed > 200, "{r:#}");
    assert_eq!(u(&r["http_requests"]), refreshed, "{r:#}");
    assert_eq!(u(&r["refresh_chain_restarts"]), 0, "{r:#}");
    assert_eq!(r["flow_failures"], serde_json::json!({}), "{r:#}");
    assert!(u(&r["sampled"]) > 60, "{r:#}");
    assert_eq!(u(&r["verified"]), u(&r["sampled"]), "{r:#}");
}

#[test]
fn a_wrong_password_stops_the_run_before_any_load() {
    let (code, output, result) = run(&profile("oidc-bad-login", "not-the-password"));
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("login as alice"), "{output}");
    if let Some(result) = result {
        assert!(
            result["phases"].as_array().is_none_or(|p| p.is_empty()),
            "{result:#}"
        );
    }
}
