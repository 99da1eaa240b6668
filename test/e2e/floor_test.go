package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

// floorInit is the init of the floor boot: it configures eth0 from the
// kernel's ip= argument, mounts the VM's /root disk (authorized_keys),
// makes the host key and execs sshd. Nothing else runs: no boot can reach
// SSH much faster on this kernel and disk.
const floorInit = `#!/bin/sh
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t ext4 /dev/vdb /root
ip=
for arg in $(cat /proc/cmdline); do
	case $arg in ip=*) ip=${arg#ip=} ;; esac
done
IFS=: read -r addr _ gw mask host dev _ <<EOF
$ip
EOF
ip link set lo up
ip link set "$dev" up
ip addr add "$addr/$mask" dev "$dev"
ip route add default via "$gw"
echo "$host" >/proc/sys/kernel/hostname
test -s /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
mkdir -p /run/sshd
echo "banger-floor: exec sshd"
exec /usr/sbin/sshd -D -e
`

// floorInitPath is where the floor's init lives in its copy of the image.
const floorInitPath = "/banger-floor-init"

// floorBoot boots the floor in ns: the bundle's docker image (a private
// copy) under bare qemu with the bundle's kernel, initramfs and boot
// arguments, and init=floorInit. It returns the time from spawning qemu to
// the first accepted SSH login with the bundle key.
func floorBoot(t testing.TB, ns *vmtest.NS, runtime string) time.Duration {
	t.Helper()
	var console string
	d, out := bareBootWith(t, ns, runtime, "docker", func(spec *hypervisor.Spec) {
		for _, disk := range spec.Disks {
			if !disk.Root {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := ext4.PutFile(ctx, runner.Default, disk.Path, floorInitPath, []byte(floorInit), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		spec.Cmdline += " init=" + floorInitPath
		console = spec.ConsoleLog
	})
	b, err := bundle.Load(runtime)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out); got != b.KernelVersion {
		t.Fatalf("floor boot: uname -r = %q, want %q", got, b.KernelVersion)
	}
	// The guest that answered must be the floor, not the image's own init.
	if log, err := os.ReadFile(console); err != nil || !strings.Contains(string(log), "banger-floor: exec sshd") {
		t.Fatalf("floor boot: the console shows no floor init (%v):\n%s", err, tail(string(log), 30))
	}
	return d
}

// TestBenchColdBoot is 'make bench-coldboot': it runs
// BANGER_BENCH_N floor boots (floorBoot) and as many cold creates of the
// docker image through bangerd to first SSH, interleaved in one run, and
// prints medians, p90s and the ratio of the medians. It never fails on
// timing.
func TestBenchColdBoot(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("BANGER_BENCH_N"))
	if n <= 0 {
		t.Skip("benchmark: set BANGER_BENCH_N (make bench-coldboot does)")
	}
	_, runtime := requireVM(t)
	e := newEnvConfig(t, defaultConfig+"tap_pool_size = 2\n")
	var floor, creates []float64
	stages := map[string][]float64{}
	var order []string
	bootFloor := func() float64 {
		ns, err := vmtest.Create("bgf-")
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		return ms(floorBoot(t, ns, runtime))
	}
	create := func(name string) float64 {
		// Let the TAP pool refill after the previous create.
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		vm := e.create(name, "--image", "docker")
		d := ms(time.Since(start))
		for _, s := range vm.Stages {
			if _, ok := stages[s.Name]; !ok {
				order = append(order, s.Name)
			}
			stages[s.Name] = append(stages[s.Name], s.DurationMS)
		}
		e.must("vm", "delete", "--force", name)
		return d
	}
	for i := 0; i < n; i++ {
		// Alternate which goes first, so that neither always meets a
		// host still busy with the other.
		var f, c float64
		if i%2 == 0 {
			f = bootFloor()
			c = create(fmt.Sprintf("cold%d", i))
		} else {
			c = create(fmt.Sprintf("cold%d", i))
			f = bootFloor()
		}
		floor, creates = append(floor, f), append(creates, c)
		t.Logf("run %d: floor boot %.0f ms, docker cold create %.0f ms", i+1, f, c)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nbench-create, cold boot: %d runs each (QEMU microvm, TCG here)\n", n)
	fmt.Fprintf(&b, "%-40s %10s %10s\n", "", "median ms", "p90 ms")
	row := func(label string, xs []float64) {
		fmt.Fprintf(&b, "%-40s %10.0f %10.0f\n", label, quantile(xs, 0.5), quantile(xs, 0.9))
	}
	row("floor boot (shell init + sshd)", floor)
	row("docker image cold create", creates)
	for _, s := range order {
		row("  stage: "+s, stages[s])
	}
	fmt.Fprintf(&b, "docker cold create / floor boot: %.2fx median, %.2fx p90\n",
		quantile(creates, 0.5)/quantile(floor, 0.5), quantile(creates, 0.9)/quantile(floor, 0.9))
	fmt.Print(b.String())
}
