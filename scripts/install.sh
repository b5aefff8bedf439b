#!/usr/bin/env bash
# Installs rkubelet as the node's kubelet, next to a running containerd
# (Debian/Ubuntu). Safe to run again: files already in place are left alone.
#
#   /usr/local/bin/rkubelet                             the release binary
#   /usr/local/bin/kubelet -> rkubelet                  unless a real kubelet exists
#   /etc/systemd/system/rkubelet.service                systemd/rkubelet.service
#   /etc/systemd/system/rkubelet.service.d/10-kubeadm.conf
#                                                       systemd/10-kubeadm.conf
#   /etc/systemd/system/rkubelet-reset.{path,service}   systemd/rkubelet-reset.*
#                                                       (`rkubelet reset` after kubeadm reset)
#   /etc/kubernetes/manifests/                          static pods (standalone)
#   and `systemctl enable rkubelet.service rkubelet-reset.path`; the first also
#   links kubelet.service (Alias=) so kubeadm's `systemctl restart kubelet`
#   reaches rkubelet.
#
# Usage: scripts/install.sh [--destdir DIR] [--binary FILE]
#   --destdir DIR   install below DIR instead of / (also $DESTDIR); systemctl
#                   then works offline on DIR (`systemctl --root`), nothing is
#                   started
#   --binary FILE   the rkubelet binary to install (default: cargo build
#                   --release, then $CARGO_TARGET_DIR/release/rkubelet)
#
# Refuses (exit 2, nothing changed) when a kubelet that is not rkubelet is on
# the node: remove the kubelet package first (`apt-get remove kubelet`).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_destdir_args --binary-ok "$@"

BIN_DIR="$DESTDIR/usr/local/bin"
UNIT_DIR="$DESTDIR/etc/systemd/system"
DROPIN_DIR="$UNIT_DIR/rkubelet.service.d"
MANIFEST_DIR="$DESTDIR/etc/kubernetes/manifests"

# is_rkubelet FILE: FILE is (a link to) an rkubelet binary.
is_rkubelet() {
    local f="$1"
    [ -e "$f" ] || return 1
    case "$(readlink -f "$f")" in */rkubelet) return 0 ;; esac
    "$f" --version 2>/dev/null | grep -q '+rkubelet\.'
}

# A real kubelet anywhere kubeadm would find one: refuse before touching anything.
kubelet_paths=("$DESTDIR/usr/bin/kubelet" "$DESTDIR/usr/local/bin/kubelet" "$DESTDIR/bin/kubelet" "$DESTDIR/usr/sbin/kubelet")
if [ -z "$DESTDIR" ] && have kubelet; then
    kubelet_paths+=("$(command -v kubelet)")
fi
for k in "${kubelet_paths[@]}"; do
    if [ -e "$k" ] && ! is_rkubelet "$k"; then
        printf '[install] ERROR: a kubelet that is not rkubelet is installed: %s\n' "${k#"$DESTDIR"}" >&2
        printf '[install] remove it first (apt-get remove kubelet) or install rkubelet on another node; nothing was changed\n' >&2
        exit 2
    fi
done

if [ -z "$BINARY" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rkubelet-target}"
    log "building the release binary (cargo build --release)"
    (cd "$RK_REPO_ROOT" && cargo build --release --quiet --bin rkubelet)
    BINARY="$CARGO_TARGET_DIR/release/rkubelet"
fi
[ -x "$BINARY" ] || die "not an executable: $BINARY"

changed=0
# put MODE SRC DEST: installs SRC as DEST unless DEST already has its content and mode.
put() {
    local mode="$1" src="$2" dest="$3"
    if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "$mode" ]; then
        return 0
    fi
    install -D -m "$mode" "$src" "$dest"
    log "installed ${dest#"$DESTDIR"}"
    changed=1
}

put 755 "$BINARY" "$BIN_DIR/rkubelet"
if [ "$(readlink "$BIN_DIR/kubelet" 2>/dev/null)" != "rkubelet" ]; then
    ln -sfn rkubelet "$BIN_DIR/kubelet"
    log "linked /usr/local/bin/kubelet -> rkubelet"
    changed=1
fi
put 644 "$RK_REPO_ROOT/systemd/rkubelet.service" "$UNIT_DIR/rkubelet.service"
put 644 "$RK_REPO_ROOT/systemd/10-kubeadm.conf" "$DROPIN_DIR/10-kubeadm.conf"
put 644 "$RK_REPO_ROOT/systemd/rkubelet-reset.path" "$UNIT_DIR/rkubelet-reset.path"
put 644 "$RK_REPO_ROOT/systemd/rkubelet-reset.service" "$UNIT_DIR/rkubelet-reset.service"
if [ ! -d "$MANIFEST_DIR" ]; then
    install -d -m 755 "$MANIFEST_DIR"
    log "created /etc/kubernetes/manifests"
fi

# Enable (WantedBy= and Alias= links). On a live system also reload systemd.
UNITS=(rkubelet.service rkubelet-reset.path)
if [ -n "$DESTDIR" ]; then
    have systemctl || die "systemctl is needed to enable the units below $DESTDIR"
    for u in "${UNITS[@]}"; do
        if ! systemctl --root="$DESTDIR" --quiet is-enabled "$u" 2>/dev/null; then
            systemctl --root="$DESTDIR" --quiet enable "$u"
            log "enabled $u below $DESTDIR"
        fi
    done
elif [ -d /run/systemd/system ]; then
    [ "$changed" = 0 ] || systemctl daemon-reload
    for u in "${UNITS[@]}"; do
        if ! systemctl --quiet is-enabled "$u" 2>/dev/null; then
            systemctl --quiet enable "$u"
            log "enabled $u"
        fi
    done
    systemctl --quiet start rkubelet-reset.path || warn "could not start rkubelet-reset.path"
    log "start it with: systemctl start kubelet   (or run kubeadm join)"
else
    systemctl --root=/ --quiet enable "${UNITS[@]}" 2>/dev/null || warn "could not enable ${UNITS[*]}"
    warn "systemd is not running here: the units are installed and enabled but not started"
fi
log "rkubelet $("$BIN_DIR/rkubelet" --version) installed"
