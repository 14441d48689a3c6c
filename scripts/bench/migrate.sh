#!/usr/bin/env bash
# Usage: scripts/bench/migrate.sh [--guest]        (as root)
#
# Live migration between two "hosts" (network namespaces joined by a veth
# pair, addresses only inside them), for memhog containers holding 64 MiB,
# 256 MiB and 1 GiB of random data:
#   - ferry migrate (stop-copy, mutual TLS, pages over CRIU's TLS page
#     server): downtime and total from --json, memory-phase throughput,
#     peak RSS of `ferry migrate` and of `ferry serve` (VmHWM), and the
#     largest heartbeat gap the workload itself saw (maxgap, every 10 ms);
#   - podman's baseline: `podman container checkpoint --export` + copy +
#     `podman container restore --import` (Debian's podman with runc and the
#     same CRIU), with the workload's maxgap;
#   - the raw throughput of one plain TCP stream over the same link.
# Prints a table and ratios. Everything it creates is removed on exit.
#
# With several MODES, each size and rewrite rate is migrated once per mode
# and the downtime and heartbeat-gap ratios against stop-copy are printed.
# Pre-copy needs a kernel that tracks dirty memory and post-copy one with
# userfaultfd: `--guest` runs the whole benchmark in the stock-kernel guest
# (scripts/guest/run.sh) with MODES="stop-copy pre-copy post-copy",
# SIZES=256, DIRTY="0 5120" (idle, then 5 MiB/s rewritten) and no podman
# unless set otherwise. Under the guest's emulation absolute times mean
# little; the ratios are what to read.
#
# Environment:
#   SIZES   MiB sizes (default "64 256 1024")
#   MODES   ferry migrate --mode values (default "stop-copy"); post-copy is
#           given --accept-postcopy-risk (the workload is thrown away)
#   DIRTY   KiB/s rates the workload rewrites while it runs, each measured
#           (default 1024 with pre-copy among MODES, else 0)
#   FERRY   ferry binary (default: `cargo build --release`, then its output)
#   PODMAN  set to 0 to skip the podman baseline
#   RAW_MIB MiB sent to measure the raw TCP rate (default 1024; 128 in the guest)
#   SHM_MIB MiB of random data the workload first writes to /dev/shm, a file
#           the migration must carry besides the heap (default 0)
#   IMAGES_DIR  a directory in which the destination's serve keeps incoming
#           images (serve --images-dir; default: below its bundle directory)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ "${1:-}" = --guest ]; then
  if [ -z "${FERRY:-}" ]; then
    locked=()
    [ -f "$repo/Cargo.lock" ] && locked=(--locked)
    (cd "$repo" && cargo build --release "${locked[@]}" --quiet)
    FERRY=${CARGO_TARGET_DIR:-$repo/target}/release/ferry
  fi
  "$repo/scripts/guest/install.sh" || exit 1
  exec "$repo/scripts/guest/run.sh" -m 4G -- env FERRY="$FERRY" \
    SIZES="${SIZES:-256}" MODES="${MODES:-stop-copy pre-copy post-copy}" PODMAN="${PODMAN:-0}" \
    RAW_MIB="${RAW_MIB:-128}" DIRTY="${DIRTY:-0 5120}" SHM_MIB="${SHM_MIB:-0}" bash "$repo/scripts/bench/migrate.sh"
fi

SIZES=${SIZES:-64 256 1024}
MODES=${MODES:-stop-copy}
RAW_MIB=${RAW_MIB:-1024}
PODMAN=${PODMAN:-1}
SHM_MIB=${SHM_MIB:-0}
images_args=()
[ -n "${IMAGES_DIR:-}" ] && images_args=(--images-dir "$IMAGES_DIR/ferry-bench-images.$$")
# The workload: SHM_MIB of random data in /dev/shm, then memhog.
shm_then='[ "$0" = 0 ] || head -c $(($0 * 1048576)) /dev/urandom >/dev/shm/blob && exec /memhog "$@"'
case " $MODES " in
  *" pre-copy "*) DIRTY=${DIRTY:-1024} ;;
  *) DIRTY=${DIRTY:-0} ;;
esac

