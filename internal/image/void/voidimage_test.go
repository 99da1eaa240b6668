package void

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/banger/banger/internal/xbps"
)

func openRoot(t *testing.T) (string, *os.Root) {
	t.Helper()
	dir := t.TempDir()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return dir, r
}

func TestApplyAlternatives(t *testing.T) {
	dir, root := openRoot(t)
	pkgs := []*xbps.Package{
		{Pkgver: "dash-0.5.12_1", Name: "dash", Alternatives: map[string][]string{"sh": {"/usr/bin/sh:dash", "/usr/share/man/man1/sh.1:/usr/share/man/man1/dash.1"}}},
		{Pkgver: "bash-5.2_1", Name: "bash", Alternatives: map[string][]string{"sh": {"/usr/bin/sh:bash"}}},
		{Pkgver: "gawk-5.3_1", Name: "gawk", Alternatives: map[string][]string{"awk": {"awk:/usr/bin/gawk"}}},
	}
	got, err := applyAlternatives(root, pkgs)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "sh=dash awk=gawk" {
		t.Errorf("applyAlternatives() = %v, want [sh=dash awk=gawk]: the first package of a group keeps it", got)
	}
	for link, want := range map[string]string{
		"usr/bin/sh":              "dash",
		"usr/share/man/man1/sh.1": "dash.1",
		"usr/bin/awk":             "gawk",
	} {
		if got, err := os.Readlink(filepath.Join(dir, link)); err != nil || got != want {
			t.Errorf("readlink %s = %q, %v, want %q", link, got, err, want)
		}
	}
	bad := []*xbps.Package{{Pkgver: "evil-1_1", Alternatives: map[string][]string{"x": {"../../../outside:y"}}}}
	if _, err := applyAlternatives(root, bad); err == nil || !strings.Contains(err.Error(), "leaves the tree") {
		t.Errorf("applyAlternatives(link ../../../outside) = %v, want a leaves-the-tree error", err)
	}
}

func TestSetupAccounts(t *testing.T) {
	dir, root := openRoot(t)
	must := func(rel, content string) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, rel), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	must("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:99:99:Unprivileged User:/dev/null:/bin/false\n")
	must("etc/group", "root:x:0:\nnogroup:x:99:\n")
	must("etc/shells", "/bin/sh\n")
	must("usr/bin/bash", "")
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	vars := []*xbps.InstallVars{
		{Groups: []xbps.Group{{Name: "docker", GID: -1}}, Shells: []string{"/bin/bash"}},
		{Accounts: []xbps.Account{{Name: "sshd", UID: -1, Home: "/run/sshd", Shell: "/usr/bin/nologin"}}},
		{Accounts: []xbps.Account{{Name: "polkitd", UID: 27, Groups: []string{"docker"}}}},
	}
	if err := setupAccounts(root, vars); err != nil {
		t.Fatal(err)
	}
	read := func(rel string) string {
		b, _ := os.ReadFile(filepath.Join(dir, rel))
		return string(b)
	}
	for _, c := range []struct{ file, want string }{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"},
		{"etc/passwd", "sshd:x:999:998:sshd unprivileged user:/run/sshd:/usr/bin/nologin\n"},
		{"etc/passwd", "polkitd:x:27:27:polkitd unprivileged user:/var/empty:/bin/false\n"},
		{"etc/group", "docker:x:999:polkitd\n"},
		{"etc/group", "sshd:x:998:\n"},
		{"etc/shadow", "root:*:19000:0:99999:7:::\n"},
		{"etc/shells", "/bin/sh\n/bin/bash\n"},
	} {
		if !strings.Contains(read(c.file), c.want) {
			t.Errorf("%s = %q, want it to contain %q", c.file, read(c.file), c.want)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, "etc/shadow")); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("etc/shadow mode = %v, want 0600", fi)
	}
	if strings.Contains(read("etc/shadow"), ":!") {
		t.Errorf("etc/shadow locks an account with '!', which sshd refuses even for keys")
	}
	// Without bash, root cannot get its shell.
	os.Remove(filepath.Join(dir, "usr/bin/bash"))
	if err := setupAccounts(root, nil); err == nil || !strings.Contains(err.Error(), "/bin/bash") {
		t.Errorf("setupAccounts(no bash) = %v, want an error naming /bin/bash", err)
	}
}

// fakeModule returns a minimal ELF relocatable whose .modinfo names the
// module and its dependencies, which is what kernel.ReadModule reads.
func fakeModule(t *testing.T, name string, depends ...string) []byte {
	t.Helper()
	return buildModuleELF(name, strings.Join(depends, ","))
}

