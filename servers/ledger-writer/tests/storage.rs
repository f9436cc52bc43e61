//! The durability layer end to end: segmented log round trips, crash and corruption recovery (with quarantine),
//! the audit verifier, checkpoints, poisoning, and an opt-in stress timing (`REFBENCH_STRESS=1`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use refbench_ledger::checkpoint;
use refbench_ledger::log::{
    self, DamageReason, Log, LogConfig, LogError, OnDamage, RecordRef, RecoveryReport, Resume,
    segment_file_name, verify,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One record as replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    seq: u64,
    kind: u16,
    timestamp_ns: u64,
    payload: Vec<u8>,
    hash: [u8; 32],
}

impl Rec {
    fn from_ref(r: RecordRef<'_>) -> Self {
        Rec {
            seq: r.seq,
            kind: r.kind,
            timestamp_ns: r.timestamp_ns,
            payload: r.payload.to_vec(),
            hash: r.hash,
        }
    }
}

/// Small segments so a few hundred records span many of them.
fn cfg(data: &Path) -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        max_record_payload_bytes: 2048,
        ..LogConfig::new(data)
    }
}

/// [`cfg`] with preallocated segments: 3000 bytes of fill ahead of the records (not a divisor of the segment size,
/// so extensions end at odd offsets and the last one is capped by `segment_bytes`).
fn pcfg(data: &Path) -> LogConfig {
    LogConfig {
        preallocate_bytes: 3000,
        ..cfg(data)
    }
}

/// [`pcfg`] with segments large enough that records appended after a reopen land in the same segment.
fn pcfg_roomy(data: &Path) -> LogConfig {
    LogConfig {
        segment_bytes: 32 << 10,
        ..pcfg(data)
    }
}

/// Varied sizes (including empty) and never a zero byte, so damage classification is not fooled by the data.
fn payload(seq: u64) -> Vec<u8> {
    let len = if seq % 50 == 7 {
        0
    } else {
        (seq * 379 % 1500) as usize + 1
    };
    (0..len)
        .map(|i| ((seq as usize * 131 + i * 7) % 251 + 1) as u8)
        .collect()
}

fn kind(seq: u64) -> u16 {
    (seq % 3 + 1) as u16
}

fn timestamp_ns(seq: u64) -> u64 {
    1_700_000_000_000_000_000 + seq * 1000
}

fn open(
    cfg: &LogConfig,
    resume: Option<Resume>,
) -> Result<(Log, RecoveryReport, Vec<Rec>), LogError> {
    let mut seen = Vec::new();
    let (log, report) = Log::open(cfg.clone(), resume, |r| {
        seen.push(Rec::from_ref(r));
        Ok::<_, BoxError>(())
    })?;
    Ok((log, report, seen))
}

/// Appends records `from..to` in groups of varied sizes; returns the head hash after each record.
fn append(log: &mut Log, from: u64, to: u64) -> Vec<[u8; 32]> {
    const GROUPS: [u64; 6] = [1, 5, 17, 3, 40, 9];
    let mut hashes = Vec::new();
    let mut seq = from;
    let mut g = 0;
    while seq < to {
        let end = (seq + GROUPS[g % GROUPS.len()]).min(to);
        for s in seq..end {
            assert_eq!(
                log.push(kind(s), timestamp_ns(s), &payload(s))
                    .expect("push"),
                s
            );
            hashes.push(log.head().1);
        }
        let stats = log.commit().expect("commit");
        assert_eq!(stats.records, end - seq);
        seq = end;
        g += 1;
    }
    hashes
}

/// A fresh log with `n` records; returns the head hash after each record.
fn build(cfg: &LogConfig, n: u64) -> Vec<[u8; 32]> {
    let (mut log, report, seen) = open(cfg, None).expect("open fresh");
    assert!(seen.is_empty() && report.damage.is_none());
    append(&mut log, 0, n)
}

fn assert_replayed(seen: &[Rec], from: u64, to: u64) {
    assert_eq!(seen.len() as u64, to - from, "records replayed");
    for (r, seq) in seen.iter().zip(from..to) {
        assert_eq!(
            (r.seq, r.kind, r.timestamp_ns),
            (seq, kind(seq), timestamp_ns(seq))
        );
        assert_eq!(r.payload, payload(seq), "payload of record {seq}");
    }
}

/// An independent reading of the layout: per segment file, (offset, seq, total bytes) of each record.
#[derive(Debug, Clone)]
struct Seg {
    path: PathBuf,
    name: String,
    records: Vec<(u64, u64, u64)>,
}

fn layout(log_dir: &Path) -> Vec<Seg> {
    let mut paths: Vec<PathBuf> = fs::read_dir(log_dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = fs::read(&path).expect("read segment");
            let mut records = Vec::new();
            let mut off = 0usize;
            // Records end at the end of the file or at preallocated fill (anything without the magic).
            while off + 64 <= bytes.len() && bytes[off..off + 4] == *b"RBLG" {
                let len =
                    u32::from_le_bytes(bytes[off + 16..off + 20].try_into().expect("4")) as usize;
                let seq = u64::from_le_bytes(bytes[off + 8..off + 16].try_into().expect("8"));
                records.push((off as u64, seq, (64 + len) as u64));
                off += 64 + len;
            }
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            Seg {
                path,
                name,
                records,
            }
        })
        .collect()
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

fn quarantine_dir(data: &Path) -> PathBuf {
    data.join("quarantine")
}

