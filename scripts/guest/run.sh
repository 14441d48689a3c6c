#!/usr/bin/env bash
# run.sh [-m MEM] [-c CPUS] [-t SECONDS] [-s] -- CMD [ARG...]
#
# Runs CMD as root in a fresh QEMU guest booted from Debian's stock kernel (scripts/guest/
# install.sh fetches it): pure cgroup2, soft-dirty tracking, userfaultfd. The guest's root is
# this machine's / read-only under a throwaway tmpfs overlay; the project folder is shared
# read-write at its own path (build outputs, test results). CMD's stdout and stderr stream
# back; the exit status is CMD's, or 125 when the guest itself failed. Variables named in
# GUEST_ENV ("A B") are passed in. With -s, systemd is the guest's PID 1 with the system bus
# running, and CMD runs as a unit of it (pid1.sh). A kernel that loops for 20 s panics
# (softlockup_panic), so such a guest ends at once with the stack that looped on its console;
# one whose monitor stops beating for FERRY_GUEST_STALL seconds (default 120) is ended too.
# Both exit 125 saying "the guest's kernel failed", which scripts/test-guest.sh runs again once.
#
# Hardware KVM is used only when kvm_intel or kvm_amd is loaded: a /dev/kvm backed by another
# module (kvm_pvm, on some cloud VMs) cannot run a stock kernel, so QEMU emulates (TCG) there,
# about 6 s to boot and CPU-bound work many times slower: fine for functional tests and for
# ratios measured inside one guest run, never for absolute times.
set -uo pipefail
MEM=3G CPUS=2 TIMEOUT=1200 SYSTEMD=0
while getopts m:c:t:s o; do
  case $o in m) MEM=$OPTARG ;; c) CPUS=$OPTARG ;; t) TIMEOUT=$OPTARG ;; s) SYSTEMD=1 ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[[ $TIMEOUT =~ ^[0-9]+$ ]] || { echo "run.sh: -t takes whole seconds, not '$TIMEOUT'" >&2; exit 2; }
