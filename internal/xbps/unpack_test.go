package xbps

import (
	"archive/tar"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/xbps/voidtest"
)

// writePkg writes p into a fresh directory and returns the file and its
// index entry as the resolver would see it.
func writePkg(t *testing.T, p voidtest.Pkg) (string, *Package) {
	t.Helper()
	dir := t.TempDir()
	e, err := voidtest.WritePackage(dir, p)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, p.Filename()), &Package{
		Name: p.Name, Pkgver: e.Pkgver, Arch: e.Architecture, SHA256: e.SHA256, Size: e.Size,
		RunDepends: e.RunDepends, Provides: e.Provides,
	}
}

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

// listTree returns the names under dir, or "" when it is empty.
func listTree(t *testing.T, dir string) string {
	t.Helper()
	var names []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			names = append(names, rel)
		}
		return nil
	})
	return strings.Join(names, " ")
}

func TestUnpack(t *testing.T) {
	file, p := writePkg(t, voidtest.Pkg{
		Name: "hello", Version: "1.0_1",
		Install: "#!/bin/sh\nexport system_accounts=\"_hello\"\n",
		Files: []voidtest.File{
			{Name: "usr/bin/hello", Data: []byte("#!/bin/sh\necho hi\n"), Mode: 0o755},
			{Name: "usr/bin/hello-suid", Data: []byte("x"), Mode: 0o755 | fs.ModeSetuid},
			{Name: "usr/bin/hi", Link: "hello"},
			{Name: "usr/bin/hello2", Hardlink: "usr/bin/hello"},
			{Name: "var/lib/hello", Dir: true, Mode: 0o700},
			{Name: "etc/hello.conf", Data: []byte("a=1\n")},
		},
	})
	dir, root := openRoot(t)
	u, err := Unpack(file, p, root, UnpackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if u.Pkgver != "hello-1.0_1" || !strings.Contains(string(u.Install), "_hello") || u.Files != 6 {
		t.Errorf("Unpack() = %+v, want pkgver hello-1.0_1, the INSTALL script and 6 files", u)
	}
	for _, c := range []struct {
		name string
		mode fs.FileMode
	}{
		{"usr/bin/hello", 0o755},
		{"usr/bin/hello-suid", 0o755 | fs.ModeSetuid},
		{"var/lib/hello", 0o700 | fs.ModeDir},
		{"etc/hello.conf", 0o644},
		{"usr/bin/hi", fs.ModeSymlink | 0o777},
	} {
		fi, err := os.Lstat(filepath.Join(dir, c.name))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if fi.Mode() != c.mode {
			t.Errorf("mode of %s = %v, want %v", c.name, fi.Mode(), c.mode)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "usr/bin/hello2")); err != nil || string(b) != "#!/bin/sh\necho hi\n" {
		t.Errorf("hard link usr/bin/hello2 = %q, %v", b, err)
	}
	for _, meta := range []string{"INSTALL", "props.plist", "files.plist"} {
		if _, err := os.Lstat(filepath.Join(dir, meta)); err == nil {
			t.Errorf("metadata %s was extracted into the tree", meta)
		}
	}
	// A second package replaces a file and a symlink of the first.
	file2, p2 := writePkg(t, voidtest.Pkg{Name: "hello-new", Version: "1.0_1", Files: []voidtest.File{
		{Name: "usr/bin/hi", Data: []byte("now a file")},
		{Name: "etc/hello.conf", Link: "/dev/null"},
	}})
	if _, err := Unpack(file2, p2, root, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "usr/bin/hi")); string(b) != "now a file" {
		t.Errorf("usr/bin/hi = %q after the second package, want its file", b)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "etc/hello.conf")); l != "/dev/null" {
		t.Errorf("etc/hello.conf links to %q, want /dev/null", l)
	}
}

