//! The disk tier: a byte-bounded, log-structured object cache that takes what the memory tier evicts.
//!
//! # Layout
//! Records (`format.rs`: a 24-byte header with the key, the lengths and a CRC32C, then the caller's metadata, then
//! the body) are appended to segment files of `segment_bytes` (64 MiB by default) named `cdn-disk-<id>.seg`. An
//! in-memory index maps each key to `(segment, offset, length)` plus its metadata. When the next record would push
//! the segments' total over `capacity_bytes` (or the index over `max_entries` / `max_meta_total_bytes`), the
//! *oldest whole segment* is dropped with every key that points into it: FIFO eviction by segment. This is the
//! classic design of flash and disk caches (Fatcache, the log-structured large-object cache of CacheLib/Navy,
//! Kangaroo's log): appends are sequential, eviction is one `unlink` with no fragmentation and no compaction, and
//! a disk tier behind a good memory policy (S3-FIFO here) gains little from a smarter one. Overwrites and removals
//! only update the index; the dead bytes go with their segment.
//!
//! # Never blocking the request path
//! [`DiskTier::put`] copies nothing but the metadata: it records the object as *pending* in the index (served from
//! memory until written) and queues a job on a bounded channel (`queue_capacity` jobs, `max_queue_bytes` bytes) for
//! one writer thread. When the queue is full the object is dropped and counted (`cdn_disk_dropped_writes_total`):
//! a cache may lose entries, it must never stall or corrupt. [`DiskTier::get`] answers misses and pending hits from
//! memory and reads records with `pread` on `tokio::task::spawn_blocking`, at most `max_concurrent_reads` at once;
//! past that a read is a miss (`cdn_disk_busy_reads_total`): the object is fetched upstream instead of queueing
//! behind a slow disk.
//!
//! # Integrity
//! Every read checks magic, version, lengths, key and CRC32C against the index; anything wrong is a miss, counted
//! in `cdn_disk_corrupt_reads_total`, and the key is dropped. Wrong bytes are never served. I/O errors are counted
//! (`cdn_disk_io_errors_total`, last message in [`DiskStats::last_io_error`]) and turn into misses or dropped writes;
//! nothing in this module panics on I/O.
//!
//! # Restart: always cold
//! [`DiskTier::open`] deletes the segment files a previous process left and starts empty; shutdown deletes them
//! too. Reasons: (1) a purge acknowledged by the cache must never be undone, and with a cold start an index removal
//! is all it takes: no tombstones, no `fsync` on the purge path, nothing a crash can resurrect; (2) purges issued
//! while the process was down (to the shield, or by an operator) could not be applied to an old segment anyway;
//! (3) the memory tier starts cold too, and an edge refills from its shield in minutes. Nothing is ever `fsync`ed
//! for the same reason: within one process the page cache serves what was written, and across a crash nothing is
//! read back. (A warm restart would scan the segments, checking CRCs, and need a durable tombstone per purge before
//! acknowledging it; this tier does neither.)
//!
//! # Purge guarantee
//! After [`DiskTier::remove`] or [`DiskTier::remove_if`] returns, no `get` or `take` that *starts* later returns
//! the removed object: the index entry is gone, a write of it still in the queue or in flight is not indexed (each
//! `put` carries a ticket that the writer checks before indexing), and segment files are never reused (ids only
//! grow), so a stale location can never read another record. A `get` that looked the key up before the removal may
//! still complete with the old object (it is ordered before the purge).
//!
//! # Bounds
//! Disk bytes (`capacity_bytes`, counted as the sum of segment sizes, checked before every append), segment count
//! (`capacity_bytes / segment_bytes` at most [`MAX_SEGMENTS_PER_CAPACITY`], and a sealed segment plus the next
//! record always exceed `segment_bytes`, so fewer than twice that many files are open), index entries and their
//! metadata bytes, the queue (jobs and bytes), the object and metadata size, concurrent reads.

mod format;
mod state;
mod stats;
mod writer;

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;

pub use format::HEADER_BYTES;
use state::{Job, Slot, State};
use stats::Stats;

