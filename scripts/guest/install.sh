#!/usr/bin/env bash
# Fetches what the stock-kernel test guest needs without installing anything into the system:
# Debian's generic kernel package (pure cgroup v2, soft-dirty tracking, userfaultfd) and QEMU
# 7.2 with its libraries, unpacked with dpkg-deb under $FERRY_GUEST_DIR (default
# /var/lib/ferry-guest). `apt-get install qemu-system-x86` would replace the system's newer
# qemu-utils and pull in udev/systemd upgrades, so the packages are only downloaded.
# Idempotent: returns at once when the unpacked tree for the current kernel is there.
set -euo pipefail
DIR=${FERRY_GUEST_DIR:-/var/lib/ferry-guest}
log() { echo "guest-install: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (apt-get download)"; exit 1; }
if [ -f "$DIR/ready" ] && [ -x "$DIR/bin/qemu-system-x86_64" ] && [ -d "$DIR/kernel/lib/modules/$(cat "$DIR/ready")" ]; then
  exit 0
fi
command -v busybox >/dev/null || { log "busybox (static) is needed for the initramfs"; exit 1; }
apt-cache show linux-image-amd64 >/dev/null 2>&1 || apt-get update -qq
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { log "no linux-image-amd64 in the package lists"; exit 1; }
# QEMU and the shared libraries it needs that a Debian 12 server lacks.
qpkgs=(qemu-system-x86 qemu-system-common qemu-system-data seabios kmod libbrlapi0.8 libcacard0
  libcapstone4 libdaxctl1 libepoxy0 libexecs0 libfdt1 libgstreamer-plugins-base1.0-0 libibverbs1
  libndctl6 libnl-route-3-200 libopus0 liborc-0.4-0 libpmem1 librdmacm1 libslirp0 libsndio7.0
  libspice-server1 libusb-1.0-0 libusbredirparser1 libvdeplug2)

tmp="$DIR.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"/{debs,sysroot,kernel,bin}
chown _apt "$tmp/debs" 2>/dev/null || true
log "downloading $kpkg and QEMU (about 90 MB)"
(cd "$tmp/debs" && apt-get download -qq "${qpkgs[@]}" "$kpkg" >/dev/null)
for d in "$tmp"/debs/*.deb; do
  case ${d##*/} in
  linux-image-*) dpkg-deb -x "$d" "$tmp/kernel" ;;
  *) dpkg-deb -x "$d" "$tmp/sysroot" ;;
  esac
done
rm -rf "$tmp/debs"
kver=$(ls "$tmp/kernel/lib/modules")
cat >"$tmp/bin/qemu-system-x86_64" <<Q
#!/bin/sh
R=$DIR/sysroot
LD_LIBRARY_PATH=\$R/usr/lib/x86_64-linux-gnu exec \$R/usr/bin/qemu-system-x86_64 -L \$R/usr/share/qemu -L \$R/usr/share/seabios "\$@"
Q
chmod +x "$tmp/bin/qemu-system-x86_64"
# modprobe for the guest: the unpacked kernel's modules (the host has no /lib/modules for it).
# kmod picks its personality from argv[0], hence the links.
mkdir -p "$tmp/kmod"
ln -s ../sysroot/bin/kmod "$tmp/kmod/modprobe"
ln -s ../sysroot/bin/kmod "$tmp/kmod/depmod"
"$tmp/kmod/depmod" -b "$tmp/kernel" "$kver"
printf '#!/bin/sh\nexec %s/kmod/modprobe -d %s/kernel "$@"\n' "$DIR" "$DIR" >"$tmp/bin/modprobe"
chmod +x "$tmp/bin/modprobe"
# The uncompressed kernel boots through PVH, skipping the xz decompressor (slow under TCG).
python3 - "$tmp/kernel/boot/vmlinuz-$kver" "$tmp/vmlinux" <<'PY'
import lzma, sys
data = open(sys.argv[1], "rb").read()
i = data.find(b"\xfd7zXZ\x00")
open(sys.argv[2], "wb").write(lzma.LZMADecompressor().decompress(data[i:]))
PY
echo "$kver" >"$tmp/ready"
rm -rf "$DIR"
mv "$tmp" "$DIR"
# The paths written above name $DIR.tmp nowhere: they were written with $DIR.
"$DIR/bin/qemu-system-x86_64" --version | head -n1 >&2
log "ready: kernel $kver under $DIR"
