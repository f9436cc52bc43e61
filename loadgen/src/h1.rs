//! A minimal HTTP/1.1 keep-alive client for the loader's hot path.
//!
//! Measured here, hyper's connection-level client spends most of its user-space time handing each request between
//! the lane's task and the connection's driver task (an mpsc send, a oneshot reply, two wake-ups) and building a
//! header map. A loader's CPU per request is part of every result, so HTTP/1.1 lanes write a request serialized
//! once per template and parse the response in place with `httparse` (hyper's own parser): one `write` and usually
//! one `read` per request, no task hand-off, no per-request allocation. hyper remains the HTTP/2 client.
//!
//! Limits: response head ≤ [`MAX_HEAD_BYTES`], ≤ [`MAX_HEADERS`] headers, body ≤ the caller's limit. Anything the
//! parser cannot follow (pipelined junk, a malformed head) fails the request and closes the connection.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::ClientError;

/// Largest response head we accept.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response headers we parse.
pub const MAX_HEADERS: usize = 64;
/// Read buffer size; responses that fit are read with one `read`.
const READ_CHUNK: usize = 16 * 1024;

/// An HTTP/1.1 connection owned by one lane.
#[derive(Debug)]
pub struct H1Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Valid bytes in `buf`.
    len: usize,
    closed: bool,
}

/// What a response turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H1Response {
    /// Status code.
    pub status: u16,
    /// Body bytes read.
    pub body_bytes: u64,
    /// Where its `Cache-Status` says it came from.
    pub cache: CacheClass,
}

/// A response's origin as its `Cache-Status` (RFC 9211) tells it: the list names each cache it passed, the one
/// closest to the origin first and the one that answered the client last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheClass {
    /// No `Cache-Status` header.
    #[default]
    Unknown,
    /// The cache that answered the client had it (`hit` on the last member).
    EdgeHit,
    /// A cache further up had it (`hit` on an earlier member): no origin fetch, but not an edge hit.
    UpperHit,
    /// No cache on the way had it.
    Miss,
}

impl CacheClass {
    /// Classifies a `Cache-Status` value. Members are split at commas (our caches never put commas in a
    /// `detail`); a member is a hit when one of its `;`-parameters is exactly `hit`.
    pub fn of(value: &[u8]) -> CacheClass {
        let is_hit = |member: &[u8]| {
            member
                .split(|&b| b == b';')
                .skip(1)
                .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"hit"))
        };
        let mut members = value.split(|&b| b == b',').rev();
        match members.next() {
            Some(last) if is_hit(last) => CacheClass::EdgeHit,
            Some(_) if members.any(is_hit) => CacheClass::UpperHit,
            Some(_) => CacheClass::Miss,
            None => CacheClass::Unknown,
        }
    }
}

/// Where response body bytes go. The static-template path discards them ([`Discard`] compiles to nothing); the
/// dynamic path collects them, bounded.
trait BodySink {
    /// Whether [`BodySink::location`] wants the `Location` header (a constant, so sinks that do not want it pay
    /// nothing per header).
    const WANTS_LOCATION: bool = false;

    fn put(&mut self, bytes: &[u8]) -> Result<(), ClientError>;

    /// The response's `Location` value (only called when [`BodySink::WANTS_LOCATION`]).
    fn location(&mut self, _value: &[u8]) {}
}

struct Discard;

impl BodySink for Discard {
    #[inline(always)]
    fn put(&mut self, _: &[u8]) -> Result<(), ClientError> {
        Ok(())
    }
}

struct Collect<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
}

/// [`Collect`] that also keeps the `Location` header (redirect-driven flows such as OAuth's `/authorize`).
struct CollectWithLocation<'a> {
    body: Collect<'a>,
    location: &'a mut Vec<u8>,
}

impl BodySink for CollectWithLocation<'_> {
    const WANTS_LOCATION: bool = true;

    fn put(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.body.put(bytes)
    }

    fn location(&mut self, value: &[u8]) {
        // Bounded by the head size limit the parser already enforces.
        self.location.clear();
        self.location.extend_from_slice(value);
    }
}

impl BodySink for Collect<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.out.len() + bytes.len() > self.limit {
            return Err(ClientError::BodyTooLarge);
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

impl H1Conn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> H1Conn {
        H1Conn {
            stream,
            buf: vec![0; READ_CHUNK],
            len: 0,
            closed: false,
        }
    }

