//! The single writer: one OS thread owns the state machine and the log, and commits in groups.
//!
//! Why one thread: the state machine must apply operations in one order, the same order the log records, so that a
//! replay rebuilds exactly the state the clients were told about. A single owner needs no locks on the hot path.
//!
//! Group commit: the thread takes the first queued job, then everything else already queued (up to a bound), applies
//! them all, encodes their records into one buffer, does one `write` and one `fdatasync`, and only then answers each
//! job. So many requests share one disk flush, and no client ever hears about a write that is not durable. Reads go
//! through the same queue and are answered after the same flush: they never reveal a write that could still be lost.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::checkpoint;
use crate::codec::Records;
use crate::log::{CommitStats, DurablePosition, Log, hex};
use crate::metrics::LedgerMetrics;
use crate::state::State;
use crate::types::{Account, ItemResult, RecordKind, Transfer};
use crate::verify::CurrencyReport;

/// Items of a create request: the binary body as it came (decoded in place by the state machine, no copy), or
/// values decoded from JSON.
#[derive(Debug)]
pub enum Items<T> {
    /// A length-checked binary body of 128-byte records.
    Binary(bytes::Bytes),
    /// Decoded JSON items.
    Values(Vec<T>),
}

impl<T> Items<T> {
    fn len(&self) -> usize {
        match self {
            Items::Binary(b) => b.len() / crate::types::RECORD_BYTES,
            Items::Values(v) => v.len(),
        }
    }
}

/// One operation for the writer.
#[derive(Debug)]
pub enum Op {
    /// Create accounts.
    CreateAccounts(Items<Account>),
    /// Create transfers.
    CreateTransfers(Items<Transfer>),
    /// Look accounts up by id.
    LookupAccounts(Vec<u128>),
    /// Look transfers up by id.
    LookupTransfers(Vec<u128>),
    /// One page of an account's transfers.
    History {
        /// Account id.
        id: u128,
        /// Only transfers with a larger timestamp.
        after: u64,
        /// Page size.
        limit: usize,
    },
    /// Counters and the log head.
    Status,
}

/// The writer's answer.
#[derive(Debug)]
pub enum Reply {
    /// Per-item results of a create, in request order.
    Results(Vec<ItemResult>),
    /// Found accounts, in request order.
    Accounts(Vec<Account>),
    /// Found transfers, in request order.
    Transfers(Vec<Transfer>),
    /// One history page and the cursor of the next.
    History(Vec<Transfer>, Option<u64>),
    /// The status report.
    Status(Box<StatusReport>),
    /// The writer cannot serve (stopped after a storage error, or shutting down).
    Unavailable(String),
}

/// What `GET /status` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    /// Records in the log.
    pub records: u64,
    /// BLAKE3 of the last record, hex.
    pub head_hash: String,
    /// Timestamp of the last applied item, ns.
    pub last_timestamp: u64,
    /// Accounts stored.
    pub accounts: u64,
    /// Transfers stored.
    pub transfers: u64,
    /// Pending transfers not yet posted, voided or expired.
    pub pending: u64,
    /// Per-currency totals.
    pub currencies: std::collections::BTreeMap<String, CurrencyReport>,
    /// Data directory.
    pub data_dir: PathBuf,
}

/// A queued job.
#[derive(Debug)]
pub struct Job {
    /// What to do.
    pub op: Op,
    /// Where the answer goes (after the group's flush).
    pub reply: oneshot::Sender<Reply>,
    /// When it was queued (for `ledger_job_queue_seconds` and `ledger_job_durable_seconds`).
    pub queued: Instant,
}

