#!/usr/bin/env bash
# The checks scripts/vm-test.sh runs inside its VM guest (Debian 12, systemd as
# PID 1, cgroup v2, containerd as a unit, no network interface besides lo).
#
# Usage (in the guest, as root): checks.sh SHARE
#   SHARE holds what the host passed in: rkubelet (the binary), repo/{scripts,
#   systemd,cni}, images/{busybox,pause}.tar.
# RK_VM_CHECKS picks checks (space-separated names, in the order given);
# default: all of CHECKS below. Each prints `PASS name` or `FAIL name: detail`;
# the last line is `N passed, M failed`. Exit 0 only when none failed.
#
# Set-up, before any check: scripts/install.sh --binary SHARE/rkubelet, a
# drop-in that runs the agent standalone (static pods from
# /etc/kubernetes/manifests; the guest has no API server), the repo's CNI
# conflist, the two images imported into containerd (k8s.io), and the static
# pod vm-web (busybox httpd). Each check waits (bounded) for what it needs.
set -euo pipefail

SHARE="${1:?usage: checks.sh SHARE}"
# shellcheck source=scripts/lib.sh
. "$SHARE/repo/scripts/lib.sh"
RK_LOG_TAG=vm-checks

CHECKS=(environment unit-active pod-running pod-cgroup restart-keeps-pods stop-start-adopts systemd-driver driver-mismatch stats-v2 reset-cleans-up bench watchdog shutdown-prepare)
# The second boot of scripts/vm-test.sh (legacy cgroup v1 hierarchy) runs these.
OPT_IN_CHECKS=(environment-v1 systemd-driver-v1)
ROOT_DIR=/var/lib/rkubelet
MANIFEST=/etc/kubernetes/manifests/vm-web.yaml
KUBECONFIG_FILE=/etc/kubernetes/kubelet.conf
PAUSE_REF=localhost/rkubelet/pause:1.0
BUSYBOX_REF=localhost/test/busybox:1.0
NS="$RK_CTR_NAMESPACE"
POD_WAIT=120 # seconds; pod start under TCG takes a few

# --- helpers ---------------------------------------------------------------------
DETAIL=""
# fail_with MSG: sets the failure detail and fails the check.
fail_with() {
    DETAIL="$*"
    return 1
}

# The running tasks of the namespace as sorted "ID PID" lines.
running_tasks() {
    timeout 10 ctr -n "$NS" tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" { print $1, $2 }' | sort
}