#[test]
fn round_trip_across_segments() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    let n = 500;
    let hashes = build(&c, n);
    let segs = layout(&c.dir);
    assert!(segs.len() > 5, "several segments: {}", segs.len());
    let mut next = 0;
    for s in &segs {
        assert_eq!(
            s.name,
            segment_file_name(next),
            "segment named after its first record"
        );
        let len = fs::metadata(&s.path).expect("stat").len();
        assert!(len <= c.segment_bytes, "{} is {len} bytes", s.name);
        for &(_, seq, _) in &s.records {
            assert_eq!(seq, next);
            next += 1;
        }
    }
    assert_eq!(next, n);

    let (log, report, seen) = open(&c, None).expect("reopen");
    assert_replayed(&seen, 0, n);
    for (r, h) in seen.iter().zip(&hashes) {
        assert_eq!(&r.hash, h, "replayed hash of record {}", r.seq);
    }
    assert!(report.damage.is_none());
    assert_eq!(
        (report.next_seq, report.head_hash),
        (n, hashes[n as usize - 1])
    );
    assert_eq!(report.records_replayed, n);
    assert_eq!(log.head(), (n, hashes[n as usize - 1]));

    let mut verified = Vec::new();
    let v = verify(&c.dir, None, |r| verified.push(Rec::from_ref(r)));
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!(
        (v.records, v.head_hash, v.segments),
        (n, hashes[n as usize - 1], segs.len() as u64)
    );
    assert_eq!(verified, seen);
}

#[test]
fn records_of_any_size_fill_segments_without_spanning() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    let (mut log, _, _) = open(&c, None).expect("open");
    // 100 + 4 x 2048 payload bytes cannot share an 8 KiB segment: records roll over, never span.
    log.push(1, 1, &[9; 100]).expect("push");
    log.push(1, 2, &[9; 2048]).expect("push");
    log.push(1, 3, &[9; 2048]).expect("push");
    log.push(1, 4, &[9; 2048]).expect("push");
    log.push(1, 5, &[9; 2048]).expect("push");
    let stats = log.commit().expect("commit");
    assert_eq!(stats.records, 5);
    assert!(stats.segments_created >= 2, "{stats:?}");
    for s in layout(&c.dir) {
        assert!(fs::metadata(&s.path).expect("stat").len() <= c.segment_bytes);
    }
    drop(log);
    let (_, report, seen) = open(&c, None).expect("reopen");
    assert_eq!(seen.len(), 5);
    assert!(report.damage.is_none());
}

/// Cuts the last segment (as a crash mid-write would) and checks verify, recovery and what follows.
fn check_torn_tail(
    make: fn(&Path) -> LogConfig,
    cut: impl Fn(&Seg) -> (u64, u64),
    on_damage: OnDamage,
    expect: impl Fn(&DamageReason) -> bool,
) {
    let data = tempfile::tempdir().expect("tempdir");
    let c = LogConfig {
        on_damage,
        ..make(data.path())
    };
    let n = 200;
    let hashes = build(&c, n);
    let segs = layout(&c.dir);
    let last = segs.last().expect("segments").clone();
    let (offset, seq) = cut(&last);
    let damaged_bytes = fs::read(&last.path).expect("read");
    let kept = seq; // every record before the cut survives

    let v = verify(&c.dir, None, |_| {});
    assert!(!v.ok);
    assert_eq!(v.errors.len(), 1, "{:?}", v.errors);
    let e = &v.errors[0];
    assert_eq!(
        (e.segment.as_str(), e.offset, e.seq),
        (last.name.as_str(), offset, seq),
        "{e:?}"
    );
    assert!(e.what.starts_with("torn tail"), "{e:?}");
    assert_eq!(v.records, kept);

    let (mut log, report, seen) = open(&c, None).expect("recovery");
    assert!(report.torn_tail() && !report.corruption(), "{report:?}");
    let d = report.damage.as_ref().expect("damage");
    assert!(expect(&d.reason), "{:?}", d.reason);
    assert_eq!(
        (d.segment.as_path(), d.offset, d.seq),
        (last.path.as_path(), offset, seq)
    );
    assert_eq!(d.bytes_dropped, damaged_bytes.len() as u64 - offset);
    assert_eq!(d.parsable_records_dropped, 0);
    assert_replayed(&seen, 0, kept);
    assert_eq!(
        fs::metadata(&last.path).expect("stat").len(),
        offset,
        "cut at the damage"
    );
    assert_eq!(d.quarantined.len(), 1);
    assert_eq!(
        fs::read(&d.quarantined[0]).expect("read quarantine"),
        &damaged_bytes[offset as usize..]
    );
    assert_eq!(log.head(), (kept, hashes[kept as usize - 1]));

    // The chain continues from the last good record.
    append(&mut log, kept, kept + 30);
    let pos = log.durable_position();
    let v = verify(&c.dir, Some(&pos), |_| {});
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!(v.records, kept + 30);
    drop(log);
    let (_, report, seen) = open(&c, None).expect("reopen");
    assert!(report.damage.is_none());
    assert_replayed(&seen, 0, kept + 30);
}

fn truncate_last(seg: &Seg, at: impl Fn(u64, u64) -> u64) -> (u64, u64) {
    let &(off, seq, total) = seg.records.last().expect("records");
    let cut = at(off, total);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&seg.path)
        .expect("open");
    f.set_len(cut).expect("truncate");
    (off, seq)
}

#[test]
fn torn_tail_inside_payload_is_cut() {
    check_torn_tail(
        cfg,
        |s| truncate_last(s, |off, total| off + total - 1),
        OnDamage::Truncate,
        |r| {
            *r == DamageReason::Truncated {
                next_record_offset: None,
            }
        },
    );
}

#[test]
fn torn_tail_inside_header_is_cut_even_in_refuse_mode() {
    check_torn_tail(
        cfg,
        |s| truncate_last(s, |off, _| off + 30),
        OnDamage::Refuse,
        |r| {
            *r == DamageReason::Truncated {
                next_record_offset: None,
            }
        },
    );
}