/// Segment file names start with this (followed by a 16-digit hex id).
pub const SEGMENT_PREFIX: &str = "cdn-disk-";
/// Segment file names end with this.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Smallest allowed `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest allowed `segment_bytes` (offsets in the index are 32-bit).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Default `segment_bytes`.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Most segments `capacity_bytes` may hold (`capacity_bytes / segment_bytes`). Each live segment keeps a file
/// descriptor open, and at most about twice this many are live; larger caches use larger segments.
pub const MAX_SEGMENTS_PER_CAPACITY: u64 = 256;
/// Largest allowed `max_meta_bytes` (the header stores it in 16 bits).
pub const MAX_META_LIMIT_BYTES: usize = u16::MAX as usize;
/// Default `max_meta_bytes`: room for an encoded policy and a long cache key.
pub const DEFAULT_MAX_META_BYTES: usize = 4096;
/// Default upper bound on `max_object_bytes` chosen by [`DiskConfig::new`].
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 16 << 20;
/// Largest allowed `max_entries`.
pub const MAX_ENTRIES_LIMIT: usize = 64 << 20;
/// Default `max_entries` (about 100 bytes of memory each, plus the metadata).
pub const DEFAULT_MAX_ENTRIES: usize = 1 << 20;
/// Default `max_meta_total_bytes`.
pub const DEFAULT_MAX_META_TOTAL_BYTES: u64 = 64 << 20;
/// Largest allowed `max_meta_total_bytes` and `max_queue_bytes`.
pub const MAX_MEMORY_LIMIT_BYTES: u64 = 4 << 30;
/// Largest allowed `queue_capacity`.
pub const MAX_QUEUE_CAPACITY: usize = 65_536;
/// Default `queue_capacity`.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default `max_queue_bytes`.
pub const DEFAULT_MAX_QUEUE_BYTES: u64 = 256 << 20;
/// Largest allowed `max_concurrent_reads`.
pub const MAX_CONCURRENT_READS_LIMIT: usize = 4096;
/// Default `max_concurrent_reads`.
pub const DEFAULT_MAX_CONCURRENT_READS: usize = 64;

/// Where the disk tier lives and its limits; checked once by [`DiskConfig::validate`] (called by
/// [`DiskTier::open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The segment directory (created if missing). The tier owns it: segment files found there are deleted at
    /// open, and a second tier on the same directory is refused ([`DiskError::Locked`]).
    pub dir: PathBuf,
    /// Upper bound on the sum of the segment files' sizes; at least two segments, at most
    /// [`MAX_SEGMENTS_PER_CAPACITY`].
    pub capacity_bytes: u64,
    /// Size of one segment file, between [`MIN_SEGMENT_BYTES`] and [`MAX_SEGMENT_BYTES`]; also the eviction unit.
    pub segment_bytes: u64,
    /// Largest body `put` accepts; a header, a maximal metadata blob and a maximal body must fit in one segment.
    pub max_object_bytes: u64,
    /// Largest metadata blob `put` accepts, at most [`MAX_META_LIMIT_BYTES`].
    pub max_meta_bytes: usize,
    /// Most stored (written) objects the index holds, at most [`MAX_ENTRIES_LIMIT`]; reaching it evicts the oldest
    /// segment like running out of bytes does.
    pub max_entries: usize,
    /// Most metadata bytes the index keeps in memory for stored objects (at least `max_meta_bytes`, at most
    /// [`MAX_MEMORY_LIMIT_BYTES`]); reaching it evicts the oldest segment.
    pub max_meta_total_bytes: u64,
    /// Most writes queued for the writer thread, 1..=[`MAX_QUEUE_CAPACITY`].
    pub queue_capacity: usize,
    /// Most bytes (metadata + body) queued for the writer thread: at least one maximal object, at most
    /// [`MAX_MEMORY_LIMIT_BYTES`].
    pub max_queue_bytes: u64,
    /// Most disk reads in flight from [`DiskTier::get`], 1..=[`MAX_CONCURRENT_READS_LIMIT`].
    pub max_concurrent_reads: usize,
}

