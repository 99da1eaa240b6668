#!/usr/bin/env bash
# From a fresh clone to a shell in a running VM: installs deps, builds banger and its runtime bundle, creates testbox, ssh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

name=${1:-testbox}
scripts/install-deps.sh
make build runtime-bundle
build/bin/banger doctor || { echo "quickstart: fix what banger doctor reports above, then rerun" >&2; exit 1; }
if ! build/bin/banger vm show "$name" >/dev/null 2>&1; then
  build/bin/banger vm create --name "$name"
fi
build/bin/banger vm start "$name" >/dev/null
exec build/bin/banger vm ssh "$name"