log() { echo "migrate-bench: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (namespaces, cgroups, CRIU)"; exit 1; }
for t in jq python3 cc nsenter ip; do
  command -v "$t" >/dev/null || { log "$t not found (run scripts/install-deps.sh)"; exit 1; }
done

if [ -z "${FERRY:-}" ]; then
  log "building ferry (release)"
  locked=()
  [ -f "$repo/Cargo.lock" ] && locked=(--locked)
  (cd "$repo" && cargo build --release "${locked[@]}" --quiet)
  FERRY=${CARGO_TARGET_DIR:-$repo/target}/release/ferry
fi
[ -x "$FERRY" ] || { log "ferry binary $FERRY not found"; exit 1; }

tmp=$(mktemp -d /tmp/ferry-mig-bench.XXXXXX)
tag=$$
nsa=fmb$tag-a
nsb=fmb$tag-b
la=fmb${tag}a
lb=fmb${tag}b
addr_a=10.252.0.1
addr_b=10.252.0.2
cgp=ferry-bench$tag
image=localhost/ferry-bench-mig$tag
serve_pid=
podman_names=()

in_a() { nsenter --net=/run/netns/$nsa "$@"; }
in_b() { nsenter --net=/run/netns/$nsb "$@"; }
fa() { in_a "$FERRY" --root "$tmp/root-a" "$@"; }
fb() { in_b "$FERRY" --root "$tmp/root-b" "$@"; }

stop_serve() {
  if [ -n "$serve_pid" ]; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=
  fi
}

cleanup() {
  set +e
  stop_serve
  for r in a b; do
    for id in $("$FERRY" --root "$tmp/root-$r" list -q 2>/dev/null); do
      "$FERRY" --root "$tmp/root-$r" delete -f "$id" >/dev/null 2>&1
    done
  done
  for n in "${podman_names[@]}"; do
    podman rm -f "$n" >/dev/null 2>&1
  done
  [ "$PODMAN" = 1 ] && podman rmi -f "$image" >/dev/null 2>&1
  # The parent ferry made in every hierarchy, at whatever depth (a v1 hierarchy may place it
  # below this process's own cgroup); rmdir removes only empty ones.
  find /sys/fs/cgroup -maxdepth 6 -type d -name "$cgp" 2>/dev/null | awk '{ print length, $0 }' |
    sort -rn | cut -d' ' -f2- | while read -r d; do rmdir "$d" 2>/dev/null; done
  ip netns del "$nsa" 2>/dev/null
  ip netns del "$nsb" 2>/dev/null
  [ -n "${IMAGES_DIR:-}" ] && rm -rf "$IMAGES_DIR/ferry-bench-images.$$"
  rm -rf "$tmp"
}
trap cleanup EXIT
[ -n "${DEBUG:-}" ] && set -x
trap 'exit 130' INT TERM

# --- two hosts -----------------------------------------------------------
ip netns add "$nsa"
ip netns add "$nsb"
ip link add "$la" type veth peer name "$lb"
ip link set "$la" netns "$nsa"
ip link set "$lb" netns "$nsb"
ip -n "$nsa" addr add $addr_a/24 dev "$la"
ip -n "$nsb" addr add $addr_b/24 dev "$lb"
for ns in "$nsa" "$nsb"; do ip -n "$ns" link set lo up; done
ip -n "$nsa" link set "$la" up
ip -n "$nsb" link set "$lb" up
"$FERRY" certs --dir "$tmp/pki" --host a,$addr_a --host b,$addr_b >/dev/null
tls_a=(--ca "$tmp/pki/ca.pem" --cert "$tmp/pki/a.pem" --key "$tmp/pki/a-key.pem")
tls_b=(--ca "$tmp/pki/ca.pem" --cert "$tmp/pki/b.pem" --key "$tmp/pki/b-key.pem")

# --- workload ------------------------------------------------------------
cc -static -O2 -o "$tmp/memhog" "$repo/tests/support/memhog.c"
"$repo/scripts/make-rootfs.sh" "$tmp/rootfs" >/dev/null
cp "$tmp/memhog" "$tmp/rootfs/memhog"

