package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheckKernelAndInitrd(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		return p
	}
	elf := write("vmlinux", "\x7fELF\x02\x01\x01 kernel")
	bz := write("bzImage", "MZ\x00\x00 boot sector")
	gz := write("initrd.img", "\x1f\x8b\x08\x00 gzip")
	cpio := write("initrd.cpio", "070701000000")
	empty := write("empty", "")
	fifo := filepath.Join(dir, "fifo")
	syscall.Mkfifo(fifo, 0o644)
	for _, tc := range []struct {
		what  string
		check func(string) error
		path  string
		want  string
	}{
		{"kernel", CheckKernel, elf, ""},
		{"kernel", CheckKernel, bz, "not an ELF kernel"},
		{"kernel", CheckKernel, empty, "not an ELF kernel"},
		{"kernel", CheckKernel, "vmlinux", "absolute path"},
		{"kernel", CheckKernel, fifo, "not a regular file"},
		{"kernel", CheckKernel, dir, "not a regular file"},
		{"kernel", CheckKernel, filepath.Join(dir, "nope"), "no such file"},
		{"initrd", CheckInitrd, gz, ""},
		{"initrd", CheckInitrd, cpio, ""},
		{"initrd", CheckInitrd, elf, "not an initramfs"},
		{"initrd", CheckInitrd, empty, "not an initramfs"},
		{"initrd", CheckInitrd, fifo, "not a regular file"},
	} {
		err := tc.check(tc.path)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Check %s(%s) = %v, want %q", tc.what, filepath.Base(tc.path), err, tc.want)
		}
	}
}

func TestModulesRelease(t *testing.T) {
	root := t.TempDir()
	mk := func(rel string, files ...string) string {
		d := filepath.Join(root, rel)
		os.MkdirAll(d, 0o755)
		for _, f := range files {
			os.WriteFile(filepath.Join(d, f), nil, 0o644)
		}
		return d
	}
	one := mk("one/6.12.68_1", "modules.order")
	mk("two/6.1.0-1", "modules.dep")
	mk("two/6.1.0-2", "modules.order")
	mk("none/notakernel")
	mk("bad/we ird", "modules.order")
	for _, tc := range []struct {
		dir, want, err string
	}{
		{one, "6.12.68_1", ""},
		{filepath.Join(root, "one"), "6.12.68_1", ""},
		{filepath.Join(root, "two"), "", "the modules of 2 kernels"},
		{filepath.Join(root, "none"), "", "holds no kernel modules"},
		{filepath.Join(root, "bad"), "", "holds no kernel modules"},
		{filepath.Join(root, "bad", "we ird"), "", "not a kernel release name"},
		{"lib/modules", "", "absolute path"},
		{filepath.Join(one, "modules.order"), "", "not a directory"},
	} {
		got, err := ModulesRelease(tc.dir)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ModulesRelease(%s) = %q, %v; want %q, %q", strings.TrimPrefix(tc.dir, root), got, err, tc.want, tc.err)
		}
	}
}
