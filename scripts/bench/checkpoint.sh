#!/usr/bin/env bash
# Usage: scripts/bench/checkpoint.sh        (as root)
#
# Checkpoints and restores the same workload with ferry, with runc (Debian's)
# and with raw `criu dump`/`criu restore`, alternating them in one run, and
# prints the median wall time of each step and the ratios.
#
#   counter  a busybox shell loop writing an increasing number
#   1g       the memhog workload holding 1 GiB of random data
#
# ferry and runc checkpoint the same bundle (the container dies and is
# restored from the images). Raw criu runs twice: criu(ct) dumps and
# restores a ferry container's own tree with the criu command line and the
# options a container needs (root, cgroups, external mounts, stdio files);
# criu(tree) dumps the same program run as a plain process tree (pid 1 of
# its own pid namespace, no mount or network namespace, no cgroup) -- the
# floor, CRIU's work with no container around it.
#
# Environment:
#   N       measured rounds per tool for the counter (default 10)
#   N_BIG   measured rounds per tool for the 1 GiB workload (default 3; 0: none)
#   RUNC    runc binary (default /usr/sbin/runc)
#   FERRY   ferry binary (default: `cargo build --release`, then its output)
set -euo pipefail

N=${N:-10}
N_BIG=${N_BIG:-3}
RUNC=${RUNC:-/usr/sbin/runc}
CRIU=${CRIU:-$(command -v criu || true)}

log() { echo "checkpoint-bench: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
[ -x "$RUNC" ] || { log "$RUNC not found (run scripts/install-deps.sh)"; exit 1; }
[ -n "$CRIU" ] || { log "criu not found (run scripts/install-deps.sh)"; exit 1; }

repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ -z "${FERRY:-}" ]; then
  log "building ferry (release)"
  locked=()
  [ -f "$repo/Cargo.lock" ] && locked=(--locked)
  (cd "$repo" && cargo build --release "${locked[@]}" --quiet)
  FERRY=${CARGO_TARGET_DIR:-$repo/target}/release/ferry
fi

tmp=$(mktemp -d /tmp/ferry-ckbench.XXXXXX)
raw_pids=()
cleanup() {
  local id p
  for id in $("$FERRY" --root "$tmp/ferry-root" list -q 2>/dev/null); do
    "$FERRY" --root "$tmp/ferry-root" delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $("$RUNC" --root "$tmp/runc-root" list -q 2>/dev/null); do
    "$RUNC" --root "$tmp/runc-root" delete -f "$id" >/dev/null 2>&1 || true
  done
  for p in "${raw_pids[@]}"; do
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ferry runs from a copy in $tmp, as lifecycle.sh does: in the stock-kernel guest the
# checkout is 9p without a page cache, and two builds of the same size run from it took
# 1.1-1.3 s and 0.6 s per checkpoint of the same counter (from the guest's /tmp: 0.5-0.6 s both).
mkdir "$tmp/bin"
cp "$FERRY" "$tmp/bin/ferry"
FERRY=$tmp/bin/ferry

cc -static -O2 -o "$tmp/memhog" "$repo/tests/support/memhog.c"
"$repo/scripts/make-rootfs.sh" "$tmp/rootfs" >/dev/null
COUNTER='i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done'

# bundle NAME ARGS_JSON: a bundle of its own for each tool (same content).
bundle() {
  local dir=$tmp/$1
  mkdir -p "$dir"
  cp -a "$tmp/rootfs" "$dir/rootfs"
  cp "$tmp/memhog" "$dir/rootfs/memhog"
  "$FERRY" spec --bundle "$dir"
  jq --argjson a "$2" '.process.terminal = false | .process.args = $a | .root.readonly = false' \
    "$dir/config.json" >"$dir/c.json"
  mv "$dir/c.json" "$dir/config.json"
}

now_us() {
  local t=$EPOCHREALTIME
  echo "${t//[.,]/}"
}

# timed VAR CMD...: runs CMD quietly, stores its wall time (µs) in VAR.
# Dirty pages of the previous step are flushed first, so no tool pays for
# another's writeback.
timed() {
  local var=$1 t0 t1
  shift
  sync
  t0=$(now_us)
  if ! "$@" </dev/null >/dev/null 2>"$tmp/err"; then
    log "failed: $*: $(tail -n 3 "$tmp/err")"
    exit 1
  fi
  t1=$(now_us)
  printf -v "$var" '%s' $((t1 - t0))
}

median() {
  sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'
}

# wait_rss PID KB: until PID's resident memory reaches KB.
wait_rss() {
  local i
  for i in $(seq 1 600); do
    local rss
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -ge "$2" ] && return 0
    sleep 0.1
  done
  log "pid $1 never reached $2 kB resident"
  exit 1
}

