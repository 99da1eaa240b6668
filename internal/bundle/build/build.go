// Package build builds a runtime bundle from Debian packages and banger's own code, with a cache keyed by recipe.
package build

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/image/initramfs"
	"github.com/banger/banger/internal/image/kernel"
	"github.com/banger/banger/internal/image/rootfs"
	"github.com/banger/banger/internal/image/workseed"
	"github.com/banger/banger/internal/runner"
)

// Options describes a runtime bundle build.
type Options struct {
	// Out is the bundle directory, e.g. build/runtime.
	Out string
	// CacheDir holds the kernel packages, debootstrap trees and finished
	// images; default DefaultCacheDir().
	CacheDir string
	// Init is the static banger-init binary put into the initramfs.
	Init string
	// Agent is the static banger-vsock-agent binary.
	Agent string
	// Mirror is the Debian mirror for debootstrap; empty means rootfs.DefaultMirror.
	Mirror string
	// Images lists the image kinds to build; default docker and minimal.
	Images []rootfs.Kind
	// Log receives progress; default slog.Default().
	Log *slog.Logger
}

// DefaultImages are the image kinds a build makes when Options.Images is empty.
var DefaultImages = []rootfs.Kind{rootfs.KindDocker, rootfs.KindMinimal}

// imageDescriptions are the bundle.json descriptions of the known kinds.
var imageDescriptions = map[rootfs.Kind]string{
	rootfs.KindDocker:  "systemd, sshd, docker.io, tmux, git, curl, mise, an opencode server on port 4096 and the agent",
	rootfs.KindMinimal: "sshd and the agent, with the agent as PID 1 (fast boots)",
}

// DefaultCacheDir is ${XDG_CACHE_HOME:-~/.cache}/banger.
func DefaultCacheDir() (string, error) {
	return rootfs.DefaultCacheDir()
}

// buildSteps are the operations Build orchestrates; tests replace them.
type buildSteps struct {
	fetchKernel    func(ctx context.Context, r runner.Runner, cacheDir string) (*kernel.Package, error)
	extractVmlinux func(src, dst string) error
	loadOrder      func(modulesDir string, names []string) ([]kernel.Module, error)
	initrdModules  func() []string
	buildInitramfs func(path string, s initramfs.Spec) error
	buildRootfs    func(ctx context.Context, r runner.Runner, opts rootfs.Options, out string) error
	buildWorkSeed  func(ctx context.Context, r runner.Runner, authorizedKey []byte, out string) error
}

func realSteps() buildSteps {
	return buildSteps{
		fetchKernel:    kernel.Fetch,
		extractVmlinux: kernel.ExtractVmlinuxFile,
		loadOrder:      kernel.LoadOrder,
		initrdModules:  initramfs.DefaultModules,
		buildInitramfs: initramfs.Build,
		buildRootfs:    rootfs.Build,
		buildWorkSeed:  workseed.Build,
	}
}

// Build makes or refreshes the runtime bundle in opts.Out. Every output is
// written under a temporary name and renamed into place, and an output whose
// content did not change is left alone, so a rebuild with nothing new takes
// seconds. bundle.json is removed before the first output changes and written
// last, so an interrupted build never leaves a bundle.json that lies. The
// bundle's SSH key pair survives rebuilds.
func Build(ctx context.Context, r runner.Runner, opts Options) error {
	return build(ctx, r, opts, realSteps())
}

// Check refuses options Build would refuse, before anything runs, and
// fills in the defaults.
func (o *Options) Check() error { return o.defaults() }

func (o *Options) defaults() error {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Out == "" {
		return errors.New("building runtime bundle: no output directory given: pass --out (for example build/runtime)")
	}
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return fmt.Errorf("building runtime bundle %s: %w", o.Out, err)
	}
	o.Out = out
	if o.CacheDir == "" {
		if o.CacheDir, err = DefaultCacheDir(); err != nil {
			return fmt.Errorf("building runtime bundle: %w", err)
		}
	}
	for _, f := range []struct{ flag, path, cmd string }{
		{"--init", o.Init, "banger-init"},
		{"--agent", o.Agent, "banger-vsock-agent"},
	} {
		if f.path == "" {
			return fmt.Errorf("building runtime bundle: no %s binary given: build it with `CGO_ENABLED=0 go build ./cmd/%s` (or `make`) and pass %s", f.cmd, f.cmd, f.flag)
		}
		fi, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("building runtime bundle: %s binary: %w: build it with `CGO_ENABLED=0 go build ./cmd/%s` (or `make`) or fix %s", f.cmd, err, f.cmd, f.flag)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("building runtime bundle: %s binary %s is not a regular file: fix %s", f.cmd, f.path, f.flag)
		}
	}
	if len(o.Images) == 0 {
		o.Images = DefaultImages
	}
	var kinds []rootfs.Kind
	for _, k := range o.Images {
		if _, ok := imageDescriptions[k]; !ok {
			return fmt.Errorf("building runtime bundle: unknown image %q: use %q or %q", k, rootfs.KindDocker, rootfs.KindMinimal)
		}
		if !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	o.Images = kinds
	return nil
}

