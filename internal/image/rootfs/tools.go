package rootfs

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger/banger/internal/runner"
)

// Versions of the prebuilt tools baked into the docker image. They come from
// the npm registry, fetched on the host at build time with `npm pack`; the
// guest has no node. A bump also needs the integrity in npmTools, which is
// `npm view <package>@<version> dist.integrity`.
const (
	// MiseVersion is the version of @jdxcode/mise-linux-x64.
	MiseVersion = "2026.9.15"
	// OpencodeVersion is the version of opencode-ai's linux-x64 baseline
	// platform package.
	OpencodeVersion = "1.18.33"
)

// npmTool is one binary taken from an npm package.
type npmTool struct {
	// Bin is the binary's name, installed as /usr/local/bin/<Bin>.
	Bin string
	// Package is the npm package name.
	Package string
	// Version is the exact package version.
	Version string
	// Integrity is the tarball's dist.integrity (sha512) in the registry.
	Integrity string
}

// npmTools lists the tools the docker image carries. opencode's plain
// linux-x64 build needs AVX2, which QEMU's default TCG CPU lacks (and
// `-cpu max` hangs the kernel's TSC calibration), so the image carries the
// baseline build, which opencode-ai's own launcher picks on such CPUs.
func npmTools() []npmTool {
	return []npmTool{
		{
			Bin:       "mise",
			Package:   "@jdxcode/mise-linux-x64",
			Version:   MiseVersion,
			Integrity: "sha512-ButPFGyztN0Rk/HOHvHuf+W80CkvQRAjbDWHvhGJc3PnL3e2KhCYZIOyjx8wPkhr9VJa/7sJZXpxtt5JLjsfaQ==",
		},
		{
			Bin:       "opencode",
			Package:   "opencode-linux-x64-baseline",
			Version:   OpencodeVersion,
			Integrity: "sha512-1KQGBiiDDeL/VHHbHkOvvFo8Jr97WT5+C1tear+p7IcDTnXgVHXqIjU4O4jM4mHQzykTP2i884FCnW5LDa+zCA==",
		},
	}
}

// FetchImageTools returns the paths of the docker image's npm tools (mise
// and opencode, by binary name), fetched into cacheDir/npm with their pinned
// integrity. Other image builders (the Void rootfs) use it.
func FetchImageTools(ctx context.Context, r runner.Runner, cacheDir string, log *slog.Logger) (map[string]string, error) {
	return fetchTools(ctx, r, cacheDir, npmTools(), log)
}

// toolsFor returns the npm tools an image of kind carries.
func toolsFor(kind Kind) []npmTool {
	if kind == KindDocker {
		return npmTools()
	}
	return nil
}

// Spec is the argument `npm pack` takes: <package>@<version>.
func (t npmTool) Spec() string { return t.Package + "@" + t.Version }

// member is the binary's path inside the package tarball.
func (t npmTool) member() string { return "package/bin/" + t.Bin }

// cacheName is the directory under <CacheDir>/npm holding the extracted
// binary: the package name made a file name, and the version.
func (t npmTool) cacheName() string {
	name := strings.ReplaceAll(strings.TrimPrefix(t.Package, "@"), "/", "-")
	return name + "-" + t.Version
}

// toolsKey describes tools for the finished-image cache key.
func toolsKey(tools []npmTool) string {
	var b strings.Builder
	for _, t := range tools {
		fmt.Fprintf(&b, "%s=%s %s;", t.Bin, t.Spec(), t.Integrity)
	}
	return b.String()
}

// fetchTools returns the paths of the tools' binaries, cached under
// <cacheDir>/npm; a binary not yet cached is fetched with `npm pack`,
// checked against its pinned integrity and extracted.
func fetchTools(ctx context.Context, r runner.Runner, cacheDir string, tools []npmTool, log *slog.Logger) (map[string]string, error) {
	bins := map[string]string{}
	for _, t := range tools {
		p, err := fetchTool(ctx, r, filepath.Join(cacheDir, "npm"), t, log)
		if err != nil {
			return nil, err
		}
		bins[t.Bin] = p
	}
	return bins, nil
}

