//! Bounded HTTP GETs of another issuer's discovery document and JWKS (hyper 1 client, one connection per fetch).
//!
//! Only `http://` URLs whose host is loopback (`127.0.0.0/8`, `::1`, `localhost`) are fetched. Keys fetched over
//! plain HTTP from another machine could be swapped by anyone on the path, and whoever controls a trusted issuer's
//! keys mints tokens this issuer accepts; loopback traffic never leaves the host, which is what the benchmark's two
//! issuer instances use. `https://` would need a TLS client with a root store, which this server does not carry: a
//! remote trusted issuer is configured with its `jwks` inline instead. `localhost` is connected to as `127.0.0.1`
//! without a DNS lookup, so a resolver cannot point it elsewhere.
//!
//! Limits: [`MAX_FETCH_BYTES`] per document (larger is refused, not truncated), [`FETCH_TIMEOUT`] for the whole
//! exchange (connect, request, body), status 200 only, no redirects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest discovery document or JWKS accepted: a 32-key RSA JWKS is ~15 KiB.
pub const MAX_FETCH_BYTES: usize = 64 * 1024;

/// Time for one whole fetch. Fetches run at start and in the background, and on an unknown `kid` at most once per
/// rate-limit interval, so a slow peer delays one request by at most this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http://<loopback host>[:port]/path` (the message says why).
    #[error("{url}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The connection could not be made.
    #[error("{url}: connect: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("{url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// hyper's error.
        reason: String,
    },
    /// The answer was not 200.
    #[error("{url}: status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status received.
        status: StatusCode,
    },
    /// The body exceeded [`MAX_FETCH_BYTES`].
    #[error("{url}: body larger than {MAX_FETCH_BYTES} bytes")]
    TooLarge {
        /// The URL.
        url: String,
    },
    /// The whole fetch took longer than [`FETCH_TIMEOUT`].
    #[error("{url}: no complete answer within {FETCH_TIMEOUT:?}")]
    Timeout {
        /// The URL.
        url: String,
    },
    /// The document is not what it must be (JSON shape, issuer mismatch, no usable key).
    #[error("{url}: {reason}")]
    Document {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// A fetchable URL split into what the request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopbackUrl {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header (the URL's authority).
    pub host: String,
    /// The request target (path and query), `/` when empty.
    pub target: String,
}

/// Checks and splits `url` (see the module docs for the rules and why).
pub fn parse_loopback_url(url: &str) -> Result<LoopbackUrl, FetchError> {
    let bad = |reason| FetchError::Url {
        url: url.to_string(),
        reason,
    };
    if url.starts_with("https://") {
        return Err(bad(
            "https fetches are not implemented (no TLS client); configure the issuer's jwks inline",
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("must be an http:// URL of a loopback host"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if authority.contains('@') || path.contains('#') {
        return Err(bad("no userinfo or fragment allowed"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in host"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        None => 80,
        Some(p) => p.parse().map_err(|_| bad("port is not a number"))?,
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| {
            bad("host must be localhost or a loopback IP literal (plain http leaves the machine otherwise)")
        })?
    };
    if !ip.is_loopback() {
        return Err(bad(
            "plain http is only allowed to loopback hosts (127.0.0.0/8, ::1, localhost)",
        ));
    }
    Ok(LoopbackUrl {
        addr: SocketAddr::new(ip, port),
        host: authority.to_string(),
        target: path,
    })
}

/// GETs `url` (see the module docs); the body on a 200.
pub async fn get(url: &str) -> Result<Bytes, FetchError> {
    let parsed = parse_loopback_url(url)?;
    match tokio::time::timeout(FETCH_TIMEOUT, get_inner(url, &parsed)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout {
            url: url.to_string(),
        }),
    }
}

async fn get_inner(url: &str, u: &LoopbackUrl) -> Result<Bytes, FetchError> {
    let http = |e: hyper::Error| FetchError::Http {
        url: url.to_string(),
        reason: e.to_string(),
    };
    let stream = TcpStream::connect(u.addr)
        .await
        .map_err(|source| FetchError::Connect {
            url: url.to_string(),
            source,
        })?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection is driven by its own task; it is aborted when this fetch ends, however it ends.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = Request::get(u.target.as_str())
        .header(HOST, u.host.as_str())
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    let resp = tx.send_request(req).await.map_err(http)?;
    if resp.status() != StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status(),
        });
    }
    let body = Limited::new(resp.into_body(), MAX_FETCH_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge {
                    url: url.to_string(),
                }
            } else {
                FetchError::Http {
                    url: url.to_string(),
                    reason: e.to_string(),
                }
            }
        })?
        .to_bytes();
    drop(driver);
    Ok(body)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_urls_are_fetchable() {
        let u = parse_loopback_url("http://127.0.0.1:8080/jwks").unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.host, "127.0.0.1:8080");
        assert_eq!(u.target, "/jwks");
        let u = parse_loopback_url("http://[::1]:9").unwrap();
        assert_eq!(u.addr, "[::1]:9".parse().unwrap());
        assert_eq!(u.target, "/");
        let u = parse_loopback_url("http://localhost/x?y=1").unwrap();
        assert_eq!(u.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(u.target, "/x?y=1");
        assert!(parse_loopback_url("http://127.9.9.9:1/").is_ok());
        for bad in [
            "https://127.0.0.1/",
            "http://10.0.0.1/",
            "http://example.com/",
            "http://user@127.0.0.1/",
            "ftp://127.0.0.1/",
            "http://[::2]/",
            "http://127.0.0.1:x/",
        ] {
            assert!(parse_loopback_url(bad).is_err(), "{bad}");
        }
    }

    /// A one-connection server on 127.0.0.1 that reads the request head and then answers `response` (or nothing,
    /// holding the connection open, when `None`).
    async fn serve_once(response: Option<Vec<u8>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            match response {
                Some(r) => {
                    let _ = s.write_all(&r).await;
                }
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
        format!("http://{addr}/doc")
    }

    fn answer(status: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fetches_are_bounded_in_size_time_and_status() {
        let url = serve_once(Some(answer("200 OK", b"{\"keys\":[]}"))).await;
        assert_eq!(&get(&url).await.unwrap()[..], b"{\"keys\":[]}");
        let url = serve_once(Some(answer("200 OK", &vec![b' '; MAX_FETCH_BYTES + 1]))).await;
        assert!(matches!(get(&url).await, Err(FetchError::TooLarge { .. })));
        let url = serve_once(Some(answer("302 Found", b""))).await;
        assert!(matches!(get(&url).await, Err(FetchError::Status { .. })));
        let url = serve_once(None).await;
        let started = std::time::Instant::now();
        assert!(matches!(get(&url).await, Err(FetchError::Timeout { .. })));
        assert!(started.elapsed() < FETCH_TIMEOUT + Duration::from_secs(2));
    }
}