/// How the writer batches and checkpoints.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most jobs in one group commit.
    pub max_group_jobs: usize,
    /// Most items (accounts + transfers) in one group commit.
    pub max_group_items: usize,
    /// How the gap before each flush is chosen: see [`FlushPacing`] and [`Pacer`].
    pub flush_pacing: FlushPacing,
    /// The longest gap ([`FlushPacing::Adaptive`]) or the gap ([`FlushPacing::Fixed`]).
    /// A group's flush starts no sooner than the gap after the previous group's flush ended and its answers went out
    /// (zero: back to back). Jobs that arrive in the meantime join the group; a full group (`max_group_jobs`,
    /// `max_group_items`) never waits, and a job after a quiet gap does not wait at all.
    /// Why: on a virtual or cloud disk a flush is a host-side operation with a budget, and past it the host stalls
    /// flushes (and here the whole VM) for 10–20 ms. `examples/sync_rate_probe.rs` on this host: back-to-back
    /// `fdatasync`s (3,600–5,300/s) spent 18–19 % of the time in flushes slower than 2 ms, the same flushes 1 ms
    /// apart (930/s) 0.2 %.
    /// Why from the end, not the start: clients answered by a flush send their next requests a round trip after
    /// it ended. Counted from the start, a flush slower than the pacing left no window for them, the first one
    /// to arrive was flushed alone and the rest waited a whole period (closed-loop batches of 10 fell from 123k to
    /// 79k transfers/s). Counted from the end, the window is the gap whatever the flush took.
    pub flush_gap: Duration,
    /// A checkpoint is written after this many log bytes since the last one, or after as many log bytes as the
    /// last checkpoint held if that is more (see `Writer::checkpoint_due_bytes`).
    pub checkpoint_every_bytes: u64,
    /// Data directory (checkpoints go here).
    pub data_dir: PathBuf,
    /// Write a checkpoint when stopping, for a fast restart. Off for a temporary data directory, which is removed
    /// right after: a multi-gigabyte checkpoint there only delays the stop (past a parent's grace period, which
    /// then kills the server and leaks the directory).
    pub checkpoint_on_stop: bool,
}

/// How the writer chooses the gap between flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlushPacing {
    /// Back to back while stalls are rare; when stalled flushes take a real share of the time (see
    /// [`Pacer::observe`]) the gap doubles, up to `flush_gap`, and after calm seconds it halves again. Why: the same
    /// VM's disk took 6,000–8,800 back-to-back flushes/s with 0.2 % of the time in stalls on one day and stalled 18 %
    /// of the time at 5,300/s on another; a fixed 1 ms gap that helped on the second day tripled the p99 on the first.
    Adaptive,
    /// Always `flush_gap`.
    Fixed,
}

/// A flush slower than this, plus [`SLOW_FLUSH_NS_PER_KIB`] per KiB it wrote, counts as a host stall: this host's
/// flush p99.9 is 0.2–0.7 ms when not throttled and its stalls last 10–20 ms.
const SLOW_FLUSH_BASE_NS: u64 = 2_000_000;
/// Time a large flush may take per KiB before it counts as a stall (256 MiB/s), so big batches are not mistaken
/// for stalls.
const SLOW_FLUSH_NS_PER_KIB: u64 = 4_000;
/// Stalls are weighed over windows of this length.
const PACING_WINDOW_NS: u64 = 1_000_000_000;
/// Stall time in one window that widens the gap at once: 2 % of the window. Why a share and not every stall: a
/// healthy day still has a few stalls a second at back-to-back flushes (0.2–0.3 % of the time), and answering each
/// with a gap that then decayed over thousands of flushes kept the gap near its maximum for whole runs, adding
/// up to a millisecond to every request; a throttled disk stalls 18 % of the time and crosses this in ~0.1 s.
const WIDEN_STALL_NS: u64 = PACING_WINDOW_NS / 50;
/// One flush counts at most this much stall time, so a single long host stall (tens of ms) does not widen the gap
/// alone; two of them in a window do.
const MAX_STALL_NS_PER_FLUSH: u64 = WIDEN_STALL_NS / 2;
/// A window with less stall time than this (0.5 %) is calm.
const CALM_STALL_NS: u64 = PACING_WINDOW_NS / 200;
/// After this many calm windows in a row the gap halves: a throttled disk is probed again every few seconds.
const CALM_WINDOWS_TO_NARROW: u32 = 2;
/// The first widening sets the gap to this; each further one doubles it.
const GAP_STEP_NS: u64 = 100_000;
/// A gap below this is dropped to zero.
const GAP_FLOOR_NS: u64 = 20_000;

