package transfer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// The guest scripts run here with the host's sh, GNU tar and coreutils
// (Debian's, as in the images), without ssh: the command strings are what
// the guest's login shell is given.

func requireShellTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"sh", "tar", "du", "readlink", "mktemp", "cp", "mv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the guest scripts need %s here: %v", tool, err)
		}
	}
}

// runScript runs a remote command line with sh -c, as sshd would.
func runScript(t *testing.T, cmdline string, stdin io.Reader) (stdout, stderr []byte, code int) {
	t.Helper()
	cmd := exec.Command("sh", "-c", cmdline)
	cmd.Stdin = stdin
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		return o.Bytes(), e.Bytes(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.Bytes(), e.Bytes(), 0
}

// describe lists a tree as "path type mode mtime content-hash/link" lines.
func describe(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		what := ""
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			what, _ = os.Readlink(p)
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			s := sha256.Sum256(b)
			what = hex.EncodeToString(s[:8])
		}
		mt := fi.ModTime().UTC().Format(time.RFC3339Nano)
		if fi.Mode()&fs.ModeSymlink != 0 {
			mt = "-"
		}
		out = append(out, fmt.Sprintf("%s %v %s %s", rel, fi.Mode(), mt, what))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// makeTree writes a tree with odd names, modes, a symlink, an empty
// directory, a hard link and a read-only directory.
func makeTree(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "sub dir", "deeper"), 0o755))
	must(os.Mkdir(filepath.Join(root, "empty"), 0o700))
	must(os.WriteFile(filepath.Join(root, "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "sub dir", "it's \"quoted\"\nand newlined"), bytes.Repeat([]byte("x"), 100_000), 0o640))
	must(os.WriteFile(filepath.Join(root, "sub dir", "deeper", "-dash"), []byte("dash"), 0o600))
	must(os.Symlink("../run.sh", filepath.Join(root, "sub dir", "link")))
	must(os.Link(filepath.Join(root, "run.sh"), filepath.Join(root, "hard")))
	must(os.Mkdir(filepath.Join(root, "ro"), 0o755))
	must(os.WriteFile(filepath.Join(root, "ro", "f"), []byte("f"), 0o444))
	must(os.Chmod(filepath.Join(root, "ro"), 0o555))
	t.Cleanup(func() { os.Chmod(filepath.Join(root, "ro"), 0o755) })
	old := time.Date(2023, 1, 2, 3, 4, 5, 678900000, time.UTC)
	for _, p := range []string{"run.sh", "sub dir/deeper/-dash", "ro/f", "sub dir/deeper", "empty", "ro", "sub dir", "."} {
		must(os.Chtimes(filepath.Join(root, p), old, old))
	}
}

func TestScriptsRoundTrip(t *testing.T) {
	requireShellTools(t)
	root := t.TempDir()
	src := filepath.Join(root, "src", "proj")
	makeTree(t, src)
	single := filepath.Join(root, "src", "single file")
	os.WriteFile(single, []byte("one"), 0o600)
	guest := filepath.Join(root, "guest dir")
	os.Mkdir(guest, 0o755)

	// Host to "guest": the Sender's archive into the receive script.
	srcs, err := ResolveLocal([]string{src, single}, true)
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	var sent Totals
	var sendErr error
	go func() {
		sent, sendErr = (&Sender{}).WriteArchive(pw, srcs)
		pw.CloseWithError(sendErr)
	}()
	_, stderr, code := runScript(t, ReceiveCommand(guest, srcs), pr)
	if code != 0 || sendErr != nil {
		t.Fatalf("receive script: exit %d, send error %v: %s", code, sendErr, stderr)
	}
	if want := (Totals{Files: 6, Dirs: 5, Links: 1, Bytes: 100_000 + 18 + 4 + 1 + 3}); sent != want {
		t.Errorf("sent %+v, want %+v", sent, want)
	}
	if got, want := describe(t, filepath.Join(guest, "proj")), describe(t, src); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tree received by the script:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := describe(t, filepath.Join(guest, "single file")); len(got) != 1 || !strings.Contains(got[0], "-rw-------") {
		t.Errorf("single file received as %q", got)
	}
	if left, _ := filepath.Glob(filepath.Join(guest, ".banger-cp*")); len(left) != 0 {
		t.Errorf("receive script left %q", left)
	}

	// "Guest" to host: the send script's stream into a Receiver.
	out, stderr, code := runScript(t, SendCommand([]string{filepath.Join(guest, "proj"), filepath.Join(guest, "single file")}, true), nil)
	if code != 0 {
		t.Fatalf("send script: exit %d: %s", code, stderr)
	}
	br := bufio.NewReader(bytes.NewReader(out))
	total, err := ReadHeader(br)
	if err != nil {
		t.Fatal(err)
	}
	if total < 100_000 {
		t.Errorf("send script's total = %d, want at least the file sizes", total)
	}
	back := filepath.Join(root, "back")
	os.Mkdir(back, 0o755)
	stage, _ := os.MkdirTemp(back, ".banger-cp-")
	r := &Receiver{Stage: stage, Dest: Dest{Path: back, Into: true}, Names: []string{"proj", "single file"}, Recursive: true}
	if err := r.Extract(tar.NewReader(br)); err != nil {
		t.Fatalf("extracting the send script's archive: %v", err)
	}
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(stage)
	t.Cleanup(func() {
		os.Chmod(filepath.Join(back, "proj", "ro"), 0o755)
		os.Chmod(filepath.Join(guest, "proj", "ro"), 0o755)
	})
	if got, want := describe(t, filepath.Join(back, "proj")), describe(t, src); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tree after the round trip:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	a, _ := os.Stat(filepath.Join(back, "proj", "run.sh"))
	h, _ := os.Stat(filepath.Join(back, "proj", "hard"))
	if !os.SameFile(a, h) {
		t.Errorf("hard link lost in the round trip")
	}
}

func TestReceiveScriptRefuses(t *testing.T) {
	requireShellTools(t)
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "d"), 0o755)
	os.Mkdir(filepath.Join(root, "d", "sub"), 0o755)
	os.WriteFile(filepath.Join(root, "f"), []byte("keep"), 0o644)
	file := []Source{{Name: "sub", IsDir: false}}
	tree := []Source{{Name: "f", IsDir: true}}
	two := []Source{{Name: "a"}, {Name: "b"}}
	j := func(p string) string { return filepath.Join(root, p) }
	tests := []struct {
		name string
		dest string
		srcs []Source
		want string
	}{
		{"missing parent", j("nodir/x"), []Source{{Name: "x"}}, "nodir: no such directory"},
		{"missing directory", j("nodir") + "/", []Source{{Name: "x"}}, "nodir/: no such directory"},
		{"several into a file", j("f"), two, "is not a directory: copying several sources"},
		{"file over a directory", j("d"), file, "d/sub is a directory: cannot overwrite it with a file"},
		{"directory over a file", root, tree, "f exists and is not a directory"},
	}
	for _, tt := range tests {
		_, stderr, code := runScript(t, ReceiveCommand(tt.dest, tt.srcs), strings.NewReader(""))
		if code != ScriptExit || !strings.Contains(string(stderr), ErrorPrefix) || !strings.Contains(string(stderr), tt.want) {
			t.Errorf("%s: exit %d, stderr %q, want exit %d and %q", tt.name, code, stderr, ScriptExit, tt.want)
		}
	}
	// A stream cut before the done marker commits nothing, even when it
	// stops at an entry boundary (tar takes that for a clean end).
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "0", Typeflag: tar.TypeReg, Size: 4, Mode: 0o644})
	tw.Write([]byte("half"))
	tw.Flush()
	_, stderr, code := runScript(t, ReceiveCommand(j("d"), []Source{{Name: "x"}}), &b)
	if code != ScriptExit || !strings.Contains(string(stderr), "ended early") {
		t.Errorf("truncated stream: exit %d, stderr %q, want the stream to be refused", code, stderr)
	}
	if got := describe(t, root); len(got) != 4 {
		t.Errorf("after refusals the tree is %q, want it unchanged", got)
	}
	if b, _ := os.ReadFile(j("f")); string(b) != "keep" {
		t.Errorf("f = %q after refusals", b)
	}
}

