package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/image/kernel"
	"github.com/banger/banger/internal/image/rootfs"
	"github.com/banger/banger/internal/image/workseed"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/units"
)

// Image is a bootable image: one of the bundle's, or one in the store
// (registered by the user, or built by banger: Managed).
type Image struct {
	Name     string
	Rootfs   string // absolute
	WorkSeed string // absolute; empty: the bundle's default (or, managed, to be built)
	// SeedKey is the fingerprint of the key a managed image's seed authorizes.
	SeedKey    string
	Managed    bool
	Registered bool
	// Bundled is set for the bundle's own images.
	Bundled bool
	Default bool
	// Kernel and Initrd are the image's own kernel and initramfs, booted
	// instead of the bundle's; Modules is their modules dir and
	// KernelVersion its release. All empty: the bundle's kernel.
	Kernel, Initrd, Modules, KernelVersion string
}

// Images is the image catalogue: the bundle's images, the registered ones
// and those banger builds, with their work-seeds.
type Images struct {
	Store *store.Store
	R     runner.Runner
	Log   *slog.Logger
	// DataDir holds built images (images/<name>); CacheDir the build cache.
	DataDir, CacheDir string
	// Default is the configured default image ("" means the bundle's).
	Default string
	// Requirements checks what an image build needs (doctor.Require).
	Requirements func(ctx context.Context, ops ...string) error

	locks keyedLocks
}

func (im *Images) log() *slog.Logger {
	if im.Log == nil {
		return slog.Default()
	}
	return im.Log
}

// defaultName is the image a create without --image gets.
func (im *Images) defaultName(b *bundle.Bundle) string {
	if im.Default != "" {
		return im.Default
	}
	return b.DefaultImage
}

