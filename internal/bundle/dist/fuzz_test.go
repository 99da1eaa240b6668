package dist

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzReadManifest: whatever a manifest holds, ReadManifest refuses it with
// an error naming the file, or returns a manifest with an archive, a sha256
// of 64 lowercase hex digits, no placeholder and a firecracker path inside
// the archive, which written back as TOML reads as the same manifest.
func FuzzReadManifest(f *testing.F) {
	good := strings.Repeat("0a", 32)
	for _, s := range []string{
		fmt.Sprintf("[bundle]\narchive = \"a.tar.gz\"\nsha256 = %q\nversion = \"1\"\n", good),
		fmt.Sprintf("[bundle]\narchive = \"a.tar.gz\"\nsha256 = %q\nsha = \"x\"\n", good),
		fmt.Sprintf("[bundle]\nsha256 = %q\n", good),
		"[bundle]\narchive = \"a\"\nsha256 = \"abc\"\n",
		"[bundle]\narchive = \"REPLACE-ME\"\nsha256 = \"REPLACE-ME\"\n",
		fmt.Sprintf("[bundle]\narchive = \"a\"\nsha256 = %q\nfirecracker = \"../fc\"\n", good),
		fmt.Sprintf("[bundle]\narchive = \"https://example.invalid/a.tar.gz\"\nsha256 = %q\nversion = \"6.1.0-28-cloud-amd64\"\nfirecracker = \"bin/firecracker\"\n", good),
		fmt.Sprintf("bundle.archive = \"/abs/a.tar.gz\"\nbundle.sha256 = %q\n", good),
		fmt.Sprintf("[bundle]\narchive = \"a\"\nsha256 = %q\n[other]\n", strings.ToUpper(good)),
		"", "[bundle]\n",
	} {
		f.Add([]byte(s))
	}
	if tmpl, err := os.ReadFile("../../../config/runtime-bundle.toml"); err == nil {
		f.Add(tmpl)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, ManifestFile)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := ReadManifest(path)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "reading runtime manifest "+path+": ") {
				t.Fatalf("ReadManifest(%q) error %q does not name the manifest", data, err)
			}
			return
		}
		b := m.Bundle
		if b.Archive == "" || !hexSHA256.MatchString(b.SHA256) || b.Firecracker != "" && !filepath.IsLocal(b.Firecracker) {
			t.Fatalf("ReadManifest(%q) = %+v, want an archive, a hex sha256 and a local firecracker path", data, b)
		}
		for _, v := range []string{b.Archive, b.SHA256, b.Version, b.Firecracker} {
			if strings.Contains(v, templateMarker) {
				t.Fatalf("ReadManifest(%q) = %+v, which holds the template's placeholder", data, b)
			}
		}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(m); err != nil {
			t.Fatalf("encoding the manifest ReadManifest(%q) returned: %v", data, err)
		}
		again := filepath.Join(dir, "again.toml")
		if err := os.WriteFile(again, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		back, err := ReadManifest(again)
		if err != nil || !reflect.DeepEqual(back, m) {
			t.Fatalf("ReadManifest(%q) = %+v; written back as\n%s\nit reads as %+v, %v", data, m, buf.Bytes(), back, err)
		}
	})
}

// parseEntries reads the fuzz input of FuzzExtractTarGz: one entry a line,
// "TYPE NAME[ LINK]" with TYPE d (directory), f (a file holding its line
// number), l (symlink), h (hard link) or c (character device).
func parseEntries(s string) []tarEntry {
	types := map[string]byte{"d": tar.TypeDir, "f": tar.TypeReg, "l": tar.TypeSymlink, "h": tar.TypeLink, "c": tar.TypeChar}
	var entries []tarEntry
	for i, line := range strings.Split(s, "\n") {
		typ, rest, _ := strings.Cut(line, " ")
		tf, ok := types[typ]
		if !ok {
			continue
		}
		name, link, _ := strings.Cut(rest, " ")
		entries = append(entries, tarEntry{name: name, link: link, typ: tf, body: strings.Repeat("x", i)})
	}
	return entries
}