// TestUnpackRefusesChecksum is the promise that a package whose bytes
// differ from the index is never unpacked, not even in part.
func TestUnpackRefusesChecksum(t *testing.T) {
	file, p := writePkg(t, voidtest.Pkg{Name: "hello", Version: "1.0_1", Files: []voidtest.File{
		{Name: "usr/bin/hello", Data: []byte("hello"), Mode: 0o755},
	}})
	for _, tc := range []struct {
		name   string
		change func(p *Package)
		want   string
	}{
		{"sha256", func(p *Package) { p.SHA256 = strings.Repeat("0", 64) }, "sha256 of hello-1.0_1 is"},
		{"size", func(p *Package) { p.Size++ }, "size of hello-1.0_1 is"},
	} {
		q := *p
		tc.change(&q)
		dir, root := openRoot(t)
		_, err := Unpack(file, &q, root, UnpackOptions{})
		var ce *ChecksumError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "refusing it") {
			t.Errorf("Unpack(wrong %s) = %v, want a ChecksumError containing %q", tc.name, err, tc.want)
		}
		if left := listTree(t, dir); left != "" {
			t.Errorf("Unpack(wrong %s) wrote %s, want nothing", tc.name, left)
		}
	}
	// The same bytes changed on disk after the index was written.
	b, _ := os.ReadFile(file)
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	dir, root := openRoot(t)
	if _, err := Unpack(file, p, root, UnpackOptions{}); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("Unpack(corrupted file) = %v, want a sha256 error", err)
	}
	if left := listTree(t, dir); left != "" {
		t.Errorf("Unpack(corrupted file) wrote %s, want nothing", left)
	}
}

func TestUnpackRefusesHostileEntries(t *testing.T) {
	outside := t.TempDir()
	for _, tc := range []struct {
		name  string
		pkg   voidtest.Pkg
		want  string
		empty bool // nothing at all may be written
	}{
		{name: "dotdot", pkg: voidtest.Pkg{Files: []voidtest.File{{Name: "./usr/../../x", Raw: true, Data: []byte("x")}}}, want: `".."`},
		{name: "absolute", pkg: voidtest.Pkg{Files: []voidtest.File{{Name: "/etc/x", Raw: true, Data: []byte("x")}}}, want: "does not start with ./"},
		{name: "bare", pkg: voidtest.Pkg{Files: []voidtest.File{{Name: "etc/x", Raw: true, Data: []byte("x")}}}, want: "does not start with ./"},
		{name: "absolute symlink parent", pkg: voidtest.Pkg{Files: []voidtest.File{
			{Name: "evil", Link: outside},
			{Name: "evil/owned", Data: []byte("x")},
		}}, want: "evil/owned"},
		{name: "relative symlink parent", pkg: voidtest.Pkg{Files: []voidtest.File{
			{Name: "up", Link: "../../../../../../../../" + strings.TrimPrefix(outside, "/")},
			{Name: "up/owned", Data: []byte("x")},
		}}, want: "up/owned"},
		{name: "symlink as file", pkg: voidtest.Pkg{Files: []voidtest.File{
			{Name: "etc", Dir: true},
			{Name: "etc/passwd", Link: outside + "/passwd"},
			{Name: "etc/passwd", Data: []byte("root::0:0::/:/bin/sh\n")},
		}}, want: ""},
		{name: "hard link outside", pkg: voidtest.Pkg{Files: []voidtest.File{{Name: "x", Hardlink: "../../etc/passwd"}}}, want: "invalid hard link target"},
		{name: "char device", pkg: voidtest.Pkg{Files: []voidtest.File{{Name: "./dev/mem", Raw: true, Type: tar.TypeChar}}}, want: "device node"},
		{name: "fifo", pkg: voidtest.Pkg{Files: []voidtest.File{{Name: "./run/fifo", Raw: true, Type: tar.TypeFifo}}}, want: "device node or FIFO"},
		{name: "props of another package", pkg: voidtest.Pkg{PropsPkgver: "other-1.0_1", Files: []voidtest.File{{Name: "x", Data: []byte("x")}}}, want: "not the one asked for", empty: true},
	} {
		tc.pkg.Name, tc.pkg.Version = "evil", "1.0_1"
		file, p := writePkg(t, tc.pkg)
		dir, root := openRoot(t)
		_, err := Unpack(file, p, root, UnpackOptions{})
		if tc.want == "" {
			// Replacing a symlink must replace it, not write through it.
			if err != nil {
				t.Errorf("Unpack(%s) = %v", tc.name, err)
			}
		} else if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Unpack(%s) = %v, want an error containing %q", tc.name, err, tc.want)
		}
		if left := listTree(t, outside); left != "" {
			t.Errorf("Unpack(%s) wrote %s outside the tree", tc.name, left)
		}
		if tc.empty {
			if left := listTree(t, dir); left != "" {
				t.Errorf("Unpack(%s) wrote %s, want nothing", tc.name, left)
			}
		}
	}
}