#[test]
fn zero_extended_tail_is_a_torn_tail() {
    check_torn_tail(
        cfg,
        |s| {
            let mut bytes = fs::read(&s.path).expect("read");
            let end = bytes.len() as u64;
            bytes.extend_from_slice(&[0; 4096]);
            fs::write(&s.path, &bytes).expect("write");
            let &(_, seq, _) = s.records.last().expect("records");
            (end, seq + 1)
        },
        OnDamage::Truncate,
        |r| matches!(r, DamageReason::ZeroFilled { .. }),
    );
}

/// The bytes of `seg` after its last record: all fill, and the file no longer than a segment.
fn assert_fill_tail(c: &LogConfig, seg: &Seg) {
    let bytes = fs::read(&seg.path).expect("read");
    let end = seg.records.last().map_or(0, |&(off, _, total)| off + total) as usize;
    assert!(bytes.len() as u64 <= c.segment_bytes, "{}", seg.name);
    assert!(
        bytes[end..].iter().all(|&b| b == log::FILL_BYTE),
        "{}: only fill after the records (from {end} to {})",
        seg.name,
        bytes.len()
    );
}

#[test]
fn preallocated_segments_round_trip_and_append_in_place() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = pcfg_roomy(data.path());
    let (mut log, _, _) = open(&c, None).expect("open");
    log.push(1, 1, &payload(1)).expect("push");
    let first = log.commit().expect("commit");
    assert_eq!(
        first.preallocated_bytes, 3000,
        "the first commit allocates ahead"
    );
    log.push(1, 2, &payload(2)).expect("push");
    let second = log.commit().expect("commit");
    assert_eq!(
        second.preallocated_bytes, 0,
        "the next one overwrites fill: {second:?}"
    );
    drop(log);
    fs::remove_dir_all(&c.dir).expect("start over");

    let n = 300;
    let hashes = build(&c, n);
    let segs = layout(&c.dir);
    assert!(segs.len() >= 3, "several segments: {}", segs.len());
    let mut filled = 0;
    for s in &segs {
        assert_fill_tail(&c, s);
        let len = fs::metadata(&s.path).expect("stat").len();
        let end = s.records.last().map_or(0, |&(off, _, total)| off + total);
        filled += u64::from(len > end);
    }
    assert!(
        filled >= segs.len() as u64 / 2,
        "most segments end in fill: {filled}"
    );
    let last = segs.last().expect("segments").clone();
    assert!(
        fs::metadata(&last.path).expect("stat").len()
            > last.records.last().map_or(0, |r| r.0 + r.2),
        "the last segment has fill ahead of its records"
    );

    // Fill is the end of the log, not damage: nothing is cut, and new records go right after the old ones.
    let (mut log, report, seen) = open(&c, None).expect("reopen");
    assert!(report.damage.is_none(), "{report:?}");
    assert_replayed(&seen, 0, n);
    assert_eq!(log.head(), (n, hashes[n as usize - 1]));
    let v = verify(&c.dir, None, |_| {});
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!((v.records, v.head_hash), (n, hashes[n as usize - 1]));
    append(&mut log, n, n + 40);
    let pos = log.durable_position();
    let v = verify(&c.dir, Some(&pos), |_| {});
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!(v.records, n + 40);
    drop(log);
    let after = layout(&c.dir);
    let resumed = after
        .iter()
        .find(|s| s.name == last.name)
        .expect("the last segment is still there");
    assert_eq!(
        &resumed.records[..last.records.len()],
        &last.records[..],
        "old records untouched"
    );
    let &(off, seq, _) = resumed
        .records
        .get(last.records.len())
        .expect("the first new record went to the last segment");
    let &(loff, lseq, ltotal) = last.records.last().expect("records");
    assert_eq!(
        (off, seq),
        (loff + ltotal, lseq + 1),
        "appended right after"
    );
    for s in &after {
        assert_fill_tail(&c, s);
    }
    let (_, report, seen) = open(&c, None).expect("reopen");
    assert!(report.damage.is_none(), "{report:?}");
    assert_replayed(&seen, 0, n + 40);
}

#[test]
fn damage_to_the_unused_end_of_a_middle_segment_cuts_nothing() {
    for make in [pcfg_roomy as fn(&Path) -> LogConfig, cfg] {
        let data = tempfile::tempdir().expect("tempdir");
        let c = LogConfig {
            on_damage: OnDamage::Refuse,
            ..make(data.path())
        };
        let n = 300;
        let hashes = build(&c, n);
        let segs = layout(&c.dir);
        assert!(segs.len() >= 3, "{}", segs.len());
        let middle = &segs[1];
        let end = middle.records.last().map_or(0, |r| r.0 + r.2) as usize;
        let mut bytes = fs::read(&middle.path).expect("read");
        if c.preallocate_bytes > 0 {
            // A flipped bit in the fill after the last record.
            assert!(bytes.len() > end + 100, "{} ends in fill", middle.name);
            bytes[end + 100] ^= 0x10;
        } else {
            // Garbage appended after the last record.
            bytes.extend_from_slice(b"not a record, and no record follows it in this segment");
        }
        fs::write(&middle.path, &bytes).expect("write");
        let (_, report, seen) = open(&c, None).expect("starts even with --on-damage refuse");
        assert!(report.damage.is_none(), "{report:?}");
        assert_replayed(&seen, 0, n);
        assert_eq!(report.head_hash, hashes[n as usize - 1]);
        let v = verify(&c.dir, None, |_| {});
        assert!(v.ok, "{:?}", v.errors);
        assert_eq!(v.records, n);
    }
}

