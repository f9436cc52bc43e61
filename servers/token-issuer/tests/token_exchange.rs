//! Token exchange (RFC 8693) of this issuer's own tokens with the embedded `exchange-client` and its policy: the
//! exchanged token's audience, scope and `act` (also through introspection), nested delegation, and the refusals:
//! no grant / no policy (`unauthorized_client`), scope escalation (`invalid_scope`), an audience the policy does not
//! allow (`invalid_target`), revoked, expired, tampered and untrusted subject tokens (`invalid_grant`), unsupported
//! token types (`invalid_request`).

mod common;
mod fed_common;

use common::*;
use fed_common::*;
use http::StatusCode;
use serde_json::json;

async fn exchange(
    app: &refbench_oidc::OidcApp,
    id: &str,
    secret: &str,
    pairs: &[(&str, &str)],
) -> Got {
    let auth = basic(id, secret);
    let mut all = vec![("grant_type", TOKEN_EXCHANGE)];
    all.extend_from_slice(pairs);
    post_form(app, "/token", &[("authorization", &auth)], &form(&all)).await
}

async fn exchange_ok(app: &refbench_oidc::OidcApp, pairs: &[(&str, &str)]) -> serde_json::Value {
    let r = exchange(app, EXCHANGE_ID, EXCHANGE_SECRET, pairs).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    r.json()
}