func TestUnpackRefusesNonPackages(t *testing.T) {
	dir := t.TempDir()
	// A tar without xbps metadata: a plain tarball renamed .xbps.
	file := filepath.Join(dir, "plain.xbps")
	if err := voidtest.WriteRepodataMembers(file, []voidtest.Member{{Name: "./usr/bin/x", Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(file)
	sum := fileSum(t, file)
	p := &Package{Name: "plain", Pkgver: "plain-1_1", Arch: "x86_64", SHA256: sum, Size: fi.Size()}
	out, root := openRoot(t)
	if _, err := Unpack(file, p, root, UnpackOptions{}); err == nil || !strings.Contains(err.Error(), "not an xbps package") {
		t.Errorf("Unpack(plain tar) = %v, want a not-an-xbps-package error", err)
	}
	if left := listTree(t, out); left != "" {
		t.Errorf("Unpack(plain tar) wrote %s", left)
	}
}

func TestParseInstall(t *testing.T) {
	script := `#!/bin/sh
# generated by xbps-src
export system_groups="docker _ssh:90"
export system_accounts="_sshd polkitd:27"
export _sshd_homedir="/var/empty"
export _sshd_shell="/usr/bin/nologin"
export _sshd_descr="OpenSSH privsep"
export _sshd_groups="_ssh,nogroup"
export register_shell="/bin/bash /usr/bin/bash"
export evil="$(reboot)"
case "${ACTION}" in
pre) ;;
esac
`
	iv, err := ParseInstall([]byte(script))
	if err != nil {
		t.Fatal(err)
	}
	if len(iv.Groups) != 2 || iv.Groups[0] != (Group{"docker", -1}) || iv.Groups[1] != (Group{"_ssh", 90}) {
		t.Errorf("Groups = %+v", iv.Groups)
	}
	if len(iv.Accounts) != 2 {
		t.Fatalf("Accounts = %+v, want 2", iv.Accounts)
	}
	a := iv.Accounts[0]
	if a.Name != "_sshd" || a.UID != -1 || a.Home != "/var/empty" || a.Shell != "/usr/bin/nologin" || a.Descr != "OpenSSH privsep" || strings.Join(a.Groups, ",") != "_ssh,nogroup" {
		t.Errorf("Accounts[0] = %+v", a)
	}
	if iv.Accounts[1].Name != "polkitd" || iv.Accounts[1].UID != 27 {
		t.Errorf("Accounts[1] = %+v", iv.Accounts[1])
	}
	if strings.Join(iv.Shells, " ") != "/bin/bash /usr/bin/bash" {
		t.Errorf("Shells = %v", iv.Shells)
	}
	for _, bad := range []string{
		`export system_accounts="root:0"`,
		`export system_accounts="Bad"`,
		`export system_groups="x:99999"`,
		"export system_accounts=\"a\"\nexport a_homedir=\"relative\"",
		`export register_shell="bash"`,
	} {
		if _, err := ParseInstall([]byte(bad)); err == nil {
			t.Errorf("ParseInstall(%q) = nil error, want one", bad)
		}
	}
}
