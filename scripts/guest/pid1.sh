#!/bin/bash
# PID 1 of the guest after switch_root: run the command the host wrote into the run
# directory, with stdout/stderr on the virtio ports the host reads, record its exit status,
# power off.
#
# With ferry.systemd=1 on the kernel command line, PID 1 becomes systemd instead, started on a
# unit of its own (ferry-guest.service) that runs this script again with `run` once the system
# bus is up: only D-Bus and that unit are started (no udev, journald or getty), which keeps the
# boot short under emulation.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
systemd=0 deadline=0
for x in $(</proc/cmdline); do
  case $x in
  ferry.rundir=*) rundir=${x#*=} ;;
  ferry.modprobe=*) modprobe=${x#*=} ;;
  ferry.systemd=*) systemd=${x#*=} ;;
  ferry.deadline=*) deadline=${x#*=} ;;
  esac
done

# What the guest is doing, on the serial console (apart from the ports the command writes
# to): every process with its cgroup and wait channel, the frozen cgroups, the kernel stacks
# of the CPUs and of blocked tasks.
diagnose() {
  echo "guest: monitor: $1; processes (not the kernel's):"
  ps -eo pid,ppid,stat,wchan:32,etime,cgroup:48,args | awk '$1 != 2 && $2 != 2' | cut -c1-240
  echo "guest: monitor: frozen cgroups:"
  grep -l '^frozen 1' /sys/fs/cgroup/*/cgroup.events /sys/fs/cgroup/*/*/cgroup.events /sys/fs/cgroup/*/*/*/cgroup.events 2>/dev/null
  echo l >/proc/sysrq-trigger
  echo w >/proc/sysrq-trigger
}

# Beats every 5 s into the run directory (the host ends a guest whose beat stops: run.sh),
# from a cgroup of its own when the command has one, so that a freeze of the command's
# cgroup stops the command but not this. A command frozen for 60 s can never finish: the
# guest says why and ends with status 1. Near the host's deadline, it says what still runs.
monitor() {
  local cg=$1 frozen=0 told=0 up
  if [ "$cg" != / ]; then
    mkdir -p /sys/fs/cgroup/guest-monitor && echo "$BASHPID" >/sys/fs/cgroup/guest-monitor/cgroup.procs
  fi
  while :; do
    up=$(cut -d' ' -f1 /proc/uptime)
    echo "$up" >"$rundir/alive.new" && mv "$rundir/alive.new" "$rundir/alive"
    if [ "$cg" != / ] && grep -q '^frozen 1' "/sys/fs/cgroup$cg/cgroup.events" 2>/dev/null; then
      frozen=$((frozen + 5))
      if ((frozen >= 60)); then
        diagnose "the command's cgroup $cg has been frozen for 60 s" >/dev/console 2>&1
        echo 1 >"$rundir/rc"
        sync
        echo o >/proc/sysrq-trigger
      fi
    else
      frozen=0
    fi
    if ((deadline > 0 && told == 0 && ${up%.*} >= deadline)); then
      diagnose "the command still runs ${deadline} s after boot, near the host's deadline" >/dev/console 2>&1
      told=1
    fi
    sleep 5
  done
}

run_cmd() {
  local out=/dev/console err=/dev/console p rc mon
  for p in /sys/class/virtio-ports/*; do
    case $(<"$p/name") in guest.out) out=/dev/${p##*/} ;; guest.err) err=/dev/${p##*/} ;; esac
  done
  echo "guest: command starts at uptime $(cut -d' ' -f1 /proc/uptime)s" >/dev/console
  monitor "$(cut -d: -f3 /proc/self/cgroup)" </dev/null >/dev/console 2>&1 &
  mon=$!
  bash "$rundir/cmd" </dev/null >"$out" 2>"$err"
  rc=$?
  kill "$mon"
  echo "$rc" >"$rundir/rc"
  echo "guest: command exited $rc at uptime $(cut -d' ' -f1 /proc/uptime)s" >/dev/console
  sync
  echo o >/proc/sysrq-trigger
  sleep 10
}

if [ "${1:-}" = run ]; then
  run_cmd
  exit 1
fi
# The kernel asks for modules through this helper (tun, nf_tables, veth, ...).
echo "$modprobe" >/proc/sys/kernel/modprobe
"$modprobe" tun 2>/dev/null
# Loop devices are the guest's only block devices (for io.max and io.weight tests).
"$modprobe" loop 2>/dev/null
# Container storage cannot live on the root overlay (overlay over overlayfs is refused):
# give podman a tmpfs of its own.
mkdir -p /var/lib/containers && mount -t tmpfs -o mode=700 tmpfs /var/lib/containers
hostname ferry-guest
ip link set lo up
# The test binaries keep scratch files (busybox rootfs, memhog) in the checkout's target/tmp,
# named by pid: guests running side by side get one each.
# The share is 9p with cache=mmap, so an executable on it is read from the host at every exec:
# the debug ferry (about 200 MB) then costs 0.1-0.5 s of emulated time per command, which the
# tests run hundreds of times. A copy in the guest's memory, bound over the same path, is
# read once (measured: `ferry --version` 0.27-0.73 s from the share, 0.15-0.18 s from tmpfs).
for x in $(</proc/cmdline); do
  case $x in ferry.share=*)
    s=${x#*=}
    [ -d "$s/target/tmp" ] && mount -t tmpfs tmpfs "$s/target/tmp"
    for b in debug release; do
      [ -f "$s/target/$b/ferry" ] || continue
      mkdir -p "/run/ferry-exe/$b"
      cp "$s/target/$b/ferry" "/run/ferry-exe/$b/ferry" && mount --bind "/run/ferry-exe/$b/ferry" "$s/target/$b/ferry"
    done
    ;;
  esac
done
if [ "$systemd" = 1 ]; then
  # Runtime units (/run is the guest's tmpfs): D-Bus without the default dependencies that
  # would pull in sysinit.target, and the unit that runs the command.
  u=/run/systemd/system
  mkdir -p "$u/dbus.service.d" "$u/dbus.socket.d"
  printf '[Unit]\nDefaultDependencies=no\n' >"$u/dbus.service.d/ferry-guest.conf"
  printf '[Unit]\nDefaultDependencies=no\n' >"$u/dbus.socket.d/ferry-guest.conf"
  cat >"$u/ferry-guest.service" <<UNIT
[Unit]
Description=ferry guest command
DefaultDependencies=no
Requires=dbus.service
After=dbus.service

[Service]
Type=oneshot
TimeoutStartSec=infinity
Environment=PATH=$PATH HOME=$HOME LANG=$LANG
ExecStart=/bin/bash $0 run
UNIT
  exec /lib/systemd/systemd --unit=ferry-guest.service --log-target=console --log-level=warning --show-status=no
fi
run_cmd
