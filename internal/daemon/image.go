package daemon

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/image/rootfs"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/units"
)

// image is a bootable image, from the bundle or from the store (registered
// by the user, or built by banger: Managed).
type image struct {
	Name     string
	Rootfs   string // absolute
	WorkSeed string // absolute; empty: the bundle's default (or, managed, to be built)
	// SeedKey is the fingerprint of the key a managed image's seed authorizes.
	SeedKey    string
	Managed    bool
	Registered bool
}

// resolveImage finds name among the stored images, then the bundle's.
func (d *Daemon) resolveImage(ctx context.Context, b *bundle.Bundle, name string) (*image, error) {
	if rec, err := d.store.GetImage(ctx, name); err == nil {
		return imageFromRecord(rec), nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	bi, err := b.Image(name)
	if err != nil {
		return nil, fmt.Errorf("%w (or register one with 'banger image register --name %s --rootfs PATH')", err, name)
	}
	return &image{Name: bi.Name, Rootfs: b.Path(bi.Rootfs), WorkSeed: b.Path(bi.WorkSeed)}, nil
}

// registerImage records an unmanaged image: banger boots clones of its files
// and never changes or deletes them.
func (d *Daemon) registerImage(ctx context.Context, req rpc.RegisterImageRequest) (*store.Image, error) {
	if err := ValidateName(req.Name); err != nil {
		return nil, invalid("invalid image name %q: use lowercase letters, digits and hyphens", req.Name)
	}
	l := d.vmLock("image:" + req.Name)
	l.Lock()
	defer l.Unlock()
	b, err := d.loadBundle()
	if err != nil {
		return nil, unavailable(err)
	}
	if _, err := b.Image(req.Name); err == nil {
		return nil, exists("image %s comes with the runtime bundle: pick another name", req.Name)
	}
	for flag, path := range map[string]string{"--rootfs": req.Rootfs, "--work-seed": req.WorkSeed} {
		if path == "" && flag == "--work-seed" {
			continue
		}
		if err := checkExt4(path); err != nil {
			return nil, invalid("%s %s: %w", flag, path, err)
		}
	}
	if old, err := d.store.GetImage(ctx, req.Name); err == nil && old.Managed {
		return nil, exists("image %s was built by banger: delete it first with 'banger image delete %s'", req.Name, req.Name)
	}
	img := &store.Image{Name: req.Name, Rootfs: req.Rootfs, WorkSeed: req.WorkSeed}
	if err := d.store.UpsertImage(ctx, img); err != nil {
		return nil, err
	}
	return img, nil
}

// checkExt4 refuses anything but an absolute path to an ext4 image file.
func checkExt4(path string) error {
	if !filepath.IsAbs(path) {
		return errors.New("must be an absolute path")
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return errors.New("is not a regular file")
	}
	// The ext2/3/4 superblock starts at 1024; its magic 0xEF53 is at offset 0x38.
	var magic [2]byte
	if _, err := f.ReadAt(magic[:], 1024+0x38); err != nil || binary.LittleEndian.Uint16(magic[:]) != 0xEF53 {
		return errors.New("is not an ext4 filesystem image (make one with mkfs.ext4 -d DIR FILE SIZE)")
	}
	return nil
}

func (d *Daemon) deleteImage(ctx context.Context, name string) error {
	l := d.vmLock("image:" + name)
	l.Lock()
	defer l.Unlock()
	if _, err := d.store.GetImage(ctx, name); errors.Is(err, store.ErrNotFound) {
		if b, err := d.loadBundle(); err == nil {
			if _, err := b.Image(name); err == nil {
				return invalid("image %s comes with the runtime bundle and cannot be deleted", name)
			}
		}
		return notFound("no registered image named %s: see 'banger image list'", name)
	}
	img, err := d.store.GetImage(ctx, name)
	if err != nil {
		return err
	}
	if err := d.store.DeleteImage(ctx, name); err != nil {
		return err
	}
	if img.Managed {
		// Built by banger: its files go with it. VMs keep their own clones.
		return os.RemoveAll(filepath.Dir(img.Rootfs))
	}
	return nil
}

// buildImage builds a managed image with debootstrap under the data dir.
func (d *Daemon) buildImage(req rpc.BuildImageRequest, pr *progress) (rpc.Event, error) {
	ctx := d.ctx
	img := &store.Image{Name: req.Name, Managed: true}
	dir := filepath.Join(d.paths.DataDir, "images", req.Name)
	b, err := d.loadBundle()
	if err != nil {
		return rpc.Event{}, unavailable(err)
	}
	opts := rootfs.Options{
		Kind:     rootfs.Kind(req.Kind),
		Agent:    b.Path(b.Agent),
		Size:     req.Size,
		CacheDir: d.cacheDir(),
		Log:      slog.New(&progressHandler{pr: pr, next: d.log.Handler()}).With("image", req.Name),
	}
	if opts.Kind == rootfs.KindDocker {
		opts.Modules = b.Path(b.Modules)
	}
	img.Rootfs = filepath.Join(dir, "rootfs.ext4")
	err = pr.run("building "+req.Kind+" image", func() error {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, buildMarker), nil, 0o644); err != nil {
			return err
		}
		tmp := img.Rootfs + ".tmp"
		defer os.Remove(tmp)
		if err := rootfs.Build(ctx, d.r, opts, tmp); err != nil {
			return err
		}
		if err := os.Rename(tmp, img.Rootfs); err != nil {
			return err
		}
		// The image's own work-seed: creates clone /root from it.
		img.WorkSeed, img.SeedKey, err = d.buildSeed(ctx, b, img.Rootfs)
		return err
	})
	if err == nil {
		err = d.store.UpsertImage(ctx, img)
	}
	if err != nil {
		os.RemoveAll(dir)
		return rpc.Event{}, fmt.Errorf("building image %s: %w", req.Name, err)
	}
	size, _ := disk.Size(img.Rootfs)
	return rpc.Event{Image: &rpc.Image{Name: img.Name, Rootfs: img.Rootfs, WorkSeed: img.WorkSeed, Managed: true, Size: size}}, nil
}

