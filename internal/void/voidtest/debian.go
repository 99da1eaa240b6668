package voidtest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/banger/banger/internal/kernel"
	"github.com/banger/banger/internal/rootfs"
	"github.com/banger/banger/internal/runner"
)

// The fixture mirror stands in for Void's, which these machines cannot
// reach: its packages hold Debian bookworm's binaries, renamed and laid out
// the Void way (everything in /usr/bin and /usr/lib), with Void package
// names, run_depends patterns, virtual provides, alternatives, shlibs and
// INSTALL variables, so that banger's Void code does the work it does on a
// real mirror. Its linux6.12 package holds the Debian cloud kernel (6.1),
// its modules zstd-compressed as Void ships them.

// fixtureVersion changes whenever the repacking changes; it keys the cache.
const fixtureVersion = "1"

// DebianInclude are the Debian packages (beyond debootstrap's minbase)
// whose closure fills the fixture.
var DebianInclude = []string{
	"runit", "openssh-server", "docker.io", "docker-compose", "iptables", "git", "curl", "tmux",
	"iproute2", "kmod", "e2fsprogs", "procps", "less", "ca-certificates", "gawk", "xz-utils",
}

// voidNames maps Debian package names to the Void package they become;
// several Debian packages may merge into one. Other names stay as they are.
var voidNames = map[string]string{
	"libc6": "glibc", "libc-bin": "glibc",
	"openssh-server": "openssh", "openssh-client": "openssh", "openssh-sftp-server": "openssh",
	"docker.io": "docker", "procps": "procps-ng", "xz-utils": "xz",
	"passwd": "shadow", "login": "shadow",
	"mount": "util-linux", "bsdutils": "util-linux", "util-linux-extra": "util-linux",
	"zlib1g": "zlib", "libcurl4": "libcurl", "libzstd1": "libzstd", "liblzma5": "liblzma",
	"libncursesw6": "ncurses-libs", "libtinfo6": "ncurses-libs",
	"ncurses-base": "ncurses", "ncurses-bin": "ncurses",
	"libreadline8": "readline", "readline-common": "readline",
	"iptables": "iptables", "libip4tc2": "iptables", "libip6tc2": "iptables", "libxtables12": "iptables",
	"e2fsprogs": "e2fsprogs", "libext2fs2": "e2fsprogs", "libcom-err2": "e2fsprogs", "libss2": "e2fsprogs", "logsave": "e2fsprogs",
	"libkmod2": "libkmod", "libblkid1": "libblkid", "libmount1": "libmount", "libuuid1": "libuuid", "libsmartcols1": "libsmartcols",
	"python3.11": "python3", "python3.11-minimal": "python3", "libpython3.11-minimal": "python3",
	"libpython3.11-stdlib": "python3", "python3-minimal": "python3", "libpython3-stdlib": "python3",
}

// debianOnly are Debian packages that have no place in a Void system (its
// package manager, debconf, Debian's own base files and users); dependencies
// on them are dropped.
var debianOnly = map[string]bool{
	"apt": true, "dpkg": true, "debconf": true, "debconf-i18n": true, "debian-archive-keyring": true,
	"gpgv": true, "libapt-pkg6.0": true, "adduser": true, "base-passwd": true, "base-files": true,
	"init-system-helpers": true, "usr-is-merged": true, "usrmerge": true, "libdebconfclient0": true,
	"runit-helper": true, "sysuser-helper": true, "runit-init": true,
}

// installScripts are the INSTALL variables (see void.ParseInstall) the
// fixture's packages carry, as xbps-src writes them.
var installScripts = map[string]string{
	"openssh": "export system_accounts=\"sshd\"\nexport sshd_homedir=\"/run/sshd\"\nexport sshd_shell=\"/usr/bin/nologin\"\nexport sshd_descr=\"OpenSSH privilege separation\"\n",
	"docker":  "export system_groups=\"docker\"\n",
	"bash":    "export register_shell=\"/bin/bash /usr/bin/bash\"\n",
	"dash":    "export register_shell=\"/bin/sh /usr/bin/sh\"\n",
}

