//! pg-ledger: the ledger wire API of `servers/ledger-writer/API.md`, backed by PostgreSQL.
//!
//! One HTTP request = one PostgreSQL transaction = one statement (`SELECT * FROM create_transfers(arrays...)`, a
//! prepared statement: one round trip). With `synchronous_commit=on` the response leaves only after the COMMIT's WAL
//! record is flushed, the same durability as the ledger server's fdatasync'd group commit.
//!
//! Endpoints (binary bodies, `content-type: application/octet-stream`; anything else is 415):
//! `POST /accounts`, `POST /transfers`, `POST /accounts/lookup`, `POST /transfers/lookup`, `GET /verify`,
//! `GET /status`; admin listener: `GET /metrics` (Prometheus text), `GET /healthz`.
//!
//! Usage: pg-ledger --pg CONNINFO [--bind 127.0.0.1:0] [--admin-bind 127.0.0.1:0] [--pool 16] [--threads 1]
//!                  [--no-schema]

mod db;
#[cfg(test)]
mod e2e;
mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::db::{Db, DbError};
use crate::wire::{Account, ID, MAX_BATCH, RECORD, RESULT, RESULT_NAMES, Transfer};

/// Largest request body: a full batch of records plus slack.
const MAX_BODY: usize = MAX_BATCH * RECORD + 4096;
/// Most open client connections; more are closed at once.
const MAX_CONNECTIONS: usize = 4096;
/// A request's whole handling, database included (PostgreSQL's statement_timeout, 30 s, fires first).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Metrics {
    pub requests: [AtomicU64; 8],
    pub items_ok: AtomicU64,
    pub items_exists: AtomicU64,
    pub items_failed: AtomicU64,
    pub batches: AtomicU64,
    pub batch_us_sum: AtomicU64,
    pub db_errors: AtomicU64,
    pub retries: AtomicU64,
    pub expired: AtomicU64,
}

const ENDPOINTS: [&str; 8] = [
    "accounts",
    "transfers",
    "accounts_lookup",
    "transfers_lookup",
    "verify",
    "status",
    "other",
    "rejected",
];

pub static METRICS: Metrics = Metrics {
    requests: [const { AtomicU64::new(0) }; 8],
    items_ok: AtomicU64::new(0),
    items_exists: AtomicU64::new(0),
    items_failed: AtomicU64::new(0),
    batches: AtomicU64::new(0),
    batch_us_sum: AtomicU64::new(0),
    db_errors: AtomicU64::new(0),
    retries: AtomicU64::new(0),
    expired: AtomicU64::new(0),
};

struct Args {
    pg: String,
    bind: SocketAddr,
    admin_bind: SocketAddr,
    pool: usize,
    threads: usize,
    schema: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: pg-ledger --pg CONNINFO [--bind 127.0.0.1:0] [--admin-bind 127.0.0.1:0] [--pool 1..=256 (16)] \
         [--threads 1..=64 (1)] [--no-schema]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        pg: String::new(),
        bind: "127.0.0.1:0".parse().expect("literal"),
        admin_bind: "127.0.0.1:0".parse().expect("literal"),
        pool: 16,
        threads: 1,
        schema: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--pg" => a.pg = val(),
            "--bind" => a.bind = val().parse().unwrap_or_else(|_| usage()),
            "--admin-bind" => a.admin_bind = val().parse().unwrap_or_else(|_| usage()),
            "--pool" => {
                a.pool = val()
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .unwrap_or_else(|| usage())
            }
            "--threads" => {
                a.threads = val()
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .unwrap_or_else(|| usage())
            }
            "--no-schema" => a.schema = false,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if a.pg.is_empty() {
        usage();
    }
    if !a.bind.ip().is_loopback() || !a.admin_bind.ip().is_loopback() {
        eprintln!("pg-ledger: listens on loopback only");
        std::process::exit(2);
    }
    a
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("pg-ledger: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let db = Arc::new(db::pool(&args.pg, args.pool, Duration::from_secs(10))?);
    let about = db.init(args.schema).await?;
    eprintln!("pg-ledger: {about}, pool {}", args.pool);

    let http = TcpListener::bind(args.bind)
        .await
        .map_err(|e| format!("bind {}: {e}", args.bind))?;
    let admin = TcpListener::bind(args.admin_bind)
        .await
        .map_err(|e| format!("bind {}: {e}", args.admin_bind))?;
    let http_addr = http.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    // Exactly the shape refbench's servers announce (keys in this order), so loadgen can read it too.
    println!(
        "REFBENCH_READY {{\"system\":\"pg-ledger\",\"pid\":{},\"listeners\":{{\"http\":\"{http_addr}\",\"admin\":\"{admin_addr}\"}},\"tls_cert_pem\":null}}",
        std::process::id()
    );
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let main_srv = tokio::spawn(serve(
        http,
        db.clone(),
        conns.clone(),
        stop_rx.clone(),
        false,
    ));
    let admin_srv = tokio::spawn(serve(admin, db.clone(), conns, stop_rx.clone(), true));
    let sweeper = tokio::spawn(sweep(db.clone(), stop_rx));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("pg-ledger: stopping");
    let _ = stop_tx.send(true);
    // In-flight requests get a bounded grace period.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = main_srv.await;
        let _ = admin_srv.await;
        let _ = sweeper.await;
    })
    .await;
    Ok(())
}

