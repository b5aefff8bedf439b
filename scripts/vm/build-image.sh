#!/usr/bin/env bash
# Builds the Debian 12 guest that scripts/vm-test.sh boots under qemu: systemd as
# PID 1, the unified cgroup v2 hierarchy, containerd + runc + the CNI plugins,
# as on the nodes rkubelet runs on. Called by vm-test.sh when its cache has no
# image for this script's content; run by hand only to debug the build.
#
# Usage: scripts/vm/build-image.sh OUTDIR MIRROR
#   OUTDIR/rootfs.raw   ext4 root filesystem (made with `mkfs.ext4 -d`, no loop mount)
#   OUTDIR/vmlinuz      the generic Debian kernel (the -cloud flavour lacks 9p)
#   OUTDIR/initrd.img   an initrd with only virtio, ext4 and 9p
# MIRROR is the Debian mirror debootstrap downloads from (the host's apt source).
#
# The guest runs scripts/vm/guest-runner.sh (installed as
# /usr/local/sbin/rk-vm-runner) once the system is up: it runs /mnt/host/run.sh
# from the host's 9p share, writes the output and exit code back into the share
# and powers off. The guest has no network interface; nothing in it needs one.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

require_root
OUT="${1:?usage: build-image.sh OUTDIR MIRROR}"
MIRROR="${2:?usage: build-image.sh OUTDIR MIRROR}"
SUITE=bookworm
IMAGE_SIZE=3G
GUEST_PACKAGES=(
    systemd systemd-sysv udev dbus kmod procps iproute2 iptables
    containerd runc containernetworking-plugins busybox-static initramfs-tools curl jq
)
# What the initrd needs to mount the root disk and the host share.
INITRD_MODULES=(virtio_pci virtio_blk virtio_console ext4 9pnet_virtio 9p)

for c in debootstrap mkfs.ext4 unshare chroot; do
    have "$c" || die "$c not found (packages debootstrap, e2fsprogs, util-linux)"
done
ROOT="$OUT/rootfs"
mkdir -p "$OUT"
rm -rf "$ROOT"
mkdir "$ROOT"
start=$(date +%s)

log "debootstrap $SUITE from $MIRROR into $ROOT"
nice -n 10 debootstrap --variant=minbase --include="$(IFS=,; echo "${GUEST_PACKAGES[*]}")" \
    "$SUITE" "$ROOT" "$MIRROR"
log "debootstrap took $(($(date +%s) - start))s"

# A list initrd (MODULES=list) is a few MB and builds in seconds; the default
# (most) would carry every storage driver. Set before the kernel is installed.
echo 'MODULES=list' >"$ROOT/etc/initramfs-tools/conf.d/rk-vm.conf"
printf '%s\n' "${INITRD_MODULES[@]}" >>"$ROOT/etc/initramfs-tools/modules"

# The kernel's postinst needs /proc, /sys and /dev; the mounts live in a private
# mount namespace and go away with it, even if the install fails.
log "installing linux-image-amd64 in the guest"
# shellcheck disable=SC2016  # expanded by the inner sh
unshare --mount --propagation private sh -ec '
    root="$1"
    mount -t proc proc "$root/proc"
    mount -t sysfs sys "$root/sys"
    mount --rbind /dev "$root/dev"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends linux-image-amd64
    chroot "$root" apt-get clean
' sh "$ROOT"

log "configuring the guest"
echo rk-vm >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 rk-vm\n' >"$ROOT/etc/hosts"
# The 9p share is `nofail`: a guest booted without it still comes up.
cat >"$ROOT/etc/fstab" <<'FSTAB'
/dev/vda  /          ext4  rw,relatime,errors=remount-ro  0 1
host      /mnt/host  9p    trans=virtio,version=9p2000.L,msize=524288,cache=none,nofail,x-systemd.device-timeout=5s  0 0
FSTAB
mkdir -p "$ROOT/mnt/host"

install -m 0755 "$RK_REPO_ROOT/scripts/vm/guest-runner.sh" "$ROOT/usr/local/sbin/rk-vm-runner"
cat >"$ROOT/etc/systemd/system/rk-vm-runner.service" <<'UNIT'
[Unit]
Description=rkubelet VM test: run /mnt/host/run.sh, then power off
After=multi-user.target
[Service]
Type=simple
ExecStart=/usr/local/sbin/rk-vm-runner
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
UNIT
systemctl --root="$ROOT" --quiet enable rk-vm-runner.service
# Nothing periodic may wake up during a test run; no login prompt on the console.
systemctl --root="$ROOT" --quiet mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer fstrim.timer serial-getty@ttyS0.service getty@tty1.service
cp "$(find "$ROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n1)" "$OUT/vmlinuz"
cp "$(find "$ROOT/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n1)" "$OUT/initrd.img"
rm -f "$OUT/rootfs.raw"
truncate -s "$IMAGE_SIZE" "$OUT/rootfs.raw"
mkfs.ext4 -q -F -L rk-vm-root -E lazy_itable_init=1,lazy_journal_init=1 -d "$ROOT" "$OUT/rootfs.raw"
rm -rf "$ROOT"
log "image built in $(($(date +%s) - start))s: $OUT/rootfs.raw"