/// Overwrites `seg` from `from` to its end with fill: a write that never reached the disk past `from`.
fn unwrite(seg: &Seg, from: u64) {
    let mut bytes = fs::read(&seg.path).expect("read");
    bytes[from as usize..].fill(log::FILL_BYTE);
    fs::write(&seg.path, &bytes).expect("write");
}

#[test]
fn record_torn_into_preallocated_fill_is_a_torn_tail() {
    check_torn_tail(
        pcfg,
        |s| {
            let &(off, seq, total) = s.records.last().expect("records");
            assert!(total > 64, "a record with a payload");
            unwrite(s, off + total - 1);
            (off, seq)
        },
        OnDamage::Refuse,
        |r| {
            *r == DamageReason::Truncated {
                next_record_offset: None,
            }
        },
    );
}

#[test]
fn header_torn_into_preallocated_fill_is_a_torn_tail() {
    check_torn_tail(
        pcfg,
        |s| {
            let &(off, seq, _) = s.records.last().expect("records");
            unwrite(s, off + 30);
            (off, seq)
        },
        OnDamage::Refuse,
        |r| {
            *r == DamageReason::Truncated {
                next_record_offset: None,
            }
        },
    );
}

#[test]
fn zeros_before_preallocated_fill_are_a_torn_tail() {
    check_torn_tail(
        pcfg,
        |s| {
            let &(off, seq, total) = s.records.last().expect("records");
            let end = off + total;
            let mut bytes = fs::read(&s.path).expect("read");
            let zeros = (bytes.len() as u64 - end).min(512) as usize;
            assert!(zeros > 64, "room for a zeroed header before the fill");
            bytes[end as usize..end as usize + zeros].fill(0);
            fs::write(&s.path, &bytes).expect("write");
            (end, seq + 1)
        },
        OnDamage::Truncate,
        |r| matches!(r, DamageReason::ZeroFilled { .. }),
    );
}

#[test]
fn bit_flip_in_the_last_record_before_fill_is_corruption() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = LogConfig {
        on_damage: OnDamage::Refuse,
        ..pcfg(data.path())
    };
    build(&c, 200);
    let last = layout(&c.dir).pop().expect("segments");
    let &(off, seq, total) = last.records.last().expect("records");
    assert!(total > 64, "a record with a payload");
    let mut bytes = fs::read(&last.path).expect("read");
    bytes[(off + total - 1) as usize] ^= 0x10;
    fs::write(&last.path, &bytes).expect("write");
    // Every byte of the record was written, so this is not a crash mid-write: refused, never cut silently.
    match open(&c, None) {
        Err(LogError::Damaged { damage }) => {
            assert_eq!((damage.offset, damage.seq), (off, seq), "{damage:?}");
            assert_eq!(damage.reason, DamageReason::CrcMismatch, "{damage:?}");
        }
        other => panic!("want a refusal, got {:?}", other.map(|r| r.1)),
    }
    assert_eq!(
        fs::read(&last.path).expect("read"),
        bytes,
        "nothing changed"
    );
}

#[test]
fn after_a_cut_segment_the_previous_one_is_appended_after_its_records_not_its_fill() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = pcfg_roomy(data.path());
    build(&c, 300);
    let segs = layout(&c.dir);
    let (prev, last) = (&segs[segs.len() - 2], &segs[segs.len() - 1]);
    assert!(
        fs::metadata(&prev.path).expect("stat").len()
            > prev.records.last().map_or(0, |r| r.0 + r.2),
        "the previous segment ends in fill"
    );
    // Damage at offset 0 of the last segment: the default policy moves the whole file to quarantine.
    let mut bytes = fs::read(&last.path).expect("read");
    bytes[0] ^= 0x01;
    fs::write(&last.path, &bytes).expect("write");
    let kept = last.records[0].1;
    // The previous segment was closed because the next record did not fit; larger segments from now on give it
    // room, so the next record goes right after its last one (and not after its fill).
    let c = LogConfig {
        segment_bytes: 64 << 10,
        ..c
    };
    let (mut log, report, seen) = open(&c, None).expect("recovery");
    assert!(report.corruption(), "{report:?}");
    assert_replayed(&seen, 0, kept);
    assert!(!last.path.exists(), "moved to quarantine");
    append(&mut log, kept, kept + 20);
    drop(log);
    let after = layout(&c.dir);
    let resumed = after
        .iter()
        .find(|s| s.name == prev.name)
        .expect("previous segment");
    let &(loff, lseq, ltotal) = prev.records.last().expect("records");
    assert_eq!(
        resumed.records.get(prev.records.len()).map(|r| (r.0, r.1)),
        Some((loff + ltotal, lseq + 1)),
        "the next record follows the previous segment's last one"
    );
    let (_, report, seen) = open(&c, None).expect("reopen");
    assert!(
        report.damage.is_none(),
        "new records follow the old ones: {report:?}"
    );
    assert_replayed(&seen, 0, kept + 20);
    let v = verify(&c.dir, None, |_| {});
    assert!(v.ok, "{:?}", v.errors);
}

/// What a middle-damage case expects.
struct Expected {
    segment: String,
    offset: u64,
    seq: u64,
    reason: DamageReason,
}

