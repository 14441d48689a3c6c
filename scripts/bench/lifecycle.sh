#!/usr/bin/env bash
# Usage: scripts/bench/lifecycle.sh        (as root)
#
# Times `run -d` + `delete -f` of the same busybox bundle (a `sleep`
# container) with ferry (release build), crun and runc, rotating their order in
# one run, and prints the median wall time of each and ferry's ratio to each.
#
# Environment:
#   N       measured iterations per runtime (default 20)
#   WARMUP  unmeasured rounds per runtime before that (default 2)
#   RUNC    runc binary (default /usr/sbin/runc, Debian's package)
#   CRUN    crun binary (default /usr/bin/crun, Debian's package)
#   FERRY   ferry binary (default: `cargo build --release`, then its output)
set -euo pipefail

N=${N:-20}
WARMUP=${WARMUP:-2}
RUNC=${RUNC:-/usr/sbin/runc}
CRUN=${CRUN:-/usr/bin/crun}

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
crun_root=$tmp/crun-root
prefix=bench$$

cleanup() {
  local id
  for id in $("$FERRY" --root "$ferry_root" list -q 2>/dev/null); do
    "$FERRY" --root "$ferry_root" delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $("$RUNC" --root "$runc_root" list -q 2>/dev/null); do
    "$RUNC" --root "$runc_root" delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $("$CRUN" --root "$crun_root" list -q 2>/dev/null); do
    "$CRUN" --root "$crun_root" delete -f "$id" >/dev/null 2>&1 || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every runtime runs from a copy in $tmp, so all three load from one filesystem: where
# they live matters (in the stock-kernel guest the checkout is 9p without a page cache,
# and reading ferry's 21 MB from it at every exec cost about 0.5 s more than crun from
# the root; the copies in the guest's /tmp, a tmpfs, made ferry 1.33x crun instead of 4.33x).
mkdir "$tmp/bin"
log "running copies of $FERRY, $RUNC and $CRUN from $tmp/bin"
copy_bin() { # PATH NAME: prints the copy's path (or PATH itself if it is missing)
  if [ -x "$1" ]; then cp "$1" "$tmp/bin/$2" && echo "$tmp/bin/$2"; else echo "$1"; fi
}
FERRY=$(copy_bin "$FERRY" ferry)
RUNC=$(copy_bin "$RUNC" runc)
CRUN=$(copy_bin "$CRUN" crun)

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

declare -A bin=([ferry]=$FERRY [crun]=$CRUN [runc]=$RUNC)
declare -A root=([ferry]=$ferry_root [crun]=$crun_root [runc]=$runc_root)
runtimes=(ferry runc)
# crun runs where it can: 1.8 refuses a hybrid host with any controller on
# the unified hierarchy. Where it cannot, say why and compare without it.
if [ ! -x "$CRUN" ]; then
  log "crun: $CRUN not found (scripts/install-deps.sh installs it): compared without it"
elif "$CRUN" --root "$crun_root" run -d --bundle "$bundle" "$prefix-crun-probe" </dev/null >/dev/null 2>"$tmp/err"; then
  "$CRUN" --root "$crun_root" delete -f "$prefix-crun-probe" >/dev/null 2>&1
  runtimes=(ferry crun runc)
  log "crun:  $CRUN ($("$CRUN" --version | head -n1))"
else
  log "crun cannot run a container on this host ($(tr '\n' ' ' <"$tmp/err")): compared without it"
fi
for rt in "${runtimes[@]}"; do : >"$tmp/$rt.txt"; done
log "ferry: $FERRY ($("$FERRY" --version))"
log "runc:  $RUNC ($("$RUNC" --version | head -n1))"
log "$WARMUP warm-up + $N measured rounds, the runtimes' order rotating each round"
for ((i = 1; i <= WARMUP + N; i++)); do
  # Rotate which runtime goes first so none always follows another.
  k=$((i % ${#runtimes[@]}))
  order=("${runtimes[@]:k}" "${runtimes[@]:0:k}")
  for rt in "${order[@]}"; do
    cycle "$rt" "${bin[$rt]}" "${root[$rt]}" "$prefix-$rt-$i"
    ((i > WARMUP)) && echo "$run_us $del_us $((run_us + del_us))" >>"$tmp/$rt.txt"
  done
done

col() { awk -v c="$1" '{ print $c }' "$tmp/$2.txt" | median_ms; }
ratio() { awk -v f="$1" -v r="$2" 'BEGIN { printf "%.2f", f / r }'; }

echo
echo "run -d + delete -f of a busybox sleep container, median of $N ($(nproc) cores, $(uname -r))"
printf '%-8s %12s %12s %12s\n' "" "run -d" "delete -f" "total"
for rt in "${runtimes[@]}"; do
  printf '%-8s %9s ms %9s ms %9s ms\n' "$rt" "$(col 1 "$rt")" "$(col 2 "$rt")" "$(col 3 "$rt")"
done
f_tot=$(col 3 ferry)
if [ -s "$tmp/crun.txt" ]; then
  echo "ratio ferry/crun (total): $(ratio "$f_tot" "$(col 3 crun)")x"
fi
echo "ratio ferry/runc (total): $(ratio "$f_tot" "$(col 3 runc)")x"
