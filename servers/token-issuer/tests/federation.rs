//! Federation end to end with real issuers on 127.0.0.1:0, configured from the example pair `config/org-a.toml`
//! and `config/org-b.toml` (ports swapped for the bound ones): Org B fetches Org A's discovery document and JWKS at
//! start, exchanges an Org A token for an Org B token with the Org B audience (verified independently against Org
//! B's served JWKS), with `act` when an Org A actor token is given; refuses what its policy does not allow; picks up
//! Org A's new key after a rotation by refreshing on the unknown kid, rate-limited; refuses to start when the
//! trusted issuer cannot be fetched or its discovery document names another issuer.

mod common;
mod fed_common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use fed_common::*;
use http::{Method, StatusCode};
use refbench_oidc::ServeArgs;
use serde_json::json;

const ORG_A_APP: (&str, &str) = ("org-a-app", "org-a-app-secret-0123456789abcdef");
const ORG_A_AGENT: (&str, &str) = ("org-a-agent", "org-a-agent-secret-0123456789abcdef");
const ORG_B_AUD: &str = "https://org-b.refbench.test";
const ORG_B_API: &str = "https://api.org-b.refbench.test";
const ADMIN: &str = "org-a-admin-token-0123456789abcdef";

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name),
    )
    .unwrap()
}