// Resolve finds name ("" for the default) among the stored images, then
// the bundle's.
func (im *Images) Resolve(ctx context.Context, b *bundle.Bundle, name string) (*Image, error) {
	if name == "" {
		name = im.defaultName(b)
	}
	if rec, err := im.Store.GetImage(ctx, name); err == nil {
		return fromRecord(rec), nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	bi, err := b.Image(name)
	if err != nil {
		if ValidateName(name) != nil {
			return nil, invalid("no image named %q: see 'banger image list'", truncate(name, 64))
		}
		return nil, invalid("%w (or register one with 'banger image register --name %s --rootfs PATH')", err, name)
	}
	return &Image{Name: bi.Name, Rootfs: b.Path(bi.Rootfs), WorkSeed: b.Path(bi.WorkSeed), Bundled: true}, nil
}

// List returns the bundle's images, then the stored ones.
func (im *Images) List(ctx context.Context, b *bundle.Bundle) ([]Image, error) {
	def := im.defaultName(b)
	var out []Image
	for _, bi := range b.Images {
		out = append(out, Image{Name: bi.Name, Rootfs: b.Path(bi.Rootfs), WorkSeed: b.Path(bi.WorkSeed), Managed: true, Bundled: true, Default: bi.Name == def})
	}
	reg, err := im.Store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	for i := range reg {
		img := fromRecord(&reg[i])
		img.Default = img.Name == def
		out = append(out, *img)
	}
	return out, nil
}

func fromRecord(rec *store.Image) *Image {
	return &Image{Name: rec.Name, Rootfs: rec.Rootfs, WorkSeed: rec.WorkSeed, SeedKey: rec.SeedKey, Managed: rec.Managed, Registered: true,
		Kernel: rec.Kernel, Initrd: rec.Initrd, Modules: rec.Modules, KernelVersion: rec.KernelVersion}
}

// RegisterOptions name an ext4 image a user built and, optionally, the
// kernel it boots: an ELF kernel with its initramfs, and their modules.
type RegisterOptions struct {
	Name, Rootfs, WorkSeed  string
	Kernel, Initrd, Modules string
}

// Register records an unmanaged image: banger boots clones of its files
// and never changes or deletes them.
func (im *Images) Register(ctx context.Context, b *bundle.Bundle, o RegisterOptions) (*Image, error) {
	if err := ValidateName(o.Name); err != nil {
		return nil, invalid("invalid image name %q: use lowercase letters, digits and hyphens", truncate(o.Name, 64))
	}
	unlock := im.locks.lock(o.Name)
	defer unlock()
	if _, err := b.Image(o.Name); err == nil {
		return nil, exists("image %s comes with the runtime bundle: pick another name", o.Name)
	}
	for _, f := range []struct{ flag, path string }{{"--rootfs", o.Rootfs}, {"--work-seed", o.WorkSeed}} {
		if f.path == "" && f.flag == "--work-seed" {
			continue
		}
		if err := ext4.Check(f.path); err != nil {
			return nil, invalid("%s %s: %w", f.flag, truncate(f.path, 200), err)
		}
	}
	rec := &store.Image{Name: o.Name, Rootfs: o.Rootfs, WorkSeed: o.WorkSeed, Kernel: o.Kernel, Initrd: o.Initrd, Modules: o.Modules}
	if err := checkKernel(rec); err != nil {
		return nil, err
	}
	if old, err := im.Store.GetImage(ctx, o.Name); err == nil && old.Managed {
		return nil, exists("image %s was built by banger: delete it first with 'banger image delete %s'", o.Name, o.Name)
	}
	if err := im.Store.UpsertImage(ctx, rec); err != nil {
		return nil, err
	}
	return fromRecord(rec), nil
}

// checkKernel checks an image's own kernel, initramfs and modules, and
// records the modules' release.
func checkKernel(rec *store.Image) error {
	switch {
	case rec.Kernel == "" && rec.Initrd == "" && rec.Modules == "":
		return nil
	case rec.Kernel == "" || rec.Initrd == "":
		return invalid("an image's own kernel needs both --kernel and --initrd (banger's guests load their disk drivers from the initramfs)")
	}
	if err := kernel.CheckKernel(rec.Kernel); err != nil {
		return invalid("--kernel %s: %w", truncate(rec.Kernel, 200), err)
	}
	if err := kernel.CheckInitrd(rec.Initrd); err != nil {
		return invalid("--initrd %s: %w", truncate(rec.Initrd, 200), err)
	}
	if rec.Modules != "" {
		rel, err := kernel.ModulesRelease(rec.Modules)
		if err != nil {
			return invalid("--modules %s: %w", truncate(rec.Modules, 200), err)
		}
		rec.KernelVersion = rel
	}
	return nil
}

// Delete forgets an image; a built one's files go with it (VMs keep their
// own clones), a registered one's stay.
func (im *Images) Delete(ctx context.Context, b *bundle.Bundle, name string) error {
	unlock := im.locks.lock(name)
	defer unlock()
	img, err := im.Store.GetImage(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		if b != nil {
			if _, err := b.Image(name); err == nil {
				return invalid("image %s comes with the runtime bundle and cannot be deleted", name)
			}
		}
		return notFound("no registered image named %s: see 'banger image list'", truncate(name, 64))
	}
	if err != nil {
		return err
	}
	if err := im.Store.DeleteImage(ctx, name); err != nil {
		return err
	}
	if img.Managed {
		return os.RemoveAll(filepath.Dir(img.Rootfs))
	}
	return nil
}

// BuildOptions describe a Debian image build.
type BuildOptions struct {
	Name string
	Kind string // docker (the default) or minimal
	Size string // e.g. 4G; "" means the kind's default
}

// PlanBuild refuses a bad build before anything changes; it fills defaults.
func (im *Images) PlanBuild(ctx context.Context, b *bundle.Bundle, o *BuildOptions) error {
	if err := ValidateName(o.Name); err != nil {
		return invalid("invalid image name %q: use lowercase letters, digits and hyphens", truncate(o.Name, 64))
	}
	if o.Kind == "" {
		o.Kind = string(rootfs.KindDocker)
	}
	if o.Kind != string(rootfs.KindDocker) && o.Kind != string(rootfs.KindMinimal) {
		return invalid("invalid image kind %q: use docker or minimal", truncate(o.Kind, 32))
	}
	if o.Size != "" {
		if _, err := units.ParseSize(o.Size); err != nil {
			return invalid("invalid --size %q: %w", truncate(o.Size, 32), err)
		}
	}
	if _, err := b.Image(o.Name); err == nil {
		return exists("image %s comes with the runtime bundle: pick another name", o.Name)
	}
	if _, err := im.Store.GetImage(ctx, o.Name); err == nil {
		return exists("an image named %s already exists: delete it first with 'banger image delete %s'", o.Name, o.Name)
	}
	if im.Requirements != nil {
		if err := im.Requirements(ctx, doctor.OpRuntimeBuild); err != nil {
			return unavailable(err)
		}
	}
	return nil
}

// BuildMarker marks a directory under images/ as made by a build, so that
// only such directories are ever removed without a record.
const BuildMarker = ".banger-build"

// Build builds a managed image with debootstrap under the data dir. Only
// one build of a name runs at a time: a second is refused with ErrExists.
func (im *Images) Build(ctx context.Context, b *bundle.Bundle, o BuildOptions, pr Progress) (*Image, error) {
	unlock, ok := im.locks.tryLock(o.Name)
	if !ok {
		return nil, exists("image %s is being built already: wait for that build, or pick another name", o.Name)
	}
	defer unlock()
	if err := im.PlanBuild(ctx, b, &o); err != nil {
		return nil, err
	}
	st := newStages(pr)
	dir := filepath.Join(im.DataDir, "images", o.Name)
	ropts := rootfs.Options{
		Kind:     rootfs.Kind(o.Kind),
		Agent:    b.Path(b.Agent),
		Size:     o.Size,
		CacheDir: im.CacheDir,
		Log:      slog.New(&progressHandler{pr: st.pr, next: im.log().Handler()}).With("image", o.Name),
	}
	if ropts.Kind == rootfs.KindDocker {
		ropts.Modules = b.Path(b.Modules)
	}
	rec := &store.Image{Name: o.Name, Managed: true, Rootfs: filepath.Join(dir, "rootfs.ext4")}
	err := st.run("building "+o.Kind+" image", func() error {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, BuildMarker), nil, 0o600); err != nil {
			return err
		}
		tmp := rec.Rootfs + ".tmp"
		defer os.Remove(tmp)
		if err := rootfs.Build(ctx, im.R, ropts, tmp); err != nil {
			return err
		}
		return os.Rename(tmp, rec.Rootfs)
	})
	if err == nil {
		err = st.run("building the work-seed", func() error {
			var err error
			rec.WorkSeed, rec.SeedKey, err = im.buildSeed(ctx, b, rec.Rootfs)
			return err
		})
	}
	if err == nil {
		err = im.Store.UpsertImage(ctx, rec)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("building image %s: %w", o.Name, err)
	}
	return fromRecord(rec), nil
}

