#!/usr/bin/env bash
# Usage: scripts/test.sh        (as root)
#
# Installs the dependencies, builds every target, checks formatting and
# clippy's lints (warnings are errors) and runs the whole test suite: the host suite, then the stock-kernel guest suite
# (scripts/test-guest.sh: pure cgroup v2, soft-dirty tracking, one QEMU guest
# per group). Exits non-zero if anything fails.
#
# The integration tests (tests/*.rs) need root: they make namespaces, mounts,
# cgroups, veth pairs and run real CRIU. cargo runs the test binaries one
# after another; inside a binary, tests run in parallel, and the ones that
# drive CRIU (tests/criu_client.rs) take a lock so only one runs at a time.
# That lock lives in the test process: a runner that starts one process per
# test (cargo nextest) does not serialize them, so use cargo test here.
set -euo pipefail

log() { echo "test.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root: the tests create namespaces, mounts and cgroups and run CRIU"
  log "try: sudo $0"
  exit 1
fi

cd "$(dirname "$0")/.."

locked=()
[ -f Cargo.lock ] && locked=(--locked)

log "installing dependencies"
scripts/install-deps.sh

log "building all targets"
cargo build --workspace --all-targets "${locked[@]}"

log "checking formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets "${locked[@]}" --quiet -- -D warnings

log "running tests"
out=$(mktemp /tmp/ferry-test.XXXXXX)
trap 'rm -f "$out"' EXIT
status=0
# --no-fail-fast: run every test binary, so the summary covers all of them.
cargo test --workspace --no-fail-fast "${locked[@]}" 2>&1 | tee "$out" || status=$?

log "running the guest suite (stock kernel, pure cgroup v2)"
gstatus=0
scripts/test-guest.sh 2>&1 | tee -a "$out" || gstatus=$?
((status)) || status=$gstatus

read -r passed failed ignored < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed/) p += $i
      if ($(i + 1) ~ /^failed/) f += $i
      if ($(i + 1) ~ /^ignored/) g += $i
    }
  } END { print p + 0, f + 0, g + 0 }' "$out")

echo
echo "== summary"
echo "tests: $passed passed, $failed failed, $ignored ignored"
if ((failed)); then
  echo "failed tests:"
  grep -E '^test .* \.\.\. FAILED$' "$out" | sed 's/^test /  /; s/ \.\.\. FAILED$//' || true
fi
if ((status)); then
  echo "result: FAILED (cargo test exited with $status)"
  exit "$status"
fi
echo "result: ok"
