#!/usr/bin/env bash
# rkubelet on a real systemd + cgroup v2 node: boots a Debian 12 guest under
# qemu (TCG; KVM does not work on this kind of machine), installs the agent
# there with scripts/install.sh and runs scripts/vm/checks.sh inside. One
# command, as root:
#
#   1. installs qemu-system-x86 and debootstrap (and the image tools) if missing
#   2. builds the guest image once (scripts/vm/build-image.sh) and caches it in
#      $RK_VM_CACHE/image-<hash of the image recipe>; a changed recipe rebuilds
#   3. builds rkubelet (cargo build --release; RKUBELET_BIN skips the build) and
#      the busybox + pause OCI archives (scripts/test-images.sh --archives)
#   4. boots the guest with the binary, scripts/, systemd/ and the images on a
#      9p share; the guest runs the checks, writes their output and exit code
#      into the share and powers off; then boots it again on the legacy cgroup
#      v1 hierarchy for the systemd driver there
#   5. prints the checks' output; exits 1 if a check failed or the guest did not
#      report back within RK_VM_TIMEOUT seconds (qemu is then killed)
#
# Environment:
#   RK_VM_CHECKS     checks to run, space-separated (default: all; see checks.sh)
#   RK_VM_TIMEOUT    seconds the whole boot + checks may take (default 720)
#   RK_VM_V1_CHECKS  checks of the second boot, on cgroup v1 (default:
#                    environment-v1 systemd-driver-v1; empty: no second boot)
#   RK_VM_V1_TIMEOUT seconds the second boot may take (default 300)
#   RK_VM_SMP        guest CPUs (default 2), RK_VM_MEM guest MiB (default 2048)
#   RK_VM_CACHE      image cache (default /var/cache/rkubelet-vm)
#   RK_VM_MIRROR     Debian mirror for the image build (default: the host's apt source)
#   RKUBELET_BIN     the agent binary to test (default: build it)
#   CARGO_TARGET_DIR (default /var/cache/rkubelet-target)
# The guest's disk is opened with snapshot=on (every boot starts from the
# pristine image); its overlay and the share live in a scratch dir under
# /var/tmp, removed at the end. The last run's console log, qemu's own output
# and the check output are kept in $RK_VM_CACHE/last-run/. Runs hold
# $RK_VM_CACHE/lock, so two of them take turns.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rkubelet-target}"
CACHE="${RK_VM_CACHE:-/var/cache/rkubelet-vm}"
TIMEOUT="${RK_VM_TIMEOUT:-720}"
SMP="${RK_VM_SMP:-2}"
MEM="${RK_VM_MEM:-2048}"
PACKAGES=(qemu-system-x86 debootstrap e2fsprogs umoci skopeo jq busybox-static catatonit)
# The files whose content makes the image; their hash names the cache entry.
IMAGE_RECIPE=("$RK_REPO_ROOT/scripts/vm/build-image.sh" "$RK_REPO_ROOT/scripts/vm/guest-runner.sh")

started="$(date +%s)"
elapsed() { echo "$(($(date +%s) - started))s"; }

# --- 1. packages ---------------------------------------------------------------
install_packages() {
    local missing
    mapfile -t missing < <(pkgs_missing "${PACKAGES[@]}")
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "packages: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        warn "apt-get update failed; trying the install with the current lists"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" ||
        die "apt-get install ${missing[*]} failed"
}

