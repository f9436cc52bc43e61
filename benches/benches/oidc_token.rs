//! The token issuer's hot path without a socket. The Prometheus recorder is installed first, so the issuer's
//! counters and the `oidc_sign_seconds` histogram cost what they cost in the server. Figures are per token.
//!
//! - `oidc/sign_es256_at_jwt`: one RFC 9068 access token signed with the ring's current ES256 key: claims
//!   serialized and base64url-encoded into the output, one P-256 signature (aws-lc-rs, the parsed key kept per key),
//!   the signature encoded. A fresh `jti` is drawn per token, as the token endpoint does.
//! - `oidc/verify_es256_at_jwt`: `verify_access_token` on such a token: header checks, kid lookup, the signature
//!   (jsonwebtoken on aws-lc-rs), claims parsed and checked.
//! - `oidc/token_endpoint_client_credentials_basic`: a whole `POST /token` through `OidcApp::handle`: content type,
//!   form parsing, `client_secret_basic` (base64, HMAC-SHA256 under the pepper, constant-time compare), scope and
//!   audience, signing, the JSON response. The request is built inside the timed part (a few header inserts);
//!   hyper's parsing and writing are not in it.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, StatusCode};
use http_body_util::Full;
use refbench_oidc::client_auth::basic_header;
use refbench_oidc::keys::{JwsType, KeyRing, SigningAlg};
use refbench_oidc::secret::SecretHasher;
use refbench_oidc::token::{AccessTokenClaims, AudRef, Jti};
use refbench_oidc::{Clock, Expected, FileConfig, verify_access_token};

const ISSUER: &str = "http://127.0.0.1:8080";

fn oidc(c: &mut Criterion) {
    refbench_common::admin::metrics_handle().expect("metrics recorder");
    let now = Clock::System.now_s();
    let ring = KeyRing::new(SigningAlg::Es256, 330).expect("key ring");
    let keys = ring.snapshot(now);

    let mut g = c.benchmark_group("oidc");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign_es256_at_jwt", |b| {
        b.iter(|| {
            let jti = Jti::random().unwrap();
            let claims = AccessTokenClaims {
                iss: ISSUER,
                sub: "bench-client",
                aud: AudRef::One("https://api.refbench.test"),
                exp: now + 300,
                iat: now,
                nbf: now,
                jti: jti.as_str(),
                client_id: "bench-client",
                scope: "read",
                grant_id: None,
                act: None,
            };
            black_box(
                keys.current
                    .sign(JwsType::AccessToken, black_box(&claims))
                    .unwrap(),
            )
        })
    });

    let jti = Jti::random().unwrap();
    let token = keys
        .current
        .sign(
            JwsType::AccessToken,
            &AccessTokenClaims {
                iss: ISSUER,
                sub: "bench-client",
                aud: AudRef::One("https://api.refbench.test"),
                exp: now + 300,
                iat: now,
                nbf: now,
                jti: jti.as_str(),
                client_id: "bench-client",
                scope: "read",
                grant_id: None,
                act: None,
            },
        )
        .unwrap();
    let expected = Expected {
        issuer: ISSUER,
        audience: Some("https://api.refbench.test"),
        leeway_s: 30,
    };
    g.bench_function("verify_es256_at_jwt", |b| {
        b.iter(|| black_box(verify_access_token(black_box(&token), &keys, &expected, now).unwrap()))
    });

    let cfg = FileConfig::embedded()
        .resolve(SecretHasher::random().unwrap(), false)
        .unwrap();
    let app = refbench_oidc::app(cfg, ISSUER, Clock::System, None).unwrap();
    let auth = basic_header("bench-client", "bench-secret-0123456789abcdef");
    let body = Bytes::from_static(b"grant_type=client_credentials&scope=read");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("token_endpoint_client_credentials_basic", |b| {
        b.iter(|| {
            let req = Request::post("/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", auth.as_str())
                .body(Full::new(body.clone()))
                .unwrap();
            let r = rt.block_on(app.handle(req));
            debug_assert_eq!(r.status(), StatusCode::OK);
            black_box(r)
        })
    });
    g.finish();
}

criterion_group!(benches, oidc);
criterion_main!(benches);
