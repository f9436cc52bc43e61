//! Every refusal of `verify_access_token`, hit directly with hand-made tokens: `alg: none`, HS256 keyed with the
//! public key, algorithm substitution, unknown or missing kid, tampering, expiry and not-yet-valid (with the leeway's
//! edges), wrong issuer and audience, wrong `typ`, `crit`, missing claims, malformed input. Then the same forgeries
//! through `/introspect`, which must call them inactive.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::jwk::AlgorithmParameters;
use jsonwebtoken::{EncodingKey, Header};
use refbench_oidc::keys::{JwsType, KeyRing, RingState, SigningKey};
use refbench_oidc::{Expected, SigningAlg, VerifyError, verify_access_token};
use serde_json::{Value, json};
use std::sync::Arc;

const NOW: u64 = 1_700_000_000;
const LEEWAY: u64 = 30;

fn expected() -> Expected<'static> {
    Expected {
        issuer: ISSUER,
        audience: None,
        leeway_s: LEEWAY,
    }
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "sub": "c", "aud": API, "exp": NOW + 300, "iat": NOW, "nbf": NOW,
        "jti": "AAAAAAAAAAAAAAAAAAAAAA", "client_id": "c", "scope": "read",
    })
}

fn ring(alg: SigningAlg) -> (KeyRing, Arc<RingState>) {
    let ring = KeyRing::new(alg, 330).unwrap();
    let s = ring.snapshot(NOW);
    (ring, s)
}

fn sign(s: &RingState, c: &Value) -> String {
    s.current.sign(JwsType::AccessToken, c).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A token with this header, the given claims and `sig` as the signature part.
fn hand_made(header: &Value, c: &Value, sig: &str) -> String {
    format!("{}.{}.{sig}", b64(header), b64(c))
}

fn verify(token: &str, s: &RingState) -> Result<refbench_oidc::AccessClaims, VerifyError> {
    verify_access_token(token, s, &expected(), NOW)
}

#[test]
fn a_good_token_verifies_with_either_algorithm() {
    for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
        let (_ring, s) = ring(alg);
        let c = verify(&sign(&s, &claims()), &s).unwrap();
        assert_eq!(c.client_id, "c");
        assert_eq!(c.scope.as_deref(), Some("read"));
    }
}

#[test]
fn alg_none_is_refused() {
    let (_ring, s) = ring(SigningAlg::Es256);
    let kid = s.current.kid();
    for alg in ["none", "None", "NONE"] {
        let t = hand_made(
            &json!({"alg": alg, "typ": "at+jwt", "kid": kid}),
            &claims(),
            "",
        );
        assert_eq!(
            verify(&t, &s).unwrap_err(),
            VerifyError::AlgNotAllowed { alg: alg.into() },
            "{alg}"
        );
    }
}

#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    let (_ring, s) = ring(SigningAlg::Es256);
    let kid = s.current.kid().to_string();
    let AlgorithmParameters::EllipticCurve(p) = &s.current.jwk().algorithm else {
        panic!("EC key expected");
    };
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(&p.x).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(&p.y).unwrap());
    let jwk_json = serde_json::to_vec(s.current.jwk()).unwrap();
    let jwks_json = s.jwks_json.to_vec();
    for secret in [point, jwk_json, jwks_json, p.x.clone().into_bytes()] {
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.typ = Some("at+jwt".into());
        h.kid = Some(kid.clone());
        let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(
            verify(&t, &s).unwrap_err(),
            VerifyError::AlgNotAllowed {
                alg: "HS256".into()
            }
        );
    }
}

#[test]
fn another_algorithm_than_the_keys_is_refused_even_with_a_real_signature() {
    let (_ring, es) = ring(SigningAlg::Es256);
    let (_ring2, ed) = ring(SigningAlg::EdDsa);
    // A real EdDSA signature, relabelled with the ES256 key's kid.
    let t = sign(&ed, &claims());
    let parts: Vec<&str> = t.split('.').collect();
    let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": es.current.kid()});
    let forged = format!("{}.{}.{}", b64(&header), parts[1], parts[2]);
    assert_eq!(
        verify(&forged, &es).unwrap_err(),
        VerifyError::AlgNotAllowed {
            alg: "EdDSA".into()
        }
    );
    let header = json!({"alg": "ES384", "typ": "at+jwt", "kid": es.current.kid()});
    let forged = format!("{}.{}.{}", b64(&header), parts[1], parts[2]);
    assert!(matches!(
        verify(&forged, &es).unwrap_err(),
        VerifyError::AlgNotAllowed { .. }
    ));
}

#[test]
fn unknown_and_missing_kids_are_refused() {
    let (_ring, s) = ring(SigningAlg::Es256);
    let stranger = SigningKey::generate(SigningAlg::Es256).unwrap();
    let t = stranger.sign(JwsType::AccessToken, &claims()).unwrap();
    assert_eq!(verify(&t, &s).unwrap_err(), VerifyError::UnknownKid);
    let t = hand_made(&json!({"alg": "ES256", "typ": "at+jwt"}), &claims(), "AAAA");
    assert_eq!(verify(&t, &s).unwrap_err(), VerifyError::MissingKid);
}

