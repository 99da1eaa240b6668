package bundle_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/bundle"
)

// FuzzLoad: whatever bundle.json holds, Load refuses it or returns a
// schema-1 bundle every one of whose paths stays inside its directory,
// whose images are found by name, and which Save writes back as a file
// that loads as the same bundle.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{
		"{not json", `{"schema": 2}`, `{"schema": 1, "kernel": "../vmlinux"}`, `{"schema": 1}`, `null`, ``,
		`{"schema": 1, "kernel_version": "6.1.0-28-cloud-amd64", "kernel": "vmlinux", "vmlinuz": "vmlinuz",
		  "kernel_config": "kernel.config", "modules": "modules", "initrd": "initrd.img",
		  "boot_args": "console=ttyS0 reboot=k panic=1 pci=off", "ssh_key": "id_ed25519", "agent": "banger-vsock-agent",
		  "firecracker": "", "default_image": "docker",
		  "images": [{"name": "docker", "rootfs": "rootfs-docker.ext4", "work_seed": "work-seed.ext4"},
		             {"name": "minimal", "rootfs": "rootfs-minimal.ext4", "work_seed": "work-seed.ext4", "description": "sshd only"}],
		  "artifacts": [{"path": "vmlinux", "sha256": "00", "size": 123}, {"path": "modules", "sha256": "11", "size": -1}]}`,
		`{"schema": 1, "images": [{"name": "a", "rootfs": "/etc/passwd"}]}`,
		`{"schema": 1, "artifacts": [{"path": "a/../../x"}]}`,
		`{"schema": 1, "KERNEL": "..", "Images": [{"NAME": "x", "rootfs": "./r"}]}`,
		`{"schema": 1, "initrd": "a/../b", "agent": ".", "images": [{"name": "", "rootfs": ""}]}`,
		`{"schema": 1.0, "kernel": "\u0000"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, bundle.FileName), data, 0o644); err != nil {
			t.Fatal(err)
		}
		b, err := bundle.Load(dir)
		if err != nil {
			return
		}
		if b.Schema != bundle.Schema || b.Dir() != dir {
			t.Fatalf("Load(%q) = schema %d in %s, want schema %d in %s", data, b.Schema, b.Dir(), bundle.Schema, dir)
		}
		paths := []string{b.Kernel, b.Vmlinuz, b.KernelConfig, b.Modules, b.Initrd, b.SSHKey, b.Agent, b.Firecracker}
		for _, im := range b.Images {
			paths = append(paths, im.Rootfs, im.WorkSeed)
		}
		for _, a := range b.Artifacts {
			paths = append(paths, a.Path)
		}
		for _, p := range paths {
			if p == "" {
				continue
			}
			rel, err := filepath.Rel(dir, b.Path(p))
			if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
				t.Fatalf("Load(%q): path %q is %s, outside %s", data, p, b.Path(p), dir)
			}
		}
		for i, im := range b.Images {
			got, err := b.Image(im.Name)
			if err != nil || got.Name != im.Name {
				t.Fatalf("Load(%q): Image(%q) = %+v, %v; want image %d", data, im.Name, got, err, i)
			}
		}
		if err := b.Save(); err != nil {
			t.Fatalf("Load(%q): Save = %v", data, err)
		}
		back, err := bundle.Load(dir)
		if err != nil || !reflect.DeepEqual(back, b) {
			saved, _ := os.ReadFile(filepath.Join(dir, bundle.FileName))
			t.Fatalf("Load(%q) = %+v; saved as\n%s\nit loads as %+v, %v", data, b, saved, back, err)
		}
		_ = b.Check() // reads the directory: must not panic on any bundle
	})
}