/// The gap before the next flush, adapted to the share of time the disk spends in stalled flushes.
#[derive(Debug, Clone)]
pub struct Pacer {
    pacing: FlushPacing,
    max_gap_ns: u64,
    gap_ns: u64,
    /// Start of the current window (the first flush seen in it).
    window_start: Option<Instant>,
    /// Stall time seen in the current window (each flush's capped at [`MAX_STALL_NS_PER_FLUSH`]).
    window_stall_ns: u64,
    /// Calm windows in a row.
    calm_windows: u32,
}

impl Pacer {
    /// Adaptive pacing starts back to back; fixed pacing at `max_gap`.
    pub fn new(pacing: FlushPacing, max_gap: Duration) -> Pacer {
        let max_gap_ns = max_gap.as_nanos().min(u128::from(u64::MAX)) as u64;
        Pacer {
            pacing,
            max_gap_ns,
            gap_ns: match pacing {
                FlushPacing::Adaptive => 0,
                FlushPacing::Fixed => max_gap_ns,
            },
            window_start: None,
            window_stall_ns: 0,
            calm_windows: 0,
        }
    }

    /// The gap to leave after the previous flush ended.
    pub fn gap(&self) -> Duration {
        Duration::from_nanos(self.gap_ns)
    }

    /// Takes one flush's `fdatasync` time, the bytes it wrote and when it ended.
    pub fn observe(&mut self, fsync_ns: u64, bytes: u64, ended: Instant) {
        if self.pacing == FlushPacing::Fixed {
            return;
        }
        let slow_ns =
            SLOW_FLUSH_BASE_NS.saturating_add((bytes / 1024).saturating_mul(SLOW_FLUSH_NS_PER_KIB));
        if fsync_ns > slow_ns {
            self.window_stall_ns += fsync_ns.min(MAX_STALL_NS_PER_FLUSH);
        }
        let start = *self.window_start.get_or_insert(ended);
        if self.window_stall_ns >= WIDEN_STALL_NS {
            self.gap_ns = self
                .gap_ns
                .saturating_mul(2)
                .max(GAP_STEP_NS)
                .min(self.max_gap_ns);
            self.calm_windows = 0;
            self.next_window(ended);
        } else if ended.saturating_duration_since(start).as_nanos() >= u128::from(PACING_WINDOW_NS)
        {
            if self.window_stall_ns < CALM_STALL_NS {
                self.calm_windows += 1;
                if self.calm_windows >= CALM_WINDOWS_TO_NARROW {
                    self.calm_windows = 0;
                    self.gap_ns /= 2;
                    if self.gap_ns < GAP_FLOOR_NS {
                        self.gap_ns = 0;
                    }
                }
            } else {
                self.calm_windows = 0;
            }
            self.next_window(ended);
        }
        debug_assert!(self.gap_ns <= self.max_gap_ns);
    }

    fn next_window(&mut self, at: Instant) {
        self.window_start = Some(at);
        self.window_stall_ns = 0;
    }
}

/// Handles shared with the HTTP side.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: SyncSender<Job>,
    /// The end of the durable log (the verifier reads up to it while the writer appends).
    pub durable: Arc<Mutex<DurablePosition>>,
    /// Set when the writer stopped for good (storage error): writes are refused.
    pub failed: Arc<AtomicBool>,
}

/// Why a job could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The bounded queue is full: answer 503 so the client backs off.
    Full,
    /// The writer has stopped.
    Stopped,
}

impl WriterHandle {
    /// The end of the durable log right now.
    pub fn durable_position(&self) -> DurablePosition {
        *self.durable.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `op`; the receiver yields the answer after the group's flush.
    pub fn submit(&self, op: Op) -> Result<oneshot::Receiver<Reply>, SubmitError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(SubmitError::Stopped);
        }
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job {
            op,
            reply,
            queued: Instant::now(),
        }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }
}

