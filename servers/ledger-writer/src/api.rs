//! The HTTP API (see `API.md`): decode and validate on the connection's task, queue to the writer, encode the
//! answer. A malformed request is refused here with a 4xx and a reason, before it reaches the writer, so it changes
//! nothing.

use std::convert::Infallible;

/// A finished response, used as the error side of the request's steps (an early answer, not an exceptional path).
type Resp = Response<Full<Bytes>>;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use hyper::service::Service;
use refbench_common::h1::{FastPath, Head, Out};
use refbench_common::http::{BodyError, read_body_limited};
use tokio::sync::Semaphore;

use crate::codec;
use crate::types::{BatchOutcome, ItemResult, MAX_BATCH, batch_outcome};
use crate::verify::{VerifyReport, verify_dir};
use crate::writer::{Items, Op, Reply, SubmitError, WriterHandle};

/// Largest request body: a full binary batch is 8190 × 128 bytes (just under 1 MiB); JSON spends ~2.5× that.
pub const MAX_REQUEST_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Largest history page.
pub const MAX_PAGE: usize = MAX_BATCH;

/// The request body encoding, chosen by `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Binary,
    Json,
}

/// The ledger HTTP service; clone per connection.
#[derive(Clone)]
pub struct LedgerApp {
    inner: Arc<Inner>,
}

struct Inner {
    writer: WriterHandle,
    data_dir: PathBuf,
    /// One audit at a time: a verify reads the whole log.
    verify_slot: Semaphore,
    rejected: metrics::Counter,
    /// `ledger_request_writer_seconds`: from queueing a job to this request's task holding the answer (the
    /// writer's queue, apply, flush, and the HTTP thread picking the answer up).
    writer_seconds: metrics::Histogram,
}

impl std::fmt::Debug for LedgerApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerApp")
            .field("data_dir", &self.inner.data_dir)
            .finish()
    }
}

impl LedgerApp {
    /// A service over a running writer.
    pub fn new(writer: WriterHandle, data_dir: PathBuf) -> LedgerApp {
        LedgerApp {
            inner: Arc::new(Inner {
                writer,
                data_dir,
                verify_slot: Semaphore::new(1),
                rejected: metrics::counter!("ledger_rejected_requests_total"),
                writer_seconds: metrics::histogram!("ledger_request_writer_seconds"),
            }),
        }
    }