[ "${1:-}" = -- ] && shift
[ $# -gt 0 ] || { echo "usage: $0 [-m MEM] [-c CPUS] [-t SECONDS] [-s] -- CMD [ARG...]" >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
SHARE=$(cd "$HERE/../.." && pwd)
DIR=${FERRY_GUEST_DIR:-/var/lib/ferry-guest}
[ -f "$DIR/ready" ] || { echo "guest: not installed; run scripts/guest/install.sh" >&2; exit 125; }
KVER=$(<"$DIR/ready")
INITRD=$DIR/initrd.gz

# The initramfs: static busybox, the modules that reach the root (virtio, 9p, overlay), init.
if [ ! -s "$INITRD" ] || [ "$HERE/initramfs-init" -nt "$INITRD" ]; then
  t=$(mktemp -d)
  mkdir -p "$t"/{bin,mods,proc,sys,dev,lower,rw,newroot}
  cp "$(command -v busybox)" "$t/bin/busybox"
  for a in sh mount umount mkdir insmod switch_root cat echo sleep; do ln -s busybox "$t/bin/$a"; done
  for m in virtio_pci 9pnet_virtio 9p overlay virtio_console; do
    "$DIR/kmod/modprobe" -d "$DIR/kernel" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
  done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$t/mods/"
    basename "$ko" >>"$t/mods.order"
  done
  install -m 755 "$HERE/initramfs-init" "$t/init"
  # Guests may boot side by side: each builds its own copy and renames it into place.
  new=$(mktemp "$INITRD.XXXXXX")
  (cd "$t" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -1 >"$new" && mv "$new" "$INITRD"
  rm -rf "$t"
fi

if [ -z "${ACCEL:-}" ]; then
  ACCEL=tcg
  [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } && ACCEL=kvm
fi
if [ "$ACCEL" = kvm ]; then accel=(-accel kvm -cpu host); else accel=(-accel tcg,thread=multi -cpu max); fi

mkdir -p "$SHARE/target/guest"
RUN=$(mktemp -d "$SHARE/target/guest/run.XXXXXX")
{
  for v in ${GUEST_ENV:-}; do [ -n "${!v+x}" ] && printf 'export %s=%q\n' "$v" "${!v}"; done
  printf 'cd %q || exit 125\n' "$PWD"
  printf '%q ' "$@"
  echo
} >"$RUN/cmd"
touch "$RUN/stdout" "$RUN/stderr"
timeout -k 5 "$TIMEOUT" "$DIR/bin/qemu-system-x86_64" "${accel[@]}" -m "$MEM" -smp "$CPUS" \
  -nodefaults -no-user-config -nographic -no-reboot -nic none -bios qboot.rom \
  -kernel "$DIR/vmlinux" -initrd "$INITRD" \
  -append "console=ttyS0 quiet loglevel=5 softlockup_panic=1 panic=-1 ferry.share=$SHARE ferry.pid1=$HERE/pid1.sh ferry.rundir=$RUN ferry.modprobe=$DIR/bin/modprobe ferry.systemd=$SYSTEMD ferry.deadline=$((TIMEOUT > 180 ? TIMEOUT - 90 : 0))" \
  -serial "file:$RUN/console.log" \
  -fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=root,mount_tag=hostroot \
  -fsdev local,id=share,path="$SHARE",security_model=none,multidevs=remap \
  -device virtio-9p-pci,fsdev=share,mount_tag=hostshare \
  -device virtio-serial-pci \
  -chardev file,id=out,path="$RUN/stdout",append=on -device virtserialport,chardev=out,name=guest.out \
  -chardev file,id=err,path="$RUN/stderr",append=on -device virtserialport,chardev=err,name=guest.err \
  </dev/null >"$RUN/qemu.log" 2>&1 &
qpid=$!
trap 'kill "$qpid" 2>/dev/null' INT TERM
# Once the command runs, the guest's monitor beats every 5 s from outside the command's
# cgroup (pid1.sh): a guest silent for STALL seconds has stopped as a whole (seen once: no
# output, no lockup report, both emulated CPUs busy until the deadline), and is ended then.
STALL=${FERRY_GUEST_STALL:-120}
(
  while kill -0 "$qpid" 2>/dev/null; do
    sleep 5
    beat=$(stat -c %Y "$RUN/alive" 2>/dev/null) || continue
    if (($(date +%s) - beat > STALL)); then
      echo "$STALL" >"$RUN/stalled"
      kill "$qpid"
      break
    fi
  done
) </dev/null >/dev/null 2>&1 &
watcher=$!
tail -n +1 -s 0.2 -f --pid="$qpid" "$RUN/stdout" &
t1=$!
tail -n +1 -s 0.2 -f --pid="$qpid" "$RUN/stderr" >&2 &
t2=$!
wait "$qpid"
q=$?
kill "$watcher" 2>/dev/null
wait "$t1" "$t2"
# What the guest's monitor said on the console (a frozen command, the state near the deadline).
monitor_report() { awk '/^guest: monitor:/ { p = 1 } p' "$RUN/console.log" | head -n 400 >&2; }
if [ -s "$RUN/rc" ]; then
  rc=$(<"$RUN/rc")
  monitor_report
  rm -rf "$RUN"
  exit "$rc"
fi
echo "guest: no exit status from the guest (qemu exit $q); logs kept in $RUN" >&2
# A kernel that locks up panics (softlockup_panic) and the guest ends at once; its first
# report, with the stack that looped, says where.
if grep -q -E 'BUG: soft lockup|Kernel panic|rcu: INFO' "$RUN/console.log"; then
  echo "guest: the guest's kernel failed; its first report:" >&2
  awk '/BUG: soft lockup|Kernel panic|rcu: INFO/ { p = 1 } p && n++ < 120' "$RUN/console.log" >&2
  tail -n 30 "$RUN/qemu.log" >&2
elif [ -e "$RUN/stalled" ]; then
  echo "guest: the guest's kernel failed: no beat for $(<"$RUN/stalled") s from its monitor, which runs outside the command's cgroup" >&2
  tail -n 30 "$RUN/console.log" "$RUN/qemu.log" >&2
else
  monitor_report
  tail -n 30 "$RUN/console.log" "$RUN/qemu.log" >&2
fi
exit 125
