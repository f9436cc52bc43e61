//! The authorization code flow with PKCE through `app()`: `/authorize`, the login form, `/login`, `/token`, ID
//! tokens verified independently against the served JWKS, SSO, code reuse, PKCE and redirect URI errors, expiry,
//! `/userinfo`, and bounded stores.

mod common;

use common::flow::*;
use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

async fn full_flow(client_id: &str, cb: &str) {
    let (app, clock) = cheap_app("");
    let (code, _) = code_for(&app, client_id, cb, "openid profile email read").await;
    let r = redeem(&app, client_id, cb, &code, VERIFIER).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["scope"], "openid profile email read");
    assert!(v["refresh_token"].as_str().unwrap().len() == 43);
    let access = v["access_token"].as_str().unwrap();
    let id_token = v["id_token"].as_str().unwrap();
    let set = jwks(&app).await;
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid, Some(kid_of(access)));
    let id = verify_independently(id_token, &set, ISSUER, client_id).claims;
    assert_eq!(id["sub"], "user-alice");
    assert_eq!(id["aud"], client_id);
    assert_eq!(id["azp"], client_id);
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id["at_hash"], sha256_half(access));
    assert_eq!(id["auth_time"], clock.now_s());
    assert_eq!(id["name"], "Alice Example");
    assert_eq!(id["email"], "alice@refbench.test");
    let at = verify_independently(access, &set, ISSUER, API).claims;
    assert_eq!(at["sub"], "user-alice");
    assert_eq!(at["client_id"], client_id);
    assert_eq!(at["scope"], "openid profile email read");
    // UserInfo with the access token.
    let u = get_userinfo(&app, access).await;
    assert_eq!(u.status, StatusCode::OK);
    assert_eq!(
        u.json(),
        serde_json::json!({"sub": "user-alice", "name": "Alice Example", "email": "alice@refbench.test"})
    );
}

#[tokio::test(flavor = "current_thread")]
async fn confidential_client_full_flow() {
    full_flow(WEB_ID, WEB_CB).await;
}

