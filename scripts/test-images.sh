#!/usr/bin/env bash
# Build the test images from static Debian binaries (no Docker, no network),
# import them into containerd (namespace k8s.io) and push them to the local
# registry. Idempotent: each step is skipped when its result is already there.
#
#   OCI layouts (umoci), tag 1.0:   $RK_STATE_DIR/images/{busybox,pause}
#   containerd (ns k8s.io):         localhost/test/busybox:1.0
#                                   localhost/rkubelet/pause:1.0
#                                   localhost/test/nobody:1.0 (busybox, USER nobody)
#   registry (plain HTTP):          127.0.0.1:5000/test/busybox:1.0
#                                   127.0.0.1:5000/test/busybox:latest
#                                   127.0.0.1:5000/test/pause:1.0
#
# Needs containerd and the registry running: scripts/setup.sh starts both and
# then calls this script. Set RK_FORCE_IMAGES=1 to rebuild everything.
#
# With `--archives DIR` it only builds the busybox and pause layouts and writes
# them as OCI archives DIR/busybox.tar and DIR/pause.tar, named as above for
# `ctr images import` (no containerd or registry needed; scripts/vm-test.sh
# passes them into its VM guest).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_root

IMAGES_DIR="$RK_STATE_DIR/images"
TAG="1.0"
BUSYBOX_REF="localhost/test/busybox:1.0"
PAUSE_REF="localhost/rkubelet/pause:1.0"
NOBODY_REF="localhost/test/nobody:1.0"
BUSYBOX_REPO="test/busybox" # in the registry, tags 1.0 and latest
PAUSE_REPO="test/pause"     # in the registry, tag 1.0
DEFAULT_PATH="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Bump to force a rebuild of every layout when the recipe changes in a way the
# recipe hash below cannot see.
RECIPE_VERSION=1

# Applets the tests rely on; the build fails if busybox lacks one. Every other
# applet busybox has is linked as well.
REQUIRED_APPLETS=(
    sh sleep httpd cat echo ls mkdir touch wget nc true false env id hostname
    ip ps kill test printf grep date rm cp mv ln chmod head tail sed awk wc
    sort tr cut find xargs expr seq stat uname whoami nslookup mount umount
    df du dd readlink tee timeout pidof free top nproc mktemp base64
    sha256sum md5sum tar gzip ping netstat hexdump
)

ARCHIVES_DIR=""
case "${1:-}" in
--archives) ARCHIVES_DIR="${2:?--archives needs a directory}" ;;
"") ;;
*) die "unknown argument: $1 (usage: test-images.sh [--archives DIR])" ;;
esac

for cmd in umoci skopeo jq; do
    have "$cmd" || die "$cmd not found: run scripts/setup.sh first"
done
[ -x /bin/busybox ] || die "/bin/busybox missing (package busybox-static): run scripts/setup.sh first"
[ -x /usr/bin/catatonit ] || die "/usr/bin/catatonit missing (package catatonit): run scripts/setup.sh first"
if [ -z "$ARCHIVES_DIR" ]; then
    have ctr || die "ctr not found: run scripts/setup.sh first"
    have curl || die "curl not found: run scripts/setup.sh first"
    ctr_ok || die "containerd does not answer 'ctr version': run scripts/setup.sh first"
    http_ok "http://$RK_REGISTRY/v2/" || die "no registry at http://$RK_REGISTRY/v2/: run scripts/setup.sh first"
fi

mkdir -p "$IMAGES_DIR" "$RK_RUN_DIR"
# One run at a time (tests or a second shell may call setup concurrently).
exec 9>"$RK_RUN_DIR/test-images.lock"
flock -w 300 9 || die "another test-images.sh holds $RK_RUN_DIR/test-images.lock"

WORK="$(mktemp -d "$IMAGES_DIR/.work.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

built=0 imported=0 pushed=0

