package transfer

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// entry is one member of a test archive.
type entry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
	size       int64 // -1: len(body)
}

func reg(name, body string) entry {
	return entry{name: name, typ: tar.TypeReg, mode: 0o644, body: body, size: -1}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755, size: -1} }
func symlink(name, to string) entry {
	return entry{name: name, link: to, typ: tar.TypeSymlink, mode: 0o777, size: -1}
}
func hardlink(name, to string) entry {
	return entry{name: name, link: to, typ: tar.TypeLink, mode: 0o644, size: -1}
}

var mtime = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

func archive(t *testing.T, ents ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		size := e.size
		if size < 0 {
			size = int64(len(e.body))
		}
		if e.typ != tar.TypeReg {
			size = 0
		}
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: size, ModTime: mtime, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("writing test archive entry %q: %v", e.name, err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return b.Bytes()
}

// tree lists what is under root as "path type" lines.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, rel+" "+d.Type().String())
		return nil
	})
	sort.Strings(out)
	return out
}

// receive runs a Receiver over data into a fresh destination directory
// and commits on success.
func receive(t *testing.T, data []byte, names []string, recursive bool) (string, error) {
	t.Helper()
	root := t.TempDir()
	dst := filepath.Join(root, "dst")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	stage, err := os.MkdirTemp(dst, ".banger-cp-")
	if err != nil {
		t.Fatal(err)
	}
	r := &Receiver{Stage: stage, Dest: Dest{Path: dst, Into: true}, Names: names, Recursive: recursive}
	err = r.Extract(tar.NewReader(bytes.NewReader(data)))
	if err == nil {
		err = r.Commit()
	}
	os.RemoveAll(stage)
	return dst, err
}

func TestReceiverRefusesHostileArchives(t *testing.T) {
	tests := []struct {
		name string
		ents []entry
		want string // in the error
	}{
		{"absolute path", []entry{dir("d/"), reg("/etc/passwd", "x")}, "absolute path"},
		{"absolute top", []entry{reg("/evil", "x")}, "absolute path"},
		{"dot-dot", []entry{dir("d/"), reg("d/../../evil", "x")}, "not a clean path"},
		{"dot-dot clean", []entry{dir("d/"), reg("../evil", "x")}, "climbs out"},
		{"unclean", []entry{dir("d/"), reg("d//x", "x")}, "not a clean path"},
		{"outside the source", []entry{dir("d/"), reg("e/x", "x")}, "outside the source"},
		{"before its source", []entry{reg("d/x", "x")}, "comes before"},
		{"under a file", []entry{dir("d/"), reg("d/f", "x"), reg("d/f/x", "x")}, "not a directory of this archive"},
		{"missing parent", []entry{dir("d/"), reg("d/a/x", "x")}, "not a directory of this archive"},
		{"through a symlink", []entry{dir("d/"), symlink("d/l", "."), reg("d/l/x", "x")}, "not a directory of this archive"},
		{"absolute symlink", []entry{dir("d/"), symlink("d/l", "/home/u/.bashrc")}, "points outside the copy"},
		{"escaping symlink", []entry{dir("d/"), dir("d/s/"), symlink("d/s/l", "../../x")}, "points outside the copy"},
		{"top symlink", []entry{symlink("d", "x")}, "must be a regular file or a directory"},
		{"hard link outside", []entry{dir("d/"), hardlink("d/h", "/etc/shadow")}, "hard link target"},
		{"hard link to unknown", []entry{dir("d/"), hardlink("d/h", "d/nothere")}, "not a file of this archive"},
		{"hard link to symlink", []entry{dir("d/"), symlink("d/l", "x"), hardlink("d/h", "d/l")}, "not a file of this archive"},
		{"char device", []entry{dir("d/"), {name: "d/null", typ: tar.TypeChar, size: -1}}, "character device"},
		{"block device", []entry{dir("d/"), {name: "d/sda", typ: tar.TypeBlock, size: -1}}, "block device"},
		{"fifo", []entry{dir("d/"), {name: "d/p", typ: tar.TypeFifo, size: -1}}, "FIFO"},
		{"duplicate", []entry{dir("d/"), reg("d/x", "1"), reg("d/x", "2")}, "appears twice"},
		{"duplicate dir", []entry{dir("d/"), dir("d/")}, "appears twice"},
		{"too many sources", []entry{reg("a", "1"), reg("b", "2")}, "more sources"},
		{"long name", []entry{dir("d/"), reg("d/"+strings.Repeat("n", 300), "x")}, "component longer"},
		{"very long name", []entry{dir("d/"), reg("d/"+strings.Repeat("n/", 2100)+"x", "x")}, "longer than 4096"},
		{"too deep", []entry{dir("d/"), reg("d/"+strings.Repeat("n/", 300)+"x", "x")}, "deeper than"},
		{"empty name", []entry{dir("./")}, "empty name"},
	}
	for _, tt := range tests {
		dst, err := receive(t, archive(t, tt.ents...), []string{""}, true)
		var ue *UnsafeError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Extract = %v, want an UnsafeError with %q", tt.name, err, tt.want)
		}
		if got := tree(t, dst); len(got) != 0 {
			t.Errorf("%s: destination holds %q after a refused archive, want nothing", tt.name, got)
		}
	}
}