impl DiskConfig {
    /// The defaults for a directory and a capacity: segments of an eighth of the capacity, between
    /// [`MIN_SEGMENT_BYTES`] and [`DEFAULT_SEGMENT_BYTES`]; objects up to [`DEFAULT_MAX_OBJECT_BYTES`] (less if a
    /// segment is smaller); the other `DEFAULT_*` constants.
    pub fn new(dir: impl Into<PathBuf>, capacity_bytes: u64) -> Self {
        let segment_bytes = (capacity_bytes / 8).clamp(MIN_SEGMENT_BYTES, DEFAULT_SEGMENT_BYTES);
        let room = segment_bytes.saturating_sub(HEADER_BYTES + DEFAULT_MAX_META_BYTES as u64);
        Self {
            dir: dir.into(),
            capacity_bytes,
            segment_bytes,
            max_object_bytes: room.min(DEFAULT_MAX_OBJECT_BYTES),
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_meta_total_bytes: DEFAULT_MAX_META_TOTAL_BYTES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_concurrent_reads: DEFAULT_MAX_CONCURRENT_READS,
        }
    }

    /// Checks every limit; the error names the field.
    pub fn validate(&self) -> Result<(), DiskError> {
        let bad = |field: &'static str, reason: String| Err(DiskError::Config { field, reason });
        if self.dir.as_os_str().is_empty() {
            return bad("dir", "is empty".into());
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(
                "segment_bytes",
                format!(
                    "{} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                    self.segment_bytes
                ),
            );
        }
        let segments = self.capacity_bytes / self.segment_bytes;
        if !(2..=MAX_SEGMENTS_PER_CAPACITY).contains(&segments) {
            return bad(
                "capacity_bytes",
                format!(
                    "{} holds {segments} segments of segment_bytes = {}, outside 2..={MAX_SEGMENTS_PER_CAPACITY} \
                     (FIFO eviction needs one segment to drop while another fills; past the upper bound, raise \
                     segment_bytes)",
                    self.capacity_bytes, self.segment_bytes
                ),
            );
        }
        if self.max_meta_bytes > MAX_META_LIMIT_BYTES {
            return bad(
                "max_meta_bytes",
                format!("{} is above {MAX_META_LIMIT_BYTES}", self.max_meta_bytes),
            );
        }
        let max_record_bytes = HEADER_BYTES
            .saturating_add(self.max_meta_bytes as u64)
            .saturating_add(self.max_object_bytes);
        if self.max_object_bytes == 0 || max_record_bytes > self.segment_bytes {
            return bad(
                "max_object_bytes",
                format!(
                    "{} must be at least 1 and a maximal record ({max_record_bytes} bytes: max_object_bytes + \
                     max_meta_bytes + {HEADER_BYTES}) must fit in segment_bytes = {}",
                    self.max_object_bytes, self.segment_bytes
                ),
            );
        }
        if !(1..=MAX_ENTRIES_LIMIT).contains(&self.max_entries) {
            return bad(
                "max_entries",
                format!("{} is outside 1..={MAX_ENTRIES_LIMIT}", self.max_entries),
            );
        }
        if !(self.max_meta_bytes as u64..=MAX_MEMORY_LIMIT_BYTES)
            .contains(&self.max_meta_total_bytes)
        {
            return bad(
                "max_meta_total_bytes",
                format!(
                    "{} is outside max_meta_bytes..={MAX_MEMORY_LIMIT_BYTES} ({}..={MAX_MEMORY_LIMIT_BYTES})",
                    self.max_meta_total_bytes, self.max_meta_bytes
                ),
            );
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity) {
            return bad(
                "queue_capacity",
                format!(
                    "{} is outside 1..={MAX_QUEUE_CAPACITY}",
                    self.queue_capacity
                ),
            );
        }
        let max_pending_bytes = self.max_object_bytes + self.max_meta_bytes as u64;
        if !(max_pending_bytes..=MAX_MEMORY_LIMIT_BYTES).contains(&self.max_queue_bytes) {
            return bad(
                "max_queue_bytes",
                format!(
                    "{} is outside {max_pending_bytes}..={MAX_MEMORY_LIMIT_BYTES} (at least one maximal object and \
                     its metadata)",
                    self.max_queue_bytes
                ),
            );
        }
        if !(1..=MAX_CONCURRENT_READS_LIMIT).contains(&self.max_concurrent_reads) {
            return bad(
                "max_concurrent_reads",
                format!(
                    "{} is outside 1..={MAX_CONCURRENT_READS_LIMIT}",
                    self.max_concurrent_reads
                ),
            );
        }
        Ok(())
    }
}

