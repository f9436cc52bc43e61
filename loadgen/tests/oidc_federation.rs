//! Federation end to end through `loadgen run`: two built-in issuers, Org A and Org B (the example pair in
//! `servers/token-issuer/config/`), Org B told where Org A runs with `--trusted-issuer org-a={url:org-a}`. Loadgen
//! obtains one Org A token meant for Org B, then every request of the phase exchanges it at Org B (RFC 8693) while Org
//! B rotates its signing key; every exchanged token is verified against Org B's JWKS. Org A is started although no
//! phase targets it (it is the phase's subject issuer and named in Org B's arguments).

mod common;

use common::{RELAXED, phase, run, schema_violations, u, workspace_root};

fn profile(audience: &str) -> String {
    let config = |name: &str| {
        workspace_root()
            .join("servers/token-issuer/config")
            .join(name)
            .display()
            .to_string()
    };
    format!(
        r#"name = "oidc-federation"
{RELAXED}
[targets.org-a]
builtin = "oidc"
args = ["--config", "{a}"]
[targets.org-b]
builtin = "oidc"
args = ["--config", "{b}", "--trusted-issuer", "org-a={{url:org-a}}"]

[slo]
error_ratio = 0.0

[[phases]]
name = "exchange"
target = "org-b"
model = "open"
rate_rps = 200
duration_s = 2.5
connections = 4
[phases.oidc]
flow = "token_exchange"
client_id = "exchange-client"
client_secret = "exchange-secret-0123456789abcdef"
subject_target = "org-a"
subject_client_id = "org-a-app"
subject_client_secret = "org-a-app-secret-0123456789abcdef"
subject_resource = "https://org-b.refbench.test"
audience = "{audience}"
verify_every = 1
jwks_refresh_ms = 200
rotate_at_s = [1.2]
"#,
        a = config("org-a.toml"),
        b = config("org-b.toml"),
    )
}

#[test]
fn org_a_tokens_are_exchanged_at_org_b_and_verify() {
    let (code, output, result) = run(&profile("org-b-api"));
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
    assert!(
        !text.contains("org-a-app-secret"),
        "the subject client's secret leaked"
    );
    assert!(
        !text.contains("exchange-secret"),
        "the client secret leaked"
    );

    let x = &phase(&result, "exchange")["oidc"];
    assert_eq!(x["flow"], "token_exchange", "{x:#}");
    let tokens = u(&x["tokens"]);
    assert!(tokens > 350, "{x:#}");
    assert_eq!(u(&x["verified"]), tokens, "{x:#}");
    assert_ne!(
        x["issuer"].as_str(),
        result["targets"][0]["url"].as_str(),
        "tokens come from Org B"
    );
    assert_eq!(x["rotations"][0]["ok"], true, "{x:#}");
}

#[test]
fn an_audience_outside_the_policy_fails_every_exchange() {
    let (code, output, result) = run(&profile("https://elsewhere.test"));
    assert_eq!(code, Some(1), "{output}");
    let result = result.unwrap_or_else(|| panic!("no result.json:\n{output}"));
    let p = phase(&result, "exchange");
    assert_eq!(u(&p["oidc"]["tokens"]), 0, "{p:#}");
    assert!(u(&p["requests"]["failed"]) > 300, "{p:#}");
}