# A bundle running memhog SIZE (rewriting $DIRTY KiB/s) with /data bound to DATA.
make_bundle() { # DIR SIZE DATA DIRTY
  mkdir -p "$1" "$3"
  cp -a "$tmp/rootfs" "$1/rootfs"
  "$FERRY" spec --bundle "$1"
  jq --arg size "$2" --arg data "$3" --arg dirty "$4" --arg shm "$SHM_MIB" --arg shm_then "$shm_then" '
    .process.terminal = false | .process.args = ["sh", "-c", $shm_then, $shm, $size, "/data", $dirty]
    | .root.readonly = false
    | .mounts += [{"destination": "/data", "type": "bind", "source": $data,
                   "options": ["rbind", "rw"]}]' "$1/config.json" >"$1/config.json.new"
  mv "$1/config.json.new" "$1/config.json"
}

wait_file() { # FILE SECONDS
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    [ -s "$1" ] && return 0
    sleep 0.05
  done
  log "timed out waiting for $1"
  return 1
}

# The restored memhog's gap is in DIR/maxgap once it has beaten after the move: waits until
# its beat count (written every 10 beats) moves on from what it was on entry.
wait_beats() { # DIR SECONDS
  local i c0
  c0=$(cat "$1/count" 2>/dev/null)
  for ((i = 0; i < $2 * 20; i++)); do
    [ "$(cat "$1/count" 2>/dev/null)" != "$c0" ] && return 0
    sleep 0.05
  done
  log "the workload did not beat within $2 s after the move"
  return 1
}

vmhwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# --- raw TCP throughput over the link ------------------------------------
raw_mib_s() {
  local port=5301 bytes=$((RAW_MIB * 1024 * 1024))
  in_b python3 - "$addr_b" $port "$bytes" >"$tmp/raw.out" <<'PY' &
import socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(1)
c, _ = s.accept()
got, t0 = 0, None
buf = bytearray(1 << 20)
while got < n:
    r = c.recv_into(buf)
    if not r: break
    if t0 is None: t0 = time.monotonic()
    got += r
print(got / (time.monotonic() - t0) / (1 << 20))
PY
  local srv=$!
  sleep 0.5
  in_a python3 - "$addr_b" $port "$bytes" <<'PY'
import socket, sys
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = socket.create_connection((addr, port))
chunk = bytes(1 << 20)
for _ in range(n >> 20):
    c.sendall(chunk)
c.close()
PY
  wait $srv
  cat "$tmp/raw.out"
}

log "raw TCP throughput over the veth link"
raw=$(raw_mib_s)
log "raw: $raw MiB/s"

# --- ferry ---------------------------------------------------------------
# Sets serve_pid (the ferry process itself: nsenter execs it) and port.
start_serve() {
  nsenter --net=/run/netns/$nsb "$FERRY" --root "$tmp/root-b" serve --listen $addr_b:0 --bundle-dir "$tmp/bundles-b" --cgroup-parent "$cgp" \
    --allow-shared-rootfs "$tmp" "${images_args[@]}" "${tls_b[@]}" >>"$tmp/serve.out" 2>>"$tmp/serve.err" &
  serve_pid=$!
  local i
  port=
  for ((i = 0; i < 200; i++)); do
    port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$tmp/serve.out" | tail -1)
    [ -n "$port" ] && break
    sleep 0.05
  done
  [ -n "$port" ] || { log "ferry serve did not start: $(cat "$tmp/serve.err")"; exit 1; }
}