func fetchTool(ctx context.Context, r runner.Runner, dir string, t npmTool, log *slog.Logger) (string, error) {
	bin := filepath.Join(dir, t.cacheName(), t.Bin)
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() {
		log.Info("npm tool cache hit", "package", t.Spec(), "binary", bin)
		return bin, nil
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		return "", fmt.Errorf("fetching %s: finding npm: %w: run 'apt-get install npm'", t.Spec(), err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating npm cache %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp(dir, ".tmp-")
	if err != nil {
		return "", fmt.Errorf("fetching %s: %w", t.Spec(), err)
	}
	defer os.RemoveAll(tmp)

	start := time.Now()
	// A private npm cache, removed with tmp: the binary is what is kept.
	if _, err := r.Run(ctx, npm, "pack", t.Spec(), "--pack-destination", tmp,
		"--cache", filepath.Join(tmp, ".npm"), "--loglevel=warn"); err != nil {
		return "", fmt.Errorf("fetching %s from the npm registry: %w: check that the registry is reachable (npm config get registry)", t.Spec(), err)
	}
	tgzs, _ := filepath.Glob(filepath.Join(tmp, "*.tgz"))
	if len(tgzs) != 1 {
		return "", fmt.Errorf("fetching %s: npm pack left %d tarballs, want 1", t.Spec(), len(tgzs))
	}
	if err := checkIntegrity(tgzs[0], t.Integrity); err != nil {
		return "", fmt.Errorf("fetching %s: %w", t.Spec(), err)
	}
	out := filepath.Join(tmp, t.Bin)
	if err := extractMember(tgzs[0], t.member(), out); err != nil {
		return "", fmt.Errorf("fetching %s: %w", t.Spec(), err)
	}
	// Publish the directory whole, so that a binary in the cache is complete.
	os.Remove(tgzs[0])
	if err := os.RemoveAll(filepath.Join(tmp, ".npm")); err != nil {
		return "", fmt.Errorf("fetching %s: removing npm's cache: %w", t.Spec(), err)
	}
	final := filepath.Dir(bin)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("fetching %s: %w", t.Spec(), err)
	}
	if err := os.Rename(tmp, final); err != nil {
		if fi, serr := os.Stat(bin); serr == nil && fi.Mode().IsRegular() {
			return bin, nil // another build stored it first
		}
		return "", fmt.Errorf("storing %s in %s: %w", t.Spec(), final, err)
	}
	log.Info("fetched npm tool", "package", t.Spec(), "binary", bin, "took", time.Since(start).Round(time.Millisecond))
	return bin, nil
}

// checkIntegrity compares a file's sha512 with an npm integrity string.
func checkIntegrity(file, want string) error {
	if !strings.HasPrefix(want, "sha512-") {
		return fmt.Errorf("checking %s: integrity %q is not sha512", filepath.Base(file), want)
	}
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("checking %s: %w", filepath.Base(file), err)
	}
	defer f.Close()
	h := sha512.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("checking %s: %w", filepath.Base(file), err)
	}
	if got := "sha512-" + base64.StdEncoding.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("checking %s: integrity %s, want %s: the registry served another tarball; do not use it", filepath.Base(file), got, want)
	}
	return nil
}

// maxMember bounds the size of an extracted binary.
const maxMember = 1 << 30

// extractMember writes the regular file member of the gzipped tar tgz to out
// with mode 0755.
func extractMember(tgz, member, out string) error {
	f, err := os.Open(tgz)
	if err != nil {
		return fmt.Errorf("extracting %s: %w", member, err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("extracting %s from %s: %w", member, filepath.Base(tgz), err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("extracting %s from %s: no such file in the package", member, filepath.Base(tgz))
		}
		if err != nil {
			return fmt.Errorf("extracting %s from %s: %w", member, filepath.Base(tgz), err)
		}
		if path.Clean(strings.TrimPrefix(h.Name, "./")) != member {
			continue
		}
		if h.Typeflag != tar.TypeReg {
			return fmt.Errorf("extracting %s from %s: not a regular file", member, filepath.Base(tgz))
		}
		if h.Size > maxMember {
			return fmt.Errorf("extracting %s from %s: %d bytes is too large", member, filepath.Base(tgz), h.Size)
		}
		return writeExecutable(out, io.LimitReader(tr, h.Size), h.Size)
	}
}

func writeExecutable(out string, r io.Reader, size int64) error {
	w, err := os.OpenFile(out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	n, err := io.Copy(w, r)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != size {
		err = fmt.Errorf("short read: %d of %d bytes", n, size)
	}
	if err != nil {
		os.Remove(out)
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return os.Chmod(out, 0o755)
}
