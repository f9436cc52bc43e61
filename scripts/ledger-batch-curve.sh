#!/usr/bin/env bash
# ledger-batch-curve.sh: the built-in ledger's throughput and latency against batch size, at equal durability.
#
# For each batch size (1, 10, 100, 1000, 8190) a fresh `loadgen run` starts the built-in ledger (one server core,
# every acknowledged request made durable by the same group commit: one write + one fdatasync per group) and drives
# it closed-loop (CONNS connections, no think time) for DUR seconds: that is the capacity at that batch size. Then
# single transfers (batch 1) run open-loop at half of their measured capacity, for the issue's p99 target.
# The open runs take turns between the loader's two dispatch modes (profile key `dispatch`): `pool`, where an arrival
# goes to whichever connection is idle (a client's connection pool; the issue's p99 target is read from it), and
# `lane`, where each connection keeps its own share of the arrivals and an arrival due while its connection still
# waits for a response waits too (wrk2's model; it adds the loader's lane assignment to the tail).
# Every run verifies the ledger afterwards (every acknowledged transfer present, balances, GET /verify); a run that
# fails verification fails the script.
#
# Output: a table on stdout and a JSON document (per-batch transfers/s, requests/s, latency p50/p99/p99.9, server CPU
# per transfer, the half-capacity run, host fingerprint, command) in $OUT.
#
# Usage: scripts/ledger-batch-curve.sh [--quick]
#   env DUR seconds per run (10), CONNS closed-loop connections of batched runs (16), SINGLE_CONNS closed-loop
#       connections of single transfers (64: a writer that paces its flushes caps 16 connections near 16 transfers
#       per flush whatever the server could do), OPEN_CONNS connections of the open-loop runs (256: with `lane`
#       dispatch and few lanes a request waits for its lane's previous response, and the loader, not the server,
#       makes the tail), ROUNDS of the closed runs (3; the median of the valid rounds is reported), OPEN_ROUNDS of each open run
#       (5: a host stall in one round moves that round's p99 by milliseconds), SERVER_ARGS extra server flags,
#       space-separated (none: the server's defaults, e.g. SERVER_ARGS="--flush-pacing fixed --preallocate-bytes 0"
#       for the previous ones), SETTLE_S seconds of quiet after a `sync` before each run (3), SETTLE_S_PER_GB more
#       seconds per GB the previous run's ledger wrote (8: after a batch-8,190 run wrote 2 GB, fdatasync here stalls
#       up to 9 ms for about 15 s; the first run after it lost 15-25 % of its capacity or its p99), OUT
#       (results/baselines/ledger-batch-curve.json), KEEP_TMP=1 keeps the temporary folder.
#   --quick: ROUNDS=1 OPEN_ROUNDS=1 DUR=3, OUT defaults to ${TMPDIR:-/tmp}/ledger-batch-curve.quick.json.
# All traffic goes to 127.0.0.1; every run is bounded by DUR, the profile's caps and `timeout`.
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "ledger-batch-curve: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ $QUICK == 1 ]]; then
    DUR=${DUR:-3}
    ROUNDS=${ROUNDS:-1}
    OPEN_ROUNDS=${OPEN_ROUNDS:-1}
    OUT=${OUT:-${TMPDIR:-/tmp}/ledger-batch-curve.quick.json}
else
    DUR=${DUR:-10}
    ROUNDS=${ROUNDS:-3}
    OPEN_ROUNDS=${OPEN_ROUNDS:-5}
    OUT=${OUT:-results/baselines/ledger-batch-curve.json}
fi
CONNS=${CONNS:-16}
SETTLE_S=${SETTLE_S:-3}
[[ $SETTLE_S =~ ^[0-9]{1,3}$ ]] || { echo "ledger-batch-curve: SETTLE_S must be whole seconds (0-999), got '$SETTLE_S'" >&2; exit 2; }
export SETTLE_S
SETTLE_S_PER_GB=${SETTLE_S_PER_GB:-8}
[[ $SETTLE_S_PER_GB =~ ^[0-9]{1,3}$ ]] || { echo "ledger-batch-curve: SETTLE_S_PER_GB must be whole seconds (0-999), got '$SETTLE_S_PER_GB'" >&2; exit 2; }
export SETTLE_S_PER_GB
SINGLE_CONNS=${SINGLE_CONNS:-64}
OPEN_CONNS=${OPEN_CONNS:-256}
SERVER_ARGS=${SERVER_ARGS:-}
read -r -a SERVER_ARGV <<<"$SERVER_ARGS"
SERVER_ARGS_TOML=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' ${SERVER_ARGV[@]+"${SERVER_ARGV[@]}"})
BATCHES=(1 10 100 1000 8190)

