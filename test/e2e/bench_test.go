package e2e

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/vmtest"
)

// TestBenchCreate is 'make bench-create': it runs BANGER_BENCH_N creates to
// first SSH through the daemon, and as many bare qemu boots of the same image
// in the same run, and prints medians and p90s. It never fails on timing.
func TestBenchCreate(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("BANGER_BENCH_N"))
	if n <= 0 {
		t.Skip("benchmark: set BANGER_BENCH_N (make bench-create does)")
	}
	image := os.Getenv("BANGER_BENCH_IMAGE")
	if image == "" {
		image = "minimal"
	}
	_, runtime := requireVM(t)
	// Two daemons in two namespaces: one with a warm TAP pool, one without.
	pooled := newEnvConfig(t, defaultConfig+"tap_pool_size = 2\n")
	unpooled := newEnvConfig(t, defaultConfig+"tap_pool_size = 0\n")
	// An ordinary user's bangerd, with exactly banger's sudoers rule.
	openTUN(t)
	asUser := newEnvWith(t, envOpts{user: newTestUser(t, vmSudoers), config: defaultConfig + "tap_pool_size = 2\n"})
	stages := map[string][]float64{}
	var order []string
	var totals, totalsNoPool, totalsUser, network, networkNoPool, bare []float64
	create := func(e *env, name string) (float64, float64) {
		start := time.Now()
		vm := e.create(name, "--image", image)
		total := ms(time.Since(start))
		var net float64
		for _, s := range vm.Stages {
			if s.Name == "network" {
				net = s.DurationMS
			}
			if e == pooled {
				if _, ok := stages[s.Name]; !ok {
					order = append(order, s.Name)
				}
				stages[s.Name] = append(stages[s.Name], s.DurationMS)
			}
		}
		e.must("vm", "delete", "--force", name)
		return total, net
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("bench%d", i)
		// Let the pool refill after the previous create.
		time.Sleep(500 * time.Millisecond)
		total, net := create(pooled, name)
		totals, network = append(totals, total), append(network, net)
		total, net = create(unpooled, name)
		totalsNoPool, networkNoPool = append(totalsNoPool, total), append(networkNoPool, net)
		total, _ = create(asUser, name)
		totalsUser = append(totalsUser, total)

		ns, err := vmtest.Create("bgb-")
		if err != nil {
			t.Fatal(err)
		}
		d, _ := bareBoot(t, ns, runtime, image)
		ns.Close()
		bare = append(bare, ms(d))
		t.Logf("run %d: create %.0f ms (pool) / %.0f ms (no pool) / %.0f ms (ordinary user), bare qemu %.0f ms", i+1, totals[i], totalsNoPool[i], totalsUser[i], bare[i])
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nbench-create: image %s, %d runs each (QEMU microvm, TCG here)\n", image, n)
	fmt.Fprintf(&b, "%-40s %10s %10s\n", "", "median ms", "p90 ms")
	row := func(label string, xs []float64) {
		fmt.Fprintf(&b, "%-40s %10.0f %10.0f\n", label, quantile(xs, 0.5), quantile(xs, 0.9))
	}
	row("banger vm create, warm TAP pool", totals)
	for _, s := range order {
		row("  stage: "+s, stages[s])
	}
	row("banger vm create, TAP pool off", totalsNoPool)
	row("banger vm create as an ordinary user", totalsUser)
	row("  stage: network, pool on", network)
	row("  stage: network, pool off", networkNoPool)
	row("bare qemu boot (to first SSH)", bare)
	mt, mb := quantile(totals, 0.5), quantile(bare, 0.5)
	fmt.Fprintf(&b, "banger overhead over bare boot: %+.0f ms median (ratio %.2fx)\n", mt-mb, mt/mb)
	fmt.Fprintf(&b, "ordinary user / root: %.2fx median\n", quantile(totalsUser, 0.5)/mt)
	fmt.Fprintf(&b, "TAP pool effect on the network stage: %.1f ms -> %.1f ms median\n", quantile(networkNoPool, 0.5), quantile(network, 0.5))
	fmt.Print(b.String())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// quantile returns the q-quantile of xs by linear interpolation.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	pos := q * float64(len(s)-1)
	lo := int(pos)
	if lo+1 >= len(s) {
		return s[lo]
	}
	return s[lo] + (pos-float64(lo))*(s[lo+1]-s[lo])
}