func TestReceiverRefusesWrongShapes(t *testing.T) {
	tests := []struct {
		name      string
		ents      []entry
		names     []string
		recursive bool
		want      string
	}{
		{"directory without -r", []entry{dir("d/")}, []string{""}, false, "without -r"},
		{"fewer sources", []entry{reg("a", "1")}, []string{"", ""}, false, "sent 1 of 2 sources"},
		{"nothing", nil, []string{""}, false, "sent 0 of 1 sources"},
		{"truncated file", []entry{{name: "a", typ: tar.TypeReg, mode: 0o644, body: "abc", size: 10}}, []string{""}, false, "writing"},
		{"same target twice", []entry{reg("a", "1"), reg("b", "2")}, []string{"x", "x"}, false, "would both be copied"},
	}
	for _, tt := range tests {
		dst, err := receive(t, archive(t, tt.ents...), tt.names, tt.recursive)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: receive = %v, want an error with %q", tt.name, err, tt.want)
		}
		if got := tree(t, dst); len(got) != 0 {
			t.Errorf("%s: destination holds %q after a failed copy, want nothing", tt.name, got)
		}
	}
}

func TestReceiverWritesSafeArchive(t *testing.T) {
	data := archive(t,
		dir("./proj/"),
		entry{name: "./proj/run.sh", typ: tar.TypeReg, mode: 0o4755, body: "#!/bin/sh\n", size: -1}, // setuid is dropped
		dir("./proj/empty/"),
		entry{name: "./proj/ro/", typ: tar.TypeDir, mode: 0o555, size: -1},
		reg("./proj/ro/f", "read-only dir"),
		symlink("./proj/link", "run.sh"),
		symlink("./proj/ro/up", "../run.sh"),
		hardlink("./proj/hard", "./proj/run.sh"),
		reg("notes", "second source"),
	)
	dst, err := receive(t, data, []string{"", "renamed"}, true)
	if err != nil {
		t.Fatalf("receive of a safe archive: %v", err)
	}
	want := []string{
		"proj d---------", "proj/empty d---------", "proj/hard ----------", "proj/link L---------",
		"proj/ro d---------", "proj/ro/f ----------", "proj/ro/up L---------", "proj/run.sh ----------",
		"renamed ----------",
	}
	if got := tree(t, dst); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("received tree = %q, want %q", got, want)
	}
	modes := map[string]fs.FileMode{"proj": 0o755, "proj/run.sh": 0o755, "proj/ro": 0o555, "proj/ro/f": 0o644, "renamed": 0o644}
	for p, m := range modes {
		fi, err := os.Lstat(filepath.Join(dst, p))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode() & (fs.ModePerm | fs.ModeSetuid); got != m {
			t.Errorf("mode of %s = %v, want %v", p, got, m)
		}
		if !fi.ModTime().Equal(mtime) {
			t.Errorf("mtime of %s = %v, want %v", p, fi.ModTime(), mtime)
		}
	}
	if l, _ := os.Readlink(filepath.Join(dst, "proj/ro/up")); l != "../run.sh" {
		t.Errorf("symlink proj/ro/up -> %q, want ../run.sh", l)
	}
	a, _ := os.Stat(filepath.Join(dst, "proj/run.sh"))
	h, _ := os.Stat(filepath.Join(dst, "proj/hard"))
	if !os.SameFile(a, h) {
		t.Errorf("proj/hard is not a hard link of proj/run.sh")
	}
	os.Chmod(filepath.Join(dst, "proj/ro"), 0o755) // let t.TempDir clean up
}

