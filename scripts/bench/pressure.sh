# shellcheck shell=bash disable=SC2034  # globals shared with scripts/bench.sh
# The benchmark's memory pressure phase: how fast the eviction manager reacts
# to memory.available crossing its threshold. Sourced by scripts/bench.sh
# (after its helpers: alive, nap, stamp, stop_agent); not run on its own.
#
# Twice, with --kernel-memcg-notification=true (rkubelet's default: the cgroup
# v1 eventfd notifier, a 1 s poll on v2) and =false (upstream's default: the
# next 10 s monitoring pass), a standalone rkubelet without pods runs with
# memory.available 1 GiB under what the node has; a tmpfs of the benchmark's
# own is filled 16 MiB at a time (up to 8 GiB: page cache gives way first)
# until the node's memory.available (computed as the eviction manager does)
# is under the threshold (then 256 MiB more); the figure is the time from the
# start of the crossing write to the agent's `EvictionThresholdMet`
# ("Attempting to reclaim memory") log line.
# The tmpfs is removed right after.
#
# Set before sourcing: BENCH_DIR, ROOT_DIR, CNI_CONF_DIR, NS, PAUSE_IMAGE, BIN, AGENT_DIR.

PRESSURE_DIR="$BENCH_DIR/pressure"
PRESSURE_TMPFS="$PRESSURE_DIR/tmpfs"
PRESSURE_TIMEOUT=25

# memory.available in bytes: capacity less the root cgroup's working set.
pressure_available() {
    local total usage inactive
    total="$(awk '$1 == "MemTotal:" { printf "%.0f\n", $2 * 1024 }' /proc/meminfo)"
    if [ -f /sys/fs/cgroup/memory/memory.usage_in_bytes ]; then
        usage="$(cat /sys/fs/cgroup/memory/memory.usage_in_bytes)"
        inactive="$(awk '$1 == "total_inactive_file" { print $2 }' /sys/fs/cgroup/memory/memory.stat)"
    else
        usage="$(awk '$1 == "MemTotal:" { t = $2 } $1 == "MemFree:" { f = $2 } END { printf "%.0f\n", (t - f) * 1024 }' /proc/meminfo)"
        inactive="$(awk '$1 == "Inactive(file):" { printf "%.0f\n", $2 * 1024 }' /proc/meminfo)"
    fi
    echo $((total - (usage - inactive)))
}

pressure_cleanup() {
    if mountpoint -q "$PRESSURE_TMPFS" 2>/dev/null; then umount "$PRESSURE_TMPFS" || true; fi
}

# pressure_measure NOTIFY: prints the reaction in µs ("" when none was seen).
pressure_measure() {
    local notify="$1" threshold log pidfile t_cross="" line ts i
    log="$AGENT_DIR/agent-pressure-$notify.log"
    pidfile="$PRESSURE_DIR/agent.pid"
    threshold=$(($(pressure_available) - (1 << 30)))
    mkdir -p "$PRESSURE_DIR/manifests" "$PRESSURE_TMPFS"
    : >"$log"
    start_daemon rkubelet-pressure "$pidfile" "$log" "$BIN" \
        --pod-manifest-path "$PRESSURE_DIR/manifests" --root-dir "$ROOT_DIR" --cni-conf-dir "$CNI_CONF_DIR" \
        --pod-infra-container-image "$PAUSE_IMAGE" --hostname-override "$NODE_NAME" --runtime-namespace "$NS" \
        --eviction-hard "memory.available<$threshold" --kernel-memcg-notification="$notify" --image-gc-high-threshold 100 --healthz-port 0 >&2
    AGENT_PID="$RK_DAEMON_PID"
    RK_WAIT_INTERVAL=0.1 wait_for "rkubelet (pressure) ready" 30 grep -q 'agent ready' "$log" >&2 || { stop_agent; return 1; }
    # One pass done and the notifier armed.
    nap 2
    mount -t tmpfs -o size=9g rk-bench-pressure "$PRESSURE_TMPFS" || { stop_agent; return 1; }
    local t0
    for ((i = 1; i <= 512; i++)); do
        stamp t0
        dd if=/dev/zero of="$PRESSURE_TMPFS/fill" bs=1M count=16 oflag=append conv=notrunc status=none
        if [ "$(pressure_available)" -lt "$threshold" ]; then
            # Crossed during this chunk: timed from its start (an upper bound).
            t_cross="$t0"
            # Well past it, so that the pressure does not hover at the line.
            dd if=/dev/zero of="$PRESSURE_TMPFS/fill" bs=1M count=256 oflag=append conv=notrunc status=none
            break
        fi
    done
    line=""
    if [ -n "$t_cross" ]; then
        for ((i = 0; i < PRESSURE_TIMEOUT * 10; i++)); do
            line="$(grep -m1 'Attempting to reclaim memory' "$log" || true)"
            [ -n "$line" ] && break
            nap 0.1
        done
    fi
    pressure_cleanup
    stop_agent
    [ -n "$line" ] || return 0
    ts="$(date -d "${line%%Z*}Z" +%s%6N 2>/dev/null)" || return 0
    echo $((ts - t_cross))
}

PRESSURE_FAST=""
PRESSURE_POLL=""
pressure_phase() {
    log "memory pressure: reaction to memory.available crossing its threshold (notifier on, then off)"
    PRESSURE_FAST="$(pressure_measure true || true)"
    PRESSURE_POLL="$(pressure_measure false || true)"
    pressure_cleanup
    log "memory pressure: ${PRESSURE_FAST:-none} µs with the notifier, ${PRESSURE_POLL:-none} µs with the 10 s pass"
}

pressure_report() {
    local fast="-" poll="-" r="-"
    [ -n "$PRESSURE_FAST" ] && fast="$(awk -v u="$PRESSURE_FAST" 'BEGIN { printf "%.3f", u / 1e6 }')"
    [ -n "$PRESSURE_POLL" ] && poll="$(awk -v u="$PRESSURE_POLL" 'BEGIN { printf "%.3f", u / 1e6 }')"
    if [ -n "$PRESSURE_FAST" ] && [ -n "$PRESSURE_POLL" ] && [ "$PRESSURE_POLL" -gt 0 ]; then
        r="$(awk -v a="$PRESSURE_FAST" -v b="$PRESSURE_POLL" 'BEGIN { printf "%.3fx", a / b }')"
    fi
    echo
    printf '%-30s %10s %14s %8s %10s\n' "memory pressure reaction" "rkubelet s" "10 s pass s" "ratio" "target"
    printf '%-30s %10s %14s %8s %10s\n' "threshold crossed -> reclaim" "$fast" "$poll" "$r" "<= 2 s"
    echo "  the 10 s pass is upstream's default (kernelMemcgNotification: false); a single sample each, the pass lands anywhere in 0-10 s"
}
