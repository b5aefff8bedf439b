#!/usr/bin/env bash
# Fuzz rkubelet's parsers of outside bytes: the cargo-fuzz (libFuzzer) targets in
# fuzz/ (see fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]  each target for SECONDS (default 60)
#   scripts/fuzz.sh --smoke [TARGET...]    the seeds plus RK_FUZZ_SMOKE_RUNS (default
#                                          5000) mutations per target, seed 1: what
#                                          scripts/test.sh runs
#   scripts/fuzz.sh --list                 the targets
#
# cargo-fuzz is installed from crates.io (pinned, --locked) when missing. It needs
# nightly's -Zsanitizer: on the stable toolchain RUSTC_BOOTSTRAP=1 lets it through
# (AddressSanitizer by default; RK_FUZZ_SANITIZER=none builds without one).
# Builds go to RK_FUZZ_TARGET_DIR (default /var/cache/rk-fuzz-target), kept
# between runs. The committed seeds in fuzz/corpus/<target> are only read; what
# libFuzzer finds goes to RK_FUZZ_CORPUS_DIR/<target> (default
# /var/cache/rk-fuzz-corpus; a fresh temporary directory for --smoke). A crash
# leaves its input in fuzz/artifacts/<target>/ and makes the script exit 1 after
# the other targets ran.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CARGO_FUZZ_VERSION=0.13.2
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
FUZZ_DIR="$RK_REPO_ROOT/fuzz"
TARGET_DIR="${RK_FUZZ_TARGET_DIR:-/var/cache/rk-fuzz-target}"
CORPUS_DIR="${RK_FUZZ_CORPUS_DIR:-/var/cache/rk-fuzz-corpus}"
SANITIZER="${RK_FUZZ_SANITIZER:-address}"
SMOKE_RUNS="${RK_FUZZ_SMOKE_RUNS:-5000}"

targets() { sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ_DIR/Cargo.toml" | grep -vx 'rkubelet-fuzz'; }

mode=timed
seconds=60
case "${1:-}" in
    --list) targets; exit 0 ;;
    --smoke) mode=smoke; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    '' | *[!0-9]*) ;;
    *) seconds="$1"; shift ;;
esac
if [ "$#" -gt 0 ]; then
    wanted=("$@")
else
    mapfile -t wanted < <(targets)
fi
for t in "${wanted[@]}"; do
    targets | grep -qx "$t" || die "unknown fuzz target $t (scripts/fuzz.sh --list)"
done

have cargo || die "cargo not found (looked on PATH, including ${HOME:-/root}/.cargo/bin)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install --locked)"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked || die "cargo install cargo-fuzz failed"
fi

# The stable toolchain accepts the nightly flags cargo-fuzz passes with this.
export RUSTC_BOOTSTRAP=1
cd "$FUZZ_DIR"
build_flags=(--sanitizer "$SANITIZER" --codegen-units 16 --target-dir "$TARGET_DIR")
# The targets run from the build directly (not `cargo fuzz run`, which would
# rebuild mid-run after a source change and count the build in the time).
host="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$TARGET_DIR/$host/release"
start=$(date +%s)
log "building ${#wanted[@]} targets (sanitizer $SANITIZER, target dir $TARGET_DIR)"
if [ "$#" -gt 0 ]; then
    for t in "${wanted[@]}"; do cargo fuzz build "${build_flags[@]}" "$t"; done
else
    cargo fuzz build "${build_flags[@]}"
fi
log "built in $(($(date +%s) - start)) s"

work_root="$CORPUS_DIR"
if [ "$mode" = smoke ]; then
    work_root="$(mktemp -d)"
    trap 'rm -rf "$work_root"' EXIT
fi
failed=()
for t in "${wanted[@]}"; do
    mkdir -p "$work_root/$t" "$FUZZ_DIR/corpus/$t"
    if [ "$mode" = smoke ]; then
        limits=(-runs="$SMOKE_RUNS" -seed=1 -max_total_time=60)
        bound=90
    else
        limits=(-max_total_time="$seconds")
        bound=$((seconds + 60))
    fi
    t0=$(date +%s)
    mkdir -p "$FUZZ_DIR/artifacts/$t"
    # libFuzzer writes new inputs into the first directory only: the seeds stay as committed.
    if timeout --kill-after=10 "$bound" nice -n 10 "$bin_dir/$t" "$work_root/$t" "$FUZZ_DIR/corpus/$t" \
        "${limits[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$FUZZ_DIR/artifacts/$t/" >"$work_root/$t.log" 2>&1; then
        log "$t: ok in $(($(date +%s) - t0)) s ($(sed -n 's/^stat::number_of_executed_units: *//p' "$work_root/$t.log") runs)"
    else
        failed+=("$t")
        tail -n 40 "$work_root/$t.log" >&2
        warn "$t failed; inputs in $FUZZ_DIR/artifacts/$t/ (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $t <file>)"
    fi
done
log "total $(($(date +%s) - start)) s"
[ "${#failed[@]}" -eq 0 ] || die "fuzz targets failed: ${failed[*]}"
