#!/usr/bin/env bash
# Boots a throwaway VM with a private bangerd in its own network namespace and opens an ssh session in it.
set -euo pipefail

image=minimal
while (($#)); do
  case $1 in
    --image) image=${2:?--image needs a name}; shift ;;
    -h|--help)
      echo "usage: scripts/interactive.sh [--image minimal|docker]"
      echo "Creates a VM with a private bangerd inside a network namespace, opens ssh in it,"
      echo "and removes everything when the session ends. Needs root and 'make build runtime-bundle'."
      exit 0 ;;
    *) echo "interactive: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=lib/sandbox.sh
source "$(dirname "$0")/lib/sandbox.sh"
sandbox_start
banger vm create --name sandbox --image "$image"
echo "VM logs: $state/data/banger/vms/*/console.log; leaving the shell deletes the VM."
banger vm ssh sandbox || true
