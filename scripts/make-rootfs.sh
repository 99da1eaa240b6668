#!/usr/bin/env bash
# Builds a guest image with banger's recipe (debootstrap + mkfs.ext4 -d) through bangerd, and prints its path.
set -euo pipefail

usage() { echo "usage: scripts/make-rootfs.sh NAME [docker|minimal] [SIZE]   (for example: web docker 8G)"; }
[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
(($# >= 1)) || { usage >&2; exit 2; }
banger=$(cd "$(dirname "$0")/.." && pwd)/build/bin/banger
[[ -x $banger ]] || { echo "make-rootfs: run 'make build' first" >&2; exit 1; }
args=(image build --name "$1" --kind "${2:-docker}")
[[ -n ${3:-} ]] && args+=(--size "$3")
"$banger" "${args[@]}"
"$banger" image list | awk -v n="$1" '$1 == n {print $NF}'
