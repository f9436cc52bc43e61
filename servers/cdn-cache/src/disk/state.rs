//! The shared in-memory index (key → slot), the segment list and all byte and entry accounting, behind one `Mutex`.
//!
//! Critical sections are hash-map operations and counter updates: no I/O ever happens while the lock is held (the
//! writer reserves space under the lock and writes after releasing it; readers clone the segment's `Arc<File>` and
//! read after releasing it). The one O(n) operation is [`State::retain`] (predicate purge), which is rare.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use bytes::Bytes;

/// What the index holds for a key.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Accepted by `put`, queued for the writer; served from memory until written.
    Pending {
        /// Identifies this `put`: the writer indexes its record only if the slot still holds the same ticket, so a
        /// `remove` (or a newer `put`) that happens while the record is being written wins.
        ticket: u64,
        /// The caller's metadata.
        meta: Bytes,
        /// The body, as the caller's chunks (reference-counted, not copied).
        body: Box<[Bytes]>,
        /// Metadata plus body bytes, counted against the queue's byte bound.
        size_bytes: u64,
    },
    /// Written: the record's place on disk.
    Stored {
        /// Segment id.
        segment: u64,
        /// Offset of the record in the segment (segments are at most 1 GiB).
        offset: u32,
        /// Whole record length, header included.
        len_bytes: u32,
        /// The caller's metadata, kept in memory for predicate purges.
        meta: Bytes,
    },
}

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Monotonic id (never reused, so a stale location can never read another record's bytes).
    pub(crate) id: u64,
    /// The file's path, for unlinking.
    pub(crate) path: PathBuf,
    /// Shared by readers (`pread`) and the writer (`pwrite`); an evicted segment's file stays readable to a reader
    /// that already cloned it.
    pub(crate) file: Arc<File>,
    /// Bytes reserved in the file (written or being written).
    pub(crate) len_bytes: u64,
    /// Keys whose records were indexed in this segment (some may have been removed or replaced since).
    pub(crate) keys: Vec<u64>,
}

/// A job for the writer thread.
#[derive(Debug)]
pub(crate) enum Job {
    /// Write the pending slot of `key` if it still holds `ticket`.
    Write {
        /// The key.
        key: u64,
        /// The `put` it came from.
        ticket: u64,
    },
    /// Answer once every earlier job is done.
    Flush(SyncSender<()>),
}

/// The index and the accounting.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) map: HashMap<u64, Slot, foldhash::fast::RandomState>,
    /// Oldest first; the last one is the writer's active segment (if it has one).
    pub(crate) segments: VecDeque<Segment>,
    /// Sum of the segments' `len_bytes`.
    pub(crate) used_bytes: u64,
    /// `Stored` slots.
    pub(crate) stored_entries: usize,
    /// Metadata bytes held by `Stored` slots.
    pub(crate) meta_bytes: u64,
    /// `Pending` slots.
    pub(crate) pending_entries: usize,
    /// Bytes held by `Pending` slots.
    pub(crate) pending_bytes: u64,
    /// Next `put` ticket.
    pub(crate) next_ticket: u64,
    /// The writer's queue; `None` once the tier is closing.
    pub(crate) tx: Option<SyncSender<Job>>,
}

impl State {
    pub(crate) fn new(tx: SyncSender<Job>) -> Self {
        Self {
            map: HashMap::with_hasher(foldhash::fast::RandomState::default()),
            segments: VecDeque::new(),
            used_bytes: 0,
            stored_entries: 0,
            meta_bytes: 0,
            pending_entries: 0,
            pending_bytes: 0,
            next_ticket: 0,
            tx: Some(tx),
        }
    }

    /// Undoes a removed slot's accounting.
    fn forget(&mut self, slot: &Slot) {
        match slot {
            Slot::Pending { size_bytes, .. } => {
                self.pending_entries -= 1;
                self.pending_bytes -= size_bytes;
            }
            Slot::Stored { meta, .. } => {
                self.stored_entries -= 1;
                self.meta_bytes -= meta.len() as u64;
            }
        }
    }

