package void

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/image/rootfs"
	"github.com/banger/banger/internal/image/workseed"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/xbps"
)

// RootfsPackages are the Void packages the image is made of (with their
// run_depends): x86_64 glibc, runit as init, dash as /bin/sh and bash for
// root, sshd, the developer baseline, docker and compose. dash comes before
// bash, so that the sh alternative stays dash's, as on Void.
var RootfsPackages = []string{
	"base-files", "dash", "bash", "coreutils", "findutils", "diffutils", "grep", "sed", "gawk",
	"tar", "gzip", "xz", "less", "util-linux", "shadow", "procps-ng", "iproute2", "kmod", "inetutils-hostname",
	"e2fsprogs", "ca-certificates", "curl", "git", "tmux", "openssh", "runit",
	"docker", "docker-compose", "iptables",
}

// DefaultRootfsSize is the image size when RootfsOptions.Size is empty.
const DefaultRootfsSize = "4G"

// RootfsOptions describes a Void image build.
type RootfsOptions struct {
	// Out is the image, e.g. build/runtime/rootfs-xbps.ext4.
	Out string
	// WorkSeed is its work-seed image (the VM's /root), e.g.
	// build/runtime/work-seed-xbps.ext4; empty builds none.
	WorkSeed string
	// AuthorizedKey is the public key the work-seed authorizes for root
	// (the bundle's id_ed25519.pub).
	AuthorizedKey []byte
	// Mirror is the Void mirror; default xbps.MirrorFromEnv().
	Mirror string
	// CacheDir keeps downloaded packages and the staging tree under void/.
	CacheDir string
	// Agent is the static banger-vsock-agent binary.
	Agent string
	// KernelDir is a staged void-kernel directory whose modules the image
	// gets when the staging is complete; when it does not exist the modules
	// come from the repository's kernel package. A half-made one is refused.
	KernelDir string
	// Packages overrides RootfsPackages.
	Packages []string
	// Size is the mkfs.ext4 size; default DefaultRootfsSize.
	Size string
	// Log receives progress; default slog.Default().
	Log *slog.Logger
}

