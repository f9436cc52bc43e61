# scripts/lib.sh: helpers shared by the scripts in this folder. Source it right after `set -euo pipefail`:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Messages carry the sourcing script's name (peer-cdn.sh says "peer-cdn: ...").

REFBENCH_SCRIPT=$(basename "$0" .sh)
# Set once `apt-get update` ran in this process: one update per script run.
APT_UPDATED=0

log() { echo "$REFBENCH_SCRIPT: $*" >&2; }

die() {
    echo "$REFBENCH_SCRIPT: $*" >&2
    exit 1
}

check_int() { # name value min max
    if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < $3 || 10#$2 > $4)); then
        die "$1 must be an integer in $3..$4, got '$2'"
    fi
}

# Stops a process: TERM, up to 15 s to exit, then KILL.
stop_pid() { # pid
    local p=$1
    kill -TERM "$p" 2>/dev/null || true
    timeout 15 tail --pid="$p" -f /dev/null 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

# A loopback port free right now (the kernel's choice).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The prefix for commands that need root: empty as root, else sudo (set by apt_install; a script's cleanup may use it).
SUDO=()

# Installs Debian packages (root, or through sudo), running `apt-get update` once per script run; both steps are
# bounded in time. A script that defines `apt_before_install` has it called first (after SUDO is set).
apt_install() { # package...
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root or sudo to install: $*"
        SUDO=(sudo)
    fi
    if declare -F apt_before_install >/dev/null; then
        apt_before_install
    fi
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        timeout 600 "${SUDO[@]}" apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive timeout 1200 "${SUDO[@]}" apt-get install -y -qq "$@" >&2
}