#[tokio::test(flavor = "current_thread")]
async fn an_own_token_is_exchanged_for_another_audience_within_its_scope() {
    let (app, _clock) = default_app();
    let subject = bench_token(&app, "&scope=read+write+admin").await;
    let body = exchange_ok(
        &app,
        &[
            ("subject_token", &subject),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("audience", "reports"),
        ],
    )
    .await;
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(body["token_type"], "Bearer");
    // admin is in the subject token but not in the policy.
    assert_eq!(body["scope"], "read write");
    let token = body["access_token"].as_str().unwrap();
    let data = verify_independently(token, &jwks(&app).await, ISSUER, REPORTS);
    assert_eq!(data.claims["sub"], BENCH_ID);
    assert_eq!(data.claims["client_id"], EXCHANGE_ID);
    assert!(data.claims.get("act").is_none(), "no actor token, no act");

    // A narrower scope and a resource instead of an audience name; the jwt token type is accepted too.
    let body = exchange_ok(
        &app,
        &[
            ("subject_token", &subject),
            ("subject_token_type", JWT_TOKEN_TYPE),
            ("resource", API),
            ("scope", "read"),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(body["scope"], "read");
    verify_independently(
        body["access_token"].as_str().unwrap(),
        &jwks(&app).await,
        ISSUER,
        API,
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_actor_token_records_act_and_prior_actors_nest() {
    let (app, _clock) = default_app();
    let subject = bench_token(&app, "&scope=read").await;
    let actor = client_token(&app, OTHER_ID, OTHER_SECRET, "").await;
    let body = exchange_ok(
        &app,
        &[
            ("subject_token", &subject),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("actor_token", &actor),
            ("actor_token_type", ACCESS_TOKEN_TYPE),
        ],
    )
    .await;
    let delegated = body["access_token"].as_str().unwrap().to_string();
    let data = verify_independently(&delegated, &jwks(&app).await, ISSUER, REPORTS);
    assert_eq!(data.claims["sub"], BENCH_ID);
    assert_eq!(data.claims["act"], json!({"sub": OTHER_ID}));
    // Introspection shows it.
    let i = introspect(&app, BENCH_ID, BENCH_SECRET, &delegated).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["act"], json!({"sub": OTHER_ID}));

    // Exchanging the delegated token again, with bench-client acting: the prior actor nests inside.
    let actor2 = bench_token(&app, "").await;
    let body = exchange_ok(
        &app,
        &[
            ("subject_token", &delegated),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("actor_token", &actor2),
            ("actor_token_type", ACCESS_TOKEN_TYPE),
            ("resource", API),
        ],
    )
    .await;
    let data = verify_independently(
        body["access_token"].as_str().unwrap(),
        &jwks(&app).await,
        ISSUER,
        API,
    );
    assert_eq!(
        data.claims["act"],
        json!({"sub": BENCH_ID, "act": {"sub": OTHER_ID}})
    );
    // Without an actor token the existing delegation is carried over, not dropped.
    let body = exchange_ok(
        &app,
        &[
            ("subject_token", &delegated),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["act"],
        json!({"sub": OTHER_ID})
    );
}

#[tokio::test(flavor = "current_thread")]
async fn what_the_policy_does_not_allow_is_refused() {
    let (app, clock) = test_app(embedded_plus(&format!(
        r#"
[[clients]]
client_id = "no-policy-client"
client_secret = "no-policy-secret-0123456789abcdef"
grant_types = ["{TOKEN_EXCHANGE}"]
scopes = ["read"]
audience = "{API}"
"#
    )));
    let subject = bench_token(&app, "&scope=read").await;
    let st = [
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = st.to_vec();
        v.extend_from_slice(extra);
        v
    };

    // A client without the grant, and one with the grant but no policy.
    let r = exchange(&app, BENCH_ID, BENCH_SECRET, &st).await;
    assert_eq!(r.oauth_error(), "unauthorized_client");
    let r = exchange(
        &app,
        "no-policy-client",
        "no-policy-secret-0123456789abcdef",
        &st,
    )
    .await;
    assert_eq!(r.oauth_error(), "unauthorized_client");

    // Scope escalation: write is allowed by the policy but not in the subject token.
    let r = exchange(
        &app,
        EXCHANGE_ID,
        EXCHANGE_SECRET,
        &with(&[("scope", "write")]),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_scope");
    let r = exchange(
        &app,
        EXCHANGE_ID,
        EXCHANGE_SECRET,
        &with(&[("scope", "read admin")]),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_scope");

    // Audiences the policy does not allow.
    for extra in [
        [("audience", "https://evil.test")],
        [("audience", "nonsense-name")],
        [("resource", "https://evil.test")],
        [("resource", "not-a-uri")],
    ] {
        let r = exchange(&app, EXCHANGE_ID, EXCHANGE_SECRET, &with(&extra)).await;
        assert_eq!(r.oauth_error(), "invalid_target", "{extra:?}");
    }

    // Unsupported token types.
    let r = exchange(
        &app,
        EXCHANGE_ID,
        EXCHANGE_SECRET,
        &with(&[(
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:id_token",
        )]),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_request");
    let r = exchange(
        &app,
        EXCHANGE_ID,
        EXCHANGE_SECRET,
        &[
            ("subject_token", &subject),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:saml2",
            ),
        ],
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_request");
    let r = exchange(
        &app,
        EXCHANGE_ID,
        EXCHANGE_SECRET,
        &[("subject_token", &subject)],
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_request");
    let r = exchange(
        &app,
        EXCHANGE_ID,
        EXCHANGE_SECRET,
        &with(&[("actor_token_type", ACCESS_TOKEN_TYPE)]),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_request");

    // Tampered: one signature character changed; a token from an untrusted issuer.
    let mut tampered = subject.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let r = exchange(
        &app,
        EXCHANGE_ID,
        EXCHANGE_SECRET,
        &[
            ("subject_token", &tampered),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    let stranger = TestKey::new();
    let foreign = stranger.sign(&json!({
        "iss": "https://stranger.test", "sub": "mallory", "aud": ISSUER,
        "exp": clock.now_s() + 60, "iat": clock.now_s(), "scope": "read",
    }));
    let r = exchange(
        &app,
        EXCHANGE_ID,
        EXCHANGE_SECRET,
        &[
            ("subject_token", &foreign),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("not trusted")
    );
    // The same claims as a token of ours but signed by a stranger's key.
    let forged = stranger.sign(&json!({
        "iss": ISSUER, "sub": "mallory", "aud": API, "exp": clock.now_s() + 60, "iat": clock.now_s(),
        "jti": "x", "client_id": BENCH_ID, "scope": "read",
    }));
    let r = exchange(
        &app,
        EXCHANGE_ID,
        EXCHANGE_SECRET,
        &[
            ("subject_token", &forged),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");

    // Revoked, then expired.
    let auth = basic(BENCH_ID, BENCH_SECRET);
    let r = post_form(
        &app,
        "/revoke",
        &[("authorization", &auth)],
        &format!("token={subject}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = exchange(&app, EXCHANGE_ID, EXCHANGE_SECRET, &st).await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    let fresh = bench_token(&app, "&scope=read").await;
    let st = [
        ("subject_token", fresh.as_str()),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
    ];
    assert_eq!(
        exchange(&app, EXCHANGE_ID, EXCHANGE_SECRET, &st)
            .await
            .status,
        StatusCode::OK
    );
    clock.advance(300 + 30);
    let r = exchange(&app, EXCHANGE_ID, EXCHANGE_SECRET, &st).await;
    assert_eq!(r.oauth_error(), "invalid_grant");
}

/// A trusted issuer with inline keys (`subject = "keep"`) and two clients: `fed-client` (policy: subjects from that
/// issuer, `client_as_actor`) and `fed-other` (a policy, but the trusted issuer does not list it).
fn federated_app(idp: &TestKey) -> (refbench_oidc::OidcApp, refbench_oidc::Clock) {
    test_app(embedded_plus(&format!(
        r#"
[[clients]]
client_id = "fed-client"
client_secret = "fed-client-secret-0123456789abcdef"
grant_types = ["{TOKEN_EXCHANGE}"]
scopes = ["read", "write"]
audience = "{API}"

[[clients]]
client_id = "fed-other"
client_secret = "fed-other-secret-0123456789abcdef"
grant_types = ["{TOKEN_EXCHANGE}"]
scopes = ["read"]
audience = "{API}"

[[trusted_issuers]]
issuer = "https://idp.test"
subject = "keep"
jwks = '{}'
clients = ["fed-client"]
algorithms = ["ES256"]

[[exchange_policies]]
client_id = "fed-client"
subjects_from = ["https://idp.test"]
audiences = ["{API}"]
scopes = ["read"]
client_as_actor = true

[[exchange_policies]]
client_id = "fed-other"
subjects_from = ["https://idp.test"]
audiences = ["{API}"]
scopes = ["read"]
"#,
        idp.jwks_json()
    )))
}

#[tokio::test(flavor = "current_thread")]
async fn trusted_issuer_tokens_keep_their_subject_and_nest_their_act_under_the_client() {
    let idp = TestKey::new();
    let (app, clock) = federated_app(&idp);
    let now = clock.now_s();
    let foreign = |exp: u64, act: serde_json::Value| {
        idp.sign(&json!({
            "iss": "https://idp.test", "sub": "alice", "aud": ISSUER, "exp": exp, "iat": now,
            "scope": "read write", "act": act,
        }))
    };
    let fed = ("fed-client", "fed-client-secret-0123456789abcdef");
    let good = foreign(now + 120, json!({"sub": "svc"}));
    let r = exchange(
        &app,
        fed.0,
        fed.1,
        &[
            ("subject_token", &good),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let body = r.json();
    assert_eq!(body["scope"], "read");
    let data = verify_independently(
        body["access_token"].as_str().unwrap(),
        &jwks(&app).await,
        ISSUER,
        API,
    );
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(
        data.claims["act"],
        json!({"sub": "fed-client", "act": {"sub": "svc"}})
    );

    // Expired; an act chain too deep; a client the trusted issuer does not list; an own token the policy excludes.
    let expired = foreign(now - 600, json!({"sub": "svc"}));
    let r = exchange(
        &app,
        fed.0,
        fed.1,
        &[
            ("subject_token", &expired),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    let deep = foreign(
        now + 120,
        json!({"sub": "a", "act": {"sub": "b", "act": {"sub": "c", "act": {"sub": "d"}}}}),
    );
    let r = exchange(
        &app,
        fed.0,
        fed.1,
        &[
            ("subject_token", &deep),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    let r = exchange(
        &app,
        "fed-other",
        "fed-other-secret-0123456789abcdef",
        &[
            ("subject_token", &good),
            ("subject_token_type", JWT_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    let own = bench_token(&app, "").await;
    let r = exchange(
        &app,
        fed.0,
        fed.1,
        &[
            ("subject_token", &own),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    // An actor token needs may_act.
    let r = exchange(
        &app,
        fed.0,
        fed.1,
        &[
            ("subject_token", &good),
            ("subject_token_type", JWT_TOKEN_TYPE),
            ("actor_token", &good),
            ("actor_token_type", JWT_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(r.oauth_error(), "unauthorized_client");
}
