//! Options, recovery and the serving loop: what the binary and `loadgen serve ledger` run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use refbench_common::admin::{metrics_handle, serve_admin};
use refbench_common::announce::{Ready, announce};
use refbench_common::bind::{DEFAULT_BIND, bind_tcp};
use refbench_common::cpu::{ProcessArgs, pin_to_cpus};
use refbench_common::h1::serve_h1;
use refbench_common::http::Limits as HttpLimits;
use refbench_common::shutdown::{self, Shutdown};

use crate::api::{LedgerApp, MAX_REQUEST_BODY_BYTES};
use crate::checkpoint;
use crate::error::LedgerError;
use crate::log::{Log, LogConfig, LogError, OnDamage, RecoveryReport, Resume};
use crate::metrics::LedgerMetrics;
use crate::state::{Limits, State};
use crate::types::RecordKind;
use crate::writer::{self, FlushPacing, WriterConfig, WriterHandle};

/// The `system` name in the readiness line.
pub const SYSTEM: &str = "ledger";

/// What to do with damage found in the middle of the log at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DamagePolicy {
    /// Keep everything before the damage, move the rest to `quarantine/`, report it, and serve.
    Truncate,
    /// Refuse to start, naming the position; an operator decides.
    Refuse,
}

/// Command-line options of the ledger server; flatten into a clap `Parser`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    /// Address of the API listener (HTTP/1.1 and h2c).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// Address of the admin listener (/metrics, /healthz).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
    pub admin_bind: SocketAddr,

    /// Data directory (log segments, checkpoints). Default: a fresh temporary directory, removed on a clean
    /// shutdown; a given directory is never removed.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// A log segment is closed and a new one started past this size.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub segment_bytes: u64,

    /// Segment space written ahead of the records (0 = segments grow with every flush). A flush that only
    /// overwrites preallocated space syncs data alone; one that grows the file also commits its new size to the
    /// file system journal. See `LogConfig::preallocate_bytes`.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_PREALLOCATE_BYTES)]
    pub preallocate_bytes: u64,

    /// A checkpoint is written after this many log bytes, or after as many as the last checkpoint's size if that is
    /// larger (so checkpoint writes never exceed log writes); bounds the replay on restart.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub checkpoint_every_bytes: u64,

    /// Requests waiting for the writer; more get 503.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub queue: usize,

    /// Most requests sharing one flush.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_group_jobs: usize,

    /// Most items (accounts + transfers) sharing one flush.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    pub max_group_items: usize,

    /// How the gap between flushes is chosen: adaptive (back to back while flushes are fast, backing off up to
    /// --flush-gap-us when they stall) or fixed (always --flush-gap-us). See `writer::FlushPacing`.
    #[arg(long, value_enum, default_value_t = FlushPacing::Adaptive)]
    pub flush_pacing: FlushPacing,

    /// The longest gap (adaptive) or the gap (fixed) between the end of one flush and the start of the next;
    /// requests arriving meanwhile join the next flush (0 = always back to back). Fewer, fuller flushes keep a
    /// virtual disk out of its throttled path: see `WriterConfig::flush_gap` and `examples/sync_rate_probe.rs`.
    #[arg(long, value_name = "US", default_value_t = DEFAULT_FLUSH_GAP_US)]
    pub flush_gap_us: u64,

    /// Accounts kept (in memory); more get `capacity_exceeded`.
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pub max_accounts: usize,

    /// Transfers kept (in memory, 128 bytes each plus indexes); more get `capacity_exceeded`.
    #[arg(long, value_name = "N", default_value_t = 50_000_000)]
    pub max_transfers: usize,

    /// Damage in the middle of the log at start-up: truncate (quarantining the rest) or refuse to start.
    #[arg(long, value_enum, default_value_t = DamagePolicy::Truncate)]
    pub on_damage: DamagePolicy,

    /// --threads, --cpus, --max-connections.
    #[command(flatten)]
    pub process: ProcessArgs,
}

impl Default for ServeArgs {
    /// The same values as the command-line defaults.
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Wrapper::try_parse_from(["ledger-writer"])
            .expect("defaults of ServeArgs parse")
            .serve
    }
}

