//! Key rotation through `POST /admin/rotate` on a manual clock: the key that starts signing was published before the
//! rotation, tokens signed before it keep verifying, and a retired key leaves the JWKS exactly when every token it
//! signed has expired (longest lifetime + leeway), no sooner. The admin endpoint's own refusals.

mod common;

use common::*;
use http::StatusCode;
use refbench_oidc::keys::MAX_RETIRED_KEYS;
use serde_json::json;

/// Short lifetimes so a retired key's grace is 20 + 5 = 25 s of manual-clock time.
fn short_app() -> (refbench_oidc::OidcApp, refbench_oidc::Clock) {
    test_app(config_with(
        "access_token_lifetime_s = 10\nid_token_lifetime_s = 20\nclock_leeway_s = 5",
    ))
}

async fn rotate(app: &refbench_oidc::OidcApp) -> Got {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    post_form(app, "/admin/rotate", &[("authorization", &bearer)], "").await
}

#[tokio::test(flavor = "current_thread")]
async fn rotation_keeps_old_tokens_valid_and_publishes_the_next_key_in_advance() {
    let (app, clock) = short_app();
    let before = jwks(&app).await;
    assert_eq!(before.keys.len(), 2);
    let old_token = bench_token(&app, "").await;
    let old_kid = kid_of(&old_token);
    // The current key is listed first, the next key second.
    assert_eq!(kids(&before)[0], old_kid);

    let r = rotate(&app).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let report = r.json();
    assert_eq!(report["generation"], 1);
    assert_eq!(report["retired"][0]["kid"], old_kid.as_str());
    assert_eq!(
        report["retired"][0]["published_until"],
        clock.now_s() + 20 + 5
    );

    let new_token = bench_token(&app, "").await;
    let new_kid = kid_of(&new_token);
    assert_ne!(new_kid, old_kid);
    assert_eq!(report["current_kid"], new_kid.as_str());
    // A verifier that fetched the JWKS before the rotation already knows the new signing key.
    assert!(kids(&before).contains(&new_kid));
    verify_independently(&new_token, &before, ISSUER, API);

    // Tokens signed before the rotation still verify against the JWKS after it, and still introspect as active.
    let after = jwks(&app).await;
    assert_eq!(after.keys.len(), 3, "current, next, retired");
    verify_independently(&old_token, &after, ISSUER, API);
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &old_token).await["active"],
        true
    );

    // The retired key stays published for its whole grace period, then leaves.
    clock.advance(24);
    assert!(kids(&jwks(&app).await).contains(&old_kid));
    clock.advance(1);
    let later = jwks(&app).await;
    assert!(!kids(&later).contains(&old_kid), "{:?}", kids(&later));
    assert_eq!(later.keys.len(), 2);
    assert!(kids(&later).contains(&new_kid));
    // Its tokens had expired anyway.
    assert_eq!(
        introspect(&app, BENCH_ID, BENCH_SECRET, &old_token).await,
        json!({"active": false})
    );
}

#[tokio::test(flavor = "current_thread")]
async fn two_rotations_in_a_row_keep_every_unexpired_token_verifiable() {
    let (app, clock) = short_app();
    let t0 = bench_token(&app, "").await;
    assert_eq!(rotate(&app).await.status, StatusCode::OK);
    clock.advance(2);
    let t1 = bench_token(&app, "").await;
    assert_eq!(rotate(&app).await.status, StatusCode::OK);
    let set = jwks(&app).await;
    assert_eq!(set.keys.len(), 4);
    for t in [&t0, &t1] {
        assert_eq!(
            introspect(&app, BENCH_ID, BENCH_SECRET, t).await["active"],
            true
        );
    }
    verify_independently(&t1, &set, ISSUER, API);
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_ring_refuses_rotation_with_409() {
    let (app, _) = short_app();
    for _ in 0..MAX_RETIRED_KEYS {
        assert_eq!(rotate(&app).await.status, StatusCode::OK);
    }
    let r = rotate(&app).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["error"], "rotation_refused");
    assert_eq!(jwks(&app).await.keys.len(), MAX_RETIRED_KEYS + 2);
}

#[tokio::test(flavor = "current_thread")]
async fn the_admin_endpoint_needs_its_bearer_secret() {
    let (app, _) = short_app();
    let kid = kid_of(&bench_token(&app, "").await);
    for auth in [
        vec![],
        vec![(
            "authorization",
            "Bearer wrong-token-0123456789abcdef".to_string(),
        )],
        vec![("authorization", basic(BENCH_ID, BENCH_SECRET))],
    ] {
        let h: Vec<(&str, &str)> = auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = post_form(&app, "/admin/rotate", &h, "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
    // Nothing rotated.
    assert_eq!(kid_of(&bench_token(&app, "").await), kid);

    // Without an admin token the endpoint is disabled.
    let cfg = config_with("");
    let clock = refbench_oidc::Clock::manual(1_700_000_000);
    let closed = refbench_oidc::app(cfg, ISSUER, clock, None).unwrap();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let r = post_form(&closed, "/admin/rotate", &[("authorization", &bearer)], "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}
