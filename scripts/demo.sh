#!/usr/bin/env bash
# Usage: scripts/demo.sh        (as root, on a Debian 12 machine)
#
# A guided tour of ferry: installs what it needs, builds ferry, runs a small
# busybox container that counts, and walks it through its life: list, state,
# ps, exec, pause, resume, statistics, delete. Everything it makes lives in a
# temporary directory that is removed on exit, with the container.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

ID=demo-$$
TMP=
FERRY=
ROOT=
BUNDLE=

# ---------------------------------------------------------------- helpers

heading() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '%s\n' "$*"; }
# show CMD...: print a command, then run it.
show() {
  # To fd 3 (the terminal): the command's own output may be redirected.
  printf '\033[2m$ %s\033[0m\n' "$*" >&3
  "$@"
}
ferry() { "$FERRY" --root "$ROOT" "$@"; }
count() { cat "$BUNDLE/rootfs/tmp/count" 2>/dev/null || echo "?"; }

cleanup() {
  migrate_cleanup
  if [ -n "$FERRY" ] && [ -n "$ROOT" ] && [ -d "$ROOT/$ID" ]; then
    "$FERRY" --root "$ROOT" delete -f "$ID" >/dev/null 2>&1 || true
  fi
  [ -n "$TMP" ] && rm -rf "$TMP"
}

# --------------------------------------------------------------- sections

section_setup() {
  heading "Installing dependencies (CRIU, runc, busybox, jq, ...)"
  scripts/install-deps.sh

  heading "Building ferry (release)"
  local locked=()
  [ -f Cargo.lock ] && locked=(--locked)
  cargo build --release "${locked[@]}"
  FERRY=${CARGO_TARGET_DIR:-$repo/target}/release/ferry
  say "binary: $FERRY ($("$FERRY" --version))"
}

section_bundle() {
  heading "Making an OCI bundle: busybox rootfs + config.json"
  TMP=$(mktemp -d /tmp/ferry-demo.XXXXXX)
  ROOT=$TMP/state
  BUNDLE=$TMP/bundle
  mkdir -p "$BUNDLE"
  scripts/make-rootfs.sh "$BUNDLE/rootfs"
  show ferry spec --bundle "$BUNDLE"
  # The process counts, once every 0.1 s, into /tmp/count inside the container
  # (written to a new file then renamed, so a reader never sees it half-written).
  # shellcheck disable=SC2016 # expanded by the container's shell, not here
  local counter='i=0; while :; do i=$((i+1)); echo $i >/tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done'
  jq --arg c "$counter" \
    '.process.terminal = false | .process.args = ["sh", "-c", $c] | .root.readonly = false' \
    "$BUNDLE/config.json" >"$TMP/config.json"
  mv "$TMP/config.json" "$BUNDLE/config.json"
  say "bundle: $BUNDLE"
  say "state root (--root): $ROOT"
  say "container process: sh -c '$counter'"
}

section_run() {
  heading "Starting the container in the background"
  # The container's stdio: no input, output appended to a log file (append
  # mode lets a restore hand it a file of another size).
  show ferry run -d --bundle "$BUNDLE" "$ID" </dev/null >>"$TMP/container.log" 2>&1
  sleep 0.5
  say "counter (read from the host, $BUNDLE/rootfs/tmp/count): $(count)"
}

section_inspect() {
  heading "ferry list"
  show ferry list

  heading "ferry state"
  show ferry state "$ID"

  heading "ferry ps"
  show ferry ps "$ID"

  heading "ferry exec: a second process inside the container"
  show ferry exec "$ID" cat /tmp/count
}

section_pause_resume() {
  local a b
  heading "ferry pause: every process frozen"
  show ferry pause "$ID"
  say "status: $(ferry state "$ID" | jq -r .status)"
  a=$(count)
  sleep 1
  b=$(count)
  say "counter now $a, one second later $b"
  if [ "$a" = "$b" ]; then say "-> frozen"; else say "-> still moving (unexpected)"; fi

  heading "ferry resume: counting again"
  show ferry resume "$ID"
  say "status: $(ferry state "$ID" | jq -r .status)"
  a=$(count)
  sleep 1
  b=$(count)
  say "counter now $a, one second later $b"
  if [ "$a" != "$b" ]; then say "-> moving"; else say "-> not moving (unexpected)"; fi
}

section_stats() {
  heading "ferry events --stats: one snapshot of cgroup counters"
  # python3's json.tool keeps 64-bit counters exact (jq 1.6 rounds them).
  printf '\033[2m$ %s\033[0m\n' "ferry events --stats $ID | python3 -m json.tool"
  ferry events --stats "$ID" | python3 -m json.tool
}

section_checkpoint_restore() {
  local a b
  heading "ferry checkpoint: the running container into a directory of CRIU images"
  show ferry checkpoint --image-path "$TMP/images" --stats "$ID"
  a=$(count)
  say "counter at checkpoint: $a; the container is gone:"
  show ferry list
  sleep 1
  say "one second later the counter is still $(count)"

  heading "ferry inspect: what the images hold"
  show ferry inspect "$TMP/images"

  heading "ferry restore: back from the images, counting on from where it stopped"
  show ferry restore -d --bundle "$BUNDLE" --image-path "$TMP/images" "$ID" </dev/null >>"$TMP/container.log" 2>&1
  a=$(count)
  sleep 1
  b=$(count)
  say "counter now $a, one second later $b (it did not start again at 1)"
  show ferry state "$ID"

  heading "ferry checkpoint --leave-running --export: a portable archive"
  show ferry checkpoint --leave-running --export "$TMP/snapshot.tar.zst" "$ID"
  show ls -l "$TMP/snapshot.tar.zst"
  say "status: $(ferry state "$ID" | jq -r .status)"
}

