package dist

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/bundle/bundletest"
)

// testInstaller returns an installer whose work-seed builder writes the key.
func testInstaller(client *http.Client) (*installer, *[][]byte) {
	var keys [][]byte
	return &installer{
		client: client,
		workSeed: func(ctx context.Context, key []byte, out string) error {
			keys = append(keys, key)
			return os.WriteFile(out, append([]byte("seed:"), key...), 0o644)
		},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, &keys
}

// snapshot maps every path under dir to its content (or link target).
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			m[rel] = "-> " + target
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			info, _ := d.Info()
			m[rel] = fmt.Sprintf("%v %x", info.Mode().Perm(), sha256.Sum256(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDistInstallRoundTrip(t *testing.T) {
	src := bundletest.Fake(t)
	dist := filepath.Join(t.TempDir(), "dist")
	manifest, err := Dist(context.Background(), src, dist)
	if err != nil {
		t.Fatalf("Dist: %v", err)
	}
	if want := filepath.Join(dist, ManifestFile); manifest != want {
		t.Errorf("Dist() = %s, want %s", manifest, want)
	}
	m, err := ReadManifest(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if m.Bundle.Archive != "banger-runtime-6.1.0-99-cloud-amd64.tar.gz" || m.Bundle.Version != "6.1.0-99-cloud-amd64" {
		t.Errorf("manifest = %+v, want archive banger-runtime-6.1.0-99-cloud-amd64.tar.gz, version 6.1.0-99-cloud-amd64", m.Bundle)
	}
	names := tarNames(t, filepath.Join(dist, m.Bundle.Archive))
	for _, n := range names {
		if strings.Contains(n, bundle.FileSSHKey) {
			t.Errorf("archive holds %s, want no key pair", n)
		}
		if !strings.HasPrefix(n, "banger-runtime-6.1.0-99-cloud-amd64/") {
			t.Errorf("archive entry %s, want everything under banger-runtime-6.1.0-99-cloud-amd64/", n)
		}
	}

	out := filepath.Join(t.TempDir(), "installed", "runtime")
	in, keys := testInstaller(nil)
	if err := in.install(context.Background(), manifest, out); err != nil {
		t.Fatalf("install: %v", err)
	}
	b, err := bundle.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(); err != nil {
		t.Errorf("Verify() of installed bundle = %v, want nil", err)
	}
	got, want := snapshot(t, out), snapshot(t, src)
	for rel, w := range want {
		switch {
		case rel == bundle.FileName || strings.HasPrefix(rel, bundle.FileSSHKey) || rel == bundle.FileWorkSeed || rel == bundle.SumCacheFile:
			// Personalised by install; checked below.
		case got[rel] != w:
			t.Errorf("installed %s = %q, want %q", rel, got[rel], w)
		}
	}
	pub := bundletest.ReadFile(t, filepath.Join(out, bundle.FileSSHKey+".pub"))
	if pub == bundletest.ReadFile(t, filepath.Join(src, bundle.FileSSHKey+".pub")) {
		t.Errorf("installed key equals the source bundle's, want a new one")
	}
	if seed := bundletest.ReadFile(t, filepath.Join(out, bundle.FileWorkSeed)); seed != "seed:"+pub {
		t.Errorf("installed work-seed = %q, want it rebuilt for the new key %q", seed, pub)
	}
	if len(*keys) != 1 {
		t.Errorf("work-seed rebuilt %d times, want 1", len(*keys))
	}
	bundletest.AssertNoTemps(t, out)

	// Reinstalling keeps the installed key, so existing VMs stay reachable.
	if err := in.install(context.Background(), manifest, out); err != nil {
		t.Fatalf("second install: %v", err)
	}
	if again := bundletest.ReadFile(t, filepath.Join(out, bundle.FileSSHKey+".pub")); again != pub {
		t.Errorf("reinstall changed the key to %q, want %q kept", again, pub)
	}
	if b, err := bundle.Load(out); err != nil || b.Verify() != nil {
		t.Errorf("reinstalled bundle: bundle.Load/Verify failed: %v", err)
	}
	bundletest.AssertNoTemps(t, out)
}

func tarNames(t *testing.T, archive string) []string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	return names
}

// installFixture makes a dist of a fake bundle and an installed bundle at out.
func installFixture(t *testing.T) (manifest, out string) {
	t.Helper()
	src := bundletest.Fake(t)
	manifest, err := Dist(context.Background(), src, filepath.Join(t.TempDir(), "dist"))
	if err != nil {
		t.Fatal(err)
	}
	out = filepath.Join(t.TempDir(), "runtime")
	in, _ := testInstaller(nil)
	if err := in.install(context.Background(), manifest, out); err != nil {
		t.Fatal(err)
	}
	return manifest, out
}

func writeManifest(t *testing.T, dir, archive, sum string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "m-*.toml")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	p := f.Name()
	bundletest.WriteFile(t, p, fmt.Sprintf("[bundle]\narchive = %q\nsha256 = %q\nversion = \"test\"\n", archive, sum))
	return p
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestInstallFailuresLeaveOutUnchanged(t *testing.T) {
	manifest, out := installFixture(t)
	m, err := ReadManifest(manifest)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(filepath.Dir(manifest), m.Bundle.Archive)
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	truncated := filepath.Join(work, "truncated.tar.gz")
	if err := os.WriteFile(truncated, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	noTrailer := filepath.Join(work, "notrailer.tar.gz")
	if err := os.WriteFile(noTrailer, data[:len(data)-4], 0o644); err != nil {
		t.Fatal(err)
	}
	wrong := strings.Repeat("ab", 32)

	tests := []struct {
		name     string
		manifest string
		want     string
	}{
		{"wrong hash", writeManifest(t, work, archive, wrong), fmt.Sprintf("archive %s: sha256 is %s, manifest says %s", archive, m.Bundle.SHA256, wrong)},
		{"truncated gzip", writeManifest(t, work, "truncated.tar.gz", fileSHA(t, truncated)), "unpacking archive truncated.tar.gz"},
		{"gzip without trailer", writeManifest(t, work, "notrailer.tar.gz", fileSHA(t, noTrailer)), "unpacking archive notrailer.tar.gz"},
		{"missing archive", writeManifest(t, work, "nope.tar.gz", wrong), "check the manifest's archive path"},
		{"template", filepath.Join("..", "..", "..", "config", "runtime-bundle.toml"), "this is the template"},
	}
	for _, tt := range tests {
		before := snapshot(t, out)
		in, _ := testInstaller(nil)
		err := in.install(context.Background(), tt.manifest, out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("install(%s) = %v, want error containing %q", tt.name, err, tt.want)
		}
		after := snapshot(t, out)
		if fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("install(%s) changed %s, want it untouched", tt.name, out)
		}
		bundletest.AssertNoTemps(t, out)
	}
}

func TestInstallHTTP(t *testing.T) {
	src := bundletest.Fake(t)
	dist := filepath.Join(t.TempDir(), "dist")
	manifest, err := Dist(context.Background(), src, dist)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := ReadManifest(manifest)
	srv := httptest.NewServer(http.FileServer(http.Dir(dist)))
	defer srv.Close()

	work := t.TempDir()
	tests := []struct {
		name, url, want string
	}{
		{"ok", srv.URL + "/" + m.Bundle.Archive, ""},
		{"not found", srv.URL + "/missing.tar.gz", "404 Not Found"},
	}
	for _, tt := range tests {
		out := filepath.Join(t.TempDir(), "runtime")
		in, _ := testInstaller(srv.Client())
		err := in.install(context.Background(), writeManifest(t, work, tt.url, m.Bundle.SHA256), out)
		if tt.want == "" {
			if err != nil {
				t.Errorf("install(%s) = %v, want nil", tt.name, err)
			} else if b, err := bundle.Load(out); err != nil || b.Verify() != nil {
				t.Errorf("install(%s): installed bundle does not verify: %v", tt.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("install(%s) = %v, want error containing %q", tt.name, err, tt.want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("install(%s) failed but created %s", tt.name, out)
		}
	}
}

func TestInstallFirecracker(t *testing.T) {
	src := bundletest.Fake(t)
	bundletest.WriteFile(t, filepath.Join(src, "bin", "firecracker"), "firecracker binary")
	// The fake bundle does not list bin/firecracker; dist packs artifacts only,
	// so add it as one.
	b, err := bundle.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := bundle.HashPath(b.Path("bin/firecracker"))
	b.SetArtifact("bin/firecracker", sum)
	if err := b.Save(); err != nil {
		t.Fatal(err)
	}
	dist := t.TempDir()
	manifest, err := Dist(context.Background(), src, dist)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := ReadManifest(manifest)
	p := filepath.Join(dist, "fc.toml")
	bundletest.WriteFile(t, p, fmt.Sprintf("[bundle]\narchive = %q\nsha256 = %q\nversion = \"v\"\nfirecracker = \"bin/firecracker\"\n", m.Bundle.Archive, m.Bundle.SHA256))
	out := filepath.Join(t.TempDir(), "runtime")
	in, _ := testInstaller(nil)
	if err := in.install(context.Background(), p, out); err != nil {
		t.Fatal(err)
	}
	got, err := bundle.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(got.Path(got.Firecracker))
	if got.Firecracker != "bin/firecracker" || err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("installed firecracker = %q (%v, %v), want bin/firecracker, mode 0755", got.Firecracker, fi, err)
	}
	if err := got.Verify(); err != nil {
		t.Errorf("Verify() = %v, want nil", err)
	}
}

// tarEntry describes one entry of a hand-made archive.
type tarEntry struct {
	name, link, body string
	typ              byte
}

func makeTarGz(t *testing.T, entries []tarEntry) string {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	zw.Close()
	p := filepath.Join(t.TempDir(), "a.tar.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExtractTarGz(t *testing.T) {
	tests := []struct {
		name    string
		entries []tarEntry
		want    string // empty: success
	}{
		{"plain", []tarEntry{{name: "b/", typ: tar.TypeDir}, {name: "b/x", body: "x", typ: tar.TypeReg}, {name: "b/l", link: "x", typ: tar.TypeSymlink}}, ""},
		{"dotdot", []tarEntry{{name: "../evil", body: "x", typ: tar.TypeReg}}, "leaves the archive's directory"},
		{"inner dotdot", []tarEntry{{name: "a/../../evil", body: "x", typ: tar.TypeReg}}, "leaves the archive's directory"},
		{"absolute", []tarEntry{{name: "/tmp/evil", body: "x", typ: tar.TypeReg}}, "leaves the archive's directory"},
		{"absolute link", []tarEntry{{name: "l", link: "/etc", typ: tar.TypeSymlink}}, "may leave its directory"},
		{"escaping link", []tarEntry{{name: "a/l", link: "../../etc", typ: tar.TypeSymlink}}, "may leave its directory"},
		{"write through link", []tarEntry{{name: "d", typ: tar.TypeDir}, {name: "l", link: "d", typ: tar.TypeSymlink}, {name: "l/x", body: "x", typ: tar.TypeReg}}, "goes through symlink"},
		{"hard link", []tarEntry{{name: "x", body: "x", typ: tar.TypeReg}, {name: "h", link: "x", typ: tar.TypeLink}}, "hard links and devices are refused"},
		{"duplicate", []tarEntry{{name: "x", body: "x", typ: tar.TypeReg}, {name: "x", body: "y", typ: tar.TypeReg}}, "file exists"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		err := extractTarGz(makeTarGz(t, tt.entries), dir)
		if tt.want == "" {
			if err != nil {
				t.Errorf("extractTarGz(%s) = %v, want nil", tt.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("extractTarGz(%s) = %v, want error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestReadManifest(t *testing.T) {
	dir := t.TempDir()
	good := strings.Repeat("0a", 32)
	tests := []struct {
		name, body, want string
	}{
		{"ok", fmt.Sprintf("[bundle]\narchive = \"a.tar.gz\"\nsha256 = %q\nversion = \"1\"\n", good), ""},
		{"unknown key", fmt.Sprintf("[bundle]\narchive = \"a.tar.gz\"\nsha256 = %q\nsha = \"x\"\n", good), `unknown key "bundle.sha"`},
		{"no archive", fmt.Sprintf("[bundle]\nsha256 = %q\n", good), "archive is empty"},
		{"short sha", "[bundle]\narchive = \"a\"\nsha256 = \"abc\"\n", "not 64 lowercase hex digits"},
		{"placeholder", "[bundle]\narchive = \"REPLACE-ME\"\nsha256 = \"REPLACE-ME\"\n", "this is the template"},
		{"escaping firecracker", fmt.Sprintf("[bundle]\narchive = \"a\"\nsha256 = %q\nfirecracker = \"../fc\"\n", good), "not a relative path inside the archive"},
	}
	for _, tt := range tests {
		p := filepath.Join(dir, tt.name+".toml")
		bundletest.WriteFile(t, p, tt.body)
		_, err := ReadManifest(p)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("ReadManifest(%s) = %v, want %q", tt.name, err, tt.want)
		}
	}
	// The checked-in template parses but is refused as the template.
	if _, err := ReadManifest("../../../config/runtime-bundle.toml"); err == nil || !strings.Contains(err.Error(), "this is the template") {
		t.Errorf("ReadManifest(config/runtime-bundle.toml) = %v, want the template error", err)
	}
}

func TestDistPathsSorted(t *testing.T) {
	src := bundletest.Fake(t)
	b, err := bundle.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	paths, err := distPaths(b)
	if err != nil {
		t.Fatal(err)
	}
	if paths[0] != bundle.FileName {
		t.Errorf("distPaths()[0] = %s, want %s first", paths[0], bundle.FileName)
	}
	mods := []string{}
	for _, p := range paths {
		if strings.HasPrefix(p, "modules/") {
			mods = append(mods, p)
		}
	}
	if !sort.StringsAreSorted(mods) || len(mods) != 4 {
		t.Errorf("distPaths() modules = %v, want the 4 tree entries in order", mods)
	}
}
