//! The JWT bearer grant (RFC 7523 §2.1) with a trusted issuer whose keys are inline: a valid assertion becomes a
//! token for the mapped subject (verified independently); an untrusted issuer, a replayed `jti`, a missing `exp`, a
//! wrong `aud`, a bad signature, a missing `jti` and a client the issuer does not list are `invalid_grant`.

mod common;
mod fed_common;

use common::*;
use fed_common::*;
use http::StatusCode;
use serde_json::{Value, json};

const IDP: &str = "https://idp.test";
const BEARER_ID: &str = "bearer-client";
const BEARER_SECRET: &str = "bearer-secret-0123456789abcdef";
const OUTSIDER_ID: &str = "outsider-client";
const OUTSIDER_SECRET: &str = "outsider-secret-0123456789abcdef";

fn app_trusting(idp: &TestKey) -> (refbench_oidc::OidcApp, refbench_oidc::Clock) {
    test_app(embedded_plus(&format!(
        r#"
[[clients]]
client_id = "{BEARER_ID}"
client_secret = "{BEARER_SECRET}"
grant_types = ["{JWT_BEARER}"]
scopes = ["read", "write"]
default_scopes = ["read"]
audience = "{API}"

[[clients]]
client_id = "{OUTSIDER_ID}"
client_secret = "{OUTSIDER_SECRET}"
grant_types = ["{JWT_BEARER}"]
scopes = ["read"]
audience = "{API}"

[[trusted_issuers]]
issuer = "{IDP}"
alias = "idp"
jwks = '{}'
clients = ["{BEARER_ID}"]
algorithms = ["ES256"]
"#,
        idp.jwks_json()
    )))
}

fn assertion_claims(now: u64, jti: &str) -> Value {
    json!({
        "iss": IDP,
        "sub": "alice",
        "aud": ISSUER,
        "exp": now + 120,
        "iat": now,
        "jti": jti,
    })
}

async fn grant(
    app: &refbench_oidc::OidcApp,
    id: &str,
    secret: &str,
    assertion: &str,
    extra: &[(&str, &str)],
) -> Got {
    let auth = basic(id, secret);
    let mut pairs = vec![("grant_type", JWT_BEARER), ("assertion", assertion)];
    pairs.extend_from_slice(extra);
    post_form(app, "/token", &[("authorization", &auth)], &form(&pairs)).await
}

#[tokio::test(flavor = "current_thread")]
async fn a_trusted_assertion_becomes_a_token_for_the_mapped_subject() {
    let idp = TestKey::new();
    let (app, clock) = app_trusting(&idp);
    let a = idp.sign(&assertion_claims(clock.now_s(), "j1"));
    let r = grant(
        &app,
        BEARER_ID,
        BEARER_SECRET,
        &a,
        &[("scope", "read write"), ("resource", API)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let body = r.json();
    assert_eq!(body["scope"], "read write");
    assert!(body.get("issued_token_type").is_none());
    let token = body["access_token"].as_str().unwrap();
    let data = verify_independently(token, &jwks(&app).await, ISSUER, API);
    assert_eq!(data.claims["sub"], "idp|alice");
    assert_eq!(data.claims["client_id"], BEARER_ID);
    assert!(data.claims.get("act").is_none());
    // The token endpoint URL is an accepted audience too.
    let mut c = assertion_claims(clock.now_s(), "j2");
    c["aud"] = json!([format!("{ISSUER}/token"), "https://other.test"]);
    let r = grant(&app, BEARER_ID, BEARER_SECRET, &idp.sign(&c), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["scope"], "read");
}

#[tokio::test(flavor = "current_thread")]
async fn bad_assertions_are_invalid_grant() {
    let idp = TestKey::new();
    let (app, clock) = app_trusting(&idp);
    let now = clock.now_s();
    let refused = |r: Got, why: &str| {
        assert_eq!(r.oauth_error(), "invalid_grant", "{why}: {:?}", r.body);
    };

    // Replay.
    let a = idp.sign(&assertion_claims(now, "once"));
    assert_eq!(
        grant(&app, BEARER_ID, BEARER_SECRET, &a, &[]).await.status,
        StatusCode::OK
    );
    refused(
        grant(&app, BEARER_ID, BEARER_SECRET, &a, &[]).await,
        "replay",
    );

    // Untrusted issuer (signed by the trusted key, but claiming another iss; and another key).
    let mut c = assertion_claims(now, "u1");
    c["iss"] = json!("https://evil.test");
    refused(
        grant(&app, BEARER_ID, BEARER_SECRET, &idp.sign(&c), &[]).await,
        "untrusted iss",
    );
    let evil = TestKey::new();
    refused(
        grant(
            &app,
            BEARER_ID,
            BEARER_SECRET,
            &evil.sign(&assertion_claims(now, "u2")),
            &[],
        )
        .await,
        "unknown key",
    );

    // Missing exp, missing jti, missing sub, expired, wrong audience.
    for (field, why) in [("exp", "no exp"), ("jti", "no jti"), ("sub", "no sub")] {
        let mut c = assertion_claims(now, &format!("m-{field}"));
        c.as_object_mut().unwrap().remove(field);
        refused(
            grant(&app, BEARER_ID, BEARER_SECRET, &idp.sign(&c), &[]).await,
            why,
        );
    }
    let mut c = assertion_claims(now, "e1");
    c["exp"] = json!(now - 600);
    refused(
        grant(&app, BEARER_ID, BEARER_SECRET, &idp.sign(&c), &[]).await,
        "expired",
    );
    let mut c = assertion_claims(now, "a1");
    c["aud"] = json!("https://api.refbench.test");
    refused(
        grant(&app, BEARER_ID, BEARER_SECRET, &idp.sign(&c), &[]).await,
        "aud",
    );

    // A tampered payload under a valid signature.
    let good = idp.sign(&assertion_claims(now, "t1"));
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut c = assertion_claims(now, "t1");
    c["sub"] = json!("root");
    let forged_payload = unsigned(&json!({}), &c, "")
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    parts[1] = &forged_payload;
    refused(
        grant(&app, BEARER_ID, BEARER_SECRET, &parts.join("."), &[]).await,
        "tampered",
    );

    // alg none.
    let none = unsigned(
        &json!({"alg": "none", "kid": idp.kid()}),
        &assertion_claims(now, "n1"),
        "",
    );
    refused(
        grant(&app, BEARER_ID, BEARER_SECRET, &none, &[]).await,
        "none",
    );

    // A client the trusted issuer does not list.
    refused(
        grant(
            &app,
            OUTSIDER_ID,
            OUTSIDER_SECRET,
            &idp.sign(&assertion_claims(now, "o1")),
            &[],
        )
        .await,
        "outsider",
    );
    // A client without the grant.
    let auth = basic(BENCH_ID, BENCH_SECRET);
    let r = post_form(
        &app,
        "/token",
        &[("authorization", &auth)],
        &form(&[
            ("grant_type", JWT_BEARER),
            ("assertion", &idp.sign(&assertion_claims(now, "b1"))),
        ]),
    )
    .await;
    assert_eq!(r.oauth_error(), "unauthorized_client");
    // Scope beyond the client's: invalid_scope, and the assertion stays usable.
    let a = idp.sign(&assertion_claims(now, "s1"));
    let r = grant(&app, BEARER_ID, BEARER_SECRET, &a, &[("scope", "admin")]).await;
    assert_eq!(r.oauth_error(), "invalid_scope");
    assert_eq!(
        grant(&app, BEARER_ID, BEARER_SECRET, &a, &[]).await.status,
        StatusCode::OK
    );
}
