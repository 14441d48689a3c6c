#!/usr/bin/env bash
# Installs everything ferry needs on a Debian 12 machine. Idempotent: when all
# is present it only checks and returns within seconds.
set -euo pipefail

CRIU_VERSION=4.2.1
CRIU_DEB_VERSION=4.2.1-1
CRIU_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
CRIU_MIN=4.1

log() { echo "install-deps: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root (apt-get and /usr/local/sbin)"
  exit 1
fi

# Runtime tools, CRIU build deps and the peers benchmarks compare against.
# podman drives ferry through conmon (podman depends on it; listed so a
# missing one is installed even when podman is already there) and reads its
# container configuration from golang-github-containers-common. ferry compiles
# seccomp filters with libseccomp (libseccomp-dev to build).
PKGS=(build-essential pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler
  protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev
  libnftables-dev libgnutls28-dev uuid-dev libseccomp-dev iproute2 nftables iptables jq busybox-static
  runc crun podman conmon golang-github-containers-common xz-utils procps util-linux
  iputils-ping psmisc zstd containerd)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian bookworm's criu 3.17 cannot dump on this kernel (vDSO layout); build a
# newer one from Debian's source package unless a working one is already here.
criu_ok() {
  local c
  c=$(command -v criu) || return 1
  local v
  v=$("$c" --version 2>/dev/null | sed -n 's/^Version: *//p')
  [ -n "$v" ] || return 1
  [ "$(printf '%s\n%s\n' "$CRIU_MIN" "$v" | sort -V | head -n1)" = "$CRIU_MIN" ] || return 1
  "$c" check >/dev/null 2>&1
}

if ! criu_ok; then
  log "building CRIU $CRIU_VERSION from Debian's source package"
  uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | head -n1)
  list=/etc/apt/sources.list.d/ferry-criu-src.sources
  if [ ! -f "$list" ]; then
    printf 'Types: deb-src\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$list"
  fi
  apt-get update -qq
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # apt-get may exit 100 when the .debian.tar.xz is missing; the orig tarball is what we need.
  (cd "$tmp" && apt-get source --download-only "criu=$CRIU_DEB_VERSION" >/dev/null 2>&1) || true
  tarball="$tmp/criu_$CRIU_VERSION.orig.tar.xz"
  [ -f "$tarball" ] || { log "criu_$CRIU_VERSION.orig.tar.xz did not download"; exit 1; }
  echo "$CRIU_SHA256  $tarball" | sha256sum -c --quiet - || { log "criu tarball checksum mismatch"; exit 1; }
  tar -C "$tmp" -xf "$tarball"
  make -C "$tmp/criu-$CRIU_VERSION" -j"$(nproc)" criu >"$tmp/build.log" 2>&1 ||
    { tail -n 30 "$tmp/build.log" >&2; log "criu build failed"; exit 1; }
  install -m 0755 "$tmp/criu-$CRIU_VERSION/criu/criu" /usr/local/sbin/criu
  hash -r
  criu_ok || { log "installed criu does not pass 'criu check'"; exit 1; }
fi

# The stock-kernel test guest: Debian's kernel and QEMU, unpacked privately.
"$(dirname "$0")/guest/install.sh"

if ! command -v cargo >/dev/null; then
  log "cargo not found: install the Rust toolchain (rustup) first"
  exit 1
fi
log "ready: $(criu --version | head -n1), $(cargo --version)"