    /// Handles one request (usable without a socket, e.g. from tests).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let r = self.route(req).await;
        if r.status().is_client_error() {
            self.inner.rejected.increment(1);
        }
        r
    }

    async fn route<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = parts.method.clone();
        match (segs.as_slice(), &method) {
            (
                ["accounts"] | ["transfers"] | ["accounts", "lookup"] | ["transfers", "lookup"],
                &Method::POST,
            ) => {
                let format = match request_format(&parts.headers) {
                    Ok(f) => f,
                    Err(r) => return r,
                };
                let body = match read_body_limited(body, MAX_REQUEST_BODY_BYTES).await {
                    Ok(b) => b,
                    Err(e @ BodyError::TooLarge { .. }) => {
                        return error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string());
                    }
                    Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
                };
                match segs.as_slice() {
                    ["accounts"] => self.create(format, body, true).await,
                    ["transfers"] => self.create(format, body, false).await,
                    ["accounts", "lookup"] => self.lookup(format, &body, true).await,
                    _ => self.lookup(format, &body, false).await,
                }
            }
            (
                ["accounts"] | ["transfers"] | ["accounts", "lookup"] | ["transfers", "lookup"],
                _,
            ) => not_allowed("POST"),
            (["accounts", id] | ["transfers", id], &Method::GET) => {
                let Some(id) = parse_id(id) else {
                    return error(StatusCode::BAD_REQUEST, "id: not a nonzero decimal u128");
                };
                let account = segs[0] == "accounts";
                let op = if account {
                    Op::LookupAccounts(vec![id])
                } else {
                    Op::LookupTransfers(vec![id])
                };
                match self.ask(op).await {
                    Ok(Reply::Accounts(v)) => match v.first() {
                        Some(a) => json_bytes(StatusCode::OK, codec::account_to_json(a)),
                        None => error(StatusCode::NOT_FOUND, "account not found"),
                    },
                    Ok(Reply::Transfers(v)) => match v.first() {
                        Some(t) => json_bytes(StatusCode::OK, codec::transfer_to_json(t)),
                        None => error(StatusCode::NOT_FOUND, "transfer not found"),
                    },
                    Ok(other) => unexpected(other),
                    Err(r) => r,
                }
            }
            (["accounts", id, "transfers"], &Method::GET) => {
                let Some(id) = parse_id(id) else {
                    return error(StatusCode::BAD_REQUEST, "id: not a nonzero decimal u128");
                };
                let (after, limit) = match parse_page(&query) {
                    Ok(p) => p,
                    Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
                };
                match self.ask(Op::History { id, after, limit }).await {
                    Ok(Reply::History(page, next)) => json_bytes(
                        StatusCode::OK,
                        codec::account_transfers_to_json(&page, next),
                    ),
                    Ok(other) => unexpected(other),
                    Err(r) => r,
                }
            }
            (["status"], &Method::GET) => match self.ask(Op::Status).await {
                Ok(Reply::Status(s)) => json(StatusCode::OK, &*s),
                Ok(other) => unexpected(other),
                Err(r) => r,
            },
            (["verify"], &Method::GET) => self.verify().await,
            (
                ["accounts", _]
                | ["transfers", _]
                | ["accounts", _, "transfers"]
                | ["status"]
                | ["verify"],
                _,
            ) => not_allowed("GET"),
            _ => error(StatusCode::NOT_FOUND, "no such endpoint; see API.md"),
        }
    }

    async fn create(&self, format: Format, body: Bytes, accounts: bool) -> Response<Full<Bytes>> {
        let op = match (format, accounts) {
            (Format::Binary, true) => codec::decode_batch_records(&body)
                .map(|_| Op::CreateAccounts(Items::Binary(body.clone()))),
            (Format::Binary, false) => codec::decode_batch_records(&body)
                .map(|_| Op::CreateTransfers(Items::Binary(body.clone()))),
            (Format::Json, true) => {
                codec::accounts_from_json(&body).map(|v| Op::CreateAccounts(Items::Values(v)))
            }
            (Format::Json, false) => {
                codec::transfers_from_json(&body).map(|v| Op::CreateTransfers(Items::Values(v)))
            }
        };
        let op = match op {
            Ok(op) => op,
            Err(e) => return codec_error(&e),
        };
        let results = match self.ask(op).await {
            Ok(Reply::Results(r)) => r,
            Ok(other) => return unexpected(other),
            Err(r) => return r,
        };
        let (status, reason) = batch_status(&results);
        match format {
            Format::Binary => {
                let mut out = Vec::with_capacity(results.len() * crate::types::RESULT_BYTES);
                codec::encode_results(&results, &mut out);
                binary(status, out)
            }
            Format::Json => json_bytes(status, codec::results_to_json(&results, reason)),
        }
    }

    async fn lookup(&self, format: Format, body: &[u8], accounts: bool) -> Response<Full<Bytes>> {
        let ids = match format {
            Format::Binary => codec::decode_batch_ids(body),
            Format::Json => codec::ids_from_json(body),
        };
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => return codec_error(&e),
        };
        let op = if accounts {
            Op::LookupAccounts(ids)
        } else {
            Op::LookupTransfers(ids)
        };
        match (self.ask(op).await, format) {
            (Ok(Reply::Accounts(v)), Format::Binary) => {
                let mut out = Vec::with_capacity(v.len() * crate::types::RECORD_BYTES);
                for a in &v {
                    codec::encode_account(a, &mut out);
                }
                binary(StatusCode::OK, out)
            }
            (Ok(Reply::Transfers(v)), Format::Binary) => {
                let mut out = Vec::with_capacity(v.len() * crate::types::RECORD_BYTES);
                for t in &v {
                    codec::encode_transfer(t, &mut out);
                }
                binary(StatusCode::OK, out)
            }
            (Ok(Reply::Accounts(v)), Format::Json) => {
                json_bytes(StatusCode::OK, codec::accounts_to_json(&v))
            }
            (Ok(Reply::Transfers(v)), Format::Json) => {
                json_bytes(StatusCode::OK, codec::transfers_to_json(&v))
            }
            (Ok(other), _) => unexpected(other),
            (Err(r), _) => r,
        }
    }

    async fn verify(&self) -> Response<Full<Bytes>> {
        let Ok(_permit) = self.inner.verify_slot.try_acquire() else {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "a verify is already running; retry when it finishes",
            );
        };
        if let Err(reason) = crate::verify::audit_fits_in_memory() {
            return error(StatusCode::SERVICE_UNAVAILABLE, &reason);
        }
        let upto = self.inner.writer.durable_position();
        let dir = self.inner.data_dir.clone();
        let report: Result<VerifyReport, _> =
            tokio::task::spawn_blocking(move || verify_dir(&dir, Some(&upto))).await;
        match report {
            Ok(r) => json(StatusCode::OK, &r),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("verify task failed: {e}"),
            ),
        }
    }

    #[allow(clippy::result_large_err)] // see request_format
    async fn ask(&self, op: Op) -> Result<Reply, Resp> {
        let asked = std::time::Instant::now();
        let rx = match self.inner.writer.submit(op) {
            Ok(rx) => rx,
            Err(SubmitError::Full) => {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "writer queue full; nothing was applied, retry later",
                ));
            }
            Err(SubmitError::Stopped) => {
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the ledger stopped accepting writes (storage failure or shutdown); nothing was applied",
                ));
            }
        };
        let answer = rx.await;
        self.inner
            .writer_seconds
            .record(asked.elapsed().as_secs_f64());
        match answer {
            Ok(Reply::Unavailable(reason)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, &reason)),
            Ok(r) => Ok(r),
            Err(_) => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the writer stopped before answering; the outcome is unknown, look the ids up",
            )),
        }
    }
}

