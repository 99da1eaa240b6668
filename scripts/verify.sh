#!/usr/bin/env bash
# Smoke test of the VM workflow in throwaway network namespaces: create, ssh, stop, delete (and NAT with --nat).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/verify.sh [--nat] [--image NAME] [--register ARGS] [--expect-kernel VERSION] [--opencode] [--keep-logs]

Runs a private bangerd with its own state inside a network namespace this
script creates, then: creates a VM, runs a command over ssh, stops it and
deletes it, checking that nothing is left behind. Your own banger state and
host network are not touched.

  --nat         also check the guest's outbound access through NAT, against an
                HTTP server in a second namespace that stands in for the
                upstream network, and that banger's nftables rules are gone
                afterwards (needs python3 for the upstream server)
  --image NAME  image to boot (default: minimal)
  --register ARGS
                first register NAME in the private daemon with
                'banger image register --name NAME ARGS' (ARGS split on
                spaces: --rootfs R --work-seed W [--kernel K --initrd I --modules M])
  --expect-kernel VERSION
                fail unless the guest's uname -r is VERSION
  --opencode    also check the image's opencode server on port 4096: it
                answers with the VM's own password and refuses without it
  --keep-logs   keep the daemon log and state directory for inspection

Needs root, 'make build runtime-bundle', and the tools 'banger doctor' checks.
EOF
}

nat=0
image=minimal
keep=0
register=
expect_kernel=
opencode=0
while (($#)); do
  case $1 in
    --nat) nat=1 ;;
    --image) image=${2:?--image needs a name}; shift ;;
    --register) register=${2:?--register needs the arguments of banger image register}; shift ;;
    --expect-kernel) expect_kernel=${2:?--expect-kernel needs a kernel release}; shift ;;
    --opencode) opencode=1 ;;
    --keep-logs) keep=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "verify: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

keep_state=$keep
# shellcheck source=lib/sandbox.sh
source "$(dirname "$0")/lib/sandbox.sh"
if ((nat)) && ! command -v python3 >/dev/null; then
  echo "verify: --nat needs python3 for the upstream HTTP server: apt-get install python3" >&2
  exit 1
fi
if ((opencode)) && ! command -v curl >/dev/null; then
  echo "verify: --opencode needs curl: apt-get install curl" >&2
  exit 1
fi
up=bgu-$$
extra_namespaces=("$up")
step() { printf '\n== %s\n' "$*"; }
fail() { sandbox_fail "$@"; }

step "starting bangerd in namespace $ns"
sandbox_start

if [[ -n $register ]]; then
  step "banger image register --name $image $register"
  # shellcheck disable=SC2086 # the arguments are split on purpose
  banger image register --name "$image" $register
fi

create_args=(vm create --name verify --image "$image")
((nat)) && create_args+=(--nat)
step "banger ${create_args[*]}"
banger "${create_args[@]}"

step "ssh"
[[ $(banger vm ssh verify -- hostname) == verify ]] || fail "hostname in the guest is not verify"
banger vm ssh verify -- uname -a
if [[ -n $expect_kernel ]]; then
  got=$(banger vm ssh verify -- uname -r)
  [[ $got == "$expect_kernel" ]] || fail "the guest runs kernel $got, want $expect_kernel"
  echo "guest kernel is $got"
fi

if ((opencode)); then
  step "opencode on 4096 with the VM's password"
  show=$(banger vm show verify --json)
  ip=$(sed -n 's/.*"ip": *"\([0-9.]*\)".*/\1/p' <<<"$show" | head -1)
  pass=$(sed -n 's/.*"opencode_password": *"\([^"]*\)".*/\1/p' <<<"$show" | head -1)
  [[ -n $ip && -n $pass ]] || fail "vm show --json gives no address or opencode password"
  code=
  for _ in $(seq 60); do
    code=$(inns curl -s -o /dev/null -w '%{http_code}' -u "opencode:$pass" "http://$ip:4096/global/health" || true)
    [[ $code == 200 ]] && break
    sleep 1
  done
  [[ $code == 200 ]] || fail "opencode on $ip:4096 answered $code with the VM's password, want 200"
  code=$(inns curl -s -o /dev/null -w '%{http_code}' "http://$ip:4096/global/health" || true)
  [[ $code == 401 ]] || fail "opencode on $ip:4096 answered $code without a password, want 401"
  echo "opencode answers with its password and refuses without it"
fi

if ((nat)); then
  step "outbound NAT to an upstream namespace"
  ip netns add "$up"
  ip -n "$ns" link add vh type veth peer name vu netns "$up"
  ip -n "$ns" addr add 192.0.2.2/24 dev vh
  ip -n "$ns" link set vh up
  ip -n "$ns" route add default via 192.0.2.1
  ip -n "$up" link set lo up
  ip -n "$up" addr add 192.0.2.1/24 dev vu
  ip -n "$up" link set vu up
  mkdir -p "$state/www" && echo hello-from-upstream >"$state/www/index.html"
  ip netns exec "$up" python3 -m http.server 8080 --bind 192.0.2.1 --directory "$state/www" \
    >"$state/upstream.log" 2>&1 &
  disown
  for _ in $(seq 50); do grep -q 'Serving HTTP' "$state/upstream.log" 2>/dev/null && break; sleep 0.1; done
  out=$(banger vm ssh verify -- 'timeout 10 bash -c "exec 3<>/dev/tcp/192.0.2.1/8080 && printf \"GET / HTTP/1.0\r\n\r\n\" >&3 && cat <&3"')
  grep -q hello-from-upstream <<<"$out" || fail "the guest could not fetch from the upstream namespace"
  grep -q '^192.0.2.2 ' "$state/upstream.log" || fail "upstream did not see the host's masqueraded address"
  echo "guest fetched the page; upstream saw 192.0.2.2 (masquerade)"
  rules=$(inns nft list table ip banger)
  [[ $rules == *vm:* ]] || fail "no NAT rule in banger's nftables table"
fi

step "stop keeps the disks"
banger vm stop verify
[[ $(banger vm show verify --json | grep -o '"state": *"[a-z]*"') == *stopped* ]] || fail "VM is not stopped"

step "delete leaves nothing"
banger vm delete verify
if banger vm show verify >/dev/null 2>&1; then fail "VM still listed after delete"; fi
leftover=$(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | grep -E '^(bgtap-|tap-)' | grep -v '^tap-pool-' || true)
[[ -z $leftover ]] || fail "TAP devices left: $leftover"
if pgrep -f "qemu-system.*$state" >/dev/null; then fail "hypervisor still running"; fi
if ((nat)); then
  rules=$(inns nft list table ip banger 2>/dev/null || true)
  [[ $rules != *vm:* ]] || fail "NAT rules left in banger's table"
  echo "no NAT rules left"
fi
echo "idle pool devices (reusable capacity, not leaks): $(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | grep -c '^tap-pool-' || true)"

step "verify: ok"
