//! `private_key_jwt` client authentication (RFC 7523 §2.2, OIDC Core §9) with the embedded `pkjwt-client`, whose
//! private key is the test fixture: accepted at /token, /introspect and /revoke; refused (401 `invalid_client`) with
//! a wrong key, a replayed `jti`, an expired or too long-lived assertion, `alg: none`, HS256 keyed with the public
//! key, a wrong `aud`, `iss` ≠ `sub`; 503 with `Retry-After` when the replay cache is full.

mod common;
mod fed_common;

use common::*;
use fed_common::*;
use http::StatusCode;
use serde_json::{Value, json};

fn claims(now: u64, jti: &str) -> Value {
    json!({
        "iss": PKJWT_ID,
        "sub": PKJWT_ID,
        "aud": ISSUER,
        "exp": now + 60,
        "iat": now,
        "jti": jti,
    })
}

fn assertion_form(assertion: &str, rest: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", assertion),
    ];
    pairs.extend_from_slice(rest);
    form(&pairs)
}

async fn token_with(app: &refbench_oidc::OidcApp, assertion: &str) -> Got {
    post_form(
        app,
        "/token",
        &[],
        &assertion_form(assertion, &[("grant_type", "client_credentials")]),
    )
    .await
}

fn assert_invalid_client(r: &Got) {
    assert_eq!(r.oauth_error(), "invalid_client", "{:?}", r.body);
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "current_thread")]
async fn a_signed_assertion_authenticates_at_token_introspect_and_revoke() {
    let (app, clock) = default_app();
    let now = clock.now_s();
    let key = pkjwt_key();
    let r = token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &claims(now, "a1"))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let set = jwks(&app).await;
    let data = verify_independently(&token, &set, ISSUER, API);
    assert_eq!(data.claims["client_id"], PKJWT_ID);
    assert_eq!(data.claims["sub"], PKJWT_ID);

    // The token endpoint URL is an accepted audience too (OIDC Core §9), and no kid is fine with a single key.
    let mut c = claims(now, "a2");
    c["aud"] = json!(format!("{ISSUER}/token"));
    let r = post_form(
        &app,
        "/introspect",
        &[],
        &assertion_form(&sign_es256(&key, None, &c), &[("token", &token)]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["active"], true);

    let r = post_form(
        &app,
        "/revoke",
        &[],
        &assertion_form(
            &sign_es256(&key, Some(PKJWT_KID), &claims(now, "a3")),
            &[("token", &token)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &token).await["active"],
        false
    );
}

#[tokio::test(flavor = "current_thread")]
async fn bad_assertions_are_invalid_client() {
    let (app, clock) = default_app();
    let now = clock.now_s();
    let key = pkjwt_key();
    let good = |jti: &str| sign_es256(&key, Some(PKJWT_KID), &claims(now, jti));

    // Replay: the same jti twice.
    let once = good("r1");
    assert_eq!(token_with(&app, &once).await.status, StatusCode::OK);
    assert_invalid_client(&token_with(&app, &once).await);
    // Even re-signed: the jti is what counts.
    assert_invalid_client(&token_with(&app, &good("r1")).await);

    // Another key under the registered kid.
    let other = TestKey::new();
    let mut forged = other.sign(&claims(now, "w1"));
    let header = json!({"alg": "ES256", "kid": PKJWT_KID, "typ": "JWT"});
    let sig = forged.rsplit('.').next().unwrap().to_string();
    forged = unsigned(&header, &claims(now, "w1"), &sig);
    assert_invalid_client(&token_with(&app, &forged).await);
    assert_invalid_client(&token_with(&app, &other.sign(&claims(now, "w2"))).await);

    // Expired, too long-lived, not yet valid.
    let mut c = claims(now, "t1");
    c["exp"] = json!(now - 100);
    assert_invalid_client(&token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &c)).await);
    let mut c = claims(now, "t2");
    c["exp"] = json!(now + 3_600);
    assert_invalid_client(&token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &c)).await);
    let mut c = claims(now, "t3");
    c["iat"] = json!(now + 600);
    assert_invalid_client(&token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &c)).await);
    let mut c = claims(now, "t4");
    c.as_object_mut().unwrap().remove("exp");
    assert_invalid_client(&token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &c)).await);
    let mut c = claims(now, "t5");
    c.as_object_mut().unwrap().remove("jti");
    assert_invalid_client(&token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &c)).await);

    // alg none; HS256 keyed with the public key's JWK.
    let none = unsigned(
        &json!({"alg": "none", "kid": PKJWT_KID}),
        &claims(now, "n1"),
        "",
    );
    assert_invalid_client(&token_with(&app, &none).await);
    let none = unsigned(&json!({"alg": "none"}), &claims(now, "n2"), "x");
    assert_invalid_client(&token_with(&app, &none).await);
    let public_jwk = r#"{"kty":"EC","crv":"P-256","x":"ZvRjCSR4cKOa0_KiLyvh4bBUgXx0dOYW7oVEt5AMjGA","y":"p2v9EW83DwnQM1Eng0gQHwXIppVHat3C1xg3Zyl0e44"}"#;
    let hs = hs256(public_jwk.as_bytes(), PKJWT_KID, &claims(now, "h1"));
    assert_invalid_client(&token_with(&app, &hs).await);

    // Wrong audience; iss differs from sub; a client that has a secret, not keys.
    let mut c = claims(now, "u1");
    c["aud"] = json!("https://someone-else.test");
    assert_invalid_client(&token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &c)).await);
    let mut c = claims(now, "u2");
    c["iss"] = json!(BENCH_ID);
    assert_invalid_client(&token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &c)).await);
    let mut c = claims(now, "u3");
    c["iss"] = json!(BENCH_ID);
    c["sub"] = json!(BENCH_ID);
    assert_invalid_client(&token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &c)).await);

    // Wrong assertion type; garbage.
    let r = post_form(
        &app,
        "/token",
        &[],
        &form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:example:other"),
            ("client_assertion", &good("g1")),
        ]),
    )
    .await;
    assert_invalid_client(&r);
    assert_invalid_client(&token_with(&app, "not.a.jwt").await);

    // Nothing of the above was accepted: a fresh, good assertion still is.
    assert_eq!(token_with(&app, &good("ok")).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "current_thread")]
