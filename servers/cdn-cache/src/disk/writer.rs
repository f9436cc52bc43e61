//! The writer thread: the only code that appends to segments, creates them and evicts them.
//!
//! One thread owns all writes so that appends need no coordination (the next offset is a plain field), eviction
//! order is simply creation order, and the async request path never waits for the disk: `put` only queues.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use bytes::Bytes;

use super::Shared;
use super::format::{self, HEADER_BYTES};
use super::state::{Job, Segment, Slot};

/// Bodies up to this size are copied behind the header and written with one `pwrite`; larger parts are written
/// from the caller's buffers directly (one `pwrite` each) rather than copied.
const COALESCE_BODY_BYTES: usize = 64 << 10;

/// The name of segment `id` in `dir`. The prefix and suffix are what `open` recognises (and deletes) at start.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!(
        "{}{id:016x}{}",
        super::SEGMENT_PREFIX,
        super::SEGMENT_SUFFIX
    ))
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    id: u64,
    file: Arc<File>,
    /// Next write offset (= bytes reserved so far).
    len_bytes: u64,
}

/// Where a record goes.
struct Reserved {
    file: Arc<File>,
    segment: u64,
    offset: u64,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Option<Active>,
    next_segment_id: u64,
    /// Header + metadata (+ small bodies), reused between records.
    scratch: Vec<u8>,
}

/// The thread's main loop: runs until every sender is gone, then deletes the segments (the tier starts cold anyway,
/// so their bytes are only worth returning to the file system).
pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<Job>) {
    let mut writer = Writer {
        shared,
        active: None,
        next_segment_id: 0,
        scratch: Vec::new(),
    };
    let shared = Arc::clone(&writer.shared);
    while let Ok(job) = rx.recv() {
        // `pause_writes` holds this gate; the job waits here, already off the queue.
        let gate = shared.gate();
        match job {
            Job::Write { key, ticket } => {
                if shared.closing.load(Ordering::Acquire) {
                    shared.lock().remove_pending(key, ticket);
                } else {
                    writer.write(key, ticket);
                }
            }
            Job::Flush(done) => {
                // The flusher may have given up waiting; nothing to do then.
                let _ = done.send(());
            }
        }
        drop(gate);
    }
    writer.remove_all_segments();
}

impl Writer {
    fn write(&mut self, key: u64, ticket: u64) {
        let started = Instant::now();
        let (meta, body) = {
            let state = self.shared.lock();
            match state.map.get(&key) {
                Some(Slot::Pending {
                    ticket: t,
                    meta,
                    body,
                    ..
                }) if *t == ticket => (meta.clone(), body.clone()),
                // Removed or replaced since `put`: nothing to write.
                _ => return,
            }
        };
        let body_len: u64 = body.iter().map(|b| b.len() as u64).sum();
        let record_len = HEADER_BYTES + meta.len() as u64 + body_len;
        let header = format::encode_header(key, &meta, &body);

        let reserved = match self.reserve(record_len, meta.len() as u64) {
            Ok(reserved) => reserved,
            Err(what) => {
                self.fail(key, ticket, what);
                return;
            }
        };
        if let Err(err) = self.write_record(&reserved, &header, &meta, &body, body_len) {
            // The segment's tail is now unknown: never append after it.
            self.active = None;
            self.fail(
                key,
                ticket,
                format!("write segment {}: {err}", reserved.segment),
            );
            return;
        }

        let mut state = self.shared.lock();
        if state.is_pending(key, ticket) {
            state.remove(key);
            let meta_len = meta.len() as u64;
            // Offsets and lengths fit: segments are at most `MAX_SEGMENT_BYTES` (1 GiB).
            state.map.insert(
                key,
                Slot::Stored {
                    segment: reserved.segment,
                    offset: reserved.offset as u32,
                    len_bytes: record_len as u32,
                    meta,
                },
            );
            state.stored_entries += 1;
            state.meta_bytes += meta_len;
            if let Some(segment) = state.segment_mut(reserved.segment) {
                segment.keys.push(key);
            }
        }
        // Otherwise removed while being written: the bytes stay dead on disk until their segment is evicted, and
        // since the tier starts cold they can never come back.
        self.shared.publish_gauges(&state);
        drop(state);
        self.shared.stats.writes.inc();
        self.shared.stats.record_write(started.elapsed());
    }

