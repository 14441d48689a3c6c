#!/usr/bin/env bash
# Usage: scripts/make-rootfs.sh DIR
# Builds a busybox rootfs in DIR from Debian's busybox-static: every applet
# linked, /etc/passwd and /etc/group. No network access.
set -euo pipefail
dir=${1:?usage: make-rootfs.sh DIR}
bb=$(command -v busybox || true)
[ -x "${bb:-/bin/busybox}" ] || bb=/bin/busybox
[ -x "$bb" ] || { echo "make-rootfs: busybox not found (run scripts/install-deps.sh)" >&2; exit 1; }
file -L "$bb" 2>/dev/null | grep -q 'dynamically linked' && { echo "make-rootfs: $bb is not static" >&2; exit 1; }
mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,var/run,run}
chmod 1777 "$dir/tmp"
cp "$bb" "$dir/bin/busybox"
for applet in $("$dir/bin/busybox" --list-full); do
  [ -e "$dir/$applet" ] || ln -s /bin/busybox "$dir/$applet"
done
cat >"$dir/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat >"$dir/etc/group" <<'GR'
root:x:0:
tty:x:5:
nogroup:x:65534:
GR
echo "127.0.0.1 localhost" >"$dir/etc/hosts"
: >"$dir/etc/resolv.conf"