// Reconcile removes directories under images/ that a build made (they
// hold its marker) and that no image record names: a daemon killed during
// a build (before the image was recorded) or a delete (after the record
// went) leaves them, with gigabytes in them. Anything else, such as a
// user's file registered from there, is left alone.
func (im *Images) Reconcile(ctx context.Context) error {
	root := filepath.Join(im.DataDir, "images")
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s: %w", root, err)
	}
	imgs, err := im.Store.ListImages(ctx)
	if err != nil {
		return err
	}
	named := map[string]bool{}
	for _, img := range imgs {
		named[img.Name] = true
	}
	var errs []error
	for _, e := range ents {
		dir := filepath.Join(root, e.Name())
		if !e.IsDir() || named[e.Name()] {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, BuildMarker)); err != nil {
			continue
		}
		im.log().Info("removing the files of an image build or delete that did not finish", "dir", dir)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// bundleKey returns the bundle's public key and its fingerprint as recorded
// in store.Image.SeedKey.
func bundleKey(b *bundle.Bundle) ([]byte, string, error) {
	pub, err := os.ReadFile(b.Path(b.SSHKey) + ".pub")
	if err != nil {
		return nil, "", fmt.Errorf("reading the bundle's public key: %w (rebuild the bundle with 'make runtime-bundle')", err)
	}
	return pub, keyFingerprint(pub), nil
}

// keyFingerprint is the sha256 of an authorized_keys line's key type and
// blob, so comments and whitespace do not count.
func keyFingerprint(pub []byte) string {
	f := strings.Fields(string(pub))
	if len(f) > 2 {
		f = f[:2]
	}
	sum := sha256.Sum256([]byte(strings.Join(f, " ")))
	return hex.EncodeToString(sum[:])
}

// SeedStale reports whether a managed image's work-seed must be (re)built
// before a VM can use it: images built before banger wrote seeds have none,
// and a seed made for another bundle key does not let banger in.
func (im *Images) SeedStale(img *Image, b *bundle.Bundle) bool {
	if !img.Managed || img.Bundled {
		return false
	}
	if img.WorkSeed == "" {
		return true
	}
	if _, err := os.Stat(img.WorkSeed); err != nil {
		return true
	}
	_, fp, err := bundleKey(b)
	return err == nil && img.SeedKey != fp
}

