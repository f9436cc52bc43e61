//! Trace-driven hit-ratio comparison of the memory tier's eviction policies against LRU.
//!
//! For each Zipf exponent a seeded trace is generated (see `refbench_cdn::evict::trace`), and for each cache size
//! (a percentage of the working set in bytes) every policy replays it from empty; the first `--warmup-share` of the
//! requests fill the cache and are not counted. Hit ratios are deterministic given the parameters; the ns per
//! request figure is wall time and noisy. Prints a table and writes a JSON document (`--out`).
//!
//! `scripts/cdn-hit-ratio.sh` runs this in release and writes `results/baselines/cdn-hit-ratio.json`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use refbench_cdn::evict::trace::{
    SIZE_BUCKETS, SimOutcome, Trace, simulate_kind, size_distribution_description,
};
use refbench_cdn::evict::{
    CacheConfig, DEFAULT_MAX_OBJECT_SHARE, MemoryPolicy, Policy, PolicyKind,
};
use serde_json::{Value, json};

/// The issue's target: the chosen policy's object hit ratio at least this many points above LRU ...
const TARGET_POINTS: f64 = 5.0;
/// ... at this cache size (% of the working set) ...
const TARGET_CACHE_PERCENT: f64 = 1.0;
/// ... on this Zipf exponent.
const TARGET_ZIPF: f64 = 1.0;

#[derive(Debug, Parser)]
#[command(about = "Trace-driven hit ratio of the memory tier's eviction policies vs LRU")]
struct Args {
    /// Distinct objects in the trace.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
    /// Requests per trace (per Zipf exponent).
    #[arg(long, default_value_t = 5_000_000)]
    requests: usize,
    /// Seed for sizes, key hashes and request order.
    #[arg(long, default_value_t = 20_240_601)]
    seed: u64,
    /// Share of each trace used as warm-up (replayed, not counted).
    #[arg(long, default_value_t = 0.1)]
    warmup_share: f64,
    /// Zipf exponents, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.8, 1.0, 1.2])]
    zipf: Vec<f64>,
    /// Cache sizes in percent of the working set (bytes), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 1.0, 10.0])]
    cache_percent: Vec<f64>,
    /// Policies (lru, s3fifo, wtinylfu), comma-separated; LRU is the baseline and is always run.
    #[arg(long, value_delimiter = ',', default_values_t = ["lru".to_string(), "s3fifo".to_string(), "wtinylfu".to_string()])]
    policies: Vec<String>,
    /// Largest object as a share of the cache capacity.
    #[arg(long, default_value_t = DEFAULT_MAX_OBJECT_SHARE)]
    max_object_share: f64,
    /// Where to write the JSON document (not written when absent).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The command line to record in the JSON document.
    #[arg(
        long,
        default_value = "cargo run --release -p refbench-cdn --example hit_ratio"
    )]
    command: String,
}

