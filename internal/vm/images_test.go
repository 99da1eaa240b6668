package vm

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmtest"
)

// testBundle writes a bundle.json with only an SSH key and a default image
// whose work-seed path is named but not checked.
func testBundle(t *testing.T, pub string) *bundle.Bundle {
	t.Helper()
	dir := t.TempDir()
	b := bundle.Bundle{Schema: bundle.Schema, SSHKey: "id_ed25519", DefaultImage: "minimal",
		Images: []bundle.Image{{Name: "minimal", Rootfs: "rootfs-minimal.ext4", WorkSeed: "work-seed.ext4"}}}
	data, _ := json.Marshal(b)
	if err := os.WriteFile(filepath.Join(dir, bundle.FileName), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "id_ed25519.pub"), []byte(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	lb, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return lb
}

// seedKeys reads /.ssh/authorized_keys out of a work-seed image.
func seedKeys(t *testing.T, seed string) string {
	t.Helper()
	out, err := vmtest.Command("debugfs", "-R", "cat /.ssh/authorized_keys", seed).Output()
	if err != nil {
		t.Fatalf("debugfs cat authorized_keys of %s: %v", seed, err)
	}
	return string(out)
}

// TestSeedRefresh builds real work-seeds with mkfs.ext4: a managed image
// without a seed gets one on its first create, later creates reuse it, and
// a bundle key change refreshes it once. Unmanaged images never change.
func TestSeedRefresh(t *testing.T) {
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install e2fsprogs)", tool)
		}
	}

	ctx := context.Background()
	h := newTestHost(t)
	im := &Images{Store: h.store, R: runner.Default, DataDir: filepath.Join(h.dir, "data")}
	keyA := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyA banger-a\n"
	keyB := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyB banger-b\n"
	b := testBundle(t, keyA)

	imgDir := filepath.Join(im.DataDir, "images", "old")
	os.MkdirAll(imgDir, 0o755)
	rec := &store.Image{Name: "old", Rootfs: filepath.Join(imgDir, "rootfs.ext4"), Managed: true}
	if err := h.store.UpsertImage(ctx, rec); err != nil {
		t.Fatal(err)
	}
	resolve := func(name string) *Image {
		img, err := im.Resolve(ctx, b, name)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}

	// An image built before seeds existed: the first create builds one.
	img := resolve("old")
	if !im.SeedStale(img, b) {
		t.Fatal("a managed image without a seed is not stale")
	}
	seed, err := im.SeedFor(ctx, b, img)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(imgDir, "work-seed.ext4"); seed != want {
		t.Fatalf("seed = %s, want %s", seed, want)
	}
	if got := seedKeys(t, seed); got != keyA {
		t.Fatalf("seed authorizes %q, want %q", got, keyA)
	}
	fi1, _ := os.Stat(seed)

	// The next create takes the fast path: nothing rebuilt.
	img = resolve("old")
	if im.SeedStale(img, b) {
		t.Fatalf("refreshed image still stale: %+v", img)
	}
	if s2, err := im.SeedFor(ctx, b, img); err != nil || s2 != seed {
		t.Fatalf("seedFor = %s, %v; want %s", s2, err, seed)
	}
	if fi2, _ := os.Stat(seed); !fi2.ModTime().Equal(fi1.ModTime()) {
		t.Fatal("the fast path rebuilt the seed")
	}

	// A new bundle key (a rebuilt bundle): one refresh, with the new key.
	// A comment change alone is not a new key.
	b = testBundle(t, strings.Replace(keyA, "banger-a", "renamed", 1))
	if im.SeedStale(resolve("old"), b) {
		t.Fatal("a changed key comment made the seed stale")
	}
	b = testBundle(t, keyB)
	img = resolve("old")
	if !im.SeedStale(img, b) {
		t.Fatal("a seed for another key is not stale")
	}
	if _, err := im.SeedFor(ctx, b, img); err != nil {
		t.Fatal(err)
	}
	if got := seedKeys(t, seed); got != keyB {
		t.Fatalf("refreshed seed authorizes %q, want %q", got, keyB)
	}
	if im.SeedStale(resolve("old"), b) {
		t.Fatal("still stale after the refresh")
	}

	// An unmanaged image without a seed uses the bundle's; banger builds
	// nothing for it.
	if err := h.store.UpsertImage(ctx, &store.Image{Name: "mine", Rootfs: "/nowhere/rootfs.ext4"}); err != nil {
		t.Fatal(err)
	}
	mine := resolve("mine")
	if im.SeedStale(mine, b) {
		t.Fatal("an unmanaged image is stale")
	}
	if s, err := im.SeedFor(ctx, b, mine); err != nil || s != b.Path("work-seed.ext4") {
		t.Fatalf("seedFor(unmanaged) = %s, %v; want the bundle's seed", s, err)
	}
}