/// Validated options.
#[derive(Debug, Clone)]
pub struct ServePlan {
    /// API listener.
    pub bind: SocketAddr,
    /// Admin listener.
    pub admin_bind: SocketAddr,
    /// Data directory; `None` = a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Log layout.
    pub segment_bytes: u64,
    /// Segment space written ahead of the records.
    pub preallocate_bytes: u64,
    /// What recovery does with damage.
    pub on_damage: DamagePolicy,
    /// Writer batching and checkpoints (its `data_dir` is filled in at start).
    pub writer: WriterConfig,
    /// Writer queue bound.
    pub queue: usize,
    /// State limits.
    pub limits: Limits,
    /// HTTP runtime threads.
    pub threads: usize,
    /// Cores to pin to.
    pub cpus: Vec<usize>,
    /// HTTP limits.
    pub http: HttpLimits,
}

/// Upper bounds of the numeric flags.
const MAX_SEGMENT_BYTES: u64 = crate::log::MAX_SEGMENT_BYTES;
/// A segment must hold at least one maximal record (header + a full batch).
const MIN_SEGMENT_BYTES: u64 = (MAX_RECORD_PAYLOAD_BYTES + crate::log::RECORD_HEADER_BYTES) as u64;
const MAX_QUEUE: usize = 1 << 20;
/// Pacing longer than this would only add latency: at 100 ms a flush per gap holds a whole batch anyway.
const MAX_FLUSH_GAP_US: u64 = 100_000;
/// See `WriterConfig::flush_gap`; chosen with `profiles/ledger-flush-gap.toml`.
const DEFAULT_FLUSH_GAP_US: u64 = 1000;
/// See `LogConfig::preallocate_bytes`: one journal commit per MiB of log instead of one per flush.
const DEFAULT_PREALLOCATE_BYTES: u64 = 1 << 20;

impl ServeArgs {
    /// Validates the flags once; errors name the flag.
    pub fn resolve(&self) -> Result<ServePlan, LedgerError> {
        let range = |flag: &'static str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(LedgerError::invalid(
                    flag,
                    format!("must be between {lo} and {hi}, got {v}"),
                ))
            } else {
                Ok(())
            }
        };
        range(
            "--segment-bytes",
            self.segment_bytes,
            MIN_SEGMENT_BYTES,
            MAX_SEGMENT_BYTES,
        )?;
        range(
            "--checkpoint-every-bytes",
            self.checkpoint_every_bytes,
            1 << 16,
            1 << 40,
        )?;
        range("--queue", self.queue as u64, 1, MAX_QUEUE as u64)?;
        range(
            "--max-group-jobs",
            self.max_group_jobs as u64,
            1,
            MAX_QUEUE as u64,
        )?;
        range("--max-group-items", self.max_group_items as u64, 1, 1 << 24)?;
        range("--flush-gap-us", self.flush_gap_us, 0, MAX_FLUSH_GAP_US)?;
        range(
            "--preallocate-bytes",
            self.preallocate_bytes,
            0,
            crate::log::MAX_PREALLOCATE_BYTES,
        )?;
        range("--max-accounts", self.max_accounts as u64, 1, 1 << 32)?;
        range("--max-transfers", self.max_transfers as u64, 1, 1 << 32)?;
        // The same limits and messages as every other server's.
        let process = self
            .process
            .validate()
            .map_err(|(flag, reason)| LedgerError::invalid(flag, reason))?;
        let cpus = process.cpus;
        Ok(ServePlan {
            bind: self.bind,
            admin_bind: self.admin_bind,
            data_dir: self.data_dir.clone(),
            segment_bytes: self.segment_bytes,
            preallocate_bytes: self.preallocate_bytes,
            on_damage: self.on_damage,
            writer: WriterConfig {
                max_group_jobs: self.max_group_jobs,
                max_group_items: self.max_group_items,
                flush_pacing: self.flush_pacing,
                flush_gap: std::time::Duration::from_micros(self.flush_gap_us),
                checkpoint_every_bytes: self.checkpoint_every_bytes,
                data_dir: PathBuf::new(),
                checkpoint_on_stop: true,
            },
            queue: self.queue,
            limits: Limits {
                max_accounts: self.max_accounts,
                max_transfers: self.max_transfers,
            },
            threads: process.threads,
            cpus,
            http: HttpLimits {
                max_connections: process.max_connections,
                max_body_bytes: MAX_REQUEST_BODY_BYTES,
                ..HttpLimits::default()
            },
        })
    }
}

