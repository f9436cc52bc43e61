#!/usr/bin/env bash
# cdn-hit-ratio.sh: trace-driven hit ratio of the cdn-cache memory tier's eviction policies against LRU.
#
# Builds servers/cdn-cache's `hit_ratio` example in release and runs it: for Zipf 0.8, 1.0 and 1.2 a seeded trace
# (KEYS objects with per-key sizes 512 B .. 1 MiB, REQUESTS requests), replayed from empty by LRU, S3-FIFO and
# W-TinyLFU at cache sizes of 0.5 %, 1 % and 10 % of the working set in bytes; the first 10 % of each trace is
# warm-up. Hit ratios are deterministic given the parameters (one run suffices); ns per request is a noisy side figure.
#
# Output: a table on stdout and a JSON document (parameters, host fingerprint, git commit, per-point object and byte
# hit ratios and their difference from LRU in points, whether the issue's target is met) in $OUT.
#
# Usage: scripts/cdn-hit-ratio.sh [--quick]
#   env KEYS (100000), REQUESTS (5000000), SEED (20240601), OUT (results/baselines/cdn-hit-ratio.json)
#   --quick: KEYS=20000 REQUESTS=500000, OUT defaults to ${TMPDIR:-/tmp}/cdn-hit-ratio.quick.json.
# Runs on one core: about 15 s in full on a 2-core EPYC VM, plus the build.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "cdn-hit-ratio: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ $QUICK == 1 ]]; then
    KEYS=${KEYS:-20000}
    REQUESTS=${REQUESTS:-500000}
    OUT=${OUT:-${TMPDIR:-/tmp}/cdn-hit-ratio.quick.json}
    COMMAND="scripts/cdn-hit-ratio.sh --quick"
else
    KEYS=${KEYS:-100000}
    REQUESTS=${REQUESTS:-5000000}
    OUT=${OUT:-results/baselines/cdn-hit-ratio.json}
    COMMAND="scripts/cdn-hit-ratio.sh"
fi
SEED=${SEED:-20240601}
# The recorded command names every parameter, so the JSON says how to reproduce it exactly.
COMMAND="KEYS=$KEYS REQUESTS=$REQUESTS SEED=$SEED $COMMAND"

cargo build --release -p refbench-cdn --example hit_ratio >&2
cargo run --release -q -p refbench-cdn --example hit_ratio -- \
    --keys "$KEYS" \
    --requests "$REQUESTS" \
    --seed "$SEED" \
    --warmup-share 0.1 \
    --zipf 0.8,1.0,1.2 \
    --cache-percent 0.5,1,10 \
    --policies lru,s3fifo,wtinylfu \
    --out "$OUT" \
    --command "$COMMAND"