func (o *RootfsOptions) defaults() error {
	if o.Out == "" {
		return errors.New("building void rootfs: no output image given: pass --out (for example build/runtime/rootfs-xbps.ext4)")
	}
	if o.Mirror == "" {
		o.Mirror = xbps.MirrorFromEnv()
	}
	if len(o.Packages) == 0 {
		o.Packages = RootfsPackages
	}
	if o.Size == "" {
		o.Size = DefaultRootfsSize
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.CacheDir == "" {
		return errors.New("building void rootfs: no cache directory given")
	}
	if o.Agent == "" {
		return errors.New("building void rootfs: no agent binary given: build it with `make build` and pass --agent build/runtime/banger-vsock-agent")
	}
	if o.WorkSeed != "" && len(o.AuthorizedKey) == 0 {
		return errors.New("building void rootfs: no authorized key for the work-seed: pass --ssh-key build/runtime/id_ed25519.pub")
	}
	if os.Geteuid() != 0 {
		return errors.New("building void rootfs: needs root (the image's files keep their packages' owners): run it as root, e.g. sudo make rootfs-void")
	}
	return nil
}

// BuildRootfs builds the Void image: it resolves opts.Packages in the
// repository, downloads them (each checked against the index's sha256),
// unpacks them into a staging tree in order, applies their alternatives and
// system accounts (read from their INSTALL scripts, which are never run),
// installs the kernel modules, banger's runit stages and services, the
// agent, mise and opencode, then fills opts.Out with mkfs.ext4 -d and writes
// the work-seed. Nothing from the repository is executed on the host.
func BuildRootfs(ctx context.Context, r runner.Runner, opts RootfsOptions) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	log := opts.Log
	start := time.Now()
	fail := func(err error) error { return fmt.Errorf("building void rootfs %s: %w", opts.Out, err) }

	// The kernel modules: a complete staging, or the repository's package.
	var km *KernelManifest
	if opts.KernelDir != "" {
		m, err := LoadKernel(opts.KernelDir, false)
		switch {
		case err == nil:
			km = m
			log.Info("using the staged void kernel's modules", "dir", m.Dir(), "kernel", m.KernelVersion)
		case errors.Is(err, fs.ErrNotExist):
			log.Info("no staged void kernel; taking the modules from the repository's kernel package", "dir", opts.KernelDir)
		default:
			return fail(err)
		}
	}

	repo, err := xbps.NewRepo(opts.Mirror, packageCache(opts.CacheDir))
	if err != nil {
		return fail(err)
	}
	idx, err := repo.Index(ctx)
	if err != nil {
		return fail(err)
	}
	pkgs, err := idx.Resolve(opts.Packages...)
	if err != nil {
		return fail(err)
	}
	if err := xbps.CheckShlibs(pkgs); err != nil {
		return fail(err)
	}
	var kpkg *xbps.Package
	if km == nil {
		if kpkg = idx.Find(KernelPackage); kpkg == nil {
			return fail(fmt.Errorf("the repository has no %s for the kernel modules: stage a kernel first with 'make void-kernel'", KernelPackage))
		}
	}
	log.Info("resolved packages", "asked", len(opts.Packages), "total", len(pkgs), "mirror", opts.Mirror)

	t := time.Now()
	toFetch := slices.Clone(pkgs)
	if kpkg != nil {
		toFetch = append(toFetch, kpkg)
	}
	files, err := fetchAll(ctx, repo, toFetch)
	if err != nil {
		return fail(err)
	}
	log.Info("fetched packages", "packages", len(toFetch), "took", since(t))

	work := filepath.Join(opts.CacheDir, "void")
	if err := os.MkdirAll(work, 0o755); err != nil {
		return fail(err)
	}
	staging, err := os.MkdirTemp(work, "staging-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(staging)
	if err := os.Chmod(staging, 0o755); err != nil {
		return fail(err)
	}
	root, err := os.OpenRoot(staging)
	if err != nil {
		return fail(err)
	}
	defer root.Close()

	t = time.Now()
	var vars []*xbps.InstallVars
	var nfiles int
	var nbytes int64
	for _, p := range pkgs {
		u, err := xbps.Unpack(files[p.Name], p, root, xbps.UnpackOptions{Owners: true})
		if err != nil {
			return fail(err)
		}
		nfiles += u.Files
		nbytes += u.Bytes
		if u.Install != nil {
			iv, err := xbps.ParseInstall(u.Install)
			if err != nil {
				return fail(fmt.Errorf("%s: %w", p.Pkgver, err))
			}
			vars = append(vars, iv)
		}
	}
	log.Info("unpacked packages", "packages", len(pkgs), "files", nfiles, "bytes", nbytes, "took", since(t))

	groups, err := applyAlternatives(root, pkgs)
	if err != nil {
		return fail(err)
	}
	log.Info("alternatives", "groups", groups)
	if err := setupAccounts(root, vars); err != nil {
		return fail(err)
	}

	t = time.Now()
	kver, err := installModules(ctx, r, root, staging, km, kpkg, files, work)
	if err != nil {
		return fail(err)
	}
	log.Info("installed kernel modules", "kernel", kver, "took", since(t))

	t = time.Now()
	bins, err := rootfs.FetchImageTools(ctx, r, opts.CacheDir, log)
	if err != nil {
		return fail(err)
	}
	if err := customize(root, opts.Agent, bins); err != nil {
		return fail(err)
	}
	log.Info("installed banger's files", "took", since(t))

	t = time.Now()
	if err := os.MkdirAll(filepath.Dir(opts.Out), 0o755); err != nil {
		return fail(err)
	}
	tmp := opts.Out + ".tmp"
	if err := ext4.Make(ctx, r, staging, "rootfs", tmp, opts.Size, true); err != nil {
		os.Remove(tmp)
		return fail(err)
	}
	if err := os.Rename(tmp, opts.Out); err != nil {
		os.Remove(tmp)
		return fail(err)
	}
	log.Info("made rootfs image", "image", opts.Out, "size", opts.Size, "took", since(t))
	if opts.WorkSeed != "" {
		if err := workseed.Build(ctx, r, opts.AuthorizedKey, opts.WorkSeed); err != nil {
			return fail(err)
		}
		log.Info("made work-seed", "image", opts.WorkSeed)
	}
	log.Info("void rootfs ready", "image", opts.Out, "packages", len(pkgs), "kernel", kver, "took", since(start))
	return nil
}

// fetchAll downloads pkgs, a few at a time, and returns their files by name.
func fetchAll(ctx context.Context, repo *xbps.Repo, pkgs []*xbps.Package) (map[string]string, error) {
	files := make(map[string]string, len(pkgs))
	var mu sync.Mutex
	errs := make([]error, len(pkgs))
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, p := range pkgs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			f, err := repo.Fetch(ctx, p)
			if err != nil {
				errs[i] = err
				return
			}
			mu.Lock()
			files[p.Name] = f
			mu.Unlock()
		})
	}
	wg.Wait()
	return files, errors.Join(errs...)
}

