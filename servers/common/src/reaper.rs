//! Deadlines enforced from a thread, so a serving runtime arms no timer while it waits for requests.
//!
//! Why: a tokio runtime with any pending timer parks in `epoll_wait` with a finite timeout, and the kernel arms and
//! cancels a high-resolution timer on every such wait. On a server answering each request in a few microseconds
//! that wait happens once per request, so a connection's head deadline (or any periodic task) costs CPU on every
//! request even though it almost never fires. A [`Reaper`] keeps the deadlines of many connections in one table and
//! checks them from its own thread every `tick`; an expired connection's read side is shut down
//! (`shutdown(fd, SHUT_RD)`), so the connection's pending read returns end-of-file and its task sees
//! [`Watch::fired`] and ends as it would on a timeout (answering 408 first if a head was half read).
//!
//! Deadlines are kept to `tick` (they fire between `deadline` and `deadline + tick`). The table is bounded by the
//! server's connection limit, since every watched connection holds a connection permit.
//!
//! Safety of the descriptor: the reaper only calls `shutdown` on a descriptor while holding the table lock, and a
//! [`Ticket`] removes its entry under the same lock when dropped, which the owner must do before the socket is
//! closed. So the reaper never touches a descriptor number after the socket it stood for is gone (and possibly
//! reused).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// No deadline.
const NONE: u64 = u64::MAX;

/// One watched connection's deadline, shared between its task and the reaper thread.
#[derive(Debug)]
pub struct Watch {
    fd: RawFd,
    /// Nanoseconds since the reaper's base instant, or [`NONE`].
    deadline_ns: AtomicU64,
    /// The deadline passed and the read side was shut down.
    fired: AtomicBool,
}

impl Watch {
    /// Whether the reaper ended this connection's read side because its deadline passed.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct Inner {
    base: Instant,
    tick: Duration,
    table: Mutex<Table>,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct Table {
    next_key: u64,
    watches: HashMap<u64, Arc<Watch>>,
}

/// The deadline table and its thread; dropping it stops the thread.
#[derive(Debug)]
pub struct Reaper {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Starts the reaper thread, which checks deadlines every `tick` (at least 1 ms).
    pub fn start(tick: Duration) -> std::io::Result<Reaper> {
        let inner = Arc::new(Inner {
            base: Instant::now(),
            tick: tick.max(Duration::from_millis(1)),
            table: Mutex::new(Table::default()),
            stop: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("refbench-reaper".into())
            .spawn(move || reap(&for_thread))?;
        Ok(Reaper {
            inner,
            thread: Some(thread),
        })
    }

    /// A handle connections register with; cheap to clone.
    pub fn handle(&self) -> ReaperHandle {
        ReaperHandle {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Registers connections with a [`Reaper`].
#[derive(Debug, Clone)]
pub struct ReaperHandle {
    inner: Arc<Inner>,
}

impl ReaperHandle {
    /// Watches `fd` (no deadline yet). Drop the ticket before closing `fd`.
    pub fn register(&self, fd: RawFd) -> Ticket {
        let watch = Arc::new(Watch {
            fd,
            deadline_ns: AtomicU64::new(NONE),
            fired: AtomicBool::new(false),
        });
        let mut t = self
            .inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = t.next_key;
        t.next_key += 1;
        t.watches.insert(key, Arc::clone(&watch));
        drop(t);
        Ticket {
            inner: Arc::clone(&self.inner),
            key,
            watch,
        }
    }
}

/// One registered connection; dropping it removes the entry (do so before the socket closes).
#[derive(Debug)]
pub struct Ticket {
    inner: Arc<Inner>,
    key: u64,
    watch: Arc<Watch>,
}

impl Ticket {
    /// The connection must make progress by `now + timeout`, or its read side is shut down.
    pub fn arm(&self, timeout: Duration) {
        let at = self.inner.base.elapsed().saturating_add(timeout);
        let ns = u64::try_from(at.as_nanos()).unwrap_or(NONE - 1);
        self.watch.deadline_ns.store(ns, Ordering::Release);
    }

    /// No deadline until the next [`Ticket::arm`].
    pub fn disarm(&self) {
        self.watch.deadline_ns.store(NONE, Ordering::Release);
    }

    /// Whether the deadline fired (the read side is shut down).
    pub fn fired(&self) -> bool {
        self.watch.fired()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self
            .inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        t.watches.remove(&self.key);
    }
}

fn reap(inner: &Inner) {
    while !inner.stop.load(Ordering::Acquire) {
        std::thread::park_timeout(inner.tick);
        let now_ns = u64::try_from(inner.base.elapsed().as_nanos()).unwrap_or(NONE - 1);
        let t = inner.table.lock().unwrap_or_else(PoisonError::into_inner);
        for w in t.watches.values() {
            if w.deadline_ns.load(Ordering::Acquire) <= now_ns
                && !w.fired.swap(true, Ordering::AcqRel)
            {
                // SAFETY: `w.fd` is open: its ticket is still in the table (we hold the lock), and tickets are
                // dropped before their sockets close. shutdown() on an open socket has no memory effects.
                unsafe {
                    libc::shutdown(w.fd, libc::SHUT_RD);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn an_expired_deadline_ends_the_read_and_says_so() {
        let reaper = Reaper::start(Duration::from_millis(5)).unwrap();
        let (_client, mut server) = pair();
        let ticket = reaper.handle().register(server.as_raw_fd());
        ticket.arm(Duration::from_millis(20));
        let start = Instant::now();
        let mut b = [0u8; 16];
        // Blocks until the reaper shuts the read side: then EOF.
        assert_eq!(server.read(&mut b).unwrap(), 0);
        assert!(ticket.fired());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn a_disarmed_or_rearmed_connection_is_left_alone() {
        let reaper = Reaper::start(Duration::from_millis(2)).unwrap();
        let (mut client, mut server) = pair();
        let ticket = reaper.handle().register(server.as_raw_fd());
        ticket.arm(Duration::from_millis(5));
        ticket.disarm();
        std::thread::sleep(Duration::from_millis(30));
        assert!(!ticket.fired());
        ticket.arm(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!ticket.fired());
        std::io::Write::write_all(&mut client, b"x").unwrap();
        let mut b = [0u8; 1];
        assert_eq!(server.read(&mut b).unwrap(), 1);
    }

    #[test]
    fn a_dropped_ticket_leaves_the_table() {
        let reaper = Reaper::start(Duration::from_millis(2)).unwrap();
        let (_c, server) = pair();
        let ticket = reaper.handle().register(server.as_raw_fd());
        assert_eq!(reaper.inner.table.lock().unwrap().watches.len(), 1);
        drop(ticket);
        assert_eq!(reaper.inner.table.lock().unwrap().watches.len(), 0);
    }
}