/// 200 when something was applied or everything already existed; 422 (with the first failure as the reason) when
/// nothing was applied and something failed.
fn batch_status(results: &[ItemResult]) -> (StatusCode, Option<crate::types::ResultCode>) {
    match batch_outcome(results) {
        BatchOutcome::Applied | BatchOutcome::AllExist => (StatusCode::OK, None),
        BatchOutcome::Rejected(code) => (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
    }
}

#[allow(clippy::result_large_err)] // the early answer is built once per request, never propagated far
fn request_format(headers: &http::HeaderMap) -> Result<Format, Resp> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/octet-stream") {
        Ok(Format::Binary)
    } else if essence.eq_ignore_ascii_case("application/json") {
        Ok(Format::Json)
    } else {
        Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "content-type must be application/octet-stream or application/json, got {:?}",
                ct
            ),
        ))
    }
}

fn parse_id(s: &str) -> Option<u128> {
    let id: u128 = s.parse().ok()?;
    (id != 0 && id != u128::MAX).then_some(id)
}

fn parse_page(query: &str) -> Result<(u64, usize), String> {
    let mut after = 0u64;
    let mut limit = 100usize;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => {
                after = v
                    .parse()
                    .map_err(|_| format!("after: not a u64 timestamp: {v:?}"))?
            }
            "limit" => {
                limit = v
                    .parse()
                    .map_err(|_| format!("limit: not a number: {v:?}"))?;
                if limit == 0 || limit > MAX_PAGE {
                    return Err(format!("limit: must be 1..={MAX_PAGE}, got {limit}"));
                }
            }
            other => return Err(format!("unknown query parameter {other:?} (after, limit)")),
        }
    }
    Ok((after, limit))
}

fn codec_error(e: &codec::CodecError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, &e.to_string())
}

fn unexpected(r: Reply) -> Response<Full<Bytes>> {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("internal: unexpected writer reply {r:?}"),
    )
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

fn error(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": reason }))
}

fn json<T: serde::Serialize + ?Sized>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v)
        .unwrap_or_else(|e| format!("{{\"error\":\"encode: {e}\"}}").into_bytes());
    json_bytes(status, body)
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn binary(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// Any request body the servers hand over: hyper's (HTTP/2, or `serve_http`) or the lean HTTP/1.1 server's
/// (`refbench_common::h1::serve_h1`, the body already read up to the limit).
impl<B> Service<Request<B>> for LedgerApp
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let app = self.clone();
        Box::pin(async move { Ok(app.handle(req).await) })
    }
}

/// Every ledger request goes through [`LedgerApp::handle`]: writes and lookups carry a body, and even `GET /status`
/// must wait for the writer. `serve_h1` still spares them hyper's HTTP/1 dispatch, the largest share of the HTTP
/// thread's time per single-transfer request.
impl FastPath for LedgerApp {
    fn answer(&self, _head: &Head<'_>, _out: &mut Out) -> bool {
        false
    }
}
