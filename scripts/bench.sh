#!/usr/bin/env bash
# Pod start benchmark: rkubelet against the floor (the same steps driven by
# hand with ip, the CNI plugins and ctr; scripts/bench/floor.sh), for 1 pod
# and for RK_BENCH_PODS (30) pods at once, plus the agent's RSS and CPU time.
#
#   1. scripts/setup.sh (unless RK_SKIP_SETUP=1), cargo build --release
#      (unless RKUBELET_BIN is set)
#   2. a private containerd namespace with the two test images, a CNI conflist
#      (bridge rkb0, host-local 10.244.88.0/24, portmap) used by both sides
#   3. start rkubelet with no pods; idle RSS, idle CPU over RK_BENCH_IDLE_SECS
#   4. one untimed warm-up pod on each side, then RK_BENCH_RUNS times: 1 floor
#      pod, 1 rkubelet pod (interleaved; medians are reported)
#   5. RK_BENCH_PODS floor pods at once, then RK_BENCH_PODS rkubelet pods at
#      once; RSS, peak RSS and CPU with those pods; timed teardown; leak check
#   6. the API phase (scripts/bench/api.sh; RK_BENCH_API=0 skips it): the test
#      API server (tests/apiserver, rk-apiserver) on a free port, rkubelet
#      joined to it as node bench-api (--kubeconfig), pods created with kubectl
#      and their Ready condition seen through a watch: 1 pod (median of
#      RK_BENCH_RUNS), RK_BENCH_PODS pods at once (p50, last), deleting them,
#      RSS and CPU with them, and the node's API requests per pod from the
#      server's request log
#   7. a table on stdout, the figures as JSON in $RK_BENCH_DIR/results/
#   8. everything created is removed again (also on failure or Ctrl-C)
#
# A pod counts as started when its status.json (the agent) shows phase Running
# and every container running, polled every 20 ms (1 pod) or 50 ms (N pods),
# resp. when the floor's `ctr run -d` of the app container has returned (the
# task is started; checked with `ctr task ls` afterwards).
#
# The agent runs in its own containerd namespace (RK_BENCH_NAMESPACE,
# default rkubelet-bench; hidden flag --runtime-namespace): at start rkubelet
# removes every rkubelet-labelled container in its namespace that none of its
# pods owns, so in k8s.io it would tear down the pods of any other rkubelet on
# the machine (tests, demo) and they would tear down the benchmark's.
#
# Environment:
#   RK_SKIP_SETUP=1       skip scripts/setup.sh
#   RKUBELET_BIN          binary to measure (skips the build)
#   RK_APISERVER_BIN      rk-apiserver binary (skips its build)
#   KUBECTL               kubectl (default: kubectl on PATH)
#   RK_BENCH_API          0 skips the API phase (default 1)
#   CARGO_TARGET_DIR      default /var/cache/rkubelet-target
#   RK_BENCH_DIR          state and results (default /var/lib/rkubelet-bench)
#   RK_BENCH_NAMESPACE    containerd namespace (default rkubelet-bench)
#   RK_BENCH_RUNS         1-pod repetitions per side (default 3, 1..20)
#   RK_BENCH_PODS         pods for the parallel case (default 30, 1..100)
#   RK_BENCH_IDLE_SECS    CPU measuring window (default 30: one image detection and three eviction passes; 2..120)
set -euo pipefail
shopt -s nullglob

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/bench/floor.sh
. "$RK_REPO_ROOT/scripts/bench/floor.sh"

require_root
export LC_ALL=C
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rkubelet-target}"

BENCH_DIR="${RK_BENCH_DIR:-/var/lib/rkubelet-bench}"
NS="${RK_BENCH_NAMESPACE:-rkubelet-bench}"
RUNS="${RK_BENCH_RUNS:-3}"
PODS="${RK_BENCH_PODS:-30}"
IDLE_SECS="${RK_BENCH_IDLE_SECS:-30}"
API_PHASE="${RK_BENCH_API:-1}"
KUBECTL="${KUBECTL:-kubectl}"
# in_range VALUE MIN MAX: VALUE is an integer within MIN..MAX.
in_range() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }
in_range "$RUNS" 1 20 || die "RK_BENCH_RUNS must be 1..20"
in_range "$PODS" 1 100 || die "RK_BENCH_PODS must be 1..100"
in_range "$IDLE_SECS" 2 120 || die "RK_BENCH_IDLE_SECS must be 2..120"
[ "$API_PHASE" = 0 ] || [ "$API_PHASE" = 1 ] || die "RK_BENCH_API must be 0 or 1"
if ! [[ "$NS" =~ ^[a-z0-9][a-z0-9.-]*$ ]] || [ "$NS" = "$RK_CTR_NAMESPACE" ] || [ "$NS" = default ]; then
    die "RK_BENCH_NAMESPACE must be a private namespace (not $RK_CTR_NAMESPACE or default)"
