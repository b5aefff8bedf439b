#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) for rkubelet's tests and demo.
# Idempotent: every step checks first and does nothing when already done, so a
# second run takes a few seconds.
#
#  1. install the Debian packages (only when one is missing)
#  2. mount the cgroup v1 hugetlb hierarchy (warning on failure)
#  3. install cni/10-rkubelet.conflist into /etc/cni/net.d (only if it has none)
#  4. start containerd unless `ctr version` answers
#  5. start a local registry on 127.0.0.1:5000 unless /v2/ answers
#  6. build/import/push the test images (scripts/test-images.sh)
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root

PACKAGES=(
    containerd runc containernetworking-plugins busybox-static catatonit
    docker-registry skopeo umoci iproute2 iptables protobuf-compiler jq curl
    systemd
)
CNI_CONF_DIR="${CNI_CONF_DIR:-/etc/cni/net.d}"
CONTAINERD_LOG="${CONTAINERD_LOG:-/var/log/containerd.log}"
CONTAINERD_PIDFILE="$RK_RUN_DIR/containerd.pid"
REGISTRY_DIR="$RK_STATE_DIR/registry"
REGISTRY_CONFIG="$RK_STATE_DIR/registry-config.yml"
REGISTRY_LOG="${REGISTRY_LOG:-/var/log/rkubelet-test-registry.log}"
REGISTRY_PIDFILE="$RK_RUN_DIR/registry.pid"

mkdir -p "$RK_STATE_DIR" "$RK_RUN_DIR"

# --- 1. packages -------------------------------------------------------------
install_packages() {
    local missing
    mapfile -t missing < <(pkgs_missing "${PACKAGES[@]}")
    # kubectl drives the test API server in tests. This machine kind ships one;
    # elsewhere Debian's (older) kubernetes-client provides it.
    if ! have kubectl; then
        missing+=(kubernetes-client)
    fi
    if [ "${#missing[@]}" -eq 0 ]; then
        log "packages: all ${#PACKAGES[@]} installed"
        return 0
    fi
    log "packages: installing ${missing[*]}"
    # Keep package scripts from starting their own services (docker-registry
    # would listen on :5000 with its own config, containerd would be started
    # twice). Only when the machine has no policy of its own.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 "${missing[@]}"
    } || rc=$?
    if [ "$added_policy" -eq 1 ]; then rm -f "$policy"; fi
    [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc)"
    mapfile -t missing < <(pkgs_missing "${PACKAGES[@]}")
    have kubectl || missing+=(kubectl)
    [ "${#missing[@]}" -eq 0 ] || die "still missing after apt-get: ${missing[*]}"
}

# --- 2. hugetlb cgroup -----------------------------------------------------------
mount_hugetlb() {
    if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = "cgroup2fs" ]; then
        log "hugetlb: cgroup v2 unified mode, nothing to mount"
        return 0
    fi
    if awk '$3 == "cgroup" && $4 ~ /(^|,)hugetlb(,|$)/ { found = 1 } END { exit !found }' /proc/mounts; then
        log "hugetlb: cgroup v1 hierarchy already mounted"
        return 0
    fi
    if mkdir -p /sys/fs/cgroup/hugetlb 2>/dev/null &&
        mount -t cgroup -o hugetlb none /sys/fs/cgroup/hugetlb 2>/dev/null; then
        log "hugetlb: mounted /sys/fs/cgroup/hugetlb"
    else
        warn "hugetlb: could not mount the cgroup v1 hugetlb hierarchy; hugepage limits will fail"
    fi
}

# --- 3. CNI configuration --------------------------------------------------------
install_cni_conf() {
    mkdir -p "$CNI_CONF_DIR"
    local existing
    existing="$(find "$CNI_CONF_DIR" -maxdepth 1 -type f \( -name '*.conf' -o -name '*.conflist' -o -name '*.json' \) -print -quit)"
    if [ -n "$existing" ]; then
        log "cni: $CNI_CONF_DIR already has a network config ($(basename "$existing")), leaving it"
        return 0
    fi
    install -m 0644 "$RK_REPO_ROOT/cni/10-rkubelet.conflist" "$CNI_CONF_DIR/10-rkubelet.conflist"
    log "cni: installed $CNI_CONF_DIR/10-rkubelet.conflist"
}

# --- 4. containerd ----------------------------------------------------------------
start_containerd() {
    if ctr_ok; then
        log "containerd: answering"
        return 0
    fi
    if pid_alive "$CONTAINERD_PIDFILE" containerd; then
        log "containerd: started earlier (pid $(cat "$CONTAINERD_PIDFILE")) but not answering yet"
    else
        start_daemon containerd "$CONTAINERD_PIDFILE" "$CONTAINERD_LOG" containerd
    fi
    if ! wait_for "containerd to answer 'ctr version'" 30 ctr_ok; then
        tail -n 20 "$CONTAINERD_LOG" >&2 || true
        die "containerd did not come up (log: $CONTAINERD_LOG)"
    fi
    log "containerd: up (pid $(cat "$CONTAINERD_PIDFILE"))"
}

# --- 5. local registry ------------------------------------------------------------
start_registry() {
    local url="http://$RK_REGISTRY/v2/"
    if http_ok "$url"; then
        log "registry: answering at $url"
        return 0
    fi
    # Something else answering on the port (auth, another service) is an error:
    # pushes would fail later with a confusing message.
    local code
    code="$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 "$url" 2>/dev/null || true)"
    if [ -n "$code" ] && [ "$code" != "000" ]; then
        die "registry: $url answers HTTP $code; is another registry (with auth) using the port?"
    fi
    mkdir -p "$REGISTRY_DIR"
    cat >"$REGISTRY_CONFIG" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR
  delete:
    enabled: true
http:
  addr: $RK_REGISTRY
EOF
    if pid_alive "$REGISTRY_PIDFILE" docker-registry; then
        log "registry: started earlier (pid $(cat "$REGISTRY_PIDFILE")) but not answering yet"
    else
        start_daemon registry "$REGISTRY_PIDFILE" "$REGISTRY_LOG" docker-registry serve "$REGISTRY_CONFIG"
    fi
    if ! wait_for "registry at $url" 30 http_ok "$url"; then
        tail -n 20 "$REGISTRY_LOG" >&2 || true
        die "registry did not come up (log: $REGISTRY_LOG)"
    fi
    log "registry: up at $url (pid $(cat "$REGISTRY_PIDFILE"), storage $REGISTRY_DIR)"
}

install_packages
mount_hugetlb
install_cni_conf
start_containerd
start_registry
bash "$RK_REPO_ROOT/scripts/test-images.sh"
log "setup complete"
