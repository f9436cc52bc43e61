#!/usr/bin/env bash
# compare-wrk.sh: loader CPU cost per request, wrk vs loadgen, side by side in one run.
#
# One floor server (`loadgen serve floor`, pinned to cpu 0) is loaded over HTTP/1.1 keep-alive by, in turn:
#   - wrk            (taskset -c 1, -t1 -c$CONNS -d$DUR): CPU from /usr/bin/time (user+sys of the wrk process),
#   - loadgen closed (one loader process pinned to cpu 1, $CONNS connections, no think time): CPU from result.json,
#   - loadgen open   (fixed arrivals at 80 % of the wrk throughput of the same round): CPU from result.json.
# Rounds alternate the order of wrk and loadgen closed so drift hits both alike; the open run needs that round's
# wrk rate, so it always comes last. The server's CPU per request is measured the same way for all three: utime +
# stime of its /proc/PID/stat over the run, divided by the change of its floor_requests_total counter.
#
# Output: a table on stdout and a JSON document (medians, per-round raw figures, host fingerprint, command) in $OUT.
#
# Usage: scripts/compare-wrk.sh [--quick]
#   env ROUNDS (5), DUR seconds per run (10), CONNS (16), OUT (results/baselines/loader-vs-wrk.json),
#       OPEN_FRACTION (0.8), KEEP_TMP=1 keeps the temporary folder (profiles, logs, result.json files).
#   --quick: ROUNDS=1 DUR=3, OUT defaults to ${TMPDIR:-/tmp}/loader-vs-wrk.quick.json (tests the script itself).
# Needs root or sudo only when wrk, GNU time, curl or python3 are missing (installed from Debian with apt-get).
# All traffic goes to 127.0.0.1; every load run is bounded by DUR and wrapped in `timeout`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "compare-wrk: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ $QUICK == 1 ]]; then
    ROUNDS=1
    DUR=3
    OUT=${OUT:-${TMPDIR:-/tmp}/loader-vs-wrk.quick.json}
fi
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-10}
CONNS=${CONNS:-16}
OUT=${OUT:-results/baselines/loader-vs-wrk.json}
SERVER_CPU=0
LOADER_CPU=1
OPEN_FRACTION=${OPEN_FRACTION:-0.8}
TARGET_RATIO=1.2

