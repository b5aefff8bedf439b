# shellcheck shell=bash
# The benchmark floor: what starting a pod costs with standard tools and no
# agent. Sourced by scripts/bench.sh, not run on its own.
#
# One pod = the steps rkubelet performs, driven by hand:
#   1. ip netns add <id>
#   2. the CNI chain by executing the plugin binaries: loopback on lo, then every
#      plugin of the conflist on eth0 (bridge, portmap), each later plugin gets
#      the previous result as prevResult
#   3. ctr run -d the pause container in that netns (/pause -P, no I/O)
#   4. ctr run -d the app container (busybox `sleep 3600`, output to a log file)
#      in the network, IPC and UTS namespaces of the pause process
# `ctr run -d` returns once the task is started, so a pod is up when step 4
# returns; bench.sh then checks with `ctr task ls` that the app task is RUNNING.
#
# Nothing in floor_pod_up calls jq or another helper process: the plugin
# configurations are prepared once by floor_init, prevResult is spliced in
# with bash string operations, and the pause PID is read from the shim's
# init.pid file (`ctr task ls` only when that file is missing).
#
# Set before floor_init:
#   FLOOR_NS        containerd namespace
#   FLOOR_CONFLIST  the CNI conflist (the agent uses the same one)
#   FLOOR_CNI_PATH  CNI plugin directories, colon separated
#   FLOOR_DIR       state directory (CNI results, app logs, error output)
#   FLOOR_PAUSE_IMAGE, FLOOR_APP_IMAGE
#   FLOOR_SYSTEMD   1: runc's systemd cgroup driver, each container a
#                   transient scope system.slice/benchfloor-<name>.scope
#                   (the agent's systemd driver does the same through runc)
# IDs must start with FLOOR_PREFIX (benchfloor-); they name the netns and,
# with -pause / -app appended, the containers.

FLOOR_PREFIX="benchfloor-"
FLOOR_IFNAME="eth0"
FLOOR_TASK_DIR="/run/containerd/io.containerd.runtime.v2.task"

# floor_find_plugin TYPE: the plugin binary's path in FLOOR_CNI_PATH.
floor_find_plugin() {
    local dir
    local -a dirs
    IFS=: read -r -a dirs <<<"$FLOOR_CNI_PATH"
    for dir in "${dirs[@]}"; do
        if [ -x "$dir/$1" ]; then
            printf '%s\n' "$dir/$1"
            return 0
        fi
    done
    return 1
}

# floor_init: reads FLOOR_CONFLIST once and prepares every plugin's stdin.
floor_init() {
    local version name count i type
    version="$(jq -er '.cniVersion' "$FLOOR_CONFLIST")" || { warn "floor: no cniVersion in $FLOOR_CONFLIST"; return 1; }
    name="$(jq -er '.name' "$FLOOR_CONFLIST")" || { warn "floor: no name in $FLOOR_CONFLIST"; return 1; }
    count="$(jq -er '.plugins | length' "$FLOOR_CONFLIST")" || return 1
    FLOOR_LO_BIN="$(floor_find_plugin loopback)" || { warn "floor: loopback plugin not in $FLOOR_CNI_PATH"; return 1; }
    FLOOR_LO_CONF="$(jq -cn --arg v "$version" '{cniVersion: $v, name: "cni-loopback", type: "loopback"}')"
    FLOOR_PLUGIN_BIN=()
    FLOOR_PLUGIN_CONF=()
    for ((i = 0; i < count; i++)); do
        type="$(jq -er ".plugins[$i].type" "$FLOOR_CONFLIST")" || return 1
        FLOOR_PLUGIN_BIN[i]="$(floor_find_plugin "$type")" || { warn "floor: CNI plugin $type not in $FLOOR_CNI_PATH"; return 1; }
        # One line ending in "}" (prevResult is spliced in before it).
        FLOOR_PLUGIN_CONF[i]="$(jq -c --arg v "$version" --arg n "$name" ".plugins[$i] + {cniVersion: \$v, name: \$n}" "$FLOOR_CONFLIST")" || return 1
    done
    [ "$count" -gt 0 ] || { warn "floor: $FLOOR_CONFLIST has no plugins"; return 1; }
    mkdir -p "$FLOOR_DIR"
}

# floor_cni CMD ID IFNAME BIN CONF: runs one plugin; its stdout is the result.
floor_cni() {
    CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/var/run/netns/$2" CNI_IFNAME="$3" \
        CNI_PATH="$FLOOR_CNI_PATH" "$4" <<<"$5"
}

