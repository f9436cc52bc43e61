//! Refresh tokens through `app()`: rotation, reuse detection revoking the whole family (refresh and access tokens),
//! narrower scope, client binding, `/revoke` and `/introspect` of refresh tokens, expiry; and an EdDSA issuer's
//! ID token `at_hash` (SHA-512 for Ed25519).

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::flow::*;
use common::*;
use http::StatusCode;
use refbench_oidc::OidcApp;
use serde_json::Value;

async fn refresh(app: &OidcApp, token: &str, extra: &str) -> Got {
    let auth = basic(WEB_ID, WEB_SECRET);
    post_form(
        app,
        "/token",
        &[("authorization", &auth)],
        &format!("grant_type=refresh_token&refresh_token={token}{extra}"),
    )
    .await
}

async fn tokens(app: &OidcApp, scope: &str) -> Value {
    let (code, _) = code_for(app, WEB_ID, WEB_CB, scope).await;
    let r = redeem(app, WEB_ID, WEB_CB, &code, VERIFIER).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("no {k} in {v}"))
}

#[tokio::test(flavor = "current_thread")]
async fn rotation_and_reuse_detection_revoke_the_family() {
    let (app, clock) = cheap_app("");
    let first = tokens(&app, "openid profile read").await;
    let rt1 = s(&first, "refresh_token");
    clock.advance(5);
    let second = refresh(&app, rt1, "").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("cache-control"), Some("no-store"));
    let second = second.json();
    let rt2 = s(&second, "refresh_token");
    assert_ne!(rt1, rt2, "rotated");
    assert_eq!(second["scope"], "openid profile read");
    // A new ID token: same sub, aud and auth_time, no nonce (OIDC Core §12.2).
    let set = jwks(&app).await;
    let id1 = verify_independently(s(&first, "id_token"), &set, ISSUER, WEB_ID).claims;
    let id2 = verify_independently(s(&second, "id_token"), &set, ISSUER, WEB_ID).claims;
    assert_eq!(id2["sub"], "user-alice");
    assert_eq!(id2["auth_time"], id1["auth_time"]);
    assert!(id2.get("nonce").is_none());
    assert_eq!(
        id2["iat"].as_u64().unwrap(),
        id1["iat"].as_u64().unwrap() + 5
    );
    assert_eq!(id2["name"], "Alice Example");
    // Introspection: the used one is inactive, the new one active.
    assert_eq!(
        introspect(&app, WEB_ID, WEB_SECRET, rt1).await["active"],
        false
    );
    let v = introspect(&app, WEB_ID, WEB_SECRET, rt2).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "refresh_token");
    assert_eq!(v["client_id"], WEB_ID);
    assert_eq!(v["sub"], "user-alice");
    // The new one works once more (and is rotated).
    let third = refresh(&app, rt2, "").await.json();
    let rt3 = s(&third, "refresh_token");
    // Reuse of the first: invalid_grant, and the whole family is gone.
    assert_eq!(refresh(&app, rt1, "").await.oauth_error(), "invalid_grant");
    assert_eq!(refresh(&app, rt3, "").await.oauth_error(), "invalid_grant");
    for at in [&first, &second, &third] {
        let v = introspect(&app, WEB_ID, WEB_SECRET, s(at, "access_token")).await;
        assert_eq!(v["active"], false, "{at}");
    }
    assert_eq!(
        introspect(&app, WEB_ID, WEB_SECRET, rt3).await["active"],
        false
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_refresh_may_narrow_the_scope_but_not_widen_it() {
    let (app, _) = cheap_app("");
    let t = tokens(&app, "openid read").await;
    let narrow = refresh(&app, s(&t, "refresh_token"), "&scope=read").await;
    assert_eq!(narrow.status, StatusCode::OK);
    let narrow = narrow.json();
    assert_eq!(narrow["scope"], "read");
    assert!(narrow["id_token"].is_null(), "no openid, no ID token");
    // The grant keeps its original scope: the next refresh may ask for openid again.
    let back = refresh(&app, s(&narrow, "refresh_token"), "").await.json();
    assert_eq!(back["scope"], "openid read");
    let wide = refresh(&app, s(&back, "refresh_token"), "&scope=openid+write").await;
    assert_eq!(wide.oauth_error(), "invalid_scope");
}

#[tokio::test(flavor = "current_thread")]
async fn a_refresh_token_is_bound_to_its_client_and_expires() {
    let (app, clock) = cheap_app("refresh_token_lifetime_s = 100");
    let t = tokens(&app, "openid").await;
    let rt = s(&t, "refresh_token");
    // The public client presenting the web app's token.
    let r = post_form(
        &app,
        "/token",
        &[],
        &format!("grant_type=refresh_token&refresh_token={rt}&client_id={NATIVE_ID}"),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    assert_eq!(
        refresh(&app, "unknown", "").await.oauth_error(),
        "invalid_grant"
    );
    assert_eq!(
        post_form(
            &app,
            "/token",
            &[("authorization", &basic(WEB_ID, WEB_SECRET))],
            "grant_type=refresh_token"
        )
        .await
        .oauth_error(),
        "invalid_request"
    );
    // bench-client may not use the grant at all.
    let r = post_form(
        &app,
        "/token",
        &[("authorization", &basic(BENCH_ID, BENCH_SECRET))],
        &format!("grant_type=refresh_token&refresh_token={rt}"),
    )
    .await;
    assert_eq!(r.oauth_error(), "unauthorized_client");
    let t2 = tokens(&app, "openid").await;
    clock.advance(100);
    assert_eq!(
        refresh(&app, s(&t2, "refresh_token"), "")
            .await
            .oauth_error(),
        "invalid_grant"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn public_clients_refresh_with_their_client_id() {
    let (app, _) = cheap_app("");
    let (code, _) = code_for(&app, NATIVE_ID, NATIVE_CB, "openid offline_access").await;
    let t = redeem(&app, NATIVE_ID, NATIVE_CB, &code, VERIFIER)
        .await
        .json();
    let r = post_form(
        &app,
        "/token",
        &[],
        &format!(
            "grant_type=refresh_token&refresh_token={}&client_id={NATIVE_ID}",
            s(&t, "refresh_token")
        ),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    // And may revoke its own refresh token (RFC 7009), which revokes the grant.
    let rt = r.json()["refresh_token"].as_str().unwrap().to_string();
    let at = r.json()["access_token"].as_str().unwrap().to_string();
    let rv = post_form(
        &app,
        "/revoke",
        &[],
        &format!("token={rt}&client_id={NATIVE_ID}"),
    )
    .await;
    assert_eq!(rv.status, StatusCode::OK);
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &at).await["active"],
        false
    );
    let r = post_form(
        &app,
        "/token",
        &[],
        &format!("grant_type=refresh_token&refresh_token={rt}&client_id={NATIVE_ID}"),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
}

#[tokio::test(flavor = "current_thread")]
async fn revoking_a_refresh_token_revokes_its_grant_but_not_for_another_client() {
    let (app, _) = cheap_app("");
    let t = tokens(&app, "openid read").await;
    let rt = s(&t, "refresh_token");
    // Another client may not revoke it.
    let r = post_form(
        &app,
        "/revoke",
        &[("authorization", &basic(OTHER_ID, OTHER_SECRET))],
        &format!("token={rt}"),
    )
    .await;
    assert_eq!(r.oauth_error(), "unauthorized_client");
    assert_eq!(
        introspect(&app, WEB_ID, WEB_SECRET, rt).await["active"],
        true
    );
    // Another client sees it inactive (not a resource server).
    assert_eq!(
        introspect(&app, OTHER_ID, OTHER_SECRET, rt).await["active"],
        false
    );
    let r = post_form(
        &app,
        "/revoke",
        &[("authorization", &basic(WEB_ID, WEB_SECRET))],
        &format!("token={rt}&token_type_hint=refresh_token"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        introspect(&app, WEB_ID, WEB_SECRET, rt).await["active"],
        false
    );
    assert_eq!(
        introspect(&app, WEB_ID, WEB_SECRET, s(&t, "access_token")).await["active"],
        false
    );
    assert_eq!(refresh(&app, rt, "").await.oauth_error(), "invalid_grant");
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_refresh_store_answers_503() {
    let (app, _) = cheap_app("authorization.max_refresh_tokens = 1");
    let t = tokens(&app, "openid").await;
    // Rotation needs a second slot (the used token is kept for reuse detection).
    let r = refresh(&app, s(&t, "refresh_token"), "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    // The refused refresh did not use up the token: a retry is not taken for reuse.
    assert_eq!(
        introspect(&app, WEB_ID, WEB_SECRET, s(&t, "refresh_token")).await["active"],
        true
    );
}

#[tokio::test(flavor = "current_thread")]
async fn eddsa_id_tokens_hash_the_access_token_with_sha512() {
    let (app, _) = cheap_app("signing_alg = \"EdDSA\"");
    let t = tokens(&app, "openid").await;
    let set = jwks(&app).await;
    let id = verify_independently(s(&t, "id_token"), &set, ISSUER, WEB_ID).claims;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, s(&t, "access_token").as_bytes());
    assert_eq!(id["at_hash"], URL_SAFE_NO_PAD.encode(&d.as_ref()[..32]));
    assert_eq!(
        jsonwebtoken::decode_header(s(&t, "id_token")).unwrap().alg,
        jsonwebtoken::Algorithm::EdDSA
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_fast_refresher_is_served_and_reuse_still_revokes_every_access_token_of_the_grant() {
    // Far more refreshes than one access-token lifetime would see from a polite client: each works, and every access
    // token of the grant names it (`grant_id`), so one reuse revokes all of them with one flag.
    let (app, clock) = cheap_app("");
    let first = tokens(&app, "openid read").await;
    let mut rt = s(&first, "refresh_token").to_string();
    let first_rt = rt.clone();
    let mut access = vec![s(&first, "access_token").to_string()];
    for _ in 0..40 {
        clock.advance(1);
        let r = refresh(&app, &rt, "").await;
        assert_eq!(r.status, StatusCode::OK);
        let v = r.json();
        rt = s(&v, "refresh_token").to_string();
        access.push(s(&v, "access_token").to_string());
    }
    let gid = introspect(&app, WEB_ID, WEB_SECRET, &access[0]).await["grant_id"].clone();
    assert!(gid.as_str().is_some_and(|g| g.len() == 43), "{gid}");
    for a in &access {
        let v = introspect(&app, WEB_ID, WEB_SECRET, a).await;
        assert_eq!(v["active"], true);
        assert_eq!(v["grant_id"], gid, "one grant");
    }
    // A client_credentials token has no grant_id.
    let cc = bench_token(&app, "").await;
    assert!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &cc)
            .await
            .get("grant_id")
            .is_none()
    );
    assert_eq!(
        refresh(&app, &first_rt, "").await.oauth_error(),
        "invalid_grant"
    );
    for a in &access {
        assert_eq!(
            introspect(&app, WEB_ID, WEB_SECRET, a).await["active"],
            false
        );
    }
    assert_eq!(
        get_userinfo(&app, &access[40]).await.status,
        StatusCode::UNAUTHORIZED
    );
}