fi
case "$BENCH_DIR" in /tmp | /tmp/* | / | "") die "RK_BENCH_DIR must not be /tmp or /" ;; esac

PAUSE_IMAGE="localhost/rkubelet/pause:1.0"
APP_IMAGE="localhost/test/busybox:1.0"
NODE_NAME="bench"
BRIDGE="rkb0"
SUBNET="10.244.88.0/24"
NET_NAME="rkubelet-bench"
CNI_PATH_DIRS="/opt/cni/bin:/usr/lib/cni"

AGENT_DIR="$BENCH_DIR/agent"
ROOT_DIR="$AGENT_DIR/root"
MANIFEST_DIR="$AGENT_DIR/manifests"
STAGING_DIR="$AGENT_DIR/manifests.staging"
POD_LOGS_DIR="$AGENT_DIR/pod-logs"
AGENT_LOG="$AGENT_DIR/agent.log"
AGENT_PIDFILE="$AGENT_DIR/agent.pid"
CNI_CONF_DIR="$BENCH_DIR/net.d"
IPAM_DIR="$BENCH_DIR/cni-ipam"
IMAGES_TAR="$BENCH_DIR/images.tar"
RESULTS_DIR="$BENCH_DIR/results"
LOCK_FILE="$BENCH_DIR/bench.lock"

FLOOR_NS="$NS"
FLOOR_CONFLIST="$CNI_CONF_DIR/10-bench.conflist"
FLOOR_CNI_PATH="$CNI_PATH_DIRS"
FLOOR_DIR="$BENCH_DIR/floor"
FLOOR_PAUSE_IMAGE="$PAUSE_IMAGE"
FLOOR_APP_IMAGE="$APP_IMAGE"

ONE_POD_TIMEOUT=60
MANY_PODS_TIMEOUT=240
TEARDOWN_TIMEOUT=240

AGENT_PID=""
AGENT_STOP="not running"
CUR_AGENT_LOG=""
WATCHDOG_PID=""
FLOOR_JOBS=()
CLK_TCK="$(getconf CLK_TCK)"

# --- small helpers --------------------------------------------------------------

# A sleep without a child process (read on a pipe nobody writes to), so that
# polling loops and the watchdog leave no stray `sleep` behind.
exec {NAP_FD}<> <(:)
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }

# stamp VAR: microseconds since the epoch, no fork.
stamp() { printf -v "$1" '%s' "${EPOCHREALTIME/./}"; }

us_to_s() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1e6 }'; }
kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# median US...: the median of integers (mean of the two middle ones if even).
median() {
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%d\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# alive PID: exists and is not a zombie; only builtins (usable in tight loops).
alive() {
    local st
    kill -0 "$1" 2>/dev/null || return 1
    read -r st <"/proc/$1/stat" 2>/dev/null || return 1
    st="${st##*) }"
    st="${st%% *}"
    [ "$st" != Z ] && [ "$st" != X ]
}

# proc_status_kib PID FIELD: a kB value from /proc/PID/status (VmRSS, VmHWM).
proc_status_kib() {
    local k v _u
    while read -r k v _u; do
        if [ "$k" = "$2:" ]; then
            echo "$v"
            return 0
        fi
    done <"/proc/$1/status"
    echo 0
}

# proc_ticks PID: "self children" CPU clock ticks (utime+stime, cutime+cstime).
proc_ticks() {
    local st
    local -a f
    read -r st <"/proc/$1/stat"
    st="${st##*) }"
    read -r -a f <<<"$st"
    # after "pid (comm) ": f[0]=state ... f[11]=utime f[12]=stime f[13]=cutime f[14]=cstime
    echo "$((f[11] + f[12])) $((f[13] + f[14]))"
}

ticks_to_ms() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t * 1000 / hz }'; }

# shellcheck source=scripts/bench/api.sh
. "$RK_REPO_ROOT/scripts/bench/api.sh"
# shellcheck source=scripts/bench/pressure.sh
. "$RK_REPO_ROOT/scripts/bench/pressure.sh"

# kill_jobs PID...: our background jobs and their direct children (the ctr,
# ip or CNI plugin each is running), by PID.
kill_jobs() {
    local p kids
    for p in "$@"; do
        kids="$(ps -o pid= --ppid "$p" 2>/dev/null | tr -s ' \n' ' ')" || true
        # shellcheck disable=SC2086  # one PID per word
        kill $kids "$p" 2>/dev/null || true
    done
}

# --- cleanup --------------------------------------------------------------------

# stop_agent: remove the manifests, wait (bounded: STOP_AGENT_WAIT, default
# TEARDOWN_TIMEOUT seconds) until the agent has removed every pod, then
# SIGTERM (SIGKILL after 15 s). Only the PID this script started (or a stale
# one from an earlier run, checked by its command line).
stop_agent() {
    [ -n "$AGENT_PID" ] || return 0
    local wait_s="${STOP_AGENT_WAIT:-$TEARDOWN_TIMEOUT}"
    if alive "$AGENT_PID"; then
        rm -f "$MANIFEST_DIR"/*
        local left=("$ROOT_DIR/pods"/*) i
        if [ "${#left[@]}" -gt 0 ]; then
            log "waiting up to ${wait_s}s for rkubelet to remove ${#left[@]} pod(s)"
            for ((i = 0; i < wait_s * 5; i++)); do
                left=("$ROOT_DIR/pods"/*)
                [ "${#left[@]}" -eq 0 ] && break
                alive "$AGENT_PID" || break
                nap 0.2
            done
            [ "${#left[@]}" -eq 0 ] || warn "rkubelet left ${#left[@]} pod dir(s) in $ROOT_DIR/pods"
        fi
        kill -TERM "$AGENT_PID" 2>/dev/null || true
        for ((i = 0; i < 75; i++)); do
            alive "$AGENT_PID" || break
            nap 0.2
        done
        AGENT_STOP="exited on SIGTERM within $(((i + 1) * 200)) ms"
        if alive "$AGENT_PID"; then
            warn "rkubelet (pid $AGENT_PID) ignored SIGTERM for 15 s; sending SIGKILL"
            kill -KILL "$AGENT_PID" 2>/dev/null || true
            AGENT_STOP="SIGKILL (still running 15 s after SIGTERM)"
        fi
    fi
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=""
    rm -f "$AGENT_PIDFILE"
}

# Anything left in the private namespace once the agent is gone (it failed to
# clean up, or a run was interrupted): tasks, containers and their netns, the
# leases and active snapshots of a `ctr run` that was killed half-way.
force_clean_namespace() {
    local ids id netns
    mapfile -t ids < <(timeout 20 ctr -n "$NS" containers ls -q 2>/dev/null)
    if [ "${#ids[@]}" -gt 0 ]; then
        warn "removing ${#ids[@]} leftover container(s) in containerd namespace $NS"
    fi
    for id in "${ids[@]}"; do
        netns="$(timeout 20 ctr -n "$NS" containers info "$id" 2>/dev/null | jq -r '.Labels["io.rkubelet.netns"] // empty' 2>/dev/null || true)"
        timeout 30 ctr -n "$NS" task rm -f "$id" >/dev/null 2>&1 || true
        timeout 30 ctr -n "$NS" containers rm "$id" >/dev/null 2>&1 || true
        case "$netns" in
            /var/run/netns/cni-* | /run/netns/cni-*) ip netns del "${netns##*/}" 2>/dev/null || true ;;
        esac
    done
    mapfile -t ids < <(timeout 20 ctr -n "$NS" leases ls -q 2>/dev/null)
    if [ "${#ids[@]}" -gt 0 ]; then
        timeout 60 ctr -n "$NS" leases rm "${ids[@]}" >/dev/null 2>&1 || true
    fi
    mapfile -t ids < <(timeout 20 ctr -n "$NS" snapshots ls 2>/dev/null | awk 'NR > 1 && $NF == "Active" { print $1 }')
    for id in "${ids[@]}"; do
        timeout 30 ctr -n "$NS" snapshots rm "$id" >/dev/null 2>&1 || true
    done
}