/// Builds a log, damages it, and checks verify (before recovery), refusal, recovery with quarantine, and that the
/// repaired log verifies and takes new records.
fn check_middle_damage(c: &LogConfig, n: u64, damage: impl FnOnce(&[Seg]) -> Expected) {
    let data = c.dir.parent().expect("data dir").to_path_buf();
    build(c, n);
    let segs = layout(&c.dir);
    assert!(segs.len() >= 5, "enough segments: {}", segs.len());
    let want = damage(&segs);
    let damaged = snapshot(&c.dir);

    // Verify sees the damage at the exact position, and that records after it still parse.
    let v = verify(&c.dir, None, |_| {});
    assert!(!v.ok);
    let e = &v.errors[0];
    assert_eq!(
        (e.segment.as_str(), e.offset, e.seq),
        (want.segment.as_str(), want.offset, want.seq),
        "{e:?}"
    );
    assert!(e.what.starts_with("corruption"), "{e:?}");
    assert_eq!(v.records, want.seq);
    assert!(
        v.records_after_damage > 0,
        "records after the damage still parse"
    );

    // Refuse changes nothing and names the position.
    let refuse = LogConfig {
        on_damage: OnDamage::Refuse,
        ..c.clone()
    };
    match open(&refuse, None) {
        Err(LogError::Damaged { damage }) => {
            assert_eq!((damage.offset, damage.seq), (want.offset, want.seq));
            assert!(damage.quarantined.is_empty());
            assert!(damage.to_string().contains(&want.segment), "{damage}");
        }
        Err(other) => panic!("expected Damaged, got {other}"),
        Ok((_, report, _)) => panic!("expected Damaged, got {report:?}"),
    }
    assert_eq!(snapshot(&c.dir), damaged, "refuse changed nothing");
    assert!(!quarantine_dir(&data).exists());

    // Truncate keeps everything before, quarantines everything from the damage on.
    let (mut log, report, seen) = open(c, None).expect("recovery");
    assert!(report.corruption() && !report.torn_tail(), "{report:?}");
    let d = report.damage.as_ref().expect("damage");
    let seg_name = |p: &Path| p.file_name().expect("name").to_string_lossy().into_owned();
    assert_eq!(
        (seg_name(&d.segment), d.offset, d.seq),
        (want.segment.clone(), want.offset, want.seq)
    );
    assert_eq!(d.reason, want.reason);
    assert_eq!(d.parsable_records_dropped, v.records_after_damage);
    assert_replayed(&seen, 0, want.seq);
    assert_eq!(report.next_seq, want.seq);

    let names: Vec<&String> = damaged.keys().collect();
    let at = names
        .iter()
        .position(|n| **n == want.segment)
        .expect("damaged segment listed");
    let mut expected_bytes = 0;
    let mut expected_files = Vec::new();
    for (i, name) in names.iter().enumerate().skip(at) {
        let offset = if i == at { want.offset } else { 0 };
        let qpath = quarantine_dir(&data).join(format!("{name}.{offset}.bin"));
        assert_eq!(
            fs::read(&qpath).expect("quarantine file"),
            &damaged[*name][offset as usize..],
            "{qpath:?}"
        );
        expected_bytes += damaged[*name].len() as u64 - offset;
        expected_files.push(qpath);
        let kept = c.dir.join(name);
        if i == at && offset > 0 {
            assert_eq!(
                fs::read(&kept).expect("kept"),
                &damaged[*name][..offset as usize],
                "cut at the damage"
            );
        } else {
            assert!(!kept.exists(), "{name} moved to quarantine");
        }
    }
    assert_eq!(d.quarantined, expected_files);
    assert_eq!(d.bytes_dropped, expected_bytes);
    assert_eq!(d.later_segments, (names.len() - at - 1) as u64);

    let v = verify(&c.dir, None, |_| {});
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!(v.records, want.seq);
    append(&mut log, want.seq, want.seq + 25);
    drop(log);
    let (_, report, seen) = open(c, None).expect("reopen");
    assert!(report.damage.is_none(), "{report:?}");
    assert_replayed(&seen, 0, want.seq + 25);
}

/// A record in the middle of segment `s` with a payload of at least `min_payload` bytes.
fn middle_record(seg: &Seg, min_payload: u64) -> (u64, u64, u64) {
    let mid = seg.records.len() / 2;
    *seg.records[mid..]
        .iter()
        .chain(&seg.records[..mid])
        .find(|r| r.2 >= 64 + min_payload && r.0 > 0)
        .expect("a record with a large enough payload")
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[at as usize] ^= 0x04;
    fs::write(path, &bytes).expect("write");
}

#[test]
fn payload_bit_flip_in_the_middle_is_detected_and_quarantined() {
    let data = tempfile::tempdir().expect("tempdir");
    check_middle_damage(&cfg(data.path()), 400, |segs| {
        let s = &segs[2];
        let (off, seq, total) = middle_record(s, 10);
        flip(&s.path, off + 64 + (total - 64) / 2);
        Expected {
            segment: s.name.clone(),
            offset: off,
            seq,
            reason: DamageReason::CrcMismatch,
        }
    });
}

#[test]
fn header_bit_flip_in_the_middle_is_detected_and_quarantined() {
    let data = tempfile::tempdir().expect("tempdir");
    check_middle_damage(&cfg(data.path()), 400, |segs| {
        let s = &segs[3];
        let (off, seq, _) = middle_record(s, 0);
        flip(&s.path, off + 57); // the timestamp
        Expected {
            segment: s.name.clone(),
            offset: off,
            seq,
            reason: DamageReason::CrcMismatch,
        }
    });
}

#[test]
fn magic_bit_flip_is_detected() {
    let data = tempfile::tempdir().expect("tempdir");
    check_middle_damage(&cfg(data.path()), 400, |segs| {
        let s = &segs[1];
        let (off, seq, _) = middle_record(s, 0);
        flip(&s.path, off + 1);
        Expected {
            segment: s.name.clone(),
            offset: off,
            seq,
            reason: DamageReason::BadMagic,
        }
    });
}

