# shellcheck shell=bash disable=SC2034,SC2153  # globals shared with scripts/bench.sh
# The benchmark's API phase: rkubelet joined to the in-repo test API server
# (tests/apiserver, binary rk-apiserver), pods created with kubectl, their
# Ready condition observed through a watch. Sourced by scripts/bench.sh (after
# its helpers: alive, nap, stamp, median, proc_status_kib, cpu_window,
# kill_jobs, stop_agent); not run on its own.
#
#   1. rk-apiserver --port 0 (a free port on 127.0.0.1) --state-dir API_STATE
#      --node-kubeconfig bench-api:API_NODE_KC (user system:node:bench-api,
#      group system:nodes)
#   2. one watch for the whole phase: kubectl get pods --watch
#      --output-watch-events -o json | jq, one line per event into API_EVENTS:
#      "<µs since the epoch when seen>\t<ADDED|MODIFIED|DELETED>\t<name>\t<ready|->"
#   3. rkubelet --kubeconfig API_NODE_KC --hostname-override bench-api (same
#      containerd namespace, CNI conflist and root dir as the standalone
#      phase; --pod-manifest-path an empty dir); wait for Node Ready
#   4. one untimed warm-up pod, then RUNS times: create 1 pod, time until
#      the watch shows Ready=True; delete it, wait for its DELETED event
#   5. PODS pods in one `kubectl create -f` (one file of YAML documents;
#      a kind: List would need /openapi/v2 for kubectl's client-side
#      validation, which the test server does not serve): each pod's Ready time
#      from the watch (p50, last); RSS and CPU with them; `kubectl delete pods
#      --all`, time until the last DELETED event (then the list must be empty)
#   6. the server's request log (SIGUSR1 writes API_STATE/requests.json)
#      before and after steps 4 and 5: the node's requests per pod by verb and
#      resource
#
# Times are measured from just before the kubectl call to the moment jq sees
# the event (jq's `now`); kubectl's own start-up (~0.1-0.2 s) is included.
#
# Set before sourcing: BENCH_DIR, AGENT_DIR, ROOT_DIR, MANIFEST_DIR, POD_LOGS_DIR,
# CNI_CONF_DIR, NS, PAUSE_IMAGE, APP_IMAGE, BIN, APISERVER_BIN, KUBECTL,
# ONE_POD_TIMEOUT, MANY_PODS_TIMEOUT, TEARDOWN_TIMEOUT.

API_NODE="bench-api"
API_K8S_NS="default"
API_DIR="$BENCH_DIR/api"
API_STATE="$API_DIR/server"
API_ADMIN_KC="$API_STATE/admin.conf"
API_NODE_KC="$API_STATE/node-$API_NODE.conf"
API_LOG="$API_DIR/apiserver.log"
API_PIDFILE="$API_DIR/apiserver.pid"
API_FIFO="$API_DIR/watch.fifo"
API_EVENTS="$API_DIR/watch.tsv"
API_KUBE_CACHE="$API_DIR/kube-cache"
API_WORK="$API_DIR/work"
API_AGENT_LOG="$AGENT_DIR/agent-api.log"
API_CPU_SECS=5
API_NODE_TIMEOUT=60

APISERVER_PID=""
API_WATCH_PID=""
API_JQ_PID=""

# api_kubectl ARGS...: kubectl as the cluster admin, bounded in time, with its
# discovery cache under API_DIR (nothing is left in ~/.kube).
api_kubectl() {
    timeout 60 "$KUBECTL" --kubeconfig "$API_ADMIN_KC" --cache-dir "$API_KUBE_CACHE" --request-timeout 30s "$@"
}

# api_server_up: the API server we started answers.
api_server_up() {
    [ -n "$APISERVER_PID" ] && alive "$APISERVER_PID" && [ -s "$API_ADMIN_KC" ]
}

# api_start_server: starts rk-apiserver on a free port; sets APISERVER_PID, API_URL.
api_start_server() {
    local i
    mkdir -p "$API_STATE" "$API_WORK" "$API_KUBE_CACHE"
    : >"$API_LOG"
    start_daemon rk-apiserver "$API_PIDFILE" "$API_LOG" "$APISERVER_BIN" \
        --port 0 --state-dir "$API_STATE" --node-kubeconfig "$API_NODE:$API_NODE_KC"
    APISERVER_PID="$RK_DAEMON_PID"
    API_URL=""
    for ((i = 0; i < 200; i++)); do
        API_URL="$(sed -n 's|^rk-apiserver: serving \(https://127\.0\.0\.1:[0-9]*\) .*|\1|p' "$API_LOG")"
        [ -n "$API_URL" ] && break
        alive "$APISERVER_PID" || break
        nap 0.1
    done
    if [ -z "$API_URL" ] || [ ! -s "$API_NODE_KC" ]; then
        tail -n 20 "$API_LOG" >&2
        die "rk-apiserver did not start (log: $API_LOG)"
    fi
}

