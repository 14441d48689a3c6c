#!/bin/bash
# PID 1 of the guest after switch_root: run the command the host wrote into the run
# directory, with stdout/stderr on the virtio ports the host reads, record its exit status,
# power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
for x in $(</proc/cmdline); do
  case $x in ferry.rundir=*) rundir=${x#*=} ;; ferry.modprobe=*) modprobe=${x#*=} ;; esac
done
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
out=/dev/console err=/dev/console
for p in /sys/class/virtio-ports/*; do
  case $(<"$p/name") in guest.out) out=/dev/${p##*/} ;; guest.err) err=/dev/${p##*/} ;; esac
done
echo "guest: command starts at uptime $(cut -d' ' -f1 /proc/uptime)s" >/dev/console
bash "$rundir/cmd" </dev/null >"$out" 2>"$err"
rc=$?
echo "$rc" >"$rundir/rc"
echo "guest: command exited $rc at uptime $(cut -d' ' -f1 /proc/uptime)s" >/dev/console
sync
echo o >/proc/sysrq-trigger
sleep 10
