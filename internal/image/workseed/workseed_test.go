package workseed

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/vmtest"
)

func TestBuild(t *testing.T) {
	vmtest.RequireHost(t, "building a work-seed", vmtest.Tool("mkfs.ext4", "e2fsprogs"), vmtest.Tool("debugfs", "e2fsprogs"))
	out := filepath.Join(t.TempDir(), "work-seed.ext4")
	key := []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest banger-test")
	if err := Build(context.Background(), runner.Default, key, out); err != nil {
		t.Fatal(err)
	}
	checks := []struct{ req, want string }{
		{"cat /.ssh/authorized_keys", string(key) + "\n"},
		{"stat /.ssh/authorized_keys", "Mode:  0600"},
		{"stat /.ssh", "Mode:  0700"},
		{"stat /.ssh/authorized_keys", "User:     0   Group:     0"},
		{"stat /", "Mode:  0700"},
		{"cat /.bashrc", "PS1="},
		{"cat /.profile", ".bashrc"},
		{"cat /.tmux.conf", "history-limit"},
	}
	for _, c := range checks {
		if got := debugfs(t, out, c.req); !strings.Contains(got, c.want) {
			t.Errorf("debugfs %q = %q, want it to contain %q", c.req, got, c.want)
		}
	}
	// Made for the 16G it grows to: 4 KiB blocks, an inode per 8 KiB.
	stats := debugfs(t, out, "stats")
	for _, want := range []string{"Block size:               4096", "Inode count:              8192"} {
		if !strings.Contains(stats, want) {
			t.Errorf("seed stats lack %q:\n%s", want, stats)
		}
	}
}

func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	b, err := vmtest.Command("debugfs", "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v: %s", req, img, err, b)
	}
	return string(b)
}