func TestCommitMerges(t *testing.T) {
	root := t.TempDir()
	dst := filepath.Join(root, "dst")
	secret := filepath.Join(root, "secret")
	os.MkdirAll(filepath.Join(dst, "proj", "keep"), 0o755)
	os.WriteFile(filepath.Join(dst, "proj", "old.txt"), []byte("old"), 0o644)
	os.WriteFile(filepath.Join(dst, "proj", "keep", "k"), []byte("k"), 0o644)
	os.Mkdir(secret, 0o700)
	// A symlink left in the destination must be replaced, never followed.
	os.Symlink(secret, filepath.Join(dst, "proj", "sub"))
	stage, _ := os.MkdirTemp(dst, ".banger-cp-")
	r := &Receiver{Stage: stage, Dest: Dest{Path: dst, Into: true}, Names: []string{""}, Recursive: true}
	data := archive(t, dir("proj/"), reg("proj/old.txt", "new"), reg("proj/add.txt", "add"), symlink("proj/sub", "keep"))
	if err := r.Extract(tar.NewReader(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(stage) // the caller's job
	for p, want := range map[string]string{"proj/old.txt": "new", "proj/add.txt": "add", "proj/keep/k": "k"} {
		if b, _ := os.ReadFile(filepath.Join(dst, p)); string(b) != want {
			t.Errorf("after merge %s = %q, want %q", p, b, want)
		}
	}
	if l, _ := os.Readlink(filepath.Join(dst, "proj", "sub")); l != "keep" {
		t.Errorf("proj/sub -> %q, want the copy's symlink to keep", l)
	}
	if got := tree(t, secret); len(got) != 0 {
		t.Errorf("the merge wrote %q through a symlink", got)
	}
	if got := tree(t, dst); len(got) != 6 {
		t.Errorf("destination after merge = %q", got)
	}
}

func TestResolveDest(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "d"), 0o755)
	os.WriteFile(filepath.Join(root, "f"), nil, 0o644)
	tests := []struct {
		dst     string
		n       int
		want    Dest
		wantErr string
	}{
		{"d", 1, Dest{Path: "d", Into: true}, ""},
		{"d/", 3, Dest{Path: "d/", Into: true}, ""},
		{"f", 1, Dest{Path: "f"}, ""},
		{"new", 1, Dest{Path: "new"}, ""},
		{"f/", 1, Dest{}, "f/ is not a directory"},
		{"new/", 1, Dest{}, "new/: no such directory"},
		{"new", 2, Dest{}, "needs an existing directory"},
		{"f", 2, Dest{}, "needs an existing directory"},
		{"nodir/x", 1, Dest{}, "nodir: no such directory"},
	}
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	os.Chdir(root)
	for _, tt := range tests {
		got, err := ResolveDest(tt.dst, tt.n)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ResolveDest(%q, %d) = %+v, %v, want error %q", tt.dst, tt.n, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ResolveDest(%q, %d) = %+v, %v, want %+v", tt.dst, tt.n, got, err, tt.want)
		}
	}
}
