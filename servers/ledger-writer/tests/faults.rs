//! Storage faults through the server: damage the files a stopped server left, then check that `ledger-writer
//! verify` reports the position, that `--on-damage refuse` refuses to start and changes nothing, and that the
//! default policy starts, says in its recovery line what it dropped and where, keeps every transfer before the
//! damage, moves the dropped bytes to `quarantine/` and serves a log that verifies.
//!
//! The layout: 11 records (accounts + 10 transfers) and a checkpoint written by a SIGTERM shutdown, then 120
//! records of one transfer each written by a second run that is SIGKILLed (so no newer checkpoint covers them).
//! Damage goes into that second part. Damage a shutdown checkpoint already covers is
//! `damage_covered_by_the_shutdown_checkpoint`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const PHASE_A: u128 = 10;
const PHASE_B: u128 = 120;

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    segment: PathBuf,
    /// Phase-B records in order: (seq, offset, len, transfer id).
    b: Vec<RecordPos>,
}

fn transfer(id: u128) -> Tr {
    Tr {
        id,
        debit: 1,
        credit: 2,
        amount: id,
        user_data: id + 1,
        currency: USD,
        code: 1,
        ..Tr::default()
    }
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    // Phase A: accounts and PHASE_A transfers, one record each; SIGTERM writes a checkpoint at the head.
    let server = Server::start(&dir, &[]);
    let mut conn = Conn::connect(server.http).await.expect("connect");
    let (status, _) = conn
        .create_accounts(&[Acct::new(1, USD), Acct::new(2, USD)])
        .await;
    assert_eq!(status, 200);
    for id in 1..=PHASE_A {
        assert_eq!(
            conn.create_transfers(&[transfer(id)]).await.1,
            vec![(OK, conn_ts(&mut conn, id).await)]
        );
    }
    drop(conn);
    server.term();
    assert!(
        dir.join(format!("checkpoint-{:020}.ckpt", PHASE_A))
            .exists(),
        "shutdown checkpoint at record {PHASE_A}"
    );
    // Phase B: one record per transfer, then kill -9 (no checkpoint covers them).
    let server = Server::start(&dir, &[]);
    let mut conn = Conn::connect(server.http).await.expect("connect");
    for id in PHASE_A + 1..=PHASE_A + PHASE_B {
        let (status, results) = conn.create_transfers(&[transfer(id)]).await;
        assert_eq!((status, results[0].0), (200, OK));
    }
    let status = conn.status().await;
    assert_eq!(status["records"], (1 + PHASE_A + PHASE_B) as u64);
    drop(conn);
    server.kill9();
    let segs = segments(&dir);
    assert_eq!(segs.len(), 1);
    let recs = records(&segs[0]);
    assert_eq!(recs.len() as u128, 1 + PHASE_A + PHASE_B);
    let b: Vec<RecordPos> = recs[(1 + PHASE_A) as usize..].to_vec();
    for (i, r) in b.iter().enumerate() {
        assert_eq!(r.first_id, PHASE_A + 1 + i as u128);
        assert_eq!(r.seq, 1 + PHASE_A as u64 + i as u64);
    }
    Setup {
        _tmp: tmp,
        segment: segs[0].clone(),
        dir,
        b,
    }
}

/// The stored timestamp of transfer `id` (for the phase-A assertion).
async fn conn_ts(conn: &mut Conn, id: u128) -> u64 {
    conn.lookup_transfers(&[id]).await[0].timestamp
}

fn seg_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// `ledger-writer verify` on the damaged directory: exit 1, the first error at `offset` / `seq` saying `what`.
fn assert_verify_reports(s: &Setup, offset: u64, seq: u64, what: &str) {
    let (code, report) = verify_cli(&s.dir);
    assert_eq!(code, 1, "verify on a damaged dir: {report}");
    assert_eq!(report["ok"], false);
    let e = &report["errors"][0];
    assert_eq!(e["segment"], seg_name(&s.segment).as_str(), "{report}");
    assert_eq!(e["offset"], offset, "{report}");
    assert_eq!(e["seq"], seq, "{report}");
    assert!(
        e["what"].as_str().unwrap_or("").contains(what),
        "want {what:?}: {report}"
    );
    assert_eq!(
        report["records"], seq,
        "records verified before the damage: {report}"
    );
}

