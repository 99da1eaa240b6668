// Package bundletest writes small, complete runtime bundles for tests: real files, a real key pair and a bundle.json whose artifacts match them.
package bundletest

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/bundle"
)

// KernelVersion is the kernel version of a fake bundle.
const KernelVersion = "6.1.0-99-cloud-amd64"

// Fake writes a bundle with a docker and a minimal image into a new
// directory and returns it. Its files are tiny stand-ins (the images are
// sparse 4 MiB files, not ext4): enough for loading, checking, verifying,
// packing and installing bundles, not for booting.
func Fake(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "runtime")
	files := map[string]string{
		bundle.FileKernel:       "ELF:bzImage v1",
		bundle.FileVmlinuz:      "bzImage v1",
		bundle.FileKernelConfig: "CONFIG_EXT4_FS=y\n",
		bundle.FileInitrd:       "initrd " + KernelVersion + " 1",
		bundle.FileAgent:        "agent binary",
		bundle.FileWorkSeed:     "seed",
		filepath.Join(bundle.DirModules, KernelVersion, "kernel/drivers/block/virtio_blk.ko"):   "blk module",
		filepath.Join(bundle.DirModules, KernelVersion, "kernel/drivers/virtio/virtio_mmio.ko"): "mmio module",
		filepath.Join(bundle.DirModules, KernelVersion, "modules.order"):                        "kernel/drivers/virtio/virtio_mmio.ko\n",
	}
	for rel, content := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("virtio/virtio_mmio.ko", filepath.Join(dir, bundle.DirModules, KernelVersion, "kernel/drivers/alias.ko")); err != nil {
		t.Fatal(err)
	}
	b := &bundle.Bundle{
		Schema:        bundle.Schema,
		KernelVersion: KernelVersion,
		Kernel:        bundle.FileKernel,
		Vmlinuz:       bundle.FileVmlinuz,
		KernelConfig:  bundle.FileKernelConfig,
		Modules:       bundle.DirModules,
		Initrd:        bundle.FileInitrd,
		BootArgs:      bundle.DefaultBootArgs,
		SSHKey:        bundle.FileSSHKey,
		Agent:         bundle.FileAgent,
		DefaultImage:  "docker",
	}
	for _, name := range []string{"docker", "minimal"} {
		p := filepath.Join(dir, bundle.RootfsFile(name))
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("rootfs " + name)
		f.Truncate(4 << 20)
		f.Close()
		b.Images = append(b.Images, bundle.Image{Name: name, Rootfs: bundle.RootfsFile(name), WorkSeed: bundle.FileWorkSeed})
	}
	if _, _, err := bundle.EnsureKey(dir, bundle.FileSSHKey); err != nil {
		t.Fatal(err)
	}
	b.SetDir(dir)
	if err := b.FillArtifacts(nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Save(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// WriteFile writes content to path, making its directory.
func WriteFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ReadFile returns the content of path.
func ReadFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// AssertNoTemps fails t when a temporary file of a bundle operation is left
// in dir or beside it.
func AssertNoTemps(t testing.TB, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && bundle.IsTempName(d.Name()) {
			t.Errorf("temporary %s left behind", p)
		}
		return nil
	})
	entries, _ := os.ReadDir(filepath.Dir(dir))
	for _, e := range entries {
		if bundle.IsTempName(e.Name()) {
			t.Errorf("temporary %s left beside the bundle", e.Name())
		}
	}
}

// AuthorizedKey is the public half of the SSH key of the bundle in dir:
// the key its guests let in.
func AuthorizedKey(t testing.TB, dir string) ssh.PublicKey {
	t.Helper()
	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(b.Path(b.SSHKey) + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		t.Fatalf("parsing %s.pub: %v", b.SSHKey, err)
	}
	return key
}
