package kernel

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/runner/runnertest"
	"github.com/banger/banger/internal/vmtest"
)

// fakeRunner answers apt-cache show from a table and records every command.
// aptCache answers 'apt-cache show --no-all-versions PKG' from show and
// fails every other command, as apt does for a package it does not know.
func aptCache(show map[string]string) *runnertest.Runner {
	r := &runnertest.Runner{}
	r.On("apt-cache show", func(argv []string) ([]byte, error) {
		if out, ok := show[argv[len(argv)-1]]; ok {
			return []byte(out), nil
		}
		return nil, errors.New("apt-cache show: exit status 100: E: No packages found")
	})
	r.Reply("", runnertest.Reply{Err: errors.New("exit status 100: E: No packages found")})
	return r
}

func TestFetchEmptyAptLists(t *testing.T) {
	f := aptCache(nil)
	_, err := Fetch(context.Background(), f, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "apt-get update") {
		t.Fatalf("Fetch with empty apt lists = %v, want an error telling to run apt-get update", err)
	}
}

func TestFetchUsesCache(t *testing.T) {
	cache := t.TempDir()
	kver, deb := "6.1.0-99-cloud-amd64", "6.1.999-1"
	dir := filepath.Join(cache, "kernel", kver+"_"+deb)
	for _, p := range []string{"boot/vmlinuz-" + kver, "boot/config-" + kver, "lib/modules/" + kver + "/modules.builtin"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := aptCache(map[string]string{
		MetaPackage:                         "Package: linux-image-cloud-amd64\nVersion: " + deb + "\nDepends: linux-image-" + kver + " (= " + deb + ")\n\n",
		"linux-image-" + kver + "-unsigned": "Package: linux-image-" + kver + "-unsigned\nVersion: " + deb + "\n",
	})
	p, err := Fetch(context.Background(), f, cache)
	if err != nil {
		t.Fatal(err)
	}
	if p.Version != kver || p.DebVersion != deb || p.ModulesDir != filepath.Join(dir, "lib/modules", kver) {
		t.Errorf("Fetch = %+v, want version %s_%s in %s", p, kver, deb, dir)
	}
	for _, c := range f.Calls() {
		if !strings.HasPrefix(c, "run apt-cache ") {
			t.Errorf("Fetch with a cached package ran %q, want only apt-cache", c)
		}
	}
}

func TestParseControl(t *testing.T) {
	in := "Package: x\nVersion: 1.2-3\nDepends: a,\n b\nDescription: d\n\nPackage: y\nVersion: 9\n"
	got := parseControl(in)
	for k, want := range map[string]string{"Package": "x", "Version": "1.2-3", "Depends": "a,\nb"} {
		if got[k] != want {
			t.Errorf("parseControl(...)[%q] = %q, want %q", k, got[k], want)
		}
	}
}

// testCacheDir is $XDG_CACHE_HOME/banger or ~/.cache/banger, so reruns reuse the download.
func testCacheDir(t *testing.T) string {
	t.Helper()
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "banger")
}

// realKernel fetches the Debian cloud kernel (a VM test: vmtest.Require).
func realKernel(t *testing.T) *Package {
	t.Helper()
	vmtest.Require(t, "fetching the Debian kernel package with apt", vmtest.Tool("apt-get", "apt"), vmtest.Tool("dpkg", "dpkg"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	p, err := Fetch(ctx, runner.Default, testCacheDir(t))
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	t.Logf("kernel %s (%s) ready in %v", p.Version, p.DebVersion, time.Since(start).Round(time.Millisecond))
	return p
}

func TestFetchReal(t *testing.T) {
	p := realKernel(t)
	if !strings.HasSuffix(p.Version, "-cloud-amd64") {
		t.Errorf("Fetch().Version = %q, want a -cloud-amd64 release", p.Version)
	}
}