// tarGz packs entries as makeTarGz does, or returns false when tar cannot
// write them.
func tarGz(entries []tarEntry) ([]byte, bool) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if tw.WriteHeader(h) != nil {
			return nil, false
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if tw.Close() != nil || zw.Close() != nil {
		return nil, false
	}
	return buf.Bytes(), true
}

// FuzzExtractTarGz: whatever entries an archive holds, extracting it (done
// or refused) creates nothing outside its directory, and leaves inside it
// only directories, regular files and symlinks that resolve inside it.
func FuzzExtractTarGz(f *testing.F) {
	for _, s := range []string{
		"d b/\nf b/x\nl b/l x",
		"f ../evil", "f a/../../evil", "f /tmp/evil", "l l /etc", "l a/l ../../etc",
		"d d\nl l d\nf l/x", "f x\nh h x", "f x\nf x", "c dev",
		"l l .\nf l/x", "d a\nl a/up .\nd a/up/b\nf a/up/b/x", "l l a//b\nd a\nd a/b\nf l/x",
		"f ./x", "d a/./b/\nf a/b/c", "l x y\nl y x\nf x/z", "f a\\b", "l l ..x\nf ..x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		data, ok := tarGz(parseEntries(spec))
		if !ok {
			return
		}
		root := t.TempDir()
		// dest is deep enough that a path climbing out of it lands in root.
		dest, outside := filepath.Join(root, "a", "b", "dest"), filepath.Join(root, "outside")
		for _, d := range []string{dest, outside} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(outside, "sentinel"), []byte("s"), 0o644); err != nil {
			t.Fatal(err)
		}
		archive := filepath.Join(root, "a.tar.gz")
		if err := os.WriteFile(archive, data, 0o644); err != nil {
			t.Fatal(err)
		}
		err := extractTarGz(archive, dest)

		var names []string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatalf("walking %s: %v", p, err)
			}
			rel, _ := filepath.Rel(root, p)
			names = append(names, rel)
			return nil
		})
		var out []string
		for _, n := range names {
			if n != "." && n != "a.tar.gz" && n != "a" && n != "a/b" && n != "a/b/dest" && !strings.HasPrefix(n, "a/b/dest/") {
				out = append(out, n)
			}
		}
		if !slices.Equal(out, []string{"outside", "outside/sentinel"}) {
			t.Fatalf("extractTarGz(%q) = %v, and outside its directory: %q", spec, err, out)
		}
		if b, _ := os.ReadFile(filepath.Join(outside, "sentinel")); string(b) != "s" {
			t.Fatalf("extractTarGz(%q) = %v, and the file outside now holds %q", spec, err, b)
		}
		realDest, _ := filepath.EvalSymlinks(dest)
		filepath.WalkDir(dest, func(p string, d fs.DirEntry, _ error) error {
			switch mode := d.Type(); {
			case mode.IsDir(), mode.IsRegular():
			case mode&fs.ModeSymlink != 0:
				target, _ := os.Readlink(p)
				lexical := filepath.Join(filepath.Dir(p), target)
				if rel, _ := filepath.Rel(dest, lexical); rel == ".." || strings.HasPrefix(rel, "../") {
					t.Fatalf("extractTarGz(%q) = %v, and symlink %s -> %s leaves the directory", spec, err, p, target)
				}
				if real, rerr := filepath.EvalSymlinks(p); rerr == nil {
					if rel, _ := filepath.Rel(realDest, real); rel == ".." || strings.HasPrefix(rel, "../") {
						t.Fatalf("extractTarGz(%q) = %v, and symlink %s resolves to %s", spec, err, p, real)
					}
				}
			default:
				t.Fatalf("extractTarGz(%q) = %v, and made %s of type %v", spec, err, p, mode)
			}
			return nil
		})
	})
}
