#!/usr/bin/env bash
# Demo: run rkubelet with a static pod and fetch its web page.
#   1. scripts/setup.sh (packages, containerd, registry, CNI config, images)
#   2. cargo build --release (skipped when RKUBELET_BIN is set)
#   3. copy scripts/demo/web.yaml into the manifest dir (if not there yet)
#   4. start rkubelet in the background (reuses one this script started before)
#   5. wait (bounded) until `rkubelet pods -o json` shows the web pod Running
#      with an IP, then `curl http://<podIP>:80/`
#
# Environment:
#   RKUBELET_BIN           binary to run (default: $CARGO_TARGET_DIR/release/rkubelet,
#                          built by this script)
#   CARGO_TARGET_DIR       default /var/cache/rkubelet-target
#   RKUBELET_ROOT_DIR      --root-dir (default /var/lib/rkubelet)
#   RKUBELET_MANIFEST_DIR  --pod-manifest-path (default /etc/rkubelet/manifests)
#   RKUBELET_PAUSE_IMAGE   --pod-infra-container-image (default localhost/rkubelet/pause:1.0)
#   RK_DEMO_TIMEOUT        seconds to wait for the pod (default and maximum 60)
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root

export PATH="${HOME:-/root}/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rkubelet-target}"
ROOT_DIR="${RKUBELET_ROOT_DIR:-/var/lib/rkubelet}"
MANIFEST_DIR="${RKUBELET_MANIFEST_DIR:-/etc/rkubelet/manifests}"
PAUSE_IMAGE="${RKUBELET_PAUSE_IMAGE:-localhost/rkubelet/pause:1.0}"
DEMO_LOG="/var/log/rkubelet-demo.log"
DEMO_PIDFILE="$RK_RUN_DIR/rkubelet-demo.pid"
TIMEOUT="${RK_DEMO_TIMEOUT:-60}"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "RK_DEMO_TIMEOUT must be a number of seconds"
[ "$TIMEOUT" -le 60 ] || TIMEOUT=60

log "step 1/5: scripts/setup.sh"
bash "$RK_REPO_ROOT/scripts/setup.sh"

resolve_rkubelet_bin "step 2/5"

log "step 3/5: manifests in $MANIFEST_DIR"
mkdir -p "$MANIFEST_DIR"
if [ -e "$MANIFEST_DIR/web.yaml" ]; then
    log "$MANIFEST_DIR/web.yaml already there, keeping it"
else
    install -m 0644 "$RK_REPO_ROOT/scripts/demo/web.yaml" "$MANIFEST_DIR/web.yaml"
    log "installed $MANIFEST_DIR/web.yaml"
fi

log "step 4/5: rkubelet"
BIN_COMM="$(basename "$BIN")"
if pid_alive "$DEMO_PIDFILE" "$BIN_COMM"; then
    AGENT_PID="$(cat "$DEMO_PIDFILE")"
    log "rkubelet already running (pid $AGENT_PID, started by an earlier demo run)"
else
    mkdir -p "$ROOT_DIR" "$(dirname "$DEMO_LOG")"
    echo "=== $(date -Is) scripts/demo.sh starts $BIN" >>"$DEMO_LOG"
    start_daemon rkubelet "$DEMO_PIDFILE" "$DEMO_LOG" "$BIN" \
        --pod-manifest-path="$MANIFEST_DIR" \
        --pod-infra-container-image="$PAUSE_IMAGE" \
        --root-dir="$ROOT_DIR"
    AGENT_PID="$RK_DAEMON_PID"
fi

# `rkubelet --root-dir=DIR pods -o json|wide`: the pod list of the agent that
# uses DIR.
rk_pods() {
    timeout 10 "$BIN" --root-dir="$ROOT_DIR" pods -o "$1"
}

# Static pods may be named web or web-<node name> (as the upstream kubelet's
# mirror pods are).
POD_PHASE="" POD_IP="" POD_NAME="" AGENT_DIED=0
web_pod_running() {
    if ! proc_alive "$AGENT_PID"; then
        AGENT_DIED=1
        return 0 # stop waiting
    fi
    local line
    line="$(rk_pods json 2>/dev/null | jq -r '
        .items[]?
        | select(.metadata.namespace == "default"
                 and (.metadata.name == "web" or (.metadata.name | startswith("web-"))))
        | "\(.metadata.name) \(.status.phase // "-") \(.status.podIP // "")"' 2>/dev/null | head -n1)" || true
    read -r POD_NAME POD_PHASE POD_IP <<<"$line" || true
    [ "$POD_PHASE" = "Running" ] && [ -n "$POD_IP" ]
}

log "step 5/5: waiting up to ${TIMEOUT}s for pod default/web to be Running with an IP"
if ! wait_for "pod default/web Running with an IP" "$TIMEOUT" web_pod_running || [ "$AGENT_DIED" = 1 ]; then
    if [ "$AGENT_DIED" = 1 ]; then
        warn "rkubelet (pid $AGENT_PID) exited; last lines of $DEMO_LOG:"
    else
        warn "pod not ready (last seen: name=${POD_NAME:-?} phase=${POD_PHASE:-?} ip=${POD_IP:-none}); rkubelet pods -o wide:"
        rk_pods wide >&2 || true
        warn "last lines of $DEMO_LOG:"
    fi
    tail -n 30 "$DEMO_LOG" >&2 || true
    [ "$AGENT_DIED" = 1 ] || warn "rkubelet is still running as pid $AGENT_PID; stop it with: kill $AGENT_PID"
    die "demo failed"
fi

rk_pods wide || true

# Only talk to a pod IP that sits on a local bridge (the CNI bridge), never to
# an address routed elsewhere.
pod_ip_is_local() {
    local ip="$1" route dev
    [[ "$ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
    route="$(ip -o route get "$ip" 2>/dev/null)" || return 1
    case "$route" in *" via "*) return 1 ;; esac
    dev="$(awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }' <<<"$route")"
    [ -n "$dev" ] && [ -d "/sys/class/net/$dev/bridge" ]
}
pod_ip_is_local "$POD_IP" ||
    die "pod IP $POD_IP is not on a local bridge; not sending traffic to it"

ANSWER=""
fetch_page() {
    ANSWER="$(curl -fsS --noproxy '*' --max-time 5 "http://$POD_IP:80/" 2>/dev/null)"
}
wait_for "http://$POD_IP:80/ to answer" 15 fetch_page ||
    die "pod $POD_NAME is Running at $POD_IP but http://$POD_IP:80/ did not answer"

echo
echo "curl http://$POD_IP:80/ (pod default/$POD_NAME) answered:"
echo "  $ANSWER"
echo
echo "rkubelet is running as pid $AGENT_PID (log: $DEMO_LOG, root dir: $ROOT_DIR)."
echo "  stop the agent:   kill $AGENT_PID    (pods keep running without it)"
echo "  stop the pod:     rm $MANIFEST_DIR/web.yaml    (while rkubelet runs)"
echo "  list pods:        $BIN --root-dir=$ROOT_DIR pods -o wide"
