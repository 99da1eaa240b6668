package disk

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/runner/runnertest"
	"github.com/banger/banger/internal/vmtest"
)

// needQemuImg skips without qemu-img, or fails under BANGER_VM_TESTS=1.
func needQemuImg(t testing.TB) {
	t.Helper()
	vmtest.RequireHost(t, "making qcow2 overlays", vmtest.Tool(QemuImg, "qemu-utils"), vmtest.Tool("qemu-io", "qemu-utils"))
}

// rawView returns the guest's view of a disk file.
func rawView(t *testing.T, path string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "view.raw")
	if b, err := vmtest.Command(QemuImg, "convert", "-O", "raw", path, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", path, err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestOverlay(t *testing.T) {
	needQemuImg(t)
	ctx := context.Background()
	r := runner.Default
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	want := makeSparse(t, base)

	ov := filepath.Join(dir, "vm.qcow2")
	if err := Overlay(ctx, r, base, FormatRaw, ov, 0); err != nil {
		t.Fatalf("Overlay() = %v", err)
	}
	info, err := ReadInfo(ctx, r, ov)
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != FormatQcow2 || info.VirtualSize != int64(len(want)) || info.BackingFile != base || info.BackingFormat != FormatRaw {
		t.Errorf("ReadInfo(overlay) = %+v, want qcow2 of %d bytes over raw %s", info, len(want), base)
	}
	if info.ActualSize > 1<<20 {
		t.Errorf("overlay takes %d bytes on the host, want under 1 MiB", info.ActualSize)
	}
	if fi, _ := os.Stat(ov); fi.Mode().Perm() != 0o600 {
		t.Errorf("overlay mode = %v, want 0600", fi.Mode().Perm())
	}
	if !bytes.Equal(rawView(t, ov), want) {
		t.Error("the overlay does not read as its base")
	}

	// A write lands in the overlay; the base keeps its bytes.
	if b, err := vmtest.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 4096 65536", ov).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io write: %v: %s", err, b)
	}
	if now, _ := os.ReadFile(base); !bytes.Equal(now, want) {
		t.Error("writing the overlay changed its base")
	}
	view := rawView(t, ov)
	if !bytes.Equal(view[4096:4096+65536], bytes.Repeat([]byte{0xab}, 65536)) || !bytes.Equal(view[:4096], want[:4096]) {
		t.Error("the overlay does not read back what was written over its base")
	}

	// An overlay over an overlay (a template's disk) reads through both.
	chain := filepath.Join(dir, "fork.qcow2")
	if err := Overlay(ctx, r, ov, FormatQcow2, chain, 128<<20); err != nil {
		t.Fatalf("Overlay(over qcow2) = %v", err)
	}
	if got := rawView(t, chain); !bytes.Equal(got[:len(view)], view) || len(got) != 128<<20 {
		t.Errorf("the chained overlay reads %d bytes that differ from its base's", len(got))
	}

	if err := GrowOverlay(ctx, r, ov, 256<<20); err != nil {
		t.Fatalf("GrowOverlay() = %v", err)
	}
	if info, _ := ReadInfo(ctx, r, ov); info.VirtualSize != 256<<20 {
		t.Errorf("virtual size after GrowOverlay(256M) = %d, want %d", info.VirtualSize, 256<<20)
	}
	if err := GrowOverlay(ctx, r, ov, 256<<20); err != nil {
		t.Errorf("GrowOverlay(same size) = %v, want nil", err)
	}
}

func TestOverlayRefuses(t *testing.T) {
	needQemuImg(t)
	ctx := context.Background()
	r := runner.Default
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	makeSparse(t, base)
	ov := filepath.Join(dir, "vm.qcow2")
	if err := Overlay(ctx, r, base, FormatRaw, ov, 0); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"smaller than the base", Overlay(ctx, r, base, FormatRaw, filepath.Join(dir, "small.qcow2"), 1<<20), "smaller than the image (64M): pick --disk-size 64M"},
		{"unknown base format", Overlay(ctx, r, base, "vmdk", filepath.Join(dir, "x.qcow2"), 0), `base format "vmdk"`},
		{"missing base", Overlay(ctx, r, filepath.Join(dir, "nope"), FormatRaw, filepath.Join(dir, "y.qcow2"), 0), "no such file"},
		{"shrink", GrowOverlay(ctx, r, ov, 1<<20), "smaller than the disk (64M): disks only grow"},
		{"grow a raw file", GrowOverlay(ctx, r, base, 1<<30), "it is raw, not qcow2"},
	}
	for _, tt := range tests {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s = %v, want an error containing %q", tt.name, tt.err, tt.want)
		}
	}
	// Nothing is left of the refused overlays.
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(names) != 2 || len(hidden) != 0 {
		t.Errorf("files after the refusals = %q %q, want only base.raw and vm.qcow2", names, hidden)
	}
}

