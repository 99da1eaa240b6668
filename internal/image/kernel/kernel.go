// Package kernel fetches the Debian cloud kernel, extracts its ELF vmlinux and orders its modules by dependency.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/banger/banger/internal/runner"
)

// MetaPackage is the Debian metapackage that names the current cloud kernel.
const MetaPackage = "linux-image-cloud-amd64"

// Package is an unpacked Debian kernel package.
type Package struct {
	// Version is the kernel release, e.g. 6.1.0-28-cloud-amd64.
	Version string
	// DebVersion is the Debian package version, e.g. 6.1.119-1.
	DebVersion string
	// Vmlinuz, Config and ModulesDir are absolute paths inside the unpacked package.
	Vmlinuz, Config, ModulesDir string
}

var kernelDepRE = regexp.MustCompile(`\blinux-image-([0-9][^\s,()]*-cloud-amd64)\b`)

// Fetch resolves the linux-image-cloud-amd64 metapackage to its kernel package,
// downloads it with apt-get (preferring the -unsigned build) and unpacks it into
// cacheDir/kernel/<kver>_<debversion>. A package already unpacked there is reused.
func Fetch(ctx context.Context, r runner.Runner, cacheDir string) (*Package, error) {
	meta, err := aptShow(ctx, r, MetaPackage)
	if err != nil {
		return nil, fmt.Errorf("resolving kernel package %s: %w", MetaPackage, err)
	}
	if meta == nil {
		return nil, fmt.Errorf("resolving kernel package %s: apt knows no such package: run 'apt-get update' (the package lists are empty or stale)", MetaPackage)
	}
	m := kernelDepRE.FindStringSubmatch(meta["Depends"])
	if m == nil {
		return nil, fmt.Errorf("resolving kernel package %s: no linux-image-*-cloud-amd64 in Depends %q", MetaPackage, meta["Depends"])
	}
	kver := m[1]

	pkgName := "linux-image-" + kver + "-unsigned"
	fields, err := aptShow(ctx, r, pkgName)
	if err != nil {
		return nil, fmt.Errorf("resolving kernel package %s: %w", pkgName, err)
	}
	if fields == nil {
		pkgName = "linux-image-" + kver
		if fields, err = aptShow(ctx, r, pkgName); err != nil {
			return nil, fmt.Errorf("resolving kernel package %s: %w", pkgName, err)
		}
		if fields == nil {
			return nil, fmt.Errorf("resolving kernel package %s: apt knows no such package: run 'apt-get update'", pkgName)
		}
	}
	debVersion := fields["Version"]
	if debVersion == "" {
		return nil, fmt.Errorf("resolving kernel package %s: apt-cache show printed no Version", pkgName)
	}

	kernelDir := filepath.Join(cacheDir, "kernel")
	dest := filepath.Join(kernelDir, kver+"_"+debVersion)
	if p, err := Open(dest, kver, debVersion); err == nil {
		slog.Debug("kernel package cached", "version", kver, "dir", dest)
		return p, nil
	}

	if err := os.MkdirAll(kernelDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating kernel cache %s: %w", kernelDir, err)
	}
	tmp, err := os.MkdirTemp(kernelDir, ".fetch-")
	if err != nil {
		return nil, fmt.Errorf("creating kernel download dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt-get download drops privileges to _apt, which must be able to write here.
	if err := os.Chmod(tmp, 0o777); err != nil {
		return nil, fmt.Errorf("opening kernel download dir %s to apt: %w", tmp, err)
	}

	slog.Info("downloading kernel package", "package", pkgName, "version", debVersion)
	if _, err := r.Run(ctx, "env", "-C", tmp, "apt-get", "download", pkgName+"="+debVersion); err != nil {
		return nil, fmt.Errorf("downloading kernel package %s=%s: %w: check that the Debian mirror is reachable, or run 'apt-get update' if the version is gone", pkgName, debVersion, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("downloading kernel package %s=%s: found %d .deb files in %s, want 1", pkgName, debVersion, len(debs), tmp)
	}
	unpacked := filepath.Join(tmp, "root")
	if _, err := r.Run(ctx, "dpkg", "-x", debs[0], unpacked); err != nil {
		return nil, fmt.Errorf("unpacking kernel package %s: %w", debs[0], err)
	}
	if _, err := Open(unpacked, kver, debVersion); err != nil {
		return nil, fmt.Errorf("unpacking kernel package %s: %w", debs[0], err)
	}
	if err := os.Rename(unpacked, dest); err != nil {
		// Another process may have unpacked the same version meanwhile.
		if p, err2 := Open(dest, kver, debVersion); err2 == nil {
			return p, nil
		}
		return nil, fmt.Errorf("moving kernel package into cache %s: %w", dest, err)
	}
	return Open(dest, kver, debVersion)
}

// Open describes a kernel package already unpacked at dir, checking that its
// vmlinuz, config and modules tree exist.
func Open(dir, kver, debVersion string) (*Package, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("opening kernel package %s: %w", dir, err)
	}
	p := &Package{
		Version:    kver,
		DebVersion: debVersion,
		Vmlinuz:    filepath.Join(dir, "boot", "vmlinuz-"+kver),
		Config:     filepath.Join(dir, "boot", "config-"+kver),
		ModulesDir: filepath.Join(dir, "lib", "modules", kver),
	}
	if _, err := os.Stat(p.ModulesDir); errors.Is(err, os.ErrNotExist) {
		p.ModulesDir = filepath.Join(dir, "usr", "lib", "modules", kver)
	}
	for _, f := range []string{p.Vmlinuz, p.Config, p.ModulesDir} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("opening kernel package %s: %w", dir, err)
		}
	}
	return p, nil
}

// aptShow returns the fields of the candidate version of pkg, or nil when apt
// does not know the package.
func aptShow(ctx context.Context, r runner.Runner, pkg string) (map[string]string, error) {
	out, err := r.Run(ctx, "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "No packages found") || strings.Contains(msg, "Unable to locate") ||
			strings.Contains(msg, "has no installation candidate") {
			return nil, nil
		}
		return nil, err
	}
	fields := parseControl(string(out))
	if len(fields) == 0 {
		return nil, nil
	}
	return fields, nil
}

// parseControl parses the first stanza of a Debian control file.
func parseControl(s string) map[string]string {
	fields := map[string]string{}
	var last string
	for _, line := range strings.Split(s, "\n") {
		if strings.TrimSpace(line) == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = k
		fields[k] = strings.TrimSpace(v)
	}
	return fields
}
