package xbps

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/xbps/voidtest"
)

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func testRepo(t *testing.T) string {
	t.Helper()
	mirror := t.TempDir()
	_, err := voidtest.WriteRepo(mirror, []voidtest.Pkg{
		{Name: "glibc", Version: "2.39_1", Files: []voidtest.File{{Name: "usr/lib/libc.so.6", Data: []byte("libc")}}},
		{Name: "bash", Version: "5.2.32_1", Depends: []string{"glibc>=2.36_1"}, Files: []voidtest.File{
			{Name: "usr/bin/bash", Data: []byte("bash"), Mode: 0o755},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return mirror
}

// TestRepoFile resolves, fetches and unpacks from a file:// mirror.
func TestRepoFile(t *testing.T) {
	mirror := testRepo(t)
	cache := t.TempDir()
	repo, err := NewRepo("file://"+mirror, cache)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	idx, err := repo.Index(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pkgs, err := idx.Resolve("bash")
	if err != nil {
		t.Fatal(err)
	}
	if got := pkgvers(pkgs); got != "glibc-2.39_1 bash-5.2.32_1" {
		t.Fatalf("Resolve(bash) = %s", got)
	}
	dir, root := openRoot(t)
	for _, p := range pkgs {
		f, err := repo.Fetch(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if f != filepath.Join(cache, p.SHA256+".xbps") {
			t.Errorf("Fetch(%s) = %s, want the cache entry named by its sha256", p.Pkgver, f)
		}
		if _, err := Unpack(f, p, root, UnpackOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "usr/bin/bash")); string(b) != "bash" {
		t.Errorf("usr/bin/bash = %q", b)
	}

	// A damaged cache entry is fetched again.
	p := pkgs[1]
	cached := filepath.Join(cache, p.SHA256+".xbps")
	if err := os.WriteFile(cached, []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Fetch(ctx, p); err != nil {
		t.Fatalf("Fetch(after damage) = %v", err)
	}
	if got := fileSum(t, cached); got != p.SHA256 {
		t.Errorf("cache entry after refetch has sha256 %s, want %s", got, p.SHA256)
	}

	// The mirror serves another file than the index describes.
	if err := os.WriteFile(filepath.Join(mirror, "current", p.Filename()), []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(cached)
	if _, err := repo.Fetch(ctx, p); err == nil || !strings.Contains(err.Error(), "refusing it") {
		t.Errorf("Fetch(tampered) = %v, want a checksum refusal", err)
	}
	if ents, _ := os.ReadDir(cache); len(ents) != 2-1 { // glibc's entry only
		t.Errorf("cache holds %d files after a refused fetch, want 1", len(ents))
	}
}

func TestRepoHTTP(t *testing.T) {
	mirror := testRepo(t)
	srv := httptest.NewServer(http.FileServer(http.Dir(mirror)))
	defer srv.Close()
	ctx := context.Background()
	repo, err := NewRepo(srv.URL, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	idx, err := repo.Index(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := idx.Packages["bash"]
	if _, err := repo.Fetch(ctx, p); err != nil {
		t.Fatal(err)
	}
	// A package the mirror does not have: the error names the URL.
	q := *p
	q.Pkgver = "bash-9.9_1"
	repo.CacheDir = t.TempDir()
	_, err = repo.Fetch(ctx, &q)
	want := srv.URL + "/current/bash-9.9_1.x86_64.xbps"
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "404") {
		t.Errorf("Fetch(missing) = %v, want an error naming %s and the 404", err, want)
	}
	bad, _ := NewRepo(srv.URL+"/nowhere", t.TempDir())
	if _, err := bad.Index(ctx); err == nil || !strings.Contains(err.Error(), srv.URL+"/nowhere/current/x86_64-repodata") || !strings.Contains(err.Error(), "VOID_MIRROR") {
		t.Errorf("Index(missing) = %v, want an error naming the URL and VOID_MIRROR", err)
	}
}

func TestNewRepo(t *testing.T) {
	for _, tc := range []struct {
		mirror, url, err string
	}{
		{"https://repo-default.voidlinux.org", "https://repo-default.voidlinux.org/current", ""},
		{"https://repo-default.voidlinux.org/", "https://repo-default.voidlinux.org/current", ""},
		{"file:///srv/void", "file:///srv/void/current", ""},
		{"ftp://mirror/void", "", "not supported"},
		{"/srv/void", "", "not supported"},
		{"file://relative/path", "", "absolute path"},
	} {
		r, err := NewRepo(tc.mirror, "/tmp/cache")
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NewRepo(%q) = %v, want an error containing %q", tc.mirror, err, tc.err)
			}
		case err != nil:
			t.Errorf("NewRepo(%q) = %v", tc.mirror, err)
		case r.URL != tc.url:
			t.Errorf("NewRepo(%q).URL = %q, want %q", tc.mirror, r.URL, tc.url)
		}
	}
}