#[tokio::test(flavor = "current_thread")]
async fn public_client_full_flow_with_a_loopback_port() {
    full_flow(NATIVE_ID, NATIVE_CB).await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_embedded_argon2_cost_works_end_to_end() {
    let (app, _) = default_app();
    let (code, _) = code_for(&app, WEB_ID, WEB_CB, "openid").await;
    assert_eq!(
        redeem(&app, WEB_ID, WEB_CB, &code, VERIFIER).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_session_gives_single_sign_on_across_clients() {
    let (app, _) = cheap_app("");
    let (_, cookie) = code_for(&app, WEB_ID, WEB_CB, "openid").await;
    let r = get(
        &app,
        &authorize_query(NATIVE_ID, NATIVE_CB, "openid read", ""),
        Some(&cookie),
    )
    .await;
    let p = location_params(&r);
    assert!(r.header("location").unwrap().starts_with(NATIVE_CB));
    let code = param(&p, "code").unwrap();
    let t = redeem(&app, NATIVE_ID, NATIVE_CB, &code, VERIFIER).await;
    assert_eq!(t.status, StatusCode::OK);
    // prompt=login forces the form even with a session.
    let r = get(
        &app,
        &authorize_query(WEB_ID, WEB_CB, "openid", "&prompt=login"),
        Some(&cookie),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    request_id(&r);
    // A bogus cookie is no session.
    let bogus = format!("rb_session={}", "A".repeat(43));
    let r = get(
        &app,
        &authorize_query(WEB_ID, WEB_CB, "openid", ""),
        Some(&bogus),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // prompt=none without a session: login_required back to the client.
    let r = get(
        &app,
        &authorize_query(WEB_ID, WEB_CB, "openid", "&prompt=none"),
        None,
    )
    .await;
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("login_required")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_password_and_unknown_user_get_the_same_401_and_no_session() {
    let (app, _) = cheap_app("");
    let form = get(&app, &authorize_query(WEB_ID, WEB_CB, "openid", ""), None).await;
    let request = request_id(&form);
    let wrong = login(&app, &request, "alice", "nope").await;
    let unknown = login(&app, &request, "mallory", "alice-password").await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.header("set-cookie").is_none());
        assert!(r.header("location").is_none());
        assert_eq!(request_id(r), request, "the form again, same request");
    }
    assert_eq!(wrong.body, unknown.body);
    // The right password still works on the same request, once.
    let ok = login(&app, &request, "alice", "alice-password").await;
    assert_eq!(ok.status, StatusCode::FOUND);
    let again = login(&app, &request, "alice", "alice-password").await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    let unknown_request = login(&app, "nope", "alice", "alice-password").await;
    assert_eq!(unknown_request.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "current_thread")]
async fn a_reused_code_is_refused_and_revokes_what_it_issued() {
    let (app, _) = cheap_app("");
    let (code, _) = code_for(&app, WEB_ID, WEB_CB, "openid read").await;
    let first = redeem(&app, WEB_ID, WEB_CB, &code, VERIFIER).await.json();
    let access = first["access_token"].as_str().unwrap();
    let refresh = first["refresh_token"].as_str().unwrap();
    assert_eq!(
        introspect(&app, WEB_ID, WEB_SECRET, access).await["active"],
        true
    );
    let again = redeem(&app, WEB_ID, WEB_CB, &code, VERIFIER).await;
    assert_eq!(again.oauth_error(), "invalid_grant");
    assert_eq!(
        introspect(&app, WEB_ID, WEB_SECRET, access).await["active"],
        false
    );
    assert_eq!(
        introspect(&app, WEB_ID, WEB_SECRET, refresh).await["active"],
        false
    );
    let auth = basic(WEB_ID, WEB_SECRET);
    let r = post_form(
        &app,
        "/token",
        &[("authorization", &auth)],
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    let u = get_userinfo(&app, access).await;
    assert_eq!(u.status, StatusCode::UNAUTHORIZED);
    assert!(
        u.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn pkce_redirect_uri_and_client_binding_are_enforced_at_the_token_endpoint() {
    let (app, clock) = cheap_app("");
    // Wrong verifier.
    let (code, cookie) = code_for(&app, WEB_ID, WEB_CB, "openid").await;
    let wrong = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK";
    assert_eq!(
        redeem(&app, WEB_ID, WEB_CB, &code, wrong)
            .await
            .oauth_error(),
        "invalid_grant"
    );
    // The failed attempt burnt the code.
    assert_eq!(
        redeem(&app, WEB_ID, WEB_CB, &code, VERIFIER)
            .await
            .oauth_error(),
        "invalid_grant"
    );

    let sso_code = |extra: &'static str| {
        let app = app.clone();
        let cookie = cookie.clone();
        async move {
            let r = get(
                &app,
                &authorize_query(WEB_ID, WEB_CB, "openid", extra),
                Some(&cookie),
            )
            .await;
            param(&location_params(&r), "code").unwrap()
        }
    };
    // redirect_uri differs from the authorization request's.
    let code = sso_code("").await;
    let r = redeem(&app, WEB_ID, "http://localhost/callback", &code, VERIFIER).await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    // A code of another client.
    let code = sso_code("").await;
    let r = post_form(
        &app,
        "/token",
        &[],
        &format!(
            "grant_type=authorization_code&client_id={NATIVE_ID}&code={code}&redirect_uri={}&code_verifier={VERIFIER}",
            enc(WEB_CB)
        ),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_grant");
    // Expired: 60 s lifetime.
    let code = sso_code("").await;
    clock.advance(61);
    assert_eq!(
        redeem(&app, WEB_ID, WEB_CB, &code, VERIFIER)
            .await
            .oauth_error(),
        "invalid_grant"
    );
    // Missing verifier.
    let code = sso_code("").await;
    let auth = basic(WEB_ID, WEB_SECRET);
    let r = post_form(
        &app,
        "/token",
        &[("authorization", &auth)],
        &format!(
            "grant_type=authorization_code&code={code}&redirect_uri={}",
            enc(WEB_CB)
        ),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_request");
}

#[tokio::test(flavor = "current_thread")]
async fn authorize_refuses_plain_pkce_missing_challenge_and_bad_requests() {
    let (app, _) = cheap_app("");
    let base = format!(
        "/authorize?response_type=code&client_id={WEB_ID}&redirect_uri={}&scope=openid&state=xyz",
        enc(WEB_CB)
    );
    for (extra, error) in [
        ("", "invalid_request"),
        (
            &format!("&code_challenge={CHALLENGE}&code_challenge_method=plain")[..],
            "invalid_request",
        ),
        (
            &format!("&code_challenge={CHALLENGE}")[..],
            "invalid_request",
        ),
        (
            "&code_challenge=short&code_challenge_method=S256",
            "invalid_request",
        ),
    ] {
        let r = get(&app, &format!("{base}{extra}"), None).await;
        let p = location_params(&r);
        assert_eq!(param(&p, "error").as_deref(), Some(error), "{extra}");
        assert_eq!(param(&p, "state").as_deref(), Some("xyz"));
        assert_eq!(param(&p, "iss").as_deref(), Some(ISSUER));
        assert!(param(&p, "error_description").is_some());
    }
    let pkce = format!("&code_challenge={CHALLENGE}&code_challenge_method=S256");
    let r = get(
        &app,
        &format!("{base}{pkce}").replace("response_type=code", "response_type=token"),
        None,
    )
    .await;
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("unsupported_response_type")
    );
    let r = get(
        &app,
        &format!("{base}{pkce}").replace("scope=openid", "scope=admin"),
        None,
    )
    .await;
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("invalid_scope")
    );

    // Before the redirect URI is trusted: 400, never a redirect.
    for target in [
        format!("{base}{pkce}").replace(&enc(WEB_CB), &enc("https://evil.test/cb")),
        format!("{base}{pkce}").replace(&enc(WEB_CB), &enc("http://127.0.0.1:8080/callback")),
        format!("{base}{pkce}").replace(WEB_ID, "nobody"),
        format!("{base}{pkce}&client_id={WEB_ID}"),
        format!("{base}{pkce}").replace(&format!("&redirect_uri={}", enc(WEB_CB)), ""),
        "/authorize?redirect_uri=x".to_string(),
    ] {
        let r = get(&app, &target, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{target}");
        assert!(r.header("location").is_none(), "{target}");
        assert!(r.json()["error"].is_string());
    }
    // A client without the grant.
    let r = get(
        &app,
        &format!("{base}{pkce}")
            .replace(WEB_ID, BENCH_ID)
            .replace(&enc(WEB_CB), "x"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // PUT is not allowed.
    let r = call(&app, Method::PUT, "/authorize", &[], b"").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "current_thread")]
async fn authorize_accepts_post_and_honours_max_age() {
    let (app, clock) = cheap_app("");
    let (_, cookie) = code_for(&app, WEB_ID, WEB_CB, "openid").await;
    // POST with the parameters in a form body (OIDC Core §3.1.2.1), with the session: a code at once.
    let target = authorize_query(WEB_ID, WEB_CB, "openid", "");
    let body = target.strip_prefix("/authorize?").unwrap();
    let r = call(
        &app,
        Method::POST,
        "/authorize",
        &[("content-type", FORM), ("cookie", &cookie)],
        body.as_bytes(),
    )
    .await;
    assert!(param(&location_params(&r), "code").is_some());
    // A POST without a form content type is a 400, not a redirect.
    let r = call(
        &app,
        Method::POST,
        "/authorize",
        &[("cookie", &cookie)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // max_age: a 100 s old session satisfies max_age=100 but not max_age=99.
    clock.advance(100);
    let r = get(
        &app,
        &authorize_query(WEB_ID, WEB_CB, "openid", "&max_age=100"),
        Some(&cookie),
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let r = get(
        &app,
        &authorize_query(WEB_ID, WEB_CB, "openid", "&max_age=99"),
        Some(&cookie),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "the login form again");
    let r = get(
        &app,
        &authorize_query(WEB_ID, WEB_CB, "openid", "&max_age=x"),
        Some(&cookie),
    )
    .await;
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("invalid_request")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn public_clients_cannot_use_client_credentials_or_introspect() {
    let (app, _) = cheap_app("");
    let r = post_form(
        &app,
        "/token",
        &[],
        &format!("grant_type=client_credentials&client_id={NATIVE_ID}"),
    )
    .await;
    assert_eq!(r.oauth_error(), "unauthorized_client");
    let r = post_form(
        &app,
        "/introspect",
        &[],
        &format!("token=x&client_id={NATIVE_ID}"),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_client");
    // A confidential client must authenticate: its id alone is not enough.
    let r = post_form(
        &app,
        "/token",
        &[],
        &format!("grant_type=client_credentials&client_id={WEB_ID}"),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_client");
}

#[tokio::test(flavor = "current_thread")]
async fn userinfo_needs_a_user_token_with_openid() {
    let (app, _) = cheap_app("");
    // No token.
    let r = call(&app, Method::GET, "/userinfo", &[], b"").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"token-issuer\"")
    );
    // A garbage token.
    let r = get_userinfo(&app, "not.a.token").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    // Without openid.
    let (code, _) = code_for(&app, WEB_ID, WEB_CB, "read").await;
    let v = redeem(&app, WEB_ID, WEB_CB, &code, VERIFIER).await.json();
    assert!(v["id_token"].is_null(), "no ID token without openid");
    let r = get_userinfo(&app, v["access_token"].as_str().unwrap()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );
    // A client_credentials token has no user (and no openid).
    let cc = bench_token(&app, "").await;
    let r = get_userinfo(&app, &cc).await;
    assert!(r.status == StatusCode::FORBIDDEN || r.status == StatusCode::UNAUTHORIZED);
    // Only the scopes' claims: openid alone gives sub.
    let (code, _) = code_for(&app, WEB_ID, WEB_CB, "openid").await;
    let v = redeem(&app, WEB_ID, WEB_CB, &code, VERIFIER).await.json();
    let access = v["access_token"].as_str().unwrap().to_string();
    let r = get_userinfo(&app, &access).await;
    assert_eq!(r.json(), serde_json::json!({"sub": "user-alice"}));
    // POST works too; a revoked token does not.
    let auth = format!("Bearer {access}");
    let r = call(
        &app,
        Method::POST,
        "/userinfo",
        &[("authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let wa = basic(WEB_ID, WEB_SECRET);
    let r = post_form(
        &app,
        "/revoke",
        &[("authorization", &wa)],
        &format!("token={access}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get_userinfo(&app, &access).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "current_thread")]
async fn full_stores_answer_503_with_retry_after() {
    let (app, clock) =
        cheap_app("authorization.max_pending_requests = 2\nauthorization.max_sessions = 1");
    let q = authorize_query(WEB_ID, WEB_CB, "openid", "");
    let first = get(&app, &q, None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(get(&app, &q, None).await.status, StatusCode::OK);
    let full = get(&app, &q, None).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.json()["error"], "temporarily_unavailable");
    assert!(full.header("retry-after").unwrap().parse::<u64>().unwrap() > 0);
    // One session fits; the second login finds the session store full.
    let ok = login(&app, &request_id(&first), "alice", "alice-password").await;
    assert_eq!(ok.status, StatusCode::FOUND);
    let third = get(&app, &q, None).await;
    assert_eq!(third.status, StatusCode::OK);
    let r = login(&app, &request_id(&third), "bob", "bob-password").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
    // Pending requests expire (10 min): room again.
    clock.advance(601);
    assert_eq!(get(&app, &q, None).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn discovery_lists_the_flow() {
    let (app, _) = cheap_app("");
    let v: Value = call(
        &app,
        Method::GET,
        "/.well-known/openid-configuration",
        &[],
        b"",
    )
    .await
    .json();
    assert_eq!(v["authorization_endpoint"], format!("{ISSUER}/authorize"));
    assert_eq!(v["userinfo_endpoint"], format!("{ISSUER}/userinfo"));
    assert_eq!(v["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        v["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let grants = v["grant_types_supported"].as_array().unwrap();
    for g in ["client_credentials", "authorization_code", "refresh_token"] {
        assert!(grants.iter().any(|x| x == g), "{g}");
    }
    assert!(
        v["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "none")
    );
    assert!(
        !v["introspection_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "none")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_login_form_is_discarded_after_too_many_failures() {
    let (app, _) = cheap_app("authorization.max_failed_logins = 2");
    let form = get(&app, &authorize_query(WEB_ID, WEB_CB, "openid", ""), None).await;
    let request = request_id(&form);
    assert_eq!(
        login(&app, &request, "alice", "x").await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = login(&app, &request, "alice", "y").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "access_denied");
    // Even the right password no longer works on it.
    let r = login(&app, &request, "alice", "alice-password").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.header("set-cookie").is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn users_may_be_configured_with_an_argon2id_hash() {
    let params = refbench_oidc::password::PasswordParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        max_in_flight: 1,
    };
    let phc = refbench_oidc::password::hash_password("carol-password", &params).unwrap();
    let text = format!(
        r#"
[[clients]]
client_id = "web-app"
client_secret = "web-secret-0123456789abcdef"
grant_types = ["authorization_code"]
redirect_uris = ["http://127.0.0.1/callback"]
scopes = ["openid"]
audience = "https://api.refbench.test"

[[users]]
username = "carol"
password_hash = "{phc}"
"#
    );
    let cfg = refbench_oidc::FileConfig::parse(&text, std::path::Path::new("t.toml"))
        .unwrap()
        .resolve(
            refbench_oidc::secret::SecretHasher::random().unwrap(),
            false,
        )
        .unwrap();
    let (app, _) = test_app(cfg);
    let form = get(&app, &authorize_query(WEB_ID, WEB_CB, "openid", ""), None).await;
    let r = login(&app, &request_id(&form), "carol", "carol-password").await;
    assert_eq!(r.status, StatusCode::FOUND);
    let code = param(&location_params(&r), "code").unwrap();
    let v = redeem(&app, WEB_ID, WEB_CB, &code, VERIFIER).await.json();
    assert!(
        v["refresh_token"].is_null(),
        "no refresh_token grant, no refresh token"
    );
    let set = jwks(&app).await;
    let id = verify_independently(v["id_token"].as_str().unwrap(), &set, ISSUER, WEB_ID).claims;
    assert_eq!(id["sub"], "carol", "sub defaults to the username");
}
