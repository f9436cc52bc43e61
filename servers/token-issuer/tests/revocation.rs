//! Revocation (RFC 7009) and introspection (RFC 7662) through `app()`: a revoked token introspects as inactive; a
//! client cannot revoke (or see) another client's token; unknown tokens are a 200; both endpoints authenticate.

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;

async fn revoke(app: &refbench_oidc::OidcApp, id: &str, secret: &str, token: &str) -> Got {
    let auth = basic(id, secret);
    post_form(
        app,
        "/revoke",
        &[("authorization", &auth)],
        &format!("token={token}&token_type_hint=access_token"),
    )
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn revoked_tokens_introspect_as_inactive() {
    let (app, clock) = default_app();
    let token = bench_token(&app, "&scope=read+write").await;
    let keep = bench_token(&app, "").await;
    let v = introspect(&app, BENCH_ID, BENCH_SECRET, &token).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], BENCH_ID);
    assert_eq!(v["sub"], BENCH_ID);
    assert_eq!(v["scope"], "read write");
    assert_eq!(v["aud"], API);
    assert_eq!(v["iss"], ISSUER);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["exp"], clock.now_s() + 300);

    let r = revoke(&app, BENCH_ID, BENCH_SECRET, &token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &token).await,
        json!({"active": false})
    );
    // Only that token.
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &keep).await["active"],
        true
    );
    // Revoking twice is fine.
    assert_eq!(
        revoke(&app, BENCH_ID, BENCH_SECRET, &token).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "current_thread")]
async fn another_client_cannot_revoke_or_see_a_token() {
    let (app, _) = default_app();
    let token = bench_token(&app, "").await;
    let r = revoke(&app, OTHER_ID, OTHER_SECRET, &token).await;
    assert_eq!(r.oauth_error(), "unauthorized_client");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &token).await["active"],
        true
    );
    // other-client may not introspect other clients' tokens; its own, yes.
    assert_eq!(
        introspect(&app, OTHER_ID, OTHER_SECRET, &token).await,
        json!({"active": false})
    );
    let own = client_token(&app, OTHER_ID, OTHER_SECRET, "").await;
    assert_eq!(
        introspect(&app, OTHER_ID, OTHER_SECRET, &own).await["active"],
        true
    );
    // bench-client may introspect any token (it is the resource server of the tests), but not revoke another's.
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &own).await["active"],
        true
    );
    assert_eq!(
        revoke(&app, BENCH_ID, BENCH_SECRET, &own)
            .await
            .oauth_error(),
        "unauthorized_client"
    );
    assert_eq!(
        revoke(&app, OTHER_ID, OTHER_SECRET, &own).await.status,
        StatusCode::OK
    );
    assert_eq!(
        introspect(&app, OTHER_ID, OTHER_SECRET, &own).await,
        json!({"active": false})
    );
}

#[tokio::test(flavor = "current_thread")]
async fn unknown_tokens_are_a_200_and_both_endpoints_authenticate() {
    let (app, _) = default_app();
    for t in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        assert_eq!(
            revoke(&app, BENCH_ID, BENCH_SECRET, t).await.status,
            StatusCode::OK,
            "{t}"
        );
    }
    let token = bench_token(&app, "").await;
    for path in ["/revoke", "/introspect"] {
        let r = post_form(&app, path, &[], &format!("token={token}")).await;
        assert_eq!(r.oauth_error(), "invalid_client", "{path}");
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let wrong = basic(BENCH_ID, "wrong-secret-0123456789abcdef");
        let r = post_form(
            &app,
            path,
            &[("authorization", &wrong)],
            &format!("token={token}"),
        )
        .await;
        assert_eq!(r.oauth_error(), "invalid_client", "{path}");
        let good = basic(BENCH_ID, BENCH_SECRET);
        let r = post_form(
            &app,
            path,
            &[("authorization", &good)],
            "token_type_hint=access_token",
        )
        .await;
        assert_eq!(r.oauth_error(), "invalid_request", "{path}");
        assert!(
            r.json()["error_description"]
                .as_str()
                .unwrap()
                .contains("token")
        );
        let r = post_form(
            &app,
            path,
            &[("authorization", &good)],
            &format!("token={token}&token=x"),
        )
        .await;
        assert_eq!(r.oauth_error(), "invalid_request", "{path}");
    }
    // Nothing above revoked the token.
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &token).await["active"],
        true
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_revocation_set_answers_503_until_entries_expire() {
    let (app, clock) = test_app(config_with("max_revoked_tokens = 2"));
    let tokens = [
        bench_token(&app, "").await,
        bench_token(&app, "").await,
        bench_token(&app, "").await,
    ];
    assert_eq!(
        revoke(&app, BENCH_ID, BENCH_SECRET, &tokens[0])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        revoke(&app, BENCH_ID, BENCH_SECRET, &tokens[1])
            .await
            .status,
        StatusCode::OK
    );
    let r = revoke(&app, BENCH_ID, BENCH_SECRET, &tokens[2]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert_eq!(r.header("retry-after"), Some("330"));
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &tokens[2]).await["active"],
        true
    );
    // A fresh token outlives the first two; once they expired their entries make room.
    clock.advance(200);
    let fresh = bench_token(&app, "").await;
    clock.advance(130);
    assert_eq!(
        revoke(&app, BENCH_ID, BENCH_SECRET, &fresh).await.status,
        StatusCode::OK
    );
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &fresh).await,
        json!({"active": false})
    );
}
