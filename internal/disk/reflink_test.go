package disk

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/banger/banger/internal/vmtest"
)

// TestCloneReflink mounts a small XFS image (reflink on by default) through a loop device.
func TestCloneReflink(t *testing.T) {
	vmtest.RequireHost(t, "the reflink test (it loop-mounts an XFS image)", vmtest.Root())
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skip("mkfs.xfs is missing (apt-get install xfsprogs): cannot test the reflink path")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "xfs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 320<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := vmtest.Command("mkfs.xfs", "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount XFS here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-d", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	src, dst := filepath.Join(mnt, "src.img"), filepath.Join(mnt, "dst.img")
	want := makeSparse(t, src)
	method, err := Clone(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if method != Reflink {
		t.Errorf("Clone() on XFS = %q, want %q", method, Reflink)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("Clone() on XFS: content differs")
	}
	// Writing to the clone must not change the source.
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("changed"), 0)
	f.Close()
	if now, _ := os.ReadFile(src); !bytes.Equal(now, want) {
		t.Error("writing the reflinked clone changed the source")
	}
}