# Two "hosts" on this machine: network namespaces joined by a veth pair,
# their addresses only inside them.
NS_A=""
NS_B=""
SERVE_PID=""
in_ns() {
  local ns=$1
  shift
  nsenter --net="/run/netns/$ns" "$@"
}

section_migrate() {
  heading "ferry migrate: the running container to another host"
  NS_A=ferry-demo-a-$$
  NS_B=ferry-demo-b-$$
  ip netns add "$NS_A"
  ip netns add "$NS_B"
  ip link add fdemo-a$$ netns "$NS_A" type veth peer name fdemo-b$$ netns "$NS_B"
  in_ns "$NS_A" ip addr add 10.254.77.1/24 dev fdemo-a$$
  in_ns "$NS_B" ip addr add 10.254.77.2/24 dev fdemo-b$$
  in_ns "$NS_A" ip link set fdemo-a$$ up
  in_ns "$NS_B" ip link set fdemo-b$$ up
  in_ns "$NS_A" ip link set lo up
  in_ns "$NS_B" ip link set lo up
  say "host A: network namespace $NS_A (10.254.77.1), host B: $NS_B (10.254.77.2)"

  heading "ferry certs: an operator CA and one certificate per host"
  show "$FERRY" certs --dir "$TMP/pki" --host a,10.254.77.1 --host b,10.254.77.2
  ls "$TMP/pki"

  heading "ferry serve on host B (its own state root and bundle directory)"
  mkdir -p "$TMP/b-bundles"
  # nsenter execs ferry, so $! is the server's own pid.
  nsenter --net="/run/netns/$NS_B" "$FERRY" --root "$TMP/b-state" serve --listen 10.254.77.2:7070 \
    --bundle-dir "$TMP/b-bundles" --ca "$TMP/pki/ca.pem" --cert "$TMP/pki/b.pem" \
    --key "$TMP/pki/b-key.pem" --cgroup-parent ferry-demo-b </dev/null >"$TMP/serve.out" 2>"$TMP/serve.err" &
  SERVE_PID=$!
  local i
  for i in $(seq 1 100); do
    grep -q "listening on" "$TMP/serve.out" 2>/dev/null && break
    sleep 0.05
  done
  say "$(cat "$TMP/serve.out")"

  heading "ferry migrate from host A, shipping the root filesystem"
  local a b
  a=$(count)
  printf '\033[2m$ %s\033[0m\n' "ferry migrate $ID --to 10.254.77.2:7070 --rootfs ship --ca ca.pem --cert a.pem --key a-key.pem"
  in_ns "$NS_A" "$FERRY" --root "$ROOT" migrate "$ID" --to 10.254.77.2:7070 --rootfs ship \
    --ca "$TMP/pki/ca.pem" --cert "$TMP/pki/a.pem" --key "$TMP/pki/a-key.pem"
  say "host A now has:"
  show ferry list
  say "host B has:"
  show "$FERRY" --root "$TMP/b-state" list
  BUNDLE=$TMP/b-bundles/$ID
  sleep 1
  b=$(count)
  say "counter was $a on A before the move, now $b on B ($BUNDLE)"
  show "$FERRY" --root "$TMP/b-state" delete --force "$ID"
}

migrate_cleanup() {
  if [ -n "$SERVE_PID" ]; then
    kill "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
  fi
  if [ -n "$TMP" ] && [ -d "$TMP/b-state/$ID" ]; then
    "$FERRY" --root "$TMP/b-state" delete -f "$ID" >/dev/null 2>&1 || true
  fi
  [ -n "$NS_A" ] && ip netns del "$NS_A" 2>/dev/null
  [ -n "$NS_B" ] && ip netns del "$NS_B" 2>/dev/null
  # The serving host's cgroup parent, at whatever depth each hierarchy put it (empty ones only).
  find /sys/fs/cgroup -maxdepth 6 -type d -name ferry-demo-b 2>/dev/null | awk '{ print length, $0 }' |
    sort -rn | cut -d' ' -f2- | while read -r d; do rmdir "$d" 2>/dev/null; done
  true
}

section_delete() {
  heading "ferry delete --force: stop and remove the container"
  show ferry delete --force "$ID"
  show ferry list
}

main() {
  if [ "$(id -u)" != 0 ]; then
    echo "demo: must run as root (namespaces, mounts, cgroups)" >&2
    exit 1
  fi
  exec 3>&1
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  section_setup
  section_bundle
  section_run
  section_inspect
  section_pause_resume
  section_stats
  section_checkpoint_restore
  section_delete
  section_run
  section_migrate

  heading "Done"
  say "Temporary files in $TMP are removed now. Next: scripts/test.sh runs the test suite."
}

main "$@"