/// Everything the disk tier can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The configuration breaks a limit.
    #[error("invalid disk tier configuration: {field}: {reason}")]
    Config {
        /// The field at fault.
        field: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// A file system operation failed while opening the tier.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation (`"create directory"`, `"remove old segment"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another disk tier (in this or another process) holds the directory.
    #[error("disk tier directory {} is in use by another disk tier", path.display())]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// `put` refused a body larger than `max_object_bytes`.
    #[error("object of {size_bytes} bytes is larger than max_object_bytes = {max_bytes}")]
    ObjectTooLarge {
        /// The body's size.
        size_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// `put` refused metadata larger than `max_meta_bytes`.
    #[error("metadata of {size_bytes} bytes is larger than max_meta_bytes = {max_bytes}")]
    MetaTooLarge {
        /// The metadata's size.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// `put` dropped the object because the writer's queue is full (jobs or bytes); counted in
    /// `cdn_disk_dropped_writes_total`.
    #[error("disk tier write queue is full, object dropped")]
    QueueFull,
    /// The tier is closing or its writer thread has stopped; nothing more is written.
    #[error("disk tier is stopped")]
    Stopped,
}

/// A disk-tier hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskHit {
    /// The metadata given to `put`.
    pub meta: Bytes,
    /// The body given to `put`, as one buffer.
    pub body: Bytes,
}

/// A snapshot of one tier's counters and sizes (the same figures as its `cdn_disk_*` metrics, but per tier).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Lookups that returned an object.
    pub hits: u64,
    /// Lookups that returned nothing (absent, corrupt, busy or failed).
    pub misses: u64,
    /// Records written.
    pub writes: u64,
    /// Objects not written: refused (too large), queue full, tier stopped, or the write failed.
    pub dropped_writes: u64,
    /// Records rejected on read (checksum, key or length mismatch).
    pub corrupt_reads: u64,
    /// Segments dropped to make room.
    pub evicted_segments: u64,
    /// I/O errors (reads, writes, segment creation and removal).
    pub io_errors: u64,
    /// Reads refused because `max_concurrent_reads` were in flight.
    pub busy_reads: u64,
    /// Sum of the segment files' sizes.
    pub used_bytes: u64,
    /// Objects written and indexed.
    pub stored_entries: usize,
    /// Objects queued for the writer.
    pub pending_entries: usize,
    /// Bytes queued for the writer.
    pub pending_bytes: u64,
    /// Live segment files.
    pub segments: usize,
    /// The last I/O error's message.
    pub last_io_error: Option<String>,
}

/// State shared by the handles and the writer thread.
#[derive(Debug)]
struct Shared {
    cfg: DiskConfig,
    state: Mutex<State>,
    /// Held by the writer while it runs a job, and by [`WritesPaused`].
    gate: Mutex<()>,
    /// Set when the last handle goes or `close` is called: the writer drops remaining jobs.
    closing: AtomicBool,
    stats: Stats,
    /// The directory, `flock`ed for as long as anything (handles or the writer thread) uses it.
    _dir_lock: File,
}