# Pod cgroups the agent left (only for pods of this benchmark's root dir).
clean_pod_cgroups() {
    local d uid cg
    for d in "$ROOT_DIR/pods"/*/; do
        uid="$(basename "$d")"
        [[ "$uid" =~ ^[0-9a-f-]+$ ]] || continue
        for cg in /sys/fs/cgroup/*/kubepods/{,burstable/,besteffort/}"pod$uid" /sys/fs/cgroup/kubepods/{,burstable/,besteffort/}"pod$uid"; do
            if [ -d "$cg" ]; then find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
        done
    done
    return 0
}

clean_resources() {
    local ids i
    # The API phase first: its pods go through the API, then the agent, the
    # watch and the server stop.
    if [ -n "$APISERVER_PID" ] || [ -n "$API_WATCH_PID" ]; then api_cleanup; fi
    stop_agent
    mapfile -t ids < <(floor_leftover_ids)
    if [ "${#ids[@]}" -gt 0 ]; then
        log "removing ${#ids[@]} floor pod(s)"
        [ "${FLOOR_PLUGIN_BIN+set}" = set ] || floor_init >/dev/null 2>&1 || true
        floor_down_all "${ids[@]}"
    fi
    force_clean_namespace
    clean_pod_cgroups
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" 2>/dev/null || warn "could not delete bridge $BRIDGE"
    fi
    if timeout 10 ctr namespaces ls -q 2>/dev/null | grep -qx -- "$NS"; then
        timeout 60 ctr -n "$NS" images rm --sync "$PAUSE_IMAGE" "$APP_IMAGE" >/dev/null 2>&1 || true
        for ((i = 0; i < 10; i++)); do
            timeout 20 ctr namespaces rm --cgroup "$NS" >/dev/null 2>&1 && break
            nap 0.5
        done
        if timeout 10 ctr namespaces ls -q 2>/dev/null | grep -qx -- "$NS"; then
            warn "containerd namespace $NS is not empty, left in place:"
            timeout 10 ctr -n "$NS" containers ls >&2 || true
            timeout 10 ctr -n "$NS" snapshots ls >&2 || true
        fi
    fi
    rm -rf "$ROOT_DIR" "$MANIFEST_DIR" "$STAGING_DIR" "$POD_LOGS_DIR" "$CNI_CONF_DIR" "$IPAM_DIR" \
        "$FLOOR_DIR" "$IMAGES_TAR" "$API_STATE" "$API_WORK" "$API_KUBE_CACHE" "$API_FIFO"
}

on_exit() {
    local rc=$? p
    trap - EXIT INT TERM
    set +e
    if [ -n "$WATCHDOG_PID" ]; then
        kill "$WATCHDOG_PID" 2>/dev/null
        wait "$WATCHDOG_PID" 2>/dev/null
    fi
    if [ "${#FLOOR_JOBS[@]}" -gt 0 ]; then
        kill_jobs "${FLOOR_JOBS[@]}"
        for p in "${FLOOR_JOBS[@]}"; do wait "$p" 2>/dev/null; done
    fi
    local agent_log="${CUR_AGENT_LOG:-$AGENT_LOG}"
    if [ "$rc" -ne 0 ] && [ -s "$agent_log" ]; then
        warn "last lines of $agent_log:"
        tail -n 25 "$agent_log" >&2
    fi
    log "cleaning up"
    pressure_cleanup
    clean_resources
    if [ "$API_PHASE" = 1 ]; then
        log "cleanup done (kept: $AGENT_LOG, $API_AGENT_LOG, $API_LOG, $API_DIR/requests.json, $RESULTS_DIR)"
    else
        log "cleanup done (kept: $AGENT_LOG, $RESULTS_DIR)"
    fi
    exit "$rc"
}