    /// Removes a key; true when it was there.
    pub(crate) fn remove(&mut self, key: u64) -> bool {
        match self.map.remove(&key) {
            Some(slot) => {
                self.forget(&slot);
                true
            }
            None => false,
        }
    }

    /// Removes a key only if it is still stored at `(segment, offset)` (after a failed or corrupt read, a newer
    /// `put` of the same key must survive).
    pub(crate) fn remove_stored_at(&mut self, key: u64, segment: u64, offset: u32) {
        let here = matches!(
            self.map.get(&key),
            Some(Slot::Stored { segment: s, offset: o, .. }) if *s == segment && *o == offset
        );
        if here {
            self.remove(key);
        }
    }

    /// Removes a key only if it is still pending with `ticket`; true when it was.
    pub(crate) fn remove_pending(&mut self, key: u64, ticket: u64) -> bool {
        if self.is_pending(key, ticket) {
            self.remove(key)
        } else {
            false
        }
    }

    /// True when `key` is pending with `ticket`.
    pub(crate) fn is_pending(&self, key: u64, ticket: u64) -> bool {
        matches!(self.map.get(&key), Some(Slot::Pending { ticket: t, .. }) if *t == ticket)
    }

    /// Removes every key (pending or stored) for which `drop_if(key, meta)` is true; returns how many were removed.
    pub(crate) fn retain(&mut self, mut drop_if: impl FnMut(u64, &[u8]) -> bool) -> usize {
        let before = self.map.len();
        let mut removed_meta_bytes = 0u64;
        let mut removed_stored = 0usize;
        let mut removed_pending = 0usize;
        let mut removed_pending_bytes = 0u64;
        self.map.retain(|&key, slot| {
            let meta = match slot {
                Slot::Pending { meta, .. } | Slot::Stored { meta, .. } => meta,
            };
            if !drop_if(key, meta) {
                return true;
            }
            match slot {
                Slot::Pending { size_bytes, .. } => {
                    removed_pending += 1;
                    removed_pending_bytes += *size_bytes;
                }
                Slot::Stored { meta, .. } => {
                    removed_stored += 1;
                    removed_meta_bytes += meta.len() as u64;
                }
            }
            false
        });
        self.stored_entries -= removed_stored;
        self.meta_bytes -= removed_meta_bytes;
        self.pending_entries -= removed_pending;
        self.pending_bytes -= removed_pending_bytes;
        before - self.map.len()
    }

    /// Drops the oldest segment and every index entry that points into it; the caller unlinks the file.
    pub(crate) fn evict_front(&mut self) -> Option<Segment> {
        let mut segment = self.segments.pop_front()?;
        for key in std::mem::take(&mut segment.keys) {
            let here = matches!(
                self.map.get(&key),
                Some(Slot::Stored { segment: s, .. }) if *s == segment.id
            );
            if here {
                self.remove(key);
            }
        }
        self.used_bytes -= segment.len_bytes;
        Some(segment)
    }

    /// The segment with this id.
    pub(crate) fn segment_mut(&mut self, id: u64) -> Option<&mut Segment> {
        let at = self.segments.binary_search_by_key(&id, |s| s.id).ok()?;
        self.segments.get_mut(at)
    }

    /// The file of the segment with this id.
    pub(crate) fn segment_file(&self, id: u64) -> Option<Arc<File>> {
        let at = self.segments.binary_search_by_key(&id, |s| s.id).ok()?;
        self.segments.get(at).map(|s| Arc::clone(&s.file))
    }

    /// Forgets every key (after a panic poisoned the lock: the map may be half-updated, and a cache may always
    /// forget). Segments stay accounted until they are evicted.
    pub(crate) fn clear_index(&mut self) {
        self.map.clear();
        self.stored_entries = 0;
        self.meta_bytes = 0;
        self.pending_entries = 0;
        self.pending_bytes = 0;
    }
}