# --- rootfs recipes (their source text is part of the recipe hash) -------------
populate_busybox() {
    local r="$1" a
    install -d -m 0755 "$r/bin" "$r/usr/bin" "$r/etc" "$r/root" "$r/var/www" \
        "$r/home" "$r/proc" "$r/sys" "$r/dev"
    install -d -m 1777 "$r/tmp"
    install -m 0755 /bin/busybox "$r/bin/busybox"
    for a in $(/bin/busybox --list); do
        case "$a" in
        busybox | */*) continue ;;
        esac
        ln -sfn busybox "$r/bin/$a"
    done
    for a in "${REQUIRED_APPLETS[@]}"; do
        [ -L "$r/bin/$a" ] || die "busybox has no applet '$a'"
    done
    ln -sfn /bin/busybox "$r/usr/bin/env"
    printf '%s\n' \
        'root:x:0:0:root:/root:/bin/sh' \
        'app:x:1000:1000:app:/home/app:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$r/etc/passwd"
    printf '%s\n' \
        'root:x:0:' \
        'staff:x:50:app,nobody' \
        'app:x:1000:app' \
        'nobody:x:65534:' >"$r/etc/group"
    chmod 0644 "$r/etc/passwd" "$r/etc/group"
}

populate_pause() {
    local r="$1"
    install -m 0755 /usr/bin/catatonit "$r/pause"
}

# recipe_id NAME POPULATE_FN SOURCE_BINARY CONFIG_ARGS...
recipe_id() {
    local name="$1" fn="$2" bin="$3"
    shift 3
    {
        echo "recipe-version $RECIPE_VERSION tag $TAG image $name"
        declare -f "$fn"
        printf '%s\n' "${REQUIRED_APPLETS[@]}"
        sha256sum "$bin" | cut -d' ' -f1
        printf 'config %s\n' "$@"
    } | sha256sum | cut -d' ' -f1
}

# layout_digest LAYOUT -> manifest digest of tag $TAG (empty if none)
layout_digest() {
    local index="$1/index.json"
    [ -r "$index" ] || return 0
    jq -r --arg t "$TAG" \
        '.manifests[]? | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
        "$index" 2>/dev/null | head -n1
}

# build_layout NAME POPULATE_FN SOURCE_BINARY UMOCI_CONFIG_ARGS...
build_layout() {
    local name="$1" fn="$2" bin="$3"
    shift 3
    local layout="$IMAGES_DIR/$name" stamp="$IMAGES_DIR/$name.recipe" id
    id="$(recipe_id "$name" "$fn" "$bin" "$@")"
    if [ "${RK_FORCE_IMAGES:-0}" != 1 ] && [ -n "$(layout_digest "$layout")" ] &&
        [ "$(cat "$stamp" 2>/dev/null)" = "$id" ]; then
        log "layout $layout:$TAG up to date"
        return 0
    fi
    log "building OCI layout $layout:$TAG"
    local w="$WORK/build-$name"
    mkdir -p "$w"
    umoci init --layout "$w/layout"
    umoci new --image "$w/layout:$TAG"
    umoci unpack --image "$w/layout:$TAG" "$w/bundle" >/dev/null
    "$fn" "$w/bundle/rootfs"
    umoci repack --image "$w/layout:$TAG" "$w/bundle"
    umoci config --image "$w/layout:$TAG" --config.env "$DEFAULT_PATH" "$@"
    umoci gc --layout "$w/layout"
    rm -rf "$layout" "$stamp"
    mv "$w/layout" "$layout"
    echo "$id" >"$stamp"
    built=$((built + 1))
}

# ctr_image_digest REF -> target digest in containerd (empty if absent)
ctr_image_digest() {
    ctr -n "$RK_CTR_NAMESPACE" images ls 2>/dev/null | awk -v r="$1" '$1 == r { print $3 }'
}

ctr_image_ready() {
    ctr -n "$RK_CTR_NAMESPACE" images check -q "name==$1" 2>/dev/null | grep -qFx "$1"
}

# smoke_run REF EXPECTED CMD... : run CMD in a throwaway container and compare
# its output. Proves the image unpacks into a snapshot and runs under runc.
smoke_run() {
    local ref="$1" expected="$2"
    shift 2
    local id="rk-image-smoke-$$" out rc=0
    out="$(timeout 60 ctr -n "$RK_CTR_NAMESPACE" run --rm "$ref" "$id" "$@" 2>&1)" || rc=$?
    if [ "$rc" -ne 0 ]; then
        ctr -n "$RK_CTR_NAMESPACE" tasks kill -s KILL "$id" >/dev/null 2>&1 || true
        ctr -n "$RK_CTR_NAMESPACE" tasks delete -f "$id" >/dev/null 2>&1 || true
        ctr -n "$RK_CTR_NAMESPACE" containers delete "$id" >/dev/null 2>&1 || true
        die "smoke run of $ref ($*) failed (exit $rc): $out"
    fi
    case "$out" in
    *"$expected"*) log "smoke run of $ref: ok ($*)" ;;
    *) die "smoke run of $ref ($*) printed '$out', expected '$expected'" ;;
    esac
}

# write_archive NAME REF FILE: layout NAME as an OCI archive whose ref.name
# annotation carries the full name REF (`ctr images import` names it so).
write_archive() {
    rm -f "$3"
    skopeo copy --quiet "oci:$IMAGES_DIR/$1:$TAG" "oci-archive:$3:$2"
}

# import_image NAME REF SMOKE_EXPECTED SMOKE_CMD...
import_image() {
    local name="$1" ref="$2" expected="$3"
    shift 3
    local layout="$IMAGES_DIR/$name" want have_digest
    want="$(layout_digest "$layout")"
    have_digest="$(ctr_image_digest "$ref")"
    if [ "$have_digest" = "$want" ] && ctr_image_ready "$ref"; then
        log "containerd $RK_CTR_NAMESPACE: $ref up to date"
        return 0
    fi
    log "importing $layout:$TAG into containerd $RK_CTR_NAMESPACE as $ref"
    local archive="$WORK/$name.oci.tar"
    write_archive "$name" "$ref" "$archive"
    ctr -n "$RK_CTR_NAMESPACE" images import "$archive"
    have_digest="$(ctr_image_digest "$ref")"
    [ "$have_digest" = "$want" ] ||
        die "after import, containerd has '$ref' at '${have_digest:-nothing}', expected $want"
    ctr_image_ready "$ref" || die "after import, $ref is not fully unpacked"
    smoke_run "$ref" "$expected" "$@"
    imported=$((imported + 1))
}

registry_digest() { # REPO TAG -> Docker-Content-Digest (empty if absent)
    curl -fsSI --noproxy '*' --max-time 10 \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$RK_REGISTRY/v2/$1/manifests/$2" 2>/dev/null |
        tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" { print $2 }'
}

# push_image NAME REPO TAG...
push_image() {
    local name="$1" repo="$2"
    shift 2
    local layout="$IMAGES_DIR/$name" want t
    want="$(layout_digest "$layout")"
    for t in "$@"; do
        if [ "$(registry_digest "$repo" "$t")" = "$want" ]; then
            log "registry: $RK_REGISTRY/$repo:$t up to date"
            continue
        fi
        log "pushing $layout:$TAG to $RK_REGISTRY/$repo:$t"
        skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$TAG" "docker://$RK_REGISTRY/$repo:$t"
        [ "$(registry_digest "$repo" "$t")" = "$want" ] ||
            die "after push, $RK_REGISTRY/$repo:$t does not have digest $want"
        pushed=$((pushed + 1))
    done
}

BUSYBOX_CONFIG=(--config.cmd /bin/sh)
PAUSE_CONFIG=(--config.cmd /pause --config.cmd -P)

build_layout busybox populate_busybox /bin/busybox "${BUSYBOX_CONFIG[@]}"
build_layout pause populate_pause /usr/bin/catatonit "${PAUSE_CONFIG[@]}"

if [ -n "$ARCHIVES_DIR" ]; then
    mkdir -p "$ARCHIVES_DIR"
    write_archive busybox "$BUSYBOX_REF" "$ARCHIVES_DIR/busybox.tar"
    write_archive pause "$PAUSE_REF" "$ARCHIVES_DIR/pause.tar"
    echo "test-images: $ARCHIVES_DIR/busybox.tar ($BUSYBOX_REF), $ARCHIVES_DIR/pause.tar ($PAUSE_REF) (built $built)"
    exit 0
fi
build_layout nobody populate_busybox /bin/busybox "${BUSYBOX_CONFIG[@]}" --config.user nobody

import_image busybox "$BUSYBOX_REF" hi /bin/echo hi
import_image pause "$PAUSE_REF" catatonit /pause --version
import_image nobody "$NOBODY_REF" 65534 /bin/id -u

push_image busybox "$BUSYBOX_REPO" 1.0 latest
push_image pause "$PAUSE_REPO" 1.0

bb_digest="$(layout_digest "$IMAGES_DIR/busybox")"
pause_digest="$(layout_digest "$IMAGES_DIR/pause")"
echo "test-images: containerd/$RK_CTR_NAMESPACE $BUSYBOX_REF@${bb_digest:7:12} $PAUSE_REF@${pause_digest:7:12}; registry $RK_REGISTRY/$BUSYBOX_REPO:{1.0,latest} $RK_REGISTRY/$PAUSE_REPO:1.0 (built $built, imported $imported, pushed $pushed)"
