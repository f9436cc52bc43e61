//! The `Cache-Status` response header (RFC 9211).
//!
//! Each tier appends its member to the value it got from upstream, so a response through edge and shield reads
//! `refbench-shield; fwd=uri-miss; stored, refbench-edge; hit; ttl=59` (closest to the origin first). Parameters:
//! `hit`; `fwd=uri-miss|vary-miss|stale|request|bypass|miss`; `fwd-status=N` (the upstream's status);
//! `stored`; `collapsed` (served from another request's fetch); `ttl=N` (seconds of freshness left, negative when
//! stale); `detail=...` (why: `stale-while-revalidate`, `stale-if-error`, `no-store`, `private`, `disk` for a hit
//! or a revalidation from the disk tier, `prefetch` for a hit on an object a prefetch stored or a request served
//! by a prefetch still in flight, `prefetch-status` when that prefetch got a status it does not store, ...).

use http::HeaderValue;
use http::header::HeaderName;

/// The header name.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request was forwarded (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Nothing stored for the URI.
    UriMiss,
    /// Something stored for the URI, but not for this variant.
    VaryMiss,
    /// Stored, but stale: revalidated or refetched.
    Stale,
    /// The request's own semantics (`Authorization`, `no-cache`, an unsafe method) required forwarding.
    Request,
    /// Configured (or marked) to bypass the cache.
    Bypass,
}

impl Fwd {
    fn token(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Bypass => "bypass",
        }
    }
}

/// This tier's member of `Cache-Status`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Served from storage without going upstream (fresh, or stale within a window).
    pub hit: bool,
    /// Forwarded, and why.
    pub fwd: Option<Fwd>,
    /// The upstream's status, when forwarded.
    pub fwd_status: Option<u16>,
    /// The response was (or will be, once complete) stored.
    pub stored: bool,
    /// Served from another request's fetch.
    pub collapsed: bool,
    /// Freshness left, seconds (negative when stale).
    pub ttl: Option<i64>,
    /// Why, as an sf-token.
    pub detail: Option<&'static str>,
}

impl Status {
    /// A hit with `ttl` seconds of freshness left.
    pub fn hit(ttl: i64) -> Self {
        Status {
            hit: true,
            ttl: Some(ttl),
            ..Status::default()
        }
    }

    /// A forwarded request.
    pub fn fwd(fwd: Fwd) -> Self {
        Status {
            fwd: Some(fwd),
            ..Status::default()
        }
    }

    /// Renders `name; params`, appended to `upstream` (the value received from upstream), if any.
    pub fn render(&self, name: &str, upstream: Option<&HeaderValue>) -> HeaderValue {
        let mut s = String::with_capacity(96);
        self.write_to(name, upstream, &mut s);
        // Every part is a token or an integer; a bad upstream value was only copied if it was valid already.
        HeaderValue::from_str(&s)
            .unwrap_or_else(|_| HeaderValue::from_static("refbench; detail=bad-status"))
    }

    /// Writes what [`Status::render`] returns into `w` (the hit fast path writes it straight into the response
    /// head). An upstream value that is not visible ASCII is left out rather than copied.
    pub fn write_to<W: std::fmt::Write>(
        &self,
        name: &str,
        upstream: Option<&HeaderValue>,
        w: &mut W,
    ) {
        // Writing to a String or BytesMut cannot fail.
        let _ = self.write_fmt(name, upstream, w);
    }

    fn write_fmt<W: std::fmt::Write>(
        &self,
        name: &str,
        upstream: Option<&HeaderValue>,
        w: &mut W,
    ) -> std::fmt::Result {
        if let Some(up) = upstream.and_then(|v| v.to_str().ok())
            && !up.trim().is_empty()
        {
            w.write_str(up.trim())?;
            w.write_str(", ")?;
        }
        w.write_str(name)?;
        if self.hit {
            w.write_str("; hit")?;
        }
        if let Some(f) = self.fwd {
            w.write_str("; fwd=")?;
            w.write_str(f.token())?;
        }
        if let Some(code) = self.fwd_status {
            write!(w, "; fwd-status={code}")?;
        }
        if self.stored {
            w.write_str("; stored")?;
        }
        if self.collapsed {
            w.write_str("; collapsed")?;
        }
        if let Some(t) = self.ttl {
            write!(w, "; ttl={t}")?;
        }
        if let Some(d) = self.detail
            && !d.is_empty()
        {
            w.write_str("; detail=")?;
            w.write_str(d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_appends() {
        let s = Status {
            fwd_status: Some(200),
            stored: true,
            collapsed: true,
            ..Status::fwd(Fwd::UriMiss)
        };
        assert_eq!(
            s.render("refbench-edge", None),
            "refbench-edge; fwd=uri-miss; fwd-status=200; stored; collapsed"
        );
        let up = HeaderValue::from_static("refbench-shield; hit");
        assert_eq!(
            Status::hit(59).render("refbench-edge", Some(&up)),
            "refbench-shield; hit, refbench-edge; hit; ttl=59"
        );
    }
}
