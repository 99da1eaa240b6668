# Sourced by scripts/verify.sh and scripts/interactive.sh: a private bangerd with its own state inside a throwaway network namespace.
# Defines: sandbox_start, banger (the CLI inside the namespace), inns, $ns, $state; cleanup runs on EXIT.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$root/build/bin
runtime=${BANGER_RUNTIME:-$root/build/runtime}
ns=bgv-$$
state=$(mktemp -d /tmp/bgv.XXXXXX)
sock=$state/run/banger/bangerd.sock
keep_state=${keep_state:-0}
extra_namespaces=()

sandbox_fail() { echo "${0##*/}: FAILED: $*" >&2; exit 1; }

sandbox_cleanup() {
  local rc=$?
  for n in "$ns" "${extra_namespaces[@]}"; do
    if [[ -e /run/netns/$n ]]; then
      for pid in $(ip netns pids "$n"); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$n"
    fi
  done
  if ((keep_state)) || ((rc != 0)); then
    echo "${0##*/}: state and daemon log kept in $state" >&2
  else
    rm -rf "$state"
  fi
  exit $rc
}

sandbox_start() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "${0##*/}: needs root (it creates network namespaces): sudo $0" >&2
    exit 1
  fi
  for f in "$bin/banger" "$bin/bangerd" "$runtime/bundle.json"; do
    [[ -e $f ]] || { echo "${0##*/}: $f is missing: run 'make build runtime-bundle'" >&2; exit 1; }
  done
  trap sandbox_cleanup EXIT
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  mkdir -p "$state/config/banger"
  # Keep DNS forwarding inside the namespaces; no web UI for a throwaway
  # daemon, and no image snapshot built behind the smoke test's back.
  printf 'dns_upstreams = []\nweb_listen_addr = ""\nwarm_after_create = false\n' >"$state/config/banger/config.toml"
  export XDG_CONFIG_HOME=$state/config XDG_STATE_HOME=$state/state XDG_DATA_HOME=$state/data
  export XDG_RUNTIME_DIR=$state/run BANGER_RUNTIME=$runtime BANGER_SOCKET=$sock
  ip netns exec "$ns" "$bin/bangerd" --socket "$sock" >>"$state/bangerd.log" 2>&1 &
  disown
  for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
  [[ -S $sock ]] || sandbox_fail "bangerd did not start; see $state/bangerd.log"
}

inns() { ip netns exec "$ns" "$@"; }
banger() { inns "$bin/banger" "$@"; }
