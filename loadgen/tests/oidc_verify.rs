//! The OIDC scenario's token checks, on tokens minted here with keys made here (no issuer involved), so each
//! check is shown to fail when it should: a key not yet published when the token was requested, a key withdrawn
//! while its token lived, a tampered payload, the wrong issuer, the wrong `typ`, the wrong client, the wrong scope.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use refbench_loadgen::oidc::{OidcConfig, OidcEndpoints, OidcTotals, Sample, verify_samples};
use refbench_loadgen::plan::{HttpUrl, OidcAuth, OidcFlow, OidcPlan};
use serde_json::json;

const ISSUER: &str = "http://127.0.0.1:9/";

struct Key {
    kid: String,
    enc: EncodingKey,
    jwk: Jwk,
}

fn key(kid: &str) -> Key {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    // The public key is the uncompressed point 0x04 || x || y.
    let point = pair.public_key().as_ref();
    assert_eq!(point.len(), 65);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk: Jwk = serde_json::from_value(json!({
        "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]),
        "kid": kid, "alg": "ES256", "use": "sig"
    }))
    .unwrap();
    Key {
        kid: kid.into(),
        enc: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk,
    }
}

fn set(keys: &[&Key]) -> Arc<JwkSet> {
    Arc::new(JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(k: &Key, typ: &str, claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.typ = Some(typ.into());
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, &claims, &k.enc).unwrap()
}

fn good_claims() -> serde_json::Value {
    let now = now_s();
    json!({
        "iss": ISSUER, "sub": "bench-client", "aud": "https://api.example", "client_id": "bench-client",
        "scope": "read write", "iat": now, "exp": now + 300, "jti": "j1"
    })
}

fn config(scope: Option<&str>) -> OidcConfig {
    let plan = OidcPlan {
        flow: OidcFlow::ClientCredentials,
        client_id: "bench-client".into(),
        client_secret: "s".into(),
        auth: OidcAuth::Basic,
        scope: scope.map(Into::into),
        resource: None,
        username: None,
        password: None,
        redirect_uri: None,
        subject_target: None,
        subject_client: None,
        subject_resource: None,
        audience: None,
        verify_every: 1,
        max_verified: 100,
        jwks_refresh_ms: 1000,
        rotate_at_s: vec![],
    };
    let endpoints = OidcEndpoints {
        issuer: ISSUER.into(),
        token_path: "/token".into(),
        jwks_addr: "127.0.0.1:9".parse().unwrap(),
        jwks_host: "127.0.0.1:9".into(),
        jwks_path: "/jwks".into(),
        introspection_path: Some("/introspect".into()),
        subject_token: None,
        authorization_path: None,
        session_cookie: None,
    };
    OidcConfig::new(
        &plan,
        &HttpUrl::parse("http://127.0.0.1:9").unwrap(),
        endpoints,
    )
}

/// Verifies `token`, requested `after_read` after the only JWKS read during the phase, with `after` read later.
fn verify_one(cfg: &OidcConfig, token: String, during: &[&Key], after: &[&Key]) -> OidcTotals {
    let read_at = Instant::now();
    let sent = read_at + Duration::from_millis(1);
    let s = Sample {
        token,
        sent,
        received: sent,
        id_token: None,
        nonce: None,
    };
    let mut t = OidcTotals::default();
    let after_set = set(after);
    verify_samples(
        cfg,
        &[s],
        &[(read_at, Some(set(during)))],
        Some((Instant::now(), after_set.as_ref())),
        &mut t,
    );
    t
}

fn only_failure(t: &OidcTotals) -> &str {
    assert_eq!(t.verified, 0, "{t:?}");
    assert_eq!(t.failures.len(), 1, "{t:?}");
    t.failures.keys().next().unwrap()
}

#[test]
fn a_good_token_verifies_and_every_broken_one_fails_its_check() {
    let k1 = key("k1");
    let k2 = key("k2");
    let cfg = config(Some("write read"));

    let t = verify_one(
        &cfg,
        mint(&k1, "at+jwt", good_claims()),
        &[&k1],
        &[&k1, &k2],
    );
    assert_eq!((t.verified, t.failures.len()), (1, 0), "{t:?}");
    assert_eq!(t.jwks_reads, 1);

    // The key was not in the JWKS read before the token was requested.
    let t = verify_one(
        &cfg,
        mint(&k2, "at+jwt", good_claims()),
        &[&k1],
        &[&k1, &k2],
    );
    assert_eq!(only_failure(&t), "kid_not_prepublished");

    // The key left the JWKS while the token still lived.
    let t = verify_one(
        &cfg,
        mint(&k1, "at+jwt", good_claims()),
        &[&k1, &k2],
        &[&k2],
    );
    assert_eq!(only_failure(&t), "key_withdrawn_early");

    // A token that had expired by the after-read is not held against the issuer.
    let mut c = good_claims();
    let now = now_s();
    c["iat"] = json!(now);
    c["exp"] = json!(now + 1);
    let token = mint(&k1, "at+jwt", c);
    let read_at = Instant::now();
    let s = Sample {
        token,
        sent: read_at,
        received: read_at,
        id_token: None,
        nonce: None,
    };
    let mut t = OidcTotals::default();
    let after = set(&[&k2]);
    verify_samples(
        &cfg,
        &[s],
        &[(read_at, Some(set(&[&k1])))],
        Some((Instant::now() + Duration::from_secs(3), after.as_ref())),
        &mut t,
    );
    assert_eq!((t.verified, t.failures.len()), (1, 0), "{t:?}");

    // A tampered payload (signature no longer matches).
    let good = mint(&k1, "at+jwt", good_claims());
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    let mut forged = good_claims();
    forged["scope"] = json!("read write admin");
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&forged).unwrap());
    let t = verify_one(&cfg, parts.join("."), &[&k1], &[&k1]);
    assert_eq!(only_failure(&t), "bad_signature");

    // Signed by a key that is not the one its kid names.
    let mut h = Header::new(Algorithm::ES256);
    h.typ = Some("at+jwt".into());
    h.kid = Some("k1".into());
    let t = verify_one(
        &cfg,
        jsonwebtoken::encode(&h, &good_claims(), &k2.enc).unwrap(),
        &[&k1],
        &[&k1],
    );
    assert_eq!(only_failure(&t), "bad_signature");

    let mut c = good_claims();
    c["iss"] = json!("http://evil.example/");
    let t = verify_one(&cfg, mint(&k1, "at+jwt", c), &[&k1], &[&k1]);
    assert_eq!(only_failure(&t), "wrong_iss");

    let t = verify_one(&cfg, mint(&k1, "JWT", good_claims()), &[&k1], &[&k1]);
    assert_eq!(only_failure(&t), "typ_not_at_jwt");

    let mut c = good_claims();
    c["client_id"] = json!("someone-else");
    let t = verify_one(&cfg, mint(&k1, "at+jwt", c), &[&k1], &[&k1]);
    assert_eq!(only_failure(&t), "wrong_client_id");

    let mut c = good_claims();
    c["scope"] = json!("read");
    let t = verify_one(&cfg, mint(&k1, "at+jwt", c), &[&k1], &[&k1]);
    assert_eq!(only_failure(&t), "wrong_scope");

    // Issued long before it was asked for.
    let mut c = good_claims();
    c["iat"] = json!(now_s() - 3600);
    let t = verify_one(&cfg, mint(&k1, "at+jwt", c), &[&k1], &[&k1]);
    assert_eq!(only_failure(&t), "iat_outside_request");

    // alg "none": no signature at all.
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt", "kid": "k1"})),
        b64(&good_claims())
    );
    let t = verify_one(&cfg, none, &[&k1], &[&k1]);
    assert_eq!(t.verified, 0, "{t:?}");
    assert_eq!(t.failures.values().sum::<u64>(), 1, "{t:?}");
}

