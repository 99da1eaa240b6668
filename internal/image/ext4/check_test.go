package ext4

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	if err := WriteMagic(filepath.Join(dir, "ok.ext4"), 1<<20); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "text.ext4"), []byte("not a filesystem"), 0o644)
	os.WriteFile(filepath.Join(dir, "empty.ext4"), nil, 0o644)
	os.Mkdir(filepath.Join(dir, "dir.ext4"), 0o755)
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.ext4"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Symlink("ok.ext4", filepath.Join(dir, "link.ext4"))
	for _, tc := range []struct {
		path string
		want string // substring of the error, "" for ok
	}{
		{filepath.Join(dir, "ok.ext4"), ""},
		{filepath.Join(dir, "link.ext4"), ""},
		{"ok.ext4", "absolute path"},
		{filepath.Join(dir, "missing.ext4"), "no such file"},
		{filepath.Join(dir, "text.ext4"), "not an ext4 filesystem image"},
		{filepath.Join(dir, "empty.ext4"), "not an ext4 filesystem image"},
		{filepath.Join(dir, "dir.ext4"), "it is a directory"},
		{filepath.Join(dir, "fifo.ext4"), "it is a FIFO"},
		{"/dev/null", "it is a device"},
	} {
		err := Check(tc.path)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Check(%s) = %v, want %q", filepath.Base(tc.path), err, tc.want)
		}
	}
}