// applyAlternatives makes the symlinks of each alternatives group, for the
// first package in install order that has the group, as xbps does.
func applyAlternatives(root *os.Root, pkgs []*xbps.Package) ([]string, error) {
	taken := map[string]bool{}
	var applied []string
	for _, p := range pkgs {
		for _, group := range sortedKeys(p.Alternatives) {
			if taken[group] {
				continue
			}
			taken[group] = true
			for _, a := range p.Alternatives[group] {
				link, target, _ := strings.Cut(a, ":")
				if !path.IsAbs(link) {
					link = path.Join(path.Dir(target), link)
				}
				link = path.Clean(link)
				if path.IsAbs(target) {
					rel, err := filepath.Rel(path.Dir(link), path.Clean(target))
					if err != nil {
						return nil, fmt.Errorf("alternatives %s of %s: %w", group, p.Pkgver, err)
					}
					target = rel
				}
				rel := strings.TrimPrefix(link, "/")
				if !filepath.IsLocal(rel) {
					return nil, fmt.Errorf("alternatives %s of %s: link %q leaves the tree", group, p.Pkgver, link)
				}
				if err := symlinkIn(root, target, rel); err != nil {
					return nil, fmt.Errorf("alternatives %s of %s: %w", group, p.Pkgver, err)
				}
			}
			applied = append(applied, group+"="+p.Name)
		}
	}
	return applied, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// symlinkIn makes rel a symlink to target inside root, replacing a file or
// symlink that is there.
func symlinkIn(root *os.Root, target, rel string) error {
	if err := root.MkdirAll(path.Dir(rel), 0o755); err != nil {
		return err
	}
	if err := removeNonDir(root, rel); err != nil {
		return err
	}
	return root.Symlink(target, rel)
}

// removeNonDir removes rel when it is a file or a symlink; a directory is an error.
func removeNonDir(root *os.Root, rel string) error {
	fi, err := root.Lstat(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory", rel)
	}
	return root.Remove(rel)
}

// writeIn writes content to rel inside root with mode perm, replacing what
// is there (a symlink is replaced, never followed).
func writeIn(root *os.Root, rel string, perm fs.FileMode, content []byte) error {
	if err := root.MkdirAll(path.Dir(rel), 0o755); err != nil {
		return err
	}
	if err := removeNonDir(root, rel); err != nil {
		return err
	}
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", rel, err)
	}
	return root.Chmod(rel, perm)
}

// copyIn copies the host file src to rel inside root with mode perm.
func copyIn(root *os.Root, src, rel string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := root.MkdirAll(path.Dir(rel), 0o755); err != nil {
		return err
	}
	if err := removeNonDir(root, rel); err != nil {
		return err
	}
	out, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copying %s to %s: %w", src, rel, err)
	}
	return root.Chmod(rel, perm)
}

// readIn returns the content of rel inside root, or nil when it does not exist.
func readIn(root *os.Root, rel string) ([]byte, error) {
	f, err := root.Open(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 16<<20))
}