impl Shared {
    /// Locks the index. A poisoned lock (a panic while it was held, which only a bug can cause) may have left the
    /// map and the counters disagreeing, so the index is cleared rather than trusted: a cache may always forget.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned: PoisonError<MutexGuard<'_, State>>| {
                let mut guard = poisoned.into_inner();
                guard.clear_index();
                self.state.clear_poison();
                guard
            })
    }

    fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_gauges(&self, state: &State) {
        self.stats.used_bytes.set(state.used_bytes as f64);
        self.stats
            .entries
            .set((state.stored_entries + state.pending_entries) as f64);
    }

    /// Stops accepting work; the writer drains the queue without writing and exits.
    fn shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        let tx = self.lock().tx.take();
        drop(tx);
    }

    /// Reads and checks a stored record; any failure is a miss and drops the key.
    fn read(&self, key: u64, at: DiskLoc) -> Option<DiskHit> {
        let started = Instant::now();
        let mut buf = vec![0u8; at.len_bytes as usize];
        if let Err(err) = at.file.read_exact_at(&mut buf, u64::from(at.offset)) {
            self.stats
                .io_error(format!("read segment {}: {err}", at.segment));
            return self.read_failed(key, &at);
        }
        match format::decode(&buf, key) {
            Ok((meta, body)) => {
                let record = Bytes::from(buf);
                self.stats.hits.inc();
                self.stats.record_read(started.elapsed());
                Some(DiskHit {
                    meta: record.slice(meta),
                    body: record.slice(body),
                })
            }
            Err(_) => {
                self.stats.corrupt_reads.inc();
                self.read_failed(key, &at)
            }
        }
    }

    fn read_failed(&self, key: u64, at: &DiskLoc) -> Option<DiskHit> {
        // A bad record stays bad: drop the key so later lookups miss cheaply.
        let mut state = self.lock();
        state.remove_stored_at(key, at.segment, at.offset);
        self.publish_gauges(&state);
        drop(state);
        self.stats.misses.inc();
        None
    }
}

/// Where a stored record is, with its file (cloned out of the index so the read happens without the lock).
#[derive(Debug)]
struct DiskLoc {
    file: Arc<File>,
    segment: u64,
    offset: u32,
    len_bytes: u32,
}

/// What a lookup found in the index.
enum Found {
    Miss,
    /// A pending object, served from memory.
    Memory(Bytes, Box<[Bytes]>),
    Disk(DiskLoc),
}

/// The handles' common part; dropping the last one stops the writer.
#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reads: Arc<tokio::sync::Semaphore>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Not joined here: this may run on an async worker, and the writer needs at most one in-flight write to
        // notice. The directory lock stays held (by the writer's `Arc<Shared>`) until it has exited.
        self.shared.shutdown();
    }
}

/// The disk tier. Cheap to clone (all clones share one tier); every method takes `&self`.
#[derive(Debug, Clone)]
pub struct DiskTier {
    inner: Arc<Inner>,
}

/// While this guard lives the writer thread starts no new job: puts keep queueing until the queue is full and are
/// then dropped. For tests that need a full queue, and for keeping the disk quiet while the host is measured.
#[derive(Debug)]
#[must_use = "writes resume as soon as the guard is dropped"]
pub struct WritesPaused<'a> {
    _gate: MutexGuard<'a, ()>,
}

