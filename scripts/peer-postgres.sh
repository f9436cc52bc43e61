#!/usr/bin/env bash
# peer-postgres.sh: durable transfers/s, the built-in ledger-writer vs PostgreSQL, side by side in one run.
#
# PostgreSQL (Debian's package, installed here if missing) runs as a throw-away cluster in a temporary folder,
# listening on 127.0.0.1 only, with the durability defaults made explicit: synchronous_commit=on, fsync=on,
# full_page_writes=on (wal_sync_method is Linux's default, fdatasync, the same call the ledger makes). pg-ledger
# (scripts/peers/pg-ledger, built here with its own Cargo.lock and target dir) speaks the ledger's wire API and
# turns each request into one PostgreSQL transaction, one round trip (SELECT * FROM create_transfers(arrays)).
# PostgreSQL and pg-ledger are pinned to cpu 0 (taskset), loadgen's loader processes to cpu 1 (the profile's
# loader_cpus): the placement the profile gives the built-in ledger (server_cpus = [0]). Each round runs the same profile (scripts/peers/pg-ledger/compare.toml) twice: against the built-in
# ledger, and with --target ledger=<pg-ledger URL> against a fresh PostgreSQL database; the order alternates
# between rounds so drift hits both alike. Loadgen checks every acknowledged transfer and every balance after each
# phase, and GET /verify at the end, for both systems.
#
# Output: a table on stdout and a JSON document (per-round transfers/s and p50/p99 per phase, medians, ratios,
# the command, date, git commit, host and PostgreSQL version) in $OUT.
#
# Usage: scripts/peer-postgres.sh [--quick] [--test]
#   env ROUNDS (3), OUT (results/baselines/ledger-vs-postgres.json), POOL pg-ledger connections to PostgreSQL (4),
#       KEEP_TMP=1 keeps the temporary folder (cluster, logs, result.json files).
#   --quick: one round with 3 s phases, OUT defaults to ${TMPDIR:-/tmp}/ledger-vs-postgres.quick.json, and the
#            adapter's end-to-end test first (tests the script itself).
#   --test:  only the adapter's end-to-end test against this script's PostgreSQL (no load), then stop.
# Needs root (or sudo) only to install missing Debian packages; as root, PostgreSQL runs as the `postgres` user.
# All traffic goes to 127.0.0.1; every step is wrapped in `timeout`; the cluster is stopped and deleted at exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
TEST_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --test) TEST_ONLY=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "peer-postgres: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done
COMMAND="scripts/peer-postgres.sh${*:+ $*}"
[[ -z ${ROUNDS:-} ]] || COMMAND="ROUNDS=$ROUNDS $COMMAND"
[[ -z ${POOL:-} ]] || COMMAND="POOL=$POOL $COMMAND"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ $QUICK == 1 ]]; then
    ROUNDS=1
    OUT=${OUT:-${TMPDIR:-/tmp}/ledger-vs-postgres.quick.json}
fi
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-results/baselines/ledger-vs-postgres.json}
POOL=${POOL:-4}
PROFILE=scripts/peers/pg-ledger/compare.toml
CRATE=scripts/peers/pg-ledger
SERVER_CPU=0
LOADER_CPU=1
TARGET_RATIO=20

