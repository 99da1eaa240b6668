// Package void stages a Void Linux kernel and builds a Void Linux root image from a Void repository.
package void

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/image/initramfs"
	"github.com/banger/banger/internal/image/kernel"
	"github.com/banger/banger/internal/xbps"
)

// KernelPackage is the Void kernel package void-kernel stages by default.
const KernelPackage = "linux6.12"

// KernelManifestFile is written last into a staged kernel directory: a
// directory without it (or whose files do not match it) is half-made.
const KernelManifestFile = "kernel.json"

// Files of a staged kernel directory.
const (
	FileVmlinux      = "vmlinux"
	FileVmlinuz      = "vmlinuz"
	FileKernelConfig = "kernel.config"
	FileInitrd       = "initrd.img"
	DirModules       = "modules"
)

// kernelSchema is the version of kernel.json's format.
const kernelSchema = 1

// FileSum is one staged file with its sha256 and size.
type FileSum struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// KernelManifest is kernel.json.
type KernelManifest struct {
	Schema int `json:"schema"`
	// Package is the kernel package's pkgver, e.g. linux6.12-6.12.68_1.
	Package string `json:"package"`
	// PackageSHA256 is the sha256 of its .xbps file (from the index).
	PackageSHA256 string `json:"package_sha256"`
	// Mirror is where it came from.
	Mirror string `json:"mirror"`
	// KernelVersion is the kernel release (uname -r), e.g. 6.12.68_1.
	KernelVersion string `json:"kernel_version"`
	// InitSHA256 is the sha256 of the banger-init put into the initramfs.
	InitSHA256 string `json:"init_sha256"`
	// Kernel, Vmlinuz, Config and Initrd are file names in the directory;
	// Modules is the directory holding <KernelVersion>/.
	Kernel  string `json:"kernel"`
	Vmlinuz string `json:"vmlinuz"`
	Config  string `json:"config"`
	Initrd  string `json:"initrd"`
	Modules string `json:"modules"`
	// InitrdModules are the modules the initramfs loads, in order.
	InitrdModules []string `json:"initrd_modules"`
	// ModuleFiles counts the files of the modules tree.
	ModuleFiles int `json:"module_files"`
	// Files are the staged files with their sums.
	Files []FileSum `json:"files"`

	dir string
}

// Path returns the absolute path of a file of the staged directory.
func (m *KernelManifest) Path(rel string) string { return filepath.Join(m.dir, rel) }

// Dir is the staged directory.
func (m *KernelManifest) Dir() string { return m.dir }

// IncompleteError reports a kernel directory that exists but is not a
// complete staging.
type IncompleteError struct {
	Dir    string
	Reason string
}

func (e *IncompleteError) Error() string {
	return fmt.Sprintf("void kernel directory %s is incomplete (%s): run 'make void-kernel' to stage it again, or remove it", e.Dir, e.Reason)
}

// LoadKernel reads a staged kernel directory and checks it: kernel.json
// must be there and every file it lists must exist with its recorded size,
// as must the modules tree. verify also compares the sha256 sums. A missing
// directory gives an error matching fs.ErrNotExist; a half-made one an
// *IncompleteError.
func LoadKernel(dir string, verify bool) (*KernelManifest, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("loading void kernel: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, KernelManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &IncompleteError{Dir: dir, Reason: "no " + KernelManifestFile}
	}
	if err != nil {
		return nil, fmt.Errorf("loading void kernel: %w", err)
	}
	m := &KernelManifest{dir: dir}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, &IncompleteError{Dir: dir, Reason: "unreadable " + KernelManifestFile + ": " + err.Error()}
	}
	if m.Schema != kernelSchema {
		return nil, &IncompleteError{Dir: dir, Reason: fmt.Sprintf("%s has schema %d, want %d", KernelManifestFile, m.Schema, kernelSchema)}
	}
	if m.KernelVersion == "" || strings.ContainsAny(m.KernelVersion, "/ ") {
		return nil, &IncompleteError{Dir: dir, Reason: fmt.Sprintf("invalid kernel version %q", m.KernelVersion)}
	}
	want := map[string]bool{m.Kernel: true, m.Vmlinuz: true, m.Config: true, m.Initrd: true}
	for _, f := range m.Files {
		if !filepath.IsLocal(f.Path) {
			return nil, &IncompleteError{Dir: dir, Reason: fmt.Sprintf("invalid path %q", f.Path)}
		}
		delete(want, f.Path)
		fi, err := os.Stat(filepath.Join(dir, f.Path))
		if err != nil {
			return nil, &IncompleteError{Dir: dir, Reason: err.Error()}
		}
		if fi.Size() != f.Size {
			return nil, &IncompleteError{Dir: dir, Reason: fmt.Sprintf("%s has %d bytes, %s says %d", f.Path, fi.Size(), KernelManifestFile, f.Size)}
		}
		if verify {
			sum, err := fileSHA256(filepath.Join(dir, f.Path))
			if err != nil {
				return nil, &IncompleteError{Dir: dir, Reason: err.Error()}
			}
			if sum != f.SHA256 {
				return nil, &IncompleteError{Dir: dir, Reason: fmt.Sprintf("%s has sha256 %s, %s says %s", f.Path, sum, KernelManifestFile, f.SHA256)}
			}
		}
	}
	if len(want) > 0 {
		return nil, &IncompleteError{Dir: dir, Reason: KernelManifestFile + " does not list every file"}
	}
	mods := filepath.Join(dir, m.Modules, m.KernelVersion)
	if fi, err := os.Stat(mods); err != nil || !fi.IsDir() {
		return nil, &IncompleteError{Dir: dir, Reason: "no modules tree " + filepath.Join(m.Modules, m.KernelVersion)}
	}
	return m, nil
}

