#!/usr/bin/env bash
# peer-oidc.sh: client_credentials tokens/s, the built-in token-issuer (ours) vs node `oidc-provider`, side by side.
#
# Both issuers mint the same token: an RFC 9068 JWT access token signed ES256 (typ at+jwt, kid, iss, sub,
# client_id, scope, aud, iat, exp; 300 s), for the same client (bench-client, client_secret_basic), scope `read`,
# resource https://api.refbench.test. One issuer at a time runs on cpu 0, started fresh for every loadgen run:
#   ours           taskset -c 0 loadgen serve oidc --threads 1 --cpus 0 (the embedded test clients, ES256)
#   oidc-provider  NODE_ENV=production taskset -c 0 node scripts/peers/oidc-provider/server.mjs (pinned version in
#                  its package-lock.json, installed with `npm ci` into this run's temporary folder)
# The loader runs on cpu 1 (one loader process). Both are `url` targets with `pids = [<issuer pid>]`, so loadgen
# measures both the same way (CPU time of every thread of the process, /proc/<pid>/task/*/schedstat). Every phase
# verifies one token in VERIFY_EVERY against the issuer's JWKS (loadgen's relying-party checks) after the phase.
#
# Per round and peer (the peer order alternates between rounds), two loadgen runs:
#   A  capacity: the floor calibration, a closed-loop warm-up, then `capacity` (closed loop, CLOSED_CONNS
#      connections): tokens/s, server CPU-us per token, tokens/s per server core (1e6 / CPU-us per token).
#   B  open loop (Poisson arrivals, OPEN_CONNS connections), after a warm-up:
#      `equal-load`: one rate for both peers (COMMON_RATE, default COMMON_FRACTION x this round's oidc-provider
#        capacity): p99 at equal load;
#      ours only: `own-80pct` (80 % of its own capacity this round) and `fixed-rate` (FIXED_RATE, default the
#        issue's 15000 tokens/s per core);
#      `stairs@R`: a staircase at fractions of the peer's own capacity this round (STEPS).
#   "Equal p99": per peer, the highest staircase rate whose p99 <= P99_BOUND_US, with no failed request and >= 90 %
#   of the offered rate achieved (Poisson counts over a few seconds vary by a few %; lateness shows in the p99);
#   the ratio ours / oidc-provider of those rates is the issue's "10x at equal p99".
#   A default round takes ~4 min (3 rounds ~12 min, plus the build); --quick --rounds 1 ~2 min.
#
# Output: a table on stdout and a JSON document in OUT (command, date, git commit + dirty flag, host fingerprint,
# node / oidc-provider / loadgen versions, settings, per-round raw figures per peer and phase, medians over rounds,
# ratios ours / oidc-provider and the issue's targets: >= 10x tokens/s at equal p99, >= 15000 tokens/s per core).
#
# Usage: scripts/peer-oidc.sh [--quick] [--rounds N] [--peers LIST] [--out FILE] [--keep-tmp]
#   --quick        2-3 s phases, a 4-step staircase; OUT defaults to ${TMPDIR:-/tmp}/oidc-vs-oidc-provider.quick.json
#   --rounds N     alternating rounds (default 3; env ROUNDS)
#   --peers LIST   comma-separated subset of ours,oidc-provider (default both)
#   --out FILE     result JSON (default results/baselines/oidc-vs-oidc-provider.json; env OUT)
#   --keep-tmp     keep the temporary folder (profiles, logs, result.json files; env KEEP_TMP=1)
#   env CLOSED_CONNS (64), OPEN_CONNS (64), COMMON_RATE (tokens/s; default COMMON_FRACTION=0.7 of oidc-provider's
#       capacity), FIXED_RATE (15000), P99_BOUND_US (10000), VERIFY_EVERY (50), CARGO_TARGET_DIR (where loadgen is
#       built; default /work/target when it exists, else ./target).
# Needs 2 cpus, python3, node >= 20 and npm (the npm registry, for `npm ci`); installs Debian's nodejs/npm with
# apt-get only when node is missing. All traffic stays on 127.0.0.1; every step is bounded by `timeout` and every
# loadgen run by run.max_duration_s; every process started here is stopped by the exit trap.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,43p' "$0" | sed 's/^# \{0,1\}//'; }


