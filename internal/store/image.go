package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Image is a guest image banger can boot.
type Image struct {
	Name     string
	Rootfs   string
	WorkSeed string
	Managed  bool // banger owns the files and deletes them with the image
	// SeedKey is the sha256 (hex) of the public key WorkSeed authorizes for
	// root, when banger built the seed; empty when unknown.
	SeedKey string
	// Kernel and Initrd are the image's own kernel and initramfs, ""
	// for the bundle's; Modules is its modules dir and KernelVersion their
	// release.
	Kernel, Initrd, Modules, KernelVersion string
	CreatedAt                              time.Time
}

// UpsertImage inserts img or replaces the image of the same name. A zero CreatedAt is
// set to now; replacing keeps the original creation time.
func (s *Store) UpsertImage(ctx context.Context, img *Image) error {
	if img.Name == "" {
		return errors.New("saving image: name is empty")
	}
	if img.CreatedAt.IsZero() {
		img.CreatedAt = time.Now().UTC()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO images (name, rootfs, work_seed, managed, seed_key, created_at, kernel, initrd, modules, kernel_version)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(name) DO UPDATE SET rootfs = excluded.rootfs, work_seed = excluded.work_seed,
			managed = excluded.managed, seed_key = excluded.seed_key, kernel = excluded.kernel,
			initrd = excluded.initrd, modules = excluded.modules, kernel_version = excluded.kernel_version`,
		img.Name, img.Rootfs, img.WorkSeed, img.Managed, img.SeedKey, formatTime(img.CreatedAt),
		img.Kernel, img.Initrd, img.Modules, img.KernelVersion)
	if err != nil {
		return fmt.Errorf("saving image %s: %w", img.Name, err)
	}
	return nil
}

// GetImage returns the named image or an error wrapping ErrNotFound.
func (s *Store) GetImage(ctx context.Context, name string) (*Image, error) {
	imgs, err := s.queryImages(ctx, `SELECT name, rootfs, work_seed, managed, seed_key, created_at, kernel, initrd, modules, kernel_version FROM images WHERE name = ?`, name)
	if err != nil {
		return nil, fmt.Errorf("getting image %s: %w", name, err)
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("getting image %s: %w", name, ErrNotFound)
	}
	return &imgs[0], nil
}

// ListImages returns every image ordered by name.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	imgs, err := s.queryImages(ctx, `SELECT name, rootfs, work_seed, managed, seed_key, created_at, kernel, initrd, modules, kernel_version FROM images ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	return imgs, nil
}

// DeleteImage deletes the named image or returns an error wrapping ErrNotFound.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM images WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("deleting image %s: %w", name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("deleting image %s: %w", name, err)
	} else if n == 0 {
		return fmt.Errorf("deleting image %s: %w", name, ErrNotFound)
	}
	return nil
}

func (s *Store) queryImages(ctx context.Context, query string, args ...any) ([]Image, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var imgs []Image
	for rows.Next() {
		var (
			img     Image
			created string
		)
		if err := rows.Scan(&img.Name, &img.Rootfs, &img.WorkSeed, &img.Managed, &img.SeedKey, &created,
			&img.Kernel, &img.Initrd, &img.Modules, &img.KernelVersion); err != nil {
			return nil, err
		}
		if img.CreatedAt, err = parseTime(created); err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	}
	return imgs, rows.Err()
}
