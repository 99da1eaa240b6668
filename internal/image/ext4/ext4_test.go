package ext4

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

// TestOwnByRoot gives the files of an image filled from a tree owned by
// another uid (as an unprivileged build's are) to root inside the image.
func TestOwnByRoot(t *testing.T) {
	vmtest.RequireHost(t, "owning image files by root", vmtest.Tool("mkfs.ext4", "e2fsprogs"), vmtest.Tool("debugfs", "e2fsprogs"))
	dir := t.TempDir()
	for _, f := range []string{"a", "sub/b", "sub/deeper/c"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if runner.IsRoot() {
		// Stand in for an ordinary user's build.
		filepath.WalkDir(dir, func(p string, _ fs.DirEntry, _ error) error { return os.Lchown(p, 65534, 65534) })
	}
	img := filepath.Join(t.TempDir(), "img.ext4")
	ctx := context.Background()
	if err := Make(ctx, runner.Exec{}, dir, "t", img, "8M", false); err != nil {
		t.Fatal(err)
	}
	if err := OwnByRoot(ctx, runner.Exec{}, img, dir, "sif / mode 040700"); err != nil {
		t.Fatal(err)
	}
	out, err := (runner.Exec{}).Run(ctx, "debugfs", "-R", "stat /sub/deeper/c", img)
	if err != nil || !strings.Contains(string(out), "User:     0   Group:     0 ") {
		t.Fatalf("owner of /sub/deeper/c = %q, %v; want root", out, err)
	}
	if out, _ := (runner.Exec{}).Run(ctx, "debugfs", "-R", "stat /", img); !strings.Contains(string(out), "Mode:  0700") {
		t.Errorf("mode of / = %q, want 0700", out)
	}
}
