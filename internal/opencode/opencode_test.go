package opencode

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/runner/runnertest"
	"github.com/banger/banger/internal/vmtest"
)

// ext4With makes an ext4 image holding files (absolute path in the
// image: content), written with ext4.PutFile.
func ext4With(t *testing.T, files map[string]string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "root.ext4")
	if out, err := vmtest.Command("mkfs.ext4", "-q", "-F", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	for name, content := range files {
		if err := ext4.PutFile(context.Background(), runner.Default, img, name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// TestTakes: an image whose unit names EnvFile takes a password, one
// without a server does not; an unchanged image's answer is read again
// without debugfs, a changed one's is not.
func TestTakes(t *testing.T) {
	vmtest.RequireHost(t, "reading ext4 images", vmtest.Tool("mkfs.ext4", "e2fsprogs"), vmtest.Tool("debugfs", "e2fsprogs"))
	ctx := context.Background()
	with := ext4With(t, map[string]string{SystemdUnit: "[Service]\nEnvironmentFile=" + EnvFile + "\n"})
	without := ext4With(t, map[string]string{"/etc/hostname": "x\n"})
	r := &runnertest.Runner{Fallback: runner.Default}
	for _, tt := range []struct {
		img  string
		want bool
	}{{with, true}, {without, false}} {
		got, err := Takes(ctx, r, tt.img)
		if err != nil || got != tt.want {
			t.Fatalf("Takes(%s) = %v, %v; want %v", tt.img, got, err, tt.want)
		}
		ran := len(r.Calls())
		if got, err := Takes(ctx, r, tt.img); err != nil || got != tt.want || len(r.Calls()) != ran {
			t.Errorf("Takes(%s) again = %v, %v after %d more commands; want %v from what it read", tt.img, got, err, len(r.Calls())-ran, tt.want)
		}
	}
	// The same file changed: read again.
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(with, later, later); err != nil {
		t.Fatal(err)
	}
	ran := len(r.Calls())
	if got, err := Takes(ctx, r, with); err != nil || !got || len(r.Calls()) == ran {
		t.Errorf("Takes(changed image) = %v, %v after %d commands; want true, read again", got, err, len(r.Calls())-ran)
	}
}