// extraAlternatives are Void alternatives that Debian does not make with
// update-alternatives: its dash ships /bin/sh itself.
var extraAlternatives = map[string]map[string][]string{
	"dash": {"sh": {"/usr/bin/sh:dash"}},
	"bash": {"sh": {"/usr/bin/sh:bash"}},
}

// dropFiles are files a Void package does not ship (an alternative makes them).
var dropFiles = map[string][]string{
	"dash": {"usr/bin/sh"},
}

// extraLinks are symlinks a Void package has where Debian keeps a file elsewhere.
var extraLinks = map[string][][2]string{
	"runit": {{"usr/bin/runit-init", "../lib/runit/runit-init"}},
}

// DebianOptions describes a fixture mirror build.
type DebianOptions struct {
	// CacheDir keeps the downloaded .debs and finished mirrors under
	// void-fixture/; e.g. ~/.cache/banger.
	CacheDir string
	// DebianMirror is the Debian mirror for debootstrap; default rootfs.DefaultMirror.
	DebianMirror string
	// Log receives progress; default slog.Default().
	Log *slog.Logger
}

// BuildDebianMirror returns the directory of a Void mirror (the layout
// VOID_MIRROR=file://DIR expects: DIR/current/x86_64-repodata and the
// .xbps files) made from Debian's packages, building it when the cache has
// none for these inputs. It needs root (debootstrap, and the files' owners),
// debootstrap, dpkg-deb and depmod.
func BuildDebianMirror(ctx context.Context, r runner.Runner, opts DebianOptions) (string, error) {
	if opts.DebianMirror == "" {
		opts.DebianMirror = rootfs.DefaultMirror
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.CacheDir == "" {
		return "", errors.New("building void fixture: no cache directory given")
	}
	if os.Geteuid() != 0 {
		return "", errors.New("building void fixture: needs root (debootstrap and the packages' file owners): run it as root")
	}
	log := opts.Log
	start := time.Now()
	kp, err := kernel.Fetch(ctx, r, opts.CacheDir)
	if err != nil {
		return "", fmt.Errorf("building void fixture: %w", err)
	}
	base := filepath.Join(opts.CacheDir, "void-fixture")
	debsKey := shortKey("suite=", rootfs.DefaultSuite, "mirror=", opts.DebianMirror, "include=", strings.Join(DebianInclude, ","))
	key := shortKey("debs=", debsKey, "fixture=", fixtureVersion, "kernel=", kp.Version, kp.DebVersion)
	final := filepath.Join(base, "mirror-"+key)
	if _, err := os.Stat(filepath.Join(final, "current", DefaultArch+"-repodata")); err == nil {
		log.Info("void fixture mirror cache hit", "mirror", final)
		return final, nil
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", fmt.Errorf("building void fixture: %w", err)
	}
	debs, err := downloadDebs(ctx, r, base, debsKey, opts.DebianMirror, log)
	if err != nil {
		return "", fmt.Errorf("building void fixture: %w", err)
	}
	work, err := os.MkdirTemp(base, ".work-")
	if err != nil {
		return "", fmt.Errorf("building void fixture: %w", err)
	}
	defer os.RemoveAll(work)
	pkgs, err := repackDebs(ctx, r, debs, work, log)
	if err != nil {
		return "", fmt.Errorf("building void fixture: %w", err)
	}
	kpkg, err := kernelPkg(ctx, r, kp, work)
	if err != nil {
		return "", fmt.Errorf("building void fixture: kernel: %w", err)
	}
	pkgs = append(pkgs, baseFilesPkg(), kpkg)

	t := time.Now()
	mirror := filepath.Join(work, "mirror")
	dir := filepath.Join(mirror, "current")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	entries := map[string]*Entry{}
	var mu sync.Mutex
	errs := make([]error, len(pkgs))
	parallel(len(pkgs), 2, func(i int) {
		e, err := WritePackage(dir, pkgs[i])
		if err != nil {
			errs[i] = err
			return
		}
		mu.Lock()
		entries[pkgs[i].Name] = e
		mu.Unlock()
	})
	if err := errors.Join(errs...); err != nil {
		return "", fmt.Errorf("building void fixture: %w", err)
	}
	if err := WriteRepodata(dir, DefaultArch, entries); err != nil {
		return "", fmt.Errorf("building void fixture: %w", err)
	}
	log.Info("wrote fixture packages", "packages", len(pkgs), "took", time.Since(t).Round(time.Millisecond))
	if err := os.Rename(mirror, final); err != nil {
		if _, serr := os.Stat(filepath.Join(final, "current", DefaultArch+"-repodata")); serr == nil {
			return final, nil // another build stored it first
		}
		return "", fmt.Errorf("building void fixture: storing mirror: %w", err)
	}
	log.Info("void fixture mirror ready", "mirror", final, "packages", len(pkgs), "took", time.Since(start).Round(time.Millisecond))
	return final, nil
}

func shortKey(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%s\n", p)
	}
	return hex.EncodeToString(h.Sum(nil))[:20]
}