#[test]
fn the_token_request_is_built_once_per_auth_method() {
    let cfg = config(Some("read write"));
    let text = String::from_utf8(cfg.request.clone()).unwrap();
    assert!(
        text.starts_with("POST /token HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"),
        "{text}"
    );
    // client_secret_basic: base64("bench-client:s").
    assert!(
        text.contains("Authorization: Basic YmVuY2gtY2xpZW50OnM=\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\ngrant_type=client_credentials&scope=read+write"),
        "{text}"
    );
    let body_len = "grant_type=client_credentials&scope=read+write".len();
    assert!(
        text.contains(&format!("Content-Length: {body_len}\r\n")),
        "{text}"
    );
}

#[test]
fn introspection_answers_are_read_without_parsing_the_document() {
    use refbench_loadgen::oidc::introspection_active;
    assert_eq!(
        introspection_active(br#"{"active":true,"sub":"x"}"#),
        Some(true)
    );
    assert_eq!(
        introspection_active(br#"{"sub":"x", "active" : false}"#),
        Some(false)
    );
    assert_eq!(introspection_active(b"{\"active\":\n true}"), Some(true));
    assert_eq!(introspection_active(br#"{"active":"true"}"#), None);
    assert_eq!(introspection_active(br#"{"error":"invalid_client"}"#), None);
    assert_eq!(introspection_active(b""), None);
}

/// A code-flow configuration: client `web-app`, scope `openid profile`.
fn code_config() -> OidcConfig {
    let mut plan = config(None).plan;
    plan.flow = OidcFlow::AuthorizationCode;
    plan.client_id = "web-app".into();
    plan.scope = Some("openid profile".into());
    plan.redirect_uri = Some("http://127.0.0.1/callback".into());
    let endpoints = config(None).endpoints;
    OidcConfig::new(
        &plan,
        &HttpUrl::parse("http://127.0.0.1:9").unwrap(),
        endpoints,
    )
}

fn access_claims_for_web() -> serde_json::Value {
    let mut c = good_claims();
    c["client_id"] = json!("web-app");
    c["sub"] = json!("user-alice");
    c["scope"] = json!("openid profile");
    c
}

fn id_claims(access: &str, nonce: &str) -> serde_json::Value {
    let now = now_s();
    json!({
        "iss": ISSUER, "sub": "user-alice", "aud": "web-app", "azp": "web-app", "iat": now, "exp": now + 300,
        "auth_time": now, "nonce": nonce,
        "at_hash": refbench_loadgen::oidc::at_hash(Algorithm::ES256, access).unwrap()
    })
}

fn verify_code_sample(
    cfg: &OidcConfig,
    k: &Key,
    access: String,
    id: Option<String>,
    nonce: &str,
) -> OidcTotals {
    let read_at = Instant::now();
    let sent = read_at + Duration::from_millis(1);
    let s = Sample {
        token: access,
        sent,
        received: sent,
        id_token: id,
        nonce: Some(nonce.into()),
    };
    let mut t = OidcTotals::default();
    let keys = set(&[k]);
    verify_samples(
        cfg,
        &[s],
        &[(read_at, Some(keys.clone()))],
        Some((Instant::now(), keys.as_ref())),
        &mut t,
    );
    t
}

#[test]
fn id_tokens_are_checked_for_audience_nonce_and_at_hash() {
    let k = key("k1");
    let cfg = code_config();
    let access = mint(&k, "at+jwt", access_claims_for_web());

    let good = mint(&k, "JWT", id_claims(&access, "n-1"));
    let t = verify_code_sample(&cfg, &k, access.clone(), Some(good), "n-1");
    assert_eq!((t.verified, t.failures.len()), (1, 0), "{t:?}");

    let t = verify_code_sample(
        &cfg,
        &k,
        access.clone(),
        Some(mint(&k, "JWT", id_claims(&access, "n-1"))),
        "n-2",
    );
    assert_eq!(only_failure(&t), "id_token_nonce_mismatch");

    let mut c = id_claims(&access, "n-1");
    c["aud"] = json!("other-client");
    let t = verify_code_sample(&cfg, &k, access.clone(), Some(mint(&k, "JWT", c)), "n-1");
    assert_eq!(only_failure(&t), "id_token_wrong_aud");

    let mut c = id_claims(&access, "n-1");
    c["azp"] = json!("other-client");
    let t = verify_code_sample(&cfg, &k, access.clone(), Some(mint(&k, "JWT", c)), "n-1");
    assert_eq!(only_failure(&t), "id_token_wrong_azp");

    // at_hash of another access token.
    let other_access = mint(&k, "at+jwt", access_claims_for_web());
    let t = verify_code_sample(
        &cfg,
        &k,
        access.clone(),
        Some(mint(&k, "JWT", id_claims(&other_access, "n-1"))),
        "n-1",
    );
    assert_eq!(only_failure(&t), "id_token_at_hash_mismatch");

    // An access token's typ on an ID token.
    let t = verify_code_sample(
        &cfg,
        &k,
        access.clone(),
        Some(mint(&k, "at+jwt", id_claims(&access, "n-1"))),
        "n-1",
    );
    assert_eq!(only_failure(&t), "id_token_typ_not_jwt");

    // `openid` was asked for, so a missing ID token fails.
    let t = verify_code_sample(&cfg, &k, access, None, "n-1");
    assert_eq!(only_failure(&t), "no_id_token");
}

#[test]
fn pkce_redirects_and_the_login_form_are_read_strictly() {
    use refbench_loadgen::oidc::{Pkce, Redirect, login_request_id, parse_redirect, s256};
    // RFC 7636 Appendix B.
    assert_eq!(
        s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
    let mut rng = rand::rng();
    let p = Pkce::new(&mut rng);
    assert_eq!(p.verifier.len(), 43);
    assert_eq!(s256(&p.verifier), p.challenge);

    let cb = "http://127.0.0.1/callback";
    let ok = format!(
        "{cb}?code=abc&state={}&iss=http%3A%2F%2F127.0.0.1%3A9%2F",
        p.state
    );
    assert_eq!(
        parse_redirect(ok.as_bytes(), cb, &p, ISSUER),
        Redirect::Code("abc".into())
    );
    let cases = [
        (format!("{cb}?code=abc&state=wrong"), "state_mismatch"),
        (
            format!("{cb}?code=abc&state={}&iss=http%3A%2F%2Fevil", p.state),
            "wrong_iss_in_redirect",
        ),
        (
            format!("http://evil.example/callback?code=abc&state={}", p.state),
            "redirect_to_wrong_uri",
        ),
        (
            format!("{cb}?error=access_denied&state={}", p.state),
            "authorize_error",
        ),
        (format!("{cb}?state={}", p.state), "redirect_without_code"),
    ];
    for (loc, why) in cases {
        assert_eq!(
            parse_redirect(loc.as_bytes(), cb, &p, ISSUER),
            Redirect::Refused(why),
            "{loc}"
        );
    }

    let html = r#"<form method="post" action="/login"><input name="username"><input type="password" name="password">
        <input type="hidden" name="request" value="r-1&amp;2"></form>"#;
    assert_eq!(login_request_id(html).as_deref(), Some("r-1&2"));
    assert_eq!(
        login_request_id("<form><input name=\"username\"></form>"),
        None
    );
}