# --- steps ---------------------------------------------------------------------

mkdir -p "$BENCH_DIR"
exec {LOCK_FD}>"$LOCK_FILE"
flock -n "$LOCK_FD" || die "another scripts/bench.sh holds $LOCK_FILE"

if [ "${RK_SKIP_SETUP:-0}" = 1 ]; then
    log "setup: skipped (RK_SKIP_SETUP=1)"
else
    log "setup: scripts/setup.sh"
    bash "$RK_REPO_ROOT/scripts/setup.sh"
fi
ctr_ok || die "containerd does not answer 'ctr version'"

resolve_rkubelet_bin "build"
if [ "$API_PHASE" = 1 ]; then
    have "$KUBECTL" || die "kubectl not found (KUBECTL=$KUBECTL; RK_BENCH_API=0 skips the API phase)"
    if [ -n "${RK_APISERVER_BIN:-}" ]; then
        APISERVER_BIN="$RK_APISERVER_BIN"
        log "build: using RK_APISERVER_BIN=$APISERVER_BIN (no build)"
    else
        log "build: cargo build --release -p rkubelet-test-apiserver"
        (cd "$RK_REPO_ROOT" && cargo build --release -p rkubelet-test-apiserver)
        APISERVER_BIN="$CARGO_TARGET_DIR/release/rk-apiserver"
    fi
    [ -x "$APISERVER_BIN" ] || die "rk-apiserver binary not found or not executable: $APISERVER_BIN"
fi

# A stale agent of an earlier, killed run (same root dir): stop it first.
if pid_alive "$AGENT_PIDFILE" rkubelet &&
    tr '\0' ' ' <"/proc/$(cat "$AGENT_PIDFILE")/cmdline" | grep -qF -- "$ROOT_DIR"; then
    AGENT_PID="$(cat "$AGENT_PIDFILE")"
    warn "an rkubelet of an earlier benchmark run is still running (pid $AGENT_PID); stopping it"
fi
if pid_alive "$API_PIDFILE" rk-apiserver &&
    tr '\0' ' ' <"/proc/$(cat "$API_PIDFILE")/cmdline" | grep -qF -- "$API_STATE"; then
    APISERVER_PID="$(cat "$API_PIDFILE")"
    warn "an rk-apiserver of an earlier benchmark run is still running (pid $APISERVER_PID); stopping it"
fi
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set +e
clean_resources
set -e

log "preparing $BENCH_DIR (containerd namespace $NS, bridge $BRIDGE, $SUBNET)"
mkdir -p "$ROOT_DIR" "$MANIFEST_DIR" "$STAGING_DIR" "$POD_LOGS_DIR" "$CNI_CONF_DIR" "$IPAM_DIR" "$FLOOR_DIR" "$RESULTS_DIR"
jq -n --arg name "$NET_NAME" --arg bridge "$BRIDGE" --arg subnet "$SUBNET" --arg dir "$IPAM_DIR" '{
    cniVersion: "1.0.0",
    name: $name,
    plugins: [
        {type: "bridge", bridge: $bridge, isGateway: true, ipMasq: false, hairpinMode: true,
         ipam: {type: "host-local", ranges: [[{subnet: $subnet}]], routes: [{dst: "0.0.0.0/0"}], dataDir: $dir}},
        {type: "portmap", capabilities: {portMappings: true}}
    ]
}' >"$FLOOR_CONFLIST"
floor_init || die "floor: cannot prepare the CNI chain"

timeout 60 ctr -n "$RK_CTR_NAMESPACE" images export "$IMAGES_TAR" "$PAUSE_IMAGE" "$APP_IMAGE" ||
    die "cannot export $PAUSE_IMAGE and $APP_IMAGE from namespace $RK_CTR_NAMESPACE (run scripts/setup.sh)"
timeout 120 ctr -n "$NS" images import "$IMAGES_TAR" >/dev/null || die "cannot import the images into namespace $NS"
rm -f "$IMAGES_TAR"

LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- the agent ------------------------------------------------------------------

: >"$AGENT_LOG"
start_daemon rkubelet "$AGENT_PIDFILE" "$AGENT_LOG" "$BIN" \
    --pod-manifest-path "$MANIFEST_DIR" --root-dir "$ROOT_DIR" --cni-conf-dir "$CNI_CONF_DIR" \
    --pod-infra-container-image "$PAUSE_IMAGE" --hostname-override "$NODE_NAME" \
    --file-check-frequency 2s --runtime-namespace "$NS" --pod-logs-dir "$POD_LOGS_DIR"
AGENT_PID="$RK_DAEMON_PID"
agent_ready() {
    alive "$AGENT_PID" || return 0 # stop waiting; checked below
    grep -q 'agent ready' "$AGENT_LOG"
}
RK_WAIT_INTERVAL=0.1 wait_for "rkubelet to log 'agent ready'" 30 agent_ready || die "rkubelet did not get ready"
alive "$AGENT_PID" || die "rkubelet exited right after starting"
log "rkubelet ready (pid $AGENT_PID); settling 2 s, then measuring idle RSS and CPU over ${IDLE_SECS}s"
nap 2