/// Releases expired reservations once a second (a no-op index probe while none has a timeout).
async fn sweep(db: Arc<Db>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // Bounded: at most 10 rounds of 8190 per tick.
        for _ in 0..10 {
            match db.expire().await {
                Ok(n) => {
                    METRICS.expired.fetch_add(n.max(0) as u64, Relaxed);
                    if n < 8190 {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

async fn serve(
    listener: TcpListener,
    db: Arc<Db>,
    conns: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    admin: bool,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            METRICS.requests[7].fetch_add(1, Relaxed);
            continue; // over the connection limit: closed
        };
        let _ = stream.set_nodelay(true);
        let db = db.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let db = db.clone();
                async move { Ok::<_, Infallible>(handle(db, req, admin).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    respond(
        status,
        "application/json",
        serde_json::to_vec(v).expect("json"),
    )
}

fn error(status: StatusCode, reason: &str) -> Resp {
    json(status, &serde_json::json!({ "error": reason }))
}

fn db_error(e: DbError) -> Resp {
    METRICS.db_errors.fetch_add(1, Relaxed);
    match e {
        // Rolled back or never started: nothing applied, the API's 503.
        DbError::RolledBack(m) | DbError::Busy(m) => error(StatusCode::SERVICE_UNAVAILABLE, &m),
        // The outcome is unknown: not a status the API promises "changed nothing" for.
        DbError::InDoubt(m) => error(StatusCode::INTERNAL_SERVER_ERROR, &m),
    }
}

async fn handle(db: Arc<Db>, req: Request<Incoming>, admin: bool) -> Resp {
    let work = async {
        if admin {
            return admin_route(&req);
        }
        route(&db, req).await
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(r) => r,
        // The statement may have committed: in doubt (504 is not one of the API's "nothing changed" answers).
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "request timed out; its outcome is unknown",
        ),
    }
}

fn admin_route(req: &Request<Incoming>) -> Resp {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            respond(StatusCode::OK, "text/plain; version=0.0.4", metrics_text())
        }
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn metrics_text() -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "# TYPE pg_ledger_requests_total counter");
    for (i, e) in ENDPOINTS.iter().enumerate() {
        let _ = writeln!(
            s,
            "pg_ledger_requests_total{{endpoint=\"{e}\"}} {}",
            METRICS.requests[i].load(Relaxed)
        );
    }
    let _ = writeln!(s, "# TYPE pg_ledger_items_total counter");
    for (r, v) in [
        ("ok", &METRICS.items_ok),
        ("exists", &METRICS.items_exists),
        ("failed", &METRICS.items_failed),
    ] {
        let _ = writeln!(
            s,
            "pg_ledger_items_total{{result=\"{r}\"}} {}",
            v.load(Relaxed)
        );
    }
    for (name, v) in [
        ("pg_ledger_batches_total", &METRICS.batches),
        ("pg_ledger_batch_seconds_sum_us", &METRICS.batch_us_sum),
        ("pg_ledger_db_errors_total", &METRICS.db_errors),
        ("pg_ledger_retries_total", &METRICS.retries),
        ("pg_ledger_expired_total", &METRICS.expired),
    ] {
        let _ = writeln!(s, "# TYPE {name} counter\n{name} {}", v.load(Relaxed));
    }
    s
}

fn count(i: usize) {
    METRICS.requests[i].fetch_add(1, Relaxed);
}

async fn route(db: &Db, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let endpoint = match path.as_str() {
        "/accounts" => 0,
        "/transfers" => 1,
        "/accounts/lookup" => 2,
        "/transfers/lookup" => 3,
        "/verify" => 4,
        "/status" => 5,
        _ => {
            count(6);
            return error(StatusCode::NOT_FOUND, "not found");
        }
    };
    count(endpoint);
    if endpoint >= 4 {
        if method != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        let r = if endpoint == 4 {
            db.verify().await
        } else {
            db.status().await
        };
        return match r {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => db_error(e),
        };
    }
    if method != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.trim().eq_ignore_ascii_case("application/octet-stream") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "pg-ledger takes binary bodies (application/octet-stream) only",
        );
    }
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > MAX_BODY
    {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body over the limit");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                error(StatusCode::PAYLOAD_TOO_LARGE, "body over the limit")
            } else {
                error(StatusCode::BAD_REQUEST, "could not read the body")
            };
        }
    };
    let size = if endpoint < 2 { RECORD } else { ID };
    if body.is_empty() || body.len() % size != 0 {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("body length must be a positive multiple of {size}"),
        );
    }
    let n = body.len() / size;
    if n > MAX_BATCH {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("more than {MAX_BATCH} items"),
        );
    }
    match endpoint {
        0 => {
            let items: Vec<Account> = body.chunks_exact(RECORD).map(Account::decode).collect();
            let pre: Vec<i32> = items.iter().map(|a| a.precheck() as i32).collect();
            let t0 = Instant::now();
            let r = db.create_accounts(&items, &pre).await;
            batch_response(r, n, t0)
        }
        1 => {
            let items: Vec<Transfer> = body.chunks_exact(RECORD).map(Transfer::decode).collect();
            let pre: Vec<i32> = items.iter().map(|t| t.precheck() as i32).collect();
            let t0 = Instant::now();
            let r = db.create_transfers(&items, &pre).await;
            batch_response(r, n, t0)
        }
        _ => {
            let ids: Vec<uuid::Uuid> = body
                .chunks_exact(ID)
                .map(|b| wire::id_uuid(wire::u128_at(b, 0)))
                .collect();
            let mut out = Vec::with_capacity(n * RECORD);
            let r = if endpoint == 2 {
                db.lookup_accounts(&ids, &mut out).await
            } else {
                db.lookup_transfers(&ids, &mut out).await
            };
            match r {
                Ok(_) => respond(StatusCode::OK, "application/octet-stream", out),
                Err(e) => db_error(e),
            }
        }
    }
}

