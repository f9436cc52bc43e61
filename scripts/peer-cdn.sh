#!/usr/bin/env bash
# peer-cdn.sh: the cdn-cache tier (ours) vs nginx proxy_cache and Varnish, side by side, one origin, one profile.
#
# One synthetic origin (`loadgen serve cdn origin`, pinned to cpu 1 with the loader) serves all three caches; in front
# of it, one cache at a time, each pinned to cpu 0 and started fresh (cold) for every run:
#   ours     loadgen serve cdn cache --role edge --threads 1 --cpus 0 --memory-bytes M   (single tier, one thread)
#   nginx    1 worker process, worker_cpu_affinity cpu 0 (and the master/cache manager under taskset -c 0),
#            proxy_cache (keys_zone + max_size=M) on tmpfs, proxy_http_version 1.1 + upstream keepalive,
#            proxy_cache_lock on (it coalesces misses as the others do), access_log off, Cache-Control honoured
#   varnish  varnishd -F under taskset -c 0, -s malloc,M, a minimal VCL (the origin as backend, built-in logic),
#            thread_pools=1, default shm log in a tmpfs work dir (no varnishlog/varnishncsa: nothing goes to disk)
# Same M for all, same origin, keep-alive to the origin, no logs written to disk. Each run is `loadgen run` of the
# same generated profile (only the target URL and pids differ): a warm-up and `hit-1kb` (100 keys of 1 KiB at
# HIT_RATE; the hit-path CPU-us per request), then a warm-up and `zipf-1.0` (100 000 keys of 16 KiB, Zipf 1.0, at
# ZIPF_RATE: the working set is 1.56 GiB, M = 16 MiB is ~1 % of it). Loadgen measures the floor server at the start
# of every run and counts origin fetches from the origin's /metrics (offload ratio = 1 - fetches/requests: the
# tier-neutral hit ratio, since nginx and Varnish send no Cache-Status). The order of the peers rotates between
# rounds so drift hits all alike; medians over rounds are reported.
#
# Output: a table on stdout and a JSON document (command, git, host, peer versions and settings, per-round and
# median server CPU-us/request, p99, offload and byte offload ratio, achieved rate per peer and phase, the floor,
# and ours/best-peer and ours/floor on the hit phase against the targets <= 0.5 and <= 1.5) in OUT.
#
# Usage: scripts/peer-cdn.sh [--rounds N] [--quick] [--duration-scale F] [--peers LIST] [--out FILE] [--keep-tmp]
#   --rounds N          alternating rounds (default 3; env ROUNDS)
#   --quick             measured phases 3 s, warm-ups 2 s; OUT defaults to ${TMPDIR:-/tmp}/cdn-vs-peers.quick.json
#   --duration-scale F  multiply every phase's duration by F (0.1..10; after --quick)
#   --peers LIST        comma-separated subset of ours,nginx,varnish (default all three)
#   --out FILE          result JSON (default results/baselines/cdn-vs-peers.json; env OUT)
#   --keep-tmp          keep the temporary folders (configs, logs, result.json files; env KEEP_TMP=1)
#   env HIT_RATE (5000) and ZIPF_RATE (2000) requests/s, CONNS (16), CARGO_TARGET_DIR (where loadgen is built).
# Needs 2 cpus, python3, and root (or sudo) to install nginx and varnish from Debian if they are missing (services
# are kept from starting during the install). All traffic goes to 127.0.0.1; every step is bounded by `timeout`;
# every process started here is stopped by the exit trap.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }


[[ -z ${ROUNDS:-} ]] || ENV_ROUNDS=$ROUNDS
QUICK=0
SCALE=1
PEERS=ours,nginx,varnish
ARGS=("$@")
while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds)
            [[ $# -ge 2 ]] || die "--rounds needs a value"
            ROUNDS=$2
            shift
            ;;
        --duration-scale)
            [[ $# -ge 2 ]] || die "--duration-scale needs a value"
            SCALE=$2
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
            echo "peer-cdn: unknown argument: $1 (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done
COMMAND="scripts/peer-cdn.sh${ARGS[*]:+ ${ARGS[*]}}"
for v in CONNS ZIPF_RATE HIT_RATE; do
    [[ -z ${!v:-} ]] || COMMAND="$v=${!v} $COMMAND"
done
[[ -z ${ENV_ROUNDS:-} || ${ROUNDS:-} != "${ENV_ROUNDS:-}" ]] || COMMAND="ROUNDS=$ENV_ROUNDS $COMMAND"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ $QUICK == 1 ]]; then
    OUT=${OUT:-${TMPDIR:-/tmp}/cdn-vs-peers.quick.json}
fi
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-results/baselines/cdn-vs-peers.json}
HIT_RATE=${HIT_RATE:-5000}
ZIPF_RATE=${ZIPF_RATE:-2000}
CONNS=${CONNS:-16}
KEEP_TMP=${KEEP_TMP:-0}
SERVER_CPU=0
LOADER_CPU=1
# The memory every cache gets (bytes): ours --memory-bytes, nginx max_size, varnish -s malloc.
MEM_BYTES=$((16 * 1024 * 1024))
HIT_KEYS=100
HIT_OBJECT_BYTES=1024
ZIPF_KEYS=100000
ZIPF_OBJECT_BYTES=16384
TARGET_VS_PEER=0.5
TARGET_VS_FLOOR=1.5

