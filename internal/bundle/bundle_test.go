package bundle_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/bundle/bundletest"
)

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	bundletest.WriteFile(t, filepath.Join(dir, "bad", bundle.FileName), "{not json")
	bundletest.WriteFile(t, filepath.Join(dir, "schema2", bundle.FileName), `{"schema": 2}`)
	bundletest.WriteFile(t, filepath.Join(dir, "escape", bundle.FileName), `{"schema": 1, "kernel": "../vmlinux"}`)
	bundletest.WriteFile(t, filepath.Join(dir, "unnamed", bundle.FileName), `{"schema": 1, "images": [{"name": "a"}, {"rootfs": "r.ext4"}]}`)
	tests := []struct {
		dir  string
		want string
	}{
		{"missing", "run `make runtime-bundle`"},
		{"bad", "parsing bundle.json"},
		{"schema2", "schema 2, this banger reads schema 1"},
		{"escape", `"../vmlinux" leaves the bundle directory`},
		// Found by FuzzLoad: Image could never find it.
		{"unnamed", "image 2 in bundle.json has no name"},
	}
	for _, tt := range tests {
		_, err := bundle.Load(filepath.Join(dir, tt.dir))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("bundle.Load(%s) = %v, want error containing %q", tt.dir, err, tt.want)
		}
	}
}

func TestImage(t *testing.T) {
	dir := bundletest.Fake(t)
	b, err := bundle.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, want, wantErr string
	}{
		{"", "docker", ""},
		{"docker", "docker", ""},
		{"minimal", "minimal", ""},
		{"alpine", "", "use one of docker, minimal"},
	}
	for _, tt := range tests {
		im, err := b.Image(tt.name)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Image(%q) = %v, want error containing %q", tt.name, err, tt.wantErr)
			}
		case err != nil || im.Name != tt.want:
			t.Errorf("Image(%q) = %v, %v, want %s", tt.name, im, err, tt.want)
		case im.Rootfs != bundle.RootfsFile(tt.want) || im.WorkSeed != bundle.FileWorkSeed:
			t.Errorf("Image(%q) = %+v, want rootfs %s and work seed %s", tt.name, im, bundle.RootfsFile(tt.want), bundle.FileWorkSeed)
		}
	}
	if got := b.Path("vmlinux"); got != filepath.Join(dir, "vmlinux") {
		t.Errorf("Path(vmlinux) = %s, want %s", got, filepath.Join(dir, "vmlinux"))
	}
}

func TestCheckAndVerify(t *testing.T) {
	tests := []struct {
		name      string
		damage    func(dir string)
		checkErr  string // empty: Check passes
		verifyErr string
	}{
		{"intact", func(string) {}, "", ""},
		{"missing rootfs", func(dir string) { os.Remove(filepath.Join(dir, "rootfs-minimal.ext4")) }, "rootfs-minimal.ext4", "rootfs-minimal.ext4"},
		{"missing key", func(dir string) { os.Remove(filepath.Join(dir, bundle.FileSSHKey)) }, bundle.FileSSHKey, bundle.FileSSHKey},
		{"grown initrd", func(dir string) { appendTo(dir, "initrd.img", "x") }, "initrd.img: size is", "initrd.img: size is"},
		{"same size, other content", func(dir string) { os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte("bzImage v9"), 0o644) }, "", "vmlinuz: sha256 is"},
		{"module changed", func(dir string) {
			os.WriteFile(filepath.Join(dir, "modules/"+bundletest.KernelVersion+"/kernel/drivers/block/virtio_blk.ko"), []byte("BLK module"), 0o644)
		}, "", "modules: sha256 is"},
		{"module removed", func(dir string) {
			os.Remove(filepath.Join(dir, "modules/"+bundletest.KernelVersion+"/kernel/drivers/block/virtio_blk.ko"))
		}, "modules: size is", "modules: size is"},
	}
	for _, tt := range tests {
		dir := bundletest.Fake(t)
		b, err := bundle.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		tt.damage(dir)
		for _, c := range []struct {
			fn   string
			err  error
			want string
		}{{"Check", b.Check(), tt.checkErr}, {"Verify", b.Verify(), tt.verifyErr}} {
			switch {
			case c.want == "" && c.err != nil:
				t.Errorf("%s: %s() = %v, want nil", tt.name, c.fn, c.err)
			case c.want != "" && (c.err == nil || !strings.Contains(c.err.Error(), c.want)):
				t.Errorf("%s: %s() = %v, want error containing %q", tt.name, c.fn, c.err, c.want)
			}
		}
	}
}

func appendTo(dir, rel, s string) {
	f, err := os.OpenFile(filepath.Join(dir, rel), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	f.WriteString(s)
}

func TestTreeHash(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		bundletest.WriteFile(t, filepath.Join(d, "x/1.ko"), "one")
		bundletest.WriteFile(t, filepath.Join(d, "y/2.ko"), "two")
		os.Symlink("1.ko", filepath.Join(d, "x/l"))
	}
	ha, err := bundle.HashPath(a)
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := bundle.HashPath(b)
	if ha != hb || ha.Size != 6 {
		t.Errorf("treeHash of equal trees = %v and %v, want equal with size 6", ha, hb)
	}
	os.Rename(filepath.Join(b, "y/2.ko"), filepath.Join(b, "y/3.ko"))
	if hb, _ = bundle.HashPath(b); hb == ha {
		t.Errorf("treeHash after a rename = %v, want it to differ from %v", hb, ha)
	}
}