fn batch_response(r: Result<db::BatchResult, DbError>, n: usize, t0: Instant) -> Resp {
    let r = match r {
        Ok(r) => r,
        Err(e) => return db_error(e),
    };
    METRICS.batches.fetch_add(1, Relaxed);
    METRICS
        .batch_us_sum
        .fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
    if r.codes.len() != n || r.timestamps.len() != n {
        // Cannot happen (the function returns one result per item); the batch committed, so say so.
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the database returned a wrong number of results",
        );
    }
    let mut out = Vec::with_capacity(n * RESULT);
    let (mut ok, mut exists, mut first_failure) = (0u64, 0u64, None);
    for (&c, &ts) in r.codes.iter().zip(&r.timestamps) {
        let c = c as u32;
        match c {
            wire::code::OK => ok += 1,
            wire::code::EXISTS => exists += 1,
            _ => {
                first_failure.get_or_insert(c);
            }
        }
        wire::put_result(&mut out, c, ts as u64);
    }
    let failed = n as u64 - ok - exists;
    METRICS.items_ok.fetch_add(ok, Relaxed);
    METRICS.items_exists.fetch_add(exists, Relaxed);
    METRICS.items_failed.fetch_add(failed, Relaxed);
    // 200: something applied, or everything was `exists`; 422: nothing applied and something failed.
    let status = if ok > 0 || failed == 0 {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut resp = respond(status, "application/octet-stream", out);
    if let (StatusCode::UNPROCESSABLE_ENTITY, Some(c)) = (status, first_failure)
        && let Ok(v) = RESULT_NAMES
            .get(c as usize)
            .copied()
            .unwrap_or("unknown")
            .parse()
    {
        resp.headers_mut().insert("x-reason", v);
    }
    resp
}
