//! The authorization code flow over a real socket, the way the interop scripts drive it: fetch `/authorize`, take
//! the hidden `request` out of the HTML, POST `/login` without following the redirect, read `Location`, redeem the
//! code at `/token`, call `/userinfo`.

mod common;

use common::flow::*;
use common::*;
use http::{Method, StatusCode};
use refbench_oidc::ServeArgs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_flow_over_http() {
    let server = start_server(ServeArgs::default()).await;
    let addr = server.started.http_addr;
    let issuer = format!("http://{addr}");
    let target = authorize_query(NATIVE_ID, NATIVE_CB, "openid email", "");
    let form = send(addr, Method::GET, &target, &[], b"").await;
    assert_eq!(
        form.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&form.body)
    );
    let request = request_id(&form);
    let body = format!("request={request}&username=bob&password=bob-password");
    let r = send(
        addr,
        Method::POST,
        "/login",
        &[("content-type", FORM)],
        body.as_bytes(),
    )
    .await;
    let cookie = session_cookie(&r);
    assert!(
        !r.header("set-cookie").unwrap().contains("Secure"),
        "http issuer"
    );
    let p = location_params(&r);
    assert_eq!(param(&p, "iss"), Some(issuer.clone()));
    let code = param(&p, "code").unwrap();
    let body = format!(
        "grant_type=authorization_code&client_id={NATIVE_ID}&code={code}&redirect_uri={}&code_verifier={VERIFIER}",
        enc(NATIVE_CB)
    );
    let t = send(
        addr,
        Method::POST,
        "/token",
        &[("content-type", FORM)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(
        t.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&t.body)
    );
    let v = t.json();
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&send(addr, Method::GET, "/jwks", &[], b"").await.body).unwrap();
    let id = verify_independently(v["id_token"].as_str().unwrap(), &set, &issuer, NATIVE_ID).claims;
    assert_eq!(id["sub"], "user-bob");
    assert_eq!(id["email"], "bob@refbench.test");
    let auth = format!("Bearer {}", v["access_token"].as_str().unwrap());
    let u = send(
        addr,
        Method::GET,
        "/userinfo",
        &[("authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(
        u.json(),
        serde_json::json!({"sub": "user-bob", "email": "bob@refbench.test"})
    );
    // The session cookie gives SSO over the socket too.
    let r = send(addr, Method::GET, &target, &[("cookie", &cookie)], b"").await;
    assert!(param(&location_params(&r), "code").is_some());
    // A wrong password over the socket, then the metrics of all this.
    let form = send(addr, Method::GET, &target, &[], b"").await;
    let body = format!("request={}&username=bob&password=wrong", request_id(&form));
    let r = send(
        addr,
        Method::POST,
        "/login",
        &[("content-type", FORM)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let m = send(server.started.admin_addr, Method::GET, "/metrics", &[], b"").await;
    let text = String::from_utf8_lossy(&m.body);
    for line in [
        "oidc_logins_total{result=\"ok\"} 1",
        "oidc_logins_total{result=\"failed\"} 1",
        "oidc_grants_total{grant=\"authorization_code\"} 1",
        "oidc_codes_issued_total 2",
        "oidc_sessions 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
}