declare -A F_PHASES F_DOWN F_TOTAL F_GAP F_MEMRATE F_SRC_RSS F_DST_RSS F_OK F_ROUNDS P_DOWN P_GAP P_OK
# Every key is MODE/SIZE/DIRTY; DIRTY is omitted when only one rate runs.
keys=()
for dirty in $DIRTY; do
for mode in $MODES; do
for size in $SIZES; do
  k=$mode/$size
  [ "$(wc -w <<<"$DIRTY")" -gt 1 ] && k=$k/${dirty}K
  keys+=("$k")
  f=${k//\//-}
  log "ferry $k: $size MiB, $dirty KiB/s rewritten"
  : >"$tmp/serve.out"
  start_serve
  id=hog-$f
  b=$tmp/ferry-$size
  data=$tmp/ferry-data-$f
  make_bundle "$b" "$size" "$data" "$dirty"
  fa run -d --bundle "$b" "$id" </dev/null >>"$tmp/ctr.log" 2>&1
  wait_file "$data/maxgap" 120
  sleep 0.5
  sum_before=$(cat "$data/sum-before")
  risk=()
  [ "$mode" = post-copy ] && risk=(--accept-postcopy-risk)
  # ferry migrate, its VmHWM sampled until it exits.
  nsenter --net=/run/netns/$nsa "$FERRY" --root "$tmp/root-a" \
    migrate "$id" --mode "$mode" "${risk[@]}" --to $addr_b:"$port" --work-dir "$tmp/work-a" --json "${tls_a[@]}" >"$tmp/report-$f.json" 2>"$tmp/migrate-$f.err" &
  mpid=$!
  src_rss=0
  while kill -0 $mpid 2>/dev/null; do
    v=$(vmhwm_kib $mpid)
    [ -n "$v" ] && [ "$v" -gt "$src_rss" ] && src_rss=$v
    sleep 0.02
  done
  if ! wait $mpid; then
    log "ferry migrate $k failed: $(cat "$tmp/migrate-$f.err")"
    F_OK[$k]=0
    stop_serve
    fa delete -f "$id" >/dev/null 2>&1 || true
    continue
  fi
  F_OK[$k]=1
  F_DST_RSS[$k]=$(vmhwm_kib "$serve_pid")
  F_SRC_RSS[$k]=$src_rss
  r=$tmp/report-$f.json
  F_DOWN[$k]=$(jq '.timings.downtime' "$r")
  F_TOTAL[$k]=$(jq '.timings.total' "$r")
  F_PHASES[$k]=$(jq -r '.timings | "freeze \(.freeze) ms, dump \(.dump) ms (memory \(.memory_transfer) ms), images \(.image_transfer) ms, restore \(.restore) ms; preflight \(.preflight) ms"
    + if .post_copy > 0 then "; pages after the switchover \(.post_copy) ms" else "" end' "$r")
  # Post-copy moves its pages after the switchover, at the faults' pace:
  # no memory-phase rate to compare with the link.
  F_MEMRATE[$k]=$(jq '(.timings.memory_transfer + .timings.pre_dump) as $t
    | if .pages.lazy > 0 or .mode == "post-copy" or $t == 0 then 0 else (.bytes.memory / 1048576) / ($t / 1000) end' "$r")
  F_ROUNDS[$k]=$(jq -r 'if (.pre_copy | length) > 0 then
      "rounds " + ([.pre_copy[] | "\(.pages_written)p/\(.duration)ms/frozen \(.frozen)ms"] | join(", "))
      + "; final \(.pages.written)p, predicted \(.predicted_downtime) ms; stopped: \(.pre_copy_stop)"
    else "" end' "$r")
  wait_beats "$data" 20 || F_OK[$k]=0
  F_GAP[$k]=$(awk '{printf "%.1f", $1 / 1000}' "$data/maxgap")
  fb kill "$id" USR1
  wait_file "$data/sum-after" 20
  [ "$(cat "$data/sum-after")" = "$sum_before" ] || { log "memory checksum differs after migration ($k)"; F_OK[$k]=0; }
  fb delete -f "$id" >/dev/null
  stop_serve
  rm -rf "$b" "$tmp/bundles-b" "$data"
done
done
done

# --- podman baseline -----------------------------------------------------
if [ "$PODMAN" = 1 ]; then
  tar -C "$tmp/rootfs" -c . | podman import - "$image" >/dev/null
  for size in $SIZES; do
    log "podman: $size MiB"
    name=ferry-bench$tag-$size
    data=$tmp/podman-data-$size
    mkdir -p "$data"
    podman_names+=("$name" "$name-r")
    podman run -d --name "$name" --runtime runc --network none \
      --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
      -v "$data:/data" "$image" sh -c "$shm_then" "$SHM_MIB" "$size" /data >/dev/null
    wait_file "$data/maxgap" 120
    sleep 0.5
    mkdir -p "$tmp/podman-a" "$tmp/podman-b"
    t0=$(date +%s%N)
    ok=1
    podman container checkpoint --export "$tmp/podman-a/$name.tar" --compress none "$name" >/dev/null || ok=0
    cp "$tmp/podman-a/$name.tar" "$tmp/podman-b/$name.tar" || ok=0
    podman container restore --import "$tmp/podman-b/$name.tar" --name "$name-r" >/dev/null || ok=0
    t1=$(date +%s%N)
    P_OK[$size]=$ok
    P_DOWN[$size]=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", (b - a) / 1e6}')
    wait_beats "$data" 20 || P_OK[$size]=0
    P_GAP[$size]=$(awk '{printf "%.1f", $1 / 1000}' "$data/maxgap" 2>/dev/null || echo "?")
    podman rm -f "$name" "$name-r" >/dev/null 2>&1 || true
    rm -f "$tmp/podman-a/$name.tar" "$tmp/podman-b/$name.tar"
  done
fi

# --- table ---------------------------------------------------------------
echo
printf 'raw TCP over the veth link: %.0f MiB/s\n\n' "$raw"
printf '%-22s %12s %12s %12s %14s %10s %10s %12s %12s %10s\n' \
  "mode/size" "ferry down" "ferry total" "ferry gap" "memory MiB/s" "src RSS" "dst RSS" "podman down" "podman gap" "down/podman"
for k in "${keys[@]}"; do
  size=$(cut -d/ -f2 <<<"$k")
  if [ "${F_OK[$k]:-0}" != 1 ]; then
    printf '%-22s %12s\n' "$k" "failed"
    continue
  fi
  pd=${P_DOWN[$size]:-}
  ratio=-
  [ -n "$pd" ] && [ "${P_OK[$size]:-0}" = 1 ] && ratio=$(awk -v a="${F_DOWN[$k]}" -v b="$pd" 'BEGIN {printf "%.2f", a / b}')
  printf '%-22s %10.1fms %10.1fms %10.1fms %14.0f %8.1fMB %8.1fMB %10sms %10sms %10s\n' \
    "$k" "${F_DOWN[$k]}" "${F_TOTAL[$k]}" "${F_GAP[$k]}" "${F_MEMRATE[$k]}" \
    "$(awk -v k="${F_SRC_RSS[$k]}" 'BEGIN {print k / 1024}')" \
    "$(awk -v k="${F_DST_RSS[$k]}" 'BEGIN {print k / 1024}')" \
    "${pd:--}" "${P_GAP[$size]:--}" "$ratio"
done
echo
for k in "${keys[@]}"; do
  [ "${F_OK[$k]:-0}" = 1 ] || continue
  echo "$k ferry phases: ${F_PHASES[$k]}"
  [ -n "${F_ROUNDS[$k]:-}" ] && echo "$k pre-copy: ${F_ROUNDS[$k]}"
done
echo
for k in "${keys[@]}"; do
  [ "${F_OK[$k]:-0}" = 1 ] || continue
  awk -v s="$k" -v d="${F_DOWN[$k]}" -v g="${F_GAP[$k]}" -v m="${F_MEMRATE[$k]}" -v r="$raw" 'BEGIN {
    printf "%s: reported downtime / heartbeat gap = %.2f", s, d / g
    if (m > 0) printf "; memory phases at %.0f%% of raw TCP", 100 * m / r
    printf "\n" }'
done
# Each mode against stop-copy of the same size and rate.
for k in "${keys[@]}"; do
  case $k in stop-copy/*) continue ;; esac
  s=stop-copy/${k#*/}
  [ "${F_OK[$s]:-0}" = 1 ] && [ "${F_OK[$k]:-0}" = 1 ] || continue
  awk -v k="$k" -v ds="${F_DOWN[$s]}" -v dp="${F_DOWN[$k]}" -v gs="${F_GAP[$s]}" -v gp="${F_GAP[$k]}" \
    -v ts="${F_TOTAL[$s]}" -v tp="${F_TOTAL[$k]}" 'BEGIN {
    printf "%s / stop-copy: downtime %.2f, heartbeat gap %.2f, total %.2f\n",
      k, dp / ds, gp / gs, tp / ts }'
done