# floor_pod_up ID: one pod, steps 1-4. Messages go to stderr; returns non-zero
# at the first failing step. Keep this free of helper processes.
floor_pod_up() {
    local id="$1" i conf result="" pid=""
    local -a cg_pause=() cg_app=()
    if [ "${FLOOR_SYSTEMD:-0}" = 1 ]; then
        cg_pause=(--runc-systemd-cgroup --cgroup "system.slice:benchfloor:$id-pause")
        cg_app=(--runc-systemd-cgroup --cgroup "system.slice:benchfloor:$id-app")
    fi
    ip netns add "$id" || { echo "floor $id: ip netns add failed" >&2; return 1; }
    floor_cni ADD "$id" lo "$FLOOR_LO_BIN" "$FLOOR_LO_CONF" >/dev/null ||
        { echo "floor $id: loopback ADD failed" >&2; return 1; }
    for i in "${!FLOOR_PLUGIN_BIN[@]}"; do
        conf="${FLOOR_PLUGIN_CONF[i]}"
        if [ -n "$result" ]; then
            conf="${conf%\}},\"prevResult\":$result}"
        fi
        result="$(floor_cni ADD "$id" "$FLOOR_IFNAME" "${FLOOR_PLUGIN_BIN[i]}" "$conf")" ||
            { echo "floor $id: ${FLOOR_PLUGIN_BIN[i]##*/} ADD failed: $result" >&2; return 1; }
    done
    printf '%s\n' "$result" >"$FLOOR_DIR/$id.cni.json"
    ctr -n "$FLOOR_NS" run -d --null-io --with-ns "network:/var/run/netns/$id" "${cg_pause[@]}" \
        "$FLOOR_PAUSE_IMAGE" "$id-pause" /pause -P >/dev/null ||
        { echo "floor $id: ctr run pause failed" >&2; return 1; }
    if [ -r "$FLOOR_TASK_DIR/$FLOOR_NS/$id-pause/init.pid" ]; then
        pid="$(<"$FLOOR_TASK_DIR/$FLOOR_NS/$id-pause/init.pid")"
    fi
    if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
        pid="$(ctr -n "$FLOOR_NS" task ls | awk -v c="$id-pause" '$1 == c { print $2 }')"
    fi
    [[ "$pid" =~ ^[0-9]+$ ]] || { echo "floor $id: no PID for the pause task" >&2; return 1; }
    ctr -n "$FLOOR_NS" run -d --log-uri "file://$FLOOR_DIR/$id-app.log" \
        --with-ns "network:/proc/$pid/ns/net" --with-ns "ipc:/proc/$pid/ns/ipc" \
        --with-ns "uts:/proc/$pid/ns/uts" "${cg_app[@]}" \
        "$FLOOR_APP_IMAGE" "$id-app" sleep 3600 >/dev/null ||
        { echo "floor $id: ctr run app failed" >&2; return 1; }
}

# floor_running_count ID...: how many of the pods' app tasks are RUNNING.
floor_running_count() {
    local tasks id n=0
    tasks="$(timeout 20 ctr -n "$FLOOR_NS" task ls 2>/dev/null)" || true
    for id in "$@"; do
        if awk -v c="$id-app" '$1 == c && $3 == "RUNNING" { found = 1 } END { exit !found }' <<<"$tasks"; then
            n=$((n + 1))
        fi
    done
    echo "$n"
}

# floor_pod_down ID: removes whatever exists of the pod (best effort, every
# step bounded): tasks, containers with their snapshots, CNI DEL in reverse
# order with the saved result as prevResult, the netns, the pod's files.
floor_pod_down() {
    local id="$1" c i conf prev="" bins=() confs=()
    case "$id" in "$FLOOR_PREFIX"*) ;; *) return 1 ;; esac
    for c in "$id-app" "$id-pause"; do
        timeout 30 ctr -n "$FLOOR_NS" task rm -f "$c" >/dev/null 2>&1 || true
        timeout 30 ctr -n "$FLOOR_NS" containers rm "$c" >/dev/null 2>&1 || true
    done
    if [ -s "$FLOOR_DIR/$id.cni.json" ]; then
        prev="$(<"$FLOOR_DIR/$id.cni.json")"
    fi
    if [ -e "/var/run/netns/$id" ] || [ -n "$prev" ]; then
        bins=("${FLOOR_PLUGIN_BIN[@]}")
        confs=("${FLOOR_PLUGIN_CONF[@]}")
        for ((i = ${#bins[@]} - 1; i >= 0; i--)); do
            conf="${confs[i]}"
            if [ -n "$prev" ]; then
                conf="${conf%\}},\"prevResult\":$prev}"
            fi
            CNI_COMMAND=DEL CNI_CONTAINERID="$id" CNI_NETNS="/var/run/netns/$id" CNI_IFNAME="$FLOOR_IFNAME" \
                CNI_PATH="$FLOOR_CNI_PATH" timeout 30 "${bins[i]}" <<<"$conf" >/dev/null 2>&1 ||
                echo "floor $id: ${bins[i]##*/} DEL failed" >&2
        done
        if [ -e "/var/run/netns/$id" ]; then
            CNI_COMMAND=DEL CNI_CONTAINERID="$id" CNI_NETNS="/var/run/netns/$id" CNI_IFNAME=lo \
                CNI_PATH="$FLOOR_CNI_PATH" timeout 30 "$FLOOR_LO_BIN" <<<"$FLOOR_LO_CONF" >/dev/null 2>&1 || true
            ip netns del "$id" 2>/dev/null || echo "floor $id: ip netns del failed" >&2
        fi
    fi
    rm -f "$FLOOR_DIR/$id.cni.json" "$FLOOR_DIR/$id-app.log" "$FLOOR_DIR/$id.err"
}

# floor_leftover_ids: IDs of floor pods that still have a container or netns.
floor_leftover_ids() {
    {
        timeout 20 ctr -n "$FLOOR_NS" containers ls -q 2>/dev/null | sed -n "s/^\(${FLOOR_PREFIX}.*\)-\(pause\|app\)\$/\1/p"
        ip netns list 2>/dev/null | awk -v p="$FLOOR_PREFIX" 'index($1, p) == 1 { print $1 }'
    } | sort -u
}

# floor_down_all ID...: floor_pod_down for every ID, in parallel (bounded by
# the timeouts in floor_pod_down).
floor_down_all() {
    local id pids=() p
    for id in "$@"; do
        floor_pod_down "$id" &
        pids+=("$!")
    done
    for p in "${pids[@]}"; do
        wait "$p" || true
    done
}
