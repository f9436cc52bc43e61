//! The response body: small fixed texts, or an object generated frame by
//! frame (never built whole), optionally stalling part way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use super::error::BodyAborted;
use super::object::fill_body;

/// The body of every origin response. Implements hyper's [`Body`] with exact
/// size hints, so HTTP/1 responses carry `Content-Length` even when streamed.
#[derive(Debug)]
pub struct OriginBody(Kind);

#[derive(Debug)]
enum Kind {
    /// A whole small body (errors, admin JSON); `None` once sent.
    Full(Option<Bytes>),
    /// A generated object.
    Stream(Box<Stream>),
}

#[derive(Debug)]
struct Stream {
    seed: u64,
    offset: u64,
    len: u64,
    chunk_bytes: u64,
    hang: Option<Hang>,
    bytes_total: metrics::Counter,
}

/// Where and how long to stall.
#[derive(Debug)]
pub(crate) struct Hang {
    /// Body bytes sent before the stall (less than the object's size).
    pub(crate) at_bytes: u64,
    pub(crate) state: HangState,
}

#[derive(Debug)]
pub(crate) enum HangState {
    /// Not reached yet: stall for `Some(d)` or forever (`None`) holding
    /// `permit` (one of `max_hangs`); no permit = over the cap, abort instead.
    Armed {
        duration: Option<Duration>,
        permit: Option<OwnedSemaphorePermit>,
        active: metrics::Gauge,
    },
    /// Stalling; the permit and the gauge are released when this is dropped
    /// (stall over, client gone, or connection cut by the drain).
    Stalling {
        sleep: Option<Pin<Box<Sleep>>>,
        _guard: HangGuard,
    },
    /// Stalled and resumed.
    Done,
}

/// Holds a hang slot and keeps `cdn_origin_hangs_active` honest.
#[derive(Debug)]
pub(crate) struct HangGuard {
    _permit: OwnedSemaphorePermit,
    active: metrics::Gauge,
}

impl Drop for HangGuard {
    fn drop(&mut self) {
        self.active.decrement(1.0);
    }
}

impl OriginBody {
    /// A body of exactly these bytes.
    pub fn full(b: impl Into<Bytes>) -> Self {
        OriginBody(Kind::Full(Some(b.into())))
    }

    /// No body (HEAD, 304).
    pub fn empty() -> Self {
        OriginBody(Kind::Full(None))
    }

    /// The object seeded by `seed`, `len` bytes, in frames of `chunk_bytes`.
    pub(crate) fn object(
        seed: u64,
        len: u64,
        chunk_bytes: usize,
        hang: Option<Hang>,
        bytes_total: metrics::Counter,
    ) -> Self {
        OriginBody(Kind::Stream(Box::new(Stream {
            seed,
            offset: 0,
            len,
            chunk_bytes: chunk_bytes.max(1) as u64,
            hang: hang.filter(|h| h.at_bytes < len),
            bytes_total,
        })))
    }
}

impl Stream {
    /// Polls the stall if we are at the hang point; Ready(Ok) to go on.
    fn poll_hang(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyAborted>> {
        let Some(hang) = &mut self.hang else {
            return Poll::Ready(Ok(()));
        };
        if self.offset != hang.at_bytes {
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut hang.state {
                HangState::Done => return Poll::Ready(Ok(())),
                HangState::Armed { .. } => {
                    let HangState::Armed {
                        duration,
                        permit,
                        active,
                    } = std::mem::replace(&mut hang.state, HangState::Done)
                    else {
                        unreachable!("matched Armed above")
                    };
                    let Some(permit) = permit else {
                        return Poll::Ready(Err(BodyAborted {
                            at_bytes: self.offset,
                            reason: "hang injected but max_hangs responses are already hanging",
                        }));
                    };
                    active.increment(1.0);
                    hang.state = HangState::Stalling {
                        sleep: duration.map(|d| Box::pin(tokio::time::sleep(d))),
                        _guard: HangGuard {
                            _permit: permit,
                            active,
                        },
                    };
                }
                HangState::Stalling { sleep, .. } => {
                    return match sleep {
                        // Forever: no waker is registered on purpose. hyper
                        // still polls the connection, so a client that goes
                        // away (or the drain) drops this body and the slot.
                        None => Poll::Pending,
                        Some(s) => match s.as_mut().poll(cx) {
                            Poll::Pending => Poll::Pending,
                            Poll::Ready(()) => {
                                hang.state = HangState::Done;
                                Poll::Ready(Ok(()))
                            }
                        },
                    };
                }
            }
        }
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        match &mut self.get_mut().0 {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(s) => {
                if s.offset >= s.len {
                    return Poll::Ready(None);
                }
                match s.poll_hang(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) => {}
                }
                // Stop a frame short at the hang point so exactly at_bytes go out first.
                let mut end = (s.offset + s.chunk_bytes).min(s.len);
                if let Some(h) = &s.hang
                    && s.offset < h.at_bytes
                {
                    end = end.min(h.at_bytes);
                }
                let n = (end - s.offset) as usize;
                let mut buf = vec![0u8; n];
                fill_body(s.seed, s.offset, &mut buf);
                s.offset = end;
                s.bytes_total.increment(n as u64);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Stream(s) => s.offset >= s.len,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(s) => SizeHint::with_exact(s.len - s.offset),
        }
    }
}