#[test]
fn tampering_is_refused() {
    let (_ring, s) = ring(SigningAlg::Es256);
    let t = sign(&s, &claims());
    let parts: Vec<&str> = t.split('.').collect();
    // A payload granting more, under the original signature.
    let mut more = claims();
    more["scope"] = json!("read write admin");
    let forged = format!("{}.{}.{}", parts[0], b64(&more), parts[2]);
    assert_eq!(verify(&forged, &s).unwrap_err(), VerifyError::BadSignature);
    // One signature character changed (still valid base64url).
    let mut sig = parts[2].to_string();
    let first = sig.remove(0);
    sig.insert(0, if first == 'A' { 'B' } else { 'A' });
    let forged = format!("{}.{}.{sig}", parts[0], parts[1]);
    assert_eq!(verify(&forged, &s).unwrap_err(), VerifyError::BadSignature);
    // A signature of the wrong length.
    let forged = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]);
    assert_eq!(verify(&forged, &s).unwrap_err(), VerifyError::BadSignature);
    // Another header (typ changed back and forth is fine, but any byte change breaks the signature).
    let header = json!({"alg": "ES256", "kid": s.current.kid(), "typ": "AT+JWT"});
    let forged = format!("{}.{}.{}", b64(&header), parts[1], parts[2]);
    assert_eq!(verify(&forged, &s).unwrap_err(), VerifyError::BadSignature);
}

#[test]
fn expiry_and_not_before_honour_the_leeway() {
    let (_ring, s) = ring(SigningAlg::Es256);
    let with = |k: &str, v: u64| {
        let mut c = claims();
        c[k] = json!(v);
        sign(&s, &c)
    };
    assert!(verify(&with("exp", NOW - LEEWAY + 1), &s).is_ok());
    assert_eq!(
        verify(&with("exp", NOW - LEEWAY), &s).unwrap_err(),
        VerifyError::Expired {
            exp: NOW - LEEWAY,
            now: NOW
        }
    );
    assert!(matches!(
        verify(&with("exp", NOW - 3600), &s).unwrap_err(),
        VerifyError::Expired { .. }
    ));
    assert!(verify(&with("nbf", NOW + LEEWAY), &s).is_ok());
    assert_eq!(
        verify(&with("nbf", NOW + LEEWAY + 1), &s).unwrap_err(),
        VerifyError::NotYetValid {
            at: NOW + LEEWAY + 1,
            now: NOW
        }
    );
    assert_eq!(
        verify(&with("iat", NOW + 3600), &s).unwrap_err(),
        VerifyError::NotYetValid {
            at: NOW + 3600,
            now: NOW
        }
    );
}

#[test]
fn wrong_issuer_and_audience_are_refused() {
    let (_ring, s) = ring(SigningAlg::Es256);
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert_eq!(
        verify(&sign(&s, &c), &s).unwrap_err(),
        VerifyError::WrongIssuer
    );
    let mut c = claims();
    c["iss"] = json!(format!("{ISSUER}/"));
    assert_eq!(
        verify(&sign(&s, &c), &s).unwrap_err(),
        VerifyError::WrongIssuer
    );
    let t = sign(&s, &claims());
    let for_api = Expected {
        audience: Some(API),
        ..expected()
    };
    assert!(verify_access_token(&t, &s, &for_api, NOW).is_ok());
    let for_reports = Expected {
        audience: Some(REPORTS),
        ..expected()
    };
    assert_eq!(
        verify_access_token(&t, &s, &for_reports, NOW).unwrap_err(),
        VerifyError::WrongAudience
    );
    let mut c = claims();
    c["aud"] = json!([REPORTS, API]);
    assert!(verify_access_token(&sign(&s, &c), &s, &for_api, NOW).is_ok());
}

#[test]
fn id_tokens_crit_and_missing_claims_are_refused() {
    let (_ring, s) = ring(SigningAlg::Es256);
    let id_token = s.current.sign(JwsType::IdToken, &claims()).unwrap();
    assert_eq!(
        verify(&id_token, &s).unwrap_err(),
        VerifyError::WrongType(Some("JWT".into()))
    );
    let t = hand_made(
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": s.current.kid(), "crit": ["exp"]}),
        &claims(),
        "AAAA",
    );
    assert_eq!(verify(&t, &s).unwrap_err(), VerifyError::CriticalHeader);
    for missing in ["client_id", "jti", "exp", "iss", "aud", "sub", "iat"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(missing);
        assert!(
            matches!(
                verify(&sign(&s, &c), &s).unwrap_err(),
                VerifyError::Claims(_)
            ),
            "{missing}"
        );
    }
}

#[test]
fn malformed_input_is_refused() {
    let (_ring, s) = ring(SigningAlg::Es256);
    let good = sign(&s, &claims());
    for bad in [
        String::new(),
        "a.b".into(),
        "a.b.c.d".into(),
        format!("{good}.x"),
        "!!!.e30.AAAA".into(),
        "e30.e30.AAAA".into(),
        "x".repeat(9000),
    ] {
        let e = verify(&bad, &s).unwrap_err();
        assert!(
            matches!(e, VerifyError::Malformed(_) | VerifyError::WrongType(_)),
            "{bad:.40}: {e}"
        );
    }
    // A payload that is not base64url, under a good header.
    let parts: Vec<&str> = good.split('.').collect();
    let bad = format!("{}.!!!.{}", parts[0], parts[2]);
    assert!(verify(&bad, &s).is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn forged_tokens_introspect_as_inactive() {
    let (app, clock) = default_app();
    let real = bench_token(&app, "").await;
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &real).await["active"],
        true
    );
    let parts: Vec<&str> = real.split('.').collect();
    let kid = kid_of(&real);
    let none = hand_made(
        &json!({"alg": "none", "typ": "at+jwt", "kid": kid}),
        &serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap(),
        "",
    );
    let mut more: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    more["scope"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(&more), parts[2]);
    for t in [none, tampered, "garbage".to_string()] {
        let v = introspect(&app, BENCH_ID, BENCH_SECRET, &t).await;
        assert_eq!(v, json!({"active": false}), "{t:.60}");
    }
    // Expired (the manual clock moves past exp + leeway).
    clock.advance(300 + 30);
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &real).await,
        json!({"active": false})
    );
    let _ = NOW;
}