struct Row {
    zipf: f64,
    cache_percent: f64,
    capacity_bytes: u64,
    kind: PolicyKind,
    outcome: SimOutcome,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.keys == 0 || args.requests == 0 {
        bail!("--keys and --requests must be positive");
    }
    if !(0.0..1.0).contains(&args.warmup_share) {
        bail!("--warmup-share must be in [0, 1)");
    }
    if args.cache_percent.iter().any(|&p| !(p > 0.0 && p <= 100.0)) {
        bail!("--cache-percent values must be in (0, 100]");
    }
    let mut kinds = vec![PolicyKind::Lru];
    for name in &args.policies {
        let kind =
            PolicyKind::from_name(name).with_context(|| format!("unknown policy {name:?}"))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let chosen =
        PolicyKind::from_name(MemoryPolicy::<()>::new(CacheConfig::with_capacity_bytes(1)).name())
            .context("MemoryPolicy has no PolicyKind")?;
    let warmup_requests = (args.requests as f64 * args.warmup_share) as usize;

    let mut rows = Vec::new();
    let mut traces = Vec::new();
    let mut working_set_bytes = 0;
    println!(
        "{:>5} {:>7} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "zipf", "cache%", "policy", "obj hit", "byte hit", "Δobj pt", "Δbyte pt", "ns/req"
    );
    for &zipf in &args.zipf {
        let trace = Trace::generate(args.keys, args.requests, zipf, args.seed);
        working_set_bytes = trace.working_set_bytes;
        let (touched_objects, touched_bytes) = trace.touched();
        traces.push(json!({
            "zipf": zipf,
            "distinct_objects_requested": touched_objects,
            "distinct_bytes_requested": touched_bytes,
        }));
        for &cache_percent in &args.cache_percent {
            let capacity_bytes = (trace.working_set_bytes as f64 * cache_percent / 100.0) as u64;
            let config = CacheConfig {
                capacity_bytes,
                max_object_share: args.max_object_share,
            };
            let mut lru: Option<SimOutcome> = None;
            for &kind in &kinds {
                let outcome = simulate_kind(kind, config, &trace, warmup_requests);
                let base = *lru.get_or_insert(outcome);
                println!(
                    "{:>5.1} {:>7.1} {:>9} {:>9.2}% {:>9.2}% {:>+9.2} {:>+9.2} {:>8.0}",
                    zipf,
                    cache_percent,
                    kind.name(),
                    100.0 * outcome.object_hit_ratio(),
                    100.0 * outcome.byte_hit_ratio(),
                    points(outcome.object_hit_ratio(), base.object_hit_ratio()),
                    points(outcome.byte_hit_ratio(), base.byte_hit_ratio()),
                    outcome.ns_per_request,
                );
                rows.push(Row {
                    zipf,
                    cache_percent,
                    capacity_bytes,
                    kind,
                    outcome,
                });
            }
        }
    }

    let target = target(&rows, chosen);
    match &target {
        Some((points, met)) => println!(
            "target ({} >= {TARGET_POINTS} points above lru, object hit ratio, {TARGET_CACHE_PERCENT:.1}% on Zipf \
             {TARGET_ZIPF:.1}): {points:+.2} points, {}",
            chosen.name(),
            if *met { "met" } else { "NOT met" }
        ),
        None => println!(
            "target: not evaluated (needs zipf {TARGET_ZIPF}, cache {TARGET_CACHE_PERCENT}%, {})",
            chosen.name()
        ),
    }

    if let Some(out) = &args.out {
        let document = document(
            &args,
            &kinds,
            chosen,
            warmup_requests,
            working_set_bytes,
            traces,
            &rows,
            target,
        );
        write_atomically(out, &document)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// Difference in percentage points.
fn points(ratio: f64, baseline_ratio: f64) -> f64 {
    100.0 * (ratio - baseline_ratio)
}

fn find(rows: &[Row], zipf: f64, cache_percent: f64, kind: PolicyKind) -> Option<&Row> {
    rows.iter()
        .find(|row| row.zipf == zipf && row.cache_percent == cache_percent && row.kind == kind)
}

/// The chosen policy's object-hit-ratio lead over LRU at the target point, and whether it meets the target.
fn target(rows: &[Row], chosen: PolicyKind) -> Option<(f64, bool)> {
    let policy = find(rows, TARGET_ZIPF, TARGET_CACHE_PERCENT, chosen)?;
    let lru = find(rows, TARGET_ZIPF, TARGET_CACHE_PERCENT, PolicyKind::Lru)?;
    let lead = points(
        policy.outcome.object_hit_ratio(),
        lru.outcome.object_hit_ratio(),
    );
    Some((lead, lead >= TARGET_POINTS))
}

#[allow(clippy::too_many_arguments)]
fn document(
    args: &Args,
    kinds: &[PolicyKind],
    chosen: PolicyKind,
    warmup_requests: usize,
    working_set_bytes: u64,
    traces: Vec<Value>,
    rows: &[Row],
    target: Option<(f64, bool)>,
) -> Value {
    let results: Vec<Value> = rows
        .iter()
        .map(|row| {
            let lru = find(rows, row.zipf, row.cache_percent, PolicyKind::Lru).map_or(row.outcome, |lru| lru.outcome);
            json!({
                "zipf": row.zipf,
                "cache_percent": row.cache_percent,
                "capacity_bytes": row.capacity_bytes,
                "policy": row.kind.name(),
                "object_hit_ratio": round6(row.outcome.object_hit_ratio()),
                "byte_hit_ratio": round6(row.outcome.byte_hit_ratio()),
                "object_hit_ratio_vs_lru_points": round6(points(row.outcome.object_hit_ratio(), lru.object_hit_ratio())),
                "byte_hit_ratio_vs_lru_points": round6(points(row.outcome.byte_hit_ratio(), lru.byte_hit_ratio())),
                "measured_requests": row.outcome.measured_requests,
                "hits": row.outcome.hits,
                "evicted_objects": row.outcome.evicted_objects,
                "refused_inserts": row.outcome.refused_inserts,
                "ns_per_request_noisy": (row.outcome.ns_per_request * 10.0).round() / 10.0,
            })
        })
        .collect();
    let buckets: Vec<Value> = SIZE_BUCKETS
        .iter()
        .map(|&(low, weight)| json!({"min_bytes": low, "max_bytes_exclusive": 2 * low, "weight_percent": weight}))
        .collect();
    let (git_commit, git_dirty) = git();
    json!({
        "what": "memory-tier eviction policies vs LRU: object and byte hit ratio on seeded Zipf traces with per-key \
                 object sizes, cache sizes in % of the working set bytes (deterministic given the parameters)",
        "command": args.command,
        "date": run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "git": {"commit": git_commit, "dirty": git_dirty},
        "host": host(),
        "parameters": {
            "keys": args.keys,
            "requests": args.requests,
            "seed": args.seed,
            "warmup_share": args.warmup_share,
            "warmup_requests": warmup_requests,
            "zipf_exponents": args.zipf,
            "cache_percent": args.cache_percent,
            "policies": kinds.iter().map(|kind| kind.name()).collect::<Vec<_>>(),
            "baseline": PolicyKind::Lru.name(),
            "max_object_share": args.max_object_share,
            "size_distribution": size_distribution_description(),
            "size_buckets": buckets,
            "working_set_bytes": working_set_bytes,
            "mean_object_bytes": working_set_bytes as f64 / f64::from(args.keys),
            "trace_model": "independent reference model: each request draws a popularity rank from Zipf(s) over \
                            `keys` objects (inverse CDF); sizes independent of rank; SplitMix64 streams from `seed`",
            "replay": "read-through: get; on a miss insert the object; warm-up requests fill the cache but are not counted",
        },
        "traces": traces,
        "chosen_policy": chosen.name(),
        "target": {
            "description": format!(
                "{} object hit ratio >= {TARGET_POINTS} percentage points above LRU at {TARGET_CACHE_PERCENT:.1}% of \
                 the working set on Zipf {TARGET_ZIPF:.1}",
                chosen.name()
            ),
            "measured_points": target.map(|(lead, _)| round6(lead)),
            "met": target.map(|(_, met)| met),
        },
        "results": results,
        "timing_note": "ns_per_request_noisy is wall time of get (+ insert on a miss) over the whole trace, one run, \
                        on a shared host: a side figure, not a benchmark",
    })
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Runs a command and returns its trimmed stdout, or `None` if it failed.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The commit and whether the working tree has uncommitted changes (read-only git commands).
fn git() -> (Option<String>, Option<bool>) {
    let commit = run("git", &["rev-parse", "HEAD"]);
    let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
        .map(|status| !status.is_empty());
    (commit, dirty)
}

fn host() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_string());
    let logical_cpus = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    json!({
        "cpu_model": cpu_model,
        "logical_cpus": logical_cpus,
        "available_cpus": std::thread::available_parallelism().map(usize::from).ok(),
        "kernel": run("uname", &["-r"]),
        "rustc": run("rustc", &["--version"]),
        "build_profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// Writes through a temporary file and a rename, so a reader never sees half a document.
fn write_atomically(path: &PathBuf, document: &Value) -> Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_string_pretty(document)?;
    text.push('\n');
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