impl DiskTier {
    /// Validates `cfg`, creates and locks the directory, deletes segments left by an earlier run (the tier always
    /// starts cold, see the module docs) and starts the writer thread.
    pub fn open(cfg: DiskConfig) -> Result<Self, DiskError> {
        cfg.validate()?;
        fs::create_dir_all(&cfg.dir).map_err(io_err("create directory", &cfg.dir))?;
        let dir_lock = File::open(&cfg.dir).map_err(io_err("open directory", &cfg.dir))?;
        lock_dir(&dir_lock, &cfg.dir)?;
        remove_old_segments(&cfg.dir)?;

        let (tx, rx) = mpsc::sync_channel(cfg.queue_capacity);
        let reads = Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_reads));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(tx)),
            gate: Mutex::new(()),
            closing: AtomicBool::new(false),
            stats: Stats::new(),
            _dir_lock: dir_lock,
            cfg,
        });
        let for_writer = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("cdn-disk-writer".into())
            .spawn(move || writer::run(for_writer, rx))
            .map_err(io_err("spawn writer thread for", &shared.cfg.dir))?;
        shared.publish_gauges(&shared.lock());
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(handle)),
                reads,
            }),
        })
    }

    /// The configuration the tier was opened with.
    pub fn config(&self) -> &DiskConfig {
        &self.inner.shared.cfg
    }

    /// Queues an object (typically one the memory tier just evicted) for writing; never blocks on I/O.
    ///
    /// `body` is the object's chunks (`&[bytes]` for one buffer); they are reference-counted, not copied, until the
    /// writer has written them. The object replaces any earlier one under `key` at once (a stale version is never
    /// served after a newer `put`, even if the newer one is then dropped). Until written it is served from memory.
    /// Errors say why it was not accepted; all of them are normal for a cache, and the caller may ignore them.
    pub fn put(&self, key: u64, meta: &[u8], body: &[Bytes]) -> Result<(), DiskError> {
        let shared = &self.inner.shared;
        let cfg = &shared.cfg;
        let body_len: u64 = body.iter().map(|b| b.len() as u64).sum();
        let refused = if body_len > cfg.max_object_bytes {
            Some(DiskError::ObjectTooLarge {
                size_bytes: body_len,
                max_bytes: cfg.max_object_bytes,
            })
        } else if meta.len() > cfg.max_meta_bytes {
            Some(DiskError::MetaTooLarge {
                size_bytes: meta.len(),
                max_bytes: cfg.max_meta_bytes,
            })
        } else {
            None
        };
        let size_bytes = body_len + meta.len() as u64;
        let mut state = shared.lock();
        // The older version goes first, whatever happens to this one.
        state.remove(key);
        let result = match refused {
            Some(err) => Err(err),
            None => enqueue(&mut state, cfg, key, meta, body, size_bytes),
        };
        shared.publish_gauges(&state);
        drop(state);
        if result.is_err() {
            shared.stats.dropped_writes.inc();
        }
        result
    }

    /// Looks a key up and leaves it stored. Misses and not-yet-written objects are answered without I/O; records
    /// are read on tokio's blocking pool (at most `max_concurrent_reads` at once, a miss beyond that). Must be
    /// called inside a tokio runtime.
    ///
    /// Promotion is the caller's choice: re-insert the hit into the memory tier and either leave the disk copy (it
    /// is replaced by the next `put` of the key and otherwise ages out with its segment) or use [`Self::take`].
    pub async fn get(&self, key: u64) -> Option<DiskHit> {
        self.lookup_async(key, false).await
    }

    /// Like [`Self::get`], but removes the key: at most one caller gets the object.
    pub async fn take(&self, key: u64) -> Option<DiskHit> {
        self.lookup_async(key, true).await
    }

    /// [`Self::get`] for synchronous callers: reads on the calling thread (which blocks on the disk).
    pub fn get_blocking(&self, key: u64) -> Option<DiskHit> {
        self.lookup_blocking(key, false)
    }

    /// [`Self::take`] for synchronous callers: reads on the calling thread (which blocks on the disk).
    pub fn take_blocking(&self, key: u64) -> Option<DiskHit> {
        self.lookup_blocking(key, true)
    }

    /// True when the key is stored or pending (no I/O, no checksum check, no hit or miss counted).
    pub fn contains(&self, key: u64) -> bool {
        self.inner.shared.lock().map.contains_key(&key)
    }

    /// Removes a key (purge); true when it was there. Once this returns, the object is never served again, see
    /// the module docs.
    pub fn remove(&self, key: u64) -> bool {
        let shared = &self.inner.shared;
        let mut state = shared.lock();
        let removed = state.remove(key);
        shared.publish_gauges(&state);
        removed
    }

    /// Removes every key (stored or pending) for which `purge(key, meta)` is true, with the metadata given to
    /// `put` (e.g. a prefix check on an encoded cache key); returns how many were removed. O(entries) under the
    /// index lock, so lookups wait for it: meant for purges, not for the request path.
    pub fn remove_if(&self, purge: impl FnMut(u64, &[u8]) -> bool) -> usize {
        let shared = &self.inner.shared;
        let mut state = shared.lock();
        let removed = state.retain(purge);
        shared.publish_gauges(&state);
        removed
    }

    /// Blocks until every `put` accepted before this call has been written (or dropped). For tests and orderly
    /// shutdowns; from async code, call it on `spawn_blocking`. Waits while a [`WritesPaused`] guard lives.
    pub fn flush(&self) -> Result<(), DiskError> {
        let tx = self.inner.shared.lock().tx.clone();
        let tx = tx.ok_or(DiskError::Stopped)?;
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        tx.send(Job::Flush(done_tx))
            .map_err(|_| DiskError::Stopped)?;
        done_rx.recv().map_err(|_| DiskError::Stopped)
    }

    /// Holds the writer thread between jobs until the guard is dropped (see [`WritesPaused`]).
    pub fn pause_writes(&self) -> WritesPaused<'_> {
        WritesPaused {
            _gate: self.inner.shared.gate(),
        }
    }

    /// The tier's counters and sizes.
    pub fn stats(&self) -> DiskStats {
        let shared = &self.inner.shared;
        let (used_bytes, stored_entries, pending_entries, pending_bytes, segments) = {
            let state = shared.lock();
            (
                state.used_bytes,
                state.stored_entries,
                state.pending_entries,
                state.pending_bytes,
                state.segments.len(),
            )
        };
        let s = &shared.stats;
        DiskStats {
            hits: s.hits.get(),
            misses: s.misses.get(),
            writes: s.writes.get(),
            dropped_writes: s.dropped_writes.get(),
            corrupt_reads: s.corrupt_reads.get(),
            evicted_segments: s.evicted_segments.get(),
            io_errors: s.io_errors.get(),
            busy_reads: s.busy_reads.get(),
            used_bytes,
            stored_entries,
            pending_entries,
            pending_bytes,
            segments,
            last_io_error: s.last_io_error(),
        }
    }

    /// Stops the tier and waits for the writer thread to exit: queued writes are dropped, the segment files are
    /// deleted and the directory is unlocked (a new tier may open it as soon as this returns, unless a reader still
    /// holds a clone of this handle). Other clones keep working as a tier that misses and refuses every write.
    /// Blocks; do not call it while a [`WritesPaused`] guard lives.
    pub fn close(self) {
        let shared = &self.inner.shared;
        shared.shutdown();
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // A writer panic has already been reported by the panic hook; there is nothing left to clean up.
            let _ = handle.join();
        }
    }

    fn find(&self, key: u64, take: bool) -> Found {
        let shared = &self.inner.shared;
        let mut state = shared.lock();
        let stored = match state.map.get(&key) {
            None => Err(Found::Miss),
            Some(Slot::Pending { meta, body, .. }) => {
                Err(Found::Memory(meta.clone(), body.clone()))
            }
            Some(Slot::Stored {
                segment,
                offset,
                len_bytes,
                ..
            }) => Ok((*segment, *offset, *len_bytes)),
        };
        let found = match stored {
            Err(found) => found,
            Ok((segment, offset, len_bytes)) => match state.segment_file(segment) {
                Some(file) => Found::Disk(DiskLoc {
                    file,
                    segment,
                    offset,
                    len_bytes,
                }),
                // Cannot happen (eviction removes a segment's keys with it); a miss, and the entry goes.
                None => {
                    state.remove(key);
                    shared.publish_gauges(&state);
                    Found::Miss
                }
            },
        };
        self.found(state, key, take, found)
    }

    /// Finishes a lookup: `take` removes what was found; counts hits from memory and misses (disk reads count
    /// their own outcome).
    fn found(&self, mut state: MutexGuard<'_, State>, key: u64, take: bool, found: Found) -> Found {
        let shared = &self.inner.shared;
        if take && !matches!(found, Found::Miss) {
            state.remove(key);
            // Only a removal changes the gauges; plain lookups leave them alone.
            shared.publish_gauges(&state);
        }
        drop(state);
        match found {
            Found::Miss => shared.stats.misses.inc(),
            Found::Memory(..) => shared.stats.hits.inc(),
            Found::Disk(_) => {}
        }
        found
    }

    fn lookup_blocking(&self, key: u64, take: bool) -> Option<DiskHit> {
        match self.find(key, take) {
            Found::Miss => None,
            Found::Memory(meta, body) => Some(memory_hit(meta, &body)),
            Found::Disk(at) => self.inner.shared.read(key, at),
        }
    }

    async fn lookup_async(&self, key: u64, take: bool) -> Option<DiskHit> {
        let at = match self.find(key, take) {
            Found::Miss => return None,
            Found::Memory(meta, body) => return Some(memory_hit(meta, &body)),
            Found::Disk(at) => at,
        };
        let shared = &self.inner.shared;
        let Ok(permit) = Arc::clone(&self.inner.reads).try_acquire_owned() else {
            shared.stats.busy_reads.inc();
            shared.stats.misses.inc();
            return None;
        };
        let for_read = Arc::clone(shared);
        let read = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            for_read.read(key, at)
        });
        // A panic in the read (a bug) is a miss, not a failed request.
        read.await.unwrap_or_else(|_| {
            shared.stats.misses.inc();
            None
        })
    }
}