[[ -z ${ROUNDS:-} ]] || ENV_ROUNDS=$ROUNDS
QUICK=0
PEERS=ours,oidc-provider
ARGS=("$@")
while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds)
            [[ $# -ge 2 ]] || die "--rounds needs a value"
            ROUNDS=$2
            shift
            ;;
        --peers)
            [[ $# -ge 2 ]] || die "--peers needs a value"
            PEERS=$2
            shift
            ;;
        --out)
            [[ $# -ge 2 ]] || die "--out needs a value"
            OUT=$2
            shift
            ;;
        --keep-tmp) KEEP_TMP=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "peer-oidc: unknown argument: $1 (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done
COMMAND="scripts/peer-oidc.sh${ARGS[*]:+ ${ARGS[*]}}"
for v in CLOSED_CONNS OPEN_CONNS COMMON_RATE COMMON_FRACTION FIXED_RATE P99_BOUND_US VERIFY_EVERY; do
    [[ -z ${!v:-} ]] || COMMAND="$v=${!v} $COMMAND"
done
[[ -z ${ENV_ROUNDS:-} || ${ROUNDS:-} != "${ENV_ROUNDS:-}" ]] || COMMAND="ROUNDS=$ENV_ROUNDS $COMMAND"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PEER_DIR=$ROOT/scripts/peers/oidc-provider

if [[ $QUICK == 1 ]]; then
    OUT=${OUT:-${TMPDIR:-/tmp}/oidc-vs-oidc-provider.quick.json}
fi
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-results/baselines/oidc-vs-oidc-provider.json}
CLOSED_CONNS=${CLOSED_CONNS:-64}
OPEN_CONNS=${OPEN_CONNS:-64}
COMMON_RATE=${COMMON_RATE:-}
COMMON_FRACTION=${COMMON_FRACTION:-0.7}
FIXED_RATE=${FIXED_RATE:-15000}
P99_BOUND_US=${P99_BOUND_US:-10000}
VERIFY_EVERY=${VERIFY_EVERY:-50}
KEEP_TMP=${KEEP_TMP:-0}
SERVER_CPU=0
LOADER_CPU=1
SCOPE="read"
RESOURCE=https://api.refbench.test
CLIENT_ID=bench-client
CLIENT_SECRET=bench-secret-0123456789abcdef
TARGET_RATIO=10
TARGET_PER_CORE=15000
OWN_FRACTION=0.8

check_frac() { # name value
    if ! [[ $2 =~ ^[0-9]*\.?[0-9]+$ ]] || ! awk -v x="$2" 'BEGIN { exit !(x > 0 && x <= 2) }'; then
        die "$1 must be a number in (0, 2], got '$2'"
    fi
}
check_int ROUNDS "$ROUNDS" 1 20
check_int CLOSED_CONNS "$CLOSED_CONNS" 1 4096
check_int OPEN_CONNS "$OPEN_CONNS" 1 4096
check_int FIXED_RATE "$FIXED_RATE" 100 1000000
check_int P99_BOUND_US "$P99_BOUND_US" 100 10000000
check_int VERIFY_EVERY "$VERIFY_EVERY" 0 1000000
[[ -z $COMMON_RATE ]] || check_int COMMON_RATE "$COMMON_RATE" 10 1000000
check_frac COMMON_FRACTION "$COMMON_FRACTION"
ROUNDS=$((10#$ROUNDS))
IFS=, read -r -a PEER_LIST <<<"$PEERS"
((${#PEER_LIST[@]})) || die "--peers is empty"
for p in "${PEER_LIST[@]}"; do
    [[ $p == ours || $p == oidc-provider ]] || die "--peers: unknown peer '$p' (ours, oidc-provider)"
done
peer_wanted() { [[ ",$PEERS," == *",$1,"* ]]; }

# Phase durations (seconds) and the staircase (fractions of the peer's own closed-loop capacity this round).
if [[ $QUICK == 1 ]]; then
    WARM_S=3 CAP_S=3 OPEN_S=3 STEP_S=2
    STEPS=(0.5 0.75 0.9 1.05)
else
    WARM_S=5 CAP_S=10 OPEN_S=10 STEP_S=5
    STEPS=(0.25 0.5 0.6 0.7 0.8 0.9 1.0 1.1)
fi

# ---------------------------------------------------------------------------------------------------------------
# Tools
need=()
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
command -v timeout >/dev/null || need+=(coreutils)
if peer_wanted oidc-provider; then
    command -v node >/dev/null || need+=(nodejs)
    command -v npm >/dev/null || need+=(npm)
fi
if ((${#need[@]})); then apt_install "${need[@]}"; fi
NCPU=$(nproc --all)
((NCPU >= 2)) || die "needs at least 2 cpus (issuer on $SERVER_CPU, loader on $LOADER_CPU); this host has $NCPU"
NODE_VERSION=-
NPM_VERSION=-
if peer_wanted oidc-provider; then
    NODE_VERSION=$(node --version)
    NPM_VERSION=$(npm --version)
    if ! [[ $NODE_VERSION =~ ^v([0-9]+)\. ]] || ((BASH_REMATCH[1] < 20)); then
        die "oidc-provider 9 needs node >= 20 (it asks for 22 LTS and warns below), this host has $NODE_VERSION"
    fi
fi
# CPU figures are only worth something on an otherwise idle host: say so, and record the load average.
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOADAVG_START%% *}" 'BEGIN { exit !(l > 0.5) }'; then
    log "warning: load average $LOADAVG_START before the runs: other work on this host skews the figures"
fi

# ---------------------------------------------------------------------------------------------------------------
# Temporary folder, cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/refbench-peer-oidc.XXXXXX")
chmod 755 "$WORK"
PIDS_STARTED=()
cleanup() {
    local rc=$?
    local p
    for p in "${PIDS_STARTED[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null || true
            timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
        fi
    done
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ready_field() { # file key... -> a field of the JSON on a REFBENCH_READY line
    python3 - "$@" <<'EOF'
import json, sys
line = open(sys.argv[1]).readline()
v = json.loads(line[len("REFBENCH_READY "):])
for k in sys.argv[2:]:
    v = v[k]
print(v)
EOF
}
wait_ready_line() { # file pid what
    local _
    for _ in $(seq 1 600); do
        grep -q '^REFBENCH_READY ' "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited before announcing itself: $(tail -5 "${1%.ready}.log" 2>/dev/null)"
        sleep 0.1
    done
    die "$3 did not announce itself within 60 s"
}
# One client_credentials token from ADDR, checked like loadgen checks it (without the signature): prints "ok" or why not.
probe_token() { # addr
    python3 - "$1" "$CLIENT_ID" "$CLIENT_SECRET" "$SCOPE" "$RESOURCE" <<'EOF'
import base64, http.client, json, sys, urllib.parse
addr, cid, secret, scope, resource = sys.argv[1:6]
def b64(s):
    return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
try:
    c = http.client.HTTPConnection(addr, timeout=5)
    c.request("GET", "/.well-known/openid-configuration")
    disc = json.loads(c.getresponse().read())
    host = "http://" + addr
    for k in ("token_endpoint", "jwks_uri"):
        if not disc.get(k, "").startswith(host + "/"):
            sys.exit(print(f"discovery {k} = {disc.get(k)!r} is not on {host}"))
    auth = base64.b64encode(f"{cid}:{secret}".encode()).decode()
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": scope, "resource": resource})
    c.request("POST", urllib.parse.urlsplit(disc["token_endpoint"]).path, body=body,
              headers={"Authorization": "Basic " + auth, "Content-Type": "application/x-www-form-urlencoded"})
    r = c.getresponse()
    t = json.loads(r.read())
    if r.status != 200 or t.get("token_type", "").lower() != "bearer":
        sys.exit(print(f"token endpoint: status {r.status}, {t}"))
    h, p, _ = t["access_token"].split(".")
    h, p = b64(h), b64(p)
    missing = [k for k in ("iss", "sub", "client_id", "scope", "iat", "exp", "aud") if k not in p]
    if h.get("typ", "").lower() not in ("at+jwt", "application/at+jwt") or h.get("alg") != "ES256" or not h.get("kid"):
        print(f"token header {h}")
    elif missing:
        print(f"token claims missing {missing}: {p}")
    elif p["iss"] != disc["issuer"] or p["client_id"] != cid or p["scope"] != scope or p["aud"] not in (resource, [resource]):
        print(f"token claims {p}")
    else:
        print("ok")
except Exception as e:
    print(f"error: {e!r}")
EOF
}

# ---------------------------------------------------------------------------------------------------------------
# Build: a private copy of loadgen (a concurrent build cannot change the binary mid-run).
GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -vc "^?? " || true)
if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
    if [[ -d /work/target && -w /work/target ]]; then CARGO_TARGET_DIR=/work/target; else CARGO_TARGET_DIR=$ROOT/target; fi
fi
export CARGO_TARGET_DIR
log "cargo build --release -p refbench-loadgen (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
timeout 3600 cargo build --release -p refbench-loadgen --bin loadgen >&2
cp "$CARGO_TARGET_DIR/release/loadgen" "$WORK/loadgen"
LOADGEN=$WORK/loadgen
LOADGEN_VERSION=$("$LOADGEN" --version 2>/dev/null | head -1 || echo unknown)
if peer_wanted ours; then
    "$LOADGEN" serve oidc --help >/dev/null 2>&1 ||
        die "this loadgen has no \`serve oidc\` (the token-issuer); rebuild once it is in the workspace"
fi

# ---------------------------------------------------------------------------------------------------------------
# oidc-provider: the pinned dependency tree, installed into the temporary folder (never into the repository).
OIDC_PROVIDER_VERSION=-
if peer_wanted oidc-provider; then
    NODE_APP=$WORK/node
    mkdir -p "$NODE_APP"
    cp "$PEER_DIR/package.json" "$PEER_DIR/package-lock.json" "$PEER_DIR/server.mjs" "$NODE_APP/"
    log "npm ci (oidc-provider, $(node --version), npm $NPM_VERSION) in $NODE_APP"
    (cd "$NODE_APP" && timeout 900 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) ||
        die "npm ci failed in $NODE_APP"
    OIDC_PROVIDER_VERSION=$(node -p 'require(process.argv[1]).version' "$NODE_APP/node_modules/oidc-provider/package.json")
    log "oidc-provider $OIDC_PROVIDER_VERSION"
fi

# ---------------------------------------------------------------------------------------------------------------
# The issuers. start_peer sets PEER_PID (the process to stop and to measure) and PEER_ADDR.
start_peer() { # peer run-name
    local peer=$1 ready=$WORK/$2.ready log=$WORK/$2.log
    case "$peer" in
        ours)
            taskset -c "$SERVER_CPU" "$LOADGEN" serve oidc --bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 \
                --threads 1 --cpus "$SERVER_CPU" >"$ready" 2>"$log" &
            ;;
        oidc-provider)
            (cd "$NODE_APP" && NODE_ENV=production exec taskset -c "$SERVER_CPU" node server.mjs 0) >"$ready" 2>"$log" &
            ;;
    esac
    PEER_PID=$!
    PIDS_STARTED+=("$PEER_PID")
    wait_ready_line "$ready" "$PEER_PID" "$peer ($2)"
    PEER_ADDR=$(ready_field "$ready" listeners http)
    # The measured process must be the issuer itself (taskset and the subshell exec into it).
    local comm
    comm=$(cat "/proc/$PEER_PID/comm" 2>/dev/null || true)
    case "$peer" in
        ours) [[ $comm == loadgen* ]] || die "ours ($2): pid $PEER_PID is '$comm', not loadgen" ;;
        oidc-provider) [[ $comm == node* ]] || die "oidc-provider ($2): pid $PEER_PID is '$comm', not node" ;;
    esac
    local why
    why=$(probe_token "$PEER_ADDR")
    [[ $why == ok ]] || die "$peer ($2): the probe token is not what loadgen checks: $why"
}

# ---------------------------------------------------------------------------------------------------------------
# Profiles. Every phase is an OIDC phase with the same token request; only the target's URL and pid differ.
oidc_table() {
    cat <<EOF
[phases.oidc]
flow = "client_credentials"
auth = "basic"
client_id = "$CLIENT_ID"
client_secret = "$CLIENT_SECRET"
scope = "$SCOPE"
resource = "$RESOURCE"
verify_every = $VERIFY_EVERY
EOF
}
profile_head() { # name url pid max_duration_s calibration(on|off)
    cat <<EOF
name = "$1"
description = "scripts/peer-oidc.sh: client_credentials, ES256 JWT access tokens"

[run]
server_cpus = [$SERVER_CPU]
loader_cpus = [$LOADER_CPU]
loader_processes = 1
request_timeout_ms = 5000
max_duration_s = $4
max_requests = 50_000_000

EOF
    if [[ $5 == on ]]; then
        cat <<EOF
[calibration]
rate_rps = 4000
duration_s = 2
connections = 4

EOF
    else
        printf '[calibration]\nenabled = false\n\n'
    fi
    cat <<EOF
[targets.issuer]
url = "$2"
pids = [$3]

# Warm-up (JIT, caches, connection set-up): closed loop, left out of the results.
[[phases]]
name = "warmup"
target = "issuer"
warmup = true
model = "closed"
connections = 16
duration_s = $WARM_S
$(oidc_table)

EOF
}
open_phase() { # name rate duration
    cat <<EOF
[[phases]]
name = "$1"
target = "issuer"
model = "open"
arrival = "poisson"
rate_rps = $2
duration_s = $3
connections = $OPEN_CONNS
$(oidc_table)

EOF
}
write_capacity_profile() { # file peer url pid
    {
        profile_head "oidc-capacity-$2" "$3" "$4" $((WARM_S + CAP_S + 120)) on
        cat <<EOF
# Capacity: as many tokens as $CLOSED_CONNS connections get, each waiting for its response.
[[phases]]
name = "capacity"
target = "issuer"
model = "closed"
connections = $CLOSED_CONNS
duration_s = $CAP_S
$(oidc_table)
EOF
    } >"$1"
}
# rates: "name=rate ..." for the fixed phases, then the staircase rates.
write_open_profile() { # file peer url pid stairs-rates fixed-phases...
    local file=$1 peer=$2 url=$3 pid=$4 stairs=$5
    shift 5
    local n_fixed=$# total
    total=$((WARM_S + n_fixed * OPEN_S + ${#STEPS[@]} * STEP_S + 180))
    {
        profile_head "oidc-open-$peer" "$url" "$pid" "$total" off
        local spec
        for spec in "$@"; do open_phase "${spec%%=*}" "${spec#*=}" "$OPEN_S"; done
        cat <<EOF
# The staircase, at fractions (${STEPS[*]}) of this peer's closed-loop capacity this round.
[[phases]]
name = "stairs"
target = "issuer"
model = "open"
arrival = "poisson"
steps_rps = [$stairs]
duration_s = $STEP_S
connections = $OPEN_CONNS
$(oidc_table)
EOF
    } >"$file"
}

# The profiles must be accepted before anything is measured.
write_capacity_profile "$WORK/validate-a.toml" check http://127.0.0.1:1 $$
write_open_profile "$WORK/validate-b.toml" check http://127.0.0.1:1 $$ "1000, 2000" equal-load=1000 fixed-rate="$FIXED_RATE"
for f in validate-a validate-b; do
    timeout 60 "$LOADGEN" validate "$WORK/$f.toml" >"$WORK/$f.log" 2>&1 ||
        die "loadgen does not accept the generated profile $f: $(tail -5 "$WORK/$f.log")"
done

RUN_TIMEOUT=900
RUNS=()
run_loadgen() { # peer round kind(capacity|open) profile-writer-args...
    local peer=$1 round=$2 kind=$3 name="r$2-$1-$3" rc=0
    shift 3
    log "round $round: $peer, $kind"
    start_peer "$peer" "$name"
    log "$peer at $PEER_ADDR, pid $PEER_PID"
    if [[ $kind == capacity ]]; then
        write_capacity_profile "$WORK/$name.toml" "$peer" "http://$PEER_ADDR" "$PEER_PID"
    else
        write_open_profile "$WORK/$name.toml" "$peer" "http://$PEER_ADDR" "$PEER_PID" "$@"
    fi
    timeout "$RUN_TIMEOUT" "$LOADGEN" run "$WORK/$name.toml" --out "$WORK/$name" >"$WORK/$name-loadgen.log" 2>&1 || rc=$?
    tail -n 12 "$WORK/$name-loadgen.log" >&2
    kill -0 "$PEER_PID" 2>/dev/null || log "warning: $peer exited during the run: $(tail -3 "$WORK/$name.log")"
    stop_pid "$PEER_PID"
    [[ -f $WORK/$name/result.json ]] ||
        die "round $round: the $peer $kind run wrote no result.json (exit $rc): $(tail -5 "$WORK/$name-loadgen.log")"
    RUNS+=("$peer:$round:$kind:$rc:$WORK/$name/result.json")
}
# Tokens/s of the capacity phase of a result.
capacity_of() { # result.json
    python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
p = next(p for p in r["phases"] if p["name"] == "capacity")
print(round((p.get("oidc") or {}).get("tokens_per_s") or p["achieved_rate_rps"], 1))
EOF
}
rate_times() { # rate fraction -> integer rate (>= 10)
    awk -v r="$1" -v f="$2" 'BEGIN { v = int(r * f + 0.5); if (v < 10) v = 10; print v }'
}

declare -A CAP
for r in $(seq 1 "$ROUNDS"); do
    # Alternate the order between rounds so no peer always runs first.
    order=("${PEER_LIST[@]}")
    if ((r % 2 == 0)); then
        rev=()
        for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[$i]}"); done
        order=("${rev[@]}")
    fi
    # A: capacity, closed loop.
    for peer in "${order[@]}"; do
        run_loadgen "$peer" "$r" capacity
        CAP[$peer]=$(capacity_of "${RUNS[-1]##*:}")
        log "round $r: $peer capacity ${CAP[$peer]} tokens/s (closed loop, $CLOSED_CONNS connections)"
        awk -v c="${CAP[$peer]}" 'BEGIN { exit !(c >= 20) }' || die "round $r: $peer served ${CAP[$peer]} tokens/s; see $WORK"
    done
    # The common rate: COMMON_RATE, else a fraction of oidc-provider's capacity (else of the slowest peer's).
    if [[ -n $COMMON_RATE ]]; then
        common=$COMMON_RATE
    elif peer_wanted oidc-provider; then
        common=$(rate_times "${CAP[oidc-provider]}" "$COMMON_FRACTION")
    else
        common=$(rate_times "${CAP[${PEER_LIST[0]}]}" "$COMMON_FRACTION")
    fi
    # B: open loop, in the reverse order of A (the peer measured last in A goes first).
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do
        peer=${order[$i]}
        stairs=
        for f in "${STEPS[@]}"; do stairs+="${stairs:+, }$(rate_times "${CAP[$peer]}" "$f")"; done
        fixed=("equal-load=$common")
        if [[ $peer == ours ]]; then
            fixed+=("own-80pct=$(rate_times "${CAP[$peer]}" "$OWN_FRACTION")" "fixed-rate=$FIXED_RATE")
        fi
        run_loadgen "$peer" "$r" open "$stairs" "${fixed[@]}"
    done
done

# ---------------------------------------------------------------------------------------------------------------
# Summary
mkdir -p "$(dirname "$OUT")"
SETTINGS=$(
    python3 - "$ROUNDS" "$QUICK" "$CLOSED_CONNS" "$OPEN_CONNS" "${COMMON_RATE:-}" "$COMMON_FRACTION" "$FIXED_RATE" \
        "$P99_BOUND_US" "$VERIFY_EVERY" "$WARM_S" "$CAP_S" "$OPEN_S" "$STEP_S" "$OWN_FRACTION" "$SCOPE" "$RESOURCE" \
        "$CLIENT_ID" "${STEPS[@]}" <<'EOF'
import json, sys
a = sys.argv[1:]
print(json.dumps({
    "rounds": int(a[0]), "quick": a[1] == "1", "closed_connections": int(a[2]), "open_connections": int(a[3]),
    "common_rate_rps": int(a[4]) if a[4] else None, "common_fraction_of_oidc_provider_capacity": float(a[5]),
    "fixed_rate_rps": int(a[6]), "p99_bound_us": int(a[7]), "verify_every": int(a[8]),
    "durations_s": {"warmup": float(a[9]), "capacity": float(a[10]), "open_phase": float(a[11]), "stair_step": float(a[12])},
    "own_fraction_of_capacity": float(a[13]), "arrival": "poisson", "scope": a[14], "resource": a[15],
    "client_id": a[16], "client_auth": "client_secret_basic",
    "staircase_fractions_of_capacity": [float(x) for x in a[17:]],
}))
EOF
)
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$OUT" "$COMMAND" "$GIT_COMMIT" "$GIT_DIRTY" "$NODE_VERSION" "$NPM_VERSION" "$OIDC_PROVIDER_VERSION" \
    "$LOADGEN_VERSION" "$SETTINGS" "$TARGET_RATIO" "$TARGET_PER_CORE" "$LOADAVG_START" "$LOADAVG_END" "${RUNS[@]}" <<'PYEOF'
import json, os, platform, statistics, sys, time

(out, command, commit, dirty, node_version, npm_version, op_version, loadgen_version, settings, t_ratio, t_core,
 load0, load1) = sys.argv[1:14]
runs = sys.argv[14:]
settings = json.loads(settings)
t_ratio, t_core = float(t_ratio), float(t_core)
bound = settings["p99_bound_us"]

def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def rnd(x, n=1):
    return None if x is None else round(x, n)

def phase_figures(p):
    servers = [x for x in p["processes"] if x["role"] == "server"]
    loaders = [x for x in p["processes"] if x["role"] == "loader"]
    o = p.get("oidc") or {}
    tokens = o.get("tokens") or 0
    srv_cpu_s = sum(x["cpu_seconds"] for x in servers) if servers else None
    cpu_per_token = srv_cpu_s * 1e6 / tokens if srv_cpu_s is not None and tokens else None
    lat = p["latency_us"]
    offered = p.get("offered_rate_rps")
    achieved = p["achieved_rate_rps"]
    return {
        "model": "open" if offered is not None else "closed",
        "offered_rate_rps": rnd(offered),
        "achieved_rate_rps": rnd(achieved),
        "tokens": tokens,
        "tokens_per_s": rnd(o.get("tokens_per_s")),
        "requests": p["requests"]["total"],
        "failed": p["requests"]["failed"],
        "timeouts": p["requests"].get("timeouts"),
        "p50_us": lat["p50"], "p99_us": lat["p99"], "p999_us": lat["p999"], "max_us": lat["max"],
        "server_cpu_us_per_token": rnd(cpu_per_token, 2),
        "tokens_per_s_per_server_core": rnd(1e6 / cpu_per_token) if cpu_per_token else None,
        "server_cpu_cores_used": rnd(sum(x.get("cpu_cores_used") or 0 for x in servers), 3) if servers else None,
        "server_rss_peak_bytes": sum(x.get("rss_bytes_peak") or 0 for x in servers) if servers else None,
        "loader_cpu_us_per_request": rnd(sum(x["cpu_us_per_request"] for x in loaders), 2) if loaders else None,
        "loader_cpu_cores_used": rnd(sum(x.get("cpu_cores_used") or 0 for x in loaders), 3) if loaders else None,
        "verified": o.get("verified"), "sampled": o.get("sampled"),
        "verification_failures": o.get("verification_failures") or {},
        "malformed_responses": o.get("malformed_responses"),
    }

def stair_ok(f):
    return (f["p99_us"] is not None and f["p99_us"] <= bound and f["failed"] == 0 and f["offered_rate_rps"]
            and f["achieved_rate_rps"] >= 0.9 * f["offered_rate_rps"])

rounds = []
per = {}  # (peer, phase) -> [figures]
loadgen_host = None
floors = []
for spec in runs:
    peer, rno, kind, rc, path = spec.split(":", 4)
    r = json.load(open(path))
    loadgen_host = loadgen_host or r.get("host")
    floor = (r.get("calibration") or {}).get("floor_cpu_us_per_request")
    if floor is not None:
        floors.append(floor)
    entry = {"peer": peer, "round": int(rno), "run": kind, "loadgen_exit_code": int(rc), "valid": r["valid"],
             "invalid_reasons": r["invalid_reasons"], "warnings": r.get("warnings", []),
             "correctness_failures": r.get("correctness_failures", []), "floor_cpu_us_per_request": floor,
             "phases": {}}
    stairs = []
    for p in r["phases"]:
        f = phase_figures(p)
        entry["phases"][p["name"]] = f
        per.setdefault((peer, p["name"]), []).append(f)
        if p["name"].startswith("stairs@"):
            stairs.append(f)
    if stairs:
        ok = [f["offered_rate_rps"] for f in stairs if stair_ok(f)]
        entry["highest_stair_rate_within_p99_bound_rps"] = max(ok) if ok else None
    rounds.append(entry)

peers = []
for r in rounds:
    if r["peer"] not in peers:
        peers.append(r["peer"])
phase_names = []
for (_, name) in per:
    if name not in phase_names:
        phase_names.append(name)

summary = {}
for name in phase_names:
    row = {}
    for peer in peers:
        figs = per.get((peer, name))
        if not figs:
            continue
        row[peer] = {k + "_median": med(f[k] for f in figs) for k in (
            "offered_rate_rps", "achieved_rate_rps", "tokens_per_s", "p50_us", "p99_us", "p999_us",
            "server_cpu_us_per_token", "tokens_per_s_per_server_core", "loader_cpu_us_per_request",
            "server_rss_peak_bytes")}
        row[peer]["failed_total"] = sum(f["failed"] for f in figs)
        row[peer]["verified_total"] = sum(f["verified"] or 0 for f in figs)
        row[peer]["sampled_total"] = sum(f["sampled"] or 0 for f in figs)
        fails = {}
        for f in figs:
            for k, v in f["verification_failures"].items():
                fails[k] = fails.get(k, 0) + v
        row[peer]["verification_failures_total"] = fails
        row[peer]["rounds"] = len(figs)
        summary[name] = row

def pm(peer, phase, key):
    return ((summary.get(phase) or {}).get(peer) or {}).get(key + "_median")

def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None

eq = {p: med(r.get("highest_stair_rate_within_p99_bound_rps") for r in rounds if r["peer"] == p and r["run"] == "open")
      for p in peers}
# Paired by round: ours / oidc-provider of the same round's figures, median over rounds.
def paired(fn):
    vals = []
    for rno in sorted({r["round"] for r in rounds}):
        a = fn("ours", rno)
        b = fn("oidc-provider", rno)
        if a is not None and b:
            vals.append(round(a / b, 2))
    return vals
def cap_of(peer, rno, key):
    for r in rounds:
        if r["peer"] == peer and r["round"] == rno and r["run"] == "capacity":
            return r["phases"]["capacity"][key]
    return None
def eq_of(peer, rno):
    for r in rounds:
        if r["peer"] == peer and r["round"] == rno and r["run"] == "open":
            return r.get("highest_stair_rate_within_p99_bound_rps")
    return None
cap_pairs = paired(lambda p, n: cap_of(p, n, "tokens_per_s"))
core_pairs = paired(lambda p, n: cap_of(p, n, "tokens_per_s_per_server_core"))
eq_pairs = paired(eq_of)
per_core_ours = pm("ours", "capacity", "tokens_per_s_per_server_core")
headline = {
    "capacity_tokens_per_s": {p: pm(p, "capacity", "tokens_per_s") for p in peers},
    "capacity_server_cpu_us_per_token": {p: pm(p, "capacity", "server_cpu_us_per_token") for p in peers},
    "tokens_per_s_per_server_core": {p: pm(p, "capacity", "tokens_per_s_per_server_core") for p in peers},
    "ratio_capacity_ours_over_oidc_provider": ratio(pm("ours", "capacity", "tokens_per_s"), pm("oidc-provider", "capacity", "tokens_per_s")),
    "ratio_capacity_paired_by_round": cap_pairs,
    "ratio_per_core_ours_over_oidc_provider": ratio(per_core_ours, pm("oidc-provider", "capacity", "tokens_per_s_per_server_core")),
    "ratio_per_core_paired_by_round": core_pairs,
    "equal_p99": {
        "p99_bound_us": bound,
        "rule": "highest staircase rate with p99 <= bound, achieved >= 90 % of offered and no failed request; median over rounds",
        "rate_rps": eq,
        "ratio_ours_over_oidc_provider": ratio(eq.get("ours"), eq.get("oidc-provider")),
        "ratio_paired_by_round": eq_pairs,
        "target_ratio_min": t_ratio,
    },
    "equal_load": {p: {k: pm(p, "equal-load", k) for k in ("offered_rate_rps", "achieved_rate_rps", "p50_us", "p99_us", "p999_us", "server_cpu_us_per_token")} for p in peers},
    "ours_at_fixed_rate": {k: pm("ours", "fixed-rate", k) for k in ("offered_rate_rps", "achieved_rate_rps", "p50_us", "p99_us", "p999_us", "server_cpu_us_per_token", "tokens_per_s_per_server_core")},
    "ours_at_80pct_of_own_capacity": {k: pm("ours", "own-80pct", k) for k in ("offered_rate_rps", "achieved_rate_rps", "p50_us", "p99_us", "p999_us", "server_cpu_us_per_token")},
    "target_tokens_per_s_per_core_min": t_core,
}
r_eq = headline["equal_p99"]["ratio_ours_over_oidc_provider"]
headline["meets_ratio_target_at_equal_p99"] = None if r_eq is None else r_eq >= t_ratio
headline["meets_per_core_target"] = None if per_core_ours is None else per_core_ours >= t_core
invalid = [f"{r['peer']} round {r['round']} {r['run']}" for r in rounds if not r["valid"]]
bad_tokens = [f"{r['peer']} round {r['round']} {r['run']}" for r in rounds
              if r["correctness_failures"] or any(f["verification_failures"] for f in r["phases"].values())]
headline["all_runs_valid"] = not invalid
headline["all_sampled_tokens_verified"] = not bad_tokens

doc = {
    "what": "OAuth 2.0 client_credentials (client_secret_basic, scope read, resource https://api.refbench.test; "
            "RFC 9068 JWT access tokens signed ES256): the built-in token-issuer (ours) vs node oidc-provider, one "
            "issuer at a time on cpu 0 (url target, pids = the issuer's process), loader on cpu 1, the same loadgen "
            "profiles; capacity (closed loop), p99 at one common open-loop rate, an open-loop staircase per peer, "
            "and ours at the issue's per-core rate; one token in verify_every checked against the issuer's JWKS",
    "command": command,
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "git": {"commit": commit, "dirty": int(dirty or 0) > 0, "modified_tracked_files": int(dirty or 0)},
    "host": {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "server_cpu": 0,
        "loader_cpu": 1,
        "loadavg_1_5_15_before": [float(x) for x in load0.split()],
        "loadavg_1_5_15_after": [float(x) for x in load1.split()],
        "loadgen": loadgen_host,
    },
    "versions": {"node": node_version, "npm": npm_version, "oidc_provider": op_version, "loadgen": loadgen_version},
    "settings": settings,
    "peers": {
        "ours": "taskset -c 0 loadgen serve oidc --threads 1 --cpus 0 (servers/token-issuer, embedded test clients, "
                "ES256, access tokens 300 s)",
        "oidc-provider": "NODE_ENV=production taskset -c 0 node scripts/peers/oidc-provider/server.mjs (oidc-provider "
                         + op_version + ", static client bench-client, features.clientCredentials, "
                         "features.resourceIndicators with accessTokenFormat jwt and jwt.sign.alg ES256, 300 s, one "
                         "generated P-256 key; note: oidc-provider 9 prints 'Unsupported runtime' below Node 22 LTS)",
    },
    "floor_cpu_us_per_request_median": med(floors),
    "headline": headline,
    "phases": summary,
    "rounds": rounds,
}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
os.replace(tmp, out)

def fmt(v, spec):
    return format(v, spec) if v is not None else "-"
print(f"{'phase':<22} {'peer':<14} {'offered/s':>9} {'tokens/s':>9} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} "
      f"{'srv cpu-us/tok':>14} {'tok/s/core':>10} {'ldr cpu-us':>10} {'verified':>12}")
def order(name):
    if name == "capacity":
        return (0, 0)
    if name.startswith("stairs@"):
        return (2, float(name.split("@")[1].rstrip("rps")))
    return (1, ["equal-load", "own-80pct", "fixed-rate"].index(name) if name in ("equal-load", "own-80pct", "fixed-rate") else 9)
for name in sorted(phase_names, key=order):
    for peer in peers:
        v = summary[name].get(peer)
        if not v:
            continue
        ver = f"{v['verified_total']}/{v['sampled_total']}"
        print(f"{name:<22} {peer:<14} {fmt(v['offered_rate_rps_median'], '9.0f')} {fmt(v['tokens_per_s_median'], '9.0f')} "
              f"{fmt(v['p50_us_median'], '8.0f')} {fmt(v['p99_us_median'], '8.0f')} {fmt(v['p999_us_median'], '9.0f')} "
              f"{fmt(v['server_cpu_us_per_token_median'], '14.1f')} {fmt(v['tokens_per_s_per_server_core_median'], '10.0f')} "
              f"{fmt(v['loader_cpu_us_per_request_median'], '10.1f')} {ver:>12}")
h = headline
def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "NOT met")
print(f"capacity ours/oidc-provider = {h['ratio_capacity_ours_over_oidc_provider']} (paired {h['ratio_capacity_paired_by_round']}); "
      f"per core = {h['ratio_per_core_ours_over_oidc_provider']} (paired {h['ratio_per_core_paired_by_round']})")
e = h["equal_p99"]
print(f"equal p99 (<= {bound} us): highest staircase rate {e['rate_rps']}; ours/oidc-provider = "
      f"{e['ratio_ours_over_oidc_provider']} (target >= {t_ratio}: {verdict(h['meets_ratio_target_at_equal_p99'])})")
print(f"ours tokens/s per server core = {fmt(per_core_ours, '.0f')} (target >= {t_core:.0f}: {verdict(h['meets_per_core_target'])}); "
      f"at {settings['fixed_rate_rps']}/s offered: {fmt(h['ours_at_fixed_rate']['achieved_rate_rps'], '.0f')}/s, "
      f"p99 {fmt(h['ours_at_fixed_rate']['p99_us'], '.0f')} us")
if invalid:
    print("invalid measurements (see rounds[].invalid_reasons): " + ", ".join(invalid))
if bad_tokens:
    print("token checks failed (see rounds[].phases[].verification_failures): " + ", ".join(bad_tokens))
print(f"written: {out}")
PYEOF
