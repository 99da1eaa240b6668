package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/runner/runnertest"
	"github.com/banger/banger/internal/vmtest"
)

// makeSparse writes a 64 MiB file with three data extents and holes between them.
func makeSparse(t *testing.T, path string) []byte {
	t.Helper()
	const size = 64 << 20
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ off, n int64 }{{0, 4096}, {10 << 20, 1 << 20}, {size - 8192, 8192}} {
		b := make([]byte, r.n)
		rand.Read(b)
		if _, err := f.WriteAt(b, r.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func blocks(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

// tmpfsDir returns a fresh directory on tmpfs, or skips.
func tmpfsDir(t *testing.T) string {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		t.Skip("/dev/shm is not tmpfs")
	}
	dir, err := os.MkdirTemp("/dev/shm", "banger-disk-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestCloneSparse(t *testing.T) {
	diskDir := t.TempDir()
	tests := []struct {
		name     string
		src, dst func(t *testing.T) string
	}{
		{"same-fs", func(*testing.T) string { return diskDir }, func(*testing.T) string { return diskDir }},
		{"tmpfs", tmpfsDir, tmpfsDir},
		{"disk-to-tmpfs", func(*testing.T) string { return diskDir }, tmpfsDir},
		{"tmpfs-to-disk", tmpfsDir, func(*testing.T) string { return diskDir }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := filepath.Join(tt.src(t), tt.name+"-src.img")
			dst := filepath.Join(tt.dst(t), tt.name+"-dst.img")
			want := makeSparse(t, src)
			method, err := Clone(src, dst)
			if err != nil {
				t.Fatalf("Clone(%s, %s): %v", src, dst, err)
			}
			t.Logf("method %s", method)
			if method != Reflink && method != SparseCopy {
				t.Errorf("Clone() method = %q, want reflink or sparse-copy", method)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Clone(%s) content differs (len %d, want %d)", tt.name, len(got), len(want))
			}
			// 1 MiB + 12 KiB of data: allow filesystem slack but nothing near 64 MiB.
			if b, sb := blocks(t, dst), blocks(t, src); method == SparseCopy && b > sb+256 {
				t.Errorf("Clone(%s) dst uses %d blocks, want about %d (the source's)", tt.name, b, sb)
			}
			if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o600 {
				t.Errorf("Clone(%s) dst mode = %o, want 600 (private, whatever the source's)", tt.name, fi.Mode().Perm())
			}
			assertNoTemp(t, filepath.Dir(dst))
		})
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

func TestCloneZeroBlocksBecomeHoles(t *testing.T) {
	// A file with allocated zeros (no holes) copied by read/write keeps only real data.
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	b := make([]byte, 8<<20)
	copy(b[4<<20:], "data")
	if err := os.WriteFile(src, b, 0o600); err != nil {
		t.Fatal(err)
	}
	in, _ := os.Open(src)
	defer in.Close()
	out, _ := os.Create(dst)
	defer out.Close()
	out.Truncate(int64(len(b)))
	if err := copyRange(out, in, 0, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, b) {
		t.Fatal("copyRange() content differs")
	}
	if n := blocks(t, dst); n > 1024 {
		t.Errorf("copyRange() allocated %d blocks for 4 bytes of data, want holes elsewhere", n)
	}
}

func TestCloneReplacesAndFails(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.WriteFile(src, []byte("new"), 0o600)
	os.WriteFile(dst, []byte("old contents"), 0o600)
	if _, err := Clone(src, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "new" {
		t.Errorf("Clone() over existing dst = %q, want %q", got, "new")
	}
	if _, err := Clone(filepath.Join(dir, "missing"), filepath.Join(dir, "x")); err == nil {
		t.Error("Clone(missing) = nil, want an error")
	}
	if _, err := Clone(dir, filepath.Join(dir, "y")); err == nil {
		t.Error("Clone(directory) = nil, want an error")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Errorf("failed Clone left dst behind: %v", err)
	}
	assertNoTemp(t, dir)
}

func TestCloneEmpty(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.WriteFile(src, nil, 0o600)
	if _, err := Clone(src, dst); err != nil {
		t.Fatal(err)
	}
	if n, _ := Size(dst); n != 0 {
		t.Errorf("Size(clone of empty) = %d, want 0", n)
	}
}

func needTool(t *testing.T, names ...string) {
	t.Helper()
	var needs []vmtest.Need
	for _, n := range names {
		needs = append(needs, vmtest.Tool(n, "e2fsprogs"))
	}
	vmtest.RequireHost(t, "this disk test", needs...)
}

func blockCount(t *testing.T, img string) int64 {
	t.Helper()
	out, err := vmtest.Command("dumpe2fs", "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v: %s", img, err, out)
	}
	count := regexp.MustCompile(`(?m)^Block count:\s+(\d+)`).FindSubmatch(out)
	size := regexp.MustCompile(`(?m)^Block size:\s+(\d+)`).FindSubmatch(out)
	if count == nil || size == nil {
		t.Fatalf("dumpe2fs -h %s: no block count/size in:\n%s", img, out)
	}
	c, _ := strconv.ParseInt(string(count[1]), 10, 64)
	s, _ := strconv.ParseInt(string(size[1]), 10, 64)
	return c * s
}

func TestGrow(t *testing.T) {
	needTool(t, "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs")
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "root.ext4")
	if out, err := vmtest.Command("mkfs.ext4", "-q", "-F", "-b", "4096", img, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	if got := blockCount(t, img); got != 32<<20 {
		t.Fatalf("fresh filesystem is %d bytes, want %d", got, 32<<20)
	}
	if err := Grow(ctx, runner.Exec{}, img, 96<<20); err != nil {
		t.Fatal(err)
	}
	if got := blockCount(t, img); got != 96<<20 {
		t.Errorf("after Grow(96M) filesystem is %d bytes, want %d", got, 96<<20)
	}
	if n, _ := Size(img); n != 96<<20 {
		t.Errorf("Size() after Grow(96M) = %d, want %d", n, 96<<20)
	}
	// Same size is a no-op; smaller is refused with a usable suggestion.
	if err := Grow(ctx, runner.Exec{}, img, 96<<20); err != nil {
		t.Errorf("Grow(same size) = %v, want nil", err)
	}
	err := Grow(ctx, runner.Exec{}, img, 64<<20)
	want := "disk size 64M is smaller than the image (96M): pick --disk-size 96M or more"
	if err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("Grow(64M) = %v, want it to end %q", err, want)
	}
	if n, _ := Size(img); n != 96<<20 {
		t.Errorf("refused shrink changed the size to %d", n)
	}
}

// fsckRunner makes e2fsck exit with a chosen status, resize2fs succeed,
// and runs everything else for real.
func fsckRunner(status int) *runnertest.Runner {
	r := &runnertest.Runner{Fallback: runner.Exec{}}
	r.On("e2fsck", func([]string) ([]byte, error) {
		return runner.Exec{}.Run(context.Background(), "sh", "-c", "echo e2fsck; exit "+strconv.Itoa(status))
	})
	r.OK("resize2fs")
	return r
}

func TestGrowFsckStatus(t *testing.T) {
	tests := []struct {
		status int
		ok     bool
	}{{0, true}, {1, true}, {4, false}, {8, false}}
	for _, tt := range tests {
		img := filepath.Join(t.TempDir(), "img")
		os.WriteFile(img, []byte("x"), 0o600)
		err := Grow(context.Background(), fsckRunner(tt.status), img, 1<<20)
		if (err == nil) != tt.ok {
			t.Errorf("Grow() with e2fsck exit %d = %v, want ok=%v", tt.status, err, tt.ok)
		}
		// A refused check leaves the image as it was, so a retry grows it.
		want := int64(1 << 20)
		if !tt.ok {
			want = 1
		}
		if n, _ := Size(img); n != want {
			t.Errorf("Size() after Grow() with e2fsck exit %d = %d, want %d", tt.status, n, want)
		}
	}
}