// downloadDebs returns the .debs of debootstrap's minbase plus
// DebianInclude, downloaded once into base/debs-<key>.
func downloadDebs(ctx context.Context, r runner.Runner, base, key, mirror string, log *slog.Logger) ([]string, error) {
	dir := filepath.Join(base, "debs-"+key)
	if debs, _ := filepath.Glob(filepath.Join(dir, "*.deb")); len(debs) > 0 {
		log.Info("void fixture debs cache hit", "dir", dir, "debs", len(debs))
		return debs, nil
	}
	tmp, err := os.MkdirTemp(base, ".debs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	t := time.Now()
	log.Info("downloading Debian packages for the void fixture", "include", DebianInclude)
	target := filepath.Join(tmp, "target")
	if _, err := r.RunPrivileged(ctx, "debootstrap", "--download-only", "--variant=minbase",
		"--include="+strings.Join(DebianInclude, ","), rootfs.DefaultSuite, target, mirror); err != nil {
		return nil, fmt.Errorf("downloading Debian packages with debootstrap: %w: check that %s is reachable", err, mirror)
	}
	if err := os.Rename(filepath.Join(target, "var/cache/apt/archives"), filepath.Join(tmp, "debs")); err != nil {
		return nil, err
	}
	if err := os.Rename(filepath.Join(tmp, "debs"), dir); err != nil {
		return nil, err
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	log.Info("downloaded Debian packages", "debs", len(debs), "took", time.Since(t).Round(time.Second))
	return debs, nil
}

// deb is one unpacked Debian package.
type deb struct {
	name, version   string
	depends         string // Pre-Depends and Depends
	provides        string
	dir             string // unpacked data
	alts            map[string][]string
	void            string // the Void package it goes into
	voidVersion     string
	upstreamVersion string
}

// repackDebs unpacks the .debs and turns them into Void packages.
func repackDebs(ctx context.Context, r runner.Runner, files []string, work string, log *slog.Logger) ([]Pkg, error) {
	t := time.Now()
	debs := make([]*deb, len(files))
	errs := make([]error, len(files))
	parallel(len(files), 2, func(i int) {
		debs[i], errs[i] = unpackDeb(ctx, r, files[i], filepath.Join(work, "deb", fmt.Sprint(i)))
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	log.Info("unpacked Debian packages", "debs", len(debs), "took", time.Since(t).Round(time.Millisecond))

	// Group by Void name; the first Debian package of a group (in the
	// order of voidNames' primary names, else by name) gives its version.
	groups := map[string][]*deb{}
	var kept []*deb
	for _, d := range debs {
		if debianOnly[d.name] {
			continue
		}
		d.void = d.name
		if v, ok := voidNames[d.name]; ok {
			d.void = v
		}
		d.voidVersion = voidVersion(d.version)
		groups[d.void] = append(groups[d.void], d)
		kept = append(kept, d)
	}
	// What satisfies a Debian name: the Void package it maps to, or a
	// virtual package some kept package provides.
	realNames := map[string]string{}
	virtual := map[string]bool{}
	for _, d := range kept {
		realNames[d.name] = d.void
		for _, pv := range splitList(d.provides) {
			virtual[depName(pv)] = true
		}
	}

	var pkgs []Pkg
	for _, name := range sortedKeys(groups) {
		g := groups[name]
		sort.Slice(g, func(i, j int) bool { return primary(g[i]) < primary(g[j]) })
		p := Pkg{Name: name, Version: g[0].voidVersion, ShortDesc: "Debian " + g[0].name + " " + g[0].version + " repacked for banger's Void fixture",
			Install: installScripts[name], Alternatives: map[string][]string{}}
		tree := filepath.Join(work, "void", name)
		if err := os.MkdirAll(tree, 0o755); err != nil {
			return nil, err
		}
		seenDep := map[string]bool{}
		seenProv := map[string]bool{}
		for _, d := range g {
			if err := mergeTree(d.dir, tree); err != nil {
				return nil, fmt.Errorf("repacking %s: %w", d.name, err)
			}
			for _, clause := range splitList(d.depends) {
				dep, ok := mapClause(clause, realNames, virtual)
				if !ok || depName(dep) == name || seenDep[dep] {
					continue
				}
				seenDep[dep] = true
				p.Depends = append(p.Depends, dep)
			}
			for _, pv := range splitList(d.provides) {
				v := depName(pv) + "-" + providedVersion(pv)
				if depName(pv) != name && !seenProv[v] {
					seenProv[v] = true
					p.Provides = append(p.Provides, v)
				}
			}
			for g, links := range d.alts {
				p.Alternatives[g] = append(p.Alternatives[g], links...)
			}
		}
		for g, links := range extraAlternatives[name] {
			p.Alternatives[g] = links
		}
		for _, f := range dropFiles[name] {
			os.Remove(filepath.Join(tree, f))
		}
		for _, l := range extraLinks[name] {
			if err := os.Symlink(l[1], filepath.Join(tree, l[0])); err != nil && !errors.Is(err, fs.ErrExist) {
				return nil, err
			}
		}
		if len(p.Alternatives) == 0 {
			p.Alternatives = nil
		}
		var err error
		if p.ShlibProvides, p.ShlibRequires, err = shlibs(tree); err != nil {
			return nil, fmt.Errorf("repacking %s: %w", name, err)
		}
		p.Tree = tree
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
}

// primary orders a group: the package whose name is the group's comes first.
func primary(d *deb) string {
	if d.name == d.void {
		return ""
	}
	return d.name
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// unpackDeb extracts a .deb's data and reads its control fields and the
// update-alternatives calls of its postinst.
func unpackDeb(ctx context.Context, r runner.Runner, file, dir string) (*deb, error) {
	out, err := r.Run(ctx, "dpkg-deb", "-f", file, "Package", "Version", "Pre-Depends", "Depends", "Provides")
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	f := parseFields(string(out))
	d := &deb{name: f["Package"], version: f["Version"], provides: f["Provides"], dir: filepath.Join(dir, "data")}
	d.depends = strings.Trim(f["Pre-Depends"]+", "+f["Depends"], ", ")
	if d.name == "" || d.version == "" {
		return nil, fmt.Errorf("reading %s: no Package or Version", file)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if _, err := r.Run(ctx, "dpkg-deb", "-x", file, d.dir); err != nil {
		return nil, fmt.Errorf("unpacking %s: %w", file, err)
	}
	ctl := filepath.Join(dir, "control")
	if _, err := r.Run(ctx, "dpkg-deb", "-e", file, ctl); err != nil {
		return nil, fmt.Errorf("unpacking control of %s: %w", file, err)
	}
	if b, err := os.ReadFile(filepath.Join(ctl, "postinst")); err == nil {
		d.alts = parseAlternatives(string(b))
	}
	return d, nil
}

func parseFields(s string) map[string]string {
	f := map[string]string{}
	var last string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, " ") && last != "" {
			f[last] += " " + strings.TrimSpace(l)
			continue
		}
		if k, v, ok := strings.Cut(l, ":"); ok {
			last = k
			f[k] = strings.TrimSpace(v)
		}
	}
	return f
}

// altRE matches one --install or --slave of update-alternatives.
var altRE = regexp.MustCompile(`--(install|slave)\s+(\S+)\s+(\S+)\s+(\S+)`)

// parseAlternatives turns the update-alternatives --install calls of a
// postinst into Void alternatives: group -> "link:target", with Void paths.
func parseAlternatives(script string) map[string][]string {
	script = strings.ReplaceAll(script, "\\\n", " ")
	alts := map[string][]string{}
	for _, line := range strings.Split(script, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "update-alternatives") || !strings.Contains(line, "--install") || strings.Contains(line, "$") {
			continue
		}
		group := ""
		for _, m := range altRE.FindAllStringSubmatch(line, -1) {
			if m[1] == "install" {
				group = m[3]
			}
			if group == "" {
				continue
			}
			link, target := voidPath(strings.TrimPrefix(m[2], "/")), voidPath(strings.TrimPrefix(m[4], "/"))
			if link == "" || target == "" {
				continue
			}
			alts[group] = append(alts[group], "/"+link+":/"+target)
		}
	}
	return alts
}

// voidPath maps a Debian path (relative, no leading slash) to Void's merged
// layout: /bin, /sbin and /usr/sbin are /usr/bin; /lib and /lib64 are /usr/lib.
func voidPath(rel string) string {
	for _, m := range [][2]string{{"bin/", "usr/bin/"}, {"sbin/", "usr/bin/"}, {"usr/sbin/", "usr/bin/"}, {"lib64/", "usr/lib/"}, {"lib/", "usr/lib/"}} {
		if strings.HasPrefix(rel, m[0]) {
			return m[1] + strings.TrimPrefix(rel, m[0])
		}
		if rel == strings.TrimSuffix(m[0], "/") {
			return strings.TrimSuffix(m[1], "/")
		}
	}
	return rel
}

// mergeTree moves the files of an unpacked .deb into tree at their Void
// paths. When two files land on one path, a regular file wins over a
// symlink (Debian's compatibility links for /usr/sbin and /sbin); a symlink
// that would point at itself after the move is dropped.
func mergeTree(src, tree string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." {
			return err
		}
		dst := filepath.Join(tree, voidPath(filepath.ToSlash(rel)))
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
					return err
				}
			}
			return os.Chmod(dst, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if selfLink(voidPath(filepath.ToSlash(rel)), target) {
				return nil
			}
		}
		if old, err := os.Lstat(dst); err == nil {
			if old.Mode().IsRegular() || fi.Mode()&fs.ModeSymlink != 0 {
				return nil // keep the first file, or a file over a link
			}
			os.Remove(dst)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.Rename(p, dst)
	})
}