/// The example with its own fixed `issuer` line removed (the issuer is derived from the bound address) and Org A's fixed
/// URL replaced by `org_a`.
fn adapted(name: &str, org_a: &str, extra: &str) -> String {
    let original = example(name);
    let own_port = if name == "org-a.toml" { "9401" } else { "9402" };
    let own_line = format!(r#"issuer = "http://127.0.0.1:{own_port}""#);
    let text: Vec<&str> = original.lines().filter(|l| *l != own_line).collect();
    format!(
        "{}\n{extra}",
        text.join("\n").replace("http://127.0.0.1:9401", org_a)
    )
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

async fn start_org_a(dir: &tempfile::TempDir) -> Server {
    let config = write(dir, "org-a.toml", &adapted("org-a.toml", "", ""));
    let admin = write(dir, "admin-token", ADMIN);
    start_server(ServeArgs {
        config: Some(config),
        admin_token_file: Some(admin),
        ..ServeArgs::default()
    })
    .await
}

fn org_b_args(dir: &tempfile::TempDir, org_a: &str, extra: &str) -> ServeArgs {
    let config = write(dir, "org-b.toml", &adapted("org-b.toml", org_a, extra));
    ServeArgs {
        config: Some(config),
        ..ServeArgs::default()
    }
}

async fn post(addr: SocketAddr, path: &str, auth: &str, body: &str) -> Got {
    send(
        addr,
        Method::POST,
        path,
        &[("content-type", FORM), ("authorization", auth)],
        body.as_bytes(),
    )
    .await
}

/// A client_credentials token at Org A.
async fn org_a_token(
    org_a: SocketAddr,
    (id, secret): (&str, &str),
    extra: &[(&str, &str)],
) -> String {
    let mut pairs = vec![("grant_type", "client_credentials")];
    pairs.extend_from_slice(extra);
    let r = post(org_a, "/token", &basic(id, secret), &form(&pairs)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// A token exchange at Org B by `exchange-client`.
async fn exchange_at(org_b: SocketAddr, pairs: &[(&str, &str)]) -> Got {
    exchange_as(org_b, (EXCHANGE_ID, EXCHANGE_SECRET), pairs).await
}

async fn exchange_as(org_b: SocketAddr, (id, secret): (&str, &str), pairs: &[(&str, &str)]) -> Got {
    let mut all = vec![("grant_type", TOKEN_EXCHANGE)];
    all.extend_from_slice(pairs);
    post(org_b, "/token", &basic(id, secret), &form(&all)).await
}

async fn served_jwks(addr: SocketAddr) -> jsonwebtoken::jwk::JwkSet {
    let r = send(addr, Method::GET, "/jwks", &[], b"").await;
    assert_eq!(r.status, StatusCode::OK);
    serde_json::from_slice(&r.body).unwrap()
}

async fn rotate(addr: SocketAddr) {
    let r = post(addr, "/admin/rotate", &format!("Bearer {ADMIN}"), "").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

fn subject(token: &str) -> [(&'static str, &str); 2] {
    [
        ("subject_token", token),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_a_login_token_authority_org_b_resource_access() {
    let dir = tempfile::tempdir().unwrap();
    let org_a = start_org_a(&dir).await;
    let a_addr = org_a.started.http_addr;
    let a_iss = org_a.started.issuer.clone();
    let extra = r#"
[[clients]]
client_id = "intruder-client"
client_secret = "intruder-secret-0123456789abcdef"
grant_types = ["urn:ietf:params:oauth:grant-type:token-exchange"]
scopes = ["read"]
audience = "https://api.org-b.refbench.test"
"#;
    let org_b = start_server(org_b_args(&dir, &a_iss, extra)).await;
    let b_addr = org_b.started.http_addr;
    let b_iss = org_b.started.issuer.clone();

    // Org A: a token meant for Org B.
    let a_token = org_a_token(
        a_addr,
        ORG_A_APP,
        &[("scope", "read write"), ("resource", ORG_B_AUD)],
    )
    .await;
    // Org B: exchanged for an Org B token for the Org B API (a logical audience name).
    let r = exchange_at(
        b_addr,
        &[
            subject(&a_token)[0],
            subject(&a_token)[1],
            ("audience", "org-b-api"),
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
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
    // read write held, the policy allows read only.
    assert_eq!(body["scope"], "read");
    let b_token = body["access_token"].as_str().unwrap().to_string();
    let data = verify_independently(&b_token, &served_jwks(b_addr).await, &b_iss, ORG_B_API);
    assert_eq!(data.claims["iss"], b_iss.as_str());
    assert_eq!(data.claims["sub"], "org-a|org-a-app");
    assert_eq!(data.claims["client_id"], EXCHANGE_ID);
    assert!(data.claims.get("act").is_none());
    // Org B's API sees it active through introspection.
    let r = post(
        b_addr,
        "/introspect",
        &basic("org-b-api", "org-b-api-secret-0123456789abcdef"),
        &format!("token={b_token}"),
    )
    .await;
    assert_eq!(r.json()["active"], true);
    assert_eq!(r.json()["sub"], "org-a|org-a-app");

    // Delegation: an Org A agent acts for the Org A user.
    let agent = org_a_token(a_addr, ORG_A_AGENT, &[]).await;
    let r = exchange_at(
        b_addr,
        &[
            subject(&a_token)[0],
            subject(&a_token)[1],
            ("actor_token", &agent),
            ("actor_token_type", JWT_TOKEN_TYPE),
        ],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let delegated = r.json()["access_token"].as_str().unwrap().to_string();
    let data = verify_independently(&delegated, &served_jwks(b_addr).await, &b_iss, ORG_B_API);
    assert_eq!(data.claims["act"], json!({"sub": "org-a|org-a-agent"}));
    let r = post(
        b_addr,
        "/introspect",
        &basic("org-b-api", "org-b-api-secret-0123456789abcdef"),
        &format!("token={delegated}"),
    )
    .await;
    assert_eq!(r.json()["act"], json!({"sub": "org-a|org-a-agent"}));

    // Refusals.
    let error = |r: &Got| -> String { r.oauth_error() };
    let r = exchange_as(
        b_addr,
        ("intruder-client", "intruder-secret-0123456789abcdef"),
        &subject(&a_token),
    )
    .await;
    assert_eq!(
        error(&r),
        "unauthorized_client",
        "no policy for this client"
    );
    let r = exchange_as(
        b_addr,
        ("org-b-api", "org-b-api-secret-0123456789abcdef"),
        &subject(&a_token),
    )
    .await;
    assert_eq!(error(&r), "unauthorized_client", "no grant");
    let r = exchange_at(
        b_addr,
        &[
            subject(&a_token)[0],
            subject(&a_token)[1],
            ("scope", "write"),
        ],
    )
    .await;
    assert_eq!(error(&r), "invalid_scope", "beyond the policy");
    let read_only = org_a_token(a_addr, ORG_A_APP, &[("resource", ORG_B_AUD)]).await;
    let r = exchange_at(
        b_addr,
        &[
            subject(&read_only)[0],
            subject(&read_only)[1],
            ("scope", "read write"),
        ],
    )
    .await;
    assert_eq!(error(&r), "invalid_scope", "beyond the subject token");
    let r = exchange_at(
        b_addr,
        &[
            subject(&a_token)[0],
            subject(&a_token)[1],
            ("audience", "https://elsewhere.test"),
        ],
    )
    .await;
    assert_eq!(error(&r), "invalid_target");
    // An Org A token not meant for Org B (its default audience).
    let not_for_b = org_a_token(a_addr, ORG_A_APP, &[]).await;
    let r = exchange_at(b_addr, &subject(&not_for_b)).await;
    assert_eq!(error(&r), "invalid_grant", "wrong audience");
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("aud")
    );
    // Tampered: the payload swapped for one with another subject, the signature kept.
    let mut claims = claims_of(&a_token);
    claims["sub"] = json!("org-a-admin");
    let forged_payload = unsigned(&json!({}), &claims, "")
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let parts: Vec<&str> = a_token.split('.').collect();
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    let r = exchange_at(b_addr, &subject(&forged)).await;
    assert_eq!(error(&r), "invalid_grant", "tampered");
    // A token of an issuer Org B does not trust.
    let org_c = start_server(ServeArgs::default()).await;
    let c_token = bench_token_at(org_c.started.http_addr).await;
    let r = exchange_at(b_addr, &subject(&c_token)).await;
    assert_eq!(error(&r), "invalid_grant", "untrusted issuer");
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("not trusted")
    );

    // Org A rotates twice: its tokens are now signed by a key generated after Org B fetched the JWKS.
    rotate(a_addr).await;
    rotate(a_addr).await;
    let after = org_a_token(a_addr, ORG_A_APP, &[("resource", ORG_B_AUD)]).await;
    let r = exchange_at(b_addr, &subject(&after)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "refreshed on the unknown kid: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    // Again at once: the next refresh is rate-limited (10 s), so the newer key stays unknown for now.
    rotate(a_addr).await;
    rotate(a_addr).await;
    let newest = org_a_token(a_addr, ORG_A_APP, &[("resource", ORG_B_AUD)]).await;
    let r = exchange_at(b_addr, &subject(&newest)).await;
    assert_eq!(error(&r), "invalid_grant");
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("kid"),
        "{:?}",
        r.body
    );
    // Tokens under the key fetched before still exchange.
    assert_eq!(
        exchange_at(b_addr, &subject(&after)).await.status,
        StatusCode::OK
    );
}

async fn bench_token_at(addr: SocketAddr) -> String {
    let r = post(
        addr,
        "/token",
        &basic(BENCH_ID, BENCH_SECRET),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_b_refuses_to_start_without_org_a_keys() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there (a port just bound and released).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let absent = format!("http://{closed}");
    let plan = org_b_args(&dir, &absent, "").resolve().unwrap();
    let (_trigger, shutdown) = refbench_common::shutdown::channel();
    let e = refbench_oidc::start(&plan, shutdown)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("trusted issuer {absent}")), "{e}");

    // Org A reached as localhost: its discovery document says 127.0.0.1, which is not the configured issuer.
    let org_a = start_org_a(&dir).await;
    let as_localhost = format!("http://localhost:{}", org_a.started.http_addr.port());
    let plan = org_b_args(&dir, &as_localhost, "").resolve().unwrap();
    let (_trigger, shutdown) = refbench_common::shutdown::channel();
    let e = refbench_oidc::start(&plan, shutdown)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&as_localhost) && e.contains("is not the configured"),
        "{e}"
    );
}

#[test]
fn the_example_configs_resolve_and_refuse_remote_fetches() {
    let hasher = || refbench_oidc::secret::SecretHasher::random().unwrap();
    for name in ["org-a.toml", "org-b.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name);
        let cfg = refbench_oidc::FileConfig::load(&path)
            .unwrap()
            .resolve(hasher(), false)
            .unwrap();
        assert!(!cfg.clients.is_empty());
    }
    // A remote issuer without inline keys would need an https fetch: refused at start with the field named.
    let text = example("org-b.toml").replace("http://127.0.0.1:9401", "https://org-a.example");
    let e = refbench_oidc::FileConfig::parse(&text, Path::new("t"))
        .unwrap()
        .resolve(hasher(), false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("trusted_issuers[0].jwks") && e.contains("https"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_b_refreshes_org_a_keys_in_the_background_every_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let org_a = start_org_a(&dir).await;
    let a_addr = org_a.started.http_addr;
    let a_iss = org_a.started.issuer.clone();
    // The shortest background period, and unknown-kid refreshes effectively off once one has happened.
    let mut args = org_b_args(&dir, &a_iss, "");
    let path = args.config.take().unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("jwks_max_age_s = 60", "jwks_max_age_s = 10")
        .replace(
            "jwks_min_refresh_interval_s = 10",
            "jwks_min_refresh_interval_s = 3600",
        );
    args.config = Some(write(&dir, "org-b-fast.toml", &text));
    let org_b = start_server(args).await;
    let b_addr = org_b.started.http_addr;

    // Use up the unknown-kid refresh with a made-up kid.
    let stranger = TestKey::new();
    let bogus = stranger
        .sign(&json!({"iss": a_iss, "sub": "x", "aud": ORG_B_AUD, "exp": 4_000_000_000u64}));
    let r = exchange_at(b_addr, &subject(&bogus)).await;
    assert_eq!(r.oauth_error(), "invalid_grant");

    rotate(a_addr).await;
    rotate(a_addr).await;
    let token = org_a_token(a_addr, ORG_A_APP, &[("resource", ORG_B_AUD)]).await;
    let r = exchange_at(b_addr, &subject(&token)).await;
    assert_eq!(
        r.oauth_error(),
        "invalid_grant",
        "not refreshed yet (rate-limited)"
    );
    // Within one period (10 s) plus slack the background task has fetched the new keys.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let r = exchange_at(b_addr, &subject(&token)).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no background refresh: {:?}",
            r.body
        );
    }
}
