//! The floor handler driven without a socket.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use refbench_floor::{DelayModel, FloorConfig, StallModel, app};

fn get() -> Request<Empty<Bytes>> {
    Request::builder()
        .uri("/anything")
        .body(Empty::new())
        .unwrap()
}

async fn body_of(r: http::Response<Full<Bytes>>) -> Bytes {
    r.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(flavor = "current_thread")]
async fn default_answers_ok() {
    let a = app(FloorConfig::default());
    assert!(a.is_lean());
    for method in ["GET", "POST", "DELETE", "HEAD"] {
        let req = Request::builder()
            .method(method)
            .uri("/some/path?q=1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let r = a.handle(req).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(body_of(r).await, "ok");
    }
    assert_eq!(a.delays_issued(), 0, "the lean path hands out no delays");
}

#[tokio::test(flavor = "current_thread")]
async fn body_sizes() {
    for n in [0usize, 1, 3, 10, 4096] {
        let a = app(FloorConfig {
            body_bytes: n,
            ..FloorConfig::default()
        });
        let b = body_of(a.handle(get()).await).await;
        assert_eq!(b.len(), n);
        assert!(b.iter().all(|&c| c == b'x'), "n={n}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn request_bodies_are_read_and_limited() {
    let a = app(FloorConfig::default()).with_max_request_body_bytes(4);
    let small = Request::post("/")
        .body(Full::new(Bytes::from_static(b"1234")))
        .unwrap();
    let r = a.handle(small).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_of(r).await, "ok");

    let big = Request::post("/")
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let r = a.handle(big).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let reason = body_of(r).await;
    assert!(
        String::from_utf8_lossy(&reason).contains("4 bytes"),
        "{reason:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn fixed_delay_is_honoured() {
    let a = app(FloorConfig {
        delay: Some(DelayModel {
            fixed_us: 20_000,
            exp_mean_us: 0,
            seed: 1,
        }),
        ..FloorConfig::default()
    });
    assert!(!a.is_lean());
    let start = Instant::now();
    let r = a.handle(get()).await;
    assert!(start.elapsed() >= Duration::from_millis(20));
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(a.delays_issued(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_requests_get_exactly_the_first_n_delays() {
    let model = DelayModel {
        fixed_us: 100,
        exp_mean_us: 2_000,
        seed: 9,
    };
    let a = app(FloorConfig {
        delay: Some(model),
        ..FloorConfig::default()
    });
    let n = 40u64;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                a.handle(get()).await;
                start.elapsed()
            })
        })
        .collect();
    let mut elapsed = Vec::new();
    for t in tasks {
        elapsed.push(t.await.unwrap());
    }
    assert_eq!(a.delays_issued(), n);
    // Each request waited at least its own delay, and the delays handed out
    // are exactly delay_for(0..n); so the sorted waits dominate the sorted
    // delays element by element, whatever order they were assigned in.
    let mut expected: Vec<Duration> = (0..n).map(|k| model.delay_for(k)).collect();
    expected.sort();
    elapsed.sort();
    for (got, want) in elapsed.iter().zip(&expected) {
        assert!(got >= want, "waited {got:?} < delay {want:?}");
    }
}

/// With `record_holds`, every delayed response's realized hold is in `holds()`, each at least its injected delay;
/// without it (or on the lean path) there is nothing to read.
#[tokio::test(flavor = "current_thread")]
async fn realized_holds_are_recorded_when_asked() {
    let model = DelayModel {
        fixed_us: 500,
        exp_mean_us: 1_000,
        seed: 3,
    };
    let a = app(FloorConfig {
        delay: Some(model),
        record_holds: true,
        ..FloorConfig::default()
    });
    for _ in 0..20 {
        a.handle(get()).await;
    }
    let h = a.holds().expect("asked for");
    assert_eq!(h.len(), 20);
    let least = (0..20).map(|k| model.delay_for(k)).min().unwrap();
    assert!(
        h.min() as u128 >= least.as_micros() * 999 / 1000,
        "{} < {least:?}",
        h.min()
    );

    let unasked = app(FloorConfig {
        delay: Some(model),
        ..FloorConfig::default()
    });
    unasked.handle(get()).await;
    assert!(unasked.holds().is_none());
    let lean = app(FloorConfig {
        record_holds: true,
        ..FloorConfig::default()
    });
    assert!(lean.holds().is_none(), "the lean floor holds nothing");
}

#[tokio::test(flavor = "current_thread")]
async fn stall_window_holds_responses_until_it_ends() {
    let a = app(FloorConfig {
        stall: Some(StallModel {
            hold_ms: 400,
            every_ms: 500,
        }),
        ..FloorConfig::default()
    });
    let start = a.started_at();
    // Land well inside the first window [100 ms, 500 ms). Only a scheduler
    // delay of over 350 ms could miss it, and then there is nothing to check.
    tokio::time::sleep_until((start + Duration::from_millis(150)).into()).await;
    let arrived = Instant::now();
    let window_end = start + Duration::from_millis(500);
    if arrived < window_end {
        a.handle(get()).await;
        assert!(
            Instant::now() >= window_end,
            "released before the window ended"
        );
    }
    // The stall model alone issues no delay indices.
    assert_eq!(a.delays_issued(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn zero_hold_stall_keeps_the_lean_path() {
    let a = app(FloorConfig {
        stall: Some(StallModel {
            hold_ms: 0,
            every_ms: 100,
        }),
        ..FloorConfig::default()
    });
    assert!(a.is_lean());
}