# proc_sched_ns PID: "tid nanoseconds" per thread (run time from schedstat).
proc_sched_ns() {
    local f v _r
    for f in "/proc/$1/task"/*/schedstat; do
        read -r v _r <"$f" 2>/dev/null || continue
        f="${f%/schedstat}"
        echo "${f##*/} $v"
    done
}

# cpu_window SECS: the agent's CPU use over SECS seconds in ms per second,
# "TICKS SCHED": from utime+stime (clock ticks) and from the threads'
# schedstat (ns; threads that exit within the window are not counted).
cpu_window() {
    local t0 t1 a b s0 s1
    stamp t0
    read -r a _ < <(proc_ticks "$AGENT_PID")
    s0="$(proc_sched_ns "$AGENT_PID")"
    nap "$1"
    read -r b _ < <(proc_ticks "$AGENT_PID")
    s1="$(proc_sched_ns "$AGENT_PID")"
    stamp t1
    awk -v d="$((b - a))" -v hz="$CLK_TCK" -v us="$((t1 - t0))" '
        FNR == NR { before[$1] = $2; next }
        { ns += $2 - (($1 in before) ? before[$1] : 0) }
        END { secs = us / 1e6; printf "%.1f %.2f\n", d * 1000 / hz / secs, ns / 1e6 / secs }' \
        <(printf '%s\n' "$s0") <(printf '%s\n' "$s1")
}
RSS_IDLE_KIB="$(proc_status_kib "$AGENT_PID" VmRSS)"
read -r CPU_IDLE CPU_IDLE_SCHED < <(cpu_window "$IDLE_SECS")
log "idle: RSS $(kib_to_mib "$RSS_IDLE_KIB") MiB, CPU $CPU_IDLE ms/s (schedstat $CPU_IDLE_SCHED ms/s)"

# --- measurements ---------------------------------------------------------------