// selfLink reports whether a symlink at the Void path rel with target would
// resolve to rel itself once the layout is merged.
func selfLink(rel, target string) bool {
	var abs string
	if strings.HasPrefix(target, "/") {
		abs = strings.TrimPrefix(path.Clean(target), "/")
	} else {
		abs = path.Clean(path.Join(path.Dir(rel), target))
	}
	return voidPath(abs) == rel
}

// splitList splits a Debian relationship field at its commas.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// depName returns the package name of "name:any (>= 1.0)".
func depName(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, " (["); i >= 0 {
		s = s[:i]
	}
	name, _, _ := strings.Cut(s, ":")
	return name
}

var relRE = regexp.MustCompile(`\(\s*(<<|<=|=|>=|>>|<|>)\s*([^)\s]+)\s*\)`)

// mapClause turns one Debian dependency ("a (>= 1) | b") into a Void
// pattern for the first alternative the fixture has.
func mapClause(clause string, real map[string]string, virtual map[string]bool) (string, bool) {
	for _, alt := range strings.Split(clause, "|") {
		name := depName(alt)
		v, isReal := real[name]
		if !isReal && !virtual[name] {
			continue
		}
		if !isReal {
			return name, true // a virtual package: any provider
		}
		m := relRE.FindStringSubmatch(alt)
		if m == nil {
			return v, true
		}
		op := map[string]string{"<<": "<", "<=": "<=", "=": "=", ">=": ">=", ">>": ">", "<": "<=", ">": ">="}[m[1]]
		ver := voidVersion(m[2])
		if op == "=" {
			return v + "-" + ver, true
		}
		return v + op + ver, true
	}
	return "", false
}

