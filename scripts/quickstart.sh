#!/usr/bin/env bash
# From a fresh clone to a shell in a running VM, as yourself: installs deps, builds banger and its runtime bundle, creates testbox, ssh.
# It asks sudo only for what needs root: apt, the image build's debootstrap and chroot steps, and (once, if you agree) a sudoers rule for bangerd.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

name=${1:-testbox}
if [[ $(id -u) -eq 0 && -n ${SUDO_USER:-} ]]; then
  echo "quickstart: run it as yourself, not under sudo: scripts/quickstart.sh" >&2
  echo "  (it asks sudo for the few steps that need root; run as root, your VMs would be root's)" >&2
  exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "quickstart: sudo is not installed: as root, run 'apt-get install sudo' and add yourself to the sudo group" >&2; exit 1; }
  echo "quickstart: sudo is needed for apt and for the image build's debootstrap and chroot steps"
  sudo -v
fi
scripts/install-deps.sh
make build runtime-bundle

if [[ $(id -u) -ne 0 ]]; then
  # bangerd runs detached, without a terminal, so sudo can never ask it for a
  # password: its few privileged commands must be allowed without one.
  rule=/etc/sudoers.d/zz-banger-$(id -un)
  report=$(build/bin/banger doctor || true)
  if ! grep -q '\[ok  \] sudo ' <<<"$report"; then
    echo
    echo "bangerd runs as you and needs these commands as root, without a password prompt:"
    build/bin/banger sudoers | sed 's/^/    /'
    if [[ -t 0 ]]; then
      read -r -p "install this rule as $rule? [y/N] " answer
    else
      answer=n
    fi
    if [[ $answer == [yY]* ]]; then
      tmp=$(mktemp)
      build/bin/banger sudoers >"$tmp"
      sudo visudo -cf "$tmp" >/dev/null
      sudo install -m 0440 -o root -g root "$tmp" "$rule"
      rm -f "$tmp"
      report=$(build/bin/banger doctor || true)
      if ! grep -q '\[ok  \] sudo ' <<<"$report"; then
        echo "quickstart: sudo still asks bangerd for a password: a later rule overrides $rule (see 'sudo -l')" >&2
        exit 1
      fi
    else
      echo "quickstart: install it yourself, then rerun:" >&2
      echo "  build/bin/banger sudoers | sudo tee $rule >/dev/null && sudo chmod 0440 $rule" >&2
      exit 1
    fi
  fi
fi
build/bin/banger doctor || { echo "quickstart: fix what banger doctor reports above, then rerun" >&2; exit 1; }
if ! build/bin/banger vm show "$name" >/dev/null 2>&1; then
  build/bin/banger vm create --name "$name"
fi
build/bin/banger vm start "$name" >/dev/null
exec build/bin/banger vm ssh "$name"
