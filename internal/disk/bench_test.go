package disk

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/runner"
)

// BenchmarkVMDisks measures what making one VM's disks (its root disk from
// an image and its /root disk from the work seed) costs with a sparse copy
// (Clone where the filesystem has no reflink, as ext4 here) and with qcow2
// overlays: the median and p90 time over BANGER_BENCH_N (5) VMs, and the
// space the new disks take before the guest writes. The bases are the
// bundle's minimal image (1 GiB), that image grown to 8 GiB (same data,
// more groups), and the docker image (4 GiB, about 1.1 GB of data).
//
// Run: BANGER_RUNTIME=... go test -run '^$' -bench VMDisks -benchtime 1x ./internal/disk/
func BenchmarkVMDisks(b *testing.B) {
	rt := os.Getenv("BANGER_RUNTIME")
	if rt == "" {
		b.Skip("needs the bundle's images: set BANGER_RUNTIME")
	}
	n := 5
	if v, err := strconv.Atoi(os.Getenv("BANGER_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	seed := filepath.Join(rt, "work-seed.ext4")
	minimal := filepath.Join(rt, "rootfs-minimal.ext4")
	work, err := os.MkdirTemp("/tmp", "bdisk-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(work) })
	big := filepath.Join(work, "minimal-8G.ext4")
	if _, err := Clone(minimal, big); err != nil {
		b.Fatal(err)
	}
	if err := Grow(ctx, runner.Default, big, 8<<30); err != nil {
		b.Fatal(err)
	}
	bases := []struct{ name, path string }{
		{"minimal-1G", minimal},
		{"minimal-8G", big},
		{"docker-4G", filepath.Join(rt, "rootfs-docker.ext4")},
	}
	methods := []struct {
		name string
		make func(base, dir string) ([]string, error)
	}{
		{"sparse-copy", func(base, dir string) ([]string, error) {
			root, w := filepath.Join(dir, "rootfs.ext4"), filepath.Join(dir, "work.ext4")
			if _, err := Clone(base, root); err != nil {
				return nil, err
			}
			_, err := Clone(seed, w)
			return []string{root, w}, err
		}},
		{"overlay", func(base, dir string) ([]string, error) {
			root, w := filepath.Join(dir, "rootfs.qcow2"), filepath.Join(dir, "work.qcow2")
			if err := Overlay(ctx, runner.Default, base, FormatRaw, root, 0); err != nil {
				return nil, err
			}
			return []string{root, w}, Overlay(ctx, runner.Default, seed, FormatRaw, w, 0)
		}},
	}
	for _, m := range methods {
		for _, base := range bases {
			b.Run(m.name+"/"+base.name, func(b *testing.B) {
				// Warm the page cache as repeated creates have it.
				if _, err := m.make(base.path, b.TempDir()); err != nil {
					b.Fatal(err)
				}
				var ms, used []float64
				for k := 0; k < n; k++ {
					dir := b.TempDir()
					t0 := time.Now()
					files, err := m.make(base.path, dir)
					if err != nil {
						b.Fatal(err)
					}
					ms = append(ms, time.Since(t0).Seconds()*1000)
					var blocks int64
					for _, f := range files {
						var st syscall.Stat_t
						if err := syscall.Stat(f, &st); err != nil {
							b.Fatal(err)
						}
						blocks += st.Blocks
					}
					used = append(used, float64(blocks*512)/(1<<20))
					os.RemoveAll(dir)
				}
				b.ReportMetric(medianOf(ms), "median-ms")
				b.ReportMetric(p90Of(ms), "p90-ms")
				b.ReportMetric(medianOf(used), "used-MiB")
			})
		}
	}
}

func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func p90Of(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*9+9)/10-1)]
}