async fn one_method_per_request_and_secrets_do_not_work_for_a_key_client() {
    let (app, clock) = default_app();
    let key = pkjwt_key();
    let a = sign_es256(&key, Some(PKJWT_KID), &claims(clock.now_s(), "m1"));
    let auth = basic(BENCH_ID, BENCH_SECRET);
    let r = post_form(
        &app,
        "/token",
        &[("authorization", &auth)],
        &assertion_form(&a, &[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_request");
    let r = post_form(
        &app,
        "/token",
        &[],
        &assertion_form(
            &a,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", BENCH_ID),
            ],
        ),
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_request");
    // A private_key_jwt client has no secret to guess.
    let auth = basic(PKJWT_ID, "anything-0123456789abcdefgh");
    let r = post_form(
        &app,
        "/token",
        &[("authorization", &auth)],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(r.oauth_error(), "invalid_client");
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_replay_cache_is_503_with_retry_after() {
    let (app, clock) = test_app(embedded_plus("").tap_max_jtis(1));
    let now = clock.now_s();
    let key = pkjwt_key();
    let r = token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &claims(now, "f1"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &claims(now, "f2"))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60 + 30).contains(&retry), "{retry}");
    // Once the first assertion's exp + leeway has passed, there is room again.
    clock.advance(60 + 30);
    let now = clock.now_s();
    let r = token_with(&app, &sign_es256(&key, Some(PKJWT_KID), &claims(now, "f3"))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

trait TapJtis {
    fn tap_max_jtis(self, n: usize) -> Self;
}

impl TapJtis for refbench_oidc::ResolvedConfig {
    fn tap_max_jtis(mut self, n: usize) -> Self {
        self.federation.max_assertion_jtis = n;
        self
    }
}
