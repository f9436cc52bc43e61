#!/usr/bin/env bash
# interop-oidc.sh: third-party OAuth 2.0 / OpenID Connect clients against the built-in token-issuer.
#
# Starts `token-issuer serve` on 127.0.0.1 (ephemeral ports, the address read from its REFBENCH_READY line; the
# embedded test clients) and runs two independent clients against it, each installed here from pinned versions:
#   python  Authlib (requests OAuth2Session) + joserfc, scripts/interop/oidc/requirements.txt (exact pins, every
#           package), `pip install --no-deps` into a venv in this run's temporary folder;
#   node    openid-client 6 + jose, scripts/interop/oidc/package-lock.json, `npm ci` into the temporary folder.
# Checks, per client (details in scripts/interop/oidc/README.md):
#   discovery (well-known URL), JWKS; client_credentials with client_secret_basic and client_secret_post, the access
#   token validated against jwks_uri (alg ES256, typ at+jwt, iss, aud, exp, client_id, scope); introspection active,
#   revocation, introspection inactive; tampered tokens and a wrong audience rejected by the JOSE library;
#   authorization code + PKCE S256 (login form, POST /login, redirect with code/state/iss) for the confidential
#   web-app and the public native-app, ID token validation (iss, aud, nonce, exp, at_hash), userinfo, refresh.
# When discovery has no authorization_endpoint the code-flow part FAILS ("authorization code flow not advertised")
# unless --skip-code-flow is given; nothing is skipped silently.
#
# Output: one line per check (`PASS python client_credentials basic`, `FAIL node ...: reason`, `SKIP ...: reason`), a
# summary line; exit status 0 only when every check passed (SKIPs allowed only through --skip-code-flow), 1 otherwise,
# 2 for a usage error.
#
# Usage: scripts/interop-oidc.sh [--server-bin PATH] [--skip-code-flow] [--clients LIST] [--out FILE] [--keep-tmp]
#                                [--timeout S]
#   --server-bin PATH  use this token-issuer binary instead of building one (e.g. one built from another branch's
#                      tree; env SERVER_BIN). Default: cargo build --release -p refbench-oidc --bin token-issuer.
#   --skip-code-flow   do not run the authorization-code checks (they are reported as SKIP)
#   --clients LIST     comma-separated subset of python,node (default both)
#   --out FILE         also write a JSON summary (command, versions, every check) to FILE
#   --keep-tmp         keep the temporary folder (venv, node_modules, server log; env KEEP_TMP=1)
#   --timeout S        bound of the whole run, build included (default 1800; env INTEROP_TIMEOUT_S)
#   env CARGO_TARGET_DIR (where token-issuer is built; default /work/target when it exists, else ./target).
# Needs python3 (>= 3.10, with venv), node >= 20 and npm, and PyPI / the npm registry for the installs. All test
# traffic stays on 127.0.0.1; every request has a timeout, every step runs under `timeout`, the whole script under
# --timeout; the exit trap stops the server.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }

SERVER_BIN=${SERVER_BIN:-}
SKIP_CODE_FLOW=0
CLIENTS=python,node
OUT=
KEEP_TMP=${KEEP_TMP:-0}
TOTAL_TIMEOUT_S=${INTEROP_TIMEOUT_S:-1800}
ARGS=("$@")
while (($#)); do
    case "$1" in
        --server-bin)
            [[ $# -ge 2 ]] || die "--server-bin needs a value"
            SERVER_BIN=$2
            shift
            ;;
        --skip-code-flow) SKIP_CODE_FLOW=1 ;;
        --clients)
            [[ $# -ge 2 ]] || die "--clients needs a value"
            CLIENTS=$2
            shift
            ;;
        --out)
            [[ $# -ge 2 ]] || die "--out needs a value"
            OUT=$2
            shift
            ;;
        --keep-tmp) KEEP_TMP=1 ;;
        --timeout)
            [[ $# -ge 2 ]] || die "--timeout needs a value"
            TOTAL_TIMEOUT_S=$2
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "interop-oidc: unknown argument: $1 (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done
if ! [[ $TOTAL_TIMEOUT_S =~ ^[0-9]+$ ]] || ((10#$TOTAL_TIMEOUT_S < 30 || 10#$TOTAL_TIMEOUT_S > 7200)); then
    die "--timeout must be an integer in 30..7200, got '$TOTAL_TIMEOUT_S'"
fi
IFS=, read -r -a CLIENT_LIST <<<"$CLIENTS"
((${#CLIENT_LIST[@]})) || die "--clients is empty"
for c in "${CLIENT_LIST[@]}"; do
    [[ $c == python || $c == node ]] || die "unknown client '$c' in --clients (python, node)"
done
client_wanted() { [[ ",$CLIENTS," == *",$1,"* ]]; }

# The whole run under one bound: re-run this script under `timeout` (TERM, then KILL 15 s later); the exit trap of
# the inner run stops the server.
if [[ -z ${INTEROP_OIDC_BOUNDED:-} ]]; then
    export INTEROP_OIDC_BOUNDED=1
    exec timeout -k 15 "$TOTAL_TIMEOUT_S" "$0" "${ARGS[@]}"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CLIENT_DIR=$ROOT/scripts/interop/oidc
COMMAND="scripts/interop-oidc.sh${ARGS[*]:+ ${ARGS[*]}}"
STARTED=$(date +%s)

# ---------------------------------------------------------------------------------------------------------------
# Tools
command -v python3 >/dev/null || die "python3 is missing"
command -v timeout >/dev/null || die "timeout (coreutils) is missing"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "needs python >= 3.10, this is $(python3 --version)"
NODE_VERSION=-
NPM_VERSION=-
if client_wanted node; then
    command -v node >/dev/null || die "node is missing (node >= 20)"
    command -v npm >/dev/null || die "npm is missing"
    NODE_VERSION=$(node --version)
    NPM_VERSION=$(npm --version)
    if ! [[ $NODE_VERSION =~ ^v([0-9]+)\. ]] || ((BASH_REMATCH[1] < 20)); then
        die "openid-client 6 / jose 6 need node >= 20, this host has $NODE_VERSION"
    fi
fi

# ---------------------------------------------------------------------------------------------------------------
# Temporary folder, cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/refbench-interop-oidc.XXXXXX")
SERVER_PID=
cleanup() {
    local rc=$?
    # The outer `timeout` signals the whole process group: ignore TERM/INT from here on (the commands below inherit
    # that), so a late signal cannot cut the cleanup short; its KILL 15 s later still bounds it.
    trap '' INT TERM
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        timeout -s KILL 10 tail --pid="$SERVER_PID" -f /dev/null 2>/dev/null || kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'log "terminated (--timeout ${TOTAL_TIMEOUT_S} s reached, or a signal)"; exit 143' TERM

# ---------------------------------------------------------------------------------------------------------------
# The server binary: built from this tree, or the one given (copied, so a concurrent build cannot change it mid-run).
GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ -z $SERVER_BIN ]]; then
    if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
        if [[ -d /work/target && -w /work/target ]]; then CARGO_TARGET_DIR=/work/target; else CARGO_TARGET_DIR=$ROOT/target; fi
    fi
    export CARGO_TARGET_DIR
    log "cargo build --release -p refbench-oidc --bin token-issuer (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    timeout 1500 cargo build --release -p refbench-oidc --bin token-issuer >&2 || die "cargo build failed"
    SERVER_BIN=$CARGO_TARGET_DIR/release/token-issuer
    SERVER_ORIGIN="built from $ROOT at $GIT_COMMIT"
else
    [[ -x $SERVER_BIN ]] || die "--server-bin $SERVER_BIN is not an executable file"
    SERVER_ORIGIN="given: $SERVER_BIN"
fi
cp "$SERVER_BIN" "$WORK/token-issuer"
SERVER_ORIGIN="$SERVER_ORIGIN, sha256 $(sha256sum "$WORK/token-issuer" | cut -c1-16)"
SERVER_VERSION=$("$WORK/token-issuer" --version 2>/dev/null | head -1 || echo unknown)

# ---------------------------------------------------------------------------------------------------------------
# The clients, installed into the temporary folder (never into the repository or the user's environment).
PY_VERSIONS=-
if client_wanted python; then
    log "python venv + pip install --no-deps -r requirements.txt ($(python3 --version)) in $WORK/venv"
    timeout 120 python3 -m venv "$WORK/venv" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    timeout 600 "$WORK/venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps \
        -r "$CLIENT_DIR/requirements.txt" >&2 || die "pip install failed"
    timeout 60 "$WORK/venv/bin/python" -m pip check >&2 || die "pip check: the pinned set is inconsistent"
    PY_VERSIONS=$("$WORK/venv/bin/python" -c 'import sys, authlib, joserfc, requests
print(f"python {sys.version.split()[0]}, Authlib {authlib.__version__}, joserfc {joserfc.__version__}, requests {requests.__version__}")')
    log "$PY_VERSIONS"
fi
NODE_VERSIONS=-
if client_wanted node; then
    mkdir -p "$WORK/node"
    cp "$CLIENT_DIR/package.json" "$CLIENT_DIR/package-lock.json" "$CLIENT_DIR/client.mjs" "$WORK/node/"
    log "npm ci (node $NODE_VERSION, npm $NPM_VERSION) in $WORK/node"
    (cd "$WORK/node" && timeout 600 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed"
    # shellcheck disable=SC2016 # JavaScript template literals, not shell expansions
    NODE_VERSIONS=$(cd "$WORK/node" && node -e '
const v = (p) => require(`./node_modules/${p}/package.json`).version
console.log(`node ${process.versions.node}, openid-client ${v("openid-client")}, jose ${v("jose")}, oauth4webapi ${v("oauth4webapi")}`)')
    log "$NODE_VERSIONS"
fi

# ---------------------------------------------------------------------------------------------------------------
# The server
log "starting $SERVER_VERSION ($SERVER_ORIGIN)"
"$WORK/token-issuer" serve --bind 127.0.0.1:0 --admin-bind 127.0.0.1:0 >"$WORK/server.ready" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 300); do
    grep -q '^REFBENCH_READY ' "$WORK/server.ready" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "token-issuer exited before announcing itself: $(tail -5 "$WORK/server.log")"
    sleep 0.1
done
grep -q '^REFBENCH_READY ' "$WORK/server.ready" || die "token-issuer did not announce itself within 30 s"
ADDR=$(python3 - "$WORK/server.ready" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("REFBENCH_READY "):
        print(json.loads(line[len("REFBENCH_READY "):])["listeners"]["http"])
        break
EOF
)
[[ $ADDR == 127.0.0.1:* ]] || die "the announced address '$ADDR' is not on 127.0.0.1"
ISSUER=http://$ADDR
log "token-issuer pid $SERVER_PID at $ISSUER"

# Does discovery advertise the authorization code flow? (The clients check it again, each with its own stack.)
CODE_FLOW=$(python3 - "$ISSUER" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/.well-known/openid-configuration", timeout=5) as r:
    d = json.load(r)
print("yes" if d.get("authorization_endpoint") else "no")
EOF
) || die "GET $ISSUER/.well-known/openid-configuration failed"
CLIENT_FLAGS=()
if [[ $SKIP_CODE_FLOW == 1 ]]; then
    CLIENT_FLAGS+=(--skip-code-flow)
    log "--skip-code-flow: the authorization code checks are not run (advertised by this server: $CODE_FLOW)"
elif [[ $CODE_FLOW == no ]]; then
    log "authorization code flow not advertised: discovery has no authorization_endpoint; its checks will FAIL" \
        "(give --skip-code-flow to run only the rest)"
fi

# ---------------------------------------------------------------------------------------------------------------
# The clients. Each prints its PASS/FAIL/SKIP lines and writes them to a JSON file; a client that dies without its
# file counts as one failure.
RESULT_FILES=()
CRASHED=()
run_client() { # name command...
    local name=$1 res=$WORK/$1.results.json rc=0
    shift
    "$@" --issuer "$ISSUER" --results "$res" "${CLIENT_FLAGS[@]}" || rc=$?
    if [[ ! -s $res ]]; then
        echo "FAIL $name client: exited with status $rc without results"
        CRASHED+=("$name (status $rc)")
    elif ((rc != 0 && rc != 1)); then
        echo "FAIL $name client: exited with status $rc"
        CRASHED+=("$name (status $rc)")
    fi
    [[ ! -s $res ]] || RESULT_FILES+=("$res")
}
if client_wanted python; then
    run_client python timeout -k 5 180 "$WORK/venv/bin/python" "$CLIENT_DIR/client.py"
fi
if client_wanted node; then
    run_client node timeout -k 5 180 node "$WORK/node/client.mjs"
fi
kill -0 "$SERVER_PID" 2>/dev/null || CRASHED+=("token-issuer (exited during the run: $(tail -3 "$WORK/server.log" | tr '\n' ' '))")

# ---------------------------------------------------------------------------------------------------------------
# Summary (and --out)
python3 - "$OUT" "$COMMAND" "$GIT_COMMIT" "$SERVER_ORIGIN" "$SERVER_VERSION" "$ISSUER" "$CODE_FLOW" "$SKIP_CODE_FLOW" \
    "$PY_VERSIONS" "$NODE_VERSIONS" "$(($(date +%s) - STARTED))" "$(printf '%s\n' "${CRASHED[@]+"${CRASHED[@]}"}")" \
    "${RESULT_FILES[@]+"${RESULT_FILES[@]}"}" <<'EOF'
import json, os, sys, time
(out, command, commit, origin, version, issuer, code_flow, skip_code, py, node, elapsed, crashed) = sys.argv[1:13]
checks = []
for f in sys.argv[13:]:
    checks += json.load(open(f))
crashed = [c for c in crashed.split("\n") if c]
n = {s: sum(1 for c in checks if c["status"] == s) for s in ("PASS", "FAIL", "SKIP")}
failed = n["FAIL"] + len(crashed)
ok = failed == 0 and n["PASS"] > 0
for c in crashed:
    print(f"FAIL {c}")
print(f"interop-oidc: {'PASS' if ok else 'FAIL'}: {n['PASS']} passed, {failed} failed, {n['SKIP']} skipped "
      f"({len(checks)} checks; code flow advertised: {code_flow}{', --skip-code-flow' if skip_code == '1' else ''}; {elapsed} s)")
if out:
    doc = {
        "what": "third-party OAuth 2.0 / OIDC clients (Authlib + joserfc, openid-client + jose) against token-issuer",
        "command": command, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": commit,
        "server": {"origin": origin, "version": version, "issuer": issuer,
                   "authorization_code_flow_advertised": code_flow == "yes"},
        "skip_code_flow": skip_code == "1", "versions": {"python": py, "node": node},
        "passed": n["PASS"], "failed": failed, "skipped": n["SKIP"], "ok": ok, "crashed": crashed,
        "checks": checks, "elapsed_s": int(elapsed),
    }
    tmp = out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, out)
    print(f"interop-oidc: written {out}")
sys.exit(0 if ok else 1)
EOF