#[test]
fn bit_flip_in_the_last_segment_with_records_after_is_corruption_not_a_torn_tail() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    let (mut log, _, _) = open(&c, None).expect("open");
    let mut n = 0;
    while n < 100 || layout(&c.dir).last().expect("segments").records.len() < 3 {
        append(&mut log, n, n + 1);
        n += 1;
    }
    drop(log);
    let segs = layout(&c.dir);
    let last = segs.last().expect("segments");
    let (off, seq, total) = last.records[0];
    flip(&last.path, off + total - 1);
    let (_, report, seen) = open(&c, None).expect("recovery");
    assert!(report.corruption(), "{report:?}");
    let d = report.damage.expect("damage");
    assert_eq!(
        (d.offset, d.seq, d.parsable_records_dropped),
        (0, seq, last.records.len() as u64 - 1)
    );
    assert_eq!(seen.len() as u64, seq);
}

#[test]
fn zero_filled_block_in_the_middle_is_detected_and_quarantined() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = LogConfig {
        segment_bytes: 32768,
        ..cfg(data.path())
    };
    check_middle_damage(&c, 400, |segs| {
        let s = &segs[1];
        let block = 8192..12288u64;
        let &(off, seq, _) = s
            .records
            .iter()
            .find(|&&(off, _, total)| off + total > block.start)
            .expect("record over the block");
        let mut bytes = fs::read(&s.path).expect("read");
        assert!(
            bytes.len() as u64 > block.end + 2048,
            "the block is in the middle"
        );
        bytes[block.start as usize..block.end as usize].fill(0);
        fs::write(&s.path, &bytes).expect("write");
        Expected {
            segment: s.name.clone(),
            offset: off,
            seq,
            reason: DamageReason::ZeroFilled { at: block.start },
        }
    });
}

#[test]
fn record_truncated_in_the_middle_is_detected_and_quarantined() {
    let data = tempfile::tempdir().expect("tempdir");
    check_middle_damage(&cfg(data.path()), 400, |segs| {
        let s = &segs[2];
        let (off, seq, total) = middle_record(s, 100);
        let mut bytes = fs::read(&s.path).expect("read");
        let from = (off + 64 + 40) as usize;
        bytes.drain(from..from + 20); // later bytes shift down
        fs::write(&s.path, &bytes).expect("write");
        let next = Some(off + total - 20);
        Expected {
            segment: s.name.clone(),
            offset: off,
            seq,
            reason: DamageReason::Truncated {
                next_record_offset: next,
            },
        }
    });
}

#[test]
fn deleted_middle_segment_is_detected_and_later_segments_quarantined() {
    let data = tempfile::tempdir().expect("tempdir");
    check_middle_damage(&cfg(data.path()), 400, |segs| {
        fs::remove_file(&segs[2].path).expect("remove");
        let missing = segs[2].records[0].1;
        let found = segs[3].records[0].1;
        Expected {
            segment: segs[3].name.clone(),
            offset: 0,
            seq: missing,
            reason: DamageReason::MissingRecords {
                expected: missing,
                found,
            },
        }
    });
}

/// Rewrites a record's payload byte and recomputes its CRC32C, as a forger would.
fn forge(path: &Path, off: u64, total: u64) {
    let mut bytes = fs::read(path).expect("read");
    let rec = &mut bytes[off as usize..(off + total) as usize];
    rec[total as usize - 1] ^= 0x01;
    rec[20..24].fill(0);
    let crc = crc32c::crc32c(rec);
    rec[20..24].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, &bytes).expect("write");
}

#[test]
fn forged_record_with_valid_crc_is_caught_by_the_chain_and_never_replayed() {
    let data = tempfile::tempdir().expect("tempdir");
    check_middle_damage(&cfg(data.path()), 400, |segs| {
        let s = &segs[2];
        let (off, seq, total) = middle_record(s, 1);
        forge(&s.path, off, total);
        Expected {
            segment: s.name.clone(),
            offset: off,
            seq,
            reason: DamageReason::ChainBreak,
        }
    });
}

#[test]
fn forged_last_record_of_a_segment_is_caught_across_the_segment_boundary() {
    let data = tempfile::tempdir().expect("tempdir");
    check_middle_damage(&cfg(data.path()), 400, |segs| {
        let s = &segs[2];
        let &(off, seq, total) = s
            .records
            .iter()
            .rev()
            .find(|r| r.2 > 64)
            .expect("record with payload");
        forge(&s.path, off, total);
        Expected {
            segment: s.name.clone(),
            offset: off,
            seq,
            reason: DamageReason::ChainBreak,
        }
    });
}

#[test]
fn verify_reads_only_durable_bytes_while_the_writer_appends() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    let (mut log, _, _) = open(&c, None).expect("open");
    let hashes = append(&mut log, 0, 120);
    let pos = log.durable_position();
    assert_eq!((pos.next_seq, pos.head_hash), (120, hashes[119]));
    // A write in flight: half a record past the durable end of the current segment.
    let current = c.dir.join(segment_file_name(pos.segment_first_seq));
    let mut in_flight = fs::read(&current).expect("read");
    in_flight.extend_from_slice(&[b'R', b'B', b'L', b'G', 1, 0, 1, 0, 120]);
    fs::write(&current, &in_flight).expect("write");

    let mut count = 0;
    let v = verify(&c.dir, Some(&pos), |_| count += 1);
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!((v.records, v.head_hash, count), (120, hashes[119], 120));
    let v = verify(&c.dir, None, |_| {});
    assert!(
        !v.ok,
        "without a bound the in-flight bytes read as a torn tail"
    );
    assert!(v.errors[0].what.starts_with("torn tail"), "{:?}", v.errors);

    // A position the files do not reach is an error, not silence.
    let ahead = log::DurablePosition {
        next_seq: 121,
        ..pos
    };
    let v = verify(&c.dir, Some(&ahead), |_| {});
    assert!(
        !v.ok && v.errors[0].what.contains("writer made 121 records durable"),
        "{:?}",
        v.errors
    );
}