/// Wall clock in ns since the Unix epoch; the state machine keeps timestamps strictly increasing on top.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A checkpoint's state is encoded and written in pieces of this size (see `FrozenState::encode_pieces`).
const CHECKPOINT_PIECE_BYTES: usize = 4 << 20;

/// Longest the writer sleeps with an empty queue: pending-transfer expiry is checked at least this often.
const IDLE_WAKE: Duration = Duration::from_millis(250);

/// Starts the writer thread over a recovered `state` and `log`; `queue` bounds the jobs waiting for it.
pub fn spawn(
    state: State,
    log: Log,
    config: WriterConfig,
    queue: usize,
    metrics: LedgerMetrics,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(queue);
    let durable = Arc::new(Mutex::new(log.durable_position()));
    let failed = Arc::new(AtomicBool::new(false));
    let handle = WriterHandle {
        tx,
        durable: durable.clone(),
        failed: failed.clone(),
    };
    let last_snapshot_bytes = state.snapshot_len() as u64;
    let pacer = Pacer::new(config.flush_pacing, config.flush_gap);
    let mut w = Writer {
        pacer,
        state,
        log,
        config,
        metrics,
        durable,
        failed,
        bytes_since_checkpoint: 0,
        checkpoint_due_bytes: 0,
        checkpointer: None,
        payload: Vec::with_capacity(1 << 20),
    };
    w.checkpoint_due_bytes = w.config.checkpoint_every_bytes.max(last_snapshot_bytes);
    let join = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || w.run(rx))?;
    Ok((handle, join))
}

struct Writer {
    state: State,
    log: Log,
    config: WriterConfig,
    metrics: LedgerMetrics,
    durable: Arc<Mutex<DurablePosition>>,
    failed: Arc<AtomicBool>,
    bytes_since_checkpoint: u64,
    /// Log bytes after which the next checkpoint is due: `checkpoint_every_bytes`, or the size of the last
    /// checkpoint if larger. Why the second term: every checkpoint rewrites the whole state, so with a fixed
    /// interval the checkpoint bytes grow with the square of the log (at 12 M transfers a 1.5 GB snapshot every
    /// 256 MiB of log took the disk bandwidth and the core the log needed: batch-1000 throughput fell by half).
    /// Waiting for as many log bytes as the last snapshot keeps checkpoint writes at most equal to log writes,
    /// and restart work (load the checkpoint, replay the log after it) at most about twice the state size.
    checkpoint_due_bytes: u64,
    /// At most one checkpoint is being written at a time (bounded: the next waits for it).
    checkpointer: Option<std::thread::JoinHandle<Result<PathBuf, checkpoint::CheckpointError>>>,
    payload: Vec<u8>,
    pacer: Pacer,
}

