package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/vmtest"
)

// TestBenchCreate is 'make bench-create': for each image (BANGER_BENCH_IMAGES,
// default "minimal docker") it measures, BANGER_BENCH_N times each and in one
// run, a bare qemu boot to first SSH, a cold create, a warm create (a
// restore of the image's snapshot), a fork of a running VM, a resume of a
// suspended one and 4 warm creates in parallel, with each operation's
// stages, the disk a new VM uses and "preparing disks" for an 8 GiB image
// beside a 1 GiB one. It prints medians and p90s and the ratios,
// and never fails on timing.
func TestBenchCreate(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("BANGER_BENCH_N"))
	if n <= 0 {
		t.Skip("benchmark: set BANGER_BENCH_N (make bench-create does)")
	}
	images := strings.Fields(os.Getenv("BANGER_BENCH_IMAGES"))
	if len(images) == 0 {
		images = []string{"minimal", "docker"}
	}
	_, runtime := requireVM(t)
	e := newEnvConfig(t, defaultConfig+"tap_pool_size = 4\n")
	c := e.client()
	ctx := context.Background()

	type series struct {
		total  []float64
		stages map[string][]float64
		order  []string
	}
	results := map[string]map[string]*series{} // image -> operation -> series
	record := func(img, op string, d time.Duration, vm *rpc.VM) {
		if results[img] == nil {
			results[img] = map[string]*series{}
		}
		s := results[img][op]
		if s == nil {
			s = &series{stages: map[string][]float64{}}
			results[img][op] = s
		}
		s.total = append(s.total, ms(d))
		t.Logf("%s: %s %.0f ms", img, op, ms(d))
		if vm == nil {
			return
		}
		for _, st := range vm.Stages {
			if _, ok := s.stages[st.Name]; !ok {
				s.order = append(s.order, st.Name)
			}
			s.stages[st.Name] = append(s.stages[st.Name], st.DurationMS)
		}
	}
	create := func(img, name string, cold bool) (*rpc.VM, time.Duration) {
		t.Helper()
		start := time.Now()
		vm, err := c.CreateVM(ctx, rpc.CreateRequest{Name: name, Image: img, Cold: cold}, nil)
		if err != nil {
			t.Fatalf("creating %s of %s: %v", name, img, err)
		}
		return vm, time.Since(start)
	}
	del := func(names ...string) {
		t.Helper()
		for _, name := range names {
			if err := c.DeleteVM(ctx, name); err != nil {
				t.Fatalf("deleting %s: %v", name, err)
			}
		}
	}
	prep := prepareDisks(t, e, runtime, n)
	t.Logf("preparing disks: 1 GiB image %v, 8 GiB image %v (ms)", prep[0], prep[1])
	usedDisk := map[string]float64{}
	var warmBuild []string
	for _, img := range images {
		for i := 0; i < n; i++ {
			ns := vmtest.NewNS(t) // removed when the bench ends, even if it fails
			d, _ := bareBoot(t, ns, runtime, img)
			record(img, "bare qemu boot", d, nil)
		}
		for i := 0; i < n; i++ {
			vm, d := create(img, fmt.Sprintf("cold%d", i), true)
			record(img, "cold create", d, vm)
			del(vm.Name)
		}
		start := time.Now()
		if _, err := c.WarmImage(ctx, img, nil); err != nil {
			t.Fatalf("warming %s: %v", img, err)
		}
		warmBuild = append(warmBuild, fmt.Sprintf("%s: the snapshot took %v to build (a cold boot, settling, snapshot)", img, time.Since(start).Round(time.Millisecond)))
		for i := 0; i < n; i++ {
			vm, d := create(img, fmt.Sprintf("warm%d", i), false)
			if !hasStage(vm, "restoring qemu") {
				t.Fatalf("warm create of %s did not restore: stages %v", img, vm.Stages)
			}
			record(img, "warm create", d, vm)
			if i == 0 {
				var used int64
				for _, f := range diskFiles(*vm) {
					used += allocated(filepath.Join(vm.Dir, f))
				}
				usedDisk[img] = float64(used) / (1 << 20)
				t.Logf("%s: a new warm VM's disks take %.2f MiB", img, usedDisk[img])
			}
			del(vm.Name)
		}
		src, _ := create(img, "src", false)
		for i := 0; i < n; i++ {
			start := time.Now()
			vm, err := c.ForkVM(ctx, "src", fmt.Sprintf("fork%d", i), nil)
			if err != nil {
				t.Fatalf("forking src of %s: %v", img, err)
			}
			record(img, "fork", time.Since(start), vm)
			del(vm.Name)
		}
		for i := 0; i < n; i++ {
			start := time.Now()
			if _, err := c.SuspendVM(ctx, src.Name); err != nil {
				t.Fatalf("suspending src of %s: %v", img, err)
			}
			record(img, "suspend", time.Since(start), nil)
			start = time.Now()
			vm, err := c.ResumeVM(ctx, src.Name, nil)
			if err != nil {
				t.Fatalf("resuming src of %s: %v", img, err)
			}
			record(img, "resume", time.Since(start), vm)
		}
		del(src.Name)
		for i := 0; i < n; i++ {
			var wg sync.WaitGroup
			start := time.Now()
			for k := 0; k < 4; k++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := c.CreateVM(ctx, rpc.CreateRequest{Name: fmt.Sprintf("par%d", k), Image: img}, nil); err != nil {
						t.Errorf("parallel warm create %d of %s: %v", k, img, err)
					}
				}()
			}
			wg.Wait()
			if t.Failed() {
				t.FailNow()
			}
			record(img, "4 warm creates in parallel", time.Since(start), nil)
			del("par0", "par1", "par2", "par3")
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\nbench-create: %d runs each, QEMU microvm under TCG here; times to the first SSH login\n", n)
	fmt.Fprintf(&b, "%-44s", "")
	for _, img := range images {
		fmt.Fprintf(&b, " %10s %10s", img+" p50", "p90")
	}
	b.WriteString("\n")
	row := func(label string, get func(img string) []float64) {
		fmt.Fprintf(&b, "%-44s", label)
		for _, img := range images {
			xs := get(img)
			fmt.Fprintf(&b, " %10.0f %10.0f", quantile(xs, 0.5), quantile(xs, 0.9))
		}
		b.WriteString("\n")
	}
	ops := []string{"bare qemu boot", "cold create", "warm create", "fork", "suspend", "resume", "4 warm creates in parallel"}
	for _, op := range ops {
		row(op+" (ms)", func(img string) []float64 { return results[img][op].total })
		var order []string
		for _, img := range images {
			for _, st := range results[img][op].order {
				if !contains(order, st) {
					order = append(order, st)
				}
			}
		}
		for _, st := range order {
			row("  "+st, func(img string) []float64 { return results[img][op].stages[st] })
		}
	}
	med := func(img, op string) float64 { return quantile(results[img][op].total, 0.5) }
	b.WriteString("\nratios (medians)\n")
	for _, img := range images {
		fmt.Fprintf(&b, "%-8s warm/cold %.3f  resume/cold %.3f  fork/cold %.3f  cold/bare %.2f  4 parallel warm / one warm %.2f  disk used by a new VM %.2f MiB\n",
			img, med(img, "warm create")/med(img, "cold create"), med(img, "resume")/med(img, "cold create"), med(img, "fork")/med(img, "cold create"),
			med(img, "cold create")/med(img, "bare qemu boot"), med(img, "4 warm creates in parallel")/med(img, "warm create"), usedDisk[img])
	}
	fmt.Fprintf(&b, "preparing disks, cold create: 1 GiB image %.1f ms, 8 GiB image %.1f ms median: ratio %.2f\n",
		quantile(prep[0], 0.5), quantile(prep[1], 0.5), quantile(prep[1], 0.5)/quantile(prep[0], 0.5))
	for _, w := range warmBuild {
		b.WriteString(w + "\n")
	}
	fmt.Print(b.String())
}