#[test]
fn verify_reports_a_missing_directory() {
    let data = tempfile::tempdir().expect("tempdir");
    let v = verify(&data.path().join("nope"), None, |_| {});
    assert!(!v.ok && v.errors.len() == 1, "{v:?}");
}

#[test]
fn empty_segment_left_by_a_crash_after_roll_is_reused() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    build(&c, 100);
    // Crash right after creating the next segment: an empty file named after the next record.
    fs::write(c.dir.join(segment_file_name(100)), b"").expect("create");
    let (mut log, report, seen) = open(&c, None).expect("open");
    assert!(report.damage.is_none(), "{report:?}");
    assert_eq!(seen.len(), 100);
    append(&mut log, 100, 110);
    assert!(
        fs::metadata(c.dir.join(segment_file_name(100)))
            .expect("stat")
            .len()
            > 0
    );
    drop(log);
    let (_, report, seen) = open(&c, None).expect("reopen");
    assert!(report.damage.is_none());
    assert_replayed(&seen, 0, 110);
}

#[test]
fn checkpoint_resume_replays_only_later_records() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    let (mut log, _, _) = open(&c, None).expect("open");
    let mut hashes = append(&mut log, 0, 150);
    let pos = log.durable_position();
    let path = checkpoint::write(
        data.path(),
        pos.next_seq - 1,
        pos.head_hash,
        b"state after 149",
    )
    .expect("write");
    assert_eq!(
        path,
        data.path().join("checkpoint-00000000000000000149.ckpt")
    );
    hashes.extend(append(&mut log, 150, 300));
    drop(log);

    let outcome = checkpoint::load_latest(data.path()).expect("load");
    assert!(outcome.skipped.is_empty());
    let loaded = outcome.loaded.expect("a checkpoint");
    assert_eq!(
        (loaded.seq, loaded.head_hash, loaded.state.as_slice()),
        (149, hashes[149], &b"state after 149"[..])
    );
    let resume = Resume {
        seq: loaded.seq,
        hash: loaded.head_hash,
    };
    let (log, report, seen) = open(&c, Some(resume)).expect("resume");
    assert_replayed(&seen, 150, 300);
    assert_eq!(report.records_replayed, 150);
    assert!(
        report.records_scanned < 300,
        "segments before the checkpoint are not read"
    );
    assert_eq!(log.head(), (300, hashes[299]));
}

#[test]
fn streamed_checkpoint_matches_the_whole_one_and_refuses_an_unstable_encoder() {
    let data = tempfile::tempdir().expect("tempdir");
    let state: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let whole = checkpoint::write(data.path(), 7, [3; 32], &state).expect("write");
    let whole_bytes = fs::read(&whole).expect("read");
    fs::remove_file(&whole).expect("remove");
    let streamed =
        checkpoint::write_streamed(data.path(), 7, [3; 32], state.len() as u64, &mut |sink| {
            state.chunks(999).try_for_each(&mut *sink)
        })
        .expect("write streamed");
    assert_eq!(
        fs::read(&streamed).expect("read"),
        whole_bytes,
        "the same file"
    );
    fs::remove_file(&streamed).expect("remove");

    // An encoder that gives other bytes the second time: refused, and nothing is left behind.
    let mut calls = 0;
    let err =
        checkpoint::write_streamed(data.path(), 8, [3; 32], state.len() as u64, &mut |sink| {
            calls += 1;
            let mut s = state.clone();
            s[5] ^= calls as u8;
            sink(&s)
        })
        .expect_err("unstable encoder");
    assert!(err.to_string().contains("differently"), "{err}");
    // A wrong announced length: refused before anything is written.
    let err = checkpoint::write_streamed(data.path(), 9, [3; 32], 5, &mut |sink| sink(&state))
        .expect_err("wrong length");
    assert!(err.to_string().contains("announced"), "{err}");
    assert_eq!(
        fs::read_dir(data.path()).expect("ls").count(),
        0,
        "no file left"
    );
}

#[test]
fn damaged_newest_checkpoint_falls_back_to_the_older_one() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    let (mut log, _, _) = open(&c, None).expect("open");
    let hashes = append(&mut log, 0, 250);
    drop(log);
    for seq in [50u64, 100, 200] {
        checkpoint::write(
            data.path(),
            seq,
            hashes[seq as usize],
            format!("state {seq}").as_bytes(),
        )
        .expect("write");
    }
    let listed: Vec<u64> = checkpoint::list(data.path())
        .expect("list")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(listed, [200, 100], "the newest two are kept");
    let newest = data.path().join(checkpoint::file_name(200));
    flip(&newest, 66);

    let outcome = checkpoint::load_latest(data.path()).expect("load");
    assert_eq!(outcome.skipped.len(), 1);
    assert_eq!(outcome.skipped[0].path, newest);
    assert!(matches!(
        outcome.skipped[0].error,
        checkpoint::CheckpointError::CrcMismatch { .. }
    ));
    let loaded = outcome.loaded.expect("fallback");
    assert_eq!(
        (loaded.seq, loaded.state.as_slice()),
        (100, &b"state 100"[..])
    );
    let (_, _, seen) = open(
        &c,
        Some(Resume {
            seq: loaded.seq,
            hash: loaded.head_hash,
        }),
    )
    .expect("resume");
    assert_replayed(&seen, 101, 250);
}