command -v python3 >/dev/null || { echo "ledger-batch-curve: needs python3" >&2; exit 2; }
(($(nproc) >= 2)) || { echo "ledger-batch-curve: needs 2 cpus (server on 0, loader on 1)" >&2; exit 2; }
cargo build --release -p refbench-loadgen --bin loadgen >&2
LOADGEN="$ROOT/target/release/loadgen"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ledger-curve.XXXXXX")
cleanup() { [[ ${KEEP_TMP:-0} == 1 ]] && echo "kept $TMP" >&2 || rm -rf "$TMP"; }
trap cleanup EXIT

# One profile per run: a short warm-up (creates the accounts), then the measured phase.
profile() { # name model batch [rate dispatch]
    local name=$1 model=$2 batch=$3 rate=${4:-} dispatch=${5:-pool}
    local load conns=$CONNS
    ((batch == 1)) && conns=$SINGLE_CONNS
    if [[ $model == closed ]]; then
        load="model = \"closed\""
    else
        conns=$OPEN_CONNS
        load="model = \"open\"
arrival = \"poisson\"
dispatch = \"$dispatch\"
rate_rps = $rate"
    fi
    cat >"$TMP/$name.toml" <<EOF
name = "ledger-curve-$name"
[run]
# Server and loader on different cores, as in every comparison here.
server_cpus = [0]
loader_cpus = [1]
request_timeout_ms = 10000
max_duration_s = $((DUR * 3 + 60))
[calibration]
enabled = false
[targets.ledger]
builtin = "ledger"
args = $SERVER_ARGS_TOML
[[phases]]
name = "warmup"
target = "ledger"
warmup = true
model = "closed"
duration_s = 2
connections = 4
[phases.ledger]
accounts = 10_000
batch_size = $batch
[[phases]]
name = "measured"
target = "ledger"
$load
duration_s = $DUR
connections = $conns
[phases.ledger]
accounts = 10_000
batch_size = $batch
zipf_exponent = 1.0
EOF
}

run() { # name -> prints the result path
    local name=$1
    local out="$TMP/out-$name"
    local rc=0
    # Settle first, longer the more the previous run wrote: its server wrote up to gigabytes (batch 8,190) and
    # removed its data directory on the way out. The guest's queue is empty as soon as `sync` returns, but the
    # virtual disk under it is not (ext4 here is mounted with online `discard`, so the removed blocks are discarded
    # too); in five curves without this the first open round after the batch-8,190 runs was invalid.
    local prev_bytes=0
    [[ -f $TMP/last-bytes ]] && prev_bytes=$(<"$TMP/last-bytes")
    timeout 120 sync || true
    sleep $((SETTLE_S + prev_bytes * SETTLE_S_PER_GB / 1000000000))
    timeout $((DUR * 3 + 120)) "$LOADGEN" run "$TMP/$name.toml" --out "$out" >"$TMP/$name.log" 2>&1 || rc=$?
    # Exit 2 with a complete result whose `valid` is false is an invalid *measurement* (the loader could not keep its
    # schedule): it is kept, marked, and reported, not dropped. Anything else (a lost transfer is 1) stops the script.
    if ((rc != 0)) && ! { ((rc == 2)) && python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["valid"] is not False)' "$out/result.json" 2>/dev/null; }; then
        echo "ledger-batch-curve: run $name failed (exit $rc); log:" >&2
        tail -30 "$TMP/$name.log" >&2
        exit 1
    fi
    python3 - "$out/result.json" >"$TMP/last-bytes" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(int(sum(m.get("ledger_log_bytes_total", 0) for p in r["phases"] for m in p["server_metrics"].values())))
EOF
    ((rc == 0)) || echo "ledger-batch-curve: run $name is an invalid measurement (kept, marked valid=false): $(grep -A3 'run: INVALID' "$TMP/$name.log" | tail -n +2 | tr -s ' ' | head -c 300)" >&2
    echo "$out/result.json"
}

RESULTS=()
for round in $(seq 1 "$ROUNDS"); do
    for b in "${BATCHES[@]}"; do
        profile "closed-b$b-r$round" closed "$b"
        RESULTS+=("closed:$b:$round:$(run "closed-b$b-r$round")")
        echo "round $round batch $b done" >&2
    done
done

# Half of the median single-transfer capacity, open loop.
HALF=$(python3 - "${RESULTS[@]}" <<'EOF'
import json, statistics, sys
caps = []
for arg in sys.argv[1:]:
    kind, b, r, path = arg.split(":", 3)
    if b == "1":
        p = [p for p in json.load(open(path))["phases"] if p["name"] == "measured"][0]
        caps.append(p["achieved_rate_rps"])
print(f"{statistics.median(caps) / 2:.0f}")
EOF
)
for round in $(seq 1 "$OPEN_ROUNDS"); do
    for dispatch in pool lane; do
        profile "half-$dispatch-b1-r$round" open 1 "$HALF" "$dispatch"
        RESULTS+=("half-$dispatch:1:$round:$(run "half-$dispatch-b1-r$round")")
    done
    echo "open round $round done" >&2