# pod_state [NAME]: the static pod NAME-<node> (default vm-web) as rkubelet
# reports it: "PHASE IP". jq is not in the guest: awk reads phase and podIP
# from `rkubelet pods -o json` (pretty-printed, one field per line; a pod's
# metadata.name comes before its status).
pod_state() {
    timeout 10 /usr/local/bin/rkubelet pods --root-dir "$ROOT_DIR" -o json 2>/dev/null |
        awk -v name="${1:-vm-web}" '
            /"name": "/ && index($0, "\"" name "-") { inpod = 1; next }
            /"name": "vm-/ { inpod = 0 }
            inpod && /"phase":/ { gsub(/[",]/, "", $2); phase = $2 }
            inpod && /"podIP":/ { gsub(/[",]/, "", $2); ip = $2 }
            END { if (phase != "") print phase, ip }'
}

# pod_running [NAME]: the pod is Running and the namespace has at least
# pause + one container running per pod.
pod_running() {
    local s
    s="$(pod_state "${1:-vm-web}")"
    [ "${s%% *}" = Running ] || return 1
    [ "$(running_tasks | wc -l)" -ge 2 ]
}

# tasks_unchanged BEFORE WHEN: once the agent is back after WHEN (unit active,
# pod Running, its first sync done), the running tasks are still BEFORE.
tasks_unchanged() {
    local before="$1" when="$2" after
    wait_for "kubelet.service active" 60 unit_active || fail_with "kubelet.service not active after the $when" || return 1
    wait_for "pod vm-web Running" "$POD_WAIT" pod_running || fail_with "pod not running after the $when" || return 1
    # The agent must not replace anything in its first syncs.
    wait_for "the unit's Status: line to count 1 pod" 60 status_counts_one_pod || true
    sleep 3
    after="$(running_tasks)"
    [ "$before" = "$after" ] || fail_with "after the $when, tasks before: $(one_line "$before") after: $(one_line "$after")"
}

one_line() { printf '%s' "$1" | tr '\n' ' '; }

# The cgroup (v2 path) of a process.
proc_cgroup() {
    sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null
}

unit_active() {
    [ "$(systemctl is-active kubelet.service 2>/dev/null)" = active ]
}

# The Status: line systemctl shows for the agent (its STATUS= notification).
unit_status_line() {
    systemctl status kubelet.service --no-pager 2>/dev/null | sed -n 's/^ *Status: //p' | head -n1
}

status_counts_one_pod() {
    unit_status_line | grep -q '; 1 pod"'
}

# Pod cgroups (cgroupfs driver: /kubepods/...; systemd: kubepods.slice/...).
pod_cgroups() {
    find /sys/fs/cgroup -mindepth 1 -maxdepth 4 -type d \( -name 'pod*' -o -name 'kubepods-*pod*.slice' \) \
        -path '*kubepods*' 2>/dev/null
}

mounts_under_root() {
    awk -v r="$ROOT_DIR" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo
}

# static_pod NAME TERMINATION_GRACE CONTAINER COMMAND [SPEC_LINES] [CONTAINER_LINES]:
# a one-container busybox pod manifest on stdout; COMMAND is a YAML flow list,
# the optional lines (already indented) go into spec and the container.
static_pod() {
    printf 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: default\nspec:\n  terminationGracePeriodSeconds: %s\n' "$1" "$2"
    [ -z "${5:-}" ] || printf '%s\n' "$5"
    printf '  containers:\n  - name: %s\n    image: %s\n    imagePullPolicy: Never\n    command: %s\n' "$3" "$BUSYBOX_REF" "$4"
    [ -z "${6:-}" ] || printf '%s\n' "$6"
}

# --- set-up --------------------------------------------------------------------------
setup() {
    log "set-up: install.sh --binary $SHARE/rkubelet"
    bash "$SHARE/repo/scripts/install.sh" --binary "$SHARE/rkubelet" ||
        fail_with "scripts/install.sh failed" || return 1
    # No API server in the guest: the agent runs standalone. The kubeadm drop-in
    # (10-kubeadm.conf) gives it --kubeconfig; this one, sorted later, puts back
    # the unit's own command line plus the node's extra flags.
    install -d /etc/systemd/system/rkubelet.service.d
    cat >/etc/systemd/system/rkubelet.service.d/50-vm-standalone.conf <<'EOF'
[Service]
ExecStart=
ExecStart=/usr/local/bin/rkubelet --pod-manifest-path=/etc/kubernetes/manifests $KUBELET_EXTRA_ARGS
EOF
    # The guest cannot pull registry.k8s.io/pause; the reset unit reads this too.
    echo "KUBELET_EXTRA_ARGS=--pod-infra-container-image=$PAUSE_REF" >/etc/default/kubelet
    systemctl daemon-reload
    install -D -m 0644 "$SHARE/repo/cni/10-rkubelet.conflist" /etc/cni/net.d/10-rkubelet.conflist
    wait_for "containerd" 60 ctr_ok || fail_with "containerd does not answer" || return 1
    local img
    for img in busybox pause; do
        timeout 60 ctr -n "$NS" images import "$SHARE/images/$img.tar" >/dev/null ||
            fail_with "ctr images import $img.tar failed" || return 1
    done
    static_pod vm-web 2 web '["/bin/httpd", "-f", "-p", "8080", "-h", "/etc"]' >"$MANIFEST"
    systemctl start kubelet.service || fail_with "systemctl start kubelet failed" || return 1
}

# --- checks --------------------------------------------------------------------------
# environment: what makes this a real node: systemd PID 1, cgroup v2, containerd unit.
check_environment() {
    [ "$(cat /proc/1/comm)" = systemd ] || fail_with "PID 1 is $(cat /proc/1/comm)" || return 1
    local fs
    fs="$(stat -fc %T /sys/fs/cgroup)"
    [ "$fs" = cgroup2fs ] || fail_with "/sys/fs/cgroup is $fs" || return 1
    [ "$(systemctl is-active containerd.service)" = active ] || fail_with "containerd.service is not active"
}

# environment-v1: the second boot: systemd PID 1 on the legacy cgroup v1
# hierarchy (systemd.unified_cgroup_hierarchy=0), containerd as a unit.
check_environment_v1() {
    [ "$(cat /proc/1/comm)" = systemd ] || fail_with "PID 1 is $(cat /proc/1/comm)" || return 1
    local fs
    fs="$(stat -fc %T /sys/fs/cgroup)"
    [ "$fs" = tmpfs ] && [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/systemd ] ||
        fail_with "/sys/fs/cgroup is $fs with $(ls /sys/fs/cgroup | tr '\n' ' ')" || return 1
    [ "$(systemctl is-active containerd.service)" = active ] || fail_with "containerd.service is not active"
}

# unit-active: `systemctl status kubelet` (the Alias=) is active (running) and
# shows the agent's STATUS= line with the pod counted.
check_unit_active() {
    wait_for "kubelet.service active" 60 unit_active || fail_with "kubelet.service is $(systemctl is-active kubelet.service)" || return 1
    systemctl status kubelet.service --no-pager 2>&1 | grep -q 'Active: active (running)' ||
        fail_with "systemctl status: $(systemctl status kubelet.service --no-pager 2>&1 | grep Active:)" || return 1
    wait_for "the unit's Status: line to count 1 pod" "$POD_WAIT" status_counts_one_pod ||
        fail_with "Status: line is '$(unit_status_line)'" || return 1
    log "kubelet.service Status: $(unit_status_line)"
}

# pod-running: the static pod runs (rkubelet pods, containerd tasks) and its
# httpd answers on the pod IP over the CNI bridge.
check_pod_running() {
    wait_for "pod vm-web Running" "$POD_WAIT" pod_running ||
        fail_with "pod state '$(pod_state)', tasks: $(running_tasks | tr '\n' ' ')" || return 1
    local ip
    ip="$(pod_state | cut -d' ' -f2)"
    [ -n "$ip" ] || fail_with "the pod has no IP" || return 1
    wait_for "http://$ip:8080/hostname" 30 timeout 5 busybox wget -q -O /dev/null "http://$ip:8080/hostname" ||
        fail_with "httpd in the pod does not answer on $ip:8080" || return 1
    log "pod vm-web Running at $ip; tasks: $(running_tasks | tr '\n' ' ')"
}

# pod-cgroup: with the cgroupfs driver on cgroup v2 the pod's containers live
# in /kubepods/besteffort/pod<uid>/<id> with the memory and cpu controllers
# enabled down to them, node allocatable is set on /kubepods (memory.max), and
# the agent itself stays in its unit's cgroup.
check_pod_cgroup() {
    wait_for "pod vm-web Running" "$POD_WAIT" pod_running || fail_with "pod not running" || return 1
    local pid cg parent agent limit
    for pid in $(running_tasks | cut -d' ' -f2); do
        cg="$(proc_cgroup "$pid")"
        case "$cg" in
        /kubepods/besteffort/pod*/*) ;;
        *) fail_with "task pid $pid is in cgroup '$cg', not /kubepods/besteffort/pod<uid>/<id>" || return 1 ;;
        esac
        parent="$(dirname "/sys/fs/cgroup$cg")"
        grep -qw memory "$parent/cgroup.subtree_control" && grep -qw cpu "$parent/cgroup.subtree_control" ||
            fail_with "$parent/cgroup.subtree_control is '$(cat "$parent/cgroup.subtree_control")'" || return 1
    done
    limit="$(cat /sys/fs/cgroup/kubepods/memory.max 2>/dev/null)"
    [[ "$limit" =~ ^[0-9]+$ ]] || fail_with "/sys/fs/cgroup/kubepods/memory.max is '$limit' (node allocatable not enforced)" || return 1
    agent="$(proc_cgroup "$(systemctl show -p MainPID --value kubelet.service)")"
    [ "$agent" = /system.slice/rkubelet.service ] || fail_with "the agent is in cgroup '$agent'" || return 1
    log "pod cgroup $(dirname "$cg"); /kubepods memory.max $limit; agent in $agent"
}

# restart-keeps-pods: `systemctl restart kubelet` (KillMode=process) leaves the
# pod's containers running, same IDs and PIDs.
check_restart_keeps_pods() {
    wait_for "pod vm-web Running" "$POD_WAIT" pod_running || fail_with "pod not running before the restart" || return 1
    local before
    before="$(running_tasks)"
    timeout 120 systemctl restart kubelet.service || fail_with "systemctl restart kubelet failed" || return 1
    tasks_unchanged "$before" restart
}

# stop-start-adopts: the pod runs on while the agent is stopped; started again,
# the agent adopts the containers (same IDs and PIDs).
check_stop_start_adopts() {
    wait_for "pod vm-web Running" "$POD_WAIT" pod_running || fail_with "pod not running before the stop" || return 1
    local before during
    before="$(running_tasks)"
    timeout 120 systemctl stop kubelet.service || fail_with "systemctl stop kubelet failed" || return 1
    [ "$(systemctl is-active kubelet.service)" != active ] || fail_with "kubelet.service still active after stop" || return 1
    sleep 3
    during="$(running_tasks)"
    [ "$before" = "$during" ] || fail_with "with the agent stopped, tasks changed: $(one_line "$during")" || return 1
    timeout 120 systemctl start kubelet.service || fail_with "systemctl start kubelet failed" || return 1
    tasks_unchanged "$before" start
}

reset_ran() {
    [ "$(systemctl show -p ExecMainExitTimestampMonotonic --value rkubelet-reset.service)" != 0 ]
}

# reset-cleans-up: as kubeadm reset does it: stop the unit, delete the node's
# kubeconfig. rkubelet-reset.path starts rkubelet-reset.service, which removes
# the pods: no containers, pod cgroups, mounts under the root dir, netns or IPs left.
check_reset_cleans_up() {
    wait_for "a pod Running" "$POD_WAIT" some_pod_running || fail_with "no pod running before the reset" || return 1
    [ "$(systemctl is-active rkubelet-reset.path)" = active ] || fail_with "rkubelet-reset.path is $(systemctl is-active rkubelet-reset.path)" || return 1
    timeout 120 systemctl stop kubelet.service || fail_with "systemctl stop kubelet failed" || return 1
    # kubeadm join would have written it; its creation starts the service too,
    # which then does nothing (ConditionPathExists=!).
    echo "# dummy: kubeadm join writes this" >"$KUBECONFIG_FILE"
    sleep 2
    reset_ran && fail_with "rkubelet-reset.service ran while $KUBECONFIG_FILE existed" && return 1
    rm -f "$KUBECONFIG_FILE"
    wait_for "rkubelet-reset.service to run" 120 reset_ran ||
        fail_with "rkubelet-reset.service did not run: $(systemctl status rkubelet-reset.path rkubelet-reset.service --no-pager 2>&1 | tr '\n' ' ')" || return 1
    local result status
    result="$(systemctl show -p Result --value rkubelet-reset.service)"
    status="$(systemctl show -p ExecMainStatus --value rkubelet-reset.service)"
    log "rkubelet-reset.service: $(journalctl -u rkubelet-reset.service -o cat --no-pager | grep -v '^Start\|^Finish\|Deactivated' | tr '\n' ' ')"
    [ "$result" = success ] && [ "$status" = 0 ] ||
        fail_with "rkubelet-reset.service result $result, exit $status" || return 1
    local left=()
    [ -z "$(timeout 10 ctr -n "$NS" containers ls -q)" ] || left+=("containers: $(timeout 10 ctr -n "$NS" containers ls -q | tr '\n' ' ')")
    [ -z "$(running_tasks)" ] || left+=("tasks: $(running_tasks | tr '\n' ' ')")
    [ -z "$(pod_cgroups)" ] || left+=("cgroups: $(pod_cgroups | tr '\n' ' ')")
    [ -z "$(mounts_under_root)" ] || left+=("mounts: $(mounts_under_root | tr '\n' ' ')")
    [ -z "$(ip netns list)" ] || left+=("netns: $(ip netns list | tr '\n' ' ')")
    local ips
    ips="$(find /var/lib/cni/networks -type f -name '10.*' 2>/dev/null)"
    [ -z "$ips" ] || left+=("CNI IPs: $(echo "$ips" | tr '\n' ' ')")
    [ "${#left[@]}" -eq 0 ] || fail_with "left behind: ${left[*]}"
}

# A pod manifest: pod_manifest NAME RESOURCES COMMAND [RESTART_POLICY].
pod_manifest() {
    static_pod "$1" 1 c "[\"sh\", \"-c\", \"$3\"]" "  restartPolicy: ${4:-Always}" "    resources: $2" >"/etc/kubernetes/manifests/$1.yaml"
}

# The first directory matching a glob (empty when none).
one_dir() {
    local d
    for d in $1; do
        [ -d "$d" ] && echo "$d" && return 0
    done
}

pod_phase() { pod_state "$1" | cut -d' ' -f1; }
# Some pod of the manifests Running, its containers too (earlier checks choose which).
some_pod_running() {
    timeout 10 /usr/local/bin/rkubelet pods --root-dir "$ROOT_DIR" -o json 2>/dev/null | grep -q '"phase": "Running"' &&
        [ "$(running_tasks | wc -l)" -ge 2 ]
}
pods_sd_g_running() { [ "$(pod_phase vm-sd)" = Running ] && [ "$(pod_phase vm-g)" = Running ]; }
pod_b_running() { [ "$(pod_phase vm-b)" = Running ]; }
oom_killed() { timeout 10 /usr/local/bin/rkubelet pods --root-dir "$ROOT_DIR" -o json 2>/dev/null | grep -q '"reason": "OOMKilled"'; }

SD=/sys/fs/cgroup/kubepods.slice
SD_ARGS="--pod-infra-container-image=$PAUSE_REF --cgroup-driver=systemd --pod-max-pids=64"

# systemd-driver: with --cgroup-driver=systemd (kubeadm's cgroupDriver), pods
# live in systemd's hierarchy: kubepods-<qos>-pod<uid>.slice with containers as
# runc's cri-containerd-<id>.scope; a Guaranteed pod's slice has its memory
# limit, cpu quota and pids.max = podPidsLimit; the burstable slice's cpu.weight
# follows its pods' requests; a container over its memory limit is OOMKilled; a
# restart of the agent keeps every container.
check_systemd_driver() {
    timeout 120 systemctl stop kubelet.service || fail_with "systemctl stop kubelet failed" || return 1
    echo "KUBELET_EXTRA_ARGS=$SD_ARGS" >/etc/default/kubelet
    # The cgroupfs pods go with their manifests (the agent removes them at start).
    rm -f /etc/kubernetes/manifests/*.yaml
    pod_manifest vm-sd "{}" "sleep 3600"
    pod_manifest vm-g "{limits: {cpu: 100m, memory: 64Mi, hugepages-2Mi: 4Mi}}" "sleep 3600"
    # A 2Mi huge page pool of 8 MiB (read at the agent's start): vm-g takes 4Mi,
    # vm-huge asks for 16Mi and is rejected.
    echo 4 >/proc/sys/vm/nr_hugepages
    pod_manifest vm-huge "{limits: {memory: 32Mi, hugepages-2Mi: 16Mi}}" "sleep 3600"
    timeout 120 systemctl start kubelet.service || fail_with "systemctl start kubelet failed" || return 1
    wait_for "pods vm-sd and vm-g Running" "$POD_WAIT" pods_sd_g_running ||
        fail_with "pods not running: vm-sd '$(pod_state vm-sd)' vm-g '$(pod_state vm-g)'" || return 1
    local pid cg all=()
    for pid in $(running_tasks | cut -d' ' -f2); do
        cg="$(proc_cgroup "$pid")"
        all+=("$cg")
        case "$cg" in
        /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod*.slice/cri-containerd-*.scope) ;;
        /kubepods.slice/kubepods-pod*.slice/cri-containerd-*.scope) ;;
        *) fail_with "task pid $pid is in cgroup '$cg', not a kubepods.slice pod slice's cri-containerd scope" || return 1 ;;
        esac
    done
    [ "$(systemctl is-active kubepods.slice)" = active ] || fail_with "kubepods.slice is $(systemctl is-active kubepods.slice)" || return 1
    local g
    g="$(one_dir "$SD/kubepods-pod*.slice")"
    [ -n "$g" ] || fail_with "no Guaranteed pod slice under $SD; containers in: ${all[*]}" || return 1
    [ "$(cat "$g/memory.max")" = 67108864 ] || fail_with "$g/memory.max is $(cat "$g/memory.max"), not 64Mi" || return 1
    [ "$(cat "$g/pids.max")" = 64 ] || fail_with "$g/pids.max is $(cat "$g/pids.max"), not podPidsLimit 64" || return 1
    [ "$(cut -d' ' -f1 "$g/cpu.max")" = 10000 ] || fail_with "$g/cpu.max is $(cat "$g/cpu.max"), not a 100m quota" || return 1
    # Huge pages: the pod slice and the container's scope are limited to the pod's 4Mi.
    local huge
    huge="$(cat "$g/hugetlb.2MB.max" "$g"/cri-containerd-*.scope/hugetlb.2MB.max 2>&1 | sort | tr '\n' ' ')"
    [ "$huge" = "4194304 4194304 max " ] || fail_with "hugetlb.2MB.max of the pod slice, its container and pause scopes: '$huge'" || return 1
    timeout 10 /usr/local/bin/rkubelet pods --root-dir "$ROOT_DIR" -o json | grep -q '"reason": "OutOfhugepages-2Mi"' ||
        fail_with "vm-huge (16Mi of an 8Mi pool) was not rejected OutOfhugepages-2Mi: '$(pod_state vm-huge)'" || return 1
    # cgroup v2: an OOM kill takes the whole container (memory.oom.group), not the sandbox's pause.
    local groups
    groups="$(cat "$g"/cri-containerd-*.scope/memory.oom.group | sort | tr '\n' ' ')"
    [ "$groups" = "0 1 " ] || fail_with "memory.oom.group of the pod's pause and container scopes: '$groups', want '0 1 '" || return 1
    log "Guaranteed pod slice $g: memory.max $(cat "$g/memory.max") pids.max $(cat "$g/pids.max") cpu.max $(cat "$g/cpu.max"); containers in ${all[*]}"
    # Burstable: the QoS slice's weight grows with its pods' requests.
    local before after
    before="$(cat "$SD/kubepods-burstable.slice/cpu.weight" 2>/dev/null || echo none)"
    pod_manifest vm-b "{requests: {cpu: 300m}}" "sleep 3600"
    wait_for "pod vm-b Running" "$POD_WAIT" pod_b_running || fail_with "pod vm-b not running: '$(pod_state vm-b)'" || return 1
    after="$(cat "$SD/kubepods-burstable.slice/cpu.weight")"
    [ "$after" = 12 ] && [ "$before" != "$after" ] || fail_with "kubepods-burstable.slice cpu.weight $before -> $after, want 12 for 300m" || return 1
    log "kubepods-burstable.slice cpu.weight $before -> $after"
    # Over its memory limit: OOMKilled.
    pod_manifest vm-oom "{limits: {memory: 16Mi}}" "exec dd if=/dev/zero of=/dev/null bs=64M count=1" Never
    wait_for "vm-oom OOMKilled" "$POD_WAIT" oom_killed || fail_with "vm-oom was not OOMKilled: '$(pod_state vm-oom)'" || return 1
    # An agent restart keeps every container.
    before="$(running_tasks)"
    timeout 120 systemctl restart kubelet.service || fail_with "systemctl restart kubelet failed" || return 1
    wait_for "kubelet.service active" 60 unit_active || fail_with "kubelet.service not active after the restart" || return 1
    sleep 5
    after="$(running_tasks)"
    [ "$before" = "$after" ] || fail_with "after the restart, tasks before: $(one_line "$before") after: $(one_line "$after")"
}

# The v1 cgroup (CONTROLLER's hierarchy) of a process.
proc_cgroup_v1() {
    awk -F: -v c="$2" '$2 == c { print $3 }' "/proc/$1/cgroup" 2>/dev/null
}

# systemd-driver-v1: the systemd driver on the legacy cgroup v1 hierarchy (the
# second boot): the same slices, created through systemd, in every controller's
# hierarchy; a Guaranteed pod's slice has memory.limit_in_bytes, the cfs quota
# and pids.max; the burstable slice's cpu.shares follows its pods' requests;
# an agent restart keeps every container.
V1=/sys/fs/cgroup
check_systemd_driver_v1() {
    timeout 120 systemctl stop kubelet.service || fail_with "systemctl stop kubelet failed" || return 1
    echo "KUBELET_EXTRA_ARGS=$SD_ARGS" >/etc/default/kubelet
    rm -f /etc/kubernetes/manifests/*.yaml
    pod_manifest vm-sd "{}" "sleep 3600"
    pod_manifest vm-g "{limits: {cpu: 100m, memory: 64Mi}}" "sleep 3600"
    timeout 120 systemctl start kubelet.service || fail_with "systemctl start kubelet failed" || return 1
    wait_for "pods vm-sd and vm-g Running" "$POD_WAIT" pods_sd_g_running ||
        fail_with "pods not running: vm-sd '$(pod_state vm-sd)' vm-g '$(pod_state vm-g)'; $(journalctl -u rkubelet.service -o cat --no-pager -n 5 | tr '\n' ' ')" || return 1
    local pid cg c all=()
    for pid in $(running_tasks | cut -d' ' -f2); do
        for c in memory pids cpu,cpuacct name=systemd; do
            cg="$(proc_cgroup_v1 "$pid" "$c")"
            all+=("$c:$cg")
            case "$cg" in
            /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod*.slice/cri-containerd-*.scope) ;;
            /kubepods.slice/kubepods-pod*.slice/cri-containerd-*.scope) ;;
            *) fail_with "task pid $pid is in $c cgroup '$cg', not a kubepods.slice pod slice's cri-containerd scope" || return 1 ;;
            esac
        done
    done
    [ "$(systemctl is-active kubepods.slice)" = active ] || fail_with "kubepods.slice is $(systemctl is-active kubepods.slice)" || return 1
    local g gp gc
    g="$(one_dir "$V1/memory/kubepods.slice/kubepods-pod*.slice")"
    [ -n "$g" ] || fail_with "no Guaranteed pod slice under $V1/memory/kubepods.slice; containers in: ${all[*]}" || return 1
    gp="$V1/pids/kubepods.slice/$(basename "$g")" gc="$V1/cpu,cpuacct/kubepods.slice/$(basename "$g")"
    [ "$(cat "$g/memory.limit_in_bytes")" = 67108864 ] || fail_with "$g/memory.limit_in_bytes is $(cat "$g/memory.limit_in_bytes"), not 64Mi" || return 1
    [ "$(cat "$gp/pids.max")" = 64 ] || fail_with "$gp/pids.max is $(cat "$gp/pids.max"), not podPidsLimit 64" || return 1
    [ "$(cat "$gc/cpu.cfs_quota_us")" = 10000 ] || fail_with "$gc/cpu.cfs_quota_us is $(cat "$gc/cpu.cfs_quota_us"), not a 100m quota" || return 1
    log "Guaranteed pod slice $(basename "$g"): memory.limit_in_bytes $(cat "$g/memory.limit_in_bytes") pids.max $(cat "$gp/pids.max") cpu.cfs_quota_us $(cat "$gc/cpu.cfs_quota_us"); containers in ${all[*]}"
    local b="$V1/cpu,cpuacct/kubepods.slice/kubepods-burstable.slice/cpu.shares" before after
    before="$(cat "$b" 2>/dev/null || echo none)"
    pod_manifest vm-b "{requests: {cpu: 300m}}" "sleep 3600"
    wait_for "pod vm-b Running" "$POD_WAIT" pod_b_running || fail_with "pod vm-b not running: '$(pod_state vm-b)'" || return 1
    after="$(cat "$b")"
    [ "$after" = 307 ] && [ "$before" != "$after" ] || fail_with "kubepods-burstable.slice cpu.shares $before -> $after, want 307 for 300m" || return 1
    log "kubepods-burstable.slice cpu.shares $before -> $after"
    before="$(running_tasks)"
    timeout 120 systemctl restart kubelet.service || fail_with "systemctl restart kubelet failed" || return 1
    wait_for "kubelet.service active" 60 unit_active || fail_with "kubelet.service not active after the restart" || return 1
    sleep 5
    after="$(running_tasks)"
    [ "$before" = "$after" ] || fail_with "after the restart, tasks before: $(one_line "$before") after: $(one_line "$after")" || return 1
    # The last check of this boot: the pods go now, not in systemd's 90 s stop
    # timeout of their scopes at the poweroff (sleep ignores SIGTERM).
    rm -f /etc/kubernetes/manifests/*.yaml
    wait_for "the pods removed" 60 no_pod_dirs || true
}

# driver-mismatch: containerd configured for systemd (SystemdCgroup = true) and
# the agent for cgroupfs: the agent refuses to start with upstream's
# misconfiguration message, and doctor FAILs the cgroup-driver check. Then the
# systemd driver again.
check_driver_mismatch() {
    timeout 120 systemctl stop kubelet.service || fail_with "systemctl stop kubelet failed" || return 1
    local saved=""
    [ -f /etc/containerd/config.toml ] && saved="$(cat /etc/containerd/config.toml)"
    printf 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n' >/etc/containerd/config.toml
    echo "KUBELET_EXTRA_ARGS=--pod-infra-container-image=$PAUSE_REF --cgroup-driver=cgroupfs" >/etc/default/kubelet
    systemctl reset-failed kubelet.service 2>/dev/null || true
    local started=0
    timeout 60 systemctl start kubelet.service 2>/dev/null && started=1
    systemctl stop kubelet.service 2>/dev/null || true
    local said doctor
    said="$(journalctl -u rkubelet.service -o cat --no-pager -n 40 | grep -m1 'misconfiguration: kubelet cgroup driver' || true)"
    doctor="$(timeout 60 /usr/local/bin/rkubelet --cgroup-driver=cgroupfs doctor 2>&1 | grep -i 'cgroup-driver' || true)"
    if [ -n "$saved" ]; then printf '%s\n' "$saved" >/etc/containerd/config.toml; else rm -f /etc/containerd/config.toml; fi
    echo "KUBELET_EXTRA_ARGS=$SD_ARGS" >/etc/default/kubelet
    systemctl reset-failed kubelet.service 2>/dev/null || true
    timeout 120 systemctl start kubelet.service || fail_with "systemctl start kubelet (systemd driver again) failed" || return 1
    [ "$started" = 0 ] || fail_with "the agent started with a driver other than containerd's" || return 1
    [ -n "$said" ] || fail_with "no misconfiguration line in the journal: $(journalctl -u rkubelet.service -o cat --no-pager -n 5 | tr '\n' ' ')" || return 1
    echo "$doctor" | grep -q FAIL || fail_with "doctor did not FAIL the cgroup-driver check: '$doctor'" || return 1
    log "agent: $said"
    log "doctor: $doctor"
}

# The kubelet API standalone: no API server for webhook authorization, so the
# checks allow anonymous reads (only here, inside the guest).
STATS_ARGS="$SD_ARGS --authorization-mode=AlwaysAllow --anonymous-auth=true"

# summary_field JSON CONTAINER OBJECT FIELD: a number from the container's
# cpu or memory object in a /stats/summary document (empty when absent).
summary_field() {
    printf '%s' "$1" | jq -r --arg c "$2" --arg o "$3" --arg f "$4" '[.pods[].containers[] | select(.name == $c)][0][$o][$f] // empty'
}

# The cgroup v2 directory of the scope that holds the tmpfs pages the stats pod wrote.
stats_scope() {
    local d shmem
    for d in $(find /sys/fs/cgroup/kubepods.slice -type d -name 'cri-containerd-*.scope' 2>/dev/null); do
        shmem="$(awk '$1 == "shmem" { print $2 }' "$d/memory.stat" 2>/dev/null)"
        [ "${shmem:-0}" -ge $((20 * 1024 * 1024)) ] && echo "$d" && return 0
    done
    return 1
}
stats_ready() { [ "$(pod_phase vm-stats)" = Running ] && stats_scope >/dev/null; }
# curl: busybox's TLS client sends no signature_algorithms, which rustls requires.
summary() { curl -ksS --max-time 10 https://127.0.0.1:10250/stats/summary 2>/dev/null; }
summary_has_stats() { summary | grep -q '"name":"statsc"'; }

# stats-v2: /stats/summary (the kubelet API, as metrics-server reads it) of a
# container holding 20 MiB of tmpfs pages equals its cgroup v2 files:
# usageBytes = memory.current, workingSetBytes = memory.current - inactive_file
# (upstream's v2 working set), usageCoreNanoSeconds = cpu.stat usage_usec * 1000.
check_stats_v2() {
    timeout 120 systemctl stop kubelet.service || fail_with "systemctl stop kubelet failed" || return 1
    echo "KUBELET_EXTRA_ARGS=$STATS_ARGS" >/etc/default/kubelet
    pod_manifest vm-stats "{}" "dd if=/dev/zero of=/dev/shm/f bs=1M count=20; dd if=/dev/zero of=/w bs=1M count=8 conv=fsync; exec sleep 3600"
    sed -i 's/- name: c$/- name: statsc/' /etc/kubernetes/manifests/vm-stats.yaml
    timeout 120 systemctl start kubelet.service || fail_with "systemctl start kubelet failed" || return 1
    wait_for "pod vm-stats Running with its 20 MiB" "$POD_WAIT" stats_ready ||
        fail_with "pod vm-stats: '$(pod_state vm-stats)', no scope with 20 MiB shmem" || return 1
    wait_for "/stats/summary lists the container" 60 summary_has_stats ||
        fail_with "/stats/summary: $(curl -ksS --max-time 10 https://127.0.0.1:10250/stats/summary 2>&1 | head -c 300); listening: $(ss -ltn | grep -c ':10250 '); agent: $(journalctl -u rkubelet.service -o cat --no-pager | grep -m2 'TLS handshake')" || return 1
    local dir json cur inactive usec ws usage cpu
    dir="$(stats_scope)"
    json="$(summary)"
    cur="$(cat "$dir/memory.current")"
    inactive="$(awk '$1 == "inactive_file" { print $2 }' "$dir/memory.stat")"
    usec="$(awk '$1 == "usage_usec" { print $2 }' "$dir/cpu.stat")"
    ws="$(summary_field "$json" statsc memory workingSetBytes)"
    usage="$(summary_field "$json" statsc memory usageBytes)"
    cpu="$(summary_field "$json" statsc cpu usageCoreNanoSeconds)"
    log "summary: usageBytes $usage workingSetBytes $ws usageCoreNanoSeconds $cpu; $dir: memory.current $cur inactive_file $inactive usage_usec $usec"
    [ -n "$ws" ] && [ -n "$usage" ] && [ -n "$cpu" ] || fail_with "statsc's cpu/memory not in the summary: $(printf '%s' "$json" | head -c 400)" || return 1
    local mib=$((1024 * 1024)) d
    d=$((usage - cur))
    [ "${d#-}" -le "$mib" ] || fail_with "usageBytes $usage, memory.current $cur" || return 1
    d=$((ws - (cur - inactive)))
    [ "${d#-}" -le "$mib" ] || fail_with "workingSetBytes $ws, memory.current - inactive_file $((cur - inactive))" || return 1
    [ "$ws" -ge $((20 * mib)) ] || fail_with "workingSetBytes $ws is below the 20 MiB the container holds" || return 1
    d=$((usec * 1000 - cpu))
    [ "$d" -ge 0 ] && [ "$d" -le 1000000000 ] || fail_with "usageCoreNanoSeconds $cpu, cpu.stat usage_usec $usec" || return 1
    stats_psi_swap_io "$dir" "$json"
}

stats_written() { awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^wbytes=/) { sub("wbytes=", "", $i); if ($i >= 8388608) f = 1 } } END { exit !f }' "$STATS_DIR/io.stat"; }

# The v2-only parts: pressure (KubeletPSI) and swap in the summary, and
# /metrics/cadvisor's block I/O (io.stat) and threads (pids.current) for the
# container that wrote 8 MiB with fsync.
stats_psi_swap_io() {
    local dir="$1" json="$2" c total file_total swap dev wbytes name metrics m threads
    c="$(printf '%s' "$json" | jq -c '.pods[].containers[] | select(.name == "statsc")')"
    for r in cpu memory io; do
        total="$(printf '%s' "$c" | jq -r ".$r.psi.some.total")"
        file_total="$(awk '$1 == "some" { sub("total=", "", $5); print $5 }' "$dir/$r.pressure")"
        log "psi $r: summary some.total $total, $r.pressure $file_total"
        [ "$total" != null ] && [ "$total" -le "$file_total" ] || fail_with "statsc $r psi: summary $total, file $file_total: $(printf '%s' "$c" | head -c 600)" || return 1
    done
    printf '%s' "$json" | jq -e '.node.cpu.psi.full and .node.memory.psi.some and .node.io.psi.some and .node.swap.swapUsageBytes != null' >/dev/null ||
        fail_with "the node's psi/swap: $(printf '%s' "$json" | jq -c '.node | {cpu, io, swap}' | head -c 600)" || return 1
    swap="$(printf '%s' "$c" | jq -r '.swap.swapUsageBytes')"
    [ "$swap" = "$(cat "$dir/memory.swap.current")" ] || fail_with "statsc swapUsageBytes $swap, memory.swap.current $(cat "$dir/memory.swap.current")" || return 1
    STATS_DIR="$dir" wait_for "8 MiB written back from statsc" 60 stats_written || fail_with "io.stat: $(cat "$dir/io.stat")" || return 1
    metrics="$(curl -ksS --max-time 10 https://127.0.0.1:10250/metrics/cadvisor)"
    # The device the container wrote to: the io.stat line with the most bytes written.
    read -r dev wbytes < <(awk '{ w = 0; for (i = 2; i <= NF; i++) if ($i ~ /^wbytes=/) { sub("wbytes=", "", $i); w = $i } print $1, w }' "$dir/io.stat" | sort -k2 -n | tail -n1)
    name="/dev/$(sed -n 's/^DEVNAME=//p' "/sys/dev/block/$dev/uevent")"
    m="$(printf '%s\n' "$metrics" | grep "^container_fs_writes_bytes_total{container=\"statsc\",device=\"$name\"," | awk '{ print $2 }')"
    wbytes="$(awk -v d="$dev" '$1 == d { for (i = 2; i <= NF; i++) if ($i ~ /^wbytes=/) { sub("wbytes=", "", $i); print $i } }' "$dir/io.stat")"
    log "container_fs_writes_bytes_total{device=$name} $m; io.stat $dev wbytes $wbytes"
    [ -n "$m" ] && [ "$m" -ge $((8 * 1024 * 1024)) ] && [ "$m" -le "$wbytes" ] ||
        fail_with "container_fs_writes_bytes_total for $name: '$m', io.stat $dev wbytes $wbytes; $(printf '%s\n' "$metrics" | grep -m3 'container_fs_writes_bytes_total')" || return 1
    threads="$(printf '%s\n' "$metrics" | grep '^container_threads{container="statsc",' | awk '{ print $2 }')"
    [ "$threads" = "$(cat "$dir/pids.current")" ] || fail_with "container_threads $threads, pids.current $(cat "$dir/pids.current")" || return 1
    printf '%s\n' "$metrics" | grep -q '^container_pressure_memory_waiting_seconds_total{container="statsc",' ||
        fail_with "no container_pressure_memory_waiting_seconds_total for statsc" || return 1
}

# watchdog: the unit has WatchdogSec=1min and the agent pings (WATCHDOG=1 every
# 30 s): systemd's watchdog timestamp moves past the moment the unit became active.
watchdog_pinged() {
    local active wd
    active="$(systemctl show -p ActiveEnterTimestampMonotonic --value rkubelet.service)"
    wd="$(systemctl show -p WatchdogTimestampMonotonic --value rkubelet.service)"
    [ "$wd" -gt $((active + 1000000)) ]
}
check_watchdog() {
    local usec
    usec="$(systemctl show -p WatchdogUSec --value rkubelet.service)"
    [ "$usec" = 1min ] || fail_with "WatchdogUSec is '$usec', not the unit's 1min" || return 1
    wait_for "a WATCHDOG=1 ping" 45 watchdog_pinged ||
        fail_with "no ping: active at $(systemctl show -p ActiveEnterTimestampMonotonic --value rkubelet.service), watchdog timestamp $(systemctl show -p WatchdogTimestampMonotonic --value rkubelet.service)" || return 1
    log "watchdog $usec; last ping at $(systemctl show -p WatchdogTimestamp --value rkubelet.service)"
}

# shutdown-prepare (last: the guest powers off after the checks): graceful node
# shutdown set up (shutdownGracePeriod 15s, 5s of it for critical pods); the
# agent holds logind's delay lock and raised InhibitDelayMaxSec. Two pods write
# markers to the share (SHARE/out/shutdown-markers) when they get SIGTERM:
# vm-low (priority 0) takes 3 s to exit, vm-crit (system-node-critical
# priority) exits at once. The host reads the markers after the poweroff
# (scripts/vm-test.sh: graceful-shutdown).
SHUTDOWN_CONFIG=/etc/rkubelet/vm-shutdown.yaml
inhibitor_held() { systemd-inhibit --list --no-pager 2>/dev/null | grep -q 'kubelet.*shutdown.*delay'; }
pods_low_crit_running() { [ "$(pod_phase vm-low)" = Running ] && [ "$(pod_phase vm-crit)" = Running ]; }
marker_pod() { # marker_pod NAME PRIORITY
    static_pod "$1" 30 c '["sh", "/share/marker.sh", "'"$1"'"]' "  priority: $2
  volumes:
  - name: share
    hostPath: {path: $SHARE/out, type: Directory}" "    volumeMounts:
    - {name: share, mountPath: /share}" >"/etc/kubernetes/manifests/$1.yaml"
}
check_shutdown_prepare() {
    timeout 120 systemctl stop kubelet.service 2>/dev/null || true
    rm -f /etc/kubernetes/manifests/*.yaml "$SHARE/out/shutdown-markers"
    install -d /etc/rkubelet
    printf 'apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nshutdownGracePeriod: 15s\nshutdownGracePeriodCriticalPods: 5s\n' >"$SHUTDOWN_CONFIG"
    echo "KUBELET_EXTRA_ARGS=$STATS_ARGS --config=$SHUTDOWN_CONFIG" >/etc/default/kubelet
    # The uptime clock is the guest's: the same for every marker.
    cat >"$SHARE/out/marker.sh" <<'EOF'
#!/bin/sh
name="$1"
m() { echo "$name $1 $(cut -d' ' -f1 /proc/uptime)" >>/share/shutdown-markers; }
if [ "$name" = vm-low ]; then trap 'm term; sleep 3; m exit; exit 0' TERM; else trap 'm term; exit 0' TERM; fi
m start
while :; do sleep 1; done
EOF
    # The agent's log on the serial console too: the host reads how its
    # shutdown processing ended after the guest is gone.
    install -d /etc/systemd/journald.conf.d
    printf '[Journal]\nForwardToConsole=yes\nMaxLevelConsole=info\n' >/etc/systemd/journald.conf.d/50-vm-console.conf
    systemctl restart systemd-journald.service || fail_with "restarting journald failed" || return 1
    marker_pod vm-low 0
    marker_pod vm-crit 2000001000
    timeout 120 systemctl start kubelet.service || fail_with "systemctl start kubelet failed" || return 1
    wait_for "pods vm-low and vm-crit Running" "$POD_WAIT" pods_low_crit_running ||
        fail_with "pods: vm-low '$(pod_state vm-low)' vm-crit '$(pod_state vm-crit)'" || return 1
    wait_for "the agent's delay inhibitor" 30 inhibitor_held ||
        fail_with "no kubelet delay lock: $(systemd-inhibit --list --no-pager 2>&1 | tr '\n' ' ')" || return 1
    local delay
    delay="$(busctl get-property org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager InhibitDelayMaxUSec)"
    [ "$delay" = "t 15000000" ] || fail_with "logind InhibitDelayMaxUSec is '$delay', not 15 s" || return 1
    log "inhibitor: $(systemd-inhibit --list --no-pager | grep kubelet); logind InhibitDelayMaxUSec $delay; markers: $(one_line "$(cat "$SHARE/out/shutdown-markers" 2>/dev/null)")"
}

# bench (figures, not a pass/fail on speed): pod start on this systemd +
# cgroup v2 node, per cgroup driver, for 1 pod and BENCH_PODS pods at once,
# against the floor driven by hand in the same guest (scripts/bench/floor.sh:
# netns, the CNI plugins, ctr run of pause and app, with runc's systemd driver
# for the systemd case), and the agent's RSS with the pods. Each figure is
# printed as `[vm-bench] ...`; scripts/vm-test.sh keeps them in
# last-run/bench.txt and scripts/bench.sh prints them. The check fails only
# when a pod does not start or a figure cannot be taken.
BENCH_PODS=10
BENCH_DIR=/var/lib/rkubelet-vm-bench

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Pods whose status.json says Running (the bench pods have one container; the
# agent reports Running once it runs). One grep: under TCG every process
# started while polling is CPU taken from the agent.
agent_running() {
    local files=("$ROOT_DIR"/pods/*/status.json)
    [ -e "${files[0]}" ] || { echo 0; return; }
    grep -l '"phase": "Running"' "${files[@]}" 2>/dev/null | wc -l
}
no_pod_dirs() { [ -z "$(ls -A "$ROOT_DIR/pods" 2>/dev/null)" ]; }

bench_manifest() {
    static_pod "$1" 1 app '["sleep", "3600"]' >"$BENCH_DIR/staging/$1.yaml"
}

# bench_agent N: N manifests moved into the manifest dir at once; prints the
# ms until all N pods are Running (polled every 200 ms) and the agent's RSS
# (KiB) then; removes the pods.
bench_agent() {
    local n="$1" i t0 t1 deadline
    rm -rf "$BENCH_DIR/staging"
    mkdir -p "$BENCH_DIR/staging"
    for ((i = 1; i <= n; i++)); do bench_manifest "bench-$i"; done
    t0="$(now_ms)"
    mv "$BENCH_DIR/staging/"*.yaml /etc/kubernetes/manifests/
    deadline=$((t0 + 180000))
    while [ "$(agent_running)" -lt "$n" ]; do
        [ "$(now_ms)" -lt "$deadline" ] || { echo "agent: $(agent_running) of $n pods Running after 180 s" >&2; return 1; }
        sleep 0.2
    done
    t1="$(now_ms)"
    echo "$((t1 - t0)) $(awk '/^VmRSS:/ { print $2 }' "/proc/$(systemctl show -p MainPID --value rkubelet.service)/status")"
    rm -f /etc/kubernetes/manifests/bench-*.yaml
    wait_for "the bench pods gone" 120 no_pod_dirs >/dev/null || { echo "agent: pods left after the bench" >&2; return 1; }
}

# bench_floor N: N floor pods at once; prints the ms until every `ctr run -d`
# of their apps returned, then removes them.
bench_floor() {
    local n="$1" i t0 t1 rc=0 p
    local -a ids=() pids=()
    for ((i = 1; i <= n; i++)); do ids+=("${FLOOR_PREFIX}$i"); done
    t0="$(now_ms)"
    for i in "${ids[@]}"; do
        floor_pod_up "$i" 2>"$FLOOR_DIR/$i.err" &
        pids+=("$!")
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    t1="$(now_ms)"
    local running
    running="$(floor_running_count "${ids[@]}")"
    floor_down_all "${ids[@]}" >/dev/null 2>&1 || true
    [ "$rc" -eq 0 ] && [ "$running" -eq "$n" ] || { echo "floor: $running of $n apps RUNNING: $(cat "$FLOOR_DIR"/*.err 2>/dev/null | head -c 300)" >&2; return 1; }
    echo $((t1 - t0))
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

check_bench() {
    # shellcheck source=scripts/bench/floor.sh
    . "$SHARE/repo/scripts/bench/floor.sh"
    FLOOR_NS="$NS" FLOOR_CONFLIST=/etc/cni/net.d/10-rkubelet.conflist FLOOR_CNI_PATH=/usr/lib/cni:/opt/cni/bin
    FLOOR_DIR="$BENCH_DIR/floor" FLOOR_PAUSE_IMAGE="$PAUSE_REF" FLOOR_APP_IMAGE="$BUSYBOX_REF"
    floor_init || fail_with "floor_init failed" || return 1
    rm -f /etc/kubernetes/manifests/*.yaml
    local driver args a1 f1 an fn rss _
    for driver in cgroupfs systemd; do
        timeout 120 systemctl stop kubelet.service 2>/dev/null || true
        args="--pod-infra-container-image=$PAUSE_REF --cgroup-driver=$driver"
        echo "KUBELET_EXTRA_ARGS=$args" >/etc/default/kubelet
        timeout 120 systemctl start kubelet.service || fail_with "systemctl start kubelet ($driver) failed" || return 1
        wait_for "no pods left" 120 no_pod_dirs || fail_with "pods of earlier checks left ($driver)" || return 1
        FLOOR_SYSTEMD=0
        [ "$driver" = systemd ] && FLOOR_SYSTEMD=1
        # No warm-up: the images are unpacked and CNI has run for the earlier checks.
        f1="$(bench_floor 1)" || fail_with "floor 1 pod ($driver) failed" || return 1
        # Through a file: bench_agent's teardown must end before the next figure.
        bench_agent 1 >"$BENCH_DIR/agent.out" || fail_with "agent 1 pod ($driver) failed" || return 1
        read -r a1 _ <"$BENCH_DIR/agent.out"
        fn="$(bench_floor "$BENCH_PODS")" || fail_with "floor $BENCH_PODS pods ($driver) failed" || return 1
        bench_agent "$BENCH_PODS" >"$BENCH_DIR/agent.out" || fail_with "agent $BENCH_PODS pods ($driver) failed" || return 1
        read -r an rss <"$BENCH_DIR/agent.out"
        echo "[vm-bench] driver=$driver pods=1 rkubelet_ms=$a1 floor_ms=$f1 ratio=$(ratio "$a1" "$f1")"
        echo "[vm-bench] driver=$driver pods=$BENCH_PODS rkubelet_ms=$an floor_ms=$fn ratio=$(ratio "$an" "$fn") rkubelet_rss_kib=$rss"
    done
    echo "KUBELET_EXTRA_ARGS=$SD_ARGS" >/etc/default/kubelet
}

# --- run ------------------------------------------------------------------------------
passed=0 failed=0
result() { # result NAME RC
    if [ "$2" -eq 0 ]; then
        echo "PASS $1"
        passed=$((passed + 1))
    else
        echo "FAIL $1: ${DETAIL:-failed}"
        failed=$((failed + 1))
    fi
}

read -r -a selected <<<"${RK_VM_CHECKS:-${CHECKS[*]}}"
for name in "${selected[@]}"; do
    declare -F "check_${name//-/_}" >/dev/null || die "unknown check: $name (known: ${CHECKS[*]} ${OPT_IN_CHECKS[*]})"
done
rc=0
DETAIL=""
setup || rc=$?
result setup "$rc"
if [ "$rc" -eq 0 ]; then
    for name in "${selected[@]}"; do
        rc=0
        DETAIL=""
        "check_${name//-/_}" || rc=$?
        result "$name" "$rc"
    done
fi
if [ "$failed" -gt 0 ]; then
    echo "--- journal of rkubelet.service (last 60 lines)"
    journalctl -u rkubelet.service -o short-monotonic --no-pager -n 60 || true
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
