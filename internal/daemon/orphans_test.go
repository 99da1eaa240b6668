package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger/banger/internal/store"
)

// TestReconcileOrphans checks that daemon start removes the VM and image
// directories an interrupted create, build or delete left without a record,
// and nothing else.
func TestReconcileOrphans(t *testing.T) {
	ctx := context.Background()
	d := testDaemon(t)
	mk := func(rel string, files ...string) string {
		dir := rel
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
	data, run := d.paths.DataDir, d.paths.RuntimeDir
	kept := &store.VM{ID: "aaaaaaaaaaaa", Name: "kept", State: StateStopped,
		Dir: filepath.Join(data, "vms", "aaaaaaaaaaaa"), RuntimeDir: filepath.Join(run, "vms", "aaaaaaaaaaaa")}
	if err := d.store.CreateVM(ctx, kept); err != nil {
		t.Fatal(err)
	}
	keep := []string{
		mk(kept.Dir, "rootfs.ext4", "work.ext4"),
		mk(kept.RuntimeDir, "qmp.sock"),
		mk(filepath.Join(data, "vms", "not-an-id"), "x"),
		mk(filepath.Join(data, "images", "built"), "rootfs.ext4", "work-seed.ext4"),
		mk(filepath.Join(data, "images", "mine"), "rootfs.ext4"),
		mk(filepath.Join(data, "images", "stranger"), "rootfs.ext4", "notes.txt"),
	}
	gone := []string{
		mk(filepath.Join(data, "vms", "bbbbbbbbbbbb"), "rootfs.ext4"),
		mk(filepath.Join(run, "vms", "bbbbbbbbbbbb"), "qemu.pid"),
		mk(filepath.Join(data, "images", "halfbuilt"), "rootfs.ext4.tmp"),
		mk(filepath.Join(data, "images", "halfdeleted"), "rootfs.ext4", "work-seed.ext4"),
	}
	for _, img := range []*store.Image{
		{Name: "built", Rootfs: filepath.Join(data, "images", "built", "rootfs.ext4"), Managed: true},
		{Name: "mine", Rootfs: filepath.Join(data, "images", "mine", "rootfs.ext4")},
	} {
		if err := d.store.UpsertImage(ctx, img); err != nil {
			t.Fatal(err)
		}
	}
	vms, _ := d.store.ListVMs(ctx)
	if err := (&diskCap{d: d}).Reconcile(ctx, vms); err != nil {
		t.Fatal(err)
	}
	if err := d.reconcileImages(ctx); err != nil {
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
