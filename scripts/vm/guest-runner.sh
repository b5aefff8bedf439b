#!/bin/sh
# Runs inside the VM guest (installed by scripts/vm/build-image.sh as
# /usr/local/sbin/rk-vm-runner, started by rk-vm-runner.service after
# multi-user.target). Waits until systemd reports the boot finished, runs
# /mnt/host/run.sh from the host's 9p share with a time limit, writes
#   /mnt/host/out/boot-state   `systemctl is-system-running` after the boot
#   /mnt/host/out/run.log      run.sh's output (also on the serial console)
#   /mnt/host/out/run.rc       its exit code (124: it ran out of time)
# and powers the guest off.
# Plain sh: the guest's /bin/sh is dash.
set -u
share=/mnt/host
out=$share/out
# Not `set -e`: whatever fails, the guest must power off (the host waits for that).
if ! mountpoint -q "$share" && ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 host "$share"; then
    echo "rk-vm-runner: cannot mount the 9p share 'host' on $share"
    systemctl --no-block poweroff
    exit 1
fi
mkdir -p "$out"
# Bounded: the host kills the VM anyway, but a hung boot should still report.
state=$(timeout 120 systemctl is-system-running --wait 2>&1)
echo "$state" >"$out/boot-state"
echo "rk-vm-runner: system $state after $(cut -d' ' -f1 /proc/uptime)s"
if [ "$state" != running ]; then
    systemctl --failed --no-legend --no-pager
fi
limit=$(cat "$share/run-timeout" 2>/dev/null || echo 300)
if [ -x "$share/run.sh" ]; then
    { timeout "$limit" "$share/run.sh" 2>&1; echo $? >"$out/run.rc.tmp"; } | tee "$out/run.log"
    mv "$out/run.rc.tmp" "$out/run.rc"
    echo "rk-vm-runner: run.sh exited $(cat "$out/run.rc")"
else
    echo "rk-vm-runner: no executable $share/run.sh"
fi
sync
systemctl --no-block poweroff
