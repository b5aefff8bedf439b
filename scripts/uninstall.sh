#!/usr/bin/env bash
# Removes what scripts/install.sh installed. Pods keep running (the unit uses
# KillMode=process); `kubeadm reset` is what removes the node's state.
#
# Usage: scripts/uninstall.sh [--destdir DIR]   (also $DESTDIR)
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_destdir_args "$@"

UNIT_DIR="$DESTDIR/etc/systemd/system"
UNITS=(rkubelet.service rkubelet-reset.path)
if [ -e "$UNIT_DIR/rkubelet.service" ]; then
    if [ -n "$DESTDIR" ]; then
        systemctl --root="$DESTDIR" --quiet disable "${UNITS[@]}" 2>/dev/null || true
    elif [ -d /run/systemd/system ]; then
        systemctl --quiet disable --now "${UNITS[@]}" || true
    else
        systemctl --root=/ --quiet disable "${UNITS[@]}" 2>/dev/null || true
    fi
fi
rm -f "$UNIT_DIR/rkubelet.service.d/10-kubeadm.conf"
rmdir "$UNIT_DIR/rkubelet.service.d" 2>/dev/null || true
rm -f "$UNIT_DIR/rkubelet.service" "$UNIT_DIR/rkubelet-reset.path" "$UNIT_DIR/rkubelet-reset.service"
# The kubelet link only if it is ours.
if [ "$(readlink "$DESTDIR/usr/local/bin/kubelet" 2>/dev/null)" = "rkubelet" ]; then
    rm -f "$DESTDIR/usr/local/bin/kubelet"
fi
rm -f "$DESTDIR/usr/local/bin/rkubelet"
[ -n "$DESTDIR" ] || [ ! -d /run/systemd/system ] || systemctl daemon-reload
log "rkubelet removed (pods, /var/lib/kubelet and /etc/kubernetes are left alone)"