// KernelOptions describes a void-kernel staging.
type KernelOptions struct {
	// Out is the staged directory, e.g. build/runtime/void-kernel.
	Out string
	// Mirror is the Void mirror; default xbps.MirrorFromEnv().
	Mirror string
	// CacheDir keeps downloaded packages under void/; e.g. ~/.cache/banger.
	CacheDir string
	// Init is the static banger-init binary for the initramfs.
	Init string
	// Package is the kernel package; default KernelPackage.
	Package string
	// Log receives progress; default slog.Default().
	Log *slog.Logger
}

func (o *KernelOptions) defaults() error {
	if o.Out == "" {
		return errors.New("staging void kernel: no output directory given: pass --out (for example build/runtime/void-kernel)")
	}
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return fmt.Errorf("staging void kernel: %w", err)
	}
	o.Out = out
	if o.Mirror == "" {
		o.Mirror = xbps.MirrorFromEnv()
	}
	if o.Package == "" {
		o.Package = KernelPackage
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.CacheDir == "" {
		return errors.New("staging void kernel: no cache directory given")
	}
	if o.Init == "" {
		return errors.New("staging void kernel: no banger-init binary given: build it with `make build` and pass --init build/bin/banger-init")
	}
	if fi, err := os.Stat(o.Init); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("staging void kernel: banger-init binary %s is missing or not a file: build it with `make build`", o.Init)
	}
	return nil
}

// packageCache is where verified .xbps files are kept.
func packageCache(cacheDir string) string { return filepath.Join(cacheDir, "void", "packages") }

