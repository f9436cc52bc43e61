//! Request coalescing: concurrent misses for one key share one upstream fetch.
//!
//! The first request for a key (the leader) registers an [`Inflight`] and spawns the fetch task; later ones
//! (followers) subscribe to it. Each subscriber has its own unbounded channel: on subscribing it is sent everything
//! published so far (the head and the body frames, as shared `Bytes`: reference counts, not copies), then every
//! later frame as it arrives, so followers are served streamed, at their own pace, while the body is still
//! arriving. Memory per fetch is bounded by the object (followers hold references to the same frames) and the
//! number of fetches by `max_inflight_keys`.
//!
//! The fetch task runs on its own, so a leader whose client goes away does not cancel the fetch the followers
//! wait on. A fetch ends in exactly one terminal message to every subscriber: `End` (the body was complete),
//! `Fail` (no response, or the body broke: waiters retry with a new leader or answer 502, never a truncated 200
//! presented as complete), `Entry` (a stored response was refreshed by a 304 or found in a lower tier), or
//! `Pass`/`Redo` (the response may not be shared: the leader gets it, the others fetch on their own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::error::FetchError;
use super::key::CacheKey;
use super::prefetch::PrefetchMark;
use super::store::{Entry, PurgeRule};

/// A response head shared with every subscriber.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    /// Headers to send (hop-by-hop fields removed).
    pub(crate) headers: HeaderMap,
    /// The response will be stored once its body is complete.
    pub(crate) storing: bool,
    /// The selecting headers of a `Vary` response, with the leader's variant hash: a follower whose own variant
    /// differs must not be served this response.
    pub(crate) vary: Option<(Box<[HeaderName]>, u64)>,
    /// Why it will not be stored (empty when it will).
    pub(crate) reason: &'static str,
}

/// What a subscriber receives.
#[derive(Debug)]
pub(crate) enum Msg {
    /// The response head; body frames follow.
    Head(Arc<Head>),
    /// A body frame.
    Data(Bytes),
    /// The body is complete.
    End,
    /// The fetch failed (before the head, or mid-body).
    Fail(FetchError),
    /// Serve this stored response (refreshed by a 304, or found in a lower tier); `revalidated` says which.
    Entry(Arc<Entry>, bool),
    /// Leader only: the response may not be shared (and why); stream it straight to the client.
    Pass(Box<Response<Incoming>>, &'static str),
    /// Followers: the response could not be shared; fetch on your own.
    Redo,
}

#[derive(Debug, Default)]
struct State {
    /// Subscribers' channels; the first is the leader's.
    subscribers: Vec<UnboundedSender<Msg>>,
    head: Option<Arc<Head>>,
    chunks: Vec<Bytes>,
    /// No longer joinable: a terminal message was sent.
    closed: bool,
}

/// One in-flight fetch.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) key: CacheKey,
    /// Set when a prefetch leads this fetch: the stored object carries it, and clients joining claim it.
    pub(crate) mark: Option<Arc<PrefetchMark>>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data (channels, frames): a panic mid-update leaves nothing a later reader could misread as complete,
    // because only `close` marks the end.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inflight {
    fn new(key: CacheKey, mark: Option<Arc<PrefetchMark>>) -> Self {
        Inflight {
            key,
            mark,
            state: Mutex::new(State::default()),
        }
    }

    /// A new subscriber, sent everything published so far; `None` once the fetch has ended.
    fn subscribe(&self) -> Option<UnboundedReceiver<Msg>> {
        let mut st = lock(&self.state);
        if st.closed {
            return None;
        }
        let (tx, rx) = unbounded_channel();
        if let Some(h) = &st.head {
            let _ = tx.send(Msg::Head(Arc::clone(h)));
            for c in &st.chunks {
                let _ = tx.send(Msg::Data(c.clone()));
            }
        }
        st.subscribers.push(tx);
        Some(rx)
    }

    /// Publishes the head.
    pub(crate) fn head(&self, head: Arc<Head>) {
        let mut st = lock(&self.state);
        for tx in &st.subscribers {
            let _ = tx.send(Msg::Head(Arc::clone(&head)));
        }
        st.head = Some(head);
    }

    /// Publishes a body frame (kept for later subscribers).
    pub(crate) fn data(&self, frame: Bytes) {
        let mut st = lock(&self.state);
        // Subscribers that went away (client disconnected) are dropped here, so each frame costs only live ones.
        st.subscribers
            .retain(|tx| tx.send(Msg::Data(frame.clone())).is_ok());
        st.chunks.push(frame);
    }

    /// Whether anyone is still listening (a leader-only pass with nobody left can stop).
    pub(crate) fn has_subscribers(&self) -> bool {
        lock(&self.state)
            .subscribers
            .iter()
            .any(|tx| !tx.is_closed())
    }

    fn close(&self, each: impl Fn(usize) -> Msg) {
        let mut st = lock(&self.state);
        st.closed = true;
        for (i, tx) in st.subscribers.drain(..).enumerate() {
            let _ = tx.send(each(i));
        }
        st.chunks = Vec::new();
    }

    /// The body is complete.
    pub(crate) fn end(&self) {
        self.close(|_| Msg::End);
    }

