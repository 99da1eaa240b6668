package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/image/workseed"
	"github.com/banger/banger/internal/store"
)

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

// seedStale reports whether a managed image's work-seed must be (re)built
// before a VM can use it: images built before banger wrote seeds have none,
// and a seed made for another bundle key does not let banger in.
func seedStale(img *image, b *bundle.Bundle) bool {
	if !img.Managed {
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
func (d *Daemon) buildSeed(ctx context.Context, b *bundle.Bundle, rootfsPath string) (string, string, error) {
	pub, fp, err := bundleKey(b)
	if err != nil {
		return "", "", err
	}
	seed := filepath.Join(filepath.Dir(rootfsPath), "work-seed.ext4")
	if err := workseed.Build(ctx, d.r, pub, seed); err != nil {
		return "", "", err
	}
	return seed, fp, nil
}

// refreshSeed rebuilds the work-seed of a managed image whose seed is
// missing or authorizes another key, once: the first create after a bundle
// key change (or of an image built before seeds existed) pays for it, later
// creates clone the refreshed seed. It updates img in place.
func (d *Daemon) refreshSeed(ctx context.Context, b *bundle.Bundle, img *image) error {
	l := d.vmLock("image:" + img.Name)
	l.Lock()
	defer l.Unlock()
	rec, err := d.store.GetImage(ctx, img.Name)
	if err != nil {
		return fmt.Errorf("refreshing the work-seed of image %s: %w", img.Name, err)
	}
	cur := &image{Name: rec.Name, Rootfs: rec.Rootfs, WorkSeed: rec.WorkSeed, SeedKey: rec.SeedKey, Managed: rec.Managed}
	if !seedStale(cur, b) {
		// Another create refreshed it meanwhile.
		img.WorkSeed, img.SeedKey = cur.WorkSeed, cur.SeedKey
		return nil
	}
	d.log.Info("refreshing the work-seed of an image; later creates take the fast path", "image", img.Name)
	seed, fp, err := d.buildSeed(ctx, b, rec.Rootfs)
	if err != nil {
		return fmt.Errorf("refreshing the work-seed of image %s: %w", img.Name, err)
	}
	rec.WorkSeed, rec.SeedKey = seed, fp
	if err := d.store.UpsertImage(ctx, rec); err != nil {
		return fmt.Errorf("refreshing the work-seed of image %s: %w", img.Name, err)
	}
	img.WorkSeed, img.SeedKey = seed, fp
	return nil
}

// seedFor returns the work-seed a VM of img clones its /root from,
// refreshing a managed image's stale seed first.
func (d *Daemon) seedFor(ctx context.Context, b *bundle.Bundle, img *image) (string, error) {
	if seedStale(img, b) {
		if err := d.refreshSeed(ctx, b, img); err != nil {
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

// imageFromRecord converts a stored image.
func imageFromRecord(rec *store.Image) *image {
	return &image{Name: rec.Name, Rootfs: rec.Rootfs, WorkSeed: rec.WorkSeed, SeedKey: rec.SeedKey, Managed: rec.Managed, Registered: true}
}