// StageKernel stages the Void kernel package of opts into opts.Out: it reads
// the repository index, resolves the package and its dependencies (so that
// an inconsistent repository is refused), downloads only the kernel package
// (checked against the index's sha256 before it is unpacked), extracts the
// ELF vmlinux from its bzImage, copies the config and the modules tree, and
// writes an initramfs with banger-init and the virtio modules (decompressed).
// Everything is staged beside opts.Out and renamed into place, kernel.json
// last; an unchanged package and banger-init leave a complete staging alone.
func StageKernel(ctx context.Context, opts KernelOptions) (*KernelManifest, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	log := opts.Log
	start := time.Now()
	repo, err := xbps.NewRepo(opts.Mirror, packageCache(opts.CacheDir))
	if err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	idx, err := repo.Index(ctx)
	if err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	deps, err := idx.Resolve(opts.Package)
	if err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	pkg := idx.Find(opts.Package)
	log.Info("resolved kernel package", "package", pkg.Pkgver, "dependencies", len(deps)-1, "mirror", opts.Mirror)
	initSum, err := fileSHA256(opts.Init)
	if err != nil {
		return nil, fmt.Errorf("staging void kernel: hashing banger-init: %w", err)
	}
	if m, err := LoadKernel(opts.Out, false); err == nil && m.Package == pkg.Pkgver && m.PackageSHA256 == pkg.SHA256 && m.InitSHA256 == initSum {
		log.Info("void kernel already staged", "dir", opts.Out, "kernel", m.KernelVersion)
		return m, nil
	}

	parent := filepath.Dir(opts.Out)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	unlock, err := lockPath(filepath.Join(parent, "."+filepath.Base(opts.Out)+".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	work, err := os.MkdirTemp(parent, "."+filepath.Base(opts.Out)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	defer os.RemoveAll(work)

	t := time.Now()
	file, err := repo.Fetch(ctx, pkg)
	if err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	log.Info("fetched kernel package", "package", pkg.Pkgver, "size", pkg.Size, "took", since(t))
	t = time.Now()
	unpacked := filepath.Join(work, "package")
	if err := os.Mkdir(unpacked, 0o755); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(unpacked)
	if err != nil {
		return nil, err
	}
	_, err = xbps.Unpack(file, pkg, root, xbps.UnpackOptions{})
	root.Close()
	if err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	log.Info("unpacked kernel package", "took", since(t))

	kver, err := findKernelVersion(unpacked)
	if err != nil {
		return nil, fmt.Errorf("staging void kernel from %s: %w", pkg.Pkgver, err)
	}
	kp, err := kernel.Open(unpacked, kver, pkg.Version())
	if err != nil {
		return nil, fmt.Errorf("staging void kernel from %s: %w", pkg.Pkgver, err)
	}
	stage := filepath.Join(work, "stage")
	if err := os.MkdirAll(filepath.Join(stage, DirModules), 0o755); err != nil {
		return nil, err
	}
	t = time.Now()
	if err := copyFile(kp.Vmlinuz, filepath.Join(stage, FileVmlinuz)); err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	if err := copyFile(kp.Config, filepath.Join(stage, FileKernelConfig)); err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	if err := kernel.ExtractVmlinuxFile(kp.Vmlinuz, filepath.Join(stage, FileVmlinux)); err != nil {
		return nil, fmt.Errorf("staging void kernel from %s: %w", pkg.Pkgver, err)
	}
	log.Info("extracted vmlinux", "kernel", kver, "took", since(t))
	modules := filepath.Join(stage, DirModules, kver)
	if err := os.Rename(kp.ModulesDir, modules); err != nil {
		return nil, fmt.Errorf("staging void kernel: moving modules: %w", err)
	}
	// The package links build/ and source/ to kernel headers it does not ship.
	for _, l := range []string{"build", "source"} {
		if fi, err := os.Lstat(filepath.Join(modules, l)); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			os.Remove(filepath.Join(modules, l))
		}
	}
	nfiles, err := countFiles(modules)
	if err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}

	t = time.Now()
	view := filepath.Join(work, "initrd-modules")
	mods, err := initrdModules(modules, filepath.Join(stage, FileKernelConfig), view, initramfs.DefaultModules())
	if err != nil {
		return nil, fmt.Errorf("staging void kernel: initramfs modules: %w", err)
	}
	if err := initramfs.Build(filepath.Join(stage, FileInitrd), initramfs.Spec{Init: opts.Init, KernelVersion: kver, Modules: mods}); err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	var modNames []string
	for _, m := range mods {
		modNames = append(modNames, m.Name)
	}
	log.Info("wrote initramfs", "modules", modNames, "took", since(t))

	m := &KernelManifest{
		Schema: kernelSchema, Package: pkg.Pkgver, PackageSHA256: pkg.SHA256, Mirror: opts.Mirror,
		KernelVersion: kver, InitSHA256: initSum,
		Kernel: FileVmlinux, Vmlinuz: FileVmlinuz, Config: FileKernelConfig, Initrd: FileInitrd, Modules: DirModules,
		InitrdModules: modNames, ModuleFiles: nfiles,
	}
	for _, f := range []string{FileVmlinux, FileVmlinuz, FileKernelConfig, FileInitrd} {
		s, err := sumFile(filepath.Join(stage, f))
		if err != nil {
			return nil, fmt.Errorf("staging void kernel: %w", err)
		}
		s.Path = f
		m.Files = append(m.Files, s)
	}
	js, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	// kernel.json goes in last: the directory is complete once it is there.
	if err := os.WriteFile(filepath.Join(stage, KernelManifestFile), append(js, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	if err := swapDir(stage, opts.Out, work); err != nil {
		return nil, fmt.Errorf("staging void kernel: %w", err)
	}
	m.dir = opts.Out
	log.Info("void kernel staged", "dir", opts.Out, "kernel", kver, "package", pkg.Pkgver, "took", since(start))
	return m, nil
}

// findKernelVersion returns the release of the one boot/vmlinuz-<release>
// in an unpacked kernel package.
func findKernelVersion(dir string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if err != nil {
		return "", err
	}
	if len(matches) != 1 {
		return "", fmt.Errorf("found %d boot/vmlinuz-* files, want exactly 1", len(matches))
	}
	kver := strings.TrimPrefix(filepath.Base(matches[0]), "vmlinuz-")
	if kver == "" || strings.ContainsAny(kver, "/ ") {
		return "", fmt.Errorf("invalid kernel release %q", kver)
	}
	return kver, nil
}

// swapDir puts the directory stage at final: an existing final is moved
// aside into work (removed with it) first. In between, final does not exist,
// which LoadKernel reports as not staged, never as a mix of two stagings.
func swapDir(stage, final, work string) error {
	if _, err := os.Lstat(final); err == nil {
		if err := os.Rename(final, filepath.Join(work, "old")); err != nil {
			return fmt.Errorf("moving the old %s aside: %w", final, err)
		}
	}
	if err := os.Rename(stage, final); err != nil {
		return fmt.Errorf("installing %s: %w", final, err)
	}
	return nil
}

// lockPath takes an exclusive lock on path; the returned func releases it.
func lockPath(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w: another build is using it; wait for it to finish", path, err)
	}
	return func() { f.Close() }, nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

func fileSHA256(path string) (string, error) {
	s, err := sumFile(path)
	return s.SHA256, err
}

func sumFile(path string) (FileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileSum{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return FileSum{}, fmt.Errorf("hashing %s: %w", path, err)
	}
	return FileSum{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFrom(dst, in, 0o644)
}

func countFiles(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			n++
		}
		return nil
	})
	return n, err
}
