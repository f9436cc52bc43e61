//! The token endpoint through `app()`: client_credentials with both authentication methods, tokens that verify with
//! `jsonwebtoken` against the served JWKS, and every kind of bad request answered with the right OAuth error and
//! status, never a 5xx.

mod common;

use common::*;
use http::{Method, StatusCode};
use refbench_oidc::SigningAlg;

#[tokio::test(flavor = "current_thread")]
async fn client_credentials_with_basic_auth_issues_a_verifiable_rfc9068_token() {
    let (app, clock) = default_app();
    let auth = basic(BENCH_ID, BENCH_SECRET);
    let r = post_form(
        &app,
        "/token",
        &[("authorization", &auth)],
        "grant_type=client_credentials&scope=read+write",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "read write");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = body["access_token"].as_str().unwrap();

    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let set = jwks(&app).await;
    assert!(kids(&set).contains(header.kid.as_ref().unwrap()));

    let data = verify_independently(token, &set, ISSUER, API);
    let c = data.claims;
    let now = clock.now_s();
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["sub"], BENCH_ID);
    assert_eq!(c["client_id"], BENCH_ID);
    assert_eq!(c["aud"], API);
    assert_eq!(c["scope"], "read write");
    assert_eq!(c["iat"], now);
    assert_eq!(c["exp"], now + 300);
    assert!(c["nbf"].as_u64().unwrap() <= now);
    assert_eq!(c["jti"].as_str().unwrap().len(), 22);
}

