#!/usr/bin/env bash
# The one command that runs rkubelet's whole test suite (CI runs it through
# .ci/run):
#   1. scripts/setup.sh   packages, containerd, registry, CNI config, test images
#   2. cargo test --all-targets -- --test-threads=1
# Integration tests share host resources (containerd namespace k8s.io, the
# CNI bridge, /var/lib/cni), so the tests run one at a time.
# Arguments, if any, replace `--all-targets` (they go to cargo test before
# `--`), e.g. `scripts/test.sh --test systemd_unit` or `scripts/test.sh --lib`.
# CARGO_TARGET_DIR defaults to /var/cache/rkubelet-target (an existing value
# is kept). RK_SKIP_SETUP=1 skips step 1.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cd "$RK_REPO_ROOT"
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/rkubelet-target}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

if [ "${RK_SKIP_SETUP:-0}" = 1 ]; then
    log "step 1/2: scripts/setup.sh skipped (RK_SKIP_SETUP=1)"
else
    log "step 1/2: scripts/setup.sh (packages, containerd, registry, CNI config, test images)"
    bash "$RK_REPO_ROOT/scripts/setup.sh"
fi

have cargo || die "cargo not found (looked on PATH, including ${HOME:-/root}/.cargo/bin)"
if [ "$#" -eq 0 ]; then
    set -- --all-targets
fi
log "step 2/2: cargo test $* -- --test-threads=1 (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
rc=0
cargo test "$@" -- --test-threads=1 || rc=$?
if [ "$rc" -ne 0 ]; then
    die "cargo test failed (exit $rc)"
fi
log "all tests passed"