// builder carries one build's state.
type builder struct {
	r     runner.Runner
	opts  Options
	steps buildSteps
	log   *slog.Logger

	mu       sync.Mutex
	sums     map[string]bundle.FileSum // published outputs by bundle path
	cache    map[string]bundle.StatSum // sums of the previous build's outputs
	dirty    sync.Once
	dirtyErr error
}

func build(ctx context.Context, r runner.Runner, opts Options, steps buildSteps) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	b := &builder{r: r, opts: opts, steps: steps, log: opts.Log, sums: map[string]bundle.FileSum{}}
	start := time.Now()
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return fmt.Errorf("building runtime bundle: creating %s: %w", opts.Out, err)
	}
	unlock, err := bundle.LockDir(opts.Out)
	if err != nil {
		return err
	}
	defer unlock()
	removeTemps(opts.Out)
	b.cache = bundle.LoadSumCache(opts.Out)

	var pkg *kernel.Package
	if err := b.stage("fetch kernel", func() (err error) {
		pkg, err = steps.fetchKernel(ctx, r, opts.CacheDir)
		return err
	}); err != nil {
		return err
	}
	b.log.Info("kernel", "version", pkg.Version, "deb_version", pkg.DebVersion)

	var authorized []byte
	g, gctx := newGroup(ctx)
	g.Go(func() error { return b.kernelStages(pkg) })
	for _, kind := range opts.Images {
		g.Go(func() error { return b.rootfsStage(gctx, kind, pkg) })
	}
	g.Go(func() error {
		if err := b.stage("ssh key", func() (err error) {
			authorized, _, err = bundle.EnsureKey(opts.Out, bundle.FileSSHKey)
			return err
		}); err != nil {
			return err
		}
		return b.stage("work-seed", func() error {
			return b.generated(bundle.FileWorkSeed, 0o644, func(tmp string) error {
				return steps.buildWorkSeed(gctx, r, authorized, tmp)
			})
		})
	})
	g.Go(func() error {
		return b.stage("agent", func() error {
			return b.copied(bundle.FileAgent, opts.Agent, 0o755)
		})
	})
	if err := g.Wait(); err != nil {
		return err
	}

	var bun *bundle.Bundle
	if err := b.stage("bundle.json", func() (err error) {
		bun, err = b.manifest(pkg.Version)
		if err != nil {
			return err
		}
		if err := bun.Save(); err != nil {
			return err
		}
		if err := bundle.SaveSumCache(opts.Out, b.sums); err != nil {
			b.log.Warn("not saving the sum cache; the next build rehashes everything", "err", err)
		}
		return nil
	}); err != nil {
		return err
	}
	b.log.Info("runtime bundle ready", "dir", opts.Out, "kernel", pkg.Version,
		"images", bun.ImageNames(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// kernelStages installs the kernel files, the modules tree and the initramfs.
func (b *builder) kernelStages(pkg *kernel.Package) error {
	if err := b.stage("kernel files", func() error {
		if err := b.copied(bundle.FileVmlinuz, pkg.Vmlinuz, 0o644); err != nil {
			return err
		}
		return b.copied(bundle.FileKernelConfig, pkg.Config, 0o644)
	}); err != nil {
		return err
	}
	if err := b.stage("vmlinux", func() error {
		return b.generated(bundle.FileKernel, 0o644, func(tmp string) error {
			return b.steps.extractVmlinux(pkg.Vmlinuz, tmp)
		})
	}); err != nil {
		return err
	}
	modules := filepath.Join(b.opts.Out, bundle.DirModules, pkg.Version)
	if err := b.stage("modules", func() error {
		return b.syncModules(pkg.ModulesDir, pkg.Version)
	}); err != nil {
		return err
	}
	return b.stage("initrd", func() error {
		order, err := b.steps.loadOrder(modules, b.steps.initrdModules())
		if err != nil {
			return err
		}
		return b.generated(bundle.FileInitrd, 0o644, func(tmp string) error {
			return b.steps.buildInitramfs(tmp, initramfs.Spec{Init: b.opts.Init, KernelVersion: pkg.Version, Modules: order})
		})
	})
}

// rootfsStage builds one image. The docker image gets the kernel's modules
// (overlay, bridge, netfilter) under /lib/modules.
func (b *builder) rootfsStage(ctx context.Context, kind rootfs.Kind, pkg *kernel.Package) error {
	ro := rootfs.Options{
		Kind:     kind,
		Agent:    b.opts.Agent,
		Mirror:   b.opts.Mirror,
		CacheDir: b.opts.CacheDir,
		Log:      b.log,
	}
	if kind == rootfs.KindDocker {
		ro.Modules = filepath.Dir(pkg.ModulesDir)
	}
	return b.stage("rootfs "+string(kind), func() error {
		return b.generated(bundle.RootfsFile(string(kind)), 0o644, func(tmp string) error {
			return b.steps.buildRootfs(ctx, b.r, ro, tmp)
		})
	})
}

// stage runs f, logging its duration, and names the stage in its error.
func (b *builder) stage(name string, f func() error) error {
	start := time.Now()
	b.log.Info("stage started", "stage", name)
	if err := f(); err != nil {
		return fmt.Errorf("building runtime bundle %s: %s: %w", b.opts.Out, name, err)
	}
	b.log.Info("stage done", "stage", name, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// markDirty removes bundle.json once, before the first output changes.
func (b *builder) markDirty() error {
	b.dirty.Do(func() {
		err := os.Remove(filepath.Join(b.opts.Out, bundle.FileName))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			b.dirtyErr = fmt.Errorf("removing stale %s: %w", bundle.FileName, err)
		}
	})
	return b.dirtyErr
}

func (b *builder) record(rel string, sum bundle.FileSum) {
	b.mu.Lock()
	b.sums[rel] = sum
	b.mu.Unlock()
}

// generated lets write make a new output at a temporary path, then renames it
// to rel unless rel already holds the same content.
func (b *builder) generated(rel string, perm fs.FileMode, write func(tmp string) error) error {
	final := filepath.Join(b.opts.Out, rel)
	tmp, err := bundle.TempPath(final)
	if err != nil {
		return fmt.Errorf("creating temporary %s: %w", rel, err)
	}
	defer os.Remove(tmp) // a no-op once renamed
	if err := write(tmp); err != nil {
		return err
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return fmt.Errorf("setting mode of %s: %w", rel, err)
	}
	// An output equal to the previous build's needs no hashing.
	if sum, ok := bundle.CachedSum(b.cache, b.opts.Out, rel); ok && bundle.SameData(tmp, final) {
		return b.keep(rel, sum, perm)
	}
	sum, same, err := bundle.HashCompare(tmp, final)
	if err != nil {
		return err
	}
	if same {
		return b.keep(rel, sum, perm)
	}
	return b.publish(rel, tmp, sum)
}

// keep records rel, already in the output with sum, as this build's,
// fixing only its mode.
func (b *builder) keep(rel string, sum bundle.FileSum, perm fs.FileMode) error {
	b.log.Debug("unchanged", "file", rel)
	b.record(rel, sum)
	return ensureMode(filepath.Join(b.opts.Out, rel), perm)
}

// copied installs src as rel unless rel already holds the same content.
func (b *builder) copied(rel, src string, perm fs.FileMode) error {
	final := filepath.Join(b.opts.Out, rel)
	sum, same, err := bundle.HashCompare(src, final)
	if err != nil {
		return err
	}
	if same {
		return b.keep(rel, sum, perm)
	}
	tmp, sum, err := bundle.CopyToTemp(src, final, perm)
	if err != nil {
		return fmt.Errorf("copying %s to %s: %w", src, final, err)
	}
	defer os.Remove(tmp)
	return b.publish(rel, tmp, sum)
}

// publish renames tmp, whose content is sum, to rel.
func (b *builder) publish(rel, tmp string, sum bundle.FileSum) error {
	if err := b.markDirty(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(b.opts.Out, rel)); err != nil {
		return fmt.Errorf("installing %s: %w", rel, err)
	}
	b.log.Info("updated", "file", rel, "size", sum.Size)
	b.record(rel, sum)
	return nil
}

func ensureMode(path string, perm fs.FileMode) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm() != perm {
		return os.Chmod(path, perm)
	}
	return nil
}

// syncModules makes out/modules/<kver> a copy of src, copying only files that
// changed, and removes other kernel versions' trees. Symlinks that could leave
// the tree (Debian's build and source links) are left out.
func (b *builder) syncModules(src, kver string) error {
	root := filepath.Join(b.opts.Out, bundle.DirModules)
	dst := filepath.Join(root, kver)
	entries, err := bundle.WalkTree(src)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	var keep []bundle.TreeEntry
	for _, e := range entries {
		if e.IsLink && !bundle.SafeLinkTarget(e.Link) {
			b.log.Debug("skipping module tree symlink that leaves the tree", "path", e.Rel, "target", e.Link)
			continue
		}
		keep = append(keep, e)
		want[e.Rel] = true
	}
	var changed int
	var mu sync.Mutex
	errs := make([]error, len(keep))
	bundle.ForEach(len(keep), func(i int) {
		e := keep[i]
		s := filepath.Join(src, filepath.FromSlash(e.Rel))
		d := filepath.Join(dst, filepath.FromSlash(e.Rel))
		if e.IsLink {
			if old, err := os.Readlink(d); err == nil && old == e.Link {
				return
			}
		} else if _, same, err := bundle.HashCompare(s, d); err != nil {
			errs[i] = err
			return
		} else if same {
			return
		}
		if err := b.markDirty(); err != nil {
			errs[i] = err
			return
		}
		if err := os.MkdirAll(filepath.Dir(d), 0o755); err != nil {
			errs[i] = err
			return
		}
		errs[i] = replaceEntry(s, d, e)
		mu.Lock()
		changed++
		mu.Unlock()
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("copying modules tree %s: %w", src, err)
	}
	// Remove what the source no longer has, then other kernels' trees.
	have, err := bundle.WalkTree(dst)
	if err != nil {
		return err
	}
	for _, e := range have {
		if !want[e.Rel] {
			if err := b.markDirty(); err != nil {
				return err
			}
			if err := os.Remove(filepath.Join(dst, filepath.FromSlash(e.Rel))); err != nil {
				return fmt.Errorf("removing stale module file: %w", err)
			}
			changed++
		}
	}
	others, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("listing %s: %w", root, err)
	}
	for _, o := range others {
		if o.Name() != kver {
			if err := b.markDirty(); err != nil {
				return err
			}
			if err := os.RemoveAll(filepath.Join(root, o.Name())); err != nil {
				return fmt.Errorf("removing old modules tree: %w", err)
			}
		}
	}
	b.log.Info("modules tree", "files", len(keep), "changed", changed)
	return nil
}

// replaceEntry writes the tree entry e from s to d through a temporary name.
func replaceEntry(s, d string, e bundle.TreeEntry) error {
	if e.IsLink {
		tmp, err := bundle.TempPath(d)
		if err != nil {
			return err
		}
		os.Remove(tmp)
		if err := os.Symlink(e.Link, tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, d); err != nil {
			os.Remove(tmp)
			return err
		}
		return nil
	}
	fi, err := os.Stat(s)
	if err != nil {
		return err
	}
	tmp, _, err := bundle.CopyToTemp(s, d, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, d); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// safeLinkTarget reports whether a symlink target is relative and points
// down from the link's directory (no ".." element), so that it cannot leave
// manifest describes what the build produced.
func (b *builder) manifest(kver string) (*bundle.Bundle, error) {
	bun := &bundle.Bundle{
		Schema:        bundle.Schema,
		KernelVersion: kver,
		Kernel:        bundle.FileKernel,
		Vmlinuz:       bundle.FileVmlinuz,
		KernelConfig:  bundle.FileKernelConfig,
		Modules:       bundle.DirModules,
		Initrd:        bundle.FileInitrd,
		BootArgs:      bundle.DefaultBootArgs,
		SSHKey:        bundle.FileSSHKey,
		Agent:         bundle.FileAgent,
	}
	// A firecracker binary the user put into the bundle is kept.
	if fi, err := os.Stat(filepath.Join(b.opts.Out, bundle.FileFirecracker)); err == nil && fi.Mode().IsRegular() {
		bun.Firecracker = bundle.FileFirecracker
	}
	for _, k := range b.opts.Images {
		bun.Images = append(bun.Images, bundle.Image{
			Name:        string(k),
			Rootfs:      bundle.RootfsFile(string(k)),
			WorkSeed:    bundle.FileWorkSeed,
			Description: imageDescriptions[k],
		})
	}
	bun.DefaultImage = bun.Images[0].Name
	if slices.Contains(b.opts.Images, rootfs.KindDocker) {
		bun.DefaultImage = string(rootfs.KindDocker)
	}
	bun.SetDir(b.opts.Out)
	if err := bun.FillArtifacts(b.sums); err != nil {
		return nil, err
	}
	return bun, nil
}

// removeTemps deletes temporaries an interrupted build left in dir.
func removeTemps(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if bundle.IsTempName(e.Name()) {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// group runs functions concurrently; the first error cancels the others' context.
type group struct {
	wg     sync.WaitGroup
	once   sync.Once
	err    error
	cancel context.CancelFunc
}

func newGroup(ctx context.Context) (*group, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	return &group{cancel: cancel}, ctx
}

func (g *group) Go(f func() error) {
	g.wg.Go(func() {
		if err := f(); err != nil {
			g.once.Do(func() {
				g.err = err
				g.cancel()
			})
		}
	})
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}