# One round per tool (ferry and runc alternate who goes first): start, let
# it settle, checkpoint (the workload dies), restore, stop. Appends µs to $tmp/<tool>-<workload>-{dump,restore}.
round() {
  if (($3 % 2)); then
    round_ferry "$@"
    round_runc "$@"
  else
    round_runc "$@"
    round_ferry "$@"
  fi
  round_crct "$@"
  round_criu "$@"
}

round_ferry() {
  local workload=$1 rss_kb=$2 r=$3 id pid
  id=f$r$workload
  "$FERRY" --root "$tmp/ferry-root" run -d --bundle "$tmp/ferry-$workload" "$id" </dev/null >/dev/null 2>&1
  pid=$("$FERRY" --root "$tmp/ferry-root" state "$id" | jq .pid)
  wait_rss "$pid" "$rss_kb"
  rm -rf "$tmp/img"
  timed d "$FERRY" --root "$tmp/ferry-root" checkpoint --image-path "$tmp/img" "$id"
  timed s "$FERRY" --root "$tmp/ferry-root" restore -d --bundle "$tmp/ferry-$workload" --image-path "$tmp/img" "$id"
  echo "$d" >>"$tmp/ferry-$workload-dump"
  echo "$s" >>"$tmp/ferry-$workload-restore"
  "$FERRY" --root "$tmp/ferry-root" delete -f "$id" >/dev/null
}

round_runc() {
  local workload=$1 rss_kb=$2 r=$3 id pid
  id=r$r$workload
  "$RUNC" --root "$tmp/runc-root" run -d --bundle "$tmp/runc-$workload" "$id" </dev/null >/dev/null 2>&1
  pid=$("$RUNC" --root "$tmp/runc-root" state "$id" | jq .pid)
  wait_rss "$pid" "$rss_kb"
  rm -rf "$tmp/img"
  timed d "$RUNC" --root "$tmp/runc-root" checkpoint --image-path "$tmp/img" "$id"
  timed s "$RUNC" --root "$tmp/runc-root" restore -d --bundle "$tmp/runc-$workload" --image-path "$tmp/img" "$id"
  echo "$d" >>"$tmp/runc-$workload-dump"
  echo "$s" >>"$tmp/runc-$workload-restore"
  "$RUNC" --root "$tmp/runc-root" delete -f "$id" >/dev/null
}

# raw criu on the container's own tree: a ferry container dumped and
# restored with the criu command line and the options a container needs
# (root, cgroups, external mounts found automatically, its stdio files).
round_crct() {
  local workload=$1 rss_kb=$2 r=$3 id=c$3$1 pid fz keys=() fd m i
  "$FERRY" --root "$tmp/ferry-root" run -d --bundle "$tmp/ferry-$workload" "$id" </dev/null >/dev/null 2>&1
  pid=$("$FERRY" --root "$tmp/ferry-root" state "$id" | jq .pid)
  wait_rss "$pid" "$rss_kb"
  fz=$(jq -r '.cgroup.dirs.freezer // .cgroup.dirs.unified' "$tmp/ferry-root/$id/state.json")
  for fd in 0 1 2; do
    m=$(awk '/^mnt_id/ {print $2}' "/proc/$pid/fdinfo/$fd")
    i=$(stat -L -c %i "/proc/$pid/fd/$fd")
    keys+=(--external "$(printf 'file[%x:%x]' "$m" "$i")")
  done
  rm -rf "$tmp/img" && mkdir -p "$tmp/img" "$tmp/crroot"
  timed d "$CRIU" dump -t "$pid" -D "$tmp/img" -o dump.log --root "$tmp/ferry-$workload/rootfs" \
    --manage-cgroups --freeze-cgroup "$fz" --ext-mount-map auto --enable-external-masters "${keys[@]}"
  mount --bind "$tmp/ferry-$workload/rootfs" "$tmp/crroot"
  exec 7</dev/null
  timed s "$CRIU" restore -d -D "$tmp/img" -o restore.log --root "$tmp/crroot" --manage-cgroups \
    --ext-mount-map auto --enable-external-masters --inherit-fd "fd[7]:${keys[1]#--external }" \
    --pidfile "$tmp/crct.pid"
  exec 7<&-
  umount -l "$tmp/crroot"
  echo "$d" >>"$tmp/crct-$workload-dump"
  echo "$s" >>"$tmp/crct-$workload-restore"
  kill -9 "$(cat "$tmp/crct.pid")" 2>/dev/null || true
  rm -f "$tmp/crct.pid"
  sleep 0.2
  "$FERRY" --root "$tmp/ferry-root" delete -f "$id" >/dev/null
}

