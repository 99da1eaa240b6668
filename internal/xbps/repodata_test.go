package xbps

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/xbps/voidtest"
)

const sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// indexXML is a hand-written index.plist in the format xbps-rindex writes.
const indexXML = `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple Computer//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>bash</key>
	<dict>
		<key>alternatives</key>
		<dict>
			<key>sh</key>
			<array>
				<string>/usr/bin/sh:bash</string>
			</array>
		</dict>
		<key>architecture</key>
		<string>x86_64</string>
		<key>build-date</key>
		<string>2025-01-01 00:00 UTC</string>
		<key>filename-sha256</key>
		<string>` + sha + `</string>
		<key>filename-size</key>
		<integer>1234</integer>
		<key>installed_size</key>
		<integer>9000</integer>
		<key>pkgver</key>
		<string>bash-5.2.32_1</string>
		<key>run_depends</key>
		<array>
			<string>glibc>=2.38_1</string>
			<string>ncurses-libs>=6.0_1</string>
		</array>
		<key>shlib-requires</key>
		<array>
			<string>libc.so.6</string>
		</array>
		<key>short_desc</key>
		<string>GNU Bourne Again Shell</string>
	</dict>
	<key>nawk</key>
	<dict>
		<key>architecture</key>
		<string>x86_64</string>
		<key>filename-sha256</key>
		<string>` + sha + `</string>
		<key>filename-size</key>
		<integer>99</integer>
		<key>pkgver</key>
		<string>nawk-20240728_1</string>
		<key>provides</key>
		<array>
			<string>awk-0_1</string>
		</array>
	</dict>
</dict>
</plist>
`

func TestParseIndex(t *testing.T) {
	idx, err := ParseIndex([]byte(indexXML))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(idx.Names(), ","); got != "bash,nawk" {
		t.Fatalf("Names() = %s, want bash,nawk", got)
	}
	b := idx.Packages["bash"]
	for _, c := range []struct{ what, got, want string }{
		{"Name", b.Name, "bash"},
		{"Pkgver", b.Pkgver, "bash-5.2.32_1"},
		{"Version()", b.Version(), "5.2.32_1"},
		{"Filename()", b.Filename(), "bash-5.2.32_1.x86_64.xbps"},
		{"RunDepends", strings.Join(b.RunDepends, " "), "glibc>=2.38_1 ncurses-libs>=6.0_1"},
		{"SHA256", b.SHA256, sha},
		{"Alternatives", strings.Join(b.Alternatives["sh"], " "), "/usr/bin/sh:bash"},
		{"ShlibRequires", strings.Join(b.ShlibRequires, " "), "libc.so.6"},
		{"ShortDesc", b.ShortDesc, "GNU Bourne Again Shell"},
		{"nawk Provides", strings.Join(idx.Packages["nawk"].Provides, " "), "awk-0_1"},
	} {
		if c.got != c.want {
			t.Errorf("bash %s = %q, want %q", c.what, c.got, c.want)
		}
	}
	if b.Size != 1234 || b.InstalledSize != 9000 {
		t.Errorf("bash sizes = %d, %d, want 1234, 9000", b.Size, b.InstalledSize)
	}
}

func TestParseIndexRefuses(t *testing.T) {
	entry := func(key, body string) string {
		return `<?xml version="1.0"?><plist version="1.0"><dict><key>` + key + `</key><dict>` + body + `</dict></dict></plist>`
	}
	good := `<key>architecture</key><string>x86_64</string><key>filename-sha256</key><string>` + sha + `</string><key>filename-size</key><integer>1</integer>`
	for _, tc := range []struct {
		name, xml, want string
	}{
		{"not a plist", "hello", "parsing index.plist"},
		{"pkgver of another package", entry("foo", good+`<key>pkgver</key><string>bar-1.0_1</string>`), "names another package"},
		{"no pkgver", entry("foo", good), "invalid pkgver"},
		{"path in pkgver", entry("foo", good+`<key>pkgver</key><string>foo-1.0/../../x_1</string>`), "invalid pkgver"},
		{"bad name", entry("../foo", good+`<key>pkgver</key><string>../foo-1.0_1</string>`), "invalid package name"},
		{"bad sha", entry("foo", strings.Replace(good, sha, "xyz", 1)+`<key>pkgver</key><string>foo-1.0_1</string>`), "invalid filename-sha256"},
		{"bad arch", entry("foo", strings.Replace(good, "x86_64", "x86/64", 1)+`<key>pkgver</key><string>foo-1.0_1</string>`), "invalid architecture"},
		{"no size", entry("foo", strings.Replace(good, "<integer>1</integer>", "<integer>0</integer>", 1)+`<key>pkgver</key><string>foo-1.0_1</string>`), "invalid filename-size"},
		{"bad provides", entry("foo", good+`<key>pkgver</key><string>foo-1.0_1</string><key>provides</key><array><string>awk</string></array>`), "invalid provides"},
		{"wrong type", entry("foo", good+`<key>pkgver</key><integer>3</integer>`), "parsing index.plist"},
	} {
		_, err := ParseIndex([]byte(tc.xml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseIndex(%s) = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestParseRepodata(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "x86_64-repodata")
	meta := `<?xml version="1.0"?><plist version="1.0"><dict><key>signature-by</key><string>Void Linux</string></dict></plist>`
	if err := voidtest.WriteRepodataMembers(file, []voidtest.Member{{Name: "index.plist", Data: []byte(indexXML)}, {Name: "index-meta.plist", Data: []byte(meta)}, {Name: "stage.plist"}}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	idx, err := ParseRepodata(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Packages) != 2 || !idx.Signed {
		t.Errorf("ParseRepodata() = %d packages, signed %v, want 2, true", len(idx.Packages), idx.Signed)
	}

	for _, tc := range []struct {
		name    string
		members []voidtest.Member
		want    string
	}{
		{"empty", nil, "no index.plist"},
		{"unexpected member", []voidtest.Member{{Name: "index.plist", Data: []byte(indexXML)}, {Name: "../evil"}}, "unexpected member"},
		{"meta first", []voidtest.Member{{Name: "index-meta.plist"}, {Name: "index.plist", Data: []byte(indexXML)}}, "before index.plist"},
		{"twice", []voidtest.Member{{Name: "index.plist", Data: []byte(indexXML)}, {Name: "index.plist", Data: []byte(indexXML)}}, "twice"},
		{"bad index", []voidtest.Member{{Name: "index.plist", Data: []byte("<plist")}}, "parsing index.plist"},
	} {
		if err := voidtest.WriteRepodataMembers(file, tc.members); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(file)
		if _, err := ParseRepodata(bytes.NewReader(b)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseRepodata(%s) = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := ParseRepodata(strings.NewReader("\xfd7zXZ\x00rest")); err == nil || !strings.Contains(err.Error(), "xz") {
		t.Errorf("ParseRepodata(xz) = %v, want an xz error", err)
	}
}