// customize installs banger's part of the image.
func customize(root *os.Root, agent string, bins map[string]string) error {
	files := []struct {
		rel     string
		mode    fs.FileMode
		content string
	}{
		{"etc/runit/1", 0o755, stage1},
		{"etc/runit/2", 0o755, stage2},
		{"etc/runit/3", 0o755, stage3},
		{"etc/runit/ctrlaltdel", 0o755, ctrlaltdel},
		{"etc/ssh/sshd_config", 0o644, sshdConfig},
		{"etc/fstab", 0o644, fstab},
		{"etc/hosts", 0o644, hosts},
		{"etc/hostname", 0o644, ""},
		{"etc/resolv.conf", 0o644, resolvConf},
		{"etc/profile.d/banger-mise.sh", 0o644, miseProfile},
		{"etc/profile.d/banger-sv.sh", 0o644, svProfile},
	}
	for _, s := range services {
		files = append(files, struct {
			rel     string
			mode    fs.FileMode
			content string
		}{"etc/sv/" + s.name + "/run", 0o755, s.run})
		if s.log {
			files = append(files, struct {
				rel     string
				mode    fs.FileMode
				content string
			}{"etc/sv/" + s.name + "/log/run", 0o755, logRun(s.name)})
		}
	}
	for _, f := range files {
		if err := writeIn(root, f.rel, f.mode, []byte(f.content)); err != nil {
			return err
		}
	}
	// Interactive non-login shells read bash's system bashrc: Void's bash
	// reads /etc/bash/bashrc, Debian's (in the fixture) /etc/bash.bashrc.
	for _, rc := range []string{"etc/bash/bashrc", "etc/bash.bashrc"} {
		b, err := readIn(root, rc)
		if err != nil {
			return err
		}
		if b != nil && !strings.Contains(string(b), "mise activate") {
			if err := writeIn(root, rc, 0o644, append(b, miseProfile...)); err != nil {
				return err
			}
		}
	}
	for _, s := range services {
		// runit's state lives in /run, so that the image's own files stay clean.
		if err := symlinkIn(root, "/run/runit/supervise."+s.name, "etc/sv/"+s.name+"/supervise"); err != nil {
			return err
		}
		if s.log {
			if err := symlinkIn(root, "/run/runit/supervise."+s.name+"-log", "etc/sv/"+s.name+"/log/supervise"); err != nil {
				return err
			}
		}
		if err := symlinkIn(root, "/etc/sv/"+s.name, "etc/runit/runsvdir/default/"+s.name); err != nil {
			return err
		}
	}
	// Void's name for the running services' directory.
	if err := symlinkIn(root, "/etc/runit/runsvdir/default", "var/service"); err != nil {
		return err
	}
	if err := copyIn(root, agent, strings.TrimPrefix(rootfs.AgentPath, "/"), 0o755); err != nil {
		return fmt.Errorf("installing agent: %w", err)
	}
	for _, name := range sortedKeys(bins) {
		if err := copyIn(root, bins[name], "usr/local/bin/"+name, 0o755); err != nil {
			return fmt.Errorf("installing %s: %w", name, err)
		}
	}
	if err := caBundle(root); err != nil {
		return err
	}
	// runit-init is init; it execs runit when it is PID 1.
	if _, err := root.Stat("usr/bin/runit-init"); err != nil {
		return fmt.Errorf("the image has no /usr/bin/runit-init (package runit): %w", err)
	}
	if _, err := root.Lstat("usr/bin/init"); errors.Is(err, fs.ErrNotExist) {
		if err := symlinkIn(root, "runit-init", "usr/bin/init"); err != nil {
			return err
		}
	}
	// Host keys are made in the guest at first boot, never baked in.
	ents, err := fs.ReadDir(root.FS(), "etc/ssh")
	if err != nil {
		return fmt.Errorf("listing etc/ssh: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ssh_host_") {
			if err := root.Remove("etc/ssh/" + e.Name()); err != nil {
				return err
			}
		}
	}
	for _, d := range []struct {
		rel  string
		mode fs.FileMode
	}{{"root", 0o700}, {"tmp", 0o777 | fs.ModeSticky}, {"var/tmp", 0o777 | fs.ModeSticky}, {"run", 0o755},
		{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"etc/banger", 0o700}} {
		if err := root.MkdirAll(d.rel, 0o755); err != nil {
			return err
		}
		if err := root.Chmod(d.rel, d.mode); err != nil {
			return err
		}
	}
	return nil
}

