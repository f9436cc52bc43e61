#!/usr/bin/env bash
# Runs the ledger's kill -9 crash test for many cycles and records the tally as a baseline.
#
#   scripts/ledger-crash-tally.sh [CYCLES]        (default 200)
#
# Builds release, runs `cargo test --release -p refbench-ledger --test crash -- --nocapture` with
# REFBENCH_CRASH_CYCLES=CYCLES (bounded by a timeout), and writes results/baselines/ledger-crash-tally.json: the
# tally the test prints (cycles, acknowledged transfers, in-doubt applied / not applied, torn tails, failures = 0:
# any failure fails the test and this script), the command, date, git commit and host fingerprint.
# Env: CARGO_TARGET_DIR is honoured; TALLY_TIMEOUT_S bounds the test run (default 45 s per cycle, at least 3600:
# every cycle audits the whole log so far with `ledger-writer verify`, so a cycle's cost grows with the data; the
# ledger no longer keeps its log in the page cache, so that audit reads the disk: at 6109baf a 200-cycle run was at
# cycle 121 after 1,527 s with cycles taking 22 s and growing, on course to pass the former flat 3600 s).
set -euo pipefail

cycles="${1:-200}"
case "$cycles" in
    '' | *[!0-9]*) echo "usage: $0 [CYCLES]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="results/baselines/ledger-crash-tally.json"
default_timeout_s=$(( cycles * 45 > 3600 ? cycles * 45 : 3600 ))
timeout_s="${TALLY_TIMEOUT_S:-$default_timeout_s}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

timeout 3600 cargo build --release -p refbench-ledger --tests

cmd="REFBENCH_CRASH_CYCLES=$cycles cargo test --release -p refbench-ledger --test crash -- --nocapture"
echo "running: $cmd (timeout ${timeout_s}s)" >&2
start=$(date +%s)
if ! REFBENCH_CRASH_CYCLES="$cycles" timeout --kill-after=30 "$timeout_s" \
    cargo test --release -p refbench-ledger --test crash -- --nocapture 2>&1 | tee "$log" >&2; then
    echo "error: the crash test failed or timed out; no tally written" >&2
    exit 1
fi
elapsed=$(( $(date +%s) - start ))
tally="$(grep -m1 '^CRASH_TALLY ' "$log" | sed 's/^CRASH_TALLY //')"
if [ -z "$tally" ]; then
    echo "error: no CRASH_TALLY line in the test output" >&2
    exit 1
fi

cpu="$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^model name[[:space:]]*:[[:space:]]*//' || true)"
commit="$(git rev-parse HEAD)"
dirty="false"
if ! git diff --quiet HEAD -- servers/ledger-writer; then dirty="true"; fi

TALLY="$tally" CMD="$cmd" CPU="$cpu" COMMIT="$commit" DIRTY="$dirty" ELAPSED="$elapsed" \
NPROC="$(nproc)" KERNEL="$(uname -r)" DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
python3 - "$out" <<'PY'
import json, os, sys
tally = json.loads(os.environ["TALLY"])
doc = {
    "what": "ledger-writer kill -9 crash cycles: every acknowledged transfer present after restart, in-doubt ones "
            "present or absent, balances exact, currencies balanced, verify ok, resubmissions answer exists",
    "tally": tally,
    "failures": tally.get("failures", 0),
    "elapsed_s": int(os.environ["ELAPSED"]),
    "command": "scripts/ledger-crash-tally.sh " + str(tally.get("cycles")) + "  (runs: " + os.environ["CMD"] + ")",
    "date": os.environ["DATE"],
    "git_commit": os.environ["COMMIT"],
    "ledger_sources_dirty": os.environ["DIRTY"] == "true",
    "host": {
        "cpu_model": os.environ["CPU"],
        "nproc": int(os.environ["NPROC"]),
        "kernel": os.environ["KERNEL"],
    },
}
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
os.replace(tmp, sys.argv[1])
PY
echo "wrote $out" >&2
cat "$out"