    /// The fetch failed.
    pub(crate) fn fail(&self, e: &FetchError) {
        self.close(|_| Msg::Fail(e.clone()));
    }

    /// Serve this stored entry.
    pub(crate) fn entry(&self, e: &Arc<Entry>, revalidated: bool) {
        self.close(|_| Msg::Entry(Arc::clone(e), revalidated));
    }

    /// The response may not be shared: the leader gets it, the others redo.
    pub(crate) fn pass(&self, resp: Response<Incoming>, reason: &'static str) {
        let mut resp = Some(resp);
        let mut st = lock(&self.state);
        st.closed = true;
        for (i, tx) in st.subscribers.drain(..).enumerate() {
            let msg = match (i, resp.take()) {
                (0, Some(r)) => Msg::Pass(Box::new(r), reason),
                _ => Msg::Redo,
            };
            let _ = tx.send(msg);
        }
    }

    /// Every subscriber redoes (the leader found the object stored after all).
    pub(crate) fn redo(&self) {
        self.close(|_| Msg::Redo);
    }
}

/// How a request joined.
#[derive(Debug)]
pub(crate) enum Joined {
    /// First for the key: run the fetch (its receiver is subscriber 0).
    Leader(Arc<Inflight>, UnboundedReceiver<Msg>),
    /// Another request's fetch is in flight: wait on it (with the fetch's prefetch mark, if a prefetch leads it).
    Follower(UnboundedReceiver<Msg>, Option<Arc<PrefetchMark>>),
    /// The fetch just ended: look the store up again.
    Ended,
    /// Too many keys in flight: go upstream uncoalesced.
    Full,
}

/// The table of in-flight fetches.
#[derive(Debug)]
pub(crate) struct Coalescer {
    map: Mutex<HashMap<u64, Arc<Inflight>>>,
    max_keys: usize,
}

impl Coalescer {
    pub(crate) fn new(max_keys: usize) -> Self {
        Coalescer {
            map: Mutex::new(HashMap::new()),
            max_keys,
        }
    }

    /// Joins the fetch for `hash`, or registers a new one.
    pub(crate) fn join(&self, hash: u64, key: &CacheKey) -> Joined {
        let mut map = lock(&self.map);
        if let Some(f) = map.get(&hash) {
            return match f.subscribe() {
                Some(rx) => Joined::Follower(rx, f.mark.clone()),
                None => Joined::Ended,
            };
        }
        if map.len() >= self.max_keys {
            return Joined::Full;
        }
        let f = Arc::new(Inflight::new(key.clone(), None));
        let Some(rx) = f.subscribe() else {
            return Joined::Full; // unreachable: a new fetch is open
        };
        map.insert(hash, Arc::clone(&f));
        Joined::Leader(f, rx)
    }

    /// Registers a prefetch as the leader of a new fetch for `hash`, marked with `mark`; never joins a fetch in
    /// flight (a prefetch has nobody to serve). `Err(true)` when a fetch for the key is in flight, `Err(false)`
    /// when `max_keys` are.
    pub(crate) fn lead(
        &self,
        hash: u64,
        key: &CacheKey,
        mark: Arc<PrefetchMark>,
    ) -> Result<(Arc<Inflight>, UnboundedReceiver<Msg>), bool> {
        let mut map = lock(&self.map);
        if map.contains_key(&hash) {
            return Err(true);
        }
        if map.len() >= self.max_keys {
            return Err(false);
        }
        let f = Arc::new(Inflight::new(key.clone(), Some(mark)));
        let rx = f.subscribe().ok_or(false)?; // unreachable: a new fetch is open
        map.insert(hash, Arc::clone(&f));
        Ok((f, rx))
    }

    /// A fetch nobody can join (for requests whose response may be theirs alone, e.g. with `Authorization`): the
    /// same fetch machinery, never registered.
    pub(crate) fn solo(&self, key: &CacheKey) -> Joined {
        let f = Arc::new(Inflight::new(key.clone(), None));
        match f.subscribe() {
            Some(rx) => Joined::Leader(f, rx),
            None => Joined::Full, // unreachable: a new fetch is open
        }
    }

    /// Whether a fetch for `hash` is in flight.
    pub(crate) fn in_flight(&self, hash: u64) -> bool {
        lock(&self.map).contains_key(&hash)
    }

    /// Unregisters `f` (only if it is still the registered fetch for `hash`).
    pub(crate) fn remove(&self, hash: u64, f: &Arc<Inflight>) {
        let mut map = lock(&self.map);
        if map.get(&hash).is_some_and(|g| Arc::ptr_eq(f, g)) {
            map.remove(&hash);
        }
    }

    /// Unregisters every fetch a purge covers, so requests after the purge start fresh fetches instead of joining
    /// one that started before it (those fetches will not store: see the store's purge log).
    pub(crate) fn purge(&self, rule: &PurgeRule) -> usize {
        let mut map = lock(&self.map);
        let before = map.len();
        map.retain(|_, f| !rule.matches(&f.key.text, f.key.path_at));
        before - map.len()
    }

    /// Fetches in flight.
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }
}