# The Debian mirror of the host's apt sources (deb822 or one-line format).
host_mirror() {
    local uri
    uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' || true)"
    if [ -z "$uri" ]; then
        uri="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }' /etc/apt/sources.list 2>/dev/null || true)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# --- 2. the guest image ---------------------------------------------------------
# Sets IMAGE to the cached image directory, building it first if needed.
ensure_image() {
    local key
    key="$(cat "${IMAGE_RECIPE[@]}" | sha256sum | cut -c1-16)"
    IMAGE="$CACHE/image-$key"
    mkdir -p "$CACHE"
    exec 8>"$CACHE/lock"
    flock -w 900 8 || die "another vm-test.sh holds $CACHE/lock"
    if [ -f "$IMAGE/rootfs.raw" ] && [ -f "$IMAGE/vmlinuz" ] && [ -f "$IMAGE/initrd.img" ]; then
        log "image: cached $IMAGE"
        return 0
    fi
    local mirror="${RK_VM_MIRROR:-$(host_mirror)}" build="$CACHE/.build-$key" t0
    t0="$(date +%s)"
    log "image: building $IMAGE from $mirror (a few minutes; log $CACHE/build.log)"
    rm -rf "$build"
    if ! bash "$RK_REPO_ROOT/scripts/vm/build-image.sh" "$build" "$mirror" >"$CACHE/build.log" 2>&1; then
        tail -n 30 "$CACHE/build.log" >&2
        rm -rf "$build"
        die "image build failed (log: $CACHE/build.log)"
    fi
    # Older images (other recipes) go; only one is kept.
    find "$CACHE" -maxdepth 1 -name 'image-*' -type d -exec rm -rf {} +
    mv "$build" "$IMAGE"
    log "image: built in $(($(date +%s) - t0))s"
}

# --- 3. what goes into the guest -------------------------------------------------
prepare_share() {
    local share="$1"
    mkdir -p "$share/repo" "$share/images" "$share/out"
    install -m 0755 "$BIN" "$share/rkubelet"
    cp -a "$RK_REPO_ROOT/scripts" "$RK_REPO_ROOT/systemd" "$RK_REPO_ROOT/cni" "$share/repo/"
    bash "$RK_REPO_ROOT/scripts/test-images.sh" --archives "$share/images" >/dev/null
    write_run_sh "$share" "${RK_VM_CHECKS:-}" "$TIMEOUT"
}

# write_run_sh SHARE CHECKS SECS: the guest's runner starts /mnt/host/run.sh
# (checks.sh with CHECKS; empty: all) and stops it after run-timeout s.
write_run_sh() {
    echo $(($3 - 60 > 60 ? $3 - 60 : 60)) >"$1/run-timeout"
    cat >"$1/run.sh" <<EOF
#!/bin/sh
exec env RK_VM_CHECKS='$2' bash /mnt/host/repo/scripts/vm/checks.sh /mnt/host
EOF
    chmod 0755 "$1/run.sh"
}

# --- 4. boot -------------------------------------------------------------------------
QEMU_PID=""
SCRATCH=""
# stop_qemu: TERM, up to 5 s, then KILL; only the qemu this script started.
stop_qemu() {
    [ -n "$QEMU_PID" ] || return 0
    kill "$QEMU_PID" 2>/dev/null || true
    local _
    for _ in 1 2 3 4 5; do
        proc_alive "$QEMU_PID" || break
        sleep 1
    done
    if proc_alive "$QEMU_PID"; then kill -KILL "$QEMU_PID" 2>/dev/null || true; fi
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=""
}
cleanup() {
    stop_qemu
    if [ -n "$SCRATCH" ]; then rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# boot SHARE CONSOLE_LOG [CGROUP_ARG [SECS]]: runs the guest until it powers
# off; 1 if it did not within SECS (default TIMEOUT) seconds (qemu is then
# killed). CGROUP_ARG picks the hierarchy (default the unified v2 one).
boot() {
    local share="$1" console="$2" cgroup="${3:-systemd.unified_cgroup_hierarchy=1}" limit="${4:-$TIMEOUT}" deadline
    # snapshot=on puts the disk overlay in $TMPDIR: the scratch dir, not /tmp.
    TMPDIR="$SCRATCH" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -smp "$SMP" -m "$MEM" \
        -nodefaults -display none -no-reboot -monitor none \
        -serial "file:$console" \
        -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" \
        -append "console=ttyS0 root=/dev/vda rw panic=-1 $cgroup" \
        -drive "file=$IMAGE/rootfs.raw,format=raw,if=virtio,snapshot=on" \
        -virtfs "local,path=$share,mount_tag=host,security_model=none,id=host" \
        -nic none </dev/null >"$SCRATCH/qemu.log" 2>&1 &
    QEMU_PID=$!
    log "boot: qemu pid $QEMU_PID (TCG, $SMP CPUs, $MEM MiB, $cgroup; console $console; at most ${limit}s)"
    deadline=$(($(date +%s) + limit))
    local polls=0
    while proc_alive "$QEMU_PID"; do
        polls=$((polls + 1))
        if [ "$(date +%s)" -ge "$deadline" ] || [ "$polls" -gt $((limit / 2 + 1)) ]; then
            warn "boot: the guest did not power off within ${limit}s; killing qemu (pid $QEMU_PID)"
            stop_qemu
            return 1
        fi
        sleep 2
    done
    local rc=0
    wait "$QEMU_PID" || rc=$?
    QEMU_PID=""
    [ "$rc" -eq 0 ] || warn "qemu exited with status $rc: $(tail -n 5 "$SCRATCH/qemu.log")"
}

install_packages
have qemu-system-x86_64 || die "qemu-system-x86_64 not found after installing qemu-system-x86"
ensure_image
resolve_rkubelet_bin build
SCRATCH="$(mktemp -d /var/tmp/rkubelet-vm.XXXXXX)"
SHARE="$SCRATCH/share"
prepare_share "$SHARE"
LAST="$CACHE/last-run"
rm -rf "$LAST"
mkdir -p "$LAST"
timed_out=0
boot "$SHARE" "$LAST/console.log" || timed_out=1
cp -a "$SHARE/out/." "$SCRATCH/qemu.log" "$LAST/" 2>/dev/null || true

# graceful-shutdown, read here after the poweroff: the guest's last check
# (shutdown-prepare) left two pods writing markers on SIGTERM. The poweroff
# must have stopped vm-low (priority 0; 3 s to exit) first and vm-crit
# (critical) only after it, all within shutdownGracePeriod (15 s), with the
# agent releasing its inhibitor lock at the end.
graceful_shutdown() {
    local m="$LAST/shutdown-markers" t
    [ -f "$m" ] || { echo "no markers ($m)"; return 1; }
    t() { awk -v k="$1 $2" '$1 " " $2 == k { print $3; exit }' "$m"; }
    local low_term low_exit crit_term
    low_term="$(t vm-low term)" low_exit="$(t vm-low exit)" crit_term="$(t vm-crit term)"
    [ -n "$low_term" ] && [ -n "$low_exit" ] && [ -n "$crit_term" ] || { echo "markers: $(tr '\n' ' ' <"$m")"; return 1; }
    awk -v a="$low_exit" -v b="$crit_term" 'BEGIN { exit !(b >= a) }' ||
        { echo "vm-crit got SIGTERM at $crit_term, before vm-low exited at $low_exit"; return 1; }
    awk -v a="$low_term" -v b="$crit_term" 'BEGIN { exit !(b - a <= 15) }' ||
        { echo "vm-low term $low_term to vm-crit term $crit_term: over the 15 s shutdownGracePeriod"; return 1; }
    grep -q 'Shutdown manager completed processing shutdown event' "$LAST/console.log" ||
        { echo "the agent did not report the end of its shutdown processing (console)"; return 1; }
    echo "vm-low term $low_term exit $low_exit, vm-crit term $crit_term (guest uptime, s)"
}
if grep -q '^PASS shutdown-prepare' "$LAST/run.log" 2>/dev/null; then
    if detail="$(graceful_shutdown)"; then
        echo "[vm-checks] graceful shutdown: $detail" >>"$LAST/run.log"
        echo "PASS graceful-shutdown" >>"$LAST/run.log"
    else
        echo "FAIL graceful-shutdown: $detail" >>"$LAST/run.log"
    fi
fi
# The second boot: the same image on the legacy cgroup v1 hierarchy, for the
# systemd driver there (the host tests cover cgroupfs on v1). Its results join
# run.log as `PASS v1:<check>`.
V1_CHECKS="${RK_VM_V1_CHECKS-environment-v1 systemd-driver-v1}"
V1_TIMEOUT="${RK_VM_V1_TIMEOUT:-300}"
if [ -n "$V1_CHECKS" ] && [ "$timed_out" = 0 ]; then
    rm -rf "$SHARE/out"
    mkdir -p "$SHARE/out"
    write_run_sh "$SHARE" "$V1_CHECKS" "$V1_TIMEOUT"
    v1_timed_out=0
    boot "$SHARE" "$LAST/console-v1.log" "systemd.unified_cgroup_hierarchy=0" "$V1_TIMEOUT" || v1_timed_out=1
    if [ -f "$SHARE/out/run.log" ]; then
        sed -E 's/^(PASS|FAIL) /\1 v1:/; s/^([0-9]+ passed, [0-9]+ failed)$/v1: \1/' "$SHARE/out/run.log" >>"$LAST/run.log"
    fi
    v1_rc="$(cat "$SHARE/out/run.rc" 2>/dev/null || echo none)"
    if [ "$v1_timed_out" = 1 ] || [ "$v1_rc" != 0 ]; then
        echo "FAIL v1:boot: checks exit $v1_rc (console: $LAST/console-v1.log)" >>"$LAST/run.log"
    fi
fi
if [ -f "$LAST/run.log" ]; then
    cat "$LAST/run.log"
    # The bench check's figures, for scripts/bench.sh.
    grep '^\[vm-bench\] ' "$LAST/run.log" >"$LAST/bench.txt" || rm -f "$LAST/bench.txt"
fi
rc="$(cat "$LAST/run.rc" 2>/dev/null || echo none)"
failed="$(grep -c '^FAIL ' "$LAST/run.log" 2>/dev/null || true)"
passed="$(grep -c '^PASS ' "$LAST/run.log" 2>/dev/null || true)"
log "done in $(elapsed): ${passed:-0} passed, ${failed:-0} failed; checks exit $rc; boot state $(cat "$LAST/boot-state" 2>/dev/null || echo unknown)"
if [ "$timed_out" = 1 ] || [ "$rc" = none ]; then
    tail -n 40 "$LAST/console.log" "$LAST/qemu.log" >&2 || true
    die "the guest did not report back (console log: $LAST/console.log)"
fi
if [ "$rc" != 0 ] || [ "${failed:-0}" != 0 ] || [ "${passed:-0}" -eq 0 ]; then
    die "VM checks failed (output: $LAST/run.log, console: $LAST/console.log)"
fi
log "VM checks passed"