    /// A write that did not happen: forget the pending slot and count it.
    fn fail(&self, key: u64, ticket: u64, what: String) {
        self.shared.lock().remove_pending(key, ticket);
        self.shared.stats.dropped_writes.inc();
        self.shared.stats.io_error(what);
    }

    /// Makes room for a record (evicting whole segments, oldest first) and reserves its place in the active
    /// segment, opening a new one when needed.
    fn reserve(&mut self, record_len: u64, meta_len: u64) -> Result<Reserved, String> {
        let cfg = &self.shared.cfg;
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.len_bytes + record_len > cfg.segment_bytes)
        {
            // Sealed: it stays readable until it is the oldest and room is needed.
            self.active = None;
        }
        let evicted: Vec<PathBuf> = {
            let mut state = self.shared.lock();
            let mut evicted = Vec::new();
            while state.used_bytes + record_len > cfg.capacity_bytes
                || state.stored_entries >= cfg.max_entries
                || state.meta_bytes + meta_len > cfg.max_meta_total_bytes
            {
                // Empty only if the configuration let one record exceed a limit, which `validate` prevents.
                let Some(segment) = state.evict_front() else {
                    break;
                };
                if self.active.as_ref().is_some_and(|a| a.id == segment.id) {
                    self.active = None;
                }
                evicted.push(segment.path);
            }
            self.shared.publish_gauges(&state);
            evicted
        };
        for path in evicted {
            self.shared.stats.evicted_segments.inc();
            // Readers that already hold the file keep reading it; the space returns when they are done.
            if let Err(err) = fs::remove_file(&path) {
                if err.kind() != io::ErrorKind::NotFound {
                    self.shared
                        .stats
                        .io_error(format!("remove {}: {err}", path.display()));
                }
            }
        }

        if self.active.is_none() {
            // Burn the id even if the create fails, so one bad name cannot fail every later write.
            let id = self.next_segment_id;
            self.next_segment_id += 1;
            let path = segment_path(&cfg.dir, id);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|err| format!("create {}: {err}", path.display()))?;
            let file = Arc::new(file);
            self.shared.lock().segments.push_back(Segment {
                id,
                path,
                file: Arc::clone(&file),
                len_bytes: 0,
                keys: Vec::new(),
            });
            self.active = Some(Active {
                id,
                file,
                len_bytes: 0,
            });
        }
        let Some(active) = self.active.as_mut() else {
            return Err("no active segment".into());
        };
        let reserved = Reserved {
            file: Arc::clone(&active.file),
            segment: active.id,
            offset: active.len_bytes,
        };
        active.len_bytes += record_len;
        let mut state = self.shared.lock();
        state.used_bytes += record_len;
        if let Some(segment) = state.segment_mut(reserved.segment) {
            segment.len_bytes += record_len;
        }
        self.shared.publish_gauges(&state);
        Ok(reserved)
    }

    fn write_record(
        &mut self,
        at: &Reserved,
        header: &[u8],
        meta: &[u8],
        body: &[Bytes],
        body_len: u64,
    ) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(header);
        self.scratch.extend_from_slice(meta);
        let coalesce = body_len <= COALESCE_BODY_BYTES as u64;
        if coalesce {
            for part in body {
                self.scratch.extend_from_slice(part);
            }
        }
        at.file.write_all_at(&self.scratch, at.offset)?;
        if !coalesce {
            let mut offset = at.offset + self.scratch.len() as u64;
            for part in body {
                at.file.write_all_at(part, offset)?;
                offset += part.len() as u64;
            }
        }
        Ok(())
    }

    /// Drops every segment (at shutdown).
    fn remove_all_segments(&mut self) {
        self.active = None;
        let segments: Vec<Segment> = {
            let mut state = self.shared.lock();
            state.clear_index();
            state.used_bytes = 0;
            let segments = state.segments.drain(..).collect();
            self.shared.publish_gauges(&state);
            segments
        };
        for segment in segments {
            if let Err(err) = fs::remove_file(&segment.path) {
                if err.kind() != io::ErrorKind::NotFound {
                    self.shared
                        .stats
                        .io_error(format!("remove {}: {err}", segment.path.display()));
                }
            }
        }
    }
}