round_criu() {
  local workload=$1 rss_kb=$2 r=$3 pid
  # raw criu: the same program as a plain process tree, pid 1 of its own pid
  # namespace (so restore gets its pids back) and a session leader.
  mkdir -p "$tmp/raw"
  if [ "$workload" = 1g ]; then
    unshare --pid --fork setsid "$tmp/memhog" 1024 "$tmp/raw" </dev/null >/dev/null 2>&1 &
  else
    unshare --pid --fork setsid "$tmp/rootfs/bin/busybox" sh -c "${COUNTER//\/tmp\//$tmp/raw/}" </dev/null >/dev/null 2>&1 &
  fi
  local outer=$!
  raw_pids+=("$outer")
  for _ in $(seq 1 100); do
    pid=$(pgrep -P "$outer" || true)
    [ -n "$pid" ] && break
    sleep 0.01
  done
  wait_rss "$pid" "$rss_kb"
  rm -rf "$tmp/img" && mkdir -p "$tmp/img"
  timed d "$CRIU" dump -t "$pid" -D "$tmp/img" -o dump.log
  wait "$outer" 2>/dev/null || true
  timed s "$CRIU" restore -d -D "$tmp/img" -o restore.log --pidfile "$tmp/raw.pid"
  echo "$d" >>"$tmp/criu-$workload-dump"
  echo "$s" >>"$tmp/criu-$workload-restore"
  kill -9 "$(cat "$tmp/raw.pid")" 2>/dev/null || true
  rm -f "$tmp/raw.pid"
}

report() {
  local workload=$1 step f r c p
  for step in dump restore; do
    f=$(median <"$tmp/ferry-$workload-$step")
    r=$(median <"$tmp/runc-$workload-$step")
    c=$(median <"$tmp/crct-$workload-$step")
    p=$(median <"$tmp/criu-$workload-$step")
    printf '%-8s %-8s %8.1f %8.1f %10.1f %10.1f %11.2fx %11.2fx %11.2fx\n' "$workload" "$step" \
      "$(echo "$f / 1000" | bc -l)" "$(echo "$r / 1000" | bc -l)" "$(echo "$c / 1000" | bc -l)" \
      "$(echo "$p / 1000" | bc -l)" "$(echo "$f / $r" | bc -l)" "$(echo "$f / $c" | bc -l)" \
      "$(echo "$f / $p" | bc -l)"
  done
}

bundle ferry-counter "[\"sh\",\"-c\",$(jq -Rn --arg c "$COUNTER" '$c')]"
bundle runc-counter "[\"sh\",\"-c\",$(jq -Rn --arg c "$COUNTER" '$c')]"
if [ "$N_BIG" -gt 0 ]; then
  bundle ferry-1g '["/memhog","1024","/tmp"]'
  bundle runc-1g '["/memhog","1024","/tmp"]'
fi

log "counter: $N rounds per tool"
for r in $(seq 1 "$N"); do
  round counter 100 "$r"
done
log "1 GiB workload: $N_BIG rounds per tool"
for r in $(seq 1 "$N_BIG"); do
  round 1g $((1024 * 1024)) "$r"
done

echo
echo "median wall time in ms (checkpoint kills the workload; restore brings it back)"
printf '%-8s %-8s %8s %8s %10s %10s %12s %12s %12s\n' workload step ferry runc "criu(ct)" "criu(tree)" "ferry/runc" "/criu(ct)" "/criu(tree)"
report counter
if [ "$N_BIG" -gt 0 ]; then report 1g; fi
