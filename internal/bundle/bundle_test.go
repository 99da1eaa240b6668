package bundle

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "bad", FileName), "{not json")
	writeFile(t, filepath.Join(dir, "schema2", FileName), `{"schema": 2}`)
	writeFile(t, filepath.Join(dir, "escape", FileName), `{"schema": 1, "kernel": "../vmlinux"}`)
	tests := []struct {
		dir  string
		want string
	}{
		{"missing", "run `make runtime-bundle`"},
		{"bad", "parsing bundle.json"},
		{"schema2", "schema 2, this banger reads schema 1"},
		{"escape", `"../vmlinux" leaves the bundle directory`},
	}
	for _, tt := range tests {
		_, err := Load(filepath.Join(dir, tt.dir))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Load(%s) = %v, want error containing %q", tt.dir, err, tt.want)
		}
	}
}

func TestImage(t *testing.T) {
	dir, _ := buildFakeBundle(t)
	b, err := Load(dir)
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
		case im.Rootfs != RootfsFile(tt.want) || im.WorkSeed != FileWorkSeed:
			t.Errorf("Image(%q) = %+v, want rootfs %s and work seed %s", tt.name, im, RootfsFile(tt.want), FileWorkSeed)
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
		{"missing key", func(dir string) { os.Remove(filepath.Join(dir, FileSSHKey)) }, FileSSHKey, FileSSHKey},
		{"grown initrd", func(dir string) { appendTo(dir, "initrd.img", "x") }, "initrd.img: size is", "initrd.img: size is"},
		{"same size, other content", func(dir string) { os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte("bzImage v9"), 0o644) }, "", "vmlinuz: sha256 is"},
		{"module changed", func(dir string) {
			os.WriteFile(filepath.Join(dir, "modules/6.1.0-99-cloud-amd64/kernel/drivers/block/virtio_blk.ko"), []byte("BLK module"), 0o644)
		}, "", "modules: sha256 is"},
		{"module removed", func(dir string) {
			os.Remove(filepath.Join(dir, "modules/6.1.0-99-cloud-amd64/kernel/drivers/block/virtio_blk.ko"))
		}, "modules: size is", "modules: size is"},
	}
	for _, tt := range tests {
		dir, _ := buildFakeBundle(t)
		b, err := Load(dir)
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
		writeFile(t, filepath.Join(d, "x/1.ko"), "one")
		writeFile(t, filepath.Join(d, "y/2.ko"), "two")
		os.Symlink("1.ko", filepath.Join(d, "x/l"))
	}
	ha, err := treeHash(a)
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := treeHash(b)
	if ha != hb || ha.size != 6 {
		t.Errorf("treeHash of equal trees = %v and %v, want equal with size 6", ha, hb)
	}
	os.Rename(filepath.Join(b, "y/2.ko"), filepath.Join(b, "y/3.ko"))
	if hb, _ = treeHash(b); hb == ha {
		t.Errorf("treeHash after a rename = %v, want it to differ from %v", hb, ha)
	}
}
