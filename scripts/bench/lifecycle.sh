#!/usr/bin/env bash
# Usage: scripts/bench/lifecycle.sh        (as root)
#
# Times `run -d` + `delete -f` of the same busybox bundle (a `sleep`
# container) with ferry (release build) and runc, alternating the two in one
# run, and prints the median wall time of each and the ratio ferry/runc.
#
# Environment:
#   N       measured iterations per runtime (default 20)
#   WARMUP  unmeasured rounds per runtime before that (default 2)
#   RUNC    runc binary (default /usr/sbin/runc, Debian's package)
#   FERRY   ferry binary (default: `cargo build --release`, then its output)
set -euo pipefail

N=${N:-20}
WARMUP=${WARMUP:-2}
RUNC=${RUNC:-/usr/sbin/runc}

log() { echo "lifecycle: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (namespaces, mounts, cgroups)"; exit 1; }
[[ $N =~ ^[1-9][0-9]*$ ]] || { log "N must be a positive integer, got '$N'"; exit 1; }
[[ $WARMUP =~ ^[0-9]+$ ]] || { log "WARMUP must be a number, got '$WARMUP'"; exit 1; }
[ -x "$RUNC" ] || { log "$RUNC not found (run scripts/install-deps.sh)"; exit 1; }

repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${FERRY:-}" ]; then
  log "building ferry (release)"
  locked=()
  [ -f "$repo/Cargo.lock" ] && locked=(--locked)
  (cd "$repo" && cargo build --release "${locked[@]}" --quiet)
  FERRY=${CARGO_TARGET_DIR:-$repo/target}/release/ferry
fi
[ -x "$FERRY" ] || { log "ferry binary $FERRY not found"; exit 1; }

tmp=$(mktemp -d /tmp/ferry-bench.XXXXXX)
ferry_root=$tmp/ferry-root
runc_root=$tmp/runc-root
prefix=bench$$

cleanup() {
  local id
  for id in $("$FERRY" --root "$ferry_root" list -q 2>/dev/null); do
    "$FERRY" --root "$ferry_root" delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $("$RUNC" --root "$runc_root" list -q 2>/dev/null); do
    "$RUNC" --root "$runc_root" delete -f "$id" >/dev/null 2>&1 || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One bundle for both runtimes: busybox rootfs, config.json from `ferry spec`,
# no terminal, a process that just sleeps.
bundle=$tmp/bundle
mkdir -p "$bundle"
"$repo/scripts/make-rootfs.sh" "$bundle/rootfs"
"$FERRY" spec --bundle "$bundle"
jq '.process.terminal = false | .process.args = ["sleep", "1000"]' \
  "$bundle/config.json" >"$tmp/config.json"
mv "$tmp/config.json" "$bundle/config.json"

# Microseconds since the epoch, from bash's own clock (no fork).
now_us() {
  local t=$EPOCHREALTIME
  echo "${t//[.,]/}"
}

# cycle NAME BIN ROOT ID: run -d then delete -f; sets run_us and del_us.
cycle() {
  local name=$1 bin=$2 root=$3 id=$4 t0 t1 t2
  t0=$(now_us)
  if ! "$bin" --root "$root" run -d --bundle "$bundle" "$id" </dev/null >/dev/null 2>"$tmp/err"; then
    log "$name run -d $id failed: $(cat "$tmp/err")"
    exit 1
  fi
  t1=$(now_us)
  if ! "$bin" --root "$root" delete -f "$id" </dev/null >/dev/null 2>"$tmp/err"; then
    log "$name delete -f $id failed: $(cat "$tmp/err")"
    exit 1
  fi
  t2=$(now_us)
  run_us=$((t1 - t0))
  del_us=$((t2 - t1))
}

# median of the numbers on stdin, in milliseconds with two decimals.
median_ms() {
  sort -n | awk '{ v[NR] = $1 }
    END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f", m / 1000 }'
}

: >"$tmp/ferry.txt"
: >"$tmp/runc.txt"
log "ferry: $FERRY ($("$FERRY" --version))"
log "runc:  $RUNC ($("$RUNC" --version | head -n1))"
log "$WARMUP warm-up + $N measured rounds, alternating ferry and runc"
for ((i = 1; i <= WARMUP + N; i++)); do
  # Alternate which runtime goes first so neither always follows the other.
  if ((i % 2)); then order=(ferry runc); else order=(runc ferry); fi
  for rt in "${order[@]}"; do
    if [ "$rt" = ferry ]; then
      cycle ferry "$FERRY" "$ferry_root" "$prefix-ferry-$i"
    else
      cycle runc "$RUNC" "$runc_root" "$prefix-runc-$i"
    fi
    ((i > WARMUP)) && echo "$run_us $del_us $((run_us + del_us))" >>"$tmp/$rt.txt"
  done
done

col() { awk -v c="$1" '{ print $c }' "$tmp/$2.txt" | median_ms; }
f_run=$(col 1 ferry) f_del=$(col 2 ferry) f_tot=$(col 3 ferry)
r_run=$(col 1 runc) r_del=$(col 2 runc) r_tot=$(col 3 runc)
ratio=$(awk -v f="$f_tot" -v r="$r_tot" 'BEGIN { printf "%.2f", f / r }')

echo
echo "run -d + delete -f of a busybox sleep container, median of $N ($(nproc) cores, $(uname -r))"
printf '%-8s %12s %12s %12s\n' "" "run -d" "delete -f" "total"
printf '%-8s %9s ms %9s ms %9s ms\n' ferry "$f_run" "$f_del" "$f_tot"
printf '%-8s %9s ms %9s ms %9s ms\n' runc "$r_run" "$r_del" "$r_tot"
echo "ratio ferry/runc (total): ${ratio}x"