// buildSeed writes a work-seed authorizing b's key next to a managed
// image's rootfs and returns its path and key fingerprint.
func (im *Images) buildSeed(ctx context.Context, b *bundle.Bundle, rootfsPath string) (string, string, error) {
	pub, fp, err := bundleKey(b)
	if err != nil {
		return "", "", err
	}
	seed := filepath.Join(filepath.Dir(rootfsPath), "work-seed.ext4")
	if err := workseed.Build(ctx, im.R, pub, seed); err != nil {
		return "", "", err
	}
	return seed, fp, nil
}

// refreshSeed rebuilds the work-seed of a managed image whose seed is
// missing or authorizes another key, once: the first create after a bundle
// key change (or of an image built before seeds existed) pays for it, later
// creates clone the refreshed seed. It updates img in place.
func (im *Images) refreshSeed(ctx context.Context, b *bundle.Bundle, img *Image) error {
	unlock := im.locks.lock(img.Name)
	defer unlock()
	rec, err := im.Store.GetImage(ctx, img.Name)
	if err != nil {
		return fmt.Errorf("refreshing the work-seed of image %s: %w", img.Name, err)
	}
	cur := fromRecord(rec)
	if !im.SeedStale(cur, b) {
		// Another create refreshed it meanwhile.
		img.WorkSeed, img.SeedKey = cur.WorkSeed, cur.SeedKey
		return nil
	}
	im.log().Info("refreshing the work-seed of an image; later creates take the fast path", "image", img.Name)
	seed, fp, err := im.buildSeed(ctx, b, rec.Rootfs)
	if err != nil {
		return fmt.Errorf("refreshing the work-seed of image %s: %w", img.Name, err)
	}
	rec.WorkSeed, rec.SeedKey = seed, fp
	if err := im.Store.UpsertImage(ctx, rec); err != nil {
		return fmt.Errorf("refreshing the work-seed of image %s: %w", img.Name, err)
	}
	img.WorkSeed, img.SeedKey = seed, fp
	return nil
}

// SeedFor returns the work-seed a VM of img clones its /root from,
// refreshing a managed image's stale seed first.
func (im *Images) SeedFor(ctx context.Context, b *bundle.Bundle, img *Image) (string, error) {
	if im.SeedStale(img, b) {
		if err := im.refreshSeed(ctx, b, img); err != nil {
			return "", err
		}
	}
	if img.WorkSeed != "" {
		return img.WorkSeed, nil
	}
	def, err := b.Image("")
	if err != nil {
		return "", err
	}
	return b.Path(def.WorkSeed), nil
}

// seedPath is the work-seed a VM of img clones its /root from, without
// refreshing a stale one: "" when a managed image's seed is still to be
// built.
func (im *Images) seedPath(b *bundle.Bundle, img *Image) (string, error) {
	if im.SeedStale(img, b) {
		return "", nil
	}
	if img.WorkSeed != "" {
		return img.WorkSeed, nil
	}
	def, err := b.Image("")
	if err != nil {
		return "", err
	}
	return b.Path(def.WorkSeed), nil
}

// Size is the apparent size of an image's rootfs (0 when unreadable).
func (img *Image) Size() int64 {
	n, _ := disk.Size(img.Rootfs)
	return n
}

// progressHandler forwards info-level log records of a long operation to
// its Progress as log lines, and to the daemon's log.
type progressHandler struct {
	pr    Progress
	next  slog.Handler
	attrs []slog.Attr
}

func (h *progressHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *progressHandler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelInfo {
		msg := rec.Message
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "took" || a.Key == "kind" || a.Key == "err" {
				msg += " " + a.String()
			}
			return true
		})
		h.pr.Log(msg)
	}
	if h.next.Enabled(ctx, rec.Level) {
		return h.next.WithAttrs(h.attrs).Handle(ctx, rec)
	}
	return nil
}

func (h *progressHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &progressHandler{pr: h.pr, next: h.next, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

func (h *progressHandler) WithGroup(name string) slog.Handler {
	return &progressHandler{pr: h.pr, next: h.next.WithGroup(name), attrs: h.attrs}
}