func TestSendScriptRefuses(t *testing.T) {
	requireShellTools(t)
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "d"), 0o755)
	os.Symlink("nowhere", filepath.Join(root, "dangling"))
	j := func(p string) string { return filepath.Join(root, p) }
	tests := []struct {
		name      string
		srcs      []string
		recursive bool
		want      string
	}{
		{"missing", []string{j("nothere")}, false, "nothere: no such file or directory"},
		{"missing among others", []string{j("d"), j("nothere")}, true, "nothere: no such file or directory"},
		{"directory without -r", []string{j("d")}, false, "is a directory: use -r"},
		{"dangling symlink", []string{j("dangling")}, false, "symlink to a missing file"},
		{"root", []string{"/"}, true, "copying the root directory is not supported"},
		{"device", []string{"/dev/null"}, false, "not a regular file or a directory"},
	}
	for _, tt := range tests {
		out, stderr, code := runScript(t, SendCommand(tt.srcs, tt.recursive), nil)
		if code != ScriptExit || !strings.Contains(string(stderr), tt.want) || len(out) != 0 {
			t.Errorf("%s: exit %d, %d bytes out, stderr %q, want exit %d, no output and %q", tt.name, code, len(out), stderr, ScriptExit, tt.want)
		}
	}
}

func TestReadHeader(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"banger-cp 1 0\n", 0, false},
		{"banger-cp 1 104857600\nrest", 104857600, false},
		{"banger-cp 2 5\n", 0, true},
		{"banger-cp 1 -5\n", 0, true},
		{"banger-cp 1 5", 0, true},
		{"hello\n", 0, true},
		{strings.Repeat("x", 100) + "\n", 0, true},
		{"", 0, true},
	}
	for _, tt := range tests {
		got, err := ReadHeader(bufio.NewReader(strings.NewReader(tt.in)))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ReadHeader(%q) = %d, %v, want %d (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
