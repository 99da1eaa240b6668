package ext4

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

// TestPutFile writes into a real ext4 image made with mkfs.ext4 and reads
// the file, its mode and owner back with debugfs.
func TestPutFile(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install e2fsprogs)", tool)
		}
	}
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "work.ext4")
	if out, err := vmtest.Command("mkfs.ext4", "-q", "-F", img, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	stat := func(name string) string {
		out, err := vmtest.Command("debugfs", "-R", "stat "+name, img).Output()
		if err != nil {
			t.Fatalf("debugfs stat %s: %v", name, err)
		}
		return string(out)
	}
	for i, content := range []string{"OPENCODE_SERVER_PASSWORD=first\n", "OPENCODE_SERVER_PASSWORD=second\n"} {
		if err := PutFile(ctx, runner.Default, img, "/.config/banger/opencode.env", []byte(content), 0o600); err != nil {
			t.Fatalf("PutFile #%d: %v", i, err)
		}
		got, err := vmtest.Command("debugfs", "-R", "cat /.config/banger/opencode.env", img).Output()
		if err != nil || string(got) != content {
			t.Fatalf("content after PutFile #%d = %q, %v; want %q", i, got, err, content)
		}
	}
	st := stat("/.config/banger/opencode.env")
	for _, want := range []string{"Mode:  0600", "User:     0", "Group:     0"} {
		if !strings.Contains(st, want) {
			t.Errorf("stat of the file lacks %q:\n%s", want, st)
		}
	}
	if st := stat("/.config"); !strings.Contains(st, "User:     0") || !strings.Contains(st, "Type: directory") {
		t.Errorf("parent directory:\n%s", st)
	}
	for _, bad := range []string{"relative", "/a b", "/", "/x/../y"} {
		if err := PutFile(ctx, runner.Default, img, bad, []byte("x"), 0o600); err == nil {
			t.Errorf("PutFile(%q) succeeded, want an error", bad)
		}
	}
	if err := PutFile(ctx, runner.Default, filepath.Join(t.TempDir(), "none.ext4"), "/f", []byte("x"), 0o600); err == nil {
		t.Error("PutFile into a missing image succeeded")
	}
}