// providedVersion is the Void version of a Debian Provides entry: its
// "(= version)", or 0 for an unversioned virtual package.
func providedVersion(pv string) string {
	if m := relRE.FindStringSubmatch(pv); m != nil && m[1] == "=" {
		return voidVersion(m[2])
	}
	return "0_1"
}

// voidVersion turns a Debian version (epoch:upstream-revision) into a Void
// version_revision: the upstream part with characters Void does not allow
// replaced, revision 1. "1:9.2p1-2+deb12u3" -> "9.2p1_1"; "1.0~rc1-1" ->
// "1.0rc1_1".
func voidVersion(v string) string {
	if _, after, ok := strings.Cut(v, ":"); ok {
		v = after
	}
	if i := strings.LastIndexByte(v, '-'); i > 0 {
		v = v[:i]
	}
	var b strings.Builder
	for _, c := range v {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '.':
			b.WriteRune(c)
		case c == '~':
		default:
			b.WriteByte('.')
		}
	}
	s := strings.Trim(b.String(), ".")
	if s == "" || !strings.ContainsAny(s, "0123456789") {
		s = "0." + s
	}
	return s + "_1"
}

// shlibs returns the sonames the ELF files of tree provide and the ones
// they need from other packages, as xbps-src records them.
func shlibs(tree string) (provides, requires []string, err error) {
	prov, req := map[string]bool{}, map[string]bool{}
	err = filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := elf.Open(p)
		if err != nil {
			return nil // not an ELF file
		}
		defer f.Close()
		if f.Type != elf.ET_DYN && f.Type != elf.ET_EXEC {
			return nil
		}
		if sonames, err := f.DynString(elf.DT_SONAME); err == nil {
			for _, s := range sonames {
				prov[s] = true
			}
		}
		if libs, err := f.ImportedLibraries(); err == nil {
			for _, l := range libs {
				req[l] = true
			}
		}
		return nil
	})
	for s := range prov {
		provides = append(provides, s)
	}
	for s := range req {
		if !prov[s] {
			requires = append(requires, s)
		}
	}
	slices.Sort(provides)
	slices.Sort(requires)
	return provides, requires, err
}