    /// False once the server closed or an error left the stream in an unknown state.
    pub fn is_usable(&self) -> bool {
        !self.closed
    }

    async fn fill(&mut self) -> Result<(), ClientError> {
        if self.len == self.buf.len() {
            if self.buf.len() >= MAX_HEAD_BYTES.max(READ_CHUNK) * 4 {
                self.closed = true;
                return Err(ClientError::Io);
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.stream.read(&mut self.buf[self.len..]).await {
            Ok(0) | Err(_) => {
                self.closed = true;
                Err(ClientError::Io)
            }
            Ok(n) => {
                self.len += n;
                Ok(())
            }
        }
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Sends `request` (a complete serialized request) and reads the whole response, discarding its body.
    pub async fn send(
        &mut self,
        request: &[u8],
        head_only: bool,
        max_body: u64,
    ) -> Result<H1Response, ClientError> {
        self.exchange(request, head_only, max_body, &mut Discard)
            .await
    }

    /// Sends `request` (head and body in one buffer, written with one `write`) and reads the response body into
    /// `body` (cleared first; at most `max_body` bytes, else [`ClientError::BodyTooLarge`]).
    pub async fn send_collect(
        &mut self,
        request: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<H1Response, ClientError> {
        body.clear();
        let mut sink = Collect {
            out: body,
            limit: max_body,
        };
        self.exchange(request, false, max_body as u64, &mut sink)
            .await
    }

    /// [`H1Conn::send_collect`] that also copies the response's `Location` header into `location` (cleared first;
    /// left empty when there is none).
    pub async fn send_collect_location(
        &mut self,
        request: &[u8],
        body: &mut Vec<u8>,
        location: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<H1Response, ClientError> {
        body.clear();
        location.clear();
        let mut sink = CollectWithLocation {
            body: Collect {
                out: body,
                limit: max_body,
            },
            location,
        };
        self.exchange(request, false, max_body as u64, &mut sink)
            .await
    }

    async fn exchange<S: BodySink>(
        &mut self,
        request: &[u8],
        head_only: bool,
        max_body: u64,
        sink: &mut S,
    ) -> Result<H1Response, ClientError> {
        if self.closed {
            return Err(ClientError::Io);
        }
        // Any bytes left from a previous exchange mean the server sent more than it framed: unusable.
        if self.len != 0 {
            self.closed = true;
            return Err(ClientError::Io);
        }
        if self.stream.write_all(request).await.is_err() {
            self.closed = true;
            return Err(ClientError::Io);
        }
        let result = self.read_response(head_only, max_body, sink).await;
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    async fn read_response<S: BodySink>(
        &mut self,
        head_only: bool,
        max_body: u64,
        sink: &mut S,
    ) -> Result<H1Response, ClientError> {
        loop {
            let (status, head_len, framing, close, cache) = loop {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf[..self.len]) {
                    Ok(httparse::Status::Complete(head_len)) => {
                        let status = resp.code.unwrap_or(0);
                        let mut framing = Framing::UntilClose;
                        let mut close = resp.version == Some(0);
                        let mut cache = CacheClass::Unknown;
                        for h in resp.headers.iter() {
                            if h.name.len() == 12 && h.name.eq_ignore_ascii_case("cache-status") {
                                cache = CacheClass::of(h.value);
                            } else if h.name.eq_ignore_ascii_case("content-length") {
                                let v = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse::<u64>().ok());
                                match v {
                                    Some(n) => framing = Framing::Length(n),
                                    None => return Err(ClientError::Io),
                                }
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                if h.value.to_ascii_lowercase().ends_with(b"chunked") {
                                    framing = Framing::Chunked;
                                }
                            } else if S::WANTS_LOCATION && h.name.eq_ignore_ascii_case("location") {
                                sink.location(h.value);
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                let v = h.value.to_ascii_lowercase();
                                if v.windows(5).any(|w| w == b"close") {
                                    close = true;
                                }
                            }
                        }
                        // RFC 9112 §6.3: these responses never have a body.
                        if head_only
                            || status == 204
                            || status == 304
                            || (100..200).contains(&status)
                        {
                            framing = Framing::Length(0);
                        }
                        break (status, head_len, framing, close, cache);
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.len >= MAX_HEAD_BYTES {
                            return Err(ClientError::Io);
                        }
                        self.fill().await?;
                    }
                    Err(_) => return Err(ClientError::Io),
                }
            };
            self.consume(head_len);
            // Interim 1xx responses are followed by the real one.
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let body_bytes = match framing {
                Framing::Length(n) => {
                    if n > max_body {
                        return Err(ClientError::BodyTooLarge);
                    }
                    self.skip(n, sink).await?;
                    n
                }
                Framing::Chunked => self.skip_chunked(max_body, sink).await?,
                Framing::UntilClose => {
                    let mut total = self.len as u64;
                    if total > max_body {
                        return Err(ClientError::BodyTooLarge);
                    }
                    sink.put(&self.buf[..self.len])?;
                    self.len = 0;
                    loop {
                        match self.stream.read(&mut self.buf).await {
                            Ok(0) => break,
                            Ok(n) => {
                                total += n as u64;
                                if total > max_body {
                                    return Err(ClientError::BodyTooLarge);
                                }
                                sink.put(&self.buf[..n])?;
                            }
                            Err(_) => return Err(ClientError::Io),
                        }
                    }
                    self.closed = true;
                    total
                }
            };
            if close {
                self.closed = true;
            }
            return Ok(H1Response {
                status,
                body_bytes,
                cache,
            });
        }
    }

    /// Passes exactly `n` body bytes to `sink`.
    async fn skip<S: BodySink>(&mut self, mut n: u64, sink: &mut S) -> Result<(), ClientError> {
        loop {
            let take = (self.len as u64).min(n) as usize;
            sink.put(&self.buf[..take])?;
            self.consume(take);
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Reads one CRLF-terminated line from the buffer (filling as needed) and returns its length without CRLF.
    async fn line(&mut self) -> Result<usize, ClientError> {
        loop {
            if let Some(i) = self.buf[..self.len].windows(2).position(|w| w == b"\r\n") {
                return Ok(i);
            }
            if self.len > 4096 {
                return Err(ClientError::Io);
            }
            self.fill().await?;
        }
    }

    async fn skip_chunked<S: BodySink>(
        &mut self,
        max_body: u64,
        sink: &mut S,
    ) -> Result<u64, ClientError> {
        let mut total = 0u64;
        loop {
            let n = self.line().await?;
            let size_str = std::str::from_utf8(&self.buf[..n]).map_err(|_| ClientError::Io)?;
            let size = u64::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ClientError::Io)?;
            self.consume(n + 2);
            if size == 0 {
                // Trailer section: lines until an empty one.
                loop {
                    let n = self.line().await?;
                    self.consume(n + 2);
                    if n == 0 {
                        return Ok(total);
                    }
                }
            }
            total += size;
            if total > max_body {
                return Err(ClientError::BodyTooLarge);
            }
            self.skip(size, sink).await?;
            let n = self.line().await?;
            if n != 0 {
                return Err(ClientError::Io);
            }
            self.consume(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves `responses` in order on one connection, then closes.
    async fn server(responses: Vec<&'static [u8]>) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for r in responses {
                // One request per response (requests here are small and arrive in one read).
                let _ = s.read(&mut buf).await.unwrap();
                for piece in r.chunks(7) {
                    s.write_all(piece).await.unwrap();
                    s.flush().await.unwrap();
                }
            }
        });
        addr
    }

    async fn conn(addr: std::net::SocketAddr) -> H1Conn {
        H1Conn::new(TcpStream::connect(addr).await.unwrap())
    }

    const REQ: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[tokio::test]
    async fn content_length_chunked_and_interim() {
        let addr = server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ])
        .await;
        let mut c = conn(addr).await;
        assert_eq!(
            c.send(REQ, false, 1 << 20).await.unwrap(),
            H1Response {
                status: 200,
                body_bytes: 5,
                cache: CacheClass::Unknown,
            }
        );
        assert_eq!(
            c.send(REQ, false, 1 << 20).await.unwrap(),
            H1Response {
                status: 201,
                body_bytes: 7,
                cache: CacheClass::Unknown,
            }
        );
        assert_eq!(
            c.send(REQ, false, 1 << 20).await.unwrap(),
            H1Response {
                status: 204,
                body_bytes: 0,
                cache: CacheClass::Unknown,
            }
        );
        assert_eq!(c.send(REQ, false, 1 << 20).await.unwrap().status, 503);
        assert!(
            !c.is_usable(),
            "connection: close must retire the connection"
        );
    }

    #[test]
    fn cache_status_classes() {
        assert_eq!(
            CacheClass::of(b"refbench-edge; hit; ttl=59"),
            CacheClass::EdgeHit
        );
        assert_eq!(
            CacheClass::of(b"refbench-shield; hit, refbench-edge; fwd=uri-miss; stored"),
            CacheClass::UpperHit
        );
        assert_eq!(
            CacheClass::of(b"refbench-shield; fwd=uri-miss, refbench-edge; fwd=uri-miss"),
            CacheClass::Miss
        );
        // `hit` is a parameter, not a substring: a cache named "hit" or `detail=hit` is no hit.
        assert_eq!(CacheClass::of(b"hit; fwd=miss"), CacheClass::Miss);
        assert_eq!(
            CacheClass::of(b"c; fwd=stale; detail=hit"),
            CacheClass::Miss
        );
        assert_eq!(CacheClass::of(b"c;HIT"), CacheClass::EdgeHit);
    }

    #[tokio::test]
    async fn cache_status_header_is_read() {
        let addr = server(vec![
            b"HTTP/1.1 200 OK\r\nCache-Status: a; fwd=miss, b; hit\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let mut c = conn(addr).await;
        assert_eq!(
            c.send(REQ, false, 100).await.unwrap(),
            H1Response {
                status: 200,
                body_bytes: 2,
                cache: CacheClass::EdgeHit,
            }
        );
    }

    #[tokio::test]
    async fn body_limit_and_garbage_fail() {
        let addr = server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"]).await;
        let mut c = conn(addr).await;
        assert_eq!(c.send(REQ, false, 10).await, Err(ClientError::BodyTooLarge));
        assert!(!c.is_usable());
        let addr = server(vec![b"SMTP ready\r\n\r\n"]).await;
        let mut c = conn(addr).await;
        assert_eq!(c.send(REQ, false, 10).await, Err(ClientError::Io));
    }

    #[tokio::test]
    async fn close_delimited_body_and_eof() {
        let addr = server(vec![b"HTTP/1.0 200 OK\r\n\r\nabcdef"]).await;
        let mut c = conn(addr).await;
        assert_eq!(
            c.send(REQ, false, 100).await.unwrap(),
            H1Response {
                status: 200,
                body_bytes: 6,
                cache: CacheClass::Unknown,
            }
        );
        assert!(!c.is_usable());
        assert_eq!(c.send(REQ, false, 100).await, Err(ClientError::Io));
    }

    #[tokio::test]
    async fn collected_bodies_in_every_framing() {
        let addr = server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 422 Unprocessable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n123456789",
        ])
        .await;
        let mut c = conn(addr).await;
        let mut body = vec![1, 2, 3];
        let r = c.send_collect(REQ, &mut body, 100).await.unwrap();
        assert_eq!((r.status, body.as_slice()), (200, &b"hello"[..]));
        let r = c.send_collect(REQ, &mut body, 100).await.unwrap();
        assert_eq!((r.status, body.as_slice()), (422, &b"abcdefg"[..]));
        assert_eq!(
            c.send_collect(REQ, &mut body, 8).await,
            Err(ClientError::BodyTooLarge)
        );
        assert!(!c.is_usable());
        let addr = server(vec![b"HTTP/1.0 200 OK\r\n\r\nuntil-close"]).await;
        let mut c = conn(addr).await;
        c.send_collect(REQ, &mut body, 100).await.unwrap();
        assert_eq!(body, b"until-close");
    }

    #[tokio::test]
    async fn large_collected_body_spans_many_reads() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let expect = payload.clone();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                payload.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&payload).await.unwrap();
        });
        let mut c = conn(addr).await;
        let mut body = Vec::new();
        let r = c.send_collect(REQ, &mut body, 2_000_000).await.unwrap();
        assert_eq!(r.body_bytes, 1_000_000);
        assert_eq!(body, expect);
    }

    #[tokio::test]
    async fn head_response_has_no_body() {
        let addr = server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"]).await;
        let mut c = conn(addr).await;
        assert_eq!(
            c.send(REQ, true, 100).await.unwrap(),
            H1Response {
                status: 200,
                body_bytes: 0,
                cache: CacheClass::Unknown,
            }
        );
        assert!(c.is_usable());
    }
}
