//! The authorization code flow as a client drives it: `/authorize`, the login form, `/login`, `/token`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode};
use refbench_oidc::OidcApp;

use super::*;

pub const WEB_ID: &str = "web-app";
pub const WEB_SECRET: &str = "web-secret-0123456789abcdef";
pub const WEB_CB: &str = "http://127.0.0.1/callback";
pub const NATIVE_ID: &str = "native-app";
pub const NATIVE_CB: &str = "http://127.0.0.1:53682/callback";
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// Cheap argon2 so the tests do not spend their time hashing.
pub fn cheap_app(extra: &str) -> (OidcApp, refbench_oidc::Clock) {
    test_app(config_with(&format!(
        "password_hashing.memory_kib = 64\npassword_hashing.iterations = 1\n{extra}"
    )))
}

pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn authorize_query(client_id: &str, redirect_uri: &str, scope: &str, extra: &str) -> String {
    format!(
        "/authorize?response_type=code&client_id={}&redirect_uri={}&scope={}&state=st%20a&nonce=n-0S6_WzA2Mj\
         &code_challenge={CHALLENGE}&code_challenge_method=S256{extra}",
        enc(client_id),
        enc(redirect_uri),
        enc(scope)
    )
}

pub async fn get(app: &OidcApp, target: &str, cookie: Option<&str>) -> Got {
    let headers: Vec<(&str, &str)> = cookie.map(|c| vec![("cookie", c)]).unwrap_or_default();
    call(app, Method::GET, target, &headers, b"").await
}

/// The hidden `request` value of the login form, the way the interop scripts find it.
pub fn request_id(html: &Got) -> String {
    let body = std::str::from_utf8(&html.body).unwrap();
    let marker = "name=\"request\" value=\"";
    let start = body
        .find(marker)
        .unwrap_or_else(|| panic!("no request in {body}"))
        + marker.len();
    let end = start + body[start..].find('"').unwrap();
    body[start..end].to_string()
}

pub async fn login(app: &OidcApp, request: &str, user: &str, password: &str) -> Got {
    post_form(
        app,
        "/login",
        &[],
        &format!(
            "request={request}&username={user}&password={}",
            enc(password)
        ),
    )
    .await
}

/// Query parameters of a Location header.
pub fn location_params(got: &Got) -> Vec<(String, String)> {
    assert_eq!(
        got.status,
        StatusCode::FOUND,
        "{:?}",
        String::from_utf8_lossy(&got.body)
    );
    let loc = got.header("location").unwrap();
    let query = loc.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), decode(v))
        })
        .collect()
}

pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

pub fn param(params: &[(String, String)], name: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

pub fn session_cookie(got: &Got) -> String {
    let c = got.header("set-cookie").expect("a session cookie");
    assert!(c.starts_with("rb_session="), "{c}");
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(c.contains(attr), "{c}");
    }
    c.split(';').next().unwrap().to_string()
}

/// `/authorize` + `/login` as alice; (code, cookie).
pub async fn code_for(app: &OidcApp, client_id: &str, cb: &str, scope: &str) -> (String, String) {
    let form = get(app, &authorize_query(client_id, cb, scope, ""), None).await;
    assert_eq!(
        form.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&form.body)
    );
    assert!(
        form.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(form.header("x-frame-options"), Some("DENY"));
    assert_eq!(form.header("cache-control"), Some("no-store"));
    let r = login(app, &request_id(&form), "alice", "alice-password").await;
    let cookie = session_cookie(&r);
    let p = location_params(&r);
    assert!(r.header("location").unwrap().starts_with(cb));
    assert_eq!(param(&p, "state").as_deref(), Some("st a"));
    assert_eq!(param(&p, "iss").as_deref(), Some(ISSUER));
    (param(&p, "code").unwrap(), cookie)
}

pub async fn redeem(app: &OidcApp, client_id: &str, cb: &str, code: &str, verifier: &str) -> Got {
    let (auth, extra) = if client_id == WEB_ID {
        (Some(basic(WEB_ID, WEB_SECRET)), String::new())
    } else {
        (None, format!("&client_id={}", enc(client_id)))
    };
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    post_form(
        app,
        "/token",
        &headers,
        &format!(
            "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={verifier}{extra}",
            enc(cb)
        ),
    )
    .await
}

pub fn sha256_half(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    URL_SAFE_NO_PAD.encode(&d.as_ref()[..16])
}

pub async fn get_userinfo(app: &OidcApp, token: &str) -> Got {
    let auth = format!("Bearer {token}");
    call(
        app,
        Method::GET,
        "/userinfo",
        &[("authorization", &auth)],
        b"",
    )
    .await
}