func TestInitrdModules(t *testing.T) {
	dir := t.TempDir()
	mods := filepath.Join(dir, "6.12.1_1")
	write := func(rel string, data []byte) {
		p := filepath.Join(mods, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	zst := func(b []byte) []byte {
		var buf bytes.Buffer
		w, _ := zstd.NewWriter(&buf)
		w.Write(b)
		w.Close()
		return buf.Bytes()
	}
	gz := func(b []byte) []byte {
		var buf bytes.Buffer
		w := gzip.NewWriter(&buf)
		w.Write(b)
		w.Close()
		return buf.Bytes()
	}
	write("kernel/drivers/block/virtio_blk.ko.zst", zst(fakeModule(t, "virtio_blk", "virtio_ring")))
	write("kernel/drivers/virtio/virtio_ring.ko.gz", gz(fakeModule(t, "virtio_ring")))
	write("kernel/drivers/net/virtio_net.ko", fakeModule(t, "virtio_net", "virtio_ring"))
	write("kernel/fs/xfs/xfs.ko.xz", []byte("not read"))
	config := filepath.Join(dir, "config")
	if err := os.WriteFile(config, []byte("CONFIG_VIRTIO_MMIO=y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	view := filepath.Join(dir, "view")
	got, err := initrdModules(mods, config, view, []string{"virtio_mmio", "virtio_blk", "virtio-net"})
	if err != nil {
		t.Fatal(err)
	}
	var names, rels []string
	for _, m := range got {
		names = append(names, m.Name)
		rels = append(rels, m.RelPath)
		if !strings.HasPrefix(m.Path, view) {
			t.Errorf("module %s at %s, want a decompressed copy under %s", m.Name, m.Path, view)
		}
	}
	if strings.Join(names, " ") != "virtio_ring virtio_blk virtio_net" {
		t.Errorf("initrdModules() = %v, want virtio_ring virtio_blk virtio_net (virtio_mmio is built in)", names)
	}
	if strings.Join(rels, " ") != "kernel/drivers/virtio/virtio_ring.ko kernel/drivers/block/virtio_blk.ko kernel/drivers/net/virtio_net.ko" {
		t.Errorf("relative paths = %v, want plain .ko paths", rels)
	}
	if _, err := initrdModules(mods, config, filepath.Join(dir, "view2"), []string{"xfs"}); err == nil || !strings.Contains(err.Error(), "xz-compressed") {
		t.Errorf("initrdModules(xfs.ko.xz) = %v, want an xz error", err)
	}
	if _, err := initrdModules(mods, config, filepath.Join(dir, "view3"), []string{"nonexistent"}); err == nil {
		t.Errorf("initrdModules(nonexistent) = nil error, want one")
	}
}

func TestLoadKernel(t *testing.T) {
	stage := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "void-kernel")
		if err := os.MkdirAll(filepath.Join(dir, DirModules, "6.12.1_1"), 0o755); err != nil {
			t.Fatal(err)
		}
		m := KernelManifest{Schema: kernelSchema, Package: "linux6.12-6.12.1_1", KernelVersion: "6.12.1_1",
			Kernel: FileVmlinux, Vmlinuz: FileVmlinuz, Config: FileKernelConfig, Initrd: FileInitrd, Modules: DirModules}
		for _, f := range []string{FileVmlinux, FileVmlinuz, FileKernelConfig, FileInitrd} {
			p := filepath.Join(dir, f)
			if err := os.WriteFile(p, []byte(f), 0o644); err != nil {
				t.Fatal(err)
			}
			s, _ := sumFile(p)
			s.Path = f
			m.Files = append(m.Files, s)
		}
		js, _ := json.Marshal(m)
		if err := os.WriteFile(filepath.Join(dir, KernelManifestFile), js, 0o644); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	dir := stage(t)
	m, err := LoadKernel(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if m.KernelVersion != "6.12.1_1" || m.Path(m.Kernel) != filepath.Join(dir, FileVmlinux) {
		t.Errorf("LoadKernel() = %+v", m)
	}
	if _, err := LoadKernel(filepath.Join(t.TempDir(), "none"), false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadKernel(missing) = %v, want ErrNotExist", err)
	}
	for _, tc := range []struct {
		name   string
		break_ func(dir string)
		verify bool
		want   string
	}{
		{"no kernel.json", func(d string) { os.Remove(filepath.Join(d, KernelManifestFile)) }, false, "no kernel.json"},
		{"no initrd", func(d string) { os.Remove(filepath.Join(d, FileInitrd)) }, false, "initrd.img"},
		{"truncated vmlinux", func(d string) { os.WriteFile(filepath.Join(d, FileVmlinux), []byte("v"), 0o644) }, false, "vmlinux has 1 bytes"},
		{"changed config", func(d string) { os.WriteFile(filepath.Join(d, FileKernelConfig), []byte("kernel.confiG"), 0o644) }, true, "kernel.config has sha256"},
		{"no modules", func(d string) { os.RemoveAll(filepath.Join(d, DirModules)) }, false, "no modules tree"},
		{"garbage", func(d string) { os.WriteFile(filepath.Join(d, KernelManifestFile), []byte("{"), 0o644) }, false, "unreadable"},
	} {
		d := stage(t)
		tc.break_(d)
		_, err := LoadKernel(d, tc.verify)
		var ie *IncompleteError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "make void-kernel") {
			t.Errorf("LoadKernel(%s) = %v, want an IncompleteError containing %q and the fix", tc.name, err, tc.want)
		}
	}
}

func TestCABundle(t *testing.T) {
	dir, root := openRoot(t)
	for name, pem := range map[string]string{"mozilla/B.crt": "B\n", "mozilla/A.crt": "A", "README": "not a cert"} {
		p := filepath.Join(dir, "usr/share/ca-certificates", name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(pem), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := caBundle(root); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "etc/ssl/certs/ca-certificates.crt"))
	if err != nil || string(b) != "A\nB\n" {
		t.Errorf("ca-certificates.crt = %q, %v, want A and B in order", b, err)
	}
}