/// Records a pending object and queues its write; the caller holds the index lock and has removed the key.
fn enqueue(
    state: &mut State,
    cfg: &DiskConfig,
    key: u64,
    meta: &[u8],
    body: &[Bytes],
    size_bytes: u64,
) -> Result<(), DiskError> {
    let Some(tx) = &state.tx else {
        return Err(DiskError::Stopped);
    };
    if state.pending_bytes + size_bytes > cfg.max_queue_bytes {
        return Err(DiskError::QueueFull);
    }
    let ticket = state.next_ticket;
    // Sending under the lock keeps the slot and its job in step: the writer cannot see the job before the slot.
    match tx.try_send(Job::Write { key, ticket }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => return Err(DiskError::QueueFull),
        Err(TrySendError::Disconnected(_)) => return Err(DiskError::Stopped),
    }
    state.next_ticket += 1;
    state.map.insert(
        key,
        Slot::Pending {
            ticket,
            meta: Bytes::copy_from_slice(meta),
            body: body.into(),
            size_bytes,
        },
    );
    state.pending_entries += 1;
    state.pending_bytes += size_bytes;
    Ok(())
}

/// An `Io` error builder for `map_err`.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError::Io { op, path, source }
}

/// Joins a pending object's chunks (no copy for the usual single chunk).
fn memory_hit(meta: Bytes, body: &[Bytes]) -> DiskHit {
    let body = match body {
        [] => Bytes::new(),
        [one] => one.clone(),
        parts => {
            let mut all = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                all.extend_from_slice(part);
            }
            Bytes::from(all)
        }
    };
    DiskHit { meta, body }
}

/// Takes an exclusive, non-blocking `flock` on the directory; held while the `File` lives.
fn lock_dir(dir: &File, path: &Path) -> Result<(), DiskError> {
    // SAFETY: `flock` on a file descriptor we own and keep open; it touches no memory.
    let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(DiskError::Locked {
            path: path.to_path_buf(),
        });
    }
    Err(DiskError::Io {
        op: "lock directory",
        path: path.to_path_buf(),
        source: err,
    })
}

/// Deletes the segment files an earlier run left (only names this module writes; anything else is left alone).
fn remove_old_segments(dir: &Path) -> Result<(), DiskError> {
    let entries = fs::read_dir(dir).map_err(io_err("list directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list directory", dir))?;
        let name = entry.file_name();
        let is_segment = name.to_str().is_some_and(|n| {
            n.strip_prefix(SEGMENT_PREFIX)
                .and_then(|rest| rest.strip_suffix(SEGMENT_SUFFIX))
                .is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if is_segment {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove old segment", &path))?;
        }
    }
    Ok(())
}