// prepareDisks registers an 8 GiB image (the minimal rootfs grown, sparse)
// and returns the "preparing disks" stage of at least 5 cold creates of
// the 1 GiB minimal image and of it, interleaved, after a first create of
// each, logged apart: an image's first create also makes the base its VMs
// read (a reflink or sparse copy of a registered image).
func prepareDisks(t *testing.T, e *env, runtime string, n int) [2][]float64 {
	t.Helper()
	big := filepath.Join(e.root, "big.ext4")
	for _, args := range [][]string{
		{"cp", "--sparse=always", filepath.Join(runtime, "rootfs-minimal.ext4"), big},
		{"truncate", "-s", "8G", big},
		{"e2fsck", "-fy", big},
		{"resize2fs", big},
	} {
		if out, err := vmtest.Command(args[0], args[1:]...).CombinedOutput(); err != nil && args[0] != "e2fsck" {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	e.must("image", "register", "--name", "big", "--rootfs", big, "--work-seed", filepath.Join(runtime, "work-seed.ext4"))
	var out [2][]float64
	rounds := max(n, 15) // each is a few milliseconds: many rounds steady the median
	for i := -1; i < rounds; i++ {
		if i == 0 {
			t.Logf("preparing disks, first create (which makes the base): 1 GiB image %.1f ms, 8 GiB image %.1f ms", out[0][0], out[1][0])
			out = [2][]float64{}
		}
		for j := range 2 {
			// Each round in the other order, so that neither image gains by going first.
			k := (j + max(i, 0)) % 2
			img := []string{"minimal", "big"}[k]
			// The stage's time from the create's own events.
			_, err := e.client().CreateVM(context.Background(), rpc.CreateRequest{Name: "prep", Image: img, Cold: true, NoWait: true}, func(ev rpc.Event) {
				if ev.Type == "stage_done" && ev.Stage == "preparing disks" {
					out[k] = append(out[k], ev.DurationMS)
				}
			})
			if err != nil {
				t.Fatalf("creating a VM of %s: %v", img, err)
			}
			if err := e.client().DeleteVM(context.Background(), "prep"); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

func hasStage(vm *rpc.VM, name string) bool {
	for _, s := range vm.Stages {
		if s.Name == name {
			return true
		}
	}
	return false
}

// allocated is the disk space the file at path takes.
func allocated(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
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