/// The group being gathered: jobs applied in arrival order, their answers held until the group is durable.
struct Group {
    jobs: Vec<Job>,
    replies: Vec<Reply>,
    /// Items of the applied jobs (bounded by `max_group_items`).
    items: usize,
    /// The group's wall-clock time, ns: every item applied in it is timestamped from it.
    now: u64,
    /// Time spent applying (expiries included), ns.
    apply_ns: u64,
    /// The first failure to append to the log's pending buffer; the group then fails as a flush would.
    push_error: Option<crate::log::LogError>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Job>) {
        let mut group = Group {
            jobs: Vec::with_capacity(self.config.max_group_jobs),
            replies: Vec::with_capacity(self.config.max_group_jobs),
            items: 0,
            now: 0,
            apply_ns: 0,
            push_error: None,
        };
        // When the previous group's flush ended and its answers were sent.
        let mut last_flush: Option<Instant> = None;
        let mut closed = false;
        while !closed {
            let wait = self
                .state
                .next_expiry_ns()
                .map(|at| Duration::from_nanos(at.saturating_sub(now_ns())).min(IDLE_WAKE))
                .unwrap_or(IDLE_WAKE);
            let first = match rx.recv_timeout(wait) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.begin(&mut group);
            if let Some(job) = first {
                self.apply(&mut group, job);
            }
            while self.has_room(&group) {
                match rx.try_recv() {
                    Ok(job) => self.apply(&mut group, job),
                    Err(_) => break,
                }
            }
            // Any group with requests is paced, also one found queued when the idle or expiry timer woke the writer;
            // an expiry-only group is not (nobody waits for it).
            let paced = !group.jobs.is_empty();
            // Pace the flushes (see `WriterConfig::flush_gap`): a group with room waits until the gap has passed
            // since the previous flush ended, applying what arrives meanwhile, so the wait overlaps useful work
            // and only the write and the flush are left when it ends.
            if let Some(previous) = last_flush
                && paced
            {
                let due = previous + self.pacer.gap();
                while self.has_room(&group) {
                    let Some(left) = due.checked_duration_since(Instant::now()) else {
                        break;
                    };
                    match rx.recv_timeout(left) {
                        Ok(job) => self.apply(&mut group, job),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if !self.finish(&mut group) {
                // Storage failure: what is still queued is refused below, the same way.
                break;
            }
            if paced {
                last_flush = Some(Instant::now());
            }
        }
        // Drain what is still queued (the HTTP side stopped sending), then leave a checkpoint for a fast restart.
        let rest: Vec<Job> = rx.try_iter().collect();
        if !rest.is_empty() {
            self.begin(&mut group);
            for job in rest {
                self.apply(&mut group, job);
            }
            self.finish(&mut group);
        }
        if self.config.checkpoint_on_stop
            && !self.failed.load(Ordering::Acquire)
            && self.bytes_since_checkpoint > 0
        {
            self.checkpoint();
        }
        self.stop();
    }

    /// Waits for the checkpoint in flight, if any (the writer is stopping).
    fn stop(&mut self) {
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
    }

    fn has_room(&self, group: &Group) -> bool {
        group.jobs.len() < self.config.max_group_jobs && group.items < self.config.max_group_items
    }

    /// Starts a group: its timestamp, and the expiries due by it (recorded first, so replay expires them first).
    fn begin(&mut self, group: &mut Group) {
        debug_assert!(group.jobs.is_empty() && group.replies.is_empty());
        let started = Instant::now();
        group.items = 0;
        group.now = now_ns();
        group.push_error = None;
        self.payload.clear();
        let expired = self.state.expire(group.now, &mut self.payload);
        if expired > 0 {
            // However many expire at once, each record stays within the log's payload limit.
            for chunk in self.payload.chunks(crate::server::MAX_RECORD_PAYLOAD_BYTES) {
                if let Err(e) = self.log.push(RecordKind::Expiries as u16, group.now, chunk) {
                    group.push_error.get_or_insert(e);
                }
            }
            self.metrics.expired.increment(expired as u64);
        }
        group.apply_ns = started.elapsed().as_nanos() as u64;
    }

    /// Applies one job to the state and appends its records to the log's pending buffer; its answer is held until
    /// the group is durable.
    fn apply(&mut self, group: &mut Group, job: Job) {
        let started = Instant::now();
        self.metrics
            .job_queue_seconds
            .record(started.saturating_duration_since(job.queued).as_secs_f64());
        let now = group.now;
        group.items += op_items(&job.op);
        let reply = match &job.op {
            Op::CreateAccounts(items) => {
                self.payload.clear();
                let r = match items {
                    Items::Binary(b) => match Records::new(b) {
                        Ok(recs) => {
                            self.state
                                .create_accounts_records(recs, now, &mut self.payload)
                        }
                        Err(e) => unreachable!("the API checked the length: {e}"),
                    },
                    Items::Values(v) => self.state.create_accounts(v, now, &mut self.payload),
                };
                self.logged(group, RecordKind::Accounts, r)
            }
            Op::CreateTransfers(items) => {
                self.payload.clear();
                let r = match items {
                    Items::Binary(b) => match Records::new(b) {
                        Ok(recs) => {
                            self.state
                                .create_transfers_records(recs, now, &mut self.payload)
                        }
                        Err(e) => unreachable!("the API checked the length: {e}"),
                    },
                    Items::Values(v) => self.state.create_transfers(v, now, &mut self.payload),
                };
                self.logged(group, RecordKind::Transfers, r)
            }
            Op::LookupAccounts(ids) => Reply::Accounts(
                ids.iter()
                    .filter_map(|id| self.state.account(*id))
                    .collect(),
            ),
            Op::LookupTransfers(ids) => Reply::Transfers(
                ids.iter()
                    .filter_map(|id| self.state.transfer(*id))
                    .collect(),
            ),
            Op::History { id, after, limit } => {
                let (page, next) = self.state.account_transfers(*id, *after, *limit);
                Reply::History(page, next)
            }
            Op::Status => Reply::Status(Box::new(self.status())),
        };
        group.jobs.push(job);
        group.replies.push(reply);
        group.apply_ns += started.elapsed().as_nanos() as u64;
    }

    /// Appends what a create applied (in `payload`) to the log as one `kind` record, counts its results, and
    /// makes its answer.
    fn logged(&mut self, group: &mut Group, kind: RecordKind, results: Vec<ItemResult>) -> Reply {
        if !self.payload.is_empty()
            && let Err(e) = self.log.push(kind as u16, group.now, &self.payload)
        {
            group.push_error.get_or_insert(e);
        }
        self.metrics.count_results(kind, &results);
        Reply::Results(results)
    }

    /// Writes and flushes the group, then answers every job. Returns false when the writer must stop (storage
    /// failure).
    fn finish(&mut self, group: &mut Group) -> bool {
        let commit = match group.push_error.take() {
            // The state applied what the log could not take: same as a failed flush, the state is ahead of the disk.
            Some(e) => Err(e),
            None => self.log.commit(),
        };
        match commit {
            Ok(stats) => self.committed(&stats, group.jobs.len(), group.apply_ns),
            Err(e) => {
                // A failed flush leaves the state ahead of the disk; the only safe way on is a restart that
                // recovers from the log. Every job of this group, and every later one, is refused.
                eprintln!("ledger-writer: storage failure, refusing all further writes: {e}");
                self.failed.store(true, Ordering::Release);
                group.replies.clear();
                for job in group.jobs.drain(..) {
                    let _ = job
                        .reply
                        .send(Reply::Unavailable(format!("storage failure: {e}")));
                }
                return false;
            }
        }
        let durable = Instant::now();
        for (job, reply) in group.jobs.drain(..).zip(group.replies.drain(..)) {
            self.metrics
                .job_durable_seconds
                .record(durable.saturating_duration_since(job.queued).as_secs_f64());
            // A client that went away does not matter: its write is durable either way.
            let _ = job.reply.send(reply);
        }
        if self.bytes_since_checkpoint >= self.checkpoint_due_bytes {
            self.checkpoint();
        }
        true
    }

    fn committed(&mut self, stats: &CommitStats, jobs: usize, applied_ns: u64) {
        *self.durable.lock().unwrap_or_else(PoisonError::into_inner) = self.log.durable_position();
        self.bytes_since_checkpoint += stats.bytes;
        if stats.records > 0 {
            self.pacer
                .observe(stats.fsync_ns, stats.bytes, Instant::now());
            self.metrics
                .flush_gap_seconds
                .set(self.pacer.gap().as_secs_f64());
        }
        self.metrics.observe_commit(stats, jobs, applied_ns);
    }

    fn checkpoint(&mut self) {
        // One checkpoint in flight at most; the snapshot is taken here (consistent with the log head) and written
        // by a helper thread so the flush path does not wait for a large file.
        if let Some(h) = self.checkpointer.take() {
            match h.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("ledger-writer: checkpoint failed (the log is intact): {e}")
                }
                Err(_) => eprintln!("ledger-writer: checkpoint thread panicked"),
            }
        }
        let (next_seq, head_hash) = self.log.head();
        if next_seq == 0 {
            return;
        }
        // Only a consistent copy is taken here (shared chunks plus a few megabytes of copies); encoding and
        // writing happen on the checkpoint thread, so the flush path does not stall for seconds at large states.
        let started = Instant::now();
        let frozen = self.state.freeze();
        self.metrics
            .snapshot_seconds
            .record(started.elapsed().as_secs_f64());
        let snapshot_bytes = frozen.encoded_len() as u64;
        self.checkpoint_due_bytes = self.config.checkpoint_every_bytes.max(snapshot_bytes);
        let dir = self.config.data_dir.clone();
        let counter = self.metrics.checkpoints.clone();
        self.bytes_since_checkpoint = 0;
        self.checkpointer = std::thread::Builder::new()
            .name("ledger-checkpoint".into())
            .spawn(move || {
                let mut frozen = frozen;
                let r = checkpoint::write_streamed(
                    &dir,
                    next_seq - 1,
                    head_hash,
                    snapshot_bytes,
                    &mut |sink| frozen.encode_pieces(CHECKPOINT_PIECE_BYTES, sink),
                );
                if r.is_ok() {
                    counter.increment(1);
                }
                r
            })
            .ok();
    }

    fn status(&self) -> StatusReport {
        let (records, head) = self.log.head();
        let counts = self.state.counts();
        StatusReport {
            records,
            head_hash: hex(&head),
            last_timestamp: self.state.last_timestamp(),
            accounts: counts.accounts as u64,
            transfers: counts.transfers as u64,
            pending: counts.pending as u64,
            currencies: self
                .state
                .totals()
                .into_iter()
                .map(|(c, t)| {
                    (
                        crate::types::currency_to_string(c).unwrap_or_else(|| c.to_string()),
                        CurrencyReport::from_totals(&t),
                    )
                })
                .collect(),
            data_dir: self.config.data_dir.clone(),
        }
    }
}

