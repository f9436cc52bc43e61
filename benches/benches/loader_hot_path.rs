//! Per-request costs on the loader's hot path, and the floor server's handler without a socket. Names say the
//! scenario; figures are per iteration.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use refbench_loadgen::client::Template;
use refbench_loadgen::hist;
use refbench_loadgen::plan::{Arrival, HttpUrl, HttpVersion, RequestPlan};
use refbench_loadgen::schedule::{LaneSchedule, MixPicker};

fn loader(c: &mut Criterion) {
    let mut h = hist::new_histogram();
    let mut v = 1u64;
    c.bench_function("hist_record_latency_us", |b| {
        b.iter(|| {
            v = v.wrapping_mul(6364136223846793005).wrapping_add(1);
            hist::record(&mut h, black_box(v % 5_000_000));
        })
    });

    let mut full = hist::new_histogram();
    for i in 0..100_000u64 {
        hist::record(&mut full, (i * 37) % 2_000_000 + 1);
    }
    c.bench_function("hist_encode_v2_base64_100k_samples", |b| {
        b.iter(|| hist::encode(black_box(&full)).unwrap())
    });

    c.bench_function("schedule_poisson_next_arrival", |b| {
        let mut s = LaneSchedule::new(1e6, 1e6, 1e9, Arrival::Poisson, 0, 1, 7);
        b.iter(|| black_box(s.next_offset_s()))
    });

    let picker = MixPicker::new(&[5, 3, 1, 1]);
    let mut rng = SmallRng::seed_from_u64(1);
    c.bench_function("mix_pick_4_weighted", |b| {
        b.iter(|| black_box(picker.pick(&mut rng)))
    });

    let base = HttpUrl::parse("http://127.0.0.1:8080").unwrap();
    let req = RequestPlan {
        name: "GET /".into(),
        method: "GET".into(),
        path: "/".into(),
        weight: 1,
        body: String::new(),
        headers: [("accept".to_string(), "*/*".to_string())]
            .into_iter()
            .collect(),
    };
    let t1 = Template::new(&base, &req, HttpVersion::Http1).unwrap();
    c.bench_function("h1_request_build_get_root", |b| {
        b.iter(|| black_box(t1.build().unwrap()))
    });
}

fn floor(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = refbench_floor::app(refbench_floor::FloorConfig {
        body_bytes: 2,
        ..Default::default()
    });
    c.bench_function("floor_app_handle_get_2b_no_socket", |b| {
        b.iter(|| {
            let req = http::Request::builder()
                .uri("/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            rt.block_on(app.handle(req))
        })
    });
}

criterion_group!(benches, loader, floor);
criterion_main!(benches);
