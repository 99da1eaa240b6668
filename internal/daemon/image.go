package daemon

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/store"
)

// image is a bootable image, from the bundle or registered by the user.
type image struct {
	Name       string
	Rootfs     string // absolute
	WorkSeed   string // absolute
	Registered bool
}

// resolveImage finds name among the registered images, then the bundle's.
func (d *Daemon) resolveImage(ctx context.Context, b *bundle.Bundle, name string) (*image, error) {
	if img, err := d.store.GetImage(ctx, name); err == nil {
		ws := img.WorkSeed
		if ws == "" {
			def, err := b.Image("")
			if err != nil {
				return nil, err
			}
			ws = b.Path(def.WorkSeed)
		}
		return &image{Name: img.Name, Rootfs: img.Rootfs, WorkSeed: ws, Registered: true}, nil
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
	if _, err := d.store.GetImage(ctx, name); errors.Is(err, store.ErrNotFound) {
		if b, err := d.loadBundle(); err == nil {
			if _, err := b.Image(name); err == nil {
				return invalid("image %s comes with the runtime bundle and cannot be deleted", name)
			}
		}
		return notFound("no registered image named %s: see 'banger image list'", name)
	}
	return d.store.DeleteImage(ctx, name)
}