check_int ROUNDS "$ROUNDS" 1 20
check_int HIT_RATE "$HIT_RATE" 100 200000
check_int ZIPF_RATE "$ZIPF_RATE" 100 200000
check_int CONNS "$CONNS" 1 1024
ROUNDS=$((10#$ROUNDS))
[[ $SCALE =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--duration-scale must be a number, got '$SCALE'"
IFS=, read -r -a PEER_LIST <<<"$PEERS"
((${#PEER_LIST[@]})) || die "--peers is empty"
for p in "${PEER_LIST[@]}"; do
    [[ $p == ours || $p == nginx || $p == varnish ]] || die "--peers: unknown peer '$p' (ours, nginx, varnish)"
done
peer_wanted() { [[ ",$PEERS," == *",$1,"* ]]; }

# Phase durations (seconds): warm-up of the hit keys, hit-1kb, warm-up of the zipf keys, zipf-1.0.
if [[ $QUICK == 1 ]]; then
    DURS=(2 3 2 3)
else
    DURS=(3 10 5 10)
fi
awk -v s="$SCALE" 'BEGIN { exit !(s >= 0.1 && s <= 10) }' || die "--duration-scale must be in 0.1..10, got '$SCALE'"
for i in "${!DURS[@]}"; do
    DURS[i]=$(awk -v d="${DURS[i]}" -v s="$SCALE" 'BEGIN { v = d * s; if (v < 1) v = 1; printf "%g", int(v * 10 + 0.5) / 10 }')
done
((${#DURS[@]} == 4)) || die "could not scale the durations"

# ---------------------------------------------------------------------------------------------------------------
# Tools
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=0
# Called by lib.sh's apt_install. The Debian packages start their system services (nginx on :80, varnishd on :6081)
# on install: a policy-rc.d that says "no" keeps them from starting (removed again at exit if we created it).
apt_before_install() {
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\n# refbench peer-cdn.sh: no service starts during its apt-get install\nexit 101\n' |
            "${SUDO[@]}" tee "$POLICY_RC" >/dev/null
        "${SUDO[@]}" chmod 755 "$POLICY_RC"
        POLICY_RC_OURS=1
    fi
}
need=()
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
command -v timeout >/dev/null || need+=(coreutils)
command -v pgrep >/dev/null || need+=(procps)
NGINX=/usr/sbin/nginx
VARNISHD=/usr/sbin/varnishd
if peer_wanted nginx && [[ ! -x $NGINX ]]; then need+=(nginx); fi
if peer_wanted varnish && [[ ! -x $VARNISHD ]]; then need+=(varnish); fi

# ---------------------------------------------------------------------------------------------------------------
# Temporary folders, cleanup. The caches' own files (nginx's cache, Varnish's work dir and shm log) go to tmpfs.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/refbench-peer-cdn.XXXXXX")
chmod 755 "$WORK"
SHM=
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
    if [[ $POLICY_RC_OURS == 1 ]]; then
        "${SUDO[@]}" rm -f "$POLICY_RC" || true
    fi
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $WORK${SHM:+ and $SHM}"
    else
        rm -rf "$WORK"
        [[ -z $SHM ]] || rm -rf "$SHM"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ((${#need[@]})); then apt_install "${need[@]}"; fi
NCPU=$(nproc --all)
((NCPU >= 2)) || die "needs at least 2 cpus (caches on $SERVER_CPU, loader and origin on $LOADER_CPU); this host has $NCPU"
if peer_wanted nginx; then [[ -x $NGINX ]] || die "no $NGINX after installing nginx"; fi
if peer_wanted varnish; then [[ -x $VARNISHD ]] || die "no $VARNISHD after installing varnish"; fi
# System services would share cpu 0 with the cache under test.
for name in nginx varnishd; do
    if pgrep -x "$name" >/dev/null; then
        log "warning: a $name not started by this script is running (pids $(pgrep -x "$name" | tr '\n' ' ')); it shares the cpus"
    fi
done
# CPU figures are only worth something on an otherwise idle host (concurrent builds inflate every cpu-us/request and
# fail the loader's self-checks): say so, and record the load average in the result.
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOADAVG_START%% *}" 'BEGIN { exit !(l > 0.5) }'; then
    log "warning: load average $LOADAVG_START before the runs: other work on this host skews the figures"
fi
NGINX_VERSION=$({ "$NGINX" -v 2>&1 || true; } | head -1)
VARNISH_VERSION=$({ "$VARNISHD" -V 2>&1 || true; } | head -1)

if [[ -d /dev/shm && -w /dev/shm ]]; then
    SHM=$(mktemp -d /dev/shm/refbench-peer-cdn.XXXXXX)
else
    SHM=$(mktemp -d "$WORK/shm.XXXXXX")
fi
chmod 755 "$SHM"

# GET http://ADDR/PATH -> prints the status code (000 when nothing answered).
http_status() { # addr path
    python3 - "$1" "$2" <<'EOF'
import http.client, sys
try:
    c = http.client.HTTPConnection(sys.argv[1], timeout=5)
    c.request("GET", sys.argv[2], headers={"Host": "cdn.test"})
    r = c.getresponse()
    r.read()
    print(r.status)
except Exception:
    print("000")
EOF
}
# The origin's fetch count for one path (all variants), from its admin port.
origin_fetches() { # path
    python3 - "$ORIGIN_ADMIN" "$1" <<'EOF'
import http.client, json, sys, urllib.parse
c = http.client.HTTPConnection(sys.argv[1], timeout=5)
c.request("GET", "/fetches?path=" + urllib.parse.quote(sys.argv[2], safe="/"))
print(json.loads(c.getresponse().read())["fetches"])
EOF
}
# Waits until GET /static/ready-probe through ADDR answers 200 (the first one is a miss that needs the origin).
wait_http() { # addr pid what
    local _
    for _ in $(seq 1 300); do
        [[ $(http_status "$1" /static/ready-probe) == 200 ]] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
ready_addr() { # file listener -> host:port from a REFBENCH_READY line
    python3 -c 'import json,sys; l=open(sys.argv[1]).readline(); print(json.loads(l[len("REFBENCH_READY "):])["listeners"][sys.argv[2]])' "$1" "$2"
}
wait_ready_line() { # file pid what
    local _
    for _ in $(seq 1 600); do
        grep -q '^REFBENCH_READY ' "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited before announcing itself"
        sleep 0.1
    done
    die "$3 did not announce itself within 60 s"
}

# ---------------------------------------------------------------------------------------------------------------
# Build: a private copy of loadgen (a concurrent build cannot change the binary mid-run).
GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -vc "^?? " || true)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
log "cargo build --release -p refbench-loadgen"
timeout 3600 cargo build --release -p refbench-loadgen --bin loadgen >&2
cp "$TARGET_DIR/release/loadgen" "$WORK/loadgen"
LOADGEN=$WORK/loadgen

# ---------------------------------------------------------------------------------------------------------------
# The origin: /static/ objects of 1 KiB (the hit phase), /static-16k/ objects of 16 KiB (the zipf phase); both
# `public, max-age=86400, immutable` with a strong ETag and Last-Modified; anything else 404.
cat >"$WORK/origin.json" <<EOF
{
  "rules": [
    {"prefix": "/static-16k/", "cache_control": "public, max-age=86400, immutable",
     "size": {"kind": "fixed", "size_bytes": $ZIPF_OBJECT_BYTES}},
    {"prefix": "/static/", "cache_control": "public, max-age=86400, immutable"}
  ]
}
EOF
log "starting the origin (cpu $LOADER_CPU)"
"$LOADGEN" serve cdn origin --bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 --config "$WORK/origin.json" \
    --size-bytes "$HIT_OBJECT_BYTES" --cpus "$LOADER_CPU" >"$WORK/origin.ready" 2>"$WORK/origin.log" &
ORIGIN_PID=$!
PIDS_STARTED+=("$ORIGIN_PID")
wait_ready_line "$WORK/origin.ready" "$ORIGIN_PID" origin
ORIGIN_HTTP=$(ready_addr "$WORK/origin.ready" http)
ORIGIN_ADMIN=$(ready_addr "$WORK/origin.ready" admin)
[[ $(http_status "$ORIGIN_HTTP" /static-16k/origin-probe) == 200 ]] || die "the origin does not serve /static-16k/"
log "origin on $ORIGIN_HTTP, admin $ORIGIN_ADMIN"

# ---------------------------------------------------------------------------------------------------------------
# The caches. Each start_* sets PEER_PID (the process to stop), PEER_ADDR and PEER_PIDS (every process whose CPU
# and RSS count as the server's).
NGINX_USER=
if [[ $EUID -eq 0 ]]; then
    # As root, nginx's workers switch to a user; www-data is Debian's (base-passwd), and owns the cache dir.
    NGINX_USER=www-data
    id "$NGINX_USER" >/dev/null 2>&1 || NGINX_USER=nobody
fi

start_ours() { # run-name
    local ready=$WORK/$1.ready
    "$LOADGEN" serve cdn cache --role edge --upstream "http://$ORIGIN_HTTP" --memory-bytes "$MEM_BYTES" \
        --threads 1 --cpus "$SERVER_CPU" --bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 >"$ready" 2>"$WORK/$1.log" &
    PEER_PID=$!
    PIDS_STARTED+=("$PEER_PID")
    wait_ready_line "$ready" "$PEER_PID" "ours ($1)"
    PEER_ADDR=$(ready_addr "$ready" http)
    PEER_PIDS=("$PEER_PID")
}

start_nginx() { # run-name
    local dir=$SHM/$1-nginx port
    port=$(free_port)
    mkdir -p "$dir/cache" "$dir/temp"
    [[ -z $NGINX_USER ]] || chown -R "$NGINX_USER" "$dir"
    cat >"$WORK/$1-nginx.conf" <<EOF
# refbench peer-cdn.sh: nginx proxy_cache, one worker on cpu $SERVER_CPU.
${NGINX_USER:+user $NGINX_USER;}
daemon off;
master_process on;
worker_processes 1;
# Bit mask: the worker on cpu 0 (the master and cache manager are under taskset -c 0 as well).
worker_cpu_affinity 1;
worker_rlimit_nofile 65536;
pid $dir/nginx.pid;
# Errors only (nothing is written unless something fails); no access log.
error_log $WORK/$1-nginx-error.log error;
events {
    worker_connections 4096;
}
http {
    access_log off;
    # nginx's usual fast path: hits are sent from the cache file with sendfile.
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    # Keep the loader's connections for the whole run (the default closes one every 1000 requests).
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $dir/temp/client;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;
    # The cache on tmpfs, bounded to M bytes (max_size counts whole file blocks, headers included); the keys
    # zone (metadata: ~8000 keys per MiB) is shared memory beside it, sized for every object M can hold.
    # nginx enforces max_size lazily: its cache manager wakes at most every 10 s while nothing is past
    # inactive, so between wakes the cache grows past M (the script records its size at the end of each run).
    proxy_cache_path $dir/cache levels=1:2 keys_zone=refbench:4m max_size=$MEM_BYTES inactive=1d use_temp_path=off;
    # The usual tuning of a cache in front of files: keep hit files' descriptors open instead of an open() and
    # fstat() per hit.
    open_file_cache max=20000 inactive=60s;
    open_file_cache_valid 60s;
    upstream origin {
        server $ORIGIN_HTTP;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_cache refbench;
            # Freshness from the origin's Cache-Control (no proxy_cache_valid, no ignored headers).
            # One fetch per key at a time, as ours (coalescing) and Varnish (waiting list) do.
            proxy_cache_lock on;
        }
    }
}
EOF
    taskset -c "$SERVER_CPU" "$NGINX" -c "$WORK/$1-nginx.conf" -p "$dir" -e "$WORK/$1-nginx-error.log" \
        >"$WORK/$1.log" 2>&1 &
    PEER_PID=$!
    PIDS_STARTED+=("$PEER_PID")
    PEER_ADDR=127.0.0.1:$port
    PEER_CACHE_DIR=$dir/cache
    wait_http "$PEER_ADDR" "$PEER_PID" || die "nginx ($1) did not answer: $(tail -5 "$WORK/$1.log" "$WORK/$1-nginx-error.log" 2>/dev/null)"
    # The master, its worker and the cache manager; not the cache loader, which exits a minute after the start
    # (it only indexes an existing cache dir, empty here).
    PEER_PIDS=("$PEER_PID")
    local c title
    for c in $(pgrep -P "$PEER_PID"); do
        title=$(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null || true)
        [[ $title == *"cache loader"* ]] || PEER_PIDS+=("$c")
    done
    ((${#PEER_PIDS[@]} >= 2)) || die "nginx ($1): no worker process"
}

start_varnish() { # run-name
    local dir=$SHM/$1-varnish port ohost oport
    port=$(free_port)
    ohost=${ORIGIN_HTTP%:*}
    oport=${ORIGIN_HTTP##*:}
    mkdir -p "$dir"
    cat >"$WORK/$1-varnish.vcl" <<EOF
vcl 4.1;
# refbench peer-cdn.sh: the origin as the only backend; everything else is Varnish's built-in VCL (cache what the
# origin's Cache-Control allows, hash on URL + Host, coalesce concurrent misses on the waiting list). Backend
# connections are kept alive and reused by default.
backend origin {
    .host = "$ohost";
    .port = "$oport";
}
EOF
    chmod 644 "$WORK/$1-varnish.vcl"
    # -F: foreground, so PEER_PID is the manager; its child (cache-main) serves.
    # -s malloc,M: the object store bounded to M (Transient, for short-lived and uncacheable objects, keeps its
    #   unbounded default: nothing in these phases is short-lived or uncacheable).
    # thread_pools=1: one pool for one core (the default is 2). thread_pool_min=32: every client connection holds a
    #   worker thread while its request runs and each fetch takes another, so 2 x the loader's connections are
    #   made up front and no thread is created during a phase; thread_pool_max=512 is far above what they need.
    # The shm log (vsl_space 80M, default) is a memory-mapped file in the tmpfs work dir; nothing reads it.
    # -T none: no management CLI port (nothing here needs varnishadm).
    taskset -c "$SERVER_CPU" "$VARNISHD" -F -n "$dir" -a "127.0.0.1:$port" -T none -f "$WORK/$1-varnish.vcl" \
        -s "malloc,$MEM_BYTES" -p thread_pools=1 -p thread_pool_min=32 -p thread_pool_max=512 \
        >"$WORK/$1.log" 2>&1 &
    PEER_PID=$!
    PIDS_STARTED+=("$PEER_PID")
    PEER_ADDR=127.0.0.1:$port
    wait_http "$PEER_ADDR" "$PEER_PID" || die "varnish ($1) did not answer: $(tail -10 "$WORK/$1.log" 2>/dev/null)"
    PEER_PIDS=("$PEER_PID")
    local c
    for c in $(pgrep -P "$PEER_PID"); do PEER_PIDS+=("$c"); done
    ((${#PEER_PIDS[@]} >= 2)) || die "varnish ($1): no child process"
}

# Checks that PEER_ADDR caches: two requests for a fresh path, one origin fetch.
check_caches() { # peer run-name
    local path=/static/probe-$2
    [[ $(http_status "$PEER_ADDR" "$path") == 200 ]] || die "$1 ($2): $path did not answer 200"
    [[ $(http_status "$PEER_ADDR" "$path") == 200 ]] || die "$1 ($2): $path did not answer 200 the second time"
    local n
    n=$(origin_fetches "$path")
    [[ $n == 1 ]] || die "$1 ($2): $path was fetched from the origin $n times for 2 requests (not cached?)"
}

# ---------------------------------------------------------------------------------------------------------------
# The profile: the same phases for every peer; only [targets.edge] differs.
write_profile() { # file peer url pids...
    local file=$1 peer=$2 url=$3
    shift 3
    local pids
    pids=$(
        IFS=,
        echo "$*"
    )
    cat >"$file" <<EOF
name = "cdn-vs-peers-$peer"
description = "scripts/peer-cdn.sh: $peer in front of the shared synthetic origin"

[run]
server_cpus = [$SERVER_CPU]
loader_cpus = [$LOADER_CPU]
loader_processes = 1
request_timeout_ms = 5000
max_duration_s = 300

# The floor at the hit phase's rate and connections: CPU per request falls as the rate rises (one wake-up serves
# more requests), so only the same rate makes "ours / floor" a like-for-like ratio.
[calibration]
rate_rps = $HIT_RATE
connections = $CONNS
duration_s = ${DURS[1]}

[targets.edge]
url = "$url"
origin_admin_url = "http://$ORIGIN_ADMIN"
pids = [$pids]

# Every hit key cached before the measured phase (uniform draws: ~30 requests per key).
[[phases]]
name = "warmup-hit"
target = "edge"
warmup = true
model = "open"
rate_rps = 1000
duration_s = ${DURS[0]}
connections = $CONNS
[phases.cdn]
workload = "zipf"
keys = $HIT_KEYS
zipf_exponent = 0.0
path_prefix = "/static/"

# The hit path: $HIT_KEYS keys of $HIT_OBJECT_BYTES bytes, all in cache.
[[phases]]
name = "hit-1kb"
target = "edge"
model = "open"
rate_rps = $HIT_RATE
duration_s = ${DURS[1]}
connections = $CONNS
[phases.cdn]
workload = "zipf"
keys = $HIT_KEYS
zipf_exponent = 1.0
path_prefix = "/static/"

# The cache at ~1 % of the working set reaches its steady state before the measured zipf phase.
[[phases]]
name = "warmup-zipf"
target = "edge"
warmup = true
model = "open"
rate_rps = $ZIPF_RATE
duration_s = ${DURS[2]}
connections = $CONNS
[phases.cdn]
workload = "zipf"
keys = $ZIPF_KEYS
zipf_exponent = 1.0
path_prefix = "/static-16k/"

[[phases]]
name = "zipf-1.0"
target = "edge"
model = "open"
rate_rps = $ZIPF_RATE
duration_s = ${DURS[3]}
connections = $CONNS
[phases.cdn]
workload = "zipf"
keys = $ZIPF_KEYS
zipf_exponent = 1.0
path_prefix = "/static-16k/"
EOF
}
write_profile "$WORK/validate.toml" check http://127.0.0.1:1 "$ORIGIN_PID"
timeout 60 "$LOADGEN" validate "$WORK/validate.toml" >"$WORK/validate.log" 2>&1 ||
    die "loadgen does not accept the generated profile (does it have the CDN scenario?): $(tail -5 "$WORK/validate.log")"
RUN_TIMEOUT=600

RUNS=()
run_peer() { # peer round
    local peer=$1 round=$2 name="r$2-$1" rc=0
    log "round $round: $peer"
    "start_$peer" "$name"
    check_caches "$peer" "$name"
    log "$peer at $PEER_ADDR, pids ${PEER_PIDS[*]}"
    write_profile "$WORK/$name.toml" "$peer" "http://$PEER_ADDR" "${PEER_PIDS[@]}"
    timeout "$RUN_TIMEOUT" "$LOADGEN" run "$WORK/$name.toml" --out "$WORK/$name" >"$WORK/$name-loadgen.log" 2>&1 || rc=$?
    tail -n 25 "$WORK/$name-loadgen.log" >&2
    # nginx's cache on tmpfs at the end of the run (its max_size is enforced lazily; see start_nginx).
    local cache_bytes=-
    if [[ $peer == nginx ]]; then
        cache_bytes=$(du -sb "$PEER_CACHE_DIR" | cut -f1)
        log "nginx cache dir at the end: $cache_bytes bytes (max_size $MEM_BYTES)"
    fi
    stop_pid "$PEER_PID"
    [[ -f $WORK/$name/result.json ]] || die "round $round: the $peer run wrote no result.json (exit $rc): $(tail -5 "$WORK/$name-loadgen.log")"
    RUNS+=("$peer:$round:$rc:$cache_bytes:$WORK/$name/result.json")
}
for r in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round (and reverse it every other round) so no peer always runs first or last.
    n=${#PEER_LIST[@]}
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${PEER_LIST[$(((i + r - 1) % n))]}"); done
    if ((r % 2 == 0)); then
        rev=()
        for ((i = n - 1; i >= 0; i--)); do rev+=("${order[$i]}"); done
        order=("${rev[@]}")
    fi
    for peer in "${order[@]}"; do run_peer "$peer" "$r"; done
done

# ---------------------------------------------------------------------------------------------------------------
# Summary
mkdir -p "$(dirname "$OUT")"
SETTINGS=$(
    python3 - "$MEM_BYTES" "$HIT_RATE" "$ZIPF_RATE" "$CONNS" "$HIT_KEYS" "$HIT_OBJECT_BYTES" "$ZIPF_KEYS" \
        "$ZIPF_OBJECT_BYTES" "$ROUNDS" "$QUICK" "$SCALE" "${DURS[@]}" <<'EOF'
import json, sys
a = sys.argv[1:]
print(json.dumps({
    "memory_bytes": int(a[0]), "hit_rate_rps": int(a[1]), "zipf_rate_rps": int(a[2]), "connections": int(a[3]),
    "hit_keys": int(a[4]), "hit_object_bytes": int(a[5]), "zipf_keys": int(a[6]), "zipf_object_bytes": int(a[7]),
    "zipf_working_set_bytes": int(a[6]) * int(a[7]), "rounds": int(a[8]), "quick": a[9] == "1",
    "duration_scale": float(a[10]),
    "durations_s": {"warmup-hit": float(a[11]), "hit-1kb": float(a[12]), "warmup-zipf": float(a[13]), "zipf-1.0": float(a[14])},
}))
EOF
)
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$OUT" "$COMMAND" "$GIT_COMMIT" "$GIT_DIRTY" "$NGINX_VERSION" "$VARNISH_VERSION" "$SETTINGS" \
    "$TARGET_VS_PEER" "$TARGET_VS_FLOOR" "$LOADAVG_START" "$LOADAVG_END" "${RUNS[@]}" <<'PYEOF'
import json, os, platform, statistics, sys, time

out, command, commit, dirty, nginx_version, varnish_version, settings, t_peer, t_floor, load0, load1 = sys.argv[1:12]
runs = sys.argv[12:]
settings = json.loads(settings)
t_peer, t_floor = float(t_peer), float(t_floor)

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

per = {}  # (peer, phase) -> [figures]
floors = []
rounds = []
loadgen_host = None
for spec in runs:
    peer, rnd, rc, cache_bytes, path = spec.split(":", 4)
    r = json.load(open(path))
    loadgen_host = loadgen_host or r.get("host")
    cal = r.get("calibration") or {}
    floor = cal.get("floor_cpu_us_per_request")
    if floor is not None:
        floors.append(floor)
    entry = {"peer": peer, "round": int(rnd), "loadgen_exit_code": int(rc), "valid": r["valid"],
             "invalid_reasons": r["invalid_reasons"], "warnings": r.get("warnings", []),
             "floor_cpu_us_per_request": floor, "phases": {}}
    if cache_bytes != "-":
        entry["cache_dir_bytes_at_end"] = int(cache_bytes)
    for p in r["phases"]:
        servers = [x for x in p["processes"] if x["role"] == "server"]
        loaders = [x for x in p["processes"] if x["role"] == "loader"]
        cdn = p.get("cdn") or {}
        fig = {
            "offered_rate_rps": p.get("offered_rate_rps"),
            "achieved_rate_rps": round(p["achieved_rate_rps"], 1),
            "requests": p["requests"]["total"],
            "failed": p["requests"]["failed"],
            "server_cpu_us_per_request": round(sum(x["cpu_us_per_request"] for x in servers), 3) if servers else None,
            "server_processes": len(servers),
            "server_rss_peak_bytes": sum(x.get("rss_bytes_peak") or 0 for x in servers) if servers else None,
            "loader_cpu_us_per_request": round(sum(x["cpu_us_per_request"] for x in loaders), 3) if loaders else None,
            "p50_us": p["latency_us"]["p50"],
            "p99_us": p["latency_us"]["p99"],
            "offload_ratio": cdn.get("offload_ratio"),
            "byte_offload_ratio": cdn.get("byte_offload_ratio"),
            "edge_hit_ratio": cdn.get("edge_hit_ratio"),
            "origin_fetches": cdn.get("origin_fetches"),
            "origin_bytes": cdn.get("origin_bytes"),
        }
        if floor and fig["server_cpu_us_per_request"] is not None:
            fig["server_cpu_floor_ratio"] = round(fig["server_cpu_us_per_request"] / floor, 3)
        entry["phases"][p["name"]] = fig
        per.setdefault((peer, p["name"]), []).append(fig)
    rounds.append(entry)

peers = []
phases = []
for (peer, name) in per:
    if peer not in peers:
        peers.append(peer)
    if name not in phases:
        phases.append(name)
summary = {}
for name in phases:
    row = {}
    for peer in peers:
        figs = per.get((peer, name), [])
        if not figs:
            continue
        row[peer] = {
            "server_cpu_us_per_request_median": med(f["server_cpu_us_per_request"] for f in figs),
            "p50_us_median": med(f["p50_us"] for f in figs),
            "p99_us_median": med(f["p99_us"] for f in figs),
            "offload_ratio_median": med(f["offload_ratio"] for f in figs),
            "byte_offload_ratio_median": med(f["byte_offload_ratio"] for f in figs),
            "edge_hit_ratio_median": med(f["edge_hit_ratio"] for f in figs),
            "achieved_rate_rps_median": med(f["achieved_rate_rps"] for f in figs),
            "server_rss_peak_bytes_median": med(f["server_rss_peak_bytes"] for f in figs),
            "failed_total": sum(f["failed"] for f in figs),
            "rounds": len(figs),
        }
    summary[name] = row

floor_median = med(floors)
hit = summary.get("hit-1kb", {})
ours = (hit.get("ours") or {}).get("server_cpu_us_per_request_median")
peer_cpu = {p: v["server_cpu_us_per_request_median"] for p, v in hit.items()
            if p != "ours" and v["server_cpu_us_per_request_median"] is not None}
best_peer = min(peer_cpu, key=peer_cpu.get) if peer_cpu else None
headline = {
    "phase": "hit-1kb",
    "ours_cpu_us_per_request": ours,
    "best_peer": best_peer,
    "best_peer_cpu_us_per_request": peer_cpu.get(best_peer) if best_peer else None,
    "floor_cpu_us_per_request_median": floor_median,
    "ratio_ours_over_best_peer": round(ours / peer_cpu[best_peer], 3) if ours is not None and best_peer else None,
    "target_ours_over_best_peer_max": t_peer,
    "ratio_ours_over_floor": round(ours / floor_median, 3) if ours is not None and floor_median else None,
    "target_ours_over_floor_max": t_floor,
}
# Ours over the floor measured at the start of the same run (the floor moves with the host's state), median over
# rounds: a check on the headline ratio, which uses the median floor of all runs.
same_run = [f["server_cpu_floor_ratio"] for f in per.get(("ours", "hit-1kb"), []) if f.get("server_cpu_floor_ratio") is not None]
headline["ratio_ours_over_same_run_floor_median"] = med(same_run)
# Two checks on the headline ratio that cancel some of the host's drift (other tenants come and go between runs):
# paired, ours over the best peer in the same round (the two runs are adjacent in time), median over rounds; and
# floor-normalized, the median of ours / its run's floor over the median of the peer's / its run's floor.
def hit_cpu(peer, rnd):
    for r in rounds:
        if r["peer"] == peer and r["round"] == rnd:
            return (r["phases"].get("hit-1kb") or {}).get("server_cpu_us_per_request")
    return None
paired = []
if best_peer:
    for rnd in sorted({r["round"] for r in rounds}):
        a, b = hit_cpu("ours", rnd), hit_cpu(best_peer, rnd)
        if a is not None and b:
            paired.append(round(a / b, 3))
headline["ratio_ours_over_best_peer_per_round"] = paired
headline["ratio_ours_over_best_peer_paired_median"] = med(paired)
peer_same_run = [f["server_cpu_floor_ratio"] for f in per.get((best_peer, "hit-1kb"), []) if f.get("server_cpu_floor_ratio") is not None]
headline["ratio_ours_over_best_peer_floor_normalized"] = (
    round(med(same_run) / med(peer_same_run), 3) if same_run and peer_same_run else None)
headline["meets_peer_target"] = None if headline["ratio_ours_over_best_peer"] is None else headline["ratio_ours_over_best_peer"] <= t_peer
headline["meets_floor_target"] = None if headline["ratio_ours_over_floor"] is None else headline["ratio_ours_over_floor"] <= t_floor
invalid = [f"{r['peer']} round {r['round']}" for r in rounds if not r["valid"]]
headline["all_runs_valid"] = not invalid

doc = {
    "what": "CDN hit path and Zipf 1.0 at ~1 % cache: the cdn-cache edge tier (ours) vs nginx proxy_cache vs Varnish, "
            "one cache at a time on cpu 0 in front of one synthetic origin, the same loadgen profile; server CPU-us "
            "per request (all of the cache's processes), latency p99, offload ratio (1 - origin fetches / requests)",
    "command": command,
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "git": {"commit": commit, "dirty": int(dirty or 0) > 0, "modified_tracked_files": int(dirty or 0)},
    "host": {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "server_cpu": 0,
        "loader_cpu": 1,
        "origin_cpu": 1,
        "nginx_version": nginx_version,
        "varnish_version": varnish_version,
        "loadavg_1_5_15_before": [float(x) for x in load0.split()],
        "loadavg_1_5_15_after": [float(x) for x in load1.split()],
        "loadgen": loadgen_host,
    },
    "settings": settings,
    "peers": {
        "ours": "loadgen serve cdn cache --role edge --threads 1 --cpus 0 --memory-bytes M (S3-FIFO memory tier, 16 shards)",
        "nginx": "1 worker (worker_cpu_affinity cpu 0, master and cache manager under taskset -c 0), proxy_cache on tmpfs "
                 "(keys_zone 4m, max_size M), proxy_cache_lock on, open_file_cache, upstream keepalive 64, sendfile on, "
                 "access_log off, keepalive_requests 1000000. max_size is enforced lazily (the cache manager wakes at "
                 "most every 10 s), so its cache exceeds M between wakes: rounds[].cache_dir_bytes_at_end, and its "
                 "zipf offload ratio is for more than M",
        "varnish": "varnishd -F under taskset -c 0, -s malloc,M, built-in VCL with the origin as backend, thread_pools=1, "
                   "thread_pool_min=32, thread_pool_max=512, default shm log in a tmpfs work dir, -T none",
    },
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
print(f"{'phase':<10} {'peer':<8} {'srv cpu-us/req':>15} {'p99 us':>9} {'offload':>8} {'byte offl':>10} {'rate/s':>9} {'rss MiB':>8}")
for name in phases:
    for peer in peers:
        v = summary[name].get(peer)
        if not v:
            continue
        rss = v["server_rss_peak_bytes_median"]
        print(f"{name:<10} {peer:<8} {fmt(v['server_cpu_us_per_request_median'], '15.2f')} {fmt(v['p99_us_median'], '9.0f')} "
              f"{fmt(v['offload_ratio_median'], '8.4f')} {fmt(v['byte_offload_ratio_median'], '10.4f')} "
              f"{fmt(v['achieved_rate_rps_median'], '9.0f')} {fmt(rss / 2**20 if rss is not None else None, '8.1f')}")
print(f"floor: {fmt(floor_median, '.2f')} cpu-us/req")
h = headline
def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "NOT met")
print(f"hit-1kb: ours/best peer ({h['best_peer']}) = {h['ratio_ours_over_best_peer']} (target <= {t_peer}: "
      f"{verdict(h['meets_peer_target'])}); ours/floor = {h['ratio_ours_over_floor']} "
      f"(target <= {t_floor}: {verdict(h['meets_floor_target'])})")
print(f"hit-1kb: ours/best peer paired by round = {h['ratio_ours_over_best_peer_per_round']} "
      f"(median {h['ratio_ours_over_best_peer_paired_median']}); floor-normalized = "
      f"{h['ratio_ours_over_best_peer_floor_normalized']}")
if invalid:
    print("invalid measurements (see rounds[].invalid_reasons): " + ", ".join(invalid))
print(f"written: {out}")
PYEOF
