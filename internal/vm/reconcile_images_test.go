package vm

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger/banger/internal/store"
)

// TestReconcileImages checks that daemon start removes the directories an
// interrupted 'image build' or 'image delete' left (they carry the build
// marker and have no record), and nothing else.
func TestReconcileImages(t *testing.T) {
	ctx := context.Background()
	h := newTestHost(t)
	im := &Images{Store: h.store, DataDir: filepath.Join(h.dir, "data")}
	images := filepath.Join(im.DataDir, "images")
	mk := func(name string, files ...string) string {
		dir := filepath.Join(images, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	keep := []string{
		mk("built", BuildMarker, "rootfs.ext4", "work-seed.ext4"), // recorded
		mk("mine", "rootfs.ext4"),                                 // a registered user file, recorded
		mk("gone-user", "rootfs.ext4", "work-seed.ext4"),          // a user's files, record deleted
		mk("notes", "rootfs.ext4.tmp"),                            // no marker: not banger's
	}
	gone := []string{
		mk("halfbuilt", BuildMarker, "rootfs.ext4.tmp"),
		mk("halfdeleted", BuildMarker, "rootfs.ext4", "work-seed.ext4"),
	}
	for _, img := range []*store.Image{
		{Name: "built", Rootfs: filepath.Join(images, "built", "rootfs.ext4"), Managed: true},
		{Name: "mine", Rootfs: filepath.Join(images, "mine", "rootfs.ext4")},
	} {
		if err := h.store.UpsertImage(ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	if err := im.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, dir := range keep {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s was removed: %v", dir, err)
		}
	}
	for _, dir := range gone {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s is still there (%v)", dir, err)
		}
	}
}