check_int ROUNDS "$ROUNDS" 1 100
check_int DUR "$DUR" 1 600
check_int CONNS "$CONNS" 1 10000
[[ $OPEN_FRACTION =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] || die "OPEN_FRACTION must be in (0, 1], got '$OPEN_FRACTION'"
ROUNDS=$((10#$ROUNDS))
DUR=$((10#$DUR))
CONNS=$((10#$CONNS))

# ---------------------------------------------------------------------------------------------------------------
# Tools
need=()
command -v wrk >/dev/null || need+=(wrk)
[[ -x /usr/bin/time ]] || need+=(time)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
command -v timeout >/dev/null || need+=(coreutils)
if ((${#need[@]})); then apt_install "${need[@]}"; fi
NCPU=$(nproc --all)
((NCPU >= 2)) || die "needs at least 2 cpus (server on $SERVER_CPU, loader on $LOADER_CPU); this host has $NCPU"

# What is built: HEAD plus the working tree's changes (other people may edit and build in this tree concurrently).
# The fingerprint is a hash of HEAD, `git diff HEAD` and the untracked files' contents, leaving out $OUT itself.
OUT_REL=$(realpath -m --relative-to="$ROOT" "$OUT")
GIT_EXCLUDE=()
[[ $OUT_REL == ../* ]] || GIT_EXCLUDE=(":(exclude)$OUT_REL")
HAVE_GIT=0
git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1 && HAVE_GIT=1
tree_fingerprint() {
    if [[ $HAVE_GIT == 0 ]]; then
        echo unknown
        return
    fi
    {
        git -C "$ROOT" rev-parse HEAD
        git -C "$ROOT" diff HEAD --binary -- . "${GIT_EXCLUDE[@]}"
        git -C "$ROOT" ls-files --others --exclude-standard -z -- . "${GIT_EXCLUDE[@]}" |
            (cd "$ROOT" && xargs -0 -r sha256sum)
    } | sha256sum | cut -c1-16
}
dirty_paths() {
    [[ $HAVE_GIT == 1 ]] || return 0
    git -C "$ROOT" status --porcelain --untracked-files=all -- . "${GIT_EXCLUDE[@]}" | cut -c4-
}
GIT_COMMIT=unknown
[[ $HAVE_GIT == 0 ]] || GIT_COMMIT=$(git -C "$ROOT" rev-parse HEAD)
FP_BEFORE_BUILD=$(tree_fingerprint)
log "cargo build --release -p refbench-loadgen"
cargo build --release -p refbench-loadgen >&2
FP_BUILT=$(tree_fingerprint)
GIT_DIRTY_PATHS=$(dirty_paths)
[[ $FP_BEFORE_BUILD == "$FP_BUILT" ]] || log "warning: the source tree changed during the build"
[[ -x $ROOT/target/release/loadgen ]] || die "target/release/loadgen was not built"
# Run a private copy, so a concurrent build replacing target/release/loadgen cannot change the binary mid-run.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/refbench-compare-wrk.XXXXXX")
cp "$ROOT/target/release/loadgen" "$WORK/loadgen"
LOADGEN=$WORK/loadgen
BIN_SHA=$(sha256sum "$LOADGEN" | cut -c1-16)

# ---------------------------------------------------------------------------------------------------------------
# Helpers (JSON and output parsing) in one Python program: `python3 -c "$PY" SUBCOMMAND ARGS`.
PY=$(
    cat <<'PYEOF'
import json, math, os, re, statistics, sys

def ready(path):
    # The REFBENCH_READY line: {"listeners": {"http": "127.0.0.1:PORT", "admin": "127.0.0.1:PORT"}, ...}
    for line in open(path):
        if line.startswith("REFBENCH_READY "):
            d = json.loads(line[len("REFBENCH_READY "):])
            print(d["listeners"]["http"], d["listeners"]["admin"])
            return
    sys.exit(1)

def time_file(path):
    # /usr/bin/time -f '%e %U %S' -o path: the last line holds the figures (earlier lines may hold a status note).
    lines = [l for l in open(path).read().splitlines() if l.strip()]
    e, u, s = (float(x) for x in lines[-1].split())
    return {"wall_s": e, "user_s": u, "sys_s": s, "cpu_s": round(u + s, 3)}

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}

def dur_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None

def wrk(out_path, time_path, server_json):
    text = open(out_path).read()
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h),", text, re.M)
    if not m:
        sys.exit("no 'N requests in' line in wrk output")
    requests = int(m.group(1))
    elapsed_s = float(m.group(2)) * UNITS[m.group(3)] / 1e6
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    lat = {}
    for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M):
        lat["p" + p] = dur_us(v)
    errors = {}
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if se:
        errors.update(zip(["connect", "read", "write", "timeout"], map(int, se.groups())))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non2xx:
        errors["non_2xx_3xx"] = int(non2xx.group(1))
    t = time_file(time_path)
    r = {
        "requests": requests,
        "elapsed_s": elapsed_s,
        "rps": float(rps.group(1)) if rps else requests / elapsed_s,
        "loader_cpu_s": t["cpu_s"],
        "loader_user_s": t["user_s"],
        "loader_sys_s": t["sys_s"],
        "loader_wall_s": t["wall_s"],
        "loader_cpu_us_per_req": t["cpu_s"] * 1e6 / requests if requests else None,
        "loader_cpu_cores_used": t["cpu_s"] / elapsed_s if elapsed_s else None,
        "latency_us": lat,
        "errors": errors,
    }
    r.update(json.loads(server_json))
    print(json.dumps(r))

def loadgen(result_path, time_path, exit_code, server_json):
    d = json.load(open(result_path))
    ph = d["phases"][0]
    loaders = [p for p in ph["processes"] if p["role"] == "loader"]
    total = ph["requests"]["total"]
    cpu = sum(p["cpu_seconds"] for p in loaders)
    if len(loaders) == 1:
        per_req = loaders[0]["cpu_us_per_request"]
    else:
        per_req = cpu * 1e6 / total if total else None
    t = time_file(time_path)
    r = {
        "requests": total,
        "ok": ph["requests"]["ok"],
        "failed": ph["requests"]["failed"],
        "rps": ph["achieved_rate_rps"],
        "offered_rps": ph["offered_rate_rps"],
        "loader_cpu_s": cpu,
        "loader_cpu_us_per_req": per_req,
        "loader_cpu_cores_used": sum(p["cpu_cores_used"] for p in loaders),
        "loader_processes": len(loaders),
        # CPU of the whole `loadgen run` tree (coordinator + loader, start-up and shutdown included), /usr/bin/time.
        "tree_cpu_s": t["cpu_s"],
        "tree_wall_s": t["wall_s"],
        "tree_cpu_us_per_req": t["cpu_s"] * 1e6 / total if total else None,
        "latency_us": {k: ph["latency_us"][k] for k in ("p50", "p90", "p99", "p999", "max")},
        "send_lag_us_p99": ph["send_lag_us"]["p99"],
        "late": ph["requests"]["late"],
        "late_fraction": ph["requests"]["late"] / total if total else None,
        "achieved_over_offered": ph["achieved_rate_rps"] / ph["offered_rate_rps"] if ph["offered_rate_rps"] else None,
        "errors": ph["errors"],
        "status_codes": ph["status_codes"],
        "exit_code": int(exit_code),
        "valid": d["valid"],
        "invalid_reasons": d["invalid_reasons"],
        "warnings": d["warnings"],
    }
    r.update(json.loads(server_json))
    print(json.dumps(r))

def server(ticks_before, ticks_after, reqs_before, reqs_after, hz):
    ticks = int(ticks_after) - int(ticks_before)
    cpu_s = ticks / float(hz)
    try:
        reqs = int(float(reqs_after) - float(reqs_before))
    except ValueError:
        reqs = None
    print(json.dumps({
        "server_cpu_s": cpu_s,
        "server_requests": reqs,
        "server_cpu_us_per_req": cpu_s * 1e6 / reqs if reqs else None,
    }))

def field(path, key):
    print(json.loads(open(path).read())[key])

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def aggregate(rounds_path, meta_path, out_path):
    rounds = [json.loads(l) for l in open(rounds_path) if l.strip()]
    meta = json.load(open(meta_path))
    for r in rounds:
        w = r["wrk"]["loader_cpu_us_per_req"]
        for k in ("loadgen_closed", "loadgen_open"):
            c = r[k]["loader_cpu_us_per_req"]
            r["ratio_" + k.split("_")[1] + "_vs_wrk"] = c / w if (c is not None and w) else None
    kinds = ("wrk", "loadgen_closed", "loadgen_open")
    def col(kind, key):
        return [r[kind].get(key) for r in rounds]
    median = {
        "loader_cpu_us_per_req": {k: med(col(k, "loader_cpu_us_per_req")) for k in kinds},
        "rps": {k: med(col(k, "rps")) for k in kinds},
        "server_cpu_us_per_req": {k: med(col(k, "server_cpu_us_per_req")) for k in kinds},
        "loadgen_tree_cpu_us_per_req": {k: med(col(k, "tree_cpu_us_per_req")) for k in kinds[1:]},
        "latency_us_p50": {k: med([r[k]["latency_us"].get("p50") for r in rounds]) for k in kinds},
        "latency_us_p99": {k: med([r[k]["latency_us"].get("p99") for r in rounds]) for k in kinds},
        "ratio_closed_vs_wrk": med([r["ratio_closed_vs_wrk"] for r in rounds]),
        "ratio_open_vs_wrk": med([r["ratio_open_vs_wrk"] for r in rounds]),
    }
    ratio = median["ratio_closed_vs_wrk"]
    doc = {
        "schema": "refbench/loader-vs-wrk/1",
        "what": "Loader CPU per request (user+sys CPU-us per completed request), wrk vs loadgen, HTTP/1.1 keep-alive, "
                "same floor server, alternating rounds. ratio_* are medians of per-round ratios loadgen/wrk.",
        "command": meta["command"],
        "invocation": meta["invocation"],
        "target_ratio": meta["target_ratio"],
        "target_applies_to": "median_of_rounds.ratio_closed_vs_wrk (loadgen closed loop vs wrk, both at max throughput)",
        "meets_target": (ratio is not None and ratio <= meta["target_ratio"]),
        "all_loadgen_runs_valid": all(r[k]["valid"] for r in rounds for k in kinds[1:]),
        "config": meta["config"],
        "host": meta["host"],
        "method": meta["method"],
        "median_of_rounds": median,
        "rounds": rounds,
    }
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, out_path)

    def fmt(x, nd=2):
        return "-" if x is None else f"{x:,.{nd}f}"
    names = {"wrk": "wrk", "loadgen_closed": "loadgen closed", "loadgen_open": "loadgen open"}
    cfg = meta["config"]
    print()
    print(f"loader CPU per request, wrk vs loadgen: {len(rounds)} rounds x {cfg['duration_s']} s, {cfg['connections']} "
          f"connections, HTTP/1.1 keep-alive, server on cpu {cfg['server_cpu']}, loader on cpu {cfg['loader_cpu']}; "
          f"open loop at {cfg['open_rate_fraction_of_wrk']:.0%} of the round's wrk rate")
    print()
    print(f"{'median of rounds':<16}{'loader CPU-us/req':>18}{'x wrk':>7}{'req/s':>10}{'server CPU-us/req':>19}"
          f"{'p50 us':>11}{'p99 us':>12}")
    for k in kinds:
        ratio_k = {"wrk": 1.0, "loadgen_closed": median["ratio_closed_vs_wrk"],
                   "loadgen_open": median["ratio_open_vs_wrk"]}[k]
        print(f"{names[k]:<16}{fmt(median['loader_cpu_us_per_req'][k]):>18}{fmt(ratio_k):>7}"
              f"{fmt(median['rps'][k], 0):>10}{fmt(median['server_cpu_us_per_req'][k]):>19}"
              f"{fmt(median['latency_us_p50'][k], 0):>11}{fmt(median['latency_us_p99'][k], 0):>12}")
    print()
    print(f"{'round':<6}{'first':<9}{'wrk':>7}{'closed':>8}{'open':>8}{'cl/wrk':>8}{'wrk rps':>9}{'cl rps':>9}"
          f"{'open rps':>9}{'offered':>9}{'late':>6}  valid cl,open  (CPU-us/req)")
    for r in rounds:
        w, c, o = r["wrk"], r["loadgen_closed"], r["loadgen_open"]
        late = "-" if o.get("late_fraction") is None else f"{o['late_fraction']:.0%}"
        print(f"{r['round']:<6}{r['order'].split(',')[0].replace('loadgen_closed', 'loadgen'):<9}"
              f"{fmt(w['loader_cpu_us_per_req']):>7}{fmt(c['loader_cpu_us_per_req']):>8}"
              f"{fmt(o['loader_cpu_us_per_req']):>8}{fmt(r['ratio_closed_vs_wrk']):>8}{fmt(w['rps'], 0):>9}"
              f"{fmt(c['rps'], 0):>9}{fmt(o['rps'], 0):>9}{fmt(o['offered_rps'], 0):>9}{late:>6}"
              f"  {str(c['valid']).lower()},{str(o['valid']).lower()}")
    print()
    print(f"loadgen whole `loadgen run` tree CPU-us/req (coordinator + loader, start-up included; context): "
          f"closed {fmt(median['loadgen_tree_cpu_us_per_req']['loadgen_closed'])}, "
          f"open {fmt(median['loadgen_tree_cpu_us_per_req']['loadgen_open'])}")
    reasons = sorted({x for r in rounds for k in kinds[1:] for x in r[k]["invalid_reasons"]})
    if reasons:
        print("loadgen marked runs invalid:")
        for x in reasons[:6]:
            print("  - " + x)
    print(f"target: loadgen closed CPU-us/req <= {meta['target_ratio']} x wrk; median ratio {fmt(ratio)}: "
          f"{'MEETS' if doc['meets_target'] else 'DOES NOT MEET'} the target")
    h = meta["host"]
    print(f"host: {h['cpu_model']}, {h['nproc']} cpus, kernel {h['kernel']}, loadavg {h['loadavg_start']} -> "
          f"{h['loadavg_end']}; source {h['git_commit'][:12]}{' +dirty' if h['git_dirty'] else ''} "
          f"(fingerprint {h['source_fingerprint']}); {h['wrk_version'].split(' Copyright')[0]}")
    print(f"written: {out_path}")

cmd, args = sys.argv[1], sys.argv[2:]
{"ready": ready, "wrk": wrk, "loadgen": loadgen, "server": server, "field": field,
 "aggregate": aggregate}[cmd](*args)
PYEOF
)
py() { python3 -c "$PY" "$@"; }

# ---------------------------------------------------------------------------------------------------------------
# Server
SERVER_PID=
cleanup() {
    local rc=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ ${KEEP_TMP:-0} == 1 || $rc -ne 0 ]]; then
        log "temporary files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$LOADGEN" serve floor --bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 --cpus "$SERVER_CPU" \
    >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER_PID=$!
HTTP=''
ADMIN=''
for _ in $(seq 100); do
    if read -r HTTP ADMIN < <(py ready "$WORK/server.out" 2>/dev/null); then break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || die "floor server exited: $(cat "$WORK/server.err")"
    sleep 0.1
done
[[ -n $HTTP ]] || die "floor server did not announce REFBENCH_READY within 10 s"
[[ $HTTP == 127.0.0.1:* && $ADMIN == 127.0.0.1:* ]] || die "unexpected listeners: $HTTP $ADMIN"
log "floor server pid $SERVER_PID on http://$HTTP (admin $ADMIN), cpu $SERVER_CPU"
HZ=$(getconf CLK_TCK)

server_ticks() { # utime + stime of the server, clock ticks
    local s f
    s=$(<"/proc/$SERVER_PID/stat") || die "floor server (pid $SERVER_PID) is gone"
    s=${s##*) }
    read -r -a f <<<"$s"
    echo $((f[11] + f[12]))
}
server_requests() { # the floor's request counter (admin listener, not counted itself)
    curl -sS --max-time 3 "http://$ADMIN/metrics" | awk '$1 == "floor_requests_total" { print $2; found = 1 } END { if (!found) print "NA" }'
}

# ---------------------------------------------------------------------------------------------------------------
# Runs. Each prints one JSON line.
WRK_CMD=(taskset -c "$LOADER_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "http://$HTTP/")
BOUND=$((DUR + 60)) # hard stop for one run: its duration plus generous start-up and drain

run_wrk() { # tag
    local tag=$1 t0 t1 r0 r1 server
    r0=$(server_requests)
    t0=$(server_ticks)
    timeout -k 5 "$BOUND" /usr/bin/time -f '%e %U %S' -o "$WORK/$tag.time" "${WRK_CMD[@]}" >"$WORK/$tag.out" 2>&1 ||
        die "wrk failed: $(tail -5 "$WORK/$tag.out")"
    t1=$(server_ticks)
    r1=$(server_requests)
    server=$(py server "$t0" "$t1" "$r0" "$r1" "$HZ")
    py wrk "$WORK/$tag.out" "$WORK/$tag.time" "$server"
}

write_profile() { # path model [rate]
    local path=$1 model=$2 rate=${3:-}
    {
        echo "# Generated by scripts/compare-wrk.sh"
        echo "name = \"compare-wrk-$model\""
        echo "description = \"loader CPU per request against an external floor server ($model loop)\""
        echo
        echo "[run]"
        echo "loader_cpus = [$LOADER_CPU]"
        echo "server_cpus = [$SERVER_CPU]"
        echo "loader_processes = 1"
        echo
        echo "[calibration]"
        echo "enabled = false"
        echo
        echo "[targets.floor]"
        echo "url = \"http://$HTTP\""
        echo
        echo "[[phases]]"
        echo "name = \"$model\""
        echo "target = \"floor\""
        echo "model = \"$model\""
        if [[ $model == open ]]; then
            echo "arrival = \"fixed\""
            echo "rate_rps = $rate"
        fi
        echo "duration_s = $DUR"
        echo "connections = $CONNS"
        echo
        echo "[[phases.requests]]"
        echo "method = \"GET\""
        echo "path = \"/\""
    } >"$path"
}

run_loadgen() { # tag model [rate]
    local tag=$1 model=$2 rate=${3:-} t0 t1 r0 r1 server rc=0
    write_profile "$WORK/$tag.toml" "$model" "$rate"
    r0=$(server_requests)
    t0=$(server_ticks)
    timeout -k 5 "$BOUND" /usr/bin/time -f '%e %U %S' -o "$WORK/$tag.time" \
        "$LOADGEN" run "$WORK/$tag.toml" --out "$WORK/$tag" --quiet >"$WORK/$tag.log" 2>&1 || rc=$?
    t1=$(server_ticks)
    r1=$(server_requests)
    # Exit 2 with a result.json is a run loadgen marked invalid (loader-bound): expected here, recorded, not fatal.
    if [[ ! -s $WORK/$tag/result.json ]] || ((rc > 2)); then
        die "loadgen $model run failed (exit $rc): $(tail -5 "$WORK/$tag.log")"
    fi
    server=$(py server "$t0" "$t1" "$r0" "$r1" "$HZ")
    py loadgen "$WORK/$tag/result.json" "$WORK/$tag.time" "$rc" "$server"
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
START_S=$SECONDS
WARM=$((DUR < 3 ? 1 : 2))
log "warm-up: wrk for ${WARM} s (not measured)"
timeout -k 5 "$BOUND" taskset -c "$LOADER_CPU" wrk -t1 -c"$CONNS" -d"${WARM}s" "http://$HTTP/" >/dev/null 2>&1 ||
    die "warm-up wrk run failed"

: >"$WORK/rounds.jsonl"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2 == 1)); then order="wrk,loadgen_closed,open"; else order="loadgen_closed,wrk,open"; fi
    log "round $r/$ROUNDS ($order)"
    if ((r % 2 == 1)); then
        W=$(run_wrk "r$r-wrk")
        C=$(run_loadgen "r$r-closed" closed)
    else
        C=$(run_loadgen "r$r-closed" closed)
        W=$(run_wrk "r$r-wrk")
    fi
    printf '%s\n' "$W" >"$WORK/r$r-wrk.json"
    RATE=$(py field "$WORK/r$r-wrk.json" rps | awk -v f="$OPEN_FRACTION" '{ printf "%.0f", $1 * f }')
    ((RATE > 0)) || die "round $r: wrk measured no throughput"
    O=$(run_loadgen "r$r-open" open "$RATE")
    printf '{"round": %d, "order": "%s", "open_rate_rps": %s, "wrk": %s, "loadgen_closed": %s, "loadgen_open": %s}\n' \
        "$r" "$order" "$RATE" "$W" "$C" "$O" >>"$WORK/rounds.jsonl"
done
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------------------------
# Fingerprint and output
FP_END=$(tree_fingerprint)
export FP_BEFORE_BUILD FP_BUILT FP_END BIN_SHA CPU_MODEL NCPU KERNEL GIT_COMMIT GIT_DIRTY_PATHS DATE_UTC WRK_VERSION WRK_DEB LOADGEN_VERSION RUSTC
export LOADAVG_START LOADAVG_END ELAPSED ROUNDS DUR CONNS SERVER_CPU LOADER_CPU OPEN_FRACTION TARGET_RATIO
export WRK_CMD_STR PROFILE_EXAMPLE INVOCATION WARM
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
KERNEL=$(uname -r)
DATE_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ)
WRK_VERSION=$(wrk -v 2>&1 | head -1 || true)
WRK_DEB=$(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo unknown)
LOADGEN_VERSION=$("$LOADGEN" --version)
RUSTC=$(rustc --version 2>/dev/null || echo unknown)
ELAPSED=$((SECONDS - START_S))
WRK_CMD_STR="${WRK_CMD[*]}"
PROFILE_EXAMPLE=$(cat "$WORK/r1-closed.toml")
INVOCATION="$0${*:+ $*}"
py_meta=$(
    cat <<'PYEOF'
import json, os, re
e = os.environ
port = lambda s: re.sub(r"127\.0\.0\.1:[0-9]+", "127.0.0.1:PORT", s)
host = {
    "cpu_model": e["CPU_MODEL"], "nproc": int(e["NCPU"]), "kernel": e["KERNEL"],
    "git_commit": e["GIT_COMMIT"], "git_dirty": bool(e["GIT_DIRTY_PATHS"].strip()),
    "git_dirty_paths": e["GIT_DIRTY_PATHS"].split("\n")[:50] if e["GIT_DIRTY_PATHS"].strip() else [],
    "source_fingerprint": e["FP_BUILT"],
    "source_changed_during_build": e["FP_BEFORE_BUILD"] != e["FP_BUILT"],
    "source_changed_during_run": e["FP_BUILT"] != e["FP_END"],
    "loadgen_binary_sha256_16": e["BIN_SHA"],
    "date_utc": e["DATE_UTC"], "wrk_version": e["WRK_VERSION"], "wrk_debian_package": e["WRK_DEB"],
    "loadgen_version": e["LOADGEN_VERSION"], "rustc": e["RUSTC"],
    "loadavg_start": e["LOADAVG_START"], "loadavg_end": e["LOADAVG_END"],
    "refbench_env": {k: v for k, v in sorted(e.items()) if k.startswith("REFBENCH_")},
}
cfg = {"rounds": int(e["ROUNDS"]), "duration_s": int(e["DUR"]), "connections": int(e["CONNS"]),
       "server_cpu": int(e["SERVER_CPU"]), "loader_cpu": int(e["LOADER_CPU"]),
       "open_rate_fraction_of_wrk": float(e["OPEN_FRACTION"]), "elapsed_s": int(e["ELAPSED"])}
method = {
    "server": "loadgen serve floor --bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 --cpus %s (one server for all runs)"
              % e["SERVER_CPU"],
    "wrk": port(e["WRK_CMD_STR"]),
    "wrk_cpu": "/usr/bin/time -f '%e %U %S': user+sys of the whole wrk process (start-up and connect included)",
    "loadgen": "target/release/loadgen run PROFILE --out DIR --quiet (profile_example below; open runs use "
               "model=open, arrival=fixed, rate_rps=open_rate_rps)",
    "loadgen_cpu": "result.json phases[0].processes[role=loader].cpu_us_per_request: getrusage of the loader "
                   "process from the phase start to its last completion (exec and connect excluded); "
                   "tree_cpu_* is /usr/bin/time of the whole `loadgen run` (coordinator too), for context",
    "server_cpu": "utime+stime from /proc/PID/stat (clock ticks) before/after each run, divided by the change "
                  "of floor_requests_total from the admin /metrics; same method for all three",
    "order": "odd rounds wrk then loadgen closed, even rounds loadgen closed then wrk; loadgen open last "
             "(its rate is 80%% of that round's wrk rate); a %s s wrk warm-up before round 1" % e["WARM"],
    "profile_example": port(e["PROFILE_EXAMPLE"]),
}
cmd = "ROUNDS=%s DUR=%s CONNS=%s scripts/compare-wrk.sh" % (e["ROUNDS"], e["DUR"], e["CONNS"])
print(json.dumps({"command": cmd, "invocation": e["INVOCATION"], "target_ratio": float(e["TARGET_RATIO"]),
                  "host": host, "config": cfg, "method": method}))
PYEOF
)
python3 -c "$py_meta" >"$WORK/meta.json"
mkdir -p "$(dirname "$OUT")"
py aggregate "$WORK/rounds.jsonl" "$WORK/meta.json" "$OUT"