/// `--on-damage refuse`: a non-zero exit naming the segment and offset; not one byte changed.
fn assert_refuses(s: &Setup, offset: u64) {
    let before = snapshot_files(&s.dir);
    let f = match Server::try_start(&s.dir, &["--on-damage", "refuse"]) {
        Ok(_) => panic!("the server started on a damaged log with --on-damage refuse"),
        Err(f) => f,
    };
    assert!(!f.status.success(), "{}", f.stderr);
    assert!(
        f.stderr.contains(&seg_name(&s.segment))
            && f.stderr.contains(&format!("at offset {offset}")),
        "the refusal names the segment and offset {offset}: {}",
        f.stderr
    );
    assert!(f.stderr.contains("refuse"), "{}", f.stderr);
    assert!(
        before == snapshot_files(&s.dir),
        "a refused start changed files"
    );
}

/// The default policy: starts, reports the drop, keeps everything before `cut` (the index in phase B of the
/// first record dropped), quarantines the dropped bytes, verifies, and takes new writes.
async fn assert_recovers(
    s: &Setup,
    cut: usize,
    offset: u64,
    class: &str,
    reason: &str,
    extra: &[&str],
) {
    let damaged = std::fs::read(&s.segment).expect("read segment");
    let cut_seq = s.b[cut].seq;
    let server = Server::start(&s.dir, extra);
    let line = server.recovery_line();
    let want = format!("DROPPED: {class}: {reason}");
    assert!(line.contains(&want), "want {want:?} in: {line}");
    assert!(
        line.contains(&format!(
            "{} at offset {offset} (record {cut_seq})",
            s.segment.display()
        )),
        "the recovery line names segment, offset {offset} and record {cut_seq}: {line}"
    );
    assert!(
        line.contains("checkpoint Some(10)"),
        "recovery resumed from the shutdown checkpoint: {line}"
    );
    // The quarantine holds exactly the bytes cut off.
    let q = s
        .dir
        .join("quarantine")
        .join(format!("{}.{offset}.bin", seg_name(&s.segment)));
    assert!(
        line.contains(&q.display().to_string()),
        "names the quarantine file {}: {line}",
        q.display()
    );
    assert_eq!(
        std::fs::read(&q).expect("quarantine file"),
        damaged[offset as usize..],
        "quarantined bytes"
    );
    assert_eq!(
        std::fs::metadata(&s.segment).expect("segment").len(),
        offset,
        "log cut at the damage"
    );
    let mut conn = Conn::connect(server.http).await.expect("connect");
    let v = conn.verify().await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["records"], cut_seq, "{v}");
    // Everything before the damage is there; nothing from the cut on.
    let kept: Vec<u128> = (1..=PHASE_A + cut as u128).collect();
    let got = conn.lookup_transfers(&kept).await;
    assert_eq!(got.len(), kept.len(), "transfers before the damage");
    for (t, id) in got.iter().zip(&kept) {
        assert_eq!(Tr { timestamp: 0, ..*t }, transfer(*id));
    }
    let dropped: Vec<u128> = (PHASE_A + 1 + cut as u128..=PHASE_A + PHASE_B).collect();
    assert!(
        conn.lookup_transfers(&dropped).await.is_empty(),
        "transfers from the damage on are gone"
    );
    let status = conn.status().await;
    assert_eq!(status["transfers"], (PHASE_A + cut as u128) as u64);
    assert_eq!(status["currencies"]["USD"]["balanced"], true);
    // It takes writes again, and they chain on the cut log.
    let (code, results) = conn.create_transfers(&[transfer(10_000)]).await;
    assert_eq!((code, results[0].0), (200, OK));
    let v = conn.verify().await;
    assert_eq!(
        (v["ok"].clone(), v["records"].clone()),
        (true.into(), (cut_seq + 1).into()),
        "{v}"
    );
    drop(conn);
    server.term();
    let (code, report) = verify_cli(&s.dir);
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_cut_under_either_policy() {
    let s = setup().await;
    let last = *s.b.last().expect("records");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.segment)
        .expect("open");
    f.set_len(last.offset + 100).expect("truncate");
    drop(f);
    assert_verify_reports(&s, last.offset, last.seq, "torn tail: truncated record");
    // A torn tail is the normal aftermath of a crash: cut even with --on-damage refuse.
    assert_recovers(
        &s,
        s.b.len() - 1,
        last.offset,
        "torn tail",
        "truncated record",
        &["--on-damage", "refuse"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_flip_in_a_middle_record() {
    let s = setup().await;
    let k = 60;
    let r = s.b[k];
    let mut bytes = std::fs::read(&s.segment).expect("read");
    bytes[(r.offset + 64 + 50) as usize] ^= 0x10; // a bit of the amount
    std::fs::write(&s.segment, &bytes).expect("write");
    assert_verify_reports(&s, r.offset, r.seq, "corruption: crc mismatch");
    assert_refuses(&s, r.offset);
    assert_recovers(&s, k, r.offset, "corruption", "crc mismatch", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeroed_4k_block_in_the_middle() {
    let s = setup().await;
    let mut bytes = std::fs::read(&s.segment).expect("read");
    let block = s.b[20].offset.next_multiple_of(4096);
    let end = block + 4096;
    assert!(end < s.b.last().unwrap().offset, "records follow the block");
    bytes[block as usize..end as usize].fill(0);
    std::fs::write(&s.segment, &bytes).expect("write");
    // The first record the zeros touch is the first one dropped.
    let k =
        s.b.iter()
            .position(|r| r.offset + r.len > block)
            .expect("a record overlaps the block");
    let r = s.b[k];
    assert_verify_reports(&s, r.offset, r.seq, "corruption: zero-filled");
    assert_refuses(&s, r.offset);
    assert_recovers(&s, k, r.offset, "corruption", "zero-filled", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_cut_out_of_the_middle() {
    let s = setup().await;
    let k = 60;
    let r = s.b[k];
    let mut bytes = std::fs::read(&s.segment).expect("read");
    bytes.drain(r.offset as usize..(r.offset + r.len) as usize);
    std::fs::write(&s.segment, &bytes).expect("write");
    let reason = format!("seq mismatch (expected {}, found {})", r.seq, r.seq + 1);
    assert_verify_reports(&s, r.offset, r.seq, &reason);
    assert_refuses(&s, r.offset);
    assert_recovers(&s, k, r.offset, "corruption", &reason, &[]).await;
}

/// Damage at or before the record of the newest checkpoint (a SIGTERM always leaves one at the head): under the
/// default `--on-damage truncate` the server sets that checkpoint aside, falls back to an older one or a full
/// replay, cuts the damage and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_covered_by_the_shutdown_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, &[]);
    let mut conn = Conn::connect(server.http).await.expect("connect");
    conn.create_accounts(&[Acct::new(1, USD), Acct::new(2, USD)])
        .await;
    for id in 1..=20 {
        conn.create_transfers(&[transfer(id)]).await;
    }
    drop(conn);
    server.term();
    let seg = &segments(&dir)[0];
    let last = *records(seg).last().expect("records");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(seg)
        .expect("open");
    f.set_len(last.offset + 100).expect("truncate");
    drop(f);
    let server = match Server::try_start(&dir, &[]) {
        Ok(s) => s,
        Err(f) => panic!(
            "the default policy refused to start ({}): {}",
            f.status, f.stderr
        ),
    };
    let line = server.recovery_line();
    assert!(line.contains("DROPPED: torn tail"), "{line}");
    let mut conn = Conn::connect(server.http).await.expect("connect");
    assert_eq!(conn.verify().await["ok"], true);
    assert_eq!(
        conn.lookup_transfers(&(1..=19).collect::<Vec<_>>())
            .await
            .len(),
        19
    );
}

/// `--segment-bytes` at its documented minimum (one maximal record: a full batch plus the header) starts, and below
/// it the flag is refused naming the bound.
#[test]
fn small_segment_bytes_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let min = (refbench_ledger::server::MAX_RECORD_PAYLOAD_BYTES + 64).to_string();
    match Server::try_start(&tmp.path().join("data"), &["--segment-bytes", &min]) {
        Ok(s) => {
            s.term();
        }
        Err(f) => panic!(
            "--segment-bytes {min} (the documented minimum) did not start: {}",
            f.stderr
        ),
    }
    let below = (refbench_ledger::server::MAX_RECORD_PAYLOAD_BYTES + 63).to_string();
    match Server::try_start(&tmp.path().join("data2"), &["--segment-bytes", &below]) {
        Ok(s) => {
            s.term();
            panic!("--segment-bytes {below} was accepted");
        }
        Err(f) => assert!(f.stderr.contains("--segment-bytes"), "{}", f.stderr),
    }
}
