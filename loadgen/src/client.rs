//! Lean HTTP clients: no pool, no redirects, no cookie jar, no per-request URL parsing. Goose's own reqwest client
//! costs about 3× the loader CPU per request here, and the loader's cost is part of every result, so the hot path
//! is kept to a request prepared once per template. HTTP/1.1 uses the in-place client in [`crate::h1`]; HTTP/2 uses
//! hyper's connection-level client, whose streams many lanes share.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::h1::CacheClass;
use crate::h1::H1Conn;
use crate::plan::{HttpUrl, HttpVersion, RequestPlan};

/// Largest response body we read; longer bodies fail the request (bounded memory per lane).
pub const MAX_RESPONSE_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// Why a request failed, as a short stable key for counting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// TCP connect or handshake failed.
    #[error("connect")]
    Connect,
    /// The connection broke while sending or receiving.
    #[error("io")]
    Io,
    /// No complete response within the request timeout.
    #[error("timeout")]
    Timeout,
    /// The response body was larger than [`MAX_RESPONSE_BODY_BYTES`].
    #[error("body_too_large")]
    BodyTooLarge,
    /// The request could not be built (a profile bug caught late).
    #[error("bad_request")]
    BadRequest,
}

/// One prepared request: everything but the per-send clone is done once.
#[derive(Debug, Clone)]
pub struct Template {
    /// Name for reports.
    pub name: String,
    /// Method label for Goose (no whitespace).
    pub method_label: String,
    method: Method,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    /// The whole HTTP/1.1 request, serialized once.
    raw_h1: Bytes,
    head_only: bool,
}

impl Template {
    /// Prepares `req` against `base`, for `http`.
    pub fn new(base: &HttpUrl, req: &RequestPlan, http: HttpVersion) -> Result<Template, String> {
        let method = Method::from_bytes(req.method.as_bytes()).map_err(|e| e.to_string())?;
        let authority = base.authority();
        let path = format!("{}{}", base.prefix, req.path);
        // HTTP/2 needs :scheme and :authority, so the URI is absolute; HTTP/1.1 sends origin-form plus Host.
        let uri: Uri = match http {
            HttpVersion::Http1 => path.parse(),
            HttpVersion::Http2 => format!("http://{authority}{path}").parse(),
        }
        .map_err(|e| format!("{path}: {e}"))?;
        let mut headers = Vec::with_capacity(req.headers.len() + 1);
        if http == HttpVersion::Http1 {
            headers.push((
                http::header::HOST,
                HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
            ));
        }
        for (k, v) in &req.headers {
            headers.push((
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?,
                HeaderValue::from_str(v).map_err(|e| e.to_string())?,
            ));
        }
        let mut raw = format!("{} {path} HTTP/1.1\r\nhost: {authority}\r\n", req.method);
        for (k, v) in &req.headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if !req.body.is_empty()
            || !matches!(
                method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
            )
        {
            raw.push_str(&format!("content-length: {}\r\n", req.body.len()));
        }
        raw.push_str("\r\n");
        raw.push_str(&req.body);
        Ok(Template {
            name: req.name.clone(),
            method_label: req.method.clone(),
            head_only: method == Method::HEAD,
            method,
            uri,
            headers,
            body: Bytes::from(req.body.clone()),
            raw_h1: Bytes::from(raw),
        })
    }

    /// The serialized HTTP/1.1 request.
    pub fn raw_h1(&self) -> &[u8] {
        &self.raw_h1
    }

    /// A fresh request from the template (cheap clones only).
    pub fn build(&self) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone());
        if let Some(h) = b.headers_mut() {
            h.reserve(self.headers.len());
            for (k, v) in &self.headers {
                h.insert(k.clone(), v.clone());
            }
        }
        b.body(Full::new(self.body.clone()))
            .map_err(|_| ClientError::BadRequest)
    }
}

/// A connection's request half.
#[derive(Debug)]
pub enum Conn {
    /// HTTP/1.1: one request at a time.
    H1(H1Conn),
    /// HTTP/2: clones share one connection's streams.
    H2(http2::SendRequest<Full<Bytes>>),
}

/// Opens a connection and spawns its driver on the current runtime.
pub async fn connect(
    addr: SocketAddr,
    http: HttpVersion,
    timeout: Duration,
) -> Result<Conn, ClientError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Connect)?
        .map_err(|_| ClientError::Connect)?;
    stream.set_nodelay(true).map_err(|_| ClientError::Connect)?;
    match http {
        HttpVersion::Http1 => Ok(Conn::H1(H1Conn::new(stream))),
        HttpVersion::Http2 => {
            let io = TokioIo::new(stream);
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|_| ClientError::Connect)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn::H2(send))
        }
    }
}

