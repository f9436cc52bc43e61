//! Precise sleeps for sub-millisecond scheduling.
//!
//! Tokio's timer wheel has 1 ms granularity, so `tokio::time::sleep(300µs)`
//! takes about a millisecond. The floor's delay mode and the load generator's
//! open-loop pacing need ~10–50 µs precision, so [`sleep_until_precise`] does
//! the coarse part of a long wait on tokio (cheap, no extra thread wakeups) and
//! the last ~1.5 ms on one dedicated timer thread that sleeps on a condvar with
//! a 1 ns timer slack and wakes tasks as their deadlines pass.
//!
//! The timer thread only wakes an entry once its deadline has passed, so a
//! precise sleep never returns early. (Waking a few µs early to hide the wake
//! latency would force the woken future to re-register and be woken again
//! until the deadline, a two-thread spin; it is not worth it.)

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Deadlines further away than this first sleep on tokio's coarse timer.
pub const COARSE_THRESHOLD: Duration = Duration::from_millis(2);
/// How far before the deadline the coarse tokio sleep aims to end. Tokio may
/// fire up to ~1 ms late, so 1.5 ms leaves the precise stage some room.
pub const COARSE_LEAD: Duration = Duration::from_micros(1500);
/// Maximum number of entries waiting on the timer thread. Beyond it, sleeps
/// fall back to tokio's timer (correct but ~1 ms coarse) instead of growing
/// memory without bound.
pub const MAX_TIMER_ENTRIES: usize = 1_000_000;

/// Sleeps until `deadline` with roughly 10–100 µs overshoot (host dependent)
/// and never returns before it.
///
/// Returns immediately if the deadline has passed. Cancel-safe: dropping the
/// future leaves at most one stale entry on the timer thread, which is
/// discarded when its deadline passes (within ~2 ms, since only the last
/// stretch of a sleep waits there). Must run inside a tokio runtime with the
/// time driver enabled (used for the coarse part and for the overflow
/// fallback); works on `current_thread` and `multi_thread` runtimes.
pub async fn sleep_until_precise(deadline: Instant) {
    match global() {
        Some(core) => sleep_on(core, deadline).await,
        // No timer thread could be started: tokio's timer is still correct,
        // only coarse.
        None => tokio::time::sleep_until(deadline.into()).await,
    }
}

/// [`sleep_until_precise`] for a duration from now.
pub async fn sleep_precise(duration: Duration) {
    sleep_until_precise(Instant::now() + duration).await;
}

/// How many sleeps are waiting on the timer thread right now (including
/// stale entries of dropped sleeps, which leave at their deadline).
pub fn pending_count() -> usize {
    global().map_or(0, TimerCore::len)
}

/// How many sleeps so far found the timer thread full and fell back to tokio.
pub fn fallback_count() -> u64 {
    global().map_or(0, |core| core.fallbacks.load(AtomicOrdering::Relaxed))
}

fn global() -> Option<&'static TimerCore> {
    static GLOBAL: OnceLock<Option<Arc<TimerCore>>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| TimerCore::start(MAX_TIMER_ENTRIES))
        .as_deref()
}

async fn sleep_on(core: &TimerCore, deadline: Instant) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > COARSE_THRESHOLD {
        tokio::time::sleep_until((deadline - COARSE_LEAD).into()).await;
    }
    PreciseWait {
        core,
        deadline,
        registered: None,
        fallback: None,
    }
    .await;
}