# api_stop_server: SIGTERM (it writes requests.json, violations.json and its
# state), SIGKILL after 15 s.
api_stop_server() {
    local i
    [ -n "$APISERVER_PID" ] || return 0
    kill -TERM "$APISERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 75; i++)); do
        alive "$APISERVER_PID" || break
        nap 0.2
    done
    if alive "$APISERVER_PID"; then
        warn "rk-apiserver (pid $APISERVER_PID) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$APISERVER_PID" 2>/dev/null || true
    fi
    wait "$APISERVER_PID" 2>/dev/null || true
    APISERVER_PID=""
    rm -f "$API_PIDFILE"
}

# api_start_watch: kubectl's watch on the pods piped (through a FIFO, so that
# both PIDs are ours) into jq, which stamps every event as it arrives.
api_start_watch() {
    : >"$API_EVENTS"
    rm -f "$API_FIFO"
    mkfifo "$API_FIFO"
    # shellcheck disable=SC2016  # jq program
    jq --unbuffered -r '
        (now * 1e6 | floor) as $t
        | ([.object.status.conditions[]? | select(.type == "Ready") | .status][0] == "True") as $ready
        | [$t, .type, .object.metadata.name, (if $ready then "ready" else "-" end)] | @tsv' \
        <"$API_FIFO" >"$API_EVENTS" 2>"$API_DIR/watch-jq.err" &
    API_JQ_PID=$!
    "$KUBECTL" --kubeconfig "$API_ADMIN_KC" --cache-dir "$API_KUBE_CACHE" get pods -n "$API_K8S_NS" \
        --watch --output-watch-events -o json >"$API_FIFO" 2>"$API_DIR/watch-kubectl.err" &
    API_WATCH_PID=$!
}

api_stop_watch() {
    local p
    for p in "$API_WATCH_PID" "$API_JQ_PID"; do
        [ -n "$p" ] || continue
        kill_jobs "$p"
        wait "$p" 2>/dev/null || true
    done
    API_WATCH_PID=""
    API_JQ_PID=""
    rm -f "$API_FIFO"
}

# api_watch_running: the watch has a request open on the server (from its log).
api_watch_running() {
    alive "$API_WATCH_PID" || return 1
    api_dump "$API_WORK/watch-check.json" || return 1
    jq -e 'any(.[]; .verb == "watch" and .resource == "pods" and .user == "kubernetes-admin")' \
        "$API_WORK/watch-check.json" >/dev/null
}

# api_dump FILE: the server's request log so far (SIGUSR1 -> requests.json).
api_dump() {
    local i
    rm -f "$API_STATE/requests.json"
    kill -USR1 "$APISERVER_PID" 2>/dev/null || return 1
    for ((i = 0; i < 100; i++)); do
        if [ -s "$API_STATE/requests.json" ]; then
            mv "$API_STATE/requests.json" "$1"
            return 0
        fi
        nap 0.05
    done
    warn "rk-apiserver wrote no request log within 5 s"
    return 1
}

# api_failed MSG: what the API and the agent show, then die.
api_failed() {
    warn "$1"
    api_kubectl get pods -n "$API_K8S_NS" -o wide >&2 || true
    timeout 10 "$BIN" pods --root-dir "$ROOT_DIR" -o wide >&2 || true
    die "rkubelet (API phase): $1 (logs: $API_AGENT_LOG, $API_LOG)"
}

# api_pod_yaml NAME: one pod bound to the bench node.
api_pod_yaml() {
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels:
    app: rkubelet-bench
spec:
  nodeName: $API_NODE
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: $APP_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
EOF
}