#[tokio::test(flavor = "current_thread")]
async fn client_secret_post_works_and_defaults_apply() {
    let (app, _) = default_app();
    let body =
        format!("grant_type=client_credentials&client_id={BENCH_ID}&client_secret={BENCH_SECRET}");
    let r = post_form(&app, "/token", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let v = r.json();
    // No scope asked: the client's default scope.
    assert_eq!(v["scope"], "read");
    let set = jwks(&app).await;
    verify_independently(v["access_token"].as_str().unwrap(), &set, ISSUER, API);
    // Basic with the same client_id in the body is one method, not two.
    let auth = basic(BENCH_ID, BENCH_SECRET);
    let r = post_form(
        &app,
        "/token",
        &[("authorization", &auth)],
        &format!("grant_type=client_credentials&client_id={BENCH_ID}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn resource_indicators_set_the_audience() {
    let (app, _) = default_app();
    let set = jwks(&app).await;
    let token = bench_token(&app, "&resource=https%3A%2F%2Freports.refbench.test").await;
    verify_independently(&token, &set, ISSUER, REPORTS);
    let token = bench_token(&app, &format!("&resource={REPORTS}&resource={API}")).await;
    let c = verify_independently(&token, &set, ISSUER, API).claims;
    assert_eq!(c["aud"], serde_json::json!([REPORTS, API]));
    let auth = basic(BENCH_ID, BENCH_SECRET);
    for bad in [
        "https://evil.test",
        "not-a-uri",
        "https://api.refbench.test%23x",
    ] {
        let r = post_form(
            &app,
            "/token",
            &[("authorization", &auth)],
            &format!("grant_type=client_credentials&resource={bad}"),
        )
        .await;
        assert_eq!(r.oauth_error(), "invalid_target", "{bad}");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn eddsa_tokens_verify_against_an_okp_jwk() {
    let (app, _) = test_app(config_with("signing_alg = \"EdDSA\""));
    let token = bench_token(&app, "").await;
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().alg,
        jsonwebtoken::Algorithm::EdDSA
    );
    let set = jwks(&app).await;
    let raw: serde_json::Value = serde_json::to_value(&set).unwrap();
    let key = &raw["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    verify_independently(&token, &set, ISSUER, API);
    let _ = SigningAlg::EdDsa;
}

#[tokio::test(flavor = "current_thread")]
async fn jwks_has_ec_keys_with_every_member() {
    let (app, _) = default_app();
    let r = call(&app, Method::GET, "/jwks", &[], b"").await;
    assert_eq!(r.header("content-type"), Some("application/jwk-set+json"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    let v = r.json();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "current and next");
    for k in keys {
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["alg"], "ES256");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["x"].as_str().unwrap().len(), 43);
        assert_eq!(k["y"].as_str().unwrap().len(), 43);
        assert!(k["kid"].is_string());
        assert!(k.get("d").is_none(), "private key published: {k}");
    }
}

/// (headers, body, expected status, expected error)
type Case = (Vec<(&'static str, String)>, String, u16, &'static str);

#[tokio::test(flavor = "current_thread")]
async fn bad_requests_get_the_right_oauth_error_never_a_5xx() {
    let (app, _) = default_app();
    let good = basic(BENCH_ID, BENCH_SECRET);
    let auth = |v: &str| vec![("authorization", v.to_string())];
    let cc = "grant_type=client_credentials".to_string();
    let cases: Vec<Case> = vec![
        // Client authentication.
        (
            auth(&basic(BENCH_ID, "wrong-secret-0123456789abcdef")),
            cc.clone(),
            401,
            "invalid_client",
        ),
        (
            auth(&basic("nobody", BENCH_SECRET)),
            cc.clone(),
            401,
            "invalid_client",
        ),
        (auth("Basic !!!"), cc.clone(), 401, "invalid_client"),
        (auth("Bearer abc"), cc.clone(), 401, "invalid_client"),
        (vec![], cc.clone(), 401, "invalid_client"),
        (
            vec![],
            format!("{cc}&client_id={BENCH_ID}&client_secret=wrong-secret-0123456789abcdef"),
            400,
            "invalid_client",
        ),
        (
            vec![],
            format!("{cc}&client_id=nobody&client_secret={BENCH_SECRET}"),
            400,
            "invalid_client",
        ),
        (
            vec![],
            format!("{cc}&client_secret={BENCH_SECRET}"),
            400,
            "invalid_request",
        ),
        (
            auth(&good),
            format!("{cc}&client_secret={BENCH_SECRET}"),
            400,
            "invalid_request",
        ),
        (
            auth(&good),
            format!("{cc}&client_id={OTHER_ID}"),
            400,
            "invalid_request",
        ),
        // Grants and scopes.
        (
            auth(&good),
            "grant_type=password&username=a&password=b".into(),
            400,
            "unsupported_grant_type",
        ),
        (auth(&good), "scope=read".into(), 400, "invalid_request"),
        (
            auth(&basic(NO_GRANT_ID, NO_GRANT_SECRET)),
            cc.clone(),
            400,
            "unauthorized_client",
        ),
        (
            auth(&good),
            format!("{cc}&scope=superuser"),
            400,
            "invalid_scope",
        ),
        (
            auth(&good),
            format!("{cc}&scope=read++write"),
            400,
            "invalid_scope",
        ),
        (
            auth(&basic(OTHER_ID, OTHER_SECRET)),
            format!("{cc}&scope=write"),
            400,
            "invalid_scope",
        ),
        // Malformed form bodies.
        (
            auth(&good),
            format!("{cc}&scope=%zz"),
            400,
            "invalid_request",
        ),
        (
            auth(&good),
            format!("{cc}&scope=%4"),
            400,
            "invalid_request",
        ),
        (
            auth(&good),
            format!("{cc}&scope=%ff"),
            400,
            "invalid_request",
        ),
        (
            auth(&good),
            format!("{cc}&scope=read&scope=write"),
            400,
            "invalid_request",
        ),
        (
            auth(&good),
            format!("{cc}&grant_type=client_credentials"),
            400,
            "invalid_request",
        ),
    ];
    for (headers, body, status, error) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = post_form(&app, "/token", &h, &body).await;
        assert_eq!(r.oauth_error(), error, "{headers:?} {body}");
        assert_eq!(r.status.as_u16(), status, "{headers:?} {body}");
        if status == 401 {
            assert_eq!(
                r.header("www-authenticate"),
                Some(r#"Basic realm="token-issuer", charset="UTF-8""#),
                "{body}"
            );
        }
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_content_types_methods_and_sizes() {
    let (app, _) = default_app();
    let auth = basic(BENCH_ID, BENCH_SECRET);
    let body = b"grant_type=client_credentials";
    for ct in [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let r = call(
            &app,
            Method::POST,
            "/token",
            &[("content-type", ct), ("authorization", &auth)],
            body,
        )
        .await;
        assert_eq!(r.oauth_error(), "invalid_request", "{ct}");
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ct}");
    }
    let r = call(
        &app,
        Method::POST,
        "/token",
        &[("authorization", &auth)],
        body,
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_request");
    let r = call(
        &app,
        Method::POST,
        "/token",
        &[
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=latin1",
            ),
            ("authorization", &auth),
        ],
        body,
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_request");
    // Parameters and case in the media type are fine.
    let r = call(
        &app,
        Method::POST,
        "/token",
        &[
            (
                "content-type",
                "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
            ),
            ("authorization", &auth),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    // Oversized: 413 with an OAuth body, before authentication or parsing.
    let big = format!(
        "grant_type=client_credentials&pad={}",
        "x".repeat(refbench_oidc::MAX_FORM_BODY_BYTES)
    );
    let r = post_form(&app, "/token", &[("authorization", &auth)], &big).await;
    assert_eq!(r.oauth_error(), "invalid_request");
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Right at the limit is fine.
    let pad = refbench_oidc::MAX_FORM_BODY_BYTES - "grant_type=client_credentials&pad=".len();
    let exact = format!("grant_type=client_credentials&pad={}", "x".repeat(pad));
    let r = post_form(&app, "/token", &[("authorization", &auth)], &exact).await;
    assert_eq!(r.status, StatusCode::OK);

    let r = call(&app, Method::GET, "/token", &[], b"").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = call(&app, Method::POST, "/jwks", &[], b"").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = call(&app, Method::GET, "/nowhere", &[], b"").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // /authorize exists now: without parameters it is a 400 and no redirect.
    let r = call(&app, Method::GET, "/authorize", &[], b"").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.header("location").is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn tokens_are_distinct() {
    let (app, _) = default_app();
    let a = bench_token(&app, "").await;
    let b = bench_token(&app, "").await;
    assert_ne!(a, b);
    let set = jwks(&app).await;
    let ja = verify_independently(&a, &set, ISSUER, API).claims["jti"].clone();
    let jb = verify_independently(&b, &set, ISSUER, API).claims["jti"].clone();
    assert_ne!(ja, jb);
}