/// A completed exchange.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// Response status.
    pub status: StatusCode,
    /// Body bytes read.
    pub body_bytes: u64,
    /// Where its `Cache-Status` says it came from.
    pub cache: CacheClass,
}

impl Conn {
    /// Another handle on an HTTP/2 connection; HTTP/1.1 connections are owned by one lane and cannot be shared.
    pub fn share(&self) -> Option<Conn> {
        match self {
            Conn::H1(_) => None,
            Conn::H2(s) => Some(Conn::H2(s.clone())),
        }
    }

    /// Sends one request made from `t` and drains the response body.
    pub async fn send(&mut self, t: &Template) -> Result<Exchange, ClientError> {
        let s = match self {
            Conn::H1(c) => {
                let r = c
                    .send(&t.raw_h1, t.head_only, MAX_RESPONSE_BODY_BYTES)
                    .await?;
                return Ok(Exchange {
                    status: StatusCode::from_u16(r.status).map_err(|_| ClientError::Io)?,
                    body_bytes: r.body_bytes,
                    cache: r.cache,
                });
            }
            Conn::H2(s) => s,
        };
        let req = t.build()?;
        s.ready().await.map_err(|_| ClientError::Io)?;
        let resp = s.send_request(req).await.map_err(|_| ClientError::Io)?;
        let status = resp.status();
        let cache = resp
            .headers()
            .get("cache-status")
            .map_or(CacheClass::Unknown, |v| CacheClass::of(v.as_bytes()));
        let mut body = resp.into_body();
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ClientError::Io)?;
            if let Some(d) = frame.data_ref() {
                body_bytes += d.len() as u64;
                if body_bytes > MAX_RESPONSE_BODY_BYTES {
                    return Err(ClientError::BodyTooLarge);
                }
            }
        }
        Ok(Exchange {
            status,
            body_bytes,
            cache,
        })
    }

    /// Sends a complete serialized HTTP/1.1 request (head and body) and collects the response body into `body`
    /// (at most `max_body` bytes). HTTP/1.1 only: HTTP/2 connections refuse with [`ClientError::BadRequest`].
    pub async fn send_raw(
        &mut self,
        request: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<Exchange, ClientError> {
        match self {
            Conn::H1(c) => {
                let r = c.send_collect(request, body, max_body).await?;
                Ok(Exchange {
                    status: StatusCode::from_u16(r.status).map_err(|_| ClientError::Io)?,
                    body_bytes: r.body_bytes,
                    cache: r.cache,
                })
            }
            Conn::H2(_) => Err(ClientError::BadRequest),
        }
    }

    /// [`Conn::send_raw`] that also copies the response's `Location` header into `location` (empty when absent).
    pub async fn send_raw_location(
        &mut self,
        request: &[u8],
        body: &mut Vec<u8>,
        location: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<Exchange, ClientError> {
        match self {
            Conn::H1(c) => {
                let r = c
                    .send_collect_location(request, body, location, max_body)
                    .await?;
                Ok(Exchange {
                    status: StatusCode::from_u16(r.status).map_err(|_| ClientError::Io)?,
                    body_bytes: r.body_bytes,
                    cache: r.cache,
                })
            }
            Conn::H2(_) => Err(ClientError::BadRequest),
        }
    }

    /// Sends a complete serialized HTTP/1.1 request built per send (the CDN scenario's generated paths) and
    /// drains the response body. HTTP/1.1 only: HTTP/2 connections refuse with [`ClientError::BadRequest`].
    pub async fn send_h1(&mut self, request: &[u8]) -> Result<Exchange, ClientError> {
        match self {
            Conn::H1(c) => {
                let r = c.send(request, false, MAX_RESPONSE_BODY_BYTES).await?;
                Ok(Exchange {
                    status: StatusCode::from_u16(r.status).map_err(|_| ClientError::Io)?,
                    body_bytes: r.body_bytes,
                    cache: r.cache,
                })
            }
            Conn::H2(_) => Err(ClientError::BadRequest),
        }
    }

    /// True when the connection can still take requests.
    pub fn is_usable(&self) -> bool {
        match self {
            Conn::H1(c) => c.is_usable(),
            Conn::H2(s) => !s.is_closed(),
        }
    }
}
