package rootfs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/runner/runnertest"
)

func TestNpmToolPins(t *testing.T) {
	tests := []struct {
		bin, spec, cacheName, member string
	}{
		{"mise", "@jdxcode/mise-linux-x64@" + MiseVersion, "jdxcode-mise-linux-x64-" + MiseVersion, "package/bin/mise"},
		{"opencode", "opencode-linux-x64-baseline@" + OpencodeVersion, "opencode-linux-x64-baseline-" + OpencodeVersion, "package/bin/opencode"},
	}
	tools := npmTools()
	if len(tools) != len(tests) {
		t.Fatalf("npmTools() has %d tools, want %d", len(tools), len(tests))
	}
	for i, tt := range tests {
		got := tools[i]
		if got.Bin != tt.bin || got.Spec() != tt.spec || got.cacheName() != tt.cacheName || got.member() != tt.member {
			t.Errorf("tool %d = %s %s %s %s, want %s %s %s %s", i,
				got.Bin, got.Spec(), got.cacheName(), got.member(), tt.bin, tt.spec, tt.cacheName, tt.member)
		}
		sum, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(got.Integrity, "sha512-"))
		if !strings.HasPrefix(got.Integrity, "sha512-") || err != nil || len(sum) != sha512.Size {
			t.Errorf("%s integrity %q is not an npm sha512 integrity", got.Bin, got.Integrity)
		}
	}
	if got := toolsFor(KindMinimal); len(got) != 0 {
		t.Errorf("toolsFor(minimal) = %v, want none", got)
	}
	if got := toolsFor(KindDocker); len(got) != len(tests) {
		t.Errorf("toolsFor(docker) has %d tools, want %d", len(got), len(tests))
	}
	bumped := npmTools()
	bumped[1].Version = "0.0.1"
	if toolsKey(bumped) == toolsKey(npmTools()) {
		t.Errorf("toolsKey does not change with a version")
	}
}

type tarEntry struct {
	name, body, link string
	typ              byte
}

// makeTgz writes a gzipped tar of entries, as npm pack does.
func makeTgz(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link}
		switch e.typ {
		case tar.TypeReg:
			h.Size = int64(len(e.body))
		case tar.TypeDir:
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func integrityOf(b []byte) string {
	s := sha512.Sum512(b)
	return "sha512-" + base64.StdEncoding.EncodeToString(s[:])
}

func TestExtractMember(t *testing.T) {
	pkg := []tarEntry{
		{name: "package/package.json", body: `{"name":"x"}`, typ: tar.TypeReg},
		{name: "package/bin/", typ: tar.TypeDir},
		{name: "package/bin/mise", body: "\x7fELF mise", typ: tar.TypeReg},
		{name: "./package/bin/opencode", body: "\x7fELF opencode", typ: tar.TypeReg},
		{name: "package/bin/link", link: "/etc/passwd", typ: tar.TypeSymlink},
	}
	tests := []struct {
		name    string
		tgz     []byte
		member  string
		want    string
		wantErr string
	}{
		{"binary", makeTgz(t, pkg), "package/bin/mise", "\x7fELF mise", ""},
		{"leading dot slash", makeTgz(t, pkg), "package/bin/opencode", "\x7fELF opencode", ""},
		{"missing", makeTgz(t, pkg), "package/bin/node", "", "no such file"},
		{"symlink", makeTgz(t, pkg), "package/bin/link", "", "not a regular file"},
		{"not gzip", []byte("not a tarball"), "package/bin/mise", "", "gzip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tgz := filepath.Join(dir, "p.tgz")
			if err := os.WriteFile(tgz, tt.tgz, 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out")
			err := extractMember(tgz, tt.member, out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("extractMember = %v, want an error with %q", err, tt.wantErr)
				}
				if _, err := os.Stat(out); err == nil {
					t.Errorf("extractMember left %s after failing", out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Errorf("extracted %q, want %q", b, tt.want)
			}
			if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o755 {
				t.Errorf("extracted mode %v, want 0755", fi.Mode().Perm())
			}
		})
	}
}

func TestCheckIntegrity(t *testing.T) {
	data := []byte("tarball")
	tests := []struct {
		name, integrity, wantErr string
	}{
		{"match", integrityOf(data), ""},
		{"mismatch", integrityOf([]byte("other")), "registry served another tarball"},
		{"not sha512", "sha1-abc", "not sha512"},
	}
	f := filepath.Join(t.TempDir(), "p.tgz")
	if err := os.WriteFile(f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkIntegrity(f, tt.integrity)
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("checkIntegrity = %v, want error %q", err, tt.wantErr)
			}
		})
	}
}

// fakeNpm answers 'npm pack SPEC --pack-destination DIR' with a tarball.
func fakeNpm(tgz []byte) *runnertest.Runner {
	r := &runnertest.Runner{}
	r.On("", func(argv []string) ([]byte, error) {
		name, args := argv[0], argv[1:]
		if filepath.Base(name) != "npm" || len(args) < 4 || args[0] != "pack" || args[2] != "--pack-destination" {
			return nil, errors.New("unexpected command")
		}
		for i, a := range args[:len(args)-1] {
			if a == "--cache" { // npm fills its cache as it fetches
				if err := os.MkdirAll(filepath.Join(args[i+1], "_cacache"), 0o755); err != nil {
					return nil, err
				}
			}
		}
		return nil, os.WriteFile(filepath.Join(args[3], "pkg-1.0.0.tgz"), tgz, 0o644)
	})
	return r
}

func TestFetchTool(t *testing.T) {
	// fetchTool looks npm up in PATH; the fake runner answers its calls.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "npm"), []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	tgz := makeTgz(t, []tarEntry{{name: "package/bin/tool", body: "tool binary", typ: tar.TypeReg}})
	tests := []struct {
		name      string
		integrity string
		wantErr   string
	}{
		{"good", integrityOf(tgz), ""},
		{"tampered", integrityOf([]byte("x")), "registry served another tarball"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tool := npmTool{Bin: "tool", Package: "@scope/tool-linux-x64", Version: "1.0.0", Integrity: tt.integrity}
			npm := fakeNpm(tgz)
			got, err := fetchTool(context.Background(), npm, dir, tool, slog.Default())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("fetchTool = %v, want an error with %q", err, tt.wantErr)
				}
				if ents, _ := os.ReadDir(dir); len(ents) != 0 {
					t.Errorf("fetchTool left %v in the cache after failing", ents)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(dir, "scope-tool-linux-x64-1.0.0", "tool"); got != want {
				t.Errorf("fetchTool = %s, want %s", got, want)
			}
			if b, _ := os.ReadFile(got); string(b) != "tool binary" {
				t.Errorf("cached binary holds %q", b)
			}
			if ents, _ := os.ReadDir(filepath.Dir(got)); len(ents) != 1 {
				t.Errorf("cache directory holds %v, want the binary alone", ents)
			}
			// A second fetch is a cache hit: no npm call.
			if _, err := fetchTool(context.Background(), npm, dir, tool, slog.Default()); err != nil {
				t.Fatal(err)
			}
			if n := len(npm.Calls()); n != 1 {
				t.Errorf("npm ran %d times, want 1", n)
			}
		})
	}
}

func TestFetchToolWithoutNpm(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	tool := npmTools()[0]
	_, err := fetchTool(context.Background(), fakeNpm(nil), t.TempDir(), tool, slog.Default())
	if err == nil || !strings.Contains(err.Error(), "apt-get install npm") {
		t.Errorf("fetchTool without npm = %v, want it to say apt-get install npm", err)
	}
}