// baseFilesPkg is the fixture's base-files: Void's merged /usr layout, the
// system users and groups, and a profile. Debian has no such package.
func baseFilesPkg() Pkg {
	dirs := []struct {
		name string
		mode fs.FileMode
	}{
		{"boot", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"etc/profile.d", 0o755}, {"home", 0o755},
		{"media", 0o755}, {"mnt", 0o755}, {"opt", 0o755}, {"proc", 0o555}, {"root", 0o700},
		{"run", 0o755}, {"srv", 0o755}, {"sys", 0o555}, {"tmp", 0o777 | fs.ModeSticky},
		{"usr", 0o755}, {"usr/bin", 0o755}, {"usr/include", 0o755}, {"usr/lib", 0o755},
		{"usr/libexec", 0o755}, {"usr/local", 0o755}, {"usr/local/bin", 0o755}, {"usr/local/lib", 0o755},
		{"usr/share", 0o755}, {"usr/src", 0o755}, {"var", 0o755}, {"var/cache", 0o755},
		{"var/empty", 0o755}, {"var/lib", 0o755}, {"var/log", 0o755}, {"var/spool", 0o755},
		{"var/tmp", 0o777 | fs.ModeSticky},
	}
	var files []File
	for _, d := range dirs {
		files = append(files, File{Name: d.name, Dir: true, Mode: d.mode})
	}
	for _, l := range [][2]string{
		{"bin", "usr/bin"}, {"sbin", "usr/bin"}, {"lib", "usr/lib"}, {"lib64", "usr/lib"},
		{"usr/sbin", "bin"}, {"usr/lib64", "lib"}, {"var/run", "../run"},
	} {
		files = append(files, File{Name: l[0], Link: l[1]})
	}
	files = append(files,
		File{Name: "etc/passwd", Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:99:99:Unprivileged User:/dev/null:/bin/false\n")},
		File{Name: "etc/group", Data: []byte("root:x:0:\nbin:x:1:\nsys:x:2:\nkmem:x:3:\nwheel:x:4:\ntty:x:5:\ntape:x:6:\n" +
			"daemon:x:7:\nfloppy:x:8:\ndisk:x:9:\nlp:x:10:\ndialout:x:11:\naudio:x:12:\nvideo:x:13:\nutmp:x:14:\n" +
			"adm:x:15:\ncdrom:x:16:\noptical:x:17:\nmail:x:18:\nstorage:x:19:\nscanner:x:20:\nnetwork:x:21:\n" +
			"kvm:x:24:\ninput:x:25:\nplugdev:x:26:\nnogroup:x:99:\nusers:x:100:\n")},
		File{Name: "etc/shells", Data: []byte("# /etc/shells: valid login shells\n")},
		File{Name: "etc/profile", Data: []byte("# /etc/profile\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/bin:/usr/sbin:/sbin:/bin\n" +
			"for f in /etc/profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\nunset f\n")},
		File{Name: "etc/os-release", Data: []byte("NAME=\"Void\"\nID=\"void\"\nPRETTY_NAME=\"Void Linux (banger fixture: Debian bookworm binaries)\"\n" +
			"HOME_URL=\"https://voidlinux.org/\"\n")},
		File{Name: "etc/hosts", Data: []byte("127.0.0.1 localhost\n::1 localhost\n")},
	)
	return Pkg{Name: "base-files", Version: "0.145_1", ShortDesc: "Void Linux base system files (banger fixture)", Files: files}
}

// kernelPkg repacks the Debian cloud kernel as linux6.12, Void style:
// /boot/vmlinuz-<release>, /boot/config-<release> and
// /usr/lib/modules/<release> with zstd-compressed modules and the
// modules.dep that depmod writes, as Void's template does.
func kernelPkg(ctx context.Context, r runner.Runner, kp *kernel.Package, work string) (Pkg, error) {
	tree := filepath.Join(work, "void", "linux6.12")
	boot := filepath.Join(tree, "boot")
	if err := os.MkdirAll(boot, 0o755); err != nil {
		return Pkg{}, err
	}
	for _, f := range [][2]string{{kp.Vmlinuz, "vmlinuz-" + kp.Version}, {kp.Config, "config-" + kp.Version}} {
		if err := copyPlain(f[0], filepath.Join(boot, f[1])); err != nil {
			return Pkg{}, err
		}
	}
	mods := filepath.Join(tree, "usr/lib/modules", kp.Version)
	var kos []string
	err := filepath.WalkDir(kp.ModulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(kp.ModulesDir, p)
		dst := filepath.Join(mods, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			return nil // build/ and source/ point at headers the package does not ship
		case strings.HasSuffix(p, ".ko"):
			kos = append(kos, rel)
			return nil
		default:
			return copyPlain(p, dst)
		}
	})
	if err != nil {
		return Pkg{}, err
	}
	errs := make([]error, len(kos))
	parallel(len(kos), 2, func(i int) {
		errs[i] = compressZstd(filepath.Join(kp.ModulesDir, kos[i]), filepath.Join(mods, kos[i]+".zst"))
	})
	if err := errors.Join(errs...); err != nil {
		return Pkg{}, err
	}
	depmod, err := findDepmod()
	if err != nil {
		return Pkg{}, err
	}
	if _, err := r.Run(ctx, depmod, "-b", filepath.Join(tree, "usr"), kp.Version); err != nil {
		return Pkg{}, fmt.Errorf("running depmod: %w", err)
	}
	return Pkg{Name: "linux6.12", Version: voidVersion(kp.DebVersion), Tree: tree,
		ShortDesc: "Linux kernel and modules (banger fixture: Debian " + kp.Version + " " + kp.DebVersion + ")"}, nil
}

func findDepmod() (string, error) {
	for _, p := range []string{"/usr/sbin/depmod", "/sbin/depmod", "/usr/bin/depmod"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("finding depmod: not installed: run 'apt-get install kmod'")
}

func copyPlain(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func compressZstd(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	zw, err := zstd.NewWriter(out, zstd.WithEncoderConcurrency(1))
	if err != nil {
		out.Close()
		return err
	}
	if _, err := io.Copy(zw, bufio.NewReader(in)); err != nil {
		zw.Close()
		out.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// parallel runs f(0..n-1) on at most workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Go(func() {
			for i := range next {
				f(i)
			}
		})
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}