/// One waiting sleep. Ordered by (deadline, seq) so equal deadlines are FIFO
/// and the ordering is total.
struct Entry {
    deadline: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

struct State {
    /// Min-heap of waiting entries (earliest deadline on top).
    heap: BinaryHeap<Reverse<Entry>>,
    next_seq: u64,
    /// Set only for non-global timers (tests) to end the thread.
    stop: bool,
}

struct TimerCore {
    state: Mutex<State>,
    /// Signalled when a new earliest entry arrives (or on stop).
    cond: Condvar,
    capacity: usize,
    fallbacks: AtomicU64,
}

impl TimerCore {
    /// Starts the timer thread; `None` if the OS refuses a new thread.
    fn start(capacity: usize) -> Option<Arc<TimerCore>> {
        let core = Arc::new(TimerCore {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                next_seq: 0,
                stop: false,
            }),
            cond: Condvar::new(),
            capacity,
            fallbacks: AtomicU64::new(0),
        });
        let thread_core = Arc::clone(&core);
        std::thread::Builder::new()
            .name("refbench-timer".into())
            .spawn(move || thread_core.run())
            .ok()?;
        Some(core)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, but if something ever did,
        // the heap is still structurally valid: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `waker` to be woken once `deadline` has passed. Returns false
    /// (and queues nothing) when the heap is at capacity.
    fn register(&self, deadline: Instant, waker: Waker) -> bool {
        let mut st = self.lock();
        if st.heap.len() >= self.capacity {
            return false;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.heap.push(Reverse(Entry {
            deadline,
            seq,
            waker,
        }));
        debug_assert!(st.heap.len() <= self.capacity);
        let new_earliest = st.heap.peek().is_some_and(|Reverse(e)| e.seq == seq);
        drop(st);
        if new_earliest {
            // The thread may be sleeping towards a later deadline.
            self.cond.notify_one();
        }
        true
    }

    fn len(&self) -> usize {
        self.lock().heap.len()
    }

    fn run(&self) {
        crate::cpu::set_timer_slack_ns(1);
        let mut due: Vec<Waker> = Vec::new();
        let mut st = self.lock();
        loop {
            if st.stop {
                return;
            }
            let now = Instant::now();
            while st.heap.peek().is_some_and(|Reverse(e)| e.deadline <= now) {
                if let Some(Reverse(e)) = st.heap.pop() {
                    debug_assert!(e.deadline <= now, "popped an entry before its deadline");
                    due.push(e.waker);
                }
            }
            if !due.is_empty() {
                // Wake outside the lock: a wake may run arbitrary runtime code
                // (and a woken task may register its next sleep right away).
                drop(st);
                for waker in due.drain(..) {
                    waker.wake();
                }
                st = self.lock();
                continue;
            }
            let timeout = st.heap.peek().map(|Reverse(e)| e.deadline - now);
            st = match timeout {
                None => self.cond.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(t) => {
                    self.cond
                        .wait_timeout(st, t)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    #[cfg(test)]
    fn stop(&self) {
        self.lock().stop = true;
        self.cond.notify_one();
    }
}

/// The precise stage: waits on the timer thread, or on tokio if it is full.
struct PreciseWait<'a> {
    core: &'a TimerCore,
    deadline: Instant,
    /// The waker of our live heap entry. While it still wakes the current task
    /// a re-poll must not queue a duplicate entry.
    registered: Option<Waker>,
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for PreciseWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(sleep) = this.fallback.as_mut() {
            return sleep.as_mut().poll(cx);
        }
        if Instant::now() >= this.deadline {
            return Poll::Ready(());
        }
        if let Some(w) = &this.registered {
            if w.will_wake(cx.waker()) {
                // Still queued: the thread pops an entry only after its
                // deadline, and the deadline has not passed.
                return Poll::Pending;
            }
        }
        // First poll, or the task moved to another waker: queue (again). Any
        // older entry becomes stale and is dropped at its deadline.
        let waker = cx.waker().clone();
        if this.core.register(this.deadline, waker.clone()) {
            this.registered = Some(waker);
            Poll::Pending
        } else {
            this.core.fallbacks.fetch_add(1, AtomicOrdering::Relaxed);
            let mut sleep = Box::pin(tokio::time::sleep_until(this.deadline.into()));
            let poll = sleep.as_mut().poll(cx);
            this.fallback = Some(sleep);
            poll
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private timer thread that stops when the test ends.
    struct TestTimer(Arc<TimerCore>);
    impl TestTimer {
        fn new(capacity: usize) -> Self {
            TestTimer(TimerCore::start(capacity).expect("spawn timer thread"))
        }
    }
    impl Drop for TestTimer {
        fn drop(&mut self) {
            self.0.stop();
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    #[test]
    fn past_deadline_is_ready_on_first_poll() {
        let core = TestTimer::new(16);
        let past = Instant::now() - Duration::from_millis(5);
        let mut cx = Context::from_waker(Waker::noop());
        let mut f = std::pin::pin!(sleep_on(&core.0, past));
        assert!(f.as_mut().poll(&mut cx).is_ready());
        let mut g = std::pin::pin!(sleep_until_precise(Instant::now()));
        assert!(g.as_mut().poll(&mut cx).is_ready());
        assert_eq!(core.0.len(), 0, "nothing was queued");
    }

    #[test]
    fn short_sleeps_are_precise_and_never_early() {
        let rt = rt();
        let overshoots = rt.block_on(async {
            let mut v = Vec::with_capacity(200);
            for _ in 0..200 {
                let start = Instant::now();
                let deadline = start + Duration::from_micros(300);
                sleep_until_precise(deadline).await;
                let end = Instant::now();
                assert!(end >= deadline, "returned {:?} early", deadline - end);
                v.push(end - deadline);
            }
            v
        });
        let med = median(overshoots);
        // Deliberately loose for a noisy shared host: tokio's 1 ms wheel can
        // overshoot by up to ~1 ms, so a median below that shows the precise
        // path works without turning scheduler noise into test failures.
        assert!(med < Duration::from_millis(1), "median overshoot {med:?}");
        eprintln!("median overshoot of 300 µs sleeps: {med:?}");
    }

    #[test]
    fn long_sleeps_use_coarse_then_precise_and_never_early() {
        let rt = rt();
        rt.block_on(async {
            for ms in [3u64, 5, 12] {
                let deadline = Instant::now() + Duration::from_millis(ms);
                sleep_until_precise(deadline).await;
                let end = Instant::now();
                assert!(end >= deadline);
                assert!(end - deadline < Duration::from_millis(50), "{ms} ms sleep");
            }
        });
    }

    #[test]
    fn many_concurrent_sleeps_on_multi_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let base = Instant::now();
            let tasks: Vec<_> = (0..200u64)
                .map(|i| {
                    // Spread deadlines over 0..4 ms, in scrambled order.
                    let offset_us = (i * 7919) % 4000;
                    tokio::spawn(async move {
                        let deadline = base + Duration::from_micros(offset_us);
                        sleep_until_precise(deadline).await;
                        Instant::now() >= deadline
                    })
                })
                .collect();
            for t in tasks {
                assert!(t.await.unwrap(), "a sleep returned early");
            }
        });
    }

    #[test]
    fn new_earliest_entry_wakes_the_thread() {
        let core = TestTimer::new(16);
        // Park the thread on a deadline one minute away.
        assert!(core.0.register(
            Instant::now() + Duration::from_secs(60),
            Waker::noop().clone()
        ));
        let rt = rt();
        let took = rt.block_on(async {
            let start = Instant::now();
            sleep_on(&core.0, start + Duration::from_micros(300)).await;
            start.elapsed()
        });
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!(core.0.len(), 1, "the far entry is still queued");
    }

    /// A waker that counts its wakes.
    struct CountingWaker(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, AtomicOrdering::SeqCst);
        }
    }

    #[test]
    fn dropped_sleep_leaves_only_a_stale_entry_that_expires() {
        let core = TestTimer::new(16);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(Arc::clone(&counter));
        {
            let mut cx = Context::from_waker(&waker);
            let mut f = Box::pin(PreciseWait {
                core: &core.0,
                deadline: Instant::now() + Duration::from_millis(1),
                registered: None,
                fallback: None,
            });
            assert!(f.as_mut().poll(&mut cx).is_pending());
            // Re-polling with the same waker must not queue a duplicate.
            assert!(f.as_mut().poll(&mut cx).is_pending());
            assert_eq!(core.0.len(), 1);
        } // dropped while pending
        let give_up = Instant::now() + Duration::from_secs(5);
        while core.0.len() != 0 {
            assert!(Instant::now() < give_up, "stale entry never expired");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The stale waker was woken exactly once, harmlessly.
        assert_eq!(counter.0.load(AtomicOrdering::SeqCst), 1);
        // The timer still works afterwards.
        let rt = rt();
        rt.block_on(sleep_on(
            &core.0,
            Instant::now() + Duration::from_micros(200),
        ));
    }

    #[test]
    fn full_heap_falls_back_to_tokio() {
        let core = TestTimer::new(2);
        let rt = rt();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_micros(800);
            let waits = (0..5).map(|_| sleep_on(&core.0, deadline));
            let mut set = Vec::new();
            for w in waits {
                set.push(w);
            }
            // Poll all five concurrently on this one task.
            let all = async {
                let mut futs: Vec<_> = set.into_iter().map(Box::pin).collect();
                std::future::poll_fn(|cx| {
                    futs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
                    if futs.is_empty() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await
            };
            all.await;
            assert!(Instant::now() >= deadline);
        });
        assert_eq!(core.0.fallbacks.load(AtomicOrdering::Relaxed), 3);
    }
}
