# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source this file
# Shared helpers for the rkubelet scripts. Source it, do not run it:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It defines the common paths (overridable through the environment) and:
#   log/warn/die MSG...              messages on stderr, tagged with the script name
#   have CMD                         is CMD on PATH?
#   require_root                     die unless running as root
#   wait_for DESC SECS CMD [ARG...]  retry CMD until it succeeds; bounded in time
#                                    and in attempts (interval: RK_WAIT_INTERVAL)
#   proc_alive PID                   does PID exist (and is not a zombie)?
#   pid_alive PIDFILE [COMM]         is the process named in PIDFILE running
#                                    (and, with COMM, is its /proc comm COMM)?
#   start_daemon NAME PIDFILE LOG CMD [ARG...]
#                                    start CMD detached (own session, stdin from
#                                    /dev/null, output appended to LOG), write PID
#   pkgs_missing PKG...              print the Debian packages not installed
#   http_ok URL                      does URL answer HTTP 2xx within 5 s?
#   ctr_ok                           does containerd answer `ctr version`?
#   parse_destdir_args [--binary-ok] ARG...
#                                    install.sh/uninstall.sh arguments: --destdir DIR
#                                    (sets DESTDIR, default $DESTDIR, no trailing /),
#                                    with --binary-ok also --binary FILE (sets BINARY),
#                                    --help (the caller's header); then root is
#                                    required unless DESTDIR is set
#
# Nothing here changes the caller's shell options.

# Repository root (this file lives in <root>/scripts).
RK_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# State of the test environment (image layouts, registry storage). Never /tmp.
RK_STATE_DIR="${RK_STATE_DIR:-/var/lib/rkubelet-test}"
# PID files of the daemons the scripts start.
RK_RUN_DIR="${RK_RUN_DIR:-/run/rkubelet-test}"
# The local registry (plain HTTP on loopback).
RK_REGISTRY="${RK_REGISTRY:-127.0.0.1:5000}"
# containerd namespace used by rkubelet (the Kubernetes one).
RK_CTR_NAMESPACE="${RK_CTR_NAMESPACE:-k8s.io}"
# Seconds between two attempts of wait_for.
RK_WAIT_INTERVAL="${RK_WAIT_INTERVAL:-1}"

RK_LOG_TAG="${RK_LOG_TAG:-$(basename "${0:-rkubelet}" .sh)}"

log() { printf '[%s] %s\n' "$RK_LOG_TAG" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$RK_LOG_TAG" "$*" >&2; }
die() {
    printf '[%s] ERROR: %s\n' "$RK_LOG_TAG" "$*" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
}

# wait_for DESC SECS CMD [ARG...]
# Runs CMD until it exits 0. Gives up after SECS seconds or SECS/interval+1
# attempts, whichever comes first. CMD should bound its own run time (e.g.
# `timeout 5 ...`, `curl --max-time`); wait_for checks the clock after each try.
wait_for() {
    local desc="$1" secs="$2"
    shift 2
    local interval="$RK_WAIT_INTERVAL"
    local max_tries start now try=0
    # attempts = secs / interval + 1 (interval may be fractional)
    max_tries="$(awk -v s="$secs" -v i="$interval" 'BEGIN { n = int(s / i) + 1; if (n < 1) n = 1; print n }')"
    start="$(date +%s)"
    while :; do
        try=$((try + 1))
        if "$@"; then
            return 0
        fi
        now="$(date +%s)"
        if [ "$try" -ge "$max_tries" ] || [ $((now - start)) -ge "$secs" ]; then
            warn "timed out after ${try} attempts / $((now - start))s waiting for: $desc"
            return 1
        fi
        sleep "$interval"
    done
}

# proc_alive PID: the process exists and is not a zombie.
proc_alive() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    state="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)"
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# pid_alive PIDFILE [COMM]
# With COMM, the process must also be named COMM (/proc/PID/comm), so that a
# stale PID file whose number was reused by another program does not count.
pid_alive() {
    local pidfile="$1" comm="${2:-}" pid
    [ -r "$pidfile" ] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    proc_alive "$pid" || return 1
    if [ -n "$comm" ]; then
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${comm:0:15}" ] || return 1
    fi
}

# start_daemon NAME PIDFILE LOG CMD [ARG...]
# The daemon gets its own session (setsid) so that it outlives the script and
# is not hit by a Ctrl-C aimed at the script. Its PID is written to PIDFILE and
# stored in RK_DAEMON_PID.
start_daemon() {
    local name="$1" pidfile="$2" logfile="$3"
    shift 3
    mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
    log "starting $name: $* (log: $logfile)"
    # In a non-interactive shell a background job is not a process-group
    # leader, so setsid(1) calls setsid(2) and execs without forking: $! is
    # the daemon's own PID.
    setsid "$@" </dev/null >>"$logfile" 2>&1 &
    RK_DAEMON_PID=$!
    echo "$RK_DAEMON_PID" >"$pidfile"
    export RK_DAEMON_PID
}

pkgs_missing() {
    local p status
    for p in "$@"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        [ "$status" = "installed" ] || printf '%s\n' "$p"
    done
}

http_ok() {
    curl -fsS --noproxy '*' -o /dev/null --max-time 5 "$1" 2>/dev/null
}

ctr_ok() {
    timeout 5 ctr version >/dev/null 2>&1
}

# resolve_rkubelet_bin LABEL: sets BIN to $RKUBELET_BIN, or builds the release
# binary (CARGO_TARGET_DIR) and points BIN at it. LABEL prefixes the log line.
resolve_rkubelet_bin() {
    local label="$1"
    if [ -n "${RKUBELET_BIN:-}" ]; then
        BIN="$RKUBELET_BIN"
        log "$label: using RKUBELET_BIN=$BIN (no build)"
    else
        have cargo || die "cargo not found (looked on PATH, including ${HOME:-/root}/.cargo/bin)"
        log "$label: cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
        (cd "$RK_REPO_ROOT" && cargo build --release)
        BIN="$CARGO_TARGET_DIR/release/rkubelet"
    fi
    [ -x "$BIN" ] || die "rkubelet binary not found or not executable: $BIN"
}

parse_destdir_args() {
    local binary_ok=0
    if [ "${1:-}" = --binary-ok ]; then
        binary_ok=1
        shift
    fi
    DESTDIR="${DESTDIR:-}"
    BINARY=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --destdir) DESTDIR="${2:?--destdir needs a directory}"; shift 2 ;;
            --destdir=*) DESTDIR="${1#*=}"; shift ;;
            --binary | --binary=*) [ "$binary_ok" = 1 ] || die "unknown argument: $1 (see --help)"
                if [ "$1" = --binary ]; then BINARY="${2:?--binary needs a file}"; shift 2; else BINARY="${1#*=}"; shift; fi ;;
            -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
    done
    DESTDIR="${DESTDIR%/}"
    [ -n "$DESTDIR" ] || require_root
}
