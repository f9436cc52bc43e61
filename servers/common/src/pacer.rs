//! Precise sleeps for one process's runtime (a loader's pacing, a server's injected delays): a timerfd armed to the earliest pending deadline, driven by a task on the
//! loader's own runtime thread.
//!
//! tokio's timer wheel has 1 ms resolution, so sends paced with it would be up to a millisecond late, and in the
//! open model that lateness is (rightly) counted in latency. A separate timer thread ([`crate::timer`]) is precise
//! but costs two context switches per wake-up (the timer thread wakes, then wakes the runtime). Here the kernel's hrtimer fires the
//! timerfd, the runtime's epoll sees it readable, and the driver wakes every due sleeper on the same thread: one
//! `read` and at most one `timerfd_settime` per expiry, shared by all sleepers due at that moment.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Most sleepers one pacer tracks; a loader has one sleeper per lane, so this is far above any real need.
pub const MAX_SLEEPERS: usize = 1 << 20;

struct Entry {
    deadline: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.seq) == (o.deadline, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(o.deadline, o.seq))
    }
}

struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    /// Deadline the timerfd is armed for, if any.
    armed: Option<Instant>,
}

struct Inner {
    state: Mutex<State>,
    fd: AsyncFd<OwnedFd>,
}

/// A per-process precise timer. Cheap to clone.
#[derive(Clone)]
pub struct Pacer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("pending", &self.pending())
            .finish()
    }
}

fn arm(fd: &OwnedFd, deadline: Instant) {
    // Relative arming from "now": the timer can only fire later than the deadline, never earlier.
    let rel = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: rel.as_secs() as libc::time_t,
            tv_nsec: rel.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: fd is a live timerfd we own; spec is a valid itimerspec; old_value may be null.
    let rc = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    debug_assert_eq!(rc, 0, "timerfd_settime failed");
}

impl Pacer {
    /// Creates the timerfd and spawns its driver on the current tokio runtime (which must have IO enabled).
    pub fn start() -> std::io::Result<Pacer> {
        // SAFETY: plain syscall with constant flags; the result is checked before use.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                seq: 0,
                armed: None,
            }),
            // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped, so the descriptor stays
            // open and refers to the same timerfd for the AsyncFd's whole life.
            fd: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(std::io::Error::from)?,
        });
        let driver = inner.clone();
        tokio::spawn(async move { drive(driver).await });
        Ok(Pacer { inner })
    }

    /// Completes at `deadline` (immediately if it has passed), with timerfd precision.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep {
            pacer: self.clone(),
            deadline,
            registered: false,
        }
    }

    /// Sleepers waiting now.
    pub fn pending(&self) -> usize {
        self.inner.state.lock().expect("not poisoned").heap.len()
    }
}

async fn drive(inner: Arc<Inner>) {
    let mut buf = [0u8; 8];
    loop {
        let Ok(mut guard) = inner.fd.readable().await else {
            return;
        };
        // Reading clears the expiration count; EAGAIN means a stale readiness, which clear_ready handles.
        // SAFETY: reading 8 bytes into an 8-byte buffer from a timerfd we own.
        let n = unsafe { libc::read(inner.fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n < 0 {
            guard.clear_ready();
            continue;
        }
        guard.clear_ready();
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut st = inner.state.lock().expect("not poisoned");
            while let Some(Reverse(top)) = st.heap.peek() {
                if top.deadline > now {
                    break;
                }
                let Reverse(e) = st.heap.pop().expect("peeked");
                due.push(e.waker);
            }
            st.armed = st.heap.peek().map(|Reverse(e)| e.deadline);
            if let Some(next) = st.armed {
                arm(inner.fd.get_ref(), next);
            }
        }
        // Wake outside the lock: a woken task on this thread only runs after we yield, but keep it simple.
        for w in due {
            w.wake();
        }
    }
}

/// Future returned by [`Pacer::sleep_until`].
pub struct Sleep {
    pacer: Pacer,
    deadline: Instant,
    registered: bool,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        if !self.registered {
            let inner = &self.pacer.inner;
            let mut st = inner.state.lock().expect("not poisoned");
            if st.heap.len() >= MAX_SLEEPERS {
                // Unreachable with one sleeper per lane; refuse to grow without bound, and never return early.
                drop(st);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            st.seq += 1;
            let seq = st.seq;
            let deadline = self.deadline;
            st.heap.push(Reverse(Entry {
                deadline,
                seq,
                waker: cx.waker().clone(),
            }));
            if st.armed.is_none_or(|a| deadline < a) {
                st.armed = Some(deadline);
                arm(inner.fd.get_ref(), deadline);
            }
            drop(st);
            self.registered = true;
        }
        // A spurious poll before the deadline keeps the registration made above (same task, same waker).
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runtime flavour loaders and the floor use.
    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn never_early_and_ordered() {
        let rt = current_thread();
        rt.block_on(async {
            let p = Pacer::start().unwrap();
            let start = Instant::now();
            let mut handles = Vec::new();
            for i in (0..50u64).rev() {
                let p = p.clone();
                let d = start + Duration::from_micros(200 + i * 97);
                handles.push(tokio::spawn(async move {
                    p.sleep_until(d).await;
                    (d, Instant::now())
                }));
            }
            let mut overshoot = Vec::new();
            for h in handles {
                let (d, at) = h.await.unwrap();
                assert!(at >= d, "woke early");
                overshoot.push(at - d);
            }
            overshoot.sort();
            // Loose: tokio's wheel alone would be ~0.5 ms late on average; a shared machine adds noise.
            assert!(
                overshoot[25] < Duration::from_millis(1),
                "median overshoot {:?}",
                overshoot[25]
            );
            assert_eq!(p.pending(), 0);
        });
    }

    #[test]
    fn past_deadline_is_immediate() {
        let rt = current_thread();
        rt.block_on(async {
            let p = Pacer::start().unwrap();
            p.sleep_until(Instant::now() - Duration::from_millis(1))
                .await;
            assert_eq!(p.pending(), 0);
        });
    }
}
