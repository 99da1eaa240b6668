package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger/banger/internal/runner"
)

// BenchmarkOverlayCached makes qcow2 overlays over a 1 GiB and an 8 GiB
// raw base, after the first of each (qemu-img's) is cached: what a
// create's "preparing disks" costs per disk, whatever the image's size.
//
//	go test -run '^$' -bench OverlayCached -count 5 ./internal/disk
func BenchmarkOverlayCached(b *testing.B) {
	needQemuImg(b)
	ctx := context.Background()
	for _, gib := range []int64{1, 8} {
		b.Run(fmt.Sprintf("%dGiB", gib), func(b *testing.B) {
			dir := b.TempDir()
			base := filepath.Join(dir, "base.raw")
			if err := os.WriteFile(base, []byte("banger"), 0o600); err != nil {
				b.Fatal(err)
			}
			if err := os.Truncate(base, gib<<30); err != nil {
				b.Fatal(err)
			}
			overlay := filepath.Join(dir, "vm.qcow2")
			if err := Overlay(ctx, runner.Default, base, FormatRaw, overlay, 0); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				os.Remove(overlay)
				if err := Overlay(ctx, runner.Default, base, FormatRaw, overlay, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
