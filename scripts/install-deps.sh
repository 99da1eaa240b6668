#!/usr/bin/env bash
# Installs the Debian packages banger builds and runs with, skipping those already present.
set -euo pipefail

# sudo: an ordinary user's bangerd asks it for its few privileged commands,
# and the tests make such users.
packages=(make git ca-certificates qemu-system-x86 qemu-utils debootstrap e2fsprogs iproute2
  openssh-client nftables iptables dpkg-dev apt-utils sudo procps
  kmod # kmod: depmod for the Void fixture mirror's kernel package
  rsync) # rsync: test/e2e TestStockSSHTools runs rsync -a through banger ssh-config
# qemu-utils: qemu-img, which makes the qcow2 overlays QEMU VMs boot from.
# The web UI's browser test (test/e2e TestWebImageBuildChromium) drives a
# headless Chromium through ChromeDriver.
packages+=(chromium chromium-driver)
# npm fetches mise and opencode for the docker image from the npm registry.
# NodeSource's nodejs ships its own npm and conflicts with Debian's package.
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

sudo=()
if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive

# The kernel is fetched with apt-get download, which needs fresh package lists.
newest_list=$(stat -c %Y /var/lib/apt/lists/*_Packages 2>/dev/null | sort -n | tail -n 1 || true)
lists_age=$(( $(date +%s) - ${newest_list:-0} ))
if ((${#missing[@]} > 0)) || ((lists_age > 6 * 3600)); then
  "${sudo[@]}" apt-get update -qq
fi
if ((${#missing[@]} > 0)); then
  echo "installing: ${missing[*]}"
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  echo "note: add /usr/local/go/bin to PATH" >&2
fi