/// What start-up recovered.
pub struct Recovered {
    /// The rebuilt state.
    pub state: State,
    /// The log, open for appending.
    pub log: Log,
    /// What the log scan found (truncations included).
    pub report: RecoveryReport,
    /// The checkpoint used (its last record), if any.
    pub checkpoint_seq: Option<u64>,
    /// Damaged checkpoints skipped, with the reason.
    pub skipped_checkpoints: Vec<String>,
    /// Records replayed after the checkpoint.
    pub replayed_records: u64,
    /// Wall time of the recovery.
    pub elapsed: Duration,
}

/// Opens (or creates) the ledger in `data_dir`: newest valid checkpoint, then the log after it, verified record by
/// record, a torn tail truncated, damage handled by `on_damage`.
pub fn open_ledger(
    data_dir: &Path,
    segment_bytes: u64,
    preallocate_bytes: u64,
    on_damage: DamagePolicy,
    limits: Limits,
) -> Result<Recovered, LedgerError> {
    let started = Instant::now();
    let log_dir = data_dir.join("log");
    std::fs::create_dir_all(&log_dir).map_err(|source| LedgerError::DataDir {
        path: log_dir.clone(),
        source,
    })?;
    let cfg = LogConfig {
        segment_bytes,
        preallocate_bytes,
        // Every record the writer makes is one request's applied items or one chunk of expiries, both at most a
        // full batch of 128-byte records; a tighter limit lets small segments work.
        max_record_payload_bytes: MAX_RECORD_PAYLOAD_BYTES as u32,
        on_damage: match on_damage {
            DamagePolicy::Truncate => OnDamage::Truncate,
            DamagePolicy::Refuse => OnDamage::Refuse,
        },
        ..LogConfig::new(data_dir)
    };
    // Newest checkpoint first, then older ones, then a full replay. A checkpoint that the log does not match (its
    // record lies in damage or past the end) cannot vouch for that log: under the truncate policy it is set aside and
    // the next candidate is tried, so damage covered by the newest checkpoint is cut like any other; under the
    // refuse policy recovery stops there, naming it.
    let mut skipped_checkpoints: Vec<String> = Vec::new();
    let mut candidates = checkpoint::list(data_dir)?.into_iter();
    loop {
        let candidate = match candidates.next() {
            Some((_, path)) => match checkpoint::load(&path) {
                Ok(c) => Some(c),
                Err(e) => {
                    skipped_checkpoints.push(format!("{}: {e}", path.display()));
                    continue;
                }
            },
            None => None,
        };
        let (state, resume, path) = match &candidate {
            Some(c) => {
                let state =
                    State::restore(&c.state, limits).map_err(|e| LedgerError::Snapshot {
                        path: c.path.clone(),
                        reason: e.to_string(),
                    })?;
                let resume = Resume {
                    seq: c.seq,
                    hash: c.head_hash,
                };
                (state, Some(resume), Some(c.path.clone()))
            }
            None => (State::new(limits), None, None),
        };
        match replay_log(cfg.clone(), state, resume) {
            Ok((state, log, report, replayed_records)) => {
                return Ok(Recovered {
                    state,
                    log,
                    report,
                    checkpoint_seq: resume.map(|r| r.seq),
                    skipped_checkpoints,
                    replayed_records,
                    elapsed: started.elapsed(),
                });
            }
            Err(LedgerError::Log(
                e @ (LogError::CheckpointBeyondLog { .. } | LogError::CheckpointMismatch { .. }),
            )) if on_damage == DamagePolicy::Truncate => {
                let path = path.expect("only a checkpoint can mismatch the log");
                let aside = set_aside(&cfg.quarantine_dir, &path)?;
                skipped_checkpoints.push(format!(
                    "{}: {e}; moved to {}",
                    path.display(),
                    aside.display()
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Largest payload of one log record: a full batch of 128-byte records (an expiry record holds at most as many
/// bytes of 16-byte ids).
pub const MAX_RECORD_PAYLOAD_BYTES: usize = crate::types::MAX_BATCH * crate::types::RECORD_BYTES;

type Replayed = (State, Log, RecoveryReport, u64);

/// Opens the log after `resume`, replaying every later record into `state`.
fn replay_log(
    cfg: LogConfig,
    mut state: State,
    resume: Option<Resume>,
) -> Result<Replayed, LedgerError> {
    let mut replayed_records = 0u64;
    let (log, report) = Log::open(cfg, resume, |rec| {
        let kind = RecordKind::from_u16(rec.kind).ok_or_else(|| LedgerError::Replay {
            seq: rec.seq,
            reason: format!("unknown record kind {}", rec.kind),
        })?;
        state
            .replay(kind, rec.timestamp_ns, rec.payload)
            .map_err(|e| LedgerError::Replay {
                seq: rec.seq,
                reason: e.to_string(),
            })?;
        replayed_records += 1;
        Ok::<(), LedgerError>(())
    })?;
    Ok((state, log, report, replayed_records))
}

/// Moves a checkpoint the log cannot vouch for into the quarantine folder (never deleted: an operator may want it).
fn set_aside(quarantine: &Path, path: &Path) -> Result<PathBuf, LedgerError> {
    std::fs::create_dir_all(quarantine).map_err(|source| LedgerError::DataDir {
        path: quarantine.to_path_buf(),
        source,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let to = quarantine.join(format!("{name}.stale"));
    std::fs::rename(path, &to).map_err(|source| LedgerError::DataDir {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(to)
}

/// A ledger server running on the caller's runtime (see [`start`]).
#[derive(Debug)]
pub struct Started {
    /// Bound address of the API listener.
    pub http_addr: SocketAddr,
    /// Bound address of the admin listener.
    pub admin_addr: SocketAddr,
    /// The data directory in use.
    pub data_dir: PathBuf,
    /// The writer's handle.
    pub writer: WriterHandle,
    http: tokio::task::JoinHandle<Result<(), refbench_common::CommonError>>,
    admin: tokio::task::JoinHandle<Result<(), refbench_common::CommonError>>,
    writer_thread: std::thread::JoinHandle<()>,
    /// Keeps a default temporary data directory alive; dropped (removed) after the writer stopped.
    temp: Option<tempfile::TempDir>,
}

impl Started {
    /// The readiness announcement.
    pub fn ready(&self) -> Ready {
        let mut listeners = BTreeMap::new();
        listeners.insert("http".to_string(), self.http_addr);
        listeners.insert("admin".to_string(), self.admin_addr);
        Ready {
            system: SYSTEM.to_string(),
            pid: std::process::id(),
            listeners,
            tls_cert_pem: None,
        }
    }

    /// Waits until the listeners drained (after shutdown fired), then until the writer flushed what was queued and
    /// wrote its final checkpoint.
    pub async fn join(self) -> Result<(), LedgerError> {
        let http = flatten("http", self.http.await);
        let admin = flatten("admin", self.admin.await);
        // The listeners hold the only other senders; with them gone the writer sees the queue close.
        drop(self.writer);
        let writer_thread = self.writer_thread;
        let joined = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        let writer = match joined {
            Ok(Ok(())) => Ok(()),
            _ => Err(LedgerError::Task {
                task: "writer",
                reason: "panicked".into(),
            }),
        };
        drop(self.temp);
        http.and(admin).and(writer)
    }
}

fn flatten(
    task: &'static str,
    r: Result<Result<(), refbench_common::CommonError>, tokio::task::JoinError>,
) -> Result<(), LedgerError> {
    match r {
        Ok(inner) => inner.map_err(LedgerError::from),
        Err(e) => Err(LedgerError::Task {
            task,
            reason: e.to_string(),
        }),
    }
}

/// Recovers the ledger, starts the writer, binds both listeners and serves on the current runtime until `shutdown`.
pub async fn start(plan: &ServePlan, shutdown: Shutdown) -> Result<Started, LedgerError> {
    let handle = metrics_handle()?;
    let metrics = LedgerMetrics::new();
    let (data_dir, temp) = match &plan.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("refbench-ledger-")
                .tempdir()
                .map_err(|source| LedgerError::DataDir {
                    path: std::env::temp_dir(),
                    source,
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let rec = open_ledger(
        &data_dir,
        plan.segment_bytes,
        plan.preallocate_bytes,
        plan.on_damage,
        plan.limits,
    )?;
    eprintln!(
        "ledger-writer: recovered {} in {:.3} s: checkpoint {:?}, {} records replayed, {} records in the log{}",
        data_dir.display(),
        rec.elapsed.as_secs_f64(),
        rec.checkpoint_seq,
        rec.replayed_records,
        rec.log.head().0,
        rec.report
            .damage
            .as_ref()
            .map(|d| format!("; DROPPED: {d}"))
            .unwrap_or_default()
    );
    for s in &rec.skipped_checkpoints {
        eprintln!("ledger-writer: skipped damaged checkpoint {s}");
    }
    let mut wcfg = plan.writer.clone();
    wcfg.data_dir = data_dir.clone();
    wcfg.checkpoint_on_stop = temp.is_none();
    let (writer, writer_thread) = writer::spawn(rec.state, rec.log, wcfg, plan.queue, metrics)
        .map_err(|source| LedgerError::Spawn {
            what: "writer thread",
            source,
        })?;
    let http = bind_tcp(plan.bind).await?;
    let admin = bind_tcp(plan.admin_bind).await?;
    let http_addr = http.local_addr().map_err(|source| LedgerError::LocalAddr {
        listener: "http",
        source,
    })?;
    let admin_addr = admin
        .local_addr()
        .map_err(|source| LedgerError::LocalAddr {
            listener: "admin",
            source,
        })?;
    let app = LedgerApp::new(writer.clone(), data_dir.clone());
    let http = tokio::spawn(serve_h1(http, app, plan.http.clone(), shutdown.clone()));
    let admin = tokio::spawn(serve_admin(admin, handle, shutdown));
    Ok(Started {
        http_addr,
        admin_addr,
        data_dir,
        writer,
        http,
        admin,
        writer_thread,
        temp,
    })
}

/// The whole server: validate, pin, build the runtime, recover, announce `REFBENCH_READY`, serve until
/// SIGTERM/SIGINT, drain, flush, checkpoint, return.
pub fn run(args: ServeArgs) -> Result<(), LedgerError> {
    let plan = args.resolve()?;
    pin_to_cpus(&plan.cpus)?;
    let runtime =
        refbench_common::runtime::build(plan.threads, "ledger-http").map_err(|source| {
            LedgerError::Spawn {
                what: "tokio runtime",
                source,
            }
        })?;
    let result = runtime.block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        shutdown::trigger_on_signals(trigger)?;
        let started = start(&plan, shutdown).await?;
        announce(&started.ready());
        started.join().await
    });
    runtime.shutdown_timeout(refbench_common::runtime::SHUTDOWN_TIMEOUT);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag is checked once, and a refusal names the flag.
    #[test]
    fn resolve_refuses_bad_flags_by_name() {
        assert!(ServeArgs::default().resolve().is_ok());
        type Spoil = fn(&mut ServeArgs);
        let cases: [(&str, Spoil); 8] = [
            ("--threads", |a| a.process.threads = 0),
            ("--cpus", |a| a.process.cpus = vec![usize::MAX]),
            ("--max-connections", |a| a.process.max_connections = 0),
            ("--segment-bytes", |a| a.segment_bytes = 1),
            ("--queue", |a| a.queue = 0),
            ("--flush-gap-us", |a| a.flush_gap_us = MAX_FLUSH_GAP_US + 1),
            ("--max-transfers", |a| a.max_transfers = 0),
            ("--preallocate-bytes", |a| {
                a.preallocate_bytes = crate::log::MAX_PREALLOCATE_BYTES + 1
            }),
        ];
        for (flag, spoil) in cases {
            let mut args = ServeArgs::default();
            spoil(&mut args);
            match args.resolve() {
                Err(LedgerError::InvalidArg { flag: named, .. }) => assert_eq!(named, flag),
                other => panic!("{flag}: {other:?}"),
            }
        }
    }
}
