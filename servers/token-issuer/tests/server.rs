//! The issuer on real sockets: discovery names the server's own URLs and they work; the admin listener exports the
//! metrics; the binary announces readiness and stops cleanly on SIGTERM; scheduled rotation runs.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use refbench_oidc::ServeArgs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_points_at_the_real_server() {
    let server = start_server(ServeArgs::default()).await;
    let addr = server.started.http_addr;
    let base = format!("http://{addr}");
    let r = send(
        addr,
        Method::GET,
        "/.well-known/openid-configuration",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let d = r.json();
    assert_eq!(d["issuer"], base.as_str());
    assert_eq!(server.started.issuer, base);
    assert_eq!(d["token_endpoint"], format!("{base}/token").as_str());
    assert_eq!(d["jwks_uri"], format!("{base}/jwks").as_str());
    assert_eq!(
        d["introspection_endpoint"],
        format!("{base}/introspect").as_str()
    );
    assert_eq!(d["revocation_endpoint"], format!("{base}/revoke").as_str());
    assert_eq!(
        d["grant_types_supported"],
        serde_json::json!([
            "client_credentials",
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!([
            "client_secret_basic",
            "client_secret_post",
            "none",
            "private_key_jwt"
        ])
    );
    assert_eq!(
        d["token_endpoint_auth_signing_alg_values_supported"],
        serde_json::json!([
            "ES256", "ES384", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"
        ])
    );
    // Public clients may not introspect.
    assert_eq!(
        d["introspection_endpoint_auth_methods_supported"],
        serde_json::json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt"
        ])
    );
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(d["subject_types_supported"], serde_json::json!(["public"]));
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        d["scopes_supported"],
        serde_json::json!([
            "admin",
            "email",
            "offline_access",
            "openid",
            "profile",
            "read",
            "write"
        ])
    );
    assert_eq!(
        d["authorization_endpoint"],
        format!("{base}/authorize").as_str()
    );
    assert_eq!(d["userinfo_endpoint"], format!("{base}/userinfo").as_str());
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    // RFC 8414's name for the same document.
    let r = send(
        addr,
        Method::GET,
        "/.well-known/oauth-authorization-server",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.json(), d);

    // The advertised endpoints are this server's: a token from token_endpoint verifies against jwks_uri.
    let token_path = d["token_endpoint"]
        .as_str()
        .unwrap()
        .strip_prefix(&base)
        .unwrap();
    let auth = basic(BENCH_ID, BENCH_SECRET);
    let r = send(
        addr,
        Method::POST,
        token_path,
        &[("content-type", FORM), ("authorization", &auth)],
        b"grant_type=client_credentials&scope=read",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let jwks_path = d["jwks_uri"].as_str().unwrap().strip_prefix(&base).unwrap();
    let r = send(addr, Method::GET, jwks_path, &[], b"").await;
    assert_eq!(r.header("content-type"), Some("application/jwk-set+json"));
    let set = serde_json::from_slice(&r.body).unwrap();
    let data = verify_independently(&token, &set, &base, API);
    assert_eq!(data.claims["iss"], base.as_str());

    // The admin listener exports the issuer's metrics.
    let r = send(server.started.admin_addr, Method::GET, "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.lines().any(
            |l| l.starts_with("oidc_grants_total{grant=\"client_credentials\"}")
                && !l.ends_with(" 0")
        ),
        "{text}"
    );
    assert!(text.contains("oidc_sign_seconds"), "{text}");
    assert!(text.contains("oidc_published_keys 2"), "{text}");
}

/// Over the socket, a form body past the endpoint's limit gets the OAuth error (not the transport's plain one); a
/// body past the transport's own limit is refused unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_forms_get_an_oauth_error_over_the_socket() {
    let server = start_server(ServeArgs::default()).await;
    let addr = server.started.http_addr;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let mut body = b"grant_type=client_credentials&scope=".to_vec();
    body.resize(refbench_oidc::MAX_FORM_BODY_BYTES + 1, b'a');
    let r = send(addr, Method::POST, "/token", &form, &body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"], "invalid_request");
    body.resize(refbench_oidc::server::MAX_TRANSPORT_BODY_BYTES + 1, b'a');
    let r = send(addr, Method::POST, "/token", &form, &body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_rotates() {
    // One-second tokens and no leeway allow rotating every second (the published-key bound).
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("issuer.toml");
    let text = format!(
        "access_token_lifetime_s = 1\nid_token_lifetime_s = 1\nclock_leeway_s = 0\njwks_max_age_s = 1\n{}",
        r#"
[[clients]]
client_id = "c"
client_secret = "0123456789abcdefghijklmnopq"
scopes = ["read"]
default_scopes = ["read"]
audience = "https://api.test"
"#
    );
    std::fs::write(&cfg, text).unwrap();
    let server = start_server(ServeArgs {
        config: Some(cfg),
        rotate_every_s: Some(1),
        ..ServeArgs::default()
    })
    .await;
    let ring = server.started.app.issuer().ring();
    let first = ring
        .snapshot(refbench_oidc::Clock::System.now_s())
        .current
        .kid()
        .to_string();
    let deadline = Instant::now() + PROMPT;
    loop {
        let s = ring.snapshot(refbench_oidc::Clock::System.now_s());
        if s.generation >= 1 {
            assert_ne!(s.current.kid(), first);
            break;
        }
        assert!(Instant::now() < deadline, "no rotation within {PROMPT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = send(server.started.admin_addr, Method::GET, "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("oidc_key_rotations_total") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[test]
fn binary_announces_readiness_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_token-issuer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = loop {
        let line = lines.next().expect("a REFBENCH_READY line").unwrap();
        if let Some(r) = refbench_common::announce::parse_ready_line(&line) {
            break r;
        }
    };
    assert_eq!(ready.system, "oidc");
    assert_eq!(ready.pid, child.id());
    let http = ready.listeners["http"];
    assert!(ready.listeners.contains_key("admin"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let d = rt
        .block_on(send(
            http,
            Method::GET,
            "/.well-known/openid-configuration",
            &[],
            b"",
        ))
        .json();
    assert_eq!(d["issuer"], format!("http://{http}").as_str());
    // SAFETY: kill(2) with the pid of a child we spawned and have not reaped yet, and a valid signal number.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let deadline = Instant::now() + PROMPT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no exit within {PROMPT:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
