#!/usr/bin/env bash
# Opens a chroot shell (or runs a script) inside an ext4 guest image, to customize it by hand.
set -euo pipefail

usage() {
  echo "usage: sudo scripts/customize.sh IMAGE.ext4 [SCRIPT]"
  echo "Mounts IMAGE read-write, binds /proc, /sys and /dev, and runs SCRIPT (copied into the"
  echo "image and run with bash) or an interactive shell in a chroot. Unmounts on exit."
  echo "Then register it: banger image register --name NAME --rootfs \$(realpath IMAGE.ext4)"
}
[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
(($# >= 1)) || { usage >&2; exit 2; }
image=$(realpath "$1")
script=${2:-}
[[ $(id -u) -eq 0 ]] || { echo "customize: needs root to mount $image" >&2; exit 1; }
[[ -f $image ]] || { echo "customize: $image is not a file" >&2; exit 1; }
if pgrep -f "qemu-system.*$image|firecracker.*$image" >/dev/null; then
  echo "customize: a VM is using $image; stop it first" >&2
  exit 1
fi

mnt=$(mktemp -d /tmp/banger-customize.XXXXXX)
cleanup() {
  for m in dev/pts dev sys proc; do mountpoint -q "$mnt/$m" && umount "$mnt/$m"; done
  mountpoint -q "$mnt" && umount "$mnt"
  rmdir "$mnt"
}
trap cleanup EXIT
mount -o loop "$image" "$mnt"
for m in proc sys dev dev/pts; do mount --bind "/$m" "$mnt/$m"; done
if [[ -n $script ]]; then
  install -m 0755 "$script" "$mnt/tmp/banger-customize.sh"
  chroot "$mnt" /bin/bash /tmp/banger-customize.sh
  rm -f "$mnt/tmp/banger-customize.sh"
else
  echo "customize: chroot shell in $image; exit to unmount"
  chroot "$mnt" /bin/bash -l || true
fi