#[test]
fn checkpoint_that_does_not_match_the_log_is_refused() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    let hashes = build(&c, 120);
    let before = snapshot(&c.dir);

    let wrong = Resume {
        seq: 60,
        hash: hashes[59],
    };
    match open(&c, Some(wrong)) {
        Err(LogError::CheckpointMismatch { seq: 60, .. }) => {}
        other => panic!("expected CheckpointMismatch, got {:?}", other.map(|r| r.1)),
    }
    let ahead = Resume {
        seq: 500,
        hash: [1; 32],
    };
    match open(&c, Some(ahead)) {
        Err(LogError::CheckpointBeyondLog {
            checkpoint_seq: 500,
            log_next_seq: 120,
            ..
        }) => {}
        other => panic!("expected CheckpointBeyondLog, got {:?}", other.map(|r| r.1)),
    }
    assert_eq!(snapshot(&c.dir), before, "nothing changed");
}

#[test]
fn damage_before_the_checkpoint_is_never_cut() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    let hashes = build(&c, 300);
    let segs = layout(&c.dir);
    // Damage in the segment holding the checkpoint's record, before that record.
    let s = &segs[3];
    let (off, seq, total) = s.records[s.records.len() - 2];
    let ckpt = s.records.last().expect("records").1;
    flip(&s.path, off + total - 1);
    let before = snapshot(&c.dir);
    match open(
        &c,
        Some(Resume {
            seq: ckpt,
            hash: hashes[ckpt as usize],
        }),
    ) {
        Err(LogError::CheckpointBeyondLog {
            damage: Some(d), ..
        }) => assert_eq!((d.offset, d.seq), (off, seq)),
        other => panic!("expected CheckpointBeyondLog, got {:?}", other.map(|r| r.1)),
    }
    assert_eq!(snapshot(&c.dir), before, "nothing changed");
    // Damage after the checkpoint's record is cut as usual.
    let (_, report, seen) = open(
        &c,
        Some(Resume {
            seq: seq - 1,
            hash: hashes[seq as usize - 1],
        }),
    )
    .expect("open");
    assert_eq!(report.damage.expect("damage").seq, seq);
    assert!(seen.is_empty());
}

#[test]
fn failed_write_poisons_the_log() {
    let data = tempfile::tempdir().expect("tempdir");
    let c = cfg(data.path());
    fs::create_dir_all(&c.dir).expect("mkdir");
    // A real I/O error: the current segment is /dev/full, where every write fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", c.dir.join(segment_file_name(0))).expect("symlink");
    let (mut log, report, _) = open(&c, None).expect("open");
    assert!(report.damage.is_none());
    log.push(1, 1, b"x").expect("push");
    let err = log.commit().expect_err("ENOSPC");
    assert!(
        matches!(
            err,
            LogError::Io {
                op: "write segment",
                ..
            }
        ),
        "{err}"
    );
    assert!(log.poisoned().is_some());
    assert!(matches!(
        log.push(1, 2, b"y"),
        Err(LogError::Poisoned { .. })
    ));
    assert!(matches!(log.commit(), Err(LogError::Poisoned { .. })));
}

/// Release-mode timing, informative only: `REFBENCH_STRESS=1 cargo test --release -p refbench-ledger --test storage
/// stress_ -- --ignored --nocapture`.
#[test]
#[ignore = "stress timing; set REFBENCH_STRESS=1 and run with --ignored --release"]
fn stress_group_commit_1m_records() {
    if std::env::var_os("REFBENCH_STRESS").is_none() {
        eprintln!("stress_group_commit_1m_records: REFBENCH_STRESS not set, skipped");
        return;
    }
    let mib = vec![0x5Au8; 1 << 20];
    let t = Instant::now();
    let rounds = 100;
    for _ in 0..rounds {
        std::hint::black_box(crc32c::crc32c(&mib));
        std::hint::black_box(blake3::hash(&mib));
    }
    println!(
        "crc32c + blake3 of 1 MiB: {:.0} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );

    let data = tempfile::tempdir().expect("tempdir");
    let c = LogConfig::new(data.path());
    let (mut log, _, _) = open(&c, None).expect("open");
    let records = 1_000_000u64;
    let group = 1000u64;
    let payload = vec![0xA5u8; 1280];
    let mut fsync_ns = Vec::new();
    let mut write_ns = 0u64;
    let t = Instant::now();
    for g in 0..records / group {
        for i in 0..group {
            log.push(2, g * group + i, &payload).expect("push");
        }
        let stats = log.commit().expect("commit");
        fsync_ns.push(stats.fsync_ns);
        write_ns += stats.write_ns;
    }
    let elapsed = t.elapsed().as_secs_f64();
    fsync_ns.sort_unstable();
    let pct = |p: f64| fsync_ns[((fsync_ns.len() - 1) as f64 * p) as usize] as f64 / 1e6;
    println!(
        "{records} records x {} B in groups of {group}: {:.0} records/s, {:.0} MiB/s, write {:.2} s total, fsync p50 {:.2} ms p99 {:.2} ms",
        payload.len(),
        records as f64 / elapsed,
        (records * (payload.len() as u64 + 64)) as f64 / elapsed / f64::from(1 << 20),
        write_ns as f64 / 1e9,
        pct(0.5),
        pct(0.99),
    );
    drop(log);
    let t = Instant::now();
    let (_, report) = Log::open(c.clone(), None, |_| Ok::<_, BoxError>(())).expect("reopen");
    println!(
        "recovery scan of {} records: {:.2} s",
        report.records_scanned,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let v = verify(&c.dir, None, |_| {});
    assert!(v.ok);
    println!(
        "verify of {} records: {:.2} s",
        v.records,
        t.elapsed().as_secs_f64()
    );
}