check_int ROUNDS "$ROUNDS" 1 20
check_int POOL "$POOL" 1 256
ROUNDS=$((10#$ROUNDS))
POOL=$((10#$POOL))

# ---------------------------------------------------------------------------------------------------------------
# Tools
pg_bindir() { find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1; }
need=()
[[ -n $(pg_bindir) && -x $(pg_bindir)/initdb ]] || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
command -v timeout >/dev/null || need+=(coreutils)
if ((${#need[@]})); then apt_install "${need[@]}"; fi
PGBIN=$(pg_bindir)
[[ -x $PGBIN/initdb && -x $PGBIN/pg_ctl && -x $PGBIN/postgres ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
NCPU=$(nproc --all)
((NCPU >= 2)) || die "needs at least 2 cpus (server on $SERVER_CPU, loader on $LOADER_CPU); this host has $NCPU"

# As root, PostgreSQL (which refuses to run as root) runs as `postgres`, created by the Debian package.
AS_PG=()
if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "no postgres user (is the postgresql package installed?)"
    AS_PG=(runuser -u postgres --)
fi

# ---------------------------------------------------------------------------------------------------------------
# Temporary folder, cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/refbench-peer-postgres.XXXXXX")
chmod 755 "$WORK"
PGDATA=$WORK/pgdata
PG_STARTED=0
ADAPTER_PID=
cleanup() {
    local rc=$?
    if [[ -n $ADAPTER_PID ]] && kill -0 "$ADAPTER_PID" 2>/dev/null; then
        kill -TERM "$ADAPTER_PID" 2>/dev/null || true
        timeout 10 tail --pid="$ADAPTER_PID" -f /dev/null 2>/dev/null || kill -KILL "$ADAPTER_PID" 2>/dev/null || true
    fi
    if [[ $PG_STARTED == 1 ]]; then
        timeout 60 "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 50 stop >/dev/null 2>&1 ||
            timeout 30 "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w -t 20 stop >/dev/null 2>&1 || true
    fi
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# ---------------------------------------------------------------------------------------------------------------
# Build (before PostgreSQL starts, so a long build does not keep a cluster around)
GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -vc "^?? " || true)
log "cargo build --release --manifest-path $CRATE/Cargo.toml"
timeout 3600 cargo build --release --locked --manifest-path "$CRATE/Cargo.toml" >&2
# Built where cargo put it: the adapter's own target dir, or CARGO_TARGET_DIR when set (CI shares the workspace's).
cp "${CARGO_TARGET_DIR:-$CRATE/target}/release/pg-ledger" "$WORK/pg-ledger"
if [[ $TEST_ONLY == 0 ]]; then
    log "cargo build --release -p refbench-loadgen"
    timeout 3600 cargo build --release -p refbench-loadgen >&2
    # A private copy: a concurrent build replacing target/release/loadgen cannot change the binary mid-run.
    cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/loadgen" "$WORK/loadgen"
fi

# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL: a fresh cluster, loopback only, durable commits.
PGPORT=$(free_port)
chown postgres "$WORK" 2>/dev/null || true
log "initdb ($("$PGBIN/postgres" --version))"
timeout 120 "${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres -E UTF8 --no-locale >"$WORK/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -5 "$WORK/initdb.log")"
MAX_CONN=$((POOL + 20))
cat >>"$PGDATA/postgresql.conf" <<EOF

# --- refbench peer-postgres.sh ---
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK'
max_connections = $MAX_CONN
# Durability: PostgreSQL's defaults, stated. A commit returns after its WAL is flushed (fdatasync on Linux).
synchronous_commit = on
fsync = on
full_page_writes = on
# Sizing for a 24 GiB host and a benchmark: the working set stays in memory, checkpoints stay out of the runs.
shared_buffers = 1GB
wal_buffers = 64MB
max_wal_size = 16GB
min_wal_size = 1GB
checkpoint_timeout = 30min
wal_compression = lz4
# OLTP: no JIT compilation of the verify scans.
jit = off
EOF
log "starting PostgreSQL on 127.0.0.1:$PGPORT (cpu $SERVER_CPU)"
timeout 90 taskset -c "$SERVER_CPU" "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 60 start >/dev/null ||
    die "PostgreSQL did not start: $(tail -20 "$WORK/postgres.log" 2>/dev/null)"
PG_STARTED=1
PSQL=(timeout 600 psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres)
PG_VERSION=$("${PSQL[@]}" -At -d postgres -c "SELECT version()")
PG_SETTINGS=$("${PSQL[@]}" -At -d postgres -c "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name) FROM pg_settings WHERE name IN ('synchronous_commit','fsync','full_page_writes','wal_sync_method','shared_buffers','max_wal_size','wal_level','max_connections','commit_delay','wal_compression')")
log "$PG_SETTINGS"
[[ $PG_SETTINGS == *"synchronous_commit=on"* && $PG_SETTINGS == *"fsync=on"* ]] || die "durability settings not in force: $PG_SETTINGS"
conninfo() { echo "host=127.0.0.1 port=$PGPORT user=postgres dbname=$1"; }

# ---------------------------------------------------------------------------------------------------------------
# The adapter's own end-to-end test (result codes, linked chains, two-phase, GET /verify) on this PostgreSQL.
run_adapter_test() {
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS ledger_test" -c "CREATE DATABASE ledger_test"
    log "adapter end-to-end test (cargo test --release --manifest-path $CRATE/Cargo.toml)"
    PG_LEDGER_TEST_PG=$(conninfo ledger_test) timeout 1800 \
        cargo test --release --locked --manifest-path "$CRATE/Cargo.toml" -- --nocapture >&2
}
if [[ $TEST_ONLY == 1 ]]; then
    run_adapter_test
    log "adapter test passed"
    exit 0
fi
[[ $QUICK == 0 ]] || run_adapter_test

# ---------------------------------------------------------------------------------------------------------------
# The profile (quick: every phase 3 s, warm-up 2 s)
RUN_PROFILE=$WORK/compare.toml
if [[ $QUICK == 1 ]]; then
    sed -e 's/^duration_s = \(15\|8\)$/duration_s = 3/' -e 's/^duration_s = 5$/duration_s = 2/' "$PROFILE" >"$RUN_PROFILE"
else
    cp "$PROFILE" "$RUN_PROFILE"
fi
timeout 60 "$WORK/loadgen" validate "$RUN_PROFILE" >/dev/null || die "loadgen does not accept $PROFILE"
# Bound on one loadgen run: the profile's own max_duration_s plus set-up and verification slack.
RUN_TIMEOUT=1200

start_adapter() { # database -> sets ADAPTER_PID, ADAPTER_URL
    local db=$1
    local ready=$WORK/adapter-$db.ready
    : >"$ready"
    taskset -c "$SERVER_CPU" "$WORK/pg-ledger" --pg "$(conninfo "$db")" --pool "$POOL" --threads 1 \
        --bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 >"$ready" 2>"$WORK/adapter-$db.log" &
    ADAPTER_PID=$!
    local line=
    for _ in $(seq 1 600); do
        line=$(grep -m1 '^REFBENCH_READY ' "$ready" || true)
        [[ -z $line ]] || break
        kill -0 "$ADAPTER_PID" 2>/dev/null || die "pg-ledger exited: $(tail -5 "$WORK/adapter-$db.log")"
        sleep 0.1
    done
    [[ -n $line ]] || die "pg-ledger did not announce itself within 60 s"
    ADAPTER_URL=http://$(python3 -c 'import json,sys; print(json.loads(sys.argv[1][len("REFBENCH_READY "):])["listeners"]["http"])' "$line")
}
stop_adapter() {
    kill -TERM "$ADAPTER_PID" 2>/dev/null || true
    timeout 15 tail --pid="$ADAPTER_PID" -f /dev/null 2>/dev/null || kill -KILL "$ADAPTER_PID" 2>/dev/null || true
    wait "$ADAPTER_PID" 2>/dev/null || true
    ADAPTER_PID=
}

RUNS=()
run_ledger() { # round
    local out=$WORK/r$1-ledger rc=0
    log "round $1: built-in ledger"
    timeout "$RUN_TIMEOUT" "$WORK/loadgen" run "$RUN_PROFILE" --out "$out" >"$WORK/r$1-ledger.log" 2>&1 || rc=$?
    tail -n 30 "$WORK/r$1-ledger.log" >&2
    [[ -f $out/result.json ]] || die "round $1: the ledger run wrote no result.json (exit $rc): $(tail -5 "$WORK/r$1-ledger.log")"
    RUNS+=("ledger:$1:$rc:$out/result.json")
}
run_postgres() { # round
    local db=ledger_r$1 out=$WORK/r$1-postgres rc=0
    log "round $1: PostgreSQL (fresh database $db)"
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    start_adapter "$db"
    "${PSQL[@]}" -d postgres -c "CHECKPOINT"
    timeout "$RUN_TIMEOUT" "$WORK/loadgen" run "$RUN_PROFILE" --out "$out" \
        --target "ledger=$ADAPTER_URL" >"$WORK/r$1-postgres.log" 2>&1 || rc=$?
    tail -n 30 "$WORK/r$1-postgres.log" >&2
    stop_adapter
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db"
    [[ -f $out/result.json ]] || die "round $1: the PostgreSQL run wrote no result.json (exit $rc): $(tail -5 "$WORK/r$1-postgres.log")"
    RUNS+=("postgres:$1:$rc:$out/result.json")
}
for r in $(seq 1 "$ROUNDS"); do
    if ((r % 2 == 1)); then
        run_ledger "$r"
        run_postgres "$r"
    else
        run_postgres "$r"
        run_ledger "$r"
    fi
done

# ---------------------------------------------------------------------------------------------------------------
# Summary
mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" "$TARGET_RATIO" "$COMMAND" "$GIT_COMMIT" "$GIT_DIRTY" "$PG_VERSION" "$PG_SETTINGS" "$POOL" "$PROFILE" \
    "$QUICK" "${RUNS[@]}" <<'PYEOF'
import json, os, platform, statistics, subprocess, sys, time

out, target, command, commit, dirty, pg_version, pg_settings, pool, profile, quick = sys.argv[1:11]
runs = sys.argv[11:]

def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

per = {}  # (system, phase) -> list of round figures
rounds = []
for spec in runs:
    system, rnd, rc, path = spec.split(":", 3)
    r = json.load(open(path))
    round_entry = {"system": system, "round": int(rnd), "loadgen_exit_code": int(rc), "valid": r["valid"],
                   "invalid_reasons": r["invalid_reasons"], "correctness_failures": r["correctness_failures"],
                   "phases": {}}
    for p in r["phases"]:
        l = p.get("ledger") or {}
        v = l.get("verification") or {}
        sv = v.get("server_verify") or {}
        fig = {
            "batch_size": l.get("batch_size"),
            "model": p["model"],
            "offered_rate_rps": p["offered_rate_rps"],
            "requests_per_s": round(p["achieved_rate_rps"], 1),
            "transfers_per_s": round(l.get("transfers_per_s", 0.0), 1),
            "transfers_ok": (l.get("transfers") or {}).get("ok"),
            "transfers_failed": (l.get("transfers") or {}).get("failed"),
            "p50_us": p["latency_us"]["p50"],
            "p99_us": p["latency_us"]["p99"],
            "verified": v.get("passed"),
            # Cores the loader processes (and, for the built-in ledger, the server process) used during the phase:
            # a loader near 1.0 means the figure is bounded by the loader, not by the server.
            "loader_cpu_cores": round(sum(x.get("cpu_cores_used") or 0 for x in p["processes"] if x["role"] == "loader"), 2),
            "server_cpu_cores": round(sum(x.get("cpu_cores_used") or 0 for x in p["processes"] if x["role"] == "server"), 2)
                                if any(x["role"] == "server" for x in p["processes"]) else None,
        }
        round_entry["phases"][p["name"]] = fig
        per.setdefault((system, p["name"]), []).append(fig)
    rounds.append(round_entry)

phases = []
for (system, name) in per:
    if system == "ledger" and name not in phases:
        phases.append(name)
summary = {}
for name in phases:
    row = {}
    for system in ("ledger", "postgres"):
        figs = per.get((system, name), [])
        if not figs:
            continue
        row[system] = {
            "transfers_per_s_median": statistics.median(f["transfers_per_s"] for f in figs),
            "p50_us_median": statistics.median(f["p50_us"] for f in figs),
            "p99_us_median": statistics.median(f["p99_us"] for f in figs),
            "all_verified": all(f["verified"] for f in figs),
            "loader_cpu_cores_median": statistics.median(f["loader_cpu_cores"] for f in figs),
        }
    if "ledger" in row and "postgres" in row and row["postgres"]["transfers_per_s_median"] > 0:
        row["transfers_per_s_ratio"] = round(row["ledger"]["transfers_per_s_median"] / row["postgres"]["transfers_per_s_median"], 2)
        row["p99_ratio_postgres_over_ledger"] = round(row["postgres"]["p99_us_median"] / max(row["ledger"]["p99_us_median"], 1), 2)
    summary[name] = row

# Capacity: the closed-loop (batched) phases, where each system does as much as it can.
closed = [n for n in phases if per[("ledger", n)][0]["model"] == "closed" and "transfers_per_s_ratio" in summary[n]]
best_ledger = max((summary[n]["ledger"]["transfers_per_s_median"] for n in closed), default=0)
best_pg = max((summary[n]["postgres"]["transfers_per_s_median"] for n in closed), default=0)
headline = {
    "ledger_best_durable_transfers_per_s": best_ledger,
    "postgres_best_durable_transfers_per_s": best_pg,
    "ratio_best_vs_best": round(best_ledger / best_pg, 2) if best_pg else None,
    "ratio_min_over_closed_phases": min((summary[n]["transfers_per_s_ratio"] for n in closed), default=None),
    "target_ratio": float(target),
}
headline["meets_target"] = headline["ratio_best_vs_best"] is not None and headline["ratio_best_vs_best"] >= float(target)

doc = {
    "what": "durable transfers/s: the built-in ledger-writer vs PostgreSQL (pg-ledger adapter, synchronous_commit=on), the same transfer stream (loadgen's ledger scenario)",
    "command": command,
    "profile": profile,
    "quick": quick == "1",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "git": {"commit": commit, "modified_tracked_files": int(dirty or 0)},
    "host": {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "postgres_version": pg_version,
        "server_cpu": 0,
        "loader_cpu": 1,
    },
    "postgres": {"settings": pg_settings, "pool_connections": int(pool),
                 "note": "one HTTP request = one transaction = one statement (create_transfers over arrays); the response is sent after COMMIT is durable"},
    "headline": headline,
    "phases": summary,
    "rounds": rounds,
}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
os.replace(tmp, out)

print(f"{'phase':<16} {'ledger t/s':>12} {'postgres t/s':>13} {'ratio':>7} {'ledger p50/p99 us':>20} {'postgres p50/p99 us':>22} {'loader cores (l/pg)':>20}")
for name in phases:
    row = summary[name]
    l, p = row.get("ledger", {}), row.get("postgres", {})
    print(f"{name:<16} {l.get('transfers_per_s_median', 0):>12.0f} {p.get('transfers_per_s_median', 0):>13.0f} "
          f"{row.get('transfers_per_s_ratio', float('nan')):>7.2f} "
          f"{l.get('p50_us_median', 0):>9.0f}/{l.get('p99_us_median', 0):<10.0f} {p.get('p50_us_median', 0):>10.0f}/{p.get('p99_us_median', 0):<10.0f} "
          f"{l.get('loader_cpu_cores_median', 0):>9.2f}/{p.get('loader_cpu_cores_median', 0):<.2f}")
print(f"capacity (best closed-loop phase): ledger {best_ledger:.0f} vs PostgreSQL {best_pg:.0f} transfers/s, "
      f"ratio {headline['ratio_best_vs_best']} (target >= {target}: {'met' if headline['meets_target'] else 'NOT met'})")
bad = [f"{r['system']} round {r['round']}" for r in rounds if r["correctness_failures"]]
if bad:
    print("correctness failures in: " + ", ".join(bad))
print(f"written: {out}")
PYEOF