// caBundle writes /etc/ssl/certs/ca-certificates.crt from the certificates
// of /usr/share/ca-certificates when the image has none: the ca-certificates
// package makes it in its INSTALL script, which banger does not run.
func caBundle(root *os.Root) error {
	const bundle = "etc/ssl/certs/ca-certificates.crt"
	if _, err := root.Stat(bundle); err == nil {
		return nil
	}
	var certs []string
	err := fs.WalkDir(root.FS(), "usr/share/ca-certificates", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasSuffix(p, ".crt") {
			certs = append(certs, p)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) || len(certs) == 0 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing CA certificates: %w", err)
	}
	slices.Sort(certs)
	var b strings.Builder
	for _, c := range certs {
		data, err := readIn(root, c)
		if err != nil {
			return err
		}
		b.Write(data)
		if len(data) > 0 && data[len(data)-1] != '\n' {
			b.WriteByte('\n')
		}
	}
	return writeIn(root, bundle, 0o644, []byte(b.String()))
}

// installModules puts one kernel's modules under /usr/lib/modules: the
// staged kernel's when km is set, else those of the kernel package kpkg.
// It runs the host's depmod when the tree has no modules.dep.
func installModules(ctx context.Context, r runner.Runner, root *os.Root, staging string, km *KernelManifest, kpkg *xbps.Package, files map[string]string, work string) (string, error) {
	var src, kver string
	if km != nil {
		kver = km.KernelVersion
		src = filepath.Join(km.Path(km.Modules), kver)
	} else {
		tmp, err := os.MkdirTemp(work, "kernel-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(tmp)
		kroot, err := os.OpenRoot(tmp)
		if err != nil {
			return "", err
		}
		_, err = xbps.Unpack(files[kpkg.Name], kpkg, kroot, xbps.UnpackOptions{})
		kroot.Close()
		if err != nil {
			return "", err
		}
		if kver, err = findKernelVersion(tmp); err != nil {
			return "", fmt.Errorf("%s: %w", kpkg.Pkgver, err)
		}
		src = filepath.Join(tmp, "usr/lib/modules", kver)
	}
	dst := "usr/lib/modules/" + kver
	if err := copyTreeIn(root, src, dst); err != nil {
		return "", fmt.Errorf("installing kernel modules: %w", err)
	}
	if _, err := root.Stat(dst + "/modules.dep"); errors.Is(err, fs.ErrNotExist) {
		depmod, err := findTool("depmod", "kmod")
		if err != nil {
			return "", err
		}
		if _, err := r.Run(ctx, depmod, "-b", filepath.Join(staging, "usr"), kver); err != nil {
			return "", fmt.Errorf("running depmod for %s: %w", kver, err)
		}
	}
	return kver, nil
}

// copyTreeIn copies the host tree src to dst inside root: directories,
// regular files and symlinks that stay inside the tree.
func copyTreeIn(root *os.Root, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := path.Join(dst, filepath.ToSlash(rel))
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			return root.MkdirAll(to, 0o755)
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if path.IsAbs(t) || slices.Contains(strings.Split(t, "/"), "..") {
				return nil // build/, source/: headers the image does not have
			}
			return symlinkIn(root, t, to)
		case fi.Mode().IsRegular():
			return copyIn(root, p, to, fi.Mode().Perm())
		}
		return nil
	})
}

// findTool returns the path of a host tool, with an error saying how to get it.
func findTool(tool, pkg string) (string, error) {
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, tool)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("finding %s: not installed: run 'apt-get install %s'", tool, pkg)
}