# floor_measure TAG N: starts N floor pods at once; sets LAST_US. Their
# teardown is not timed.
floor_measure() {
    local tag="$1" n="$2" i id t0 t1 rc=0 p running
    local -a ids=()
    for ((i = 1; i <= n; i++)); do
        printf -v id '%s%s-%02d' "$FLOOR_PREFIX" "$tag" "$i"
        ids+=("$id")
    done
    FLOOR_JOBS=()
    stamp t0
    for id in "${ids[@]}"; do
        floor_pod_up "$id" 2>"$FLOOR_DIR/$id.err" &
        FLOOR_JOBS+=("$!")
    done
    (
        nap "$MANY_PODS_TIMEOUT"
        echo "[bench] floor: pods not up after ${MANY_PODS_TIMEOUT}s, killing the pipelines" >&2
        kill_jobs "${FLOOR_JOBS[@]}"
    ) &
    WATCHDOG_PID=$!
    for p in "${FLOOR_JOBS[@]}"; do
        wait "$p" || rc=1
    done
    stamp t1
    FLOOR_JOBS=()
    kill "$WATCHDOG_PID" 2>/dev/null || true
    wait "$WATCHDOG_PID" 2>/dev/null || true
    WATCHDOG_PID=""
    LAST_US=$((t1 - t0))
    running="$(floor_running_count "${ids[@]}")"
    if [ "$rc" -ne 0 ] || [ "$running" -ne "$n" ]; then
        cat "$FLOOR_DIR"/*.err >&2 2>/dev/null || true
        die "floor: $running of $n app tasks RUNNING (see the messages above)"
    fi
    floor_down_all "${ids[@]}"
}

# agent_running_count: pods whose status.json shows phase Running and every
# container running (jq over the status files; no CLI).
agent_running_count() {
    local files=("$ROOT_DIR/pods"/*/status.json) out
    if [ "${#files[@]}" -eq 0 ]; then
        echo 0
        return 0
    fi
    out="$(jq -n '[inputs | select(.status.phase == "Running"
        and ((.spec.containers // []) | length) > 0
        and ([.status.containerStatuses[]? | select(.state.running != null)] | length)
            == ((.spec.containers // []) | length))] | length' "${files[@]}" 2>/dev/null)" || true
    echo "${out:-0}"
}

agent_pod_dirs() {
    local d=("$ROOT_DIR/pods"/*)
    echo "${#d[@]}"
}

write_manifest() {
    cat >"$STAGING_DIR/$1.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels:
    app: rkubelet-bench
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: $APP_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
EOF
}

agent_failed() {
    warn "$1"
    timeout 10 "$BIN" pods --root-dir "$ROOT_DIR" -o wide >&2 || true
    die "rkubelet: $1 (log: $AGENT_LOG)"
}

# agent_measure TAG N INTERVAL: writes N manifests at once (staged, then one
# mv), polls until all N pods run; sets LAST_US.
agent_measure() {
    local tag="$1" n="$2" interval="$3" i name t0 t1 got=0 deadline now
    local -a files=()
    [ "$(agent_pod_dirs)" -eq 0 ] || agent_failed "pods left over before run $tag"
    for ((i = 1; i <= n; i++)); do
        printf -v name '%s-%02d' "$tag" "$i"
        write_manifest "$name"
        files+=("$STAGING_DIR/$name.yaml")
    done
    local timeout=$ONE_POD_TIMEOUT
    [ "$n" -eq 1 ] || timeout=$MANY_PODS_TIMEOUT
    stamp t0
    mv -t "$MANIFEST_DIR" "${files[@]}"
    deadline=$((t0 + timeout * 1000000))
    while :; do
        got="$(agent_running_count)"
        stamp t1
        [ "$got" -ge "$n" ] && break
        alive "$AGENT_PID" || agent_failed "exited during run $tag"
        [ "$t1" -lt "$deadline" ] || agent_failed "only $got of $n pods running after ${timeout}s (run $tag)"
        nap "$interval"
    done
    LAST_US=$((t1 - t0))
}

# agent_teardown: removes every manifest, waits until ROOT/pods is empty;
# sets LAST_US.
agent_teardown() {
    local t0 t1 deadline
    stamp t0
    rm -f "$MANIFEST_DIR"/*
    deadline=$((t0 + TEARDOWN_TIMEOUT * 1000000))
    while :; do
        stamp t1
        [ "$(agent_pod_dirs)" -eq 0 ] && break
        alive "$AGENT_PID" || agent_failed "exited while removing pods"
        [ "$t1" -lt "$deadline" ] || agent_failed "$(agent_pod_dirs) pod dir(s) still in $ROOT_DIR/pods after ${TEARDOWN_TIMEOUT}s"
        nap 0.05
    done
    LAST_US=$((t1 - t0))
}

# leak_report: what is left on our side after a teardown (one line; "none").
leak_report() {
    local out=() n
    n="$(timeout 20 ctr -n "$NS" containers ls -q 2>/dev/null | grep -c . || true)"
    [ "$n" -eq 0 ] || out+=("$n containers")
    n="$(timeout 20 ctr -n "$NS" snapshots ls 2>/dev/null | awk 'NR > 1 && $NF == "Active"' | grep -c . || true)"
    [ "$n" -eq 0 ] || out+=("$n active snapshots")
    n="$(find "$IPAM_DIR" -type f -name '10.*' 2>/dev/null | grep -c . || true)"
    [ "$n" -eq 0 ] || out+=("$n IPAM allocations")
    n="$(ip -o link show master "$BRIDGE" 2>/dev/null | grep -c . || true)"
    [ "$n" -eq 0 ] || out+=("$n veths on $BRIDGE")
    if [ "${#out[@]}" -eq 0 ]; then echo none; else
        local IFS=,
        echo "${out[*]}"
    fi
}

log "warm-up: 1 floor pod, 1 rkubelet pod (untimed)"
floor_measure warm 1
agent_measure warm 1 0.02
agent_teardown

FLOOR_ONE=()
AGENT_ONE=()
for ((r = 1; r <= RUNS; r++)); do
    floor_measure "one$r" 1
    FLOOR_ONE+=("$LAST_US")
    agent_measure "one$r" 1 0.02
    AGENT_ONE+=("$LAST_US")
    agent_teardown
    log "1 pod, run $r/$RUNS: floor $(us_to_s "${FLOOR_ONE[-1]}") s, rkubelet $(us_to_s "${AGENT_ONE[-1]}") s"
done
LEAKS_ONE="$(leak_report)"

log "$PODS floor pods at once"
floor_measure many "$PODS"
FLOOR_MANY="$LAST_US"
LEAKS_FLOOR="$(leak_report)"
log "$PODS floor pods: $(us_to_s "$FLOOR_MANY") s (teardown leftovers: $LEAKS_FLOOR)"

log "$PODS rkubelet pods at once"
read -r CPU0_SELF CPU0_CHILD < <(proc_ticks "$AGENT_PID")
agent_measure many "$PODS" 0.05
AGENT_MANY="$LAST_US"
read -r CPU1_SELF CPU1_CHILD < <(proc_ticks "$AGENT_PID")
RSS_MANY_START_KIB="$(proc_status_kib "$AGENT_PID" VmRSS)"
log "$PODS rkubelet pods: $(us_to_s "$AGENT_MANY") s; measuring CPU with $PODS pods over ${IDLE_SECS}s"
read -r CPU_MANY CPU_MANY_SCHED < <(cpu_window "$IDLE_SECS")
RSS_MANY_KIB="$(proc_status_kib "$AGENT_PID" VmRSS)"
HWM_MANY_KIB="$(proc_status_kib "$AGENT_PID" VmHWM)"
agent_teardown
AGENT_TEARDOWN="$LAST_US"
nap 5
LEAKS_AGENT="$(leak_report)"
RSS_AFTER_KIB="$(proc_status_kib "$AGENT_PID" VmRSS)"
HWM_KIB="$(proc_status_kib "$AGENT_PID" VmHWM)"
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
log "$PODS rkubelet pods removed in $(us_to_s "$AGENT_TEARDOWN") s (leftovers: $LEAKS_AGENT)"

stop_agent
AGENT_ERRORS="$(grep -c -E ' (ERROR|WARN) ' "$AGENT_LOG" || true)"

pressure_phase

API_JSON=null
if [ "$API_PHASE" = 1 ]; then
    api_phase
    LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
fi

# --- report ----------------------------------------------------------------------

FLOOR_ONE_MED="$(median "${FLOOR_ONE[@]}")"
AGENT_ONE_MED="$(median "${AGENT_ONE[@]}")"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
RATIO_ONE="$(ratio "$AGENT_ONE_MED" "$FLOOR_ONE_MED")"
RATIO_MANY="$(ratio "$AGENT_MANY" "$FLOOR_MANY")"
START_SELF_MS="$(ticks_to_ms $((CPU1_SELF - CPU0_SELF)))"
START_CHILD_MS="$(ticks_to_ms $((CPU1_CHILD - CPU0_CHILD)))"
# meets VALUE LIMIT: yes when VALUE <= LIMIT.
meets() { awk -v v="$1" -v l="$2" 'BEGIN { print (v + 0 <= l + 0) ? "yes" : "NO" }'; }
list_s() {
    local u out=()
    for u in "$@"; do out+=("$(us_to_s "$u")"); done
    echo "${out[*]}"
}

VERSION="$(timeout 10 "$BIN" --version 2>/dev/null | head -n1 || true)"
GIT_REV="$(git -C "$RK_REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo none)"
if [ -n "$(git -C "$RK_REPO_ROOT" status --porcelain 2>/dev/null | head -n1)" ]; then GIT_REV="$GIT_REV+dirty"; fi
STAMP_UTC="$(date -u +%Y%m%dT%H%M%SZ)"
RESULT_FILE="$RESULTS_DIR/bench-$STAMP_UTC.json"

{
    echo
    echo "rkubelet pod start benchmark  ($STAMP_UTC, $(nproc) CPUs, $(uname -r), ${VERSION:-?}, git $GIT_REV)"
    echo "load average at start: $LOAD_START, at end: $LOAD_END"
    echo
    printf '%-30s %10s %10s %8s %10s %5s\n' "pod start (manifest -> running)" "floor s" "rkubelet s" "ratio" "target" "met"
    printf '%-30s %10s %10s %8s %10s %5s\n' "1 pod (median of $RUNS)" "$(us_to_s "$FLOOR_ONE_MED")" "$(us_to_s "$AGENT_ONE_MED")" "${RATIO_ONE}x" "<= 1.25x" "$(meets "$RATIO_ONE" 1.25)"
    printf '%-30s %10s %10s %8s %10s %5s\n' "$PODS pods at once" "$(us_to_s "$FLOOR_MANY")" "$(us_to_s "$AGENT_MANY")" "${RATIO_MANY}x" "<= 1.00x" "$(meets "$RATIO_MANY" 1.00)"
    echo "  1-pod runs: floor [$(list_s "${FLOOR_ONE[@]}")] s, rkubelet [$(list_s "${AGENT_ONE[@]}")] s"
    echo
    printf '%-30s %10s %14s %10s %5s\n' "rkubelet resources" "rkubelet" "kubelet (ref)" "target" "met"
    printf '%-30s %10s %14s %10s %5s\n' "RSS idle, MiB" "$(kib_to_mib "$RSS_IDLE_KIB")" "85-90" "<= 20" "$(meets "$(kib_to_mib "$RSS_IDLE_KIB")" 20)"
    printf '%-30s %10s %14s %10s %5s\n' "RSS with $PODS pods, MiB" "$(kib_to_mib "$RSS_MANY_KIB")" "97-100" "<= 30" "$(meets "$(kib_to_mib "$RSS_MANY_KIB")" 30)"
    printf '%-30s %10s %14s %10s %5s\n' "peak RSS (VmHWM), MiB" "$(kib_to_mib "$HWM_KIB")" "-" "-" ""
    printf '%-30s %10s %14s %10s %5s\n' "RSS idle again (5 s after), MiB" "$(kib_to_mib "$RSS_AFTER_KIB")" "-" "-" ""
    printf '%-30s %10s %14s %10s %5s\n' "CPU idle, ms/s" "$CPU_IDLE" "14-19" "<= 1" "$(meets "$CPU_IDLE" 1)"
    printf '%-30s %10s %14s %10s %5s\n' "CPU with $PODS pods, ms/s" "$CPU_MANY" "-" "-" ""
    echo "  CPU from utime+stime, $((1000 / CLK_TCK)) ms ticks over ${IDLE_SECS}s" \
        "(resolution $(awk -v h="$CLK_TCK" -v s="$IDLE_SECS" 'BEGIN { printf "%.1f", 1000 / h / s }') ms/s);" \
        "from the threads' schedstat: idle $CPU_IDLE_SCHED ms/s, with $PODS pods $CPU_MANY_SCHED ms/s"
    echo "  CPU to start $PODS pods: rkubelet ${START_SELF_MS} ms, its children (CNI plugins) ${START_CHILD_MS} ms"
    echo "  RSS right after $PODS pods ran: $(kib_to_mib "$RSS_MANY_START_KIB") MiB; peak until then $(kib_to_mib "$HWM_MANY_KIB") MiB"
    echo "  $PODS rkubelet pods removed in $(us_to_s "$AGENT_TEARDOWN") s; leftovers after teardown:" \
        "rkubelet 1-pod runs: $LEAKS_ONE, floor: $LEAKS_FLOOR, rkubelet $PODS pods: $LEAKS_AGENT"
    echo "  idle includes the eviction manager (10 s passes, memory notifier) and image/container GC (30 s / 1 min)"
    echo "  rkubelet log: $AGENT_LOG ($AGENT_ERRORS WARN/ERROR lines)"
    pressure_report
    if [ "$API_PHASE" = 1 ]; then api_report; fi
}

jq -n \
    --arg time "$STAMP_UTC" --arg kernel "$(uname -r)" --argjson cpus "$(nproc)" \
    --arg load_start "$LOAD_START" --arg load_end "$LOAD_END" \
    --arg binary "$BIN" --arg version "$VERSION" --arg git "$GIT_REV" --arg namespace "$NS" \
    --argjson runs "$RUNS" --argjson pods "$PODS" --argjson idle_secs "$IDLE_SECS" \
    --argjson floor_one "$(printf '%s\n' "${FLOOR_ONE[@]}" | jq -s 'map(. / 1e6)')" \
    --argjson agent_one "$(printf '%s\n' "${AGENT_ONE[@]}" | jq -s 'map(. / 1e6)')" \
    --argjson floor_one_med "$FLOOR_ONE_MED" --argjson agent_one_med "$AGENT_ONE_MED" \
    --argjson floor_many "$FLOOR_MANY" --argjson agent_many "$AGENT_MANY" \
    --argjson agent_teardown "$AGENT_TEARDOWN" \
    --argjson rss_idle "$RSS_IDLE_KIB" --argjson rss_many "$RSS_MANY_KIB" --argjson rss_many_start "$RSS_MANY_START_KIB" \
    --argjson hwm "$HWM_KIB" --argjson rss_after "$RSS_AFTER_KIB" \
    --argjson cpu_idle "$CPU_IDLE" --argjson cpu_many "$CPU_MANY" \
    --argjson cpu_idle_sched "$CPU_IDLE_SCHED" --argjson cpu_many_sched "$CPU_MANY_SCHED" \
    --argjson start_self "$START_SELF_MS" --argjson start_child "$START_CHILD_MS" \
    --arg leaks_one "$LEAKS_ONE" --arg leaks_floor "$LEAKS_FLOOR" --arg leaks_agent "$LEAKS_AGENT" \
    --argjson log_warnings "$AGENT_ERRORS" --argjson api "$API_JSON" \
    --argjson pressure_fast "${PRESSURE_FAST:-null}" --argjson pressure_poll "${PRESSURE_POLL:-null}" \
    'def r3: . * 1000 | round / 1000; def mib: . / 1024 * 10 | round / 10;
    {
      time: $time,
      host: {cpus: $cpus, kernel: $kernel, loadavg_start: $load_start, loadavg_end: $load_end},
      rkubelet: {binary: $binary, version: $version, git: $git, containerd_namespace: $namespace},
      params: {one_pod_runs: $runs, pods: $pods, cpu_window_s: $idle_secs},
      start_seconds: {
        floor_one_pod_runs: ($floor_one | map(r3)), rkubelet_one_pod_runs: ($agent_one | map(r3)),
        floor_one_pod: ($floor_one_med / 1e6 | r3), rkubelet_one_pod: ($agent_one_med / 1e6 | r3),
        floor_pods: ($floor_many / 1e6 | r3), rkubelet_pods: ($agent_many / 1e6 | r3),
        ratio_one_pod: ($agent_one_med / $floor_one_med * 100 | round / 100),
        ratio_pods: ($agent_many / $floor_many * 100 | round / 100)
      },
      rss_mib: {idle: ($rss_idle | mib), pods: ($rss_many | mib), pods_right_after_start: ($rss_many_start | mib),
                peak_vmhwm: ($hwm | mib), after_teardown: ($rss_after | mib)},
      cpu: {idle_ms_per_s: $cpu_idle, pods_ms_per_s: $cpu_many,
            idle_ms_per_s_schedstat: $cpu_idle_sched, pods_ms_per_s_schedstat: $cpu_many_sched,
            start_pods_ms_self: $start_self, start_pods_ms_children: $start_child},
      teardown: {rkubelet_pods_seconds: ($agent_teardown / 1e6 | r3),
                 leftovers_one_pod: $leaks_one, leftovers_floor: $leaks_floor, leftovers_pods: $leaks_agent},
      agent_log_warn_error_lines: $log_warnings,
      memory_pressure_reaction_seconds: {notifier: (if $pressure_fast == null then null else $pressure_fast / 1e6 | r3 end),
                                         ten_second_pass: (if $pressure_poll == null then null else $pressure_poll / 1e6 | r3 end)},
      reference_kubelet: {rss_idle_mib: [85, 90], rss_30_pods_mib: [97, 100], cpu_idle_ms_per_s: [14, 19]},
      targets: {ratio_one_pod_max: 1.25, ratio_30_pods_max: 1.0, rss_idle_mib_max: 20, rss_30_pods_mib_max: 30,
                cpu_idle_ms_per_s_max: 5},
      api: $api
    }' >"$RESULT_FILE"
ln -sfn "$(basename "$RESULT_FILE")" "$RESULTS_DIR/latest.json"
echo "figures written to $RESULT_FILE"

# The systemd + cgroup v2 node: figures scripts/vm-test.sh measured inside its
# guest (each ratio against the guest's own floor, same run); scripts/test.sh
# runs the VM test just before this benchmark.
VM_BENCH="${RK_VM_CACHE:-/var/cache/rkubelet-vm}/last-run/bench.txt"
if [ -s "$VM_BENCH" ]; then
    echo "VM guest (systemd + cgroup v2, TCG; $(date -u -r "$VM_BENCH" +%Y-%m-%dT%H:%M:%SZ)): pod start vs the guest's ctr-driven floor, per cgroup driver"
    sed 's/^\[vm-bench\] /  /' "$VM_BENCH"
fi