# api_event_times KIND NAME...: "name µs" for each NAME whose first KIND event
# (ready: Ready=True in an ADDED/MODIFIED event; added; deleted) is in the log.
api_event_times() {
    local kind="$1"
    shift
    awk -F'\t' -v kind="$kind" -v names="$*" '
        BEGIN { n = split(names, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
        ($3 in want) && !(($3) in seen) &&
        ((kind == "ready" && $2 != "DELETED" && $4 == "ready") ||
         (kind == "added" && $2 == "ADDED") || (kind == "deleted" && $2 == "DELETED")) {
            seen[$3] = 1; print $3, $1 }' "$API_EVENTS"
}

# api_wait_events KIND TIMEOUT INTERVAL NAME...: waits until every NAME has a
# KIND event; sets API_TIMES (µs per name, in the order found).
# api_ready_lag NAMES...: for each pod, ms from its last container start (the
# agent's "Container started" event line, timestamped by its log) to the watch
# seeing the pod Ready; prints a JSON array of the lags.
api_ready_lag() {
    local ready started
    ready="$(api_event_times ready "$@" | jq -R -s '[split("\n")[] | select(length > 0) | split(" ") | {(.[0]): (.[1] | tonumber)}] | add // {}')"
    started="$(sed -nE 's/^([0-9T:.-]+Z) .*Container started pod='"$API_K8S_NS"'\/([^ ]+) .*reason=Started.*/\2 \1/p' "$API_AGENT_LOG" |
        jq -R -s '[split("\n")[] | select(length > 0) | split(" ")
                   | {name: .[0], us: ((.[1] | sub("\\.[0-9]+Z$"; "Z") | fromdateiso8601) * 1000000
                                     + ((.[1] | capture("\\.(?<f>[0-9]+)Z$").f // "0") + "000000" | .[0:6] | tonumber))}]
                  | group_by(.name) | map({(.[0].name): (map(.us) | max)}) | add // {}')"
    jq -n --argjson r "$ready" --argjson s "$started" '[$r | to_entries[] | select($s[.key]) | ((.value - $s[.key]) / 1000 | round)]'
}

api_wait_events() {
    local kind="$1" timeout="$2" interval="$3" deadline now out
    shift 3
    stamp now
    deadline=$((now + timeout * 1000000))
    while :; do
        out="$(api_event_times "$kind" "$@")"
        mapfile -t API_TIMES < <(printf '%s\n' "$out" | awk 'NF == 2 { print $2 }')
        [ "${#API_TIMES[@]}" -ge "$#" ] && return 0
        alive "$API_WATCH_PID" || api_failed "the pod watch (kubectl) ended: $(cat "$API_DIR/watch-kubectl.err" 2>/dev/null)"
        alive "$AGENT_PID" || api_failed "rkubelet exited"
        stamp now
        [ "$now" -lt "$deadline" ] || api_failed "only ${#API_TIMES[@]} of $# pods $kind after ${timeout}s"
        nap "$interval"
    done
}

# api_one NAME: creates one pod; sets LAST_US (create -> Ready seen),
# FROM_ADDED_US (its ADDED event -> Ready seen), CREATE_US (kubectl create returned).
api_one() {
    local name="$1" t0 t1
    api_pod_yaml "$name" >"$API_WORK/$name.yaml"
    stamp t0
    api_kubectl create -f "$API_WORK/$name.yaml" >/dev/null || api_failed "kubectl create $name failed"
    stamp t1
    CREATE_US=$((t1 - t0))
    api_wait_events ready "$ONE_POD_TIMEOUT" 0.05 "$name"
    LAST_US=$((API_TIMES[0] - t0))
    api_wait_events added 5 0.05 "$name"
    FROM_ADDED_US=$((t0 + LAST_US - API_TIMES[0]))
}

# api_delete NAME...: deletes the pods (kubectl delete --wait=false, or --all
# for "--all"); sets LAST_US (until the last DELETED event).
api_delete() {
    local t0 t1 max=0 t
    local -a names=("$@")
    stamp t0
    if [ "$1" = --all ]; then
        names=("${API_MANY_NAMES[@]}")
        api_kubectl delete pods --all -n "$API_K8S_NS" --wait=false >/dev/null || api_failed "kubectl delete pods --all failed"
    else
        api_kubectl delete pods -n "$API_K8S_NS" --wait=false "$@" >/dev/null || api_failed "kubectl delete $* failed"
    fi
    api_wait_events deleted "$TEARDOWN_TIMEOUT" 0.1 "${names[@]}"
    for t in "${API_TIMES[@]}"; do [ "$t" -gt "$max" ] && max="$t"; done
    LAST_US=$((max - t0))
    # The list must agree with the watch.
    for ((t1 = 0; t1 < 50; t1++)); do
        [ -z "$(api_kubectl get pods -n "$API_K8S_NS" -o name 2>/dev/null)" ] && return 0
        nap 0.1
    done
    api_failed "pods still listed after their DELETED events"
}

# api_requests BEFORE AFTER: the node's requests between two dumps, by
# "verb resource[/subresource]" (JSON object of counts).
api_requests() {
    jq -n --slurpfile a "$1" --slurpfile b "$2" --arg user "system:node:$API_NODE" '
        ($a[0] | length) as $n
        | [$b[0][$n:][] | select(.user == $user)
           | .verb + " " + (if .resource == "" then .path else .resource end)
                   + (if .subresource != "" then "/" + .subresource else "" end)]
        | group_by(.) | map({key: .[0], value: length}) | from_entries'
}

# api_request_errors BEFORE AFTER: the node's requests answered >= 400 between two dumps.
api_request_errors() {
    jq -n --slurpfile a "$1" --slurpfile b "$2" --arg user "system:node:$API_NODE" '
        ($a[0] | length) as $n
        | [$b[0][$n:][] | select(.user == $user and .code >= 400)
           | "\(.verb) \(.resource)\(if .subresource != "" then "/" + .subresource else "" end) \(.code)"]
        | group_by(.) | map({key: .[0], value: length}) | from_entries'
}

# api_cleanup: pods removed through the API (while the agent and the server
# run), the agent stopped, the watch and the server stopped; state removed
# (the logs and the server's request log are kept).
api_cleanup() {
    local i left
    if [ -n "${AGENT_PID:-}" ] && alive "$AGENT_PID" && api_server_up; then
        left="$(api_kubectl get pods -n "$API_K8S_NS" -o name 2>/dev/null || true)"
        if [ -n "$left" ]; then
            log "API phase: deleting $(wc -l <<<"$left") pod(s) through the API"
            api_kubectl delete pods --all -n "$API_K8S_NS" --wait=false >/dev/null 2>&1 || true
            for ((i = 0; i < 120; i++)); do
                [ -z "$(api_kubectl get pods -n "$API_K8S_NS" -o name 2>/dev/null)" ] && break
                alive "$AGENT_PID" || break
                nap 0.5
            done
        fi
    fi
    # The agent cannot remove pods the API still holds: do not wait long for it.
    STOP_AGENT_WAIT=20 stop_agent
    api_stop_watch
    if [ -n "$APISERVER_PID" ]; then
        api_stop_server
        [ -s "$API_STATE/requests.json" ] && mv -f "$API_STATE/requests.json" "$API_DIR/requests.json"
        [ -s "$API_STATE/violations.json" ] && mv -f "$API_STATE/violations.json" "$API_DIR/violations.json"
    fi
    rm -rf "$API_STATE" "$API_WORK" "$API_KUBE_CACHE" "$API_FIFO"
}

# api_wait_node_ready: until the Node reports Ready=True; sets API_NODE_READY_US
# (from the agent's start).
api_wait_node_ready() {
    local t0="$1" now deadline st
    deadline=$((t0 + API_NODE_TIMEOUT * 1000000))
    while :; do
        st="$(api_kubectl get node "$API_NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
        stamp now
        if [ "$st" = True ]; then
            API_NODE_READY_US=$((now - t0))
            return 0
        fi
        alive "$AGENT_PID" || api_failed "rkubelet exited before its Node was Ready"
        [ "$now" -lt "$deadline" ] || api_failed "Node $API_NODE not Ready after ${API_NODE_TIMEOUT}s (Ready: ${st:-none})"
        nap 0.2
    done
}

# api_phase: steps 1-6; sets the API_* figures and API_JSON.
api_phase() {
    local r t0 t1 t max=0 name
    local -a times=()
    API_ONE=() API_ONE_ADDED=() API_ONE_CREATE=() API_ONE_DELETE=()
    log "API phase: starting rk-apiserver ($APISERVER_BIN)"
    mkdir -p "$API_DIR"
    rm -f "$API_DIR/requests.json" "$API_DIR/violations.json"
    api_start_server
    log "API phase: rk-apiserver on $API_URL (pid $APISERVER_PID); pod watch through kubectl"
    api_start_watch
    : >"$API_AGENT_LOG"
    CUR_AGENT_LOG="$API_AGENT_LOG"
    stamp t0
    start_daemon rkubelet "$AGENT_PIDFILE" "$API_AGENT_LOG" "$BIN" \
        --kubeconfig "$API_NODE_KC" --hostname-override "$API_NODE" \
        --pod-manifest-path "$MANIFEST_DIR" --root-dir "$ROOT_DIR" --cni-conf-dir "$CNI_CONF_DIR" \
        --pod-infra-container-image "$PAUSE_IMAGE" --runtime-namespace "$NS" --pod-logs-dir "$POD_LOGS_DIR"
    AGENT_PID="$RK_DAEMON_PID"
    api_wait_node_ready "$t0"
    log "API phase: Node $API_NODE Ready $(us_to_s "$API_NODE_READY_US") s after rkubelet started (pid $AGENT_PID)"
    RK_WAIT_INTERVAL=0.2 wait_for "kubectl's pod watch on the server" 15 api_watch_running ||
        api_failed "kubectl's pod watch is not open on the server ($(cat "$API_DIR/watch-kubectl.err" 2>/dev/null))"
    nap 1
    RSS_API_IDLE_KIB="$(proc_status_kib "$AGENT_PID" VmRSS)"
    api_dump "$API_WORK/r0.json" || api_failed "no request log from rk-apiserver"

    log "API phase: warm-up pod (untimed), then $RUNS x 1 pod"
    api_one api-warm
    api_delete api-warm
    for ((r = 1; r <= RUNS; r++)); do
        api_one "api-one$r"
        API_ONE+=("$LAST_US")
        API_ONE_ADDED+=("$FROM_ADDED_US")
        API_ONE_CREATE+=("$CREATE_US")
        api_delete "api-one$r"
        API_ONE_DELETE+=("$LAST_US")
        log "API phase: 1 pod, run $r/$RUNS: create -> Ready $(us_to_s "${API_ONE[-1]}") s (ADDED -> Ready $(us_to_s "$FROM_ADDED_US") s), delete -> gone $(us_to_s "$LAST_US") s"
    done
    api_dump "$API_WORK/r1.json" || api_failed "no request log from rk-apiserver"
    stamp API_T_R1

    API_MANY_NAMES=()
    for ((r = 1; r <= PODS; r++)); do
        printf -v name 'api-many-%02d' "$r"
        API_MANY_NAMES+=("$name")
    done
    # One file, one `kubectl create -f`; YAML documents rather than a kind: List,
    # which kubectl validates against /openapi/v2 (the test server has only v3).
    for name in "${API_MANY_NAMES[@]}"; do
        echo "---"
        api_pod_yaml "$name"
    done >"$API_WORK/many.yaml"
    log "API phase: $PODS pods in one kubectl create"
    read -r API_CPU0_SELF API_CPU0_CHILD < <(proc_ticks "$AGENT_PID")
    stamp t0
    api_kubectl create -f "$API_WORK/many.yaml" >/dev/null || api_failed "kubectl create of $PODS pods failed"
    stamp t1
    API_MANY_CREATE_US=$((t1 - t0))
    api_wait_events ready "$MANY_PODS_TIMEOUT" 0.1 "${API_MANY_NAMES[@]}"
    read -r API_CPU1_SELF API_CPU1_CHILD < <(proc_ticks "$AGENT_PID")
    for t in "${API_TIMES[@]}"; do
        times+=($((t - t0)))
        [ "$t" -gt "$max" ] && max="$t"
    done
    API_MANY_TIMES=("${times[@]}")
    API_MANY_P50="$(median "${times[@]}")"
    API_MANY_LAST=$((max - t0))
    API_READY_LAG="$(api_ready_lag "${API_MANY_NAMES[@]}")"
    log "API phase: $PODS pods Ready: p50 $(us_to_s "$API_MANY_P50") s, last $(us_to_s "$API_MANY_LAST") s (kubectl create returned after $(us_to_s "$API_MANY_CREATE_US") s); CPU and RSS over ${API_CPU_SECS}s"
    read -r API_CPU_MANY API_CPU_MANY_SCHED < <(cpu_window "$API_CPU_SECS")
    RSS_API_MANY_KIB="$(proc_status_kib "$AGENT_PID" VmRSS)"
    HWM_API_MANY_KIB="$(proc_status_kib "$AGENT_PID" VmHWM)"
    api_delete --all
    API_MANY_DELETE="$LAST_US"
    log "API phase: $PODS pods deleted (none listed) in $(us_to_s "$API_MANY_DELETE") s"
    # Requests the agent sends after the pods are gone count too.
    nap 2
    api_dump "$API_WORK/r2.json" || api_failed "no request log from rk-apiserver"
    stamp t1
    API_WINDOW_MANY_S="$(us_to_s $((t1 - API_T_R1)))"
    RSS_API_AFTER_KIB="$(proc_status_kib "$AGENT_PID" VmRSS)"
    API_LEAKS="$(leak_report)"

    API_REQ_ONE="$(api_requests "$API_WORK/r0.json" "$API_WORK/r1.json")"
    API_REQ_MANY="$(api_requests "$API_WORK/r1.json" "$API_WORK/r2.json")"
    API_ERR_ONE="$(api_request_errors "$API_WORK/r0.json" "$API_WORK/r1.json")"
    API_ERR_MANY="$(api_request_errors "$API_WORK/r1.json" "$API_WORK/r2.json")"

    api_cleanup
    API_AGENT_STOP="$AGENT_STOP"
    CUR_AGENT_LOG=""
    API_VIOLATIONS='[]'
    [ -s "$API_DIR/violations.json" ] && API_VIOLATIONS="$(cat "$API_DIR/violations.json")"
    API_AGENT_ERRORS="$(grep -c -E ' (ERROR|WARN) ' "$API_AGENT_LOG" || true)"
    api_json
}

# Upstream kubelet 1.36 on this kind of machine (pod create -> Ready seen
# through a watch) and the targets (half of each).
API_REF_ONE=0.85
API_REF_P50="6.6-7.0"
API_REF_LAST="6.8-7.4"
API_REF_DELETE=11.7
API_TARGET_ONE=0.425
API_TARGET_P50=3.3
API_TARGET_LAST=3.4
API_TARGET_DELETE=5.85
# Upstream's audit log, ~10 pods including crash loops: 78 get pods, 71 patch
# pods/status, i.e. about one get + one patch per status change.
API_REF_GETS=78
API_REF_PATCHES=71

# Node-level requests (not per pod): the Node, its status and its Lease.
API_NODE_KEYS_RE='^[a-z]+ (nodes|nodes/status|leases)$'

api_json() {
    API_JSON="$(jq -n \
        --argjson node_ready "$API_NODE_READY_US" \
        --argjson one "$(printf '%s\n' "${API_ONE[@]}" | jq -s .)" \
        --argjson one_added "$(printf '%s\n' "${API_ONE_ADDED[@]}" | jq -s .)" \
        --argjson one_create "$(printf '%s\n' "${API_ONE_CREATE[@]}" | jq -s .)" \
        --argjson one_delete "$(printf '%s\n' "${API_ONE_DELETE[@]}" | jq -s .)" \
        --argjson many "$(printf '%s\n' "${API_MANY_TIMES[@]}" | jq -s .)" \
        --argjson many_create "$API_MANY_CREATE_US" --argjson many_delete "$API_MANY_DELETE" \
        --argjson rss_idle "$RSS_API_IDLE_KIB" --argjson rss_many "$RSS_API_MANY_KIB" \
        --argjson hwm "$HWM_API_MANY_KIB" --argjson rss_after "$RSS_API_AFTER_KIB" \
        --argjson cpu_many "$API_CPU_MANY" --argjson cpu_many_sched "$API_CPU_MANY_SCHED" \
        --argjson start_self "$(ticks_to_ms $((API_CPU1_SELF - API_CPU0_SELF)))" \
        --argjson start_child "$(ticks_to_ms $((API_CPU1_CHILD - API_CPU0_CHILD)))" \
        --argjson req_one "$API_REQ_ONE" --argjson req_many "$API_REQ_MANY" \
        --argjson err_one "$API_ERR_ONE" --argjson err_many "$API_ERR_MANY" \
        --argjson pods_one "$((RUNS + 1))" --argjson pods "$PODS" --argjson window "$API_WINDOW_MANY_S" \
        --argjson violations "$API_VIOLATIONS" --arg leaks "$API_LEAKS" \
        --argjson log_warnings "$API_AGENT_ERRORS" --arg stop "$API_AGENT_STOP" --arg node_re "$API_NODE_KEYS_RE" \
        --argjson ref_gets "$API_REF_GETS" --argjson ref_patches "$API_REF_PATCHES" --argjson lag "$API_READY_LAG" '
        def r3: . * 1000 | round / 1000; def s: . / 1e6 | r3; def mib: . / 1024 * 10 | round / 10;
        def med: sort | if length % 2 == 1 then .[(length - 1) / 2] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
        def per($n): with_entries(select(.key | test($node_re) | not) | .value = (.value / $n * 100 | round / 100));
        def node_level: with_entries(select(.key | test($node_re)));
        {
          node: "bench-api",
          node_ready_after_start_seconds: ($node_ready | s),
          start_seconds: {
            one_pod: ($one | med | s), one_pod_runs: ($one | map(s)),
            one_pod_from_added_event: ($one_added | med | s), one_pod_kubectl_create_returned: ($one_create | med | s),
            pods_p50: ($many | med | s), pods_last: ($many | max | s), pods_each: ($many | sort | map(s)),
            pods_kubectl_create_returned: ($many_create | s)
          },
          ready_after_last_container_start_ms: {pods: ($lag | length), p50: (if ($lag | length) > 0 then ($lag | med) else null end),
                                                max: ($lag | max), over_100: ($lag | map(select(. > 100)) | length), each: ($lag | sort)},
          delete_seconds: {one_pod_runs: ($one_delete | map(s)), pods: ($many_delete | s)},
          rss_mib: {idle: ($rss_idle | mib), pods: ($rss_many | mib), peak_vmhwm: ($hwm | mib), after_delete: ($rss_after | mib)},
          cpu: {pods_ms_per_s: $cpu_many, pods_ms_per_s_schedstat: $cpu_many_sched,
                start_pods_ms_self: $start_self, start_pods_ms_children: $start_child},
          requests: {
            user: "system:node:bench-api",
            one_pod_at_a_time: {pods: $pods_one, per_pod: ($req_one | per($pods_one)), node_level: ($req_one | node_level), errors: $err_one},
            pods_at_once: {pods: $pods, window_seconds: $window, per_pod: ($req_many | per($pods)), node_level: ($req_many | node_level), errors: $err_many}
          },
          apiserver_violations: $violations,
          leftovers: $leaks,
          agent_log_warn_error_lines: $log_warnings,
          agent_stop: $stop,
          reference_kubelet: {one_pod_s: 0.85, pods_p50_s: [6.6, 7.0], pods_last_s: [6.8, 7.4], delete_pods_s: 11.7,
                              audit_about_10_pods: {get_pods: $ref_gets, patch_pods_status: $ref_patches}},
          targets: {one_pod_s_max: 0.425, pods_p50_s_max: 3.3, pods_last_s_max: 3.4, delete_pods_s_max: 5.85,
                    rss_30_pods_mib_max: 30, pod_requests_per_status_change_max: ((($ref_gets + $ref_patches) / $ref_patches) * 100 | round / 100)}
        }')"
}

# api_report: the API phase's table (stdout).
api_report() {
    local one_med added_med create_med ref_ratio rows
    one_med="$(median "${API_ONE[@]}")"
    added_med="$(median "${API_ONE_ADDED[@]}")"
    create_med="$(median "${API_ONE_CREATE[@]}")"
    echo
    printf '%-34s %10s %14s %10s %5s\n' "API pods (create -> Ready, watch)" "rkubelet" "kubelet (ref)" "target" "met"
    printf '%-34s %10s %14s %10s %5s\n' "1 pod (median of $RUNS), s" "$(us_to_s "$one_med")" "$API_REF_ONE" "<= $API_TARGET_ONE" "$(meets "$(us_to_s "$one_med")" "$API_TARGET_ONE")"
    printf '%-34s %10s %14s %10s %5s\n' "$PODS pods at once, p50, s" "$(us_to_s "$API_MANY_P50")" "$API_REF_P50" "<= $API_TARGET_P50" "$(meets "$(us_to_s "$API_MANY_P50")" "$API_TARGET_P50")"
    printf '%-34s %10s %14s %10s %5s\n' "$PODS pods at once, last, s" "$(us_to_s "$API_MANY_LAST")" "$API_REF_LAST" "<= $API_TARGET_LAST" "$(meets "$(us_to_s "$API_MANY_LAST")" "$API_TARGET_LAST")"
    local lag_max
    lag_max="$(jq -r '.ready_after_last_container_start_ms.max // "-"' <<<"$API_JSON")"
    printf '%-34s %10s %14s %10s %5s\n' "Ready after last start, max ms" "$lag_max" "-" "<= 100" "$(meets "$lag_max" 100)"
    printf '%-34s %10s %14s %10s %5s\n' "delete $PODS pods (none listed), s" "$(us_to_s "$API_MANY_DELETE")" "$API_REF_DELETE" "<= $API_TARGET_DELETE" "$(meets "$(us_to_s "$API_MANY_DELETE")" "$API_TARGET_DELETE")"
    printf '%-34s %10s %14s %10s %5s\n' "RSS with $PODS API pods, MiB" "$(kib_to_mib "$RSS_API_MANY_KIB")" "97-100" "<= 30" "$(meets "$(kib_to_mib "$RSS_API_MANY_KIB")" 30)"
    echo "  1-pod runs [$(list_s "${API_ONE[@]}")] s; from the pod's ADDED event: median $(us_to_s "$added_med") s;" \
        "kubectl create returned after $(us_to_s "$create_med") s (median); 1-pod delete -> gone [$(list_s "${API_ONE_DELETE[@]}")] s"
    echo "  $PODS pods: kubectl create returned after $(us_to_s "$API_MANY_CREATE_US") s; Ready at" \
        "[$(printf '%s\n' "${API_MANY_TIMES[@]}" | sort -n | awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), $1 / 1e6 }')] s"
    echo "  Ready after each pod's last container start ($PODS pods, ms, agent log to watch):" \
        "$(jq -r '.ready_after_last_container_start_ms | "p50 \(.p50), max \(.max), over 100 ms: \(.over_100) of \(.pods); \(.each | map(tostring) | join(" "))"' <<<"$API_JSON")"
    echo "  Node Ready $(us_to_s "$API_NODE_READY_US") s after rkubelet started; RSS idle $(kib_to_mib "$RSS_API_IDLE_KIB") MiB," \
        "peak $(kib_to_mib "$HWM_API_MANY_KIB") MiB, after the delete $(kib_to_mib "$RSS_API_AFTER_KIB") MiB;" \
        "CPU with $PODS pods $API_CPU_MANY ms/s (schedstat $API_CPU_MANY_SCHED)"
    echo "  CPU to start $PODS API pods: rkubelet $(ticks_to_ms $((API_CPU1_SELF - API_CPU0_SELF))) ms," \
        "its children $(ticks_to_ms $((API_CPU1_CHILD - API_CPU0_CHILD))) ms; leftovers after the delete: $API_LEAKS;" \
        "rkubelet stopped: $API_AGENT_STOP"
    echo
    ref_ratio="$(awk -v g="$API_REF_GETS" -v p="$API_REF_PATCHES" 'BEGIN { printf "%.2f", (g + p) / p }')"
    printf '%-34s %12s %12s\n' "API requests per pod (the node)" "1 at a time" "$PODS at once"
    rows="$(jq -rn --argjson a "$(jq '.requests.one_pod_at_a_time.per_pod' <<<"$API_JSON")" \
        --argjson b "$(jq '.requests.pods_at_once.per_pod' <<<"$API_JSON")" '
        ($a + $b | keys) as $k
        | ($k[] | [., ($a[.] // 0), ($b[.] // 0)] | @tsv),
          (["total", ($a | add // 0), ($b | add // 0)] | @tsv)')"
    while IFS=$'\t' read -r k a b; do
        printf '%-34s %12.2f %12.2f\n' "  $k" "$a" "$b"
    done <<<"$rows"
    jq -r --argjson PODS "$PODS" --arg ref "$ref_ratio" --argjson g "$API_REF_GETS" --argjson p "$API_REF_PATCHES" '
        .requests.pods_at_once.per_pod as $pp
        | (($pp["get pods"] // 0) + ($pp["patch pods/status"] // 0)) as $gp
        | ($pp["patch pods/status"] // 0) as $sc
        | "  status changes (patch pods/status) per pod: \($sc); get + patch pods per status change: \(if $sc > 0 then ($gp / $sc * 100 | round / 100) else "-" end)"
          + " (kubelet ref ~\($ref): \($g) get pods + \($p) patch pods/status over ~10 pods incl. crash loops, plus events create/patch; target <= \($ref): "
          + (if $sc > 0 and ($gp / $sc) <= ($ref | tonumber) then "yes" else "NO" end) + ")",
          "  node-level requests over the \($PODS)-pod window (\(.requests.pods_at_once.window_seconds) s): \(.requests.pods_at_once.node_level | to_entries | map("\(.key) \(.value)") | join(", ") | if . == "" then "none" else . end)",
          "  node requests answered >= 400: 1 at a time \(.requests.one_pod_at_a_time.errors | to_entries | map("\(.key) x\(.value)") | join(", ") | if . == "" then "none" else . end);"
          + " \($PODS) at once \(.requests.pods_at_once.errors | to_entries | map("\(.key) x\(.value)") | join(", ") | if . == "" then "none" else . end)",
          "  test API server violations: \(.apiserver_violations | length)\(if (.apiserver_violations | length) > 0 then " (first: \(.apiserver_violations[0]))" else "" end)",
          "  rkubelet log (API phase): '"$API_AGENT_LOG"' (\(.agent_log_warn_error_lines) WARN/ERROR lines); request log: '"$API_DIR"'/requests.json"' <<<"$API_JSON"
}