fn op_items(op: &Op) -> usize {
    match op {
        Op::CreateAccounts(v) => v.len(),
        Op::CreateTransfers(v) => v.len(),
        Op::LookupAccounts(v) | Op::LookupTransfers(v) => v.len(),
        Op::History { limit, .. } => *limit,
        Op::Status => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{DamagePolicy, open_ledger};
    use crate::state::Limits;

    fn writer(
        dir: &std::path::Path,
        max_group_jobs: usize,
        interval: Duration,
    ) -> (WriterHandle, std::thread::JoinHandle<()>) {
        let limits = Limits {
            max_accounts: 16,
            max_transfers: 16,
        };
        let rec =
            open_ledger(dir, 1 << 20, 64 << 10, DamagePolicy::Refuse, limits).expect("open ledger");
        let cfg = WriterConfig {
            max_group_jobs,
            max_group_items: 1 << 16,
            flush_pacing: FlushPacing::Fixed,
            flush_gap: interval,
            checkpoint_every_bytes: 1 << 30,
            data_dir: dir.to_path_buf(),
            checkpoint_on_stop: false,
        };
        spawn(rec.state, rec.log, cfg, 64, LedgerMetrics::new()).expect("spawn writer")
    }

    fn status(w: &WriterHandle) -> Reply {
        w.submit(Op::Status)
            .expect("queued")
            .blocking_recv()
            .expect("answered")
    }

    /// A group with room is not flushed before the gap has passed since the previous flush ended, and the jobs
    /// that arrive meanwhile share its flush.
    #[test]
    fn flushes_are_paced_and_late_jobs_join_the_waiting_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let interval = Duration::from_secs(1);
        let (w, join) = writer(dir.path(), 1024, interval);
        let first_sent = Instant::now();
        assert!(matches!(status(&w), Reply::Status(_)));
        // The first flush ended after `first_sent`; these may not be flushed before it plus the gap.
        let queued: Vec<_> = (0..3)
            .map(|_| w.submit(Op::Status).expect("queued"))
            .collect();
        for rx in queued {
            assert!(matches!(rx.blocking_recv(), Ok(Reply::Status(_))));
            assert!(
                first_sent.elapsed() >= interval,
                "answered {:?} after the first request, before the {interval:?} gap",
                first_sent.elapsed()
            );
        }
        // Each in its own paced flush, the last answer would come 3 gaps after the first request.
        assert!(
            first_sent.elapsed() < interval * 3 - Duration::from_millis(100),
            "the waiting jobs did not share one flush: {:?}",
            first_sent.elapsed()
        );
        drop(w);
        join.join().expect("writer thread");
    }

    /// Adaptive pacing stays back to back through isolated stalls (and big flushes), widens when stalls take a
    /// real share of the time, and narrows again after calm seconds; fixed pacing ignores what it sees.
    #[test]
    fn adaptive_gap_widens_on_a_share_of_stalls_and_narrows_when_calm() {
        let max = Duration::from_micros(1000);
        let mut p = Pacer::new(FlushPacing::Adaptive, max);
        let mut now = Instant::now();
        /// `n` flushes of `fsync` each, `every` apart; the gap (µs) after them.
        fn feed(
            p: &mut Pacer,
            now: &mut Instant,
            n: usize,
            fsync: Duration,
            every: Duration,
        ) -> u128 {
            for _ in 0..n {
                *now += every;
                p.observe(fsync.as_nanos() as u64, 4096, *now);
            }
            p.gap().as_micros()
        }
        let fast = Duration::from_micros(150);
        let stall = Duration::from_millis(15);
        assert_eq!(
            feed(&mut p, &mut now, 50_000, fast, Duration::from_micros(200)),
            0
        );
        // A healthy day: a 15 ms stall every 6,000 flushes (5,000/s: 1.25 % of the time, counted 0.8 %).
        for _ in 0..20 {
            assert_eq!(
                feed(&mut p, &mut now, 5_999, fast, Duration::from_micros(200)),
                0
            );
            assert_eq!(
                feed(&mut p, &mut now, 1, stall, Duration::from_micros(200)),
                0
            );
        }
        // A flush of 8 MiB in 30 ms is the disk's bandwidth, not a stall.
        p.observe(30_000_000, 8 << 20, now);
        assert_eq!(p.gap(), Duration::ZERO);
        // A throttled disk: one stall every 50 flushes (about 60 % of the time) doubles the gap at every second
        // stall (10 ms counted each), up to the limit.
        let widened: Vec<u128> = (0..6)
            .map(|_| {
                feed(&mut p, &mut now, 49, fast, Duration::from_micros(200));
                feed(&mut p, &mut now, 1, stall, Duration::from_micros(200))
            })
            .collect();
        assert_eq!(widened, [0, 100, 100, 200, 200, 400]);
        assert_eq!(
            feed(&mut p, &mut now, 1_000, stall, Duration::from_millis(1)),
            1000
        );
        // Calm: it halves every two calm seconds, and ends at zero.
        let ms = Duration::from_millis(1);
        assert_eq!(
            feed(&mut p, &mut now, 1_000, fast, ms),
            1000,
            "the window with the stalls is not calm"
        );
        let narrowing: Vec<u128> = (0..7)
            .map(|_| feed(&mut p, &mut now, 2_000, fast, ms))
            .collect();
        assert_eq!(narrowing, [500, 250, 125, 62, 31, 0, 0]);

        let mut fixed = Pacer::new(FlushPacing::Fixed, max);
        fixed.observe(300_000, 4096, now);
        fixed.observe(15_000_000, 4096, now);
        assert_eq!(fixed.gap(), max);
    }

    /// A full group does not wait for the gap.
    #[test]
    fn a_full_group_is_flushed_without_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let interval = Duration::from_secs(30);
        let (w, join) = writer(dir.path(), 1, interval);
        let started = Instant::now();
        for _ in 0..3 {
            assert!(matches!(status(&w), Reply::Status(_)));
        }
        // Paced, the third answer would come after 60 s; the bound leaves room for a slow shared host.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "full groups waited: {:?}",
            started.elapsed()
        );
        drop(w);
        join.join().expect("writer thread");
    }
}