done

python3 - "$OUT" "$HALF" "$DUR" "$CONNS" "$ROUNDS" "$*" "$OPEN_CONNS" "$SINGLE_CONNS" "$SERVER_ARGS_TOML" "$OPEN_ROUNDS" "${RESULTS[@]}" <<'EOF'
import json, os, platform, statistics, subprocess, sys, time
out, half, dur, conns, rounds, args, open_conns, single_conns, server_args, open_rounds = sys.argv[1:11]
runs = {}
host = None
for arg in sys.argv[11:]:
    kind, b, r, path = arg.split(":", 3)
    res = json.load(open(path))
    host = host or res["host"]
    p = [p for p in res["phases"] if p["name"] == "measured"][0]
    led = p["ledger"]
    ver = led.get("verification") or {}
    if not ver.get("passed", False):
        sys.exit(f"verification failed in {path}: {ver.get('failures')}")
    server = [x for x in p["processes"] if x["role"] == "server"]
    xfers = led["transfers"]["ok"]
    cpu_us_per_transfer = (server[0]["cpu_seconds"] * 1e6 / xfers) if server and xfers else None
    runs.setdefault((kind, int(b)), []).append({
        "round": int(r),
        "transfers_per_s": led["transfers_per_s"],
        "requests_per_s": p["achieved_rate_rps"],
        "latency_us_p50": p["latency_us"]["p50"],
        "latency_us_p99": p["latency_us"]["p99"],
        "latency_us_p999": p["latency_us"]["p999"],
        # From the actual send: the server's answer alone, without any wait for a lane.
        "service_time_us_p99": p["service_time_us"]["p99"],
        "late": p["requests"]["late"],
        "server_cpu_us_per_transfer": cpu_us_per_transfer,
        "failed": p["requests"]["failed"],
        "valid": res["valid"],
    })
def med(rows, key):
    # Over the valid rounds: an invalid round measured the loader (or the host), not the ledger. Every round, valid
    # or not, stays in `rounds`.
    vals = [r[key] for r in rows if r["valid"] and r[key] is not None]
    return statistics.median(vals) if vals else None
curve = []
for (kind, b), rows in sorted(runs.items()):
    curve.append({
        "kind": {"closed": "capacity (closed loop)", "half-pool": "half capacity (open, pool)",
                 "half-lane": "half capacity (open, lane)"}[kind],
        "dispatch": None if kind == "closed" else kind.split("-")[1],
        "batch_size": b,
        "transfers_per_s_median": med(rows, "transfers_per_s"),
        "requests_per_s_median": med(rows, "requests_per_s"),
        "latency_us_p50_median": med(rows, "latency_us_p50"),
        "latency_us_p99_median": med(rows, "latency_us_p99"),
        "latency_us_p999_median": med(rows, "latency_us_p999"),
        "service_time_us_p99_median": med(rows, "service_time_us_p99"),
        "server_cpu_us_per_transfer_median": med(rows, "server_cpu_us_per_transfer"),
        # Rounds whose loader kept its schedule; an invalid round's percentiles may be the loader's (or the host's).
        "valid_rounds": sum(1 for r in rows if r["valid"]),
        "rounds": rows,
    })
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
doc = {
    "what": "ledger-writer throughput and latency against batch size at equal durability (every request acknowledged "
            "only after its group's fdatasync); closed loop = capacity, then batch 1 open loop at half capacity",
    "command": f"scripts/ledger-batch-curve.sh {args}".strip(),
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "git": {"commit": commit, "dirty": dirty},
    "settings": {"duration_s": int(dur), "connections": int(conns), "single_transfer_connections": int(single_conns), "open_loop_connections": int(open_conns), "server_args": json.loads(server_args), "rounds": int(rounds), "open_rounds": int(open_rounds), "settle_s": float(os.environ.get("SETTLE_S", "3")), "settle_s_per_gb": float(os.environ.get("SETTLE_S_PER_GB", "8")), "half_capacity_rps": float(half)},
    "host": host,
    "curve": curve,
}
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
print(f"{'run':<28}{'batch':>6}{'transfers/s':>14}{'req/s':>10}{'p50 us':>9}{'p99 us':>9}{'svc p99':>9}{'srv us/xfer':>13}{'valid':>7}")
for c in curve:
    cpu = c["server_cpu_us_per_transfer_median"]
    print(f"{c['kind']:<28}{c['batch_size']:>6}{c['transfers_per_s_median']:>14.0f}{c['requests_per_s_median']:>10.0f}"
          f"{c['latency_us_p50_median']:>9.0f}{c['latency_us_p99_median']:>9.0f}{c['service_time_us_p99_median']:>9.0f}{(cpu if cpu is not None else float('nan')):>13.2f}"
          f"{c['valid_rounds']:>4}/{len(c['rounds'])}")
print(f"wrote {out}")
EOF