func TestBacking(t *testing.T) {
	needQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	makeSparse(t, base)
	ov := filepath.Join(dir, "vm.qcow2")
	if err := Overlay(ctx, runner.Default, base, FormatRaw, ov, 0); err != nil {
		t.Fatal(err)
	}
	if got, err := Backing(ov); err != nil || got != base {
		t.Errorf("Backing(overlay) = %q, %v; want %q", got, err, base)
	}
	alone := filepath.Join(dir, "alone.qcow2")
	if b, err := vmtest.Command(QemuImg, "create", "-q", "-f", "qcow2", alone, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, b)
	}
	if got, err := Backing(alone); err != nil || got != "" {
		t.Errorf("Backing(qcow2 without a base) = %q, %v; want none", got, err)
	}
	if _, err := Backing(base); err == nil || !strings.Contains(err.Error(), "not a qcow2 file") {
		t.Errorf("Backing(raw) = %v, want not a qcow2 file", err)
	}
}

func TestParseBacking(t *testing.T) {
	header := func(version uint32, off uint64, n uint32, name string) ([]byte, *bytes.Reader) {
		b := make([]byte, 512)
		copy(b, "QFI\xfb")
		b[7] = byte(version)
		for i := range 8 {
			b[8+i] = byte(off >> (56 - 8*i))
		}
		for i := range 4 {
			b[16+i] = byte(n >> (24 - 8*i))
		}
		copy(b[off:], name)
		return b[:qcow2HeaderSize], bytes.NewReader(b)
	}
	for _, tt := range []struct {
		name    string
		version uint32
		off     uint64
		n       uint32
		file    string
		want    string
		wantErr string
	}{
		{"v3 with a base", 3, 104, 9, "/base.raw", "/base.raw", ""},
		{"v2 with a base", 2, 72, 9, "/base.raw", "/base.raw", ""},
		{"no base", 3, 0, 0, "", "", ""},
		{"version 4", 4, 104, 9, "/base.raw", "", "version 4"},
		{"name inside the header", 3, 8, 9, "/base.raw", "", "not qemu-img's"},
		{"too long", 3, 104, 2000, "/base.raw", "", "not qemu-img's"},
		{"a NUL inside", 3, 104, 9, "/ba\x00e.raw", "", "not a path"},
	} {
		hdr, r := header(tt.version, tt.off, tt.n, tt.file)
		got, err := parseBacking(hdr, r, "x.qcow2")
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseBacking(%s) = %q, %v; want an error with %q", tt.name, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseBacking(%s) = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

// TestOverlayCached: a second overlay over an unchanged base is qemu-img's
// own bytes, written without running it; a changed base or another size
// runs it again.
func TestOverlayCached(t *testing.T) {
	needQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	want := makeSparse(t, base)
	r := &runnertest.Runner{Fallback: runner.Default}
	first, second := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	if err := Overlay(ctx, r, base, FormatRaw, first, 128<<20); err != nil {
		t.Fatal(err)
	}
	ran := len(r.Calls())
	if err := Overlay(ctx, r, base, FormatRaw, second, 128<<20); err != nil {
		t.Fatal(err)
	}
	if len(r.Calls()) != ran {
		t.Errorf("the second overlay over the same base ran %d commands, want none", len(r.Calls())-ran)
	}
	a, _ := os.ReadFile(first)
	b, _ := os.ReadFile(second)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Errorf("the second overlay (%d bytes) differs from qemu-img's (%d bytes)", len(b), len(a))
	}
	if fi, err := os.Stat(second); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("second overlay: %v, %v; want mode 0600", fi, err)
	}
	if got := rawView(t, second); !bytes.Equal(got[:len(want)], want) || len(got) != 128<<20 {
		t.Error("the second overlay does not read as its base")
	}
	if hidden, _ := filepath.Glob(filepath.Join(dir, ".*")); len(hidden) > 0 {
		t.Errorf("temporary files left: %v", hidden)
	}

	for _, tt := range []struct {
		name   string
		change func()
		size   int64
	}{
		{"another size", func() {}, 256 << 20},
		{"a changed base", func() {
			later := time.Now().Add(time.Minute)
			if err := os.Chtimes(base, later, later); err != nil {
				t.Fatal(err)
			}
		}, 128 << 20},
	} {
		tt.change()
		ran := len(r.Calls())
		if err := Overlay(ctx, r, base, FormatRaw, filepath.Join(dir, "c.qcow2"), tt.size); err != nil {
			t.Fatal(err)
		}
		if len(r.Calls()) == ran {
			t.Errorf("an overlay over %s ran no qemu-img", tt.name)
		}
	}
}
