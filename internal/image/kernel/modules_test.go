package kernel

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// writeFakeModule writes a minimal relocatable ELF whose .modinfo names the module and its dependencies.
func writeFakeModule(t *testing.T, path, name string, deps ...string) {
	t.Helper()
	modinfo := []byte("license=GPL\x00name=" + name + "\x00depends=" + strings.Join(deps, ",") + "\x00vermagic=6.1.0 SMP\x00")
	shstrtab := []byte("\x00.modinfo\x00.shstrtab\x00")
	modinfoOff := uint64(64)
	shstrOff := modinfoOff + uint64(len(modinfo))
	shOff := (shstrOff + uint64(len(shstrtab)) + 7) &^ 7
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: 64, Shentsize: 64, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], []byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)})
	var buf bytes.Buffer
	binary.Write(&buf, binary.LittleEndian, hdr)
	buf.Write(modinfo)
	buf.Write(shstrtab)
	buf.Write(make([]byte, shOff-uint64(buf.Len())))
	for _, s := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: modinfoOff, Size: uint64(len(modinfo)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: shstrOff, Size: uint64(len(shstrtab)), Addralign: 1},
	} {
		binary.Write(&buf, binary.LittleEndian, s)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadModule(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		file, name string
		deps       []string
	}{
		{"virtio_blk.ko", "virtio_blk", []string{"virtio", "virtio_ring"}},
		{"virtio.ko", "virtio", nil},
		{"virtio-rng.ko", "virtio_rng", []string{"virtio_ring", "virtio"}},
	}
	for _, tt := range tests {
		p := filepath.Join(dir, tt.file)
		writeFakeModule(t, p, tt.name, tt.deps...)
		got, err := ReadModule(p)
		if err != nil {
			t.Errorf("ReadModule(%s) = %v", tt.file, err)
			continue
		}
		want := Module{Name: tt.name, Path: p, Depends: tt.deps}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("ReadModule(%s) = %+v, want %+v", tt.file, got, want)
		}
	}
	if _, err := ReadModule(filepath.Join(dir, "nope.ko")); err == nil {
		t.Errorf("ReadModule(nope.ko) = nil error, want one")
	}
}

func TestLoadOrder(t *testing.T) {
	root := t.TempDir()
	kver := "6.1.0-1-cloud-amd64"
	dir := filepath.Join(root, "lib", "modules", kver)
	mods := map[string][]string{
		"kernel/drivers/virtio/virtio_ring.ko":        nil,
		"kernel/drivers/virtio/virtio.ko":             {"virtio_ring"},
		"kernel/drivers/virtio/virtio_mmio.ko":        {"virtio", "virtio_ring"},
		"kernel/drivers/block/virtio_blk.ko":          {"virtio", "virtio_ring"},
		"kernel/drivers/char/hw_random/virtio-rng.ko": {"virtio_ring", "virtio"},
		"kernel/net/cyc_a.ko":                         {"cyc_b"},
		"kernel/net/cyc_b.ko":                         {"cyc_a"},
		"kernel/net/needs_ghost.ko":                   {"ghost"},
		"kernel/net/needs_builtin.ko":                 {"crc32c"},
	}
	for rel, deps := range mods {
		name := moduleKey(filepath.Base(rel))
		writeFakeModule(t, filepath.Join(dir, rel), name, deps...)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/lib/crc32c.ko\nkernel/fs/unix.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "boot", "config-"+kver), []byte("CONFIG_EXT4_FS=y\nCONFIG_VIRTIO_NET=m\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		names   []string
		want    []string // RelPath base names
		wantErr string
	}{
		{[]string{"virtio_blk"}, []string{"virtio_ring.ko", "virtio.ko", "virtio_blk.ko"}, ""},
		{[]string{"virtio-mmio", "virtio_rng", "virtio-blk"}, []string{"virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio-rng.ko", "virtio_blk.ko"}, ""},
		{[]string{"ext4", "unix", "virtio"}, []string{"virtio_ring.ko", "virtio.ko"}, ""},
		{[]string{"needs_builtin"}, []string{"needs_builtin.ko"}, ""},
		{[]string{"virtio_net"}, nil, "module virtio_net is neither"},
		{[]string{"needs_ghost"}, nil, "needs_ghost needs module ghost"},
		{[]string{"cyc_a"}, nil, "dependency cycle cyc_a -> cyc_b -> cyc_a"},
	}
	for _, tt := range tests {
		got, err := LoadOrder(dir, tt.names)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("LoadOrder(%v) = %v, want error containing %q", tt.names, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("LoadOrder(%v) = %v", tt.names, err)
			continue
		}
		var bases []string
		for _, m := range got {
			bases = append(bases, filepath.Base(m.RelPath))
			if m.Path != filepath.Join(dir, m.RelPath) {
				t.Errorf("LoadOrder(%v): %s Path = %s, want %s", tt.names, m.Name, m.Path, filepath.Join(dir, m.RelPath))
			}
		}
		if !slices.Equal(bases, tt.want) {
			t.Errorf("LoadOrder(%v) = %v, want %v", tt.names, bases, tt.want)
		}
	}
}

func TestLoadOrderRealKernel(t *testing.T) {
	p := realKernel(t)
	names := []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio-rng", "vmw_vsock_virtio_transport", "ext4"}
	got, err := LoadOrder(p.ModulesDir, names)
	if err != nil {
		t.Fatal(err)
	}
	loaded := map[string]bool{}
	var order []string
	for _, m := range got {
		for _, d := range m.Depends {
			if !loaded[moduleKey(d)] {
				t.Errorf("LoadOrder: %s comes before its dependency %s", m.Name, d)
			}
		}
		if loaded[m.Name] {
			t.Errorf("LoadOrder: %s listed twice", m.Name)
		}
		loaded[m.Name] = true
		order = append(order, m.Name)
	}
	t.Logf("load order: %s", strings.Join(order, " "))
	for _, n := range []string{"virtio", "virtio_ring", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng", "vmw_vsock_virtio_transport", "vsock"} {
		if !loaded[n] {
			t.Errorf("LoadOrder(%v) lacks %s", names, n)
		}
	}
	if loaded["ext4"] {
		t.Errorf("LoadOrder(%v) includes ext4, which this kernel builds in", names)
	}
}