// planBuild refuses a bad build request before anything is changed.
func (d *Daemon) planBuild(ctx context.Context, req *rpc.BuildImageRequest) error {
	if err := ValidateName(req.Name); err != nil {
		return invalid("invalid image name %q: use lowercase letters, digits and hyphens", req.Name)
	}
	if req.Kind == "" {
		req.Kind = string(rootfs.KindDocker)
	}
	if req.Kind != string(rootfs.KindDocker) && req.Kind != string(rootfs.KindMinimal) {
		return invalid("invalid image kind %q: use docker or minimal", req.Kind)
	}
	if req.Size != "" {
		if _, err := units.ParseSize(req.Size); err != nil {
			return invalid("invalid --size %q: %w", req.Size, err)
		}
	}
	b, err := d.loadBundle()
	if err != nil {
		return unavailable(err)
	}
	if _, err := b.Image(req.Name); err == nil {
		return exists("image %s comes with the runtime bundle: pick another name", req.Name)
	}
	if _, err := d.store.GetImage(ctx, req.Name); err == nil {
		return exists("an image named %s already exists: delete it first with 'banger image delete %s'", req.Name, req.Name)
	}
	if err := doctor.Require(ctx, d.r, doctor.OpRuntimeBuild); err != nil {
		return unavailable(err)
	}
	return nil
}

func (d *Daemon) cacheDir() string {
	if dir, err := rootfs.DefaultCacheDir(); err == nil {
		return dir
	}
	return filepath.Join(d.paths.StateDir, "cache")
}

func (d *Daemon) handleBuildImage(w http.ResponseWriter, r *http.Request) {
	var req rpc.BuildImageRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		d.writeErr(w, invalid("decoding build request: %w", err))
		return
	}
	l := d.vmLock("image:" + req.Name)
	l.Lock()
	if err := d.planBuild(r.Context(), &req); err != nil {
		l.Unlock()
		d.writeErr(w, err)
		return
	}
	d.streamEvents(w, r, func(pr *progress) (rpc.Event, error) {
		defer l.Unlock()
		return d.buildImage(req, pr)
	})
}

// progressHandler forwards info-level log records of a long operation to
// its client as "log" events, and to the daemon's log.
type progressHandler struct {
	pr    *progress
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
		h.pr.logf("%s", msg)
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

// buildMarker marks a directory under images/ as made by 'image build', so
// that only such directories are ever removed without a record.
const buildMarker = ".banger-build"

// reconcileImages removes directories under the data dir's images/ that
// 'image build' made (they hold its marker) and that no image record names:
// a daemon killed during a build (before the image was recorded) or a
// delete (after the record went) leaves them, with gigabytes in them.
// Anything else, such as a user's file registered from there, is left alone.
func (d *Daemon) reconcileImages(ctx context.Context) error {
	root := filepath.Join(d.paths.DataDir, "images")
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s: %w", root, err)
	}
	imgs, err := d.store.ListImages(ctx)
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
		if _, err := os.Lstat(filepath.Join(dir, buildMarker)); err != nil {
			continue
		}
		d.log.Info("removing the files of an image build or delete that did not finish", "dir", dir)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
